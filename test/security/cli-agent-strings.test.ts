/**
 * Found in review: the operator CLI printed agent-chosen strings raw. An agent that fails a task
 * it holds chooses the error `code` (any string), and `agent-fabric tasks` printed it unescaped
 * into its table: ESC/OSC/BEL sequences reached the operator's terminal (retitle it, clear the
 * screen) and a newline forged a table row. `table()` (src/cli/format.ts) now escapes C0/C1
 * controls, DEL and the bidirectional controls of every cell, and JSON output escapes what
 * `JSON.stringify` leaves raw (DEL, C1, bidirectional controls). Real sidecar, the real CLI
 * commands over the real API client.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { ApiClient } from '../../src/cli/api-client.js';
import type { CommandContext } from '../../src/cli/command.js';
import { clip, printable, printableJson, table } from '../../src/cli/format.js';
import { operatorCommands } from '../../src/cli/operator-commands.js';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  ADMIN_TOKEN,
  agentToken,
  api,
  closeSidecar,
  DEFAULT_ALLOW,
  scheduleAndClaim,
  startTestSidecar,
} from '../fixtures/gateway/harness.js';

// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/;

let sidecar: Sidecar | undefined;
afterEach(async () => {
  await closeSidecar(sidecar);
  sidecar = undefined;
});

async function runCli(name: string, json = false): Promise<string> {
  const command = operatorCommands.find((c) => c.name === name)!;
  const lines: string[] = [];
  const client = new ApiClient({ url: new URL(sidecar!.url!).origin, token: ADMIN_TOKEN });
  const ctx: CommandContext = {
    values: {},
    positionals: [],
    env: {},
    json,
    print: (line) => void lines.push(line),
    api: () => client,
  };
  expect(await command.run(ctx)).toBe(0);
  return lines.join('\n');
}

describe('operator CLI output of agent-chosen strings', () => {
  it('tasks: a failing agent cannot put terminal escapes or extra rows into the table', async () => {
    sidecar = await startTestSidecar({
      policies: [DEFAULT_ALLOW],
      agents: [{ name: 'worker', executor: 'remote' }],
    });
    const token = agentToken(sidecar, 'worker');
    const task = await scheduleAndClaim(sidecar, 'worker', { taskType: 'review' });
    const evil = 'X\u001b]0;owned\u0007\u001b[2J\u009b31m\u202e\nfake-task  review  COMPLETED';
    const failed = await api(
      sidecar,
      'AgentService/FailTask',
      { taskId: task.taskId, attempt: task.attempt, code: evil, message: 'nope' },
      token,
    );
    expect(failed.status, await failed.clone().text()).toBe(200);

    const out = await runCli('tasks');
    // One header line and one row for the one task; no control character anywhere.
    expect(out.split('\n')).toHaveLength(2);
    expect(out).not.toMatch(CONTROL);
    // The code is still readable, escaped.
    expect(out).toContain('X\\x1b]0;owned\\x07\\x1b[2J\\x9b31m\\u{202e}\\x0afake-task');

    // --json: the same value, with what JSON.stringify leaves raw escaped too.
    const json = await runCli('tasks', true);
    expect(json).not.toMatch(CONTROL);
    const parsed = JSON.parse(json) as { tasks: { error?: { code?: string } }[] };
    expect(parsed.tasks[0]!.error?.code).toBe(evil);
  });

  it('tasks: a message cut for the table never keeps half of a surrogate pair', async () => {
    sidecar = await startTestSidecar({
      policies: [DEFAULT_ALLOW],
      agents: [{ name: 'worker', executor: 'remote' }],
    });
    const task = await scheduleAndClaim(sidecar, 'worker', { taskType: 'review' });
    // The table shows the message as JSON cut to 40: `"`, 35 letters, then a tag character
    // (a surrogate pair) straddling the cut at 37.
    const message = `${'a'.repeat(35)}\u{e0041}${'b'.repeat(10)}`;
    const failed = await api(
      sidecar,
      'AgentService/FailTask',
      { taskId: task.taskId, attempt: task.attempt, code: 'E', message },
      agentToken(sidecar, 'worker'),
    );
    expect(failed.status, await failed.clone().text()).toBe(200);
    const row = (await runCli('tasks')).split('\n')[1]!;
    expect(row).toMatch(/E: "a{35}\.\.\.$/);
    expect(row).not.toMatch(/[\ud800-\udfff]/); // no lone half left
    expect(clip('ab\u{1f600}cd', 5)).toBe('ab...');
    expect(clip('abc\u{1f600}', 5)).toBe('abc\u{1f600}');
    expect(clip('abcdef', 4, '…')).toBe('abc…');
  });

  it('printable, printableJson and table escape what a terminal would act on, nothing else', () => {
    expect(printable('a\tb\r\n\u001b[0m\u007f\u0085\u061c\u200f\u2028\u2067 é 名前')).toBe(
      'a\\x09b\\x0d\\x0a\\x1b[0m\\x7f\\x85\\u{61c}\\u{200f}\\u{2028}\\u{2067} é 名前',
    );
    const value = { s: 'a\u001b\u009b\u202e\n名前' };
    const text = printableJson(JSON.stringify(value, null, 2));
    expect(text).not.toMatch(CONTROL);
    expect(text.split('\n')).toHaveLength(3); // indentation kept
    expect(JSON.parse(text)).toEqual(value);
    expect(table(['A', 'B'], [['x\ny', 'z']])).toBe('A       B\nx\\x0ay  z');
  });
});

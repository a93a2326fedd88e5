/**
 * An in-process handler that ends the process (`process.exit`) in the turn it was dispatched in
 * crash-looped a program restarted on its durable state: the start of an in-process attempt is
 * committed with the end-of-iteration commit (`putLazily`), which never ran, so each restart
 * found the task queued with that attempt not counted, ran it again, and ended again — for ever.
 * The state store now commits at the process's `exit` event: the attempt is counted, and once
 * the task has used its `maxAttempts` it fails with a clear error instead of running. Real child
 * processes on one SQLite state file.
 */
import { spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { tempDir } from '../fixtures/gateway/harness.js';

const CHILD = fileURLToPath(
  new URL('../fixtures/inprocess/exit-in-handler-child.ts', import.meta.url),
);

function run(state: string, runs: string, mode: 'schedule' | 'resume') {
  const r = spawnSync(process.execPath, ['--import', 'tsx', CHILD, state, runs, mode], {
    encoding: 'utf8',
    timeout: 60_000,
  });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

describe('an in-process handler calling process.exit, on a durable store', () => {
  it('has each attempt counted: after maxAttempts the task fails and the restart stays up', () => {
    const dir = tempDir('inprocess-exit');
    const state = join(dir, 'state.db');
    const runs = join(dir, 'runs.txt');
    writeFileSync(runs, '');
    const lines = () => readFileSync(runs, 'utf8').split('\n').filter(Boolean);

    expect(run(state, runs, 'schedule').code).toBe(3);
    expect(lines()).toEqual(['exit 1']);
    // The restart runs attempt 2 (the first was counted), which ends the process too.
    const second = run(state, runs, 'resume');
    expect(second.code, second.err).toBe(3);
    expect(lines()).toEqual(['exit 1', 'exit 2']);
    // The next restart finds the task's attempts used: it fails instead of running again.
    const third = run(state, runs, 'resume');
    expect(third.code, third.err).toBe(0);
    expect(lines()).toEqual(['exit 1', 'exit 2', 'fine 1']);
    const tasks = JSON.parse(third.out.trim().split('\n').at(-1)!) as Record<string, string>;
    expect(tasks.fine).toBe('COMPLETED 1');
    expect(tasks.exit).toMatch(
      /^FAILED 2 FABRIC_ERR_AGENT_UNAVAILABLE: the fabric stopped while attempt 2 ran on agent /,
    );
  });
});

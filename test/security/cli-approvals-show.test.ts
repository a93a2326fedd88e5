/**
 * Found in review: `agent-fabric approvals list` showed only the first 50 characters of a
 * pending call's arguments, and no command showed one approval's arguments in full (only
 * `--json` of the whole list): an agent could park a call whose first 50 characters look
 * harmless and put what matters after them, and an operator approved from the table.
 * `approvals show <id>` now prints one approval in full — agent, tool, rule, status, and the
 * whole arguments as indented JSON with every character a terminal acts on or draws as nothing
 * escaped (the block parses back to exactly what the agent sent) — and `approvals list` says on
 * stderr when it cut a row's arguments and where they are in full.
 *
 * The real `agent-fabric serve`, server-everything as the upstream, the official SDK client as
 * the agent and the real CLI as child processes.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli } from '../fixtures/cli-process.js';
import { tempDir, until } from '../fixtures/gateway/harness.js';
import {
  cleanUp,
  connect,
  ECHO_NEEDS_APPROVAL,
  freePort,
  serve,
  writeEverythingConfig,
  type Running,
} from '../fixtures/state/serve.js';

afterAll(cleanUp);

const ADMIN = `fab_admin_${'Zr7w'.repeat(8)}`;
/** What a terminal acts on or draws as nothing, line feeds aside. */
const HIDDEN = /(?!\n)[\p{Cc}\u2028\u2029\p{Default_Ignorable_Code_Point}]/u;
/**
 * Harmless for the first 50 characters of its JSON; then a screen clear, a window title (OSC),
 * a C1 CSI, bidirectional overrides and isolates turning `rm -rf /` around, tag characters, a
 * line break that would forge a field; then filled up to 256 KiB of JSON, the most an approval
 * keeps (`approvals.maxParamsBytes`).
 */
const HOSTILE =
  `list the files in the project please ${'.'.repeat(20)}` +
  '\u001b[2J\u001b]0;approved\u0007\u009b31m' +
  '\u202e/ fr- mr\u202c \u2066x\u2069 \u{e0072}\u{e006d}\u00ad\u200b\r\nstatus:          APPROVED';
const MESSAGE =
  HOSTILE + 'z'.repeat(256 * 1024 - Buffer.byteLength(JSON.stringify({ message: HOSTILE })));

interface ApiApproval {
  id: string;
  agentId: string;
  status: string;
  orphaned?: boolean;
  params: { message: string };
}

describe('agent-fabric approvals show', () => {
  let sidecar: Running;
  let admin: NodeJS.ProcessEnv;
  let shortId = '';
  let longId = '';

  const pending = async (): Promise<ApiApproval[]> => {
    const listed = await runCli(['approvals', 'list', '--json'], admin);
    expect(listed.code, listed.err).toBe(0);
    return (JSON.parse(listed.out) as { approvals?: ApiApproval[] }).approvals ?? [];
  };

  const park = async (message: string): Promise<string> => {
    const before = new Set((await pending()).map((a) => a.id));
    const agent = await connect(sidecar.url, sidecar.token);
    let failed: unknown;
    agent
      .callTool({ name: 'ev__echo', arguments: { message } }, undefined, { timeout: 600_000 })
      .then(
        (result) => (failed = result),
        (error: unknown) => (failed = error),
      );
    let id = '';
    await until(async () => {
      // Answered before a decision: it was refused, not parked.
      expect(failed).toBeUndefined();
      id = (await pending()).find((a) => !before.has(a.id))?.id ?? '';
      return id !== '';
    }, 60_000);
    return id;
  };

  beforeAll(async () => {
    const dir = tempDir('cli-approvals-show');
    writeEverythingConfig(dir, await freePort(), ADMIN, {
      state: 'memory',
      policies: ECHO_NEEDS_APPROVAL,
      agents: [{ name: 'worker' }],
    });
    sidecar = await serve(dir);
    admin = { FABRIC_URL: sidecar.url, FABRIC_ADMIN_TOKEN: ADMIN };
    shortId = await park('hi');
  }, 120_000);

  it('approvals list says nothing of cut arguments while none was cut', async () => {
    const listed = await runCli(['approvals', 'list'], admin);
    expect(listed.code).toBe(0);
    expect(listed.out).toContain(shortId);
    expect(listed.err).not.toContain('approvals show');
  }, 60_000);

  it('prints the whole hostile arguments escaped, as the same JSON value; list points at it', async () => {
    longId = await park(MESSAGE);

    const listed = await runCli(['approvals', 'list'], admin);
    expect(listed.code).toBe(0);
    expect(listed.out.length).toBeLessThan(2000); // the table row is cut …
    expect(listed.err).toContain('`agent-fabric approvals show <id>` prints them in full'); // … and says where the rest is

    const shown = await runCli(['approvals', 'show', longId], admin);
    expect(shown.code, shown.err).toBe(0);
    expect(shown.out).not.toMatch(HIDDEN);
    const [head, block] = shown.out.split('\narguments:\n') as [string, string];
    const fields = Object.fromEntries(
      head.split('\n').map((l) => [l.slice(0, 17).replace(/:\s*$/, ''), l.slice(17)]),
    );
    expect(fields).toMatchObject({
      id: longId,
      status: 'PENDING',
      agent: (await pending()).find((a) => a.id === longId)!.agentId,
      pool: '-',
      tool: 'ev__echo',
      rule: 'approvals#0',
      reason: 'a human echoes',
      decided: '-',
      approver: '-',
    });
    // The forged `status:` line is inside the escaped JSON string, not a line of its own.
    expect(head.split('\n').filter((l) => l.startsWith('status:'))).toHaveLength(1);
    expect(block).toContain('\\u001b[2J\\u001b]0;approved\\u0007\\u009b31m\\u202e/ fr- mr\\u202c');
    expect(block).toContain('\\udb40\\udc72\\udb40\\udc6d\\u00ad\\u200b\\r\\nstatus:');
    // Every line indented; undone, the block is exactly the arguments the agent sent.
    const lines = block.trimEnd().split('\n');
    expect(lines.every((l) => l.startsWith('  '))).toBe(true);
    expect(JSON.parse(lines.map((l) => l.slice(2)).join('\n'))).toEqual({ message: MESSAGE });

    const json = await runCli(['approvals', 'show', longId, '--json'], admin);
    expect(json.code, json.err).toBe(0);
    expect(json.out).not.toMatch(HIDDEN);
    const answer = JSON.parse(json.out) as { approval: ApiApproval };
    expect(answer.approval).toMatchObject({
      id: longId,
      status: 'APPROVAL_STATUS_PENDING',
      params: { message: MESSAGE },
    });
  }, 120_000);

  it('an unknown id fails with the typed not-found error (exit 1); an agent token is refused (exit 4)', async () => {
    const unknown = await runCli(['approvals', 'show', 'apr_nope'], admin);
    expect(unknown.code).toBe(1);
    expect(unknown.out).toBe('');
    expect(unknown.err).toContain('FABRIC_ERR_APPROVAL_NOT_FOUND');

    const agent = await runCli(['approvals', 'show', shortId], {
      FABRIC_URL: sidecar.url,
      FABRIC_ADMIN_TOKEN: sidecar.token,
    });
    expect(agent.code).toBe(4);
    expect(agent.out).toBe('');

    expect((await runCli(['approvals', 'show'], admin)).code).toBe(2); // missing <id>
  }, 60_000);
});

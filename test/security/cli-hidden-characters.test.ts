/**
 * Found in review: the CLI escaped the characters a terminal acts on (C0/C1 controls, the
 * bidirectional controls) but printed those it draws as nothing as they came: an agent could
 * park a call for approval whose arguments hold text in tag characters (U+E0000–U+E007F, ASCII
 * spelt invisibly, which a model upstream still reads), a soft hyphen or zero-width characters,
 * and `agent-fabric approvals list` showed the operator arguments without them. The CLI now
 * escapes every Default_Ignorable_Code_Point too (the set the dashboard escapes), a character
 * past U+FFFF as one escape (`\u{e0072}`; in JSON its `\uhhhh` surrogate pair, so the JSON still
 * parses to the same value). The real `agent-fabric serve`, the official SDK client as the agent
 * and the real CLI as child processes.
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

const ADMIN = `fab_admin_${'Hq4t'.repeat(8)}`;
/** What a terminal draws as nothing (or acts on), line feeds aside. */
const HIDDEN = /(?!\n)[\p{Cc}\u2028\u2029\p{Default_Ignorable_Code_Point}]/u;
/** `ls`, a soft hyphen, then `rm` in tag characters and the cancel tag: the operator reads `ls`. */
const MESSAGE = 'ls\u00ad\u{e0072}\u{e006d}\u{e007f}';

describe('the CLI shows the characters a terminal draws as nothing, escaped', () => {
  let sidecar: Running;
  let admin: NodeJS.ProcessEnv;

  beforeAll(async () => {
    const dir = tempDir('cli-hidden-characters');
    writeEverythingConfig(dir, await freePort(), ADMIN, {
      state: 'memory',
      policies: ECHO_NEEDS_APPROVAL,
      agents: [{ name: 'worker' }],
    });
    sidecar = await serve(dir);
    admin = { FABRIC_URL: sidecar.url, FABRIC_ADMIN_TOKEN: ADMIN };
  }, 60_000);

  it("approvals list: tag characters and a soft hyphen in an approval's arguments", async () => {
    const agent = await connect(sidecar.url, sidecar.token);
    void agent
      .callTool({ name: 'ev__echo', arguments: { message: MESSAGE } }, undefined, {
        timeout: 600_000,
      })
      .catch(() => undefined);
    const listed = async (): Promise<{ approvals?: { params: { message: string } }[] }> =>
      JSON.parse((await runCli(['approvals', 'list', '--json'], admin)).out) as {
        approvals?: { params: { message: string } }[];
      };
    await until(async () => (await listed()).approvals?.length === 1, 60_000);

    const json = await runCli(['approvals', 'list', '--json'], admin);
    expect(json.code).toBe(0);
    expect(json.out).not.toMatch(HIDDEN);
    expect(json.out).toContain('"message": "ls\\u00ad\\udb40\\udc72\\udb40\\udc6d\\udb40\\udc7f"');
    // The same value: the escapes stand for what the agent sent.
    const parsed = JSON.parse(json.out) as { approvals: { params: { message: string } }[] };
    expect(parsed.approvals[0]!.params.message).toBe(MESSAGE);

    const table = await runCli(['approvals', 'list'], admin);
    expect(table.code).toBe(0);
    expect(table.out).not.toMatch(HIDDEN);
    expect(table.out.trimEnd().split('\n')).toHaveLength(2);
    expect(table.out).toContain('{"message":"ls\\xad\\u{e0072}\\u{e006d}\\u{e007f}"}');
  }, 180_000);
});

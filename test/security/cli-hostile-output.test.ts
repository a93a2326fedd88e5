/**
 * Found in review: what the CLI printed outside its tables reached the operator's terminal raw.
 * - The error line of every command (`agent-fabric: …`, main.ts) quoted the sidecar's error
 *   message as it came: whatever answers at --url (a hostile or compromised sidecar, a proxy)
 *   could send ESC/OSC sequences (retitle the terminal, clear the screen) and forge lines.
 * - `config check` printed the keys of the file it checks raw, in its problems (stderr) — and
 *   `serve` the same in its last line: checking a config received from someone else ran its
 *   escape sequences in the operator's terminal.
 * - `--json` of `pools scale`, `pools drain`, `agents drain`, `config check` and `policy test`
 *   was plain `JSON.stringify`, which leaves C1 controls (8-bit CSI) and the bidirectional
 *   controls raw.
 * Now error lines are `printable`, those JSON outputs `printableJson`, and every line written to
 * stdout passes `terminalSafe`. Real CLI processes against a hostile HTTP server, a hostile
 * config file and a real sidecar.
 */
import { createServer, type Server } from 'node:http';
import { writeFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { terminalSafe } from '../../src/cli/format.js';
import type { Sidecar } from '../../src/server/sidecar.js';
import { runCli } from '../fixtures/cli-process.js';
import {
  ADMIN_TOKEN,
  api,
  closeSidecar,
  DEFAULT_ALLOW,
  startTestSidecar,
  tempDir,
} from '../fixtures/gateway/harness.js';

/** What a terminal acts on, line feeds aside. */
const CONTROL =
  // eslint-disable-next-line no-control-regex
  /[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]/;
const EVIL = 'evil\u001b]0;PWNED\u0007\u001b[2J\u009b31m\u202e\nforged line';

let sidecar: Sidecar | undefined;
let server: Server | undefined;
afterEach(async () => {
  await closeSidecar(sidecar);
  sidecar = undefined;
  await new Promise((resolve) => (server ? server.close(resolve) : resolve(undefined)));
  server = undefined;
});

/** An HTTP server on a free port that answers every request with `status` and `body`. */
async function hostile(status: number, body: string): Promise<string> {
  server = createServer((_req, res) => {
    res.writeHead(status, { 'content-type': 'application/json' });
    res.end(body);
  });
  await new Promise<void>((resolve) => server!.listen(0, '127.0.0.1', resolve));
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

describe('the CLI prints no control character it was sent', () => {
  it("a sidecar's error message: one escaped error line, exit 1", async () => {
    const url = await hostile(400, JSON.stringify({ code: 'FABRIC_ERR_X', message: EVIL }));
    const run = await runCli(['pools', '--url', url], { FABRIC_ADMIN_TOKEN: ADMIN_TOKEN });
    expect(run.code).toBe(1);
    expect(run.err).not.toMatch(CONTROL);
    expect(run.err.trimEnd().split('\n')).toEqual([
      'agent-fabric: POST /api/fabric.v1.FabricService/ListPools: FABRIC_ERR_X: evil\\x1b]0;PWNED\\x07\\x1b[2J\\x9b31m\\u{202e}\\x0aforged line',
    ]);
  });

  it('config check and serve of a hostile config: escaped problems; JSON that parses back', async () => {
    const file = join(tempDir('cli-hostile-config'), 'fabric.json');
    writeFileSync(file, JSON.stringify({ http: { port: 0, [EVIL]: 1 } }));
    const text = await runCli(['config', 'check', file]);
    expect(text.code).toBe(1);
    expect(text.err).not.toMatch(CONTROL);
    expect(text.err).toContain('http.evil\\x1b]0;PWNED\\x07');
    const json = await runCli(['config', 'check', '--json', file]);
    expect(json.code).toBe(1);
    expect(json.out).not.toMatch(CONTROL);
    const parsed = JSON.parse(json.out) as { problems: { path: string }[] };
    expect(parsed.problems.map((p) => p.path)).toEqual([`http.${EVIL}`]);
    const serve = await runCli(['serve', '--config', file]);
    expect(serve.code).toBe(1);
    expect(serve.err).not.toMatch(CONTROL);
    expect(serve.err.trimEnd().split('\n').at(-1)).toContain('FABRIC_ERR_CONFIG_FILE');
  });

  it('pools scale --json: a pool name with bidirectional controls comes out escaped', async () => {
    sidecar = await startTestSidecar({ policies: [DEFAULT_ALLOW] });
    const name = 'pool\u202egnp.exe\u2066'; // the sidecar refuses C0/C1 in names, not these
    const created = await api(sidecar, 'FabricService/CreatePool', {
      poolId: 'p1',
      name,
      model: 'm',
      executor: 'remote',
      minAgents: 0,
      maxAgents: 2,
    });
    expect(created.status).toBe(200);
    const run = await runCli(
      ['pools', 'scale', 'p1', '1', '--json', '--url', new URL(sidecar.url!).origin],
      { FABRIC_ADMIN_TOKEN: ADMIN_TOKEN },
    );
    expect(run.err).toBe('');
    expect(run.code).toBe(0);
    expect(run.out).not.toMatch(CONTROL);
    const done = run.out
      .trimEnd()
      .split('\n')
      .map((l) => JSON.parse(l) as { step: string; pool?: { name: string; agentIds: string[] } })
      .find((l) => l.step === 'done');
    expect(done?.pool?.name).toBe(name);
    // and the pool did grow: the sidecar has the agent the CLI reported
    const pool = (await (await api(sidecar, 'FabricService/GetPool', { poolId: 'p1' })).json()) as {
      pool: { agentIds: string[] };
    };
    expect(pool.pool.agentIds).toEqual(done?.pool?.agentIds);
    expect(pool.pool.agentIds).toHaveLength(1);
  });

  it('terminalSafe keeps line feeds and other text, escapes the rest JSON-compatibly', () => {
    const value = { k: 'a\u009b\u202eb é 名\u00ad\u{e0072}' };
    const json = JSON.stringify(value, null, 2);
    const safe = terminalSafe(`${json}\nline\u001b[2J`);
    expect(safe).not.toMatch(CONTROL);
    expect(safe).not.toMatch(/\p{Default_Ignorable_Code_Point}/u);
    expect(safe).toContain('\\u00ad\\udb40\\udc72'); // a surrogate pair, JSON's escape of U+E0072
    expect(safe.split('\n')).toHaveLength(4);
    expect(JSON.parse(safe.split('\nline')[0]!)).toEqual(value);
    expect(safe.endsWith('line\\u001b[2J')).toBe(true);
  });
});

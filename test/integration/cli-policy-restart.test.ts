/**
 * Policies changed at run time across restarts of the real `agent-fabric serve` (child
 * processes, a real server-everything upstream, the official SDK client over Streamable HTTP,
 * the Operator API over HTTP, a real SQLite state file in a temp dir, SIGKILL):
 *
 * - a deny policy added with `PolicyService/AddPolicy` is in the state file when the call
 *   answers, survives a SIGKILL right after, and denies a real MCP call after the restart;
 * - a config policy removed with `RemovePolicy` stays removed (a tombstone), one replaced with
 *   `ReplacePolicy` keeps its replacement; config policies never touched are not stored;
 * - start-up logs each stored change it applied;
 * - hostile: a refused AddPolicy (too deep, duplicate name) stores nothing; concurrent
 *   Add/Remove of one name leave the store agreeing with memory; a stored policy that no longer
 *   validates is a start-up error naming it, not a silent drop.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, describe, expect, it } from 'vitest';
import { callApi } from '../fixtures/api.js';
import { EVERYTHING_BIN, tempDir, text, until } from '../fixtures/gateway/harness.js';
import {
  cleanUp,
  connect,
  freePort,
  serve,
  spawnServe,
  stop,
  type Running,
} from '../fixtures/state/serve.js';

afterAll(cleanUp);

const ADMIN = `fab_admin_${'Pq7W'.repeat(8)}`;

function writeConfig(dir: string, port: number): void {
  writeFileSync(
    join(dir, 'fabric.json'),
    JSON.stringify({
      http: { host: '127.0.0.1', port },
      adminToken: ADMIN,
      upstreams: {
        ev: { command: process.execPath, args: [EVERYTHING_BIN, 'stdio'], stderr: 'ignore' },
      },
      policies: [
        {
          name: 'no-sum',
          priority: 50,
          rules: [{ tool: 'ev__get-sum', action: 'deny', reason: 'config says no sums' }],
        },
        {
          name: 'no-env',
          priority: 50,
          rules: [{ tool: 'ev__get-env', action: 'deny', reason: 'config says no env' }],
        },
        { name: 'default-allow', rules: [{ tool: '*', action: 'allow' }] },
      ],
      agents: [{ name: 'worker' }],
    }),
  );
}

interface Row {
  id: string;
  data: string;
}

/** The `policy` records of the state file (read-only, beside the live sidecar). */
function stored(statePath: string): Map<string, Record<string, unknown>> {
  const db = new Database(statePath, { readonly: true, fileMustExist: true });
  try {
    const rows = db.prepare<[], Row>("SELECT id, data FROM records WHERE kind = 'policy'").all();
    return new Map(rows.map((r) => [r.id, JSON.parse(r.data) as Record<string, unknown>]));
  } finally {
    db.close();
  }
}

async function api(r: Running, method: string, body: unknown): Promise<Response> {
  return callApi(r.url, `PolicyService/${method}`, body, ADMIN);
}

function policyJson(policy: unknown): { policyJson: string } {
  return { policyJson: Buffer.from(JSON.stringify(policy)).toString('base64') };
}

async function policyNames(r: Running): Promise<string[]> {
  const res = await api(r, 'ListPolicies', {});
  expect(res.status).toBe(200);
  const body = (await res.json()) as { policies?: Array<{ name: string }> };
  return (body.policies ?? []).map((p) => p.name);
}

const EMERGENCY = {
  name: 'emergency',
  priority: 1000,
  rules: [{ tool: 'ev__echo', action: 'deny', reason: 'emergency stop on echo' }],
};

describe('agent-fabric serve: runtime policy changes over a state file', () => {
  it('keeps added, replaced and removed policies across SIGKILL; start-up applies and logs them', async () => {
    const dir = tempDir('cli-policy');
    const port = await freePort();
    const statePath = join(dir, '.fabric', 'state.db');
    writeConfig(dir, port);

    const first = await serve(dir);
    const worker = first.token;
    // Config policies are not stored.
    expect([...stored(statePath).keys()]).toEqual([]);
    const before = await connect(first.url, worker);
    expect(
      text(await before.callTool({ name: 'ev__echo', arguments: { message: 'hi' } })),
    ).toContain('hi');

    // Hostile: refused adds store nothing.
    let deep: unknown = 'x';
    for (let i = 0; i < 200; i++) deep = { a: deep };
    const tooDeep = await api(first, 'AddPolicy', {
      ...policyJson({ name: 'deep', rules: [{ tool: '*', action: 'deny', conditions: deep }] }),
    });
    expect(tooDeep.status).toBeGreaterThanOrEqual(400);
    const taken = await api(first, 'AddPolicy', policyJson({ ...EMERGENCY, name: 'no-sum' }));
    expect(taken.status).toBe(409);
    const invalid = await api(first, 'AddPolicy', policyJson({ name: 'bad', rules: [{}] }));
    expect(invalid.status).toBe(400);
    expect([...stored(statePath).keys()]).toEqual([]);

    // The changes, each on disk when its call answers.
    expect((await api(first, 'AddPolicy', policyJson(EMERGENCY))).status).toBe(200);
    expect(stored(statePath).get('emergency')).toMatchObject({
      policy: { name: 'emergency', priority: 1000 },
    });
    expect((await api(first, 'RemovePolicy', { name: 'no-sum' })).status).toBe(200);
    expect(stored(statePath).get('no-sum')).toMatchObject({ change: 'removed' });
    const replaced = await api(
      first,
      'ReplacePolicy',
      policyJson({
        name: 'no-env',
        priority: 50,
        rules: [{ tool: 'ev__get-tiny-image', action: 'deny', reason: 'replaced: no images' }],
      }),
    );
    expect(replaced.status).toBe(200);
    expect(stored(statePath).get('no-env')).toMatchObject({
      policy: { name: 'no-env', rules: [{ tool: 'ev__get-tiny-image' }] },
    });
    expect(stored(statePath).has('default-allow')).toBe(false);

    // Concurrent Add/Remove of one name: whatever memory ends with, the store has too.
    const race = { name: 'race', rules: [{ tool: 'ev__nothing', action: 'deny' }] };
    await Promise.all(
      Array.from({ length: 40 }, (_, i) =>
        i % 2 === 0
          ? api(first, 'AddPolicy', policyJson(race))
          : api(first, 'RemovePolicy', { name: 'race' }),
      ),
    );
    // ('race' is not a config policy: a removal leaves no record, an addition does.)
    const raceLive = (await policyNames(first)).includes('race');
    expect(stored(statePath).has('race')).toBe(raceLive);

    const liveBefore = await policyNames(first);
    // kill -9 right after the answered change.
    await stop(first, 'SIGKILL');

    const second = await serve(dir);
    expect(await policyNames(second)).toEqual(liveBefore);
    expect(liveBefore).toContain('emergency');
    expect(liveBefore).not.toContain('no-sum');
    const client = await connect(second.url, worker);
    // The emergency deny (no conditions) is in force: the tool is hidden, and a call of it is
    // answered as an unknown tool's (gateway.hideDeniedTools).
    expect((await client.listTools()).tools.map((t) => t.name)).not.toContain('ev__echo');
    await expect(
      client.callTool({ name: 'ev__echo', arguments: { message: 'hi' } }),
    ).rejects.toThrow('Unknown tool: ev__echo');
    // The removed config policy stays removed; the replaced one keeps its replacement.
    const sum = await client.callTool({ name: 'ev__get-sum', arguments: { a: 1, b: 2 } });
    expect(sum.isError).toBeFalsy();
    expect(text(sum)).toContain('3');
    const env = await client.callTool({ name: 'ev__get-env', arguments: {} });
    expect(env.isError).toBeFalsy();
    // The operator is told why the running set differs from the config.
    await until(() => /policy emergency: added .*state file/.test(second.err()), 10_000);
    expect(second.err()).toMatch(/policy no-sum: removed .*state file/);
    expect(second.err()).toMatch(/policy no-env: replaced .*state file/);

    // A stored policy that no longer validates is a start-up error naming it.
    await stop(second, 'SIGTERM');
    const db = new Database(statePath);
    db.prepare("UPDATE records SET data = ? WHERE kind = 'policy' AND id = 'emergency'").run(
      JSON.stringify({
        ...stored(statePath).get('emergency'),
        policy: { name: 'emergency', rules: [{ tool: 'ev__echo', action: 'explode' }] },
      }),
    );
    db.close();
    const broken = spawnServe(dir);
    const code = await new Promise<number | null>((resolve) =>
      broken.child.once('exit', (c) => resolve(c)),
    );
    expect(code).not.toBe(0);
    expect(broken.out()).not.toContain('"mcpServers"');
    expect(broken.err()).toContain('FABRIC_ERR_STATE_STORE');
    expect(broken.err()).toMatch(
      /policy "emergency" \(changed at run time at [^)]+\) no longer validates/,
    );
    expect(broken.err()).toContain(statePath);
  }, 180_000);
});

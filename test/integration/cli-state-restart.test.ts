/**
 * Identity and money survive a restart of the real `agent-fabric serve` (child processes, a real
 * server-everything upstream, the official SDK client, a real SQLite state file in a temp dir):
 *
 * - a clean restart prints the same agent token, and a client configured before it (same URL,
 *   same token) works after it; the generated admin token still authenticates and is not shown
 *   again (it is kept only as a hash);
 * - after SIGKILL, usage settled before the kill is still counted — read from the file on disk,
 *   and enforced: an agent at its cost limit stays refused after the restart;
 * - a limit raised in the config applies to the kept agent, on top of the usage it kept.
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, describe, expect, it } from 'vitest';
import { callApi } from '../fixtures/api.js';
import { DEFAULT_ALLOW, EVERYTHING_BIN, tempDir, text } from '../fixtures/gateway/harness.js';
import { cleanUp, connect, freePort, serve, stop } from '../fixtures/state/serve.js';

const LIMIT = 2;
afterAll(cleanUp);

/** Cost used by `agent:<id>` as written in the state file (read-only, beside the live sidecar). */
function costOnDisk(path: string, agentId: string): number {
  const db = new Database(path, { readonly: true, fileMustExist: true });
  try {
    const row = db
      .prepare<[string], { data: string }>('SELECT data FROM budgets WHERE scope = ?')
      .get(`agent:${agentId}`);
    if (row === undefined) return 0;
    // Every bucket of the stored day window is inside the window: this test runs in minutes.
    const cost = (JSON.parse(row.data) as { cost: { used?: number; buckets?: number[] } }).cost;
    return cost.used ?? (cost.buckets ?? []).reduce((a, b) => a + b, 0);
  } finally {
    db.close();
  }
}

function writeConfig(dir: string, port: number, limit: number): void {
  writeFileSync(
    join(dir, 'fabric.json'),
    JSON.stringify({
      http: { host: '127.0.0.1', port },
      upstreams: {
        ev: { command: process.execPath, args: [EVERYTHING_BIN, 'stdio'], stderr: 'ignore' },
      },
      policies: [DEFAULT_ALLOW],
      toolCosts: { ev__echo: 1 },
      agents: [{ name: 'worker', budget: { maxCostPerDay: limit } }],
    }),
  );
}

describe('agent-fabric serve over a state file', () => {
  it('restarts with the same agent token and budget usage, after SIGTERM and after SIGKILL', async () => {
    const dir = tempDir('cli-state');
    const port = await freePort();
    writeConfig(dir, port, LIMIT);
    const statePath = join(dir, '.fabric', 'state.db');

    // First start: a token is made and shown, and so is the generated admin token.
    const first = await serve(dir);
    expect(first.out).toContain(`state:       ${statePath}`);
    expect(first.adminLine).toMatch(/^fab_admin_\S+$/);
    const adminToken = first.adminLine;
    const agentId = /agent token:\s+\S+\s+\(worker, ([0-9a-f-]+)\)/.exec(first.out)![1]!;
    const before = await connect(first.url, first.token);
    expect(
      text(await before.callTool({ name: 'ev__echo', arguments: { message: 'one' } })),
    ).toContain('one');
    expect(await stop(first, 'SIGTERM')).toBe(0);
    // The file never holds a credential in plaintext.
    const wal = `${statePath}-wal`;
    const bytes =
      readFileSync(statePath).toString('latin1') +
      (existsSync(wal) ? readFileSync(wal).toString('latin1') : '');
    expect(bytes).not.toContain(first.token);
    expect(bytes).not.toContain(adminToken);
    expect(costOnDisk(statePath, agentId)).toBe(1);

    // Clean restart: same URL, same token; the client configured before works again.
    const second = await serve(dir);
    expect(second.url).toBe(first.url);
    expect(second.token).toBe(first.token);
    expect(second.adminLine).not.toContain(adminToken);
    expect(second.adminLine).toContain('generated at an earlier start');
    const admin = await callApi(second.url, 'ApprovalService/ListApprovals', {}, adminToken);
    expect(admin.status).toBe(200);
    const after = await connect(second.url, first.token);
    expect(
      text(await after.callTool({ name: 'ev__echo', arguments: { message: 'two' } })),
    ).toContain('two');
    // The answer came after the settle was committed: on disk (read beside the running sidecar).
    expect(costOnDisk(statePath, agentId)).toBe(LIMIT);
    await stop(second, 'SIGKILL');

    // After SIGKILL: same token, the usage before the kill still counts, the agent stays refused.
    const third = await serve(dir);
    expect(third.token).toBe(first.token);
    const refusedClient = await connect(third.url, first.token);
    const refused = await refusedClient.callTool({
      name: 'ev__echo',
      arguments: { message: 'three' },
    });
    expect(refused.isError).toBe(true);
    expect(text(refused)).toContain('FABRIC_ERR_BUDGET_EXCEEDED');
    expect(costOnDisk(statePath, agentId)).toBe(LIMIT);
    expect(await stop(third, 'SIGTERM')).toBe(0);

    // The config raises the limit: the kept agent gets the new limit, its usage still counts.
    writeConfig(dir, port, LIMIT + 1);
    const fourth = await serve(dir);
    expect(fourth.token).toBe(first.token);
    const raised = await connect(fourth.url, first.token);
    const ok = await raised.callTool({ name: 'ev__echo', arguments: { message: 'four' } });
    expect(ok.isError).toBeFalsy();
    const over = await raised.callTool({ name: 'ev__echo', arguments: { message: 'five' } });
    expect(text(over)).toContain('FABRIC_ERR_BUDGET_EXCEEDED');
    expect(await stop(fourth, 'SIGTERM')).toBe(0);
  }, 120_000);
});

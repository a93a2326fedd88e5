/**
 * Two Operator API mutations of the same object at once (a real sidecar over HTTP with a SQLite
 * state file, a real server-filesystem upstream, the official SDK client): exactly one wins,
 * the loser gets a clear, coded answer, and what the fabric and the state file hold agrees with
 * the winner.
 *
 * - Approve and Deny of one approval, sent together: one 200, one `FABRIC_ERR_APPROVAL_DECIDED`;
 *   the parked call and the record on disk follow the winner;
 * - ScalePool up and down, and DeletePool racing ScalePool: no live agent of the pool is left
 *   outside it, and the pool on disk is what the fabric reports.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { describe, expect, it } from 'vitest';
import { AgentStatus } from '../../src/agent.js';
import { listApprovals } from '../fixtures/api.js';
import {
  ADMIN_TOKEN,
  DEFAULT_ALLOW,
  agentToken,
  api,
  filesystemUpstream,
  httpClient,
  tempDir,
  text,
  until,
} from '../fixtures/gateway/harness.js';
import {
  APPROVE_WRITES,
  closeRaceSidecarAfterEach,
  firstPendingApproval,
  startRaceSidecar,
} from '../fixtures/races.js';

closeRaceSidecarAfterEach();

/** The record of `kind` with `id` as the state file holds it (read-only). */
function onDisk<T>(path: string, kind: string, id: string): T | undefined {
  const db = new Database(path, { readonly: true, fileMustExist: true });
  try {
    const row = db
      .prepare<[string, string], { data: string }>(
        'SELECT data FROM records WHERE kind = ? AND id = ?',
      )
      .get(kind, id);
    return row === undefined ? undefined : (JSON.parse(row.data) as T);
  } finally {
    db.close();
  }
}

describe('two operator mutations of one object at once', () => {
  it('Approve and Deny together: one wins, the other is told, the call and the disk agree', async () => {
    const dir = tempDir('races-operator');
    const statePath = join(dir, 'state.db');
    const root = tempDir('races-operator-fs');
    const s = await startRaceSidecar({
      state: { path: statePath },
      upstreams: { fs: filesystemUpstream(root) },
      policies: [APPROVE_WRITES, DEFAULT_ALLOW],
      agents: [{ name: 'worker' }],
    });
    const client = await httpClient(s.url!, agentToken(s, 'worker'));
    for (const round of [0, 1, 2, 3]) {
      const target = join(root, `f${round}.txt`);
      const call = client.callTool(
        { name: 'fs__write_file', arguments: { path: target, content: 'x' } },
        undefined,
        { timeout: 60_000 },
      );
      const parked = await firstPendingApproval(s);
      const id = parked!.id;
      // Which one is sent first alternates.
      const requests =
        round % 2 === 0
          ? [
              api(s, 'ApprovalService/Approve', { id }),
              api(s, 'ApprovalService/Deny', { id, reason: 'no' }),
            ]
          : [
              api(s, 'ApprovalService/Deny', { id, reason: 'no' }),
              api(s, 'ApprovalService/Approve', { id }),
            ];
      const answers = await Promise.all(requests);
      const statuses = answers.map((r) => r.status).sort();
      expect(statuses[0]).toBe(200);
      expect(statuses[1]).toBeGreaterThanOrEqual(400);
      expect(statuses[1]).toBeLessThan(500);
      const loser = answers.find((r) => r.status !== 200)!;
      expect(await loser.text()).toContain('FABRIC_ERR_APPROVAL_DECIDED');
      const result = await call;
      const [decided] = (await listApprovals(s.url!, ADMIN_TOKEN)).filter((a) => a.id === id);
      if (decided!.status === 'approved') {
        expect(result.isError).toBeFalsy();
        expect(existsSync(target)).toBe(true);
      } else {
        expect(decided!.status).toBe('denied');
        expect(text(result)).toContain('FABRIC_ERR_APPROVAL_DENIED');
        expect(existsSync(target)).toBe(false);
      }
      await until(
        () => onDisk<{ status: string }>(statePath, 'approval', id)?.status === decided!.status,
      );
    }
    await client.close();
  }, 60_000);

  it('ScalePool up and down, and DeletePool racing ScalePool, leave no live agent outside its pool', async () => {
    const dir = tempDir('races-pools');
    const statePath = join(dir, 'state.db');
    const s = await startRaceSidecar({
      state: { path: statePath },
      policies: [DEFAULT_ALLOW],
      pools: [{ id: 'crew', minAgents: 0, maxAgents: 6 }],
    });
    const fabric = s.fabric!;
    const live = (): string[] =>
      fabric.lifecycle
        .listAgents()
        .filter((a) => a.poolId === 'crew' && a.status !== AgentStatus.TERMINATED)
        .map((a) => a.id)
        .sort();
    const answers = await Promise.all([
      api(s, 'FabricService/ScalePool', { poolId: 'crew', targetSize: 5 }),
      api(s, 'FabricService/ScalePool', { poolId: 'crew', targetSize: 2 }),
      api(s, 'FabricService/ScalePool', { poolId: 'crew', targetSize: 4 }),
    ]);
    for (const a of answers) expect(a.status).toBe(200);
    const pool = await fabric.getPool('crew');
    await until(() => live().length === pool.currentAgents.length);
    expect(live()).toEqual([...pool.currentAgents].sort());
    await until(() => {
      const stored = onDisk<{ agentIds: string[] }>(statePath, 'pool', 'crew');
      return JSON.stringify([...(stored?.agentIds ?? [])].sort()) === JSON.stringify(live());
    });

    const [deleted, scaled] = await Promise.all([
      api(s, 'FabricService/DeletePool', { poolId: 'crew' }),
      api(s, 'FabricService/ScalePool', { poolId: 'crew', targetSize: 6 }),
    ]);
    expect(deleted.status).toBe(200);
    if (scaled.status !== 200) {
      expect(scaled.status).toBeGreaterThanOrEqual(400);
      expect(scaled.status).toBeLessThan(500);
      expect(await scaled.text()).toMatch(/FABRIC_ERR_POOL_/);
    }
    await until(() => live().length === 0);
    await expect(fabric.getPool('crew')).rejects.toThrow();
    await until(() => onDisk(statePath, 'pool', 'crew') === undefined);
  }, 60_000);
});

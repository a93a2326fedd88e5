/**
 * Approvals and pinned credentials across restarts of the real `agent-fabric serve` (child
 * processes, a real server-everything upstream, the official SDK client, a real SQLite state
 * file in a temp dir, SIGKILL):
 *
 * - a call parked on a `require_approval` policy leaves a pending approval that survives the
 *   kill with the same expiry; the Operator API (`/api/`) can still approve it afterwards (the decision is
 *   recorded, the approval shows who decided and that no call waited) — and that decision is not
 *   applied to the agent's next call, which asks for a new approval;
 * - pending approvals restored after the restart still count against `maxPendingPerAgent`;
 * - an approval whose expiry passed while the sidecar was down shows `expired` after the start;
 * - an agent's token neither lists nor decides approvals (checked in the state file too);
 * - credentials made before the kill still authenticate; a credential pinned in the config
 *   works, is never printed or logged, and a changed pin replaces the old one.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, describe, expect, it } from 'vitest';
import type { Approval } from '../../src/policy/approval-manager.js';
import { callApi, listApprovals, type ApiApproval } from '../fixtures/api.js';
import { EVERYTHING_BIN, tempDir, text, until } from '../fixtures/gateway/harness.js';
import { cleanUp, connect, freePort, serve, stop, type Running } from '../fixtures/state/serve.js';

afterAll(cleanUp);

const ADMIN = `fab_admin_${'k3Q9'.repeat(8)}`;
const PINNED = 'pin_7Hq2LxV9mZ4rT8wK1nB6cY3dF5gJ0sPaE';
const PINNED_2 = 'pin_Qe4Rt7Yu1Io9Pa3Sd6Fg2Hj8Kl5Zx0CvB';

function writeConfig(dir: string, port: number, ttlSeconds: number): void {
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
          name: 'approvals',
          priority: 100,
          rules: [{ tool: 'ev__echo', action: 'require_approval', reason: 'a human echoes' }],
        },
        { name: 'default-allow', rules: [{ tool: '*', action: 'allow' }] },
      ],
      approvals: { timeoutSeconds: ttlSeconds, maxPendingPerAgent: 2 },
      agents: [{ name: 'worker' }, { name: 'deployed', credential: '${env:PINNED_TOKEN}' }],
    }),
  );
}

function approvals(r: Running, status?: 'pending'): Promise<ApiApproval[]> {
  return listApprovals(r.url, ADMIN, status);
}

/** The approval as written in the state file (read-only, beside the live sidecar). */
function onDisk(statePath: string, id: string): Approval | undefined {
  const db = new Database(statePath, { readonly: true, fileMustExist: true });
  try {
    const row = db
      .prepare<[string], { data: string }>(
        "SELECT data FROM records WHERE kind = 'approval' AND id = ?",
      )
      .get(id);
    return row === undefined ? undefined : (JSON.parse(row.data) as Approval);
  } finally {
    db.close();
  }
}

/** Starts an echo call that parks for approval; resolves with its new approval (and the call). */
async function park(r: Running, token: string, message: string) {
  const before = new Set((await approvals(r, 'pending')).map((a) => a.id));
  const client = await connect(r.url, token);
  const call = client
    .callTool({ name: 'ev__echo', arguments: { message } }, undefined, { timeout: 600_000 })
    .then(
      (result) => ({ result }),
      (error: unknown) => ({ error }),
    );
  let parked: ApiApproval | undefined;
  await until(async () => {
    parked = (await approvals(r, 'pending')).find((a) => !before.has(a.id));
    return parked !== undefined;
  }, 30_000);
  return { approval: parked!, call };
}

describe('agent-fabric serve: approvals and pinned credentials over a state file', () => {
  it('keeps pending approvals across SIGKILL, decides them after, expires what expired while down', async () => {
    const dir = tempDir('cli-approvals');
    const port = await freePort();
    const statePath = join(dir, '.fabric', 'state.db');
    writeConfig(dir, port, 3600);
    const env = { PINNED_TOKEN: PINNED };

    const first = await serve(dir, env);
    const worker = first.token;
    // The pinned token works and is shown nowhere.
    expect(first.out).toMatch(/agent token: \(pinned in the config; not shown\)\s+\(deployed, /);
    const deployed = await connect(first.url, PINNED);
    const add = await deployed.callTool({ name: 'ev__get-sum', arguments: { a: 1, b: 2 } });
    expect(add.isError).toBeFalsy();

    const { approval: parked, call: dying } = await park(first, worker, 'first');
    expect(onDisk(statePath, parked.id)).toMatchObject({ status: 'pending', tool: 'ev__echo' });
    await stop(first, 'SIGKILL');
    expect(await dying).toHaveProperty('error'); // the connection died with the sidecar
    expect(first.out + first.err()).not.toContain(PINNED);

    // After the kill: the approval is still pending with the same expiry; nobody waits for it.
    const second = await serve(dir, env);
    expect(second.token).toBe(worker);
    const [restored, ...others] = await approvals(second, 'pending');
    expect(others).toEqual([]);
    expect(restored).toMatchObject({
      id: parked.id,
      expiresAt: parked.expiresAt,
      createdAt: parked.createdAt,
    });
    expect(onDisk(statePath, parked.id)).toMatchObject({ orphaned: true });

    // Hostile: an agent's token neither reads nor decides approvals; nothing changes on disk.
    expect((await callApi(second.url, 'ApprovalService/ListApprovals', {}, worker)).status).toBe(
      403,
    );
    const forged = await callApi(second.url, 'ApprovalService/Approve', { id: parked.id }, PINNED);
    expect(forged.status).toBe(403);
    expect(onDisk(statePath, parked.id)?.status).toBe('pending');

    // The restored approval counts against maxPendingPerAgent (2): one more parks, then refused.
    const { approval: fresh, call: waiting } = await park(second, worker, 'second');
    expect(fresh.id).not.toBe(parked.id);
    const flooder = await connect(second.url, worker);
    const refused = await flooder.callTool({ name: 'ev__echo', arguments: { message: 'third' } });
    expect(text(refused)).toContain('FABRIC_ERR_APPROVAL_LIMIT');
    expect((await approvals(second, 'pending')).length).toBe(2);

    // The approval of the dead call can still be decided: recorded with its approver (the
    // admin credential's name)…
    const res = await callApi(second.url, 'ApprovalService/Approve', { id: parked.id }, ADMIN);
    expect(res.status).toBe(200);
    expect(onDisk(statePath, parked.id)).toMatchObject({
      status: 'approved',
      approver: 'admin',
      orphaned: true,
    });
    // …and it does not let the agent's other parked call through: that one has its own approval.
    expect((await approvals(second, 'pending')).map((a) => a.id)).toEqual([fresh.id]);
    await callApi(second.url, 'ApprovalService/Deny', { id: fresh.id, reason: 'no' }, ADMIN);
    const denied = await waiting;
    expect('result' in denied && text(denied.result as never)).toContain(
      'FABRIC_ERR_APPROVAL_DENIED',
    );

    // A short TTL: the next approval's expiry passes while the sidecar is down.
    await stop(second, 'SIGTERM');
    writeConfig(dir, port, 5);
    const third = await serve(dir, env);
    const { approval: shortLived } = await park(third, worker, 'fourth');
    await stop(third, 'SIGKILL');
    expect(onDisk(statePath, shortLived.id)?.status).toBe('pending');
    await until(() => Date.now() > shortLived.expiresAt + 100, 30_000);

    // The pin changes: the new token replaces the old one. Old worker token still works.
    writeConfig(dir, port, 3600);
    const fourth = await serve(dir, { PINNED_TOKEN: PINNED_2 });
    const expired = (await approvals(fourth)).find((a) => a.id === shortLived.id);
    expect(expired).toMatchObject({ status: 'expired', decidedAt: shortLived.expiresAt });
    expect(onDisk(statePath, shortLived.id)?.status).toBe('expired');
    const again = await connect(fourth.url, worker);
    expect(
      (await again.callTool({ name: 'ev__get-sum', arguments: { a: 2, b: 3 } })).isError,
    ).toBeFalsy();
    await expect(connect(fourth.url, PINNED)).rejects.toThrow();
    const repinned = await connect(fourth.url, PINNED_2);
    const sum = await repinned.callTool({ name: 'ev__get-sum', arguments: { a: 2, b: 3 } });
    expect(text(sum)).toContain('5');
    expect(await stop(fourth, 'SIGTERM')).toBe(0);
    for (const r of [first, second, third, fourth]) {
      expect(r.out + r.err()).not.toContain(PINNED);
      expect(r.out + r.err()).not.toContain(PINNED_2);
    }
  }, 180_000);
});

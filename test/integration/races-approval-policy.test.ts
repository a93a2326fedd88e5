/**
 * Races between a call parked for a human approval and an operator changing the policy
 * (a real sidecar over HTTP, a real server-filesystem upstream writing to a temp dir, the
 * official SDK client, the Operator API): an approval decides the `require_approval` rule it was asked for, not the
 * policy as it is when the human clicks. A deny rule added (or the approval rule removed, so
 * the default action denies) while the call waits refuses it when the human approves, and the
 * upstream never runs it; a change that still lets it through runs it as approved.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import { listApprovals, type ApiApproval } from '../fixtures/api.js';
import {
  ADMIN_TOKEN,
  agentToken,
  api,
  closeSidecar,
  filesystemUpstream,
  httpClient,
  startTestSidecar,
  tempDir,
  text,
  until,
} from '../fixtures/gateway/harness.js';

let sidecar: Sidecar | undefined;
afterEach(async () => {
  await closeSidecar(sidecar);
  sidecar = undefined;
});

let root = '';

async function start(defaultAllow: boolean): Promise<Sidecar> {
  root = tempDir('races-approval');
  sidecar = await startTestSidecar({
    upstreams: { fs: filesystemUpstream(root) },
    policies: [
      {
        name: 'approvals',
        priority: 100,
        rules: [{ tool: 'fs__write_file', action: 'require_approval', reason: 'a human writes' }],
      },
      ...(defaultAllow ? [{ name: 'default-allow', rules: [{ tool: '*', action: 'allow' }] }] : []),
    ],
    agents: [{ name: 'worker' }],
  });
  return sidecar;
}

/** Starts a write of `name` that parks for approval; resolves with its approval and the call. */
async function park(s: Sidecar, name: string) {
  const client = await httpClient(s.url!, agentToken(s, 'worker'));
  const call = client.callTool(
    { name: 'fs__write_file', arguments: { path: join(root, name), content: 'written' } },
    undefined,
    { timeout: 120_000 },
  );
  let parked: ApiApproval | undefined;
  await until(async () => {
    parked = (await listApprovals(s.url!, ADMIN_TOKEN, 'pending'))[0];
    return parked !== undefined;
  }, 30_000);
  return { approval: parked!, call, client };
}

async function approve(s: Sidecar, id: string): Promise<void> {
  const res = await api(s, 'ApprovalService/Approve', { id });
  expect(res.status).toBe(200);
}

describe('a policy change while a call waits for approval', () => {
  it('a deny rule added meanwhile refuses the approved call; the upstream never runs it', async () => {
    const s = await start(true);
    const { approval, call, client } = await park(s, 'frozen.txt');
    const added = await api(s, 'PolicyService/AddPolicy', {
      policy: {
        name: 'lockdown',
        priority: 200,
        rules: [{ tool: 'fs__*', action: 'POLICY_ACTION_DENY', reason: 'frozen for audit' }],
      },
    });
    expect(added.status).toBe(200);
    await approve(s, approval.id);
    const result = await call;
    expect(result.isError).toBe(true);
    expect(text(result)).toContain('FABRIC_ERR_POLICY_DENIED');
    expect(text(result)).toContain('frozen for audit');
    expect(existsSync(join(root, 'frozen.txt'))).toBe(false);
    // The human's decision is recorded as made.
    const [decided] = (await listApprovals(s.url!, ADMIN_TOKEN, 'approved')).filter(
      (a) => a.id === approval.id,
    );
    expect(decided).toMatchObject({ status: 'approved' });
    // A fresh call is denied outright (no new approval).
    const again = await client.callTool({
      name: 'fs__write_file',
      arguments: { path: join(root, 'again.txt'), content: 'x' },
    });
    expect(text(again)).toContain('FABRIC_ERR_POLICY_DENIED');
    expect(await listApprovals(s.url!, ADMIN_TOKEN, 'pending')).toEqual([]);
  }, 60_000);

  it('the approval rule removed meanwhile leaves the default action (deny) to decide', async () => {
    const s = await start(false);
    const { approval, call } = await park(s, 'after-removal.txt');
    const removed = await api(s, 'PolicyService/RemovePolicy', { name: 'approvals' });
    expect(removed.status).toBe(200);
    await approve(s, approval.id);
    const result = await call;
    expect(result.isError).toBe(true);
    expect(text(result)).toContain('FABRIC_ERR_POLICY_DENIED');
    expect(existsSync(join(root, 'after-removal.txt'))).toBe(false);
  }, 60_000);

  it('a change that still lets the call through runs it as approved', async () => {
    const s = await start(true);
    const { approval, call } = await park(s, 'still-fine.txt');
    const added = await api(s, 'PolicyService/AddPolicy', {
      policy: {
        name: 'unrelated',
        priority: 200,
        rules: [{ tool: 'fs__move_file', action: 'POLICY_ACTION_DENY' }],
      },
    });
    expect(added.status).toBe(200);
    await approve(s, approval.id);
    const result = await call;
    expect(result.isError).toBeFalsy();
    expect(readFileSync(join(root, 'still-fine.txt'), 'utf8')).toBe('written');
  }, 60_000);
});

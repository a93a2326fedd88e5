/**
 * Races between a call that waits — for a human approval, for its budget — and an operator
 * changing the policy meanwhile (a real sidecar over HTTP, real server-filesystem and slow
 * upstreams writing to temp dirs, the official SDK client, the Operator API). A call decided
 * before the change is decided again by the rules as they are when its wait ends:
 *
 * - approvals: an approval answers the `require_approval` rule it was asked for, not the policy
 *   as it is when the human clicks. A deny rule added (or the approval rule removed, so the
 *   default action denies) while the call waits refuses it when the human approves, and the
 *   upstream never runs it; a change that still lets it through runs it as approved;
 * - budget waits: a call that other calls' in-flight reservations kept out, let in when one of
 *   them ended, is refused by a deny rule added while it waited (and its reservation released);
 *   one an approval rule added meanwhile sends to a human is parked for approval (holding no
 *   reservation) and runs only once approved; and a limit the operator raises while it waits
 *   lets it in then, not when the others end.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import { listApprovals } from '../fixtures/api.js';
import {
  pythonGrpc,
  startPythonPolicyService,
  type PythonPolicyService,
} from '../fixtures/grpc/python-policy-service.js';
import {
  ADMIN_TOKEN,
  DEFAULT_ALLOW,
  agentId,
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
  closeRaceSidecar,
  closeRaceSidecarAfterEach,
  firstPendingApproval,
  startRaceSidecar,
} from '../fixtures/races.js';

closeRaceSidecarAfterEach();

let root = '';

async function start(defaultAllow: boolean): Promise<Sidecar> {
  root = tempDir('races-approval');
  const sidecar = await startRaceSidecar({
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
  const parked = await firstPendingApproval(s, 30_000);
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
    // A fresh call is denied outright (no new approval): the tool is hidden now, and is
    // answered as an unknown tool.
    const again = await client
      .callTool({
        name: 'fs__write_file',
        arguments: { path: join(root, 'again.txt'), content: 'x' },
      })
      .then(
        () => 'answered',
        (e: Error) => e.message,
      );
    expect(again).toContain('Unknown tool: fs__write_file');
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

describe('a policy change while a call waits for approval, with a provider denying then', () => {
  it('a rate limit denying at approval time does not hide a deny rule added meanwhile', async () => {
    root = tempDir('races-approval-limit');
    const s = await startRaceSidecar({
      upstreams: { fs: filesystemUpstream(root) },
      policies: [
        APPROVE_WRITES,
        { name: 'default-allow', rules: [{ tool: '*', action: 'allow' }] },
      ],
      // One call, then none for a long while (priority 900: above both policies).
      plugins: [
        {
          module: fileURLToPath(
            new URL('../../plugins/policy-rate-limit/index.js', import.meta.url),
          ),
          options: { perAgent: { capacity: 1, refillPerSecond: 0.0001 } },
        },
      ],
      agents: [{ name: 'worker' }],
    } as never);
    const { approval, call, client } = await park(s, 'limited.txt');
    // Another call takes the agent's one token: the limiter denies every call now.
    const listed = await client.callTool({
      name: 'fs__list_directory',
      arguments: { path: root },
    });
    expect(listed.isError).toBeFalsy();
    const limited = await client.callTool({
      name: 'fs__list_directory',
      arguments: { path: root },
    });
    expect(text(limited)).toContain('FABRIC_ERR_POLICY_DENIED');
    const added = await api(s, 'PolicyService/AddPolicy', {
      policy: {
        name: 'lockdown',
        priority: 200,
        rules: [{ tool: 'fs__write_file', action: 'POLICY_ACTION_DENY', reason: 'frozen' }],
      },
    });
    expect(added.status).toBe(200);
    await approve(s, approval.id);
    const result = await call;
    expect(result.isError).toBe(true);
    expect(text(result)).toContain('frozen');
    expect(existsSync(join(root, 'limited.txt'))).toBe(false);
  }, 60_000);
});

const SLOW_SERVER = fileURLToPath(new URL('../fixtures/gateway/slow-server.mjs', import.meta.url));

/**
 * A call `c` of `worker` (a slow upstream that writes `start`/`end` lines to a file) waiting for
 * its budget: another call `b` holds the reservation the budget has room for. `release` ends
 * `b`, so `c` fits; `ran` reads the upstream's file.
 */
async function waitingForBudget(policies: unknown[] = [DEFAULT_ALLOW]) {
  const dir = tempDir('races-budget-wait');
  const countFile = join(dir, 'count.txt');
  const s = await startRaceSidecar({
    upstreams: {
      slow: {
        command: process.execPath,
        args: [SLOW_SERVER],
        env: { COUNT_FILE: countFile },
        stderr: 'ignore',
      },
    },
    policies: policies as never,
    agents: [{ name: 'worker' }],
    gateway: { budgetWaitSeconds: 120 },
  });
  const id = agentId(s, 'worker');
  const ran = (): string => (existsSync(countFile) ? readFileSync(countFile, 'utf8') : '');
  const client = await httpClient(s.url!, agentToken(s, 'worker'));
  const slow = (label: string, ms: number, signal?: AbortSignal) =>
    client.callTool({ name: 'slow__slow', arguments: { label, ms } }, undefined, {
      timeout: 120_000,
      ...(signal === undefined ? {} : { signal }),
    });
  // The first call teaches the gateway the tool's token estimate.
  expect((await slow('a', 1)).isError).toBeFalsy();
  const e = s.gateway.tokenEstimates.get(id, 'slow__slow').tokens;
  expect(e).toBeGreaterThanOrEqual(2);
  const used = s.fabric!.budgets.getStatus(id).tokensUsed;
  // Room for one more call's estimate, not two.
  const limited = await api(s, 'BudgetService/SetBudgetLimits', {
    scope: { agentId: id },
    limits: { maxTokensPerHour: used + e + Math.floor(e / 2) },
  });
  expect(limited.status).toBe(200);
  const holder = new AbortController();
  const holding = slow('b', 60_000, holder.signal).catch((error: unknown) => error);
  await until(() => ran().includes('start b'));
  const waiting = slow('c', 1);
  await until(() => s.fabric!.budgets.waiting === 1);
  const release = async () => {
    holder.abort(); // its reservation ends: the waiting call's estimate fits now
    await holding;
  };
  return { s, id, ran, waiting, release, estimate: e, used };
}

describe('a policy change while a call waits for its budget', () => {
  it('a deny rule added meanwhile refuses the call when the budget lets it in', async () => {
    const { s, id, ran, waiting, release } = await waitingForBudget();
    const added = await api(s, 'PolicyService/AddPolicy', {
      policy: {
        name: 'lockdown',
        priority: 200,
        rules: [{ tool: 'slow__*', action: 'POLICY_ACTION_DENY', reason: 'frozen' }],
      },
    });
    expect(added.status).toBe(200);
    await release();
    const result = await waiting;
    expect(result.isError).toBe(true);
    expect(text(result)).toContain('FABRIC_ERR_POLICY_DENIED');
    expect(ran()).not.toContain('start c');
    await until(() => s.fabric!.budgets.getStatus(id).tokensReserved === 0);
  }, 60_000);

  it('an approval rule added meanwhile parks the call for a human; it runs only once approved', async () => {
    const { s, id, ran, waiting, release } = await waitingForBudget();
    const added = await api(s, 'PolicyService/AddPolicy', {
      policy: {
        name: 'approvals',
        priority: 200,
        rules: [
          { tool: 'slow__*', action: 'POLICY_ACTION_REQUIRE_APPROVAL', reason: 'a human looks' },
        ],
      },
    });
    expect(added.status).toBe(200);
    await release();
    const parked = await firstPendingApproval(s);
    expect(parked).toMatchObject({ tool: 'slow__slow' });
    // Parked without holding the budget, and not run.
    expect(s.fabric!.budgets.getStatus(id).tokensReserved).toBe(0);
    expect(ran()).not.toContain('start c');
    await approve(s, parked!.id);
    const result = await waiting;
    expect(result.isError).toBeFalsy();
    expect(ran()).toContain('end c');
  }, 60_000);

  it('an approval rule added meanwhile, the human denying, the call never runs', async () => {
    const { s, id, ran, waiting, release } = await waitingForBudget();
    const added = await api(s, 'PolicyService/AddPolicy', {
      policy: {
        name: 'approvals',
        priority: 200,
        rules: [{ tool: 'slow__*', action: 'POLICY_ACTION_REQUIRE_APPROVAL' }],
      },
    });
    expect(added.status).toBe(200);
    await release();
    const parked = await firstPendingApproval(s);
    expect((await api(s, 'ApprovalService/Deny', { id: parked!.id })).status).toBe(200);
    const result = await waiting;
    expect(result.isError).toBe(true);
    expect(text(result)).toContain('FABRIC_ERR_APPROVAL_DENIED');
    expect(ran()).not.toContain('start c');
    expect(s.fabric!.budgets.getStatus(id).tokensReserved).toBe(0);
  }, 60_000);
});

describe.runIf(pythonGrpc || process.env.CI !== undefined)(
  'a policy change while a call waits for a policy service (a real Python service)',
  () => {
    let service: PythonPolicyService | undefined;
    afterEach(async () => {
      await closeRaceSidecar();
      await service?.close();
      service = undefined;
    });

    it('an approval rule added meanwhile parks the call for a human; it runs only once approved', async () => {
      // The service answers `*__slow` tools 2 s late (ALLOW).
      service = await startPythonPolicyService();
      const countFile = join(tempDir('races-policy-service'), 'count.txt');
      const s = await startRaceSidecar({
        upstreams: {
          slow: {
            command: process.execPath,
            args: [SLOW_SERVER],
            env: { COUNT_FILE: countFile },
            stderr: 'ignore',
          },
        },
        policies: [DEFAULT_ALLOW],
        plugins: [
          {
            module: 'policy-grpc',
            options: { target: service.address, insecure: true, deadlineMs: 20_000 },
          },
        ],
        agents: [{ name: 'worker' }],
      });
      const ran = (): string => (existsSync(countFile) ? readFileSync(countFile, 'utf8') : '');
      const client = await httpClient(s.url!, agentToken(s, 'worker'));
      const call = client.callTool(
        { name: 'slow__slow', arguments: { label: 'c', ms: 1 } },
        undefined,
        { timeout: 120_000 },
      );
      const svc = service;
      await until(() => svc.calls.some((c) => c.tool === 'slow__slow'));
      const added = await api(s, 'PolicyService/AddPolicy', {
        policy: {
          name: 'approvals',
          priority: 200,
          rules: [{ tool: 'slow__*', action: 'POLICY_ACTION_REQUIRE_APPROVAL' }],
        },
      });
      expect(added.status).toBe(200);
      const parked = await firstPendingApproval(s, 30_000);
      expect(parked).toMatchObject({ tool: 'slow__slow' });
      expect(ran()).not.toContain('start c');
      await approve(s, parked!.id);
      const result = await call;
      expect(result.isError).toBeFalsy();
      expect(ran()).toContain('end c');
    }, 60_000);

    it('a change that leaves the call allowed decides it again without asking the service again', async () => {
      // The service answers `*__slow` tools 2 s late (ALLOW). What it said is about the call,
      // not about the sidecar's rules: deciding again with the new rules reuses its answer.
      service = await startPythonPolicyService();
      const countFile = join(tempDir('races-policy-service-once'), 'count.txt');
      const s = await startRaceSidecar({
        upstreams: {
          slow: {
            command: process.execPath,
            args: [SLOW_SERVER],
            env: { COUNT_FILE: countFile },
            stderr: 'ignore',
          },
        },
        policies: [DEFAULT_ALLOW],
        plugins: [
          {
            module: 'policy-grpc',
            options: { target: service.address, insecure: true, deadlineMs: 20_000 },
          },
        ],
        agents: [{ name: 'worker' }],
      });
      const ran = (): string => (existsSync(countFile) ? readFileSync(countFile, 'utf8') : '');
      const client = await httpClient(s.url!, agentToken(s, 'worker'));
      const call = client.callTool(
        { name: 'slow__slow', arguments: { label: 'c', ms: 1 } },
        undefined,
        { timeout: 120_000 },
      );
      const svc = service;
      await until(() => svc.calls.some((c) => c.tool === 'slow__slow'));
      // A rule at the service's priority (so the service's verdict still counts), for another tool.
      const added = await api(s, 'PolicyService/AddPolicy', {
        policy: {
          name: 'unrelated',
          rules: [{ tool: 'slow__other', action: 'POLICY_ACTION_DENY' }],
        },
      });
      expect(added.status).toBe(200);
      const result = await call;
      expect(result.isError).toBeFalsy();
      expect(ran()).toContain('end c');
      expect(svc.calls.filter((c) => c.tool === 'slow__slow')).toHaveLength(1);
    }, 60_000);
  },
);

describe('a budget change while a call waits for its budget', () => {
  it('a raised limit lets the waiting call in at once, not when the other call ends', async () => {
    const { s, id, ran, waiting, release, estimate, used } = await waitingForBudget();
    const raised = await api(s, 'BudgetService/SetBudgetLimits', {
      scope: { agentId: id },
      limits: { maxTokensPerHour: used + 10 * estimate },
    });
    expect(raised.status).toBe(200);
    const result = await waiting;
    expect(result.isError).toBeFalsy();
    // It ran while the other call was still at its upstream.
    expect(ran()).toContain('end c');
    expect(ran()).not.toContain('end b');
    await release();
  }, 60_000);
});

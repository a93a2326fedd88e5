import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { BudgetManager } from '../../src/budget/budget-manager.js';
import { ConfigError } from '../../src/errors.js';
import { ApprovalManager, type Approval } from '../../src/policy/approval-manager.js';
import { PolicyEngine } from '../../src/policy/policy-engine.js';
import {
  ToolCallAuthorizer,
  type ToolCallAllowed,
  type ToolCallAuthorization,
  type ToolCallDenied,
} from '../../src/policy/tool-call-authorizer.js';

describe('ToolCallAuthorizer', () => {
  let approvals: ApprovalManager;
  let policies: PolicyEngine;
  let budgets: BudgetManager;
  let auth: ToolCallAuthorizer;

  beforeEach(() => {
    vi.useFakeTimers();
    vi.setSystemTime(Date.parse('2026-03-02T10:00:00Z'));
    approvals = new ApprovalManager({ defaultTtlSeconds: 300 });
    policies = new PolicyEngine({ approvals });
    policies.addPolicy({
      name: 'main',
      rules: [
        { tool: 'execute_code', action: 'require_approval', conditions: { language: 'python' } },
        {
          tool: 'file_write',
          action: 'deny',
          conditions: { path: '/etc/*' },
          reason: 'system files',
        },
        { tool: '*', action: 'allow' },
      ],
    });
    budgets = new BudgetManager();
    budgets.setBudget('agent-1', { maxTokensPerHour: 1000 });
    auth = new ToolCallAuthorizer({
      policies,
      approvals,
      budgets,
      estimateCost: () => ({ tokens: 100, cost: 0.01 }),
    });
  });
  afterEach(() => {
    approvals.close();
    vi.useRealTimers();
  });

  const call = { agentId: 'agent-1', tool: 'file_read', params: { path: '/tmp/x' } };
  const denied = (a: ToolCallAuthorization): ToolCallDenied => {
    if (a.allowed) throw new Error('expected a denial');
    return a;
  };

  it('allows, reserves the estimate, and settles actual usage', async () => {
    const a = await auth.authorize(call);
    expect(a).toMatchObject({
      allowed: true,
      decision: { action: 'allow', policy: 'main', rule: 2 },
    });
    expect(budgets.getStatus('agent-1').tokensReserved).toBe(100);
    auth.settle(a, { tokens: 42 });
    auth.settle(a, { tokens: 42 });
    expect(budgets.getStatus('agent-1')).toMatchObject({ tokensUsed: 42, tokensReserved: 0 });
  });

  it('release gives the reservation back', async () => {
    const a = await auth.authorize(call);
    auth.release(a);
    expect(budgets.getStatus('agent-1')).toMatchObject({ tokensUsed: 0, tokensReserved: 0 });
  });

  it('returns policy denials as values', async () => {
    const d = denied(
      await auth.authorize({ ...call, tool: 'file_write', params: { path: '/etc/../etc/passwd' } }),
    );
    expect(d).toMatchObject({
      code: 'FABRIC_ERR_POLICY_DENIED',
      decision: { action: 'deny', policy: 'main', rule: 1 },
      details: { tool: 'file_write', policy: 'main', rule: 1 },
    });
    expect(d.reason).toContain('system files');
    expect(budgets.getStatus('agent-1').tokensReserved).toBe(0);
  });

  it('waits for approval, then reserves', async () => {
    let waiting: Approval | undefined;
    const pending = auth.authorize({
      ...call,
      tool: 'execute_code',
      params: { language: 'python' },
      onWaiting: (a) => (waiting = a),
    });
    await vi.advanceTimersByTimeAsync(0);
    expect(waiting).toMatchObject({
      status: 'pending',
      tool: 'execute_code',
      policy: 'main',
      rule: 0,
    });
    expect(budgets.getStatus('agent-1').tokensReserved).toBe(0);
    approvals.approve(waiting!.id, { approver: 'alice' });
    const a = await pending;
    expect(a).toMatchObject({
      allowed: true,
      decision: { action: 'require_approval', approvalId: waiting!.id },
      approval: { status: 'approved', approver: 'alice' },
    });
    expect(budgets.getStatus('agent-1').tokensReserved).toBe(100);
  });

  it('refuses a call needing approval once the agent has too many pending, creating none', async () => {
    const few = new ApprovalManager({ maxPendingPerAgent: 1 });
    const engine = new PolicyEngine({ approvals: few });
    engine.addPolicy({ name: 'ask', rules: [{ tool: '*', action: 'require_approval' }] });
    const capped = new ToolCallAuthorizer({ policies: engine, approvals: few, budgets });
    const stop = new AbortController();
    const first = capped.authorize({ ...call, signal: stop.signal });
    await vi.advanceTimersByTimeAsync(0);
    // The first caller gave up: its approval stays pending for the human, holding the slot.
    stop.abort(new Error('gone'));
    await expect(first).rejects.toThrow('gone');
    const second = denied(await capped.authorize(call));
    expect(second).toMatchObject({
      code: 'FABRIC_ERR_APPROVAL_LIMIT',
      details: { agentId: 'agent-1', limit: 1 },
    });
    expect(few.listApprovals({ status: 'pending' })).toHaveLength(1);
    expect(budgets.getStatus('agent-1').tokensReserved).toBe(0);
    few.close();
  });

  it('turns denied, expired and timed-out approvals into denials', async () => {
    const python = { ...call, tool: 'execute_code', params: { language: 'python' } };
    const p1 = auth.authorize({
      ...python,
      onWaiting: (a) => approvals.deny(a.id, { approver: 'bob', reason: 'no' }),
    });
    expect(denied(await p1)).toMatchObject({
      code: 'FABRIC_ERR_APPROVAL_DENIED',
      details: { approver: 'bob' },
    });

    const p2 = auth.authorize(python);
    await vi.advanceTimersByTimeAsync(300_000);
    expect(denied(await p2).code).toBe('FABRIC_ERR_APPROVAL_EXPIRED');

    const p3 = auth.authorize({ ...python, approvalTimeoutSeconds: 5 });
    await vi.advanceTimersByTimeAsync(5_000);
    const d3 = denied(await p3);
    expect(d3.code).toBe('FABRIC_ERR_WAIT_TIMEOUT');
    expect(approvals.getApproval(d3.decision!.approvalId!)?.status).toBe('pending');
  });

  it('an aborted wait rejects with the abort reason', async () => {
    const controller = new AbortController();
    const p = auth.authorize({
      ...call,
      tool: 'execute_code',
      params: { language: 'python' },
      signal: controller.signal,
    });
    controller.abort(new Error('client went away'));
    await expect(p).rejects.toThrow('client went away');
  });

  it('a call that stops waiting orphans its approval: a later decision is recorded and applies to no other call', async () => {
    const python = { ...call, tool: 'execute_code', params: { language: 'python' } };
    const controller = new AbortController();
    let first: Approval | undefined;
    const gone = auth.authorize({
      ...python,
      signal: controller.signal,
      onWaiting: (a) => (first = a),
    });
    controller.abort(new Error('connection closed'));
    await expect(gone).rejects.toThrow('connection closed');
    expect(approvals.getApproval(first!.id)).toMatchObject({ status: 'pending', orphaned: true });

    // The agent calls again: a new approval, not the old one's decision.
    let second: Approval | undefined;
    const retry = auth.authorize({ ...python, onWaiting: (a) => (second = a) });
    await Promise.resolve();
    expect(second!.id).not.toBe(first!.id);
    expect(approvals.approve(first!.id, { approver: 'alice' })).toMatchObject({
      status: 'approved',
      approver: 'alice',
      orphaned: true,
    });
    await vi.advanceTimersByTimeAsync(0);
    expect(approvals.getApproval(second!.id)?.status).toBe('pending'); // still waiting
    approvals.deny(second!.id, { approver: 'bob' });
    expect(denied(await retry).code).toBe('FABRIC_ERR_APPROVAL_DENIED');

    // A timed-out wait orphans too.
    const timed = auth.authorize({ ...python, approvalTimeoutSeconds: 1 });
    await vi.advanceTimersByTimeAsync(1_000);
    const d = denied(await timed);
    expect(approvals.getApproval(d.decision!.approvalId!)?.orphaned).toBe(true);
  });

  it('does not ask a human to approve a call the budget would refuse', async () => {
    budgets.recordUsage('agent-1', { tokens: 950 });
    const created = vi.fn();
    approvals.on('created', created);
    const d = denied(
      await auth.authorize({ ...call, tool: 'execute_code', params: { language: 'python' } }),
    );
    expect(d).toMatchObject({
      code: 'FABRIC_ERR_BUDGET_EXCEEDED',
      retryAt: Date.parse('2026-03-02T11:01:00Z'),
    });
    expect(created).not.toHaveBeenCalled();
  });

  it('budget refusals carry scope, limit and retryAt', async () => {
    budgets.setPoolBudget('pool-1', { maxTokensPerHour: 150 });
    expect((await auth.authorize({ ...call, poolId: 'pool-1' })).allowed).toBe(true);
    const d = denied(await auth.authorize({ ...call, poolId: 'pool-1' }));
    expect(d).toMatchObject({
      code: 'FABRIC_ERR_BUDGET_EXCEEDED',
      retryAt: null,
      details: { scope: 'pool:pool-1', limit: 'tokens', max: 150 },
    });
    expect(d.error.name).toBe('BudgetExceededError');
  });

  it('50 concurrent authorizations cannot all pass a nearly exhausted budget', async () => {
    budgets.recordUsage('agent-1', { tokens: 500 });
    const results = await Promise.all(Array.from({ length: 50 }, () => auth.authorize(call)));
    expect(results.filter((r) => r.allowed)).toHaveLength(5);
  });

  it('uses a per-call estimate when given', async () => {
    const a = await auth.authorize({ ...call, estimate: { tokens: 7 } });
    expect(a.allowed && a.reservation.tokens).toBe(7);
  });

  describe('tryAuthorize (no wait)', () => {
    it('decides allow, deny and budget exactly as authorize does, without a promise', async () => {
      const allowed = auth.tryAuthorize(call);
      expect(allowed).toMatchObject({ allowed: true, decision: { action: 'allow', rule: 2 } });
      expect(budgets.getStatus('agent-1').tokensReserved).toBe(100);

      const deny = { agentId: 'agent-1', tool: 'file_write', params: { path: '/etc/../etc/x' } };
      const d1 = denied(auth.tryAuthorize(deny)!);
      const d2 = denied(await auth.authorize(deny));
      expect(d1).toMatchObject({ code: 'FABRIC_ERR_POLICY_DENIED', reason: d2.reason });

      budgets.recordUsage('agent-1', { tokens: 850 }); // + 100 reserved above
      const b = denied(auth.tryAuthorize(call)!);
      expect(b).toMatchObject({ code: 'FABRIC_ERR_BUDGET_EXCEEDED', details: { limit: 'tokens' } });
    });

    it('returns undefined when a human must decide, creating and reserving nothing', () => {
      const created = vi.spyOn(approvals, 'create');
      const r = auth.tryAuthorize({
        agentId: 'agent-1',
        tool: 'execute_code',
        params: { language: 'python' },
      });
      expect(r).toBeUndefined();
      expect(created).not.toHaveBeenCalled();
      expect(approvals.listApprovals({ status: 'pending' })).toHaveLength(0);
      expect(budgets.getStatus('agent-1').tokensReserved).toBe(0);
    });

    it('never lets 50 calls through a budget that fits 5', () => {
      budgets.recordUsage('agent-1', { tokens: 500 });
      const results = Array.from({ length: 50 }, () => auth.tryAuthorize(call)!);
      expect(results.filter((r) => r.allowed)).toHaveLength(5);
    });
  });

  it('validates its options', () => {
    expect(() => new ToolCallAuthorizer({ policies, approvals } as never)).toThrow(ConfigError);
    expect(
      () => new ToolCallAuthorizer({ policies, approvals, budgets, estimateCost: 5 as never }),
    ).toThrow(/options.estimateCost/);
  });
  describe('budget waits and settle-time fit', () => {
    const waiting = { ...call, budget: { waitMs: 5000, clampTokens: true } };

    it('tryAuthorize leaves a budget refusal that may wait to authorize, which waits for settles', async () => {
      const first = await auth.authorize({ ...call, estimate: { tokens: 950 } });
      expect(auth.tryAuthorize({ ...waiting, estimate: { tokens: 100 } })).toBeUndefined();
      // Without waiting, the same call is refused at once.
      expect(denied(auth.tryAuthorize({ ...call, estimate: { tokens: 100 } })!).code).toBe(
        'FABRIC_ERR_BUDGET_EXCEEDED',
      );
      const second = auth.authorize({ ...waiting, estimate: { tokens: 100 } });
      await vi.advanceTimersByTimeAsync(0);
      auth.settle(first, { tokens: 500 });
      expect(await second).toMatchObject({ allowed: true, reservation: { tokens: 100 } });
    });

    it('clamps a prior larger than the limit, and refuses after the wait with a retryAt', async () => {
      const big = await auth.authorize({ ...waiting, estimate: { tokens: 99_999 } });
      expect(big).toMatchObject({ allowed: true, reservation: { tokens: 1000 } });
      const next = auth.authorize({ ...waiting, estimate: { tokens: 10 } });
      await vi.advanceTimersByTimeAsync(5000);
      const d = denied(await next);
      expect(d.code).toBe('FABRIC_ERR_BUDGET_EXCEEDED');
      expect(d.retryAt).toBeGreaterThan(Date.now());
      expect(budgets.getStatus('agent-1').tokensReserved).toBe(1000);
    });

    it('without waiting, a refusal that only in-flight calls cause still says when to retry', async () => {
      await auth.authorize({ ...call, estimate: { tokens: 1000 } });
      const noWait = { ...call, budget: { waitMs: 0 } };
      expect(auth.tryAuthorize(noWait)).toBeUndefined();
      const d = denied(await auth.authorize(noWait));
      expect(d.code).toBe('FABRIC_ERR_BUDGET_EXCEEDED');
      expect(d.retryAt).toBeGreaterThan(Date.now());
      // Without ctx.budget, the old answer: the window cannot tell.
      expect(denied(auth.tryAuthorize(call)!).retryAt).toBeNull();
    });

    it('an aborted wait rejects and holds nothing', async () => {
      await auth.authorize({ ...call, estimate: { tokens: 1000 } });
      const ac = new AbortController();
      const next = auth.authorize({ ...waiting, signal: ac.signal });
      await vi.advanceTimersByTimeAsync(0);
      ac.abort(new Error('gone'));
      await expect(next).rejects.toThrow('gone');
      expect(budgets.getStatus('agent-1').tokensReserved).toBe(1000);
    });

    it('settle with requireFit withholds tokens that do not fit, charging the cost alone', async () => {
      const a = await auth.authorize(call);
      budgets.recordUsage('agent-1', { tokens: 900 });
      const w = auth.settle(a, { tokens: 200, cost: 0.5 }, { requireFit: true });
      expect(w).toMatchObject({
        allowed: false,
        code: 'FABRIC_ERR_BUDGET_EXCEEDED',
        details: { withheld: true, requested: 200, used: 900, max: 1000 },
      });
      expect(w!.reason).toContain('the call ran, but its result (200 tokens) was withheld');
      expect(w!.retryAt).toBeGreaterThan(Date.now());
      expect(budgets.getStatus('agent-1')).toMatchObject({ tokensUsed: 900, costUsed: 0.5 });
      const b = await auth.authorize({ ...call, estimate: { tokens: 0 } });
      expect(auth.settle(b, { tokens: 100 }, { requireFit: true })).toBeUndefined();
      expect(budgets.getStatus('agent-1').tokensUsed).toBe(1000);
    });
  });

  describe('rules changed while a decision was awaited', () => {
    it('a deny rule added while a policy service decided refuses the call, reserving nothing', async () => {
      let answer!: (v: { action: 'allow' }) => void;
      policies.addProvider({
        name: 'service',
        priority: 10,
        decide: () => undefined,
        decideAsync: () => new Promise((resolve) => (answer = resolve)),
      });
      const pending = auth.authorize(call);
      await vi.advanceTimersByTimeAsync(0);
      policies.addPolicy({
        name: 'lockdown',
        priority: 100,
        rules: [{ tool: 'file_*', action: 'deny', reason: 'frozen' }],
      });
      answer({ action: 'allow' });
      const a = denied(await pending);
      expect(a).toMatchObject({
        code: 'FABRIC_ERR_POLICY_DENIED',
        decision: { policy: 'lockdown', rule: 0 },
      });
      expect(budgets.getStatus('agent-1').tokensReserved).toBe(0);
    });

    it('an approval rule added while a policy service decided parks the call for a human', async () => {
      let answer!: (v: { action: 'allow' }) => void;
      policies.addProvider({
        name: 'service',
        priority: 10,
        decide: () => undefined,
        decideAsync: () => new Promise((resolve) => (answer = resolve)),
      });
      let waiting: Approval | undefined;
      const pending = auth.authorize({ ...call, onWaiting: (a) => (waiting = a) });
      await vi.advanceTimersByTimeAsync(0);
      policies.addPolicy({
        name: 'approvals',
        priority: 100,
        rules: [{ tool: 'file_*', action: 'require_approval', reason: 'a human looks' }],
      });
      answer({ action: 'allow' });
      // Decided again with the new rules (the service's answer stands): a human is asked.
      await vi.advanceTimersByTimeAsync(0);
      expect(waiting).toMatchObject({ status: 'pending', policy: 'approvals', rule: 0 });
      expect(budgets.getStatus('agent-1').tokensReserved).toBe(0);
      approvals.approve(waiting!.id, { approver: 'alice' });
      expect(await pending).toMatchObject({
        allowed: true,
        decision: { action: 'require_approval', approvalId: waiting!.id },
        approval: { status: 'approved', approver: 'alice' },
      });
      expect(budgets.getStatus('agent-1').tokensReserved).toBe(100);
    });

    it('a change that leaves the call allowed lets it through', async () => {
      let answer!: (v: { action: 'allow' }) => void;
      policies.addProvider({
        name: 'service',
        priority: 10,
        decide: () => undefined,
        decideAsync: () => new Promise((resolve) => (answer = resolve)),
      });
      const pending = auth.authorize(call);
      await vi.advanceTimersByTimeAsync(0);
      policies.addPolicy({ name: 'other', rules: [{ tool: 'shell', action: 'deny' }] });
      answer({ action: 'allow' });
      expect((await pending).allowed).toBe(true);
    });

    it('the service is asked once per call: deciding again (also at its turn) reuses its answer', async () => {
      const asked: string[] = [];
      const service = (name: string, action: 'allow' | 'require_approval') => ({
        name,
        decide: () => undefined,
        decideAsync: () => {
          asked.push(name);
          return Promise.resolve({ action });
        },
      });
      policies.addProvider(service('service', 'allow'));
      const pending = auth.authorize(call);
      // While the service's answer is on its way, an operator changes the rules.
      policies.addPolicy({ name: 'other', rules: [{ tool: 'shell', action: 'deny' }] });
      const a = await pending;
      expect(a.allowed).toBe(true);
      expect(asked).toEqual(['service']);
      // The rules change again before its turn: decided again, the service not asked.
      policies.addPolicy({ name: 'more', rules: [{ tool: 'git_*', action: 'deny' }] });
      expect(await auth.recheck(call, a as ToolCallAllowed)).toBeUndefined();
      expect(asked).toEqual(['service']);
      // A provider added since has not said anything about the call: it is asked.
      policies.addProvider(service('second', 'require_approval'));
      const refused = await auth.recheck(call, a as ToolCallAllowed);
      expect(refused).toMatchObject({ code: 'FABRIC_ERR_POLICY_DENIED' });
      expect(refused!.reason).toContain('now require approval');
      expect(asked).toEqual(['service', 'second']);
    });
  });
});

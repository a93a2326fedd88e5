import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { AgentFabric } from '../../src/fabric.js';
import { TaskStatus } from '../../src/task.js';
import { AgentNotFoundError, BudgetExceededError, ConfigError } from '../../src/errors.js';
import type { InMemoryBudgetStore } from '../../src/budget/budget-store.js';

const POLICY = {
  name: 'guide',
  rules: [
    {
      tool: 'execute_code',
      action: 'require_approval' as const,
      conditions: { language: 'python' },
    },
    { tool: 'file_write', action: 'deny' as const, conditions: { path: '/etc/*' } },
    { tool: 'shell_*', action: 'deny' as const, reason: 'no shells' },
    { tool: '*', action: 'allow' as const },
  ],
};

describe('AgentFabric tool-call pipeline', () => {
  let fabric: AgentFabric;
  beforeEach(() => {
    fabric = new AgentFabric();
    fabric.policies.addPolicy(POLICY);
  });
  afterEach(async () => fabric.close());

  it('allows, denies (on normalized paths) and settles usage for a real agent', async () => {
    const agent = await fabric.spawn({
      model: 'm',
      name: 'a',
      executor: 'remote',
      budget: { maxTokensPerHour: 1000, maxCostPerDay: 1 },
    });
    const ok = await fabric.authorizeToolCall({
      agentId: agent.id,
      tool: 'file_read',
      params: { path: '/tmp/x' },
    });
    expect(ok.allowed).toBe(true);
    fabric.settleToolCall(ok, { tokens: 250, cost: 0.1 });
    fabric.settleToolCall(ok, { tokens: 250, cost: 0.1 }); // idempotent
    expect(fabric.budgets.getStatus(agent.id)).toMatchObject({
      tokensUsed: 250,
      tokensLimit: 1000,
      costUsed: 0.1,
    });
    const denied = await fabric.authorizeToolCall({
      agentId: agent.id,
      tool: 'file_write',
      params: { path: '/etc/../etc/passwd' },
    });
    expect(denied).toMatchObject({ allowed: false, code: 'FABRIC_ERR_POLICY_DENIED' });
    await expect(
      fabric.authorizeToolCall({ agentId: 'ghost', tool: 'x', params: {} }),
    ).rejects.toBeInstanceOf(AgentNotFoundError);
  });

  it('parks require_approval calls until an approver decides', async () => {
    const agent = await fabric.spawn({ model: 'm', name: 'a', executor: 'remote' });
    const waiting = vi.fn();
    const pending = fabric.authorizeToolCall({
      agentId: agent.id,
      tool: 'execute_code',
      params: { language: 'python', code: 'print(1)' },
      onWaiting: waiting,
    });
    await vi.waitFor(() =>
      expect(fabric.approvals.listApprovals({ status: 'pending' })).toHaveLength(1),
    );
    const [approval] = fabric.approvals.listApprovals({ status: 'pending' });
    fabric.approvals.approve(approval!.id, { approver: 'alice' });
    await expect(pending).resolves.toMatchObject({ allowed: true });
    expect(waiting).toHaveBeenCalledOnce();
    expect(fabric.approvals.getApproval(approval!.id)).toMatchObject({
      status: 'approved',
      approver: 'alice',
    });
  });

  it('tryAuthorizeToolCall decides without waiting and leaves approvals to authorizeToolCall', async () => {
    const agent = await fabric.spawn({ model: 'm', name: 'a', executor: 'remote' });
    const ok = fabric.tryAuthorizeToolCall({ agentId: agent.id, tool: 'file_read', params: {} });
    expect(ok).toMatchObject({ allowed: true });
    const denied = fabric.tryAuthorizeToolCall({
      agentId: agent.id,
      tool: 'file_write',
      params: { path: '/etc//passwd' },
    });
    expect(denied).toMatchObject({ allowed: false, code: 'FABRIC_ERR_POLICY_DENIED' });
    const human = fabric.tryAuthorizeToolCall({
      agentId: agent.id,
      tool: 'execute_code',
      params: { language: 'python' },
    });
    expect(human).toBeUndefined();
    expect(fabric.approvals.listApprovals()).toHaveLength(0);
    expect(() => fabric.tryAuthorizeToolCall({ agentId: 'ghost', tool: 'x', params: {} })).toThrow(
      AgentNotFoundError,
    );
    // A leaving agent is refused, as by authorizeToolCall.
    const leaving = fabric.terminate(agent.id, { drainTimeoutSeconds: 5 });
    expect(
      fabric.tryAuthorizeToolCall({ agentId: agent.id, tool: 'file_read', params: {} }),
    ).toMatchObject({ allowed: false, code: 'FABRIC_ERR_AGENT_UNAVAILABLE' });
    await leaving;
  });

  it('takes pool and labels from the agent record, not from the caller', async () => {
    await fabric.createPool({
      poolId: 'p',
      model: 'm',
      minAgents: 1,
      executor: 'remote',
      budget: { maxCostPerDay: 1 },
    });
    const [id] = (await fabric.getPool('p')).currentAgents;
    await fabric.recordUsage(id!, { cost: 1 });
    expect(fabric.budgets.getPoolStatus('p')).toMatchObject({ costUsed: 1, exhausted: true });
    const spoofed = await fabric.authorizeToolCall({
      agentId: id!,
      poolId: 'elsewhere',
      tool: 'file_read',
      params: {},
    });
    expect(spoofed).toMatchObject({ allowed: false, code: 'FABRIC_ERR_BUDGET_EXCEEDED' });
  });

  it('hides tools denied outright, and only those', async () => {
    const agent = await fabric.spawn({ model: 'm', name: 'a', executor: 'remote' });
    expect(fabric.isToolVisible({ agentId: agent.id, tool: 'shell_exec' })).toBe(false);
    expect(fabric.isToolVisible({ agentId: agent.id, tool: 'file_write' })).toBe(true);
    expect(fabric.isToolVisible({ agentId: agent.id, tool: 'execute_code' })).toBe(true);
  });

  it('rejects a bad budget at spawn without leaving an agent behind', async () => {
    await expect(
      fabric.spawn({ model: 'm', name: 'a', budget: { maxTokensPerHour: -5 } }),
    ).rejects.toBeInstanceOf(ConfigError);
    expect((await fabric.getFabricStats()).activeAgents).toBe(0);
  });
});

describe('terminated agents', () => {
  it('are forgotten beyond terminatedAgentRetention, budget state included', async () => {
    const fabric = new AgentFabric({ terminatedAgentRetention: 2 });
    try {
      const agents = [];
      for (let i = 0; i < 5; i++) {
        const a = await fabric.spawn({
          model: 'm',
          name: `a${i}`,
          executor: 'remote',
          budget: { maxTokensPerHour: 1000 },
        });
        await fabric.recordUsage(a.id, { tokens: 10 });
        agents.push(a);
      }
      expect(fabric.budgets.agentCount).toBe(5);
      for (const a of agents) await fabric.terminate(a.id);

      // The two most recent stay known, with their budget status; the rest are gone.
      expect(fabric.budgets.agentCount).toBe(2);
      const saved = Object.keys((fabric.budgets.store as InMemoryBudgetStore).snapshot()).filter(
        (k) => k.startsWith('agent:'),
      );
      expect(saved.sort()).toEqual([`agent:${agents[3]!.id}`, `agent:${agents[4]!.id}`].sort());
      expect(fabric.budgets.getStatus(agents[4]!.id).tokensUsed).toBe(10);
      await expect(fabric.getAgentInfo(agents[0]!.id)).rejects.toBeInstanceOf(AgentNotFoundError);
      // What the forgotten agents used still counts fabric-wide.
      expect(fabric.budgets.getFabricStatus().tokensUsed).toBe(50);
    } finally {
      await fabric.close();
    }
  });

  it('rejects a bad terminatedAgentRetention', () => {
    expect(() => new AgentFabric({ terminatedAgentRetention: -1 })).toThrow(ConfigError);
  });
});

describe('scheduling against an exhausted budget', () => {
  let fabric: AgentFabric;
  afterEach(async () => {
    await fabric.close();
    vi.useRealTimers();
  });

  it('refuses with a typed error carrying when the budget frees (default)', async () => {
    vi.useFakeTimers();
    fabric = new AgentFabric();
    const agent = await fabric.spawn({
      model: 'm',
      name: 'a',
      executor: 'remote',
      budget: { maxTokensPerHour: 100 },
    });
    await fabric.recordUsage(agent.id, { tokens: 100 });
    const err = await fabric
      .schedule({ agentId: agent.id, taskType: 't' })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(BudgetExceededError);
    expect((err as BudgetExceededError).details).toMatchObject({
      scope: `agent:${agent.id}`,
      limit: 'tokens',
    });
    expect((err as BudgetExceededError).details['retryAt']).toBeGreaterThan(Date.now());
    // The window rolls: an hour later the agent may work again.
    await vi.advanceTimersByTimeAsync(61 * 60_000);
    await fabric.heartbeat(agent.id);
    await expect(fabric.schedule({ agentId: agent.id, taskType: 't' })).resolves.toMatchObject({
      status: TaskStatus.PENDING,
    });
  });

  it('reports when the exhausted limit frees, not when another window rolls', async () => {
    vi.useFakeTimers();
    fabric = new AgentFabric();
    const agent = await fabric.spawn({
      model: 'm',
      name: 'a',
      executor: 'remote',
      budget: { maxTokensPerHour: 1000, maxCostPerDay: 1 },
    });
    await fabric.recordUsage(agent.id, { tokens: 10, cost: 1 });
    const err = (await fabric
      .schedule({ agentId: agent.id, taskType: 't' })
      .catch((e: unknown) => e)) as BudgetExceededError;
    expect(err.details).toMatchObject({ limit: 'cost' });
    expect(err.details['retryAt']).toBeGreaterThan(Date.now() + 23 * 3600_000);
  });

  it('refuses pool work when the pool budget is exhausted', async () => {
    fabric = new AgentFabric();
    await fabric.createPool({
      poolId: 'p',
      model: 'm',
      minAgents: 1,
      executor: 'remote',
      budget: { maxTokensPerHour: 5 },
    });
    const [id] = (await fabric.getPool('p')).currentAgents;
    await fabric.recordUsage(id!, { tokens: 5 });
    await expect(fabric.scheduleToPool('p', 't', {})).rejects.toMatchObject({
      code: 'FABRIC_ERR_BUDGET_EXCEEDED',
      details: { scope: 'pool:p' },
    });
  });

  it("queues until the window frees with onBudgetExhausted: 'queue'", async () => {
    vi.useFakeTimers();
    fabric = new AgentFabric({}, { onBudgetExhausted: 'queue' });
    const agent = await fabric.spawn({
      model: 'm',
      name: 'a',
      executor: 'remote',
      budget: { maxTokensPerHour: 100 },
    });
    await fabric.heartbeat(agent.id);
    await fabric.recordUsage(agent.id, { tokens: 100 });
    const task = await fabric.schedule({ agentId: agent.id, taskType: 't' });
    expect(await fabric.claimTask(agent.id)).toBeUndefined();
    await vi.advanceTimersByTimeAsync(61 * 60_000);
    await fabric.heartbeat(agent.id);
    expect(await fabric.claimTask(agent.id)).toMatchObject({ taskId: task.id });
  });
});

import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { AgentScheduler } from '../../src/scheduler/agent-scheduler.js';
import type { SchedulerOptions } from '../../src/scheduler/agent-scheduler.js';
import { Priority } from '../../src/task.js';

/**
 * Tenant fairness across the two queues an agent serves (its own and its pool's). One remote
 * agent `a` of pool `p` with capacity 1: the order of its claims is the order it runs tasks.
 */
function pooled(opts: SchedulerOptions = {}): AgentScheduler {
  const s = new AgentScheduler({ maxConcurrentTasksPerAgent: 1, maxQueueDepth: 100_000, ...opts });
  s.addPool('p');
  s.addAgent({ agentId: 'a', executor: 'remote', poolId: 'p' });
  s.setAccepting('a', true);
  return s;
}

async function runOrder(s: AgentScheduler, agentId = 'a'): Promise<unknown[]> {
  const out: unknown[] = [];
  for (;;) {
    const a = await s.claim(agentId);
    if (a === undefined) return out;
    out.push(a.payload);
    s.complete(a.taskId, a.attempt, null, agentId);
  }
}

/** Tenant of a payload `tenant:i`. */
const tenantOf = (p: unknown): string => String(p).split(':')[0]!;

describe('AgentScheduler fairness across an agent queue and its pool queue', () => {
  let s: AgentScheduler;
  beforeEach(() => {
    vi.useFakeTimers();
  });
  afterEach(async () => {
    await s.close();
    vi.useRealTimers();
  });

  it('runs a pool task of another tenant within one turn of a flood to the agent', async () => {
    s = pooled();
    for (let i = 0; i < 200; i++) s.schedule({ agentId: 'a' }, 't', `A:${i}`, { tenant: 'A' });
    s.schedule({ poolId: 'p' }, 't', 'B:0', { tenant: 'B' });
    const order = await runOrder(s);
    expect(order).toHaveLength(201);
    expect(order.indexOf('B:0')).toBeLessThanOrEqual(1);
  });

  it('runs an agent task of another tenant within one turn of a flood to the pool', async () => {
    s = pooled();
    for (let i = 0; i < 200; i++) s.schedule({ poolId: 'p' }, 't', `A:${i}`, { tenant: 'A' });
    s.schedule({ agentId: 'a' }, 't', 'B:0', { tenant: 'B' });
    const order = await runOrder(s);
    expect(order).toHaveLength(201);
    expect(order.indexOf('B:0')).toBeLessThanOrEqual(1);
  });

  it('holds while the agent is busy: the flood cannot get ahead of a tenant that arrives late', async () => {
    s = pooled();
    for (let i = 0; i < 200; i++) s.schedule({ agentId: 'a' }, 't', `A:${i}`, { tenant: 'A' });
    // The agent is already running A:0 when B's task arrives in the pool.
    const first = await s.claim('a');
    expect(first?.payload).toBe('A:0');
    s.schedule({ poolId: 'p' }, 't', 'B:0', { tenant: 'B' });
    s.complete(first!.taskId, first!.attempt, null, 'a');
    const order = await runOrder(s);
    expect(order.indexOf('B:0')).toBeLessThanOrEqual(1);
  });

  it('alternates tenants whose work sits in different queues, in both directions', async () => {
    s = pooled();
    for (let i = 0; i < 50; i++) {
      s.schedule({ agentId: 'a' }, 't', `A:${i}`, { tenant: 'A' });
      s.schedule({ poolId: 'p' }, 't', `B:${i}`, { tenant: 'B' });
    }
    const order = (await runOrder(s)).map(tenantOf);
    expect(order).toHaveLength(100);
    for (let i = 0; i + 1 < order.length; i += 2) expect(order[i]).not.toBe(order[i + 1]);
  });

  it('counts one tenant once when it floods both queues, so a third tenant is not outvoted', async () => {
    s = pooled();
    for (let i = 0; i < 100; i++) {
      s.schedule({ agentId: 'a' }, 't', `A:own-${i}`, { tenant: 'A' });
      s.schedule({ poolId: 'p' }, 't', `A:pool-${i}`, { tenant: 'A' });
    }
    for (let i = 0; i < 10; i++) s.schedule({ poolId: 'p' }, 't', `C:${i}`, { tenant: 'C' });
    const order = (await runOrder(s)).map(tenantOf);
    // C gets every other task until it is done: A's two queues are one tenant, one turn.
    expect(order.slice(0, 20)).toEqual(Array.from({ length: 20 }, (_, i) => (i % 2 ? 'C' : 'A')));
  });

  it('serves a many-tenant mix across agent and pool queues round robin', async () => {
    s = pooled();
    const tenants = ['t0', 't1', 't2', 't3', 't4', 't5', 't6', 't7'];
    // Even tenants flood the agent, odd ones the pool; sizes differ so rings change as they empty.
    tenants.forEach((t, k) => {
      for (let i = 0; i < 10 + 5 * k; i++) {
        const target = k % 2 === 0 ? { agentId: 'a' } : { poolId: 'p' };
        s.schedule(target, 'x', `${t}:${i}`, { tenant: t });
      }
    });
    const order = (await runOrder(s)).map(tenantOf);
    expect(order).toHaveLength(tenants.reduce((n, _t, k) => n + 10 + 5 * k, 0));
    // The first 10 rounds each serve all 8 tenants once.
    for (let r = 0; r < 10; r++) {
      expect(new Set(order.slice(r * 8, r * 8 + 8)).size).toBe(8);
    }
    // No tenant waits more than one turn of the ring while it has work queued.
    const remaining = new Map(tenants.map((t, k) => [t, 10 + 5 * k]));
    const lastServed = new Map<string, number>();
    order.forEach((t, i) => {
      for (const [u, left] of remaining) {
        if (left > 0 && u !== t) expect(i - (lastServed.get(u) ?? -1)).toBeLessThanOrEqual(8);
      }
      remaining.set(t, remaining.get(t)! - 1);
      lastServed.set(t, i);
    });
  });

  it('honours tenant weights across both queues', async () => {
    s = pooled({ tenantWeight: (t) => (t === 'gold' ? 3 : 1) });
    for (let i = 0; i < 6; i++)
      s.schedule({ poolId: 'p' }, 't', `bronze:${i}`, { tenant: 'bronze' });
    for (let i = 0; i < 6; i++) s.schedule({ agentId: 'a' }, 't', `gold:${i}`, { tenant: 'gold' });
    const order = (await runOrder(s)).slice(0, 8);
    expect(order).toEqual([
      'bronze:0',
      'gold:0',
      'gold:1',
      'gold:2',
      'bronze:1',
      'gold:3',
      'gold:4',
      'gold:5',
    ]);
  });

  it('keeps strict priority first and EDF within a tenant across both queues', async () => {
    s = pooled();
    const now = Date.now();
    s.schedule({ agentId: 'a' }, 't', 'A:own-late', { tenant: 'A', deadline: now + 60_000 });
    s.schedule({ poolId: 'p' }, 't', 'A:pool-low', { tenant: 'A', priority: Priority.LOW });
    s.schedule({ poolId: 'p' }, 't', 'A:pool-early', { tenant: 'A', deadline: now + 10_000 });
    s.schedule({ agentId: 'a' }, 't', 'A:own-plain', { tenant: 'A' });
    s.schedule({ poolId: 'p' }, 't', 'B:pool-critical', {
      tenant: 'B',
      priority: Priority.CRITICAL,
    });
    s.schedule({ poolId: 'p' }, 't', 'A:pool-plain', { tenant: 'A' });
    expect(await runOrder(s)).toEqual([
      'B:pool-critical',
      'A:pool-early',
      'A:own-late',
      'A:own-plain',
      'A:pool-plain',
      'A:pool-low',
    ]);
  });

  it('drops a tenant from the round robin when its queued task is cancelled or times out', async () => {
    s = pooled();
    for (let i = 0; i < 5; i++) s.schedule({ agentId: 'a' }, 't', `A:${i}`, { tenant: 'A' });
    const b = s.schedule({ poolId: 'p' }, 't', 'B:0', { tenant: 'B' });
    s.schedule({ poolId: 'p' }, 't', 'C:0', { tenant: 'C', deadline: Date.now() + 1000 });
    s.cancel(b.id);
    await vi.advanceTimersByTimeAsync(1500);
    expect(s.getTask(b.id).status).toBe('CANCELLED');
    expect(await runOrder(s)).toEqual(['A:0', 'A:1', 'A:2', 'A:3', 'A:4']);
  });

  it('shares pool tenants with an agent that joins the pool later', async () => {
    s = pooled();
    for (let i = 0; i < 3; i++) s.schedule({ poolId: 'p' }, 't', `B:${i}`, { tenant: 'B' });
    s.addAgent({ agentId: 'late', executor: 'remote', poolId: 'p' });
    s.setAccepting('late', true);
    for (let i = 0; i < 3; i++) s.schedule({ agentId: 'late' }, 't', `A:${i}`, { tenant: 'A' });
    expect((await runOrder(s, 'late')).map(tenantOf)).toEqual(['B', 'A', 'B', 'A', 'B', 'A']);
  });

  it('moves an evicted agent’s tasks to the pool without losing any', async () => {
    s = pooled();
    s.addAgent({ agentId: 'b', executor: 'remote', poolId: 'p' });
    s.setAccepting('b', true);
    for (let i = 0; i < 4; i++) s.schedule({ agentId: 'a' }, 't', `A:${i}`, { tenant: 'A' });
    for (let i = 0; i < 4; i++) s.schedule({ poolId: 'p' }, 't', `B:${i}`, { tenant: 'B' });
    s.evictAgent('a', { code: 'X', message: 'gone' }, { remove: true });
    const order = await runOrder(s, 'b');
    expect([...order].sort()).toEqual(['A:0', 'A:1', 'A:2', 'A:3', 'B:0', 'B:1', 'B:2', 'B:3']);
    expect(order.map(tenantOf).slice(0, 4)).toEqual(['B', 'A', 'B', 'A']);
  });

  it('starts an agent’s own tasks in the same pass when a pool task ahead of them went elsewhere', async () => {
    s = new AgentScheduler({ maxConcurrentTasksPerAgent: 5 });
    s.addPool('p');
    const runs: string[] = [];
    s.registerExecutor({
      name: 'hold',
      acknowledges: false,
      autoHeartbeat: false,
      bind: () => undefined,
      capacity: () => Number.POSITIVE_INFINITY,
      dispatch: (batch) => {
        for (const a of batch) runs.push(`${a.agentId}:${String(a.payload)}`);
      },
      abort: () => undefined,
      close: async () => undefined,
    });
    s.addAgent({ agentId: 'x', executor: 'hold', poolId: 'p' });
    s.addAgent({ agentId: 'y', executor: 'hold', poolId: 'p' });
    s.setAccepting('x', true);
    s.setAccepting('y', true);
    await vi.advanceTimersByTimeAsync(0);
    // One pass: x's ring starts with the pool tenant, which goes to whichever agent is least loaded.
    s.schedule({ poolId: 'p' }, 't', 'pool', { tenant: 'P' });
    for (let i = 0; i < 3; i++) s.schedule({ agentId: 'x' }, 't', `own-${i}`, { tenant: 'X' });
    await vi.advanceTimersByTimeAsync(0);
    expect(runs.filter((r) => r.startsWith('x:own'))).toEqual(['x:own-0', 'x:own-1', 'x:own-2']);
    expect(runs.filter((r) => r.endsWith(':pool'))).toHaveLength(1);
  });
});

import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { AgentScheduler } from '../../src/scheduler/agent-scheduler.js';

/**
 * A hostile tenant floods one of the queues an agent serves to push others back. Fairness must
 * hold for what the agent runs, whichever queue each tenant used.
 */
async function claimAll(s: AgentScheduler, agentId: string): Promise<string[]> {
  const out: string[] = [];
  for (;;) {
    const a = await s.claim(agentId);
    if (a === undefined) return out;
    out.push(String(a.payload));
    s.complete(a.taskId, a.attempt, null, agentId);
  }
}

describe('tenant fairness against a flood (security)', () => {
  let s: AgentScheduler;
  beforeEach(() => {
    vi.useFakeTimers();
    s = new AgentScheduler({ maxConcurrentTasksPerAgent: 1, maxQueueDepth: 100_000 });
    s.addPool('p');
    s.addAgent({ agentId: 'a', executor: 'remote', poolId: 'p' });
    s.setAccepting('a', true);
  });
  afterEach(async () => {
    await s.close();
    vi.useRealTimers();
  });

  for (const floodTo of ['agent', 'pool'] as const) {
    it(`a 20k-task flood to the ${floodTo} delays each of 100 other tenants by at most one turn`, async () => {
      const flood = floodTo === 'agent' ? { agentId: 'a' } : { poolId: 'p' };
      const other = floodTo === 'agent' ? { poolId: 'p' } : { agentId: 'a' };
      for (let i = 0; i < 20_000; i++) s.submit(flood, 't', `evil:${i}`, { tenant: 'evil' });
      // Tenant names chosen to trip object-keyed bookkeeping.
      const victims = ['__proto__', 'constructor', 'toString', ''.padEnd(256, 'x')];
      for (let k = victims.length; k < 100; k++) victims.push(`v${k}`);
      for (const v of victims) s.submit(other, 't', `${v}:0`, { tenant: v });
      const order = await claimAll(s, 'a');
      expect(order).toHaveLength(20_100);
      // One turn of the ring is 101 tenants, one task each: every victim ran in the first turn.
      for (const v of victims) expect(order.indexOf(`${v}:0`)).toBeLessThan(101);
      expect(new Set(order).size).toBe(20_100);
    });
  }

  it('a tenant spreading over both queues and cancelling out of order loses no one else’s task', async () => {
    const ids: string[] = [];
    for (let i = 0; i < 2000; i++) {
      const target = i % 2 === 0 ? { agentId: 'a' } : { poolId: 'p' };
      ids.push(s.submit(target, 't', `evil:${i}`, { tenant: 'evil' }));
    }
    s.submit({ poolId: 'p' }, 't', 'good:0', { tenant: 'good' });
    s.submit({ agentId: 'a' }, 't', 'good:1', { tenant: 'good' });
    // Cancel every third of the flood, from the back, while the rest stays queued.
    for (let i = ids.length - 1; i >= 0; i -= 3) s.cancel(ids[i]!);
    const order = await claimAll(s, 'a');
    expect(order.indexOf('good:0')).toBeLessThanOrEqual(1);
    expect(order.indexOf('good:1')).toBeLessThanOrEqual(3);
    expect(order.filter((p) => p.startsWith('evil:'))).toHaveLength(2000 - Math.ceil(2000 / 3));
    expect(s.stats().queueDepth).toBe(0);
  });

  // A weight function that answers only for the tenants it knows (`(t) => weights[t]`) gave every
  // other tenant the weight NaN: its turn never ended (`--NaN <= 0` is false), so one such
  // tenant's flood starved every other tenant at its priority. A weight that is not a number of
  // at least 1 (or a function that throws) now counts as 1, the default.
  for (const [what, weight] of [
    ['undefined', () => undefined],
    ['NaN', () => Number.NaN],
    [
      'a throw',
      () => {
        throw new Error('no weight for this tenant');
      },
    ],
  ] as const) {
    it(`a tenant whose weight is ${what} gets one task per turn, not the whole queue`, async () => {
      const weights: Record<string, number> = { gold: 2 };
      const w = new AgentScheduler({
        maxConcurrentTasksPerAgent: 1,
        tenantWeight: (t) => (Object.hasOwn(weights, t) ? weights[t]! : (weight() as number)),
      });
      try {
        w.addPool('p');
        w.addAgent({ agentId: 'a', executor: 'remote', poolId: 'p' });
        w.setAccepting('a', true);
        for (let i = 0; i < 50; i++)
          w.submit({ poolId: 'p' }, 't', `evil:${i}`, { tenant: 'evil' });
        for (let i = 0; i < 2; i++) w.submit({ poolId: 'p' }, 't', `gold:${i}`, { tenant: 'gold' });
        const order = await claimAll(w, 'a');
        expect(order).toHaveLength(52);
        // evil, then gold's turn of 2.
        expect(order.slice(0, 3)).toEqual(['evil:0', 'gold:0', 'gold:1']);
      } finally {
        await w.close();
      }
    });
  }
});

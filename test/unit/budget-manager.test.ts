import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import {
  BudgetExceededError,
  ConfigError,
  InvalidArgumentError,
  InvalidUsageError,
} from '../../src/errors.js';
import {
  BudgetManager,
  MAX_USAGE_AMOUNT,
  type Reservation,
} from '../../src/budget/budget-manager.js';
import { InMemoryBudgetStore } from '../../src/budget/budget-store.js';
import type { BudgetAlert } from '../../src/budget/scope-usage.js';

const T0 = Date.parse('2026-03-02T10:00:30Z');
const MIN = 60_000;
const HOUR = 60 * MIN;

/**
 * Time passes until `t`: both clocks move (budget windows count elapsed time; moving the wall
 * clock alone is a step, see the clock-step tests).
 */
function passTo(t: number): void {
  const ms = t - Date.now();
  if (ms < 0) throw new Error('time does not pass backwards');
  vi.advanceTimersByTime(ms);
}

function exceeded(fn: () => unknown): BudgetExceededError {
  try {
    fn();
  } catch (err) {
    if (err instanceof BudgetExceededError) return err;
    throw err;
  }
  throw new Error('expected BudgetExceededError');
}

describe('BudgetManager', () => {
  let budgets: BudgetManager;
  beforeEach(() => {
    vi.useFakeTimers(); // Date and performance.now: both clocks are the test's
    vi.setSystemTime(T0);
    budgets = new BudgetManager();
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  it('reports status as in the Fabric Guide', () => {
    budgets.setBudget('agent-1', {
      maxTokensPerHour: 100_000,
      maxCostPerDay: 10,
      warnAtPercent: 80,
    });
    budgets.recordUsage('agent-1', { tokens: 1500, cost: 0.05 });
    const s = budgets.getStatus('agent-1');
    expect(s).toMatchObject({
      scope: 'agent:agent-1',
      tokensUsed: 1500,
      tokensLimit: 100_000,
      costUsed: 0.05,
      costLimit: 10,
      percentUsed: 1.5,
      warning: false,
      exhausted: false,
      tokensReserved: 0,
    });
    // The oldest usage leaves the token window after an hour (at the end of its minute bucket).
    expect(s.resetsAt).toBe(Date.parse('2026-03-02T11:01:00Z'));
  });

  it('reads unset limits as Infinity and tracks usage without a budget', () => {
    budgets.recordUsage('free', { tokens: 10 });
    expect(budgets.getStatus('free')).toMatchObject({
      tokensUsed: 10,
      tokensLimit: Number.POSITIVE_INFINITY,
      costLimit: Number.POSITIVE_INFINITY,
      percentUsed: 0,
      warning: false,
    });
    expect(budgets.getStatus('nobody')).toMatchObject({ tokensUsed: 0, resetsAt: null });
    expect(budgets.check('free', { tokens: 1e12 })).toEqual({ allowed: true });
  });

  describe('windows roll', () => {
    it('tokens over a sliding hour', () => {
      budgets.recordUsage('a', { tokens: 1000 });
      passTo(T0 + 30 * MIN);
      budgets.recordUsage('a', { tokens: 500 });
      passTo(T0 + HOUR); // 11:00:30: everything is less than an hour old or just an hour
      expect(budgets.getStatus('a').tokensUsed).toBe(1500);
      passTo(Date.parse('2026-03-02T11:01:00Z'));
      expect(budgets.getStatus('a').tokensUsed).toBe(500);
      passTo(T0 + 30 * MIN + HOUR + MIN);
      expect(budgets.getStatus('a').tokensUsed).toBe(0);
    });

    it('cost over a sliding 24 h (15-minute buckets)', () => {
      budgets.recordUsage('a', { cost: 2 });
      passTo(T0 + 24 * HOUR);
      expect(budgets.getStatus('a').costUsed).toBe(2);
      passTo(Date.parse('2026-03-03T10:15:00Z'));
      expect(budgets.getStatus('a').costUsed).toBe(0);
    });

    it('cost over the UTC day', () => {
      passTo(Date.parse('2026-03-02T23:50:00Z'));
      budgets.setBudget('a', { maxCostPerDay: 1, costWindow: 'utc-day' });
      budgets.recordUsage('a', { cost: 1 });
      const refused = budgets.check('a', { cost: 0.5 });
      expect(refused).toMatchObject({
        allowed: false,
        limit: 'cost',
        retryAt: Date.parse('2026-03-03T00:00:00Z'),
      });
      passTo(Date.parse('2026-03-02T23:59:59.999Z'));
      expect(budgets.getStatus('a').costUsed).toBe(1);
      passTo(Date.parse('2026-03-03T00:00:00Z'));
      expect(budgets.getStatus('a').costUsed).toBe(0);
      expect(budgets.check('a', { cost: 0.5 }).allowed).toBe(true);
    });

    it('survives long idle gaps and keeps fixed-size state', () => {
      for (let i = 0; i < 5000; i++) budgets.recordUsage('a', { tokens: 1 });
      const state = (budgets.store as InMemoryBudgetStore).snapshot()['agent:a']!;
      expect(state.tokens.kind === 'sliding' && state.tokens.buckets.length).toBe(61);
      passTo(T0 + 1000 * 24 * HOUR);
      expect(budgets.getStatus('a').tokensUsed).toBe(0);
    });
  });

  describe('check, reserve, settle, release', () => {
    beforeEach(() => budgets.setBudget('a', { maxTokensPerHour: 1000, maxCostPerDay: 1 }));

    it('reserves estimates so in-flight calls count', () => {
      const r1 = budgets.reserve('a', { tokens: 600 });
      expect(budgets.getStatus('a').tokensReserved).toBe(600);
      const err = exceeded(() => budgets.reserve('a', { tokens: 500 }));
      expect(err.code).toBe('FABRIC_ERR_BUDGET_EXCEEDED');
      expect(err.kind).toBe('resource_exhausted');
      // In-flight reservations block it: when it fits cannot be read off the window.
      expect(err.details).toMatchObject({
        scope: 'agent:a',
        limit: 'tokens',
        used: 0,
        reserved: 600,
        requested: 500,
        max: 1000,
        retryAt: null,
      });
      budgets.settle(r1, { tokens: 300 });
      expect(budgets.getStatus('a')).toMatchObject({ tokensUsed: 300, tokensReserved: 0 });
      expect(budgets.reserve('a', { tokens: 500 }).state).toBe('reserved');
    });

    it('returns retryAt: when enough usage leaves the window', () => {
      budgets.recordUsage('a', { tokens: 400 });
      passTo(T0 + 20 * MIN);
      budgets.recordUsage('a', { tokens: 500 });
      passTo(T0 + 30 * MIN);
      const check = budgets.check('a', { tokens: 200 });
      expect(check).toEqual({
        allowed: false,
        scope: 'agent:a',
        limit: 'tokens',
        used: 900,
        reserved: 0,
        requested: 200,
        max: 1000,
        retryAt: Date.parse('2026-03-02T11:01:00Z'),
      });
      expect(exceeded(() => budgets.reserve('a', { tokens: 200 })).details.retryAt).toBe(
        Date.parse('2026-03-02T11:01:00Z'),
      );
      passTo(Date.parse('2026-03-02T11:01:00Z'));
      expect(budgets.check('a', { tokens: 200 }).allowed).toBe(true);
      // An estimate larger than the limit never fits.
      expect(budgets.check('a', { tokens: 2000 })).toMatchObject({ allowed: false, retryAt: null });
    });

    it('refuses every call once a limit is exhausted, even a zero estimate', () => {
      budgets.recordUsage('a', { tokens: 1000 });
      expect(budgets.check('a', {})).toMatchObject({ allowed: false, limit: 'tokens' });
      expect(budgets.getStatus('a')).toMatchObject({
        exhausted: true,
        warning: true,
        percentUsed: 100,
      });
    });

    it('tolerates float sums of costs', () => {
      budgets.setBudget('c', { maxCostPerDay: 0.3 });
      budgets.recordUsage('c', { cost: 0.1 });
      expect(budgets.check('c', { cost: 0.2 }).allowed).toBe(true);
      budgets.recordUsage('c', { cost: 0.2 });
      expect(budgets.check('c', { cost: 0 }).allowed).toBe(false);
    });

    it('settle and release are idempotent', () => {
      const r = budgets.reserve('a', { tokens: 100, cost: 0.1 });
      budgets.settle(r, { tokens: 50 });
      budgets.settle(r, { tokens: 50 });
      budgets.release(r);
      expect(r.state).toBe('settled');
      expect(budgets.getStatus('a')).toMatchObject({
        tokensUsed: 50,
        costUsed: 0.1,
        tokensReserved: 0,
      });
      const r2 = budgets.reserve('a', { tokens: 100 });
      budgets.release(r2);
      budgets.release(r2);
      budgets.settle(r2, { tokens: 100 });
      expect(r2.state).toBe('released');
      expect(budgets.getStatus('a')).toMatchObject({ tokensUsed: 50, tokensReserved: 0 });
    });

    it('50 concurrent calls cannot all pass a nearly exhausted budget', async () => {
      budgets.recordUsage('a', { tokens: 950 });
      const call = async (): Promise<boolean> => {
        let r: Reservation;
        try {
          r = budgets.reserve('a', { tokens: 10 });
        } catch (err) {
          if (err instanceof BudgetExceededError) return false;
          throw err;
        }
        await Promise.resolve();
        budgets.settle(r, { tokens: 10 });
        return true;
      };
      const results = await Promise.all(Array.from({ length: 50 }, call));
      expect(results.filter(Boolean)).toHaveLength(5);
      expect(budgets.getStatus('a').tokensUsed).toBe(1000);
    });

    it('rejects reservations from another manager', () => {
      const other = new BudgetManager();
      const r = other.reserve('a', { tokens: 1 });
      expect(() => budgets.settle(r)).toThrow(InvalidArgumentError);
    });

    it('check with reservationsAside counts the usage alone (what an upstream sampling asks)', () => {
      budgets.setPoolBudget('p', { maxTokensPerHour: 5000 });
      // The calling call's reservation fills the limit: the usage alone still has room.
      const r = budgets.reserve('a', { tokens: 1000 }, { poolId: 'p' });
      const aside = { poolId: 'p', reservationsAside: true };
      expect(budgets.check('a', { tokens: 100 }, { poolId: 'p' }).allowed).toBe(false);
      expect(budgets.check('a', { tokens: 100 }, aside)).toEqual({ allowed: true });
      budgets.settle(r, { tokens: 950 });
      expect(budgets.check('a', { tokens: 100 }, aside)).toMatchObject({
        allowed: false,
        scope: 'agent:a',
        limit: 'tokens',
        used: 950,
        reserved: 0,
        requested: 100,
      });
      expect(budgets.check('a', { tokens: 50 }, aside)).toEqual({ allowed: true });
      // A cost limit reached refuses it too (it asks no cost), as does a pool's limit.
      budgets.recordUsage('a', { cost: 1 }, { poolId: 'p' });
      expect(budgets.check('a', { tokens: 0 }, aside)).toMatchObject({ limit: 'cost' });
      budgets.setBudget('a', {});
      budgets.recordUsage('a', { tokens: 4100 }, { poolId: 'p' });
      expect(budgets.check('a', { tokens: 0 }, aside)).toMatchObject({ scope: 'pool:p' });
    });

    it('reserve with reservationsAside counts the others made so, and every check counts it', () => {
      budgets.setBudget('a', { maxTokensPerHour: 1000 });
      // The calling call's own reservation fills the limit; samplings held aside fit beside it,
      // but not beside each other past the limit.
      const call = budgets.reserve('a', { tokens: 1000 });
      const aside = { reservationsAside: true };
      const s1 = budgets.reserve('a', { tokens: 600 }, aside);
      expect(() => budgets.reserve('a', { tokens: 600 }, aside)).toThrow(BudgetExceededError);
      expect(budgets.check('a', { tokens: 500 }, aside)).toMatchObject({
        allowed: false,
        reserved: 600,
      });
      const s2 = budgets.reserve('a', { tokens: 400 }, aside);
      expect(budgets.getStatus('a').tokensReserved).toBe(2000);
      budgets.release(call);
      // An ordinary reservation sees them: no room left.
      expect(budgets.check('a', { tokens: 1 }).allowed).toBe(false);
      // Settled with what the samplings used; a released one gives its hold back.
      budgets.settle(s1, { tokens: 700 });
      budgets.release(s2);
      expect(budgets.getStatus('a')).toMatchObject({ tokensUsed: 700, tokensReserved: 0 });
      expect(budgets.check('a', { tokens: 300 }, aside)).toEqual({ allowed: true });
      expect(budgets.check('a', { tokens: 301 }, aside).allowed).toBe(false);
    });
  });

  describe('levels', () => {
    it('a call must fit its agent, its pool and the fabric', () => {
      budgets.setPoolBudget('pool-1', { maxTokensPerHour: 1000 });
      budgets.setFabricBudget({ maxTokensPerHour: 1500 });
      budgets.recordUsage('a', { tokens: 600 }, { poolId: 'pool-1' });
      // Without the pool the agent only meets the fabric limit.
      expect(budgets.check('b', { tokens: 500 }).allowed).toBe(true);
      expect(budgets.check('b', { tokens: 500 }, { poolId: 'pool-1' })).toMatchObject({
        allowed: false,
        scope: 'pool:pool-1',
      });
      budgets.recordUsage('c', { tokens: 800 }, { poolId: 'pool-2' });
      expect(budgets.check('b', { tokens: 200 })).toMatchObject({
        allowed: false,
        scope: 'fabric',
      });
      expect(budgets.getPoolStatus('pool-1').tokensUsed).toBe(600);
      expect(budgets.getFabricStatus().tokensUsed).toBe(1400);
      budgets.setBudget('b', { maxTokensPerHour: 10 });
      expect(budgets.check('b', { tokens: 20 })).toMatchObject({ scope: 'agent:b' });
      budgets.removeFabricBudget();
      budgets.removeBudget('b');
      expect(budgets.check('b', { tokens: 500 }).allowed).toBe(true);
    });
  });

  describe('events', () => {
    it('warns once per crossing and reports exhaustion at 100%', () => {
      const events: [string, BudgetAlert][] = [];
      budgets.on('warning', (a) => events.push(['warning', a]));
      budgets.on('exhausted', (a) => events.push(['exhausted', a]));
      budgets.setBudget('a', { maxTokensPerHour: 1000, warnAtPercent: 80 });
      budgets.recordUsage('a', { tokens: 700 });
      expect(events).toHaveLength(0);
      budgets.recordUsage('a', { tokens: 100 });
      budgets.recordUsage('a', { tokens: 50 });
      expect(events.map(([k]) => k)).toEqual(['warning']);
      expect(events[0]![1]).toMatchObject({
        scope: 'agent:a',
        limit: 'tokens',
        used: 800,
        max: 1000,
        percentUsed: 80,
      });
      budgets.recordUsage('a', { tokens: 150 });
      budgets.recordUsage('a', { tokens: 10 });
      expect(events.map(([k]) => k)).toEqual(['warning', 'exhausted']);
      // The window rolls; crossing again in the next window warns again.
      passTo(T0 + 2 * HOUR);
      budgets.recordUsage('a', { tokens: 900 });
      expect(events.map(([k]) => k)).toEqual(['warning', 'exhausted', 'warning']);
    });
  });

  it('unmetered: holds nothing and refuses nothing, even on an exhausted scope', () => {
    budgets.setBudget('a', { maxTokensPerHour: 10 });
    budgets.recordUsage('a', { tokens: 50 });
    expect(budgets.check('a', { tokens: 5 }).allowed).toBe(false);
    expect(budgets.check('a', { tokens: 5 }, { unmetered: true }).allowed).toBe(true);
    const r = budgets.reserve('a', { tokens: 5 }, { unmetered: true });
    expect(budgets.getStatus('a').tokensReserved).toBe(0);
    budgets.settle(r, { tokens: 0 });
    expect(budgets.getStatus('a').tokensUsed).toBe(50);
    expect(() => budgets.reserve('a', { tokens: 5 })).toThrow(/budget/i);
  });

  it('unmetered reserveWhenFree resolves at once with nothing held', async () => {
    budgets.setBudget('a', { maxCostPerDay: 1 });
    budgets.recordUsage('a', { cost: 2 });
    const r = await budgets.reserveWhenFree('a', { cost: 1 }, { waitMs: 1000, unmetered: true });
    expect(r.state).toBe('reserved');
    expect(budgets.getStatus('a').costReserved).toBe(0);
    budgets.release(r);
  });

  describe('validation', () => {
    it.each([
      [{ tokens: -1 }, 'usage.tokens'],
      [{ tokens: Number.NaN }, 'usage.tokens'],
      [{ tokens: '5' }, 'usage.tokens'],
      [{ cost: Number.POSITIVE_INFINITY }, 'usage.cost'],
      [{ cost: null }, 'usage.cost'],
      [{ cost: 1e308 }, 'usage.cost'],
      [{ tokens: MAX_USAGE_AMOUNT + 1 }, 'usage.tokens'],
    ])('rejects usage %o', (usage, field) => {
      let err: unknown;
      try {
        budgets.recordUsage('a', usage as never);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(InvalidUsageError);
      expect((err as InvalidUsageError).details.field).toBe(field);
      expect(budgets.getStatus('a').tokensUsed).toBe(0);
    });

    it('accepts amounts up to MAX_USAGE_AMOUNT, and their sums stay finite', () => {
      for (let i = 0; i < 3; i++) budgets.recordUsage('a', { cost: MAX_USAGE_AMOUNT });
      expect(budgets.getStatus('a').costUsed).toBe(3 * MAX_USAGE_AMOUNT);
      expect(() => budgets.reserve('a', { cost: MAX_USAGE_AMOUNT * 10 })).toThrow(
        /estimate\.cost must be a non-negative number of at most 1000000000000000/,
      );
    });

    it('rejects bad estimates and actuals, keeping the reservation', () => {
      expect(() => budgets.reserve('a', { tokens: -5 })).toThrow(/estimate.tokens/);
      expect(() => budgets.check('a', null as never)).toThrow(InvalidUsageError);
      const r = budgets.reserve('a', { tokens: 5 });
      expect(() => budgets.settle(r, { tokens: Number.NaN })).toThrow(/actual.tokens/);
      expect(r.state).toBe('reserved');
    });

    it.each([
      [{ maxTokensPerHour: 0 }, 'config.maxTokensPerHour'],
      [{ maxTokensPerHour: -1 }, 'config.maxTokensPerHour'],
      [{ maxCostPerDay: Number.NaN }, 'config.maxCostPerDay'],
      [{ maxCostPerDay: '10' }, 'config.maxCostPerDay'],
      [{ warnAtPercent: 0 }, 'config.warnAtPercent'],
      [{ warnAtPercent: 101 }, 'config.warnAtPercent'],
      [{ costWindow: 'weekly' }, 'config.costWindow'],
      [{ maxTokens: 5 }, 'config.maxTokens'],
    ])('rejects config %o naming %s', (config, field) => {
      let err: unknown;
      try {
        budgets.setBudget('a', config as never);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(ConfigError);
      expect((err as ConfigError).details.field).toBe(field);
    });

    it('rejects empty ids', () => {
      expect(() => budgets.setBudget('', {})).toThrow(/agentId/);
      expect(() => budgets.reserve('a', {}, { poolId: '' })).toThrow(/poolId/);
    });
  });

  describe('the wall clock moving without elapsed time', () => {
    it('a suspend of the machine is time that passed (the boot-time clock counts it)', () => {
      let slept = 0;
      const m = new BudgetManager({ bootClock: () => performance.now() + slept });
      m.setBudget('a', { maxTokensPerHour: 1000 });
      m.recordUsage('a', { tokens: 1000 });
      // Two hours asleep: wall and boot-time clocks move, the monotonic one stands still.
      vi.setSystemTime(Date.now() + 2 * HOUR);
      slept += 2 * HOUR;
      vi.advanceTimersByTime(1000);
      expect(m.getStatus('a').tokensUsed).toBe(0);
      expect(m.clockSteps).toBe(0);
      // The same jump with no suspend to explain it is a step: the hour is kept.
      m.recordUsage('a', { tokens: 1000 });
      vi.setSystemTime(Date.now() + 2 * HOUR);
      vi.advanceTimersByTime(1000);
      expect(m.getStatus('a').tokensUsed).toBe(1000);
      expect(m.clockSteps).toBe(1);
    });

    it('follows a slewed clock (within the tolerance) and takes no step for it', () => {
      const m = new BudgetManager({ bootClock: () => undefined });
      for (let i = 0; i < 10; i++) {
        vi.setSystemTime(Date.now() + 400);
        vi.advanceTimersByTime(1000);
        expect(m.now()).toBe(Date.now());
      }
      expect(m.clockSteps).toBe(0);
    });
  });

  describe('store', () => {
    it('serializes windows so a restart resumes (and keeps rolling) instead of resetting', () => {
      const store = new InMemoryBudgetStore();
      const first = new BudgetManager({ store });
      first.setBudget('a', { maxTokensPerHour: 1000, maxCostPerDay: 5, costWindow: 'utc-day' });
      first.recordUsage('a', { tokens: 900, cost: 2 }, { poolId: 'p' });
      passTo(T0 + 10 * MIN);
      first.recordUsage('a', { tokens: 50 }, { poolId: 'p' });
      const saved = JSON.parse(JSON.stringify(store.snapshot())) as ReturnType<
        InMemoryBudgetStore['snapshot']
      >;
      expect(Object.keys(saved).sort()).toEqual(['agent:a', 'fabric', 'pool:p']);

      const restarted = new BudgetManager({ store: new InMemoryBudgetStore(saved) });
      expect(restarted.getStatus('a')).toMatchObject({
        tokensUsed: 950,
        tokensLimit: 1000,
        costUsed: 2,
        costLimit: 5,
      });
      expect(restarted.check('a', { tokens: 100 }).allowed).toBe(false);
      expect(restarted.getPoolStatus('p').tokensUsed).toBe(950);
      passTo(Date.parse('2026-03-02T11:01:00Z'));
      expect(restarted.getStatus('a').tokensUsed).toBe(50);
    });

    it('forgetAgent drops an agent from memory and the store; late usage counts in pool and fabric only', () => {
      const store = new InMemoryBudgetStore();
      const b = new BudgetManager({ store });
      const alerts: BudgetAlert[] = [];
      b.on('warning', (a) => alerts.push(a));
      b.on('exhausted', (a) => alerts.push(a));
      b.setBudget('gone', { maxTokensPerHour: 100 });
      b.setBudget('stays', { maxTokensPerHour: 100 });
      b.recordUsage('gone', { tokens: 10 }, { poolId: 'p' });
      b.recordUsage('stays', { tokens: 5 }, { poolId: 'p' });
      const inFlight = b.reserve('gone', { tokens: 20 }, { poolId: 'p' });
      expect(b.agentCount).toBe(2);

      b.forgetAgent('gone');
      expect(b.agentCount).toBe(1);
      expect(Object.keys(store.snapshot()).sort()).toEqual(['agent:stays', 'fabric', 'pool:p']);

      // The reservation made before settles into the pool and the fabric, not a revived agent.
      b.settle(inFlight, { tokens: 200 });
      expect(b.getPoolStatus('p')).toMatchObject({ tokensUsed: 215, tokensReserved: 0 });
      expect(b.getFabricStatus()).toMatchObject({ tokensUsed: 215, tokensReserved: 0 });
      expect(alerts).toEqual([]); // no alert about an agent that is gone
      expect(Object.keys(store.snapshot())).not.toContain('agent:gone');
      expect(b.getStatus('stays').tokensUsed).toBe(5);

      // Asked for again, the id is a fresh, unlimited scope; forgetting twice is harmless.
      expect(b.getStatus('gone')).toMatchObject({ tokensUsed: 0, tokensLimit: Infinity });
      b.forgetAgent('gone');
      b.forgetAgent('never-known');
      expect(b.agentCount).toBe(1);
      expect(() => b.forgetAgent('')).toThrow(InvalidArgumentError);
    });

    it("forgetPool drops a deleted pool's limits and usage from memory and the store; late usage counts in agent and fabric only", () => {
      const store = new InMemoryBudgetStore();
      const b = new BudgetManager({ store });
      const alerts: BudgetAlert[] = [];
      b.on('warning', (a) => alerts.push(a));
      b.on('exhausted', (a) => alerts.push(a));
      b.setPoolBudget('p', { maxTokensPerHour: 100 });
      b.recordUsage('a', { tokens: 10 }, { poolId: 'p' });
      const inFlight = b.reserve('a', { tokens: 20 }, { poolId: 'p' });

      b.forgetPool('p');
      expect(Object.keys(store.snapshot()).sort()).toEqual(['agent:a', 'fabric']);

      // The reservation made before settles into the agent and the fabric, not a revived pool.
      b.settle(inFlight, { tokens: 200 }, { requireFit: true });
      expect(b.getStatus('a')).toMatchObject({ tokensUsed: 210, tokensReserved: 0 });
      expect(b.getFabricStatus()).toMatchObject({ tokensUsed: 210, tokensReserved: 0 });
      expect(alerts).toEqual([]); // no alert about a pool that is gone
      expect(Object.keys(store.snapshot())).not.toContain('pool:p');

      // A pool of that id later is a fresh, unlimited scope; forgetting twice is harmless.
      expect(b.getPoolStatus('p')).toMatchObject({ tokensUsed: 0, tokensLimit: Infinity });
      b.forgetPool('p');
      b.forgetPool('never-known');
      expect(() => b.forgetPool('')).toThrow(InvalidArgumentError);
    });
  });
});

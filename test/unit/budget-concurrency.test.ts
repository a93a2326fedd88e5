import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { BudgetExceededError, InvalidArgumentError } from '../../src/errors.js';
import { BudgetManager, type Reservation } from '../../src/budget/budget-manager.js';
import type { BudgetAlert } from '../../src/budget/scope-usage.js';

const T0 = Date.parse('2026-03-02T10:00:30Z');
const MIN = 60_000;

/** The rejection of `promise`, which must be a BudgetExceededError. */
async function refused(promise: Promise<unknown>): Promise<BudgetExceededError> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(BudgetExceededError);
  return error as BudgetExceededError;
}

/** Whether `promise` is still pending after the microtask queue ran. */
async function pending(promise: Promise<unknown>): Promise<boolean> {
  let settled = false;
  promise.then(
    () => (settled = true),
    () => (settled = true),
  );
  await vi.advanceTimersByTimeAsync(0);
  return !settled;
}

describe('BudgetManager under concurrency: clamped estimates, bounded waits, settle-time fit', () => {
  let budgets: BudgetManager;
  beforeEach(() => {
    vi.useFakeTimers();
    vi.setSystemTime(T0);
    budgets = new BudgetManager();
    budgets.setBudget('a', { maxTokensPerHour: 1000, maxCostPerDay: 10 });
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  describe('clampTokens', () => {
    it('reserves at most the smallest token limit, so a large prior still passes an idle budget', () => {
      expect(budgets.check('a', { tokens: 4000 })).toMatchObject({ allowed: false, retryAt: null });
      const r = budgets.reserve('a', { tokens: 4000 }, { clampTokens: true });
      expect(r.tokens).toBe(1000);
      expect(budgets.getStatus('a').tokensReserved).toBe(1000);
      budgets.release(r);
      budgets.setPoolBudget('p', { maxTokensPerHour: 300 });
      budgets.setFabricBudget({ maxTokensPerHour: 500 });
      const pooled = budgets.reserve('a', { tokens: 4000 }, { poolId: 'p', clampTokens: true });
      expect(pooled.tokens).toBe(300);
      budgets.release(pooled);
      expect(budgets.check('a', { tokens: 4000 }, { clampTokens: true })).toEqual({
        allowed: true,
      });
      expect(budgets.reserve('a', { tokens: 4000 }, { clampTokens: true }).tokens).toBe(500);
      // The fabric's 500 are held now: a clamped estimate still has to fit.
      expect(budgets.check('b', { tokens: 4000 }, { clampTokens: true })).toMatchObject({
        allowed: false,
        scope: 'fabric',
        requested: 500,
      });
      // Unlimited scopes do not clamp.
      budgets.removeFabricBudget();
      expect(budgets.reserve('free', { tokens: 1e9 }, { clampTokens: true }).tokens).toBe(1e9);
    });
  });

  describe('reserveWhenFree', () => {
    it('waits while in-flight reservations cover the budget, then reserves when one settles', async () => {
      const first = budgets.reserve('a', { tokens: 800 });
      const waiting = budgets.reserveWhenFree('a', { tokens: 300 }, { waitMs: 5000 });
      expect(await pending(waiting)).toBe(true);
      expect(budgets.waiting).toBe(1);
      budgets.settle(first, { tokens: 200 });
      const r = await waiting;
      expect(r.tokens).toBe(300);
      expect(budgets.waiting).toBe(0);
      expect(budgets.getStatus('a')).toMatchObject({ tokensUsed: 200, tokensReserved: 300 });
    });

    it('refuses a waiter with retryAt as soon as settled usage leaves no room for it', async () => {
      const first = budgets.reserve('a', { tokens: 800 });
      const waiting = budgets.reserveWhenFree('a', { tokens: 300 }, { waitMs: 5000 });
      expect(await pending(waiting)).toBe(true);
      budgets.settle(first, { tokens: 900 });
      const e = await refused(waiting);
      expect(e.details).toMatchObject({ scope: 'agent:a', used: 900, requested: 300 });
      // The 900 tokens leave the window an hour (and at most a bucket) later.
      expect(e.details.retryAt).toBe(Date.parse('2026-03-02T11:01:00Z'));
      expect(budgets.getStatus('a').tokensReserved).toBe(0);
    });

    it('refuses at once what waiting cannot help, and decides at once with waitMs 0', async () => {
      budgets.recordUsage('a', { tokens: 900 });
      const e = await refused(budgets.reserveWhenFree('a', { tokens: 300 }, { waitMs: 5000 }));
      expect(e.details.retryAt).toBe(Date.parse('2026-03-02T11:01:00Z'));
      const held = budgets.reserve('a', { tokens: 100 });
      const now = await refused(budgets.reserveWhenFree('a', { tokens: 50 }, { waitMs: 0 }));
      // Only in-flight calls block it: retry once they had time to settle.
      expect(now.details.retryAt).toBeGreaterThan(Date.now());
      budgets.release(held);
      expect(budgets.waiting).toBe(0);
    });

    it('gives up after waitMs with a retryAt, holding nothing', async () => {
      const first = budgets.reserve('a', { tokens: 900 });
      const waiting = budgets.reserveWhenFree('a', { tokens: 300 }, { waitMs: 2000 });
      const outcome = refused(waiting);
      await vi.advanceTimersByTimeAsync(2000);
      const e = await outcome;
      expect(e.details).toMatchObject({ reserved: 900, requested: 300 });
      expect(e.details.retryAt).toBe(T0 + 2000 + 2000);
      expect(budgets.waiting).toBe(0);
      budgets.settle(first, { tokens: 100 });
      expect(budgets.getStatus('a')).toMatchObject({ tokensUsed: 100, tokensReserved: 0 });
    });

    it('a cancelled waiter rejects with the signal reason and leaves no reservation behind', async () => {
      const first = budgets.reserve('a', { tokens: 900 });
      const ac = new AbortController();
      const waiting = budgets.reserveWhenFree(
        'a',
        { tokens: 300 },
        { waitMs: 5000, signal: ac.signal },
      );
      expect(await pending(waiting)).toBe(true);
      ac.abort(new Error('client went away'));
      await expect(waiting).rejects.toThrow('client went away');
      expect(budgets.waiting).toBe(0);
      budgets.settle(first, { tokens: 0 });
      expect(budgets.getStatus('a').tokensReserved).toBe(0);
      // Already aborted: refused before anything is held.
      await expect(
        budgets.reserveWhenFree('a', { tokens: 1 }, { waitMs: 5000, signal: ac.signal }),
      ).rejects.toThrow('client went away');
      expect(budgets.getStatus('a').tokensReserved).toBe(0);
    });

    it('wakes waiters oldest first; those that fit pass, the rest keep waiting', async () => {
      const big = budgets.reserve('a', { tokens: 1000 });
      const order: number[] = [];
      const waiters = [400, 400, 400].map((tokens, i) =>
        budgets.reserveWhenFree('a', { tokens }, { waitMs: 5000 }).then((r) => {
          order.push(i);
          return r;
        }),
      );
      await vi.advanceTimersByTimeAsync(0);
      budgets.settle(big, { tokens: 100 });
      await vi.advanceTimersByTimeAsync(0);
      expect(order).toEqual([0, 1]);
      expect(budgets.waiting).toBe(1);
      const [r0, r1] = (await Promise.all(waiters.slice(0, 2))) as Reservation[];
      budgets.settle(r0!, { tokens: 400 }); // 500 used, 400 reserved: the third still waits …
      await vi.advanceTimersByTimeAsync(0);
      expect(order).toEqual([0, 1]);
      budgets.release(r1!); // … and passes once the second is given back
      await waiters[2];
      expect(order).toEqual([0, 1, 2]);
    });

    it('500 concurrent callers never hold more than the limit, and every one is answered', async () => {
      const calls = Array.from({ length: 500 }, async () => {
        let r: Reservation;
        try {
          r = await budgets.reserveWhenFree('a', { tokens: 100 }, { waitMs: 5000 });
        } catch (e) {
          if (e instanceof BudgetExceededError) return 'refused';
          throw e;
        }
        expect(budgets.getStatus('a').tokensReserved).toBeLessThanOrEqual(1000);
        await Promise.resolve();
        budgets.settle(r, { tokens: 20 });
        return 'ok';
      });
      const outcomes = await Promise.all(calls);
      const status = budgets.getStatus('a');
      expect(status.tokensUsed).toBeLessThanOrEqual(1000);
      expect(outcomes.filter((o) => o === 'ok').length).toBe(status.tokensUsed / 20);
      expect(status.tokensReserved).toBe(0);
      expect(budgets.waiting).toBe(0);
    });

    it('parks at most maxWaitersPerAgent calls per agent; more are decided at once', async () => {
      const b = new BudgetManager({ maxWaitersPerAgent: 2 });
      b.setFabricBudget({ maxTokensPerHour: 100 });
      const held = b.reserve('a', { tokens: 100 });
      const parked = [1, 2].map(() => b.reserveWhenFree('a', { tokens: 10 }, { waitMs: 5000 }));
      const third = await refused(b.reserveWhenFree('a', { tokens: 10 }, { waitMs: 5000 }));
      expect(third.details.retryAt).toBeGreaterThan(Date.now());
      // Another agent still gets its turn to wait.
      const other = b.reserveWhenFree('b', { tokens: 10 }, { waitMs: 5000 });
      expect(b.waiting).toBe(3);
      b.settle(held, { tokens: 0 });
      expect((await Promise.all([...parked, other])).map((r) => r.tokens)).toEqual([10, 10, 10]);
      expect(b.waiting).toBe(0);
      expect((await b.reserveWhenFree('a', { tokens: 10 }, { waitMs: 5000 })).tokens).toBe(10);
      expect(() => new BudgetManager({ maxWaitersPerAgent: -1 })).toThrow(
        'options.maxWaitersPerAgent',
      );
    });

    it('rejects a bad waitMs', () => {
      expect(() => budgets.reserveWhenFree('a', { tokens: 1 }, { waitMs: -1 })).toThrow(
        InvalidArgumentError,
      );
      expect(() =>
        budgets.reserveWhenFree('a', { tokens: 1 }, { waitMs: Number.POSITIVE_INFINITY }),
      ).toThrow(InvalidArgumentError);
    });
  });

  describe('settle with requireFit', () => {
    it('charges tokens that fit and returns null', () => {
      const r = budgets.reserve('a', { tokens: 10, cost: 1 });
      expect(budgets.settle(r, { tokens: 1000, cost: 1 }, { requireFit: true })).toBeNull();
      expect(budgets.getStatus('a')).toMatchObject({ tokensUsed: 1000, costUsed: 1 });
    });

    it('charges only the cost of tokens that do not fit, and says why and when they would', () => {
      budgets.recordUsage('a', { tokens: 700 });
      vi.advanceTimersByTime(10 * MIN);
      const r = budgets.reserve('a', { tokens: 10, cost: 2 });
      const short = budgets.settle(r, { tokens: 400, cost: 2 }, { requireFit: true });
      expect(short).toEqual({
        scope: 'agent:a',
        limit: 'tokens',
        used: 700,
        reserved: 0,
        requested: 400,
        max: 1000,
        retryAt: Date.parse('2026-03-02T11:01:00Z'),
      });
      expect(budgets.getStatus('a')).toMatchObject({
        tokensUsed: 700,
        tokensReserved: 0,
        costUsed: 2,
      });
      expect(r.state).toBe('settled');
      // Settling again does nothing.
      expect(budgets.settle(r, { tokens: 1 }, { requireFit: true })).toBeNull();
    });

    it('ignores other calls in flight: a result that fits the usage is delivered', () => {
      const other = budgets.reserve('a', { tokens: 900 });
      const r = budgets.reserve('a', { tokens: 100 });
      expect(budgets.settle(r, { tokens: 1000 }, { requireFit: true })).toBeNull();
      // The other call's result now fits nothing: its tokens are not charged.
      expect(budgets.settle(other, { tokens: 1 }, { requireFit: true })).toMatchObject({
        requested: 1,
        used: 1000,
      });
      expect(budgets.getStatus('a').tokensUsed).toBe(1000);
    });

    it('checks the pool and the fabric too, and a result larger than a limit never fits', () => {
      budgets.setPoolBudget('p', { maxTokensPerHour: 500 });
      budgets.setFabricBudget({ maxTokensPerHour: 5000 });
      const r = budgets.reserve('a', { tokens: 1 }, { poolId: 'p' });
      expect(budgets.settle(r, { tokens: 600 }, { requireFit: true })).toMatchObject({
        scope: 'pool:p',
        retryAt: null,
      });
      budgets.removeBudget('a');
      const f = budgets.reserve('a', { tokens: 1 });
      expect(budgets.settle(f, { tokens: 6000 }, { requireFit: true })).toMatchObject({
        scope: 'fabric',
        requested: 6000,
        retryAt: null,
      });
      expect(budgets.getFabricStatus().tokensUsed).toBe(0);
    });

    it('fires no warning for tokens it did not charge; zero tokens fit even an exhausted scope', () => {
      const alerts: BudgetAlert[] = [];
      budgets.on('warning', (a) => alerts.push(a));
      budgets.on('exhausted', (a) => alerts.push(a));
      const r = budgets.reserve('a', { tokens: 1 });
      expect(budgets.settle(r, { tokens: 5000 }, { requireFit: true })).not.toBeNull();
      expect(alerts).toEqual([]);
      budgets.recordUsage('a', { tokens: 1200 }); // self-reported usage may pass the limit
      expect(alerts.map((a) => a.percentUsed)).toEqual([120, 120]);
      budgets.setBudget('b', { maxTokensPerHour: 10 });
      const held = budgets.reserve('b', { tokens: 0 });
      budgets.recordUsage('b', { tokens: 10 });
      expect(budgets.settle(held, { tokens: 0 }, { requireFit: true })).toBeNull();
    });

    it('wakes a waiter when a withheld result gives its reservation back', async () => {
      const first = budgets.reserve('a', { tokens: 900 });
      const waiting = budgets.reserveWhenFree('a', { tokens: 500 }, { waitMs: 5000 });
      expect(await pending(waiting)).toBe(true);
      expect(budgets.settle(first, { tokens: 2000 }, { requireFit: true })).not.toBeNull();
      expect((await waiting).tokens).toBe(500);
    });
  });
});

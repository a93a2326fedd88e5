/**
 * LineBudget (the per-session bound on audit lines of requests reusing an in-flight id): past
 * the limit lines are counted, and each window with any ends in one summary of how many — at
 * its end, or when the budget is closed first; a new window writes again.
 */
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { LineBudget } from '../../src/gateway/line-budget.js';

describe('LineBudget', () => {
  beforeEach(() => vi.useFakeTimers());
  afterEach(() => vi.useRealTimers());

  it('lets the limit through a window, counts the rest, and summarizes them when it ends', () => {
    const summaries: number[] = [];
    const budget = new LineBudget(3, 1_000, (n) => summaries.push(n));
    const taken = Array.from({ length: 10 }, () => budget.take());
    expect(taken).toEqual([true, true, true, false, false, false, false, false, false, false]);
    expect(summaries).toEqual([]);
    vi.advanceTimersByTime(1_000);
    expect(summaries).toEqual([7]);
    // A new window: three more lines, then counted again.
    expect([budget.take(), budget.take(), budget.take(), budget.take()]).toEqual([
      true,
      true,
      true,
      false,
    ]);
    budget.close();
    expect(summaries).toEqual([7, 1]);
    // Closed: nothing more to bound, no more summaries (its window's timer is gone).
    vi.advanceTimersByTime(5_000);
    budget.close();
    expect(summaries).toEqual([7, 1]);
  });

  it('writes no summary for a window that stayed within the limit', () => {
    const summaries: number[] = [];
    const budget = new LineBudget(3, 1_000, (n) => summaries.push(n));
    budget.take();
    vi.advanceTimersByTime(1_000);
    budget.take();
    budget.close();
    expect(summaries).toEqual([]);
  });
});

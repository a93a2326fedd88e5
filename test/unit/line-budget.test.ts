/**
 * LineBudget (the per-session bound on audit lines of one kind of refusal that ran nothing): past
 * the limit lines are counted, and each window with any ends in one summary of how many — at
 * its end, or when the budget is closed first; a new window writes again.
 */
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { LineBudget, RefusalLines } from '../../src/gateway/line-budget.js';

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

describe('RefusalLines', () => {
  beforeEach(() => vi.useFakeTimers());
  afterEach(() => vi.useRealTimers());

  const A = { tool: '(a)', decision: 'invalid', code: 'A' };
  const B = { tool: '(b)', decision: 'none', code: 'B' };

  it('bounds each kind per agent apart, across its sessions, counts every line not written, and summarizes at a session close without a new window', () => {
    const summaries: string[] = [];
    const lines = new RefusalLines(
      (agent, kind, n) => summaries.push(`${agent} ${kind.tool} ${n}`),
      2,
      1_000,
    );
    const taken = [A, A, A, B, A].map((k) => lines.take('ag', k));
    expect(taken).toEqual([true, true, false, true, false]);
    // A session of the agent closed: its summary now, but the minute's lines stay spent, so a
    // session opened next writes no new lines.
    lines.closeSession('ag');
    expect(summaries).toEqual(['ag (a) 2']);
    expect([lines.take('ag', A), lines.take('ag', A)]).toEqual([false, false]);
    // Another agent has its own bound.
    expect(lines.take('other', A)).toBe(true);
    expect(lines.suppressed).toBe(4);
    vi.advanceTimersByTime(1_000);
    expect(summaries).toEqual(['ag (a) 2', 'ag (a) 2']);
    // A new window: the agent's bound starts again.
    expect(lines.take('ag', A)).toBe(true);
  });

  it('forgets an agent whose window ended, and summarizes at close', () => {
    const summaries: string[] = [];
    const lines = new RefusalLines(
      (agent, kind, n) => summaries.push(`${agent} ${kind.tool} ${n}`),
      1,
      1_000,
    );
    expect([lines.take('x', A), lines.take('x', A)]).toEqual([true, false]);
    expect(lines.take('y', A)).toBe(true);
    vi.advanceTimersByTime(1_000);
    expect(summaries).toEqual(['x (a) 1']);
    // A new window: the agent's bound starts again (its budget was forgotten, not kept).
    expect([lines.take('x', A), lines.take('x', A), lines.take('x', B)]).toEqual([
      true,
      false,
      true,
    ]);
    lines.close();
    expect(summaries).toEqual(['x (a) 1', 'x (a) 1']);
    expect(vi.getTimerCount()).toBe(0);
    // Closed (the gateway stopped): nothing more is bounded.
    expect(lines.take('x', A)).toBe(true);
    expect(lines.suppressed).toBe(2);
  });
});

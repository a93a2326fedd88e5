/**
 * The clock marks a scope's row carries (`clock: { wall, boot, bootId }`) and the step a later
 * process reads from one (`BudgetClock.stepSince`): time that passed on the boot-time clock is
 * no step; another boot, no boot-time clock or a mark no clock can have written (a corrupt or
 * hostile state file: readings beyond any `Date`, negative, not numbers) tell nothing, so only
 * the wall clock spans the gap — a reading of -1e300 used to send the window's move into a
 * loop that did not end.
 */
import { afterEach, describe, expect, it, vi } from 'vitest';
import { BudgetClock } from '../../src/budget/budget-clock.js';
import { ScopeUsage } from '../../src/budget/scope-usage.js';

const HOUR = 3_600_000;

afterEach(() => vi.useRealTimers());

/** A clock on the boot `id` whose boot-time clock is the test's monotonic one plus `slept`. */
function clockOn(id: string | undefined, slept = { ms: 0 }): BudgetClock {
  return new BudgetClock(
    () => undefined,
    () => performance.now() + slept.ms,
    id,
  );
}

describe('budget clock marks', () => {
  it('tells a step made between a mark and now from time that passed, on the same boot', () => {
    vi.useFakeTimers({ toFake: ['Date', 'performance'] });
    vi.setSystemTime(Date.UTC(2026, 2, 2, 10));
    const mark = clockOn('boot-1').mark()!;
    expect(mark).toMatchObject({ wall: Date.UTC(2026, 2, 2, 10), bootId: 'boot-1' });
    vi.advanceTimersByTime(HOUR); // an hour passes
    expect(clockOn('boot-1').stepSince(mark)).toBe(0);
    vi.setSystemTime(Date.now() + 24 * HOUR); // then the wall clock alone moves a day
    expect(clockOn('boot-1').stepSince(mark)).toBe(24 * HOUR);
    expect(clockOn('boot-2').stepSince(mark)).toBeUndefined();
    expect(clockOn(undefined).stepSince(mark)).toBeUndefined();
    expect(clockOn(undefined).mark()).toBeUndefined();
  });

  it('takes a mark no clock can have written for none, and loads its scope by the wall clock', () => {
    const clock = clockOn('boot-1');
    const now = Date.now();
    const s = new ScopeUsage('agent:a', now);
    s.setConfig({ maxTokensPerHour: 10, maxCostPerDay: 1 }, now);
    s.tokens.add(10, now);
    s.cost.add(1, now);
    const good = clock.mark()!;
    for (const bad of [
      { ...good, wall: -1e300 },
      { ...good, wall: 1e300 },
      { ...good, boot: -1 },
      { ...good, boot: Number.NaN },
      { ...good, wall: '1' },
      { ...good, bootId: 7 },
      null,
      'mark',
    ]) {
      expect(clock.stepSince(bad)).toBeUndefined();
      const loaded = new ScopeUsage(
        'agent:a',
        now,
        { ...s.toJSON(), clock: bad as never },
        0,
        clock,
      );
      expect([loaded.tokens.used(now), loaded.cost.used(now)]).toEqual([10, 1]);
    }
  });
});

/**
 * Usage windows moved by a wall-clock step (`shift`) and read back behind the clock (`clampTo`):
 * usage keeps the elapsed time it had left in its window, never leaving early and at most one
 * bucket late.
 */
import { describe, expect, it } from 'vitest';
import { DAY_MS, HOUR_MS, SlidingWindow, UtcDayWindow } from '../../src/budget/usage-window.js';

const MIN = 60_000;
const T0 = Date.UTC(2026, 2, 2, 10, 0, 30);

describe('SlidingWindow.shift', () => {
  it('moves usage by the step, rounded so that it leaves no earlier than an hour after it was spent', () => {
    for (const step of [2 * HOUR_MS, -DAY_MS, 90_000, -90_000, 30_000, -30_000]) {
      const w = new SlidingWindow(HOUR_MS, MIN, T0);
      w.add(5, T0);
      w.add(7, T0 + 20 * MIN);
      const now = T0 + 20 * MIN + step;
      w.shift(step);
      expect(w.used(now)).toBe(12);
      // The first amount was spent 20 minutes ago (elapsed): it leaves 40 to 41 minutes from now.
      const freed = w.freedAt(5, now)!;
      expect(freed).toBeGreaterThanOrEqual(now + 40 * MIN);
      expect(freed).toBeLessThanOrEqual(now + 41 * MIN + MIN);
      expect(w.used(freed - 1)).toBe(12);
      expect(w.used(freed)).toBe(7);
    }
  });

  it('clampTo moves a window ahead of the clock back to it, and leaves one behind alone', () => {
    const ahead = new SlidingWindow(HOUR_MS, MIN, T0);
    ahead.add(5, T0);
    const now = T0 - DAY_MS;
    ahead.clampTo(now);
    expect(ahead.used(now)).toBe(5);
    expect(ahead.freedAt(5, now)).toBe(Date.UTC(2026, 2, 1, 11, 1));
    const behind = new SlidingWindow(HOUR_MS, MIN, T0);
    behind.add(5, T0);
    behind.clampTo(T0 + 30 * MIN);
    expect(behind.freedAt(5, T0 + 30 * MIN)).toBe(Date.UTC(2026, 2, 2, 11, 1));
  });
});

describe('UtcDayWindow.shift', () => {
  const at = (h: number, m = 0, day = 2): number => Date.UTC(2026, 2, day, h, m);

  it('a step back whose moved count starts today keeps the count for today', () => {
    const w = new UtcDayWindow(at(1));
    w.add(3, at(1));
    w.shift(-HOUR_MS / 2, at(0, 30)); // the day's count began at 23:30 on the 1st at the earliest
    // …so it may straddle midnight: kept until its elapsed end, 23:30 tonight.
    expect(w.freedAt(3, at(0, 30))).toBe(at(23, 30));
    const v = new UtcDayWindow(at(1, 0, 3));
    v.add(3, at(1, 0, 3));
    // A day back: the count (all of it from March 3rd, by the old clock) is today's, March 2nd.
    v.shift(-DAY_MS, at(1));
    expect(v.used(at(1))).toBe(3);
    expect(v.freedAt(3, at(1))).toBe(at(0, 0, 3));
    expect(v.toJSON()).toEqual({ kind: 'utc-day', day: at(0) / DAY_MS, used: 3 });
  });

  it('a step ahead across midnight keeps the old day until its elapsed end, then the new usage', () => {
    const w = new UtcDayWindow(at(23));
    w.add(5, at(23));
    w.shift(2 * HOUR_MS, at(1, 0, 3));
    expect(w.used(at(1, 0, 3))).toBe(5);
    w.add(1, at(1, 30, 3));
    expect(w.freedAt(5, at(1, 30, 3))).toBe(at(2, 0, 3));
    expect(w.freedAt(6, at(1, 30, 3))).toBe(at(0, 0, 4));
    expect(w.used(at(1, 59, 3))).toBe(6);
    expect(w.used(at(2, 0, 3))).toBe(1);
    expect(w.used(at(0, 0, 4))).toBe(0);
  });

  it('an empty window just follows the clock', () => {
    const w = new UtcDayWindow(at(23));
    w.shift(2 * HOUR_MS, at(1, 0, 3));
    expect(w.toJSON()).toEqual({ kind: 'utc-day', day: at(0, 0, 3) / DAY_MS, used: 0 });
  });
});

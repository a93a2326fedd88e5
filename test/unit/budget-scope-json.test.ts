import { describe, expect, it } from 'vitest';
import { ScopeUsage } from '../../src/budget/scope-usage.js';
import { DAY_MS, SlidingWindow, UtcDayWindow } from '../../src/budget/usage-window.js';

const T0 = Date.parse('2026-03-02T10:00:30Z');

/** Amounts whose shortest decimal forms differ in every way JSON prints numbers. */
const AMOUNTS = [1, 0.1, 0.2, 1e-7, 5e-324, 1234567.891, 2 ** 53 + 2, 1e21, 3.5e300, 0.001];

describe('budget scope JSON text (what a durable store writes per commit)', () => {
  it('is exactly JSON.stringify(toJSON()) for sliding and UTC-day windows', () => {
    for (const costWindow of ['sliding', 'utc-day'] as const) {
      const scope = new ScopeUsage('agent:a', T0);
      expect(scope.toJSONText()).toBe(JSON.stringify(scope.toJSON()));
      scope.setConfig(
        { maxTokensPerHour: 1_000_000, maxCostPerDay: 12.5, costWindow, warnAtPercent: 80 },
        T0,
      );
      let now = T0;
      for (const amount of AMOUNTS) {
        now += 7 * 60_000 + 1;
        scope.tokens.add(Math.round(amount * 1000) + 1, now);
        scope.cost.add(amount, now);
        expect(scope.toJSONText()).toBe(JSON.stringify(scope.toJSON()));
      }
      scope.tokensWarned = true;
      scope.costExhausted = true;
      expect(scope.toJSONText()).toBe(JSON.stringify(scope.toJSON()));
      scope.setConfig(null, now);
      expect(scope.toJSONText()).toBe(JSON.stringify(scope.toJSON()));
    }
  });

  it('round-trips through a restored scope', () => {
    const scope = new ScopeUsage('fabric', T0);
    scope.tokens.add(42, T0);
    scope.cost.add(0.1 + 0.2, T0);
    const restored = new ScopeUsage('fabric', T0, JSON.parse(scope.toJSONText()));
    expect(restored.toJSON()).toEqual(scope.toJSON());
  });

  it('writes and reads a UTC day extended by a clock step (until, tail), with a lease too', () => {
    const day = new UtcDayWindow(T0);
    day.add(0.1, T0);
    // A step ahead of 14 h crosses midnight: the day's count lasts until its elapsed end.
    const now = T0 + 14 * 3_600_000;
    day.shift(14 * 3_600_000, now);
    day.add(0.2, now);
    expect(day.toJSON()).toMatchObject({
      until: Math.floor(T0 / DAY_MS + 1) * DAY_MS + 14 * 3_600_000,
    });
    expect(day.toJSONText()).toBe(JSON.stringify(day.toJSON()));
    const restored = UtcDayWindow.fromJSON(JSON.parse(day.toJSONText(0.5)));
    expect(restored.toJSON()).toEqual({ ...day.toJSON(), used: 0.1 + 0.2 + 0.5, tail: 0.2 + 0.5 });
    expect(restored.used(day.toJSON().until! - 1)).toBe(0.1 + 0.2 + 0.5);
    expect(restored.used(day.toJSON().until!)).toBe(0.2 + 0.5);
  });

  it('writes a used bucket at every position of the ring, and runs of empty ones around it', () => {
    for (let k = 0; k <= 61; k++) {
      const w = new SlidingWindow(3_600_000, 60_000, T0);
      if (k > 0) w.add(k * 0.1, T0 + k * 60_000);
      if (k > 1) w.add(7, T0 + (k - 1) * 60_000);
      expect(w.toJSONText()).toBe(JSON.stringify(w.toJSON()));
    }
  });

  it('windows write what their toJSON says', () => {
    const sliding = new SlidingWindow(3_600_000, 60_000, T0);
    const day = new UtcDayWindow(T0);
    for (const amount of AMOUNTS) {
      sliding.add(amount, T0 + amount * 1000);
      day.add(amount, T0);
    }
    expect(sliding.toJSONText()).toBe(JSON.stringify(sliding.toJSON()));
    expect(day.toJSONText()).toBe(JSON.stringify(day.toJSON()));
    day.add(1, T0 + DAY_MS);
    expect(day.toJSONText()).toBe(JSON.stringify(day.toJSON()));
  });
});

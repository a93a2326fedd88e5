/**
 * A suspend of the machine and a step of the wall clock together (the machine wakes and NTP
 * corrects a clock that ran ahead, or the operator sets it back): budget windows over a real
 * SQLite state file, with `Date` and `performance.now` the test's and the boot-time clock
 * (`/proc/uptime` in production) a test one, as a suspend cannot be made in a test. The time
 * slept counts as passed and the step alone moves the usage, whichever way the wall clock went
 * in all. Before, a suspend explained a difference only when the wall clock went ahead in all and
 * only up to that difference: a suspend of three hours with the clock then set two hours back
 * took no step, and a suspend of two hours with the clock set three hours back took a step of one
 * hour — the hourly usage stayed spent an hour or more after the hour it had, on disk too.
 */
import { join } from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { BudgetManager } from '../../src/budget/budget-manager.js';
import type { AgentRecord } from '../../src/lifecycle/lifecycle-manager.js';
import type { PoolRecord } from '../../src/pools/pool-manager.js';
import type { TaskRecord } from '../../src/scheduler/task-record.js';
import { SqliteStore } from '../../src/store/sqlite-store.js';
import { tempDir } from '../fixtures/gateway/harness.js';
import { budgetOnDisk, usedOnDisk } from '../fixtures/state/budget-rows.js';

const HOUR = 60 * 60_000;

const stores: SqliteStore<TaskRecord, AgentRecord, PoolRecord>[] = [];
afterEach(() => {
  vi.useRealTimers();
  for (const s of stores.splice(0)) s.close();
});

/**
 * At 10:00:30 (fake wall and monotonic clocks), budgets over a new SQLite state file whose
 * boot-time clock counts what `sleep` says was slept, with agent a's hourly budget of 1000
 * tokens spent; `steps` collects the steps they take (ms).
 */
async function spentHourly() {
  vi.useFakeTimers({ toFake: ['Date', 'performance'] });
  vi.setSystemTime(Date.UTC(2026, 2, 2, 10, 0, 30));
  const path = join(tempDir('budget-suspend-step'), 'state.db');
  const store = await SqliteStore.open<TaskRecord, AgentRecord, PoolRecord>(path);
  stores.push(store);
  let slept = 0;
  const budgets = new BudgetManager({
    store: store.budgets!,
    bootClock: () => performance.now() + slept,
  });
  const steps: number[] = [];
  budgets.on('clockStep', (s) => steps.push(s.stepMs));
  budgets.setBudget('a', { maxTokensPerHour: 1000 });
  budgets.recordUsage('a', { tokens: 1000 });
  return { path, store, budgets, steps, sleep: (ms: number) => void (slept += ms) };
}

describe('budget windows across a suspend combined with a wall-clock step (SQLite state file)', () => {
  for (const { name, sleptMs, stepMs } of [
    {
      name: 'asleep three hours, the clock then set two hours back',
      sleptMs: 3 * HOUR,
      stepMs: -2 * HOUR,
    },
    {
      name: 'asleep two hours, the clock then set three hours back',
      sleptMs: 2 * HOUR,
      stepMs: -3 * HOUR,
    },
    { name: 'asleep two hours, the clock then set an hour ahead', sleptMs: 2 * HOUR, stepMs: HOUR },
  ]) {
    it(`${name}: the time slept passed, the step alone moves the usage`, async () => {
      const { path, store, budgets, steps, sleep } = await spentHourly();

      // Asleep: the wall and boot-time clocks move, the monotonic one stands still; on waking
      // the wall clock is stepped too. Then a second passes (the budgets look at the clock).
      vi.setSystemTime(Date.now() + sleptMs + stepMs);
      sleep(sleptMs);
      vi.advanceTimersByTime(1000);

      // Two hours or more really passed: the hourly usage is gone.
      expect(budgets.getStatus('a').tokensUsed).toBe(0);
      expect(steps).toEqual([stepMs]);
      expect(budgets.clockSteps).toBe(1);
      store.flush();
      expect(usedOnDisk(budgetOnDisk(path, 'agent:a')!.tokens)).toBe(0);
      // And the budget is whole again.
      expect(budgets.check('a', { tokens: 1000 }).allowed).toBe(true);
    });
  }

  it('a suspend the wall clock hid (set back by as much on waking) counts, and is not counted again at a later step', async () => {
    const { path, store, budgets, steps, sleep } = await spentHourly();

    // Asleep two hours; on waking the clock is set back two hours: the wall clock reads what it
    // read before. Two hours passed all the same, and the step is one of two hours back.
    sleep(2 * HOUR);
    vi.advanceTimersByTime(1000);
    expect(budgets.getStatus('a').tokensUsed).toBe(0); // before: 1000, an hour late and more
    expect(steps).toEqual([-2 * HOUR]); // before: none

    // Spent again; then the clock alone is stepped two hours ahead (no suspend): the usage is
    // kept for the hour it had. Before, the suspend above was taken to explain this step too:
    // no step was seen, and the usage left at once — two hours early.
    budgets.recordUsage('a', { tokens: 1000 });
    vi.setSystemTime(Date.now() + 2 * HOUR);
    vi.advanceTimersByTime(1000);
    expect(budgets.getStatus('a').tokensUsed).toBe(1000);
    expect(steps).toEqual([-2 * HOUR, 2 * HOUR]);
    store.flush();
    expect(usedOnDisk(budgetOnDisk(path, 'agent:a')!.tokens)).toBe(1000);
    expect(budgets.check('a', { tokens: 1 }).allowed).toBe(false);
  });
});

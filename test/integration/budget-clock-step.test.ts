/**
 * Budget windows when the wall clock steps: the library over a real SQLite state file, with
 * `Date` and `performance.now` the test's (timers real), as the other clock-step tests do. A
 * step (NTP correcting a clock, an operator setting the date) moves the wall clock alone; time
 * passing moves both. A spent budget must stay spent for the elapsed time it had left — neither
 * freed at once by a step ahead nor held for as long as the clock went back — and the usage on
 * disk must follow, so a restart sees the same; a restart whose clock is behind what the state
 * file holds keeps the usage and frees it after the window's length.
 */
import { execFileSync } from 'node:child_process';
import { copyFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import type { BudgetClockStep } from '../../src/budget/budget-clock.js';
import { BudgetExceededError } from '../../src/errors.js';
import { AgentFabric } from '../../src/fabric.js';
import type { AgentRecord } from '../../src/lifecycle/lifecycle-manager.js';
import type { PoolRecord } from '../../src/pools/pool-manager.js';
import type { TaskRecord } from '../../src/scheduler/task-record.js';
import { SqliteStore } from '../../src/store/sqlite-store.js';
import { tempDir } from '../fixtures/gateway/harness.js';
import { budgetOnDisk, usedOnDisk } from '../fixtures/state/budget-rows.js';

const MIN = 60_000;
const HOUR = 60 * MIN;
const DAY = 24 * HOUR;

type State = SqliteStore<TaskRecord, AgentRecord, PoolRecord>;

const open: AgentFabric[] = [];
afterEach(async () => {
  vi.useRealTimers();
  for (const f of open.splice(0)) if (!f.isClosed) await f.close();
});

/**
 * A fabric over the state file at `path`. Its boot-time clock moves with the test's monotonic
 * one (time the test lets pass passed; a step moves the wall clock alone), on the boot `bootId`:
 * another id is a restart after a reboot, where only the wall clock spans the gap.
 */
async function openFabric(
  path: string,
  bootId = 'test-boot',
): Promise<{ fabric: AgentFabric; store: State }> {
  const store: State = await SqliteStore.open<TaskRecord, AgentRecord, PoolRecord>(path);
  const fabric = new AgentFabric(
    {},
    { store, budgetBoot: { clock: () => performance.now(), id: bootId } },
  );
  open.push(fabric);
  return { fabric, store };
}

/**
 * A fresh state file opened at 10:00:30 on the test's clocks, with an agent `spender` under
 * `budget`.
 */
async function spenderAt1030(budget: { maxTokensPerHour?: number; maxCostPerDay?: number }) {
  vi.useFakeTimers({ toFake: ['Date', 'performance'] });
  vi.setSystemTime(Date.UTC(2026, 2, 2, 10, 0, 30));
  const path = join(tempDir('budget-clock'), 'state.db');
  const { fabric, store } = await openFabric(path);
  const { id } = await fabric.spawn({ name: 'spender', model: 'm', executor: 'inprocess', budget });
  return { path, fabric, store, id };
}

function refused(fn: () => unknown): BudgetExceededError {
  try {
    fn();
  } catch (err) {
    if (err instanceof BudgetExceededError) return err;
    throw err;
  }
  throw new Error('expected BudgetExceededError');
}

/** A full disk for this process (its file size limit 0, with `prlimit`), or none. */
function diskFull(full: boolean): void {
  execFileSync('prlimit', [`--pid=${process.pid}`, `--fsize=${full ? 0 : 'unlimited'}:`]);
}

/** Time passes: both clocks move. */
const pass = (ms: number): void => void vi.advanceTimersByTime(ms);
/** The wall clock alone is set (a step), then a second passes (the budgets look at the clock). */
function step(ms: number): void {
  vi.setSystemTime(Date.now() + ms);
  pass(1000);
}

describe('budget windows when the wall clock steps (SQLite state file)', () => {
  it('a step ahead keeps a spent hourly budget spent for the hour it had left, on disk too', async () => {
    vi.useFakeTimers({ toFake: ['Date', 'performance'] });
    vi.setSystemTime(Date.UTC(2026, 2, 2, 10, 0, 30));
    const path = join(tempDir('budget-clock'), 'state.db');
    const { fabric, store } = await openFabric(path);
    const steps: BudgetClockStep[] = [];
    fabric.budgets.on('clockStep', (s) => steps.push(s));
    const { id } = await fabric.spawn({
      name: 'spender',
      model: 'm',
      executor: 'inprocess',
      budget: { maxTokensPerHour: 1000, maxCostPerDay: 10 },
    });
    await fabric.recordUsage(id, { tokens: 1000, cost: 5 });
    // NTP finds the clock two hours behind and steps it.
    step(2 * HOUR);
    const err = refused(() => fabric.budgets.reserve(id, { tokens: 1 }));
    // Spent at 12:00:30 on the corrected clock: the minute's bucket leaves at 13:01.
    expect(err.details).toMatchObject({
      scope: `agent:${id}`,
      limit: 'tokens',
      used: 1000,
      retryAt: Date.UTC(2026, 2, 2, 13, 1),
    });
    expect(err.message).toContain('retry at 2026-03-02T13:01:00.000Z');
    expect(steps).toEqual([{ stepMs: 2 * HOUR, at: Date.UTC(2026, 2, 2, 12, 0, 31) }]);
    expect(fabric.budgets.clockSteps).toBe(1);
    // The moved windows are what the state file holds (a restart now would see the same).
    store.flush();
    const row = budgetOnDisk(path, `agent:${id}`)!;
    expect(row.tokens).toMatchObject({ head: Date.UTC(2026, 2, 2, 12, 0) / MIN });
    expect(usedOnDisk(row.tokens)).toBe(1000);
    expect(usedOnDisk(row.cost)).toBe(5);

    pass(HOUR + 28_000); // 13:00:59
    expect(fabric.budgets.check(id, { tokens: 1 }).allowed).toBe(false);
    pass(1000); // 13:01:00: an hour (and the rest of its minute) has passed since the spend
    expect(fabric.budgets.getStatus(id)).toMatchObject({ tokensUsed: 0, costUsed: 5 });
    fabric.budgets.settle(fabric.budgets.reserve(id, { tokens: 10 }), { tokens: 10 });
    await fabric.close();
    const after = budgetOnDisk(path, `agent:${id}`)!;
    expect(usedOnDisk(after.tokens)).toBe(10); // not counted twice, not lost
    expect(usedOnDisk(after.cost)).toBe(5); // the sliding day still holds the cost
    expect(fabric.budgets.clockSteps).toBe(1);
  });

  it('a commit in the second after a step, before the budgets noticed it, loses no spend', async () => {
    const { path, fabric, store, id } = await spenderAt1030({
      maxTokensPerHour: 1000,
      maxCostPerDay: 10,
    });
    await fabric.recordUsage(id, { tokens: 1000, cost: 1 });
    // The clock steps two hours ahead; before a second passes a usage report is committed.
    vi.setSystemTime(Date.now() + 2 * HOUR);
    await fabric.recordUsage(id, { cost: 1 });
    store.flush();
    pass(1000);
    expect(fabric.budgets.getStatus(id)).toMatchObject({ tokensUsed: 1000, costUsed: 2 });
    expect(refused(() => fabric.budgets.reserve(id, { tokens: 1 })).details.retryAt).toBe(
      Date.UTC(2026, 2, 2, 13, 1),
    );
    await fabric.close();
    const row = budgetOnDisk(path, `agent:${id}`)!;
    expect(usedOnDisk(row.tokens)).toBe(1000);
    expect(row.tokens).toMatchObject({ head: Date.UTC(2026, 2, 2, 12, 0) / MIN });
  });

  it('a step made while the budgets were idle, noticed by the close that writes them, is in the windows it writes', async () => {
    const { path, fabric, id } = await spenderAt1030({ maxTokensPerHour: 1000, maxCostPerDay: 10 });
    await fabric.recordUsage(id, { tokens: 1000, cost: 5 }); // written with a lease
    // Idle: nothing reads the budgets' clock. Then NTP steps it two hours ahead, and the
    // sidecar is stopped: the close writes the leased scope exact, and reading the clock for
    // the row's mark is what notices the step.
    pass(5000);
    vi.setSystemTime(Date.now() + 2 * HOUR);
    await fabric.close();
    // The row holds the windows moved by the step beside the mark of the stepped clock: spent
    // at 12:00:30 on the corrected clock. (Before, the windows were written first and moved
    // only after: a row on 10:00 beside a mark of 12:00, and the next start freed the hour.)
    const row = budgetOnDisk(path, `agent:${id}`)!;
    expect(row.tokens).toMatchObject({ head: Date.UTC(2026, 2, 2, 12, 0) / MIN });
    expect(row.clock?.wall).toBe(Date.UTC(2026, 2, 2, 12, 0, 35));
    expect(usedOnDisk(row.tokens)).toBe(1000);
    const { fabric: second } = await openFabric(path);
    expect(second.budgets.getStatus(id)).toMatchObject({ tokensUsed: 1000, costUsed: 5 });
    expect(refused(() => second.budgets.reserve(id, { tokens: 1 })).details.retryAt).toBe(
      Date.UTC(2026, 2, 2, 13, 1),
    );
  });

  it('a commit retried after a full disk, past a step the budgets had not seen, leaves a crash image that keeps the spend', async () => {
    const { path, fabric, store, id } = await spenderAt1030({ maxTokensPerHour: 1000 });
    await fabric.recordUsage(id, { tokens: 900 }); // written with a lease: a ceiling of 910
    const failed = store.stats.commits;
    diskFull(true);
    try {
      // Beyond the lease: its commit fails (the usage is counted in memory).
      await expect(fabric.recordUsage(id, { tokens: 100 })).rejects.toThrow(/not committed/);
      expect(store.stats.commits).toBe(failed);
      // Idle, then NTP steps the clock two hours ahead; the disk frees up and the store's
      // once-a-second retry commits the scope: reading the clock for the row's mark is what
      // notices the step.
      pass(5000);
      vi.setSystemTime(Date.now() + 2 * HOUR);
    } finally {
      diskFull(false);
    }
    for (let i = 0; i < 150 && store.stats.commits === failed; i++) {
      await new Promise((r) => setTimeout(r, 20));
    }
    expect(store.stats.commits).toBeGreaterThan(failed);
    // kill -9 now: the file and its WAL as they are.
    const crashed = join(tempDir('budget-clock-crash'), 'state.db');
    copyFileSync(path, crashed);
    if (existsSync(`${path}-wal`)) copyFileSync(`${path}-wal`, `${crashed}-wal`);
    const row = budgetOnDisk(crashed, `agent:${id}`)!;
    expect(row.tokens).toMatchObject({ head: Date.UTC(2026, 2, 2, 12, 0) / MIN });
    expect(usedOnDisk(row.tokens)).toBeGreaterThanOrEqual(1000);
    const { fabric: restarted } = await openFabric(crashed);
    // Spent at 12:00:30 on the corrected clock (before: at 10:00, an hour that had passed).
    expect(restarted.budgets.getStatus(id).tokensUsed).toBeGreaterThanOrEqual(1000);
    expect(refused(() => restarted.budgets.reserve(id, { tokens: 1 })).details.retryAt).toBe(
      Date.UTC(2026, 2, 2, 13, 1),
    );
  });

  it('usage loaded from the state file after a step is moved by it too', async () => {
    vi.useFakeTimers({ toFake: ['Date', 'performance'] });
    vi.setSystemTime(Date.UTC(2026, 2, 2, 10, 0, 30));
    const path = join(tempDir('budget-clock'), 'state.db');
    const { fabric: first } = await openFabric(path);
    const { id } = await first.spawn({
      name: 'spender',
      model: 'm',
      executor: 'inprocess',
      budget: { maxTokensPerHour: 1000 },
    });
    await first.recordUsage(id, { tokens: 1000 });
    await first.close();
    const { fabric: second } = await openFabric(path);
    // The clock steps before anything asks for the agent's budget: its scope is not loaded yet.
    step(2 * HOUR);
    expect(second.budgets.getFabricStatus().tokensUsed).toBe(1000);
    expect(second.budgets.clockSteps).toBe(1);
    expect(refused(() => second.budgets.reserve(id, { tokens: 1 })).details.retryAt).toBe(
      Date.UTC(2026, 2, 2, 13, 1),
    );
  });

  it('a clock stepped a little ahead every minute frees a spent budget after its window, not never', async () => {
    const { path, fabric, store, id } = await spenderAt1030({
      maxTokensPerHour: 1000,
      maxCostPerDay: 20,
    });
    await fabric.recordUsage(id, { tokens: 1000, cost: 10 });
    // A clock that runs slow, set right by `ntpdate` from cron once a minute: 2 s ahead each time
    // (each a step, far less than a bucket). 90 minutes pass; the steps add up to 3 minutes.
    for (let i = 0; i < 90; i++) {
      pass(MIN - 1000);
      step(2000);
      fabric.budgets.check(id, { tokens: 1 }); // calls go on: the budgets look at the clock
    }
    expect(fabric.budgets.clockSteps).toBe(90);
    // The tokens were spent 90 minutes of elapsed time ago: their hour is over.
    expect(fabric.budgets.getStatus(id).tokensUsed).toBe(0);
    expect(fabric.budgets.check(id, { tokens: 1000 }).allowed).toBe(true);
    // The day's cost leaves in elapsed time too: 24 h (and at most a bucket) after the spend, not
    // 15 minutes later for every step.
    for (let i = 0; i < 23 * 60; i++) {
      pass(MIN - 1000);
      step(2000);
      fabric.budgets.check(id, { tokens: 1 }); // calls go on: the budgets look at the clock
    }
    expect(fabric.budgets.getStatus(id).costUsed).toBe(0);
    store.flush();
    const row = budgetOnDisk(path, `agent:${id}`)!;
    expect(usedOnDisk(row.tokens)).toBe(0);
    expect(usedOnDisk(row.cost)).toBe(0);
  });

  it('a step back frees a spent hourly budget after its hour, not after the clock catches up', async () => {
    const { path, fabric, id } = await spenderAt1030({ maxTokensPerHour: 1000 });
    await fabric.recordUsage(id, { tokens: 1000 });
    // The clock was a day ahead; an operator sets it right.
    step(-DAY);
    expect(refused(() => fabric.budgets.reserve(id, { tokens: 1 })).details.retryAt).toBe(
      Date.UTC(2026, 2, 1, 11, 1),
    );
    pass(HOUR); // 11:00:31 of March 1st
    expect(fabric.budgets.check(id, { tokens: 1 }).allowed).toBe(false);
    pass(30_000);
    expect(fabric.budgets.check(id, { tokens: 1000 }).allowed).toBe(true);
    await fabric.recordUsage(id, { tokens: 100 });
    expect(fabric.budgets.getStatus(id).tokensUsed).toBe(100);
    await fabric.close();
    expect(usedOnDisk(budgetOnDisk(path, `agent:${id}`)!.tokens)).toBe(100);
  });

  it('a step ahead across midnight keeps the UTC day spent until its elapsed end', async () => {
    vi.useFakeTimers({ toFake: ['Date', 'performance'] });
    vi.setSystemTime(Date.UTC(2026, 2, 2, 23, 30));
    const path = join(tempDir('budget-clock'), 'state.db');
    const { fabric, store } = await openFabric(path);
    const { id } = await fabric.spawn({ name: 'spender', model: 'm', executor: 'inprocess' });
    fabric.budgets.setBudget(id, { maxCostPerDay: 5, costWindow: 'utc-day' });
    await fabric.recordUsage(id, { cost: 5 });
    step(HOUR); // 00:30:01 on March 3rd by the new clock; 23:30:01 of March 2nd in elapsed time
    const err = refused(() => fabric.budgets.reserve(id, { cost: 1 }));
    // The day that was spent had 30 minutes left: it ends at 01:00 by the new clock.
    expect(err.details).toMatchObject({ limit: 'cost', used: 5, retryAt: Date.UTC(2026, 2, 3, 1) });
    pass(10 * MIN);
    await fabric.recordUsage(id, { cost: 1 }); // spent on March 3rd: counted in that day
    store.flush();
    expect(budgetOnDisk(path, `agent:${id}`)!.cost).toEqual({
      kind: 'utc-day',
      day: Date.UTC(2026, 2, 3) / DAY,
      used: 6,
      until: Date.UTC(2026, 2, 3, 1),
      tail: 1,
    });
    pass(20 * MIN); // 01:00:01
    expect(fabric.budgets.getStatus(id)).toMatchObject({ costUsed: 1 });
    expect(fabric.budgets.check(id, { cost: 4 }).allowed).toBe(true);
    expect(fabric.budgets.check(id, { cost: 4.5 }).allowed).toBe(false);
    await fabric.close();
    // What a restart reads from the state file: the same.
    const { fabric: again } = await openFabric(path);
    expect(again.budgets.getStatus(id)).toMatchObject({ costUsed: 1 });
  });

  it('a restart with the clock behind a UTC day moved by a step keeps all of its count', async () => {
    vi.useFakeTimers({ toFake: ['Date', 'performance'] });
    vi.setSystemTime(Date.UTC(2026, 2, 2, 23, 30));
    const path = join(tempDir('budget-clock'), 'state.db');
    const { fabric: first } = await openFabric(path);
    const { id } = await first.spawn({ name: 'spender', model: 'm', executor: 'inprocess' });
    first.budgets.setBudget(id, { maxCostPerDay: 5, costWindow: 'utc-day' });
    await first.recordUsage(id, { cost: 5 });
    step(HOUR); // 00:30:01 on March 3rd: March 2nd's count lasts until 01:00
    pass(10 * MIN);
    await first.recordUsage(id, { cost: 1 });
    await first.close();
    expect(budgetOnDisk(path, `agent:${id}`)!.cost).toMatchObject({
      used: 6,
      until: Date.UTC(2026, 2, 3, 1),
      tail: 1,
    });
    // While the machine was down (rebooted) the clock went back a day: everything stored is
    // kept, as today's.
    vi.setSystemTime(Date.UTC(2026, 2, 2, 0, 50));
    const { fabric: second } = await openFabric(path, 'next-boot');
    expect(second.budgets.getStatus(id)).toMatchObject({ costUsed: 6 });
    expect(refused(() => second.budgets.reserve(id, { cost: 1 })).details.retryAt).toBe(
      Date.UTC(2026, 2, 3),
    );
    await second.recordUsage(id, { cost: 1 });
    await second.close();
    expect(budgetOnDisk(path, `agent:${id}`)!.cost).toEqual({
      kind: 'utc-day',
      day: Date.UTC(2026, 2, 2) / DAY,
      used: 7,
    });
  });

  it('a step back within the UTC day reaches the state file, though the day did not change', async () => {
    vi.useFakeTimers({ toFake: ['Date', 'performance'] });
    vi.setSystemTime(Date.UTC(2026, 2, 2, 15));
    const path = join(tempDir('budget-clock'), 'state.db');
    const { fabric } = await openFabric(path);
    const { id } = await fabric.spawn({ name: 'spender', model: 'm', executor: 'inprocess' });
    fabric.budgets.setBudget(id, { maxCostPerDay: 10, costWindow: 'utc-day' });
    const other = await fabric.spawn({ name: 'other', model: 'm', executor: 'inprocess' });
    await fabric.recordUsage(id, { cost: 1 }); // written with a lease: a ceiling of 1.1
    // 30 s back (the token window's minute buckets stay put): the count began at 23:59:30
    // yesterday at the earliest, and lasts until 23:59:30 tonight.
    step(-30_000);
    // Another agent's report: its commit carries every scope changed before it.
    await fabric.recordUsage(other.id, { cost: 1 });
    expect(budgetOnDisk(path, `agent:${id}`)!.cost).toMatchObject({
      day: Date.UTC(2026, 2, 2) / DAY,
      until: Date.UTC(2026, 2, 2, 23, 59, 30),
    });
  });

  it('a restart with the clock behind the state file keeps the spend and frees it after the window', async () => {
    vi.useFakeTimers({ toFake: ['Date', 'performance'] });
    const spentAt = Date.UTC(2026, 2, 2, 23, 30);
    vi.setSystemTime(spentAt);
    const path = join(tempDir('budget-clock'), 'state.db');
    const { fabric: first } = await openFabric(path);
    const hourly = await first.spawn({
      name: 'hourly',
      model: 'm',
      executor: 'inprocess',
      budget: { maxTokensPerHour: 1000 },
    });
    const daily = await first.spawn({ name: 'daily', model: 'm', executor: 'inprocess' });
    first.budgets.setBudget(daily.id, { maxCostPerDay: 5, costWindow: 'utc-day' });
    await first.recordUsage(hourly.id, { tokens: 1000 });
    await first.recordUsage(daily.id, { cost: 5 });
    await first.close();

    // While the machine was down the clock went back a day (a bad RTC at boot, say).
    vi.setSystemTime(spentAt - DAY);
    const { fabric: second } = await openFabric(path, 'next-boot');
    expect(second.budgets.getStatus(hourly.id).tokensUsed).toBe(1000);
    expect(second.budgets.getStatus(daily.id).costUsed).toBe(5);
    // As if spent now: the hour ends an hour (and the rest of its minute) from now.
    expect(refused(() => second.budgets.reserve(hourly.id, { tokens: 1 })).details.retryAt).toBe(
      Date.UTC(2026, 2, 2, 0, 31),
    );
    // The UTC day's count is today's (March 1st), freed at its midnight.
    expect(refused(() => second.budgets.reserve(daily.id, { cost: 1 })).details.retryAt).toBe(
      Date.UTC(2026, 2, 2),
    );
    pass(31 * MIN); // 00:01 on March 2nd
    expect(second.budgets.getStatus(hourly.id).tokensUsed).toBe(1000);
    expect(second.budgets.getStatus(daily.id).costUsed).toBe(0);
    pass(30 * MIN); // 00:31: the hour is over
    expect(second.budgets.getStatus(hourly.id).tokensUsed).toBe(0);
    await second.recordUsage(hourly.id, { tokens: 10 });
    await second.recordUsage(daily.id, { cost: 1 });
    await second.close();
    expect(usedOnDisk(budgetOnDisk(path, `agent:${hourly.id}`)!.tokens)).toBe(10);
    expect(budgetOnDisk(path, `agent:${daily.id}`)!.cost).toEqual({
      kind: 'utc-day',
      day: Date.UTC(2026, 2, 2) / DAY,
      used: 1,
    });
    expect(second.budgets.clockSteps).toBe(0);
  });
});

/**
 * Reservations covered on disk before their calls go ahead (BudgetManager over a real
 * SqliteStore, rows read from a second, read-only connection): a reservation that goes past the
 * ceiling a scope's row holds is committed — with a new lease on top — before `reserve`
 * returns; one under it commits nothing; with `budgetLeasePercent: 0` each reservation commits
 * and a settle for less than the estimate is written down exactly; a released reservation
 * leaves the row over (fail-closed) until a clean stop writes it exact; usage above the
 * estimate is committed with the settle; and when the covering commit fails (this process's
 * file size limit set to 0 with `prlimit`, lifted after), `reserve` throws
 * `FABRIC_ERR_STATE_STORE` and nothing stays reserved. In `test/integration` for the
 * process-wide limit; the kill -9 of a real `serve` is budget-reservation-crash.test.ts.
 */
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { BudgetManager } from '../../src/budget/budget-manager.js';
import { StateStoreError } from '../../src/errors.js';
import { SqliteStore, type SqliteStoreOptions } from '../../src/store/sqlite-store.js';
import { tempDir } from '../fixtures/gateway/harness.js';
import { costOnDisk } from '../fixtures/state/budget-rows.js';
import { diskFullHere as diskFull } from '../fixtures/state/disk-full.js';

const stores: SqliteStore[] = [];
afterEach(async () => {
  diskFull(false);
  for (const s of stores.splice(0)) await s.close().catch(() => undefined);
});

async function open(options: SqliteStoreOptions = {}): Promise<SqliteStore> {
  const s = await SqliteStore.open(join(tempDir('budget-cover'), 'state.db'), options);
  stores.push(s);
  return s;
}

/** Agent `a` with a cost limit of 1,000 (a lease of 10 at 1 %); fabric without limits. */
function manager(store: SqliteStore): BudgetManager {
  const m = new BudgetManager({ store: store.budgets });
  m.setBudget('a', { maxCostPerDay: 1000 });
  return m;
}

describe('budget reservations covered on disk', () => {
  it('commits a reservation past the ceiling before reserve returns, none under it', async () => {
    const s = await open();
    const m = manager(s);
    m.setFabricBudget({ maxCostPerDay: 1000 }); // so that no scope here writes per settle
    await Promise.resolve(); // the limits' commit: the row holds a lease, 10
    expect(costOnDisk(s.path, 'agent:a')).toBe(10);
    const commits = s.stats.commits;
    const a = m.reserve('a', { cost: 4 });
    const b = m.reserve('a', { cost: 4 });
    expect(s.stats.commits).toBe(commits); // 8 in flight, under the ceiling
    const c = m.reserve('a', { cost: 4 });
    // Committed before reserve returned (no microtask ran): the estimates plus a lease.
    expect(s.stats.commits).toBe(commits + 1);
    expect(costOnDisk(s.path, 'agent:a')).toBe(12 + 10);
    // Settles at the estimate stay under the ceiling: nothing written.
    for (const r of [a, b, c]) m.settle(r);
    await Promise.resolve();
    expect(s.stats.commits).toBe(commits + 1);
    expect(costOnDisk(s.path, 'agent:a')).toBe(22);
    expect(costOnDisk(s.path, 'fabric')).toBe(22);
    await s.close();
    expect(costOnDisk(s.path, 'agent:a')).toBe(12);
  });

  it('leaves a released reservation counted until a clean stop writes the exact usage', async () => {
    const s = await open();
    const m = manager(s);
    const r = m.reserve('a', { cost: 50 });
    expect(costOnDisk(s.path, 'agent:a')).toBe(60);
    m.release(r);
    await Promise.resolve();
    expect(costOnDisk(s.path, 'agent:a')).toBe(60); // fail-closed: a crash now counts it
    expect(m.getStatus('a').costUsed).toBe(0);
    await s.close();
    expect(costOnDisk(s.path, 'agent:a')).toBe(0);
  });

  it('commits usage above the estimate with the settle', async () => {
    const s = await open();
    const m = manager(s);
    const r = m.reserve('a', { cost: 1 });
    expect(costOnDisk(s.path, 'agent:a')).toBe(11);
    m.settle(r, { cost: 30 });
    await Promise.resolve();
    expect(costOnDisk(s.path, 'agent:a')).toBe(40);
  });

  it('with budgetLeasePercent 0 commits each reservation, and a settle for less exactly', async () => {
    const s = await open({ budgetLeasePercent: 0 });
    const m = manager(s);
    const a = m.reserve('a', { cost: 5 });
    expect(costOnDisk(s.path, 'agent:a')).toBe(5);
    const b = m.reserve('a', { cost: 5 });
    expect(costOnDisk(s.path, 'agent:a')).toBe(10);
    m.settle(a, { cost: 2 });
    await Promise.resolve();
    expect(costOnDisk(s.path, 'agent:a')).toBe(7); // 2 used + 5 in flight
    m.settle(b);
    await Promise.resolve();
    expect(costOnDisk(s.path, 'agent:a')).toBe(7);
    m.release(m.reserve('a', { cost: 3 }));
    expect(costOnDisk(s.path, 'agent:a')).toBe(10);
    await s.close();
    expect(costOnDisk(s.path, 'agent:a')).toBe(7);
  });

  it('refuses the reservation with FABRIC_ERR_STATE_STORE when its commit fails', async () => {
    const s = await open();
    const m = manager(s);
    m.settle(m.reserve('a', { cost: 1 }));
    await Promise.resolve();
    expect(costOnDisk(s.path, 'agent:a')).toBe(11);
    m.reserve('a', { cost: 10 }); // exactly the ceiling: no commit
    diskFull(true);
    let error: unknown;
    try {
      m.reserve('a', { cost: 1 });
    } catch (e) {
      error = e;
    } finally {
      diskFull(false);
    }
    expect(error).toBeInstanceOf(StateStoreError);
    expect((error as StateStoreError).code).toBe('FABRIC_ERR_STATE_STORE');
    expect(m.getStatus('a').costReserved).toBe(10);
    expect(costOnDisk(s.path, 'agent:a')).toBe(11);
    // Once the disk takes writes again, the next reservation is covered.
    m.reserve('a', { cost: 1 });
    expect(costOnDisk(s.path, 'agent:a')).toBe(1 + 11 + 10);
  });

  it('writes nothing ahead for a reservation of a scope without limits', async () => {
    const s = await open();
    const m = new BudgetManager({ store: s.budgets });
    const commits = s.stats.commits;
    m.reserve('free', { cost: 5 });
    expect(s.stats.commits).toBe(commits);
  });
});

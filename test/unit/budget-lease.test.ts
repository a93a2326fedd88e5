/**
 * Budget persistence with a lease (SqliteBudgetStore + ScopeUsage), checked on a real SQLite file
 * from a second, read-only connection: a scope's row holds a ceiling (its usage plus a lease in
 * the newest bucket of each window), changes under that ceiling are not committed, and
 * everything a ceiling cannot cover — a new bucket, an alert, a limit change — is committed at
 * once; `flush()` and `close()` write exact usage. The crash side (kill -9 of a real process)
 * is test/integration/budget-lease-crash.test.ts.
 */
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { BudgetManager } from '../../src/budget/budget-manager.js';
import { InvalidArgumentError } from '../../src/errors.js';
import { SqliteStore, type SqliteStoreOptions } from '../../src/store/sqlite-store.js';
import { tempDir } from '../fixtures/gateway/harness.js';
import { budgetOnDisk, usedOnDisk } from '../fixtures/state/budget-rows.js';

const stores: SqliteStore[] = [];
afterEach(async () => {
  vi.useRealTimers();
  for (const s of stores.splice(0)) await s.close();
});

async function open(
  options: SqliteStoreOptions = {},
  path = join(tempDir('budget-lease'), 'state.db'),
): Promise<SqliteStore> {
  const s = await SqliteStore.open(path, options);
  stores.push(s);
  return s;
}

/** A manager over `store`; agent `a` and the fabric limited, so every scope leases on limits. */
function manager(store: SqliteStore, cost = 1000): BudgetManager {
  const m = new BudgetManager({ store: store.budgets });
  m.setBudget('a', { maxTokensPerHour: 1_000_000, maxCostPerDay: cost });
  m.setFabricBudget({ maxTokensPerHour: 1_000_000, maxCostPerDay: cost });
  return m;
}

/** Records `n` calls of `cost` (and 100 tokens) for agent `a`, each awaited like a settle. */
async function record(m: BudgetManager, n: number, cost = 1): Promise<void> {
  for (let i = 0; i < n; i++) {
    m.recordUsage('a', { tokens: 100, cost });
    await Promise.resolve();
  }
}

describe('budget lease (SqliteBudgetStore)', () => {
  it('writes a ceiling ahead of use and commits again only when usage passes it', async () => {
    const s = await open();
    const m = manager(s);
    await record(m, 1);
    const first = s.stats.commits;
    // 1 % of the limits on top of the usage: cost 1 + 10, tokens 100 + 10,000.
    let row = budgetOnDisk(s.path, 'agent:a')!;
    expect(usedOnDisk(row.cost)).toBe(11);
    expect(usedOnDisk(row.tokens)).toBe(10_100);
    expect(usedOnDisk(budgetOnDisk(s.path, 'fabric')!.cost)).toBe(11);
    // Ten more calls stay under the cost ceiling (11): no commit at all.
    await record(m, 10);
    expect(s.stats.commits).toBe(first);
    expect(m.getStatus('a').costUsed).toBe(11);
    // The twelfth passes it: committed before the awaiting caller resumes, with a new lease.
    await record(m, 1);
    expect(s.stats.commits).toBe(first + 1);
    row = budgetOnDisk(s.path, 'agent:a')!;
    expect(usedOnDisk(row.cost)).toBe(22);
    expect(usedOnDisk(row.tokens)).toBe(11_200);
  });

  it('never lets the committed usage fall below the usage in memory', async () => {
    const s = await open();
    const m = manager(s, 50);
    for (let i = 0; i < 200; i++) {
      await record(m, 1, 0.1 + (i % 7) * 0.013);
      const live = m.getStatus('a');
      const row = budgetOnDisk(s.path, 'agent:a')!;
      expect(usedOnDisk(row.cost)).toBeGreaterThanOrEqual(live.costUsed);
      expect(usedOnDisk(row.tokens)).toBeGreaterThanOrEqual(live.tokensUsed);
      // …and above it by at most one lease (1 % of the limit).
      expect(usedOnDisk(row.cost)).toBeLessThanOrEqual(live.costUsed + 0.5 + 1e-9);
    }
  });

  it('writes exact usage on flush() and close(), so a clean stop loses and adds nothing', async () => {
    const s = await open();
    const m = manager(s);
    await record(m, 3);
    expect(usedOnDisk(budgetOnDisk(s.path, 'agent:a')!.cost)).toBe(11);
    s.flush();
    expect(usedOnDisk(budgetOnDisk(s.path, 'agent:a')!.cost)).toBe(3);
    expect(usedOnDisk(budgetOnDisk(s.path, 'agent:a')!.tokens)).toBe(300);
    // Leased again from the next change on…
    await record(m, 1);
    expect(usedOnDisk(budgetOnDisk(s.path, 'agent:a')!.cost)).toBe(14);
    // …and exact after close.
    await s.close();
    expect(usedOnDisk(budgetOnDisk(s.path, 'agent:a')!.cost)).toBe(4);
    expect(usedOnDisk(budgetOnDisk(s.path, 'fabric')!.cost)).toBe(4);
    const reopened = await open({}, s.path);
    const again = new BudgetManager({ store: reopened.budgets });
    expect(again.getStatus('a')).toMatchObject({ costUsed: 4, tokensUsed: 400 });
  });

  it('commits at once what a ceiling cannot cover: a new bucket, an alert, a limit change', async () => {
    // Budget windows count elapsed time: both clocks are the test's, and a minute passes on both.
    vi.useFakeTimers({ toFake: ['Date', 'performance'] });
    vi.setSystemTime(Date.UTC(2026, 0, 1, 10, 0, 5));
    const s = await open();
    const m = manager(s, 100); // cost lease 1
    await record(m, 1, 0.1);
    let commits = s.stats.commits;
    await record(m, 1, 0.1);
    expect(s.stats.commits).toBe(commits); // covered
    // The next minute: tokens go to a new bucket, which holds no lease yet.
    vi.advanceTimersByTime(60_000);
    await record(m, 1, 0.1);
    expect(s.stats.commits).toBe(commits + 1);
    const tokens = budgetOnDisk(s.path, 'agent:a')!.tokens;
    // The lease moves to the new head; the first minute's bucket is written exact.
    expect(tokens.kind === 'sliding' && tokens.buckets.filter((b) => b > 0)).toEqual([200, 10_100]);
    // Crossing the warning line (80 %) flips an alert flag: committed, even under the ceiling.
    await record(m, 1, 79.5); // 79.8 used, ceiling 80.8
    commits = s.stats.commits;
    const warnings: unknown[] = [];
    m.on('warning', (a) => warnings.push(a));
    await record(m, 1, 0.3); // 80.1: under the ceiling, over the warning line
    expect(warnings).toHaveLength(2); // the agent and the fabric
    expect(s.stats.commits).toBe(commits + 1);
    expect(budgetOnDisk(s.path, 'agent:a')!.alerts.costWarned).toBe(true);
    // A limit change is committed whatever the usage.
    commits = s.stats.commits;
    m.setBudget('a', { maxTokensPerHour: 1_000_000, maxCostPerDay: 200 });
    await Promise.resolve();
    expect(s.stats.commits).toBe(commits + 1);
    expect(budgetOnDisk(s.path, 'agent:a')!.config).toEqual({
      maxTokensPerHour: 1_000_000,
      maxCostPerDay: 200,
    });
  });

  it('shrinks the lease near the limit, down to exact usage at it', async () => {
    const s = await open();
    const m = manager(s, 100); // lease 1
    await record(m, 1, 99.5);
    // Only 0.5 of room: the ceiling stops at the limit (a crash never shows it overspent).
    expect(usedOnDisk(budgetOnDisk(s.path, 'agent:a')!.cost)).toBe(100);
    await record(m, 1, 0.5);
    expect(usedOnDisk(budgetOnDisk(s.path, 'agent:a')!.cost)).toBe(100);
    m.recordUsage('a', { cost: 3 }); // over the limit (usage without a reservation)
    await Promise.resolve();
    expect(usedOnDisk(budgetOnDisk(s.path, 'agent:a')!.cost)).toBe(103);
  });

  it('leases a percentage of the usage on a scope without limits', async () => {
    const s = await open();
    const m = new BudgetManager({ store: s.budgets });
    m.recordUsage('t', { tokens: 1000, cost: 2 });
    await Promise.resolve();
    const row = budgetOnDisk(s.path, 'agent:t')!;
    expect(usedOnDisk(row.tokens)).toBe(1010);
    expect(usedOnDisk(row.cost)).toBe(2.02);
    const commits = s.stats.commits;
    m.recordUsage('t', { tokens: 10, cost: 0.02 });
    await Promise.resolve();
    expect(s.stats.commits).toBe(commits);
    m.recordUsage('t', { tokens: 1 });
    await Promise.resolve();
    expect(s.stats.commits).toBe(commits + 1);
  });

  it('after a failed commit, writes the scope with the next change, whatever its lease says', async () => {
    const errors: unknown[] = [];
    const s = await open({ onError: (e) => errors.push(e) });
    const m = manager(s);
    // Another connection holds the write lock: the commit fails (SQLITE_BUSY, after the
    // driver's 5 s busy timeout), and the ceiling it carried never reached the file.
    const other = new Database(s.path);
    other.exec('BEGIN IMMEDIATE');
    await record(m, 1);
    expect(errors).toHaveLength(1);
    expect(budgetOnDisk(s.path, 'agent:a')).toBeUndefined();
    other.exec('ROLLBACK');
    other.close();
    // Under that ceiling, but not on disk: this change must commit.
    await record(m, 1);
    expect(usedOnDisk(budgetOnDisk(s.path, 'agent:a')!.cost)).toBeGreaterThanOrEqual(2);
  }, 20_000);

  it('with budgetLeasePercent 0, commits every change exactly', async () => {
    const s = await open({ budgetLeasePercent: 0 });
    const m = manager(s);
    for (let i = 1; i <= 5; i++) {
      const before = s.stats.commits;
      await record(m, 1);
      expect(s.stats.commits).toBe(before + 1);
      expect(usedOnDisk(budgetOnDisk(s.path, 'agent:a')!.cost)).toBe(i);
    }
  });

  it('refuses a budgetLeasePercent outside 0–10', async () => {
    for (const bad of [-1, 10.5, Number.NaN, '1' as never]) {
      await expect(
        SqliteStore.open(join(tempDir('budget-lease'), 'bad.db'), { budgetLeasePercent: bad }),
      ).rejects.toThrow(InvalidArgumentError);
    }
  });
});

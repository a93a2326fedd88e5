/**
 * What durable state costs on the tool-call path: budget reserve+settle (agent, pool and fabric
 * levels) with the SQLite store (WAL, synchronous NORMAL and FULL) against the in-memory store,
 * same run. `per-call` ends the event-loop iteration after every call, so every call pays its own
 * commit (the worst case); `per-turn-100` settles 100 calls per iteration (a busy sidecar), one
 * commit for all of them; `awaited-32` runs 32 calls at once, each an async function that settles
 * after an awaited answer and whose caller awaits it (as the gateway does): usage commits on a
 * microtask, before any caller resumes, and the 32 settles of one run share that commit. The `durable-dispatch` case of issue 11 needs persisted tasks and is
 * not here yet. These cases run with `budgetLeasePercent: 0`, so every run of settles commits
 * (what a commit costs), and every reservation commits alone before it returns (a reservation
 * past what the scope's row holds is covered on disk first); `budget-settle-normal-per-call-leased` runs `per-call` with the default
 * lease (1 % of the limits), under which the settles of this bench almost never commit.
 */
import { rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BudgetManager, InMemoryBudgetStore } from '../src/budget/index.js';
import type { BudgetStore } from '../src/budget/budget-store.js';
import { SqliteStore, type StateSynchronous } from '../src/store/sqlite-store.js';
import { Latency, median, type BenchContext, type BenchSuite } from './lib.js';

const AGENTS = 16;

/**
 * Calls per second of reserve+settle, `perTurn` calls between two turns, and per-call latency.
 * `awaited`: the calls of a turn run concurrently as async functions (see the module comment).
 */
async function measure(
  store: BudgetStore,
  calls: number,
  perTurn: number,
  awaited = false,
): Promise<{ ops: number; latency: Latency }> {
  const budgets = new BudgetManager({ store });
  const big = { maxTokensPerHour: 1e15, maxCostPerDay: 1e15 };
  for (let a = 0; a < AGENTS; a++) budgets.setBudget(`agent-${a}`, big);
  budgets.setPoolBudget('pool-1', big);
  budgets.setFabricBudget(big);
  const latency = new Latency();
  const start = performance.now();
  for (let i = 0; i < calls; i += perTurn) {
    const t0 = performance.now();
    const call = (k: number): void => {
      const r = budgets.reserve(
        `agent-${(i + k) % AGENTS}`,
        { tokens: 100, cost: 1 },
        {
          poolId: 'pool-1',
        },
      );
      budgets.settle(r, { tokens: 90, cost: 1 });
    };
    if (awaited) {
      const answer = Promise.resolve();
      const one = async (k: number): Promise<void> => {
        await answer; // the upstream's answer arrives
        call(k);
      };
      await Promise.all(Array.from({ length: perTurn }, (_, k) => one(k)));
    } else {
      for (let k = 0; k < perTurn; k++) call(k);
    }
    // The event-loop iteration ends: the group commit runs here, inside the measured time.
    await new Promise<void>((resolve) => setImmediate(resolve));
    latency.recordMs((performance.now() - t0) / perTurn);
  }
  return { ops: calls / ((performance.now() - start) / 1000), latency };
}

async function durable(
  ctx: BenchContext,
  synchronous: StateSynchronous,
  perTurn: number,
  calls: number,
  awaited = false,
  leased = false,
): Promise<void> {
  const dir = join(tmpdir(), `fabric-bench-state-${process.pid}-${synchronous}-${perTurn}`);
  rmSync(dir, { recursive: true, force: true });
  const runs: Array<{ ops: number; base: number; latency: Latency; baseLatency: Latency }> = [];
  try {
    for (let round = 0; round < (ctx.quick ? 1 : 3); round++) {
      const store = await SqliteStore.open(join(dir, `state-${round}.db`), {
        synchronous,
        ...(leased ? {} : { budgetLeasePercent: 0 }),
      });
      const base = await measure(new InMemoryBudgetStore(), calls, perTurn, awaited);
      const sql = await measure(store.budgets, calls, perTurn, awaited);
      await store.close();
      runs.push({
        ops: sql.ops,
        base: base.ops,
        latency: sql.latency,
        baseLatency: base.latency,
      });
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  const last = runs.at(-1)!;
  ctx.report({
    suite: 'state',
    case: `budget-settle-${synchronous.toLowerCase()}-${awaited ? `awaited-${perTurn}` : perTurn === 1 ? 'per-call' : `per-turn-${perTurn}`}${leased ? '-leased' : ''}`,
    unit: 'calls/s',
    value: Math.round(median(runs.map((r) => r.ops))),
    baseline: 'InMemoryBudgetStore',
    baselineValue: Math.round(median(runs.map((r) => r.base))),
    higherIsBetter: true,
    p50Us: last.latency.percentileUs(50),
    p99Us: last.latency.percentileUs(99),
    baselineP50Us: last.baseLatency.percentileUs(50),
    baselineP99Us: last.baseLatency.percentileUs(99),
  });
}

const suite: BenchSuite = {
  name: 'state',
  async run(ctx) {
    const calls = ctx.quick ? 5_000 : 50_000;
    await durable(ctx, 'NORMAL', 1, calls);
    await durable(ctx, 'NORMAL', 1, calls, false, true);
    await durable(ctx, 'NORMAL', 100, calls);
    await durable(ctx, 'NORMAL', 32, calls, true);
    await durable(ctx, 'FULL', 1, ctx.quick ? 500 : 2_000);
    await durable(ctx, 'FULL', 100, calls);
  },
};

export default suite;

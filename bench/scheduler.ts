/**
 * Scheduler hot path: schedule → dispatch → complete → waiter resolved.
 *
 * - dispatch-piscina: local agents whose no-op handler runs on piscina worker threads, against
 *   raw `piscina.run` of the same no-op one task per call (the obvious way to use piscina).
 * - dispatch-piscina-latency: p50/p99 from schedule to completion of one task, open loop at half
 *   the measured throughput, against raw `piscina.run` at half of its own measured throughput;
 *   rounds alternate between the two sides and each side reports its median round.
 * - dispatch-inprocess-{1k,100k}: the same with the in-thread executor, against a minimal FIFO
 *   dispatcher (array queue, direct call, one promise per task) at the same queue size.
 * - dispatch-inprocess-flatness: 100k-queued throughput over 1k-queued throughput (goal 0.8–1.2).
 * - queue-ops-flatness: schedule + cancel at a steady depth of 100k over the same at 1k.
 *
 * Env: BENCH_THREADS (worker threads on both piscina sides, default 2); BENCH_SCHEDULER_CASES,
 * comma-separated groups to run (`queue`, `inprocess`, `piscina`; default all).
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { performance } from 'node:perf_hooks';
import { Piscina } from 'piscina';
// The built package, as users run it (`npm run bench` builds first; see tsconfig.bench.json).
import { AgentFabric } from 'agent-fabric';
import type { BenchContext, BenchSuite } from './lib.js';
import { Latency, median } from './lib.js';

const NOOP = new URL('./fixtures/noop-handler.mjs', import.meta.url);
const THREADS = Number(process.env.BENCH_THREADS ?? 2);

async function fabricWith(
  executor: 'local' | 'inprocess',
  agents: number,
  perAgent: number,
): Promise<AgentFabric> {
  const fabric = new AgentFabric(
    { maxQueueDepth: 1_000_000, maxConcurrentTasksPerAgent: perAgent, finishedTaskRetention: 0 },
    { local: { maxThreads: THREADS, minThreads: THREADS } },
  );
  fabric.registerHandler('noop', NOOP);
  fabric.registerInProcessHandler('noop', (p) => p);
  await fabric.createPool({
    poolId: 'bench',
    model: 'none',
    minAgents: agents,
    maxAgents: agents,
    executor,
  });
  return fabric;
}

/** Schedules `n` tasks to the pool and waits for all of them; returns tasks/s. */
async function runFabric(fabric: AgentFabric, n: number): Promise<number> {
  const start = performance.now();
  const waits: Promise<unknown>[] = new Array(n);
  for (let i = 0; i < n; i++) {
    const id = fabric.scheduler.submit({ poolId: 'bench' }, 'noop', i);
    waits[i] = fabric.scheduler.waitForTask(id);
  }
  await Promise.all(waits);
  return n / ((performance.now() - start) / 1000);
}

/** The baseline dispatcher: FIFO array, direct handler call, one promise per task. */
async function runNaive(n: number): Promise<number> {
  const handler = (p: unknown): unknown => p;
  const start = performance.now();
  const queue: { payload: number; resolve: (v: unknown) => void }[] = [];
  const waits: Promise<unknown>[] = new Array(n);
  for (let i = 0; i < n; i++)
    waits[i] = new Promise((resolve) => queue.push({ payload: i, resolve }));
  let head = 0;
  const pump = async (): Promise<void> => {
    while (head < queue.length) {
      const item = queue[head++]!;
      item.resolve(await handler(item.payload));
    }
  };
  await Promise.all([pump(), pump(), pump(), pump()]);
  await Promise.all(waits);
  return n / ((performance.now() - start) / 1000);
}

async function runRawPiscina(pool: Piscina, n: number, inFlight: number): Promise<number> {
  const start = performance.now();
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < n) {
      const i = next++;
      await pool.run(i);
    }
  };
  await Promise.all(Array.from({ length: inFlight }, worker));
  return n / ((performance.now() - start) / 1000);
}

/**
 * Open-loop latency: starts `rate` operations a second for `durationMs` and records each one's
 * latency, from just before the call to its completion. Arrivals follow the clock, not the
 * ticks: each ~1 ms tick starts every operation due by then, so a late timer does not lower the
 * rate (it makes a burst, as it would for a real caller). Nothing per operation is kept once it
 * ends, so the harness's own garbage does not show up as the system's tail latency.
 */
async function openLoop(
  rate: number,
  durationMs: number,
  op: () => Promise<unknown>,
): Promise<Latency> {
  const lat = new Latency();
  const start = performance.now();
  let started = 0;
  let outstanding = 0;
  let drained: (() => void) | undefined;
  const done = (t0: number) => () => {
    lat.recordMs(performance.now() - t0);
    if (--outstanding === 0) drained?.();
  };
  for (let now = start; now - start < durationMs; now = performance.now()) {
    const due = Math.floor(((now - start) / 1000) * rate);
    for (; started < due; started++) {
      outstanding++;
      const t0 = performance.now();
      void op().then(done(t0));
    }
    await sleep(1);
  }
  if (outstanding > 0) await new Promise<void>((r) => (drained = r));
  return lat;
}

async function piscinaCases(ctx: BenchContext): Promise<void> {
  const n = ctx.quick ? 20_000 : 200_000;
  const rounds = ctx.quick ? 1 : 3;
  const raw = new Piscina({ filename: NOOP.href, minThreads: THREADS, maxThreads: THREADS });
  const fabric = await fabricWith('local', 8, 256);
  // Warm-up both sides.
  await runRawPiscina(raw, 2_000, 64);
  await runFabric(fabric, 5_000);
  const ours: number[] = [];
  const base: number[] = [];
  for (let r = 0; r < rounds; r++) {
    base.push(await runRawPiscina(raw, n / 4, 64));
    ours.push(await runFabric(fabric, n));
  }
  const baseRate = median(base) / 2;
  const value = median(ours);
  const baselineValue = median(base);
  ctx.report({
    suite: 'scheduler',
    case: 'dispatch-piscina',
    unit: 'tasks/s',
    value,
    baseline: 'piscina.run one task per call, 64 in flight',
    baselineValue,
    higherIsBetter: true,
    goal: 'ratio ≥ 3',
  });

  // Each side at half of its own maximum: raw piscina.run cannot keep up with half of ours (its
  // queue, and so its latency, would only grow), and the goal is set at half load.
  const latRounds = ctx.quick ? 1 : 3;
  const laps: Latency[] = [];
  const baseLaps: Latency[] = [];
  for (let r = 0; r < latRounds; r++) {
    laps.push(
      await openLoop(value / 2, 1_000, () =>
        fabric.scheduler.waitForTask(fabric.scheduler.submit({ poolId: 'bench' }, 'noop', 0)),
      ),
    );
    baseLaps.push(await openLoop(baseRate, 1_000, () => raw.run(0)));
  }
  // The round with the median p99 (rounds alternate, so a burst of load elsewhere on the machine
  // lands on one round of one side, not on a whole side).
  const mid = (ls: Latency[]): Latency =>
    [...ls].sort((a, b) => a.percentileUs(99) - b.percentileUs(99))[ls.length >> 1]!;
  const lat = mid(laps);
  const baseLat = mid(baseLaps);
  const k = (r: number): string => `${Math.round(r / 1000)}k/s`;
  ctx.report({
    suite: 'scheduler',
    case: 'dispatch-piscina-latency',
    unit: `µs p99 at ${k(value / 2)}`,
    value: lat.percentileUs(99),
    baseline: `piscina.run one task per call at half its maximum, ${k(baseRate)}`,
    baselineValue: baseLat.percentileUs(99),
    higherIsBetter: false,
    p50Us: lat.percentileUs(50),
    p99Us: lat.percentileUs(99),
    baselineP50Us: baseLat.percentileUs(50),
    baselineP99Us: baseLat.percentileUs(99),
    goal: 'p99 < 5000 µs at half load',
  });
  await fabric.close();
  await raw.destroy();
}

async function inprocessCases(ctx: BenchContext): Promise<void> {
  const rounds = ctx.quick ? 3 : 7;
  const results: Record<string, number> = {};
  for (const queued of [1_000, 100_000]) {
    const fabric = await fabricWith('inprocess', 4, 64);
    const reps = Math.max(1, Math.round((ctx.quick ? 100_000 : 400_000) / queued));
    const ours: number[] = [];
    const base: number[] = [];
    await runFabric(fabric, queued);
    await runNaive(queued);
    for (let r = 0; r < rounds; r++) {
      let t = 0;
      for (let k = 0; k < reps; k++) t += queued / (await runFabric(fabric, queued));
      ours.push((queued * reps) / t);
      t = 0;
      for (let k = 0; k < reps; k++) t += queued / (await runNaive(queued));
      base.push((queued * reps) / t);
    }
    await fabric.close();
    const label = queued >= 1000 ? `${queued / 1000}k` : String(queued);
    results[label] = median(ours);
    ctx.report({
      suite: 'scheduler',
      case: `dispatch-inprocess-${label}`,
      unit: 'tasks/s',
      value: median(ours),
      baseline: 'naive FIFO dispatcher, same queue size',
      baselineValue: median(base),
      higherIsBetter: true,
      goal: '≥ 300k tasks/s',
    });
  }
  ctx.report({
    suite: 'scheduler',
    case: 'dispatch-inprocess-flatness',
    unit: 'tasks/s at 100k queued',
    value: results['100k']!,
    baseline: 'tasks/s at 1k queued',
    baselineValue: results['1k']!,
    higherIsBetter: true,
    goal: 'ratio 0.8–1.2',
  });
}

/**
 * Queue operations alone at a steady depth: each step schedules one task and cancels the oldest,
 * so the queue holds `depth` tasks throughout. Isolates the data structures from the cost of
 * keeping `depth` waiters alive (which the end-to-end cases include, as does their baseline).
 */
async function queueOpsAt(depth: number, steps: number): Promise<number> {
  const fabric = new AgentFabric({ maxQueueDepth: depth + 10, finishedTaskRetention: 0 });
  await fabric.createPool({ poolId: 'q', model: 'none', minAgents: 1, executor: 'remote' });
  const ids: string[] = [];
  for (let i = 0; i < depth; i++) ids.push(fabric.scheduler.submit({ poolId: 'q' }, 'noop', i));
  let head = 0;
  const start = performance.now();
  for (let i = 0; i < steps; i++) {
    ids.push(fabric.scheduler.submit({ poolId: 'q' }, 'noop', i));
    fabric.scheduler.cancel(ids[head++]!);
  }
  const rate = steps / ((performance.now() - start) / 1000);
  await fabric.close();
  return rate;
}

async function queueCases(ctx: BenchContext): Promise<void> {
  const steps = ctx.quick ? 100_000 : 500_000;
  const small: number[] = [];
  const large: number[] = [];
  for (let r = 0; r < (ctx.quick ? 3 : 5); r++) {
    small.push(await queueOpsAt(1_000, steps));
    large.push(await queueOpsAt(100_000, steps));
  }
  ctx.report({
    suite: 'scheduler',
    case: 'queue-ops-flatness',
    unit: 'schedule+cancel/s at 100k queued',
    value: median(large),
    baseline: 'schedule+cancel/s at 1k queued',
    baselineValue: median(small),
    higherIsBetter: true,
    goal: 'ratio 0.8–1.2',
  });
}

/** Case groups to run: all, or those named in BENCH_SCHEDULER_CASES (comma-separated). */
function wanted(group: string): boolean {
  const only = process.env.BENCH_SCHEDULER_CASES;
  return !only || only.split(',').includes(group);
}

const suite: BenchSuite = {
  name: 'scheduler',
  async run(ctx) {
    if (wanted('queue')) await queueCases(ctx);
    if (wanted('inprocess')) await inprocessCases(ctx);
    if (wanted('piscina')) await piscinaCases(ctx);
  },
};
export default suite;

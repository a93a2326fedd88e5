/**
 * Scheduler hot path: schedule → dispatch → complete → waiter resolved.
 *
 * - dispatch-piscina: local agents whose no-op handler runs on piscina worker threads, against
 *   raw `piscina.run` of the same no-op one task per call (the obvious way to use piscina).
 * - dispatch-piscina-latency: p50/p99 from schedule to completion of one task, open loop at half
 *   the measured throughput, against raw `piscina.run` at half of its own measured throughput;
 *   rounds alternate between the two sides and each side reports its median round.
 * - dispatch-inprocess-{1k,100k}: the same with the in-thread executor at a steady depth: 1k or
 *   100k tasks in flight throughout (each finished task replaced by a new one, each awaited with
 *   `waitForTask`), against a minimal FIFO dispatcher (array queue, direct call, one promise per
 *   task) at the same depth. Rounds alternate between the two sides; medians.
 * - dispatch-inprocess-flatness: throughput at 100k in flight over throughput at 1k (goal
 *   0.8–1.2); the naive dispatcher's own ratio is shown beside the goal.
 * - dispatch-inprocess-depth-cost: what the depth adds to each task, in µs, ours against the
 *   naive dispatcher's: t(100k) − t(1k), where t = 1 / (median tasks/s) at that depth. The
 *   depth costs every dispatcher that keeps a promise per task something (V8 copies and promotes
 *   what in-flight tasks keep alive); what ours adds beyond the naive one's is the fabric's own
 *   share, shown beside the goal. A difference below zero (the deep runs faster than the
 *   shallow) can only be noise, so it shows as 0.
 * - dispatch-inprocess-depth-cost-listened (diagnostic): the same depth cost with no waiter per
 *   task on either side: the fabric's completions observed by one `task.finished` listener, the
 *   naive dispatcher's by one callback. Separates the scheduler's own cost at depth from the cost
 *   of keeping a waiter (a promise, and at the end the snapshot it resolves with) per task.
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

/**
 * Keeps `depth` tasks in flight (queued or running): each one that finishes is replaced at once by
 * a new one. Times the `n` completions that follow the first `depth`, a window in which `depth`
 * tasks stay in flight throughout; filling the queue before it and draining it after are not
 * timed. Only the in-flight tasks and their waiters are alive at any time (nothing per finished
 * task is kept), so what grows with `depth` is the dispatcher's own state. Returns tasks/s.
 */
function steadyDepth(
  submitAndWait: (i: number) => Promise<unknown>,
  depth: number,
  n: number,
): Promise<number> {
  const total = 2 * depth + n;
  let submitted = 0;
  let finished = 0;
  let t0 = 0;
  let rate = 0;
  return new Promise((resolve, reject) => {
    const done = (): void => {
      finished++;
      if (finished === depth) t0 = performance.now();
      else if (finished === depth + n) rate = n / ((performance.now() - t0) / 1000);
      if (submitted < total) submit();
      else if (finished === total) resolve(rate); // drained: the next run starts empty
    };
    const submit = (): void => {
      submitAndWait(submitted++).then(done, reject);
    };
    while (submitted < depth) submit();
  });
}

/**
 * The baseline dispatcher: FIFO array, four pumps calling the handler directly, one promise per
 * task. Returns its submit-and-wait function.
 */
function naiveDispatcher(): (payload: number) => Promise<unknown> {
  const handler = (p: unknown): unknown => p;
  let queue: ({ payload: number; resolve: (v: unknown) => void } | undefined)[] = [];
  let head = 0;
  let pumps = 0;
  const pump = async (): Promise<void> => {
    pumps++;
    while (head < queue.length) {
      const item = queue[head]!;
      queue[head++] = undefined;
      if (head >= 65_536 && head * 2 >= queue.length) {
        queue = queue.slice(head);
        head = 0;
      }
      item.resolve(await handler(item.payload));
    }
    pumps--;
  };
  return (payload) =>
    new Promise((resolve) => {
      queue.push({ payload, resolve });
      if (pumps < 4) void pump();
    });
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

/**
 * What the depth adds to each task, in µs: t(100k) − t(1k) from the median rates at each depth
 * (see the file header); below zero only noise, so 0.
 */
function depthCostUs(rates: Record<string, number>): number {
  return Math.max(0, 1e6 / rates['100k']! - 1e6 / rates['1k']!);
}

/**
 * `rounds` measurements of each side; which side goes first alternates (the load on a shared
 * machine drifts). Returns both sides' results, in round order.
 */
async function alternating(
  rounds: number,
  ours: () => Promise<number>,
  base: () => Promise<number>,
): Promise<[number[], number[]]> {
  const a: number[] = [];
  const b: number[] = [];
  for (let r = 0; r < rounds; r++) {
    if (r % 2 === 0) {
      a.push(await ours());
      b.push(await base());
    } else {
      b.push(await base());
      a.push(await ours());
    }
  }
  return [a, b];
}

/** One side of a depth case: runs `count` tasks at a steady `depth`, returns tasks/s. */
type DepthRun = (depth: number, count: number) => Promise<number>;

/**
 * Median tasks/s of both sides at 1k and 100k in flight, by depth label (`1k`, `100k`): per
 * depth a fresh in-process fabric, `sides` made on it, a warm-up of a quarter of `n` on each,
 * then `rounds` alternating rounds of `n`.
 */
async function ratesAtDepths(
  rounds: number,
  n: number,
  sides: (fabric: AgentFabric) => { ours: DepthRun; base: DepthRun },
): Promise<{ ours: Record<string, number>; base: Record<string, number> }> {
  const ours: Record<string, number> = {};
  const base: Record<string, number> = {};
  for (const depth of [1_000, 100_000]) {
    const fabric = await fabricWith('inprocess', 4, 64);
    const side = sides(fabric);
    await side.ours(depth, n / 4);
    await side.base(depth, n / 4);
    const [a, b] = await alternating(
      rounds,
      () => side.ours(depth, n),
      () => side.base(depth, n),
    );
    await fabric.close();
    ours[`${depth / 1000}k`] = median(a);
    base[`${depth / 1000}k`] = median(b);
  }
  return { ours, base };
}

async function inprocessCases(ctx: BenchContext): Promise<void> {
  const rounds = ctx.quick ? 3 : 7;
  const n = ctx.quick ? 100_000 : 400_000;
  const { ours: results, base: naive } = await ratesAtDepths(rounds, n, (fabric) => {
    const ourSide = (i: number): Promise<unknown> =>
      fabric.scheduler.waitForTask(fabric.scheduler.submit({ poolId: 'bench' }, 'noop', i));
    const baseSide = naiveDispatcher();
    return {
      ours: (depth, count) => steadyDepth(ourSide, depth, count),
      base: (depth, count) => steadyDepth(baseSide, depth, count),
    };
  });
  for (const label of ['1k', '100k']) {
    ctx.report({
      suite: 'scheduler',
      case: `dispatch-inprocess-${label}`,
      unit: `tasks/s, ${label} in flight`,
      value: results[label]!,
      baseline: 'naive FIFO dispatcher, same depth',
      baselineValue: naive[label]!,
      higherIsBetter: true,
      goal: '≥ 300k tasks/s',
    });
  }
  const naiveFlatness = naive['100k']! / naive['1k']!;
  const oursCost = depthCostUs(results);
  const naiveCost = depthCostUs(naive);
  ctx.report({
    suite: 'scheduler',
    case: 'dispatch-inprocess-flatness',
    unit: 'tasks/s at 100k in flight',
    value: results['100k']!,
    baseline: 'tasks/s at 1k in flight',
    baselineValue: results['1k']!,
    higherIsBetter: true,
    goal: `ratio 0.8–1.2 (the naive dispatcher's own: ${naiveFlatness.toFixed(2)})`,
  });
  ctx.report({
    suite: 'scheduler',
    case: 'dispatch-inprocess-depth-cost',
    unit: 'µs per task, t(100k) − t(1k)',
    value: oursCost,
    baseline: 'naive FIFO dispatcher, t(100k) − t(1k)',
    baselineValue: naiveCost,
    higherIsBetter: false,
    goal: `the fabric's own share: ${Math.max(0, oursCost - naiveCost).toFixed(2)} µs per task`,
  });
}

/**
 * A dispatcher side whose completions are told to one listener (no promise per task). `onDone` is
 * set by {@link steadyDepthListened} before each run.
 */
interface ListenedSide {
  submit(i: number): void;
  onDone: () => void;
}

/** {@link steadyDepth} for a side whose completions reach one listener; returns tasks/s. */
function steadyDepthListened(side: ListenedSide, depth: number, n: number): Promise<number> {
  const total = 2 * depth + n;
  let submitted = 0;
  let finished = 0;
  let t0 = 0;
  let rate = 0;
  return new Promise((resolve) => {
    side.onDone = () => {
      finished++;
      if (finished === depth) t0 = performance.now();
      else if (finished === depth + n) rate = n / ((performance.now() - t0) / 1000);
      if (submitted < total) side.submit(submitted++);
      else if (finished === total) resolve(rate);
    };
    while (submitted < depth) side.submit(submitted++);
  });
}

/**
 * The naive dispatcher of {@link naiveDispatcher} telling one listener of each completion instead
 * of resolving a promise per task: FIFO array of one small object per task, drained on a
 * microtask.
 */
function naiveListened(): ListenedSide {
  const handler = (p: unknown): unknown => p;
  let queue: ({ payload: number } | undefined)[] = [];
  let head = 0;
  let queued = false;
  const side: ListenedSide = {
    onDone: () => {},
    submit(payload) {
      queue.push({ payload });
      if (!queued) {
        queued = true;
        queueMicrotask(pump);
      }
    },
  };
  const pump = (): void => {
    queued = false;
    while (head < queue.length) {
      const item = queue[head]!;
      queue[head++] = undefined;
      if (head >= 65_536 && head * 2 >= queue.length) {
        queue = queue.slice(head);
        head = 0;
      }
      handler(item.payload);
      side.onDone();
    }
  };
  return side;
}

/**
 * Diagnostic: the depth cost with no waiter per task on either side. The fabric's completions
 * are observed by one `task.finished` listener (the event API users have), the naive
 * dispatcher's by one callback. What is left is what the depth adds to the scheduler's own work
 * (queues, records, ids, the dispatch pass, the event's snapshot); the difference from
 * `dispatch-inprocess-depth-cost` is what keeping a waiter per in-flight task costs at depth.
 */
async function inprocessListenedCases(ctx: BenchContext): Promise<void> {
  const rounds = ctx.quick ? 1 : 3;
  const n = ctx.quick ? 100_000 : 200_000;
  const { ours, base: naive } = await ratesAtDepths(rounds, n, (fabric) => {
    const scheduler = fabric.scheduler;
    const ourSide: ListenedSide = {
      onDone: () => {},
      submit: (i) => void scheduler.submit({ poolId: 'bench' }, 'noop', i),
    };
    scheduler.events.on('task.finished', () => ourSide.onDone());
    const baseSide = naiveListened();
    return {
      ours: (depth, count) => steadyDepthListened(ourSide, depth, count),
      base: (depth, count) => steadyDepthListened(baseSide, depth, count),
    };
  });
  const f = (r: Record<string, number>): string => (r['100k']! / r['1k']!).toFixed(2);
  ctx.report({
    suite: 'scheduler',
    case: 'dispatch-inprocess-depth-cost-listened',
    unit: 'µs per task, t(100k) − t(1k), no waiters',
    value: depthCostUs(ours),
    baseline: 'naive FIFO dispatcher, one callback, no promise per task',
    baselineValue: depthCostUs(naive),
    higherIsBetter: false,
    goal: `diagnostic (flatness ${f(ours)}, naive ${f(naive)}; ${Math.round(ours['1k']! / 1000)}k/s at 1k)`,
  });
}

/**
 * Queue operations alone at a steady depth: each step schedules one task and cancels the oldest,
 * so the queue holds `depth` tasks throughout. Isolates the data structures from the cost of
 * keeping `depth` waiters alive (which the end-to-end cases include, as does their baseline).
 */
async function queueOpsAt(depth: number, steps: number): Promise<number> {
  const fabric = new AgentFabric({
    maxQueueDepth: depth + 10,
    maxQueueDepthPerTenant: depth + 10,
    finishedTaskRetention: 0,
  });
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
    if (wanted('inprocess')) await inprocessListenedCases(ctx);
    if (wanted('piscina')) await piscinaCases(ctx);
  },
};
export default suite;

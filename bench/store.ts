/**
 * Durable dispatch: what the SQLite state store costs the scheduler, and where the fabric stands
 * against the job queues people would pick instead, on the same machine in the same run with the
 * same no-op work.
 *
 * - durable-dispatch: `scheduleToPool` → in-process no-op handler → `waitForTask`, all `n`
 *   schedules issued at once, with the SQLite store (WAL, synchronous NORMAL) against the
 *   in-memory store; both warmed up, then 7 rounds (1 with `--quick`) whose first side
 *   alternates, medians. Goal ratio ≥ 0.5.
 * - schedule-ack: latency of one awaited `scheduleToPool` at a time (the caller resumes after the
 *   store's commit), SQLite against in-memory.
 * - vs-bullmq: the same `n` jobs through BullMQ on the Redis at 127.0.0.1:6379 (`Queue.add` each,
 *   a `Worker` with concurrency 64 completing them; completed jobs kept, as by default), against
 *   durable-dispatch measured right before it. Durability differs in the peer's favour: this
 *   machine's Redis keeps nothing on disk, so BullMQ's jobs survive a crash of the worker, not of
 *   Redis.
 * - vs-pg-boss: pg-boss 10 (the newest line that runs on Node 20) on the PostgreSQL at
 *   127.0.0.1:5432 (`send` each; 4 `work` loops, batches of 100, its minimum polling interval of
 *   0.5 s; PostgreSQL commits with fsync, like the SQLite store's `synchronous: FULL`, so the
 *   fabric is measured with FULL here).
 *
 * A peer whose server is unreachable is reported as skipped, never estimated.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
// The built package, as users run it (`npm run bench` builds first; see tsconfig.bench.json).
import { AgentFabric, SqliteStore, type FabricOptions, type StateSynchronous } from 'agent-fabric';
import { Latency, median, type BenchContext, type BenchSuite } from './lib.js';

const AGENTS = 4;
const PER_AGENT = 64;
const REDIS = { host: '127.0.0.1', port: 6379 };
const POSTGRES = 'postgres://postgres@127.0.0.1:5432/test';

type StoreKind = 'memory' | StateSynchronous;

/** A fabric with one pool of in-process no-op agents, on the given store. */
async function fabricOn(kind: StoreKind, dir: string): Promise<AgentFabric> {
  const store =
    kind === 'memory'
      ? undefined
      : ((await SqliteStore.open(join(dir, `state-${kind}-${performance.now()}.db`), {
          synchronous: kind,
        })) as FabricOptions['store']);
  const fabric = new AgentFabric(
    { maxQueueDepth: 1_000_000, maxConcurrentTasksPerAgent: PER_AGENT },
    store === undefined ? {} : { store },
  );
  fabric.registerInProcessHandler('noop', (p) => p);
  await fabric.createPool({
    poolId: 'bench',
    model: 'none',
    minAgents: AGENTS,
    maxAgents: AGENTS,
    executor: 'inprocess',
  });
  return fabric;
}

/** Schedules `n` tasks at once and waits for every result; tasks/s end to end. */
async function dispatch(kind: StoreKind, n: number, dir: string): Promise<number> {
  const fabric = await fabricOn(kind, dir);
  try {
    const start = performance.now();
    const done: Promise<unknown>[] = new Array(n);
    for (let i = 0; i < n; i++) {
      done[i] = fabric
        .scheduleToPool('bench', 'noop', i)
        .then((task) => fabric.waitForTask(task.id));
    }
    await Promise.all(done);
    return n / ((performance.now() - start) / 1000);
  } finally {
    await fabric.close();
  }
}

/** Latency of `n` awaited schedules, one at a time. */
async function scheduleAck(kind: StoreKind, n: number, dir: string): Promise<Latency> {
  const fabric = await fabricOn(kind, dir);
  const latency = new Latency();
  try {
    for (let i = 0; i < n; i++) {
      const t0 = performance.now();
      await fabric.scheduleToPool('bench', 'noop', i);
      latency.recordMs(performance.now() - t0);
    }
    return latency;
  } finally {
    await fabric.close();
  }
}

/** BullMQ: `n` jobs added one call each, completed by a no-op worker; jobs/s end to end. */
async function bullmq(n: number): Promise<number> {
  const { Queue, Worker, QueueEvents } = await import('bullmq');
  const name = `fabric-bench-${process.pid}-${Date.now()}`;
  const connection = { ...REDIS, maxRetriesPerRequest: null };
  const queue = new Queue(name, { connection });
  const events = new QueueEvents(name, { connection });
  let completed = 0;
  let finish!: () => void;
  const allDone = new Promise<void>((resolve) => (finish = resolve));
  const worker = new Worker(name, async (job) => job.data as unknown, {
    connection,
    concurrency: PER_AGENT,
  });
  worker.on('completed', () => {
    if (++completed === n) finish();
  });
  try {
    await Promise.all([queue.waitUntilReady(), worker.waitUntilReady(), events.waitUntilReady()]);
    const start = performance.now();
    const adds: Promise<unknown>[] = new Array(n);
    for (let i = 0; i < n; i++) adds[i] = queue.add('noop', { i });
    await Promise.all(adds);
    await allDone;
    return n / ((performance.now() - start) / 1000);
  } finally {
    await worker.close();
    await events.close();
    await queue.obliterate({ force: true });
    await queue.close();
  }
}

/** pg-boss: `n` jobs sent one call each, completed by 4 no-op work loops; jobs/s end to end. */
async function pgBoss(n: number): Promise<number> {
  const { default: PgBoss } = await import('pg-boss');
  const boss = new PgBoss({ connectionString: POSTGRES, max: 16 });
  boss.on('error', () => {});
  await boss.start();
  const name = `fabric_bench_${process.pid}_${Date.now()}`;
  try {
    await boss.createQueue(name);
    let completed = 0;
    let finish!: () => void;
    const allDone = new Promise<void>((resolve) => (finish = resolve));
    for (let w = 0; w < 4; w++) {
      await boss.work(name, { batchSize: 100, pollingIntervalSeconds: 0.5 }, async (jobs) => {
        completed += jobs.length;
        if (completed >= n) finish();
      });
    }
    const start = performance.now();
    const sends: Promise<unknown>[] = new Array(n);
    for (let i = 0; i < n; i++) sends[i] = boss.send(name, { i });
    await Promise.all(sends);
    await allDone;
    return n / ((performance.now() - start) / 1000);
  } finally {
    await boss.deleteQueue(name).catch(() => {});
    await boss.stop({ graceful: false, wait: true });
  }
}

/** Whether a TCP server answers at `host:port` within a second. */
async function reachable(host: string, port: number): Promise<boolean> {
  const { connect } = await import('node:net');
  return new Promise((resolve) => {
    const socket = connect({ host, port });
    const done = (ok: boolean) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(1000, () => done(false));
    socket.once('connect', () => done(true));
    socket.once('error', () => done(false));
  });
}

async function vsPeer(
  ctx: BenchContext,
  dir: string,
  peer: { case: string; name: string; host: string; port: number; ours: StoreKind },
  run: (n: number) => Promise<number>,
  n: number,
): Promise<void> {
  const base = {
    suite: 'store',
    case: peer.case,
    unit: 'tasks/s',
    baseline: peer.name,
    higherIsBetter: true,
    goal: '≥ 1.0',
  };
  if (!(await reachable(peer.host, peer.port))) {
    ctx.report({
      ...base,
      value: 0,
      baselineValue: 0,
      ratio: 0,
      skipped: `${peer.host}:${peer.port} unreachable`,
    });
    return;
  }
  const ours: number[] = [];
  const theirs: number[] = [];
  for (let round = 0; round < (ctx.quick ? 1 : 3); round++) {
    ours.push(await dispatch(peer.ours, n, dir));
    theirs.push(await run(n));
  }
  ctx.report({ ...base, value: median(ours), baselineValue: median(theirs) });
}

const suite: BenchSuite = {
  name: 'store',
  async run(ctx) {
    const dir = mkdtempSync(join(tmpdir(), 'fabric-bench-store-'));
    try {
      const n = ctx.quick ? 2_000 : 20_000;
      // Warm-up of both sides, then rounds whose first side alternates: one round takes a
      // fraction of a second, so the load and the JIT's state drift between them.
      await dispatch('memory', n, dir);
      await dispatch('NORMAL', n, dir);
      const sql: number[] = [];
      const mem: number[] = [];
      for (let round = 0; round < (ctx.quick ? 1 : 7); round++) {
        if (round % 2 === 0) {
          mem.push(await dispatch('memory', n, dir));
          sql.push(await dispatch('NORMAL', n, dir));
        } else {
          sql.push(await dispatch('NORMAL', n, dir));
          mem.push(await dispatch('memory', n, dir));
        }
      }
      ctx.report({
        suite: 'store',
        case: 'durable-dispatch',
        unit: 'tasks/s',
        value: median(sql),
        baseline: 'in-memory store',
        baselineValue: median(mem),
        higherIsBetter: true,
        goal: '≥ 0.5',
      });

      const acks = ctx.quick ? 500 : 5_000;
      const memAck = await scheduleAck('memory', acks, dir);
      const sqlAck = await scheduleAck('NORMAL', acks, dir);
      ctx.report({
        suite: 'store',
        case: 'schedule-ack',
        unit: 'µs p50',
        value: sqlAck.percentileUs(50),
        baseline: 'in-memory store, p50',
        baselineValue: memAck.percentileUs(50),
        higherIsBetter: false,
        p50Us: sqlAck.percentileUs(50),
        p99Us: sqlAck.percentileUs(99),
        baselineP50Us: memAck.percentileUs(50),
        baselineP99Us: memAck.percentileUs(99),
      });

      const peers = ctx.quick ? 1_000 : 10_000;
      await vsPeer(
        ctx,
        dir,
        { case: 'vs-bullmq', name: 'BullMQ on Redis', ...REDIS, ours: 'NORMAL' },
        bullmq,
        peers,
      );
      await vsPeer(
        ctx,
        dir,
        {
          case: 'vs-pg-boss',
          name: 'pg-boss 10 on PostgreSQL',
          host: '127.0.0.1',
          port: 5432,
          ours: 'FULL',
        },
        pgBoss,
        // pg-boss polls (0.5 s at least) and sends ~550 jobs/s here: fewer jobs keep the suite
        // under a minute; the fabric side runs the same number.
        ctx.quick ? peers : 2_000,
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  },
};

export default suite;

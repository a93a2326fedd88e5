/**
 * NATS transport benchmarks against a real nats-server (its own port and store, started here),
 * each with its baseline in the same run and over the same kind of client:
 *
 * - dispatch-jetstream: tasks scheduled to a pool → the `nats` executor publishes them to the
 *   JetStream work queue → a NatsWorker in this process (no-op handler) reports start and
 *   completion → every task seen finished by the scheduler (`waitForTask`), vs raw JetStream on
 *   the same connection kind: publish the same number of messages (with `Nats-Msg-Id`) to a
 *   work-queue stream, consume and ack them all. Tasks/s vs messages/s; after a warm-up round
 *   of both, the median of the rounds (which side goes first alternates).
 * - enqueue-to-start: at half the dispatch rate measured above, the time from `scheduleToPool`
 *   to the handler starting on the worker (same process, same clock), vs the time from a raw
 *   JetStream publish to its consumer receiving it at the same rate. p50/p99; the first tenth
 *   of each side warms up unrecorded.
 * - heartbeats: 10 000 simulated agents heartbeating once a second (another process signs and
 *   publishes them) into a fabric that checks every proof and feeds its lifecycle; the fabric
 *   process's CPU share of one core, vs a bare subscriber of the same subjects that only counts
 *   messages (lower is better).
 *
 * - enqueue-to-start (diagnostic: worker in its own process): run only when BENCH_NATS_CASES
 *   names `latency-remote` (never by default). The same as enqueue-to-start (rate, count,
 *   warm-up, baseline: raw JetStream publish → consumer in this process, run again) except that
 *   the NatsWorker runs in another process (bench/fixtures/nats-remote-worker.ts), so it does
 *   not share the sidecar's event loop. The worker records its handler's start on the wall clock
 *   (`performance.timeOrigin + performance.now()`), this process the same clock at
 *   `scheduleToPool`; the worker sends its starts back on stdout at the end. It does not replace
 *   enqueue-to-start: it says how much of that case's latency is the shared loop.
 *
 * `BENCH_NATS_CASES` (comma-separated: `dispatch`, `latency`, `heartbeats`, `latency-remote`)
 * runs only those cases; `latency` and `latency-remote` need the dispatch rate, so they run
 * `dispatch` too unless `BENCH_NATS_RATE` gives a fixed rate (a diagnostic for A/B runs,
 * reported as such in the case name).
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { AckPolicy, RetentionPolicy, jetstream, jetstreamManager } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import { AgentFabric, hashCredential, NatsWorker } from 'agent-fabric';
import { startNatsServer, type NatsServer } from '../test/fixtures/nats-server-process.js';
import { Latency, type BenchContext, type BenchSuite } from './lib.js';

const SIM = fileURLToPath(new URL('./fixtures/nats-heartbeat-sim.ts', import.meta.url));
const REMOTE_WORKER = fileURLToPath(new URL('./fixtures/nats-remote-worker.ts', import.meta.url));

/** A fabric on NATS with pool `p` and one agent `w` of it, ready for a worker to attach. */
async function fabricWithAgent(server: NatsServer, namespace: string) {
  const nats = { url: server.url, namespace };
  const fabric = new AgentFabric(
    { maxQueueDepth: 100_000, maxConcurrentTasksPerAgent: 1000, heartbeatIntervalSeconds: 60 },
    { nats },
  );
  await fabric.start();
  await fabric.createPool({ poolId: 'p', model: 'm', executor: 'nats', minAgents: 0 });
  const agent = await fabric.spawn({ name: 'w', model: 'm', executor: 'nats', poolId: 'p' });
  await fabric.natsExecutor!.consumersReady();
  await fabric.heartbeat(agent.id);
  return { fabric, agent, nats };
}

async function fabricWithWorker(server: NatsServer, namespace: string) {
  const { fabric, agent, nats } = await fabricWithAgent(server, namespace);
  const worker = await NatsWorker.connect({
    nats,
    agentId: agent.id,
    credential: agent.credential,
    poolId: 'p',
    concurrency: 256,
  });
  return { fabric, worker };
}

/**
 * Raw JetStream: a work-queue stream and a durable pull consumer with explicit ack, on a
 * connection made as the fabric makes its own (`noAsyncTraces`), so the baseline is not slowed
 * by a client option the project turns off.
 */
async function rawJetStream(server: NatsServer, name: string) {
  const nc = await connect({ servers: server.url, noAsyncTraces: true });
  const jsm = await jetstreamManager(nc);
  await jsm.streams.add({
    name,
    subjects: [`${name}.>`],
    retention: RetentionPolicy.Workqueue,
  });
  await jsm.consumers.add(name, { durable_name: 'c', ack_policy: AckPolicy.Explicit });
  const js = jetstream(nc);
  const consumer = await js.consumers.get(name, 'c');
  return { nc, js, consumer };
}

/** The project: schedule → JetStream → worker → reports → finished. Tasks/s. */
async function dispatchProject(server: NatsServer, n: number, round: string): Promise<number> {
  const { fabric, worker } = await fabricWithWorker(server, `d${round}`);
  const stop = new AbortController();
  const running = worker.run({ noop: () => null }, { signal: stop.signal });
  const t0 = performance.now();
  const ids: string[] = [];
  for (let i = 0; i < n; i++) ids.push((await fabric.scheduleToPool('p', 'noop', i)).id);
  await Promise.all(ids.map((id) => fabric.waitForTask(id)));
  const value = n / ((performance.now() - t0) / 1000);
  stop.abort();
  await running;
  await worker.close();
  await fabric.close();
  return value;
}

/** The baseline: the same number of messages, published with ids, consumed and acked. */
async function dispatchRaw(server: NatsServer, n: number, round: string): Promise<number> {
  const raw = await rawJetStream(server, `RAW${round}`);
  const messages = await raw.consumer.consume({ max_messages: 256 });
  let acked = 0;
  const all = new Promise<void>((resolve) => {
    void (async () => {
      for await (const m of messages) {
        m.ack();
        if (++acked === n) resolve();
      }
    })();
  });
  const t0 = performance.now();
  const pubs: Promise<unknown>[] = [];
  for (let i = 0; i < n; i++) {
    pubs.push(raw.js.publish(`RAW${round}.x`, JSON.stringify({ i }), { msgID: `m${i}:1` }));
  }
  await Promise.all(pubs);
  await all;
  const baseline = n / ((performance.now() - t0) / 1000);
  await messages.close();
  await raw.nc.close();
  return baseline;
}

/** One round of both sides; which goes first alternates with `round` (the load drifts). */
async function dispatch(server: NatsServer, n: number, round: number): Promise<[number, number]> {
  const name = String(round);
  if (round % 2 === 0) {
    const value = await dispatchProject(server, n, name);
    return [value, await dispatchRaw(server, n, name)];
  }
  const baseline = await dispatchRaw(server, n, name);
  return [await dispatchProject(server, n, name), baseline];
}

/**
 * The latency cases' schedule at `rate` tasks/s over `seconds`: `total` tasks `gapMs` apart, of
 * which the first `warm` (a tenth) warm the path up (new consumers, first pulls) unrecorded.
 */
function pacing(rate: number, seconds: number) {
  const n = Math.max(50, Math.round(rate * seconds));
  const warm = Math.round(n / 10);
  return { warm, total: n + warm, gapMs: 1000 / rate };
}

async function enqueueToStart(
  server: NatsServer,
  rate: number,
  seconds: number,
): Promise<[Latency, Latency]> {
  const { warm, total, gapMs } = pacing(rate, seconds);
  const project = new Latency();
  const { fabric, worker } = await fabricWithWorker(server, 'lat');
  const scheduledAt = new Map<string, number>(); // recorded tasks only
  const stop = new AbortController();
  const running = worker.run(
    {
      noop: (_p, ctx) => {
        const at = scheduledAt.get(ctx.taskId);
        if (at !== undefined) project.recordMs(performance.now() - at);
        return null;
      },
    },
    { signal: stop.signal },
  );
  // Each task is awaited as soon as it is scheduled: waiting for them all after the loop would
  // ask for tasks the finished-task retention (10k) may already have dropped at a fast rate.
  // Only the end is kept, not the finished task's snapshot: holding one per task until the
  // loop ends made every scavenge of the young heap copy them (longer GC pauses, which the raw
  // side does not have), a cost of this harness and not of the fabric.
  const finished: Promise<void>[] = [];
  const t0 = performance.now();
  for (let i = 0; i < total; i++) {
    const wait = t0 + i * gapMs - performance.now();
    if (wait > 1) await new Promise((r) => setTimeout(r, wait));
    const at = performance.now();
    const t = await fabric.scheduleToPool('p', 'noop', i);
    if (i >= warm) scheduledAt.set(t.id, at);
    finished.push(fabric.waitForTask(t.id).then(() => undefined));
  }
  await Promise.all(finished);
  stop.abort();
  await running;
  await worker.close();
  await fabric.close();
  return [project, await rawEnqueueToStart(server, 'RAWLAT', rate, total, warm)];
}

/**
 * The baseline of both enqueue-to-start cases: raw JetStream publish → consumer (this process,
 * same clock) of `total` messages at `rate`, the first `warm` unrecorded.
 */
async function rawEnqueueToStart(
  server: NatsServer,
  stream: string,
  rate: number,
  total: number,
  warm: number,
): Promise<Latency> {
  const gapMs = 1000 / rate;
  const baseline = new Latency();
  const raw = await rawJetStream(server, stream);
  const messages = await raw.consumer.consume({ max_messages: 256 });
  let seen = 0;
  const all = new Promise<void>((resolve) => {
    void (async () => {
      for await (const m of messages) {
        const { at, i } = m.json<{ at: number; i: number }>();
        if (i >= warm) baseline.recordMs(performance.now() - at);
        m.ack();
        if (++seen === total) resolve();
      }
    })();
  });
  const t0 = performance.now();
  for (let i = 0; i < total; i++) {
    const wait = t0 + i * gapMs - performance.now();
    if (wait > 1) await new Promise((r) => setTimeout(r, wait));
    await raw.js.publish(`${stream}.x`, JSON.stringify({ at: performance.now(), i }), {
      msgID: `l${i}`,
    });
  }
  await all;
  await messages.close();
  await raw.nc.close();
  return baseline;
}

/**
 * Diagnostic: enqueue-to-start with the worker in its own process (bench/fixtures/
 * nats-remote-worker.ts), so the sidecar and the worker no longer share one event loop. The
 * same rate, count and warm-up as `enqueueToStart`; the worker records its handler's start on
 * the wall clock (`performance.timeOrigin + performance.now()`), this process records the same
 * clock at `scheduleToPool`, the difference is the latency. Baseline: the same raw JetStream
 * publish → consumer as `enqueue-to-start`, run again here (its own stream).
 */
async function enqueueToStartRemote(
  server: NatsServer,
  rate: number,
  seconds: number,
): Promise<[Latency, Latency]> {
  const { warm, total, gapMs } = pacing(rate, seconds);
  const namespace = 'latr';
  const { fabric, agent } = await fabricWithAgent(server, namespace);
  const child = spawn(process.execPath, [...process.execArgv, REMOTE_WORKER], {
    stdio: ['pipe', 'pipe', 'inherit'],
    env: {
      ...process.env,
      FABRIC_BENCH_NATS_URL: server.url,
      FABRIC_BENCH_NATS_NAMESPACE: namespace,
      FABRIC_BENCH_AGENT_ID: agent.id,
      FABRIC_BENCH_AGENT_CREDENTIAL: agent.credential,
      FABRIC_BENCH_POOL: 'p',
    },
  });
  let out = '';
  child.stdout.setEncoding('utf8');
  const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
  try {
    await new Promise<void>((resolve, reject) => {
      const onData = (c: string) => {
        out += c;
        if (out.includes('running\n')) {
          out = '';
          child.stdout.off('data', onData);
          resolve();
        }
      };
      child.stdout.on('data', onData);
      void exited.then((code) => reject(new Error(`remote worker exited (${code})`)));
    });
    child.stdout.on('data', (c: string) => (out += c));
    const scheduledAt = new Map<string, number>(); // recorded tasks only, epoch ms
    const finished: Promise<void>[] = [];
    const t0 = performance.now();
    for (let i = 0; i < total; i++) {
      const wait = t0 + i * gapMs - performance.now();
      if (wait > 1) await new Promise((r) => setTimeout(r, wait));
      const at = performance.timeOrigin + performance.now();
      const t = await fabric.scheduleToPool('p', 'noop', i);
      if (i >= warm) scheduledAt.set(t.id, at);
      finished.push(fabric.waitForTask(t.id).then(() => undefined));
    }
    await Promise.all(finished);
    child.stdin.end();
    const code = await exited;
    if (code !== 0) throw new Error(`remote worker exited (${code})`);
    const { starts } = JSON.parse(out) as { starts: [string, number][] };
    const project = new Latency();
    for (const [id, startedAt] of starts) {
      const at = scheduledAt.get(id);
      if (at !== undefined) project.recordMs(startedAt - at);
    }
    if (project.count !== total - warm) {
      throw new Error(`remote worker reported ${project.count} of ${total - warm} recorded starts`);
    }
    return [project, await rawEnqueueToStart(server, 'RAWLATR', rate, total, warm)];
  } finally {
    if (child.exitCode === null) child.kill('SIGKILL');
    await fabric.close();
  }
}

/** CPU time of this process (user + system) over `ms`, as a share of one core. */
async function cpuShare(ms: number): Promise<number> {
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  await new Promise((r) => setTimeout(r, ms));
  const c = process.cpuUsage(c0);
  return (c.user + c.system) / 1000 / (performance.now() - t0);
}

async function heartbeats(
  server: NatsServer,
  agents: number,
  ms: number,
): Promise<[number, number, number]> {
  const ns = 'hb';
  const fabric = new AgentFabric(
    { maxConcurrentAgents: agents + 1, heartbeatIntervalSeconds: 30 },
    { nats: { url: server.url, namespace: ns } },
  );
  await fabric.start();
  const list: { id: string; key: string }[] = [];
  for (let i = 0; i < agents; i++) {
    const a = await fabric.spawn({ name: `a${i}`, model: 'm', executor: 'remote' });
    list.push({ id: a.id, key: hashCredential(a.credential) });
  }
  const dir = mkdtempSync(join(tmpdir(), 'fabric-bench-hb-'));
  const file = join(dir, 'agents.json');
  writeFileSync(file, JSON.stringify(list));
  const sim = spawn(process.execPath, [...process.execArgv, SIM, file, server.url, ns], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  try {
    await new Promise<void>((resolve, reject) => {
      sim.stdout.on('data', (c: Buffer) => c.toString().includes('running') && resolve());
      sim.once('exit', (code) => reject(new Error(`heartbeat simulator exited (${code})`)));
    });
    await new Promise((r) => setTimeout(r, 1500)); // every agent heartbeated once
    const before = fabric.natsHeartbeats!.stats.accepted;
    const value = await cpuShare(ms);
    const accepted = fabric.natsHeartbeats!.stats.accepted - before;
    await fabric.natsHeartbeats!.close();
    // Baseline: a bare subscriber of the same subjects, counting.
    const nc = await connect({ servers: server.url });
    let count = 0;
    nc.subscribe(`fabric.${ns}.hb.*`, {
      callback: () => {
        count++;
      },
    });
    await nc.flush();
    const baseline = await cpuShare(ms);
    await nc.close();
    if (count === 0) throw new Error('the baseline subscriber received no heartbeats');
    return [value, baseline, accepted / (ms / 1000)];
  } finally {
    sim.kill('SIGKILL');
    await fabric.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Case groups to run: all, or those named in BENCH_NATS_CASES (comma-separated). */
function wanted(group: string): boolean {
  const only = process.env.BENCH_NATS_CASES;
  return !only || only.split(',').includes(group);
}

/** Diagnostic case groups, run only when BENCH_NATS_CASES names them (never by default). */
function asked(group: string): boolean {
  return (process.env.BENCH_NATS_CASES ?? '').split(',').includes(group);
}

/** A fixed enqueue-to-start rate (BENCH_NATS_RATE), instead of half the measured one. */
const FIXED_RATE = Number(process.env.BENCH_NATS_RATE) || undefined;

const suite: BenchSuite = {
  name: 'nats',
  async run(ctx: BenchContext): Promise<void> {
    const server = await startNatsServer();
    try {
      let rate = 0;
      const needsRate = wanted('latency') || asked('latency-remote');
      if (wanted('dispatch') || (needsRate && FIXED_RATE === undefined)) {
        rate = await dispatchCase(ctx, server);
      }
      if (wanted('latency')) await latencyCase(ctx, server, FIXED_RATE ?? rate / 2);
      if (asked('latency-remote')) await remoteLatencyCase(ctx, server, FIXED_RATE ?? rate / 2);
      if (wanted('heartbeats')) await heartbeatsCase(ctx, server);
    } finally {
      await server.close();
    }
  },
};

/** `dispatch-jetstream`; returns the project's measured rate (tasks/s). */
async function dispatchCase(ctx: BenchContext, server: NatsServer): Promise<number> {
  const n = ctx.quick ? 1000 : 4000;
  const rounds = ctx.quick ? 1 : 3;
  const values: number[] = [];
  const baselines: number[] = [];
  // A warm-up round on both sides, not counted: the first round otherwise measures the
  // project's cold code (JIT, first consumers) against an already warm client.
  await dispatch(server, Math.round(n / 2), -1);
  for (let r = 0; r < rounds; r++) {
    const [v, b] = await dispatch(server, n, r);
    values.push(v);
    baselines.push(b);
  }
  const mid = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
  const rate = mid(values);
  ctx.report({
    suite: 'nats',
    case: 'dispatch-jetstream',
    unit: 'tasks/s',
    value: rate,
    baseline: 'raw JetStream publish (msg ids) + consume + ack, same server',
    baselineValue: mid(baselines),
    higherIsBetter: true,
    goal: 'ratio >= 0.5',
  });
  return rate;
}

/** `enqueue-to-start` at `rate` tasks/s. */
async function latencyCase(ctx: BenchContext, server: NatsServer, rate: number): Promise<void> {
  const [project, raw] = await enqueueToStart(server, rate, ctx.quick ? 1 : 3);
  reportLatency(ctx, 'enqueue-to-start', 'diagnostic: ', rate, project, raw);
}

/** The diagnostic `enqueue-to-start` with the worker in its own process, at `rate` tasks/s. */
async function remoteLatencyCase(
  ctx: BenchContext,
  server: NatsServer,
  rate: number,
): Promise<void> {
  const [project, raw] = await enqueueToStartRemote(server, rate, ctx.quick ? 1 : 3);
  const label = 'diagnostic: worker in its own process';
  reportLatency(ctx, `enqueue-to-start (${label})`, `${label}, `, rate, project, raw);
}

/**
 * Reports an `enqueue-to-start` measurement: p50 against the raw baseline's, both p99s beside.
 * With a fixed rate (BENCH_NATS_RATE) the case is named `enqueue-to-start (<fixedPrefix>fixed
 * N/s)` instead of `name`.
 */
function reportLatency(
  ctx: BenchContext,
  name: string,
  fixedPrefix: string,
  rate: number,
  project: Latency,
  raw: Latency,
): void {
  ctx.report({
    suite: 'nats',
    case:
      FIXED_RATE === undefined
        ? name
        : `enqueue-to-start (${fixedPrefix}fixed ${Math.round(rate)}/s)`,
    unit: 'µs p50',
    value: project.percentileUs(50),
    baseline: `raw JetStream publish → consumer at the same rate (${Math.round(rate)}/s)`,
    baselineValue: raw.percentileUs(50),
    higherIsBetter: false,
    p50Us: project.percentileUs(50),
    p99Us: project.percentileUs(99),
    baselineP50Us: raw.percentileUs(50),
    baselineP99Us: raw.percentileUs(99),
    goal: 'p50 < 1 ms, p99 < 10 ms',
  });
}

/** `heartbeats`: the sidecar's CPU share with 10 000 agents at 1 Hz. */
async function heartbeatsCase(ctx: BenchContext, server: NatsServer): Promise<void> {
  const agents = ctx.quick ? 2000 : 10_000;
  const [cpu, bare, perSecond] = await heartbeats(server, agents, ctx.quick ? 2000 : 5000);
  ctx.report({
    suite: 'nats',
    case: `heartbeats (${agents} agents @1Hz, ${Math.round(perSecond)}/s checked)`,
    unit: 'CPU share of one core',
    value: Math.round(cpu * 1000) / 1000,
    baseline: 'bare subscriber counting the same heartbeats',
    baselineValue: Math.round(bare * 1000) / 1000,
    higherIsBetter: false,
    goal: '< 0.25 of one core at 10k agents',
  });
}

export default suite;

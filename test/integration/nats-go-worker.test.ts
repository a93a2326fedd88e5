/**
 * examples/nats-go: a worker in Go, written from the README's NATS wire protocol with the Go NATS
 * client only, against a sidecar started from the example's config and a real nats-server — the
 * proof that a worker in another language needs nothing of this repository.
 *
 * Needs Go and Debian's nats.go (`golang-go`, `golang-github-nats-io-go-nats-dev`; .ci/run
 * installs them). With `CI` set a missing toolchain fails the run; elsewhere the tests are
 * skipped without it.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { jetstreamManager } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { AgentStatus } from '../../src/agent.js';
import { parseSidecarConfig } from '../../src/server/config-file.js';
import { Sidecar } from '../../src/server/sidecar.js';
import { natsNames } from '../../src/transport/nats/subjects.js';
import { TaskStatus } from '../../src/task.js';
import { encodeJson, endedMac } from '../../src/transport/nats/wire.js';
import { closeSidecar, tempDir, until } from '../fixtures/gateway/harness.js';
import { startAnswerForger } from '../fixtures/nats/answer-forger.js';
import { readReports } from '../fixtures/nats/report-reader.js';
import { describeNats, natsServerPerSuite } from '../fixtures/nats-server.js';

const root = fileURLToPath(new URL('../../', import.meta.url));
const WORKER = join(root, 'examples/nats-go/worker.go');
const CONFIG = join(root, 'examples/nats-go/fabric.yaml');
/** Debian's nats.go source tree (package golang-github-nats-io-go-nats-dev). */
const GOPATH = '/usr/share/gocode';
const goNats = (() => {
  if (!existsSync(join(GOPATH, 'src/github.com/nats-io/nats.go'))) return false;
  try {
    execFileSync('go', ['version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
})();
const runGo = goNats || process.env.CI !== undefined;

/** A worker process and the lines it printed so far. */
interface GoWorker {
  child: ChildProcess;
  lines: string[];
  stderr: () => string;
  exited: Promise<number | null>;
}

describeNats('examples/nats-go: a worker in Go on the wire protocol alone', () => {
  const server = natsServerPerSuite();
  const dir = tempDir('nats-go');
  const bin = join(dir, 'fabric-go-worker');
  const workers: GoWorker[] = [];
  let sidecar: Sidecar | undefined;

  beforeAll(async () => {
    if (!runGo) return;
    // Built as the example's README says, against Debian's nats.go.
    execFileSync('go', ['build', '-o', bin, WORKER], {
      env: { ...process.env, GO111MODULE: 'off', GOPATH, GOCACHE: join(dir, 'go-cache') },
      stdio: 'pipe',
    });
    // The example's config as it is, on this suite's nats-server; AckWait 2 s so that a task of
    // 5 s needs the worker's in-progress acks.
    const config = parseSidecarConfig(readFileSync(CONFIG, 'utf8'), CONFIG, {
      env: { NATS_URL: server().url },
      cwd: dir,
    });
    sidecar = await Sidecar.start({
      config: { ...config, nats: { ...config.nats!, ackWaitSeconds: 2 } },
      http: false,
    });
  }, 120_000);

  afterAll(async () => {
    for (const w of workers) w.child.kill('SIGKILL');
    await closeSidecar(sidecar);
    await rm(dir, { recursive: true, force: true });
  });

  function startWorker(env: Record<string, string>): GoWorker {
    const child = spawn(bin, [], {
      env: {
        PATH: process.env.PATH ?? '',
        NATS_URL: server().url,
        FABRIC_NAMESPACE: 'demo',
        HEARTBEAT_SECONDS: '1',
        ...env,
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const lines: string[] = [];
    let pending = '';
    let stderr = '';
    child.stdout!.setEncoding('utf8').on('data', (chunk: string) => {
      pending += chunk;
      const parts = pending.split('\n');
      pending = parts.pop()!;
      lines.push(...parts);
    });
    child.stderr!.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
    const w = { child, lines, stderr: () => stderr, exited };
    workers.push(w);
    return w;
  }

  async function agentWorker(name: string) {
    const fabric = sidecar!.fabric!;
    const agent = await fabric.spawn({ name, model: 'm', executor: 'nats', poolId: 'build' });
    const w = startWorker({
      AGENT_ID: agent.id,
      AGENT_CREDENTIAL: agent.credential,
      POOL_ID: 'build',
    });
    await until(() => w.lines.includes('ready'), 20_000);
    return { agent, worker: w };
  }

  it.runIf(runGo)(
    'runs pool and pinned tasks with its results, reports a failure with its code, and keeps its agent healthy',
    async () => {
      const fabric = sidecar!.fabric!;
      const { agent, worker } = await agentWorker('go-1');
      // Its heartbeats (HMAC of the credential's hash) made the agent healthy.
      await until(async () => (await fabric.getAgentInfo(agent.id)).status === AgentStatus.HEALTHY);
      const texts = ['one', 'one two', 'a b c', 'naïve “quoted” 🚀 words', '  spaced   out  '];
      const pool = await Promise.all(
        texts.map((text) => fabric.scheduleToPool('build', 'word-count', { text })),
      );
      const pinned = await Promise.all(
        ['pinned task', 'x'].map((text) =>
          fabric.schedule({ agentId: agent.id, taskType: 'word-count', payload: { text } }),
        ),
      );
      const done = await Promise.all(
        [...pool, ...pinned].map((t) => fabric.waitForTask(t.id, { timeoutSeconds: 30 })),
      );
      expect(done.map((t) => [t.status, t.attempt, t.assignedAgentId])).toEqual(
        done.map(() => [TaskStatus.COMPLETED, 1, agent.id]),
      );
      expect(done.map((t) => t.result)).toEqual(
        [1, 2, 3, 4, 2, 2, 1].map((words) => ({ words, by: 'go' })),
      );
      // The worker acks each message once its outcome was answered, then says so.
      await until(() => done.every((t) => worker.lines.includes(`done ${t.id} 1 complete`)));
      for (const t of done) expect(worker.lines).toContain(`started ${t.id} 1`);
      // A failure is the worker's own error, not retried (it says so), whatever maxAttempts.
      const failing = await fabric.scheduleToPool('build', 'fail', null, { maxAttempts: 3 });
      expect(await fabric.waitForTask(failing.id, { timeoutSeconds: 30 })).toMatchObject({
        status: TaskStatus.FAILED,
        attempt: 1,
        error: { code: 'BAD_INPUT', message: 'this task always fails' },
      });
      // Its error message holds the type: characters Go's JSON writes escaped (<, &, >) and
      // others beyond ASCII, which the proof's canonical content has unescaped — the sidecar
      // takes the report only if the Go worker's digest is the one it computes.
      const type = 'no-such-type <a&b> “é” 🚀';
      const unknown = await fabric.scheduleToPool('build', type, null);
      expect(await fabric.waitForTask(unknown.id, { timeoutSeconds: 30 })).toMatchObject({
        status: TaskStatus.FAILED,
        attempt: 1,
        error: { code: 'UNKNOWN_TASK_TYPE', message: `no handler for "${type}"` },
      });
      expect(worker.stderr()).toBe('');
    },
    90_000,
  );

  it.runIf(runGo)(
    'holds a task longer than AckWait with in-progress acks, and stops a cancelled one',
    async () => {
      const fabric = sidecar!.fabric!;
      // Two workers of the pool: a message held past AckWait without in-progress acks would be
      // handed to the other one's pull.
      await agentWorker('go-2a');
      await agentWorker('go-2b');
      const printed = (line: string): boolean => workers.some((w) => w.lines.includes(line));
      const names = natsNames('demo');
      const nc = await connect({ servers: server().url });
      const jsm = await jetstreamManager(nc);
      const redelivered = async (): Promise<number> =>
        (await jsm.consumers.info(names.stream, names.poolConsumer('build'))).num_redelivered;
      const before = await redelivered();
      // 5 s against an AckWait of 2 s: without in-progress acks JetStream would hand the
      // message out again, and the second take-up would count the attempt lost.
      const long = await fabric.scheduleToPool('build', 'sleep', { ms: 5000 });
      // Ended notices for it from a client that cannot read the task (no lease): without a
      // MAC, with a made-up one, with one under a guessed lease. The worker ignores them.
      await until(() => printed(`started ${long.id} 1`), 20_000);
      const forged = { taskId: long.id, attempt: 1, code: 'FABRIC_ERR_CANCELLED', message: 'x' };
      for (const mac of [undefined, 'A'.repeat(43), endedMac('guess', long.id, 1)]) {
        nc.publish(names.ended(long.id), encodeJson({ ...forged, mac }));
      }
      await nc.flush();
      expect(await fabric.waitForTask(long.id, { timeoutSeconds: 30 })).toMatchObject({
        status: TaskStatus.COMPLETED,
        attempt: 1,
        result: { slept: 5000 },
      });
      expect(await redelivered()).toBe(before);
      // Cancelled while it runs: the sidecar's ended notice stops it in the worker, which
      // terminates the message instead of reporting.
      const stuck = await fabric.scheduleToPool('build', 'sleep', { ms: 60_000 });
      await until(() => printed(`started ${stuck.id} 1`), 20_000);
      await fabric.cancelTask(stuck.id);
      await until(() => printed(`aborted ${stuck.id} 1`), 20_000);
      expect((await fabric.getTask(stuck.id)).status).toBe(TaskStatus.CANCELLED);
      // Nothing is left in the work queue.
      await until(async () => (await jsm.streams.info(names.stream)).state.messages === 0);
      await nc.close();
    },
    90_000,
  );

  it.runIf(runGo)(
    'finds the consumer of a pool whose id needs escaping, as the README spells it',
    async () => {
      const fabric = sidecar!.fabric!;
      // A dot, a space, Latin-1, U+4E2D and an emoji (a surrogate pair in UTF-16).
      const poolId = 'ci.é 中🚀';
      await fabric.createPool({ poolId, model: 'm', executor: 'nats', minAgents: 0 });
      const agent = await fabric.spawn({ name: 'go-esc', model: 'm', executor: 'nats', poolId });
      const w = startWorker({
        AGENT_ID: agent.id,
        AGENT_CREDENTIAL: agent.credential,
        POOL_ID: poolId,
      });
      await until(() => w.lines.includes('ready'), 20_000);
      const t = await fabric.scheduleToPool(poolId, 'word-count', { text: 'escaped pool' });
      expect(await fabric.waitForTask(t.id, { timeoutSeconds: 30 })).toMatchObject({
        status: TaskStatus.COMPLETED,
        assignedAgentId: agent.id,
        result: { words: 2, by: 'go' },
      });
      expect(natsNames('demo').poolConsumer(poolId)).toBe('pool-ci_2e_e9_20__4e2d__d83d__de80');
    },
    60_000,
  );

  it.runIf(runGo)(
    'stops when its agent is terminated, giving the message it pulled back to the pool',
    async () => {
      const fabric = sidecar!.fabric!;
      const poolId = 'solo';
      await fabric.createPool({ poolId, model: 'm', executor: 'nats', minAgents: 0 });
      const doomed = await fabric.spawn({ name: 'doomed', model: 'm', executor: 'nats', poolId });
      // The pool's other agent: dispatch goes on through it, and its worker comes later.
      const heir = await fabric.spawn({
        name: 'heir',
        model: 'm',
        executor: 'nats',
        poolId,
        heartbeat: 'auto',
      });
      const w = startWorker({
        AGENT_ID: doomed.id,
        AGENT_CREDENTIAL: doomed.credential,
        POOL_ID: poolId,
      });
      await until(() => w.lines.includes('ready'), 20_000);
      await fabric.terminate(doomed.id);
      const t = await fabric.scheduleToPool(poolId, 'word-count', { text: 'not lost' });
      expect(await w.exited).toBe(1);
      expect(w.stderr()).toMatch(
        /the fabric takes no reports from agent .*FABRIC_ERR|may not report/,
      );
      // Not terminated: the message is back in the stream, the attempt still out.
      expect((await fabric.getTask(t.id)).status).toBe(TaskStatus.SCHEDULED);
      const heirs = startWorker({
        AGENT_ID: heir.id,
        AGENT_CREDENTIAL: heir.credential,
        POOL_ID: poolId,
      });
      expect(await fabric.waitForTask(t.id, { timeoutSeconds: 30 })).toMatchObject({
        status: TaskStatus.COMPLETED,
        attempt: 1,
        result: { words: 2, by: 'go' },
      });
      await until(() => heirs.lines.includes(`done ${t.id} 1 complete`));
    },
    60_000,
  );

  it.runIf(runGo)(
    'acts on no forged answer on its reply subjects: every task completes once, nothing is lost',
    async () => {
      // A client that answers the worker's heartbeats and reports ahead of the sidecar (another
      // pool, refusals), without a MAC, with a wrong one, and with genuine answers replayed.
      const forger = await startAnswerForger(server().url, 'demo');
      try {
        const fabric = sidecar!.fabric!;
        // Its first heartbeat's forged answer names another pool: it would stop there.
        const { agent, worker } = await agentWorker('go-forged');
        const pool = await Promise.all(
          ['a', 'a b', 'a b c'].map((text) =>
            fabric.scheduleToPool('build', 'word-count', { text }),
          ),
        );
        const pinned = await fabric.schedule({
          agentId: agent.id,
          taskType: 'word-count',
          payload: { text: 'w x y z' },
        });
        const tasks = [...pool, pinned];
        const done = await Promise.all(
          tasks.map((t) => fabric.waitForTask(t.id, { timeoutSeconds: 30 })),
        );
        expect(done.map((t) => [t.status, t.attempt, t.result])).toEqual(
          [1, 2, 3, 4].map((words) => [TaskStatus.COMPLETED, 1, { words, by: 'go' }]),
        );
        // Each ran once (a pool task on any of the pool's workers), its outcome accepted: no
        // refusal taken for the sidecar's answer.
        const lines = () => workers.flatMap((w) => w.lines);
        for (const t of done) {
          await until(() => lines().includes(`done ${t.id} 1 complete`));
          expect(lines().filter((l) => l === `started ${t.id} 1`)).toHaveLength(1);
        }
        expect(lines().filter((l) => l === `done ${pinned.id} 1 complete`)).toEqual(
          worker.lines.filter((l) => l === `done ${pinned.id} 1 complete`),
        );
        expect(lines().filter((l) => l.startsWith('refused'))).toEqual([]);
        expect(forger.forged.start ?? 0).toBeGreaterThan(0);
        expect(forger.forged.complete ?? 0).toBeGreaterThan(0);
        expect(forger.forged.hb ?? 0).toBeGreaterThan(0);
        expect(worker.stderr()).toBe('');
        worker.child.kill('SIGTERM');
        await worker.exited;
      } finally {
        await forger.close();
      }
    },
    90_000,
  );

  it.runIf(runGo)(
    "a worker with another agent's credential, an agent nobody knows, or a pool not its agent's, stops at its first heartbeat",
    async () => {
      const fabric = sidecar!.fabric!;
      const victim = await fabric.spawn({
        name: 'go-3',
        model: 'm',
        executor: 'nats',
        poolId: 'build',
      });
      const other = await fabric.spawn({ name: 'go-4', model: 'm', executor: 'nats' });
      const forged = startWorker({ AGENT_ID: victim.id, AGENT_CREDENTIAL: other.credential });
      expect(await forged.exited).toBe(1);
      // The sidecar's refusal carries a MAC under the agent's real credential hash, which the
      // worker cannot check: to it, no sidecar answered.
      expect(forged.stderr()).toMatch(/no sidecar answered with a valid MAC .*a wrong credential/);
      expect(forged.lines).not.toContain('ready');
      expect((await fabric.getAgentInfo(victim.id)).status).toBe(AgentStatus.STARTING);
      const nobody = startWorker({
        AGENT_ID: '00000000-0000-4000-8000-000000000000',
        AGENT_CREDENTIAL: other.credential,
      });
      expect(await nobody.exited).toBe(1);
      expect(nobody.stderr()).toMatch(/no sidecar answered/);
      // Its own credential, but a pool its agent is not in: it stops before pulling.
      const astray = startWorker({
        AGENT_ID: other.id,
        AGENT_CREDENTIAL: other.credential,
        POOL_ID: 'build',
      });
      expect(await astray.exited).toBe(1);
      expect(astray.stderr()).toMatch(/is not in pool "build" \(its pool: null\)/);
      expect(astray.lines).not.toContain('ready');
    },
    60_000,
  );

  it.runIf(runGo)(
    'writes canonical JSON as the sidecar does: the shared RFC 8785 vectors pass in Go',
    () => {
      // examples/nats-go/canonical_test.go reads test/fixtures/nats/canonical-json.json, the
      // vectors test/unit/nats-canonical-json.test.ts holds the sidecar's canonicalJson to.
      const out = execFileSync('go', ['test', '-v', 'worker.go', 'canonical_test.go'], {
        cwd: join(root, 'examples/nats-go'),
        env: { ...process.env, GO111MODULE: 'off', GOPATH, GOCACHE: join(dir, 'go-cache') },
        encoding: 'utf8',
      });
      expect(out).toMatch(/--- PASS: TestCanonicalVectors/);
    },
    120_000,
  );

  it.runIf(runGo)(
    'numbers the reports of each take-up under their proofs (start 1, outcome 2)',
    async () => {
      const fabric = sidecar!.fabric!;
      const { nc, seen } = await readReports(server().url, 'demo', fabric.natsExecutor!.sidecarId);
      try {
        const { agent } = await agentWorker('go-counter');
        const t = await fabric.schedule({
          agentId: agent.id,
          taskType: 'word-count',
          payload: { text: 'counted words' },
        });
        expect(await fabric.waitForTask(t.id, { timeoutSeconds: 30 })).toMatchObject({
          status: TaskStatus.COMPLETED,
          result: { words: 2, by: 'go' },
        });
        await nc.flush();
        // The sidecar took both: the proof covers the counter the Go worker sent.
        const mine = seen.filter((r) => r.taskId === t.id);
        expect(mine.map((r) => [r.kind, r.counter])).toEqual([
          ['start', 1],
          ['complete', 2],
        ]);
        expect(new Set(mine.map((r) => r.take)).size).toBe(1);
      } finally {
        await nc.close();
      }
    },
    60_000,
  );
  it.runIf(runGo)(
    'stops when a heartbeat is refused with status TERMINATED, read from the field its MAC covers',
    async () => {
      const fabric = sidecar!.fabric!;
      // No pool: it pulls only its own tasks, and there are none.
      const agent = await fabric.spawn({ name: 'go-hb-status', model: 'm', executor: 'nats' });
      const w = startWorker({ AGENT_ID: agent.id, AGENT_CREDENTIAL: agent.credential });
      await until(() => w.lines.includes('ready'), 20_000);
      await fabric.terminate(agent.id, { drainTimeoutSeconds: 0.1 });
      // Its next heartbeat is refused FABRIC_ERR_AGENT_UNAVAILABLE with `status` TERMINATED,
      // which the answer's MAC covers: a worker that left the status out of the MAC would take
      // the refusal for a forgery and run on.
      expect(await w.exited).toBe(1);
      expect(w.stderr()).toMatch(
        /the fabric takes no reports from agent .*: FABRIC_ERR_AGENT_UNAVAILABLE: .* \(status TERMINATED\)/,
      );
    },
    60_000,
  );
});

/**
 * Faults against a real nats-server: a worker process killed mid-task, the server restarted
 * under load. Every task ends exactly once from the fabric's point of view.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { expect, it } from 'vitest';
import { AgentFabric } from '../../src/fabric.js';
import { NatsWorker } from '../../src/transport/nats/nats-worker.js';
import { TaskStatus } from '../../src/task.js';
import { TSX, until } from '../fixtures/gateway/harness.js';
import { describeNats, natsServerPerSuite } from '../fixtures/nats-server.js';

const WORKER = fileURLToPath(new URL('../fixtures/nats/worker-process.ts', import.meta.url));

/** The worker of `test/fixtures/nats/worker-process.ts` in a child process, and its stdout. */
function workerProcess(
  url: string,
  namespace: string,
  agent: { id: string; credential: string },
  poolId?: string,
): { child: ChildProcess; out: () => string } {
  const child = spawn(process.execPath, ['--import', TSX, WORKER], {
    env: {
      ...process.env,
      NATS_URL: url,
      NATS_NAMESPACE: namespace,
      AGENT_ID: agent.id,
      AGENT_CREDENTIAL: agent.credential,
      ...(poolId === undefined ? {} : { POOL_ID: poolId }),
    },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  let out = '';
  child.stdout!.on('data', (c: Buffer) => (out += c.toString()));
  return { child, out: () => out };
}

describeNats('NATS faults', () => {
  const suiteServer = natsServerPerSuite();

  it("a worker that dies on every attempt: the task FAILS after exactly its maxAttempts (not the fabric's default)", async () => {
    const nats = { url: suiteServer().url, namespace: 'attempts', ackWaitSeconds: 1 };
    // The fabric's default is 3 attempts; this task asks for 4.
    const fabric = new AgentFabric(
      { heartbeatIntervalSeconds: 60, defaultMaxAttempts: 3 },
      { nats },
    );
    await fabric.start();
    const agent = await fabric.spawn({ name: 'd', model: 'm', executor: 'nats' });
    await fabric.natsExecutor!.consumersReady();
    await fabric.heartbeat(agent.id);
    const attempts: number[] = [];
    fabric.scheduler.events.on('task.started', (t) => attempts.push(t.attempt));
    const task = await fabric.schedule({
      agentId: agent.id,
      taskType: 'die',
      maxAttempts: 4,
      timeoutSeconds: 120,
    });
    const workers: ReturnType<typeof workerProcess>[] = [];
    try {
      // One worker process after another: each runs the task's message once and dies.
      while ((await fabric.getTask(task.id)).status !== TaskStatus.FAILED) {
        expect(workers.length).toBeLessThan(8);
        const w = workerProcess(nats.url, nats.namespace, agent);
        workers.push(w);
        const finished = fabric.waitForTask(task.id).then(() => undefined);
        await Promise.race([new Promise((r) => w.child.once('exit', r)), finished]);
      }
      const runs = workers.flatMap((w) => w.out().match(/^started .*$/gm) ?? []);
      expect(runs).toEqual([1, 2, 3, 4].map((n) => `started ${task.id} ${n}`));
      const done = await fabric.getTask(task.id);
      expect(done).toMatchObject({ status: TaskStatus.FAILED, attempt: 4 });
      expect(done.error?.code).toBe('FABRIC_ERR_AGENT_UNAVAILABLE');
      expect(attempts).toEqual([1, 2, 3, 4]);
      // The last worker (alive) was refused the message: it never ran a fifth time.
      expect(workers.at(-1)!.child.exitCode).toBeNull();
    } finally {
      for (const w of workers) if (w.child.exitCode === null) w.child.kill('SIGKILL');
      await fabric.close();
    }
  }, 90_000);

  it('a worker killed (SIGKILL) mid-task: the task is retried as attempt 2 and completes once', async () => {
    const nats = { url: suiteServer().url, namespace: 'kill', ackWaitSeconds: 1 };
    const fabric = new AgentFabric({ heartbeatIntervalSeconds: 60 }, { nats });
    await fabric.start();
    await fabric.createPool({ poolId: 'p', model: 'm', executor: 'nats', minAgents: 0 });
    const victim = await fabric.spawn({ name: 'v', model: 'm', executor: 'nats', poolId: 'p' });
    const rescuer = await fabric.spawn({ name: 'r', model: 'm', executor: 'nats', poolId: 'p' });
    await fabric.natsExecutor!.consumersReady();
    let completions = 0;
    fabric.scheduler.events.on('task.finished', () => completions++);
    const worker1 = workerProcess(suiteServer().url, 'kill', victim, 'p');
    const child = worker1.child;
    try {
      await until(() => worker1.out().includes('ready'), 30_000);
      await fabric.heartbeat(victim.id);
      const task = await fabric.scheduleToPool('p', 'hang', null, { timeoutSeconds: 60 });
      await until(() => worker1.out().includes(`started ${task.id} 1`), 20_000);
      expect((await fabric.getTask(task.id)).status).toBe(TaskStatus.RUNNING);
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGKILL');
      await exited;
      // After AckWait the message comes back to the rescuer (another agent of the pool); its
      // start tells the sidecar the first worker is lost: attempt 1 counts, attempt 2 runs.
      const worker = await NatsWorker.connect({
        nats,
        agentId: rescuer.id,
        credential: rescuer.credential,
        poolId: 'p',
      });
      const stop = new AbortController();
      const running = worker.run(
        { hang: (_p, ctx) => ({ rescuedAttempt: ctx.attempt }) },
        { signal: stop.signal },
      );
      const done = await fabric.waitForTask(task.id, { timeoutSeconds: 20 });
      expect(done.status).toBe(TaskStatus.COMPLETED);
      expect(done.result).toEqual({ rescuedAttempt: 2 });
      expect(done.attempt).toBe(2);
      stop.abort();
      await running;
      await worker.close();
      expect(completions).toBe(1);
    } finally {
      if (child.exitCode === null) child.kill('SIGKILL');
      await fabric.close();
    }
  });

  it('nats-server restarted mid-load: no queued task is lost, each completes once', async () => {
    const nats = { url: suiteServer().url, namespace: 'restart', ackWaitSeconds: 2 };
    const fabric = new AgentFabric(
      { heartbeatIntervalSeconds: 60, maxQueueDepth: 10_000, maxConcurrentTasksPerAgent: 50 },
      { nats },
    );
    await fabric.start();
    await fabric.createPool({ poolId: 'p', model: 'm', executor: 'nats', minAgents: 0 });
    const agent = await fabric.spawn({ name: 'w', model: 'm', executor: 'nats', poolId: 'p' });
    await fabric.natsExecutor!.consumersReady();
    await fabric.heartbeat(agent.id);
    const completed = new Map<string, number>();
    fabric.scheduler.events.on('task.finished', (t) =>
      completed.set(t.id, (completed.get(t.id) ?? 0) + 1),
    );
    const worker = await NatsWorker.connect({
      nats,
      agentId: agent.id,
      credential: agent.credential,
      poolId: 'p',
      concurrency: 8,
      reportTimeoutMs: 1000,
    });
    const stop = new AbortController();
    let runs = 0;
    const running = worker.run(
      {
        work: async (p) => {
          runs++;
          await new Promise((r) => setTimeout(r, 20));
          return p;
        },
      },
      { signal: stop.signal },
    );
    const total = 300;
    const ids: string[] = [];
    for (let i = 0; i < total; i++) ids.push((await fabric.scheduleToPool('p', 'work', i)).id);
    await until(() => completed.size >= 20, 20_000);
    await suiteServer().stop();
    // Mid-load: tasks were still queued in the scheduler and in the stream when it stopped.
    expect(completed.size).toBeLessThan(total - 50);
    await new Promise((r) => setTimeout(r, 500));
    await suiteServer().restart();
    const done = await Promise.all(ids.map((id) => fabric.waitForTask(id, { timeoutSeconds: 60 })));
    expect(done.filter((t) => t.status !== TaskStatus.COMPLETED)).toEqual([]);
    expect(done.map((t) => t.result)).toEqual(ids.map((_, i) => i));
    expect(completed.size).toBe(total);
    expect([...completed.values()].every((n) => n === 1)).toBe(true);
    expect(runs).toBeGreaterThanOrEqual(total);
    stop.abort();
    await running;
    await worker.close();
    await fabric.close();
  }, 90_000);
});

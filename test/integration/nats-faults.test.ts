/**
 * Faults against a real nats-server: a worker process killed mid-task, the server restarted
 * under load. Every task ends exactly once from the fabric's point of view.
 */
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { expect, it } from 'vitest';
import { AgentFabric } from '../../src/fabric.js';
import { NatsWorker } from '../../src/transport/nats/nats-worker.js';
import { TaskStatus } from '../../src/task.js';
import { TSX, until } from '../fixtures/gateway/harness.js';
import { describeNats, natsServerPerSuite } from '../fixtures/nats-server.js';

const WORKER = fileURLToPath(new URL('../fixtures/nats/worker-process.ts', import.meta.url));

describeNats('NATS faults', () => {
  const suiteServer = natsServerPerSuite();

  it('a worker killed (SIGKILL) mid-task: the task is redelivered and completes once', async () => {
    const nats = { url: suiteServer().url, namespace: 'kill', ackWaitSeconds: 1 };
    const fabric = new AgentFabric({ heartbeatIntervalSeconds: 60 }, { nats });
    await fabric.start();
    await fabric.createPool({ poolId: 'p', model: 'm', executor: 'nats', minAgents: 0 });
    const victim = await fabric.spawn({ name: 'v', model: 'm', executor: 'nats', poolId: 'p' });
    const rescuer = await fabric.spawn({ name: 'r', model: 'm', executor: 'nats', poolId: 'p' });
    await fabric.natsExecutor!.consumersReady();
    let completions = 0;
    fabric.scheduler.events.on('task.finished', () => completions++);
    const child = spawn(process.execPath, ['--import', TSX, WORKER], {
      env: {
        ...process.env,
        NATS_URL: suiteServer().url,
        NATS_NAMESPACE: 'kill',
        AGENT_ID: victim.id,
        AGENT_CREDENTIAL: victim.credential,
        POOL_ID: 'p',
      },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let out = '';
    child.stdout.on('data', (c: Buffer) => (out += c.toString()));
    try {
      await until(() => out.includes('ready'), 30_000);
      await fabric.heartbeat(victim.id);
      const task = await fabric.scheduleToPool('p', 'hang', null, { timeoutSeconds: 60 });
      await until(() => out.includes(`started ${task.id} 1`), 20_000);
      expect((await fabric.getTask(task.id)).status).toBe(TaskStatus.RUNNING);
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGKILL');
      await exited;
      // The rescuer (another agent of the pool) gets the same attempt after AckWait.
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
      expect(done.result).toEqual({ rescuedAttempt: 1 });
      expect(done.attempt).toBe(1);
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

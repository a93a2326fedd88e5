/**
 * kill -9 of a sidecar after it published a task and before it heard (and committed) the task's
 * start: a worker begins a first delivery once its `start` is written, without waiting for the
 * answer, so the attempt may be running while the state file still says SCHEDULED. Restarted on
 * that file, the sidecar must let that attempt go on — the worker's start, sent again, is
 * accepted — and not dispatch a new attempt that would run the handler a second time.
 * Deterministic: the worker only connects once the sidecar is dead.
 */
import { jetstreamManager } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import { afterAll, expect, it } from 'vitest';
import { NatsWorker } from '../../src/transport/nats/nats-worker.js';
import { natsNames } from '../../src/transport/nats/subjects.js';
import { until } from '../fixtures/gateway/harness.js';
import { describeNats, natsServerPerSuite } from '../fixtures/nats-server.js';
import { api, natsSidecarWithAgent, onDisk } from '../fixtures/nats/state-sidecar.js';
import { cleanUp, serve, stop } from '../fixtures/state/serve.js';

afterAll(cleanUp);

describeNats('NATS: a sidecar killed before it heard a task’s start', () => {
  const suiteServer = natsServerPerSuite();

  it('after a restart, an attempt a worker began while the sidecar was down runs once, as that attempt', async () => {
    const namespace = 'k9s';
    const nats = { url: suiteServer().url, namespace };
    // AckWait 30 s: a message stored less than 15 s ago is surely a first delivery, which the
    // worker begins without waiting for its start's answer.
    const set = await natsSidecarWithAgent({
      nats,
      ackWaitSeconds: 30,
      fabric: { heartbeatIntervalSeconds: 60 },
    });
    const { dir, statePath, agentId, credential } = set;
    let sidecar = set.sidecar;

    // The worker connects and heartbeats (the agent is then ready for tasks), not pulling yet.
    let worker: NatsWorker | undefined;
    await until(async () => {
      worker = await NatsWorker.connect({
        nats,
        agentId,
        credential,
        concurrency: 3,
        reportTimeoutMs: 500,
      }).catch(() => undefined); // its consumer is made right after the spawn
      return worker !== undefined;
    }, 20_000);
    expect((await worker!.heartbeat()).ok).toBe(true);

    const total = 3;
    const ids: string[] = [];
    for (let i = 0; i < total; i++) {
      const { task } = await api<{ task: { taskId: string } }>(
        sidecar.url,
        'FabricService/ScheduleTask',
        { agentId, taskType: 'count', payload: i },
      );
      ids.push(task.taskId);
    }
    // Published (acknowledged by JetStream) and not started: no worker yet.
    const nc = await connect({ servers: nats.url });
    const jsm = await jetstreamManager(nc);
    const stream = natsNames(namespace).stream;
    await until(async () => (await jsm.streams.info(stream)).state.messages === total, 10_000);
    expect([...onDisk(statePath).values()].map((t) => [t.status, t.attempt])).toEqual(
      ids.map(() => ['SCHEDULED', 1]),
    );
    expect(await stop(sidecar, 'SIGKILL')).toBeNull();

    // The worker takes the tasks up while the sidecar is down: it begins each at once (a first
    // delivery), its starts and completions unanswered, retried.
    const runs = new Map<string, number[]>();
    const stopWorker = new AbortController();
    const running = worker!.run(
      {
        count: (payload, ctx) => {
          runs.set(ctx.taskId, [...(runs.get(ctx.taskId) ?? []), ctx.attempt]);
          return payload;
        },
      },
      { signal: stopWorker.signal },
    );
    await until(() => runs.size === total, 10_000);
    expect(ids.map((id) => runs.get(id))).toEqual(ids.map(() => [1]));

    sidecar = await serve(dir);
    for (const id of ids) {
      await api(sidecar.url, 'FabricService/WaitTask', { taskId: id, timeout: '30s' });
    }
    // Each handler ran once, as attempt 1; the state file says the same.
    expect(ids.map((id) => runs.get(id))).toEqual(ids.map(() => [1]));
    const end = onDisk(statePath);
    expect(ids.map((id) => end.get(id))).toEqual(
      ids.map((_, i) => ({ status: 'COMPLETED', attempt: 1, result: i })),
    );
    // Nothing left in the work queue to run again, and each handler ran once: attempt 1.
    await until(async () => (await jsm.streams.info(stream)).state.messages === 0, 20_000);
    // Long enough for a second attempt's message to have been published and taken up.
    await new Promise((r) => setTimeout(r, 500));
    expect(ids.map((id) => runs.get(id))).toEqual(ids.map(() => [1]));
    expect(worker!.stats.started).toBe(total);

    stopWorker.abort();
    await running;
    expect(worker!.stats.completed).toBe(total);
    await worker!.close();
    await nc.close();
    await stop(sidecar, 'SIGTERM');
  }, 120_000);
});

/**
 * kill -9 of a sidecar (the real `agent-fabric serve`, SQLite state, `nats:` configured) while
 * its tasks sit in JetStream and a worker runs some of them; restarted on the same state file,
 * every task it acknowledged ends exactly once: each handler ran once (counted by the worker),
 * each task is COMPLETED with its own result in the state file, and the stream ends empty.
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

describeNats('NATS: a sidecar killed (SIGKILL) while its tasks sit in JetStream', () => {
  const suiteServer = natsServerPerSuite();

  it('after a restart on the same state, every acknowledged task ran and ended exactly once', async () => {
    const namespace = 'k9';
    const nats = { url: suiteServer().url, namespace };
    const set = await natsSidecarWithAgent({
      nats,
      ackWaitSeconds: 2,
      fabric: { maxConcurrentTasksPerAgent: 1000, heartbeatIntervalSeconds: 60 },
    });
    const { dir, statePath, agentId, credential } = set;
    let sidecar = set.sidecar;

    // The worker: counts each run of each task, two at a time, 60 ms each.
    const runs = new Map<string, number>();
    let worker: NatsWorker | undefined;
    await until(async () => {
      worker = await NatsWorker.connect({
        nats,
        agentId,
        credential,
        concurrency: 2,
        reportTimeoutMs: 1000,
      }).catch(() => undefined); // its consumer is made right after the spawn
      return worker !== undefined;
    }, 20_000);
    const stopWorker = new AbortController();
    const running = worker!.run(
      {
        count: async (payload, ctx) => {
          runs.set(ctx.taskId, (runs.get(ctx.taskId) ?? 0) + 1);
          await new Promise((r) => setTimeout(r, 60));
          return payload;
        },
      },
      { signal: stopWorker.signal },
    );

    const total = 60;
    const ids: string[] = [];
    for (let i = 0; i < total; i++) {
      const { task } = await api<{ task: { taskId: string } }>(
        sidecar.url,
        'FabricService/ScheduleTask',
        { agentId, taskType: 'count', payload: i },
      );
      ids.push(task.taskId);
    }
    await until(() => runs.size >= 8, 30_000);
    expect(await stop(sidecar, 'SIGKILL')).toBeNull();

    // What the killed sidecar left: tasks in the stream, some not finished in the state file.
    const nc = await connect({ servers: nats.url });
    const jsm = await jetstreamManager(nc);
    const stream = natsNames(namespace).stream;
    expect((await jsm.streams.info(stream)).state.messages).toBeGreaterThan(0);
    const left = onDisk(statePath);
    expect([...left.keys()].sort()).toEqual([...ids].sort()); // every acknowledged task is there
    const unfinished = [...left.values()].filter((t) => t.status !== 'COMPLETED');
    expect(unfinished.length).toBeGreaterThan(0);

    // Down for a while: the worker keeps pulling and retrying its reports meanwhile.
    await new Promise((r) => setTimeout(r, 1500));
    sidecar = await serve(dir);
    for (const id of ids) {
      await api(sidecar.url, 'FabricService/WaitTask', { taskId: id, timeout: '60s' });
    }

    const end = onDisk(statePath);
    expect(ids.map((id) => end.get(id)?.status)).toEqual(ids.map(() => 'COMPLETED'));
    expect(ids.map((id) => end.get(id)?.result)).toEqual(ids.map((_, i) => i));
    // Each handler ran exactly once: none lost, none run twice.
    expect(ids.map((id) => runs.get(id) ?? 0)).toEqual(ids.map(() => 1));
    expect(runs.size).toBe(total);
    expect(worker!.stats.started).toBe(total);
    // Nothing left behind in the work queue (acked, or refused and terminated).
    await until(async () => (await jsm.streams.info(stream)).state.messages === 0, 20_000);

    stopWorker.abort();
    await running;
    // Every completion was answered (read once the worker's last report came back).
    expect(worker!.stats.completed).toBe(total);
    await worker!.close();
    await nc.close();
    await stop(sidecar, 'SIGTERM');
  }, 120_000);
});

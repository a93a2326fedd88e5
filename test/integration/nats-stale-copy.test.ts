/**
 * A busy worker holds a pulled task in its buffer past AckWait; JetStream delivers the message
 * again to another worker, which starts it. When the first worker's slot frees, it takes up its
 * own (older) copy. The code before took that start as a redelivery: it ended the running
 * attempt as lost ("taken up again: its worker stopped acknowledging it") and, with
 * `maxAttempts: 1`, the task FAILED while a healthy worker was running it. Now the worker sends
 * the copy's JetStream delivery count with its `start`; the sidecar refuses the start of an
 * earlier delivery than the running take-up's without ending the attempt, and the refused worker
 * drops its copy unsettled — the message the other worker runs stays stored until that worker
 * acks it.
 *
 * Real parts: nats-server, a sidecar (`AgentFabric` with the nats executor) and two
 * `NatsWorker`s of one agent, each with one slot.
 */
import { expect, it } from 'vitest';
import { jetstreamManager } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import { AgentFabric } from '../../src/fabric.js';
import { TaskStatus } from '../../src/task.js';
import { NatsWorker } from '../../src/transport/nats/nats-worker.js';
import { until } from '../fixtures/gateway/harness.js';
import { describeNats, natsServerPerSuite } from '../fixtures/nats-server.js';

describeNats('NatsWorker: a stale copy held past AckWait by a busy worker', () => {
  const server = natsServerPerSuite();

  it('does not end the attempt another worker runs from a later delivery', async () => {
    const nats = { url: server().url, namespace: 'stale', ackWaitSeconds: 1 };
    const fabric = new AgentFabric(
      { heartbeatIntervalSeconds: 60, maxConcurrentTasksPerAgent: 10 },
      { nats },
    );
    await fabric.start();
    const nc = await connect({ servers: nats.url });
    const agent = await fabric.spawn({ name: 'w', model: 'm', executor: 'nats' });
    const executor = fabric.natsExecutor!;
    await executor.consumersReady();
    await fabric.heartbeat(agent.id);
    const jsm = await jetstreamManager(nc);
    const { stream } = executor.names;
    const worker = () =>
      NatsWorker.connect({ nats, agentId: agent.id, credential: agent.credential, concurrency: 1 });
    const a = await worker();
    const b = await worker();
    const stopA = new AbortController();
    const stopB = new AbortController();
    let releaseA!: () => void;
    const blockA = new Promise<void>((r) => (releaseA = r));
    let releaseB!: () => void;
    const blockB = new Promise<void>((r) => (releaseB = r));
    const runs: string[] = [];
    let runA: Promise<void> | undefined;
    let runB: Promise<void> | undefined;
    try {
      runA = a.run(
        {
          t: async (p) => {
            runs.push(`a:${String(p)}`);
            if (p === 'block') await blockA;
            return p;
          },
        },
        { signal: stopA.signal },
      );
      const block = await fabric.schedule({
        agentId: agent.id,
        taskType: 't',
        payload: 'block',
        timeoutSeconds: 60,
      });
      await until(() => runs.length === 1, 10_000);
      const x = await fabric.schedule({
        agentId: agent.id,
        taskType: 't',
        payload: 'x',
        timeoutSeconds: 60,
        maxAttempts: 1,
      });
      await until(() => executor.stats.published === 2, 10_000);
      const xSeq = (await jsm.streams.info(stream)).state.last_seq;
      // Both messages delivered to A (one running, x waiting in its pull buffer)...
      const consumers = await jsm.consumers.list(stream).next();
      await until(async () => {
        let pending = 0;
        for (const c of consumers)
          pending += (await jsm.consumers.info(stream, c.name)).num_ack_pending;
        return pending === 2;
      }, 10_000);
      // ...so B gets x only once JetStream delivers it again, after AckWait.
      runB = b.run(
        {
          t: async (p) => {
            runs.push(`b:${String(p)}`);
            await blockB;
            return p;
          },
        },
        { signal: stopB.signal },
      );
      await until(() => runs.includes('b:x'), 10_000);
      await until(async () => (await fabric.getTask(x.id)).status === TaskStatus.RUNNING, 10_000);

      releaseA(); // A's slot frees: it takes up its own, earlier delivery of x
      await until(() => a.stats.refused === 1, 10_000);
      expect((await fabric.waitForTask(block.id, { timeoutSeconds: 20 })).status).toBe(
        TaskStatus.COMPLETED,
      );
      // B's attempt goes on, and A left x's message unsettled: still stored for B to ack.
      const during = await fabric.getTask(x.id);
      expect(during.status).toBe(TaskStatus.RUNNING);
      expect(during.attempt).toBe(1);
      expect(executor.stats.staleDeliveriesRefused).toBe(1);
      expect((await jsm.streams.getMessage(stream, { seq: xSeq }))?.seq).toBe(xSeq);

      releaseB();
      const end = await fabric.waitForTask(x.id, { timeoutSeconds: 20 });
      expect(end.status).toBe(TaskStatus.COMPLETED);
      expect(end.attempt).toBe(1);
      expect(end.result).toBe('x');
      expect(runs.filter((r) => r.endsWith(':x'))).toEqual(['b:x']); // run once, by B
      // B's ack settles it (work queue: removed).
      await until(async () => (await jsm.streams.info(stream)).state.messages === 0, 10_000);
      expect(b.stats.completed).toBe(1);
    } finally {
      releaseA();
      releaseB();
      stopA.abort();
      stopB.abort();
      await Promise.allSettled([runA, runB]);
      await a.close();
      await b.close();
      await fabric.close();
      await nc.close();
    }
  });
});

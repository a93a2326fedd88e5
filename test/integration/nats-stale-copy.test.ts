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

/**
 * A sidecar (AckWait 1 s) with one nats agent, and two `NatsWorker`s of it with one slot each;
 * `nc` is a plain connection for the test's looks at the stream.
 */
async function twoWorkers(url: string, namespace: string) {
  const nats = { url, namespace, ackWaitSeconds: 1 };
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
  /** Schedules a task of type `t` for the agent (60 s timeout). */
  const schedule = (payload: string, maxAttempts?: number) =>
    fabric.schedule({
      agentId: agent.id,
      taskType: 't',
      payload,
      timeoutSeconds: 60,
      ...(maxAttempts === undefined ? {} : { maxAttempts }),
    });
  /** Deliveries not acknowledged yet, and redelivered ones, over the stream's consumers. */
  const deliveries = async () => {
    let pending = 0;
    let redelivered = 0;
    for (const c of await jsm.consumers.list(stream).next()) {
      const i = await jsm.consumers.info(stream, c.name);
      pending += i.num_ack_pending;
      redelivered += i.num_redelivered;
    }
    return { pending, redelivered };
  };
  const [a, b] = [await worker(), await worker()];
  return { fabric, nc, executor, jsm, stream, a, b, schedule, deliveries };
}

describeNats('NatsWorker: a stale copy held past AckWait by a busy worker', () => {
  const server = natsServerPerSuite();

  it('does not end the attempt another worker runs from a later delivery', async () => {
    const { fabric, nc, executor, jsm, stream, a, b, schedule, deliveries } = await twoWorkers(
      server().url,
      'stale',
    );
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
      const block = await schedule('block');
      await until(() => runs.length === 1, 10_000);
      const x = await schedule('x', 1);
      await until(() => executor.stats.published === 2, 10_000);
      const xSeq = (await jsm.streams.info(stream)).state.last_seq;
      // Both messages delivered to A (one running, x waiting in its pull buffer)...
      await until(async () => (await deliveries()).pending === 2, 10_000);
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

  /**
   * The reverse order of the test above, NOT fixed (documented in the README's `NatsWorker`
   * section): worker A holds x unstarted past AckWait (busy), JetStream delivers x again into
   * the pull of worker B — also busy — and A's slot frees FIRST. A's start (delivery 1) is the
   * first the sidecar hears of the attempt and is taken; B's start (delivery 2) then looks
   * exactly like the redelivery after a dead worker, so the sidecar ends the attempt A runs as
   * lost (`FABRIC_ERR_AGENT_UNAVAILABLE`; A's handler's signal aborts, its result is not
   * reported) and refuses B's start: the attempt is used up by a healthy worker, and at
   * `maxAttempts: 1` the task ends FAILED though never completed. This test pins that
   * behaviour, so a fix shows up as a change here.
   */
  it('known problem, the reverse order (README, NatsWorker): the stale start taken first, the healthy attempt is ended (FAILED at maxAttempts 1)', async () => {
    const { fabric, nc, executor, a, b, schedule, deliveries } = await twoWorkers(
      server().url,
      'stale2',
    );
    const stopA = new AbortController();
    const stopB = new AbortController();
    let releaseA!: () => void;
    const blockA = new Promise<void>((r) => (releaseA = r));
    let releaseB!: () => void;
    const blockB = new Promise<void>((r) => (releaseB = r));
    let releaseX!: () => void;
    const blockX = new Promise<void>((r) => (releaseX = r));
    const runs: string[] = [];
    let runA: Promise<void> | undefined;
    let runB: Promise<void> | undefined;
    const handler = (who: string, block: Promise<void>) => ({
      t: async (p: unknown) => {
        runs.push(`${who}:${String(p)}`);
        if (p === `block-${who}`) await block;
        if (p === 'x') await blockX;
        return p;
      },
    });
    try {
      runA = a.run(handler('a', blockA) as never, { signal: stopA.signal });
      const ba = await schedule('block-a');
      await until(() => runs.length === 1, 10_000);
      const x = await schedule('x', 1);
      await until(() => executor.stats.published === 2, 10_000);
      await until(async () => (await deliveries()).pending === 2, 10_000);
      runB = b.run(handler('b', blockB) as never, { signal: stopB.signal });
      const bb = await schedule('block-b');
      await until(() => runs.includes('b:block-b'), 10_000);
      // x's AckWait passes while A holds it unstarted: JetStream delivers it again, to B's pull.
      await until(async () => {
        const { pending, redelivered } = await deliveries();
        return redelivered >= 1 && pending === 3;
      }, 10_000);
      releaseA(); // A starts its delivery 1 of x first
      await until(() => runs.includes('a:x'), 10_000);
      await until(async () => (await fabric.getTask(x.id)).status === TaskStatus.RUNNING, 10_000);
      releaseB(); // then B starts its delivery 2: taken as the redelivery after a dead worker
      await until(() => b.stats.refused === 1, 10_000);
      const end = await fabric.waitForTask(x.id, { timeoutSeconds: 20 });
      expect(end.status).toBe(TaskStatus.FAILED);
      expect(end.attempt).toBe(1);
      expect(end.error).toEqual({
        code: 'FABRIC_ERR_AGENT_UNAVAILABLE',
        message: 'attempt 1 was taken up again: its worker stopped acknowledging it',
      });
      expect(executor.stats.staleDeliveriesRefused).toBe(0);
      releaseX();
      // x ran once, on A (whose result is not reported: its attempt ended), and B never ran it.
      expect(runs.filter((r) => r.endsWith(':x'))).toEqual(['a:x']);
      await fabric.waitForTask(ba.id, { timeoutSeconds: 20 });
      await fabric.waitForTask(bb.id, { timeoutSeconds: 20 });
    } finally {
      releaseA();
      releaseB();
      releaseX();
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

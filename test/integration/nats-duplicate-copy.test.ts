/**
 * A second stored copy of an attempt's message — what a publish retry that goes out after the
 * stream's duplicate window stores when an earlier try was stored and its answer lost (the
 * retry rules make that rare, not impossible: a retry made in the moment before a disconnect is
 * noticed leaves whenever the connection is back) — must not run the task twice or end the
 * attempt. A worker's `start` names the stream sequence of the copy it took up; the sidecar knows
 * the attempt's own (from the publish's acknowledgement, or from the start it accepted), refuses
 * the other copy's start without counting the attempt lost, and takes no report from that
 * take-up. The code before took the second copy's start as a redelivery: it ended the attempt
 * as lost and ran the task again.
 *
 * Real nats-server; the second copy is planted by publishing the task message again into the
 * stream under another `Nats-Msg-Id` (as a copy stored after the window would be).
 */
import { expect, it } from 'vitest';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import type { JsMsg } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/transport-node';
import { connect, headers } from '@nats-io/transport-node';
import type { AgentFabric } from '../../src/fabric.js';
import { TaskStatus } from '../../src/task.js';
import { NatsAgentLink, terminate } from '../../src/transport/nats/nats-agent-link.js';
import { NatsWorker } from '../../src/transport/nats/nats-worker.js';
import type { TaskMessage } from '../../src/transport/nats/wire.js';
import { until } from '../fixtures/gateway/harness.js';
import { readyNatsFabric } from '../fixtures/nats/ready-fabric.js';
import { describeNats, natsServerPerSuite } from '../fixtures/nats-server.js';

describeNats('NatsExecutor: a second stored copy of an attempt', () => {
  const server = natsServerPerSuite();

  /** A started sidecar on namespace `ns` with one ready nats agent, and a client connection. */
  async function setUp(ns: string) {
    const url = server().url;
    const { fabric, agent } = await readyNatsFabric(url, ns);
    const nc = await connect({ servers: url });
    const names = fabric.natsExecutor!.names;
    /** Stores `m`'s body again under another message id: a second copy of its attempt. */
    const storeAgain = async (m: JsMsg): Promise<void> => {
      const h = headers();
      h.set('Nats-Msg-Id', `copy-of-${m.seq}`);
      await jetstream(nc).publish(m.subject, m.data, { headers: h });
    };
    const stored = async (): Promise<number> =>
      (await (await jetstreamManager(nc)).streams.info(names.stream)).state.messages;
    return { fabric, agent, nc, names, storeAgain, stored };
  }

  async function closeAll(fabric: AgentFabric, nc: NatsConnection): Promise<void> {
    await fabric.close();
    await nc.close();
  }

  /**
   * Reports `result` as the outcome of take-up `t` (message `m`) on `link`, acks it, and checks
   * the task ended COMPLETED once, at attempt 1, with that result.
   */
  async function completeOnce(
    fabric: AgentFabric,
    link: NatsAgentLink,
    taskId: string,
    t: TaskMessage,
    m: JsMsg,
    result: string,
  ): Promise<void> {
    expect(await link.report(t, 'complete', { result })).toEqual({ ok: true });
    link.ack(m);
    const done = await fabric.waitForTask(taskId, { timeoutSeconds: 10 });
    expect([done.status, done.attempt, done.result]).toEqual([TaskStatus.COMPLETED, 1, result]);
  }

  it('refuses the start of a second copy without ending the attempt, and takes no report from it', async () => {
    const { fabric, agent, nc, names, storeAgain, stored } = await setUp('dupcopy');
    try {
      const task = await fabric.schedule({ agentId: agent.id, taskType: 't', payload: 1 });
      const link = new NatsAgentLink(nc, names, agent.id, agent.credential, 2000);
      const consumer = await jetstream(nc).consumers.get(
        names.stream,
        names.agentConsumer(agent.id),
      );
      const first = (await consumer.next({ expires: 5000 }))!;
      const mine = link.parse(first)!;
      expect(await link.start(mine).answer).toEqual({ ok: true });
      expect((await fabric.getTask(task.id)).status).toBe(TaskStatus.RUNNING);

      await storeAgain(first);
      const second = (await consumer.next({ expires: 5000 }))!;
      expect(second.seq).not.toBe(first.seq);
      const copy = link.parse(second)!;
      expect([copy.taskId, copy.attempt]).toEqual([task.id, 1]);
      const refused = await link.start(copy).answer;
      expect(refused).toMatchObject({ ok: false, code: 'FABRIC_ERR_TASK_STATE' });
      expect(refused?.ok === false && refused.message).toContain('second copy');
      expect(fabric.natsExecutor!.stats.duplicatesRefused).toBe(1);
      // The attempt goes on: not lost, not retried.
      const running = await fabric.getTask(task.id);
      expect([running.status, running.attempt]).toEqual([TaskStatus.RUNNING, 1]);

      // Reports from the copy's take-up are not the attempt's.
      expect(await link.report(copy, 'progress', { progress: 0.5 })).toMatchObject({ ok: false });
      expect(await link.report(copy, 'complete', { result: 'copy' })).toMatchObject({ ok: false });
      expect((await fabric.getTask(task.id)).status).toBe(TaskStatus.RUNNING);
      terminate(second); // as a worker does with a refused start

      // The attempt's own take-up completes it, once.
      await completeOnce(fabric, link, task.id, mine, first, 'mine');
      await until(async () => (await stored()) === 0, 5000);
      await link.close(false);
    } finally {
      await closeAll(fabric, nc);
    }
  });

  /**
   * A task whose message is stored twice, the copy taken up first: the original is taken and
   * put back (delivered again after 1.5 s), the copy taken up and its start sent — refused, as
   * the publish's acknowledgement named the original.
   */
  async function copyTakenFirst(ns: string) {
    const ctx = await setUp(ns);
    const { fabric, agent, nc, names, storeAgain } = ctx;
    const task = await fabric.schedule({ agentId: agent.id, taskType: 't', payload: 2 });
    await until(() => fabric.natsExecutor!.stats.published === 1, 5000);
    const consumer = await jetstream(nc).consumers.get(names.stream, names.agentConsumer(agent.id));
    const first = (await consumer.next({ expires: 5000 }))!;
    first.nak(1500); // back to the stream untouched, delivered again after the copy
    await storeAgain(first);
    const link = new NatsAgentLink(nc, names, agent.id, agent.credential, 2000);
    const second = (await consumer.next({ expires: 5000 }))!;
    expect(second.seq).not.toBe(first.seq);
    const copy = link.parse(second)!;
    expect(await link.start(copy).answer).toMatchObject({ ok: false });
    expect(fabric.natsExecutor!.stats.duplicatesRefused).toBe(1);
    expect((await fabric.getTask(task.id)).status).toBe(TaskStatus.SCHEDULED);
    /** The original, delivered again. */
    const original = async () => {
      const again = (await consumer.next({ expires: 5000 }))!;
      expect(again.seq).toBe(first.seq);
      return { m: again, task: link.parse(again)! };
    };
    return { ...ctx, task, link, second, copy, original };
  }

  it('refuses a copy taken up before the attempt started, once the publish was acknowledged', async () => {
    const { fabric, nc, task, link, second, original, stored } = await copyTakenFirst('dupfirst');
    try {
      terminate(second); // as a worker does with a refused start
      const mine = await original();
      expect(await link.start(mine.task).answer).toEqual({ ok: true });
      await completeOnce(fabric, link, task.id, mine.task, mine.m, 'mine');
      await until(async () => (await stored()) === 0, 5000);
      await link.close(false);
    } finally {
      await closeAll(fabric, nc);
    }
  });

  it('takes the outcome of a refused copy that finished before the attempt started, once: the original is then refused', async () => {
    // A worker runs a surely-first delivery before its start is answered; a handler that ends
    // before the refusal arrives reports its outcome. With no start accepted yet, that outcome
    // is the attempt's (as any outcome that arrives before its start) and the original, taken up
    // later, is refused: the task ran to completion once.
    const { fabric, nc, task, link, second, copy, original, stored } =
      await copyTakenFirst('dupdone');
    try {
      await completeOnce(fabric, link, task.id, copy, second, 'copy');
      const late = await original();
      expect(await link.start(late.task).answer).toMatchObject({ ok: false });
      terminate(late.m);
      await until(async () => (await stored()) === 0, 5000);
      await link.close(false);
    } finally {
      await closeAll(fabric, nc);
    }
  });

  it('NatsWorker: a second copy delivered while the task runs is aborted, and the task runs to completion once', async () => {
    const { fabric, agent, nc, names, stored } = await setUp('dupworker');
    const worker = await NatsWorker.connect({
      nats: { url: server().url, namespace: 'dupworker' },
      agentId: agent.id,
      credential: agent.credential,
      concurrency: 4,
    });
    const stop = new AbortController();
    const runs: { signal: AbortSignal }[] = [];
    let release!: () => void;
    const released = new Promise<void>((r) => (release = r));
    const running = worker.run(
      {
        t: async (_payload, ctx) => {
          runs.push({ signal: ctx.signal });
          await released;
          return runs.length;
        },
      },
      { signal: stop.signal },
    );
    try {
      const task = await fabric.schedule({ agentId: agent.id, taskType: 't', payload: 3 });
      await until(() => runs.length === 1, 10_000);
      // The running attempt's message, read from the stream (it stays there until acked).
      const jsm = await jetstreamManager(nc);
      const original = await jsm.streams.getMessage(names.stream, { seq: 1 });
      const h = headers();
      h.set('Nats-Msg-Id', 'copy-of-1');
      await jetstream(nc).publish(original!.subject, original!.data, { headers: h });
      // The copy is a first delivery to the worker: it begins at once, until its start's refusal.
      await until(() => runs.length === 2 && runs[1]!.signal.aborted, 10_000);
      expect(runs[0]!.signal.aborted).toBe(false);
      expect(fabric.natsExecutor!.stats.duplicatesRefused).toBe(1);
      release();
      const done = await fabric.waitForTask(task.id, { timeoutSeconds: 10 });
      expect([done.status, done.attempt]).toEqual([TaskStatus.COMPLETED, 1]);
      await until(() => worker.stats.completed === 1 && worker.stats.refused === 1, 10_000);
      await until(async () => (await stored()) === 0, 5000);
      expect(runs).toHaveLength(2);
    } finally {
      release();
      stop.abort();
      await running;
      await worker.close();
      await closeAll(fabric, nc);
    }
  });
});

/**
 * How a NatsWorker starts a pulled task against a real nats-server: a first delivery runs as
 * soon as its `start` report is written (the answer is not awaited), and a refusal aborts it and
 * keeps its result out; an attempt the worker was told had ended waits for the answer and never
 * runs; a task cancelled while its message waits in the stream has the message deleted; with
 * `startBeforeAnswer: false` nothing runs before its start is accepted; a busy worker does not
 * hoard the queue (another worker of the agent runs what it cannot).
 */
import { expect, it } from 'vitest';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { connect, type Msg, type NatsConnection } from '@nats-io/transport-node';
import { AgentFabric } from '../../src/fabric.js';
import { NatsWorker } from '../../src/transport/nats/nats-worker.js';
import { TaskStatus } from '../../src/task.js';
import type { Report } from '../../src/transport/nats/wire.js';
import { encodeJson, signedReportAnswer as signed } from '../../src/transport/nats/wire.js';
import { until } from '../fixtures/gateway/harness.js';
import { describeNats, natsServerPerSuite } from '../fixtures/nats-server.js';

describeNats('NatsWorker start', () => {
  const suiteServer = natsServerPerSuite();

  async function setup(
    namespace: string,
    concurrency: number,
    startBeforeAnswer?: boolean,
    maxConcurrentTasksPerAgent?: number,
    ackWaitSeconds?: number,
  ) {
    const nats = {
      url: suiteServer().url,
      namespace,
      ...(ackWaitSeconds ? { ackWaitSeconds } : {}),
    };
    const fabric = new AgentFabric(
      {
        heartbeatIntervalSeconds: 60,
        ...(maxConcurrentTasksPerAgent ? { maxConcurrentTasksPerAgent } : {}),
      },
      { nats },
    );
    await fabric.start();
    const agent = await fabric.spawn({ name: 'w', model: 'm', executor: 'nats' });
    await fabric.natsExecutor!.consumersReady();
    await fabric.heartbeat(agent.id);
    /** Another worker of the same agent. */
    const connectWorker = (slots: number) =>
      NatsWorker.connect({
        nats,
        agentId: agent.id,
        credential: agent.credential,
        concurrency: slots,
        ...(startBeforeAnswer === undefined ? {} : { startBeforeAnswer }),
      });
    const worker = await connectWorker(concurrency);
    return { fabric, agent, worker, connectWorker };
  }

  /**
   * Publishes a task message with a lease the sidecar never made (as any client allowed to
   * publish on the task subjects could send) to the agent's task subject. Its reports go to
   * `replyTo`: the sidecar's own subject unless a test plays the sidecar there.
   */
  async function publishForged(
    nc: NatsConnection,
    fabric: AgentFabric,
    agentId: string,
    taskType: string,
    payload: unknown,
    { taskId = 'forged', replyTo }: { taskId?: string; replyTo?: string } = {},
  ): Promise<void> {
    const names = fabric.natsExecutor!.names;
    const forged = {
      v: 1,
      taskId,
      attempt: 1,
      taskType,
      payload,
      deadline: null,
      timeoutSeconds: 30,
      maxAttempts: 1,
      agentId,
      poolId: null,
      replyTo: replyTo ?? names.results(fabric.natsExecutor!.sidecarId),
      lease: 'x'.repeat(43),
    };
    await jetstream(nc).publish(names.agentTasks(agentId), encodeJson(forged));
  }

  /** The reports of a request a stand-in sidecar got, and whether they came as one batch. */
  function reportsOf(msg: Msg): { batch: boolean; reports: Report[] } {
    const body = msg.json<Report & { reports?: Report[] }>();
    return body.reports === undefined
      ? { batch: false, reports: [body] }
      : { batch: true, reports: body.reports };
  }

  it('a task cancelled while its message waits in JetStream: the message is deleted, never run', async () => {
    const { fabric, agent, worker } = await setup('cancelled', 4);
    const stop = new AbortController();
    try {
      // Scheduled and cancelled before the worker listens: the message waited in the stream.
      const task = await fabric.schedule({ agentId: agent.id, taskType: 't', payload: 1 });
      await until(() => fabric.natsExecutor!.stats.published === 1, 10_000);
      await fabric.cancelTask(task.id, 'not wanted');
      const nc = await connect({ servers: suiteServer().url });
      const jsm = await jetstreamManager(nc);
      const stream = fabric.natsExecutor!.names.stream;
      await until(async () => (await jsm.streams.info(stream)).state.messages === 0, 10_000);
      let ran = 0;
      const running = worker.run({ t: () => ran++ }, { signal: stop.signal });
      const later = await fabric.schedule({ agentId: agent.id, taskType: 't', payload: 2 });
      expect((await fabric.waitForTask(later.id, { timeoutSeconds: 10 })).status).toBe(
        TaskStatus.COMPLETED,
      );
      expect(ran).toBe(1);
      expect((await fabric.getTask(task.id)).status).toBe(TaskStatus.CANCELLED);
      stop.abort();
      await running;
      await nc.close();
    } finally {
      await worker.close();
      await fabric.close();
    }
  });

  it('a first delivery runs before its start is answered; a refusal aborts it and nothing is reported done', async () => {
    const { fabric, agent, worker } = await setup('refused', 4);
    const stop = new AbortController();
    const nc = await connect({ servers: suiteServer().url });
    try {
      // A task message with a lease the sidecar never made (as any client allowed to publish
      // on the task subjects could send): its start is refused.
      await publishForged(nc, fabric, agent.id, 'slow', null);
      let aborted: unknown;
      let ran = 0;
      const running = worker.run(
        {
          slow: async (_p, ctx) => {
            ran++;
            await new Promise<void>((resolve) => {
              if (ctx.signal.aborted) resolve();
              ctx.signal.addEventListener('abort', () => resolve(), { once: true });
            });
            aborted = ctx.signal.reason;
            return 'late';
          },
        },
        { signal: stop.signal },
      );
      await until(() => worker.stats.refused === 1, 10_000);
      expect(ran).toBe(1);
      expect(String(aborted)).toMatch(/FABRIC_ERR_UNAUTHENTICATED/);
      expect(worker.stats.completed).toBe(0);
      expect(fabric.natsExecutor!.stats.reportsAccepted).toBe(0);
      stop.abort();
      await running;
    } finally {
      await nc.close();
      await worker.close();
      await fabric.close();
    }
  });

  it('an outcome the sidecar accepted counts even when the answer to its start (retried) comes back stale', async () => {
    // While a sidecar restarts, a worker retries its `start` and its `complete` each on its own
    // timer, so the sidecar can get the complete first (and apply it), then the start (stale).
    // Played here by a stand-in sidecar on the task's replyTo that answers in that order.
    const { fabric, agent, worker } = await setup('reordered', 2);
    const stop = new AbortController();
    const nc = await connect({ servers: suiteServer().url });
    try {
      const replyTo = 'reordered.stand-in';
      let held: Msg | undefined;
      let heldReport: Report | undefined;
      const kinds: string[] = [];
      const stale = {
        ok: false as const,
        code: 'FABRIC_ERR_TASK_STATE',
        message: 'no longer current',
      };
      nc.subscribe(replyTo, {
        callback: (_err, msg) => {
          const { batch, reports } = reportsOf(msg);
          for (const r of reports) kinds.push(r.kind);
          if (batch) {
            // One batch: answered in order, the start stale, the outcome accepted.
            msg.respond(
              encodeJson({
                answers: reports.map((r) => signed(r, r.kind === 'start' ? stale : { ok: true })),
              }),
            );
          } else if (reports[0]!.kind === 'start') {
            held = msg; // answered after the outcome
            heldReport = reports[0];
          } else {
            msg.respond(encodeJson(signed(reports[0]!, { ok: true })));
            held?.respond(encodeJson(signed(heldReport!, stale)));
          }
        },
      });
      await nc.flush();
      const names = fabric.natsExecutor!.names;
      await publishForged(nc, fabric, agent.id, 't', 7, { taskId: 'reordered', replyTo });
      let ran = 0;
      const running = worker.run({ t: (p) => (ran++, p) }, { signal: stop.signal });
      await until(() => worker.stats.completed + worker.stats.refused === 1, 10_000);
      expect(kinds).toEqual(['start', 'complete']);
      expect(ran).toBe(1);
      expect(worker.stats.refused).toBe(0);
      expect(worker.stats.completed).toBe(1);
      // Acked: gone from the work queue.
      const jsm = await jetstreamManager(nc);
      await until(async () => (await jsm.streams.info(names.stream)).state.messages === 0, 10_000);
      stop.abort();
      await running;
    } finally {
      await nc.close();
      await worker.close();
      await fabric.close();
    }
  });

  it("a slot is free again once its handler returns: the next task starts before the outcome's answer", async () => {
    // One slot. A stand-in sidecar on the tasks' replyTo holds back its answer to `one`'s
    // outcome. The slot used to stay taken until that answer came (and the ack went out), so
    // `two` sat pulled and unstarted — at every task, for the report timers of both sides.
    const { fabric, agent, worker } = await setup('slot', 1);
    const stop = new AbortController();
    const nc = await connect({ servers: suiteServer().url });
    try {
      const replyTo = 'slot.stand-in';
      // Every request carrying it, the worker's re-sends (after `reportTimeoutMs`) included.
      const held: { msg: Msg; batch: boolean; reports: Report[] }[] = [];
      const answer = (msg: Msg, batch: boolean, reports: Report[]) =>
        msg.respond(
          encodeJson(
            batch
              ? { answers: reports.map((r) => signed(r, { ok: true })) }
              : signed(reports[0]!, { ok: true }),
          ),
        );
      let released = false;
      nc.subscribe(replyTo, {
        callback: (_err, msg) => {
          const { batch, reports } = reportsOf(msg);
          const outcomeOfOne = reports.some((r) => r.kind === 'complete' && r.taskId === 'one');
          if (outcomeOfOne && !released) held.push({ msg, batch, reports });
          else answer(msg, batch, reports);
        },
      });
      await nc.flush();
      await publishForged(nc, fabric, agent.id, 't', 'one', { taskId: 'one', replyTo });
      await publishForged(nc, fabric, agent.id, 't', 'two', { taskId: 'two', replyTo });
      const ran: unknown[] = [];
      const running = worker.run({ t: (p) => (ran.push(p), p) }, { signal: stop.signal });
      await until(() => held.length > 0, 10_000);
      // `one`'s outcome is unanswered: its message is neither acked nor its slot taken.
      await until(() => ran.length === 2, 10_000);
      expect(ran).toEqual(['one', 'two']);
      released = true;
      for (const h of held) answer(h.msg, h.batch, h.reports);
      await until(() => worker.stats.completed === 2, 10_000);
      const jsm = await jetstreamManager(nc);
      const stream = fabric.natsExecutor!.names.stream;
      await until(async () => (await jsm.streams.info(stream)).state.messages === 0, 10_000);
      stop.abort();
      await running;
    } finally {
      await nc.close();
      await worker.close();
      await fabric.close();
    }
  });

  it('a message delivered again while the worker holds it (it waited past AckWait for a slot) runs once', async () => {
    // Two slots, both taken by `a1` and `a2` (they run until released); then `b` arrives in the
    // worker's next pull, which asked for two and stays open for one more, and waits for a slot
    // past AckWait — so JetStream sends it out again, into that same pull. A stand-in sidecar on
    // the tasks' replyTo accepts every start (the real one counts a second take-up of a started
    // attempt as lost and runs the task again): a worker that took the second delivery up too
    // would run `b` twice.
    const { fabric, agent, worker } = await setup('held', 2, undefined, undefined, 1);
    const stop = new AbortController();
    const nc = await connect({ servers: suiteServer().url });
    try {
      const replyTo = 'held.stand-in';
      const starts: string[] = [];
      nc.subscribe(replyTo, {
        callback: (_err, msg) => {
          const { batch, reports } = reportsOf(msg);
          for (const r of reports) if (r.kind === 'start') starts.push(r.taskId);
          const ok = { ok: true as const };
          msg.respond(
            encodeJson(
              batch ? { answers: reports.map((r) => signed(r, ok)) } : signed(reports[0]!, ok),
            ),
          );
        },
      });
      await nc.flush();
      const names = fabric.natsExecutor!.names;
      const jsm = await jetstreamManager(nc);
      const consumerInfo = () => jsm.consumers.info(names.stream, names.agentConsumer(agent.id));
      const publish = (taskId: string) =>
        publishForged(nc, fabric, agent.id, 't', taskId, { taskId, replyTo });
      const runs: string[] = [];
      let release!: () => void;
      const released = new Promise<void>((r) => (release = r));
      const running = worker.run(
        {
          t: async (p: unknown) => {
            runs.push(String(p));
            if (p !== 'b') await released;
            return p;
          },
        },
        { signal: stop.signal },
      );
      await publish('a1');
      await publish('a2');
      await until(() => runs.length === 2, 10_000);
      await until(async () => (await consumerInfo()).num_waiting > 0, 10_000); // the next pull
      await publish('b');
      // Past AckWait (1 s) while `b` waits for a slot: it has gone out again by now.
      await until(async () => (await consumerInfo()).num_redelivered > 0, 10_000);
      release();
      await until(() => worker.stats.completed >= 3, 10_000);
      // Past AckWait again: the ack of the held delivery removed the message for good.
      await new Promise((r) => setTimeout(r, 2_000));
      expect(runs.sort()).toEqual(['a1', 'a2', 'b']);
      expect(worker.stats.started).toBe(3);
      expect(starts.sort()).toEqual(['a1', 'a2', 'b']);
      expect((await jsm.streams.info(names.stream)).state.messages).toBe(0);
      stop.abort();
      await running;
    } finally {
      await nc.close();
      await worker.close();
      await fabric.close();
    }
  });

  it('startBeforeAnswer: false — a forged first delivery never runs; a real task still completes', async () => {
    const { fabric, agent, worker } = await setup('waits', 4, false);
    const stop = new AbortController();
    const nc = await connect({ servers: suiteServer().url });
    try {
      await publishForged(nc, fabric, agent.id, 't', 'forged');
      const payloads: unknown[] = [];
      const running = worker.run({ t: (p) => payloads.push(p) }, { signal: stop.signal });
      await until(() => worker.stats.refused === 1, 10_000);
      const real = await fabric.schedule({ agentId: agent.id, taskType: 't', payload: 'real' });
      expect((await fabric.waitForTask(real.id, { timeoutSeconds: 10 })).status).toBe(
        TaskStatus.COMPLETED,
      );
      expect(payloads).toEqual(['real']);
      stop.abort();
      await running;
    } finally {
      await nc.close();
      await worker.close();
      await fabric.close();
    }
  });

  it('startBeforeAnswer must be a boolean', async () => {
    await expect(
      NatsWorker.connect({
        nats: { url: suiteServer().url, namespace: 'bad' },
        agentId: 'a',
        credential: 'c',
        startBeforeAnswer: 'no' as unknown as boolean,
      }),
    ).rejects.toThrow(/options\.startBeforeAnswer/);
  });

  it('an attempt the worker heard had ended waits for its start answer and never runs', async () => {
    const { fabric, agent, worker } = await setup('noticed', 1);
    const stop = new AbortController();
    try {
      let release!: () => void;
      const blocker = new Promise<void>((r) => (release = r));
      const runs: unknown[] = [];
      const running = worker.run(
        {
          t: async (p) => {
            runs.push(p);
            if (p === 'first') await blocker;
            return p;
          },
        },
        { signal: stop.signal },
      );
      // The only slot is busy: the second task's message waits (pulled or in the stream) while
      // it is cancelled, and the worker hears the ended notice.
      const first = await fabric.schedule({ agentId: agent.id, taskType: 't', payload: 'first' });
      await until(() => runs.length === 1, 10_000);
      const second = await fabric.schedule({ agentId: agent.id, taskType: 't', payload: 'second' });
      await until(() => fabric.natsExecutor!.stats.published === 2, 10_000);
      await fabric.cancelTask(second.id, 'not wanted');
      await new Promise((r) => setTimeout(r, 200)); // the notice reaches the worker
      release();
      expect((await fabric.waitForTask(first.id, { timeoutSeconds: 10 })).status).toBe(
        TaskStatus.COMPLETED,
      );
      await until(() => worker.stats.refused === 1, 10_000);
      expect(runs).toEqual(['first']);
      expect((await fabric.getTask(second.id)).status).toBe(TaskStatus.CANCELLED);
      stop.abort();
      await running;
    } finally {
      await worker.close();
      await fabric.close();
    }
  });
  it('a busy worker holds no more than it can start soon: another worker runs the rest', async () => {
    // A pull consumer fed through a callback re-pulls as soon as messages arrive, whatever the
    // handler is doing: a worker with one slot then hoards the whole queue until AckWait. The
    // worker must pull only as it frees slots. The agent may run 50 at once (two workers serve
    // it), so all 20 tasks go out at once.
    const { fabric, agent, worker, connectWorker } = await setup('hoard', 1, undefined, 50);
    const other = await connectWorker(1);
    const stop = new AbortController();
    const otherStop = new AbortController();
    let release!: () => void;
    const blocker = new Promise<void>((r) => (release = r));
    try {
      let ranHere = 0;
      const running = worker.run(
        {
          t: async (p) => {
            ranHere++;
            await blocker;
            return p;
          },
        },
        { signal: stop.signal },
      );
      const tasks = [];
      for (let i = 0; i < 20; i++) {
        tasks.push(await fabric.schedule({ agentId: agent.id, taskType: 't', payload: i }));
      }
      await until(() => fabric.natsExecutor!.stats.published === 20 && ranHere === 1, 10_000);
      await new Promise((r) => setTimeout(r, 300)); // time for the busy worker to pull more
      let ranThere = 0;
      const otherRunning = other.run(
        {
          t: (p) => {
            ranThere++;
            return p;
          },
        },
        { signal: otherStop.signal },
      );
      // The busy worker may hold one or two beyond the one it runs (its next pull); the rest,
      // well before their AckWait (30 s), run on the other worker while the first stays blocked.
      await until(() => ranThere >= 16, 10_000);
      expect(ranHere).toBe(1);
      release();
      for (const t of tasks) {
        expect((await fabric.waitForTask(t.id, { timeoutSeconds: 10 })).status).toBe(
          TaskStatus.COMPLETED,
        );
      }
      stop.abort();
      otherStop.abort();
      await Promise.all([running, otherRunning]);
    } finally {
      release();
      await other.close();
      await worker.close();
      await fabric.close();
    }
  });
});

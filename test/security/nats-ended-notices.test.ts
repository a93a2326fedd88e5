/**
 * Workers and what arrives on `fabric.<ns>.ended.*`, where any client of the namespace may
 * publish. An exception thrown out of a nats.js subscription callback ends the connection's
 * reader: one `null` there (or `{"taskId":{"toString":1}}`, which no template string can print)
 * left a worker deaf — no more pulls, no report answers — and its tasks timed out. Now a worker
 * ignores what is not a notice, and a notice that names another task than the subject it came
 * on; a sidecar's own notice (a cancel) still stops the handler. And a well-formed notice on the
 * task's own subject stopped the running handler whoever sent it: now it must carry a MAC under
 * the attempt's lease, which a client that can publish on `ended.*` but not read the task lacks.
 */
import { jetstreamManager } from '@nats-io/jetstream';
import { connect, headers, type NatsConnection } from '@nats-io/transport-node';
import { expect, it } from 'vitest';
import { AgentFabric } from '../../src/fabric.js';
import { TaskStatus } from '../../src/task.js';
import { NatsWorker } from '../../src/transport/nats/nats-worker.js';
import { NatsWorkerTransport } from '../../src/transport/nats/nats-worker-transport.js';
import { natsNames } from '../../src/transport/nats/subjects.js';
import type { Report } from '../../src/transport/nats/wire.js';
import { encodeJson, endedMac, signedReportAnswer } from '../../src/transport/nats/wire.js';
import { FabricWorker } from '../../src/worker/fabric-worker.js';
import { until } from '../fixtures/gateway/harness.js';
import { describeNats, startNatsServer } from '../fixtures/nats-server.js';

const text = new TextEncoder();

/** Bodies that are not ended notices. */
const hostile: Uint8Array[] = [
  text.encode('null'),
  text.encode('1'),
  text.encode('"x"'),
  text.encode('[]'),
  text.encode('{}'),
  text.encode('{'),
  new Uint8Array([0xff, 0xfe, 0x00]),
  text.encode('{"taskId":null,"attempt":1}'),
  text.encode('{"taskId":{"toString":1},"attempt":1,"code":{"toString":1},"message":"m"}'),
  text.encode('{"taskId":"t","attempt":{"valueOf":1},"code":"C","message":"m"}'),
];

async function sidecar(url: string, namespace: string) {
  const nats = { url, namespace };
  const fabric = new AgentFabric(
    { heartbeatIntervalSeconds: 60, defaultTimeoutSeconds: 20, defaultMaxAttempts: 1 },
    { nats },
  );
  await fabric.start();
  const agent = await fabric.spawn({ name: 'w', model: 'm', executor: 'nats' });
  await fabric.natsExecutor!.consumersReady();
  return { nats, fabric, agent };
}

async function flood(evil: NatsConnection, namespace: string, taskIds: string[]) {
  for (const body of hostile) {
    evil.publish(`fabric.${namespace}.ended.x`, body);
    for (const id of taskIds) evil.publish(natsNames(namespace).ended(id), body);
  }
  await evil.flush();
}

/** A handler that runs until `release` is called, or rejects when its signal aborts. */
function gate() {
  let release!: () => void;
  let started = false;
  let abortedWith: unknown;
  const released = new Promise<void>((r) => (release = r));
  const handler = (_p: unknown, ctx: { signal: AbortSignal }) => {
    started = true;
    return new Promise((resolve, reject) => {
      void released.then(() => resolve('released'));
      ctx.signal.addEventListener('abort', () => {
        abortedWith = ctx.signal.reason;
        reject(ctx.signal.reason as Error);
      });
    });
  };
  return {
    handler,
    release,
    started: () => started,
    abortedWith: () => abortedWith,
  };
}

/**
 * Forged and mismatched ended notices (a flood of malformed ones, a real task's notice on another
 * task's subject) for a task the worker runs in `slow`: after `settleMs` its handler was not
 * aborted, it completes when released, and the worker still runs the next task.
 */
async function survivesForgedNotices(
  fabric: AgentFabric,
  agentId: string,
  evil: NatsConnection,
  ns: string,
  slow: ReturnType<typeof gate>,
  settleMs: number,
): Promise<void> {
  const t2 = await fabric.schedule({ agentId, taskType: 'slow', payload: null });
  await until(slow.started);
  await flood(evil, ns, [t2.id]);
  const forged = { taskId: t2.id, attempt: 1, code: 'FABRIC_ERR_CANCELLED', message: 'forged' };
  evil.publish(`fabric.${ns}.ended.other`, encodeJson(forged));
  // On the task's own subject: without a MAC, with a made-up one, with one under a wrong lease.
  const own = natsNames(ns).ended(t2.id);
  evil.publish(own, encodeJson(forged));
  evil.publish(own, encodeJson({ ...forged, mac: 'A'.repeat(43) }));
  evil.publish(own, encodeJson({ ...forged, mac: endedMac('guess', t2.id, 1) }));
  await evil.flush();
  await new Promise((r) => setTimeout(r, settleMs));
  expect(slow.abortedWith()).toBeUndefined();
  slow.release();
  expect(await fabric.waitForTask(t2.id, { timeoutSeconds: 10 })).toMatchObject({
    status: TaskStatus.COMPLETED,
    result: 'released',
    attempt: 1,
  });
  // The worker still pulls and is answered.
  const t3 = await fabric.schedule({ agentId, taskType: 'double', payload: 2 });
  expect(await fabric.waitForTask(t3.id, { timeoutSeconds: 10 })).toMatchObject({
    status: TaskStatus.COMPLETED,
    result: 4,
  });
}

describeNats('NATS: hostile messages on ended.*', () => {
  it('FabricWorker over NATS: keeps working, ignores mismatched notices, obeys a cancel', async () => {
    const server = await startNatsServer();
    const ns = 'enf';
    const { nats, fabric, agent } = await sidecar(server.url, ns);
    const transport = await NatsWorkerTransport.connect({
      nats,
      agentId: agent.id,
      credential: agent.credential,
    });
    const worker = FabricWorker.withTransport(transport, {
      heartbeatSeconds: 0.2,
      claimWaitSeconds: 1,
    });
    const stop = new AbortController();
    const slow = gate();
    const running = worker.run(
      { double: (p) => (p as number) * 2, slow: slow.handler },
      { signal: stop.signal },
    );
    const evil = await connect({ servers: server.url });
    try {
      const t1 = await fabric.schedule({ agentId: agent.id, taskType: 'double', payload: 1 });
      expect(await fabric.waitForTask(t1.id, { timeoutSeconds: 10 })).toMatchObject({
        status: TaskStatus.COMPLETED,
        result: 2,
      });

      // While a task runs: garbage everywhere, and its own notice on another task's subject.
      // Three heartbeats hand out ended notices meanwhile.
      await survivesForgedNotices(fabric, agent.id, evil, ns, slow, 600);

      // The sidecar's own notice, on the task's own subject, still stops the handler.
      const cancelled = gate();
      const stop2 = new AbortController();
      stop.abort();
      await running;
      const running2 = worker.run({ slow: cancelled.handler }, { signal: stop2.signal });
      const t4 = await fabric.schedule({ agentId: agent.id, taskType: 'slow', payload: null });
      await until(cancelled.started);
      await fabric.cancelTask(t4.id, 'enough');
      await until(() => cancelled.abortedWith() !== undefined);
      expect((await fabric.getTask(t4.id)).status).toBe(TaskStatus.CANCELLED);
      stop2.abort();
      await running2;
    } finally {
      stop.abort();
      await worker.close();
      await evil.close();
      await fabric.close();
      await server.close();
    }
  });

  it('NatsWorker: keeps working, ignores mismatched notices, obeys a cancel', async () => {
    const server = await startNatsServer();
    const ns = 'enw';
    const { nats, fabric, agent } = await sidecar(server.url, ns);
    const worker = await NatsWorker.connect({
      nats,
      agentId: agent.id,
      credential: agent.credential,
    });
    const stop = new AbortController();
    const slow = gate();
    const cancelled = gate();
    const running = worker.run(
      { double: (p) => (p as number) * 2, slow: slow.handler, cancelled: cancelled.handler },
      { signal: stop.signal },
    );
    const evil = await connect({ servers: server.url });
    try {
      await survivesForgedNotices(fabric, agent.id, evil, ns, slow, 300);

      const t4 = await fabric.schedule({ agentId: agent.id, taskType: 'cancelled', payload: 0 });
      await until(cancelled.started);
      await fabric.cancelTask(t4.id, 'enough');
      await until(() => cancelled.abortedWith() !== undefined);
      expect(String(cancelled.abortedWith())).toContain('FABRIC_ERR_CANCELLED');
      expect((await fabric.getTask(t4.id)).status).toBe(TaskStatus.CANCELLED);
      expect(worker.stats).toMatchObject({ started: 3, completed: 2, failed: 0 });
    } finally {
      stop.abort();
      await running;
      await worker.close();
      await evil.close();
      await fabric.close();
      await server.close();
    }
  });
});

/**
 * As a sidecar whose start's commit was still on its way when the task was cancelled: `side`
 * publishes the task message `taskId` (attempt 1, `taskType`, its own lease) for `agentId`, and
 * answers its start ok only after the attempt's genuine ended notice; the kinds of the reports
 * it got. The real sidecar `ns` only keeps the stream and the agent's consumer.
 */
function endedBeforeStartAnswer(
  side: NatsConnection,
  ns: string,
  agentId: string,
  taskId: string,
  taskType: string,
): string[] {
  const names = natsNames(ns);
  const replyTo = `fabric.${ns}.test-sidecar.${taskId}`;
  const lease = `the-lease-of-${taskId}`;
  const reports: string[] = [];
  side.subscribe(replyTo, {
    callback: (_err, msg) => {
      const report = JSON.parse(new TextDecoder().decode(msg.data)) as Report;
      reports.push(report.kind);
      if (report.kind === 'start') {
        const mac = endedMac(lease, taskId, 1);
        const notice = { taskId, attempt: 1, code: 'FABRIC_ERR_CANCELLED', message: 'x', mac };
        side.publish(names.ended(taskId), encodeJson(notice));
      }
      void side
        .flush()
        .then(() => msg.respond(encodeJson(signedReportAnswer(report, { ok: true }))));
    },
  });
  const h = headers();
  h.set('Nats-Msg-Id', `${taskId}:1`);
  void side.flush().then(() =>
    side.publish(
      names.agentTasks(agentId),
      encodeJson({
        v: 1,
        taskId,
        attempt: 1,
        taskType,
        payload: null,
        deadline: null,
        timeoutSeconds: 20,
        maxAttempts: 1,
        agentId,
        poolId: null,
        replyTo,
        lease,
      }),
      { headers: h },
    ),
  );
  return reports;
}

/** How many messages `agentId`'s consumer has delivered and not had acknowledged. */
async function ackPending(side: NatsConnection, ns: string, agentId: string): Promise<number> {
  const names = natsNames(ns);
  const jsm = await jetstreamManager(side);
  return (await jsm.consumers.info(names.stream, names.agentConsumer(agentId))).num_ack_pending;
}

describeNats('a genuine ended notice that comes before the start is answered', () => {
  // Before, the notice came while the attempt was not running here yet and was dropped (only
  // noted): its handler then ran to its end.
  it('NatsWorker: stops the attempt (its handler never runs)', async () => {
    const server = await startNatsServer();
    const ns = 'enb';
    const { nats, fabric, agent } = await sidecar(server.url, ns);
    const worker = await NatsWorker.connect({
      nats,
      agentId: agent.id,
      credential: agent.credential,
      startBeforeAnswer: false,
    });
    const stop = new AbortController();
    const held = gate();
    const running = worker.run({ held: held.handler }, { signal: stop.signal });
    const side = await connect({ servers: server.url });
    try {
      const reports = endedBeforeStartAnswer(side, ns, agent.id, 't-early', 'held');
      // Its start answered, then either its handler runs, or the message is let go unrun (the
      // attempt is over): nothing of it is pending on the consumer any more.
      await until(
        async () =>
          held.started() ||
          (worker.stats.started === 1 && (await ackPending(side, ns, agent.id)) === 0),
      );
      expect(held.started()).toBe(false);
      expect(reports).toEqual(['start']);
    } finally {
      held.release();
      stop.abort();
      await running;
      await worker.close();
      await side.close();
      await fabric.close();
      await server.close();
    }
  });

  it('NatsWorkerTransport: does not hand the attempt out', async () => {
    const server = await startNatsServer();
    const ns = 'enc';
    const { nats, fabric, agent } = await sidecar(server.url, ns);
    const transport = await NatsWorkerTransport.connect({
      nats,
      agentId: agent.id,
      credential: agent.credential,
    });
    const side = await connect({ servers: server.url });
    try {
      const reports = endedBeforeStartAnswer(side, ns, agent.id, 't-early', 'held');
      const claims: unknown[] = [];
      await until(async () => {
        claims.push(await transport.claim(0.2));
        return reports.length > 0 && (await ackPending(side, ns, agent.id)) === 0;
      });
      expect(claims.filter((c) => c !== null)).toEqual([]);
      expect(reports).toEqual(['start']);
    } finally {
      await transport.close();
      await side.close();
      await fabric.close();
      await server.close();
    }
  });
});

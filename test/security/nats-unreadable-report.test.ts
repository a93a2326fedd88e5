/**
 * A report the sidecar cannot read as one — a handler's error whose message is longer than the
 * 10,000 characters a report's error may carry, or whose code is empty — was refused without a
 * MAC (no report, no lease to key it), and the worker, which acts on no answer without a right
 * MAC, sent it again at every timeout for as long as it ran: the task timed out at the sidecar
 * with the worker's reason lost, the message stayed held, and every report batched with that one
 * (other tasks' outcomes to the same sidecar) waited with it.
 *
 * Now the worker bounds the error it reports (its message cut to 10,000 characters, an empty
 * code replaced), and the sidecar signs its refusal of a report it cannot read whenever that
 * carries a lease and the ids its answer's MAC binds, so no worker waits on for an answer that
 * cannot come.
 */
import { jetstream } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import { expect, it } from 'vitest';
import { AgentFabric } from '../../src/fabric.js';
import { TaskStatus } from '../../src/task.js';
import { hashCredential } from '../../src/lifecycle/lifecycle-manager.js';
import { NatsWorker } from '../../src/transport/nats/nats-worker.js';
import { natsNames } from '../../src/transport/nats/subjects.js';
import {
  asTaskMessage,
  decodeJson,
  encodeJson,
  genuineReportAnswer,
  reportProof,
} from '../../src/transport/nats/wire.js';
import { until } from '../fixtures/gateway/harness.js';
import { describeNats, startNatsServer } from '../fixtures/nats-server.js';

describeNats('NATS: a report the sidecar cannot read', () => {
  it('a handler error too long or without a code fails its task with it; outcomes sent with it are not held up', async () => {
    const server = await startNatsServer();
    const nats = { url: server.url, namespace: 'unr' };
    const fabric = new AgentFabric(
      { heartbeatIntervalSeconds: 60, defaultTimeoutSeconds: 5, defaultMaxAttempts: 1 },
      { nats },
    );
    let worker: NatsWorker | undefined;
    const stop = new AbortController();
    let running: Promise<unknown> | undefined;
    try {
      await fabric.start();
      const agent = await fabric.spawn({ name: 'w', model: 'm', executor: 'nats' });
      await fabric.natsExecutor!.consumersReady();
      worker = await NatsWorker.connect({ nats, agentId: agent.id, credential: agent.credential });
      const long = 'x'.repeat(10_001);
      running = worker.run(
        {
          long: () => Promise.reject(new Error(long)),
          nocode: () => Promise.reject(Object.assign(new Error('boom'), { code: '' })),
          ok: (p) => Promise.resolve(p),
        },
        { signal: stop.signal },
      );
      const tasks = await Promise.all([
        fabric.schedule({ agentId: agent.id, taskType: 'long', payload: 1 }),
        fabric.schedule({ agentId: agent.id, taskType: 'nocode', payload: 2 }),
        fabric.schedule({ agentId: agent.id, taskType: 'ok', payload: 3 }),
      ]);
      const done = await Promise.all(
        tasks.map((t) => fabric.waitForTask(t.id, { timeoutSeconds: 20 })),
      );
      expect(done.map((t) => t.status)).toEqual([
        TaskStatus.FAILED,
        TaskStatus.FAILED,
        TaskStatus.COMPLETED,
      ]);
      expect(done[0]!.error).toMatchObject({ code: 'Error', message: long.slice(0, 10_000) });
      expect(done[1]!.error).toMatchObject({ message: 'boom' });
      expect(done[1]!.error!.code.length).toBeGreaterThan(0);
      expect(done[2]!.result).toBe(3);
      // The worker had the sidecar's answers to its outcomes (it counts them as it acts on them).
      const w = worker;
      await until(() => w.stats.failed + w.stats.completed + w.stats.refused === 3, 10_000);
      expect(worker.stats).toMatchObject({ failed: 2, completed: 1, refused: 0 });
    } finally {
      stop.abort();
      await running?.catch(() => undefined);
      await worker?.close();
      await fabric.close();
      await server.close();
    }
  }, 60_000);

  it('the sidecar signs its refusal of a report it cannot read (any worker, another language’s too)', async () => {
    const server = await startNatsServer();
    const namespace = 'unr2';
    const fabric = new AgentFabric(
      { heartbeatIntervalSeconds: 60, defaultTimeoutSeconds: 30, defaultMaxAttempts: 1 },
      { nats: { url: server.url, namespace } },
    );
    const nc = await connect({ servers: server.url });
    try {
      await fabric.start();
      const agent = await fabric.spawn({ name: 'w', model: 'm', executor: 'nats' });
      await fabric.natsExecutor!.consumersReady();
      // The agent's first heartbeat makes it ready; this test is its worker from then on.
      const hb = await NatsWorker.connect({
        nats: { url: server.url, namespace },
        agentId: agent.id,
        credential: agent.credential,
      });
      await hb.heartbeat();
      await hb.close();
      await fabric.schedule({ agentId: agent.id, taskType: 't', payload: 1 });
      const names = natsNames(namespace);
      const consumer = await jetstream(nc).consumers.get(
        names.stream,
        names.agentConsumer(agent.id),
      );
      const m = await consumer.next({ expires: 10_000 });
      const task = asTaskMessage(decodeJson(m!.data))!;
      const key = hashCredential(agent.credential);
      let counter = 0; // the take-up's reports, numbered
      const report = (kind: 'start' | 'progress' | 'fail', extra: Record<string, unknown>) => {
        const body = {
          kind,
          taskId: task.taskId,
          attempt: task.attempt,
          lease: task.lease,
          agentId: agent.id,
          counter: ++counter,
          ...extra,
        };
        return { ...body, proof: reportProof(key, body) };
      };
      const start = report('start', { take: 'take-1', seq: m!.seq });
      const started = await nc.request(task.replyTo, encodeJson(start), { timeout: 5000 });
      expect(genuineReportAnswer(decodeJson(started.data), start)).toEqual({ ok: true });
      const unreadable = report('fail', {
        take: 'take-1',
        error: { code: 'E', message: 'x'.repeat(10_001) },
      });
      // Alone and in a batch with a readable report: every answer carries its right MAC.
      const alone = await nc.request(task.replyTo, encodeJson(unreadable), { timeout: 5000 });
      expect(genuineReportAnswer(decodeJson(alone.data), unreadable)).toMatchObject({ ok: false });
      const progress = report('progress', { take: 'take-1', progress: 1 });
      const both = await nc.request(
        task.replyTo,
        encodeJson({ v: 1, reports: [unreadable, progress] }),
        { timeout: 5000 },
      );
      const answers = (decodeJson(both.data) as { answers: unknown[] }).answers;
      expect(genuineReportAnswer(answers[0], unreadable)).toMatchObject({ ok: false });
      expect(genuineReportAnswer(answers[1], progress)).toEqual({ ok: true });
    } finally {
      await nc.close();
      await fabric.close();
      await server.close();
    }
  });
});

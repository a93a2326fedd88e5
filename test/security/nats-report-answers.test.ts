/**
 * Report batches whose answers would not fit NATS' `max_payload`. The sidecar answers reports
 * from a timer (after the store's commit); `msg.respond` throws when the answer is too big, and
 * an exception there ended the sidecar process. A refusal used to repeat the reporter's
 * `agentId`, which reports did not bound: one batch of reports with ~900-character agent ids
 * (1 MiB of request) was answered with more than 1 MiB.
 *
 * Now ids in reports are bounded (`MAX_ID_LENGTH`: such a report is not a report, and its
 * refusal repeats nothing of it), and an answer that cannot be sent all the same (a server with
 * a small `max_payload`: a batch of 1024 empty reports is answered with ~110 KB) is dropped and
 * counted (`stats.sendsFailed`) — the sidecar goes on, and the task the reports named is
 * untouched: a real worker completes it afterwards.
 */
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { afterEach, beforeEach, expect, it } from 'vitest';
import { AgentFabric } from '../../src/fabric.js';
import { TaskStatus } from '../../src/task.js';
import { natsNames } from '../../src/transport/nats/subjects.js';
import type { TaskMessage } from '../../src/transport/nats/wire.js';
import { decodeJson, encodeJson } from '../../src/transport/nats/wire.js';
import { MAX_ID_LENGTH } from '../../src/validate.js';
import { jetstream } from '@nats-io/jetstream';
import { runsToCompletion } from '../fixtures/nats/run-to-completion.js';
import { describeNats, startNatsServer, type NatsServer } from '../fixtures/nats-server.js';

/** Exceptions nobody caught (a throw in a timer of the sidecar) while a test runs. */
let uncaught: unknown[] = [];
const onUncaught = (e: unknown): void => void uncaught.push(e);
beforeEach(() => {
  uncaught = [];
  process.on('uncaughtException', onUncaught);
});
afterEach(() => {
  process.off('uncaughtException', onUncaught);
});

/** A sidecar with one `nats` agent and a task pinned to it; the task's message, pulled. */
async function sidecarWithTask(server: NatsServer, namespace: string) {
  const nats = { url: server.url, namespace };
  const fabric = new AgentFabric({ heartbeatIntervalSeconds: 60 }, { nats });
  await fabric.start();
  const agent = await fabric.spawn({ name: 'w', model: 'm', executor: 'nats' });
  await fabric.natsExecutor!.consumersReady();
  await fabric.heartbeat(agent.id);
  const task = await fabric.schedule({ agentId: agent.id, taskType: 'double', payload: 21 });
  // The attacker pulls the message (for its lease and reply subject) and gives it back.
  const evil = await connect({ servers: server.url });
  const consumer = await jetstream(evil).consumers.get(
    natsNames(namespace).stream,
    natsNames(namespace).agentConsumer(agent.id),
  );
  const m = await consumer.next({ expires: 5000 });
  if (m === null) throw new Error('nothing pulled');
  const msg = decodeJson(m.data) as TaskMessage;
  m.nak();
  return { nats, fabric, agent, task, evil, msg };
}

async function send(nc: NatsConnection, subject: string, body: Uint8Array) {
  return nc.request(subject, body, { timeout: 3000 }).then(
    (r) => decodeJson(r.data) as { answers?: { ok: boolean; code?: string; message?: string }[] },
    () => undefined,
  );
}

describeNats('NATS: report batches whose answers would exceed max_payload', () => {
  it('refuses reports with over-long ids without repeating them, and keeps running', async () => {
    const server = await startNatsServer();
    try {
      const { nats, fabric, agent, task, evil, msg } = await sidecarWithTask(server, 'mp1');
      const stats = fabric.natsExecutor!.stats;
      const report = (agentId: string) => ({
        kind: 'complete',
        taskId: msg.taskId,
        attempt: msg.attempt,
        lease: msg.lease,
        agentId,
        proof: 'x',
        take: 't',
        counter: 1,
        result: 'forged',
      });
      // The reviewer's batch: it fits max_payload, its refusals (each repeating the agent id)
      // did not.
      const long = 'A'.repeat(870);
      const body = encodeJson({ v: 1, reports: Array.from({ length: 1000 }, () => report(long)) });
      expect(body.length).toBeLessThan(evil.info!.max_payload);
      const answer = await send(evil, msg.replyTo, body);
      expect(answer?.answers).toHaveLength(1000);
      expect(new Set(answer!.answers!.map((a) => a.code))).toEqual(
        new Set(['FABRIC_ERR_UNAUTHENTICATED']),
      );
      expect(JSON.stringify(answer)).not.toContain(long);
      // At the bound an id is read (and refused: no proof); nothing of it over the bound.
      const [atBound] = (await send(
        evil,
        msg.replyTo,
        encodeJson({ v: 1, reports: [report('B'.repeat(MAX_ID_LENGTH))] }),
      ))!.answers!;
      expect(atBound!.code).toBe('FABRIC_ERR_PERMISSION_DENIED');
      expect(stats.reportsRejected).toBe(1001);
      expect(stats.reportsAccepted).toBe(0);
      expect(uncaught).toEqual([]);

      // The task the reports named is untouched, and runs.
      const before = await fabric.getTask(task.id);
      expect(before.status).toBe(TaskStatus.SCHEDULED);
      expect(before.result).toBeUndefined();
      const done = await runsToCompletion(fabric, nats, agent, task.id);
      expect(done).toMatchObject({ status: TaskStatus.COMPLETED, result: 42, attempt: 1 });
      expect(uncaught).toEqual([]);
      await evil.close();
      await fabric.close();
    } finally {
      await server.close();
    }
  });

  it('drops (and counts) an answer over max_payload instead of throwing out of its timer', async () => {
    const server = await startNatsServer({ maxPayload: 64 * 1024 });
    try {
      const { nats, fabric, agent, task, evil, msg } = await sidecarWithTask(server, 'mp2');
      const stats = fabric.natsExecutor!.stats;
      // 1024 reports of 2 bytes each: ~3 KB of request, ~110 KB of refusals.
      const body = encodeJson({ v: 1, reports: Array.from({ length: 1024 }, () => ({})) });
      expect(body.length).toBeLessThan(evil.info!.max_payload);
      expect(await send(evil, msg.replyTo, body)).toBeUndefined(); // no answer: it was too big
      expect(stats.reportsRejected).toBe(1024);
      expect(stats.sendsFailed).toBe(1);
      expect(uncaught).toEqual([]);

      // The sidecar still answers, and its task runs.
      const small = await send(evil, msg.replyTo, encodeJson({ v: 1, reports: [{}] }));
      expect(small?.answers?.[0]?.code).toBe('FABRIC_ERR_UNAUTHENTICATED');
      expect((await fabric.getTask(task.id)).status).toBe(TaskStatus.SCHEDULED);
      const done = await runsToCompletion(fabric, nats, agent, task.id);
      expect(done).toMatchObject({ status: TaskStatus.COMPLETED, result: 42, attempt: 1 });
      expect(uncaught).toEqual([]);
      await evil.close();
      await fabric.close();
    } finally {
      await server.close();
    }
  });
});

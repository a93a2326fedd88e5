/**
 * Seeded hostile input on the NATS subjects a sidecar listens on, from a client that may read
 * the task stream (so it knows a task's id, attempt, lease and reply subject) but holds no
 * agent credential: reports (single and batched) with each field right or wrong, junk results
 * and errors, heartbeats, vouch questions, ended notices, cut-off and non-JSON bodies, as
 * requests and as plain publishes. What must hold: every report refused (none accepted without
 * a proof), nothing thrown nobody caught, the task untouched — and a real worker then completes
 * it once, with its own result.
 *
 * Written as a standing check after the hardening rounds; it found nothing on the code it was
 * written against (`FUZZ_SEED`, `FUZZ_SCALE` explore further).
 */
import { jetstream } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import { expect, it } from 'vitest';
import { AgentFabric } from '../../src/fabric.js';
import { TaskStatus } from '../../src/task.js';
import { natsNames } from '../../src/transport/nats/subjects.js';
import {
  decodeJson,
  encodeJson,
  genuineReportAnswer,
  type AnsweredReport,
  type TaskMessage,
} from '../../src/transport/nats/wire.js';
import { Fuzz, fuzzCount, fuzzSeed, watchUncaught } from '../fixtures/fuzz.js';
import { runsToCompletion } from '../fixtures/nats/run-to-completion.js';
import { describeNats, startNatsServer } from '../fixtures/nats-server.js';

describeNats('seeded hostile input on the NATS subjects (a real nats-server)', () => {
  it('refuses every forged report and leaves the task to its worker', async () => {
    const uncaught = watchUncaught();
    const server = await startNatsServer();
    const namespace = 'fuzz';
    const nats = { url: server.url, namespace };
    const fabric = new AgentFabric({ heartbeatIntervalSeconds: 60 }, { nats });
    const evil = await connect({ servers: server.url });
    try {
      await fabric.start();
      const agent = await fabric.spawn({ name: 'w', model: 'm', executor: 'nats' });
      const other = await fabric.spawn({ name: 'o', model: 'm', executor: 'nats' });
      await fabric.natsExecutor!.consumersReady();
      await fabric.heartbeat(agent.id);
      const task = await fabric.schedule({ agentId: agent.id, taskType: 'double', payload: 21 });
      const names = natsNames(namespace);
      const consumer = await jetstream(evil).consumers.get(
        names.stream,
        names.agentConsumer(agent.id),
      );
      const pulled = await consumer.next({ expires: 5000 });
      if (pulled === null) throw new Error('nothing pulled');
      const msg = decodeJson(pulled.data) as TaskMessage;
      pulled.nak();

      const fuzz = new Fuzz(fuzzSeed(20261205));
      const ids = [agent.id, other.id, msg.taskId, 'x'];
      const right = <T>(value: T, wrong: readonly unknown[]): unknown =>
        fuzz.chance(0.8) ? value : fuzz.pick(wrong);
      const report = (): Record<string, unknown> => {
        const r: Record<string, unknown> = {
          kind: fuzz.pick(['start', 'progress', 'complete', 'fail', 'x']),
          taskId: right(msg.taskId, ids),
          attempt: right(msg.attempt, [0, 2, 2 ** 53, -1, 1.5]),
          lease: right(msg.lease, ['x', '', `${msg.lease}x`]),
          agentId: right(agent.id, ids),
          proof: fuzz.pick(['x', 'AAAA', msg.lease, '']),
        };
        if (fuzz.chance(0.5)) r.result = fuzz.junk();
        if (fuzz.chance(0.3)) r.progress = fuzz.junk();
        if (fuzz.chance(0.3))
          r.error = fuzz.chance(0.5) ? { code: 'X', message: 'y' } : fuzz.junk();
        if (fuzz.chance(0.3)) r.retry = fuzz.chance(0.5) ? true : fuzz.junk();
        if (fuzz.chance(0.5)) r.take = fuzz.pick(['t1', 't2', '', 'a'.repeat(65)]);
        if (fuzz.chance(0.3)) r.seq = fuzz.pick([1, 2, 0, 2 ** 53]);
        if (fuzz.chance(0.1)) r[fuzz.pick(['__proto__', 'extra', 'constructor'])] = fuzz.junk();
        return r;
      };
      const prefix = `fabric.${namespace}`;
      const subjects = [
        msg.replyTo,
        msg.replyTo,
        msg.replyTo,
        `${prefix}.hb.${agent.id}`,
        `${prefix}.hb.${other.id}`,
        `${prefix}.vouch`,
        `${prefix}.ended.${msg.taskId}`,
      ];
      const bodyFor = (subject: string): unknown => {
        if (subject.includes('.hb.')) {
          return fuzz.chance(0.7)
            ? {
                ts: fuzz.pick([Date.now(), 1, 2 ** 53, -1, 0.5]),
                proof: fuzz.pick(['x', msg.lease]),
              }
            : fuzz.junk();
        }
        if (subject.endsWith('.vouch')) {
          return fuzz.chance(0.7)
            ? {
                agentId: fuzz.pick(ids),
                kind: 'complete',
                taskId: msg.taskId,
                attempt: 1,
                proof: 'x',
                nonce: 'n'.repeat(fuzz.pick([15, 16, 64, 65])),
              }
            : fuzz.junk();
        }
        if (fuzz.chance(0.3)) {
          const n = fuzz.pick([0, 1, 3, 50]);
          return { v: fuzz.pick([1, 2]), reports: Array.from({ length: n }, report) };
        }
        return fuzz.chance(0.9) ? report() : fuzz.junk();
      };

      // Every answer to a body that carries the attempt's lease and the ids an answer's MAC binds
      // (each of its type) verifies as a worker checks it, refusals of unreadable bodies too: a
      // worker whose own report the sidecar could not read would otherwise wait on forever.
      let unsigned = 0;
      let signed = 0;
      const binding = (b: unknown): AnsweredReport | undefined => {
        const r = b as Record<string, unknown> | null;
        if (typeof r !== 'object' || r === null || Array.isArray(r)) return undefined;
        const { kind, agentId, taskId, attempt, lease, take } = r;
        return ['start', 'progress', 'complete', 'fail'].includes(kind as string) &&
          typeof agentId === 'string' &&
          typeof taskId === 'string' &&
          typeof attempt === 'number' &&
          lease === msg.lease &&
          (take === undefined || typeof take === 'string')
          ? ({ kind, agentId, taskId, attempt, lease, take } as AnsweredReport)
          : undefined;
      };
      const checkSigned = (sent: Uint8Array, got: Uint8Array): void => {
        const body = decodeJson(sent) as { v?: unknown; reports?: unknown } | undefined;
        const answer = decodeJson(got) as { answers?: unknown[] } | undefined;
        const pairs: Array<[unknown, unknown]> = Array.isArray(answer?.answers)
          ? (body!.reports as unknown[]).map((r, i) => [r, answer.answers![i]])
          : [[body, answer]];
        for (const [r, a] of pairs) {
          const b = binding(r);
          if (b === undefined) continue;
          if (genuineReportAnswer(a, b) === undefined) unsigned++;
          else signed++;
        }
      };
      const pending: Promise<unknown>[] = [];
      for (let i = fuzzCount(3000); i > 0; i--) {
        const subject = fuzz.pick(subjects);
        let data = encodeJson(bodyFor(subject));
        if (fuzz.chance(0.03)) data = data.subarray(0, Math.floor(fuzz.next() * data.length));
        if (fuzz.chance(0.02)) data = new Uint8Array([0xff, 0xfe, 0x00]);
        // Requests where the sidecar answers (reports, heartbeats); the rest are published.
        const answered = subject === msg.replyTo || subject.includes('.hb.');
        if (answered && fuzz.chance(0.5)) {
          const sent = data;
          pending.push(
            evil.request(subject, data, { timeout: 3000 }).then(
              (m) => {
                if (subject === msg.replyTo) checkSigned(sent, m.data);
              },
              () => undefined,
            ),
          );
        } else {
          evil.publish(subject, data);
        }
        if (pending.length >= 64) await Promise.all(pending.splice(0));
      }
      await Promise.all(pending);
      await evil.flush();

      expect(signed).toBeGreaterThan(100);
      expect(unsigned).toBe(0);
      const stats = fabric.natsExecutor!.stats;
      expect(stats.reportsAccepted).toBe(0);
      expect(stats.reportsRejected).toBeGreaterThan(1000);
      const before = await fabric.getTask(task.id);
      expect(before.status).toBe(TaskStatus.SCHEDULED);
      expect(before.result).toBeUndefined();

      const done = await runsToCompletion(fabric, nats, agent, task.id);
      expect(done).toMatchObject({ status: TaskStatus.COMPLETED, result: 42, attempt: 1 });
      expect(uncaught.errors).toEqual([]);
    } finally {
      uncaught.stop();
      await evil.close();
      await fabric.close();
      await server.close();
    }
  }, 120_000);
});

/**
 * The vouch question a sidecar asks about a report of another sidecar's agent carries the
 * report's `proof`, which the question's schema caps at 100 characters (a real proof has 43);
 * reports had no cap. A report whose proof was longer — any length the NATS payload allows — was
 * published to every sidecar as a question the agent's own sidecar would not read, and the
 * asking sidecar waited out the whole vouch timeout before refusing it.
 *
 * Now a report's proof has the question's cap: one over it is not a report, refused at once
 * (`FABRIC_ERR_UNAUTHENTICATED`, as an over-long id) and nobody is asked; one exactly at it is
 * asked about, answered by the agent's own sidecar, and refused as not proven.
 * Two real sidecars on one real nats-server; a raw NATS worker holding a pool task's message.
 */
import { connect } from '@nats-io/transport-node';
import { expect, it } from 'vitest';
import { AgentFabric } from '../../src/fabric.js';
import { TaskStatus } from '../../src/task.js';
import { natsNames } from '../../src/transport/nats/subjects.js';
import { MAX_PROOF_LENGTH, decodeJson } from '../../src/transport/nats/wire.js';
import { describeNats, natsServerPerSuite } from '../fixtures/nats-server.js';
import { holdMessage } from '../fixtures/nats/ready-fabric.js';

describeNats('NATS: the proof of a report asked about across sidecars', () => {
  const server = natsServerPerSuite();

  it('is refused at once one over the vouch cap, and asked about exactly at it', async () => {
    const ns = 'proofcap';
    const nats = {
      url: server().url,
      namespace: ns,
      sidecarKey: 'proof-cap-test-key-0123456789abcdef',
    };
    const names = natsNames(ns);
    const a = new AgentFabric({}, { nats });
    const b = new AgentFabric({}, { nats });
    const spy = await connect({ servers: nats.url });
    let held: Awaited<ReturnType<typeof holdMessage>> | undefined;
    try {
      await a.start();
      await b.start();
      // x is A's agent; B schedules the pool's task, so B asks A about x's reports.
      await a.createPool({ poolId: 'p', model: 'm', executor: 'nats', minAgents: 0 });
      const x = await a.spawn({ name: 'x', model: 'm', executor: 'nats', poolId: 'p' });
      await b.createPool({ poolId: 'p', model: 'm', executor: 'nats', minAgents: 0 });
      await b.spawn({ name: 'slot', model: 'm', executor: 'nats', poolId: 'p', heartbeat: 'auto' });
      await a.natsExecutor!.consumersReady();
      await b.natsExecutor!.consumersReady();
      // What goes over `vouch`, and the sidecars' answers to it (`{ ok, mac }`, no code).
      const questions: { proof: string }[] = [];
      const answers: unknown[] = [];
      spy.subscribe(names.vouch, {
        callback: (_e, m) => {
          questions.push(m.json());
        },
      });
      spy.subscribe('_INBOX.>', {
        callback: (_e, m) => {
          const body = decodeJson(m.data) as Record<string, unknown> | undefined;
          if (body?.mac !== undefined && body.code === undefined) answers.push(body);
        },
      });
      await spy.flush();
      const task = await b.scheduleToPool('p', 't', 1);
      held = await holdMessage(nats.url, names.stream, names.poolConsumer('p'));
      expect(held.msg.taskId).toBe(task.id);
      const start = held.signed(x.id, x.credential, 'start', {
        take: 'take-1',
        seq: held.m.seq,
        counter: 1,
      });

      // One over the cap: not a report. No question goes out; refused at once.
      const over = { ...start, proof: 'p'.repeat(MAX_PROOF_LENGTH + 1) };
      expect(await held.report(over)).toMatchObject({
        ok: false,
        code: 'FABRIC_ERR_UNAUTHENTICATED',
      });
      await spy.flush();
      expect(questions).toEqual([]);

      // Exactly at the cap: asked about; x's own sidecar (A) reads the question and answers no.
      const at = { ...start, proof: 'p'.repeat(MAX_PROOF_LENGTH) };
      expect(await held.report(at)).toMatchObject({
        ok: false,
        code: 'FABRIC_ERR_PERMISSION_DENIED',
      });
      await spy.flush();
      expect(questions.map((q) => q.proof.length)).toEqual([MAX_PROOF_LENGTH]);
      expect(answers).toEqual([{ ok: false, mac: expect.any(String) }]);
      expect(await b.getTask(task.id)).toMatchObject({ status: TaskStatus.SCHEDULED });

      // x's real proof: vouched for, the task starts.
      expect(await held.report(start)).toMatchObject({ ok: true });
      expect(await b.getTask(task.id)).toMatchObject({ status: TaskStatus.RUNNING });
    } finally {
      await held?.nc.close();
      await spy.close();
      await a.close();
      await b.close();
    }
  }, 60_000);
});

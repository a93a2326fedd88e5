/**
 * Genuine answers replayed to a later report of the same take-up. An answer's MAC bound the
 * report's kind, agent, task, attempt and take-up, but a take-up sends any number of `progress`
 * reports: the sidecar's `ok` to the first verified as the answer to every later one. A client
 * that reads the worker's reply subjects (`_INBOX.>`, which nats.js numbers in order) and may
 * publish there could answer a progress report of an attempt the fabric had ended with that old
 * `ok` ahead of the sidecar's refusal, and the worker took the progress as accepted — over
 * `FabricWorker`, a refused progress is how a handler learns its attempt is over when it missed
 * the ended notice.
 *
 * Now each report carries a `nonce` its worker made for it, and the answer's MAC covers it: the
 * replayed `ok` does not verify, and the worker waits on for the sidecar's refusal.
 *
 * The attacker holds no credential and reads no task message (so no lease): it only reads and
 * publishes on `_INBOX.>`. It watches `fabric.<ns>.res.>` only to time its replay to the
 * request's own reply subject, which a real one would find by numbering on from the last.
 */
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { expect, it } from 'vitest';
import { AgentFabric } from '../../src/fabric.js';
import { TaskStatus } from '../../src/task.js';
import { NatsWorkerTransport } from '../../src/transport/nats/nats-worker-transport.js';
import { natsNames } from '../../src/transport/nats/subjects.js';
import { describeNats, startNatsServer } from '../fixtures/nats-server.js';

describeNats('NATS: a genuine answer replayed to a later report', () => {
  it('an ok to one progress report does not verify as the answer to the next', async () => {
    const server = await startNatsServer();
    const ns = 'replay';
    const fabric = new AgentFabric(
      { heartbeatIntervalSeconds: 60 },
      { nats: { url: server.url, namespace: ns } },
    );
    let transport: NatsWorkerTransport | undefined;
    let evil: NatsConnection | undefined;
    try {
      await fabric.start();
      const agent = await fabric.spawn({ name: 'w', model: 'm', executor: 'nats' });
      await fabric.natsExecutor!.consumersReady();
      transport = await NatsWorkerTransport.connect({
        nats: { url: server.url, namespace: ns },
        agentId: agent.id,
        credential: agent.credential,
      });
      await transport.heartbeat(); // the agent is up: its task is dispatched
      const task = await fabric.schedule({ agentId: agent.id, taskType: 't', payload: 1 });
      const held = await transport.claim(5);
      expect(held?.taskId).toBe(task.id);

      // The attacker: every answer on `_INBOX.>`, by subject; a replay of the last genuine
      // `{ ok: true }` to each report's reply subject as soon as it goes out.
      // With echo: it hears its own replay in the server's order among the answers, which is
      // the order the worker got them in.
      evil = await connect({ servers: server.url });
      const answers: { subject: string; body: Record<string, unknown> }[] = [];
      let lastOk: Uint8Array | undefined;
      const replayedTo: string[] = [];
      evil.subscribe('_INBOX.>', {
        callback: (_e, m) => {
          const body = m.json<Record<string, unknown>>();
          answers.push({ subject: m.subject, body });
          if (body.ok === true) lastOk ??= m.data;
        },
      });
      evil.subscribe(natsNames(ns).results('*'), {
        callback: (_e, m) => {
          if (lastOk === undefined || !m.reply) return;
          evil!.publish(m.reply, lastOk);
          replayedTo.push(m.reply);
        },
      });
      await evil.flush();

      await transport.reportProgress(held!, { step: 1 }); // genuine ok, recorded
      await evil.flush();
      expect(lastOk).toBeDefined();

      await fabric.cancelTask(task.id, 'cancelled by test');
      // The attempt is over: the sidecar refuses the next progress, and the worker must hear that,
      // not the replayed ok.
      const second = transport.reportProgress(held!, { step: 2 }).then(
        () => 'accepted',
        (e: { code?: string }) => e.code,
      );
      expect(await second).toBe('FABRIC_ERR_TASK_STATE');
      // The replay was made, and reached the reply subject ahead of the sidecar's refusal.
      expect(replayedTo).toHaveLength(1);
      await evil.flush(); // what the server sent it before its flush's answer has arrived
      const onIt = answers.filter((a) => a.subject === replayedTo[0]).map((a) => a.body.ok);
      expect(onIt).toEqual([true, false]);
      // And the store holds the cancel, not a progress of step 2.
      const t = await fabric.getTask(task.id);
      expect(t.status).toBe(TaskStatus.CANCELLED);
    } finally {
      await evil?.close();
      await transport?.close();
      await fabric.close();
      await server.close();
    }
  });
});

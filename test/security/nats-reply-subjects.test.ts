/**
 * The reply subject of a request is the requester's choice, and the sidecar answers with its own
 * NATS permissions: a worker that may publish reports and heartbeats but not on the JetStream
 * stream API set its request's reply subject to `$JS.API.STREAM.PURGE.FABRIC_<ns>_TASKS`, and
 * the sidecar's answer (the refusal of a junk report, batch, heartbeat or vouch question) was
 * that API request: every task message of the namespace was purged. Real nats-server with a
 * worker user denied the stream API; what the stream holds is checked after each route, and the
 * task then runs with a real worker.
 */
import { jetstreamManager } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import { expect, it } from 'vitest';
import { AgentFabric } from '../../src/fabric.js';
import { TaskStatus } from '../../src/task.js';
import { natsNames } from '../../src/transport/nats/subjects.js';
import { encodeJson } from '../../src/transport/nats/wire.js';
import { runsToCompletion } from '../fixtures/nats/run-to-completion.js';
import { describeNats, startNatsServer } from '../fixtures/nats-server.js';

const NS = 'reply';
const AUTHORIZATION = `
authorization {
  users = [
    { user: sidecar, password: sidecar-pass }
    { user: worker, password: worker-pass,
      permissions: { publish: { deny: ["_INBOX.>", "$JS.API.STREAM.>"] } } }
  ]
}
`;

describeNats('NATS: a request whose reply subject is not an inbox', () => {
  it('is not answered onto the JetStream API: the task stream keeps its message', async () => {
    const server = await startNatsServer({ config: AUTHORIZATION });
    const url = server.url;
    const nats = {
      url,
      namespace: NS,
      user: 'sidecar',
      password: 'sidecar-pass',
      sidecarKey: 'reply-subjects-test-key-0123456789abcdef',
    };
    const fabric = new AgentFabric({ heartbeatIntervalSeconds: 60 }, { nats });
    const evil = await connect({ servers: url, user: 'worker', pass: 'worker-pass' });
    const admin = await connect({ servers: url, user: 'sidecar', pass: 'sidecar-pass' });
    try {
      await fabric.start();
      const agent = await fabric.spawn({ name: 'w', model: 'm', executor: 'nats' });
      await fabric.natsExecutor!.consumersReady();
      await fabric.heartbeat(agent.id);
      const task = await fabric.schedule({ agentId: agent.id, taskType: 'double', payload: 21 });
      const names = natsNames(NS);
      const jsm = await jetstreamManager(admin);
      await expect(jsm.streams.info(names.stream)).resolves.toBeDefined();

      const res = names.results(fabric.natsExecutor!.sidecarId);
      const purge = `$JS.API.STREAM.PURGE.${names.stream}`;
      const vouch = {
        agentId: agent.id,
        kind: 'complete',
        taskId: task.id,
        attempt: 1,
        take: 't',
        counter: 1,
        content: 'c',
        proof: 'p',
        nonce: 'n'.repeat(16),
      };
      // Each request the sidecar answers: a junk report, a batch, a heartbeat with no proof, a
      // vouch question. Answered onto an inbox (as a worker sends them), then with the purge of
      // the task stream as the reply subject, which the worker may not publish on itself.
      const routes: Array<[string, string, unknown]> = [
        ['report', res, { kind: 'x' }],
        ['batch', res, { v: 2, reports: [] }],
        ['heartbeat', names.heartbeat(agent.id), { ts: 1, proof: 'x' }],
        ['vouch', names.vouch, vouch],
      ];
      for (const [route, subject, body] of routes) {
        const answered = await evil.request(subject, encodeJson(body), { timeout: 5000 });
        expect(answered.data.length, route).toBeGreaterThan(0);
        evil.publish(purge, new Uint8Array()); // dropped by the server: not the worker's to send
        evil.publish(subject, encodeJson(body), { reply: purge });
        // Answered after the sidecar's answer to the request above (in order), and the server
        // given a moment for the JetStream API request that answer would have been.
        await evil.request(subject, encodeJson(body), { timeout: 5000 });
        await new Promise((r) => setTimeout(r, 200));
        const info = await jsm.streams.info(names.stream);
        expect([route, info.state.messages]).toEqual([route, 1]);
      }
      expect(fabric.natsExecutor!.stats.sendsFailed).toBeGreaterThanOrEqual(2);

      const done = await runsToCompletion(fabric, nats, agent, task.id);
      expect(done).toMatchObject({ status: TaskStatus.COMPLETED, result: 42, attempt: 1 });
    } finally {
      await evil.close();
      await admin.close();
      await fabric.close();
      await server.close();
    }
  }, 60_000);
});

/**
 * A heartbeat of a terminated agent is refused `FABRIC_ERR_AGENT_UNAVAILABLE`, and a worker acts
 * on the agent's status (a `FabricWorker` aborts its handlers on TERMINATED). The status travels
 * as a field of its own, `status`, under the answer's MAC — not only in the words of the
 * message, which the worker used to read it back from with a pattern. Real sidecar, nats-server
 * and worker transport; the answer read by a raw NATS client as well.
 */
import { connect } from '@nats-io/transport-node';
import { expect, it } from 'vitest';
import { AgentFabric } from '../../src/fabric.js';
import { hashCredential } from '../../src/lifecycle/lifecycle-manager.js';
import { NatsWorkerTransport } from '../../src/transport/nats/nats-worker-transport.js';
import { natsNames } from '../../src/transport/nats/subjects.js';
import type { Answer } from '../../src/transport/nats/wire.js';
import {
  decodeJson,
  encodeJson,
  heartbeatAnswerMac,
  heartbeatProof,
} from '../../src/transport/nats/wire.js';
import { RemoteFabricError } from '../../src/worker/fabric-worker.js';
import { describeNats, natsServerPerSuite } from '../fixtures/nats-server.js';

describeNats('NATS: the status of a refused heartbeat is a field under the MAC', () => {
  const server = natsServerPerSuite();

  it('names TERMINATED in `status`, covered by the MAC, and the worker reads it from there', async () => {
    const nats = { url: server().url, namespace: 'hbstatus' };
    const fabric = new AgentFabric({ heartbeatIntervalSeconds: 60 }, { nats });
    await fabric.start();
    const nc = await connect({ servers: nats.url });
    let transport: NatsWorkerTransport | undefined;
    try {
      const a = await fabric.spawn({ name: 'a', model: 'm', executor: 'nats' });
      await fabric.natsExecutor!.consumersReady();
      transport = await NatsWorkerTransport.connect({
        nats,
        agentId: a.id,
        credential: a.credential,
      });
      await fabric.terminate(a.id, { drainTimeoutSeconds: 0.1 });

      const key = hashCredential(a.credential);
      const ts = Date.now();
      const answer = decodeJson(
        (
          await nc.request(
            natsNames(nats.namespace).heartbeat(a.id),
            encodeJson({ ts, proof: heartbeatProof(key, a.id, ts) }),
            { timeout: 5000 },
          )
        ).data,
      ) as Answer & { ok: false; mac: string };
      expect(answer).toMatchObject({
        ok: false,
        code: 'FABRIC_ERR_AGENT_UNAVAILABLE',
        status: 'TERMINATED',
      });
      // The MAC covers the status: the same answer naming another status does not verify.
      expect(answer.mac).toBe(heartbeatAnswerMac(key, a.id, ts, answer));
      expect(answer.mac).not.toBe(
        heartbeatAnswerMac(key, a.id, ts, { ...answer, status: 'DRAINING' }),
      );
      expect(answer.mac).not.toBe(
        heartbeatAnswerMac(key, a.id, ts, { ...answer, status: undefined }),
      );

      // The worker's error carries the status in its details, as over MCP.
      const err = await transport.heartbeat().then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(RemoteFabricError);
      expect((err as RemoteFabricError).details).toEqual({ agentId: a.id, status: 'TERMINATED' });
    } finally {
      await transport?.close();
      await nc.close();
      await fabric.close();
    }
  }, 60_000);
});

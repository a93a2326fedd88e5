/**
 * A NATS client that recorded an agent's heartbeats (core NATS: anyone NATS lets subscribe to
 * `fabric.<ns>.hb.>`) replays them after the agent's sidecar restarted: the listener's memory of
 * the last timestamp is gone, so an old heartbeat must be refused on its age.
 */
import { join } from 'node:path';
import { connect } from '@nats-io/transport-node';
import { afterEach, expect, it, vi } from 'vitest';
import { AgentStatus } from '../../src/agent.js';
import type { AgentFabric } from '../../src/fabric.js';
import { hashCredential } from '../../src/lifecycle/lifecycle-manager.js';
import { natsNames } from '../../src/transport/nats/subjects.js';
import { decodeJson, encodeJson, heartbeatProof } from '../../src/transport/nats/wire.js';
import { tempDir } from '../fixtures/gateway/harness.js';
import { describeNats, natsServerPerSuite } from '../fixtures/nats-server.js';
import { openNatsFabricOn } from '../fixtures/nats/ready-fabric.js';

describeNats('NATS heartbeats replayed across a sidecar restart', () => {
  const server = natsServerPerSuite();
  afterEach(() => {
    vi.useRealTimers();
  });

  it('refuses a recorded heartbeat after the restart and takes the live agent’s next one', async () => {
    vi.useFakeTimers({ toFake: ['Date'] });
    const path = join(tempDir('nats-hb-replay'), 'state.db');
    const nats = { url: server().url, namespace: 'hbreplay' };
    const open = (): Promise<AgentFabric> => openNatsFabricOn(path, nats);
    let fabric = await open();
    const nc = await connect({ servers: nats.url });
    try {
      const a = await fabric.spawn({ name: 'a', model: 'm', executor: 'nats' });
      const key = hashCredential(a.credential);
      const subject = natsNames(nats.namespace).heartbeat(a.id);
      const send = async (body: unknown): Promise<unknown> =>
        decodeJson((await nc.request(subject, encodeJson(body), { timeout: 5000 })).data);
      const signed = (ts: number) => ({ ts, proof: heartbeatProof(key, a.id, ts) });
      // The agent heartbeats; a bystander on the bus keeps the message.
      const recorded = signed(Date.now());
      expect(await send(recorded)).toMatchObject({ ok: true, status: AgentStatus.HEALTHY });

      // Ten minutes on, the sidecar restarts (the agent has meanwhile died).
      await fabric.close();
      vi.setSystemTime(Date.now() + 600_000);
      fabric = await open();
      expect(await send(recorded)).toMatchObject({
        ok: false,
        code: 'FABRIC_ERR_UNAUTHENTICATED',
      });
      expect(fabric.natsHeartbeats!.stats).toMatchObject({ accepted: 0, rejected: 1 });
      // A live agent's heartbeat (its clock is the sidecar's) is taken as before.
      expect(await send(signed(Date.now()))).toMatchObject({ ok: true });
      expect(fabric.natsHeartbeats!.stats).toMatchObject({ accepted: 1, rejected: 1 });
    } finally {
      await nc.close();
      await fabric.close();
    }
  }, 60_000);
});

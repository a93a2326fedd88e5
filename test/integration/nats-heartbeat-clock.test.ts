/**
 * NATS heartbeats when the host's wall clock is set back (NTP, an operator fixing the date):
 * the worker keeps its timestamps growing from the last one it sent, as the protocol requires;
 * the sidecar must keep taking them, or every agent of the host turns UNHEALTHY for as long as
 * the clock went back. Real nats-server, sidecar and NatsWorker client.
 */
import { afterEach, expect, it, vi } from 'vitest';
import { AgentStatus } from '../../src/agent.js';
import { NatsWorker } from '../../src/transport/nats/nats-worker.js';
import { describeNats, natsServerPerSuite } from '../fixtures/nats-server.js';
import { readyNatsFabric } from '../fixtures/nats/ready-fabric.js';

describeNats('NATS heartbeats across a wall clock set back', () => {
  const server = natsServerPerSuite();
  afterEach(() => {
    vi.useRealTimers();
  });

  it('takes the worker’s growing heartbeats after the clock went back an hour', async () => {
    const url = server().url;
    const { fabric, agent } = await readyNatsFabric(url, 'hbclock');
    const worker = await NatsWorker.connect({
      nats: { url, namespace: 'hbclock' },
      agentId: agent.id,
      credential: agent.credential,
    });
    try {
      vi.useFakeTimers({ toFake: ['Date'] });
      expect(await worker.heartbeat()).toMatchObject({ ok: true, status: AgentStatus.HEALTHY });
      vi.setSystemTime(Date.now() - 3_600_000);
      for (let i = 0; i < 3; i++) {
        expect(await worker.heartbeat()).toMatchObject({ ok: true, status: AgentStatus.HEALTHY });
      }
      expect(fabric.natsHeartbeats!.stats).toMatchObject({ accepted: 4, rejected: 0 });
    } finally {
      vi.useRealTimers();
      await worker.close();
      await fabric.close();
    }
  }, 30_000);
});

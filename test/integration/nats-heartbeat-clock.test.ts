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

  it('takes heartbeats after the sidecar’s clock, ahead when it started, was set right', async () => {
    // A host that boots with its clock ahead (no RTC, a VM restored from a snapshot) and is set
    // right by NTP soon after the sidecar started: the listener's floor for first heartbeats
    // (its start less the skew bound) stayed on the wrong clock, so every agent's heartbeats —
    // timed right — were refused as replays for as long as the clock had been ahead.
    const url = server().url;
    vi.useFakeTimers({ toFake: ['Date'] });
    const right = Date.now();
    vi.setSystemTime(right + 600_000);
    const { fabric, agent } = await readyNatsFabric(url, 'hbahead');
    vi.setSystemTime(Date.now() - 600_000);
    const worker = await NatsWorker.connect({
      nats: { url, namespace: 'hbahead' },
      agentId: agent.id,
      credential: agent.credential,
    });
    try {
      expect(await worker.heartbeat()).toMatchObject({ ok: true, status: AgentStatus.HEALTHY });
      expect(fabric.natsHeartbeats!.stats).toMatchObject({ accepted: 1, rejected: 0 });
    } finally {
      vi.useRealTimers();
      await worker.close();
      await fabric.close();
    }
  }, 30_000);
});

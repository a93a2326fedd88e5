/**
 * The worker side of NATS when the wall clock steps back: a claim's wait and the time a worker
 * keeps retrying a report nobody answers are elapsed time, not "until the clock reads X" — set
 * back a day, neither lasts a day. Real nats-server and sidecar.
 */
import { connect } from '@nats-io/transport-node';
import { afterEach, expect, it, vi } from 'vitest';
import { NatsWorkerTransport } from '../../src/transport/nats/nats-worker-transport.js';
import { describeNats, natsServerPerSuite } from '../fixtures/nats-server.js';
import { natsAgentSide, readyNatsFabric } from '../fixtures/nats/ready-fabric.js';

const DAY = 86_400_000;

describeNats('NATS workers when the wall clock is set back', () => {
  const server = natsServerPerSuite();
  afterEach(() => {
    vi.useRealTimers();
  });

  async function sidecar(namespace: string) {
    const nats = { url: server().url, namespace };
    return { nats, ...(await readyNatsFabric(nats.url, namespace)) };
  }

  it('ends an empty claim after its wait, not a day later', async () => {
    const { nats, fabric, agent } = await sidecar('wclock1');
    const transport = await NatsWorkerTransport.connect({
      nats,
      agentId: agent.id,
      credential: agent.credential,
    });
    try {
      vi.useFakeTimers({ toFake: ['Date'] });
      const claim = transport.claim(1);
      vi.setSystemTime(Date.now() - DAY);
      await expect(claim).resolves.toBeNull();
    } finally {
      vi.useRealTimers();
      await transport.close();
      await fabric.close();
    }
  }, 20_000);

  it('stops retrying a report nobody answers after the task’s timeout, not a day later', async () => {
    const { fabric, agent } = await sidecar('wclock2');
    const nc = await connect({ servers: server().url });
    try {
      await fabric.schedule({ agentId: agent.id, taskType: 't', payload: 1, timeoutSeconds: 1 });
      const { link, consumer } = await natsAgentSide(nc, fabric, agent, 1000);
      const m = await consumer.next({ expires: 5000 });
      vi.useFakeTimers({ toFake: ['Date'] });
      const task = link.parse(m!)!;
      // The sidecar is gone: nobody listens on the task's reply subject.
      await fabric.close();
      vi.setSystemTime(Date.now() - DAY);
      await expect(link.report(task, 'progress', { progress: 1 })).resolves.toBeUndefined();
    } finally {
      vi.useRealTimers();
      await nc.close();
      await fabric.close();
    }
  }, 20_000);
});

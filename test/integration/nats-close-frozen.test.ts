/**
 * Closing a fabric whose NATS server stopped answering (frozen: SIGSTOP, as a partition or a hung
 * server looks to the client): the connection's drain waits for the server's answer to a flush,
 * and close() used to wait for it for ever — `agent-fabric serve` then never exited on SIGTERM.
 * The drain is bounded (NATS_DRAIN_TIMEOUT_MS), then the connection is closed.
 */
import { expect, it } from 'vitest';
import { AgentFabric } from '../../src/fabric.js';
import { describeNats, natsServerPerSuite } from '../fixtures/nats-server.js';

describeNats('closing the fabric while its NATS server does not answer', () => {
  const server = natsServerPerSuite();

  it('ends: the drain is bounded, then the connection is closed', async () => {
    const fabric = new AgentFabric(
      { heartbeatIntervalSeconds: 60 },
      { nats: { url: server().url, namespace: 'frozen' } },
    );
    await fabric.start();
    await fabric.spawn({ name: 'w', model: 'm', executor: 'nats' });
    await fabric.natsExecutor!.consumersReady();
    server().pause();
    try {
      await fabric.close();
      expect(fabric.isClosed).toBe(true);
    } finally {
      server().resume();
    }
  });
});

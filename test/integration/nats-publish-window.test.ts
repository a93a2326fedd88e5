/**
 * A task publish that gets no stored answer is retried with the same `Nats-Msg-Id` only while
 * JetStream's duplicate window since the attempt's dispatch still covers it (half of it, as for
 * an attempt dispatched again after a restart): a try that got no answer may have been stored,
 * and a copy sent after the window would be stored a second time and could run beside the
 * first. Past that the attempt is not published again and ends at its timeout.
 *
 * Real nats-server. The outage is planted by deleting the stream under a running sidecar (every
 * publish then gets "no responders") and making it again once the window has passed; the old
 * code went on retrying and stored the message then.
 */
import { expect, it } from 'vitest';
import { jetstreamManager, RetentionPolicy, StorageType } from '@nats-io/jetstream';
import { connect, nanos } from '@nats-io/transport-node';
import { AgentFabric } from '../../src/fabric.js';
import { TaskStatus } from '../../src/task.js';
import { natsNames } from '../../src/transport/nats/subjects.js';
import { describeNats, natsServerPerSuite } from '../fixtures/nats-server.js';

describeNats('NatsExecutor: publish retries stay inside the duplicate window', () => {
  const server = natsServerPerSuite();

  it('stops retrying once half the window has passed since dispatch; the attempt times out', async () => {
    const ns = 'pw1';
    const nc = await connect({ servers: server().url });
    const jsm = await jetstreamManager(nc);
    const stream = {
      name: natsNames(ns).stream,
      subjects: [`fabric.${ns}.task.>`],
      retention: RetentionPolicy.Workqueue,
      storage: StorageType.File,
      duplicate_window: nanos(1000), // made beforehand, as an operator may: a 1 s window
    };
    await jsm.streams.add(stream);
    const fabric = new AgentFabric(
      { heartbeatIntervalSeconds: 60 },
      { nats: { url: server().url, namespace: ns } },
    );
    try {
      await fabric.start();
      const agent = await fabric.spawn({ name: 'w', model: 'm', executor: 'nats' });
      await fabric.natsExecutor!.consumersReady();
      await fabric.heartbeat(agent.id);
      const stats = fabric.natsExecutor!.stats;

      await jsm.streams.delete(stream.name); // from here every publish goes unanswered
      const task = await fabric.schedule({
        agentId: agent.id,
        taskType: 't',
        payload: 1,
        timeoutSeconds: 3,
        maxAttempts: 1,
      });
      await new Promise((r) => setTimeout(r, 1200)); // past half the window, retrying meanwhile
      expect(stats.publishRetries).toBeGreaterThan(0);
      await jsm.streams.add(stream); // JetStream is back: a retry now would be stored

      const ended = await fabric.waitForTask(task.id, { timeoutSeconds: 10 });
      expect([ended.status, ended.attempt]).toEqual([TaskStatus.TIMEOUT, 1]);
      expect(stats.published).toBe(0);
      expect(stats.publishesGivenUp).toBe(1);
      expect((await jsm.streams.info(stream.name)).state.messages).toBe(0);
    } finally {
      await fabric.close();
      await nc.close();
    }
  });

  it('publishes a fresh attempt once: no retry, nothing given up', async () => {
    const ns = 'pw2';
    const fabric = new AgentFabric(
      { heartbeatIntervalSeconds: 60 },
      { nats: { url: server().url, namespace: ns } },
    );
    const nc = await connect({ servers: server().url });
    try {
      await fabric.start();
      const agent = await fabric.spawn({ name: 'w', model: 'm', executor: 'nats' });
      await fabric.natsExecutor!.consumersReady();
      await fabric.heartbeat(agent.id);
      await fabric.schedule({ agentId: agent.id, taskType: 't', payload: 1, timeoutSeconds: 30 });
      const stats = fabric.natsExecutor!.stats;
      const jsm = await jetstreamManager(nc);
      const name = fabric.natsExecutor!.names.stream;
      for (let i = 0; i < 100 && stats.published === 0; i++) {
        await new Promise((r) => setTimeout(r, 20));
      }
      expect([stats.published, stats.publishRetries, stats.publishesGivenUp]).toEqual([1, 0, 0]);
      expect((await jsm.streams.info(name)).state.messages).toBe(1);
    } finally {
      await fabric.close();
      await nc.close();
    }
  });
});

/**
 * A task publish is retried with the same `Nats-Msg-Id` until JetStream stores it. A try that got
 * no answer in time may have been stored (its answer lost), so after one the publish is retried
 * only while JetStream's duplicate window since that try still covers it (half of it, as for an
 * attempt dispatched again after a restart): a copy sent later would be stored a second time and
 * could run beside the first. Past that the attempt is not published again and ends at its
 * timeout. A try answered "not stored" (no stream listening) is no such risk: those are retried
 * for as long as the attempt is current.
 *
 * Real nats-server, a stream made beforehand with a 1 s duplicate window. The outage is planted by
 * deleting the stream under a running sidecar — with a subscriber that swallows the publishes
 * (no answer: they time out) or without (answered "no responders") — and making it again after
 * half the window; the code before went on retrying in both cases and stored the message then.
 */
import { expect, it, vi } from 'vitest';
import { jetstreamManager, RetentionPolicy, StorageType } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/transport-node';
import { connect, nanos } from '@nats-io/transport-node';
import type { AgentFabric } from '../../src/fabric.js';
import { TaskStatus, type Task } from '../../src/task.js';
import { natsNames } from '../../src/transport/nats/subjects.js';
import { startNatsServer } from '../fixtures/nats-server-process.js';
import { readyNatsFabric } from '../fixtures/nats/ready-fabric.js';
import { describeNats, natsServerPerSuite } from '../fixtures/nats-server.js';

describeNats('NatsExecutor: publish retries and the duplicate window', () => {
  const server = natsServerPerSuite();

  /** Waits (up to `tries` × `ms`) until the executor has published something. */
  async function untilPublished(stats: { published: number }, tries: number, ms: number) {
    for (let i = 0; i < tries && stats.published === 0; i++) {
      await new Promise((r) => setTimeout(r, ms));
    }
  }

  /**
   * A sidecar on namespace `ns` whose stream (1 s duplicate window) is deleted once its agent is
   * ready; `swallow`: a subscriber then takes every task publish and never answers.
   */
  async function outage(ns: string, swallow: boolean, windowMs = 1000) {
    const nc = await connect({ servers: server().url });
    const jsm = await jetstreamManager(nc);
    const stream = {
      name: natsNames(ns).stream,
      subjects: [`fabric.${ns}.task.>`],
      retention: RetentionPolicy.Workqueue,
      storage: StorageType.File,
      duplicate_window: nanos(windowMs),
    };
    await jsm.streams.add(stream);
    const { fabric, agent, stats } = await readyNatsFabric(server().url, ns);
    await jsm.streams.delete(stream.name);
    const sink = swallow ? nc.subscribe(`fabric.${ns}.task.>`) : undefined;
    await nc.flush(); // the server has the subscription before the first publish
    /** Ends the outage: the stream is back, nothing swallows publishes. */
    const end = async (): Promise<void> => {
      sink?.unsubscribe();
      await nc.flush();
      await jsm.streams.add(stream);
    };
    const stored = async (): Promise<number> =>
      (await jsm.streams.info(stream.name)).state.messages;
    return { nc, fabric, agent, stats, end, stored };
  }
  type Outage = Awaited<ReturnType<typeof outage>>;

  async function closeAll(fabric: AgentFabric, nc: NatsConnection): Promise<void> {
    await fabric.close();
    await nc.close();
  }

  /** Schedules one attempt on `agentId`, 8 s to time out in and none after it. */
  function scheduleOne(fabric: AgentFabric, agentId: string): Promise<Task> {
    return fabric.schedule({
      agentId,
      taskType: 't',
      payload: 1,
      timeoutSeconds: 8,
      maxAttempts: 1,
    });
  }

  /**
   * Ends the outage `o` (a retry now would be stored) and checks that the publish of `taskId`
   * was given up: the attempt timed out, never published, nothing stored.
   */
  async function expectGivenUp(o: Outage, taskId: string): Promise<void> {
    await o.end();
    const ended = await o.fabric.waitForTask(taskId, { timeoutSeconds: 15 });
    expect([ended.status, ended.attempt]).toEqual([TaskStatus.TIMEOUT, 1]);
    expect(o.stats.publishesGivenUp).toBe(1);
    expect(o.stats.published).toBe(0);
    expect(await o.stored()).toBe(0);
  }

  it('after a try with no answer, stops once half the window has passed; the attempt times out', async () => {
    const o = await outage('pw1', true);
    const { nc, fabric, agent, stats } = o;
    try {
      // The first try goes unanswered: after 5 s (the publish timeout) it counts as maybe stored.
      const task = await scheduleOne(fabric, agent.id);
      await new Promise((r) => setTimeout(r, 1200)); // past half the window since that try
      await expectGivenUp(o, task.id);
      expect(stats.publishRetries).toBe(1);
    } finally {
      await closeAll(fabric, nc);
    }
  });

  it('counts the window in elapsed time: a wall clock set back a day does not stretch it', async () => {
    const o = await outage('pw5', true);
    const { nc, fabric, agent } = o;
    try {
      // The sidecar's wall clock stands still, then goes back a day after the first try.
      vi.useFakeTimers({ toFake: ['Date'] });
      const task = await scheduleOne(fabric, agent.id);
      vi.setSystemTime(Date.now() - 86_400_000);
      await new Promise((r) => setTimeout(r, 1200)); // past half the window since that try
      await expectGivenUp(o, task.id);
    } finally {
      vi.useRealTimers();
      await closeAll(fabric, nc);
    }
  });

  it('gives up once the wall clock says the window passed, though no time passed here (a suspend)', async () => {
    // A 20 s duplicate window: 10 s to republish in, longer than the 5 s a try waits for its answer.
    const o = await outage('pw6', true, 20_000);
    const { nc, fabric, agent } = o;
    try {
      // Sees the first try go out (and answers it no more than the swallowing subscriber does).
      const tries = nc.subscribe(`fabric.pw6.task.>`, { max: 1 });
      await nc.flush();
      vi.useFakeTimers({ toFake: ['Date'] });
      const task = await scheduleOne(fabric, agent.id);
      for await (const _ of tries) break;
      // The machine was suspended for a day: the wall clock (and JetStream's window) moved on.
      vi.setSystemTime(Date.now() + 86_400_000);
      await expectGivenUp(o, task.id);
    } finally {
      vi.useRealTimers();
      await closeAll(fabric, nc);
    }
  });

  it('goes on retrying tries answered "not stored" past the window, and stores the task once', async () => {
    const { nc, fabric, agent, stats, end, stored } = await outage('pw2', false);
    try {
      await fabric.schedule({ agentId: agent.id, taskType: 't', payload: 1, timeoutSeconds: 30 });
      await new Promise((r) => setTimeout(r, 1200)); // past half the window, retrying meanwhile
      expect(stats.publishRetries).toBeGreaterThan(0);
      expect(stats.published).toBe(0);
      await end();
      await untilPublished(stats, 150, 20);
      expect([stats.published, stats.publishesGivenUp]).toEqual([1, 0]);
      expect(await stored()).toBe(1);
    } finally {
      await closeAll(fabric, nc);
    }
  });

  it('makes no retry while the connection is down; the copy the client held is stored once', async () => {
    // Its own server, stopped and started again under the sidecar.
    const own = await startNatsServer();
    const { fabric, agent, stats } = await readyNatsFabric(own.url, 'pw4');
    try {
      await own.stop();
      // Published while the connection is down: the client holds it. It goes unanswered (5 s),
      // then retries wait for the connection instead of piling up behind it.
      await fabric.schedule({ agentId: agent.id, taskType: 't', payload: 1, timeoutSeconds: 60 });
      await new Promise((r) => setTimeout(r, 11_000));
      expect([stats.published, stats.publishRetries]).toEqual([0, 1]);
      await own.restart();
      await untilPublished(stats, 400, 25);
      expect([stats.published, stats.publishRetries, stats.publishesGivenUp]).toEqual([1, 1, 0]);
      const nc = await connect({ servers: own.url });
      const jsm = await jetstreamManager(nc);
      expect((await jsm.streams.info(fabric.natsExecutor!.names.stream)).state.messages).toBe(1);
      await nc.close();
    } finally {
      await fabric.close();
      await own.close();
    }
  }, 30_000);

  it('publishes a fresh attempt once: no retry, nothing given up', async () => {
    const { fabric, agent, stats } = await readyNatsFabric(server().url, 'pw3');
    const nc = await connect({ servers: server().url });
    try {
      await fabric.schedule({ agentId: agent.id, taskType: 't', payload: 1, timeoutSeconds: 30 });
      const jsm = await jetstreamManager(nc);
      await untilPublished(stats, 100, 20);
      expect([stats.published, stats.publishRetries, stats.publishesGivenUp]).toEqual([1, 0, 0]);
      expect((await jsm.streams.info(fabric.natsExecutor!.names.stream)).state.messages).toBe(1);
    } finally {
      await closeAll(fabric, nc);
    }
  });
});

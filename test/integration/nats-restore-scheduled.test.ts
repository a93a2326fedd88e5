/**
 * A sidecar restarted on its state file with attempts dispatched but not started (SCHEDULED):
 * each goes on as the same attempt (a worker may have begun it before its start was answered),
 * published again with the same `Nats-Msg-Id` — in case the old process died between the commit
 * and the publish — which JetStream stores once at most while its duplicate window covers the
 * first publish; later it is not published again (a second copy could run beside the first).
 * Real nats-server and SQLite state file; the old process's crash before the publish is planted
 * by dropping its dispatches.
 */
import { join } from 'node:path';
import { expect, it } from 'vitest';
import { jetstream, jetstreamManager, RetentionPolicy, StorageType } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/transport-node';
import { connect, nanos } from '@nats-io/transport-node';
import { AgentFabric } from '../../src/fabric.js';
import type { AgentRecord } from '../../src/lifecycle/lifecycle-manager.js';
import type { PoolRecord } from '../../src/pools/pool-manager.js';
import type { TaskRecord } from '../../src/scheduler/task-record.js';
import { SqliteStore } from '../../src/store/sqlite-store.js';
import { TaskStatus } from '../../src/task.js';
import { NatsAgentLink } from '../../src/transport/nats/nats-agent-link.js';
import { natsNames } from '../../src/transport/nats/subjects.js';
import { tempDir, until } from '../fixtures/gateway/harness.js';
import { describeNats, natsServerPerSuite } from '../fixtures/nats-server.js';

describeNats('NatsExecutor: SCHEDULED attempts across a restart', () => {
  const server = natsServerPerSuite();

  /** A fabric on `path` (nats namespace `ns`); `drop`: its dispatches never leave. */
  async function open(path: string, ns: string, drop = false): Promise<AgentFabric> {
    const store = await SqliteStore.open<TaskRecord, AgentRecord, PoolRecord>(path);
    const fabric = new AgentFabric(
      { heartbeatIntervalSeconds: 60 },
      { store, nats: { url: server().url, namespace: ns } },
    );
    if (drop) fabric.natsExecutor!.dispatch = () => undefined;
    await fabric.start();
    return fabric;
  }

  async function messages(nc: NatsConnection, ns: string): Promise<number> {
    const jsm = await jetstreamManager(nc);
    return (await jsm.streams.info(natsNames(ns).stream)).state.messages;
  }

  /** Spawns a ready nats agent and schedules one task on `fabric`. */
  async function scheduleOne(fabric: AgentFabric, timeoutSeconds = 60) {
    const agent = await fabric.spawn({ name: 'w', model: 'm', executor: 'nats' });
    await fabric.natsExecutor!.consumersReady();
    await fabric.heartbeat(agent.id);
    const task = await fabric.schedule({
      agentId: agent.id,
      taskType: 't',
      payload: 1,
      timeoutSeconds,
    });
    return { agent, task };
  }

  /**
   * As the agent's worker: takes the one message on its consumer (attempt 1 of `taskId`),
   * reports its start and completion (`'done'`), both accepted, and acks it. Returns the link.
   */
  async function runAsWorker(
    nc: NatsConnection,
    fabric: AgentFabric,
    agent: { id: string; credential: string },
    taskId: string,
  ): Promise<NatsAgentLink> {
    const names = fabric.natsExecutor!.names;
    const consumer = await jetstream(nc).consumers.get(names.stream, names.agentConsumer(agent.id));
    const m = await consumer.next({ expires: 5000 });
    expect(m).not.toBeNull();
    const link = new NatsAgentLink(nc, names, agent.id, agent.credential, 1000);
    const message = link.parse(m!)!;
    expect([message.taskId, message.attempt]).toEqual([taskId, 1]);
    expect(await link.report(message, 'start', { take: 'w1.1' })).toEqual({ ok: true });
    expect(await link.report(message, 'complete', { result: 'done' })).toEqual({ ok: true });
    m!.ack();
    return link;
  }

  it('publishes a SCHEDULED attempt that never left again, the same attempt, and it runs once', async () => {
    const ns = 'rs1';
    const path = join(tempDir('nats-rs1'), 'state.db');
    const nc = await connect({ servers: server().url });
    let fabric = await open(path, ns, true);
    try {
      const { agent, task } = await scheduleOne(fabric);
      await new Promise((r) => setTimeout(r, 100));
      expect(await messages(nc, ns)).toBe(0); // the planted crash: committed, never published
      expect((await fabric.getTask(task.id)).status).toBe(TaskStatus.SCHEDULED);
      await fabric.close();

      fabric = await open(path, ns);
      const link = await runAsWorker(nc, fabric, agent, task.id);
      const done = await fabric.getTask(task.id);
      expect([done.status, done.attempt, done.result]).toEqual([TaskStatus.COMPLETED, 1, 'done']);
      await link.close(false);
    } finally {
      await fabric.close();
      await nc.close();
    }
  });

  it('publishes an attempt that did leave again only as a duplicate: one message in the stream', async () => {
    const ns = 'rs2';
    const path = join(tempDir('nats-rs2'), 'state.db');
    const nc = await connect({ servers: server().url });
    let fabric = await open(path, ns);
    try {
      const { agent, task } = await scheduleOne(fabric);
      await until(async () => (await messages(nc, ns)) === 1, 5000);
      await fabric.close();

      fabric = await open(path, ns);
      // The publish again is acknowledged (as a duplicate), and nothing more is stored.
      await until(() => fabric.natsExecutor!.stats.published === 1, 5000);
      expect(await messages(nc, ns)).toBe(1);
      const link = await runAsWorker(nc, fabric, agent, task.id);
      expect((await fabric.getTask(task.id)).attempt).toBe(1);
      await until(async () => (await messages(nc, ns)) === 0, 5000);
      await link.close(false);
    } finally {
      await fabric.close();
      await nc.close();
    }
  });

  it('does not publish it again once the duplicate window may have passed: it ends at its timeout', async () => {
    const ns = 'rs3';
    const path = join(tempDir('nats-rs3'), 'state.db');
    const nc = await connect({ servers: server().url });
    // Made beforehand (as another sidecar or an operator may) with a 1 s duplicate window.
    await (
      await jetstreamManager(nc)
    ).streams.add({
      name: natsNames(ns).stream,
      subjects: [`fabric.${ns}.task.>`],
      retention: RetentionPolicy.Workqueue,
      storage: StorageType.File,
      duplicate_window: nanos(1000),
    });
    let fabric = await open(path, ns, true);
    try {
      const { task } = await scheduleOne(fabric, 3);
      await fabric.close();
      await new Promise((r) => setTimeout(r, 600)); // past half the window

      fabric = await open(path, ns);
      const restored = await fabric.getTask(task.id);
      expect([restored.status, restored.attempt]).toEqual([TaskStatus.SCHEDULED, 1]);
      const ended = await fabric.waitForTask(task.id, { timeoutSeconds: 10 });
      expect([ended.status, ended.attempt]).toEqual([TaskStatus.TIMEOUT, 1]);
      expect(await messages(nc, ns)).toBe(0);
      expect(fabric.natsExecutor!.stats.published).toBe(0);
    } finally {
      await fabric.close();
      await nc.close();
    }
  });
});

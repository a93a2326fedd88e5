/**
 * Terminating a `nats` agent deletes its durable consumer `agent-<id>` (and what is left on its
 * subject): agents spawned and terminated (pool scale-down, crash-loop respawns) used to leave
 * one durable consumer each on the server for good. The pool's consumer, which the pool's other
 * workers pull from (on any sidecar), stays, and they go on running the pool's tasks.
 */
import { jetstreamManager } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import { expect, it } from 'vitest';
import { AgentFabric } from '../../src/fabric.js';
import { TaskStatus } from '../../src/task.js';
import { NatsWorker } from '../../src/transport/nats/nats-worker.js';
import { natsNames } from '../../src/transport/nats/subjects.js';
import { until } from '../fixtures/gateway/harness.js';
import { describeNats, startNatsServer } from '../fixtures/nats-server.js';

describeNats('NATS: consumers of terminated agents', () => {
  it("are deleted, the pool's consumer is not, and the pool keeps working", async () => {
    const server = await startNatsServer();
    const ns = 'tc';
    const names = natsNames(ns);
    const nats = { url: server.url, namespace: ns };
    const fabric = new AgentFabric({ heartbeatIntervalSeconds: 60 }, { nats });
    await fabric.start();
    const nc = await connect({ servers: server.url });
    const jsm = await jetstreamManager(nc);
    const consumers = async () => {
      const out: string[] = [];
      // The lister gave null for an entry while consumers were being deleted (seen in CI).
      for await (const c of jsm.consumers.list(names.stream)) {
        if ((c as typeof c | null) !== null) out.push(c.name);
      }
      return out.sort();
    };
    try {
      await fabric.createPool({ poolId: 'p', model: 'm', executor: 'nats', minAgents: 0 });
      const stays = await fabric.spawn({
        name: 'stays',
        model: 'm',
        executor: 'nats',
        poolId: 'p',
      });
      // Spawned and terminated: pool members, and pinned agents, one with a task left queued
      // in JetStream (no worker ever pulled it).
      const gone: string[] = [];
      let leftTask = '';
      for (let i = 0; i < 6; i++) {
        const a = await fabric.spawn({
          name: `g${i}`,
          model: 'm',
          executor: 'nats',
          ...(i % 2 === 0 ? { poolId: 'p' } : {}),
        });
        await fabric.natsExecutor!.consumersReady();
        if (i === 1) {
          await fabric.heartbeat(a.id);
          leftTask = (await fabric.schedule({ agentId: a.id, taskType: 't', payload: 1 })).id;
          await until(async () => (await jsm.streams.info(names.stream)).state.messages === 1);
        }
        await fabric.terminate(a.id, { drainTimeoutSeconds: 0.1 });
        gone.push(a.id);
      }
      expect(new Set(gone.map((id) => fabric.lifecycle.peek(id)?.status))).toEqual(
        new Set(['TERMINATED']),
      );
      const expected = [names.agentConsumer(stays.id), names.poolConsumer('p')].sort();
      await until(async () => JSON.stringify(await consumers()) === JSON.stringify(expected));
      expect(await consumers()).toEqual(expected);
      // The pinned task of the terminated agent ended with it; its message is gone too.
      expect((await fabric.getTask(leftTask)).status).not.toBe(TaskStatus.SCHEDULED);
      await until(async () => (await jsm.streams.info(names.stream)).state.messages === 0);

      // The pool's other worker still runs the pool's tasks.
      const worker = await NatsWorker.connect({
        nats,
        agentId: stays.id,
        credential: stays.credential,
        poolId: 'p',
      });
      const stop = new AbortController();
      const running = worker.run({ echo: (p) => p }, { signal: stop.signal });
      const task = await fabric.scheduleToPool('p', 'echo', { n: 7 });
      expect(await fabric.waitForTask(task.id, { timeoutSeconds: 10 })).toMatchObject({
        status: TaskStatus.COMPLETED,
        result: { n: 7 },
      });
      stop.abort();
      await running;
      await worker.close();
    } finally {
      await nc.close();
      await fabric.close();
      await server.close();
    }
  });
});

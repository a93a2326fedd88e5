/**
 * Pool ids as users choose them (any text up to 256 units) on NATS: each pool gets subjects and
 * a consumer of its own, within what nats-server takes, so its tasks reach only its workers.
 */
import { expect, it } from 'vitest';
import { jetstreamManager } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import { AgentFabric } from '../../src/fabric.js';
import { NatsWorker } from '../../src/transport/nats/nats-worker.js';
import { natsNames } from '../../src/transport/nats/subjects.js';
import { TaskStatus } from '../../src/task.js';
import { describeNats, natsServerPerSuite } from '../fixtures/nats-server.js';

describeNats('NATS: pool ids', () => {
  const suiteServer = natsServerPerSuite();

  it('runs each pool’s tasks on its own workers, for ids that once shared names and ids too long for a plain consumer name', async () => {
    const namespace = 'poolnames';
    const nats = { url: suiteServer().url, namespace };
    const fabric = new AgentFabric({ heartbeatIntervalSeconds: 60 }, { nats });
    await fabric.start();
    // U+04E2 then "d", and U+4E2D: one token (`_4e2d`) each before; and the longest id of the
    // widest escapes, whose plain consumer name would be over nats-server's 255 characters.
    const pools = ['Ӣd', '中', '中'.repeat(256)];
    const workers: NatsWorker[] = [];
    const ran = new Map<string, string[]>(pools.map((p) => [p, []]));
    const stop = new AbortController();
    const running: Promise<void>[] = [];
    for (const poolId of pools) {
      await fabric.createPool({ poolId, model: 'm', executor: 'nats', minAgents: 0 });
      const agent = await fabric.spawn({ name: 'w', model: 'm', executor: 'nats', poolId });
      await fabric.heartbeat(agent.id);
      const worker = await NatsWorker.connect({
        nats,
        agentId: agent.id,
        credential: agent.credential,
        poolId,
      });
      workers.push(worker);
      running.push(
        worker.run(
          {
            which: (_payload, ctx) => {
              ran.get(poolId)!.push(ctx.taskId);
              return poolId.slice(0, 2);
            },
          },
          { signal: stop.signal },
        ),
      );
    }
    // Every consumer was made (a name over 255 characters is refused by nats-server).
    await fabric.natsExecutor!.consumersReady();
    const scheduled = new Map<string, string[]>();
    for (const poolId of pools) {
      const tasks = await Promise.all(
        Array.from({ length: 10 }, () => fabric.scheduleToPool(poolId, 'which', null)),
      );
      scheduled.set(
        poolId,
        tasks.map((t) => t.id),
      );
    }
    for (const poolId of pools) {
      const done = await Promise.all(
        scheduled.get(poolId)!.map((id) => fabric.waitForTask(id, { timeoutSeconds: 20 })),
      );
      expect(done.map((t) => [t.status, t.result])).toEqual(
        done.map(() => [TaskStatus.COMPLETED, poolId.slice(0, 2)]),
      );
      // Run by the pool's own worker, none by another pool's.
      expect([...ran.get(poolId)!].sort()).toEqual([...scheduled.get(poolId)!].sort());
    }
    // Three pools, three consumers of the stream (and one per agent).
    const nc = await connect({ servers: suiteServer().url });
    const names = natsNames(namespace);
    const jsm = await jetstreamManager(nc);
    const consumers: string[] = [];
    for await (const c of jsm.consumers.list(names.stream)) consumers.push(c.name);
    expect(consumers.filter((c) => c.startsWith('pool-')).sort()).toEqual(
      pools.map((p) => names.poolConsumer(p)).sort(),
    );
    expect(new Set(consumers.filter((c) => c.startsWith('pool-'))).size).toBe(3);
    await nc.close();
    stop.abort();
    await Promise.all(running);
    for (const w of workers) await w.close();
    await fabric.close();
  });
});

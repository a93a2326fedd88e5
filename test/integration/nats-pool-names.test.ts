/**
 * Pools on NATS: ids as users choose them (any text up to 256 units) get subjects and a consumer
 * of their own, within what nats-server takes, so a pool's tasks reach only its workers; and a
 * worker told to serve a pool its agent is not in stops before it pulls.
 */
import { expect, it } from 'vitest';
import { jetstreamManager } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import { AgentFabric } from '../../src/fabric.js';
import { InvalidArgumentError } from '../../src/errors.js';
import { NatsWorker } from '../../src/transport/nats/nats-worker.js';
import { NatsWorkerTransport } from '../../src/transport/nats/nats-worker-transport.js';
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

  it('refuses to serve a pool its agent is not in, before pulling, and leaves the pool to its own workers', async () => {
    const nats = { url: suiteServer().url, namespace: 'poolcheck' };
    const fabric = new AgentFabric({ heartbeatIntervalSeconds: 60 }, { nats });
    await fabric.start();
    await fabric.createPool({ poolId: 'a', model: 'm', executor: 'nats', minAgents: 0 });
    await fabric.createPool({ poolId: 'b', model: 'm', executor: 'nats', minAgents: 0 });
    const inA = await fabric.spawn({ name: 'in-a', model: 'm', executor: 'nats', poolId: 'a' });
    const inB = await fabric.spawn({ name: 'in-b', model: 'm', executor: 'nats', poolId: 'b' });
    const loner = await fabric.spawn({ name: 'loner', model: 'm', executor: 'nats' });
    await fabric.natsExecutor!.consumersReady();
    await fabric.heartbeat(inB.id);
    // b's task waits in the stream while the misconfigured workers try.
    const task = await fabric.scheduleToPool('b', 'which', null);
    const wrong = await NatsWorker.connect({
      nats,
      agentId: inA.id,
      credential: inA.credential,
      poolId: 'b',
    });
    const err = await wrong.run({ which: () => 'wrong' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(InvalidArgumentError);
    expect((err as Error).message).toMatch(/agent \S+ is not in pool "b" \(its pool: "a"\)/);
    await wrong.close();
    await expect(
      NatsWorkerTransport.connect({
        nats,
        agentId: loner.id,
        credential: loner.credential,
        poolId: 'b',
      }),
    ).rejects.toThrow(/is not in pool "b" \(it is in no pool\)/);
    // Its own pool is fine, and b's worker runs b's task: nothing of it was pulled.
    const fine = await NatsWorkerTransport.connect({
      nats,
      agentId: inA.id,
      credential: inA.credential,
      poolId: 'a',
    });
    await fine.close();
    const right = await NatsWorker.connect({
      nats,
      agentId: inB.id,
      credential: inB.credential,
      poolId: 'b',
    });
    const stop = new AbortController();
    const running = right.run({ which: () => 'right' }, { signal: stop.signal });
    expect(await fabric.waitForTask(task.id, { timeoutSeconds: 20 })).toMatchObject({
      status: TaskStatus.COMPLETED,
      attempt: 1,
      result: 'right',
    });
    stop.abort();
    await running;
    await right.close();
    await fabric.close();
  });
});

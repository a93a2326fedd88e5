/**
 * A worker whose agent was terminated (a pool scaled down, an operator's terminate) while its
 * process still runs: its starts are refused, and the messages it pulled go back to the pool's
 * other workers at once instead of being terminated (each would have waited for its task's
 * timeout); the worker stops with the reason.
 */
import { jetstreamManager } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import { expect, it } from 'vitest';
import { AgentFabric } from '../../src/fabric.js';
import { NatsWorker } from '../../src/transport/nats/nats-worker.js';
import { NatsWorkerTransport } from '../../src/transport/nats/nats-worker-transport.js';
import { natsNames } from '../../src/transport/nats/subjects.js';
import { FabricWorker } from '../../src/worker/fabric-worker.js';
import { TaskStatus } from '../../src/task.js';
import { until } from '../fixtures/gateway/harness.js';
import { describeNats, natsServerPerSuite } from '../fixtures/nats-server.js';

/** A fabric on NATS with pool `p` of two agents: `stays`, and `goes`, which a test terminates. */
async function poolOfTwo(url: string, namespace: string) {
  const nats = { url, namespace };
  // AckWait 3 s, not 30: a message the server was sending to the worker's pull as the worker
  // closed it never reaches the worker (nothing to give back) and comes back after AckWait,
  // as one a crashed worker held — within the waits below. A terminated message (what this
  // guards against) would wait for its task's 300 s timeout.
  const fabric = new AgentFabric(
    { heartbeatIntervalSeconds: 60 },
    { nats: { ...nats, ackWaitSeconds: 3 } },
  );
  await fabric.start();
  await fabric.createPool({ poolId: 'p', model: 'm', executor: 'nats', minAgents: 0 });
  const stays = await fabric.spawn({ name: 'stays', model: 'm', executor: 'nats', poolId: 'p' });
  const goes = await fabric.spawn({ name: 'goes', model: 'm', executor: 'nats', poolId: 'p' });
  await fabric.natsExecutor!.consumersReady();
  return { nats, fabric, stays, goes };
}

describeNats('NATS: a worker of a terminated agent', () => {
  const suiteServer = natsServerPerSuite();

  it("gives back the pool's messages it pulled, and stops", async () => {
    const { nats, fabric, stays, goes } = await poolOfTwo(suiteServer().url, 'gone');
    const ran = { stays: 0, goes: 0 };
    const stop = new AbortController();
    const workers = await Promise.all(
      [stays, goes].map((a) =>
        NatsWorker.connect({ nats, agentId: a.id, credential: a.credential, poolId: 'p' }),
      ),
    );
    const [staying, going] = workers;
    const stayingRun = staying!.run(
      {
        t: () => {
          ran.stays++;
          return 'stays';
        },
      },
      { signal: stop.signal },
    );
    const goingRun = going!
      .run(
        {
          t: () => {
            ran.goes++;
            return 'goes';
          },
        },
        { signal: stop.signal },
      )
      .then(
        () => undefined,
        (e: unknown) => e,
      );
    await fabric.heartbeat(stays.id);
    // Terminated while it pulls (a worker that starts after its agent was terminated finds no
    // consumer: terminating deletes the agent's own).
    const nc = await connect({ servers: nats.url });
    const jsm = await jetstreamManager(nc);
    const names = natsNames(nats.namespace);
    const waiting = async (consumer: string) =>
      (await jsm.consumers.info(names.stream, consumer)).num_waiting;
    await until(
      async () =>
        (await waiting(names.agentConsumer(goes.id))) > 0 &&
        (await waiting(names.poolConsumer('p'))) > 1,
    );
    await nc.close();
    await fabric.terminate(goes.id);
    // Long timeouts: a task whose message were terminated would wait for it.
    const tasks = await Promise.all(
      Array.from({ length: 20 }, () =>
        fabric.scheduleToPool('p', 't', null, { timeoutSeconds: 300 }),
      ),
    );
    const done = await Promise.all(
      tasks.map((t) => fabric.waitForTask(t.id, { timeoutSeconds: 30 })),
    );
    expect(done.map((t) => [t.status, t.result, t.attempt])).toEqual(
      done.map(() => [TaskStatus.COMPLETED, 'stays', 1]),
    );
    // The other worker ran each once. The terminated agent's may have begun a first delivery
    // before its start was answered (`startBeforeAnswer`); none of its results counted.
    expect(ran.stays).toBe(20);
    expect(going!.stats.completed).toBe(0);
    expect(going!.stats.refused).toBeGreaterThan(0);
    // The terminated agent's worker stopped, saying why.
    const error = await goingRun;
    expect(error).toBeInstanceOf(Error);
    expect((error as Error & { code?: string }).code).toBe('FABRIC_ERR_PERMISSION_DENIED');
    stop.abort();
    await stayingRun;
    for (const w of workers) await w!.close();
    await fabric.close();
  }, 60_000);

  it('FabricWorker over NATS: gives back the message it claimed, and its run() fails', async () => {
    const { nats, fabric, stays, goes } = await poolOfTwo(suiteServer().url, 'gone2');
    // The terminated agent's worker runs alone at first, so it is the one that claims.
    const transport = await NatsWorkerTransport.connect({
      nats,
      agentId: goes.id,
      credential: goes.credential,
      poolId: 'p',
    });
    const going = FabricWorker.withTransport(transport, { claimWaitSeconds: 1 });
    // connect's pool check was a heartbeat; run()'s own first one comes after it.
    const connected = (await fabric.getAgentInfo(goes.id)).lastHeartbeat;
    const stop = new AbortController();
    let ranThere = 0;
    const goingRun = going.run({ t: () => ranThere++ }, { signal: stop.signal }).then(
      () => undefined,
      (e: unknown) => e,
    );
    await fabric.heartbeat(stays.id);
    // Terminated once its run() is under way (past its first heartbeat, which would refuse it).
    await until(async () => (await fabric.getAgentInfo(goes.id)).lastHeartbeat > connected);
    await fabric.terminate(goes.id);
    const task = await fabric.scheduleToPool('p', 't', null, { timeoutSeconds: 300 });
    const error = await goingRun;
    expect((error as { code?: string } | undefined)?.code).toBe('FABRIC_ERR_PERMISSION_DENIED');
    expect(ranThere).toBe(0);
    // The message went back at once: the pool's other worker runs it as attempt 1.
    const staying = await NatsWorker.connect({
      nats,
      agentId: stays.id,
      credential: stays.credential,
      poolId: 'p',
    });
    const stayingRun = staying.run({ t: () => 'stays' }, { signal: stop.signal });
    expect(await fabric.waitForTask(task.id, { timeoutSeconds: 30 })).toMatchObject({
      status: TaskStatus.COMPLETED,
      attempt: 1,
      result: 'stays',
    });
    stop.abort();
    await stayingRun;
    await staying.close();
    await transport.close();
    await fabric.close();
  }, 60_000);
});

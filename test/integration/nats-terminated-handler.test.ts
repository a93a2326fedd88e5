/**
 * A FabricWorker over NATS whose agent is terminated while a handler runs: the fabric ends the
 * attempt (retried on another agent of the pool) and pushes its ended notice, but the worker
 * hands notices out with heartbeats, and the terminated agent's heartbeats are refused — the
 * handler ran on beside the retry until it returned. As over MCP (worker-sdk-terminated), a
 * heartbeat refused because the agent is gone aborts the running handlers. Real nats-server,
 * real fabric, real worker transport.
 */
import { expect, it } from 'vitest';
import { AgentFabric } from '../../src/fabric.js';
import { NatsWorkerTransport } from '../../src/transport/nats/nats-worker-transport.js';
import { TaskStatus } from '../../src/task.js';
import { FabricWorker, RemoteFabricError } from '../../src/worker/fabric-worker.js';
import { until } from '../fixtures/gateway/harness.js';
import { runUntilAborted } from '../fixtures/worker-until-aborted.js';
import { describeNats, natsServerPerSuite } from '../fixtures/nats-server.js';

describeNats('NATS: a FabricWorker whose agent is terminated mid-task', () => {
  const suiteServer = natsServerPerSuite();

  it('aborts the running handler', async () => {
    const nats = { url: suiteServer().url, namespace: 'gone3' };
    const fabric = new AgentFabric({ heartbeatIntervalSeconds: 60 }, { nats });
    await fabric.start();
    await fabric.createPool({ poolId: 'p', model: 'm', executor: 'nats', minAgents: 0 });
    const goes = await fabric.spawn({ name: 'goes', model: 'm', executor: 'nats', poolId: 'p' });
    await fabric.natsExecutor!.consumersReady();
    const transport = await NatsWorkerTransport.connect({
      nats,
      agentId: goes.id,
      credential: goes.credential,
      poolId: 'p',
    });
    const worker = FabricWorker.withTransport(transport, {
      claimWaitSeconds: 1,
      heartbeatSeconds: 0.2,
    });
    const { started, reason, running, stop } = runUntilAborted(worker);
    try {
      const task = await fabric.scheduleToPool('p', 'job', null, { timeoutSeconds: 600 });
      await until(started, 15_000);
      await fabric.terminate(goes.id, { drainTimeoutSeconds: 0.1 });
      // The attempt was ended: the task waits for another agent of the pool.
      expect((await fabric.getTask(task.id)).status).toBe(TaskStatus.PENDING);
      await until(() => reason() !== undefined, 15_000);
      expect(reason()).toBeInstanceOf(RemoteFabricError);
      expect((reason() as RemoteFabricError).code).toBe('FABRIC_ERR_AGENT_UNAVAILABLE');
    } finally {
      stop.abort();
      await running;
      await transport.close();
      await fabric.close();
    }
  }, 60_000);
});

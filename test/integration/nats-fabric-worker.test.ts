/**
 * `FabricWorker` over the NATS transport, against a real nats-server: the same API as over MCP —
 * tasks run with their own signal, a cancel reaches the running handler, a refused report is a
 * RemoteFabricError with the catalog code.
 */
import { expect, it } from 'vitest';
import { AgentFabric } from '../../src/fabric.js';
import { FabricWorker } from '../../src/worker/fabric-worker.js';
import { RemoteFabricError } from '../../src/worker/worker-transport.js';
import { NatsWorkerTransport } from '../../src/transport/nats/nats-worker-transport.js';
import { TaskStatus } from '../../src/task.js';
import { until } from '../fixtures/gateway/harness.js';
import { describeNats, natsServerPerSuite } from '../fixtures/nats-server.js';

describeNats('FabricWorker over NATS', () => {
  const suiteServer = natsServerPerSuite();

  it('runs tasks and aborts a cancelled one through its own signal', async () => {
    const nats = { url: suiteServer().url, namespace: 'fw' };
    const fabric = new AgentFabric({ heartbeatIntervalSeconds: 60 }, { nats });
    await fabric.start();
    const agent = await fabric.spawn({ name: 'w', model: 'm', executor: 'nats' });
    await fabric.natsExecutor!.consumersReady();
    const transport = await NatsWorkerTransport.connect({
      nats,
      agentId: agent.id,
      credential: agent.credential,
    });
    const worker = FabricWorker.withTransport(transport, {
      heartbeatSeconds: 0.2,
      claimWaitSeconds: 1,
    });
    const stop = new AbortController();
    let abortedWith: unknown;
    let hangStarted = false;
    const running = worker.run(
      {
        double: (p) => (p as number) * 2,
        hang: (_p, ctx) =>
          new Promise((_, reject) => {
            hangStarted = true;
            ctx.signal.addEventListener('abort', () => {
              abortedWith = ctx.signal.reason;
              reject(ctx.signal.reason as Error);
            });
          }),
      },
      { signal: stop.signal },
    );
    const t = await fabric.schedule({ agentId: agent.id, taskType: 'double', payload: 21 });
    expect(await fabric.waitForTask(t.id, { timeoutSeconds: 20 })).toMatchObject({
      status: TaskStatus.COMPLETED,
      result: 42,
    });
    const h = await fabric.schedule({ agentId: agent.id, taskType: 'hang', payload: null });
    await until(() => hangStarted, 20_000);
    expect((await fabric.getTask(h.id)).status).toBe(TaskStatus.RUNNING);
    await fabric.cancelTask(h.id, 'no longer needed');
    await until(() => abortedWith !== undefined, 20_000);
    expect(abortedWith).toBeInstanceOf(RemoteFabricError);
    expect((abortedWith as RemoteFabricError).code).toBe('FABRIC_ERR_CANCELLED');
    expect((await fabric.getTask(h.id)).status).toBe(TaskStatus.CANCELLED);
    stop.abort();
    await running;
    // Hooks and usage are not carried over NATS: refused with a code, nothing hangs.
    await expect(worker.recordUsage({ tokens: 1, cost: 0 })).rejects.toMatchObject({
      code: 'FABRIC_ERR_INVALID_ARGUMENT',
    });
    await worker.close();
    await fabric.close();
  });
});

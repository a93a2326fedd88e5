/**
 * A NatsWorker whose start was accepted but whose outcome is refused (`FABRIC_ERR_TASK_STATE`:
 * the attempt ended meanwhile and the `ended` notice never reached the worker — core NATS
 * delivers at most once) counts the task as refused, not as completed: the fabric did not take
 * its result.
 */
import { expect, it } from 'vitest';
import { AgentFabric } from '../../src/fabric.js';
import { TaskStatus } from '../../src/task.js';
import { NatsWorker } from '../../src/transport/nats/nats-worker.js';
import { until } from '../fixtures/gateway/harness.js';
import { describeNats, startNatsServer } from '../fixtures/nats-server.js';

describeNats('NATS: an outcome refused after an accepted start', () => {
  it('counts as refused in the worker stats; the task keeps its own end', async () => {
    const server = await startNatsServer();
    const nats = { url: server.url, namespace: 'ro' };
    const fabric = new AgentFabric({ heartbeatIntervalSeconds: 60 }, { nats });
    await fabric.start();
    const agent = await fabric.spawn({ name: 'w', model: 'm', executor: 'nats' });
    await fabric.natsExecutor!.consumersReady();
    const worker = await NatsWorker.connect({
      nats,
      agentId: agent.id,
      credential: agent.credential,
    });
    const stop = new AbortController();
    let release!: () => void;
    const released = new Promise<void>((r) => (release = r));
    let started = false;
    const running = worker.run(
      {
        double: (p) => (p as number) * 2,
        slow: async () => {
          started = true;
          await released;
          return 'too late';
        },
      },
      { signal: stop.signal },
    );
    try {
      const ok = await fabric.schedule({ agentId: agent.id, taskType: 'double', payload: 1 });
      await fabric.waitForTask(ok.id, { timeoutSeconds: 10 });
      await until(() => worker.stats.completed === 1); // counted once the answer is in
      expect(worker.stats).toMatchObject({ started: 1, completed: 1, refused: 0 });

      const task = await fabric.schedule({ agentId: agent.id, taskType: 'slow', payload: null });
      await until(() => started);
      await until(async () => (await fabric.getTask(task.id)).status === TaskStatus.RUNNING);
      // The sidecar ends the attempt; its `ended` notice is lost on the way.
      const executor = fabric.natsExecutor!;
      const abort = executor.abort.bind(executor);
      executor.abort = () => undefined;
      await fabric.cancelTask(task.id, 'enough');
      executor.abort = abort;
      release();
      await until(() => worker.stats.refused > 0);
      expect(worker.stats).toMatchObject({ started: 2, completed: 1, failed: 0, refused: 1 });
      expect(await fabric.getTask(task.id)).toMatchObject({
        status: TaskStatus.CANCELLED,
        result: undefined,
      });
    } finally {
      stop.abort();
      await running;
      await worker.close();
      await fabric.close();
      await server.close();
    }
  });
});

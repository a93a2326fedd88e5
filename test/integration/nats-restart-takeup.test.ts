/**
 * A sidecar restarted on its state file does not know which take-up started an attempt (take-ups
 * are not stored). The first start it hears of a started attempt — in practice the running
 * worker's own start, sent again because the answer was lost with the old process — is taken as
 * the attempt's take-up: the task keeps running on that worker, not retried beside it. A second,
 * different take-up after that is a redelivery to another worker and counts the attempt lost.
 * Real nats-server, real SQLite state file, the start reports sent through the worker's link.
 */
import { join } from 'node:path';
import { expect, it } from 'vitest';
import { connect } from '@nats-io/transport-node';
import type { AgentFabric } from '../../src/fabric.js';
import { TaskStatus } from '../../src/task.js';
import { tempDir, until } from '../fixtures/gateway/harness.js';
import { describeNats, natsServerPerSuite } from '../fixtures/nats-server.js';
import { natsAgentSide, openNatsFabricOn, readyNatsAgent } from '../fixtures/nats/ready-fabric.js';

describeNats('NatsExecutor take-ups across a restart', () => {
  const server = natsServerPerSuite();

  it('takes the first start of a started attempt after a restart as its own; another take-up then counts it lost', async () => {
    const path = join(tempDir('nats-takeup'), 'state.db');
    const nats = { url: server().url, namespace: 'takeup' };
    const open = (): Promise<AgentFabric> => openNatsFabricOn(path, nats);
    let fabric = await open();
    const nc = await connect({ servers: nats.url });
    try {
      const agent = await readyNatsAgent(fabric);
      const task = await fabric.schedule({ agentId: agent.id, taskType: 't', payload: 1 });
      const { link, consumer } = await natsAgentSide(nc, fabric, agent, 1000);
      const m = await consumer.next({ expires: 5000 });
      const message = link.parse(m!)!;
      expect((await link.report(message, 'start', { take: 'w1.1' }))?.ok).toBe(true);
      expect((await fabric.getTask(task.id)).status).toBe(TaskStatus.RUNNING);

      await fabric.close();
      fabric = await open();
      // The same take-up's start again, as a worker sends it when the answer never came.
      expect(await link.report(message, 'start', { take: 'w1.1' })).toEqual({ ok: true });
      const resumed = await fabric.getTask(task.id);
      expect([resumed.status, resumed.attempt]).toEqual([TaskStatus.RUNNING, 1]);
      // Another take-up of the same attempt: its message went out again; the attempt is lost.
      const other = await link.report(message, 'start', { take: 'w2.1' });
      expect(other?.ok).toBe(false);
      await until(async () => (await fabric.getTask(task.id)).attempt === 2, 10_000);
      // The first take-up's outcome of attempt 1 is stale now.
      const late = await link.report(message, 'complete', { result: 'late' });
      expect(late?.ok).toBe(false);
      await link.close(false);
    } finally {
      await nc.close();
      await fabric.close();
    }
  });
});

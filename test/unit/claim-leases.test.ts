/**
 * Delivery leases at the fabric (`ClaimOptions.ackSeconds`), which every door (gRPC, the HTTP
 * door, MCP) passes through: bad values are refused before anything is claimed; a give-back or a
 * completion ends the lease; closing the fabric ends every lease.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '../../src/errors.js';
import { AgentFabric } from '../../src/fabric.js';
import { TaskStatus } from '../../src/task.js';

let fabric: AgentFabric | undefined;

afterEach(async () => {
  await fabric?.close();
  fabric = undefined;
});

async function withTask() {
  fabric = new AgentFabric();
  const agent = await fabric.spawn({ model: 'm', name: 'w', executor: 'remote' });
  const task = await fabric.schedule({ agentId: agent.id, taskType: 't', maxAttempts: 1 });
  return { fabric, agent, task };
}

describe('AgentFabric.claimTask with ackSeconds', () => {
  it('refuses a bad lease with a typed error and claims nothing', async () => {
    const { fabric, agent, task } = await withTask();
    for (const ackSeconds of [3601, -1, Number.NaN, Number.POSITIVE_INFINITY, '1' as never]) {
      await expect(fabric.claimTask(agent.id, { ackSeconds })).rejects.toBeInstanceOf(
        InvalidArgumentError,
      );
    }
    expect((await fabric.getTask(task.id)).status).toBe(TaskStatus.PENDING);
    expect(fabric.scheduler.agentLoad(agent.id).runningTasks).toBe(0);
  });

  it('a task given back or completed ends its lease: nothing listens for progress any more', async () => {
    const { fabric, agent, task } = await withTask();
    const a = (await fabric.claimTask(agent.id, { ackSeconds: 3600 }))!;
    expect(fabric.scheduler.events.listens('task.progress')).toBe(true);
    expect(fabric.unclaimTask(agent.id, a.taskId, a.attempt)).toBe(true);
    expect(fabric.scheduler.events.listens('task.progress')).toBe(false);
    const b = (await fabric.claimTask(agent.id, { ackSeconds: 3600 }))!;
    expect(b.taskId).toBe(task.id);
    expect(fabric.scheduler.events.listens('task.progress')).toBe(true);
    await fabric.completeTask(agent.id, b.taskId, b.attempt, 'done');
    expect(fabric.scheduler.events.listens('task.progress')).toBe(false);
    expect((await fabric.getTask(task.id)).status).toBe(TaskStatus.COMPLETED);
  });

  it('closing the fabric ends every open lease', async () => {
    const { fabric, agent } = await withTask();
    await fabric.claimTask(agent.id, { ackSeconds: 3600 });
    expect(fabric.scheduler.events.listens('task.progress')).toBe(true);
    await fabric.close();
    expect(fabric.scheduler.events.listens('task.progress')).toBe(false);
  });
});

/**
 * Regression (review finding): a task that goes back to its queue while its agent is DEGRADED.
 * A delivery lease that ran out (and, through the same `unclaim`, a gRPC or HTTP-door claim
 * whose answer the server saw undelivered) on a DEGRADED agent ended a pinned task FAILED
 * ("the claim of agent … ended before attempt 1 reached it"): `#requeueTarget` found the agent
 * not accepting and, the task being pinned, nowhere to put it. The lease exists for a lost
 * answer — exactly when the agent is likely silent for a while — and the README promises the
 * task goes back to its queue, the attempt not counted, while DEGRADED agents keep what they
 * hold. A pinned task now waits in its own agent's queue while that agent is DEGRADED; once the
 * agent was evicted (UNHEALTHY) nothing goes back to it.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { AgentStatus } from '../../src/agent.js';
import { AgentFabric } from '../../src/fabric.js';
import { TaskStatus } from '../../src/task.js';
import { until } from '../fixtures/gateway/harness.js';

let fabric: AgentFabric | undefined;
afterEach(async () => {
  await fabric?.close();
  fabric = undefined;
});

/** A remote agent without a pool (every task of it pinned) holding one claimed task. */
async function claimedTask(heartbeatIntervalSeconds: number, ackSeconds?: number) {
  fabric = new AgentFabric({ heartbeatIntervalSeconds });
  const agent = await fabric.spawn({ model: 'm', name: 'r', executor: 'remote' });
  const task = await fabric.schedule({ agentId: agent.id, taskType: 't', maxAttempts: 1 });
  const a = await fabric.claimTask(agent.id, ackSeconds === undefined ? {} : { ackSeconds });
  expect(a?.taskId).toBe(task.id);
  return { fabric, agent, task, attempt: a!.attempt };
}

async function statusOf(f: AgentFabric, agentId: string): Promise<AgentStatus> {
  return (await f.getAgentInfo(agentId)).status;
}

describe('a pinned task given back while its agent is DEGRADED', () => {
  it('an expired delivery lease queues it again on its agent, the attempt not counted', async () => {
    // Silent for 2 intervals (4 s): DEGRADED; 3 intervals (6 s): UNHEALTHY. The lease runs
    // out in between, while the agent does not answer.
    const { fabric, agent, task } = await claimedTask(2, 5);
    await until(async () => (await fabric.getTask(task.id)).status !== TaskStatus.RUNNING, 15_000);
    expect(await statusOf(fabric, agent.id)).toBe(AgentStatus.DEGRADED);
    const back = await fabric.getTask(task.id);
    expect(back.status).toBe(TaskStatus.PENDING);
    // The agent comes back (a claim counts as a heartbeat) and gets it, with attempts to spare.
    const again = await fabric.claimTask(agent.id);
    expect(again?.taskId).toBe(task.id);
    await fabric.completeTask(agent.id, task.id, again!.attempt, 'ok');
    expect((await fabric.getTask(task.id)).status).toBe(TaskStatus.COMPLETED);
  });

  it('an undelivered claim (the gRPC / HTTP-door path) queues it again on its agent', async () => {
    const { fabric, agent, task, attempt } = await claimedTask(1);
    await until(async () => (await statusOf(fabric, agent.id)) === AgentStatus.DEGRADED, 10_000);
    // What the gRPC agent service calls when it could not write a claim's answer.
    expect(fabric.unclaimTask(agent.id, task.id, attempt)).toBe(true);
    expect((await fabric.getTask(task.id)).status).toBe(TaskStatus.PENDING);
    // Still DEGRADED: it waits on its agent, not handed out.
    expect(fabric.scheduler.agentLoad(agent.id).runningTasks).toBe(0);
    const again = await fabric.claimTask(agent.id);
    expect(again?.taskId).toBe(task.id);
  });

  it('once the agent is UNHEALTHY (its work taken back) nothing is queued on it again', async () => {
    fabric = new AgentFabric({ heartbeatIntervalSeconds: 1 });
    const agent = await fabric.spawn({ model: 'm', name: 'r', executor: 'remote' });
    // Attempts to spare: only the agent's state keeps it from being queued again.
    const task = await fabric.schedule({ agentId: agent.id, taskType: 't', maxAttempts: 3 });
    expect((await fabric.claimTask(agent.id))?.taskId).toBe(task.id);
    await until(async () => (await statusOf(fabric!, agent.id)) === AgentStatus.UNHEALTHY, 10_000);
    const t = await fabric.getTask(task.id);
    expect(t.status).toBe(TaskStatus.FAILED);
    expect(t.error?.code).toBe('FABRIC_ERR_AGENT_UNAVAILABLE');
  });
});

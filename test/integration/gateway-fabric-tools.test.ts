import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentStatus } from '../../src/agent.js';
import type { AgentFabric } from '../../src/fabric.js';
import { estimateTokens } from '../../src/gateway/tool-costs.js';
import type { Sidecar } from '../../src/server/sidecar.js';
import { TaskStatus, type TaskAssignment } from '../../src/task.js';
import {
  agentId,
  agentToken,
  closeSidecar,
  DEFAULT_ALLOW,
  httpClient,
  startTestSidecar,
  text,
} from '../fixtures/gateway/harness.js';

/** The `result` a fabric tool returned. */
function resultOf<T>(r: unknown): T {
  const call = r as CallToolResult;
  expect(call.isError, text(call)).toBeFalsy();
  return (call.structuredContent as { result: T }).result;
}

describe('the fabric tools over MCP, end to end with the real fabric', () => {
  let sidecar: Sidecar;
  let fabric: AgentFabric;
  let worker: Client;
  let other: Client;
  let workerId: string;

  beforeAll(async () => {
    sidecar = await startTestSidecar({
      policies: [DEFAULT_ALLOW],
      agents: [{ name: 'worker', budget: { maxTokensPerHour: 10_000 } }, { name: 'other-worker' }],
    });
    fabric = sidecar.fabric!;
    workerId = agentId(sidecar, 'worker');
    worker = await httpClient(sidecar.url!, agentToken(sidecar, 'worker'));
    other = await httpClient(sidecar.url!, agentToken(sidecar, 'other-worker'));
  });

  afterAll(async () => {
    await worker?.close();
    await other?.close();
    await closeSidecar(sidecar);
  });

  const call = (client: Client, name: string, args: Record<string, unknown> = {}) =>
    client.callTool({ name: `fabric__${name}`, arguments: args });

  it('lists the fabric tools', async () => {
    const names = (await worker.listTools()).tools.map((t) => t.name);
    expect(names).toEqual(
      expect.arrayContaining([
        'fabric__heartbeat',
        'fabric__claim_task',
        'fabric__report_progress',
        'fabric__complete_task',
        'fabric__fail_task',
        'fabric__release_task',
        'fabric__record_usage',
      ]),
    );
  });

  it('records a heartbeat of the calling agent', async () => {
    const before = (await fabric.getAgentInfo(workerId)).lastHeartbeat;
    const info = resultOf<{ id: string; status: string; lastHeartbeat: number }>(
      await call(worker, 'heartbeat'),
    );
    expect(info).toMatchObject({ id: workerId, status: AgentStatus.HEALTHY });
    expect(info.lastHeartbeat).toBeGreaterThanOrEqual(before);
  });

  it('claims a scheduled task, reports progress, completes it, and the scheduler sees it COMPLETED', async () => {
    expect(resultOf(await call(worker, 'claim_task', { waitSeconds: 0 }))).toBeNull();
    // A waiting claim is served by a task scheduled while it waits.
    const claim = call(worker, 'claim_task', { waitSeconds: 20 });
    const task = await fabric.schedule({
      agentId: workerId,
      taskType: 'code_review',
      payload: { pr: 42 },
    });
    const assignment = resultOf<TaskAssignment>(await claim);
    expect(assignment).toMatchObject({
      taskId: task.id,
      attempt: 1,
      agentId: workerId,
      taskType: 'code_review',
      payload: { pr: 42 },
    });
    const { taskId, attempt } = assignment;

    resultOf(await call(worker, 'report_progress', { taskId, attempt, progress: { done: 1 } }));
    expect(await fabric.getTask(taskId)).toMatchObject({
      status: TaskStatus.RUNNING,
      progress: { done: 1 },
    });

    resultOf(await call(worker, 'complete_task', { taskId, attempt, result: { approve: true } }));
    const done = await fabric.waitForTask(taskId, { timeoutSeconds: 10 });
    expect(done).toMatchObject({ status: TaskStatus.COMPLETED, result: { approve: true } });
    // Repeating the same completion is a no-op.
    resultOf(await call(worker, 'complete_task', { taskId, attempt, result: { approve: true } }));
  });

  it('refuses a completion by an agent that does not hold the task, with a readable error', async () => {
    const task = await fabric.schedule({ agentId: workerId, taskType: 'code_review' });
    const { taskId, attempt } = resultOf<TaskAssignment>(
      await call(worker, 'claim_task', { waitSeconds: 5 }),
    );
    expect(taskId).toBe(task.id);
    const foreign = await call(other, 'complete_task', { taskId, attempt, result: 'mine now' });
    expect(foreign.isError).toBe(true);
    // Exactly what an unknown task gets: an agent does not learn which tasks exist.
    expect(text(foreign)).toContain('FABRIC_ERR_TASK_NOT_FOUND');
    expect(text(foreign)).toContain(`task ${taskId} does not exist`);

    const stale = await call(worker, 'complete_task', { taskId, attempt: attempt + 1 });
    expect(stale.isError).toBe(true);
    expect(text(stale)).toContain('FABRIC_ERR_TASK_STATE');
    expect(text(stale)).toContain(`attempt ${attempt + 1} is stale`);

    expect((await fabric.getTask(taskId)).status).toBe(TaskStatus.RUNNING);
    resultOf(await call(worker, 'complete_task', { taskId, attempt }));
    const late = await call(worker, 'fail_task', { taskId, attempt, message: 'too late' });
    expect(late.isError).toBe(true);
    expect(text(late)).toContain('is COMPLETED, not running');
  });

  it('hands out a task whose payload holds an integer beyond 2^53 (the nearest number in JSON)', async () => {
    const task = await fabric.schedule({
      agentId: workerId,
      taskType: 'big',
      payload: { id: 9007199254740993n, name: 'x' },
    });
    const claimed = resultOf<TaskAssignment>(await call(worker, 'claim_task', { waitSeconds: 5 }));
    expect(claimed).toMatchObject({
      taskId: task.id,
      payload: { id: 9007199254740992, name: 'x' },
    });
    resultOf(await call(worker, 'complete_task', { taskId: task.id, attempt: claimed.attempt }));
  });

  it('fails a claimed task with a code and message the scheduler records', async () => {
    const task = await fabric.schedule({
      agentId: workerId,
      taskType: 'code_review',
      maxAttempts: 1,
    });
    const { taskId, attempt } = resultOf<TaskAssignment>(
      await call(worker, 'claim_task', { waitSeconds: 5 }),
    );
    expect(taskId).toBe(task.id);
    resultOf(await call(worker, 'fail_task', { taskId, attempt, code: 'E_LINT', message: 'nope' }));
    expect(await fabric.waitForTask(taskId, { timeoutSeconds: 10 })).toMatchObject({
      status: TaskStatus.FAILED,
      error: { code: 'E_LINT', message: 'nope' },
    });
  });

  it('records model usage against the calling agent budget', async () => {
    const before = fabric.budgets.getStatus(workerId).tokensUsed;
    const r = await call(worker, 'record_usage', { tokens: 1234, cost: 0 });
    resultOf(r);
    // The reported usage, plus what the call itself cost: its result, estimated in tokens.
    expect(fabric.budgets.getStatus(workerId).tokensUsed).toBe(before + 1234 + estimateTokens(r));
  });

  it('rejects malformed arguments with an error naming the field', async () => {
    const r = await call(worker, 'complete_task', { taskId: 'x', attempt: 0 });
    expect(r.isError).toBe(true);
    expect(text(r)).toContain('fabric__complete_task.attempt');
  });
});

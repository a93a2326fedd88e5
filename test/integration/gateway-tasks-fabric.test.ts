/**
 * Fabric work as MCP tasks: with `gateway.poolScheduling`, an MCP agent schedules work to its own
 * pool through `fabric__schedule_task` sent as a task, and polls it with the standard `tasks/*`
 * methods — the official SDK client against the real sidecar over Streamable HTTP, the real
 * fabric's scheduler, another agent of the pool claiming and finishing the work over MCP.
 *
 * - `tasks/get` shows the fabric task's status (PENDING, then RUNNING once claimed);
 *   `tasks/result` gives the fabric task's result; a failed fabric task fails the MCP task;
 * - `tasks/cancel` cancels the fabric task (the fabric records it CANCELLED);
 * - the MCP task is the scheduling agent's alone (another agent's cancel leaves the fabric task
 *   queued); an agent in no pool schedules nothing, nor do malformed arguments;
 * - without `poolScheduling` the tool does not exist.
 */
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import {
  CallToolResultSchema,
  ErrorCode,
  type CallToolResult,
  type CreateTaskResult,
} from '@modelcontextprotocol/sdk/types.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  agentToken,
  closeSidecar,
  DEFAULT_ALLOW,
  httpClient,
  startTestSidecar,
  text,
  until,
} from '../fixtures/gateway/harness.js';
import { callAsTask, rpcError } from '../fixtures/gateway/tasks.js';

function schedule(client: Client, args: Record<string, unknown>): Promise<CreateTaskResult> {
  return callAsTask(client, 'fabric__schedule_task', args);
}

/** The `structuredContent.result` of a fabric tool's answer. */
function value<T>(result: unknown): T {
  return (result as CallToolResult).structuredContent?.result as T;
}

/** The fabric task behind the MCP task `taskId`, once `tasks/get` names it. */
async function fabricIdOf(client: Client, taskId: string): Promise<string> {
  let id = '';
  await until(async () => {
    const status = (await client.experimental.tasks.getTask(taskId)).statusMessage ?? '';
    id = /^fabric task (\S+) is/.exec(status)?.[1] ?? '';
    return id !== '';
  });
  return id;
}

/** `hand` claims the next task of the pool (waiting for it). */
async function claim(hand: Client): Promise<{ taskId: string; attempt: number; payload: unknown }> {
  const claimed = await hand.callTool({
    name: 'fabric__claim_task',
    arguments: { waitSeconds: 10 },
  });
  expect(claimed.isError).toBeFalsy();
  return value(claimed);
}

describe('fabric work scheduled and polled as MCP tasks', () => {
  let sidecar: Sidecar;
  let lead: Client;
  let hand: Client;

  beforeAll(async () => {
    sidecar = await startTestSidecar({
      policies: [DEFAULT_ALLOW],
      pools: [{ id: 'crew' }],
      agents: [
        { name: 'lead', poolId: 'crew' },
        { name: 'hand', poolId: 'crew' },
        { name: 'loner' },
      ],
      gateway: { poolScheduling: true, shutdownGraceSeconds: 0 },
    });
    lead = await httpClient(sidecar.url!, agentToken(sidecar, 'lead'));
    hand = await httpClient(sidecar.url!, agentToken(sidecar, 'hand'));
  });

  afterAll(async () => {
    await lead?.close();
    await hand?.close();
    await closeSidecar(sidecar);
  });

  it('lists fabric__schedule_task with optional task support', async () => {
    const tool = (await lead.listTools()).tools.find((t) => t.name === 'fabric__schedule_task');
    expect(tool?.execution).toEqual({ taskSupport: 'optional' });
  });

  it('tasks/get follows the fabric task; tasks/result is its result', async () => {
    const { task } = await schedule(lead, { taskType: 'review', payload: { n: 1 } });
    await until(async () =>
      /^fabric task \S+ is PENDING$/.test(
        (await lead.experimental.tasks.getTask(task.taskId)).statusMessage ?? '',
      ),
    );
    const fabricId = /^fabric task (\S+) is/.exec(
      (await lead.experimental.tasks.getTask(task.taskId)).statusMessage!,
    )![1]!;
    // Another agent of the pool does the work.
    const work = await claim(hand);
    expect(work).toMatchObject({ taskId: fabricId, payload: { n: 1 } });
    const running = await lead.experimental.tasks.getTask(task.taskId);
    expect(running).toMatchObject({
      status: 'working',
      statusMessage: `fabric task ${fabricId} is RUNNING`,
    });
    // The worker cannot see the lead's MCP task.
    const hidden = await rpcError(hand.experimental.tasks.getTask(task.taskId));
    expect(hidden.code).toBe(ErrorCode.InvalidParams);
    await hand.callTool({
      name: 'fabric__complete_task',
      arguments: { taskId: work.taskId, attempt: work.attempt, result: { verdict: 'ok' } },
    });
    const result = await lead.experimental.tasks.getTaskResult(task.taskId, CallToolResultSchema);
    expect(result.isError).toBeFalsy();
    expect(value(result)).toEqual({
      taskId: fabricId,
      status: 'COMPLETED',
      result: { verdict: 'ok' },
      error: null,
    });
    expect((await lead.experimental.tasks.getTask(task.taskId)).status).toBe('completed');
  });

  it('a fabric task that fails fails the MCP task', async () => {
    const { task } = await schedule(lead, { taskType: 'review' });
    const work = await claim(hand);
    await hand.callTool({
      name: 'fabric__fail_task',
      arguments: { taskId: work.taskId, attempt: work.attempt, message: 'no good' },
    });
    const result = await lead.experimental.tasks.getTaskResult(task.taskId, CallToolResultSchema);
    expect(result.isError).toBe(true);
    expect(value<{ status: string; error: { message: string } }>(result)).toMatchObject({
      status: 'FAILED',
      error: { message: 'no good' },
    });
    expect((await lead.experimental.tasks.getTask(task.taskId)).status).toBe('failed');
  });

  it('tasks/cancel cancels the fabric task', async () => {
    const { task } = await schedule(lead, { taskType: 'review', payload: 'doomed' });
    const fabricId = await fabricIdOf(lead, task.taskId);
    expect((await lead.experimental.tasks.cancelTask(task.taskId)).status).toBe('cancelled');
    await until(async () => (await sidecar.fabric!.getTask(fabricId)).status === 'CANCELLED');
    // Nothing is left for the pool to claim.
    const none = await hand.callTool({ name: 'fabric__claim_task', arguments: { waitSeconds: 0 } });
    expect(value(none)).toBeNull();
  });

  it("another agent's cancel of the task is not found and leaves the fabric task queued", async () => {
    const { task } = await schedule(lead, { taskType: 'review', payload: 'kept' });
    const fabricId = await fabricIdOf(lead, task.taskId);
    const refused = await rpcError(hand.experimental.tasks.cancelTask(task.taskId));
    expect(refused.code).toBe(ErrorCode.InvalidParams);
    expect((await sidecar.fabric!.getTask(fabricId)).status).toBe('PENDING');
    expect((await lead.experimental.tasks.getTask(task.taskId)).status).toBe('working');
    await lead.experimental.tasks.cancelTask(task.taskId);
    await until(async () => (await sidecar.fabric!.getTask(fabricId)).status === 'CANCELLED');
  });

  it('malformed arguments schedule nothing', async () => {
    const before = (await sidecar.fabric!.listTasks({ pageSize: 1000 })).items.length;
    for (const args of [
      {},
      { taskType: '' },
      { taskType: 'x'.repeat(257) },
      { taskType: 42 },
      { taskType: 'review', timeoutSeconds: -1 },
      { taskType: 'review', extra: true },
    ]) {
      const r = await lead.callTool({ name: 'fabric__schedule_task', arguments: args });
      expect(r.isError).toBe(true);
      expect(text(r)).toContain('FABRIC_ERR_INVALID_ARGUMENT');
    }
    expect((await sidecar.fabric!.listTasks({ pageSize: 1000 })).items).toHaveLength(before);
  });

  it('an agent in no pool schedules nothing', async () => {
    const loner = await httpClient(sidecar.url!, agentToken(sidecar, 'loner'));
    try {
      const before = (await sidecar.fabric!.listTasks({ pageSize: 1000 })).items.length;
      const r = await loner.callTool({
        name: 'fabric__schedule_task',
        arguments: { taskType: 'review' },
      });
      expect(r.isError).toBe(true);
      expect(text(r)).toContain('in no pool');
      expect((await sidecar.fabric!.listTasks({ pageSize: 1000 })).items).toHaveLength(before);
    } finally {
      await loner.close();
    }
  });
});

describe('without gateway.poolScheduling', () => {
  it('there is no fabric__schedule_task', async () => {
    const sidecar = await startTestSidecar({
      policies: [DEFAULT_ALLOW],
      pools: [{ id: 'crew' }],
      agents: [{ name: 'lead', poolId: 'crew' }],
      gateway: { shutdownGraceSeconds: 0 },
    });
    const lead = await httpClient(sidecar.url!, agentToken(sidecar, 'lead'));
    try {
      const names = (await lead.listTools()).tools.map((t) => t.name);
      expect(names).toContain('fabric__claim_task');
      expect(names).not.toContain('fabric__schedule_task');
      const r = await rpcError(
        lead.callTool({ name: 'fabric__schedule_task', arguments: { taskType: 'review' } }),
      );
      expect(r.message).toContain('Unknown tool');
    } finally {
      await lead.close();
      await closeSidecar(sidecar);
    }
  });
});

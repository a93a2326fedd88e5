/**
 * Task-augmented tool calls (MCP Tasks, 2025-11-25, experimental) with the gateway as the
 * receiver: the official SDK client against the real sidecar over Streamable HTTP, a real
 * server-everything upstream, the real fabric's policy and approvals.
 *
 * - a task-augmented call answers at once with a task; `tasks/result` gives the tool's result;
 * - a call needing approval is `input_required` (naming the policy and the approval) until an
 *   admin decides; the agent may disconnect and reconnect in between; deny → `failed` with the
 *   denial; cancel of a parked task ends its wait (the approval is orphaned);
 * - hostile: another agent's task id is not found (get, result, cancel — and the task is
 *   unharmed), an unknown id is not found, a huge ttl is cut to the configured bound, cancel
 *   after completion is refused, an agent holding `maxPerAgent` unfinished tasks is refused;
 * - the same audit line as a plain call; clients that do not send `task` see a plain call.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import {
  CallToolResultSchema,
  ErrorCode,
  ListTasksResultSchema,
} from '@modelcontextprotocol/sdk/types.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import { listApprovals, type ApiApproval } from '../fixtures/api.js';
import {
  ADMIN_TOKEN,
  agentId,
  agentToken,
  api,
  closeSidecar,
  DEFAULT_ALLOW,
  EVERYTHING_BIN,
  httpClient,
  startTestSidecar,
  tempDir,
  text,
  until,
} from '../fixtures/gateway/harness.js';
import { callAsTask, rpcError } from '../fixtures/gateway/tasks.js';

const POLICY = {
  name: 'approvals',
  priority: 100,
  rules: [
    {
      tool: 'ev__echo',
      action: 'require_approval',
      conditions: { message: 'needs approval' },
      reason: 'echoing this needs a human',
    },
  ],
};

type Approval = ApiApproval & { params: { message?: string }; orphaned?: boolean };

async function pending(sidecar: Sidecar): Promise<Approval[]> {
  return (await listApprovals(sidecar.url!, ADMIN_TOKEN, 'pending')) as Approval[];
}

describe('gateway as the receiver of task-augmented tool calls', () => {
  let sidecar: Sidecar;
  let owner: Client;
  let stranger: Client;
  let auditPath: string;

  beforeAll(async () => {
    auditPath = join(tempDir('tasks-audit-'), 'audit.jsonl');
    sidecar = await startTestSidecar({
      upstreams: {
        ev: { command: process.execPath, args: [EVERYTHING_BIN, 'stdio'], stderr: 'ignore' },
      },
      policies: [POLICY, DEFAULT_ALLOW],
      agents: [
        { name: 'owner' },
        { name: 'stranger' },
        { name: 'flooder' },
        { name: 'budgeted', budget: { maxCostPerDay: 1 } },
        { name: 'parker', budget: { maxCostPerDay: 1 } },
      ],
      toolCosts: { 'ev__get-sum': 1, ev__echo: 1 },
      audit: { path: auditPath },
      gateway: { tasks: { maxTtlSeconds: 120, maxPerAgent: 3 }, shutdownGraceSeconds: 0 },
    });
    owner = await httpClient(sidecar.url!, agentToken(sidecar, 'owner'));
    stranger = await httpClient(sidecar.url!, agentToken(sidecar, 'stranger'));
  });

  afterAll(async () => {
    await owner?.close();
    await stranger?.close();
    await closeSidecar(sidecar);
  });

  it('advertises tasks for tools/call, list and cancel only', () => {
    expect(owner.getServerCapabilities()?.tasks).toEqual({
      list: {},
      cancel: {},
      requests: { tools: { call: {} } },
    });
  });

  it('a plain call (no task) is answered as before', async () => {
    const r = await owner.callTool({ name: 'ev__echo', arguments: { message: 'plain' } });
    expect(text(r)).toBe('Echo: plain');
    expect(r._meta).toBeUndefined();
  });

  it('answers a task-augmented call with a task, and tasks/result with the tool result', async () => {
    const { task } = await callAsTask(owner, 'ev__echo', { message: 'as a task' }, 60_000);
    expect(task).toMatchObject({ status: 'working', ttl: 60_000 });
    expect(task.taskId).toMatch(/^tt_/);
    const result = await owner.experimental.tasks.getTaskResult(task.taskId, CallToolResultSchema);
    expect(text(result)).toBe('Echo: as a task');
    expect(result._meta?.['io.modelcontextprotocol/related-task']).toEqual({
      taskId: task.taskId,
    });
    expect((await owner.experimental.tasks.getTask(task.taskId)).status).toBe('completed');
    // The same audit line as a plain call (the plain one above, then this one).
    const echoLines = (): Array<Record<string, unknown>> =>
      readFileSync(auditPath, 'utf8')
        .trim()
        .split('\n')
        .filter((l) => l !== '')
        .map((l) => JSON.parse(l) as Record<string, unknown>)
        .filter((l) => l.tool === 'ev__echo');
    await until(() => echoLines().length >= 2);
    const [plain, task_] = echoLines();
    expect(task_).toMatchObject({
      decision: 'allow',
      outcome: 'ok',
      agent: plain?.agent,
      rule: plain?.rule,
    });
  });

  it("works with the SDK client's callToolStream, for upstream and fabric tools", async () => {
    for (const [name, args] of [
      ['ev__echo', { message: 'streamed' }],
      ['fabric__heartbeat', {}],
    ] as const) {
      const kinds: string[] = [];
      let final: unknown;
      for await (const message of owner.experimental.tasks.callToolStream(
        { name, arguments: args },
        CallToolResultSchema,
        { task: { ttl: 60_000 } },
      )) {
        kinds.push(message.type);
        if (message.type === 'result') final = message.result;
        if (message.type === 'error') final = message.error;
      }
      expect(kinds[0]).toBe('taskCreated');
      expect(kinds.at(-1)).toBe('result');
      expect((final as { isError?: boolean }).isError).toBeFalsy();
      if (name === 'ev__echo') expect(text(final)).toBe('Echo: streamed');
    }
  });

  it('charges the same budget as a plain call: a task past it fails with the refusal', async () => {
    const budgeted = await httpClient(sidecar.url!, agentToken(sidecar, 'budgeted'));
    try {
      const first = (await callAsTask(budgeted, 'ev__get-sum', { a: 1, b: 2 })).task;
      const sum = await budgeted.experimental.tasks.getTaskResult(
        first.taskId,
        CallToolResultSchema,
      );
      expect(text(sum)).toContain('3');
      const second = (await callAsTask(budgeted, 'ev__get-sum', { a: 1, b: 2 })).task;
      const refused = await budgeted.experimental.tasks.getTaskResult(
        second.taskId,
        CallToolResultSchema,
      );
      expect(refused.isError).toBe(true);
      expect(text(refused)).toContain('FABRIC_ERR_BUDGET_EXCEEDED');
      expect((await budgeted.experimental.tasks.getTask(second.taskId)).status).toBe('failed');
      // A plain call sees the same spent budget.
      const plain = await budgeted.callTool({ name: 'ev__get-sum', arguments: { a: 1, b: 2 } });
      expect(text(plain)).toContain('FABRIC_ERR_BUDGET_EXCEEDED');
    } finally {
      await budgeted.close();
    }
  });

  it('parks a call needing approval as input_required; approval runs it, the agent reconnected', async () => {
    const { task } = await callAsTask(owner, 'ev__echo', { message: 'needs approval' });
    let approval: Approval | undefined;
    await until(async () => {
      approval = (await pending(sidecar)).find((a) => a.params.message === 'needs approval');
      return approval !== undefined;
    });
    await until(
      async () => (await owner.experimental.tasks.getTask(task.taskId)).status === 'input_required',
    );
    const parked = await owner.experimental.tasks.getTask(task.taskId);
    expect(parked.statusMessage).toContain(approval!.id);
    expect(parked.statusMessage).toContain('policy approvals#0');
    // The agent goes away and comes back on a new session.
    await owner.close();
    owner = await httpClient(sidecar.url!, agentToken(sidecar, 'owner'));
    const res = await api(sidecar, 'ApprovalService/Approve', { id: approval!.id });
    expect(res.status).toBe(200);
    const result = await owner.experimental.tasks.getTaskResult(task.taskId, CallToolResultSchema);
    expect(text(result)).toBe('Echo: needs approval');
    expect((await owner.experimental.tasks.getTask(task.taskId)).status).toBe('completed');
  });

  it('a denial fails the task with the denial as its result', async () => {
    const { task } = await callAsTask(owner, 'ev__echo', { message: 'needs approval' });
    let approval: Approval | undefined;
    await until(async () => {
      approval = (await pending(sidecar))[0];
      return approval !== undefined;
    });
    await api(sidecar, 'ApprovalService/Deny', { id: approval!.id });
    const result = await owner.experimental.tasks.getTaskResult(task.taskId, CallToolResultSchema);
    expect(result.isError).toBe(true);
    expect(text(result)).toContain('FABRIC_ERR_APPROVAL_DENIED');
    const done = await owner.experimental.tasks.getTask(task.taskId);
    expect(done.status).toBe('failed');
    expect(done.statusMessage).toContain('FABRIC_ERR_APPROVAL_DENIED');
  });

  it("another agent cannot get, fetch, cancel or list the owner's task", async () => {
    const { task } = await callAsTask(owner, 'ev__echo', { message: 'needs approval' });
    await until(async () => (await pending(sidecar)).length === 1);
    for (const attempt of [
      stranger.experimental.tasks.getTask(task.taskId),
      stranger.experimental.tasks.getTaskResult(task.taskId, CallToolResultSchema),
      stranger.experimental.tasks.cancelTask(task.taskId),
    ]) {
      const error = await rpcError(attempt);
      expect(error.code).toBe(ErrorCode.InvalidParams);
      expect(error.message).toContain('does not exist');
    }
    const listed = await stranger.experimental.tasks.listTasks();
    expect(listed.tasks.map((t) => t.taskId)).not.toContain(task.taskId);
    // Unharmed: still parked for its owner, its approval still pending.
    expect((await owner.experimental.tasks.getTask(task.taskId)).status).toBe('input_required');
    const mine = await owner.experimental.tasks.listTasks();
    expect(mine.tasks.map((t) => t.taskId)).toContain(task.taskId);
    const [approval] = await pending(sidecar);
    expect(approval?.orphaned).toBeUndefined();
    // The owner cancels it: the wait ends and the approval is orphaned.
    const cancelled = await owner.experimental.tasks.cancelTask(task.taskId);
    expect(cancelled.status).toBe('cancelled');
    await until(async () => (await pending(sidecar))[0]?.orphaned === true);
    const fetched = await rpcError(
      owner.experimental.tasks.getTaskResult(task.taskId, CallToolResultSchema),
    );
    expect(fetched.message).toContain('was cancelled');
    // Deciding the orphaned approval runs nothing: the task stays cancelled.
    await api(sidecar, 'ApprovalService/Approve', { id: approval!.id });
    expect((await owner.experimental.tasks.getTask(task.taskId)).status).toBe('cancelled');
  });

  it('tasks/list refuses a cursor it did not give, whatever its type or whose task it names', async () => {
    const { task } = await callAsTask(owner, 'ev__echo', { message: 'listed' });
    await owner.experimental.tasks.getTaskResult(task.taskId, CallToolResultSchema);
    for (const [client, cursor] of [
      [owner, 1],
      [owner, { after: task.taskId }],
      [owner, task.taskId],
      [stranger, task.taskId],
      [stranger, '99'],
    ] as const) {
      const error = await rpcError(
        client.request({ method: 'tasks/list', params: { cursor } }, ListTasksResultSchema),
      );
      expect(error.code).toBe(ErrorCode.InvalidParams);
      expect(JSON.stringify(error.data)).toContain('FABRIC_ERR_INVALID_ARGUMENT');
      expect(error.message).toBe(
        `MCP error ${ErrorCode.InvalidParams}: tasks/list cursor is not one tasks/list gave`,
      );
    }
  });

  it('an unknown task id is not found; a huge ttl is cut to the bound', async () => {
    for (const id of ['tt_00000000-0000-0000-0000-000000000000', 'x'.repeat(10_000)]) {
      const error = await rpcError(owner.experimental.tasks.getTask(id));
      expect(error.code).toBe(ErrorCode.InvalidParams);
      expect(error.message.length).toBeLessThan(400);
    }
    const { task } = await callAsTask(owner, 'ev__echo', { message: 'long' }, 10 ** 15);
    expect(task.ttl).toBe(120_000);
    await owner.experimental.tasks.getTaskResult(task.taskId, CallToolResultSchema);
  });

  it('refuses to cancel a task that completed', async () => {
    const { task } = await callAsTask(owner, 'ev__echo', { message: 'quick' });
    await owner.experimental.tasks.getTaskResult(task.taskId, CallToolResultSchema);
    const error = await rpcError(owner.experimental.tasks.cancelTask(task.taskId));
    expect(error.code).toBe(ErrorCode.InvalidParams);
    expect(error.message).toContain('completed');
    expect((await owner.experimental.tasks.getTask(task.taskId)).status).toBe('completed');
  });

  it('an unknown tool is refused at once, with no task made', async () => {
    const error = await rpcError(callAsTask(owner, 'ev__nope', {}));
    expect(error.code).toBe(ErrorCode.InvalidParams);
    expect(error.message).toContain('Unknown tool');
  });

  it('an agent holding maxPerAgent unfinished tasks is refused a new one', async () => {
    const flooder = await httpClient(sidecar.url!, agentToken(sidecar, 'flooder'));
    try {
      const ids: string[] = [];
      for (let i = 0; i < 3; i++) {
        ids.push(
          (await callAsTask(flooder, 'ev__echo', { message: 'needs approval' })).task.taskId,
        );
      }
      const error = await rpcError(callAsTask(flooder, 'ev__echo', { message: 'needs approval' }));
      expect(JSON.stringify(error.data)).toContain('FABRIC_ERR_TOOL_TASK_LIMIT');
      expect((await flooder.experimental.tasks.listTasks()).tasks).toHaveLength(3);
      for (const id of ids) await flooder.experimental.tasks.cancelTask(id);
      // Finished tasks make room: the oldest is forgotten.
      const { task } = await callAsTask(flooder, 'ev__echo', { message: 'fine' });
      await flooder.experimental.tasks.getTaskResult(task.taskId, CallToolResultSchema);
      const listed = (await flooder.experimental.tasks.listTasks()).tasks.map((t) => t.taskId);
      expect(listed).toEqual([ids[1], ids[2], task.taskId]);
    } finally {
      await flooder.close();
    }
  });
  it('a parked task cancelled, then approved, spends none of its budget and runs nothing', async () => {
    const parker = await httpClient(sidecar.url!, agentToken(sidecar, 'parker'));
    try {
      const { task } = await callAsTask(parker, 'ev__echo', { message: 'needs approval' });
      const mine = async (): Promise<Approval | undefined> =>
        (await pending(sidecar)).find((a) => a.agentId === agentId(sidecar, 'parker'));
      await until(async () => (await mine()) !== undefined);
      const approval = (await mine())!;
      expect((await parker.experimental.tasks.cancelTask(task.taskId)).status).toBe('cancelled');
      await until(async () => (await mine())?.orphaned === true);
      expect((await api(sidecar, 'ApprovalService/Approve', { id: approval.id })).status).toBe(200);
      expect((await parker.experimental.tasks.getTask(task.taskId)).status).toBe('cancelled');
      // The whole day's budget (1) is still there for a plain call costing 1 …
      const sum = await parker.callTool({ name: 'ev__get-sum', arguments: { a: 1, b: 2 } });
      expect(sum.isError).toBeFalsy();
      expect(text(sum)).toContain('3');
      // … and spent by it: the next is refused, so the budget really is 1.
      const over = await parker.callTool({ name: 'ev__get-sum', arguments: { a: 1, b: 2 } });
      expect(text(over)).toContain('FABRIC_ERR_BUDGET_EXCEEDED');
      // The echo never reached the upstream: once parker's two get-sum lines are written, there is
      // no line of its ev__echo with outcome ok.
      const parkerLines = (): Array<Record<string, unknown>> =>
        readFileSync(auditPath, 'utf8')
          .trim()
          .split('\n')
          .map((l) => JSON.parse(l) as Record<string, unknown>)
          .filter((l) => l.agent === agentId(sidecar, 'parker'));
      await until(() => parkerLines().filter((l) => l.tool === 'ev__get-sum').length === 2);
      expect(parkerLines().filter((l) => l.tool === 'ev__echo' && l.outcome === 'ok')).toEqual([]);
    } finally {
      await parker.close();
    }
  });
});

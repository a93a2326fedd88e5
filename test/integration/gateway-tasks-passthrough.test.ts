/**
 * Task-augmented tool calls passed through to an upstream that is itself a task receiver: the
 * official SDK client against the real sidecar over Streamable HTTP, a real stdio upstream built
 * on the SDK's experimental task support (test/fixtures/gateway/task-server.mjs), the real
 * fabric's policy, approvals and budgets.
 *
 * - the gateway forwards `task` to the upstream and answers with its own `tt_` id; the agent
 *   sees the upstream's status (`input_required` and its message) through it — by
 *   `tasks/get` and by `notifications/tasks/status` — and gets the upstream's result from
 *   `tasks/result`, without the upstream's id anywhere;
 * - `tasks/cancel` cancels the upstream task;
 * - hostile: another agent's get / result / cancel of the id is not found and leaves the upstream
 *   task as it was; the upstream's own id is not found for anybody; malformed ids are not found;
 * - policy, approval and budget as for a plain call: a call needing approval reaches the
 *   upstream only once approved, a call past the budget never reaches it;
 * - audit as for a plain call: one line per task, its call's; the agent's `tasks/*` requests get
 *   none (nor does the upstream `tasks/get` each `tasks/get` of a running task asks);
 * - `tools/list` carries `execution.taskSupport` (the upstream's `required` kept, else
 *   `optional`); a client that does not use tasks gets the same answers as from a gateway with
 *   tasks off.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import {
  CallToolResultSchema,
  ErrorCode,
  TaskStatusNotificationSchema,
  type Task,
} from '@modelcontextprotocol/sdk/types.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import { listApprovals } from '../fixtures/api.js';
import {
  ADMIN_TOKEN,
  agentId,
  agentToken,
  api,
  closeSidecar,
  DEFAULT_ALLOW,
  httpClient,
  startTestSidecar,
  tempDir,
  text,
  until,
} from '../fixtures/gateway/harness.js';
import { callAsTask, rpcError } from '../fixtures/gateway/tasks.js';

const TASK_SERVER = fileURLToPath(new URL('../fixtures/gateway/task-server.mjs', import.meta.url));
const UPSTREAMS = {
  tk: { command: process.execPath, args: [TASK_SERVER], stderr: 'ignore' as const },
};
const POLICY = {
  name: 'approvals',
  priority: 100,
  rules: [
    {
      tool: 'tk__slow_echo',
      action: 'require_approval',
      conditions: { message: 'needs approval' },
      reason: 'a human decides',
    },
  ],
};

/** The tasks the upstream holds, as it reports them itself. */
async function upstreamTasks(client: Client): Promise<Array<{ taskId: string; status: string }>> {
  const r = await client.callTool({ name: 'tk__upstream_tasks', arguments: {} });
  return (JSON.parse(text(r)) as { tasks: Array<{ taskId: string; status: string }> }).tasks;
}

describe('task-augmented calls passed through to a task-capable upstream', () => {
  let sidecar: Sidecar;
  let owner: Client;
  let stranger: Client;
  let auditPath: string;
  const statusSeen: Task[] = [];

  beforeAll(async () => {
    auditPath = join(tempDir('tasks-pass-audit-'), 'audit.jsonl');
    sidecar = await startTestSidecar({
      upstreams: UPSTREAMS,
      policies: [POLICY, DEFAULT_ALLOW],
      agents: [
        { name: 'owner' },
        { name: 'stranger' },
        { name: 'budgeted', budget: { maxCostPerDay: 1 } },
        { name: 'poller' },
      ],
      toolCosts: { tk__must_task: 1 },
      audit: { path: auditPath },
      gateway: { tasks: { maxTtlSeconds: 120 }, shutdownGraceSeconds: 0 },
    });
    owner = await httpClient(sidecar.url!, agentToken(sidecar, 'owner'));
    owner.setNotificationHandler(TaskStatusNotificationSchema, (n) => {
      statusSeen.push(n.params as Task);
    });
    stranger = await httpClient(sidecar.url!, agentToken(sidecar, 'stranger'));
  });

  afterAll(async () => {
    await owner?.close();
    await stranger?.close();
    await closeSidecar(sidecar);
  });

  it('lists execution.taskSupport: the upstream required kept, every other tool optional', async () => {
    const tools = new Map((await owner.listTools()).tools.map((t) => [t.name, t.execution]));
    expect(tools.get('tk__slow_echo')).toEqual({ taskSupport: 'optional' });
    expect(tools.get('tk__must_task')).toEqual({ taskSupport: 'required' });
    // The upstream forbids tasks for these; the gateway itself is their task receiver.
    expect(tools.get('tk__plain_echo')).toEqual({ taskSupport: 'optional' });
    expect(tools.get('fabric__heartbeat')).toEqual({ taskSupport: 'optional' });
  });

  it('relays status, notifications and result under the gateway id; the upstream id stays hidden', async () => {
    const before = await upstreamTasks(owner);
    const { task } = await callAsTask(owner, 'tk__slow_echo', { message: 'held', hold: true });
    expect(task.taskId).toMatch(/^tt_/);
    let upstreamId = '';
    await until(async () => {
      const fresh = (await upstreamTasks(owner)).filter(
        (t) => !before.some((b) => b.taskId === t.taskId),
      );
      upstreamId = fresh[0]?.taskId ?? '';
      return fresh[0]?.status === 'input_required';
    });
    expect(upstreamId).not.toBe(task.taskId);
    // tasks/get shows the upstream's status and message under the gateway's id.
    const got = await owner.experimental.tasks.getTask(task.taskId);
    expect(got).toMatchObject({
      taskId: task.taskId,
      status: 'input_required',
      statusMessage: 'upstream holds held',
    });
    // … and so did a notifications/tasks/status to the owner's session.
    await until(() =>
      statusSeen.some((t) => t.taskId === task.taskId && t.status === 'input_required'),
    );
    expect(JSON.stringify(statusSeen)).not.toContain(upstreamId);

    // Hostile: the stranger cannot reach the gateway id; nobody reaches the upstream id.
    for (const attempt of [
      stranger.experimental.tasks.getTask(task.taskId),
      stranger.experimental.tasks.getTaskResult(task.taskId, CallToolResultSchema),
      stranger.experimental.tasks.cancelTask(task.taskId),
      owner.experimental.tasks.getTask(upstreamId),
      owner.experimental.tasks.cancelTask(upstreamId),
      stranger.experimental.tasks.cancelTask(upstreamId),
    ]) {
      const error = await rpcError(attempt);
      expect(error.code).toBe(ErrorCode.InvalidParams);
      expect(error.message).toContain('does not exist');
    }
    expect((await stranger.experimental.tasks.listTasks()).tasks).toEqual([]);
    // No effect upstream: the task is still held there.
    expect((await upstreamTasks(owner)).find((t) => t.taskId === upstreamId)?.status).toBe(
      'input_required',
    );

    await owner.callTool({ name: 'tk__release', arguments: { message: 'held' } });
    const result = await owner.experimental.tasks.getTaskResult(task.taskId, CallToolResultSchema);
    expect(text(result)).toBe('Echo: held');
    expect(result._meta?.['io.modelcontextprotocol/related-task']).toEqual({ taskId: task.taskId });
    expect(JSON.stringify(result)).not.toContain(upstreamId);
    expect((await owner.experimental.tasks.getTask(task.taskId)).status).toBe('completed');
    await until(() => statusSeen.some((t) => t.taskId === task.taskId && t.status === 'completed'));
  });

  it('a tool the upstream requires tasks for runs as a passed-through task', async () => {
    const { task } = await callAsTask(owner, 'tk__must_task', { message: 'req' });
    const result = await owner.experimental.tasks.getTaskResult(task.taskId, CallToolResultSchema);
    expect(text(result)).toBe('Required: req');
  });

  it('tasks/cancel cancels the upstream task', async () => {
    const before = await upstreamTasks(owner);
    const { task } = await callAsTask(owner, 'tk__slow_echo', { message: 'doomed', hold: true });
    let upstreamId = '';
    await until(async () => {
      const fresh = (await upstreamTasks(owner)).filter(
        (t) => !before.some((b) => b.taskId === t.taskId),
      );
      upstreamId = fresh[0]?.taskId ?? '';
      return fresh[0]?.status === 'input_required';
    });
    expect((await owner.experimental.tasks.cancelTask(task.taskId)).status).toBe('cancelled');
    await until(
      async () =>
        (await upstreamTasks(owner)).find((t) => t.taskId === upstreamId)?.status === 'cancelled',
    );
    // Released later, it still ends nothing: the gateway's task stays cancelled.
    await owner.callTool({ name: 'tk__release', arguments: { message: 'doomed' } });
    expect((await owner.experimental.tasks.getTask(task.taskId)).status).toBe('cancelled');
  });

  it('a call needing approval reaches the upstream only once approved', async () => {
    const before = (await upstreamTasks(owner)).length;
    const { task } = await callAsTask(owner, 'tk__slow_echo', { message: 'needs approval' });
    await until(
      async () => (await owner.experimental.tasks.getTask(task.taskId)).status === 'input_required',
    );
    expect((await owner.experimental.tasks.getTask(task.taskId)).statusMessage).toContain(
      'waiting for human approval',
    );
    expect(await upstreamTasks(owner)).toHaveLength(before);
    const [approval] = await listApprovals(sidecar.url!, ADMIN_TOKEN, 'pending');
    expect((await api(sidecar, 'ApprovalService/Approve', { id: approval!.id })).status).toBe(200);
    const result = await owner.experimental.tasks.getTaskResult(task.taskId, CallToolResultSchema);
    expect(text(result)).toBe('Echo: needs approval');
    expect(await upstreamTasks(owner)).toHaveLength(before + 1);
  });

  it('charges the budget once per task; past it, the upstream is never asked', async () => {
    const budgeted = await httpClient(sidecar.url!, agentToken(sidecar, 'budgeted'));
    try {
      const before = (await upstreamTasks(owner)).length;
      const first = (await callAsTask(budgeted, 'tk__must_task', { message: 'one' })).task;
      const ok = await budgeted.experimental.tasks.getTaskResult(
        first.taskId,
        CallToolResultSchema,
      );
      expect(text(ok)).toBe('Required: one');
      const second = (await callAsTask(budgeted, 'tk__must_task', { message: 'two' })).task;
      const refused = await budgeted.experimental.tasks.getTaskResult(
        second.taskId,
        CallToolResultSchema,
      );
      expect(refused.isError).toBe(true);
      expect(text(refused)).toContain('FABRIC_ERR_BUDGET_EXCEEDED');
      expect(await upstreamTasks(owner)).toHaveLength(before + 1);
      // One audit line per call, as for a plain call.
      const lines = (): Array<Record<string, unknown>> =>
        readFileSync(auditPath, 'utf8')
          .trim()
          .split('\n')
          .map((l) => JSON.parse(l) as Record<string, unknown>)
          .filter((l) => l.tool === 'tk__must_task' && l.agent !== undefined);
      await until(() => lines().filter((l) => l.outcome !== 'ok').length >= 1);
      expect(lines().filter((l) => l.decision === 'allow' && l.outcome === 'ok').length).toBe(2);
    } finally {
      await budgeted.close();
    }
  });

  it("tasks/get, tasks/result and tasks/cancel get no audit line of their own: the task's call has its one", async () => {
    const poller = await httpClient(sidecar.url!, agentToken(sidecar, 'poller'));
    const id = agentId(sidecar, 'poller');
    const lines = (): Array<Record<string, unknown>> =>
      readFileSync(auditPath, 'utf8')
        .trim()
        .split('\n')
        .filter((l) => l !== '')
        .map((l) => JSON.parse(l) as Record<string, unknown>)
        .filter((l) => l.agent === id);
    try {
      const { task } = await callAsTask(poller, 'tk__slow_echo', { message: 'polled', hold: true });
      await until(
        async () =>
          (await poller.experimental.tasks.getTask(task.taskId)).statusMessage ===
          'upstream holds polled',
      );
      // The upstream made its task: each tasks/get of it now asks the upstream's tasks/get.
      for (let i = 0; i < 5; i++) {
        expect((await poller.experimental.tasks.getTask(task.taskId)).status).toBe(
          'input_required',
        );
      }
      await owner.callTool({ name: 'tk__release', arguments: { message: 'polled' } });
      const result = await poller.experimental.tasks.getTaskResult(
        task.taskId,
        CallToolResultSchema,
      );
      expect(text(result)).toBe('Echo: polled');
      await poller.experimental.tasks.getTaskResult(task.taskId, CallToolResultSchema);

      const dropped = (
        await callAsTask(poller, 'tk__slow_echo', { message: 'dropped', hold: true })
      ).task;
      await until(
        async () =>
          (await poller.experimental.tasks.getTask(dropped.taskId)).statusMessage ===
          'upstream holds dropped',
      );
      expect((await poller.experimental.tasks.cancelTask(dropped.taskId)).status).toBe('cancelled');
      await poller.experimental.tasks.listTasks();
      await until(() => lines().length >= 2);
      expect(lines().map((l) => [l.tool, l.outcome])).toEqual([
        ['tk__slow_echo', 'ok'],
        ['tk__slow_echo', 'cancelled'],
      ]);
    } finally {
      await poller.close();
    }
  });

  it('malformed task ids are not found, and change nothing', async () => {
    const mine = (await owner.experimental.tasks.listTasks()).tasks;
    for (const taskId of [42, null, { $ne: '' }, ['tt_'], 'tt_' + 'f'.repeat(100_000), '']) {
      for (const method of ['tasks/get', 'tasks/result', 'tasks/cancel']) {
        const error = await rpcError(
          owner.request({ method, params: { taskId } } as never, CallToolResultSchema),
        );
        expect(error.code).toBe(ErrorCode.InvalidParams);
        expect(error.message.length).toBeLessThan(400);
      }
    }
    expect((await owner.experimental.tasks.listTasks()).tasks).toEqual(mine);
  });
});

describe('a client that does not use tasks', () => {
  let on: Sidecar;
  let off: Sidecar;

  beforeAll(async () => {
    const config = {
      upstreams: UPSTREAMS,
      policies: [DEFAULT_ALLOW],
      agents: [{ name: 'plain' }],
      gateway: { shutdownGraceSeconds: 0 },
    };
    on = await startTestSidecar(config);
    off = await startTestSidecar({ ...config, gateway: { ...config.gateway, tasks: false } });
  });

  afterAll(async () => {
    await closeSidecar(on);
    await closeSidecar(off);
  });

  it('gets the same answers with gateway tasks on as with them off', async () => {
    const answers = async (sidecar: Sidecar): Promise<unknown[]> => {
      const client = await httpClient(sidecar.url!, agentToken(sidecar, 'plain'));
      const notified: unknown[] = [];
      client.setNotificationHandler(TaskStatusNotificationSchema, (n) => void notified.push(n));
      try {
        const out: unknown[] = [];
        for (const [name, args] of [
          ['tk__plain_echo', { message: 'p' }],
          // The upstream runs an optional-task tool called plainly as a task of its own.
          ['tk__slow_echo', { message: 's' }],
        ] as const) {
          out.push(await client.callTool({ name, arguments: args }));
        }
        out.push(notified);
        return out;
      } finally {
        await client.close();
      }
    };
    const withTasks = await answers(on);
    expect(text(withTasks[0])).toBe('Plain: p');
    expect(text(withTasks[1])).toBe('Echo: s');
    expect(withTasks[2]).toEqual([]);
    expect(withTasks).toEqual(await answers(off));
  });

  it('is told of no task support by a gateway with tasks off, even for tools whose upstream takes tasks', async () => {
    const listed = async (sidecar: Sidecar) => {
      const client = await httpClient(sidecar.url!, agentToken(sidecar, 'plain'));
      try {
        return {
          capabilities: client.getServerCapabilities(),
          tools: (await client.listTools()).tools,
        };
      } finally {
        await client.close();
      }
    };
    const withTasks = await listed(on);
    const slowOn = withTasks.tools.find((t) => t.name === 'tk__slow_echo');
    expect(slowOn?.execution?.taskSupport).toBe('optional');
    const withoutTasks = await listed(off);
    expect(withoutTasks.capabilities?.tasks).toBeUndefined();
    expect(withoutTasks.tools.map((t) => t.name)).toEqual(withTasks.tools.map((t) => t.name));
    for (const tool of withoutTasks.tools) expect(tool.execution?.taskSupport).toBeUndefined();
  });
});

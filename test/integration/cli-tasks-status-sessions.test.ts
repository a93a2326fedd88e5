/**
 * Who hears `notifications/tasks/status` (a decision, see **MCP tasks** in the README): MCP
 * 2025-11-25 binds a task to the requestor's authorization context — here the agent's credential
 * — not to the session that made it, and any session of the agent may get, fetch or cancel it.
 * So every open session of the agent hears of its task's changes, the one that did not make it
 * too; no session of another agent ever does.
 *
 * Real parts: `agent-fabric serve` as a child process, a real server-everything upstream, the
 * official SDK client over Streamable HTTP (three sessions: two of one agent, one of another),
 * an admin approving through the HTTP API.
 */
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import {
  CallToolResultSchema,
  CreateTaskResultSchema,
  TaskStatusNotificationSchema,
  type Task,
} from '@modelcontextprotocol/sdk/types.js';
import { afterAll, describe, expect, it } from 'vitest';
import { callApi, listApprovals } from '../fixtures/api.js';
import { tempDir, until } from '../fixtures/gateway/harness.js';
import {
  cleanUp,
  connect,
  ECHO_NEEDS_APPROVAL,
  freePort,
  serve,
  stop,
  writeEverythingConfig,
} from '../fixtures/state/serve.js';

afterAll(cleanUp);

const ADMIN = `fab_admin_${'Vn8p'.repeat(8)}`;

function tokenOf(banner: string, name: string): string {
  return new RegExp(`agent token:\\s+(\\S+)\\s+\\(${name},`).exec(banner)![1]!;
}

/** A client of `token` that keeps every task status notification it hears, in order. */
async function listening(url: string, token: string, heard: Task[]): Promise<Client> {
  const client = await connect(url, token);
  client.setNotificationHandler(TaskStatusNotificationSchema, (n) => {
    heard.push(n.params as Task);
  });
  return client;
}

describe('agent-fabric serve: notifications/tasks/status reach every session of the agent', () => {
  it('the session that did not make the task hears it; another agent does not', async () => {
    const dir = tempDir('cli-tasks-status');
    writeEverythingConfig(dir, await freePort(), ADMIN, {
      policies: ECHO_NEEDS_APPROVAL,
      agents: [{ name: 'worker' }, { name: 'other' }],
    });
    const running = await serve(dir);
    const worker = tokenOf(running.out, 'worker');
    const heardByMaker: Task[] = [];
    const heardBySibling: Task[] = [];
    const heardByOther: Task[] = [];
    const maker = await listening(running.url, worker, heardByMaker);
    await listening(running.url, worker, heardBySibling);
    const other = await listening(running.url, tokenOf(running.out, 'other'), heardByOther);

    const { task } = await maker.request(
      { method: 'tools/call', params: { name: 'ev__echo', arguments: { message: 'm' }, task: {} } },
      CreateTaskResultSchema,
    );
    const statuses = (heard: Task[]): string[] =>
      heard.filter((t) => t.taskId === task.taskId).map((t) => t.status);
    await until(() => statuses(heardBySibling).includes('input_required'), 30_000);
    const [approval] = await listApprovals(running.url, ADMIN, 'pending');
    expect(
      (await callApi(running.url, 'ApprovalService/Approve', { id: approval!.id }, ADMIN)).status,
    ).toBe(200);
    await until(() => statuses(heardBySibling).includes('completed'), 30_000);
    await until(() => statuses(heardByMaker).includes('completed'), 30_000);
    expect(statuses(heardBySibling)).toEqual(statuses(heardByMaker));
    const result = await maker.experimental.tasks.getTaskResult(task.taskId, CallToolResultSchema);
    expect(result.content).toEqual([{ type: 'text', text: 'Echo: m' }]);

    // The other agent's own task, made after: its session hears that one, and heard nothing of
    // the worker's before it (one session's notifications arrive in the order they were sent).
    const own = (
      await other.request(
        {
          method: 'tools/call',
          params: { name: 'ev__echo', arguments: { message: 'o' }, task: {} },
        },
        CreateTaskResultSchema,
      )
    ).task;
    await until(() => heardByOther.some((t) => t.taskId === own.taskId), 30_000);
    expect(heardByOther.every((t) => t.taskId === own.taskId)).toBe(true);
    await stop(running, 'SIGTERM');
  }, 90_000);
});

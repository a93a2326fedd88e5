/**
 * Task-augmented tool calls across SIGKILL of the real `agent-fabric serve` (child processes, a
 * real server-everything upstream, the official SDK client, a real SQLite state file):
 *
 * - a finished task's result is still fetched by `tasks/result` after the kill;
 * - a task parked on an approval survives the kill as `input_required` with the same approval;
 *   approving it after the restart runs the call, whose result survives the next kill;
 * - a restored task decided before its agent reconnects runs without it;
 * - the records are in the state file (kind `tool_task`), owned by the agent that made them;
 * - a task passed through to an HTTP upstream's own task keeps the upstream task's id on disk:
 *   after the kill the restarted sidecar fetches that task's result instead of calling the tool
 *   again; one passed through to a stdio upstream fails instead (its process went with the
 *   sidecar, and the new process is not asked about an id it may have given another task);
 * - a task that scheduled fabric work (`fabric__schedule_task`) keeps the fabric task's id on
 *   disk: after the kill it waits for that same fabric task, which is then claimed and completed.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import {
  CallToolResultSchema,
  CreateTaskResultSchema,
  type CallToolResult,
  type CreateTaskResult,
} from '@modelcontextprotocol/sdk/types.js';
import { afterAll, describe, expect, it } from 'vitest';
import { callApi, listApprovals, type ApiApproval } from '../fixtures/api.js';
import { fileURLToPath } from 'node:url';
import {
  EVERYTHING_BIN,
  httpClient,
  startHttpUpstream,
  tempDir,
  text,
  until,
} from '../fixtures/gateway/harness.js';
import { cleanUp, connect, freePort, serve, stop, type Running } from '../fixtures/state/serve.js';
import { toolTaskOnDisk as onDisk } from '../fixtures/state/tool-task-rows.js';

afterAll(cleanUp);

const TASK_SERVER = fileURLToPath(new URL('../fixtures/gateway/task-server.mjs', import.meta.url));

const ADMIN = `fab_admin_${'t7Wq'.repeat(8)}`;

function writeConfig(dir: string, port: number): void {
  writeFileSync(
    join(dir, 'fabric.json'),
    JSON.stringify({
      http: { host: '127.0.0.1', port },
      adminToken: ADMIN,
      upstreams: {
        ev: { command: process.execPath, args: [EVERYTHING_BIN, 'stdio'], stderr: 'ignore' },
      },
      policies: [
        {
          name: 'approvals',
          priority: 100,
          rules: [
            {
              tool: 'ev__echo',
              action: 'require_approval',
              conditions: { message: 'approve*' },
              reason: 'a human echoes',
            },
          ],
        },
        { name: 'default-allow', rules: [{ tool: '*', action: 'allow' }] },
      ],
      approvals: { timeoutSeconds: 3600 },
      agents: [{ name: 'worker' }],
    }),
  );
}

/**
 * A temp folder with a config allowing every tool (on a free port, with the test admin token)
 * plus `config`; its state file's path.
 */
async function allowAllConfig(
  prefix: string,
  config: Record<string, unknown>,
): Promise<{ dir: string; statePath: string }> {
  const dir = tempDir(prefix);
  writeFileSync(
    join(dir, 'fabric.json'),
    JSON.stringify({
      http: { host: '127.0.0.1', port: await freePort() },
      adminToken: ADMIN,
      policies: [{ name: 'default-allow', rules: [{ tool: '*', action: 'allow' }] }],
      ...config,
    }),
  );
  return { dir, statePath: join(dir, '.fabric', 'state.db') };
}

type Approval = ApiApproval & { params: { message?: string }; orphaned?: boolean };

function approve(r: Running, id: string): Promise<Response> {
  return callApi(r.url, 'ApprovalService/Approve', { id }, ADMIN);
}

async function pending(r: Running): Promise<Approval[]> {
  return (await listApprovals(r.url, ADMIN, 'pending')) as Approval[];
}

function callAsTask(client: Client, message: string): Promise<CreateTaskResult> {
  return client.request(
    { method: 'tools/call', params: { name: 'ev__echo', arguments: { message }, task: {} } },
    CreateTaskResultSchema,
  );
}

describe('agent-fabric serve: MCP tasks over a state file', () => {
  it('keeps results and parked approvals across SIGKILL, and runs what is approved after', async () => {
    const dir = tempDir('cli-tasks');
    const port = await freePort();
    const statePath = join(dir, '.fabric', 'state.db');
    writeConfig(dir, port);

    const first = await serve(dir);
    const token = first.token;
    let client = await connect(first.url, token);
    const done = (await callAsTask(client, 'quick')).task;
    const quick = await client.experimental.tasks.getTaskResult(done.taskId, CallToolResultSchema);
    expect(text(quick)).toBe('Echo: quick');
    const parked = (await callAsTask(client, 'approve after restart')).task;
    const downDecided = (await callAsTask(client, 'approve before reconnect')).task;
    let approvals: Approval[] = [];
    await until(async () => (approvals = await pending(first)).length === 2, 30_000);
    await until(
      () =>
        onDisk(statePath, parked.taskId)?.status === 'input_required' &&
        onDisk(statePath, downDecided.taskId)?.status === 'input_required',
      30_000,
    );
    const approvalOf = (message: string): Approval =>
      approvals.find((a) => a.params.message === message)!;
    expect(onDisk(statePath, parked.taskId)).toMatchObject({
      approvalId: approvalOf('approve after restart').id,
      tool: 'ev__echo',
    });
    expect(onDisk(statePath, done.taskId)).toMatchObject({ status: 'completed' });
    await stop(first, 'SIGKILL');

    // Decided right after the start, before the agent comes back: the call runs without it.
    const second = await serve(dir);
    expect(second.token).toBe(token);
    const res = await approve(second, approvalOf('approve before reconnect').id);
    expect(res.status).toBe(200);
    client = await connect(second.url, token);
    // The finished task's result survived.
    const again = await client.experimental.tasks.getTaskResult(done.taskId, CallToolResultSchema);
    expect(text(again)).toBe('Echo: quick');
    // The one decided without its agent connected ran.
    const ran = await client.experimental.tasks.getTaskResult(
      downDecided.taskId,
      CallToolResultSchema,
    );
    expect(text(ran)).toBe('Echo: approve before reconnect');
    // The other still waits for the same approval; approving it now runs it.
    const waiting = await client.experimental.tasks.getTask(parked.taskId);
    expect(waiting.status).toBe('input_required');
    expect(waiting.statusMessage).toContain(approvalOf('approve after restart').id);
    const [still, ...others] = await pending(second);
    expect(others).toEqual([]);
    expect(still).toMatchObject({ id: approvalOf('approve after restart').id });
    expect(still?.orphaned).toBeUndefined();
    await approve(second, still!.id);
    const result = await client.experimental.tasks.getTaskResult(
      parked.taskId,
      CallToolResultSchema,
    );
    expect(text(result)).toBe('Echo: approve after restart');
    await until(() => onDisk(statePath, parked.taskId)?.status === 'completed', 30_000);
    await stop(second, 'SIGKILL');

    // Decided and run: the result outlives the next kill as well.
    const third = await serve(dir);
    client = await connect(third.url, token);
    const kept = await client.experimental.tasks.getTaskResult(parked.taskId, CallToolResultSchema);
    expect(text(kept)).toBe('Echo: approve after restart');
    expect(await pending(third)).toEqual([]);
    await stop(third, 'SIGTERM');
  }, 120_000);

  it('re-attaches a passed-through task to its upstream task after SIGKILL', async () => {
    const upstream = await startHttpUpstream([TASK_SERVER, 'http'], '/mcp');
    try {
      const { dir, statePath } = await allowAllConfig('cli-tasks-pass', {
        upstreams: { tk: { url: upstream.url } },
        agents: [{ name: 'worker' }],
      });
      const upstreamTasks = async (c: Client): Promise<Array<{ taskId: string; status: string }>> =>
        (
          JSON.parse(text(await c.callTool({ name: 'tk__upstream_tasks', arguments: {} }))) as {
            tasks: Array<{ taskId: string; status: string }>;
          }
        ).tasks;

      const first = await serve(dir);
      let client = await connect(first.url, first.token);
      const { task } = await client.request(
        {
          method: 'tools/call',
          params: { name: 'tk__slow_echo', arguments: { message: 'across', hold: true }, task: {} },
        },
        CreateTaskResultSchema,
      );
      await until(
        async () => (await upstreamTasks(client))[0]?.status === 'input_required',
        30_000,
      );
      const [held] = await upstreamTasks(client);
      await until(() => onDisk(statePath, task.taskId)?.upstream !== undefined, 30_000);
      // With the time the upstream made it: an id alone may name another task after a restart.
      expect(onDisk(statePath, task.taskId)?.upstream).toEqual({
        name: 'tk',
        taskId: held!.taskId,
        createdAt: expect.stringMatching(/^\d{4}-\d\d-\d\dT/) as unknown,
      });
      await stop(first, 'SIGKILL');

      const second = await serve(dir);
      client = await connect(second.url, first.token);
      // Not failed: tasks/get shows the upstream task's status again.
      await until(
        async () =>
          (await client.experimental.tasks.getTask(task.taskId)).status === 'input_required',
        30_000,
      );
      await client.callTool({ name: 'tk__release', arguments: { message: 'across' } });
      const result = await client.experimental.tasks.getTaskResult(
        task.taskId,
        CallToolResultSchema,
      );
      expect(text(result)).toBe('Echo: across');
      // The tool ran once: the upstream holds that one task, completed.
      expect(await upstreamTasks(client)).toEqual([{ taskId: held!.taskId, status: 'completed' }]);
      await until(() => onDisk(statePath, task.taskId)?.status === 'completed', 30_000);
      await stop(second, 'SIGTERM');
    } finally {
      await upstream.close();
    }
  }, 120_000);

  it('does not re-attach to an id a restarted HTTP upstream gave another client (counter ids)', async () => {
    // The upstream numbers its tasks 1, 2, … from each start: after it restarts, the id the
    // gateway kept names another client's task (here: one made straight on the new process).
    let upstream = await startHttpUpstream([TASK_SERVER, 'http', 'counter'], '/mcp');
    try {
      const { dir, statePath } = await allowAllConfig('cli-tasks-reused', {
        upstreams: { tk: { url: upstream.url } },
        agents: [{ name: 'worker' }],
      });
      const first = await serve(dir);
      let client = await connect(first.url, first.token);
      const { task } = await client.request(
        {
          method: 'tools/call',
          params: { name: 'tk__slow_echo', arguments: { message: 'mine', hold: true }, task: {} },
        },
        CreateTaskResultSchema,
      );
      await until(() => onDisk(statePath, task.taskId)?.upstream !== undefined, 30_000);
      expect(onDisk(statePath, task.taskId)?.upstream?.taskId).toBe('1');
      await stop(first, 'SIGKILL');

      // The upstream restarts (a new process, ids from 1 again) and another client's task is 1.
      await upstream.close();
      upstream = await startHttpUpstream([TASK_SERVER, 'http', 'counter'], '/mcp');
      const config = JSON.parse(readFileSync(join(dir, 'fabric.json'), 'utf8')) as {
        upstreams: { tk: { url: string } };
      };
      config.upstreams.tk.url = upstream.url;
      writeFileSync(join(dir, 'fabric.json'), JSON.stringify(config));
      const stranger = await httpClient(upstream.url, undefined);
      const theirs = await stranger.request(
        {
          method: 'tools/call',
          params: { name: 'slow_echo', arguments: { message: 'theirs', hold: true }, task: {} },
        },
        CreateTaskResultSchema,
      );
      expect(theirs.task.taskId).toBe('1');

      const second = await serve(dir);
      client = await connect(second.url, first.token);
      let seen = await client.experimental.tasks.getTask(task.taskId);
      await until(async () => {
        seen = await client.experimental.tasks.getTask(task.taskId);
        return seen.status === 'failed' || (seen.statusMessage ?? '').includes('theirs');
      }, 30_000);
      expect(seen.statusMessage).not.toContain('theirs');
      expect(seen.status).toBe('failed');
      // Before: the restored task took task 1 of the new process as its own — its status
      // ("upstream holds theirs"), then its result, and its cancel would have cancelled it.
      await stranger.callTool({ name: 'release', arguments: { message: 'theirs' } });
      await expect(
        client.experimental.tasks.getTaskResult(task.taskId, CallToolResultSchema),
      ).rejects.toThrow(/is not the task it was passed through to/);
      expect(onDisk(statePath, task.taskId)?.status).toBe('failed');
      expect(JSON.stringify(onDisk(statePath, task.taskId))).not.toContain('theirs');
      const theirResult = await stranger.experimental.tasks.getTaskResult(
        theirs.task.taskId,
        CallToolResultSchema,
      );
      expect(text(theirResult)).toBe('Echo: theirs');
      await stranger.close();
      await stop(second, 'SIGTERM');
    } finally {
      await upstream.close();
    }
  }, 120_000);

  it('fails a task passed through to a stdio upstream after SIGKILL without asking the new process', async () => {
    const requestLog = join(tempDir('cli-tasks-stdio-log'), 'requests.jsonl');
    writeFileSync(requestLog, '');
    const { dir, statePath } = await allowAllConfig('cli-tasks-stdio', {
      upstreams: {
        tk: {
          command: process.execPath,
          args: [TASK_SERVER],
          env: { REQUEST_LOG: requestLog },
          stderr: 'ignore',
        },
      },
      agents: [{ name: 'worker' }],
    });
    const requests = (): Array<{ pid: number; method: string; taskId?: string }> =>
      readFileSync(requestLog, 'utf8')
        .split('\n')
        .filter((l) => l !== '')
        .map((l) => JSON.parse(l) as { pid: number; method: string; taskId?: string });

    const first = await serve(dir);
    let client = await connect(first.url, first.token);
    const { task } = await client.request(
      {
        method: 'tools/call',
        params: { name: 'tk__slow_echo', arguments: { message: 'gone', hold: true }, task: {} },
      },
      CreateTaskResultSchema,
    );
    await until(() => onDisk(statePath, task.taskId)?.upstream !== undefined, 30_000);
    const held = onDisk(statePath, task.taskId)!.upstream!.taskId;
    const firstChild = requests().find((r) => r.method === 'tools/call')!.pid;
    await stop(first, 'SIGKILL');

    // The child that held the upstream task went with the sidecar; a new one is started. Task
    // ids are the upstream's own: the new process may have given this one to another task.
    const second = await serve(dir);
    client = await connect(second.url, first.token);
    await until(
      async () => (await client.experimental.tasks.getTask(task.taskId)).status === 'failed',
      30_000,
    );
    await until(() => onDisk(statePath, task.taskId)?.status === 'failed', 30_000);
    expect(onDisk(statePath, task.taskId)?.error?.message).toMatch(
      /held by a process of stdio upstream tk that has ended; whether the tool ran is unknown/,
    );
    // Before: the new process was asked for the result of the old process's task id.
    const asked = requests().filter((r) => r.pid !== firstChild && r.taskId === held);
    expect(asked).toEqual([]);
    expect(requests().some((r) => r.pid !== firstChild)).toBe(true); // the new one ran
    await stop(second, 'SIGTERM');
  }, 120_000);

  it('a task that scheduled fabric work waits for the same fabric task after SIGKILL', async () => {
    const { dir, statePath } = await allowAllConfig('cli-tasks-fabric', {
      pools: [{ id: 'crew' }],
      agents: [{ name: 'lead', poolId: 'crew' }],
      gateway: { poolScheduling: true },
    });
    const first = await serve(dir);
    let client = await connect(first.url, first.token);
    const { task } = await client.request(
      {
        method: 'tools/call',
        params: {
          name: 'fabric__schedule_task',
          arguments: { taskType: 'review', payload: 'kept' },
          task: {},
        },
      },
      CreateTaskResultSchema,
    );
    await until(() => onDisk(statePath, task.taskId)?.fabricTaskId !== undefined, 30_000);
    const fabricTaskId = onDisk(statePath, task.taskId)!.fabricTaskId!;
    await stop(first, 'SIGKILL');

    const second = await serve(dir);
    client = await connect(second.url, first.token);
    const waiting = await client.experimental.tasks.getTask(task.taskId);
    expect(waiting).toMatchObject({
      status: 'working',
      statusMessage: `fabric task ${fabricTaskId} is PENDING`,
    });
    // The same fabric task (scheduled once) is the one there is to claim.
    const claimed = await client.callTool({
      name: 'fabric__claim_task',
      arguments: { waitSeconds: 10 },
    });
    const work = (claimed as CallToolResult).structuredContent?.result as {
      taskId: string;
      attempt: number;
    };
    expect(work.taskId).toBe(fabricTaskId);
    await client.callTool({
      name: 'fabric__complete_task',
      arguments: { taskId: work.taskId, attempt: work.attempt, result: 'done after restart' },
    });
    const result = await client.experimental.tasks.getTaskResult(task.taskId, CallToolResultSchema);
    expect(result.structuredContent?.result).toMatchObject({
      taskId: fabricTaskId,
      status: 'COMPLETED',
      result: 'done after restart',
    });
    const none = await client.callTool({
      name: 'fabric__claim_task',
      arguments: { waitSeconds: 0 },
    });
    expect((none as CallToolResult).structuredContent?.result).toBeNull();
    await stop(second, 'SIGTERM');
  }, 120_000);
});

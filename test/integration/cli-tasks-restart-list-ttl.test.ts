/**
 * MCP tasks across restarts of the real `agent-fabric serve` (child processes, a real
 * server-everything upstream, the official SDK client, a real SQLite state file), two leftovers
 * of a review:
 *
 * - Restored tasks kept a ttl above a lowered `gateway.tasks.maxTtlSeconds`: a task made with a
 *   ten-hour ttl under a one-day bound still answered `ttl: 36000000` (and lived that long) after
 *   a restart with a one-minute bound. Now a restored task's ttl is cut to the new bound, in the
 *   answers and in the state file, and its end is counted from its `createdAt` with the cut ttl
 *   (a bound lowered below a task's age forgets it at the restart).
 * - A `tasks/list` cursor named a place in the agent's list, numbered afresh at each start: tasks
 *   forgotten across the restart (their ttl ran out) moved every later task's place, so a cursor
 *   given before the restart skipped as many tasks of the next page. Now the cursor names the
 *   last task it showed by its sort key (`createdAt`, then id): every task is listed exactly once
 *   across the restart, also when tasks are forgotten or made between the pages.
 */
import { join } from 'node:path';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import type { McpError } from '@modelcontextprotocol/sdk/types.js';
import {
  CallToolResultSchema,
  CreateTaskResultSchema,
  ErrorCode,
  ListTasksResultSchema,
  type CreateTaskResult,
  type ListTasksResult,
} from '@modelcontextprotocol/sdk/types.js';
import { afterAll, describe, expect, it } from 'vitest';
import { tempDir, until } from '../fixtures/gateway/harness.js';
import {
  cleanUp,
  connect,
  freePort,
  serve,
  stop,
  writeEverythingConfig,
} from '../fixtures/state/serve.js';
import { toolTaskOnDisk, toolTasksOnDisk } from '../fixtures/state/tool-task-rows.js';

afterAll(cleanUp);

const ADMIN = `fab_admin_${'Lq3x'.repeat(8)}`;
const HOUR = 3_600_000;

/** `<dir>/fabric.json`: every tool allowed, `gateway.tasks` as given, state in `<dir>/.fabric`. */
function writeConfig(dir: string, port: number, tasks: Record<string, unknown>): void {
  writeEverythingConfig(dir, port, ADMIN, {
    policies: [{ name: 'default-allow', rules: [{ tool: '*', action: 'allow' }] }],
    agents: [{ name: 'worker' }],
    gateway: { tasks },
  });
}

function echoAsTask(client: Client, message: string, ttl: number): Promise<CreateTaskResult> {
  return client.request(
    {
      method: 'tools/call',
      params: { name: 'ev__echo', arguments: { message }, task: { ttl } },
    },
    CreateTaskResultSchema,
  );
}

function list(client: Client, cursor?: string): Promise<ListTasksResult> {
  return client.request(
    { method: 'tasks/list', params: cursor === undefined ? {} : { cursor } },
    ListTasksResultSchema,
  );
}

async function rpcError(p: Promise<unknown>): Promise<McpError> {
  try {
    await p;
  } catch (e) {
    return e as McpError;
  }
  throw new Error('expected a JSON-RPC error');
}

describe('agent-fabric serve: MCP tasks restored under a lowered maxTtlSeconds', () => {
  it('cuts a restored task ttl to the new bound (answers and state file), SIGTERM and SIGKILL alike', async () => {
    const dir = tempDir('cli-tasks-ttl');
    const port = await freePort();
    const statePath = join(dir, '.fabric', 'state.db');
    writeConfig(dir, port, { maxTtlSeconds: 86_400 });

    const first = await serve(dir);
    let client = await connect(first.url, first.token);
    const made: CreateTaskResult['task'][] = [];
    for (const message of ['a', 'b', 'c'])
      made.push((await echoAsTask(client, message, 10 * HOUR)).task);
    for (const t of made) {
      expect(t.ttl).toBe(10 * HOUR);
      await client.experimental.tasks.getTaskResult(t.taskId, CallToolResultSchema);
    }
    await until(() =>
      made.every((t) => toolTaskOnDisk(statePath, t.taskId)?.status === 'completed'),
    );
    expect(toolTaskOnDisk(statePath, made[0]!.taskId)!.ttl).toBe(10 * HOUR);
    await stop(first, 'SIGTERM');

    // A minute now: every restored task's ttl is cut to it, in what the agent is told and on disk.
    writeConfig(dir, port, { maxTtlSeconds: 60 });
    const second = await serve(dir);
    client = await connect(second.url, second.token);
    for (const t of made) {
      const got = await client.experimental.tasks.getTask(t.taskId);
      expect(got).toMatchObject({ taskId: t.taskId, status: 'completed', ttl: 60_000 });
      expect(got.createdAt).toBe(t.createdAt);
    }
    const listed = await list(client);
    expect(listed.tasks.map((t) => t.ttl)).toEqual([60_000, 60_000, 60_000]);
    await until(() => made.every((t) => toolTaskOnDisk(statePath, t.taskId)?.ttl === 60_000));
    const result = await client.experimental.tasks.getTaskResult(
      made[1]!.taskId,
      CallToolResultSchema,
    );
    expect(result.content).toEqual([{ type: 'text', text: 'Echo: b' }]);
    await stop(second, 'SIGKILL');

    // One second, below every task's age: its end counts from its createdAt with the cut ttl, so
    // the restart forgets them all, in the state file too (not after another second's wait).
    const oldest = Date.parse(made[0]!.createdAt);
    await until(() => Date.now() > oldest + 2_000);
    writeConfig(dir, port, { maxTtlSeconds: 1, defaultTtlSeconds: 1 });
    const third = await serve(dir);
    client = await connect(third.url, third.token);
    for (const t of made) {
      const error = await rpcError(client.experimental.tasks.getTask(t.taskId));
      expect(error.code).toBe(ErrorCode.InvalidParams);
    }
    expect((await list(client)).tasks).toEqual([]);
    await until(() => toolTasksOnDisk(statePath).length === 0);
    await stop(third, 'SIGTERM');
  }, 120_000);
});

describe('agent-fabric serve: a tasks/list cursor across a restart', () => {
  it('pages on after SIGKILL and restart: every task exactly once, though tasks were forgotten and made between the pages', async () => {
    const dir = tempDir('cli-tasks-cursor');
    const port = await freePort();
    const statePath = join(dir, '.fabric', 'state.db');
    writeConfig(dir, port, { maxPerAgent: 200 });

    const first = await serve(dir);
    let client = await connect(first.url, first.token);
    // Ten tasks that live a second, then 140 that live an hour: all finished.
    const short: string[] = [];
    let shortMadeAt = 0;
    for (let i = 0; i < 10; i++) {
      const { task } = await echoAsTask(client, `s${i}`, 1_000);
      short.push(task.taskId);
      shortMadeAt = Date.parse(task.createdAt);
    }
    const long: string[] = [];
    for (let i = 0; i < 140; i++) long.push((await echoAsTask(client, `l${i}`, HOUR)).task.taskId);
    await until(
      () =>
        toolTasksOnDisk(statePath).filter(
          (r) => r.status === 'completed' && long.includes(r.taskId),
        ).length === 140,
      60_000,
    );

    const page1 = await list(client);
    expect(page1.tasks).toHaveLength(100);
    expect(page1.nextCursor).toEqual(expect.any(String));
    const seen = page1.tasks.map((t) => t.taskId);
    await stop(first, 'SIGKILL');

    // The short ones' second is over before the restart: it forgets them.
    await until(() => Date.now() > shortMadeAt + 1_500);
    const second = await serve(dir);
    client = await connect(second.url, second.token);
    // Made between the pages: listed after the others.
    const later = (await echoAsTask(client, 'later', HOUR)).task.taskId;
    await client.experimental.tasks.getTaskResult(later, CallToolResultSchema);

    let cursor = page1.nextCursor;
    while (cursor !== undefined) {
      const page = await list(client, cursor);
      seen.push(...page.tasks.map((t) => t.taskId));
      cursor = page.nextCursor;
    }
    const expected = [...long, later];
    // Every live task once, in creation order; the forgotten ones may only have been on page 1.
    expect(seen.filter((id) => !short.includes(id))).toEqual(expected);
    expect(new Set(seen).size).toBe(seen.length);
    expect(toolTasksOnDisk(statePath).some((r) => short.includes(r.taskId))).toBe(false);
    await stop(second, 'SIGTERM');
  }, 180_000);

  it('refuses a forged or garbage cursor with InvalidParams, and a well-formed one shows only the agent its own tasks', async () => {
    const dir = tempDir('cli-tasks-cursor-forged');
    const port = await freePort();
    writeConfig(dir, port, {});
    const running = await serve(dir);
    const client = await connect(running.url, running.token);
    const { task } = await echoAsTask(client, 'one', HOUR);
    await client.experimental.tasks.getTaskResult(task.taskId, CallToolResultSchema);
    for (const cursor of ['99', task.taskId, 'AAAA', '!!!', 'x'.repeat(10_000), '']) {
      const error = await rpcError(list(client, cursor));
      expect(error.code).toBe(ErrorCode.InvalidParams);
      expect(JSON.stringify(error.data)).toContain('FABRIC_ERR_INVALID_ARGUMENT');
    }
    // Well-formed but made up: it only says where in the agent's own list to start.
    const forged = Buffer.from(`0:tt_${'0'.repeat(8)}-0000-4000-8000-${'0'.repeat(12)}`).toString(
      'base64url',
    );
    expect((await list(client, forged)).tasks.map((t) => t.taskId)).toEqual([task.taskId]);
    await stop(running, 'SIGTERM');
  }, 60_000);
});

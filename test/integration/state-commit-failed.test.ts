/**
 * A state commit that fails (disk full, I/O error) under a running `agent-fabric serve` (real
 * child process, real SQLite file, real Operator API over HTTP). The disk is "full" for the
 * sidecar alone: its file size limit is set to 0 with `prlimit --pid` (every write to a regular
 * file fails with EFBIG, as on a full disk; Node ignores SIGXFSZ) and lifted again later.
 *
 * Before, `ScheduleTask` still answered 200 for a task whose commit had failed: only `/readyz`
 * said so, and a SIGTERM while still full exited 1 and lost the task — an acknowledged task
 * vanished. Now the call answers `FABRIC_ERR_STATE_STORE` and the task is withdrawn at once
 * (CANCELLED with that code, never run); once the disk takes writes again the store commits
 * what was pending by itself, without a new change or a restart.
 */
import { join } from 'node:path';
import { create } from '@bufbuild/protobuf';
import type { ServiceError } from '@grpc/grpc-js';
import Database from 'better-sqlite3';
import { afterAll, expect, it } from 'vitest';
import { callApi, listApprovals } from '../fixtures/api.js';
import { ADMIN_TOKEN, EVERYTHING_BIN, until } from '../fixtures/gateway/harness.js';
import {
  agentIdOf,
  ENV,
  oneWorkerDir,
  schedule,
  scheduleCall,
  stateReady,
} from '../fixtures/state/one-worker.js';
import { diskFull, tasksIn } from '../fixtures/state/disk-full.js';
import { cleanUp, connect, freePort, serve, stop, type Running } from '../fixtures/state/serve.js';
import { grpcClient, unary } from '../fixtures/grpc-client.js';
import { AGENT_SERVICE_DEFINITION } from '../../src/rpc/agent-service.js';
import {
  CompleteTaskRequestSchema,
  FailTaskRequestSchema,
} from '../../src/gen/fabric/v1/agent_pb.js';

afterAll(cleanUp);

interface Listed {
  taskId: string;
  status: string;
  error?: { code: string };
}

async function listTasks(r: Running): Promise<Listed[]> {
  const res = await callApi(r.url, 'FabricService/ListTasks', {}, ADMIN_TOKEN);
  expect(res.status).toBe(200);
  return ((await res.json()) as { tasks: Listed[] }).tasks;
}

it('a schedule whose commit failed answers FABRIC_ERR_STATE_STORE, is withdrawn, and the store recovers by itself', async () => {
  const dir = await oneWorkerDir('state-commit-failed');
  const statePath = join(dir, '.fabric', 'state.db');
  const first = await serve(dir, ENV);
  const agentId = agentIdOf(first);
  const t1 = await schedule(first, agentId, 1);

  diskFull(first, true);
  const refused = await scheduleCall(first, agentId, 2);
  const body = (await refused.json()) as { code: string; message: string };
  expect(refused.status).not.toBe(200);
  expect(body.code).toBe('FABRIC_ERR_STATE_STORE');
  expect(body.message).toContain('was not scheduled');
  expect(body.message).toContain(statePath);
  expect(await stateReady(first)).toBe(false);
  // Withdrawn, not left queued to run later: CANCELLED with the same code.
  const listed = await listTasks(first);
  const withdrawn = listed.find((t) => t.taskId !== t1);
  expect(withdrawn).toBeDefined();
  expect(withdrawn!.status).toBe('TASK_STATUS_CANCELLED');
  expect(withdrawn!.error?.code).toBe('FABRIC_ERR_STATE_STORE');
  expect(listed.find((t) => t.taskId === t1)!.status).toBe('TASK_STATUS_PENDING');

  // Space is back: the store commits what was pending without a new change or a restart.
  diskFull(first, false);
  await until(() => stateReady(first), 20_000);
  const onDisk = tasksIn(statePath);
  expect(onDisk.map((r) => r.id)).toEqual([t1, withdrawn!.taskId]);

  const t3 = await schedule(first, agentId, 3);
  expect(await stop(first, 'SIGTERM')).toBe(0);

  // After a restart: the acknowledged tasks are queued, the refused one stays cancelled.
  const second = await serve(dir, ENV);
  const after = await listTasks(second);
  const status = Object.fromEntries(after.map((t) => [t.taskId, t.status]));
  expect(status).toEqual({
    [t1]: 'TASK_STATUS_PENDING',
    [withdrawn!.taskId]: 'TASK_STATUS_CANCELLED',
    [t3]: 'TASK_STATUS_PENDING',
  });
  expect(await stop(second, 'SIGTERM')).toBe(0);
}, 120_000);

/** The tokens the state file at `path` holds for budget `scope` (the sum of its buckets). */
function tokensIn(path: string, scope: string): number {
  const db = new Database(path, { readonly: true, fileMustExist: true });
  try {
    const row = db
      .prepare<[string], { data: string }>('SELECT data FROM budgets WHERE scope = ?')
      .get(scope);
    if (row === undefined) return 0;
    const data = JSON.parse(row.data) as { tokens: { buckets: number[] } };
    return data.tokens.buckets.reduce((a, b) => a + b, 0);
  } finally {
    db.close();
  }
}

it('usage reported while the store cannot commit is refused with FABRIC_ERR_STATE_STORE, kept, and written once space is back', async () => {
  const dir = await oneWorkerDir('state-commit-failed-usage', {
    agents: [{ name: 'worker', budget: { maxTokensPerHour: 10_000_000 } }],
  });
  const statePath = join(dir, '.fabric', 'state.db');
  const first = await serve(dir, ENV);
  const agentId = agentIdOf(first);
  const client = await connect(first.url, first.token);

  diskFull(first, true);
  const r = await client.callTool({
    name: 'fabric__record_usage',
    arguments: { tokens: 777_777, cost: 0 },
  });
  expect(r.isError).toBe(true);
  const said = (r.content as { text: string }[]).map((c) => c.text).join('\n');
  expect(said).toContain('FABRIC_ERR_STATE_STORE');
  expect(said).toContain('do not send it again');
  const scope = `agent:${agentId}`;
  expect(tokensIn(statePath, scope)).toBeLessThan(777_777);

  // Space is back: the usage kept in memory is written without a new change.
  diskFull(first, false);
  await until(() => stateReady(first), 20_000);
  expect(tokensIn(statePath, scope)).toBeGreaterThanOrEqual(777_777);
  const again = await client.callTool({
    name: 'fabric__record_usage',
    arguments: { tokens: 1, cost: 0 },
  });
  expect(again.isError).toBeFalsy();
  expect(await stop(first, 'SIGTERM')).toBe(0);
  expect(tokensIn(statePath, scope)).toBeGreaterThanOrEqual(777_778);
}, 120_000);

it('a stop while commits still fail exits 1 saying what is lost, and no acknowledged task is', async () => {
  const dir = await oneWorkerDir('state-commit-failed-stop');
  const statePath = join(dir, '.fabric', 'state.db');
  const first = await serve(dir, ENV);
  const agentId = agentIdOf(first);
  const t1 = await schedule(first, agentId, 1);
  diskFull(first, true);
  const refused = await scheduleCall(first, agentId, 2);
  expect(((await refused.json()) as { code: string }).code).toBe('FABRIC_ERR_STATE_STORE');
  expect(await stop(first, 'SIGTERM')).toBe(1);
  expect(first.err()).toContain('shutdown failed');
  expect(first.err()).toContain(statePath);
  expect(first.err()).toContain('was kept in memory only and is lost');

  // Every task that was acknowledged is there; the refused one never was.
  const second = await serve(dir, ENV);
  const after = await listTasks(second);
  expect(after.map((t) => [t.taskId, t.status])).toEqual([[t1, 'TASK_STATUS_PENDING']]);
  expect(await stop(second, 'SIGTERM')).toBe(0);
}, 120_000);

it('a claim whose commit failed is refused and the task goes back to its queue', async () => {
  // The attempt is a remote agent's fencing token, committed before the answer leaves: one
  // that is not on disk must not reach the agent.
  const dir = await oneWorkerDir('state-commit-failed-claim');
  const first = await serve(dir, ENV);
  const agentId = agentIdOf(first);
  const client = await connect(first.url, first.token);
  const t1 = await schedule(first, agentId, 1);

  diskFull(first, true);
  const r = await client.callTool({ name: 'fabric__claim_task', arguments: { waitSeconds: 0 } });
  expect(r.isError).toBe(true);
  const said = (r.content as { text: string }[]).map((c) => c.text).join('\n');
  expect(said).toContain('FABRIC_ERR_STATE_STORE');
  expect(said).toContain('claim again later');
  expect((await listTasks(first)).map((t) => [t.taskId, t.status])).toEqual([
    [t1, 'TASK_STATUS_PENDING'],
  ]);

  diskFull(first, false);
  await until(() => stateReady(first), 20_000);
  const claimed = await client.callTool({
    name: 'fabric__claim_task',
    arguments: { waitSeconds: 0 },
  });
  expect(claimed.isError).toBeFalsy();
  const text = (claimed.content as { text: string }[]).map((c) => c.text).join('\n');
  expect(text).toContain(t1);
  expect(await stop(first, 'SIGTERM')).toBe(0);
}, 120_000);

it('tool calls are refused while the store cannot commit, the one whose reservation found out too: none keeps usage in memory only', async () => {
  const dir = await oneWorkerDir('state-commit-failed-tool-call', {
    // Every settle committed exactly: the file holds the usage to the unit.
    state: { path: '.fabric/state.db', budgetLeasePercent: 0 },
    upstreams: {
      ev: { command: process.execPath, args: [EVERYTHING_BIN, 'stdio'], stderr: 'ignore' },
    },
    agents: [{ name: 'worker', budget: { maxTokensPerHour: 10_000_000 } }],
  });
  const statePath = join(dir, '.fabric', 'state.db');
  const first = await serve(dir, ENV);
  const scope = `agent:${agentIdOf(first)}`;
  const client = await connect(first.url, first.token);
  const echo = { name: 'ev__echo', arguments: { message: 'x'.repeat(400) } };
  expect((await client.callTool(echo)).isError).toBeFalsy();
  const settled = tokensIn(statePath, scope);
  expect(settled).toBeGreaterThan(0);

  diskFull(first, true);
  // The first call's reservation finds out that the disk is full (with budgetLeasePercent 0
  // each reservation is committed before its call goes ahead): it is refused before it runs,
  // and so are the next ones — none of them settles anything. (Before, the first call ran and
  // its usage was held in memory only.)
  for (let i = 0; i < 4; i++) {
    const r = await client.callTool(echo);
    expect(r.isError).toBe(true);
    const said = (r.content as { text: string }[]).map((c) => c.text).join('\n');
    expect(said).toContain('FABRIC_ERR_STATE_STORE');
    expect(said).toContain('tool calls are refused until it can');
    // The call itself is fine: the agent is told to call again, not to give it up.
    expect(said).toContain('retry it once the sidecar can write its state again');
    expect(said).not.toContain('Do not retry');
  }
  expect(tokensIn(statePath, scope)).toBe(settled);

  // Space is back: the file holds the two answered calls, none of the refused ones.
  diskFull(first, false);
  await until(() => stateReady(first), 20_000);
  expect((await client.callTool(echo)).isError).toBeFalsy();
  expect(await stop(first, 'SIGTERM')).toBe(0);
  expect(tokensIn(statePath, scope)).toBe(2 * settled);
}, 120_000);

it('a call parked on an approval that is approved while the store cannot commit is refused, not run: it keeps no usage', async () => {
  const dir = await oneWorkerDir('state-commit-failed-approved', {
    state: { path: '.fabric/state.db', budgetLeasePercent: 0 },
    upstreams: {
      ev: { command: process.execPath, args: [EVERYTHING_BIN, 'stdio'], stderr: 'ignore' },
    },
    policies: [
      {
        name: 'approvals',
        priority: 100,
        rules: [{ tool: 'ev__echo', action: 'require_approval', reason: 'a human echoes' }],
      },
      { name: 'default-allow', rules: [{ tool: '*', action: 'allow' }] },
    ],
    agents: [{ name: 'worker', budget: { maxTokensPerHour: 10_000_000 } }],
  });
  const statePath = join(dir, '.fabric', 'state.db');
  const first = await serve(dir, ENV);
  const scope = `agent:${agentIdOf(first)}`;
  const client = await connect(first.url, first.token);
  const parked = client.callTool(
    { name: 'ev__echo', arguments: { message: 'x'.repeat(400) } },
    undefined,
    { timeout: 60_000 },
  );
  let id: string | undefined;
  await until(async () => {
    id = (await listApprovals(first.url, ADMIN_TOKEN, 'pending'))[0]?.id;
    return id !== undefined;
  }, 20_000);

  diskFull(first, true);
  // The decision stands (its own commit fails: the approver is told so) …
  await callApi(first.url, 'ApprovalService/Approve', { id }, ADMIN_TOKEN);
  // … but the call it let through is refused before it runs, as every call is meanwhile.
  // Before, it ran upstream and its usage was held in memory only.
  const r = await parked;
  expect(r.isError).toBe(true);
  const said = (r.content as { text: string }[]).map((c) => c.text).join('\n');
  expect(said).toContain('FABRIC_ERR_STATE_STORE');
  expect(said).toContain('tool calls are refused until it can');

  // Space is back: the file holds the approval as approved, and no usage of the refused call.
  diskFull(first, false);
  await until(() => stateReady(first), 20_000);
  expect(await stop(first, 'SIGTERM')).toBe(0);
  expect(tokensIn(statePath, scope)).toBe(0);
  const db = new Database(statePath, { readonly: true, fileMustExist: true });
  try {
    const row = db
      .prepare<[string], { data: string }>(
        "SELECT data FROM records WHERE kind = 'approval' AND id = ?",
      )
      .get(id!);
    expect((JSON.parse(row!.data) as { status: string }).status).toBe('approved');
  } finally {
    db.close();
  }
}, 120_000);

it('a CompleteTask or FailTask repeated over gRPC (its answer lost) while the store cannot commit answers by whether its task end is on disk', async () => {
  // Before, the repeat changed nothing and was judged by the commits since: with the disk full
  // it answered FABRIC_ERR_STATE_STORE "not committed" for an end the file held, and a worker
  // retrying a lost answer was told its completion did not hold. (Over MCP every tool call is
  // refused while the store cannot commit, the worker tools included.)
  const port = await freePort();
  const dir = await oneWorkerDir('state-commit-failed-repeat-end', {
    grpc: { host: '127.0.0.1', port },
  });
  const first = await serve(dir, ENV);
  const agentId = agentIdOf(first);
  const mcp = await connect(first.url, first.token);
  const grpc = grpcClient(AGENT_SERVICE_DEFINITION, `127.0.0.1:${port}`);
  try {
    const claim = async (): Promise<{ taskId: string; attempt: number }> => {
      const r = await mcp.callTool({ name: 'fabric__claim_task', arguments: { waitSeconds: 0 } });
      expect(r.isError).toBeFalsy();
      return JSON.parse((r.content as { text: string }[])[0]!.text) as {
        taskId: string;
        attempt: number;
      };
    };
    const complete = (taskId: string, attempt: number): Promise<unknown> =>
      unary(
        grpc,
        'completeTask',
        create(CompleteTaskRequestSchema, { taskId, attempt }),
        first.token,
      ).catch((error: unknown) => error);
    const fail = (taskId: string, attempt: number): Promise<unknown> =>
      unary(
        grpc,
        'failTask',
        create(FailTaskRequestSchema, { taskId, attempt, message: 'no' }),
        first.token,
      ).catch((error: unknown) => error);
    const refusal = (e: unknown): string | undefined =>
      e instanceof Error
        ? String((e as ServiceError).metadata.get('fabric-error-code')[0])
        : undefined;
    const t1 = await schedule(first, agentId, 1);
    const a1 = await claim();
    expect(refusal(await complete(t1, a1.attempt))).toBe(undefined);
    const t2 = await schedule(first, agentId, 2);
    const a2 = await claim();
    expect(refusal(await fail(t2, a2.attempt))).toBe(undefined);
    const t3 = await schedule(first, agentId, 3);
    const a3 = await claim();
    const state = join(dir, '.fabric', 'state.db');
    const statusOf = (id: string): string | undefined =>
      tasksIn(state).find((t) => t.id === id)?.status;
    expect([statusOf(t1), statusOf(t2)]).toEqual(['COMPLETED', 'FAILED']);

    diskFull(first, true);
    // The third task's completion is a change: refused, not on disk.
    const refused = await complete(t3, a3.attempt);
    expect(refusal(refused)).toBe('FABRIC_ERR_STATE_STORE');
    expect((refused as Error).message).toContain('not committed');
    for (let i = 0; i < 2; i++) {
      expect.soft(refusal(await complete(t1, a1.attempt))).toBe(undefined);
      expect.soft(refusal(await fail(t2, a2.attempt))).toBe(undefined);
      // The third one's end is still not on disk: its repeat says so again.
      const again = await complete(t3, a3.attempt);
      expect(refusal(again)).toBe('FABRIC_ERR_STATE_STORE');
      expect((again as Error).message).toContain('not committed');
    }
    expect([statusOf(t1), statusOf(t2), statusOf(t3)]).toEqual(['COMPLETED', 'FAILED', 'RUNNING']);

    diskFull(first, false);
    await until(() => stateReady(first), 20_000);
    expect(statusOf(t3)).toBe('COMPLETED');
    expect(refusal(await complete(t3, a3.attempt))).toBe(undefined);
  } finally {
    grpc.close();
  }
  expect(await stop(first, 'SIGTERM')).toBe(0);
}, 120_000);

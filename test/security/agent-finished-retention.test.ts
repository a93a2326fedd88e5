/**
 * What one agent's finished tasks take of the fabric's retention. `fabric__schedule_task` bounds
 * an agent's unfinished tasks (`maxScheduledTasksPerAgent`), but a task that ends makes room for
 * the next, and every finished task was kept in one global FIFO (`finishedTaskRetention`, 10,000)
 * with its payload and result (each up to `maxTaskResultBytes`, 1 MiB): an agent in a pool that
 * scheduled tasks, claimed them itself and completed them in a loop pushed the operator's and
 * its peers' finished tasks out (`GetTask` answered NOT_FOUND, the results were deleted from the
 * state file) and pinned the whole retention, 10,000 × ~2 MiB, with its own. Now each agent
 * keeps only its newest `finishedTaskRetentionPerAgent` finished tasks it scheduled itself; they
 * evict one another, not others' tasks. Real sidecar, real SQLite state file, the official SDK
 * client over Streamable HTTP, the operator API.
 */
import { join } from 'node:path';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import { afterEach, describe, expect, it } from 'vitest';
import { SqliteStore } from '../../src/store/sqlite-store.js';
import type { AgentRecord } from '../../src/lifecycle/lifecycle-manager.js';
import type { PoolRecord } from '../../src/pools/pool-manager.js';
import type { TaskRecord } from '../../src/scheduler/task-record.js';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
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

let sidecar: Sidecar | undefined;
const clients: Client[] = [];

afterEach(async () => {
  for (const c of clients.splice(0)) await c.close().catch(() => undefined);
  await closeSidecar(sidecar);
  sidecar = undefined;
});

async function start(path: string, fabric: Record<string, number>): Promise<Sidecar> {
  sidecar = await startTestSidecar({
    policies: [DEFAULT_ALLOW],
    fabric,
    state: { path },
    pools: [{ id: 'crew' }],
    agents: [
      { name: 'attacker', poolId: 'crew' },
      { name: 'peer', poolId: 'crew' },
      { name: 'other' },
    ],
    gateway: { poolScheduling: true, shutdownGraceSeconds: 0 },
  } as never);
  return sidecar;
}

async function client(name: string): Promise<Client> {
  const c = await httpClient(sidecar!.url!, agentToken(sidecar!, name));
  clients.push(c);
  return c;
}

function call(c: Client, name: string, args: Record<string, unknown>): Promise<CallToolResult> {
  return c.callTool({ name, arguments: args }, undefined, {
    timeout: 600_000,
  }) as Promise<CallToolResult>;
}

/**
 * `c` schedules a task to its own pool, claims it itself and completes it with `result`; returns
 * the schedule call's answer (the finished task).
 */
async function scheduleAndFinish(c: Client, result: unknown): Promise<CallToolResult> {
  const scheduled = call(c, 'fabric__schedule_task', { taskType: 'spam' });
  const claimed = await call(c, 'fabric__claim_task', { waitSeconds: 10 });
  expect(claimed.isError, text(claimed)).toBeFalsy();
  const task = (claimed.structuredContent as { result: { taskId: string; attempt: number } })
    .result;
  const done = await call(c, 'fabric__complete_task', {
    taskId: task.taskId,
    attempt: task.attempt,
    result,
  });
  expect(done.isError, text(done)).toBeFalsy();
  return scheduled;
}

/** The finished tasks of `tenant` in the state file. */
async function storedFinished(path: string, tenant: string): Promise<number> {
  const store = await SqliteStore.open<TaskRecord, AgentRecord, PoolRecord>(path);
  try {
    let n = 0;
    for (const t of store.tasks.values()) {
      if (t.tenant === tenant && t.finishedAt !== undefined) n++;
    }
    return n;
  } finally {
    await store.close();
  }
}

/** The operator schedules a task for `other` and cancels it: a finished task of the operator. */
async function operatorFinishedTask(): Promise<string> {
  const res = await api(sidecar!, 'FabricService/ScheduleTask', {
    agentId: agentId(sidecar!, 'other'),
    taskType: 'audit-me',
  });
  expect(res.status, await res.clone().text()).toBe(200);
  const { task } = (await res.json()) as { task: { taskId: string } };
  await sidecar!.fabric!.cancelTask(task.taskId);
  return task.taskId;
}

describe("an agent's finished tasks", () => {
  it("do not push the operator's finished tasks out of the retention (default per-agent bound)", async () => {
    const path = join(tempDir('agent-finished-default'), 'state.db');
    await start(path, { finishedTaskRetention: 70 });
    const mine = await operatorFinishedTask();
    const attacker = await client('attacker');
    // More than the whole retention, one at a time (maxScheduledTasksPerAgent does not stop it).
    for (let i = 0; i < 80; i++) {
      const answer = await scheduleAndFinish(attacker, { i, pad: 'x'.repeat(512) });
      expect(answer.isError, text(answer)).toBeFalsy();
    }
    const got = await api(sidecar!, 'FabricService/GetTask', { taskId: mine });
    expect(got.status, await got.clone().text()).toBe(200);
    expect(((await got.json()) as { task: { status: string } }).task.status).toBe(
      'TASK_STATUS_CANCELLED',
    );
    const tenant = `agent:${agentId(sidecar!, 'attacker')}`;
    const kept = sidecar!.fabric!.scheduler.listTasks().filter((t) => t.tenant === tenant);
    // A tenth of the retention of 70.
    expect(kept).toHaveLength(7);
    await closeSidecar(sidecar);
    sidecar = undefined;
    expect(await storedFinished(path, tenant)).toBe(7);
  });

  it('are kept within finishedTaskRetentionPerAgent, newest first, each agent apart', async () => {
    const path = join(tempDir('agent-finished-config'), 'state.db');
    await start(path, { finishedTaskRetentionPerAgent: 3 });
    const mine = await operatorFinishedTask();
    const peer = await client('peer');
    const peerTask = await scheduleAndFinish(peer, 'peer-result');
    const peerId = (peerTask.structuredContent as { result: { taskId: string } }).result.taskId;
    const attacker = await client('attacker');
    const ids: string[] = [];
    for (let i = 0; i < 10; i++) {
      const answer = await scheduleAndFinish(attacker, i);
      ids.push((answer.structuredContent as { result: { taskId: string } }).result.taskId);
    }
    const tenant = `agent:${agentId(sidecar!, 'attacker')}`;
    const kept = sidecar!.fabric!.scheduler.listTasks().filter((t) => t.tenant === tenant);
    expect(kept.map((t) => t.id).sort()).toEqual(ids.slice(-3).sort());
    // An evicted one is gone as any forgotten task is; the peer's and the operator's are kept.
    const gone = await api(sidecar!, 'FabricService/GetTask', { taskId: ids[0] });
    expect(await gone.text()).toContain('FABRIC_ERR_TASK_NOT_FOUND');
    for (const id of [mine, peerId]) {
      const got = await api(sidecar!, 'FabricService/GetTask', { taskId: id });
      expect(got.status, await got.clone().text()).toBe(200);
    }
    await closeSidecar(sidecar);
    sidecar = undefined;
    expect(await storedFinished(path, tenant)).toBe(3);
    // After a restart on the same state file the bound still holds.
    await start(path, { finishedTaskRetentionPerAgent: 2 });
    await until(() => sidecar!.fabric !== undefined);
    const after = sidecar!.fabric!.scheduler.listTasks().filter((t) => t.tenant === tenant);
    expect(after.map((t) => t.id).sort()).toEqual(ids.slice(-2).sort());
  });
  // Found by the hostile review of ef2208f: the default share (64) was no share of a retention
  // configured at 64 or less (fabric.finishedTaskRetention: 30): the agent finishing its own
  // tasks in a loop pushed every other finished task out as before. The default share is now a
  // tenth of the retention (at most 64); a share of the whole retention is refused.
  it("keep the operator's under a retention smaller than 64 (default share: a tenth)", async () => {
    const path = join(tempDir('agent-finished-small'), 'state.db');
    await start(path, { finishedTaskRetention: 30 });
    const mine: string[] = [];
    for (let i = 0; i < 5; i++) mine.push(await operatorFinishedTask());
    const attacker = await client('attacker');
    for (let i = 0; i < 40; i++) {
      const answer = await scheduleAndFinish(attacker, i);
      expect(answer.isError, text(answer)).toBeFalsy();
    }
    for (const id of mine) {
      const got = await api(sidecar!, 'FabricService/GetTask', { taskId: id });
      expect(got.status, await got.clone().text()).toBe(200);
    }
    const tenant = `agent:${agentId(sidecar!, 'attacker')}`;
    const kept = sidecar!.fabric!.scheduler.listTasks().filter((t) => t.tenant === tenant);
    expect(kept).toHaveLength(3);
    await closeSidecar(sidecar);
    sidecar = undefined;
    expect(await storedFinished(path, tenant)).toBe(3);
  });

  it('refuse a finishedTaskRetentionPerAgent that is the whole retention', async () => {
    const path = join(tempDir('agent-finished-whole'), 'state.db');
    await expect(
      start(path, { finishedTaskRetention: 30, finishedTaskRetentionPerAgent: 30 }),
    ).rejects.toThrow(/finishedTaskRetentionPerAgent/);
  });
});

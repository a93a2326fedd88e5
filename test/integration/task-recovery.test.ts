/**
 * Tasks over a real SQLite state file, across a restart (close the fabric and its store, open a
 * new store on the same file, build a new AgentFabric on it): finished tasks keep their result,
 * queued ones come back in the same order, a running one is retried with its attempt counted (a
 * late report of the old attempt is refused) or fails at `maxAttempts`, deadlines that passed
 * time out, tasks of agents that are gone follow the lost-agent rule, and what the store could
 * not keep is refused before it is acknowledged.
 */
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, describe, expect, it } from 'vitest';
import { AgentStatus } from '../../src/agent.js';
import { AgentFabric } from '../../src/fabric.js';
import type { AgentRecord } from '../../src/lifecycle/lifecycle-manager.js';
import type { PoolRecord } from '../../src/pools/pool-manager.js';
import type { TaskRecord } from '../../src/scheduler/task-record.js';
import { SqliteStore } from '../../src/store/sqlite-store.js';
import { taskFromRow, type TaskRow } from '../../src/store/sqlite-tasks.js';
import { MemoryStore } from '../../src/store/memory-store.js';
import { Priority, TaskStatus } from '../../src/task.js';
import type { FabricConfig } from '../../src/config.js';
import { tempDir, until } from '../fixtures/gateway/harness.js';
import { owedAbortIds } from '../fixtures/nats/state-sidecar.js';

type Store = SqliteStore<TaskRecord, AgentRecord, PoolRecord>;

const fabrics: AgentFabric[] = [];
afterEach(async () => {
  for (const f of fabrics.splice(0)) await f.close();
});

async function open(
  path: string,
  config: Partial<FabricConfig> = {},
): Promise<{ fabric: AgentFabric; store: Store }> {
  const store = await SqliteStore.open<TaskRecord, AgentRecord, PoolRecord>(path);
  const fabric = new AgentFabric(config, { store });
  fabric.registerInProcessHandler('echo', (payload) => payload);
  fabrics.push(fabric);
  return { fabric, store };
}

async function close(fabric: AgentFabric): Promise<void> {
  fabrics.splice(fabrics.indexOf(fabric), 1);
  await fabric.close();
}

/** The stored rows of tasks, read from the file itself. */
function storedTasks(path: string): Map<string, Record<string, unknown>> {
  const db = new Database(path, { readonly: true });
  try {
    const rows = db.prepare<[], TaskRow>('SELECT * FROM tasks').all();
    return new Map(rows.map((r) => [r.id, taskFromRow(r)]));
  } finally {
    db.close();
  }
}

/** Pool `p` of two remote agents: their ids. */
async function remotePair(fabric: AgentFabric): Promise<string[]> {
  const pool = await fabric.createPool({
    poolId: 'p',
    model: 'm',
    minAgents: 2,
    maxAgents: 2,
    executor: 'remote',
  });
  return pool.spawned.map((s) => s.id);
}

/** Claims and completes every task the agent gets, returning the payloads' `n` in claim order. */
async function drain(fabric: AgentFabric, agentId: string): Promise<number[]> {
  const order: number[] = [];
  for (;;) {
    const a = await fabric.claimTask(agentId);
    if (a === undefined) return order;
    order.push((a.payload as { n: number }).n);
    await fabric.completeTask(agentId, a.taskId, a.attempt, a.payload);
  }
}

/** A deadline every run of the test shares, so the orders compare. */
const far = Date.now() + 3_600_000;

/** A mix of priorities, tenants and deadlines, so every part of the queue order counts. */
async function scheduleMix(fabric: AgentFabric, agentId: string, from: number): Promise<string[]> {
  const ids: string[] = [];
  const specs = [
    { priority: Priority.LOW },
    { priority: Priority.NORMAL, tenant: 'a' },
    { priority: Priority.NORMAL, tenant: 'b' },
    { priority: Priority.NORMAL, tenant: 'a', deadline: far + 10 },
    { priority: Priority.HIGH },
    { priority: Priority.NORMAL, tenant: 'b', deadline: far },
    { priority: Priority.NORMAL, tenant: 'a' },
    { priority: Priority.CRITICAL, tenant: 'c' },
    { priority: Priority.NORMAL, tenant: 'a', deadline: far },
    { priority: Priority.LOW, tenant: 'b' },
    { priority: Priority.NORMAL, tenant: 'b' },
  ];
  for (const [i, spec] of specs.entries()) {
    const t = await fabric.schedule({
      agentId,
      taskType: 'echo',
      payload: { n: from + i },
      ...spec,
    });
    ids.push(t.id);
  }
  return ids;
}

/** `{ d: { d: … } }`, `depth` levels. */
function nest(depth: number): unknown {
  let v: unknown = 1;
  for (let i = 0; i < depth; i++) v = { d: v };
  return v;
}

describe('tasks across a restart of the fabric (SqliteStore)', () => {
  it('requeues pending tasks in the order they would have run, and numbers new ones after them', async () => {
    // The order the same tasks run in without a restart.
    const reference = new AgentFabric({}, { store: new MemoryStore() });
    fabrics.push(reference);
    const refAgent = await reference.spawn({ name: 'w', model: 'm', executor: 'remote' });
    await scheduleMix(reference, refAgent.id, 0);
    await scheduleMix(reference, refAgent.id, 100);
    const expected = await drain(reference, refAgent.id);
    expect(expected).toHaveLength(22);

    const path = join(tempDir('task-recovery'), 'state.db');
    const first = await open(path);
    const agent = await first.fabric.spawn({ name: 'w', model: 'm', executor: 'remote' });
    const ids = await scheduleMix(first.fabric, agent.id, 0);
    await close(first.fabric);
    expect([...storedTasks(path).values()].map((r) => r.status)).toEqual(ids.map(() => 'PENDING'));

    const second = await open(path);
    for (const id of ids) expect((await second.fabric.getTask(id)).status).toBe('PENDING');
    expect(second.fabric.scheduler.stats().pendingTasks).toBe(ids.length);
    await scheduleMix(second.fabric, agent.id, 100);
    expect(await drain(second.fabric, agent.id)).toEqual(expected);
  });

  it('keeps a completed task and its result; a waiter on it resolves at once', async () => {
    const path = join(tempDir('task-recovery'), 'state.db');
    const first = await open(path);
    const agent = await first.fabric.spawn({ name: 'w', model: 'm', executor: 'inprocess' });
    const task = await first.fabric.schedule({
      agentId: agent.id,
      taskType: 'echo',
      payload: { deep: { list: [1, 'two', null] } },
    });
    const done = await first.fabric.waitForTask(task.id);
    await close(first.fabric);

    const second = await open(path);
    const again = await second.fabric.waitForTask(task.id);
    expect(again).toEqual(done);
    expect(again.result).toEqual({ deep: { list: [1, 'two', null] } });
  });

  it('retries a task that was running with the attempt counted, refusing the old attempt', async () => {
    const path = join(tempDir('task-recovery'), 'state.db');
    const first = await open(path);
    const agent = await first.fabric.spawn({ name: 'w', model: 'm', executor: 'remote' });
    const task = await first.fabric.schedule({
      agentId: agent.id,
      taskType: 'echo',
      payload: { n: 1 },
      maxAttempts: 3,
    });
    const claimed = await first.fabric.claimTask(agent.id);
    expect(claimed).toMatchObject({ taskId: task.id, attempt: 1 });
    await first.fabric.reportProgress(agent.id, task.id, 1, { half: true });
    await close(first.fabric);
    expect(storedTasks(path).get(task.id)).toMatchObject({
      status: 'RUNNING',
      attempt: 1,
      progress: { half: true },
    });

    const second = await open(path);
    expect(await second.fabric.getTask(task.id)).toMatchObject({
      status: 'PENDING',
      attempt: 1,
      error: { code: 'FABRIC_ERR_AGENT_UNAVAILABLE' },
    });
    // The old attempt's late completion: refused, and nothing changes.
    await expect(
      second.fabric.completeTask(agent.id, task.id, 1, { late: true }),
    ).rejects.toMatchObject({ code: 'FABRIC_ERR_TASK_STATE' });
    expect((await second.fabric.getTask(task.id)).status).toBe('PENDING');
    const retry = await second.fabric.claimTask(agent.id);
    expect(retry).toMatchObject({ taskId: task.id, attempt: 2 });
    await expect(
      second.fabric.completeTask(agent.id, task.id, 1, { late: true }),
    ).rejects.toMatchObject({ code: 'FABRIC_ERR_TASK_STATE' });
    await second.fabric.completeTask(agent.id, task.id, 2, { ok: true });
    await close(second.fabric);
    expect(storedTasks(path).get(task.id)).toMatchObject({
      status: 'COMPLETED',
      attempt: 2,
      result: { ok: true },
    });
  });

  it('tells the agent that held a retried attempt that it ended, so its worker stops running it', async () => {
    // A remote worker outlives the sidecar: before, nothing told it that the restart ended the
    // attempt it was running, so its handler ran on beside the retry (on this agent or another
    // one of the pool) until it tried to report. Its next heartbeat now carries the notice, as
    // for an attempt ended while the sidecar ran.
    const path = join(tempDir('task-recovery'), 'state.db');
    const first = await open(path);
    const [a, b] = await remotePair(first.fabric);
    const task = await first.fabric.scheduleToPool('p', 'echo', { n: 1 }, { maxAttempts: 3 });
    const claimed = (await first.fabric.claimTask(a!))!;
    expect(claimed).toMatchObject({ taskId: task.id, attempt: 1 });
    await close(first.fabric);

    const second = await open(path);
    expect(second.fabric.scheduler.takeEndedTasks(a!)).toEqual([
      {
        taskId: task.id,
        attempt: 1,
        code: 'FABRIC_ERR_AGENT_UNAVAILABLE',
        message: expect.any(String),
      },
    ]);
    expect(second.fabric.scheduler.takeEndedTasks(b!)).toEqual([]);
    expect(await second.fabric.claimTask(b!)).toMatchObject({ taskId: task.id, attempt: 2 });
  });

  it('still tells the holder after another restart, once the retry finished elsewhere or the task timed out', async () => {
    // The notices a stopped process owed its remote agents used to live in its memory only: a
    // second restart before the holder's next report lost them, and a task finished or ended
    // meanwhile was owed nothing at the next start, so the holder's worker ran on. They are
    // kept in the store now, until the agent takes them.
    const path = join(tempDir('task-recovery'), 'state.db');
    const first = await open(path);
    const [a, b] = await remotePair(first.fabric);
    const retried = await first.fabric.scheduleToPool('p', 'echo', { n: 1 }, { maxAttempts: 3 });
    expect(await first.fabric.claimTask(a!)).toMatchObject({ taskId: retried.id, attempt: 1 });
    const timed = await first.fabric.scheduleToPool('p', 'echo', { n: 2 }, { timeoutSeconds: 0.2 });
    expect(await first.fabric.claimTask(b!)).toMatchObject({ taskId: timed.id, attempt: 1 });
    await until(async () => (await first.fabric.getTask(timed.id)).status === TaskStatus.TIMEOUT);
    await close(first.fabric);

    // The restart retries the attempt `a` held; `b` finishes the retry; `a` never reports.
    const second = await open(path);
    const retry = (await second.fabric.claimTask(b!))!;
    expect(retry).toMatchObject({ taskId: retried.id, attempt: 2 });
    await second.fabric.completeTask(b!, retry.taskId, retry.attempt, 'b did it');
    await close(second.fabric);

    const third = await open(path);
    expect(third.fabric.scheduler.takeEndedTasks(a!)).toEqual([
      {
        taskId: retried.id,
        attempt: 1,
        code: 'FABRIC_ERR_AGENT_UNAVAILABLE',
        message: expect.any(String),
      },
    ]);
    expect(third.fabric.scheduler.takeEndedTasks(b!)).toEqual([
      {
        taskId: timed.id,
        attempt: 1,
        code: 'FABRIC_ERR_TASK_TIMEOUT',
        message: expect.any(String),
      },
    ]);
    // The old attempt's late result is refused (a task `a` does not hold reads as unknown to
    // it); the store keeps the one outcome.
    await expect(third.fabric.completeTask(a!, retried.id, 1, 'a, late')).rejects.toMatchObject({
      code: 'FABRIC_ERR_TASK_NOT_FOUND',
    });
    await close(third.fabric);
    const rows = storedTasks(path);
    expect(rows.get(retried.id)).toMatchObject({
      status: 'COMPLETED',
      attempt: 2,
      result: 'b did it',
    });
    expect(rows.get(timed.id)).toMatchObject({ status: 'TIMEOUT', attempt: 1 });

    // Taken: a fourth start owes nothing.
    const fourth = await open(path);
    expect(fourth.fabric.scheduler.takeEndedTasks(a!)).toEqual([]);
    expect(fourth.fabric.scheduler.takeEndedTasks(b!)).toEqual([]);
  });

  it('does not owe again at the next start a notice the agent took while its task stays queued', async () => {
    // The notice of an attempt a restart ended was owed anew at every later start while the
    // task waited in its queue (the fallback for files of builds that kept no owed aborts,
    // applied to every file), so the agent was told it again after each restart.
    const path = join(tempDir('task-recovery'), 'state.db');
    const first = await open(path);
    const [a] = await remotePair(first.fabric);
    const task = await first.fabric.scheduleToPool('p', 'echo', { n: 1 }, { maxAttempts: 3 });
    expect(await first.fabric.claimTask(a!)).toMatchObject({ taskId: task.id, attempt: 1 });
    await close(first.fabric);

    const second = await open(path);
    expect(second.fabric.scheduler.takeEndedTasks(a!)).toEqual([
      expect.objectContaining({ taskId: task.id, attempt: 1 }),
    ]);
    await close(second.fabric);
    expect(owedAbortIds(path)).toEqual([]);

    // Nobody claimed the retry: the task is still queued with that attempt's error.
    const third = await open(path);
    expect((await third.fabric.getTask(task.id)).status).toBe(TaskStatus.PENDING);
    expect(third.fabric.scheduler.takeEndedTasks(a!)).toEqual([]);
    await close(third.fabric);
    expect(owedAbortIds(path)).toEqual([]);

    // The same file as a build before schema 3 (which kept no owed aborts) would leave it: the
    // first start of this build cannot tell whether `a` was told, so it tells it again.
    const db = new Database(path);
    db.exec('ALTER TABLE tasks DROP COLUMN report_mark');
    db.pragma('user_version = 2');
    db.close();
    const fourth = await open(path);
    expect(fourth.fabric.scheduler.takeEndedTasks(a!)).toEqual([
      expect.objectContaining({ taskId: task.id, attempt: 1 }),
    ]);
  });

  it('fails a running task that has used maxAttempts, and times out queued ones past their deadline', async () => {
    const path = join(tempDir('task-recovery'), 'state.db');
    const first = await open(path);
    const agent = await first.fabric.spawn({ name: 'w', model: 'm', executor: 'remote' });
    const last = await first.fabric.schedule({
      agentId: agent.id,
      taskType: 'echo',
      payload: {},
      maxAttempts: 1,
    });
    expect((await first.fabric.claimTask(agent.id))?.taskId).toBe(last.id);
    const deadline = Date.now() + 200;
    const late = await first.fabric.schedule({
      agentId: agent.id,
      taskType: 'echo',
      payload: {},
      deadline,
    });
    await close(first.fabric);
    await until(() => Date.now() > deadline + 1);

    const second = await open(path);
    expect(await second.fabric.getTask(last.id)).toMatchObject({
      status: 'FAILED',
      attempt: 1,
      error: { code: 'FABRIC_ERR_AGENT_UNAVAILABLE' },
    });
    expect(await second.fabric.getTask(late.id)).toMatchObject({
      status: 'TIMEOUT',
      attempt: 0,
      error: { code: 'FABRIC_ERR_DEADLINE_EXCEEDED' },
    });
    expect(await second.fabric.claimTask(agent.id)).toBeUndefined();
    await close(second.fabric);
    const rows = storedTasks(path);
    expect(rows.get(last.id)?.status).toBe('FAILED');
    expect(rows.get(late.id)?.status).toBe('TIMEOUT');
  });

  it('re-arms the deadline of a task still queued', async () => {
    const path = join(tempDir('task-recovery'), 'state.db');
    const first = await open(path);
    const agent = await first.fabric.spawn({ name: 'w', model: 'm', executor: 'remote' });
    const task = await first.fabric.schedule({
      agentId: agent.id,
      taskType: 'echo',
      payload: {},
      deadline: Date.now() + 1_500,
    });
    await close(first.fabric);
    const second = await open(path);
    expect((await second.fabric.getTask(task.id)).status).toBe('PENDING');
    const ended = await second.fabric.waitForTask(task.id, { timeoutSeconds: 30 });
    expect(ended).toMatchObject({
      status: 'TIMEOUT',
      error: { code: 'FABRIC_ERR_DEADLINE_EXCEEDED' },
    });
  });

  it('treats tasks of an agent that is gone like a lost agent’s: to its pool unless pinned', async () => {
    const path = join(tempDir('task-recovery'), 'state.db');
    const first = await open(path);
    const pool = await first.fabric.createPool({
      poolId: 'p',
      model: 'm',
      executor: 'remote',
      minAgents: 2,
    });
    const [gone, stays] = pool.currentAgents as [string, string];
    const free = await first.fabric.schedule({
      agentId: gone,
      taskType: 'echo',
      payload: { n: 1 },
    });
    const pinned = await first.fabric.schedule({
      agentId: gone,
      taskType: 'echo',
      payload: { n: 2 },
      pinned: true,
    });
    const running = await first.fabric.schedule({
      agentId: gone,
      taskType: 'echo',
      payload: { n: 3 },
    });
    // The first one is running when the process stops; the other two are queued.
    const claimed = await first.fabric.claimTask(gone);
    expect(claimed?.taskId).toBe(free.id);
    await close(first.fabric);
    // Between the runs the agent's record says it ended (as a crash mid-terminate leaves it).
    const edit = await SqliteStore.open<TaskRecord, AgentRecord, PoolRecord>(path);
    const rec = edit.agents.get(gone)!;
    rec.status = AgentStatus.TERMINATED;
    rec.terminatedAt = Date.now();
    edit.agents.put(gone, rec);
    await edit.close();

    const second = await open(path);
    expect(await second.fabric.getTask(pinned.id)).toMatchObject({
      status: 'FAILED',
      error: { code: 'FABRIC_ERR_AGENT_UNAVAILABLE' },
    });
    // The one that was running (retried) and the unpinned queued one move to the pool.
    const got = await drain(second.fabric, stays);
    expect(got.sort()).toEqual([1, 3]);
    expect(await second.fabric.getTask(free.id)).toMatchObject({
      status: 'COMPLETED',
      attempt: 2,
      assignedAgentId: stays,
    });
    expect(await second.fabric.getTask(running.id)).toMatchObject({
      status: 'COMPLETED',
      attempt: 1,
    });
  });

  it('keeps retention across the restart: oldest finished out first, deleted from the file', async () => {
    const path = join(tempDir('task-recovery'), 'state.db');
    const config = { finishedTaskRetention: 3 };
    const first = await open(path, config);
    const agent = await first.fabric.spawn({ name: 'w', model: 'm', executor: 'inprocess' });
    const ids: string[] = [];
    for (let n = 0; n < 4; n++) {
      const t = await first.fabric.schedule({
        agentId: agent.id,
        taskType: 'echo',
        payload: { n },
      });
      await first.fabric.waitForTask(t.id);
      ids.push(t.id);
    }
    await close(first.fabric);
    expect([...storedTasks(path).keys()].sort()).toEqual(ids.slice(1).sort());

    const second = await open(path, config);
    await expect(second.fabric.getTask(ids[0]!)).rejects.toMatchObject({
      code: 'FABRIC_ERR_TASK_NOT_FOUND',
    });
    const t = await second.fabric.schedule({ agentId: agent.id, taskType: 'echo', payload: {} });
    await second.fabric.waitForTask(t.id);
    // The new one pushes out the oldest restored one, not a newer one.
    await expect(second.fabric.getTask(ids[1]!)).rejects.toMatchObject({
      code: 'FABRIC_ERR_TASK_NOT_FOUND',
    });
    expect((await second.fabric.getTask(ids[2]!)).status).toBe(TaskStatus.COMPLETED);
    await close(second.fabric);
    expect([...storedTasks(path).keys()].sort()).toEqual([ids[2], ids[3], t.id].sort());
  });

  it('refuses what the store cannot keep before acknowledging it', async () => {
    const path = join(tempDir('task-recovery'), 'state.db');
    const first = await open(path);
    const agent = await first.fabric.spawn({ name: 'w', model: 'm', executor: 'remote' });
    const cyclic: Record<string, unknown> = {};
    cyclic.self = cyclic;
    for (const payload of [cyclic, { n: 1n, deep: nest(300) }]) {
      await expect(
        first.fabric.schedule({ agentId: agent.id, taskType: 'echo', payload }),
      ).rejects.toMatchObject({
        code: 'FABRIC_ERR_INVALID_ARGUMENT',
        details: { field: 'payload' },
      });
    }
    expect(first.store.tasks.size).toBe(0);
    const task = await first.fabric.schedule({ agentId: agent.id, taskType: 'echo', payload: {} });
    const a = (await first.fabric.claimTask(agent.id))!;
    await expect(
      first.fabric.completeTask(agent.id, a.taskId, a.attempt, cyclic),
    ).rejects.toMatchObject({ code: 'FABRIC_ERR_INVALID_ARGUMENT' });
    await expect(
      first.fabric.reportProgress(agent.id, a.taskId, a.attempt, cyclic),
    ).rejects.toMatchObject({ code: 'FABRIC_ERR_INVALID_ARGUMENT' });
    // An in-process handler whose result cannot be stored: the task fails, visibly.
    first.fabric.registerInProcessHandler('bigint', () => {
      const loop: Record<string, unknown> = { n: 1n };
      loop.loop = loop;
      return loop;
    });
    const inproc = await first.fabric.spawn({ name: 'i', model: 'm', executor: 'inprocess' });
    const big = await first.fabric.schedule({
      agentId: inproc.id,
      taskType: 'bigint',
      payload: {},
    });
    expect(await first.fabric.waitForTask(big.id)).toMatchObject({
      status: 'FAILED',
      error: { code: 'FABRIC_ERR_INVALID_ARGUMENT' },
    });
    await close(first.fabric);
    const rows = storedTasks(path);
    expect([...rows.keys()].sort()).toEqual([task.id, big.id].sort());
    expect(rows.get(task.id)).toMatchObject({ status: 'RUNNING', attempt: 1 });
    expect(rows.get(task.id)).not.toHaveProperty('progress');
    expect(rows.get(big.id)).toMatchObject({ status: 'FAILED' });
  });

  it('keeps integers beyond 2^53 exact (bigint from a ..._json field) through a restart', async () => {
    const path = join(tempDir('task-recovery'), 'state.db');
    const first = await open(path);
    const agent = await first.fabric.spawn({ name: 'w', model: 'm', executor: 'remote' });
    const exact = 2n ** 53n + 1n;
    const task = await first.fabric.schedule({
      agentId: agent.id,
      taskType: 'echo',
      payload: { n: exact, ids: [9007199254740993n, 1.5, 'x'] },
    });
    const a = (await first.fabric.claimTask(agent.id))!;
    await first.fabric.completeTask(agent.id, a.taskId, a.attempt, { sum: exact * 3n });
    await close(first.fabric);
    const second = await open(path);
    const t = await second.fabric.getTask(task.id);
    expect(t.payload).toEqual({ n: exact, ids: [9007199254740993n, 1.5, 'x'] });
    expect(t.result).toEqual({ sum: exact * 3n });
    await close(second.fabric);
  });

  it('starts on a stored task that is not a task record: that task FAILED, naming why; the record kept', async () => {
    const path = join(tempDir('task-recovery'), 'state.db');
    const first = await open(path);
    await close(first.fabric);
    const db = new Database(path);
    db.prepare("INSERT INTO tasks (id, type, priority) VALUES ('bad', 'echo', 9)").run();
    db.close();
    const second = await open(path);
    const bad = await second.fabric.getTask('bad');
    expect(bad.status).toBe(TaskStatus.FAILED);
    expect(bad.error?.code).toBe('FABRIC_ERR_INTERNAL');
    expect(bad.error?.message).toMatch(/stored task "bad".*priority/);
    await close(second.fabric);
    // Not written over: what was stored is there to look at.
    expect(storedTasks(path).get('bad')).toEqual({ id: 'bad', type: 'echo', priority: 9 });
  });
});

/**
 * How the fabric takes back (or holds) a change whose commit failed, against a real SqliteStore
 * file; the disk is "full" for this test process alone (its file size limit set to 0 with
 * `prlimit --pid`, lifted in `finally`; vitest's forks talk over pipes, which the limit does
 * not touch). What the file holds is read beside the store and after reopening it.
 */
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, expect, it } from 'vitest';
import { AgentFabric } from '../../src/fabric.js';
import type { AgentRecord } from '../../src/lifecycle/lifecycle-manager.js';
import type { PoolRecord } from '../../src/pools/pool-manager.js';
import type { TaskRecord } from '../../src/scheduler/task-record.js';
import { SqliteStore } from '../../src/store/sqlite-store.js';
import { TaskStatus } from '../../src/task.js';
import { tempDir, until } from '../fixtures/gateway/harness.js';
import { recordsIn, tasksIn } from '../fixtures/state/disk-full.js';

const fabrics: AgentFabric[] = [];
afterEach(async () => {
  diskFull(false);
  for (const f of fabrics.splice(0)) await f.close().catch(() => undefined);
});

function diskFull(full: boolean): void {
  execFileSync('prlimit', [`--pid=${process.pid}`, `--fsize=${full ? 0 : 'unlimited'}:`]);
}

/** The budget scope `scope` as the state file at `path` holds it, if it does. */
function budgetIn(path: string, scope: string): { config: unknown } | undefined {
  const db = new Database(path, { readonly: true, fileMustExist: true });
  try {
    const row = db
      .prepare<[string], { data: string }>('SELECT data FROM budgets WHERE scope = ?')
      .get(scope);
    return row === undefined ? undefined : (JSON.parse(row.data) as { config: unknown });
  } finally {
    db.close();
  }
}

type Store = SqliteStore<TaskRecord, AgentRecord, PoolRecord>;

async function open(name: string): Promise<{ path: string; store: Store; fabric: AgentFabric }> {
  const path = join(tempDir(name), 'state.db');
  const store = await SqliteStore.open<TaskRecord, AgentRecord, PoolRecord>(path);
  const fabric = new AgentFabric({}, { store });
  fabrics.push(fabric);
  return { path, store, fabric };
}

it('a wait for a task end that runs out or is aborted while the disk is full leaves no waiter behind', async () => {
  const { store, fabric } = await open('state-undo-wait');
  let finish: () => void = () => undefined;
  fabric.registerInProcessHandler(
    'hold',
    () => new Promise<string>((r) => (finish = () => r('ok'))),
  );
  const agent = await fabric.spawn({ name: 'w', model: 'm', executor: 'inprocess' });
  const task = await fabric.schedule({ agentId: agent.id, taskType: 'hold', payload: {} });
  await until(() => fabric.scheduler.getTask(task.id)?.status === TaskStatus.RUNNING);
  try {
    diskFull(true);
    finish();
    await until(() => fabric.scheduler.getTask(task.id)?.status === TaskStatus.COMPLETED);
    expect(store.commitFailure()).toBeDefined();
    for (let i = 0; i < 20; i++) {
      const ran = await fabric
        .waitForTask(task.id, { timeoutSeconds: 0.01 })
        .catch((error: unknown) => error);
      expect(ran).toMatchObject({ code: 'FABRIC_ERR_STATE_STORE' });
      expect((ran as Error).message).toContain('the wait ran out');
    }
    const controller = new AbortController();
    const aborted = fabric
      .waitForTask(task.id, { signal: controller.signal })
      .catch((error: unknown) => error);
    await until(() => store.commitWaiters === 1);
    controller.abort(new Error('caller gone'));
    expect(await aborted).toMatchObject({ message: 'caller gone' });
    // Nothing waits any more: the list of commit waiters does not grow with every wait.
    expect(store.commitWaiters).toBe(0);
    // One that still waits is answered once the disk takes writes again.
    const waiting = fabric.waitForTask(task.id);
    await until(() => store.commitWaiters === 1);
    diskFull(false);
    expect((await waiting).status).toBe(TaskStatus.COMPLETED);
    expect(store.commitWaiters).toBe(0);
  } finally {
    diskFull(false);
  }
}, 60_000);

/**
 * Makes an unrelated commit fail while the next change that spawns an agent waits for its own:
 * a listener of `agent.spawned` (emitted inside the change, after its first record was put, so
 * after the change's own commit was queued) fills the disk on a microtask, counts some usage and
 * creates an approval — committed at once, with the usage — which finds the disk full.
 */
function failAnUnrelatedCommitNext(fabric: AgentFabric): void {
  fabric.lifecycle.events.once('agent.spawned', () => failAnUnrelatedCommitSoon(fabric));
}

/**
 * On the next microtask — after the commit a change made in this synchronous run queued, and
 * before a caller awaiting that change resumes — fills the disk and makes an unrelated change
 * whose commit (an approval's, at once, carrying some usage) fails.
 */
/** `answer` is the error of a call whose change is not on disk. */
function expectNotCommitted(answer: unknown): void {
  expect(answer).toMatchObject({ code: 'FABRIC_ERR_STATE_STORE' });
  expect((answer as Error).message).toContain('not committed');
}

function failAnUnrelatedCommitSoon(fabric: AgentFabric): void {
  queueMicrotask(() => {
    diskFull(true);
    fabric.budgets.recordUsage('someone', { tokens: 1 });
    expect(() => fabric.approvals.create({ agentId: 'someone', tool: 'unrelated' })).toThrow(
      /write failed/,
    );
  });
}

it('a spawn, pool creation or pool growth whose own commit succeeded is acknowledged, not undone, when an unrelated commit fails before it answers', async () => {
  const { path, store, fabric } = await open('state-undo-own-commit');
  await fabric.createPool({ poolId: 'crew', model: 'm', minAgents: 1, executor: 'remote' });

  failAnUnrelatedCommitNext(fabric);
  const scaling = fabric.scalePool('crew', 3);
  const scaled = await scaling.catch((error: unknown) => error);
  diskFull(false);
  expect.soft(scaled).not.toBeInstanceOf(Error);

  await until(() => store.commitFailure() === undefined);
  failAnUnrelatedCommitNext(fabric);
  const creating = fabric.createPool({
    poolId: 'late',
    model: 'm',
    minAgents: 2,
    executor: 'remote',
    budget: { maxTokensPerHour: 100 },
  });
  const created = await creating.catch((error: unknown) => error);
  diskFull(false);
  expect.soft(created).not.toBeInstanceOf(Error);

  await until(() => store.commitFailure() === undefined);
  failAnUnrelatedCommitNext(fabric);
  const spawning = fabric.spawn({ name: 'solo', model: 'm', executor: 'remote' });
  const spawned = await spawning.catch((error: unknown) => error);
  diskFull(false);
  expect.soft(spawned).not.toBeInstanceOf(Error);

  // What the answers acknowledged is what the fabric holds, and what the file holds after a
  // restart.
  const live = (await fabric.listAgents()).map((a) => a.id).sort();
  expect((await fabric.getPool('crew')).currentAgents).toHaveLength(3);
  expect((await fabric.getPool('late')).currentAgents).toHaveLength(2);
  expect(live).toContain((spawned as { id: string }).id);
  await until(() => store.commitFailure() === undefined);
  await fabric.close();
  fabrics.length = 0;
  const pools = recordsIn(path, 'pool');
  expect((pools.get('crew')?.agentIds as string[]).length).toBe(3);
  expect((pools.get('late')?.agentIds as string[]).length).toBe(2);
  expect([...recordsIn(path, 'agent').keys()].sort()).toEqual(live);
  const limits = budgetIn(path, 'pool:late');
  expect(limits?.config).toEqual({ maxTokensPerHour: 100 });
}, 60_000);

it('a refused pool creation leaves no budget behind: no limit-free scope where there was none, the earlier limits where there were', async () => {
  const { path, store, fabric } = await open('state-undo-pool-budget');
  // Limits set for a pool id before the pool is created (a library caller's
  // `budgets.setPoolBudget`): a pool made under that id without a budget of its own is held
  // to them.
  fabric.budgets.setPoolBudget('old', { maxTokensPerHour: 50 });
  await until(() => budgetIn(path, 'pool:old') !== undefined);
  expect(budgetIn(path, 'pool:old')?.config).toEqual({ maxTokensPerHour: 50 });

  const refusedPool = (poolId: string, maxTokensPerHour: number): Promise<unknown> =>
    fabric
      .createPool({
        poolId,
        model: 'm',
        minAgents: 1,
        executor: 'remote',
        budget: { maxTokensPerHour },
      })
      .catch((error: unknown) => error);
  let late: unknown;
  let old: unknown;
  try {
    diskFull(true);
    late = await refusedPool('late', 100);
    old = await refusedPool('old', 1_000_000);
  } finally {
    diskFull(false);
  }
  expect(late).toMatchObject({ code: 'FABRIC_ERR_STATE_STORE' });
  expect(old).toMatchObject({ code: 'FABRIC_ERR_STATE_STORE' });
  // In memory: nothing of `late`'s budget, `old`'s limits as they were.
  expect.soft(fabric.budgets.store.load('pool:late')).toBeUndefined();
  expect.soft(fabric.budgets.getPoolStatus('old').tokensLimit).toBe(50);

  // On disk once commits succeed, and after a restart.
  await until(() => store.commitFailure() === undefined, 20_000);
  expect(budgetIn(path, 'pool:late')).toBeUndefined();
  expect(budgetIn(path, 'pool:old')?.config).toEqual({ maxTokensPerHour: 50 });
  await fabric.close();
  fabrics.length = 0;
  expect(budgetIn(path, 'pool:late')).toBeUndefined();
  expect(budgetIn(path, 'pool:old')?.config).toEqual({ maxTokensPerHour: 50 });
  expect([...recordsIn(path, 'pool').keys()]).toEqual([]);
}, 60_000);

it('a spawn into a full pool that is refused displaced no agent: the one that would have given way still runs, with its credential', async () => {
  const { path, store, fabric } = await open('state-undo-displaced');
  const created = await fabric.createPool({
    poolId: 'full',
    model: 'm',
    minAgents: 1,
    maxAgents: 1,
    executor: 'remote',
  });
  const [own] = created.spawned;
  const alive = (): boolean => {
    try {
      return fabric.lifecycle.authenticate(own!.credential).id === own!.id;
    } catch {
      return false;
    }
  };
  expect(alive()).toBe(true);

  let refused: unknown;
  try {
    diskFull(true);
    refused = await fabric
      .spawn({ name: 'joiner', model: 'm', executor: 'remote', poolId: 'full' })
      .catch((error: unknown) => error);
    // Whatever a displacement queued has run by now.
    for (let i = 0; i < 5; i++) await new Promise((resolve) => setImmediate(resolve));
    expect(refused).toMatchObject({ code: 'FABRIC_ERR_STATE_STORE' });
    expect.soft(alive()).toBe(true);
    expect.soft((await fabric.getPool('full')).currentAgents).toEqual([own!.id]);
    expect
      .soft((await fabric.listAgents()).map((a) => [a.id, a.status]))
      .toEqual([[own!.id, 'STARTING']]);
  } finally {
    diskFull(false);
  }
  await until(() => store.commitFailure() === undefined, 20_000);
  expect(recordsIn(path, 'pool').get('full')?.agentIds).toEqual([own!.id]);
  expect(recordsIn(path, 'agent').get(own!.id)?.status).not.toBe('TERMINATED');
  expect(alive()).toBe(true);

  // Committed, the same spawn makes the pool's own agent give way, as before.
  const joined = await fabric.spawn({
    name: 'joiner',
    model: 'm',
    executor: 'remote',
    poolId: 'full',
  });
  await until(() => !alive());
  expect((await fabric.getPool('full')).currentAgents).toEqual([joined.id]);
}, 60_000);

it('a pool growth whose own commit failed but that a later commit wrote before it answered is acknowledged, and on disk', async () => {
  const { path, store, fabric } = await open('state-undo-written-later');
  await fabric.createPool({ poolId: 'crew', model: 'm', minAgents: 1, executor: 'remote' });
  // The disk fills inside the growth (its commit fails) and takes writes again on the next
  // microtask, where an approval's commit writes everything pending — the growth with it.
  fabric.lifecycle.events.once('agent.spawned', () => {
    diskFull(true);
    queueMicrotask(() => {
      diskFull(false);
      fabric.approvals.create({ agentId: 'someone', tool: 'unrelated' });
    });
  });
  let scaled: unknown;
  try {
    scaled = await fabric.scalePool('crew', 2).catch((error: unknown) => error);
  } finally {
    diskFull(false);
  }
  expect(store.stats.failedCommits).toBe(1);
  expect(scaled).not.toBeInstanceOf(Error);
  const members = (await fabric.getPool('crew')).currentAgents;
  expect(members).toHaveLength(2);
  expect(recordsIn(path, 'pool').get('crew')?.agentIds).toEqual(members);
  expect([...recordsIn(path, 'agent').keys()].sort()).toEqual([...members].sort());
}, 60_000);

it('a termination, pool shrink, pool deletion and claim whose own commit succeeded are acknowledged when an unrelated commit fails before they answer', async () => {
  // Each change is made after an await (a drain, a claim's dispatch pass): the commit carrying
  // it runs before the call resumes, and an unrelated one fails in between. Judged by the
  // store's commits since they resumed, each answered "not committed" (and the claim gave its
  // task back) for a change the file held.
  const { path, store, fabric } = await open('state-undo-own-commit-after-await');
  const answer = async (call: Promise<unknown>): Promise<unknown> => {
    const result = await call.catch((error: unknown) => error);
    diskFull(false);
    await until(() => store.commitFailure() === undefined, 20_000);
    return result;
  };

  const solo = await fabric.spawn({ name: 'solo', model: 'm', executor: 'remote' });
  fabric.lifecycle.events.once('agent.terminated', () => failAnUnrelatedCommitSoon(fabric));
  expect.soft(await answer(fabric.terminate(solo.id))).not.toBeInstanceOf(Error);

  await fabric.createPool({ poolId: 'crew', model: 'm', minAgents: 1, executor: 'remote' });
  await fabric.scalePool('crew', 2);
  fabric.lifecycle.events.once('agent.terminated', () => failAnUnrelatedCommitSoon(fabric));
  expect.soft(await answer(fabric.scalePool('crew', 1))).not.toBeInstanceOf(Error);

  await fabric.createPool({ poolId: 'gone', model: 'm', minAgents: 0, executor: 'remote' });
  // The deletion's last change is the pool's record going (after its drain).
  const pools = store.pools;
  const remove = pools.delete.bind(pools);
  pools.delete = (id: string): boolean => {
    const removed = remove(id);
    if (id === 'gone') failAnUnrelatedCommitSoon(fabric);
    return removed;
  };
  expect.soft(await answer(fabric.deletePool('gone'))).not.toBeInstanceOf(Error);

  const worker = await fabric.spawn({ name: 'worker', model: 'm', executor: 'remote' });
  await fabric.heartbeat(worker.id);
  const task = await fabric.schedule({ agentId: worker.id, taskType: 't', payload: {} });
  fabric.scheduler.events.once('task.started', () => failAnUnrelatedCommitSoon(fabric));
  const claimed = await answer(fabric.claimTask(worker.id));
  expect.soft(claimed).toMatchObject({ taskId: task.id, attempt: 1 });

  // Changes made in the call's own synchronous run were judged by their commit already.
  const other = await fabric.schedule({ agentId: worker.id, taskType: 't', payload: {} });
  const next = (await fabric.claimTask(worker.id))!;
  fabric.scheduler.events.once('task.finished', () => failAnUnrelatedCommitSoon(fabric));
  expect
    .soft(await answer(fabric.completeTask(worker.id, other.id, next.attempt, 'done')))
    .toBe(undefined);
  const budgets = fabric.budgets;
  const record = budgets.recordUsage.bind(budgets);
  budgets.recordUsage = (...args: Parameters<typeof record>): ReturnType<typeof record> => {
    budgets.recordUsage = record;
    const unshared = record(...args);
    failAnUnrelatedCommitSoon(fabric);
    return unshared;
  };
  expect.soft(await answer(fabric.recordUsage(worker.id, { tokens: 5 }))).toBe(null);

  // What the answers acknowledged is what the fabric holds, and the file after a restart.
  expect((await fabric.getAgentInfo(solo.id)).status).toBe('TERMINATED');
  expect((await fabric.getPool('crew')).currentAgents).toHaveLength(1);
  expect((await fabric.listPools()).map((p) => p.poolId)).toEqual(['crew']);
  expect(fabric.scheduler.getTask(task.id)).toMatchObject({ status: 'RUNNING', attempt: 1 });
  await fabric.close();
  fabrics.length = 0;
  expect(recordsIn(path, 'agent').get(solo.id)?.status).toBe('TERMINATED');
  expect([...recordsIn(path, 'pool').keys()]).toEqual(['crew']);
  expect((recordsIn(path, 'pool').get('crew')?.agentIds as string[]).length).toBe(1);
  const reopened = await SqliteStore.open<TaskRecord, AgentRecord, PoolRecord>(path);
  try {
    expect(reopened.tasks.get(task.id)).toMatchObject({ status: 'RUNNING', attempt: 1 });
  } finally {
    await reopened.close();
  }
}, 60_000);

it('a termination of an agent already terminated and a cancel of a task already finished change nothing and answer success while an unrelated commit fails', async () => {
  // Neither call changes anything, so no commit is theirs. Before, both were judged by the
  // commits since they ran: with the disk full for an unrelated change, they answered
  // FABRIC_ERR_STATE_STORE ("not committed … the termination holds", "… the cancel holds").
  const { path, store, fabric } = await open('state-undo-no-change');
  const solo = await fabric.spawn({ name: 'solo', model: 'm', executor: 'remote' });
  await fabric.terminate(solo.id);
  const worker = await fabric.spawn({ name: 'worker', model: 'm', executor: 'remote' });
  await fabric.heartbeat(worker.id);
  const task = await fabric.schedule({ agentId: worker.id, taskType: 't', payload: {} });
  const claimed = (await fabric.claimTask(worker.id))!;
  await fabric.completeTask(worker.id, task.id, claimed.attempt, 'done');
  expect(recordsIn(path, 'agent').get(solo.id)?.status).toBe('TERMINATED');
  expect(tasksIn(path).find((t) => t.id === task.id)?.status).toBe('COMPLETED');
  const live = await fabric.schedule({ agentId: worker.id, taskType: 't', payload: {} });

  try {
    failAnUnrelatedCommitSoon(fabric);
    await until(() => store.commitFailure() !== undefined);
    const terminated = await fabric.terminate(solo.id).catch((error: unknown) => error);
    expect.soft(terminated).toMatchObject({ id: solo.id, status: 'TERMINATED' });
    const cancelled = await fabric.cancelTask(task.id).catch((error: unknown) => error);
    expect.soft(cancelled).toMatchObject({ id: task.id, status: 'COMPLETED' });
    // A call that does change something is still judged by its commit: it fails.
    const refused = await fabric.cancelTask(live.id).catch((error: unknown) => error);
    expectNotCommitted(refused);
    expect(store.commitFailure()).toBeDefined();
  } finally {
    diskFull(false);
  }
  await until(() => store.commitFailure() === undefined, 20_000);
  // What the file holds is what the answers said.
  expect(recordsIn(path, 'agent').get(solo.id)?.status).toBe('TERMINATED');
  expect(tasksIn(path).find((t) => t.id === task.id)?.status).toBe('COMPLETED');
}, 60_000);

it('a termination or cancel repeated after one answered "not committed" is answered "not committed" again until its record is on disk', async () => {
  // A call that changes nothing answers what the record already holds: success only once that
  // is on disk. A caller repeating a termination told "not committed" must not be told it holds.
  const { path, store, fabric } = await open('state-undo-repeat');
  const solo = await fabric.spawn({ name: 'solo', model: 'm', executor: 'remote' });
  const worker = await fabric.spawn({ name: 'worker', model: 'm', executor: 'remote' });
  await fabric.heartbeat(worker.id);
  const task = await fabric.schedule({ agentId: worker.id, taskType: 't', payload: {} });
  try {
    diskFull(true);
    for (let i = 0; i < 2; i++) {
      const terminated = await fabric.terminate(solo.id).catch((error: unknown) => error);
      expect(terminated).toMatchObject({ code: 'FABRIC_ERR_STATE_STORE' });
      expect((terminated as Error).message).toContain('not committed');
      const cancelled = await fabric.cancelTask(task.id).catch((error: unknown) => error);
      expect(cancelled).toMatchObject({ code: 'FABRIC_ERR_STATE_STORE' });
    }
    expect(recordsIn(path, 'agent').get(solo.id)?.status).not.toBe('TERMINATED');
  } finally {
    diskFull(false);
  }
  await until(() => store.commitFailure() === undefined, 20_000);
  expect(await fabric.terminate(solo.id)).toMatchObject({ status: 'TERMINATED' });
  expect(await fabric.cancelTask(task.id)).toMatchObject({ status: 'CANCELLED' });
  expect(recordsIn(path, 'agent').get(solo.id)?.status).toBe('TERMINATED');
  expect(tasksIn(path).find((t) => t.id === task.id)?.status).toBe('CANCELLED');
}, 60_000);

/** A remote agent holding two tasks: `done` (attempt `a`) and `failed` (attempt `b`). */
async function twoClaimed(fabric: AgentFabric) {
  const worker = await fabric.spawn({ name: 'worker', model: 'm', executor: 'remote' });
  await fabric.heartbeat(worker.id);
  const done = await fabric.schedule({ agentId: worker.id, taskType: 't', payload: {} });
  const a = (await fabric.claimTask(worker.id))!;
  const failed = await fabric.schedule({ agentId: worker.id, taskType: 't', payload: {} });
  const b = (await fabric.claimTask(worker.id))!;
  return { worker, done, a, failed, b };
}

it('a completion or failure repeated (its answer lost) changes nothing and answers success while an unrelated commit fails, its task end being on disk', async () => {
  // A worker retrying a report whose answer it lost. Before, the repeat was judged by the
  // commits since it ran: with the disk full for an unrelated change it answered
  // FABRIC_ERR_STATE_STORE ("not committed … the completion holds") for an end the file held.
  const { path, store, fabric } = await open('state-undo-repeat-end');
  const { worker, done, a, failed, b } = await twoClaimed(fabric);
  await fabric.completeTask(worker.id, done.id, a.attempt, 'done');
  await fabric.failTask(worker.id, failed.id, b.attempt, { code: 'E', message: 'no' });
  expect(tasksIn(path).find((t) => t.id === done.id)?.status).toBe('COMPLETED');
  expect(tasksIn(path).find((t) => t.id === failed.id)?.status).toBe('FAILED');
  const live = await fabric.schedule({ agentId: worker.id, taskType: 't', payload: {} });
  const c = (await fabric.claimTask(worker.id))!;

  try {
    failAnUnrelatedCommitSoon(fabric);
    await until(() => store.commitFailure() !== undefined);
    const completed = await fabric
      .completeTask(worker.id, done.id, a.attempt, 'done')
      .catch((error: unknown) => error);
    expect.soft(completed).toBe(undefined);
    const refailed = await fabric
      .failTask(worker.id, failed.id, b.attempt, { code: 'E', message: 'no' })
      .catch((error: unknown) => error);
    expect.soft(refailed).toBe(undefined);
    // A completion that does change something is still judged by its commit: it fails.
    const refused = await fabric
      .completeTask(worker.id, live.id, c.attempt, 'done')
      .catch((error: unknown) => error);
    expectNotCommitted(refused);
    expect(store.commitFailure()).toBeDefined();
  } finally {
    diskFull(false);
  }
  await until(() => store.commitFailure() === undefined, 20_000);
  expect(tasksIn(path).find((t) => t.id === done.id)?.status).toBe('COMPLETED');
  expect(tasksIn(path).find((t) => t.id === failed.id)?.status).toBe('FAILED');
}, 60_000);

it('a completion or failure repeated after one answered "not committed" is answered "not committed" again until its task end is on disk', async () => {
  const { path, store, fabric } = await open('state-undo-repeat-end-unwritten');
  const { worker, done, a, failed, b } = await twoClaimed(fabric);
  try {
    diskFull(true);
    for (let i = 0; i < 2; i++) {
      const completed = await fabric
        .completeTask(worker.id, done.id, a.attempt, 'done')
        .catch((error: unknown) => error);
      expectNotCommitted(completed);
      const refailed = await fabric
        .failTask(worker.id, failed.id, b.attempt, { code: 'E', message: 'no' })
        .catch((error: unknown) => error);
      expect(refailed).toMatchObject({ code: 'FABRIC_ERR_STATE_STORE' });
    }
    expect(tasksIn(path).find((t) => t.id === done.id)?.status).toBe('RUNNING');
  } finally {
    diskFull(false);
  }
  await until(() => store.commitFailure() === undefined, 20_000);
  expect(await fabric.completeTask(worker.id, done.id, a.attempt, 'done')).toBe(undefined);
  expect(await fabric.failTask(worker.id, failed.id, b.attempt, { code: 'E', message: 'no' })).toBe(
    undefined,
  );
  expect(tasksIn(path).find((t) => t.id === done.id)?.status).toBe('COMPLETED');
  expect(tasksIn(path).find((t) => t.id === failed.id)?.status).toBe('FAILED');
}, 60_000);

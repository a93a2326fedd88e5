/**
 * The library over a real SQLite state file, with an executor registered after the fabric is
 * made (as a plugin's is): the agents the store kept that run on it are restored while it is not
 * registered yet — they wait for it, taking no work — and take their work once it is registered,
 * the executor told of the attempt the restart ended. A spawn naming it is still refused until then.
 * Restarted again before it is registered, the fabric still owes it that abort (kept on disk, told
 * once), and a task cancelled meanwhile stays cancelled and never runs. A pool on it cannot spawn
 * meanwhile — each try says which executor it waits for (`pool.start.failed`), a scale is refused
 * with that reason — and reaches its size as soon as the executor is registered, whatever backoff
 * its failed tries had built up.
 */
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { AgentFabric } from '../../src/fabric.js';
import type { AgentRecord } from '../../src/lifecycle/lifecycle-manager.js';
import type { PoolRecord } from '../../src/pools/pool-manager.js';
import type { ExecutorSink, TaskExecutor } from '../../src/scheduler/executor.js';
import type { TaskRecord } from '../../src/scheduler/task-record.js';
import { SqliteStore } from '../../src/store/sqlite-store.js';
import { AgentStatus } from '../../src/agent.js';
import type { PoolManagerOptions } from '../../src/pools/pool-manager.js';
import { TaskStatus, type TaskAssignment } from '../../src/task.js';
import { tempDir } from '../fixtures/gateway/harness.js';
import { onDisk, owedAbortIds } from '../fixtures/nats/state-sidecar.js';

const fabrics: AgentFabric[] = [];
afterEach(async () => {
  for (const f of fabrics.splice(0)) await f.close();
});

/**
 * An executor named `late` that holds one task at a time and never ends it (`hold`), or
 * completes its tasks with their payload.
 */
class LateExecutor implements TaskExecutor {
  readonly name = 'late';
  readonly acknowledges = false;
  readonly autoHeartbeat = true;
  readonly aborted: string[] = [];
  readonly attached: string[] = [];
  #sink: ExecutorSink | undefined;
  #held = 0;
  constructor(readonly hold: boolean) {}
  bind(sink: ExecutorSink): void {
    this.#sink = sink;
  }
  capacity(): number {
    return this.hold ? 1 - this.#held : Number.POSITIVE_INFINITY;
  }
  dispatch(batch: readonly TaskAssignment[]): void {
    if (this.hold) {
      this.#held += batch.length;
      return;
    }
    for (const a of batch) this.#sink!.complete(a.taskId, a.attempt, { done: a.payload });
  }
  abort(taskId: string, attempt: number): void {
    this.aborted.push(`${taskId}#${attempt}`);
  }
  attachAgent(agentId: string): void {
    this.attached.push(agentId);
  }
  async close(): Promise<void> {}
}

async function open(path: string, pools?: PoolManagerOptions): Promise<AgentFabric> {
  const store = await SqliteStore.open<TaskRecord, AgentRecord, PoolRecord>(path);
  const fabric = new AgentFabric({}, { store, ...(pools === undefined ? {} : { pools }) });
  fabrics.push(fabric);
  return fabric;
}

/**
 * Opens `path` and registers a `late` executor at once, then closes it again: the aborts the
 * executor was told at its registration.
 */
async function abortsAtStart(path: string): Promise<string[]> {
  const fabric = await open(path);
  const exec = new LateExecutor(false);
  fabric.registerExecutor(exec);
  await fabric.close();
  fabrics.splice(fabrics.indexOf(fabric), 1);
  return exec.aborted;
}

/**
 * Pool `p` of one agent on a `late` executor that holds its task: the task it runs when the
 * fabric on `path` is closed.
 */
async function runningOnLate(path: string): Promise<{ id: string }> {
  const first = await open(path);
  first.registerExecutor(new LateExecutor(true));
  await first.createPool({ poolId: 'p', model: 'm', executor: 'late', minAgents: 1 });
  const running = await first.scheduleToPool('p', 't', 0);
  await expect.poll(async () => (await first.getTask(running.id)).status).toBe(TaskStatus.RUNNING);
  await first.close();
  fabrics.splice(0);
  return running;
}

/**
 * Failed starts back off for ten minutes and pools are reconciled every ten minutes: what happens
 * within a test is what the fabric does at once.
 */
const SLOW: PoolManagerOptions = {
  reconcileIntervalMs: 600_000,
  startBackoffMs: 600_000,
  maxStartBackoffMs: 600_000,
};

async function live(fabric: AgentFabric, poolId: string): Promise<string[]> {
  const agents = await fabric.listAgents({ poolId });
  return agents.filter((a) => a.status !== AgentStatus.TERMINATED).map((a) => a.id);
}

describe('AgentFabric restored before its executor is registered', () => {
  it('restores the agents on it, which take their work once it is registered', async () => {
    const path = join(tempDir('late-executor'), 'state.db');
    const first = await open(path);
    first.registerExecutor(new LateExecutor(true));
    const pool = await first.createPool({
      poolId: 'p',
      model: 'm',
      executor: 'late',
      minAgents: 1,
    });
    const running = await first.scheduleToPool('p', 't', 0);
    const queued = await first.scheduleToPool('p', 't', 1);
    await expect
      .poll(async () => (await first.getTask(running.id)).status)
      .toBe(TaskStatus.RUNNING);
    await first.close();
    fabrics.splice(0);

    const second = await open(path);
    expect(second.awaitedExecutors()).toEqual([{ executor: 'late', agentIds: pool.currentAgents }]);
    // Nothing runs meanwhile; the interrupted attempt is counted; a new agent on it is refused.
    expect((await second.getTask(running.id)).status).toBe(TaskStatus.PENDING);
    expect((await second.getTask(running.id)).attempt).toBe(1);
    await expect(second.spawn({ name: 'x', model: 'm', executor: 'late' })).rejects.toThrow(
      /names no registered executor/,
    );
    const exec = new LateExecutor(false);
    second.registerExecutor(exec);
    expect(second.awaitedExecutors()).toEqual([]);
    expect(exec.attached).toEqual(pool.currentAgents);
    expect(exec.aborted).toEqual([`${running.id}#1`]);
    const a = await second.waitForTask(running.id, { timeoutSeconds: 20 });
    const b = await second.waitForTask(queued.id, { timeoutSeconds: 20 });
    expect([a.status, a.attempt, a.result]).toEqual([TaskStatus.COMPLETED, 2, { done: 0 }]);
    expect([b.status, b.attempt, b.result]).toEqual([TaskStatus.COMPLETED, 1, { done: 1 }]);
    expect(pool.currentAgents).toContain(a.assignedAgentId);
  });

  it('keeps the abort it owes the executor, and a cancel made meanwhile, across another restart', async () => {
    const path = join(tempDir('late-executor-owed'), 'state.db');
    const first = await open(path);
    first.registerExecutor(new LateExecutor(true));
    await first.createPool({ poolId: 'p', model: 'm', executor: 'late', minAgents: 1 });
    const running = await first.scheduleToPool('p', 't', 0);
    const cancelled = await first.scheduleToPool('p', 't', 1);
    const timedOut = await first.scheduleToPool('p', 't', 2, { deadline: Date.now() + 2_000 });
    await expect
      .poll(async () => (await first.getTask(running.id)).status)
      .toBe(TaskStatus.RUNNING);
    await first.close();
    fabrics.splice(0);

    // Restored without the executor: the abort of attempt 1 is held, the queued task cancelled,
    // the one with a deadline left to pass it; the process stops before the executor returns.
    const second = await open(path);
    expect(second.awaitedExecutors()).toHaveLength(1);
    await second.cancelTask(cancelled.id);
    await expect
      .poll(async () => (await second.getTask(timedOut.id)).status, { timeout: 10_000 })
      .toBe(TaskStatus.TIMEOUT);
    await second.close();
    fabrics.splice(0);
    expect(onDisk(path).get(running.id)).toMatchObject({ status: 'PENDING', attempt: 1 });

    const third = await open(path);
    const exec = new LateExecutor(false);
    third.registerExecutor(exec);
    expect(exec.aborted).toEqual([`${running.id}#1`]);
    const done = await third.waitForTask(running.id, { timeoutSeconds: 20 });
    expect([done.status, done.attempt]).toEqual([TaskStatus.COMPLETED, 2]);
    expect((await third.getTask(cancelled.id)).status).toBe(TaskStatus.CANCELLED);
    expect((await third.getTask(timedOut.id)).status).toBe(TaskStatus.TIMEOUT);
    await third.close();
    fabrics.splice(0);
    const rows = onDisk(path);
    expect(rows.get(running.id)).toMatchObject({ status: 'COMPLETED', attempt: 2 });
    expect(rows.get(cancelled.id)).toMatchObject({ status: 'CANCELLED', attempt: 0 });
    expect(rows.get(timedOut.id)).toMatchObject({ status: 'TIMEOUT', attempt: 0 });

    // Told once: a fourth start owes it nothing.
    expect(await abortsAtStart(path)).toEqual([]);
  });

  it('still owes the executor the abort when the task is cancelled before it is registered', async () => {
    // Before, the abort was owed again at a later start only while the task was queued: one
    // cancelled (or finished elsewhere) before the executor returned was owed nothing, so the
    // executor's worker never heard that the attempt it held had ended.
    const path = join(tempDir('late-executor-cancelled'), 'state.db');
    const running = await runningOnLate(path);

    const second = await open(path);
    await second.cancelTask(running.id);
    await second.close();
    fabrics.splice(0);

    expect(await abortsAtStart(path)).toEqual([`${running.id}#1`]);
    expect(onDisk(path).get(running.id)).toMatchObject({ status: 'CANCELLED', attempt: 1 });

    // Told once: a fourth start owes it nothing.
    expect(await abortsAtStart(path)).toEqual([]);
  });

  it('tells the abort once when the executor is given at construction at the next start', async () => {
    // An executor given in `FabricOptions.executors` is registered before the store's owed
    // aborts are told: it was told the abort at every later start, and the record stayed in
    // the file for good (only a registration after the start or the agent's removal took it).
    const path = join(tempDir('late-executor-given'), 'state.db');
    const running = await runningOnLate(path);
    // Restored without the executor: the abort of attempt 1 is owed; it stops before it returns.
    await (await open(path)).close();
    fabrics.splice(0);

    const given = async (): Promise<string[]> => {
      const exec = new LateExecutor(false);
      const store = await SqliteStore.open<TaskRecord, AgentRecord, PoolRecord>(path);
      const fabric = new AgentFabric({}, { store, executors: [exec] });
      const done = await fabric.waitForTask(running.id, { timeoutSeconds: 20 });
      expect([done.status, done.attempt]).toEqual([TaskStatus.COMPLETED, 2]);
      await fabric.close();
      return exec.aborted;
    };
    expect(await given()).toEqual([`${running.id}#1`]);
    expect(owedAbortIds(path)).toEqual([]);
    expect(await given()).toEqual([]);
  });

  it('a pool on it says what it waits for, and reaches its size once the executor is registered', async () => {
    const path = join(tempDir('late-executor-pool'), 'state.db');
    const first = await open(path, SLOW);
    first.registerExecutor(new LateExecutor(false));
    await first.createPool({ poolId: 'p', model: 'm', executor: 'late', minAgents: 2 });
    const before = await live(first, 'p');
    expect(before).toHaveLength(2);
    await first.close();
    fabrics.splice(0);

    const second = await open(path, SLOW);
    const failures: string[] = [];
    second.pools.events.on('pool.start.failed', (e) => failures.push(e.error.message));
    // One of its agents ends while the executor is missing: the pool cannot replace it yet.
    await second.terminate(before[0]!, { drainTimeoutSeconds: 0 });
    await expect.poll(() => failures.length).toBeGreaterThan(0);
    expect(failures[0]).toMatch(
      /names no registered executor: "late" \(agents restored from the store wait for it/,
    );
    expect(await live(second, 'p')).toEqual([before[1]]);
    // A scale up is refused with the same reason, and leaves the pool's size as it was.
    await expect(second.scalePool('p', 3)).rejects.toThrow(
      /names no registered executor: "late" \(agents restored from the store wait for it/,
    );
    expect(second.pools.desiredSize('p')).toBe(2);

    second.registerExecutor(new LateExecutor(false));
    // Replaced now, not after the back-off (ten minutes).
    await expect.poll(async () => (await live(second, 'p')).length).toBe(2);
    const task = await second.scheduleToPool('p', 't', 7);
    const done = await second.waitForTask(task.id, { timeoutSeconds: 20 });
    expect([done.status, done.result]).toEqual([TaskStatus.COMPLETED, { done: 7 }]);
    // And on disk.
    await second.close();
    fabrics.splice(0);
    const third = await open(path, SLOW);
    expect(await live(third, 'p')).toHaveLength(2);
    expect(third.pools.desiredSize('p')).toBe(2);
  });
});

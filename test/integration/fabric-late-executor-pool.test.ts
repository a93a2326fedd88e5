/**
 * A pool whose agents run on an executor registered after the fabric is made (a plugin's), over
 * a real SQLite state file, restarted while that executor is missing: the pool cannot spawn on
 * it meanwhile — each try says which executor it waits for (`pool.start.failed`), a scale is
 * refused with that reason — and once the executor is registered the pool reaches its size at
 * once, whatever back-off its failed tries had built up.
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
import { TaskStatus, type TaskAssignment } from '../../src/task.js';
import { tempDir } from '../fixtures/gateway/harness.js';

const fabrics: AgentFabric[] = [];
afterEach(async () => {
  for (const f of fabrics.splice(0)) await f.close();
});

/** An executor named `late` that completes its tasks with their payload. */
class LateExecutor implements TaskExecutor {
  readonly name = 'late';
  readonly acknowledges = false;
  readonly autoHeartbeat = true;
  #sink: ExecutorSink | undefined;
  bind(sink: ExecutorSink): void {
    this.#sink = sink;
  }
  capacity(): number {
    return Number.POSITIVE_INFINITY;
  }
  dispatch(batch: readonly TaskAssignment[]): void {
    for (const a of batch) this.#sink!.complete(a.taskId, a.attempt, { done: a.payload });
  }
  abort(): void {}
  async close(): Promise<void> {}
}

/**
 * A fabric on the state file `path`. Failed starts back off for ten minutes and pools are
 * reconciled every ten minutes: what happens within the test is what the fabric does at once.
 */
async function open(path: string): Promise<AgentFabric> {
  const store = await SqliteStore.open<TaskRecord, AgentRecord, PoolRecord>(path);
  const fabric = new AgentFabric(
    {},
    {
      store,
      pools: {
        reconcileIntervalMs: 600_000,
        startBackoffMs: 600_000,
        maxStartBackoffMs: 600_000,
      },
    },
  );
  fabrics.push(fabric);
  return fabric;
}

async function live(fabric: AgentFabric, poolId: string): Promise<string[]> {
  const agents = await fabric.listAgents({ poolId });
  return agents.filter((a) => a.status !== AgentStatus.TERMINATED).map((a) => a.id);
}

describe('a pool restored before its executor is registered', () => {
  it('says what it waits for, and reaches its size once the executor is registered', async () => {
    const path = join(tempDir('late-executor-pool'), 'state.db');
    const first = await open(path);
    first.registerExecutor(new LateExecutor());
    await first.createPool({ poolId: 'p', model: 'm', executor: 'late', minAgents: 2 });
    const before = await live(first, 'p');
    expect(before).toHaveLength(2);
    await first.close();
    fabrics.splice(0);

    const second = await open(path);
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

    second.registerExecutor(new LateExecutor());
    // Replaced now, not after the back-off (ten minutes).
    await expect.poll(async () => (await live(second, 'p')).length).toBe(2);
    const task = await second.scheduleToPool('p', 't', 7);
    const done = await second.waitForTask(task.id, { timeoutSeconds: 20 });
    expect([done.status, done.result]).toEqual([TaskStatus.COMPLETED, { done: 7 }]);
    // And on disk.
    await second.close();
    fabrics.splice(0);
    const third = await open(path);
    expect(await live(third, 'p')).toHaveLength(2);
    expect(third.pools.desiredSize('p')).toBe(2);
  });
});

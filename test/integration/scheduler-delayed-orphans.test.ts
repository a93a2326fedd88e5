/**
 * Tasks held back until their `notBefore` follow their agent and pool like queued ones, over a
 * real SQLite state file: a deleted pool cancels them at once, and an agent that is terminated
 * (or turns UNHEALTHY) hands its unpinned ones to its pool — its pinned ones fail when it is
 * terminated and wait for it while it is UNHEALTHY. Before, a held
 * task of a deleted pool went, at its `notBefore`, into the queue of a pool that no longer existed
 * and stayed PENDING forever (counted against `maxQueueDepth`, its waiters never answered), and
 * one of a terminated pool agent failed at its `notBefore` instead of running in the pool.
 */
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, describe, expect, it } from 'vitest';
import { AgentFabric } from '../../src/fabric.js';
import type { AgentRecord } from '../../src/lifecycle/lifecycle-manager.js';
import type { PoolRecord } from '../../src/pools/pool-manager.js';
import type { TaskRecord } from '../../src/scheduler/task-record.js';
import { SqliteStore } from '../../src/store/sqlite-store.js';
import { taskFromRow, type TaskRow } from '../../src/store/sqlite-tasks.js';
import { TaskStatus } from '../../src/task.js';
import { tempDir, until } from '../fixtures/gateway/harness.js';

const fabrics: AgentFabric[] = [];
afterEach(async () => {
  for (const f of fabrics.splice(0)) await f.close();
});

async function open(path: string, heartbeatIntervalSeconds?: number): Promise<AgentFabric> {
  const store = await SqliteStore.open<TaskRecord, AgentRecord, PoolRecord>(path);
  const fabric = new AgentFabric(
    heartbeatIntervalSeconds === undefined ? {} : { heartbeatIntervalSeconds },
    { store },
  );
  fabric.registerInProcessHandler('echo', (payload) => payload);
  fabrics.push(fabric);
  return fabric;
}

function storedTask(path: string, id: string): Record<string, unknown> {
  const db = new Database(path, { readonly: true });
  try {
    return taskFromRow(db.prepare<[string], TaskRow>('SELECT * FROM tasks WHERE id = ?').get(id)!);
  } finally {
    db.close();
  }
}

describe('tasks held back until their notBefore', () => {
  it('are cancelled with their pool when it is deleted, not left PENDING for good', async () => {
    const path = join(tempDir('sched-delayed-'), 'state.db');
    const fabric = await open(path);
    await fabric.createPool({
      poolId: 'p',
      model: 'm',
      minAgents: 1,
      maxAgents: 1,
      executor: 'inprocess',
    });
    // Far ahead: nothing would ever release it.
    const held = await fabric.scheduleToPool('p', 'echo', 1, {
      notBefore: Date.now() + 3_600_000,
    });
    await fabric.deletePool('p');
    const ended = await fabric.waitForTask(held.id, { timeoutSeconds: 10 });
    expect(ended).toMatchObject({
      status: TaskStatus.CANCELLED,
      error: { code: 'FABRIC_ERR_POOL_DRAINING' },
    });
    expect((await fabric.getFabricStats()).queueDepth).toBe(0);
    expect(storedTask(path, held.id)).toMatchObject({ status: TaskStatus.CANCELLED });
  });

  it('move to the pool when their agent is terminated; a pinned one fails at once', async () => {
    const path = join(tempDir('sched-delayed-'), 'state.db');
    const fabric = await open(path);
    const pool = await fabric.createPool({
      poolId: 'p',
      model: 'm',
      minAgents: 2,
      maxAgents: 2,
      executor: 'inprocess',
    });
    const [first, second] = pool.spawned.map((s) => s.id);
    const notBefore = Date.now() + 1_000;
    const moved = await fabric.schedule({
      agentId: first!,
      taskType: 'echo',
      payload: 'moved',
      notBefore,
    });
    const pinned = await fabric.schedule({
      agentId: first!,
      taskType: 'echo',
      payload: 'pinned',
      notBefore: Date.now() + 3_600_000,
      pinned: true,
    });
    await fabric.terminate(first!);
    expect(await fabric.waitForTask(pinned.id, { timeoutSeconds: 10 })).toMatchObject({
      status: TaskStatus.FAILED,
      error: { code: 'FABRIC_ERR_AGENT_UNAVAILABLE' },
    });
    const done = await fabric.waitForTask(moved.id, { timeoutSeconds: 30 });
    expect(done).toMatchObject({
      status: TaskStatus.COMPLETED,
      result: 'moved',
      assignedAgentId: second,
    });
    expect(storedTask(path, moved.id)).toMatchObject({ status: TaskStatus.COMPLETED });
    expect(storedTask(path, pinned.id)).toMatchObject({ status: TaskStatus.FAILED });
  });

  it('move to the pool when their agent turns UNHEALTHY; a pinned one stays for when it is back', async () => {
    const path = join(tempDir('sched-delayed-'), 'state.db');
    const fabric = await open(path, 0.1);
    await fabric.createPool({ poolId: 'p', model: 'm', minAgents: 0, executor: 'inprocess' });
    // It heartbeats only when told: silent, it turns UNHEALTHY within three intervals.
    const silent = await fabric.spawn({
      name: 'silent',
      model: 'm',
      executor: 'inprocess',
      poolId: 'p',
      heartbeat: 'manual',
    });
    const moved = await fabric.schedule({
      agentId: silent.id,
      taskType: 'echo',
      payload: 'moved',
      notBefore: Date.now() + 1_000,
    });
    const pinned = await fabric.schedule({
      agentId: silent.id,
      taskType: 'echo',
      payload: 'pinned',
      notBefore: Date.now() + 1_000,
      pinned: true,
    });
    const other = await fabric.spawn({
      name: 'other',
      model: 'm',
      executor: 'inprocess',
      poolId: 'p',
    });
    await until(async () => (await fabric.getAgentInfo(silent.id)).status === 'UNHEALTHY', 10_000);
    // The unpinned one runs in the pool at its notBefore, as a queued one would at once...
    expect(await fabric.waitForTask(moved.id, { timeoutSeconds: 10 })).toMatchObject({
      status: TaskStatus.COMPLETED,
      result: 'moved',
      assignedAgentId: other.id,
    });
    expect(storedTask(path, moved.id)).toMatchObject({ status: TaskStatus.COMPLETED });
    // ...the pinned one waits for its agent, and runs once it is back.
    expect((await fabric.getTask(pinned.id)).status).toBe(TaskStatus.PENDING);
    await fabric.heartbeat(silent.id);
    expect(await fabric.waitForTask(pinned.id, { timeoutSeconds: 10 })).toMatchObject({
      status: TaskStatus.COMPLETED,
      result: 'pinned',
      assignedAgentId: silent.id,
    });
  });
});

/**
 * A queued task's `notBefore` and `deadline` are calendar times on the wall clock (README,
 * "Tasks"): the library over a real SQLite state file, with `Date`, `performance.now` and the
 * timers the test's. A step of the wall clock ahead (NTP finding the clock behind, an operator
 * setting the date) past a task's `notBefore` or `deadline` must release (or time out) the task
 * at the step, not when the delay armed before the step runs out on elapsed time — before, a
 * task held an hour with the clock then set two hours ahead stayed held for that hour, and one
 * whose deadline the step passed stayed queued (claimable) until its timer ran out.
 */
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { AgentFabric } from '../../src/fabric.js';
import type { AgentRecord } from '../../src/lifecycle/lifecycle-manager.js';
import type { PoolRecord } from '../../src/pools/pool-manager.js';
import type { TaskRecord } from '../../src/scheduler/task-record.js';
import { SqliteStore } from '../../src/store/sqlite-store.js';
import { TaskStatus } from '../../src/task.js';
import { tempDir } from '../fixtures/gateway/harness.js';

const HOUR = 60 * 60_000;

type State = SqliteStore<TaskRecord, AgentRecord, PoolRecord>;

const open: AgentFabric[] = [];
afterEach(async () => {
  for (const f of open.splice(0)) if (!f.isClosed) await f.close();
  vi.useRealTimers();
});

/** A task's status as the state file holds it (a second, read-only connection). */
function statusOnDisk(path: string, taskId: string): string | undefined {
  const db = new Database(path, { readonly: true, fileMustExist: true });
  try {
    return db
      .prepare<[string], { status: string }>('SELECT status FROM tasks WHERE id = ?')
      .get(taskId)?.status;
  } finally {
    db.close();
  }
}

/**
 * At 10:00 (fake clocks and timers), a fabric over a new SQLite state file, a remote agent and a
 * task for it held back until 11:00.
 */
async function heldAnHour() {
  vi.useFakeTimers({ toFake: ['Date', 'performance', 'setTimeout', 'clearTimeout'] });
  vi.setSystemTime(Date.UTC(2026, 2, 2, 10, 0, 0));
  const path = join(tempDir('scheduler-clock'), 'state.db');
  const store: State = await SqliteStore.open<TaskRecord, AgentRecord, PoolRecord>(path);
  const fabric = new AgentFabric({}, { store });
  open.push(fabric);
  const { id: agentId } = await fabric.spawn({ name: 'w', model: 'm', executor: 'remote' });
  const held = await fabric.schedule({
    agentId,
    taskType: 't',
    payload: 'held',
    notBefore: Date.now() + HOUR,
  });
  return { path, store, fabric, agentId, held };
}

describe('queued tasks when the wall clock steps ahead (SQLite state file)', () => {
  it('releases a task whose notBefore the step passed, and times out one whose deadline it passed', async () => {
    const { path, store, fabric, agentId, held } = await heldAnHour();
    const due = await fabric.schedule({
      agentId,
      taskType: 't',
      payload: 'due',
      notBefore: Date.now() + 3 * HOUR,
      deadline: Date.now() + HOUR,
    });
    expect(await fabric.claimTask(agentId)).toBeUndefined();

    // NTP finds the clock two hours behind and steps it; then a few seconds pass.
    vi.setSystemTime(Date.now() + 2 * HOUR);
    await vi.advanceTimersByTimeAsync(5_000);

    // Its notBefore (11:00) has passed on the wall clock (12:00:05): it runs.
    const claimed = await fabric.claimTask(agentId);
    expect(claimed).toMatchObject({ taskId: held.id, payload: 'held' });
    // Its deadline (11:00) passed while it was held: it timed out.
    expect((await fabric.getTask(due.id)).status).toBe(TaskStatus.TIMEOUT);
    store.flush();
    expect(statusOnDisk(path, held.id)).toBe(TaskStatus.RUNNING);
    expect(statusOnDisk(path, due.id)).toBe(TaskStatus.TIMEOUT);
  });

  it('holds a task back when the clock steps back, until the clock reaches its notBefore', async () => {
    const { path, store, fabric, agentId, held } = await heldAnHour();
    // The clock is set two hours back; an hour passes: it reads 09:00, before 11:00.
    vi.setSystemTime(Date.now() - 2 * HOUR);
    await vi.advanceTimersByTimeAsync(HOUR + 5_000);
    expect(await fabric.claimTask(agentId)).toBeUndefined();
    store.flush();
    expect(statusOnDisk(path, held.id)).toBe(TaskStatus.PENDING);
    // Two more hours: 11:00:05.
    await vi.advanceTimersByTimeAsync(2 * HOUR);
    expect(await fabric.claimTask(agentId)).toMatchObject({ taskId: held.id });
  });
});

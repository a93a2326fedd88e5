/**
 * A step back while the sidecar was down larger than the age of what is still open. The clock
 * is set 3,000 years ahead while the fabric runs (a mistyped year: the running sidecar follows
 * the wall clock and moves no stored time, while its clock mark follows the step), then
 * corrected while it is down: at the next start the store takes the 3,000 years back for a step
 * made while down and moves the open records by it. A queued task made before the mistake had
 * its `createdAt` (and a running attempt its `startedAt`) moved 3,000 years before 1970, to the
 * year -974: before, the Operator API's JSON door (`/api/…`, protobuf-es `toJson`, which encodes
 * a `google.protobuf.Timestamp` only from 0001-01-01 to 9999-12-31) answered every GetTask and
 * ListTasks that held such a task with an internal error, and the file kept the absurd times.
 * Now a move stops at 1970-01-01 (and at the end of 9999): the task reads `createdAt` 0.
 *
 * `Date` and `performance` are the test's; the boot-time clock is the test's monotonic one (an
 * injected clock); the state file and the sidecar (its HTTP door) are real.
 */
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { AgentFabric } from '../../src/fabric.js';
import type { AgentRecord } from '../../src/lifecycle/lifecycle-manager.js';
import type { PoolRecord } from '../../src/pools/pool-manager.js';
import type { TaskRecord } from '../../src/scheduler/task-record.js';
import type { Sidecar } from '../../src/server/sidecar.js';
import { SqliteStore } from '../../src/store/sqlite-store.js';
import type { StoreBootOptions } from '../../src/store/store-clock.js';
import { TaskStatus } from '../../src/task.js';
import { postJson } from '../fixtures/api.js';
import {
  ADMIN_TOKEN,
  closeSidecar,
  startTestSidecar,
  tempDir,
} from '../fixtures/gateway/harness.js';

const T0 = Date.UTC(2026, 2, 2, 10, 0, 0);
const YEARS_3000 = 3000 * 365.25 * 24 * 60 * 60_000;
/** The boot-time clock moves with the test's monotonic one. */
const testBoot: StoreBootOptions = { clock: () => 1e9 + performance.now(), id: 'test-boot' };

describe('a step back while down larger than the age of the open records', () => {
  let sidecar: Sidecar | undefined;
  beforeEach(() => {
    vi.useFakeTimers({ toFake: ['Date', 'performance'] });
    vi.setSystemTime(T0);
  });
  afterEach(async () => {
    if (sidecar !== undefined) await closeSidecar(sidecar);
    sidecar = undefined;
    vi.useRealTimers();
  });

  it('a pending approval made half an hour before 1970 by the corrected clock: its createdAt stops at 0, its expiry keeps the hour it had left', async () => {
    const path = join(tempDir('state-clock-far-back-approval'), 'state.db');
    const first = await SqliteStore.open<TaskRecord, AgentRecord, PoolRecord>(path, {
      boot: testBoot,
    });
    const f1 = new AgentFabric({}, { store: first });
    const { id } = f1.approvals.create({ agentId: 'a', tool: 't', ttlSeconds: 2 * 3600 });
    vi.advanceTimersByTime(3600_000); // an hour passes on every clock
    await f1.close();
    // While down, the clock is reset to half an hour after the epoch (an RTC that lost its time).
    vi.setSystemTime(1800_000);
    const store = await SqliteStore.open<TaskRecord, AgentRecord, PoolRecord>(path, {
      boot: testBoot,
    });
    const f2 = new AgentFabric({}, { store });
    try {
      expect(f2.approvals.getApproval(id)).toMatchObject({
        status: 'pending',
        createdAt: 0, // before: -1800000, half an hour before 1970
        expiresAt: 1800_000 + 3600_000,
      });
    } finally {
      await f2.close();
    }
  });

  it('moves no time before 1970: the task reads createdAt 0 in the file, the library and the JSON door', async () => {
    const path = join(tempDir('state-clock-far-back'), 'state.db');
    const first = await SqliteStore.open<TaskRecord, AgentRecord, PoolRecord>(path, {
      boot: testBoot,
    });
    const f1 = new AgentFabric({}, { store: first });
    await f1.createPool({ poolId: 'idle', model: 'm', executor: 'inprocess', minAgents: 0 });
    const { id } = await f1.scheduleToPool('idle', 'echo', 1); // stays queued: no agent
    // The year typed wrong while it runs: seen (a second passes) and followed, nothing moved.
    vi.setSystemTime(T0 + YEARS_3000);
    vi.advanceTimersByTime(1000);
    expect((await f1.getTask(id)).createdAt).toBe(T0);
    await f1.close();
    // Corrected while down.
    vi.setSystemTime(T0 + 2000);
    const store = await SqliteStore.open<TaskRecord, AgentRecord, PoolRecord>(path, {
      boot: testBoot,
    });
    expect(store.clockStepAtOpen).toBeLessThan(-YEARS_3000 + 10_000);
    sidecar = await startTestSidecar({ upstreams: {} }, { fabricOptions: { store } });
    const api = (method: string, body: unknown): Promise<Response> =>
      postJson(new URL(`/api/fabric.v1.FabricService/${method}`, sidecar!.url), body, ADMIN_TOKEN);
    const got = await api('GetTask', { taskId: id });
    expect(got.status).toBe(200);
    expect(((await got.json()) as { task: { createdAt: string } }).task.createdAt).toBe(
      '1970-01-01T00:00:00Z',
    );
    const listed = await api('ListTasks', {});
    expect(listed.status).toBe(200);
    const { tasks } = (await listed.json()) as { tasks: { taskId: string }[] };
    expect(tasks.map((t) => t.taskId)).toContain(id);
    expect(await sidecar.fabric!.getTask(id)).toMatchObject({
      status: TaskStatus.PENDING,
      createdAt: 0,
    });

    // In the file: what the next start reads.
    await closeSidecar(sidecar);
    sidecar = undefined;
    const db = new Database(path, { readonly: true, fileMustExist: true });
    try {
      const row = db.prepare('SELECT created_at FROM tasks WHERE id = ?').get(id) as {
        created_at: number;
      };
      expect(row.created_at).toBe(0);
    } finally {
      db.close();
    }
  });
});

/**
 * The wall clock moved while the fabric was down. An AgentFabric over a real SQLite state file
 * holds a queued task with a deadline, one held until its `notBefore` and a pending approval; it
 * is closed, the clock set two hours ahead (or back) and a new fabric opened on the same file.
 * Elapsed time — the boot-time clock the store reads — moved by nothing meanwhile: the store
 * takes the difference for a step of the wall clock and moves the open records' times by it, so
 * each keeps the time it had left. Before, only the wall clock spanned the gap: set ahead, the
 * deadline and the approval's expiry had passed at start (TIMEOUT, expired) and the task held
 * until later ran at once; set back, all three lived two hours longer. `Date` and
 * `performance.now` are the test's; the boot-time clock is the test's monotonic one (an
 * injected clock: two hours that really pass move it too) or, where it can be read, the real
 * `/proc/uptime`. Timers are real.
 */
import { execFileSync } from 'node:child_process';
import { copyFileSync, existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { AgentFabric } from '../../src/fabric.js';
import type { ToolTaskRecord } from '../../src/gateway/tool-tasks.js';
import type { AgentRecord } from '../../src/lifecycle/lifecycle-manager.js';
import type { PoolRecord } from '../../src/pools/pool-manager.js';
import type { TaskRecord } from '../../src/scheduler/task-record.js';
import { SqliteStore } from '../../src/store/sqlite-store.js';
import type { StoreBootOptions } from '../../src/store/store-clock.js';
import { TaskStatus } from '../../src/task.js';
import { tempDir } from '../fixtures/gateway/harness.js';

const HOUR = 60 * 60_000;
const T0 = Date.UTC(2026, 2, 2, 10, 0, 0);
/** The boot-time clock moves with the test's monotonic one: time the test lets pass passed. */
const testBoot: StoreBootOptions = { clock: () => 1e9 + performance.now(), id: 'test-boot' };
const canReadBoot =
  existsSync('/proc/uptime') &&
  existsSync('/proc/sys/kernel/random/boot_id') &&
  readFileSync('/proc/sys/kernel/random/boot_id', 'latin1').trim() !== '';

let fabric: AgentFabric | undefined;
let store: SqliteStore<TaskRecord, AgentRecord, PoolRecord>;

async function open(path: string, boot?: StoreBootOptions): Promise<AgentFabric> {
  store = await SqliteStore.open<TaskRecord, AgentRecord, PoolRecord>(
    path,
    boot === undefined ? {} : { boot },
  );
  fabric = new AgentFabric({}, { store });
  fabric.registerInProcessHandler('echo', (payload) => payload);
  return fabric;
}

async function close(): Promise<void> {
  await fabric?.close();
  fabric = undefined;
}

/** A task that stays queued (its pool has no agent) until its deadline, an hour from now. */
async function queueWithDeadline(f: AgentFabric): Promise<string> {
  await f.createPool({ poolId: 'idle', model: 'm', executor: 'inprocess', minAgents: 0 });
  return (await f.scheduleToPool('idle', 'echo', 1, { deadline: T0 + HOUR })).id;
}

/** A task an agent would run at once, held back until an hour from now. */
async function holdBack(f: AgentFabric): Promise<string> {
  await f.createPool({ poolId: 'busy', model: 'm', executor: 'inprocess', minAgents: 1 });
  return (await f.scheduleToPool('busy', 'echo', 2, { notBefore: T0 + HOUR })).id;
}

/** A pending approval that expires in an hour. */
function askApproval(f: AgentFabric): string {
  return f.approvals.create({ agentId: 'a', tool: 't', ttlSeconds: 3600 }).id;
}

/** A few turns of the event loop: what a restored fabric does at once is done. */
async function settle(): Promise<void> {
  for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r));
}

/** The clock mark in the file at `file` (read beside the store, as another process would). */
function markOnDisk(file: string): { wall: number; boot: number } {
  const db = new Database(file, { readonly: true, fileMustExist: true });
  try {
    const row = db.prepare("SELECT value FROM meta WHERE key = 'clock'").get() as {
      value: string;
    };
    return JSON.parse(row.value) as { wall: number; boot: number };
  } finally {
    db.close();
  }
}

/** The `started_at` of task `id` in the file at `file` (null: none, or no such row). */
function startedOnDisk(file: string, id: string): number | null {
  const db = new Database(file, { readonly: true, fileMustExist: true });
  try {
    const row = db.prepare('SELECT started_at FROM tasks WHERE id = ?').get(id) as
      { started_at: number | null } | undefined;
    return row?.started_at ?? null;
  } finally {
    db.close();
  }
}

/** Waits (on real timers: `Date` stands still) until the store committed past `commits`. */
async function waitForCommit(commits: number): Promise<void> {
  for (let i = 0; i < 100 && store.stats.commits <= commits; i++) {
    await new Promise((r) => setTimeout(r, 20));
  }
  expect(store.stats.commits).toBeGreaterThan(commits);
}

/** A full disk for this process (its file size limit 0, with `prlimit`), or none. */
function diskFull(full: boolean): void {
  execFileSync('prlimit', [`--pid=${process.pid}`, `--fsize=${full ? 0 : 'unlimited'}:`]);
}

/** A copy of the file and its WAL as they are now: what a crash (kill -9) leaves. */
function crashImage(path: string, name: string): string {
  const crashed = join(tempDir(name), 'state.db');
  copyFileSync(path, crashed);
  if (existsSync(`${path}-wal`)) copyFileSync(`${path}-wal`, `${crashed}-wal`);
  return crashed;
}

describe('open tasks and approvals across a restart after the wall clock moved', () => {
  beforeEach(() => {
    vi.useFakeTimers({ toFake: ['Date', 'performance'] });
    vi.setSystemTime(T0);
  });
  afterEach(async () => {
    await close();
    vi.useRealTimers();
  });

  /** Opens a fresh state file, leaves `make`'s record in it, and reopens it `stepMs` later. */
  async function restartedAfterStep<T>(
    name: string,
    make: (f: AgentFabric) => T | Promise<T>,
    stepMs: number,
    boot: StoreBootOptions | undefined = testBoot,
  ): Promise<{ f: AgentFabric; made: T; path: string }> {
    const path = join(tempDir(`state-clock-${name}`), 'state.db');
    const made = await make(await open(path, boot));
    await close();
    vi.setSystemTime(T0 + stepMs);
    const f = await open(path, boot);
    return { f, made, path };
  }

  describe('set two hours ahead while down: nothing ends or starts early', () => {
    it('a queued task keeps the hour its deadline had left', async () => {
      const { f, made: id } = await restartedAfterStep('deadline', queueWithDeadline, 2 * HOUR);
      expect(store.clockStepAtOpen).toBe(2 * HOUR);
      await settle();
      expect(await f.getTask(id)).toMatchObject({
        status: TaskStatus.PENDING,
        deadline: T0 + 3 * HOUR,
      });
    });

    it('a task held until its notBefore is not released', async () => {
      const { f, made: id } = await restartedAfterStep('not-before', holdBack, 2 * HOUR);
      await settle();
      expect(await f.getTask(id)).toMatchObject({ status: TaskStatus.PENDING, attempt: 0 });
      expect(store.tasks.get(id)?.notBefore).toBe(T0 + 3 * HOUR);
    });

    it('a pending approval keeps the hour it had left, and can be decided', async () => {
      const { f, made: id } = await restartedAfterStep('approval', askApproval, 2 * HOUR);
      await settle();
      expect(f.approvals.getApproval(id)).toMatchObject({
        status: 'pending',
        expiresAt: T0 + 3 * HOUR,
      });
      // A decision is also checked against the wall clock: it finds the approval pending.
      expect(f.approvals.approve(id, { approver: 'op' }).status).toBe('approved');
    });
  });

  describe('set two hours back while down: nothing lives longer than it had left', () => {
    it("a queued task's deadline", async () => {
      const { f, made: id } = await restartedAfterStep(
        'deadline-back',
        queueWithDeadline,
        -2 * HOUR,
      );
      expect(store.clockStepAtOpen).toBe(-2 * HOUR);
      expect((await f.getTask(id)).deadline).toBe(T0 - HOUR);
    });

    it("a held task's notBefore", async () => {
      const { made: id } = await restartedAfterStep('not-before-back', holdBack, -2 * HOUR);
      expect(store.tasks.get(id)?.notBefore).toBe(T0 - HOUR);
    });

    it("a pending approval's expiry, also after another restart", async () => {
      const {
        f,
        made: id,
        path,
      } = await restartedAfterStep('approval-back', askApproval, -2 * HOUR);
      expect(f.approvals.getApproval(id)?.expiresAt).toBe(T0 - HOUR);
      await close();
      // The file holds the moved times (with a mark of the clocks at that start): opened again
      // with no time passed, nothing moves a second time.
      const again = await open(path, testBoot);
      expect(store.clockStepAtOpen).toBe(0);
      expect(again.approvals.getApproval(id)?.expiresAt).toBe(T0 - HOUR);
    });
  });

  /** Every kind at once: a task with a deadline, one held back, an approval. */
  async function leaveOpen(f: AgentFabric) {
    return {
      queued: await queueWithDeadline(f),
      held: await holdBack(f),
      approval: askApproval(f),
    };
  }

  it('time that really passed while down still counts: the deadline passes, the approval expires, the held task runs', async () => {
    const path = join(tempDir('state-clock-real'), 'state.db');
    const { queued, held, approval } = await leaveOpen(await open(path, testBoot));
    await close();
    // Two hours pass on every clock (wall, monotonic and boot-time together).
    vi.advanceTimersByTime(2 * HOUR);
    const f = await open(path, testBoot);
    expect(store.clockStepAtOpen).toBe(0);
    expect((await f.getTask(queued)).status).toBe(TaskStatus.TIMEOUT);
    expect(f.approvals.getApproval(approval)?.status).toBe('expired');
    expect((await f.waitForTask(held, { timeoutSeconds: 20 })).result).toBe(2);
  });

  it('on another boot of the machine only the wall clock spans the gap, as before', async () => {
    const path = join(tempDir('state-clock-reboot'), 'state.db');
    const { queued, approval } = await leaveOpen(await open(path, testBoot));
    await close();
    vi.setSystemTime(T0 + 2 * HOUR);
    const f = await open(path, { ...testBoot, id: 'another-boot' });
    expect(store.clockStepAtOpen).toBeUndefined();
    expect((await f.getTask(queued)).status).toBe(TaskStatus.TIMEOUT);
    expect(f.approvals.getApproval(approval)?.status).toBe('expired');
  });

  it('a mark that is not one (a hand edit) is none: only the wall clock spans the gap', async () => {
    const path = join(tempDir('state-clock-corrupt'), 'state.db');
    const { queued } = await leaveOpen(await open(path, testBoot));
    await close();
    const db = new Database(path);
    db.prepare('UPDATE meta SET value = \'{"wall":"x"}\' WHERE key = \'clock\'').run();
    db.close();
    vi.setSystemTime(T0 + 2 * HOUR);
    const f = await open(path, testBoot);
    expect(store.clockStepAtOpen).toBeUndefined();
    expect((await f.getTask(queued)).status).toBe(TaskStatus.TIMEOUT);
  });

  it('a step the running store saw is marked without waiting for a commit: a crash then does not take it for one made while down', async () => {
    const path = join(tempDir('state-clock-seen'), 'state.db');
    const f = await open(path, testBoot);
    const approval = askApproval(f);
    expect(markOnDisk(path).wall).toBe(T0);
    const commits = store.stats.commits;
    // While it runs, the clock is set two hours ahead; a second passes (the clock's next check).
    vi.setSystemTime(T0 + 2 * HOUR);
    vi.advanceTimersByTime(1000);
    // (Polled on real timers: `Date` stands still here.) The store checks its file once a second.
    for (let i = 0; i < 100 && markOnDisk(path).wall < T0 + 2 * HOUR; i++) {
      await new Promise((r) => setTimeout(r, 50));
    }
    expect(markOnDisk(path).wall).toBeGreaterThanOrEqual(T0 + 2 * HOUR);
    expect(store.stats.commits).toBe(commits);
    // What a crash now leaves (the file and its WAL as they are), opened: no step while down.
    const crashed = crashImage(path, 'state-clock-seen-crash');
    const image = await SqliteStore.open<TaskRecord, AgentRecord, PoolRecord>(crashed, {
      boot: testBoot,
    });
    try {
      expect(image.clockStepAtOpen).toBe(0);
      expect(image.approvals.get(approval)?.expiresAt).toBe(T0 + HOUR);
    } finally {
      await image.close();
    }
  });

  it('a commit right after a step the running store has not checked yet marks it: a crash then moves nothing a second time', async () => {
    const path = join(tempDir('state-clock-unchecked'), 'state.db');
    const f = await open(path, testBoot);
    const opened = store.stats.commits;
    const before = askApproval(f); // expires at T0 + 1 h, on the clock before the step
    await waitForCommit(opened);
    // The clock is set two hours ahead while the store runs; no time passes, so neither the
    // store's clock (it checks itself once a second) nor its once-a-second tick has looked yet.
    vi.setSystemTime(T0 + 2 * HOUR);
    const commits = store.stats.commits;
    const after = askApproval(f); // expires at T0 + 3 h: made on the new clock
    await waitForCommit(commits);
    // What a kill -9 now leaves, opened again with no time passed: the new approval was made on
    // the stepped clock and the old one follows the wall clock (as in the running sidecar), so
    // nothing moves. Before, the mark on disk was the one from before the step (the commit
    // writes one at most once a second) and both were moved by the step again: the new one
    // would have lived three hours, not one.
    const crashed = crashImage(path, 'state-clock-unchecked-crash');
    const image = await SqliteStore.open<TaskRecord, AgentRecord, PoolRecord>(crashed, {
      boot: testBoot,
    });
    try {
      expect(image.clockStepAtOpen).toBe(0);
      expect(image.approvals.get(after)?.expiresAt).toBe(T0 + 3 * HOUR);
      expect(image.approvals.get(before)?.expiresAt).toBe(T0 + HOUR);
    } finally {
      await image.close();
    }
    // On disk: the mark the commit wrote pairs the boot-time clock with the stepped wall clock.
    expect(markOnDisk(path).wall).toBe(T0 + 2 * HOUR);
  });

  it("a commit that itself finds a step writes the MCP tasks it carries as moved: a crash then keeps each task's ttl", async () => {
    // Store-level: the gateway's records, one with a change pending when the clock steps. The
    // commit serializes it, then finds the step (its mark moves every MCP task by it, in memory
    // and in the file): before, the row it then wrote was the one serialized before the move,
    // beside a mark on the stepped clock, and a restart forgot the task (its hour had passed).
    const path = join(tempDir('state-clock-tool-task'), 'state.db');
    const s = await SqliteStore.open<TaskRecord, AgentRecord, PoolRecord>(path, {
      boot: testBoot,
    });
    const task: ToolTaskRecord = {
      taskId: 'tt_1',
      agentId: 'a',
      tool: 'ev__echo',
      status: 'working',
      createdAt: T0,
      updatedAt: T0,
      ttl: HOUR,
    };
    try {
      s.toolTasks.put(task.taskId, Object.freeze(task));
      s.flush();
      s.toolTasks.put(task.taskId, Object.freeze({ ...task, statusMessage: 'running' }));
      // Two hours ahead; no time passes: neither the clock's check nor the tick has looked.
      vi.setSystemTime(T0 + 2 * HOUR);
      s.flush();
      expect(s.toolTasks.get('tt_1')).toMatchObject({ createdAt: T0 + 2 * HOUR });
      const image = await SqliteStore.open<TaskRecord, AgentRecord, PoolRecord>(
        crashImage(path, 'state-clock-tool-task-crash'),
        { boot: testBoot },
      );
      try {
        expect(image.clockStepAtOpen).toBe(0);
        expect(image.toolTasks.get('tt_1')).toMatchObject({
          statusMessage: 'running',
          createdAt: T0 + 2 * HOUR,
          updatedAt: T0 + 2 * HOUR,
        });
      } finally {
        await image.close();
      }
    } finally {
      await s.close();
    }
  });

  it('the mark a failed commit took back after a step is written by the next commit: a crash then moves nothing', async () => {
    const path = join(tempDir('state-clock-failed'), 'state.db');
    const f = await open(path, testBoot);
    vi.setSystemTime(T0 + 2 * HOUR);
    // The first commit after the step finds it and writes the mark — and fails (a full disk:
    // this process's file size limit set to 0), which takes the mark back with it.
    diskFull(true);
    try {
      expect(() => askApproval(f)).toThrow(/state store/);
    } finally {
      diskFull(false);
    }
    const commits = store.stats.commits;
    const after = askApproval(f); // expires at T0 + 3 h, on the stepped clock
    await waitForCommit(commits);
    // Before, the store took the step as marked and wrote no mark until a second later: the
    // file held the new approval beside the mark from before the step.
    const image = await SqliteStore.open<TaskRecord, AgentRecord, PoolRecord>(
      crashImage(path, 'state-clock-failed-crash'),
      { boot: testBoot },
    );
    try {
      expect(image.clockStepAtOpen).toBe(0);
      expect(image.approvals.get(after)?.expiresAt).toBe(T0 + 3 * HOUR);
    } finally {
      await image.close();
    }
  });

  /**
   * A task with an hour's timeout, running on an in-process agent (its handler never returns
   * until `release`), committed RUNNING: its `startedAt` and the mark on disk are from T0.
   */
  async function runningForAnHour(
    f: AgentFabric,
    path: string,
  ): Promise<{ id: string; startedAt: number; release: () => void }> {
    let release: () => void = () => undefined;
    f.registerInProcessHandler(
      'hang',
      () => new Promise<void>((resolve) => (release = () => resolve())),
    );
    await f.createPool({ poolId: 'run', model: 'm', executor: 'inprocess', minAgents: 1 });
    const { id } = await f.scheduleToPool('run', 'hang', 1, { timeoutSeconds: 3600 });
    for (let i = 0; i < 100 && startedOnDisk(path, id) === null; i++) {
      await new Promise((r) => setTimeout(r, 20));
    }
    const task = await f.getTask(id);
    expect(task.status).toBe(TaskStatus.RUNNING);
    expect(startedOnDisk(path, id)).toBe(T0);
    return { id, startedAt: task.startedAt!, release: () => release() };
  }

  it("a step the running store saw moves the running attempts' starts with its mark, in the file and in memory: a restart then counts the time that passed, not the step", async () => {
    const path = join(tempDir('state-clock-running'), 'state.db');
    const f = await open(path, testBoot);
    const { id, startedAt, release } = await runningForAnHour(f, path);
    expect(startedAt).toBe(T0);
    const commits = store.stats.commits;
    // While it runs, the clock is set two hours ahead; a second passes (the clock's next check).
    vi.setSystemTime(T0 + 2 * HOUR);
    vi.advanceTimersByTime(1000);
    for (let i = 0; i < 100 && markOnDisk(path).wall < T0 + 2 * HOUR; i++) {
      await new Promise((r) => setTimeout(r, 50));
    }
    // Marked by the store's tick, no commit: the start moved in the same transaction. Before,
    // the mark followed the step and the start stayed at T0: a restart (a resumed NATS attempt,
    // `nats-clock-down.test.ts`) counted two hours and a second against its hour's timeout.
    expect(store.stats.commits).toBe(commits);
    expect(markOnDisk(path).wall).toBe(T0 + 2 * HOUR + 1000);
    expect(startedOnDisk(path, id)).toBe(T0 + 2 * HOUR);
    // In memory as well (and so in what a later write of the task puts in its row).
    expect((await f.getTask(id)).startedAt).toBe(T0 + 2 * HOUR);
    // What a crash now leaves, opened: no step while down, the start one second old.
    const image = await SqliteStore.open<TaskRecord, AgentRecord, PoolRecord>(
      crashImage(path, 'state-clock-running-crash'),
      { boot: testBoot },
    );
    try {
      expect(image.clockStepAtOpen).toBe(0);
      expect(image.tasks.get(id)).toMatchObject({ status: 'RUNNING', startedAt: T0 + 2 * HOUR });
    } finally {
      await image.close();
    }
    // The task's next write (its completion) keeps the moved start.
    release();
    expect(await f.waitForTask(id)).toMatchObject({
      status: TaskStatus.COMPLETED,
      startedAt: T0 + 2 * HOUR,
    });
    await close();
    expect(startedOnDisk(path, id)).toBe(T0 + 2 * HOUR);
  });

  it("a failed commit that moved the running attempts' starts with its mark leaves them to the next one: a crash then moves each once", async () => {
    const path = join(tempDir('state-clock-running-failed'), 'state.db');
    const f = await open(path, testBoot);
    const { id, release } = await runningForAnHour(f, path);
    // Set two hours back; the first commit after it finds the step, moves the start and writes
    // the mark — and fails (a full disk), which takes both back; the start stays moved in memory.
    vi.setSystemTime(T0 - 2 * HOUR);
    diskFull(true);
    try {
      expect(() => askApproval(f)).toThrow(/state store/);
    } finally {
      diskFull(false);
    }
    expect((await f.getTask(id)).startedAt).toBe(T0 - 2 * HOUR);
    expect(startedOnDisk(path, id)).toBe(T0);
    const commits = store.stats.commits;
    askApproval(f);
    await waitForCommit(commits);
    // The next commit moved the start in the file once, with its mark.
    expect(markOnDisk(path).wall).toBe(T0 - 2 * HOUR);
    expect(startedOnDisk(path, id)).toBe(T0 - 2 * HOUR);
    const image = await SqliteStore.open<TaskRecord, AgentRecord, PoolRecord>(
      crashImage(path, 'state-clock-running-failed-crash'),
      { boot: testBoot },
    );
    try {
      expect(image.clockStepAtOpen).toBe(0);
      expect(image.tasks.get(id)).toMatchObject({ startedAt: T0 - 2 * HOUR });
    } finally {
      await image.close();
    }
    release();
    await f.waitForTask(id);
  });

  it.runIf(canReadBoot)(
    'reads the real boot-time clock: a step ahead while down is told from time that passed',
    async () => {
      const { f, made } = await restartedAfterStep('proc', leaveOpen, 2 * HOUR, {});
      // Real time moved by the test's run time only (well under a minute).
      expect(store.clockStepAtOpen).toBeGreaterThan(2 * HOUR - 60_000);
      expect(store.clockStepAtOpen).toBeLessThanOrEqual(2 * HOUR);
      expect((await f.getTask(made.queued)).status).toBe(TaskStatus.PENDING);
      expect(f.approvals.getApproval(made.approval)?.status).toBe('pending');
    },
  );
});

/**
 * Writer and reader of the state store agree on nesting: what the scheduler lets into a task
 * record (payload, result, progress, error) is what a restarted store reads back. A value nested
 * deeper than `MAX_RECORD_DEPTH` is refused at intake (FABRIC_ERR_INVALID_ARGUMENT); a failure
 * whose `details` cannot be stored is stored without them (its code and message kept). Text an
 * earlier version wrote deeper than the lossless parser goes (with a run of 16 digits in it)
 * is read back with `JSON.parse` instead of making the whole state file unreadable.
 * Real SQLite state files; what is checked is what is on disk and what a reopened store reads.
 */
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '../../src/errors.js';
import { MAX_RECORD_DEPTH, nestsDeeper, parseRecordJson } from '../../src/json-bytes.js';
import { AgentScheduler } from '../../src/scheduler/agent-scheduler.js';
import type { ExecutorSink, TaskExecutor } from '../../src/scheduler/executor.js';
import { TaskRecord } from '../../src/scheduler/task-record.js';
import { SqliteStore } from '../../src/store/sqlite-store.js';
import { taskFromRow, type TaskRow } from '../../src/store/sqlite-tasks.js';
import type { TaskAssignment } from '../../src/task.js';
import { Priority, TaskStatus } from '../../src/task.js';
import { jsonByteLength } from '../../src/validate.js';
import { tempDir } from '../fixtures/gateway/harness.js';

/** `depth` levels of arrays around a number with 16 digits (what routes to the lossless parser). */
function deep(depth: number): unknown {
  let v: unknown = 0.1234567890123456;
  for (let i = 0; i < depth; i++) v = [v];
  return v;
}

/** Details nested deeper than JSON.stringify's stack goes (JSON.parse, e.g. of a NATS report, takes them). */
function tooDeepToPrint(): Record<string, unknown> {
  const n = 200_000;
  return JSON.parse(`{"d":${'['.repeat(n)}${']'.repeat(n)}}`) as Record<string, unknown>;
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

/** An executor that keeps what it is handed, for the test to report on through the sink. */
class HeldExecutor implements TaskExecutor {
  readonly name = 'held';
  readonly acknowledges = false;
  readonly autoHeartbeat = false;
  sink!: ExecutorSink;
  readonly held: TaskAssignment[] = [];
  bind(sink: ExecutorSink): void {
    this.sink = sink;
  }
  capacity(): number {
    return Number.POSITIVE_INFINITY;
  }
  dispatch(batch: readonly TaskAssignment[]): void {
    this.held.push(...batch);
  }
  abort(): void {}
  async close(): Promise<void> {}
}

const open: SqliteStore<TaskRecord>[] = [];
const schedulers: AgentScheduler[] = [];
afterEach(async () => {
  for (const s of schedulers.splice(0)) await s.close();
  for (const s of open.splice(0)) await s.close();
});

async function scheduler(
  path: string,
): Promise<{ s: AgentScheduler; exec: HeldExecutor; store: SqliteStore<TaskRecord> }> {
  const store = await SqliteStore.open<TaskRecord>(path);
  open.push(store);
  const s = new AgentScheduler({ tasks: store.tasks });
  schedulers.push(s);
  const exec = new HeldExecutor();
  s.registerExecutor(exec);
  s.addPool('p');
  s.addAgent({ agentId: 'a', poolId: 'p', executor: 'held' });
  s.setAccepting('a', true);
  return { s, exec, store };
}

/** Waits until the executor holds `n` assignments. */
async function held(exec: HeldExecutor, n: number): Promise<TaskAssignment[]> {
  for (let i = 0; i < 100 && exec.held.length < n; i++) await new Promise((r) => setTimeout(r, 5));
  expect(exec.held.length).toBe(n);
  return exec.held;
}

describe('stored JSON nesting: what the store accepts it reads back', () => {
  it('refuses a value nested deeper than MAX_RECORD_DEPTH with InvalidArgumentError naming the field', () => {
    expect(() => jsonByteLength('result', deep(MAX_RECORD_DEPTH + 1))).toThrow(
      InvalidArgumentError,
    );
    expect(() => jsonByteLength('result', deep(MAX_RECORD_DEPTH + 1))).toThrow(
      /^result nests deeper than 256 levels/,
    );
    // As deep as the store keeps: accepted, and read back as written.
    const ok = deep(MAX_RECORD_DEPTH);
    expect(jsonByteLength('result', ok)).toBe(JSON.stringify(ok).length);
    expect(parseRecordJson(JSON.stringify(ok), 'f')).toEqual(ok);
    // Brackets inside strings do not nest.
    const text = JSON.stringify({ s: '[{"\\'.repeat(400), a: [1] });
    expect(nestsDeeper(text, 2)).toBe(false);
    expect(nestsDeeper(JSON.stringify(deep(3)), 2)).toBe(true);
    // A string ending in a backslash ends at its quote all the same.
    const after = JSON.stringify({ s: 'x\\', a: [[[1]]] });
    expect([nestsDeeper(after, 3), nestsDeeper(after, 4)]).toEqual([true, false]);
  });

  it('reads back deep text with a long digit run that an earlier version wrote', () => {
    const v = deep(300);
    const text = JSON.stringify(v);
    expect(parseRecordJson(text, 'task t result')).toEqual(v);
    // A bigint-holding value still comes back exact.
    expect(parseRecordJson('{"n":9007199254740993}', 'f')).toEqual({ n: 9007199254740993n });
  });

  it('a deep stored result (written before the limit) does not make the state file unreadable', async () => {
    const path = join(tempDir('stored-depth'), 'state.db');
    let store = await SqliteStore.open<TaskRecord>(path);
    const t = new TaskRecord(
      't1',
      'work',
      1,
      Priority.NORMAL,
      undefined,
      'p',
      false,
      'default',
      undefined,
      60_000,
      1,
      1,
      1_700_000_000_000,
    );
    t.status = TaskStatus.COMPLETED;
    t.result = deep(300);
    store.tasks.put('t1', t);
    await store.close();
    store = await SqliteStore.open<TaskRecord>(path);
    open.push(store);
    expect((store.tasks.get('t1') as unknown as { result: unknown }).result).toEqual(deep(300));
  });

  it('fails a task whose result is too deep to store; the file and a reopened store say so', async () => {
    const path = join(tempDir('stored-depth'), 'state.db');
    const { s, exec, store } = await scheduler(path);
    const id = s.submit({ poolId: 'p' }, 'work', 1);
    const [a] = await held(exec, 1);
    expect(() => s.submit({ poolId: 'p' }, 'work', deep(MAX_RECORD_DEPTH + 1))).toThrow(
      /payload nests deeper/,
    );
    exec.sink.progress(id, a!.attempt, deep(300)); // advisory: not applied
    exec.sink.complete(id, a!.attempt, deep(300));
    expect(s.getTask(id)).toMatchObject({
      status: TaskStatus.FAILED,
      error: { code: 'FABRIC_ERR_INVALID_ARGUMENT' },
    });
    await s.close();
    await store.close();
    const row = storedTasks(path).get(id)!;
    expect(row).toMatchObject({ status: 'FAILED', error: { code: 'FABRIC_ERR_INVALID_ARGUMENT' } });
    expect(row).not.toHaveProperty('result');
    expect(row).not.toHaveProperty('progress');
    const again = await SqliteStore.open<TaskRecord>(path);
    open.push(again);
    expect(again.tasks.get(id)).toMatchObject({ status: TaskStatus.FAILED });
  });

  it('stores a failure whose details cannot be stored without them: on disk, and read back', async () => {
    const path = join(tempDir('stored-depth'), 'state.db');
    const { s, exec, store } = await scheduler(path);
    const first = s.submit({ poolId: 'p' }, 'work', 1);
    const second = s.submit({ poolId: 'p' }, 'work', 2);
    const [a, b] = await held(exec, 2);
    exec.sink.fail(first, a!.attempt, { code: 'E', message: 'boom', details: tooDeepToPrint() });
    exec.sink.fail(second, b!.attempt, { code: 'E', message: 'deep', details: { d: deep(300) } });
    expect(s.getTask(first).status).toBe(TaskStatus.FAILED);
    await s.close();
    await store.close();
    const rows = storedTasks(path);
    for (const [id, message] of [
      [first, 'boom'],
      [second, 'deep'],
    ] as const) {
      const row = rows.get(id)!;
      expect(row).toMatchObject({ status: 'FAILED', error: { code: 'E', message } });
      expect((row.error as { details: { notKept: string } }).details.notKept).toMatch(
        /^error\.details were not kept: error /,
      );
    }
    const again = await SqliteStore.open<TaskRecord>(path);
    open.push(again);
    expect(again.tasks.get(first)).toMatchObject({ status: TaskStatus.FAILED });
    expect(again.tasks.get(second)).toMatchObject({ status: TaskStatus.FAILED });
  });

  it('refuses a trusted fail() whose error it could not store, changing nothing', async () => {
    const path = join(tempDir('stored-depth'), 'state.db');
    const { s, exec } = await scheduler(path);
    const id = s.submit({ poolId: 'p' }, 'work', 1);
    const [a] = await held(exec, 1);
    for (const details of [tooDeepToPrint(), { d: deep(300) }]) {
      expect(() => s.fail(id, a!.attempt, { code: 'E', message: 'm', details })).toThrow(
        InvalidArgumentError,
      );
    }
    expect(s.getTask(id).status).toBe(TaskStatus.RUNNING);
  });
});

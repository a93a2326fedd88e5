/**
 * SqliteStore's commit rule, checked from a second (read-only) connection on the same file: what
 * was put in one synchronous run is committed before a caller awaiting that run continues, and
 * the file is readable by its owner only.
 */
import {
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, describe, expect, it } from 'vitest';
import { StateStoreError } from '../../src/errors.js';
import { TaskRecord } from '../../src/scheduler/task-record.js';
import { STATE_SCHEMA_VERSION, SqliteStore } from '../../src/store/sqlite-store.js';
import { Priority, TaskStatus } from '../../src/task.js';
import { tempDir, until } from '../fixtures/gateway/harness.js';
import { schemaOneFile } from '../fixtures/state/schema-one.js';

const stores: SqliteStore[] = [];
afterEach(async () => {
  for (const s of stores.splice(0)) await s.close();
});

async function open(name: string): Promise<SqliteStore> {
  const s = await SqliteStore.open(join(tempDir('sqlite-unit'), name));
  stores.push(s);
  return s;
}

function committedIds(path: string, kind = 'agent'): string[] {
  const db = new Database(path, { readonly: true });
  try {
    return db
      .prepare<[string], { id: string }>('SELECT id FROM records WHERE kind = ? ORDER BY id')
      .all(kind)
      .map((r) => r.id);
  } finally {
    db.close();
  }
}

describe('SqliteStore', () => {
  it('commits the puts of one synchronous run before an awaiting caller continues', async () => {
    const s = await open('group.db');
    const write = async (): Promise<void> => {
      for (let i = 0; i < 100; i++) s.agents.put(`a${String(i).padStart(3, '0')}`, { i });
    };
    const pending = write();
    expect(committedIds(s.path)).toEqual([]); // nothing yet: the run is not over
    await pending;
    expect(committedIds(s.path)).toHaveLength(100);
    s.agents.delete('a000');
    await Promise.resolve();
    expect(committedIds(s.path)).toHaveLength(99);
  });

  it('commits budget usage of one synchronous run together, before an awaiting caller resumes', async () => {
    const s = await open('budget.db');
    const snap = { version: 1 } as never;
    const count = (): number => {
      const db = new Database(s.path, { readonly: true });
      try {
        return db.prepare<[], { n: number }>('SELECT count(*) AS n FROM budgets').get()!.n;
      } finally {
        db.close();
      }
    };
    const settleAll = async (): Promise<void> => {
      for (let i = 0; i < 50; i++) s.budgets.changed(`agent:${i}`, { toJSON: () => snap });
    };
    const settled = settleAll();
    expect(count()).toBe(0); // the run is not over: one commit for all 50 comes after it
    await settled;
    expect(count()).toBe(50); // ... and before the awaiting caller resumed
    expect(s.budgets.load('agent:7')).toEqual(snap);
  });

  it('commits an approval before put returns', async () => {
    const s = await open('approvals.db');
    const approval = {
      id: 'apr_1',
      agentId: 'a',
      tool: 't',
      params: {},
      policy: null,
      rule: null,
      status: 'pending' as const,
      createdAt: 1,
      expiresAt: 2,
    };
    s.approvals.put(approval.id, approval);
    expect(committedIds(s.path, 'approval')).toEqual(['apr_1']);
    s.approvals.delete(approval.id);
    expect(committedIds(s.path, 'approval')).toEqual([]);
  });

  it('a record that cannot be serialized is reported, and blocks no other record', async () => {
    const errors: StateStoreError[] = [];
    const path = join(tempDir('sqlite-unit'), 'poison.db');
    const s = await SqliteStore.open(path, { onError: (e) => errors.push(e) });
    stores.push(s);
    s.agents.put('good', { n: 1 });
    const cyclic: Record<string, unknown> = { n: 10 };
    cyclic.self = cyclic;
    s.agents.put('bad', cyclic);
    await Promise.resolve();
    expect(committedIds(path)).toEqual(['good']);
    expect(errors).toHaveLength(1);
    expect(errors[0]!.message).toContain('agent bad');
    s.agents.put('later', { n: 2 });
    await Promise.resolve();
    expect(committedIds(path)).toEqual(['good', 'later']);
    expect(errors).toHaveLength(1);
  });

  it('keeps a bigint (an exact integer beyond 2^53) exact across a reopen', async () => {
    const path = join(tempDir('sqlite-unit'), 'bigint.db');
    let s = await SqliteStore.open(path);
    s.agents.put('a', { n: 2n ** 64n + 1n, small: 1, digits: '12345678901234567890' });
    await s.close();
    s = await SqliteStore.open(path);
    stores.push(s);
    expect(s.agents.get('a')).toEqual({
      n: 2n ** 64n + 1n,
      small: 1,
      digits: '12345678901234567890',
    });
  });

  it('writes meta values at once, and creates the file for its owner only', async () => {
    const s = await open('meta.db');
    s.setMeta('k', 'v');
    expect(s.getMeta('k')).toBe('v');
    expect(s.secret('key')).toMatch(/^[0-9a-f]{64}$/);
    expect(s.secret('key')).toBe(s.secret('key'));
    expect(s.derive('key', 'id-1')).not.toBe(s.derive('key', 'id-2'));
    expect(statSync(s.path).mode & 0o777).toBe(0o600);
  });

  it('saves its state beside the path, not to it, when its folder was removed and another took the lock', async () => {
    const dir = join(tempDir('sqlite-unit'), 'state');
    const path = join(dir, 'state.db');
    const errors: StateStoreError[] = [];
    const s = await SqliteStore.open(path, { onError: (e) => errors.push(e) });
    s.agents.put('a1', { n: 1 });
    await Promise.resolve();
    // In one synchronous run, so the store's check sees both: the folder gone, and another
    // sidecar's lock (another host's, never taken as stale) made in its place.
    const other = {
      pid: 1,
      hostname: 'another-host.invalid',
      startedAt: new Date().toISOString(),
      instance: 'feedfacefeedface',
    };
    rmSync(dir, { recursive: true, force: true });
    mkdirSync(dir);
    writeFileSync(`${path}.lock`, `${JSON.stringify(other)}\n`);
    await until(() => errors.length > 0, 10_000);
    expect(errors[0]!.message).toContain('was removed while in use');
    expect(errors[0]!.message).toContain('another-host.invalid');
    expect(existsSync(path)).toBe(false);
    const saved = readdirSync(dir).filter((f) => /^state\.db\.detached-.*\.db$/.test(f));
    expect(saved).toHaveLength(1);
    expect(committedIds(join(dir, saved[0]!))).toEqual(['a1']);
    await expect(s.close()).rejects.toBeInstanceOf(StateStoreError);
    // The other's lock is left as it is; the path still holds nothing of this store.
    expect(JSON.parse(readFileSync(`${path}.lock`, 'utf8'))).toEqual(other);
    expect(existsSync(path)).toBe(false);
  });

  it('refuses use after close with a typed error, and closes twice quietly', async () => {
    const s = await open('closed.db');
    await s.close();
    await s.close();
    expect(() => s.getMeta('k')).toThrow(StateStoreError);
  });

  it('rejects a bad synchronous option naming it', async () => {
    await expect(
      SqliteStore.open(join(tempDir('sqlite-unit'), 'x.db'), { synchronous: 'OFF' as never }),
    ).rejects.toThrow(/options.synchronous/);
  });
});

/** A task as the scheduler stores it. */
function task(id: string, payload: unknown = { n: id }): TaskRecord {
  const t = new TaskRecord(
    id,
    'echo',
    payload,
    Priority.NORMAL,
    undefined,
    'p',
    false,
    'default',
    undefined,
    60_000,
    2,
    Number(id.replace(/\D/g, '') || 0),
    1_700_000_000_000,
  );
  return t;
}

describe('SqliteStore tasks table (schema 2 on)', () => {
  it('commits a lazy put at the end of the event-loop iteration, not with an earlier commit', async () => {
    const s = await open('tasks-lazy.db');
    const started = task('t1');
    s.tasks.put('t1', started);
    s.tasks.put('t2', task('t2'));
    await Promise.resolve();
    started.status = TaskStatus.RUNNING;
    started.attempt = 1;
    s.tasks.putLazily('t1', started);
    // Another record's change commits on a microtask; the lazy one waits.
    s.agents.put('a', { n: 1 });
    await Promise.resolve();
    expect(committedIds(s.path)).toEqual(['a']);
    expect(taskStatus(s.path, 't1')).toBe('PENDING');
    await new Promise((resolve) => setImmediate(resolve));
    expect(taskStatus(s.path, 't1')).toBe('RUNNING');

    // A change made with put after a lazy one is committed with the next commit, once.
    const other = s.tasks.get('t2') as TaskRecord;
    other.status = TaskStatus.RUNNING;
    s.tasks.putLazily('t2', other);
    other.status = TaskStatus.COMPLETED;
    s.tasks.put('t2', other);
    await Promise.resolve();
    expect(taskStatus(s.path, 't2')).toBe('COMPLETED');
  });

  it('commits lazy puts on close', async () => {
    const path = join(tempDir('sqlite-unit'), 'tasks-lazy-close.db');
    const s = await SqliteStore.open(path);
    const t = task('t1');
    s.tasks.put('t1', t);
    await Promise.resolve();
    t.status = TaskStatus.RUNNING;
    s.tasks.putLazily('t1', t);
    await s.close();
    expect(taskStatus(path, 't1')).toBe('RUNNING');
  });

  it("writes a task's payload at its first commit only; later commits update what changes", async () => {
    const s = await open('tasks-once.db');
    const t = task('t1', { big: 'x'.repeat(1000) });
    s.tasks.put('t1', t);
    await Promise.resolve();
    // Another connection changes the stored payload behind the store's back…
    const db = new Database(s.path);
    db.prepare(`UPDATE tasks SET payload = '"marker"' WHERE id = 't1'`).run();
    db.close();
    t.status = TaskStatus.COMPLETED;
    t.attempt = 1;
    t.result = { ok: 1 };
    s.tasks.put('t1', t);
    await Promise.resolve();
    // …and the completion's write leaves it alone: it updated status and result only.
    const ro = new Database(s.path, { readonly: true });
    try {
      expect(ro.prepare(`SELECT payload, status, result FROM tasks WHERE id = 't1'`).get()).toEqual(
        {
          payload: '"marker"',
          status: 'COMPLETED',
          result: '{"ok":1}',
        },
      );
    } finally {
      ro.close();
    }
  });

  it('a task that cannot be serialized is reported and blocks no other task; delete removes its row', async () => {
    const errors: StateStoreError[] = [];
    const path = join(tempDir('sqlite-unit'), 'tasks-poison.db');
    const s = await SqliteStore.open(path, { onError: (e) => errors.push(e) });
    stores.push(s);
    const cyclic: Record<string, unknown> = {};
    cyclic.self = cyclic;
    s.tasks.put('t1', task('t1'));
    s.tasks.put('t2', task('t2', cyclic));
    await Promise.resolve();
    expect(errors.map((e) => e.message)).toEqual([expect.stringContaining('task t2')]);
    expect(committedTaskIds(path)).toEqual(['t1']);
    s.tasks.delete('t1');
    s.tasks.delete('t2');
    await Promise.resolve();
    expect(committedTaskIds(path)).toEqual([]);
  });

  it('writes many tasks of one commit right: inserts, updates and deletes by the batch and one by one', async () => {
    const path = join(tempDir('sqlite-unit'), 'tasks-many.db');
    const s = await SqliteStore.open(path);
    stores.push(s);
    const all = Array.from({ length: 41 }, (_, i) => task(`t${i}`, { n: i }));
    for (const t of all) s.tasks.put(t.id, t);
    await Promise.resolve();
    // 37 ends (two batches and five single rows), 35 deletes, in one commit.
    for (const t of all.slice(0, 37)) {
      t.status = TaskStatus.COMPLETED;
      t.attempt = 1;
      t.assignedAgentId = `agent-${t.seq}`;
      t.result = { r: t.seq };
      s.tasks.put(t.id, t);
    }
    for (const t of all.slice(2, 37)) s.tasks.delete(t.id);
    await s.close();
    const again = await SqliteStore.open(path);
    stores.push(again);
    const back = [...again.tasks.values()] as Array<Record<string, unknown>>;
    const expected = [...all.slice(0, 2), ...all.slice(37)].map((t) => {
      const { id, seq, status, attempt, assignedAgentId, result, payload } = t;
      return { id, seq, status, attempt, assignedAgentId, result, payload };
    });
    expect(
      back.map(({ id, seq, status, attempt, assignedAgentId, result, payload }) => ({
        id,
        seq,
        status,
        attempt,
        assignedAgentId,
        result,
        payload,
      })),
    ).toEqual(expected);
  });

  it("keeps tasks of an earlier process (another id prefix) apart from this one's: each found, updated, deleted, and written as one row", async () => {
    const path = join(tempDir('sqlite-unit'), 'tasks-prefixes.db');
    const first = await SqliteStore.open(path);
    const old = Array.from({ length: 20 }, (_, i) => task(`t_old_${(i + 1).toString(36)}`));
    for (const t of old) first.tasks.put(t.id, t);
    await first.close();

    const s = await SqliteStore.open(path);
    stores.push(s);
    // Adopted like the scheduler's restore does, then this process's tasks, ids counting on.
    for (const t of old) s.tasks.adopt!(t.id, t);
    const now = Array.from({ length: 40 }, (_, i) => task(`t_new_${(i + 1).toString(36)}`));
    for (const t of now) s.tasks.put(t.id, t);
    expect(s.tasks.size).toBe(60);
    for (const t of [...old, ...now]) expect(s.tasks.get(t.id)).toBe(t);
    await Promise.resolve();
    // Ends (updates) in both sets, then deletes in both.
    for (const t of [...old.slice(0, 10), ...now.slice(0, 30)]) {
      t.status = TaskStatus.COMPLETED;
      t.attempt = 1;
      t.result = { done: t.id };
      s.tasks.put(t.id, t);
    }
    for (const t of [...old.slice(0, 5), ...now.slice(0, 20)])
      expect(s.tasks.delete(t.id)).toBe(true);
    expect(s.tasks.delete(old[0]!.id)).toBe(false);
    expect(s.tasks.get(old[0]!.id)).toBeUndefined();
    expect(s.tasks.size).toBe(35);
    await s.close();

    const db = new Database(path, { readonly: true });
    try {
      // Updates never add a row: one row per task left, none without an id.
      const rows = db
        .prepare<[], { id: string; status: string; result: string | null }>(
          'SELECT id, status, result FROM tasks ORDER BY rid',
        )
        .all();
      const left = [...old.slice(5), ...now.slice(20)];
      expect(rows.map((r) => r.id)).toEqual(left.map((t) => t.id));
      for (const [i, r] of rows.entries()) {
        expect(r.status).toBe(left[i]!.status);
        expect(r.result === null ? undefined : JSON.parse(r.result)).toEqual(left[i]!.result);
      }
    } finally {
      db.close();
    }
  });

  it('writes tasks of many shapes: absent fields stay absent, a field cleared later is cleared; scattered and consecutive deletes', async () => {
    const path = join(tempDir('sqlite-unit'), 'tasks-shapes.db');
    const s = await SqliteStore.open(path);
    stores.push(s);
    // Six optional fields, each present or not: 64 shapes, more than the writer keeps statements for.
    const all = Array.from({ length: 64 }, (_, i) => {
      const t = new TaskRecord(
        `t${i}`,
        'echo',
        i % 3 === 0 ? undefined : { n: i },
        Priority.NORMAL,
        i & 1 ? `agent-${i}` : undefined,
        'p',
        false,
        i & 2 ? `tenant-${i}` : 'default',
        i & 4 ? 1_800_000_000_000 + i : undefined,
        60_000,
        2,
        i,
        1_700_000_000_000,
      );
      if (i & 8) t.notBefore = 1_700_000_000_500 + i;
      if (i & 16) t.progress = { step: i };
      if (i & 32) t.error = { code: 'FABRIC_ERR_TIMEOUT', message: `e${i}` } as never;
      return t;
    });
    // And 40 of one shape (two multi-row statements and single rows), whose fields get cleared.
    const alike = Array.from({ length: 40 }, (_, i) => {
      const t = task(`t${100 + i}`);
      t.progress = { step: i };
      t.assignedAgentId = 'agent-1';
      t.error = { code: 'FABRIC_ERR_TIMEOUT', message: `e${i}` } as never;
      return t;
    });
    all.push(...alike);
    for (const t of all) s.tasks.put(t.id, t);
    await Promise.resolve();
    const stored = (t: TaskRecord): unknown => JSON.parse(JSON.stringify(t));
    const load = async (): Promise<unknown[]> => {
      const again = await SqliteStore.open(path);
      try {
        return [...again.tasks.values()].map((d) => JSON.parse(JSON.stringify(d)));
      } finally {
        await again.close();
      }
    };
    for (const t of alike) {
      t.progress = t.assignedAgentId = t.error = undefined;
      t.status = TaskStatus.PENDING;
      s.tasks.put(t.id, t);
    }
    // Each mutable field that was set is cleared and each that was not is set, in one commit.
    for (const [i, t] of all.slice(0, 64).entries()) {
      t.status = i & 1 ? TaskStatus.RUNNING : TaskStatus.PENDING;
      t.attempt = i & 1;
      t.assignedAgentId = i & 1 ? `agent-${i}` : undefined;
      t.startedAt = i & 1 ? 1_700_000_000_100 : undefined;
      t.notBefore = i & 8 ? undefined : 1_700_000_000_900;
      t.progress = i & 16 ? undefined : 'halfway';
      t.error = i & 32 ? undefined : ({ code: 'FABRIC_ERR_INTERNAL', message: 'x' } as never);
      t.undelivered = i & 4 ? 1 : 0;
      s.tasks.put(t.id, t);
    }
    // Deleted in the same commit: a run of ten rows, lone rows, a run of three, and rows 40–63 but 50.
    const gone = new Set([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 14, 20, 21, 22]);
    for (let i = 40; i < 64; i++) if (i !== 50) gone.add(i);
    for (const i of gone) s.tasks.delete(all[i]!.id);
    await s.close();
    stores.splice(stores.indexOf(s), 1);
    expect(await load()).toEqual(all.filter((_, i) => !gone.has(i)).map(stored));
  });

  it('a failed commit leaves its task writes pending: inserts are inserted again, updates retried', async () => {
    const errors: StateStoreError[] = [];
    const path = join(tempDir('sqlite-unit'), 'tasks-retry.db');
    const s = await SqliteStore.open(path, { onError: (e) => errors.push(e) });
    stores.push(s);
    const t1 = task('t1');
    s.tasks.put('t1', t1);
    await Promise.resolve();
    // A trigger from another connection makes the next commit fail after some rows were written.
    const db = new Database(path);
    db.exec(`CREATE TRIGGER refuse AFTER INSERT ON tasks WHEN NEW.id = 't3'
             BEGIN SELECT RAISE(ABORT, 'refused'); END`);
    t1.status = TaskStatus.COMPLETED;
    t1.result = 'one';
    s.tasks.put('t1', t1);
    const t2 = task('t2');
    s.tasks.put('t2', t2);
    s.tasks.put('t3', task('t3'));
    s.tasks.put('t4', task('t4'));
    await Promise.resolve();
    expect(errors.map((e) => e.message)).toEqual([expect.stringContaining('refused')]);
    expect(committedTaskIds(path)).toEqual(['t1']);
    expect(taskStatus(path, 't1')).toBe('PENDING');
    db.exec('DROP TRIGGER refuse');
    db.close();
    t2.status = TaskStatus.RUNNING;
    s.tasks.put('t2', t2);
    await Promise.resolve();
    expect(errors).toHaveLength(1);
    expect(committedTaskIds(path)).toEqual(['t1', 't2', 't3', 't4']);
    expect(taskStatus(path, 't1')).toBe('COMPLETED');
    expect(taskStatus(path, 't2')).toBe('RUNNING');
    // Their rows are known: later writes update them, deletes remove them.
    s.tasks.delete('t3');
    t2.status = TaskStatus.COMPLETED;
    s.tasks.put('t2', t2);
    await s.close();
    const again = await SqliteStore.open(path);
    stores.push(again);
    expect(
      [...again.tasks.values()].map((t) => [
        (t as { id: string }).id,
        (t as { status: string }).status,
      ]),
    ).toEqual([
      ['t1', 'COMPLETED'],
      ['t2', 'COMPLETED'],
      ['t4', 'PENDING'],
    ]);
  });

  it('migrates a schema-1 file: its task records move to the tasks table, the rest stays', async () => {
    const path = join(tempDir('sqlite-unit'), 'v1.db');
    const t = task('t7');
    t.status = TaskStatus.FAILED;
    t.attempt = 2;
    t.undelivered = 1;
    t.error = { code: 'E', message: 'm' };
    t.result = { sum: 3 };
    const data = JSON.parse(JSON.stringify(t)) as Record<string, unknown>;
    schemaOneFile(path, [['t7', JSON.stringify(data)]]);
    let s = await SqliteStore.open(path);
    expect(s.tasks.get('t7')).toEqual(data);
    expect(s.agents.get('a1')).toEqual({ id: 'a1', n: 1 });
    await s.close();
    const db = new Database(path, { readonly: true });
    try {
      expect(db.pragma('user_version', { simple: true })).toBe(STATE_SCHEMA_VERSION);
      expect(db.prepare("SELECT count(*) AS n FROM records WHERE kind = 'task'").get()).toEqual({
        n: 0,
      });
    } finally {
      db.close();
    }
    s = await SqliteStore.open(path);
    stores.push(s);
    expect(TaskRecord.fromData(s.tasks.get('t7')).toJSON()).toEqual(t.toJSON());
  });

  it('migrates a schema-2 file: its tasks table gains report_mark, every task kept; a mark round-trips', async () => {
    const path = join(tempDir('sqlite-unit'), 'v2.db');
    let s = await SqliteStore.open(path);
    const t = task('t8');
    t.status = TaskStatus.RUNNING;
    t.attempt = 1;
    t.progress = { pct: 5 };
    s.tasks.put('t8', t);
    await s.close();
    // The file as schema 2 wrote it: no report_mark column.
    let db = new Database(path);
    db.exec('ALTER TABLE tasks DROP COLUMN report_mark');
    db.pragma('user_version = 2');
    db.pragma('wal_checkpoint(TRUNCATE)');
    db.close();
    s = await SqliteStore.open(path);
    expect(TaskRecord.fromData(s.tasks.get('t8')).toJSON()).toEqual(t.toJSON());
    const marked = TaskRecord.fromData(s.tasks.get('t8'));
    marked.reportMark = '1:3:w1.1';
    s.tasks.put('t8', marked);
    await s.close();
    db = new Database(path, { readonly: true });
    try {
      expect(db.pragma('user_version', { simple: true })).toBe(STATE_SCHEMA_VERSION);
      expect(db.prepare('SELECT report_mark FROM tasks').get()).toEqual({
        report_mark: '1:3:w1.1',
      });
    } finally {
      db.close();
    }
    s = await SqliteStore.open(path);
    stores.push(s);
    expect(TaskRecord.fromData(s.tasks.get('t8')).reportMark).toBe('1:3:w1.1');
  });

  it('refuses a schema-1 file whose task record is not JSON, naming it, and leaves the file as it was', async () => {
    const path = join(tempDir('sqlite-unit'), 'v1-bad.db');
    schemaOneFile(path, [
      ['t1', JSON.stringify(task('t1').toJSON())],
      ['t2', '{not json'],
    ]);
    const before = readFileSync(path);
    const err = await SqliteStore.open(path).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(StateStoreError);
    expect((err as Error).message).toContain(path);
    expect((err as Error).message).toContain('"t2"');
    expect(readFileSync(path).equals(before)).toBe(true);
  });
});

function committedTaskIds(path: string): string[] {
  const db = new Database(path, { readonly: true });
  try {
    return db
      .prepare<[], { id: string }>('SELECT id FROM tasks ORDER BY id')
      .all()
      .map((r) => r.id);
  } finally {
    db.close();
  }
}

function taskStatus(path: string, id: string): unknown {
  const db = new Database(path, { readonly: true });
  try {
    return db
      .prepare<[string], { status: unknown }>('SELECT status FROM tasks WHERE id = ?')
      .get(id)?.status;
  } finally {
    db.close();
  }
}

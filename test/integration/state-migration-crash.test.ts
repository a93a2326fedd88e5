/**
 * A schema-1 state file migrated to schema 2 by a process killed (SIGKILL) in the middle of the
 * migration: the file is then either still schema 1 with every task record, or schema 2 with
 * every task in its table — never half. The migration is one SQLite transaction; the process is
 * killed once its uncommitted pages spill into the WAL (the transaction is open and writing).
 * The file is then read directly and opened again by a real store, which finishes the job.
 */
import { spawn } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import Database from 'better-sqlite3';
import { afterAll, describe, expect, it } from 'vitest';
import { SqliteStore, STATE_SCHEMA_VERSION } from '../../src/store/sqlite-store.js';
import { tempDir, TSX, until } from '../fixtures/gateway/harness.js';
import { schemaOneFile } from '../fixtures/state/schema-one.js';

const OPENER = fileURLToPath(new URL('../fixtures/state/store-opener.ts', import.meta.url));
const TASKS = 20_000;
/** WAL bytes that show the migration's transaction is writing (SQLite's cache spills ~2 MB). */
const SPILLED = 4 * 1024 * 1024;

const children = new Set<ReturnType<typeof spawn>>();
afterAll(() => {
  for (const c of children) c.kill('SIGKILL');
});

function taskData(i: number): string {
  const id = `t${String(i).padStart(6, '0')}`;
  return JSON.stringify({
    id,
    type: 'review',
    payload: { n: i, text: 'x'.repeat(500) },
    priority: 1,
    pinned: false,
    tenant: '',
    timeoutMs: 60_000,
    maxAttempts: 3,
    seq: i,
    createdAt: 1_700_000_000_000 + i,
    status: 'pending',
    attempt: 0,
  });
}

/** `[version, tasks in records, tasks in the tasks table]` as the file on disk holds them. */
function onDisk(path: string): [number, number, number] {
  const db = new Database(path, { readonly: true });
  try {
    const version = db.pragma('user_version', { simple: true }) as number;
    const count = (sql: string): number => db.prepare<[], { n: number }>(sql).get()?.n ?? 0;
    const inRecords = count("SELECT count(*) AS n FROM records WHERE kind = 'task'");
    const hasTasks = count("SELECT count(*) AS n FROM sqlite_master WHERE name = 'tasks'") > 0;
    return [version, inRecords, hasTasks ? count('SELECT count(*) AS n FROM tasks') : 0];
  } finally {
    db.close();
  }
}

describe('schema migration killed midway', () => {
  it('leaves the file old or new, never half; the next open migrates it whole', async () => {
    const path = join(tempDir('state-migration-crash'), 'state.db');
    schemaOneFile(
      path,
      Array.from({ length: TASKS }, (_, i) => [`t${String(i).padStart(6, '0')}`, taskData(i)]),
    );
    const child = spawn(process.execPath, ['--import', TSX, OPENER, path], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    children.add(child);
    let opened = false;
    child.stdout.on('data', (c: Buffer) => (opened ||= c.toString().includes('opened')));
    const exited = new Promise((resolve) => child.once('exit', resolve));
    const wal = `${path}-wal`;
    await until(() => opened || (existsSync(wal) && statSync(wal).size > SPILLED), 60_000);
    child.kill('SIGKILL');
    await exited;
    children.delete(child);

    const [version, inRecords, inTable] = onDisk(path);
    if (version === 1) {
      expect([inRecords, inTable]).toEqual([TASKS, 0]); // the migration rolled back
    } else {
      expect(version).toBe(STATE_SCHEMA_VERSION);
      expect([inRecords, inTable]).toEqual([0, TASKS]); // it had committed
    }

    const store = await SqliteStore.open(path);
    try {
      expect(store.tasks.size).toBe(TASKS);
      expect(store.tasks.get('t000123')).toMatchObject({ id: 't000123', payload: { n: 123 } });
      expect(store.agents.get('a1')).toEqual({ id: 'a1', n: 1 });
    } finally {
      await store.close();
    }
    expect(onDisk(path)).toEqual([STATE_SCHEMA_VERSION, 0, TASKS]);
  }, 120_000);
});

/**
 * Bad state never silently resets. A state file that is from a newer schema, corrupt, not ours,
 * or in use by another sidecar is refused with a typed error that names it — and is left byte
 * for byte as it was (checked by hashing the file before and after). The real CLI is run for
 * the three cases an operator meets; the store itself is attacked with more shapes of bad file.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  chmodSync,
  chownSync,
  existsSync,
  readdirSync,
  mkdirSync,
  readFileSync,
  truncateSync,
  writeFileSync,
  openSync,
  writeSync,
  closeSync,
} from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, describe, expect, it } from 'vitest';
import { StateLockedError, StateStoreError, StateVersionError } from '../../src/errors.js';
import { AgentFabric } from '../../src/fabric.js';
import { LifecycleManager } from '../../src/lifecycle/lifecycle-manager.js';
import { SqliteStore, STATE_SCHEMA_VERSION } from '../../src/store/sqlite-store.js';
import { CLI_MAIN, tempDir, TSX } from '../fixtures/gateway/harness.js';

const opened: SqliteStore[] = [];
afterAll(async () => {
  for (const s of opened) await s.close().catch(() => undefined);
});

/** SHA-256 of the file and of its WAL (when there is one): what "unchanged" means. */
function fingerprint(path: string): string {
  const h = createHash('sha256').update(readFileSync(path));
  if (existsSync(`${path}-wal`)) h.update(readFileSync(`${path}-wal`));
  return h.digest('hex');
}

/** A real state file with a few agents, closed. */
async function realState(path: string): Promise<void> {
  const store = await SqliteStore.open(path);
  const lm = new LifecycleManager({ agents: store.agents as never, maxConcurrentAgents: 1000 });
  for (let i = 0; i < 200; i++) lm.spawnSync({ name: `a${i}`, model: 'm', executor: 'remote' });
  await lm.close();
  await store.close();
}

/** A real state file with pool `p` and `n` tasks queued to it, closed; their ids. */
async function stateWithTasks(path: string, n: number): Promise<string[]> {
  const store = await SqliteStore.open(path);
  const fabric = new AgentFabric({}, { store: store as never });
  await fabric.createPool({ poolId: 'p', model: 'm', executor: 'remote', minAgents: 0 });
  const ids: string[] = [];
  for (let i = 0; i < n; i++) ids.push((await fabric.scheduleToPool('p', 'x', { i })).id);
  await fabric.close();
  await store.close();
  return ids;
}

async function openError(path: string): Promise<unknown> {
  try {
    opened.push(await SqliteStore.open(path));
  } catch (error) {
    return error;
  }
  throw new Error(`${path} opened`);
}

interface Run {
  code: number | null;
  stdout: string;
  last: string;
}

/** Runs a command as uid/gid 65534 when the tests run as root (whom file modes do not stop). */
const UNPRIVILEGED =
  process.getuid?.() === 0 ? ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups'] : [];

/**
 * `agent-fabric serve` with `state.path` at `statePath`, run to its end; `prefix`: a command
 * that runs it (as {@link UNPRIVILEGED}, under a `bash -c 'ulimit …; exec "$@"'` …).
 */
function serve(dir: string, statePath: string, prefix: readonly string[] = []): Promise<Run> {
  const file = join(dir, 'fabric.json');
  writeFileSync(
    file,
    JSON.stringify({ http: { host: '127.0.0.1', port: 0 }, state: { path: statePath } }),
  );
  const env = { ...process.env };
  delete env.FABRIC_STATE;
  const node = [process.execPath, '--import', TSX, CLI_MAIN, 'serve', '--config', file];
  const argv = [...prefix, ...node];
  const child = spawn(argv[0]!, argv.slice(1), {
    cwd: dir,
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
  child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
  const guard = setTimeout(() => child.kill('SIGKILL'), 45_000);
  return new Promise((resolve) =>
    child.once('close', (code) => {
      clearTimeout(guard);
      const lines = stderr.split('\n').filter((l) => l.trim() !== '');
      resolve({ code, stdout, last: lines.at(-1) ?? '' });
    }),
  );
}

describe('a bad state file stops the real CLI, named, and is left as it was', () => {
  it('newer schema: FABRIC_ERR_STATE_VERSION naming the file and both versions', async () => {
    const dir = tempDir('state-newer');
    const path = join(dir, 'state.db');
    await realState(path);
    const db = new Database(path);
    db.pragma(`user_version = ${STATE_SCHEMA_VERSION + 7}`);
    db.close();
    const before = fingerprint(path);
    const run = await serve(dir, path);
    expect(run.code).toBe(1);
    expect(run.stdout).not.toContain('listening');
    expect(run.last).toMatch(/^agent-fabric: FABRIC_ERR_STATE_VERSION: /);
    expect(run.last).toContain(path);
    expect(run.last).toContain(`version ${STATE_SCHEMA_VERSION + 7}`);
    expect(run.last).toContain(`the ${STATE_SCHEMA_VERSION} this version`);
    expect(fingerprint(path)).toBe(before);
  }, 60_000);

  it('corrupt file: FABRIC_ERR_STATE_STORE naming the file', async () => {
    const dir = tempDir('state-corrupt');
    const path = join(dir, 'state.db');
    await realState(path);
    // Overwrite pages in the middle of a real database (a torn disk, a bad copy).
    const fd = openSync(path, 'r+');
    writeSync(fd, Buffer.alloc(8192, 0xa5), 0, 8192, 8192);
    closeSync(fd);
    const before = fingerprint(path);
    const run = await serve(dir, path);
    expect(run.code).toBe(1);
    expect(run.last).toMatch(/^agent-fabric: FABRIC_ERR_STATE_STORE: state store /);
    expect(run.last).toContain(path);
    expect(fingerprint(path)).toBe(before);
  }, 60_000);

  it('a state file this process may not write: FABRIC_ERR_STATE_STORE naming it, before SQLite makes files', async () => {
    // Before, SQLite opened it read-only without a word, the start went on until the first
    // write and failed with "start-up failed (agents): attempt to write a readonly database"
    // (no path), leaving a read-only -shm behind that kept failing starts once the file's mode
    // was fixed.
    const dir = tempDir('state-read-only');
    const path = join(dir, 'state.db');
    await realState(path);
    if (process.getuid?.() === 0) chownSync(dir, 65534, 65534);
    for (const f of readdirSync(dir))
      if (process.getuid?.() === 0) chownSync(join(dir, f), 65534, 65534);
    chmodSync(path, 0o444);
    const before = fingerprint(path);
    const run = await serve(dir, path, UNPRIVILEGED);
    expect(run.code).toBe(1);
    expect(run.stdout).not.toContain('listening');
    expect(run.last).toMatch(/^agent-fabric: FABRIC_ERR_STATE_STORE: state store /);
    expect(run.last).toContain(path);
    expect(run.last).toContain('cannot be written');
    expect(fingerprint(path)).toBe(before);
    expect(existsSync(`${path}-shm`)).toBe(false);
    expect(existsSync(`${path}-wal`)).toBe(false);
  }, 60_000);

  it('a disk that takes no byte: FABRIC_ERR_STATE_STORE naming the file, and no lock litter', async () => {
    // A file size limit of 0 (`ulimit -f 0`: writes fail with EFBIG, Node ignores SIGXFSZ) is
    // what a full disk does to the lock's first write. Before, each such start left its
    // half-made lock file (`state.db.lock.<id>.tmp`) behind.
    const dir = tempDir('state-no-space');
    const path = join(dir, 'state.db');
    const run = await serve(dir, path, ['bash', '-c', 'ulimit -S -f 0 && exec "$@"', 'bash']);
    expect(run.code).toBe(1);
    expect(run.last).toMatch(/^agent-fabric: FABRIC_ERR_STATE_STORE: state store /);
    expect(run.last).toContain(path);
    expect(run.last).toContain('EFBIG');
    expect(readdirSync(dir).filter((f) => f.startsWith('state.db'))).toEqual([]);
  }, 60_000);

  it('a second sidecar on the same state path: FABRIC_ERR_STATE_LOCKED naming the holder', async () => {
    const dir = tempDir('state-locked');
    const path = join(dir, 'state.db');
    mkdirSync(join(dir, 'second'));
    const holder = await SqliteStore.open(path);
    opened.push(holder);
    holder.setMeta('probe', 'x');
    const before = fingerprint(path);
    const run = await serve(join(dir, 'second'), path);
    expect(run.code).toBe(1);
    expect(run.last).toMatch(/^agent-fabric: FABRIC_ERR_STATE_LOCKED: /);
    expect(run.last).toContain(`pid ${process.pid}`);
    expect(fingerprint(path)).toBe(before);
    expect(holder.getMeta('probe')).toBe('x');
  }, 60_000);
});

describe('SqliteStore.open against hostile files', () => {
  it('random bytes: StateStoreError, unchanged', async () => {
    const path = join(tempDir('state-random'), 'state.db');
    writeFileSync(path, Buffer.from(Array.from({ length: 65536 }, (_, i) => (i * 7919) % 251)));
    const before = fingerprint(path);
    const error = await openError(path);
    expect(error).toBeInstanceOf(StateStoreError);
    expect((error as Error).message).toContain(path);
    expect(fingerprint(path)).toBe(before);
  });

  it('a truncated database: StateStoreError, unchanged', async () => {
    const path = join(tempDir('state-truncated'), 'state.db');
    await realState(path);
    truncateSync(path, 4096 + 100);
    const before = fingerprint(path);
    const error = await openError(path);
    expect(error).toBeInstanceOf(StateStoreError);
    expect(fingerprint(path)).toBe(before);
  });

  it("someone else's SQLite database: refused, unchanged", async () => {
    const path = join(tempDir('state-foreign'), 'app.db');
    const db = new Database(path);
    db.exec('CREATE TABLE users (name TEXT); INSERT INTO users VALUES (1)');
    db.close();
    const before = fingerprint(path);
    const error = await openError(path);
    expect(error).toBeInstanceOf(StateStoreError);
    expect((error as Error).message).toContain('not an Agent Fabric state file');
    expect(fingerprint(path)).toBe(before);
  });

  // Found in review: only a user_version of 0 was checked for tables. Another application's
  // database with user_version 1 or 2 (many applications set it) was opened: SQLite switched it
  // to WAL, our tables were added to it, and a version-1 one was "migrated" to 2 and run on.
  it.each([1, 2])(
    "someone else's SQLite database with user_version %i: refused, unchanged, not ours afterwards",
    async (version) => {
      const path = join(tempDir(`state-foreign-v${version}`), 'app.db');
      const db = new Database(path);
      db.exec("CREATE TABLE users (name TEXT); INSERT INTO users VALUES ('ann')");
      db.pragma(`user_version = ${version}`);
      db.close();
      const before = fingerprint(path);
      const error = await openError(path);
      expect(error).toBeInstanceOf(StateStoreError);
      expect((error as Error).message).toContain('not an Agent Fabric state file');
      expect((error as Error).message).toContain(path);
      expect(fingerprint(path)).toBe(before);
      const after = new Database(path, { readonly: true });
      try {
        expect(after.prepare('SELECT name FROM sqlite_master').all()).toEqual([{ name: 'users' }]);
        expect(after.pragma('user_version', { simple: true })).toBe(version);
        expect(after.pragma('journal_mode', { simple: true })).toBe('delete');
      } finally {
        after.close();
      }
    },
  );

  it('a state file whose tasks table lost a column: refused, unchanged', async () => {
    const path = join(tempDir('state-missing-column'), 'state.db');
    await realState(path);
    const db = new Database(path);
    db.exec('ALTER TABLE tasks DROP COLUMN progress');
    db.pragma('wal_checkpoint(TRUNCATE)');
    db.close();
    const before = fingerprint(path);
    const error = await openError(path);
    expect(error).toBeInstanceOf(StateStoreError);
    expect((error as Error).message).toContain('without column tasks.progress');
    expect(fingerprint(path)).toBe(before);
  });

  it('a record that is not JSON: StateStoreError naming it', async () => {
    const path = join(tempDir('state-badrow'), 'state.db');
    await realState(path);
    const db = new Database(path);
    const id = db.prepare<[], { id: string }>("SELECT id FROM records WHERE kind = 'agent'").get()!
      .id;
    db.prepare('UPDATE records SET data = \'{"id": \' WHERE id = ?').run(id);
    db.close();
    const error = await openError(path);
    expect(error).toBeInstanceOf(StateStoreError);
    expect((error as Error).message).toContain(id);
  });

  // Found in review: task rows edited by hand were taken as they were. Two rows of one task id
  // (the tasks table has no unique id): the later one was used and the earlier kept in the file,
  // to come back as the task once the later row went (retention) — a finished task queued
  // again. Counters out of range (attempt -5, maxAttempts 0, timeoutMs -1, 2.5 attempts) were
  // run with: more attempts than allowed, a timeout before the start.
  it('a task stored twice (a hand edit): StateStoreError naming it and both rows, unchanged', async () => {
    const path = join(tempDir('state-task-twice'), 'state.db');
    const ids = await stateWithTasks(path, 1);
    const db = new Database(path);
    db.prepare(
      "INSERT INTO tasks SELECT 100, id, type, payload, priority, agent_id, pinned, tenant, deadline, timeout_ms, max_attempts, seq, created_at, pool_id, 'COMPLETED', attempt, undelivered, assigned_agent_id, started_at, 5, not_before, result, error, progress, report_mark FROM tasks WHERE id = ?",
    ).run(ids[0]);
    db.pragma('wal_checkpoint(TRUNCATE)');
    db.close();
    const before = fingerprint(path);
    const error = await openError(path);
    expect(error).toBeInstanceOf(StateStoreError);
    expect((error as Error).message).toContain(`${JSON.stringify(ids[0])} is stored twice`);
    expect((error as Error).message).toContain('rows 1 and 100');
    expect(fingerprint(path)).toBe(before);
  });

  it.each([
    ['attempt', -5],
    ['attempt', 2.5],
    ['max_attempts', 0],
    ['max_attempts', 1e308],
    ['timeout_ms', -1],
    ['undelivered', -1],
  ])(
    'a task whose %s is %d (a hand edit): ended FAILED as unreadable, its row kept as it was',
    async (column, value) => {
      const path = join(tempDir(`state-task-${column}`), 'state.db');
      const [id, other] = await stateWithTasks(path, 2);
      const db = new Database(path);
      db.prepare(`UPDATE tasks SET ${column} = ? WHERE id = ?`).run(value, id);
      db.close();
      const store = await SqliteStore.open(path);
      const fabric = new AgentFabric({}, { store: store as never });
      try {
        const task = await fabric.getTask(id!);
        expect(task.status).toBe('FAILED');
        const field = { max_attempts: 'maxAttempts', timeout_ms: 'timeoutMs' }[column] ?? column;
        expect(task.error?.message).toContain(`is not a task record: ${field} must be`);
        expect((await fabric.getTask(other!)).status).toBe('PENDING');
      } finally {
        await fabric.close();
        await store.close();
      }
      const after = new Database(path, { readonly: true });
      try {
        const row = after
          .prepare<[string], Record<string, unknown>>('SELECT * FROM tasks WHERE id = ?')
          .get(id!);
        expect(row?.[column]).toBe(value);
        expect(row?.status).toBe('PENDING');
      } finally {
        after.close();
      }
    },
  );

  it('a folder at the path: StateStoreError', async () => {
    const path = join(tempDir('state-dir'), 'state.db');
    mkdirSync(path);
    expect(await openError(path)).toBeInstanceOf(StateStoreError);
  });

  it('concurrent opens of one path: exactly one wins, the others get StateLockedError', async () => {
    const path = join(tempDir('state-race'), 'state.db');
    const results = await Promise.allSettled(
      Array.from({ length: 8 }, () => SqliteStore.open(path)),
    );
    const won = results.filter((r) => r.status === 'fulfilled');
    const lost = results.filter((r) => r.status === 'rejected');
    expect(won).toHaveLength(1);
    for (const r of won) opened.push(r.value);
    for (const r of lost) expect(r.reason).toBeInstanceOf(StateLockedError);
  });

  it('newer schema through the API: StateVersionError with both versions in details', async () => {
    const path = join(tempDir('state-newer-api'), 'state.db');
    const db = new Database(path);
    db.pragma('user_version = 1000');
    db.close();
    const error = await openError(path);
    expect(error).toBeInstanceOf(StateVersionError);
    expect((error as StateVersionError).details).toMatchObject({
      path,
      fileVersion: 1000,
      knownVersion: STATE_SCHEMA_VERSION,
    });
    // the lock was given back: a store on a good path in the same folder still opens
    const good = await SqliteStore.open(join(path, '..', 'good.db'));
    opened.push(good);
  });
});

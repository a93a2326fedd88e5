/**
 * The state file removed or replaced under a running `agent-fabric serve` (real child process,
 * real SQLite files). SQLite goes on writing into the file it has open, so before, every change
 * after a removal went into a deleted file: readiness said all was well, the clean shutdown
 * exited 0, and the next start made a new, empty state — new agent tokens, budget usage and
 * tasks gone. A file put in its place (another sidecar's) was taken up by the next start.
 *
 * Now the store notices (a check of the path every second, and at shutdown), reports it
 * (`/readyz` state check false, an error line naming the path), and saves its whole state back:
 * to the path when it is free, else beside it (`<path>.detached-<time>`), never over a file
 * someone else put there.
 */
import { copyFileSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, expect, it } from 'vitest';
import { callApi } from '../fixtures/api.js';
import { ADMIN_TOKEN, until } from '../fixtures/gateway/harness.js';
import {
  agentIdOf,
  ENV,
  oneWorkerDir,
  schedule,
  stateReady,
} from '../fixtures/state/one-worker.js';
import { cleanUp, serve, stop } from '../fixtures/state/serve.js';

afterAll(cleanUp);

/** The task ids in the state file at `path` (read-only, beside the live sidecar). */
function tasksIn(path: string): string[] {
  const db = new Database(path, { readonly: true, fileMustExist: true });
  try {
    return db
      .prepare<[], { id: string }>('SELECT id FROM tasks ORDER BY rid')
      .all()
      .map((r) => r.id);
  } finally {
    db.close();
  }
}

function removeState(path: string): void {
  for (const suffix of ['', '-wal', '-shm']) rmSync(`${path}${suffix}`, { force: true });
}

it('saves its state back when the state file is removed while it runs, and never starts empty', async () => {
  const dir = await oneWorkerDir('state-removed');
  const statePath = join(dir, '.fabric', 'state.db');
  const first = await serve(dir, ENV);
  const agentId = agentIdOf(first);
  const t1 = await schedule(first, agentId, 1);
  expect(await stateReady(first)).toBe(true);

  // Removed while it runs (with its WAL and shared memory, as `rm state.db*` does).
  removeState(statePath);
  const t2 = await schedule(first, agentId, 2);
  await until(() => first.err().includes('was removed'), 20_000);
  expect(first.err()).toContain(statePath);
  expect(await stateReady(first)).toBe(false);
  // Saved back at once: the path holds the whole state again, not an empty file.
  expect(tasksIn(statePath)).toEqual([t1, t2]);

  // Changes go on; the clean shutdown saves them back too.
  const t3 = await schedule(first, agentId, 3);
  expect(await stop(first, 'SIGTERM')).toBe(0);
  expect(tasksIn(statePath)).toEqual([t1, t2, t3]);

  // The next start is the same fabric: same agent token, the tasks still there.
  const second = await serve(dir, ENV);
  expect(second.token).toBe(first.token);
  expect(await stateReady(second)).toBe(true);
  const listed = await callApi(second.url, 'FabricService/ListTasks', {}, ADMIN_TOKEN);
  const ids = ((await listed.json()) as { tasks: { taskId: string }[] }).tasks.map((t) => t.taskId);
  expect(ids.sort()).toEqual([t1, t2, t3].sort());

  // Replaced while it runs (another sidecar's file put in its place): the replacement is left
  // byte for byte as it is, this sidecar's state is saved beside it, and the stop says so.
  const t4 = await schedule(second, agentId, 4);
  const other = join(dir, 'other.db');
  const odb = new Database(other);
  odb.exec('CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)');
  odb.close();
  const otherBytes = readFileSync(other);
  removeState(statePath);
  copyFileSync(other, statePath);
  await until(() => second.err().includes('was replaced'), 20_000);
  expect(await stateReady(second)).toBe(false);
  const t5 = await schedule(second, agentId, 5);
  expect(await stop(second, 'SIGTERM')).not.toBe(0);
  expect(second.err()).toContain('.detached-');
  expect(readFileSync(statePath).equals(otherBytes)).toBe(true);
  const saved = readdirSync(join(dir, '.fabric')).filter((f) =>
    /^state\.db\.detached-.*\.db$/.test(f),
  );
  expect(saved).toHaveLength(1);
  expect(tasksIn(join(dir, '.fabric', saved[0]!))).toEqual([t1, t2, t3, t4, t5]);
}, 120_000);

it('moves the WAL into the file when the -wal and -shm files are removed while it runs, so a kill -9 loses nothing', async () => {
  // SQLite keeps both open: before, every change since the last checkpoint (at first, the whole
  // schema) lived only in a removed file, and a crash lost it — the next start found a file
  // without its tables.
  const dir = await oneWorkerDir('state-wal-removed');
  const statePath = join(dir, '.fabric', 'state.db');
  const first = await serve(dir, ENV);
  const agentId = agentIdOf(first);
  const t1 = await schedule(first, agentId, 1);
  rmSync(`${statePath}-wal`);
  rmSync(`${statePath}-shm`);
  await until(
    () =>
      first.err().includes('-wal and -shm files were removed while in use: its content was moved'),
    20_000,
  );
  const t2 = await schedule(first, agentId, 2);
  expect(await stateReady(first)).toBe(true);
  await stop(first, 'SIGKILL');

  const second = await serve(dir, ENV);
  expect(second.token).toBe(first.token);
  const listed = await callApi(second.url, 'FabricService/ListTasks', {}, ADMIN_TOKEN);
  const ids = ((await listed.json()) as { tasks: { taskId: string }[] }).tasks.map((t) => t.taskId);
  expect(ids.sort()).toEqual([t1, t2].sort());
  expect(await stop(second, 'SIGTERM')).toBe(0);
}, 120_000);

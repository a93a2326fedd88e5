/**
 * The whole state folder (`.fabric/`: the state file, its `-wal`/`-shm` and its lock
 * `<path>.lock`) removed under a running `agent-fabric serve` (real child processes, real
 * SQLite files). The sidecar saves its state back to the path (see state-file-removed.test.ts),
 * and now makes its lock again too, with its own identity: before, the lock stayed gone, and a
 * second sidecar started on the same path opened the saved-back file beside the first — two
 * writers on one state. Now the second is refused with FABRIC_ERR_STATE_LOCKED, and the first's
 * clean shutdown leaves the state at the path and no lock behind. The lock removed alone (the
 * state file left in place: a clean-up of "stale" lock files) is made again the same way.
 */
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, expect, it } from 'vitest';
import { callApi } from '../fixtures/api.js';
import { ADMIN_TOKEN, DEFAULT_ALLOW, tempDir, until } from '../fixtures/gateway/harness.js';
import { cleanUp, freePort, serve, spawnServe, stop } from '../fixtures/state/serve.js';

afterAll(cleanUp);

const ENV = { FABRIC_ADMIN_TOKEN: ADMIN_TOKEN };

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

async function writeConfig(dir: string, statePath: string): Promise<void> {
  writeFileSync(
    join(dir, 'fabric.json'),
    JSON.stringify({
      http: { host: '127.0.0.1', port: await freePort() },
      state: { path: statePath },
      policies: [DEFAULT_ALLOW],
      agents: [{ name: 'worker' }],
    }),
  );
}

it('makes its lock again when it saves its state back, so a second sidecar is refused', async () => {
  const root = tempDir('state-folder-removed');
  const stateDir = join(root, '.fabric');
  const statePath = join(stateDir, 'state.db');
  const lockPath = `${statePath}.lock`;
  const firstDir = join(root, 'first');
  const secondDir = join(root, 'second');
  for (const d of [firstDir, secondDir]) {
    rmSync(d, { recursive: true, force: true });
    mkdirSync(d);
    await writeConfig(d, statePath);
  }

  const first = await serve(firstDir, ENV);
  const agentId = /agent token:\s+\S+\s+\(worker, ([0-9a-f-]+)\)/.exec(first.out)![1]!;
  const res = await callApi(
    first.url,
    'FabricService/ScheduleTask',
    { agentId, taskType: 't', payload: { n: 1 } },
    ADMIN_TOKEN,
  );
  expect(res.status).toBe(200);
  const t1 = ((await res.json()) as { task: { taskId: string } }).task.taskId;
  expect(JSON.parse(readFileSync(lockPath, 'utf8'))).toMatchObject({ pid: first.child.pid });

  // The whole folder, lock and all.
  rmSync(stateDir, { recursive: true, force: true });
  await until(() => first.err().includes('was removed'), 20_000);
  expect(tasksIn(statePath)).toEqual([t1]);
  // Its lock is back, naming this sidecar.
  expect(JSON.parse(readFileSync(lockPath, 'utf8'))).toMatchObject({ pid: first.child.pid });

  // A second sidecar on the same path is kept out, and the state file is left as it was.
  const second = spawnServe(secondDir, ENV);
  const code = await new Promise<number | null>((resolve) =>
    second.child.once('exit', (c) => resolve(c)),
  );
  expect(code).not.toBe(0);
  expect(second.err()).toContain('FABRIC_ERR_STATE_LOCKED');
  expect(tasksIn(statePath)).toEqual([t1]);

  // The first's clean shutdown saves its state to the path again and releases the lock.
  expect(await stop(first, 'SIGTERM')).toBe(0);
  expect(tasksIn(statePath)).toEqual([t1]);
  expect(existsSync(lockPath)).toBe(false);
}, 120_000);

it('makes its lock again when the lock file alone is removed, so a second sidecar is refused', async () => {
  const root = tempDir('state-lock-removed');
  const statePath = join(root, '.fabric', 'state.db');
  const lockPath = `${statePath}.lock`;
  const firstDir = join(root, 'first');
  const secondDir = join(root, 'second');
  for (const d of [firstDir, secondDir]) {
    mkdirSync(d);
    await writeConfig(d, statePath);
  }
  const first = await serve(firstDir, ENV);
  rmSync(lockPath);
  await until(() => first.err().includes('was made again'), 20_000);
  expect(first.err()).toContain(lockPath);
  expect(JSON.parse(readFileSync(lockPath, 'utf8'))).toMatchObject({ pid: first.child.pid });

  const second = spawnServe(secondDir, ENV);
  const code = await new Promise<number | null>((resolve) =>
    second.child.once('exit', (c) => resolve(c)),
  );
  expect(code).not.toBe(0);
  expect(second.err()).toContain('FABRIC_ERR_STATE_LOCKED');

  expect(await stop(first, 'SIGTERM')).toBe(0);
  expect(existsSync(lockPath)).toBe(false);
  expect(existsSync(statePath)).toBe(true);
}, 120_000);

/**
 * The state file holds what lets anyone act as any agent: the key the start-up agents'
 * credentials are derived from (HMAC of it), credential hashes, tasks' payloads, approvals'
 * copies of arguments. SQLite writes every commit to `<state>-wal` first and keeps its index in
 * `<state>-shm`, both beside the file for as long as the sidecar runs: they must be as private
 * as the file. Before: the file was chmod'ed to 0600 after SQLite had made both under the
 * process umask (0644), and the default `.fabric` folder is 0755, so any local user could read
 * the WAL of a first run — the start-up key included — and derive every start-up agent's token.
 */
import { chmodSync, copyFileSync, existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import { SqliteStore } from '../../src/store/sqlite-store.js';
import { closeSidecar, startTestSidecar, tempDir } from '../fixtures/gateway/harness.js';

describe('the files of a new state file', () => {
  const path = join(tempDir('state-modes'), 'state.db');
  let sidecar: Sidecar;

  beforeAll(async () => {
    sidecar = await startTestSidecar({
      state: { path },
      agents: [{ name: 'a1' }, { name: 'a2' }],
    });
  });

  afterAll(async () => {
    await closeSidecar(sidecar);
  });

  it('are readable by their owner only while the sidecar runs, the WAL included', () => {
    // The WAL holds the commits of this run (the start-up key among them) until a checkpoint.
    expect(existsSync(`${path}-wal`)).toBe(true);
    expect(readFileSync(`${path}-wal`).length).toBeGreaterThan(0);
    for (const file of [path, `${path}-wal`, `${path}-shm`]) {
      expect({ file, mode: statSync(file).mode & 0o777 }).toEqual({ file, mode: 0o600 });
    }
  });
});

describe('a WAL an earlier version left readable beside a state file (its crash image)', () => {
  it('is made as private as the file when the store opens, and keeps its commits', async () => {
    const live = join(tempDir('state-modes-live'), 'state.db');
    const store = await SqliteStore.open(live);
    store.setMeta('k', 'v');
    const copy = join(tempDir('state-modes-crash'), 'state.db');
    // A copy of the three files of an open store is what a kill -9 leaves.
    for (const suffix of ['', '-wal', '-shm']) {
      copyFileSync(`${live}${suffix}`, `${copy}${suffix}`);
      chmodSync(`${copy}${suffix}`, suffix === '' ? 0o600 : 0o644);
    }
    await store.close();
    const reopened = await SqliteStore.open(copy);
    try {
      expect(reopened.getMeta('k')).toBe('v');
      for (const file of [copy, `${copy}-wal`, `${copy}-shm`]) {
        expect({ file, mode: statSync(file).mode & 0o777 }).toEqual({ file, mode: 0o600 });
      }
    } finally {
      await reopened.close();
    }
  });
});

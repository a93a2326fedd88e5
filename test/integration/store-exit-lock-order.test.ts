/**
 * The state store commits what is pending at the process's `exit` event (a handler calling
 * `process.exit`, an uncaught exception). The lock file's own `exit` handler, installed when the
 * first lock of the process was taken — before any store's — ran first: the lock was gone while
 * the last changes were still only in memory, so another sidecar could take the lock and read
 * the file without them (and the late commit then landed under its feet). The commit now runs
 * before the lock goes. Real child process, real SQLite file and lock file.
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import Database from 'better-sqlite3';
import { describe, expect, it } from 'vitest';
import { tempDir } from '../fixtures/gateway/harness.js';

const CHILD = fileURLToPath(new URL('../fixtures/store/exit-lock-order-child.ts', import.meta.url));

describe('SqliteStore commit at exit', () => {
  it('is on disk before the lock file goes', () => {
    const state = join(tempDir('store-exit-lock'), 'state.db');
    const r = spawnSync(process.execPath, ['--import', 'tsx', CHILD, state], {
      encoding: 'utf8',
      timeout: 60_000,
    });
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout.trim()).toBe('lock released, change on disk');
    expect(existsSync(`${state}.lock`)).toBe(false);
    const db = new Database(state, { readonly: true });
    try {
      const row = db.prepare("SELECT data FROM records WHERE kind = 'agent' AND id = 'a1'").get();
      expect(JSON.parse((row as { data: string }).data)).toMatchObject({ name: 'w' });
    } finally {
      db.close();
    }
  });
});

import { existsSync, utimesSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { HookStoreError, HookStoreLockedError } from '../../src/errors.js';
import { HOOK_LOCK_FILE, HookManager, HookStatus } from '../../src/hooks/index.js';
import {
  committedHook,
  exited,
  spawnFixture,
  tempDir,
  waitForLine,
  type TempDir,
} from '../fixtures/hooks/temp-store.js';

let dir: TempDir;
const managers: HookManager[] = [];

beforeEach(async () => {
  dir = await tempDir();
});

afterEach(async () => {
  await Promise.all(managers.splice(0).map((m) => m.close()));
  await dir.cleanup();
});

async function openManager(): Promise<HookManager> {
  const m = await HookManager.open({ storagePath: dir.path, useGitWorktree: false });
  managers.push(m);
  return m;
}

async function lockError(): Promise<HookStoreLockedError> {
  const m = new HookManager({ storagePath: dir.path, useGitWorktree: false });
  try {
    await m.open();
  } catch (err) {
    expect(err).toBeInstanceOf(HookStoreLockedError);
    return err as HookStoreLockedError;
  }
  managers.push(m);
  throw new Error('expected HookStoreLockedError');
}

describe('hook store lock', () => {
  it('keeps a second manager in the same process out until the first closes', async () => {
    const first = await openManager();
    const h = await first.createHook({ agentId: 'a', workItem: 1 });
    const err = await lockError();
    expect(err.details).toMatchObject({ pid: process.pid, hostname: hostname() });
    expect(err.message).toMatch(/this process/);
    await first.close();
    const second = await openManager();
    expect((await second.getHook(h.hookId)).status).toBe(HookStatus.PENDING);
  });

  it('keeps a second sidecar out, naming the holder; takes over once the holder is killed', async () => {
    await (await openManager()).close(); // create the repository
    const child = spawnFixture('hold-lock', [dir.path]);
    try {
      const [, pid] = await waitForLine(child, /^ready (\d+)$/);
      const err = await lockError();
      expect(err.code).toBe('FABRIC_ERR_HOOK_STORE_LOCKED');
      expect(err.details).toMatchObject({
        pid: Number(pid),
        hostname: hostname(),
        lockPath: join(dir.path, '.git', HOOK_LOCK_FILE),
      });
      expect(err.message).toContain(`pid ${pid} on ${hostname()}`);
    } finally {
      child.kill('SIGKILL');
      await exited(child);
    }
    // The holder died without releasing: its lock is stale and is taken over.
    const m = await openManager();
    expect(await m.listHooks()).toEqual([]);
  });

  it('keeps out a sidecar of another pid namespace on this host whose pid is alive here', async () => {
    // A container sharing the host's name (--network host) and the store's folder: its pid 1
    // is pid 1 here too, another process started at another time. Judging the holder by the
    // start time of what has its pid here took its live lock over (two stores on one file).
    await (await openManager()).close();
    const child = spawnFixture('hold-lock', [dir.path], {}, [
      'unshare',
      '--user',
      '--map-root-user',
      '--pid',
      '--fork',
      '--mount-proc',
      '--kill-child',
    ]);
    try {
      const [, pid] = await waitForLine(child, /^ready (\d+)$/);
      expect(pid).toBe('1');
      const err = await lockError();
      expect(err.details).toMatchObject({ pid: 1, hostname: hostname() });
    } finally {
      child.kill('SIGKILL');
      await exited(child);
    }
  });

  it('releases the lock when the holder closes cleanly', async () => {
    await (await openManager()).close();
    const child = spawnFixture('hold-lock', [dir.path]);
    await waitForLine(child, /^ready/);
    child.kill('SIGTERM');
    expect((await exited(child)).code).toBe(0);
    await openManager();
  });

  it('never breaks a lock held from another host', async () => {
    await (await openManager()).close();
    const lockPath = join(dir.path, '.git', HOOK_LOCK_FILE);
    const holder = {
      pid: 1,
      hostname: 'other-host',
      startedAt: '2020-01-01T00:00:00.000Z',
      instance: 'x',
    };
    await writeFile(lockPath, JSON.stringify(holder));
    const err = await lockError();
    expect(err.details).toMatchObject({ pid: 1, hostname: 'other-host' });
    expect(err.message).toMatch(/remove the lock file/);
  });

  it('takes over a lock of a dead pid on this host, and a stale ref lock', async () => {
    await (await openManager()).close();
    const gitDir = join(dir.path, '.git');
    const dead = { pid: 2 ** 22 + 12345, hostname: hostname(), startedAt: 'then', instance: 'y' };
    await writeFile(join(gitDir, HOOK_LOCK_FILE), JSON.stringify(dead));
    // As if a git update-ref had been killed between taking its lock and committing.
    await mkdir(join(gitDir, 'refs', 'fabric'), { recursive: true });
    await writeFile(join(gitDir, 'refs', 'fabric', 'hooks.lock'), '');
    const m = await openManager();
    const h = await m.createHook({ agentId: 'a', workItem: 1 });
    expect(h.status).toBe(HookStatus.PENDING);
  });

  it('clears a ref lock left while it runs once it is old, and leaves a fresh one to its holder', async () => {
    // A git killed between taking the state ref's lock and committing (OOM killer, an agent's
    // `git update-ref` in a worktree killed half-way) while the sidecar runs. Before, only a
    // restart cleared it: every transition failed until then.
    const m = await openManager();
    const h = await m.createHook({ agentId: 'a', workItem: 1 });
    const removed: Array<{ path: string; ageMs: number }> = [];
    m.on('store.ref_lock_removed', (e) => removed.push(e));
    const refLock = join(dir.path, '.git', 'refs', 'fabric', 'hooks.lock');

    // Fresh: another git may be in the middle of its update; the transition fails, typed.
    await writeFile(refLock, '');
    await expect(m.activateHook(h.hookId)).rejects.toBeInstanceOf(HookStoreError);
    expect(existsSync(refLock)).toBe(true);
    expect((await m.getHook(h.hookId)).status).toBe(HookStatus.PENDING);

    // Left behind (older than any update takes): removed, reported, and the transition goes on.
    const then = new Date(Date.now() - 3_600_000);
    utimesSync(refLock, then, then);
    const active = await m.activateHook(h.hookId);
    expect(active.status).toBe(HookStatus.ACTIVE);
    expect(existsSync(refLock)).toBe(false);
    expect(removed).toHaveLength(1);
    expect(removed[0]!.path).toBe(refLock);
    expect(removed[0]!.ageMs).toBeGreaterThan(3_000_000);
    expect(committedHook(dir.path, h.hookId)).toMatchObject({ status: 'ACTIVE' });
  });
});

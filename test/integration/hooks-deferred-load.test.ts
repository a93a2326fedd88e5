/**
 * Opening reads only the hooks that are not finished; finished ones are read when asked for.
 * Real git stores in temp dirs, a real child process killed with SIGKILL. That open read no
 * finished record is shown by the object store: the record's loose object is moved away before
 * the open (an open that read it would fail), and put back before it is asked for.
 */
import { execFileSync } from 'node:child_process';
import { renameSync } from 'node:fs';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { HookStoreError } from '../../src/errors.js';
import { hookShard } from '../../src/hooks/hook-id.js';
import { HOOKS_REF, HookManager, HookStatus, type Hook } from '../../src/hooks/index.js';
import {
  exited,
  git,
  hookObjectPath,
  spawnFixture,
  tempDir,
  waitForLine,
  type TempDir,
} from '../fixtures/hooks/temp-store.js';

let dir: TempDir;

beforeEach(async () => {
  dir = await tempDir();
});

afterEach(async () => {
  await dir.cleanup();
});

const open = (extra: { finishedRetention?: number } = {}): Promise<HookManager> =>
  HookManager.open({
    storagePath: dir.path,
    useGitWorktree: false,
    maintenanceIntervalSeconds: 0,
    ...extra,
  });

/** Paths in the state ref's tree. */
const treePaths = (): string[] =>
  git(dir.path, 'ls-tree', '-r', '--name-only', HOOKS_REF).split('\n').filter(Boolean);

describe('hooks: finished hooks are read on demand', () => {
  it('a crash with 1,000 finished hooks and 3 pending: the 3 are picked up; open reads no finished record', async () => {
    const FINISHED = 1000;
    const child = spawnFixture('finished-then-wait', [dir.path, String(FINISHED), '3']);
    const [, firstDone] = await waitForLine(child, /^ready (\S+)$/);
    child.kill('SIGKILL');
    expect((await exited(child)).signal).toBe('SIGKILL');

    const object = hookObjectPath(dir.path, firstDone!);
    renameSync(object, `${object}.away`);
    const hooks = await open();
    try {
      for (let i = 0; i < 3; i++) {
        const mine = await hooks.hookFor(`pending-${i}`);
        expect(mine?.status).toBe(HookStatus.PENDING);
        expect(mine?.workItem).toEqual({ pending: i });
      }
      const watched = await hooks.checkPendingHooks();
      expect(watched.map((h) => h.agentId).sort()).toEqual(['pending-0', 'pending-1', 'pending-2']);
      // Asked for, the record is read, and its absence is a clear error that changes nothing.
      await expect(hooks.getHook(firstDone!)).rejects.toBeInstanceOf(HookStoreError);
      await expect(hooks.listHooks({ status: HookStatus.COMPLETED })).rejects.toBeInstanceOf(
        HookStoreError,
      );
      renameSync(`${object}.away`, object);
      const done = await hooks.getHook(firstDone!);
      expect(done.status).toBe(HookStatus.COMPLETED);
      expect(done.result).toEqual({ ok: 0 });
      const completed = await hooks.listHooks({ status: HookStatus.COMPLETED });
      expect(completed).toHaveLength(FINISHED);
      expect(completed[0]!.hookId).toBe(firstDone);
      expect(await hooks.listHooks()).toHaveLength(FINISHED + 3);
      // The pending work runs on.
      const work = (await hooks.hookFor('pending-1'))!;
      await hooks.activateHook(work.hookId, { agentId: 'pending-1' });
      await hooks.completeHook(work.hookId, { done: true }, { agentId: 'pending-1' });
    } finally {
      await hooks.close();
    }
  }, 180_000);

  it('after open, a finished hook reads, lists, reassigns and is trimmed as before', async () => {
    let hooks = await open({ finishedRetention: 3 });
    const made: Hook[] = [];
    for (let i = 0; i < 5; i++) {
      made.push(await hooks.createHook({ agentId: `agent-${i % 2}`, workItem: { i } }));
      await hooks.activateHook(made[i]!.hookId);
    }
    await hooks.completeHook(made[0]!.hookId, { ok: 0 });
    await hooks.failHook(made[1]!.hookId, { message: 'broke' });
    await hooks.completeHook(made[2]!.hookId, { ok: 2 });
    await hooks.abandonHook(made[3]!.hookId, 'lost');
    const before = await hooks.listHooks();
    const byAgent = await hooks.listHooks({ agentId: 'agent-0' });
    await hooks.close();

    hooks = await open({ finishedRetention: 3 });
    try {
      expect(await hooks.getHook(made[0]!.hookId)).toEqual(before[0]);
      expect(await hooks.listHooks({ status: HookStatus.FAILED })).toEqual([before[1]]);
      expect(await hooks.listHooks({ agentId: 'agent-0' })).toEqual(byAgent);
      expect(await hooks.listHooks()).toEqual(before);
      await hooks.close();

      // Each on a fresh open (nothing read yet): the FAILED hook is reassigned; a finish
      // past the limit drops the one that finished first.
      hooks = await open({ finishedRetention: 3 });
      const again = await hooks.reassignHook(made[1]!.hookId, 'agent-9');
      expect(again.status).toBe(HookStatus.PENDING);
      await hooks.close();
      hooks = await open({ finishedRetention: 3 });
      await hooks.completeHook(made[4]!.hookId, { ok: 4 });
      await hooks.activateHook(made[1]!.hookId);
      await hooks.completeHook(made[1]!.hookId, { ok: 1 });
      const finished = await hooks.listHooks({
        status: [HookStatus.COMPLETED, HookStatus.FAILED],
      });
      expect(finished.map((h) => h.hookId)).toEqual(
        [made[1], made[2], made[4]].map((h) => h!.hookId),
      );
      await expect(hooks.getHook(made[0]!.hookId)).rejects.toMatchObject({
        code: 'FABRIC_ERR_HOOK_NOT_FOUND',
      });
    } finally {
      await hooks.close();
    }
  }, 120_000);

  it('a store whose shards an older version rewrote (no index entries) is read whole, then indexed', async () => {
    let hooks = await open();
    const open1 = await hooks.createHook({ agentId: 'a', workItem: { open: true } });
    const done = await hooks.createHook({ agentId: 'b', workItem: { open: false } });
    await hooks.activateHook(done.hookId);
    await hooks.completeHook(done.hookId, null);
    await hooks.close();
    expect(treePaths().some((p) => p.endsWith('.live'))).toBe(true);

    // What a version from before the index writes: the records alone.
    const index = `${dir.path}/.git/older-version-index`;
    const env = { ...process.env, GIT_INDEX_FILE: index };
    const run = (...args: string[]): string =>
      execFileSync('git', args, { cwd: dir.path, env, encoding: 'utf8' }).trim();
    run('read-tree', HOOKS_REF);
    const extra = treePaths().filter((p) => p.startsWith('hooks/') && !p.endsWith('.json'));
    run('rm', '--cached', '--quiet', ...extra);
    const tree = run('write-tree');
    const head = git(dir.path, 'rev-parse', HOOKS_REF);
    const commit = git(dir.path, 'commit-tree', tree, '-p', head, '-m', 'older version');
    git(dir.path, 'update-ref', HOOKS_REF, commit, head);
    execFileSync('rm', ['-f', index]);
    expect(treePaths().some((p) => p.endsWith('.live') || p.endsWith('.index'))).toBe(false);

    hooks = await open();
    try {
      expect((await hooks.hookFor('a'))?.hookId).toBe(open1.hookId);
      await hooks.activateHook(open1.hookId);
      expect(treePaths()).toContain(`hooks/${hookShard(open1.hookId)}/${open1.hookId}.live`);
      expect((await hooks.getHook(done.hookId)).status).toBe(HookStatus.COMPLETED);
    } finally {
      await hooks.close();
    }
  }, 60_000);
});

/**
 * A sidecar killed while `createHook` made the hook's worktree leaves a folder (and git's record
 * of it) for a hook that was never committed: no caller was told of it, and its branch stayed
 * checked out there, so the caller's retry on the same branch failed for good, with git's
 * "Preparing worktree" line as the reason. The store now removes such folders when it opens.
 * A folder of a hook that was in the store (finished, then dropped by `finishedRetention`) and
 * holds changes git would lose is kept and announced (`store.worktree_kept`), not forced out.
 * Real git, real repositories in temp dirs.
 */
import { existsSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { HookManager, type WorktreeKeptEvent } from '../../src/hooks/index.js';
import { generateHookId } from '../../src/hooks/hook-id.js';
import { git, tempDir, type TempDir } from '../fixtures/hooks/temp-store.js';

let dir: TempDir;
let hooks: HookManager | undefined;

afterEach(async () => {
  await hooks?.close();
  hooks = undefined;
  await dir?.cleanup();
});

describe('a worktree left by a create cut short', () => {
  it('is removed when the store opens; the retried create on the same branch works', async () => {
    dir = await tempDir('hooks-orphan-');
    hooks = await HookManager.open({ storagePath: dir.path, useGitWorktree: true });
    const kept = await hooks.createHook({ agentId: 'a', workItem: 1, branch: 'agent/kept' });
    await hooks.close();
    hooks = undefined;
    // What the crashed create left: a worktree on a new branch, under a hook id never committed.
    const orphan = join(dir.path, '.worktrees', generateHookId(Date.now()));
    git(dir.path, 'worktree', 'add', '-q', '-b', 'agent/retry-me', orphan);
    await writeFile(join(orphan, 'half.txt'), 'half');

    hooks = await HookManager.open({ storagePath: dir.path, useGitWorktree: true });
    expect(existsSync(orphan)).toBe(false);
    expect(git(dir.path, 'worktree', 'list')).not.toContain(orphan);
    // The hook that was committed keeps its worktree; the branch of the orphan is kept.
    expect(existsSync(kept.worktreePath!)).toBe(true);
    expect(git(dir.path, 'branch', '--list', 'agent/retry-me')).toContain('agent/retry-me');
    const retried = await hooks.createHook({ agentId: 'a', workItem: 2, branch: 'agent/retry-me' });
    expect(existsSync(retried.worktreePath!)).toBe(true);
  });

  it("a branch checked out elsewhere is refused with git's reason", async () => {
    dir = await tempDir('hooks-busy-branch-');
    hooks = await HookManager.open({ storagePath: dir.path, useGitWorktree: true });
    await hooks.createHook({ agentId: 'a', workItem: 1, branch: 'agent/busy' });
    await expect(
      hooks.createHook({ agentId: 'b', workItem: 2, branch: 'agent/busy' }),
    ).rejects.toThrow(/fatal: 'agent\/busy' is already checked out/);
  });
});

describe('a worktree of a finished hook dropped by finishedRetention', () => {
  it('is kept (and announced) when it holds uncommitted work; removed when clean', async () => {
    dir = await tempDir('hooks-dropped-worktree-');
    // Completed worktrees kept at completion, so that retention is what removes the clean one.
    const options = {
      storagePath: dir.path,
      useGitWorktree: true,
      finishedRetention: 1,
      removeCompletedWorktrees: false,
    };
    hooks = await HookManager.open(options);
    const finish = async (workItem: number) => {
      const h = await hooks!.createHook({ agentId: 'a', workItem, branch: `agent/w${workItem}` });
      await hooks!.activateHook(h.hookId, { agentId: 'a' });
      return h;
    };
    const dirty = await finish(1);
    const clean = await finish(2);
    // The agent's work, not committed yet, in the first hook's worktree.
    await writeFile(join(dirty.worktreePath!, 'unsaved.txt'), "an agent's work");
    await hooks.completeHook(dirty.hookId, 'ok', { agentId: 'a' });
    await hooks.completeHook(clean.hookId, 'ok', { agentId: 'a' });
    const last = await finish(3);
    await hooks.completeHook(last.hookId, 'ok', { agentId: 'a' });
    await hooks.close();

    hooks = new HookManager(options);
    const kept: WorktreeKeptEvent[] = [];
    hooks.on('store.worktree_kept', (e) => kept.push(e));
    await hooks.open();
    // Both were dropped from the store; only the clean folder went.
    expect((await hooks.listHooks()).map((h) => h.hookId)).toEqual([last.hookId]);
    expect(existsSync(join(dirty.worktreePath!, 'unsaved.txt'))).toBe(true);
    expect(kept).toEqual([{ hookId: dirty.hookId, path: dirty.worktreePath! }]);
    expect(existsSync(clean.worktreePath!)).toBe(false);
    expect(existsSync(last.worktreePath!)).toBe(true);
  });
});

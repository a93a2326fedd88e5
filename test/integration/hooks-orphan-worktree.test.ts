/**
 * A sidecar killed while `createHook` made the hook's worktree leaves a folder (and git's record
 * of it) for a hook that was never committed: no caller was told of it, and its branch stayed
 * checked out there, so the caller's retry on the same branch failed for good, with git's
 * "Preparing worktree" line as the reason. The store now removes such folders when it opens.
 * Real git, real repositories in temp dirs.
 */
import { existsSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { HookManager } from '../../src/hooks/index.js';
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

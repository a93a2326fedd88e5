import { existsSync } from 'node:fs';
import { readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { HookStateError, HookWorktreeError, InvalidArgumentError } from '../../src/errors.js';
import { HOOKS_REF, HookManager, HookStatus } from '../../src/hooks/index.js';
import { git, tempDir, type TempDir } from '../fixtures/hooks/temp-store.js';

let dir: TempDir;
let hooks: HookManager;

beforeEach(async () => {
  dir = await tempDir();
  hooks = await HookManager.open({ storagePath: dir.path, useGitWorktree: true });
});

afterEach(async () => {
  await hooks.close();
  await dir.cleanup();
});

async function rejection(p: Promise<unknown>): Promise<unknown> {
  try {
    await p;
  } catch (err) {
    return err;
  }
  throw new Error('expected a rejection');
}

describe('hook worktrees', () => {
  it('creates a worktree per hook on its branch, out of the state ref and of git status', async () => {
    const hook = await hooks.createHook({
      agentId: 'agent-1',
      workItem: { task: 'refactor' },
      branch: 'agent/refactor-123',
    });
    expect(hook.worktreePath).toBe(join(dir.path, '.worktrees', hook.hookId));
    expect(hook.baseCommit).toBe(git(dir.path, 'rev-parse', 'HEAD'));
    expect(git(hook.worktreePath!, 'rev-parse', '--abbrev-ref', 'HEAD')).toBe('agent/refactor-123');
    expect(git(dir.path, 'status', '--porcelain')).toBe('');
    expect(git(dir.path, 'ls-tree', '-r', '--name-only', HOOKS_REF)).not.toMatch(/worktrees/);
    expect(await hooks.inspectWorktree(hook.hookId)).toEqual({
      hookId: hook.hookId,
      path: hook.worktreePath,
      exists: true,
      valid: true,
      dirty: false,
      branch: 'agent/refactor-123',
      head: hook.baseCommit,
    });
  });

  it('keeps the worktree and its uncommitted work across abandon and reassign', async () => {
    const hook = await hooks.createHook({ agentId: 'a', workItem: 1, branch: 'agent/wip' });
    await hooks.activateHook(hook.hookId);
    const wip = join(hook.worktreePath!, 'half-done.txt');
    await writeFile(wip, 'uncommitted work');
    await hooks.abandonHook(hook.hookId, 'agent a crashed');
    const moved = await hooks.reassignHook(hook.hookId, 'b');
    expect(moved.worktreePath).toBe(hook.worktreePath);
    expect(await readFile(wip, 'utf8')).toBe('uncommitted work');
    expect(await hooks.inspectWorktree(hook.hookId)).toMatchObject({ exists: true, dirty: true });

    // …and across a sidecar restart.
    await hooks.close();
    hooks = await HookManager.open({ storagePath: dir.path, useGitWorktree: true });
    const mine = await hooks.hookFor('b');
    expect(mine?.hookId).toBe(hook.hookId);
    expect(await readFile(join(mine!.worktreePath!, 'half-done.txt'), 'utf8')).toBe(
      'uncommitted work',
    );
  });

  it('reports a missing or broken worktree instead of crashing', async () => {
    const a = await hooks.createHook({ agentId: 'a', workItem: 1, branch: 'agent/a' });
    const b = await hooks.createHook({ agentId: 'a', workItem: 2, branch: 'agent/b' });
    await rm(a.worktreePath!, { recursive: true, force: true });
    expect(await hooks.inspectWorktree(a.hookId)).toMatchObject({
      exists: false,
      valid: false,
      branch: null,
      head: null,
    });
    // Without its .git file the folder is not a worktree; git must not report the store instead.
    await rm(join(b.worktreePath!, '.git'));
    expect(await hooks.inspectWorktree(b.hookId)).toMatchObject({
      exists: true,
      valid: false,
      dirty: false,
    });
    // Transitions still work.
    await hooks.activateHook(a.hookId);
  });

  it('reuses an existing branch, and refuses one checked out elsewhere without committing', async () => {
    git(dir.path, 'branch', 'existing');
    const reuse = await hooks.createHook({ agentId: 'a', workItem: 1, branch: 'existing' });
    expect((await hooks.inspectWorktree(reuse.hookId)).branch).toBe('existing');
    const commits = git(dir.path, 'rev-list', '--count', HOOKS_REF);
    const err = await rejection(
      hooks.createHook({ agentId: 'a', workItem: 2, branch: 'existing' }),
    );
    expect(err).toBeInstanceOf(HookWorktreeError);
    expect((err as HookWorktreeError).details).toMatchObject({ branch: 'existing' });
    expect(git(dir.path, 'rev-list', '--count', HOOKS_REF)).toBe(commits);
    expect(await hooks.listHooks()).toHaveLength(1);
  });

  it('requires a valid branch when worktrees are used', async () => {
    expect(await rejection(hooks.createHook({ agentId: 'a', workItem: 1 }))).toBeInstanceOf(
      InvalidArgumentError,
    );
    expect(
      await rejection(hooks.createHook({ agentId: 'a', workItem: 1, branch: 'x/../../y' })),
    ).toBeInstanceOf(InvalidArgumentError);
    expect(existsSync(join(dir.path, '.worktrees'))).toBe(false);
  });

  it('branches from baseBranch and removes worktrees of finished hooks on request', async () => {
    await hooks.close();
    git(dir.path, 'checkout', '-q', '-b', 'develop');
    git(dir.path, 'commit', '-q', '--allow-empty', '-m', 'develop work');
    const developHead = git(dir.path, 'rev-parse', 'develop');
    git(dir.path, 'checkout', '-q', 'main');
    hooks = await HookManager.open({
      storagePath: dir.path,
      useGitWorktree: true,
      baseBranch: 'develop',
    });
    const h = await hooks.createHook({ agentId: 'a', workItem: 1, branch: 'agent/on-develop' });
    expect(h.baseCommit).toBe(developHead);
    expect(await rejection(hooks.removeWorktree(h.hookId))).toBeInstanceOf(HookStateError);
    await hooks.activateHook(h.hookId);
    await writeFile(join(h.worktreePath!, 'result.txt'), 'done');
    await hooks.completeHook(h.hookId, { ok: true });
    expect(await rejection(hooks.removeWorktree(h.hookId))).toBeInstanceOf(HookWorktreeError);
    await hooks.removeWorktree(h.hookId, { force: true });
    expect(existsSync(h.worktreePath!)).toBe(false);
    expect(git(dir.path, 'rev-parse', 'agent/on-develop')).toBe(developHead);
    expect((await hooks.getHook(h.hookId)).status).toBe(HookStatus.COMPLETED);
  });

  it("removes a COMPLETED hook's clean worktree (branch and commits kept), so its branch can be used again", async () => {
    const h = await hooks.createHook({ agentId: 'a', workItem: 1, branch: 'agent/done' });
    await hooks.activateHook(h.hookId);
    await writeFile(join(h.worktreePath!, 'work.txt'), 'the work');
    git(h.worktreePath!, 'add', 'work.txt');
    git(h.worktreePath!, 'commit', '-q', '-m', 'agent work');
    const work = git(h.worktreePath!, 'rev-parse', 'HEAD');
    await hooks.completeHook(h.hookId, { ok: true });

    // Old code: the folder stayed, with agent/done checked out there, and this create failed
    // with HookWorktreeError ("already checked out" / used by worktree).
    const next = await hooks.createHook({ agentId: 'b', workItem: 2, branch: 'agent/done' });
    expect(existsSync(h.worktreePath!)).toBe(false);
    expect(git(dir.path, 'worktree', 'list', '--porcelain')).not.toContain(h.hookId);
    expect(git(dir.path, 'rev-parse', 'agent/done')).toBe(work);
    expect(git(next.worktreePath!, 'rev-parse', 'HEAD')).toBe(work);
    expect(await hooks.inspectWorktree(h.hookId)).toMatchObject({ exists: false });
    expect((await hooks.getHook(h.hookId)).status).toBe(HookStatus.COMPLETED);
    await hooks.removeWorktree(h.hookId); // gone already: nothing to do
    git(dir.path, 'fsck', '--strict', '--no-progress');
  });

  it('keeps a dirty COMPLETED worktree and a FAILED one; removeCompletedWorktrees: false keeps all', async () => {
    const dirty = await hooks.createHook({ agentId: 'a', workItem: 1, branch: 'agent/dirty' });
    const failed = await hooks.createHook({ agentId: 'a', workItem: 2, branch: 'agent/failed' });
    await hooks.activateHook(dirty.hookId);
    await hooks.activateHook(failed.hookId);
    await writeFile(join(dirty.worktreePath!, 'unsaved.txt'), 'not committed');
    await hooks.completeHook(dirty.hookId, 'ok');
    await hooks.failHook(failed.hookId, 'no');
    await hooks.close(); // waits for the worktree operations
    expect(await readFile(join(dirty.worktreePath!, 'unsaved.txt'), 'utf8')).toBe('not committed');
    expect(existsSync(failed.worktreePath!)).toBe(true);

    hooks = await HookManager.open({
      storagePath: dir.path,
      useGitWorktree: true,
      removeCompletedWorktrees: false,
    });
    const kept = await hooks.createHook({ agentId: 'a', workItem: 3, branch: 'agent/kept' });
    await hooks.activateHook(kept.hookId);
    await hooks.completeHook(kept.hookId, 'ok');
    await hooks.close();
    expect(existsSync(kept.worktreePath!)).toBe(true);
    expect(git(dir.path, 'worktree', 'list', '--porcelain')).toContain(kept.hookId);

    // Turned on again: the clean COMPLETED worktree left before is removed at open, the dirty
    // and the FAILED one are kept.
    hooks = await HookManager.open({ storagePath: dir.path, useGitWorktree: true });
    expect(existsSync(kept.worktreePath!)).toBe(false);
    expect(git(dir.path, 'worktree', 'list', '--porcelain')).not.toContain(kept.hookId);
    expect(existsSync(join(dirty.worktreePath!, 'unsaved.txt'))).toBe(true);
    expect(existsSync(failed.worktreePath!)).toBe(true);
  });

  it("keeps a COMPLETED worktree whose HEAD left the hook's branch (commits no branch holds), at completion and at open", async () => {
    const detachedCommit = async (branch: string): Promise<{ path: string; work: string }> => {
      const h = await hooks.createHook({ agentId: 'a', workItem: 1, branch });
      await hooks.activateHook(h.hookId);
      git(h.worktreePath!, 'checkout', '-q', '--detach');
      git(h.worktreePath!, 'commit', '-q', '--allow-empty', '-m', 'work on a detached HEAD');
      const work = git(h.worktreePath!, 'rev-parse', 'HEAD');
      await hooks.completeHook(h.hookId, 'ok');
      await hooks.close(); // waits for the worktree operations
      return { path: h.worktreePath!, work };
    };
    // Old code: `worktree remove` found them clean and removed them, the commits left
    // unreachable (the worktree's reflog gone with it).
    const atCompletion = await detachedCommit('agent/detached-1');
    expect(git(atCompletion.path, 'rev-parse', 'HEAD')).toBe(atCompletion.work);

    hooks = await HookManager.open({
      storagePath: dir.path,
      useGitWorktree: true,
      removeCompletedWorktrees: false,
    });
    const atOpen = await detachedCommit('agent/detached-2');
    hooks = await HookManager.open({ storagePath: dir.path, useGitWorktree: true });
    expect(git(atOpen.path, 'rev-parse', 'HEAD')).toBe(atOpen.work);
    expect(git(atCompletion.path, 'rev-parse', 'HEAD')).toBe(atCompletion.work);
    expect(git(dir.path, 'worktree', 'list', '--porcelain')).toContain(atOpen.path);
  });
});

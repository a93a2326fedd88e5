/**
 * Hook worktrees: one git worktree per hook, at `<worktreeRoot>/<hookId>`, on the hook's branch.
 * The worktree outlives its agent: reassignment hands the same folder, with whatever the last
 * agent left uncommitted in it, to the next agent.
 *
 * @module
 */
import { readdir, realpath, rm } from 'node:fs/promises';
import { exists } from './fs-exists.js';
import { join, relative, resolve, sep } from 'node:path';
import { simpleGit, type SimpleGit } from 'simple-git';
import { HookWorktreeError } from '../errors.js';
import {
  filterOverrides,
  gitEnv,
  SAFE_GIT_CONFIG,
  SIMPLE_GIT_ALLOW_ENV,
  SIMPLE_GIT_UNSAFE,
} from './git-process.js';
import { checkHookId, isHookId } from './hook-id.js';
import { checkBranchName } from './ref-name.js';
import type { WorktreeInfo } from './hook.js';

/** A created worktree. */
export interface CreatedWorktree {
  readonly path: string;
  /** Commit the branch pointed at when the worktree was made. */
  readonly baseCommit: string;
  /** True when the branch was created for this hook (false: an existing branch was reused). */
  readonly createdBranch: boolean;
}

/** Creates, inspects and removes hook worktrees of one repository. */
export class WorktreeManager {
  readonly #git: SimpleGit;
  readonly #root: string;
  readonly #base: string;

  /**
   * @param git simple-git bound to the hook store.
   * @param root folder the worktrees go in.
   * @param base what new branches start from (`HEAD` by default).
   */
  constructor(git: SimpleGit, root: string, base: string) {
    this.#git = git;
    this.#root = resolve(root);
    this.#base = base;
  }

  /** Where the worktree of `hookId` lives; the id is checked before it becomes a path. */
  pathFor(hookId: string): string {
    const path = join(this.#root, checkHookId(hookId));
    const rel = relative(this.#root, path);
    if (rel === '' || rel.startsWith('..') || rel.includes(sep)) {
      throw new HookWorktreeError(
        `hook id ${hookId} does not map to a folder under ${this.#root}`,
        {
          hookId,
        },
      );
    }
    return path;
  }

  /**
   * Creates the worktree of `hookId` on `branch`: a new branch from the base, or the existing
   * branch when there is one (it must not be checked out anywhere else).
   * @throws HookWorktreeError when the base does not resolve, the branch is checked out
   *   elsewhere, or git fails otherwise.
   */
  async add(hookId: string, branch: string): Promise<CreatedWorktree> {
    checkBranchName(branch);
    const path = this.pathFor(hookId);
    const details = { hookId, branch, path };
    if (await exists(path)) {
      throw new HookWorktreeError(`worktree folder ${path} already exists`, details);
    }
    const existing = await this.#resolve(`refs/heads/${branch}`);
    try {
      const noFilters = await filterOverrides(() =>
        this.#git.raw(['config', '--get-regexp', '^filter\\.']),
      );
      if (existing !== undefined) {
        await this.#git.raw([...noFilters, 'worktree', 'add', path, branch]);
        return { path, baseCommit: existing, createdBranch: false };
      }
      const base = await this.#resolve(this.#base);
      if (base === undefined) {
        throw new HookWorktreeError(
          `base ${JSON.stringify(this.#base)} does not resolve to a commit (is the repository empty?)`,
          { ...details, base: this.#base },
        );
      }
      await this.#git.raw([...noFilters, 'worktree', 'add', '-b', branch, path, base]);
      return { path, baseCommit: base, createdBranch: true };
    } catch (err) {
      if (err instanceof HookWorktreeError) throw err;
      throw new HookWorktreeError(
        `could not create worktree for hook ${hookId} on branch ${branch}: ${firstLine(err)}`,
        details,
        { cause: err },
      );
    }
  }

  /**
   * Removes the worktree folder of `hookId` (and git's record of it). Best effort when it is
   * already gone. The branch is kept: it holds the agent's commits. Without `force` git first
   * runs `status` in the worktree to see it is clean, which reads the agent's files through
   * the filter drivers of the shared config: those are turned off as for `worktree add`.
   */
  async remove(hookId: string, force: boolean): Promise<void> {
    const path = this.pathFor(hookId);
    try {
      if (await exists(path)) {
        const noFilters = await filterOverrides(() =>
          this.#git.raw(['config', '--get-regexp', '^filter\\.']),
        );
        await this.#git.raw([
          ...noFilters,
          'worktree',
          'remove',
          ...(force ? ['--force'] : []),
          path,
        ]);
      } else {
        await this.#git.raw(['worktree', 'prune']);
      }
    } catch (err) {
      throw new HookWorktreeError(
        `could not remove worktree ${path}: ${firstLine(err)}${force ? '' : ' (use { force: true } to discard its changes)'}`,
        { hookId, path },
        { cause: err },
      );
    }
  }

  /**
   * Removes the worktree folders under the root that belong to no hook (`known` says which ids
   * do): what a create cut short by a crash left — its hook was never committed, so no caller
   * was told of it, and its branch stays checked out there until the folder goes. A folder with
   * changes git would lose (`worktree remove` without `--force` refuses) is forced out only when
   * `committed` says its hook never reached the store's history; a hook that did — finished,
   * then dropped by `finishedRetention` — may have an agent's uncommitted work there, so its
   * folder stays (returned in `kept`). Branches are kept.
   */
  async removeOrphans(
    known: (hookId: string) => boolean,
    committed: (hookId: string) => Promise<boolean>,
  ): Promise<{ removed: string[]; kept: string[] }> {
    let names: string[];
    try {
      names = await readdir(this.#root);
    } catch {
      return { removed: [], kept: [] }; // no root yet
    }
    const removed: string[] = [];
    const kept: string[] = [];
    let noFilters: string[] | undefined;
    for (const name of names) {
      if (!isHookId(name) || known(name)) continue;
      const path = join(this.#root, name);
      // Without `--force` git runs `status` there: the shared config's filter drivers off, as
      // in remove().
      noFilters ??= await filterOverrides(() =>
        this.#git.raw(['config', '--get-regexp', '^filter\\.']),
      );
      const clean = await this.#git.raw([...noFilters, 'worktree', 'remove', path]).then(
        () => true,
        () => false,
      );
      if (!clean && (await committed(name))) {
        kept.push(path);
        continue;
      }
      if (!clean)
        await this.#git.raw(['worktree', 'remove', '--force', path]).catch(() => undefined);
      // Not (or no longer) registered with git: the folder alone. Best effort: a git the crash
      // left running may still be writing there (then the folder stays, and a create of that
      // hook id is refused as before).
      try {
        await rm(path, { recursive: true, force: true, maxRetries: 5 });
        removed.push(path);
      } catch {
        continue;
      }
    }
    if (removed.length > 0) await this.#git.raw(['worktree', 'prune']).catch(() => undefined);
    return { removed, kept };
  }

  /** Hook ids with a folder under the root (none when there is no root yet). */
  async hookFolders(): Promise<string[]> {
    const names = await readdir(this.#root).catch(() => [] as string[]);
    return names.filter((name) => isHookId(name));
  }

  /** Deletes `branch` (used to undo a branch created for a hook that was never committed). */
  async deleteBranch(branch: string): Promise<void> {
    await this.#git.raw(['branch', '-D', checkBranchName(branch)]).catch(() => undefined);
  }

  /** Reports what is on disk for the worktree of `hookId`; never throws for what it finds. */
  async inspect(hookId: string, expectedPath: string | null): Promise<WorktreeInfo> {
    const none = { hookId, path: expectedPath, exists: false, valid: false, dirty: false };
    if (expectedPath === null) return { ...none, branch: null, head: null };
    const path = this.pathFor(hookId);
    if (!(await exists(path))) return { ...none, branch: null, head: null };
    const invalid = { ...none, exists: true, branch: null, head: null };
    // Without its `.git` file the folder is not a worktree, and git would walk up to the store
    // itself and report on that instead: check the top level is the folder itself.
    if (!(await exists(join(path, '.git')))) return invalid;
    try {
      const git = simpleGit({
        baseDir: path,
        config: [...SAFE_GIT_CONFIG],
        unsafe: SIMPLE_GIT_UNSAFE,
        allowEnvironment: SIMPLE_GIT_ALLOW_ENV,
      }).env(gitEnv());
      const top = (await git.raw(['rev-parse', '--show-toplevel'])).trim();
      if ((await realpath(top)) !== (await realpath(path))) return invalid;
      const head = (await git.raw(['rev-parse', '--verify', '-q', 'HEAD']).catch(() => '')).trim();
      const sym = await git.raw(['symbolic-ref', '-q', '--short', 'HEAD']).catch(() => '');
      const status = await git.raw([
        ...(await filterOverrides(() => git.raw(['config', '--get-regexp', '^filter\\.']))),
        'status',
        '--porcelain=v1',
        '--untracked-files=normal',
        '--ignore-submodules=all',
      ]);
      return {
        hookId,
        path,
        exists: true,
        valid: true,
        dirty: status.trim().length > 0,
        branch: sym.trim() || null,
        head: head || null,
      };
    } catch {
      return invalid;
    }
  }

  async #resolve(rev: string): Promise<string | undefined> {
    try {
      const out = (await this.#git.raw(['rev-parse', '--verify', '-q', `${rev}^{commit}`])).trim();
      return out === '' ? undefined : out;
    } catch {
      return undefined;
    }
  }
}

/** git's reason: its `fatal:` (or `error:`) line when it printed one, else the first line. */
function firstLine(err: unknown): string {
  const message = err instanceof Error ? err.message : String(err);
  const lines = message.trim().split('\n');
  return lines.find((l) => /^(fatal|error): /.test(l)) ?? lines[0] ?? message;
}

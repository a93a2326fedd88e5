/**
 * HookManager options: defaults, validation, frozen result.
 *
 * @module
 */
import { isAbsolute, join, resolve } from 'node:path';
import { ConfigError } from '../errors.js';
import { MAX_TIMER_MS, MAX_TIMER_SECONDS, timerLimitMessage } from '../scheduler/task-waiters.js';
import { isAgentLiveness, type AgentLiveness } from './liveness.js';
import { branchNameProblem } from './ref-name.js';
import type { StateSigning } from './state-store.js';

/** Default for {@link HookManagerOptions.patrolIntervalSeconds}. */
export const DEFAULT_PATROL_INTERVAL_SECONDS = 30;
/** Default for {@link HookManagerOptions.staleAfterSeconds}. */
export const DEFAULT_STALE_AFTER_SECONDS = 600;
/** Default for {@link HookManagerOptions.progressCommitIntervalMs}. */
export const DEFAULT_PROGRESS_COMMIT_INTERVAL_MS = 1000;
/** Default for {@link HookManagerOptions.maintenanceIntervalSeconds}. */
export const DEFAULT_MAINTENANCE_INTERVAL_SECONDS = 600;
/** Default for {@link HookManagerOptions.maxReassignments}. */
export const DEFAULT_MAX_REASSIGNMENTS = 3;
/** Default for {@link HookManagerOptions.finishedRetention}. */
export const DEFAULT_FINISHED_RETENTION = 10_000;
/** Default for {@link HookManagerOptions.maxWorkItemBytes}: 256 KiB of JSON. */
export const DEFAULT_MAX_WORK_ITEM_BYTES = 256 * 1024;
/** Default for {@link HookManagerOptions.author}. */
export const DEFAULT_HOOK_AUTHOR: Readonly<GitIdentity> = Object.freeze({
  name: 'agent-fabric',
  email: 'hooks@agent-fabric.local',
});
/** Name of the worktree folder under `storagePath` (default {@link HookManagerOptions.worktreeRoot}). */
export const DEFAULT_WORKTREE_DIR = '.worktrees';

/** Name and e-mail written on the hook store's commits. */
export interface GitIdentity {
  name: string;
  email: string;
}

/** Options of a {@link HookManager}. */
export interface HookManagerOptions {
  /**
   * The hook store: a git repository. Created (with an initial commit) when it is missing or is
   * not a repository; an existing repository, bare or not, is used as it is.
   */
  storagePath: string;
  /** Give every hook its own git worktree on its branch, where the agent does its work. */
  useGitWorktree: boolean;
  /**
   * What new worktree branches start from (a branch, tag or commit of the store).
   * @default the store's current HEAD
   */
  baseBranch?: string;
  /**
   * Folder the worktrees go in, one `<hookId>` folder each. When it is inside `storagePath` it is
   * added to the store's `info/exclude`.
   * @default `<storagePath>/.worktrees`
   */
  worktreeRoot?: string;
  /**
   * How often `startPatrol()` runs the patrol.
   * @default 30
   */
  patrolIntervalSeconds?: number;
  /**
   * A PENDING or ACTIVE hook with no progress (`recordProgress`, assignment) for longer than
   * this is flagged `stale` by the patrol.
   * @default 600
   */
  staleAfterSeconds?: number;
  /**
   * Fewest milliseconds between two progress commits of one hook. A `recordProgress` within this
   * long of the hook's last commit is held in memory — `getHook`, `listHooks` and the patrol see
   * its note and `lastProgressAt` at once — and goes to git with the hook's next commit: the next
   * report after the interval, a timer at the interval's end, any transition, or `close()`. So
   * an agent reporting in a loop adds at most one commit per interval, and the latest note
   * always reaches git; notes between two commits are folded (the commit's `Progress-Folded:`
   * trailer counts them). A crash (`kill -9`) loses at most the reports held since the hook's
   * last commit (under one interval's worth). At most 2147483647 (a timer's longest delay).
   * @default 1000
   */
  progressCommitIntervalMs?: number;
  /**
   * How often (at most) the store's git repository is maintained: `git gc --auto`, off the hot
   * path, never two at once, and only when hooks were committed since the last run. Every
   * transition writes loose objects (~5: the record, its trees, the commit); `gc --auto` packs
   * them once there are more than the repository's `gc.auto` (its smallest positive value, at
   * most git's default 6700) or merges packs past 50, and packs refs; every other setting gc
   * relies on is pinned, not read from the repository's config. The state ref and hook branches are refs, so
   * nothing of a hook's history is pruned. `0` turns it off. A failed run is reported
   * (`store.maintenance_error`), never thrown at a transition.
   * @default 600
   */
  maintenanceIntervalSeconds?: number;
  /**
   * How often one hook may be reassigned (after being abandoned or failing) before recovery
   * gives up on it.
   * @default 3
   */
  maxReassignments?: number;
  /**
   * Finished (COMPLETED and FAILED) hooks kept: past this many, the oldest finished — by when
   * they finished — are dropped from memory and from the next commit's tree (one commit,
   * `trim: …`, after the change that went over). Their history stays in the state ref's log
   * (`git log refs/fabric/hooks`); a dropped FAILED hook can no longer be reassigned. PENDING,
   * ACTIVE and ABANDONED hooks are never dropped. A store opened with more than this many is
   * trimmed in memory at once and in git with its next commit. `0` keeps none.
   * @default 10000
   */
  finishedRetention?: number;
  /**
   * With worktrees: remove a hook's worktree folder when the hook is COMPLETED, if it is clean
   * and still on the hook's branch (nothing git tracks is lost: the branch keeps the agent's
   * commits; ignored files go with the folder), so finished work does not keep a checkout on
   * disk nor its branch checked out (a new hook on that branch can then have a worktree). A
   * dirty one is kept, and one whose HEAD is detached or on another branch. FAILED hooks keep
   * theirs: they may be reassigned.
   * @default true
   */
  removeCompletedWorktrees?: boolean;
  /**
   * Largest work item (and result) accepted, in bytes of JSON.
   * @default 262144
   */
  maxWorkItemBytes?: number;
  /**
   * Whether the patrol may treat an agent as dead. Without one the patrol only flags stale hooks.
   * @default undefined
   */
  liveness?: AgentLiveness;
  /**
   * fsync every object and the ref on each transition, so that committed hooks survive the
   * machine losing power, not only the process dying.
   * @default true
   */
  fsync?: boolean;
  /**
   * Author and committer of the state commits (and of the initial commit of a new store), so
   * the store never depends on a global git identity.
   * @default { name: 'agent-fabric', email: 'hooks@agent-fabric.local' }
   */
  author?: GitIdentity;
  /**
   * Signs every state commit (HMAC-SHA256 of its tree and parents, a `Fabric-State-MAC:`
   * trailer) and verifies the state ref's head at `open()`: a head that does not verify, in a
   * store that has signed before, is moved under `refs/fabric/quarantine/` and the ref goes back
   * to the newest commit that verifies (`store.state_quarantined`); so does a head older than
   * the commit recorded as current after each commit (a rollback), which goes back to that
   * commit. The key, the "signed since" marker and the record must outlive the process (the
   * fabric takes them from its durable state file); without this option nothing is signed or
   * verified, and a store whose head is signed, or is on top of a signed commit, is refused
   * (`HookStoreSignedError`).
   * @default undefined
   */
  stateSigning?: StateSigning;
  /**
   * Clock in epoch ms (tests inject one).
   * @default Date.now
   */
  clock?: () => number;
}

/** {@link HookManagerOptions} with every default applied. */
export interface ResolvedHookManagerOptions {
  readonly storagePath: string;
  readonly useGitWorktree: boolean;
  readonly baseBranch: string | undefined;
  readonly worktreeRoot: string;
  readonly patrolIntervalSeconds: number;
  readonly staleAfterSeconds: number;
  readonly progressCommitIntervalMs: number;
  readonly maintenanceIntervalSeconds: number;
  readonly maxReassignments: number;
  readonly finishedRetention: number;
  readonly removeCompletedWorktrees: boolean;
  readonly maxWorkItemBytes: number;
  readonly liveness: AgentLiveness | undefined;
  readonly fsync: boolean;
  readonly author: Readonly<GitIdentity>;
  readonly stateSigning: StateSigning | undefined;
  readonly clock: () => number;
}

const KNOWN = new Set<string>([
  'storagePath',
  'useGitWorktree',
  'baseBranch',
  'worktreeRoot',
  'patrolIntervalSeconds',
  'staleAfterSeconds',
  'progressCommitIntervalMs',
  'maintenanceIntervalSeconds',
  'maxReassignments',
  'finishedRetention',
  'removeCompletedWorktrees',
  'maxWorkItemBytes',
  'liveness',
  'fsync',
  'author',
  'stateSigning',
  'clock',
]);

/**
 * Merges `options` over the defaults, validates every field and freezes the result.
 *
 * @example
 * const o = parseHookManagerOptions({ storagePath: '/var/lib/hooks', useGitWorktree: true });
 * o.maxReassignments; // 3
 * @throws ConfigError naming the field at fault.
 */
export function parseHookManagerOptions(
  options: HookManagerOptions,
): Readonly<ResolvedHookManagerOptions> {
  if (options === null || typeof options !== 'object' || Array.isArray(options)) {
    throw new ConfigError('options', 'must be an object');
  }
  for (const key of Object.keys(options)) {
    if (!KNOWN.has(key)) throw new ConfigError(`options.${key}`, 'is not a known option');
  }
  const o = options as Partial<Record<keyof HookManagerOptions, unknown>>;
  const storagePath = nonEmptyString('options.storagePath', o.storagePath);
  if (storagePath.includes('\0'))
    throw new ConfigError('options.storagePath', 'must not contain NUL');
  if (typeof o.useGitWorktree !== 'boolean') {
    throw new ConfigError('options.useGitWorktree', 'must be a boolean');
  }
  if (o.removeCompletedWorktrees !== undefined && typeof o.removeCompletedWorktrees !== 'boolean') {
    throw new ConfigError('options.removeCompletedWorktrees', 'must be a boolean');
  }
  let baseBranch: string | undefined;
  if (o.baseBranch !== undefined) {
    baseBranch = nonEmptyString('options.baseBranch', o.baseBranch);
    const problem = baseBranch === 'HEAD' ? undefined : branchNameProblem(baseBranch);
    if (problem !== undefined) throw new ConfigError('options.baseBranch', problem);
  }
  const root = resolve(storagePath);
  let worktreeRoot = join(root, DEFAULT_WORKTREE_DIR);
  if (o.worktreeRoot !== undefined) {
    const w = nonEmptyString('options.worktreeRoot', o.worktreeRoot);
    if (!isAbsolute(w)) throw new ConfigError('options.worktreeRoot', 'must be an absolute path');
    worktreeRoot = resolve(w);
  }
  if (worktreeRoot === root) {
    throw new ConfigError('options.worktreeRoot', 'must not be the storagePath itself');
  }
  if (o.liveness !== undefined && !isAgentLiveness(o.liveness)) {
    throw new ConfigError('options.liveness', 'must have an isAlive(agentId) method');
  }
  if (o.fsync !== undefined && typeof o.fsync !== 'boolean') {
    throw new ConfigError('options.fsync', 'must be a boolean');
  }
  const signing = o.stateSigning as Partial<StateSigning> | undefined;
  if (
    signing !== undefined &&
    (typeof signing !== 'object' ||
      signing === null ||
      typeof signing.key !== 'string' ||
      signing.key.length === 0 ||
      typeof signing.signed !== 'function' ||
      typeof signing.markSigned !== 'function' ||
      typeof signing.recordedHead !== 'function' ||
      typeof signing.recordHead !== 'function')
  ) {
    throw new ConfigError(
      'options.stateSigning',
      'must be { key: non-empty string, signed(), markSigned(), recordedHead(), recordHead(oid) }',
    );
  }
  if (o.clock !== undefined && typeof o.clock !== 'function') {
    throw new ConfigError('options.clock', 'must be a function returning epoch milliseconds');
  }
  return Object.freeze({
    storagePath: root,
    useGitWorktree: o.useGitWorktree,
    baseBranch,
    worktreeRoot,
    // The patrol's setInterval period: past setTimeout's limit it would run every 1 ms.
    patrolIntervalSeconds: atMostTimerLimit(
      'options.patrolIntervalSeconds',
      number(
        'options.patrolIntervalSeconds',
        o.patrolIntervalSeconds,
        DEFAULT_PATROL_INTERVAL_SECONDS,
        'positiveNumber',
      ),
    ),
    staleAfterSeconds: number(
      'options.staleAfterSeconds',
      o.staleAfterSeconds,
      DEFAULT_STALE_AFTER_SECONDS,
      'positiveNumber',
    ),
    // The flush timer's delay: past setTimeout's limit it would fire after 1 ms.
    progressCommitIntervalMs: atMostTimerLimitMs(
      'options.progressCommitIntervalMs',
      number(
        'options.progressCommitIntervalMs',
        o.progressCommitIntervalMs,
        DEFAULT_PROGRESS_COMMIT_INTERVAL_MS,
        'positiveNumber',
      ),
    ),
    // A setTimeout delay (0: off).
    maintenanceIntervalSeconds: atMostTimerLimit(
      'options.maintenanceIntervalSeconds',
      number(
        'options.maintenanceIntervalSeconds',
        o.maintenanceIntervalSeconds,
        DEFAULT_MAINTENANCE_INTERVAL_SECONDS,
        'nonNegativeNumber',
      ),
    ),
    maxReassignments: number(
      'options.maxReassignments',
      o.maxReassignments,
      DEFAULT_MAX_REASSIGNMENTS,
      'nonNegativeInt',
    ),
    finishedRetention: number(
      'options.finishedRetention',
      o.finishedRetention,
      DEFAULT_FINISHED_RETENTION,
      'nonNegativeInt',
    ),
    removeCompletedWorktrees: o.removeCompletedWorktrees ?? true,
    maxWorkItemBytes: number(
      'options.maxWorkItemBytes',
      o.maxWorkItemBytes,
      DEFAULT_MAX_WORK_ITEM_BYTES,
      'positiveInt',
    ),
    liveness: o.liveness as AgentLiveness | undefined,
    fsync: (o.fsync as boolean | undefined) ?? true,
    author: identity(o.author),
    stateSigning: signing as StateSigning | undefined,
    clock: (o.clock as (() => number) | undefined) ?? Date.now,
  });
}

type NumberKind = 'positiveInt' | 'nonNegativeInt' | 'positiveNumber' | 'nonNegativeNumber';

/** `seconds`, refused past {@link MAX_TIMER_SECONDS} (a timer's longest delay). */
function atMostTimerLimit(field: string, seconds: number): number {
  if (seconds > MAX_TIMER_SECONDS) {
    throw new ConfigError(field, `${timerLimitMessage('seconds')}, got ${seconds}`);
  }
  return seconds;
}

/** `ms`, refused past {@link MAX_TIMER_MS} (a timer's longest delay). */
function atMostTimerLimitMs(field: string, ms: number): number {
  if (ms > MAX_TIMER_MS) throw new ConfigError(field, `${timerLimitMessage('ms')}, got ${ms}`);
  return ms;
}

function number(field: string, value: unknown, fallback: number, kind: NumberKind): number {
  if (value === undefined) return fallback;
  if (typeof value !== 'number' || Number.isNaN(value)) {
    throw new ConfigError(field, `must be a number, got ${value === null ? 'null' : typeof value}`);
  }
  const ok =
    kind === 'positiveNumber'
      ? Number.isFinite(value) && value > 0
      : kind === 'nonNegativeNumber'
        ? Number.isFinite(value) && value >= 0
        : Number.isSafeInteger(value) && (kind === 'positiveInt' ? value > 0 : value >= 0);
  if (!ok) {
    const what =
      kind === 'positiveNumber'
        ? 'a positive finite number'
        : kind === 'nonNegativeNumber'
          ? 'a non-negative finite number'
          : kind === 'positiveInt'
            ? 'a positive integer'
            : 'a non-negative integer';
    throw new ConfigError(field, `must be ${what}, got ${value}`);
  }
  return value;
}

function nonEmptyString(field: string, value: unknown): string {
  if (typeof value !== 'string' || value.length === 0) {
    throw new ConfigError(field, 'must be a non-empty string');
  }
  return value;
}

function identity(value: unknown): Readonly<GitIdentity> {
  if (value === undefined) return DEFAULT_HOOK_AUTHOR;
  if (value === null || typeof value !== 'object') {
    throw new ConfigError('options.author', 'must be an object { name, email }');
  }
  const { name, email } = value as Record<string, unknown>;
  // Characters git itself strips or rejects in an ident line.
  const bad = /[<>\n\0]/;
  if (typeof name !== 'string' || name.trim() === '' || bad.test(name)) {
    throw new ConfigError(
      'options.author.name',
      'must be a non-empty string without <, > or newlines',
    );
  }
  if (typeof email !== 'string' || email.trim() === '' || bad.test(email)) {
    throw new ConfigError(
      'options.author.email',
      'must be a non-empty string without <, > or newlines',
    );
  }
  return Object.freeze({ name: name.trim(), email: email.trim() });
}

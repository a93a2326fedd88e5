/**
 * The HookManager: git-backed work hooks (GUPP — if there is work on an agent's hook, the agent
 * runs it). Work put on a hook survives the agent, the sidecar and the machine restarting.
 *
 * @module
 */
import { appendFile, chmod, mkdir, readFile, rm } from 'node:fs/promises';
import { exists } from './fs-exists.js';
import { basename, dirname, join, relative, sep } from 'node:path';
import { simpleGit, type SimpleGit } from 'simple-git';
import {
  ClosedError,
  FabricError,
  HookNotFoundError,
  HookRetryLimitError,
  HookStateError,
  HookStoreError,
  InvalidArgumentError,
} from '../errors.js';
import type { ObjectFormat } from './git-objects.js';
import { GC_SETTINGS_PATTERN, gcPidHolder, gcSettings } from './gc-settings.js';
import {
  gitEnv,
  runGit,
  SAFE_GIT_CONFIG,
  SIMPLE_GIT_ALLOW_ENV,
  SIMPLE_GIT_UNSAFE,
} from './git-process.js';
import {
  EMPTY_FAILURE_MESSAGE,
  type Hook,
  type HookErrorInfo,
  type PatrolHook,
  type WorktreeInfo,
} from './hook.js';
import {
  HookEmitter,
  type HookEventName,
  type HookListener,
  type MaintenanceEvent,
  type ObjectCounts,
} from './hook-events.js';
import { checkHookId, generateHookId } from './hook-id.js';
import {
  parseHookManagerOptions,
  type HookManagerOptions,
  type ResolvedHookManagerOptions,
} from './hook-manager-options.js';
import { HookStatus, canTransition, isFinishedStatus, isOpenStatus } from './hook-status.js';
import { deepFreeze, toJsonValue } from './json-value.js';
import { isAgentLiveness, type AgentLiveness } from './liveness.js';
import { checkBranchName } from './ref-name.js';
import { HOOKS_REF, HookStateStore, type StateChange } from './state-store.js';
import { StoreLock } from './store-lock.js';
import { clip, UNPRINTABLE_CLASS } from '../unprintable.js';
import { WorktreeManager, type CreatedWorktree } from './worktrees.js';

/** Name of the lock file in the store's git directory. */
export const HOOK_LOCK_FILE = 'fabric-hooks.lock';
/** How often an open store checks that its lock file is still there (and its own). */
const LOCK_CHECK_INTERVAL_MS = 1000;
/** Mode of the store's folder and git directory: its owner's only. */
const PRIVATE_DIR_MODE = 0o700;
/** Longest agent id accepted. */
export const MAX_AGENT_ID_LENGTH = 256;
/** Longest progress note / abandon reason / error message kept. */
export const MAX_NOTE_LENGTH = 4096;
/** Most transitions written with one `update-ref` (each still gets its own commit). */
const MAX_BATCH = 64;

/** What {@link HookManager.createHook} takes. */
export interface CreateHookRequest {
  /** The agent that must run the work. */
  agentId: string;
  /** What to do: any plain JSON value up to `maxWorkItemBytes`. */
  workItem: unknown;
  /**
   * Branch of the hook's worktree (created from `baseBranch`, or reused if it exists). Required
   * with `useGitWorktree`; otherwise only recorded.
   */
  branch?: string;
}

/** What {@link HookManager.failHook} accepts as the error. */
export type HookFailure =
  Error | string | { readonly message: string; readonly code?: string; readonly name?: string };

/**
 * Who asks for an agent-facing transition. With `agentId`, the hook must be held by that agent:
 * assigned to it, and not ABANDONED — an agent whose hook was abandoned (it went silent, or was
 * declared dead) no longer holds it; the hook waits for reassignment, and only the operator
 * (a call without `agentId`) may fail it.
 */
export interface AsAgent {
  agentId?: string;
}

/** Filter of {@link HookManager.listHooks}. */
export interface ListHooksFilter {
  agentId?: string;
  status?: HookStatus | readonly HookStatus[];
}

/**
 * Chooses the agent that takes over an ABANDONED `hook`; `undefined` leaves it ABANDONED for now
 * (asked again on the next patrol when set with {@link HookManager.setAgentPicker}).
 */
export type AgentPicker = (hook: Hook) => Promise<string | undefined> | string | undefined;

/** What {@link HookManager.recoverAbandoned} takes. */
export interface RecoverOptions {
  /** Chooses the agent that takes over `hook`; `undefined` leaves the hook ABANDONED for now. */
  pickAgent: AgentPicker;
  /**
   * Run the patrol first, so hooks of agents that just died are recovered in the same call.
   * @default true
   */
  patrol?: boolean;
}

/** What {@link HookManager.recoverAbandoned} did. */
export interface RecoveryReport {
  readonly reassigned: readonly {
    readonly hookId: string;
    readonly fromAgentId: string;
    readonly toAgentId: string;
  }[];
  /** Left ABANDONED: no agent was picked (or picking failed). */
  readonly skipped: readonly { readonly hookId: string; readonly reason: string }[];
  /** Out of reassignments: moved to FAILED. */
  readonly exhausted: readonly string[];
}

/** A staged change: the record to commit and what to announce once it is committed. */
interface Staged {
  readonly record: Hook;
  readonly message: string;
  readonly announce?: (commit: string) => void;
  /**
   * A progress commit (its `Note:` is the progress note); `'flush'` when it only commits reports
   * held in memory, and is dropped when an earlier commit already carried them.
   */
  readonly progress?: true | 'flush';
}

/**
 * A progress report held in memory (not committed): the record `getHook` and the patrol see
 * until the hook's next commit carries it to git.
 */
interface Held {
  readonly held: true;
  readonly record: Hook;
  readonly announce: () => void;
}

/** What a status change adds to the record, and the event that announces it. */
interface TransitionPlan {
  readonly changes: Partial<Hook>;
  readonly event:
    'hook.activated' | 'hook.completed' | 'hook.failed' | 'hook.abandoned' | 'hook.reassigned';
  /** Goes into the commit message's `Note:` trailer. */
  readonly note?: string | null;
}

/** Builds a change from the current state; `null` means "nothing to do". */
type Build = (get: (hookId: string) => Hook | undefined, now: number) => Staged | Held | null;

interface Queued {
  readonly hookId: string;
  readonly build: Build;
  readonly resolve: (hook: Hook) => void;
  readonly reject: (err: unknown) => void;
}

/**
 * Git-backed work hooks. Every change of a hook is one commit on the `refs/fabric/hooks` ref of
 * the store (never on a branch); hooks may get their own git worktree, which stays with the hook
 * when it is reassigned. One HookManager per store: a lock file keeps a second one out.
 *
 * @example
 * const hooks = new HookManager({ storagePath: '/var/lib/fabric/hooks', useGitWorktree: true });
 * const hook = await hooks.createHook({
 *   agentId: 'agent-1',
 *   workItem: { task: 'refactor', file: 'api.py' },
 *   branch: 'agent/refactor-123',
 * });
 * await hooks.activateHook(hook.hookId);
 * await hooks.completeHook(hook.hookId, { filesChanged: ['api.py'] });
 * await hooks.close();
 */
export class HookManager {
  /** The parsed, frozen options. */
  readonly options: Readonly<ResolvedHookManagerOptions>;
  readonly #events = new HookEmitter();
  readonly #hooks = new Map<string, Hook>();
  /**
   * Open (PENDING and ACTIVE) hooks by agent, kept with `#hooks` by {@link #put}: what
   * {@link hookFor} reads, so an agent's lookup does not walk every hook the store ever held.
   */
  readonly #openByAgent = new Map<string, Map<string, Hook>>();
  /**
   * Every hook by agent, kept with `#hooks` by {@link #put}: what `listHooks({ agentId })` reads
   * (the fabric's recovery of a lost agent), so it does not walk every hook the store holds.
   */
  readonly #byAgent = new Map<string, Map<string, Hook>>();
  /** ABANDONED hooks, kept with `#hooks` by {@link #put}: what the patrol and recovery read. */
  readonly #abandoned = new Map<string, Hook>();
  /**
   * Finished (COMPLETED and FAILED) hooks in the order they finished, oldest first, kept with
   * `#hooks` by {@link #put}: past `finishedRetention`, the first ones are dropped.
   */
  readonly #finished = new Map<string, Hook>();
  /** Hooks dropped from memory at open whose records the state tree still holds. */
  #untrimmed: string[] = [];
  /**
   * Finished hooks on the state ref whose records are not read yet (hook id → record blob):
   * open reads only the hooks that are not finished (see `state-store.ts`); these are read
   * when something asks for them ({@link #loadDeferred}, or one record for `getHook`).
   */
  readonly #deferred = new Map<string, string>();
  /** The read of every deferred record in progress (one at a time, shared). */
  #loadingDeferred: Promise<void> | undefined;
  readonly #inflight = new Set<Promise<unknown>>();
  readonly #staleSeen = new Map<string, number>();
  #liveness: AgentLiveness | undefined;
  #picker: AgentPicker | undefined;
  #store: HookStateStore | undefined;
  #worktrees: WorktreeManager | undefined;
  #lock: StoreLock | undefined;
  /** The store's (common) git directory, once open. */
  #gitDir: string | undefined;
  #opening: Promise<void> | undefined;
  #closing: Promise<void> | undefined;
  #queue: Queued[] = [];
  #draining = false;
  #worktreeChain: Promise<unknown> = Promise.resolve();
  #patrolTimer: ReturnType<typeof setInterval> | undefined;
  #patrolRunning = false;
  #maintenanceTimer: ReturnType<typeof setTimeout> | undefined;
  #maintaining: Promise<MaintenanceEvent> | undefined;
  /** Kills a running `git gc` on close. */
  readonly #maintenanceAbort = new AbortController();
  /** Hooks were committed since the last maintenance run (a store just opened may need one). */
  #unmaintained = true;
  /**
   * Hooks with progress reports held in memory (in `#hooks`, not yet on the ref): how many, and
   * the timer that commits them when the hook's interval ends.
   */
  readonly #held = new Map<string, { count: number; timer?: ReturnType<typeof setTimeout> }>();
  /** The store error of the last open or commit, cleared by the next one that succeeds. */
  #lastError: HookStoreError | undefined;
  /** Checks every {@link LOCK_CHECK_INTERVAL_MS} that the lock file is still this store's. */
  #lockCheck: ReturnType<typeof setTimeout> | undefined;
  /** The lock file was found to be another's (and that was reported). */
  #lockLost = false;
  /** Commits of hook state, and those that failed, since the store was made. */
  #commits = 0;
  #failedCommits = 0;
  #quarantinedHeads = 0;

  /**
   * Checks the options; the store is opened by {@link open} or by the first call that needs it.
   * @throws ConfigError naming the option at fault.
   */
  constructor(options: HookManagerOptions) {
    this.options = parseHookManagerOptions(options);
    this.#liveness = this.options.liveness;
  }

  /** Creates a HookManager and opens its store. */
  static async open(options: HookManagerOptions): Promise<HookManager> {
    const manager = new HookManager(options);
    await manager.open();
    return manager;
  }

  /** The ref hook state is committed on. */
  get stateRef(): string {
    return HOOKS_REF;
  }

  /**
   * The {@link HookStoreError} of the last open or commit of hook state (the git directory gone,
   * the disk full…), until an open or commit succeeds again; `undefined` while the store works.
   * A caller's error (an unknown hook, a bad transition) and a failed maintenance run do not
   * count. `GET /readyz` reports the hook store unready (`hooks: false`) while it is set.
   */
  get lastError(): HookStoreError | undefined {
    return this.#lastError;
  }

  /**
   * Commits of hook state since this manager was made (`commits`: ref updates that carried at
   * least one change) and commits that failed (`failedCommits`: each failed attempt; its
   * transitions were rejected), and heads quarantined when the store opened
   * (`quarantinedHeads`: see `store.state_quarantined`, which is announced before anything
   * after the store's start can listen), for the metrics.
   */
  get stats(): Readonly<{ commits: number; failedCommits: number; quarantinedHeads: number }> {
    return {
      commits: this.#commits,
      failedCommits: this.#failedCommits,
      quarantinedHeads: this.#quarantinedHeads,
    };
  }

  /** The store's git directory (where the lock file is), once open. */
  get lockPath(): string | undefined {
    return this.#lock?.path;
  }

  /**
   * Opens the store: creates the repository if needed, takes the lock and loads every hook.
   * Idempotent; other methods call it on first use.
   * @throws HookStoreLockedError when another HookManager holds the store.
   * @throws HookStoreError when the repository or the state ref can not be read.
   */
  async open(): Promise<this> {
    await this.#ready();
    return this;
  }

  /**
   * Stops the patrol, lets queued transitions finish, commits progress held in memory (see
   * `progressCommitIntervalMs`), and releases the lock. Idempotent.
   */
  close(): Promise<void> {
    this.stopPatrol();
    if (this.#lockCheck !== undefined) clearTimeout(this.#lockCheck);
    this.#lockCheck = undefined;
    if (this.#maintenanceTimer !== undefined) clearTimeout(this.#maintenanceTimer);
    this.#maintenanceTimer = undefined;
    // A running gc is stopped (git cleans up after itself; the next gc finishes the job).
    this.#maintenanceAbort.abort();
    this.#closing ??= (async () => {
      await this.#opening?.catch(() => undefined);
      while (this.#inflight.size > 0) await Promise.allSettled([...this.#inflight]);
      await this.#flushAllHeld();
      this.#store?.close();
      await this.#lock?.release();
    })();
    return this.#closing;
  }

  /** Listens to `event`; returns a function that stops listening. */
  on<K extends HookEventName>(event: K, listener: HookListener<K>): () => void {
    return this.#events.on(event, listener);
  }

  /** Stops `listener` listening to `event`. */
  off<K extends HookEventName>(event: K, listener: HookListener<K>): void {
    this.#events.off(event, listener);
  }

  /** Sets (or clears) the liveness source the patrol uses (the fabric wires its lifecycle). */
  setLiveness(liveness: AgentLiveness | undefined): void {
    if (liveness !== undefined && !isAgentLiveness(liveness)) {
      throw new InvalidArgumentError('liveness', 'must have an isAlive(agentId) method');
    }
    this.#liveness = liveness;
  }

  /**
   * Sets (or clears) who picks the next agent of an ABANDONED hook on every patrol run. A hook
   * abandoned while no agent was free is then retried each `patrolIntervalSeconds` until an
   * agent is picked or it runs out of reassignments (then FAILED); a run that finds no agent
   * spends none. The fabric wires this when `autoReassign` is on.
   * @throws InvalidArgumentError when `pick` is neither a function nor `undefined`.
   */
  setAgentPicker(pick: AgentPicker | undefined): void {
    if (pick !== undefined && typeof pick !== 'function') {
      throw new InvalidArgumentError('pick', 'must be a function (hook) => agentId | undefined');
    }
    this.#picker = pick;
  }

  // -------------------------------------------------------------------------------------------
  // Transitions

  /**
   * Puts work on an agent's hook: a PENDING hook, committed, with its worktree on `branch` when
   * worktrees are used.
   * @throws InvalidArgumentError for a bad agent id, branch name or non-JSON work item.
   * @throws HookWorkItemTooLargeError when the work item exceeds `maxWorkItemBytes`.
   * @throws HookWorktreeError when the worktree can not be created.
   */
  createHook(request: CreateHookRequest): Promise<Hook> {
    return this.#run(async () => {
      if (request === null || typeof request !== 'object') {
        throw new InvalidArgumentError(
          'request',
          'must be an object { agentId, workItem, branch }',
        );
      }
      const agentId = checkAgentId(request.agentId, 'agentId');
      const workItem = toJsonValue(request.workItem, 'workItem', this.options.maxWorkItemBytes);
      const branch = request.branch === undefined ? null : checkBranchName(request.branch);
      if (this.options.useGitWorktree && branch === null) {
        throw new InvalidArgumentError('branch', 'is required when useGitWorktree is true');
      }
      const hookId = generateHookId(this.#now());
      let worktree: CreatedWorktree | undefined;
      if (this.options.useGitWorktree && branch !== null) {
        const manager = this.#worktrees!;
        worktree = await this.#serialWorktree(() => manager.add(hookId, branch));
      }
      try {
        return await this.#submit(hookId, (_get, now) => {
          const record = freezeHook({
            hookId,
            agentId,
            status: HookStatus.PENDING,
            workItem,
            branch,
            worktreePath: worktree?.path ?? null,
            baseCommit: worktree?.baseCommit ?? null,
            createdAt: now,
            updatedAt: now,
            lastProgressAt: now,
            progressNote: null,
            attempts: 1,
            reassignments: 0,
            previousAgents: [],
            result: null,
            error: null,
            abandonReason: null,
            version: 1,
          });
          return {
            record,
            message: message(hookId, `created -> PENDING`, { Agent: agentId, Branch: branch }),
            announce: (commit) =>
              this.#events.emit('hook.created', {
                hook: record,
                from: null,
                to: record.status,
                commit,
              }),
          };
        });
      } catch (err) {
        if (worktree !== undefined) await this.#undoWorktree(hookId, branch!, worktree);
        throw err;
      }
    });
  }

  /**
   * PENDING → ACTIVE: the agent picked the hook up. Calling it again for an ACTIVE hook is a
   * no-op (an agent that reconnects picks its hook up again).
   * @param options.agentId when given, the hook must be assigned to this agent.
   * @throws HookNotFoundError, HookStateError.
   */
  activateHook(hookId: string, options: AsAgent = {}): Promise<Hook> {
    return this.#run(() =>
      this.#transition(
        hookId,
        HookStatus.ACTIVE,
        true,
        (h, now) => {
          if (h.status === HookStatus.ACTIVE) return null;
          return { changes: { lastProgressAt: now }, event: 'hook.activated' };
        },
        options,
      ),
    );
  }

  /**
   * ACTIVE → COMPLETED, recording `result` (plain JSON, up to `maxWorkItemBytes`).
   * @throws HookNotFoundError, HookStateError, InvalidArgumentError, HookWorkItemTooLargeError.
   */
  completeHook(hookId: string, result: unknown = null, options: AsAgent = {}): Promise<Hook> {
    return this.#run(async () => {
      const value = toJsonValue(result, 'result', this.options.maxWorkItemBytes);
      const done = await this.#transition(
        hookId,
        HookStatus.COMPLETED,
        false,
        () => ({ changes: { result: value }, event: 'hook.completed' }),
        options,
      );
      this.#retireWorktree(done);
      return done;
    });
  }

  /**
   * With `removeCompletedWorktrees`, removes the worktree of a hook just COMPLETED when it is
   * clean (a dirty one is kept: git refuses) and still on the hook's branch (see
   * {@link #removeIfRetired}). Queued with the other worktree operations before the answer, so a
   * create on the same branch that follows it finds the branch free; `close()` waits for it.
   */
  #retireWorktree(hook: Hook): void {
    const manager = this.#worktrees;
    if (!this.options.removeCompletedWorktrees || manager === undefined) return;
    if (hook.worktreePath === null) return;
    void this.#track(
      this.#serialWorktree(() => HookManager.#removeIfRetired(manager, hook)).catch(
        () => undefined,
      ),
    );
  }

  /**
   * Removes the worktree of COMPLETED `hook` when git finds it clean and its HEAD is still the
   * hook's branch. A detached HEAD (a rebase stopped midway, a checkout of a commit) or another
   * branch keeps it: `worktree remove` would drop that HEAD, and commits made on it that no
   * branch holds would be left unreachable, with the worktree's reflog gone.
   */
  static async #removeIfRetired(manager: WorktreeManager, hook: Hook): Promise<void> {
    const info = await manager.inspect(hook.hookId, hook.worktreePath);
    if (!info.valid || hook.branch === null || info.branch !== hook.branch) return;
    await manager.remove(hook.hookId, false);
  }

  /**
   * ACTIVE → FAILED (or ABANDONED → FAILED, giving up), recording the error.
   * @throws HookNotFoundError, HookStateError.
   */
  failHook(hookId: string, error: HookFailure, options: AsAgent = {}): Promise<Hook> {
    return this.#run(() => this.#fail(hookId, toErrorInfo(error), options));
  }

  #fail(hookId: string, info: HookErrorInfo, options: AsAgent = {}): Promise<Hook> {
    return this.#transition(
      hookId,
      HookStatus.FAILED,
      false,
      () => ({ changes: { error: info }, event: 'hook.failed', note: info.message }),
      options,
    );
  }

  /**
   * ACTIVE (or PENDING) → ABANDONED: its agent died or vanished. The worktree is kept.
   * @throws HookNotFoundError, HookStateError.
   */
  abandonHook(hookId: string, reason: string): Promise<Hook> {
    return this.#run(() => {
      const why = checkNote(reason, 'reason');
      return this.#transition(hookId, HookStatus.ABANDONED, false, () => ({
        changes: { abandonReason: why },
        event: 'hook.abandoned',
        note: why,
      }));
    });
  }

  /**
   * ABANDONED or FAILED → PENDING on `newAgentId`, keeping the worktree and whatever the last
   * agent left in it (committed or not).
   * @throws HookNotFoundError, HookStateError.
   * @throws HookRetryLimitError when the hook was already reassigned `maxReassignments` times.
   */
  reassignHook(hookId: string, newAgentId: string): Promise<Hook> {
    return this.#run(() => this.#reassign(hookId, newAgentId));
  }

  #reassign(hookId: string, newAgentId: string): Promise<Hook> {
    const agentId = checkAgentId(newAgentId, 'newAgentId');
    const limit = this.options.maxReassignments;
    return this.#transition(hookId, HookStatus.PENDING, false, (h, now) => {
      if (h.reassignments >= limit) throw new HookRetryLimitError(hookId, h.reassignments, limit);
      return {
        changes: {
          agentId,
          attempts: h.attempts + 1,
          reassignments: h.reassignments + 1,
          previousAgents: Object.freeze([...h.previousAgents, h.agentId]),
          lastProgressAt: now,
          progressNote: null,
        },
        event: 'hook.reassigned',
        note: `${h.agentId} -> ${agentId}`,
      };
    });
  }

  /**
   * Records progress on an ACTIVE hook (resets its staleness clock). The returned hook, `getHook`
   * and the patrol see it at once. A report `progressCommitIntervalMs` or more after the hook's
   * last commit is committed now (`progress (ACTIVE)`, its note in the `Note:` trailer); one
   * sooner is held in memory and committed with the hook's next commit — the next report after
   * the interval, a timer at the interval's end, a transition, or `close()` — so a hook adds at
   * most one progress commit per interval. The latest note always reaches git (unless the process
   * dies first); earlier notes of one interval are folded (`Progress-Folded: <n>`). `hook.progress`
   * is emitted for every report, with `commit: null` when it is held. An empty or all-whitespace
   * note is no note (`progressNote` becomes `null`), as through every door (MCP, gRPC).
   * @throws HookNotFoundError, HookStateError when the hook is not ACTIVE; InvalidArgumentError
   *   when `note` is not a string.
   */
  recordProgress(hookId: string, note?: string, options: AsAgent = {}): Promise<Hook> {
    return this.#run(() => {
      const text =
        note === undefined || (typeof note === 'string' && note.trim() === '')
          ? null
          : checkNote(note, 'note');
      return this.#submit(checkHookId(hookId), (get, now) => {
        const h = this.#mustGet(get, hookId);
        checkHolder(h, options.agentId, h.status);
        if (h.status !== HookStatus.ACTIVE) {
          throw new HookStateError(
            hookId,
            `can only record progress when ACTIVE, not ${h.status}`,
            {
              from: h.status,
              to: h.status,
            },
          );
        }
        // `updatedAt` is the hook's last commit (clocks that step back count as "just now").
        if (now - h.updatedAt < this.options.progressCommitIntervalMs) {
          const held = freezeHook({ ...h, lastProgressAt: now, progressNote: text });
          return {
            held: true,
            record: held,
            announce: () => this.#events.emit('hook.progress', { hook: held, commit: null }),
          };
        }
        const record = freezeHook({
          ...h,
          lastProgressAt: now,
          progressNote: text,
          updatedAt: now,
          version: h.version + 1,
        });
        return {
          record,
          message: message(hookId, `progress (${h.status})`, { Agent: h.agentId, Note: text }),
          announce: (commit) => this.#events.emit('hook.progress', { hook: record, commit }),
          progress: true,
        };
      });
    });
  }

  // -------------------------------------------------------------------------------------------
  // Queries

  /** The hook with this id. @throws HookNotFoundError, InvalidArgumentError (malformed id). */
  getHook(hookId: string): Promise<Hook> {
    return this.#run(async () => this.#lookup(checkHookId(hookId)));
  }

  /**
   * Hooks matching `filter`, oldest first. With `agentId` it reads only that agent's hooks (only
   * its open ones when `status` asks for PENDING or ACTIVE alone), not every hook the store holds.
   */
  listHooks(filter: ListHooksFilter = {}): Promise<Hook[]> {
    return this.#run(async () => {
      const statuses =
        filter.status === undefined
          ? undefined
          : new Set<HookStatus>(
              typeof filter.status === 'string' ? [filter.status] : filter.status,
            );
      // Finished hooks not read at open are read now, once, when the answer may hold one.
      if (statuses === undefined || [...statuses].some(isFinishedStatus)) {
        await this.#loadDeferred();
      }
      let from: Iterable<Hook> = this.#hooks.values();
      if (filter.agentId !== undefined) {
        const onlyOpen = statuses !== undefined && [...statuses].every(isOpenStatus);
        from = (onlyOpen ? this.#openByAgent : this.#byAgent).get(filter.agentId)?.values() ?? [];
      }
      const out: Hook[] = [];
      for (const h of from) {
        if (
          (filter.agentId === undefined || h.agentId === filter.agentId) &&
          (statuses === undefined || statuses.has(h.status))
        ) {
          out.push(h);
        }
      }
      return out.sort(byAge);
    });
  }

  /**
   * What `agentId` must run when it starts or reconnects: its ACTIVE hook, else its oldest
   * PENDING one; `undefined` when its hook is empty.
   */
  hookFor(agentId: string): Promise<Hook | undefined> {
    return this.#run(async () => {
      let active: Hook | undefined;
      let pending: Hook | undefined;
      for (const h of this.#openByAgent.get(agentId)?.values() ?? []) {
        if (h.status === HookStatus.ACTIVE) {
          if (active === undefined || byAge(h, active) < 0) active = h;
        } else if (pending === undefined || byAge(h, pending) < 0) {
          pending = h;
        }
      }
      return active ?? pending;
    });
  }

  /**
   * The patrol: marks PENDING and ACTIVE hooks of dead agents ABANDONED (when a liveness source
   * is set), retries every ABANDONED hook with the agent picker (when one is set, see
   * {@link setAgentPicker}), then returns every PENDING, ACTIVE and ABANDONED hook, oldest first,
   * each flagged `stale` when it had no progress for longer than `staleAfterSeconds` (and
   * `hook.stale` is emitted, once per idle spell).
   */
  checkPendingHooks(): Promise<PatrolHook[]> {
    return this.#run(() => this.#patrol(this.#picker));
  }

  async #patrol(pick: AgentPicker | undefined): Promise<PatrolHook[]> {
    {
      await this.#abandonDead();
      // Capacity that appeared since the hook was abandoned (a pool scaled up, an agent back)
      // raises no event here, so every run asks again.
      if (pick !== undefined) await this.#recover(pick);
      const now = this.#now();
      const staleMs = this.options.staleAfterSeconds * 1000;
      const out: PatrolHook[] = [];
      for (const h of this.#watched()) {
        const idle = now - h.lastProgressAt;
        const stale = isOpenStatus(h.status) && idle > staleMs;
        out.push(Object.freeze({ ...h, stale }));
        if (stale && this.#staleSeen.get(h.hookId) !== h.lastProgressAt) {
          this.#staleSeen.set(h.hookId, h.lastProgressAt);
          this.#events.emit('hook.stale', { hook: h, idleSeconds: Math.floor(idle / 1000) });
        } else if (!stale) {
          this.#staleSeen.delete(h.hookId);
        }
      }
      return out;
    }
  }

  /** Runs the patrol every `patrolIntervalSeconds` until {@link stopPatrol} or {@link close}. */
  startPatrol(): void {
    if (this.#closing !== undefined) throw new ClosedError('HookManager');
    if (this.#patrolTimer !== undefined) return;
    this.#patrolTimer = setInterval(() => {
      if (this.#patrolRunning) return; // a slow run is never overlapped
      this.#patrolRunning = true;
      this.checkPendingHooks()
        .catch((error: unknown) => this.#events.emit('patrol.error', { error }))
        .finally(() => {
          this.#patrolRunning = false;
        });
    }, this.options.patrolIntervalSeconds * 1000);
    this.#patrolTimer.unref?.();
  }

  /** Stops the patrol loop. */
  stopPatrol(): void {
    if (this.#patrolTimer !== undefined) clearInterval(this.#patrolTimer);
    this.#patrolTimer = undefined;
  }

  /** True while the patrol loop is scheduled. */
  get patrolling(): boolean {
    return this.#patrolTimer !== undefined;
  }

  /**
   * Crash recovery: reassigns every ABANDONED hook to the agent `pickAgent` chooses (the
   * fabric's `autoReassign` picks an available agent of the same pool). Hooks out of
   * reassignments are moved to FAILED instead.
   */
  recoverAbandoned(options: RecoverOptions): Promise<RecoveryReport> {
    if (options === null || typeof options?.pickAgent !== 'function') {
      return Promise.reject(new InvalidArgumentError('options.pickAgent', 'must be a function'));
    }
    return this.#run(async () => {
      if (options.patrol !== false) await this.#patrol(undefined);
      return this.#recover(options.pickAgent);
    });
  }

  /**
   * Reassigns each ABANDONED hook to the agent `pick` names. Only a hook that actually moves
   * spends a reassignment; one out of them is moved to FAILED. A hook someone else moved
   * meanwhile (a concurrent recovery, an explicit reassignHook) is skipped, so concurrent runs
   * never move or count one hook twice.
   */
  async #recover(pick: AgentPicker): Promise<RecoveryReport> {
    const reassigned: { hookId: string; fromAgentId: string; toAgentId: string }[] = [];
    const skipped: { hookId: string; reason: string }[] = [];
    const exhausted: string[] = [];
    const limit = this.options.maxReassignments;
    const abandoned = [...this.#abandoned.values()].sort(byAge);
    for (const h of abandoned) {
      if (h.reassignments >= limit) {
        try {
          await this.#fail(h.hookId, {
            message: `gave up after ${h.reassignments} reassignments (maxReassignments ${limit})`,
            code: HookRetryLimitError.code,
            name: HookRetryLimitError.name,
          });
          exhausted.push(h.hookId);
        } catch (err) {
          if (!(err instanceof HookStateError)) throw err;
          skipped.push({ hookId: h.hookId, reason: err.message });
        }
        continue;
      }
      let agentId: string | undefined;
      try {
        agentId = await pick(h);
      } catch (err) {
        skipped.push({ hookId: h.hookId, reason: `pickAgent threw: ${errorMessage(err)}` });
        continue;
      }
      if (agentId === undefined) {
        skipped.push({ hookId: h.hookId, reason: 'no agent available' });
        continue;
      }
      try {
        await this.#reassign(h.hookId, agentId);
        reassigned.push({ hookId: h.hookId, fromAgentId: h.agentId, toAgentId: agentId });
      } catch (err) {
        // Moved meanwhile (not ours to recover any more), or a malformed id from the picker.
        if (!(err instanceof HookStateError) && !(err instanceof InvalidArgumentError)) throw err;
        skipped.push({ hookId: h.hookId, reason: err.message });
      }
    }
    return Object.freeze({ reassigned, skipped, exhausted });
  }

  // -------------------------------------------------------------------------------------------
  // Maintenance

  /**
   * Maintains the store's git repository now: `git gc --auto`, which packs the loose objects
   * every transition writes once there are more than the repository's `gc.auto` (the smallest
   * positive value set, at most git's default 6700), merges packs past 50, and packs refs — else
   * does nothing. Unreachable objects are pruned after two weeks. Every other setting gc relies
   * on is pinned, not taken from the repository's config, which agents with a worktree can write
   * ({@link SAFE_GIT_CONFIG}, `gc-settings.ts`).
   * Hooks are refs (the state ref and worktree branches), so no history is pruned. Transitions go
   * on meanwhile (git's own locking keeps them apart). A run already in progress is shared, so
   * there are never two at once; `maintenanceIntervalSeconds` runs this on a timer.
   * @throws HookStoreError when git fails; nothing of the hook state is changed then.
   */
  maintain(): Promise<MaintenanceEvent> {
    if (this.#maintaining !== undefined) return this.#maintaining;
    const run = this.#track(this.#ready().then(() => this.#runMaintenance()));
    this.#maintaining = run;
    const done = (): void => {
      if (this.#maintaining === run) this.#maintaining = undefined;
    };
    run.then(done, done);
    return run;
  }

  async #runMaintenance(): Promise<MaintenanceEvent> {
    const dir = this.options.storagePath;
    const signal = this.#maintenanceAbort.signal;
    const started = performance.now();
    this.#unmaintained = false;
    try {
      // What the repository's config may say to gc (an operator's lower gc.auto), and what it
      // must not (settings no -c can take back): everything else is pinned (SAFE_GIT_CONFIG).
      const { gcAuto } = gcSettings(
        await runGit(dir, ['config', '-z', '--get-regexp', GC_SETTINGS_PATTERN]).then(
          (out) => out.toString('utf8'),
          () => '', // exit 1: none set
        ),
      );
      // A gc.pid an agent wrote (or another gc's) would make gc --auto skip without a word.
      const held = this.#gitDir === undefined ? undefined : await gcPidHolder(this.#gitDir);
      if (held !== undefined) throw new Error(held);
      const before = await countObjects(dir, signal);
      await runGit(
        dir,
        ['-c', `gc.auto=${gcAuto}`, 'gc', '--auto', '--quiet'],
        undefined,
        gitEnv(),
        { signal, background: true },
      );
      const after = await countObjects(dir, signal);
      const event = Object.freeze({
        before,
        after,
        durationMs: Math.round(performance.now() - started),
      });
      this.#events.emit('store.maintained', event);
      return event;
    } catch (err) {
      this.#unmaintained = true; // the next run tries again
      throw new HookStoreError(
        dir,
        `maintenance (git gc --auto) failed: ${errorMessage(err)}`,
        { operation: 'maintenance' },
        { cause: err },
      );
    }
  }

  /**
   * Checks every {@link LOCK_CHECK_INTERVAL_MS}, until `close()`, whether the lock file is still
   * there and this store's. One removed while the store is open
   * (a clean-up of "stale" lock files) let a second sidecar open the same store beside this one:
   * it is made again with this process's identity (`StoreLock.restoreSync`, as the state store
   * does) and `store.lock_restored` is emitted; a lock another process took meanwhile (or one
   * that cannot be made: the git directory gone) is emitted once as `store.lock_lost`.
   */
  #scheduleLockCheck(): void {
    this.#lockCheck = setTimeout(() => {
      this.#checkLock();
      if (this.#closing === undefined) this.#scheduleLockCheck();
    }, LOCK_CHECK_INTERVAL_MS);
    this.#lockCheck.unref?.();
  }

  #checkLock(): void {
    const lock = this.#lock;
    if (lock === undefined || this.#closing !== undefined) return;
    const state = lock.restoreSync();
    if (state === 'held') {
      this.#lockLost = false;
      return;
    }
    if (state === 'made') {
      this.#lockLost = false;
      this.#events.emit('store.lock_restored', { path: lock.path });
      return;
    }
    if (this.#lockLost) return;
    this.#lockLost = true;
    this.#events.emit('store.lock_lost', { path: lock.path, reason: state });
  }

  /** Runs {@link maintain} `maintenanceIntervalSeconds` after the last run ended, if needed. */
  #scheduleMaintenance(): void {
    const seconds = this.options.maintenanceIntervalSeconds;
    if (seconds === 0 || this.#closing !== undefined || this.#maintenanceTimer !== undefined) {
      return;
    }
    this.#maintenanceTimer = setTimeout(() => {
      this.#maintenanceTimer = undefined;
      if (this.#closing !== undefined) return;
      if (!this.#unmaintained) {
        this.#scheduleMaintenance();
        return;
      }
      this.maintain()
        .catch((error: unknown) => {
          if (this.#closing === undefined) this.#events.emit('store.maintenance_error', { error });
        })
        .finally(() => this.#scheduleMaintenance());
    }, seconds * 1000);
    this.#maintenanceTimer.unref?.();
  }

  // -------------------------------------------------------------------------------------------
  // Worktrees

  /**
   * What is on disk for the hook's worktree: whether it exists, is a valid worktree, is dirty,
   * and its branch and head. A missing or broken worktree is reported, not thrown.
   * @throws HookNotFoundError, InvalidArgumentError (malformed id).
   */
  inspectWorktree(hookId: string): Promise<WorktreeInfo> {
    return this.#run(async () => {
      const h = await this.#lookup(checkHookId(hookId));
      if (this.#worktrees === undefined || h.worktreePath === null) {
        return Object.freeze({
          hookId,
          path: h.worktreePath,
          exists: false,
          valid: false,
          dirty: false,
          branch: null,
          head: null,
        });
      }
      return Object.freeze(await this.#worktrees.inspect(hookId, h.worktreePath));
    });
  }

  /**
   * Removes the worktree of a COMPLETED or FAILED hook (its branch, with the agent's commits,
   * is kept). Refuses a dirty worktree unless `force`.
   * @throws HookStateError for a hook that is still open, HookWorktreeError when git refuses.
   */
  removeWorktree(hookId: string, options: { force?: boolean } = {}): Promise<void> {
    return this.#run(async () => {
      const h = await this.#lookup(checkHookId(hookId));
      if (h.status !== HookStatus.COMPLETED && h.status !== HookStatus.FAILED) {
        throw new HookStateError(
          hookId,
          `worktree can only be removed when COMPLETED or FAILED, not ${h.status}`,
          {
            from: h.status,
          },
        );
      }
      if (h.worktreePath === null || this.#worktrees === undefined) return;
      const manager = this.#worktrees;
      await this.#serialWorktree(() => manager.remove(hookId, options.force === true));
    });
  }

  // -------------------------------------------------------------------------------------------
  // Internals

  #now(): number {
    return Math.floor(this.options.clock());
  }

  /** PENDING, ACTIVE and ABANDONED hooks (what the patrol reports), oldest first. */
  #watched(): Hook[] {
    const out = [...this.#abandoned.values()];
    for (const mine of this.#openByAgent.values()) for (const h of mine.values()) out.push(h);
    return out.sort(byAge);
  }

  /**
   * Makes `record` the hook's current state, in `#hooks`, in `#byAgent` and in the indexes by
   * status (`#openByAgent`, `#abandoned`, `#finished`: a hook that finishes again goes to its end).
   */
  #put(record: Hook): void {
    const id = record.hookId;
    this.#unindex(id);
    this.#hooks.set(id, record);
    let all = this.#byAgent.get(record.agentId);
    if (all === undefined) this.#byAgent.set(record.agentId, (all = new Map()));
    all.set(id, record);
    if (isOpenStatus(record.status)) {
      let mine = this.#openByAgent.get(record.agentId);
      if (mine === undefined) this.#openByAgent.set(record.agentId, (mine = new Map()));
      mine.set(id, record);
    } else if (record.status === HookStatus.ABANDONED) {
      this.#abandoned.set(id, record);
    } else {
      this.#finished.set(id, record);
    }
  }

  /** Takes the hook's current record out of the indexes by agent and by status. */
  #unindex(id: string): void {
    const before = this.#hooks.get(id);
    if (before === undefined) return;
    for (const index of [this.#openByAgent, this.#byAgent]) {
      const theirs = index.get(before.agentId);
      if (theirs?.delete(id) === true && theirs.size === 0) index.delete(before.agentId);
    }
    this.#abandoned.delete(id);
    this.#finished.delete(id);
  }

  /** Drops a hook from memory (see `finishedRetention`). */
  #forget(id: string): void {
    this.#unindex(id);
    this.#hooks.delete(id);
    this.#deferred.delete(id);
    this.#staleSeen.delete(id);
  }

  /**
   * The hook's current record: from memory, or — a finished hook not read at open — its record
   * read from the state ref (not kept: the next call reads it again).
   * @throws HookNotFoundError
   */
  async #lookup(hookId: string): Promise<Hook> {
    const h = this.#hooks.get(hookId);
    if (h !== undefined) return h;
    const oid = this.#deferred.get(hookId);
    if (oid === undefined) throw new HookNotFoundError(hookId);
    const [record] = await this.#store!.readRecords(new Map([[hookId, oid]]));
    return deepFreeze(record!);
  }

  /**
   * Reads every finished hook not read at open into memory (a no-op once done): what listing
   * finished hooks, changing one (reassigning a FAILED hook) and dropping the oldest past
   * `finishedRetention` need. Their order of finish is then what a full read at open gives.
   */
  #loadDeferred(): Promise<void> {
    if (this.#deferred.size === 0) return Promise.resolve();
    this.#loadingDeferred ??= (async () => {
      try {
        const records = await this.#store!.readRecords(new Map(this.#deferred));
        // Some may have been dropped meanwhile (a trim): those stay dropped.
        const fresh = records.filter((r) => this.#deferred.delete(r.hookId));
        const finished = [...this.#finished.values()];
        for (const r of fresh) {
          if (isFinishedStatus(r.status)) finished.push(deepFreeze(r));
          else this.#put(deepFreeze(r)); // not finished after all (an index edited by hand)
        }
        finished.sort(byFinish);
        for (const r of finished) this.#put(r);
      } finally {
        this.#loadingDeferred = undefined;
      }
    })();
    return this.#loadingDeferred;
  }

  /**
   * The finished hooks to drop when `staged` is committed — the oldest beyond
   * `finishedRetention` once the batch's own finish (and reopen) — after those dropped at open
   * that the tree still holds. Hooks the batch changes are dropped only if they finish in it.
   */
  #planTrim(staged: ReadonlyMap<string, Hook>): string[] {
    const drop = [...this.#untrimmed];
    const finishing: string[] = [];
    let reopening = 0;
    for (const r of staged.values()) {
      const was = this.#finished.has(r.hookId);
      if (isFinishedStatus(r.status)) {
        if (!was) finishing.push(r.hookId);
      } else if (was) {
        reopening++;
      }
    }
    let excess =
      this.#finished.size - reopening + finishing.length - this.options.finishedRetention;
    if (excess <= 0) return drop;
    for (const id of this.#finished.keys()) {
      if (excess === 0) break;
      if (staged.has(id)) continue;
      drop.push(id);
      excess--;
    }
    for (const id of finishing) {
      if (excess === 0) break;
      drop.push(id);
      excess--;
    }
    return drop;
  }

  #mustGet(get: (hookId: string) => Hook | undefined, hookId: string): Hook {
    const h = get(hookId);
    if (h === undefined) throw new HookNotFoundError(hookId);
    return h;
  }

  /** Runs `fn` once the store is open, tracked so that `close()` waits for it. */
  #run<T>(fn: () => Promise<T>): Promise<T> {
    return this.#track(
      (async () => {
        await this.#ready();
        return fn();
      })(),
    );
  }

  async #ready(): Promise<void> {
    if (this.#closing !== undefined) throw new ClosedError('HookManager');
    this.#opening ??= this.#open().then(
      () => {
        this.#lastError = undefined;
      },
      (err: unknown) => {
        this.#opening = undefined;
        if (err instanceof HookStoreError) this.#lastError = err;
        throw err;
      },
    );
    // A call accepted before close() runs to completion; close() waits for it.
    await this.#opening;
  }

  async #open(): Promise<void> {
    const o = this.options;
    const git = simpleGit({
      baseDir: await ensureDir(o.storagePath),
      config: [
        ...SAFE_GIT_CONFIG,
        `user.name=${o.author.name}`,
        `user.email=${o.author.email}`,
        'commit.gpgsign=false',
      ],
      unsafe: SIMPLE_GIT_UNSAFE,
      allowEnvironment: SIMPLE_GIT_ALLOW_ENV,
    }).env(gitEnv());
    let gitDir: string;
    let objectsDir: string;
    let objectFormat: ObjectFormat;
    let bare: boolean;
    try {
      if (!(await isRepository(o.storagePath))) {
        await git.raw(['init', '--initial-branch=main']);
        await git.raw([
          'commit',
          '--allow-empty',
          '--no-verify',
          '-m',
          'agent-fabric: initialise hook store',
        ]);
      }
      const lines = (
        await git.raw([
          'rev-parse',
          '--path-format=absolute',
          '--git-common-dir',
          '--git-path',
          'objects',
          '--is-bare-repository',
          '--show-object-format',
        ])
      )
        .trim()
        .split('\n');
      const [dir, objects, isBare, format] = lines;
      if (!dir || !objects || (format !== 'sha1' && format !== 'sha256')) {
        throw new Error(`unexpected rev-parse output ${JSON.stringify(lines)}`);
      }
      gitDir = dir;
      objectsDir = objects;
      objectFormat = format;
      bare = isBare === 'true';
    } catch (err) {
      throw new HookStoreError(
        o.storagePath,
        `is not a usable git repository: ${errorMessage(err)}`,
        { operation: 'open' },
        { cause: err },
      );
    }
    const lock = await StoreLock.acquire(join(gitDir, HOOK_LOCK_FILE));
    try {
      // Holding the store lock, nobody else writes the state ref: a ref lock left by a git
      // killed in the middle of an update is stale, and would block every transition.
      await rm(join(gitDir, `${HOOKS_REF}.lock`), { force: true });
      const store = new HookStateStore({
        repoDir: o.storagePath,
        objectsDir,
        objectFormat,
        fsync: o.fsync,
        author: o.author,
        git,
        onRefMoved: (found, restored) => this.#events.emit('store.ref_moved', { found, restored }),
        refLockPath: join(gitDir, `${HOOKS_REF}.lock`),
        onRefLockRemoved: (path, ageMs) =>
          this.#events.emit('store.ref_lock_removed', { path, ageMs: Math.round(ageMs) }),
        signing: o.stateSigning,
        onQuarantined: (event) => {
          this.#quarantinedHeads++;
          this.#events.emit('store.state_quarantined', event);
        },
      });
      let records: Hook[];
      let deferred: ReadonlyMap<string, string>;
      try {
        ({ records, deferred } = await store.load(o.clock()));
        const finishedCount =
          deferred.size + records.filter((r) => isFinishedStatus(r.status)).length;
        // Over the limit: the oldest are dropped below, which needs them all, in order.
        if (deferred.size > 0 && finishedCount > o.finishedRetention) {
          records = [...records, ...(await store.readRecords(deferred))];
          deferred = new Map();
        }
      } catch (err) {
        // Coded already (HookStoreError, HookStateRollbackError, HookStoreSignedError).
        if (err instanceof FabricError) throw err;
        throw new HookStoreError(
          o.storagePath,
          `could not read ${HOOKS_REF}: ${errorMessage(err)}`,
          {
            operation: 'load',
          },
          { cause: err },
        );
      }
      this.#hooks.clear();
      this.#openByAgent.clear();
      this.#byAgent.clear();
      this.#abandoned.clear();
      this.#finished.clear();
      this.#deferred.clear();
      for (const [id, oid] of deferred) this.#deferred.set(id, oid);
      // Finished ones in the order they finished, so the oldest are dropped first.
      const finished = records.filter((r) => isFinishedStatus(r.status)).sort(byFinish);
      for (const r of records) if (!isFinishedStatus(r.status)) this.#put(deepFreeze(r));
      for (const r of finished) this.#put(deepFreeze(r));
      // Over the limit (it was lowered, or the store predates it): dropped from memory now and
      // from the tree with the next commit.
      this.#untrimmed = [];
      for (const id of this.#finished.keys()) {
        if (this.#finished.size - this.#untrimmed.length <= o.finishedRetention) break;
        this.#untrimmed.push(id);
      }
      for (const id of this.#untrimmed) this.#forget(id);
      if (o.useGitWorktree) {
        if (!bare) await excludeWorktrees(gitDir, o.storagePath, o.worktreeRoot);
        this.#worktrees = new WorktreeManager(git, o.worktreeRoot, o.baseBranch ?? 'HEAD');
        const { kept } = await this.#worktrees.removeOrphans(
          (id) => this.#hooks.has(id) || this.#deferred.has(id),
          (id) => inHistory(git, id),
        );
        for (const path of kept) {
          this.#events.emit('store.worktree_kept', { hookId: basename(path), path });
        }
        if (o.removeCompletedWorktrees) {
          // Clean worktrees of COMPLETED hooks left by a crash between the commit and the
          // removal, or kept before (removeCompletedWorktrees off, an earlier version).
          for (const id of await this.#worktrees.hookFolders()) {
            const oid = this.#deferred.get(id);
            const hook =
              this.#hooks.get(id) ??
              (oid === undefined ? undefined : (await store.readRecords(new Map([[id, oid]])))[0]);
            if (hook?.status !== HookStatus.COMPLETED) continue;
            await HookManager.#removeIfRetired(this.#worktrees, hook).catch(() => undefined);
          }
        }
      }
      this.#store = store;
      this.#lock = lock;
      this.#gitDir = gitDir;
      this.#scheduleMaintenance();
      this.#scheduleLockCheck();
    } catch (err) {
      await lock.release();
      throw err;
    }
  }

  /** Applies a status change `to` to an existing hook, after `check` (which may add fields). */
  #transition(
    hookId: string,
    to: HookStatus,
    idempotent: boolean,
    check: (h: Hook, now: number) => TransitionPlan | null,
    options: AsAgent = {},
  ): Promise<Hook> {
    return this.#submit(checkHookId(hookId), (get, now) => {
      const h = this.#mustGet(get, hookId);
      // Checked here, with the state the change is built on: a hook abandoned or reassigned
      // while the call was queued is not the caller's any more.
      checkHolder(h, options.agentId, to);
      if (!(idempotent && h.status === to) && !canTransition(h.status, to)) {
        throw new HookStateError(hookId, `cannot go from ${h.status} to ${to}`, {
          from: h.status,
          to,
        });
      }
      const plan = check(h, now);
      if (plan === null) return null;
      const record = freezeHook({
        ...h,
        ...plan.changes,
        status: to,
        updatedAt: now,
        version: h.version + 1,
      });
      const agent = record.agentId;
      return {
        record,
        message: message(hookId, `${h.status} -> ${to}`, { Agent: agent, Note: plan.note ?? null }),
        announce: (commit) => {
          const base = { hook: record, from: h.status, to, commit };
          if (plan.event === 'hook.reassigned') {
            this.#events.emit('hook.reassigned', {
              ...base,
              fromAgentId: h.agentId,
              toAgentId: agent,
            });
          } else {
            this.#events.emit(plan.event, base);
          }
        },
      };
    });
  }

  /** Queues a change; resolves with the hook once its commit is on the ref. */
  #submit(hookId: string, build: Build): Promise<Hook> {
    // A finished hook not read at open is read first (with the others: its place among them,
    // by finish, is what `finishedRetention` drops by).
    if (this.#deferred.has(hookId)) {
      return this.#loadDeferred().then(() => this.#submit(hookId, build));
    }
    return new Promise<Hook>((resolve, reject) => {
      this.#queue.push({ hookId, build, resolve, reject });
      if (!this.#draining) void this.#drain();
    });
  }

  /** Counts `count` more reports held for `hookId`, and sets its flush timer if none is set. */
  #hold(hookId: string, count: number, delay?: number): void {
    const entry = this.#held.get(hookId) ?? { count: 0 };
    entry.count += count;
    this.#held.set(hookId, entry);
    if (entry.timer !== undefined || this.#closing !== undefined) return;
    const interval = this.options.progressCommitIntervalMs;
    const since = this.#now() - (this.#hooks.get(hookId)?.updatedAt ?? 0);
    const wait = delay ?? Math.min(interval, Math.max(0, interval - since));
    entry.timer = setTimeout(() => {
      entry.timer = undefined;
      if (this.#closing !== undefined) return; // close() commits it
      this.#track(this.#flushHeld(hookId)).catch(() => {
        // Still held (a failed commit changes nothing): try again an interval later; the next
        // commit of the hook or close() carries it otherwise.
        if (this.#held.has(hookId)) this.#hold(hookId, 0, interval);
      });
    }, wait);
    entry.timer.unref?.();
  }

  /** Forgets the held reports of `hookId` (a commit carried them). */
  #dropHeld(hookId: string): void {
    const entry = this.#held.get(hookId);
    if (entry?.timer !== undefined) clearTimeout(entry.timer);
    this.#held.delete(hookId);
  }

  /** Commits the progress held for `hookId` (nothing when a commit carried it meanwhile). */
  #flushHeld(hookId: string): Promise<Hook> {
    return this.#submit(hookId, (get, now) => {
      const h = get(hookId);
      if (h === undefined || h.status !== HookStatus.ACTIVE) return null;
      const record = freezeHook({ ...h, updatedAt: now, version: h.version + 1 });
      return {
        record,
        message: message(hookId, `progress (${h.status})`, {
          Agent: h.agentId,
          Note: h.progressNote,
        }),
        progress: 'flush',
      };
    });
  }

  /** On close: commits every hook's held progress; what can not be committed is warned about. */
  async #flushAllHeld(): Promise<void> {
    if (this.#store === undefined || this.#held.size === 0) return;
    const ids = [...this.#held.keys()];
    for (const id of ids) {
      const timer = this.#held.get(id)?.timer;
      if (timer !== undefined) clearTimeout(timer);
    }
    const results = await Promise.allSettled(ids.map((id) => this.#flushHeld(id)));
    const failed = results.flatMap((r) => (r.status === 'rejected' ? [r.reason as unknown] : []));
    if (failed.length > 0) {
      process.emitWarning(
        `could not commit held progress of ${failed.length} hook(s) on close: ${errorMessage(failed[0])}`,
        { code: 'FABRIC_HOOK_PROGRESS_LOST' },
      );
    }
  }

  /** Tracks `p` so that `close()` waits for it. */
  #track<T>(p: Promise<T>): Promise<T> {
    this.#inflight.add(p);
    const done = (): void => {
      this.#inflight.delete(p);
    };
    p.then(done, done);
    return p;
  }

  /**
   * Writes queued changes: every change queued while the previous write was in flight goes
   * into the next write — one commit each, one `update-ref` for all (group commit).
   */
  async #drain(): Promise<void> {
    this.#draining = true;
    try {
      while (this.#queue.length > 0) {
        const batch = this.#queue.splice(0, MAX_BATCH);
        const now = this.#now();
        const staged = new Map<string, Hook>();
        const get = (id: string): Hook | undefined => staged.get(id) ?? this.#hooks.get(id);
        const accepted: { q: Queued; change: Staged | Held | null }[] = [];
        // Held progress: reports held by this batch (not yet carried by a commit of it), and
        // hooks whose reports held before this batch a commit of it carries.
        const heldNow = new Map<string, number>();
        const carried = new Set<string>();
        for (const q of batch) {
          try {
            let change = q.build(get, now);
            if (change !== null && 'held' in change) {
              const id = change.record.hookId;
              heldNow.set(id, (heldNow.get(id) ?? 0) + 1);
            } else if (change !== null) {
              const id = change.record.hookId;
              const count =
                (carried.has(id) ? 0 : (this.#held.get(id)?.count ?? 0)) + (heldNow.get(id) ?? 0);
              if (count === 0 && change.progress === 'flush') {
                change = null; // already carried by an earlier commit
              } else {
                carried.add(id);
                heldNow.delete(id);
                if (count > 0) change = carryHeld(change, count);
              }
            }
            if (change !== null) staged.set(change.record.hookId, change.record);
            accepted.push({ q, change });
          } catch (err) {
            q.reject(err);
          }
        }
        const changes = accepted.flatMap(({ change }) =>
          change === null || 'held' in change ? [] : [change],
        );
        // Dropping the oldest finished hooks needs them all, in order: read now if not yet, and
        // only when this batch could go over the limit.
        if (
          changes.length > 0 &&
          this.#deferred.size > 0 &&
          this.#finished.size + this.#deferred.size + staged.size > this.options.finishedRetention
        ) {
          try {
            await this.#loadDeferred();
          } catch (err) {
            if (err instanceof HookStoreError) this.#lastError = err;
            this.#failedCommits++;
            for (const { q } of accepted) q.reject(err);
            continue;
          }
        }
        const trim = changes.length === 0 ? [] : this.#planTrim(staged);
        let commits: string[];
        try {
          commits = await this.#store!.commit(
            changes.map((c): StateChange => ({ record: c.record, message: c.message })),
            now,
            trim.length === 0
              ? undefined
              : {
                  hookIds: trim,
                  message: trimMessage(trim.length, this.options.finishedRetention),
                },
          );
        } catch (err) {
          if (err instanceof HookStoreError) this.#lastError = err;
          this.#failedCommits++;
          for (const { q } of accepted) q.reject(err);
          continue;
        }
        if (changes.length > 0) {
          this.#commits++;
          this.#unmaintained = true;
          this.#lastError = undefined;
        }
        for (const record of staged.values()) this.#put(record);
        for (const id of carried) this.#dropHeld(id);
        for (const [id, count] of heldNow) this.#hold(id, count);
        let i = 0;
        for (const { q, change } of accepted) {
          if (change === null) {
            q.resolve(this.#hooks.get(q.hookId)!);
            continue;
          }
          if ('held' in change) {
            q.resolve(change.record);
            change.announce();
            continue;
          }
          const commit = commits[i++]!;
          q.resolve(change.record);
          change.announce?.(commit);
        }
        if (trim.length > 0) {
          for (const id of trim) this.#forget(id);
          this.#untrimmed = [];
        }
      }
    } finally {
      this.#draining = false;
    }
  }

  /** Marks open hooks of agents the liveness source says are dead ABANDONED. */
  async #abandonDead(): Promise<void> {
    const liveness = this.#liveness;
    if (liveness === undefined) return;
    const agents = [...this.#openByAgent.keys()];
    const verdicts = await Promise.all(
      agents.map(async (agentId): Promise<[string, boolean]> => {
        try {
          return [agentId, (await liveness.isAlive(agentId)) === true];
        } catch (error) {
          this.#events.emit('patrol.error', { error });
          return [agentId, true]; // unknown: leave its hooks alone
        }
      }),
    );
    const dead = new Set(verdicts.filter(([, alive]) => !alive).map(([id]) => id));
    const work = agents
      .filter((agentId) => dead.has(agentId))
      .flatMap((agentId) => [...(this.#openByAgent.get(agentId)?.values() ?? [])])
      .map((seen) =>
        this.#submit(seen.hookId, (get, now) => {
          const h = get(seen.hookId);
          // Changed since we looked (picked up, reassigned…): leave it.
          if (h === undefined || h.version !== seen.version || !isOpenStatus(h.status)) return null;
          const reason = `agent ${h.agentId} is not alive (patrol)`;
          const record = freezeHook({
            ...h,
            status: HookStatus.ABANDONED,
            abandonReason: reason,
            updatedAt: now,
            version: h.version + 1,
          });
          return {
            record,
            message: message(h.hookId, `${h.status} -> ABANDONED`, {
              Agent: h.agentId,
              Note: reason,
            }),
            announce: (commit) =>
              this.#events.emit('hook.abandoned', {
                hook: record,
                from: h.status,
                to: HookStatus.ABANDONED,
                commit,
              }),
          };
        }),
      );
    await Promise.all(work);
  }

  #serialWorktree<T>(fn: () => Promise<T>): Promise<T> {
    const next = this.#worktreeChain.then(fn, fn);
    this.#worktreeChain = next.catch(() => undefined);
    return next;
  }

  async #undoWorktree(hookId: string, branch: string, worktree: CreatedWorktree): Promise<void> {
    const manager = this.#worktrees;
    if (manager === undefined) return;
    await this.#serialWorktree(async () => {
      await manager.remove(hookId, true).catch(() => undefined);
      if (worktree.createdBranch) await manager.deleteBranch(branch);
    });
  }
}

// ---------------------------------------------------------------------------------------------

/** First finished first (`updatedAt` of a finished hook is when it finished); the id breaks ties. */
function byFinish(a: Hook, b: Hook): number {
  return a.updatedAt - b.updatedAt || (a.hookId < b.hookId ? -1 : a.hookId > b.hookId ? 1 : 0);
}

/** The message of the commit that drops finished hooks past `finishedRetention`. */
function trimMessage(count: number, retention: number): string {
  return [
    `trim: ${count} finished hook(s) dropped (finishedRetention ${retention})`,
    '',
    `Dropped: ${count}`,
  ].join('\n');
}

/** Oldest first; the id breaks ties so the order is stable. */
function byAge(a: Hook, b: Hook): number {
  return a.createdAt - b.createdAt || (a.hookId < b.hookId ? -1 : a.hookId > b.hookId ? 1 : 0);
}

/**
 * Refuses an agent's change (`to`) of a hook it does not hold (see {@link AsAgent}).
 * @throws HookStateError
 */
function checkHolder(h: Hook, agentId: string | undefined, to: HookStatus): void {
  if (agentId === undefined) return;
  if (agentId !== h.agentId) {
    throw new HookStateError(h.hookId, `is assigned to agent ${h.agentId}, not ${agentId}`, {
      agentId: h.agentId,
      requestedBy: agentId,
    });
  }
  if (h.status === HookStatus.ABANDONED) throw abandonedError(h, agentId, to);
}

/** An agent acting on its hook after the hook was abandoned. */
export function abandonedError(h: Hook, agentId: string, to: HookStatus): HookStateError {
  return new HookStateError(
    h.hookId,
    `was abandoned (${h.abandonReason ?? 'no reason'}): agent ${agentId} no longer holds it; it waits for reassignment`,
    { from: h.status, to, agentId },
  );
}

function freezeHook(h: Hook): Hook {
  return Object.freeze({ ...h, previousAgents: Object.freeze([...h.previousAgents]) });
}

/**
 * What a trailer's value may not hold: whitespace runs and what a terminal acts on rather than
 * shows (a NUL breaks `git fsck --strict` and cuts `git log` short; C1 controls such as CSI and
 * NEL, the bidirectional controls and what a terminal draws as nothing — tag characters, the
 * soft hyphen — reach the operator's terminal through `git log`, as they would through the CLI,
 * which escapes the same set); each run becomes one space.
 */
const LINE_BREAKERS = new RegExp(`(?:\\s|${UNPRINTABLE_CLASS})+`, 'gu');

function message(hookId: string, what: string, trailers: Record<string, string | null>): string {
  return [`hook ${hookId}: ${what}`, '', `Hook-Id: ${hookId}`, ...trailerLines(trailers)].join(
    '\n',
  );
}

function trailerLines(trailers: Record<string, string | null>): string[] {
  const lines: string[] = [];
  for (const [key, value] of Object.entries(trailers)) {
    if (value !== null) lines.push(`${key}: ${clip(value.replace(LINE_BREAKERS, ' '), 500, '')}`);
  }
  return lines;
}

/**
 * `change` carrying `count` progress reports held since the hook's previous commit: says so in
 * its message (and, unless it is a progress commit whose `Note:` already is the note, gives the
 * latest note as `Progress-Note:`).
 */
function carryHeld(change: Staged, count: number): Staged {
  const note = change.progress === undefined ? change.record.progressNote : null;
  const extra = trailerLines({ 'Progress-Folded': String(count), 'Progress-Note': note });
  return { ...change, message: [change.message, ...extra].join('\n') };
}

function checkAgentId(value: unknown, field: string): string {
  if (typeof value !== 'string' || value.length === 0) {
    throw new InvalidArgumentError(field, 'must be a non-empty string');
  }
  if (value.length > MAX_AGENT_ID_LENGTH) {
    throw new InvalidArgumentError(field, `must be at most ${MAX_AGENT_ID_LENGTH} characters`);
  }
  // eslint-disable-next-line no-control-regex
  if (/[\x00-\x1f\x7f]/.test(value)) {
    throw new InvalidArgumentError(field, 'must not contain control characters');
  }
  return value;
}

/** Longest `error.code` and `error.name` kept on a failed hook (longer ones are cut, `…`). */
const MAX_ERROR_CODE_LENGTH = 128;

function cut(value: string, max: number): string {
  return value.length > max ? `${value.slice(0, max)}…` : value;
}

function checkNote(value: unknown, field: string): string {
  if (typeof value !== 'string') throw new InvalidArgumentError(field, 'must be a string');
  return value.length > MAX_NOTE_LENGTH ? `${value.slice(0, MAX_NOTE_LENGTH)}…` : value;
}

/**
 * A failure as stored. An empty or all-whitespace message is {@link EMPTY_FAILURE_MESSAGE} and an
 * empty code none, as through every door (MCP `fail_hook`, gRPC `FailHook`).
 */
function toErrorInfo(error: unknown): HookErrorInfo {
  const said = (text: string, field: string): string =>
    text.trim() === '' ? EMPTY_FAILURE_MESSAGE : checkNote(text, field);
  if (typeof error === 'string')
    return Object.freeze({ message: said(error, 'error'), code: null, name: null });
  if (
    error !== null &&
    typeof error === 'object' &&
    typeof (error as { message?: unknown }).message === 'string'
  ) {
    const e = error as { message: string; code?: unknown; name?: unknown };
    const name = error instanceof Error ? error.name : e.name;
    return Object.freeze({
      message: said(e.message, 'error.message'),
      code:
        typeof e.code === 'string' && e.code.trim() !== ''
          ? cut(e.code, MAX_ERROR_CODE_LENGTH)
          : null,
      name: typeof name === 'string' ? cut(name, MAX_ERROR_CODE_LENGTH) : null,
    });
  }
  throw new InvalidArgumentError('error', 'must be an Error, a string or { message, code? }');
}

function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** `git count-objects -v` of the repository at `dir`. */
async function countObjects(dir: string, signal: AbortSignal): Promise<ObjectCounts> {
  const out = (
    await runGit(dir, ['count-objects', '-v'], undefined, gitEnv(), { signal })
  ).toString('utf8');
  const field = (name: string): number => {
    const m = new RegExp(`^${name}: (\\d+)$`, 'm').exec(out);
    return m ? Number(m[1]) : 0;
  };
  return Object.freeze({
    loose: field('count'),
    looseKiB: field('size'),
    inPack: field('in-pack'),
    packs: field('packs'),
  });
}

/**
 * Makes the store's folder (0700) if needed and takes other users' access from one left by an
 * earlier version (made with the umask's mode, 0755): hook records hold agents' work items and
 * results, and everything git writes inside (the umask's modes) is then out of their reach.
 */
async function ensureDir(path: string): Promise<string> {
  await mkdir(path, { recursive: true, mode: PRIVATE_DIR_MODE });
  await chmod(path, PRIVATE_DIR_MODE);
  return path;
}

/** A work tree with `.git`, or a bare repository (HEAD + objects + refs at the top). */
async function isRepository(path: string): Promise<boolean> {
  if (await exists(join(path, '.git'))) return true;
  return (
    (await exists(join(path, 'HEAD'))) &&
    (await exists(join(path, 'objects'))) &&
    (await exists(join(path, 'refs')))
  );
}

/** Keeps the worktree folder out of `git status` of the store when it is inside it. */
async function excludeWorktrees(gitDir: string, storagePath: string, root: string): Promise<void> {
  const rel = relative(storagePath, root);
  if (rel === '' || rel.startsWith('..') || rel.startsWith(sep)) return;
  const pattern = `/${rel.split(sep).join('/')}/`;
  const file = join(gitDir, 'info', 'exclude');
  const current = await readFile(file, 'utf8').catch(() => '');
  if (current.split('\n').includes(pattern)) return;
  await mkdir(dirname(file), { recursive: true, mode: PRIVATE_DIR_MODE });
  const prefix = current === '' || current.endsWith('\n') ? '' : '\n';
  await appendFile(file, `${prefix}# agent-fabric hook worktrees\n${pattern}\n`, { mode: 0o600 });
}

/**
 * Whether a commit of the state ref names `hookId` (`Hook-Id:` trailer): the hook was once in
 * the store. False when the ref does not exist (nothing was ever committed); true when git
 * cannot tell otherwise (the folder is then kept, not forced out).
 */
async function inHistory(git: SimpleGit, hookId: string): Promise<boolean> {
  const ref = await git.raw(['rev-parse', '--verify', '-q', HOOKS_REF]).then(
    (out) => out.trim(),
    () => '',
  );
  if (ref === '') return false;
  try {
    const out = await git.raw([
      'log',
      '-1',
      '--format=%H',
      '--fixed-strings',
      `--grep=Hook-Id: ${hookId}`,
      HOOKS_REF,
      '--',
    ]);
    return out.trim() !== '';
  } catch {
    return true;
  }
}

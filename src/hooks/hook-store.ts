/**
 * The hook store contract (the `hook` plugin kind): where GUPP work hooks persist and how their
 * state machine is kept. {@link HookManager} — hooks as commits on a git ref, worktrees per
 * hook — is the default, packaged as the first-party `plugins/hook-git`; a plugin may keep
 * hooks elsewhere as long as it keeps this contract (see `test/contracts/hook-store.contract.ts`):
 * the same transitions, the same typed errors, and `hook.abandoned` announced after an
 * abandonment, which the fabric's recovery listens to.
 *
 * @module
 */
import type { Hook, PatrolHook, WorktreeInfo } from './hook.js';
import type { HookEventName, HookListener } from './hook-events.js';
import type {
  AgentPicker,
  AsAgent,
  CreateHookRequest,
  HookFailure,
  ListHooksFilter,
  RecoverOptions,
  RecoveryReport,
} from './hook-manager.js';
import type { AgentLiveness } from './liveness.js';

/** Where hooks persist, and their transitions. */
export interface HookStore {
  /**
   * The store error of the store's last write (or open), until one succeeds again; `undefined`
   * while it works. Optional: a store without it is always reported ready (`GET /readyz`).
   */
  readonly lastError?: unknown;
  /**
   * Commits of hook state and failed commits so far, and heads quarantined at open (optional),
   * for the metrics. Optional: a store without it has only its up gauge and events counted.
   */
  readonly stats?: Readonly<{ commits: number; failedCommits: number; quarantinedHeads?: number }>;
  /** Opens the store (fails fast on an unusable one). Idempotent. */
  open(): Promise<unknown>;
  /** Stops the patrol, finishes pending writes, releases the store. */
  close(): Promise<void>;
  on<K extends HookEventName>(event: K, listener: HookListener<K>): () => void;
  off<K extends HookEventName>(event: K, listener: HookListener<K>): void;
  /** Who is alive (the fabric's agents): hooks of dead agents are abandoned by the patrol. */
  setLiveness(liveness: AgentLiveness | undefined): void;
  /** Who gets abandoned hooks on patrol runs. */
  setAgentPicker(pick: AgentPicker | undefined): void;
  /** A new PENDING hook. @throws HookValidationError */
  createHook(request: CreateHookRequest): Promise<Hook>;
  /**
   * PENDING → ACTIVE. With `options.agentId` (the agent-facing calls), the hook must be held by
   * that agent: assigned to it and not ABANDONED ({@link AsAgent}), checked atomically with the
   * transition. @throws HookNotFoundError; HookStateError
   */
  activateHook(hookId: string, options?: AsAgent): Promise<Hook>;
  /** ACTIVE → COMPLETED; `options` as for `activateHook`. */
  completeHook(hookId: string, result?: unknown, options?: AsAgent): Promise<Hook>;
  /** ACTIVE or PENDING (or, for the operator only, ABANDONED) → FAILED; `options` as for `activateHook`. */
  failHook(hookId: string, error: HookFailure, options?: AsAgent): Promise<Hook>;
  /** ACTIVE or PENDING → ABANDONED; announces `hook.abandoned`. */
  abandonHook(hookId: string, reason: string): Promise<Hook>;
  /** FAILED or ABANDONED → PENDING on another agent. @throws HookRetryLimitError */
  reassignHook(hookId: string, newAgentId: string): Promise<Hook>;
  /** Progress on an ACTIVE hook; `options` as for `activateHook`. */
  recordProgress(hookId: string, note?: string, options?: AsAgent): Promise<Hook>;
  /** @throws HookNotFoundError */
  getHook(hookId: string): Promise<Hook>;
  listHooks(filter?: ListHooksFilter): Promise<Hook[]>;
  /** The agent's ACTIVE hook, else its oldest PENDING one. */
  hookFor(agentId: string): Promise<Hook | undefined>;
  /** One patrol run: stale and orphaned hooks. */
  checkPendingHooks(): Promise<PatrolHook[]>;
  startPatrol(): void;
  stopPatrol(): void;
  /** Gives ABANDONED hooks to the agents `pickAgent` names. */
  recoverAbandoned(options: RecoverOptions): Promise<RecoveryReport>;
  /** The hook's worktree; a store without worktrees throws InvalidArgumentError. */
  inspectWorktree(hookId: string): Promise<WorktreeInfo>;
  /** Removes the hook's worktree; a store without worktrees throws InvalidArgumentError. */
  removeWorktree(hookId: string, options?: { force?: boolean }): Promise<void>;
}

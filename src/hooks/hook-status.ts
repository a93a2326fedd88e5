/**
 * Hook statuses and the transitions between them.
 *
 * @module
 */

/** Where a hook is in its life. */
export enum HookStatus {
  /** On an agent's hook, not yet picked up. The agent must run it when it starts or reconnects. */
  PENDING = 'PENDING',
  /** Picked up: the agent is working on it (in its worktree, when worktrees are used). */
  ACTIVE = 'ACTIVE',
  /** Done; `result` holds what the agent reported. Final. */
  COMPLETED = 'COMPLETED',
  /** The agent reported failure (or recovery gave up). May be reassigned within the retry limit. */
  FAILED = 'FAILED',
  /** Its agent died or vanished while holding it. Waiting to be reassigned. */
  ABANDONED = 'ABANDONED',
}

/**
 * The legal transitions. PENDING → ABANDONED covers an agent that dies before picking its work
 * up; ABANDONED → FAILED is recovery giving up on a hook that ran out of reassignments.
 */
export const HOOK_TRANSITIONS: Readonly<Record<HookStatus, readonly HookStatus[]>> = Object.freeze({
  [HookStatus.PENDING]: Object.freeze([HookStatus.ACTIVE, HookStatus.ABANDONED]),
  [HookStatus.ACTIVE]: Object.freeze([
    HookStatus.COMPLETED,
    HookStatus.FAILED,
    HookStatus.ABANDONED,
  ]),
  [HookStatus.COMPLETED]: Object.freeze([]),
  [HookStatus.FAILED]: Object.freeze([HookStatus.PENDING]),
  [HookStatus.ABANDONED]: Object.freeze([HookStatus.PENDING, HookStatus.FAILED]),
});

/** True when a hook in status `from` may move to `to`. */
export function canTransition(from: HookStatus, to: HookStatus): boolean {
  return HOOK_TRANSITIONS[from].includes(to);
}

/** Statuses an agent still owes work for (the patrol watches these). */
export function isOpenStatus(status: HookStatus): boolean {
  return status === HookStatus.PENDING || status === HookStatus.ACTIVE;
}

/** Statuses of finished hooks (COMPLETED, FAILED): what `finishedRetention` bounds. */
export function isFinishedStatus(status: HookStatus): boolean {
  return status === HookStatus.COMPLETED || status === HookStatus.FAILED;
}

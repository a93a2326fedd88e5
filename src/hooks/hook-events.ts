/**
 * Typed events of the HookManager. Listeners run after the change is committed (a held progress
 * report: once it is recorded in memory, see {@link HookProgressEvent}); a listener
 * that throws does not undo anything (its error becomes a process warning).
 *
 * @module
 */
import type { Hook } from './hook.js';
import type { HookStatus } from './hook-status.js';

/** A committed change of a hook's status (or its creation). */
export interface HookTransitionEvent {
  readonly hook: Hook;
  /** Previous status; `null` for creation. */
  readonly from: HookStatus | null;
  readonly to: HookStatus;
  /** Commit on the state ref that recorded it. */
  readonly commit: string;
}

/** `hook.reassigned`: the hook moved from one agent to another. */
export interface HookReassignedEvent extends HookTransitionEvent {
  readonly fromAgentId: string;
  readonly toAgentId: string;
}

/**
 * `hook.progress`: an agent reported progress (one event per report). A report within
 * `progressCommitIntervalMs` of the hook's last commit is held in memory and committed with the
 * hook's next commit (see `HookManager.recordProgress`).
 */
export interface HookProgressEvent {
  readonly hook: Hook;
  /** Commit on the state ref that recorded it; `null` while the report is held in memory. */
  readonly commit: string | null;
}

/** `hook.stale`: the patrol found a PENDING or ACTIVE hook without progress for too long. */
export interface HookStaleEvent {
  readonly hook: Hook;
  /** Seconds since its last progress. */
  readonly idleSeconds: number;
}

/** `patrol.error`: a patrol run failed (the loop keeps running). */
export interface PatrolErrorEvent {
  readonly error: unknown;
}

/**
 * `store.ref_moved`: the state ref had been moved by someone other than this store (an agent in
 * a worktree shares the git directory) — to `found` (null: deleted); the store's own state was
 * put back on it at `restored`, and the move is undone.
 */
export interface RefMovedEvent {
  readonly found: string | null;
  readonly restored: string;
}

/**
 * `store.state_quarantined`: at load, the state ref's head (`found`) was not the store's, in a
 * store that signs its commits — written while no sidecar ran by someone without the key. It
 * did not verify: no MAC (`unsigned`) or one made with another key (`bad-mac`); or it verifies
 * but is older than the commit the state file records as current, or the ref was deleted
 * (`rollback`: a genuine earlier state put back, e.g. a finished hook PENDING again). It is kept
 * under `quarantineRef` (both null when the ref was deleted: nothing to keep), and the ref was
 * moved to `restored` — the recorded commit, or (with nothing recorded after it) the newest
 * commit before `found` that verifies — whose state is what was loaded.
 */
export interface StateQuarantinedEvent {
  readonly found: string | null;
  readonly restored: string;
  readonly quarantineRef: string | null;
  readonly reason: 'unsigned' | 'bad-mac' | 'rollback';
}

/**
 * `store.ref_lock_removed`: a transition found the state ref locked by a lock file older than
 * `STALE_REF_LOCK_MS` (left by a git that died holding it), removed it and went on.
 */
export interface RefLockRemovedEvent {
  /** The lock file. */
  readonly path: string;
  /** How old it was (by its modification time), ms. */
  readonly ageMs: number;
}

/**
 * `store.lock_restored`: the store's lock file had been removed while the store was open; it
 * was made again for this process.
 */
export interface LockRestoredEvent {
  /** The lock file. */
  readonly path: string;
}

/**
 * `store.lock_lost`: the store's lock file is not this store's and could not be made again
 * (another process holds it, or the git directory is gone); `reason` says which. Emitted once
 * until the lock is this store's again.
 */
export interface LockLostEvent {
  /** The lock file. */
  readonly path: string;
  readonly reason: string;
}

/** A run of the store's maintenance (`git gc --auto`), as {@link HookManager.maintain} reports it. */
export interface MaintenanceEvent {
  /** Loose objects (and their KiB) before and after, from `git count-objects -v`. */
  readonly before: ObjectCounts;
  readonly after: ObjectCounts;
  /** Wall time of the run, ms. */
  readonly durationMs: number;
}

/** What `git count-objects -v` says about the store. */
export interface ObjectCounts {
  readonly loose: number;
  readonly looseKiB: number;
  readonly inPack: number;
  readonly packs: number;
}

/**
 * A worktree folder of a hook the store no longer holds (finished, then dropped by
 * `finishedRetention`) was left in place at open: it has changes git would lose, possibly an
 * agent's uncommitted work. Remove it by hand once saved (`git worktree remove --force`).
 */
export interface WorktreeKeptEvent {
  readonly hookId: string;
  /** The folder. */
  readonly path: string;
}

/** Event name → payload. */
export interface HookEventMap {
  'hook.created': HookTransitionEvent;
  'hook.activated': HookTransitionEvent;
  'hook.completed': HookTransitionEvent;
  'hook.failed': HookTransitionEvent;
  'hook.abandoned': HookTransitionEvent;
  'hook.reassigned': HookReassignedEvent;
  'hook.progress': HookProgressEvent;
  'hook.stale': HookStaleEvent;
  'patrol.error': PatrolErrorEvent;
  'store.ref_moved': RefMovedEvent;
  'store.state_quarantined': StateQuarantinedEvent;
  'store.ref_lock_removed': RefLockRemovedEvent;
  'store.lock_restored': LockRestoredEvent;
  'store.lock_lost': LockLostEvent;
  'store.worktree_kept': WorktreeKeptEvent;
  /** The store was maintained (`git gc --auto`; it may have found nothing to do). */
  'store.maintained': MaintenanceEvent;
  /** A maintenance run failed; hooks go on being committed (the next run tries again). */
  'store.maintenance_error': PatrolErrorEvent;
}

/** Names of the HookManager's events. */
export type HookEventName = keyof HookEventMap;

/** A listener of event `K`. */
export type HookListener<K extends HookEventName> = (event: HookEventMap[K]) => void;

/** A small typed event emitter (no `error` special case, no max-listener warnings). */
export class HookEmitter {
  readonly #listeners = new Map<HookEventName, Set<(event: never) => void>>();

  /** Adds `listener` for `event`; returns a function that removes it. */
  on<K extends HookEventName>(event: K, listener: HookListener<K>): () => void {
    let set = this.#listeners.get(event);
    if (set === undefined) this.#listeners.set(event, (set = new Set()));
    set.add(listener as (event: never) => void);
    return () => this.off(event, listener);
  }

  /** Removes `listener` from `event`. */
  off<K extends HookEventName>(event: K, listener: HookListener<K>): void {
    this.#listeners.get(event)?.delete(listener as (event: never) => void);
  }

  /** Calls every listener of `event`; a throwing listener becomes a process warning. */
  emit<K extends HookEventName>(event: K, payload: HookEventMap[K]): void {
    const set = this.#listeners.get(event);
    if (set === undefined) return;
    for (const listener of [...set]) {
      try {
        (listener as HookListener<K>)(payload);
      } catch (err) {
        process.emitWarning(
          `a ${event} listener threw: ${err instanceof Error ? err.message : String(err)}`,
          { code: 'FABRIC_HOOK_LISTENER' },
        );
      }
    }
  }
}

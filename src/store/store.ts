/**
 * The state seam: every manager keeps its records in a {@link FabricStore}, so a durable store
 * can replace the in-memory one without the managers changing.
 *
 * The interface is synchronous on purpose: the scheduler's hot path runs at hundreds of thousands
 * of operations a second and cannot await per task. The durable `SqliteStore` keeps records in
 * memory and commits the ones `put` in one synchronous run as one transaction (group commit);
 * `put` is called after every state change of a record, so the store always sees the current
 * state. Managers may keep derived indexes (heaps, sets) but rebuild them from the store.
 *
 * @module
 */
import type { BudgetStore } from '../budget/budget-store.js';
import type { ToolTaskRecord } from '../gateway/tool-tasks.js';
import type { Approval } from '../policy/approval-manager.js';
import type { PolicyChangeRecord } from '../policy/policy-engine.js';

/** A keyed collection of records of one kind. */
export interface Collection<T> {
  get(id: string): T | undefined;
  /** Inserts or replaces; called after every change to the record. */
  put(id: string, record: T): void;
  /**
   * {@link put} of a change that may be committed with the store's next commit, at the latest at
   * the end of the event-loop iteration, rather than before a caller awaiting it resumes: a
   * further change of the record before then is written once. Stores without it get `put`.
   */
  putLazily?(id: string, record: T): void;
  /**
   * {@link put} of a record whose fields fixed when it was made changed since (a stored value
   * lowered at load): its write carries those fields too. Stores whose every write carries the
   * whole record leave it unset (callers then `put`).
   */
  rewrite?(id: string, record: T): void;
  delete(id: string): boolean;
  values(): IterableIterator<T>;
  readonly size: number;
  /**
   * Holds `record` for `id` in place of the object loaded from storage, without writing it: for
   * a manager that rebuilds its live objects from the plain records a durable store loaded, when
   * the rebuilt object stores as the same data. Stores that never load leave it unset.
   */
  adopt?(id: string, record: T): void;
  /**
   * True when the collection keeps the very objects it was given (an in-memory map), so a
   * changed record needs no further `put`. Durable stores leave it unset.
   */
  readonly holdsReferences?: boolean;
  /**
   * Set by the owner of a durable collection (the scheduler, for tasks): told synchronously of
   * the records whose first write was in a commit that failed, so none of them is on disk.
   */
  unwritten?: ((records: T[], error: Error) => void) | undefined;
  /**
   * Durable stores: whether the record of `id` as it is now is on disk (false while a change of
   * it waits for a commit, or after a failed one). Stores without it hold nothing on disk.
   */
  isOnDisk?(id: string): boolean;
}

/**
 * What the scheduler owes one agent whose executor tells it later (a remote agent's notices, a
 * plugin executor not registered yet): the attempts it ended while the agent held them, that the
 * agent was not told of yet, oldest first. Plain data (a change is a new object `put`).
 */
export interface OwedAborts {
  readonly agentId: string;
  readonly aborts: ReadonlyArray<{
    readonly taskId: string;
    readonly attempt: number;
    readonly code: string;
    readonly message: string;
  }>;
}

/** Where the fabric's records live. */
export interface FabricStore<TTask = unknown, TAgent = unknown, TPool = unknown> {
  readonly tasks: Collection<TTask>;
  readonly agents: Collection<TAgent>;
  readonly pools: Collection<TPool>;
  /**
   * Human approvals (plain, frozen snapshots: a change is a new object `put` under the same id).
   * A durable store commits an approval's `put`/`delete` before it returns, so a decision the
   * caller saw is on disk.
   */
  readonly approvals: Collection<Approval>;
  /**
   * The gateway's task-augmented tool calls (MCP tasks); a store without it leaves the gateway
   * keeping them in memory.
   */
  readonly toolTasks?: Collection<ToolTaskRecord>;
  /**
   * The policy changes made at run time (added, replaced, removed), by policy name, once
   * `AgentFabric.restorePolicies` ran; a store without it leaves them in memory only. A durable
   * store commits a `put`/`delete` before it returns, so a change the caller saw is on disk.
   */
  readonly policies?: Collection<PolicyChangeRecord>;
  /**
   * The aborts the scheduler owes remote agents, by agent id (see {@link OwedAborts}); a store
   * without it leaves them in memory only, and a restart before an agent was told loses them.
   */
  readonly owedAborts?: Collection<OwedAborts>;
  /**
   * True when {@link owedAborts} holds every abort owed when the process that wrote the store
   * stopped (it was written by a build that kept them). False or unset: written by an older
   * build, which kept none, so the scheduler tells again at start the interrupted attempts of
   * queued tasks it cannot tell were told (see `owesAbort`).
   */
  readonly owedAbortsComplete?: boolean;
  /** Budget state kept with the records (the fabric uses it unless given its own). */
  readonly budgets?: BudgetStore;
  /**
   * A random value kept under `key` across restarts (made and committed on first use). Only
   * durable stores have it; the NATS executor keeps its lease key and sidecar id in it.
   */
  secret?(key: string): string;
  /** Durable stores: a small value kept under `key` across restarts (the hook store's marker). */
  getMeta?(key: string): string | undefined;
  /** Durable stores: stores `value` under `key`, committed before it returns. */
  setMeta?(key: string, value: string): void;
  /**
   * Durable stores: the error of the last commit when it failed (disk full, I/O error) and what
   * it held is still only in memory; undefined once a commit succeeds again.
   */
  commitFailure?(): Error | undefined;
  /**
   * Durable stores: a mark of the changes made so far, for {@link commitOutcome}; taken in the
   * synchronous run that made a change, after it.
   */
  commitMark?(): number;
  /**
   * Durable stores: the outcome of the commit that carried the changes made before `mark` —
   * undefined when they are on disk, else its error — whatever commits failed or succeeded
   * since (see `SqliteStore.commitOutcome`).
   */
  commitOutcome?(mark: number): Error | undefined;
  /**
   * Durable stores: resolves once a commit succeeds after {@link commitFailure} (at once when
   * there is none); rejects with the error of `close()` when the store closes without one, and
   * with `signal`'s reason when it aborts first (the wait is then forgotten).
   */
  whenCommitted?(signal?: AbortSignal): Promise<void>;
  /** Flushes and releases resources. */
  close(): Promise<void>;
}

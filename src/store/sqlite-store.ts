/**
 * The durable {@link FabricStore}: one embedded SQLite file (better-sqlite3, WAL mode) that
 * carries tasks, agents, pools, approvals, the gateway's tool-call tasks, the policy changes made
 * at run time, budget usage and a few keyed values (`meta`) across
 * restarts and crashes.
 *
 * Why it looks like this:
 * - The seam is synchronous (the hot path cannot await per record), and so is better-sqlite3.
 *   Records are kept in memory as the very objects the managers hold — managers mutate a record
 *   and then `put` it — and a `put` only marks the record dirty. Dirty records are written in
 *   ONE transaction (group commit) on a microtask queued by the first change, so a caller that
 *   `await`s a fabric call (schedule, completeTask, spawn, terminate, createPool, recordUsage, a
 *   tool call's settle …) resumes only after the commit, and every change of one synchronous
 *   run (a batch of schedules, a dispatch pass) shares it (measured in bench/state.ts and
 *   bench/store.ts). Approvals and policy changes are the exception: their `put` commits before it returns (see
 *   `#schedule`). A `putLazily` (the start of an in-process attempt) waits for the
 *   end-of-iteration commit instead, so a task that starts and ends in one turn is written once.
 *   `close()` commits what is left.
 * - Agents, pools and approvals are stored as JSON of the plain data the managers keep; agents'
 *   credentials only as their SHA-256 (see `AgentRecord.credentialHash`), never in plaintext.
 *   Tasks, most of the writes, have their own table with a column per field of their `TaskData`
 *   (`sqlite-tasks.ts`: inserted once, then only the changing columns updated; not the runtime
 *   state); on open, `tasks` holds that plain data until the scheduler rebuilds its records
 *   (`AgentScheduler.restore`, which `adopt`s them without a write).
 * - Schema 1 (tasks as JSON in `records`) is migrated to 2 when opened, in one transaction.
 * - A file that is not ours (tables in it but no `user_version`, or without the tables and
 *   columns of the version it claims: many applications set `user_version`), corrupt, or from a
 *   newer schema is refused with a typed error and
 *   left byte for byte as it was (it is checked through a read-only connection before anything
 *   opens it for writing); a second process on the same path gets {@link StateLockedError}
 *   (the hook store's lock file, `<path>.lock`).
 * - SQLite writes into the file it has open, even once its path is removed or names another
 *   file: a timer checks the path every second, and a store that lost it saves its state back
 *   (to the path if free and its lock, removed with the folder, could be made again; else beside
 *   it) and reports it (`#checkFile`); a lock file removed alone is made again (`#checkLock`);
 *   a removed `-wal` or `-shm` file is made anew after a checkpoint (`#checkWal`).
 *
 * Durability: `synchronous=NORMAL` (the default) means a committed transaction survives the
 * process dying at any point (SIGKILL, crash); after a power loss or OS crash the most recent
 * commits may be rolled back (the file stays consistent). `synchronous: 'FULL'` also survives a
 * power loss, at the cost of an fsync per commit on the event loop.
 *
 * @module
 */
import { createHmac, randomBytes } from 'node:crypto';
import {
  accessSync,
  chmodSync,
  closeSync,
  constants,
  existsSync,
  mkdirSync,
  openSync,
  renameSync,
  rmSync,
  statSync,
} from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { performance } from 'node:perf_hooks';
import Database from 'better-sqlite3';
import type {
  BudgetScopeSnapshot,
  BudgetStateSource,
  BudgetStore,
} from '../budget/budget-store.js';
import {
  HookStoreLockedError,
  InvalidArgumentError,
  StateLockedError,
  StateStoreError,
  StateVersionError,
} from '../errors.js';
import { StoreLock } from '../hooks/store-lock.js';
import { parseRecordJson, recordJson } from '../json-bytes.js';
import type { ToolTaskRecord } from '../gateway/tool-tasks.js';
import type { Approval } from '../policy/approval-manager.js';
import type { PolicyChangeRecord } from '../policy/policy-engine.js';
import {
  INSERT_TASK,
  TASK_COLUMNS,
  TASKS_TABLE,
  TaskRowWriter,
  insertCells,
  taskFromRow,
  type TaskRow,
} from './sqlite-tasks.js';
import { SequentialCollection } from './memory-store.js';
import {
  movedRecord,
  movedTime,
  StoreClock,
  TOOL_TASK_TIMES,
  type StoreBootOptions,
} from './store-clock.js';
import type { Collection, FabricStore, OwedAborts } from './store.js';

/**
 * The schema version this code writes (stored as SQLite's `user_version`). 2: tasks in their own
 * table (`sqlite-tasks.ts`); 3: the tasks table's `report_mark` column (`TaskRecord.reportMark`).
 * A file of an older version is migrated when opened.
 */
export const STATE_SCHEMA_VERSION = 3;

/** How hard a commit is pushed to disk. @see SqliteStoreOptions.synchronous */
export type StateSynchronous = 'NORMAL' | 'FULL';

/** Default of {@link SqliteStoreOptions.synchronous}. */
export const DEFAULT_STATE_SYNCHRONOUS: StateSynchronous = 'NORMAL';

/** Default of {@link SqliteStoreOptions.budgetLeasePercent}. */
export const DEFAULT_BUDGET_LEASE_PERCENT = 1;
/** Largest {@link SqliteStoreOptions.budgetLeasePercent}. */
export const MAX_BUDGET_LEASE_PERCENT = 10;

/** Options of {@link SqliteStore.open}. */
export interface SqliteStoreOptions {
  /**
   * SQLite's `synchronous` in WAL mode. `NORMAL`: commits survive a process crash, the last ones
   * may be lost on power loss. `FULL`: commits also survive power loss (one fsync per commit).
   * @default 'NORMAL'
   */
  synchronous?: StateSynchronous;
  /**
   * Budget usage is written ahead of use, as a ceiling: a scope's row holds its usage, the
   * estimates of its calls in flight (a scope with a limit) and this percentage of its limit (of
   * its usage in the window when it has no limit), and changes that stay under that ceiling are
   * not committed (see {@link SqliteBudgetStore}); a reservation past it is committed before the
   * call goes ahead. A crash (kill -9, power loss aside) then leaves each scope's usage
   * over-counted by at most this percentage plus the estimates in flight at the last write —
   * never under-counted (but for usage above an estimate not yet committed); `close()` writes
   * exact usage. 0 commits every reservation past the row and every settle exactly. 0 to 10.
   * @default 1
   */
  budgetLeasePercent?: number;
  /**
   * Told about a background commit that failed (disk full, I/O error): the changes stay pending
   * and are retried with the next commit and once a second (retries that fail again are not
   * told); the tasks whose first write failed are withdrawn (`SqliteTaskCollection.unwritten`);
   * `close()` throws if the changes still cannot be written. Also
   * told about a record that cannot be serialized as JSON: it is not written (the others are) —
   * the scheduler refuses unserializable task payloads and results before that can happen.
   * @default ignore (close reports it)
   */
  onError?: (error: StateStoreError) => void;
  /**
   * The boot-time clock and boot id the file's clock mark is read with (see `store-clock.ts`):
   * for tests whose clocks are fake.
   * @default `/proc/uptime` and `/proc/sys/kernel/random/boot_id` where they exist
   */
  boot?: StoreBootOptions;
}

const SCHEMA = `
  CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
  CREATE TABLE IF NOT EXISTS records (
    kind TEXT NOT NULL, id TEXT NOT NULL, data TEXT NOT NULL, PRIMARY KEY (kind, id)
  ) WITHOUT ROWID;
  CREATE TABLE IF NOT EXISTS budgets (scope TEXT PRIMARY KEY, data TEXT NOT NULL) WITHOUT ROWID;
`;

/** Kinds of the `records` table (tasks have their own table since schema 2). */
/**
 * The tables every file of a schema version has, with their columns: a SQLite file whose
 * `user_version` says 1 or 2 but lacks one of them is another application's (many set
 * `user_version`), refused before anything is written to it.
 */
const SCHEMA_TABLES: Readonly<Record<number, Readonly<Record<string, readonly string[]>>>> = {
  1: { meta: ['key', 'value'], records: ['kind', 'id', 'data'], budgets: ['scope', 'data'] },
  2: {
    meta: ['key', 'value'],
    records: ['kind', 'id', 'data'],
    budgets: ['scope', 'data'],
    tasks: TASK_COLUMNS.filter((c) => c !== 'report_mark'),
  },
  3: {
    meta: ['key', 'value'],
    records: ['kind', 'id', 'data'],
    budgets: ['scope', 'data'],
    tasks: TASK_COLUMNS,
  },
};

type Kind = 'agent' | 'pool' | 'approval' | 'tool_task' | 'policy' | 'owed_abort';
const RECORD_KINDS: readonly Kind[] = [
  'agent',
  'pool',
  'approval',
  'tool_task',
  'policy',
  'owed_abort',
];

/**
 * Deletes the budget rows (`pool:<id>`) of pools the file holds no record of. A deleted pool's
 * budget goes with it in the commit that deletes its record (`BudgetManager.forgetPool`), but
 * files written before that still hold the rows of pools deleted back then, and a pool created
 * again under such an id inherited their limits and usage. Exact: `pool:kee` is not `keep`'s
 * (byte comparison, no `LIKE`); agents' and the fabric's scopes are never touched. Run once per
 * file ({@link ORPHAN_POOL_BUDGETS_DROPPED}): after it, a row without its pool is one an
 * operator set ahead of the pool's creation (`SetBudgetLimits` / `budgets.setPoolBudget` for an
 * id not created yet), which later opens keep.
 */
const DROP_ORPHAN_POOL_BUDGETS = `
  DELETE FROM budgets WHERE substr(scope, 1, 5) = 'pool:'
    AND substr(scope, 6) NOT IN (SELECT id FROM records WHERE kind = 'pool')
`;

/** `meta` key set once {@link DROP_ORPHAN_POOL_BUDGETS} ran on a file (in the same transaction). */
const ORPHAN_POOL_BUDGETS_DROPPED = 'budgets.orphanPoolsDropped';

/** {@link DROP_ORPHAN_POOL_BUDGETS} on a file it has not run on yet; the rows it dropped. */
function dropOrphanPoolBudgetsOnce(db: Database.Database): number {
  const done = db
    .prepare<[string], { value: string }>('SELECT value FROM meta WHERE key = ?')
    .get(ORPHAN_POOL_BUDGETS_DROPPED);
  if (done !== undefined) return 0;
  const dropped = db.prepare(DROP_ORPHAN_POOL_BUDGETS).run().changes;
  db.prepare('INSERT INTO meta (key, value) VALUES (?, ?)').run(ORPHAN_POOL_BUDGETS_DROPPED, '1');
  return dropped;
}

/**
 * When a change is committed: `now` before the call that made it returns (a synchronous
 * transaction: approvals, human-speed and rare); `soon` on a microtask, before a caller awaiting
 * the change resumes (tasks, agents, pools, budget usage); `later` (`putLazily`) at the end of
 * the event-loop iteration, unless a `soon` change of the same record comes first.
 */
type Urgency = 'now' | 'soon' | 'later';

/** What a collection needs from its store: to be told a record changed. */
interface Journal {
  touch(urgency: Urgency): void;
}

/**
 * A collection whose records live in memory and are written to SQLite by the store's group
 * commit. `get` returns the very object last `put` (managers mutate it, then `put` again).
 */
export class SqliteCollection<T> implements Collection<T> {
  readonly #map = new Map<string, T>();
  readonly #dirty = new Set<string>();
  /** Changed by {@link putLazily} only: committed by the end-of-iteration commit (or `flush`). */
  readonly #lazy = new Set<string>();
  readonly #journal: Journal;
  readonly #urgency: Urgency;
  /** @internal */
  readonly kind: Kind;

  /** @internal */
  constructor(kind: Kind, journal: Journal, rows: Iterable<[string, T]>, urgency: Urgency) {
    this.kind = kind;
    this.#journal = journal;
    this.#urgency = urgency;
    for (const [id, record] of rows) this.#map.set(id, record);
  }

  get(id: string): T | undefined {
    return this.#map.get(id);
  }

  put(id: string, record: T): void {
    this.#map.set(id, record);
    this.#dirty.add(id);
    this.#lazy.delete(id);
    this.#journal.touch(this.#urgency);
  }

  putLazily(id: string, record: T): void {
    this.#map.set(id, record);
    if (this.#dirty.has(id)) return; // written with the pending change anyway
    this.#lazy.add(id);
    this.#journal.touch('later');
  }

  adopt(id: string, record: T): void {
    this.#map.set(id, record);
  }

  /**
   * @internal Moves the numeric `fields` of every record held by `ms` (within the stored range):
   * the wall clock stepped while this process ran (`StoreClock.moveStarts` says why; it moves the
   * stored rows in the transaction of the mark that follows). Each record is replaced by a moved
   * copy (they may be frozen) without being marked changed, so a later write carries the moved
   * times and a record with no change pending is as the file holds it. One pass per step.
   */
  moveTimes(fields: readonly string[], ms: number): void {
    for (const [id, record] of this.#map) {
      const moved = movedRecord(record as Record<string, unknown>, fields, ms);
      this.#map.set(id, (Object.isFrozen(record) ? Object.freeze(moved) : moved) as T);
    }
  }

  delete(id: string): boolean {
    const had = this.#map.delete(id);
    if (had) {
      this.#dirty.add(id);
      this.#lazy.delete(id);
      this.#journal.touch(this.#urgency);
    }
    return had;
  }

  values(): IterableIterator<T> {
    return this.#map.values();
  }

  get size(): number {
    return this.#map.size;
  }

  /**
   * @internal The changed ids and their current records (undefined: deleted); with `lazy`, also
   * those changed by {@link putLazily}.
   */
  pending(lazy: boolean): Array<[string, T | undefined]> {
    const out: Array<[string, T | undefined]> = [];
    for (const id of this.#dirty) out.push([id, this.#map.get(id)]);
    if (lazy) for (const id of this.#lazy) out.push([id, this.#map.get(id)]);
    return out;
  }

  /** Whether the record of `id` as it is now is on disk: no change of it waits for a commit. */
  isOnDisk(id: string): boolean {
    return !this.#dirty.has(id) && !this.#lazy.has(id);
  }

  /** @internal The ids {@link pending} would give. */
  changedIds(lazy: boolean): string[] {
    const ids = [...this.#dirty];
    if (lazy) for (const id of this.#lazy) ids.push(id);
    return ids;
  }

  /** @internal Called once `ids` are committed. */
  committed(ids: readonly string[]): void {
    for (const id of ids) {
      this.#dirty.delete(id);
      this.#lazy.delete(id);
    }
  }
}

/**
 * One task of {@link SqliteTaskCollection}: its record, its row, and whether it has a change to
 * commit. One object per task, so a write costs one map lookup, not one per index.
 */
interface TaskEntry<T> {
  readonly id: string;
  record: T;
  /** Its row in `tasks`, once committed (undefined: the next write inserts it). */
  rid: number | undefined;
  /**
   * What is pending: {@link CLEAN}, {@link DIRTY} (put) or {@link LAZY} (putLazily); during a
   * commit {@link WRITING} or {@link INSERTING}.
   */
  state: number;
  /** Deleted from the collection: the commit removes its row, if it has one. */
  gone: boolean;
}

const CLEAN = 0;
const DIRTY = 1;
const LAZY = 2;
/** Being written by the commit in progress. */
const WRITING = 3;
/** Being inserted by the commit in progress (its `rid` is new: forgotten if the commit fails). */
const INSERTING = 4;

/** A written entry is clean once its commit is done; a deleted one has no row any more. */
function clean(e: TaskEntry<unknown>): void {
  if (e.state !== WRITING && e.state !== INSERTING) return;
  e.state = CLEAN;
  if (e.gone) e.rid = undefined;
}

/** A written entry is pending again (`state`) when its commit failed. */
function restore(e: TaskEntry<unknown>, state: number): void {
  if (e.state === INSERTING) e.rid = undefined;
  else if (e.state !== WRITING) return;
  e.state = state;
}

/**
 * The task collection (the scheduler's hot path: two or three writes per task). Same behaviour
 * as {@link SqliteCollection}, and it knows which tasks have a row (and its `rid`), so a task's
 * first write is an insert and later ones update its changing columns.
 *
 * Why it is not a `SqliteCollection`: profiled (bench/store `durable-dispatch`), the generic
 * collection's bookkeeping — a dirty set, a lazy set and a row map, each touched on every `put`
 * and again on commit — cost about as much CPU as SQLite's own row writes. Here each task is one
 * {@link TaskEntry} and the changes are two arrays of entries in the order they were made.
 */
export class SqliteTaskCollection<T> implements Collection<T> {
  readonly kind = 'task';
  /**
   * The entries of the tasks this process made, indexed like the in-memory store's tasks
   * ({@link SequentialCollection}: the scheduler's ids are a prefix and a growing counter, so a
   * lookup touches one array slot; a Map of tens of thousands of string keys was ~5 % of the
   * SQLite run's CPU in `durable-dispatch`).
   */
  readonly #entries = new SequentialCollection<TaskEntry<T>>();
  /**
   * The entries of the tasks loaded from the file: made by an earlier process, under another id
   * prefix, so kept apart (the first id the index sees sets its prefix).
   */
  readonly #loaded = new Map<string, TaskEntry<T>>();
  /** Entries changed by `put`/`delete` since the last commit (each once, in order). */
  #dirty: TaskEntry<T>[] = [];
  /** Entries changed by `putLazily` only (may since have become dirty or clean). */
  #lazy: TaskEntry<T>[] = [];
  readonly #journal: Journal;
  #nextRid = 1;
  /** Tasks of the failed commit never written before (see {@link unwritten}). */
  #unwritten: T[] = [];
  /** Entries whose next write also writes the columns fixed at the first ({@link rewrite}). */
  readonly #whole = new Set<TaskEntry<T>>();

  /** @internal `rows`: the stored tasks with their rows. */
  constructor(journal: Journal, rows: ReadonlyArray<[string, T, number]>) {
    this.#journal = journal;
    for (const [id, record, rid] of rows) {
      this.#loaded.set(id, { id, record, rid, state: CLEAN, gone: false });
      if (rid >= this.#nextRid) this.#nextRid = rid + 1;
    }
  }

  #find(id: string): TaskEntry<T> | undefined {
    return this.#entries.get(id) ?? (this.#loaded.size === 0 ? undefined : this.#loaded.get(id));
  }

  get(id: string): T | undefined {
    return this.#find(id)?.record;
  }

  /** The entry of `id`, now holding `record` (a new one, without a row, when there is none). */
  #entry(id: string, record: T): TaskEntry<T> {
    const e = this.#find(id);
    if (e !== undefined) {
      e.record = record;
      return e;
    }
    const created: TaskEntry<T> = { id, record, rid: undefined, state: CLEAN, gone: false };
    this.#entries.put(id, created);
    return created;
  }

  put(id: string, record: T): void {
    const e = this.#entry(id, record);
    if (e.state !== DIRTY) {
      e.state = DIRTY;
      this.#dirty.push(e);
    }
    this.#journal.touch('soon');
  }

  putLazily(id: string, record: T): void {
    const e = this.#entry(id, record);
    if (e.state !== CLEAN) return; // written with the pending change anyway
    e.state = LAZY;
    this.#lazy.push(e);
    this.#journal.touch('later');
  }

  adopt(id: string, record: T): void {
    this.#entry(id, record);
  }

  /**
   * {@link put}, and the commit that writes it also writes the columns written at a task's first
   * write only (`max_attempts` …), which a later write leaves as they are. Kept until a commit
   * that wrote it succeeds.
   */
  rewrite(id: string, record: T): void {
    this.put(id, record);
    const e = this.#find(id)!;
    if (e.rid !== undefined) this.#whole.add(e);
  }

  delete(id: string): boolean {
    const e = this.#find(id);
    if (e === undefined) return false;
    if (!this.#entries.delete(id)) this.#loaded.delete(id);
    e.gone = true;
    if (e.state !== DIRTY) {
      e.state = DIRTY;
      this.#dirty.push(e);
    }
    this.#journal.touch('soon');
    return true;
  }

  *values(): IterableIterator<T> {
    for (const e of this.#loaded.values()) yield e.record;
    for (const e of this.#entries.values()) yield e.record;
  }

  get size(): number {
    return this.#loaded.size + this.#entries.size;
  }

  /** @internal Whether anything waits for a commit (with `lazy`, lazy changes too). */
  hasPending(lazy: boolean): boolean {
    return this.#dirty.length > 0 || (lazy && this.#lazy.length > 0);
  }

  /**
   * @internal Writes the pending changes with `write` (inside the commit's transaction):
   * `write(id, record, rid)` for each changed task, `record` undefined for a deleted one, `rid`
   * undefined for one without a row; it returns the row it inserted, if any; and first
   * `writeFixed(id, record, rid)` for each task {@link rewrite} was called for (the columns its
   * first write wrote, again: a commit without one costs a size check). The caller then
   * calls `committed()` once the transaction committed, or `failed()` when it did not
   * (everything stays pending). `count`: the tasks written.
   */
  write(
    lazy: boolean,
    write: (id: string, record: T | undefined, rid: number | undefined) => number | undefined,
    writeFixed: (id: string, record: T, rid: number) => void,
  ): { count: number; committed(): void; failed(): void } {
    // The entries written are marked WRITING (INSERTING: their row is new, `rid` set by this
    // commit) and found again through the two lists, so a commit allocates nothing per task.
    let count = 0;
    const one = (e: TaskEntry<T>): void => {
      // WRITING also skips a second copy of the entry in the lazy list.
      e.state = WRITING;
      count++;
      const row = write(e.id, e.gone ? undefined : e.record, e.rid);
      if (row !== undefined) {
        e.rid = row;
        e.state = INSERTING;
      }
    };
    const dirty = this.#dirty;
    const lazies = this.#lazy;
    const failed = (): void => {
      // Tasks whose first write this was (none on disk): reported by `reportUnwritten`.
      const back = (e: TaskEntry<T>, state: number): void => {
        const first = e.state === INSERTING || (e.state === WRITING && e.rid === undefined);
        if (first && !e.gone) this.#unwritten.push(e.record);
        restore(e, state);
      };
      for (const e of dirty) back(e, DIRTY);
      if (lazy) for (const e of lazies) back(e, LAZY);
    };
    try {
      if (this.#whole.size !== 0) {
        for (const e of this.#whole)
          if (!e.gone && e.rid !== undefined) writeFixed(e.id, e.record, e.rid);
      }
      for (const e of dirty) if (e.state === DIRTY) one(e);
      if (lazy) for (const e of lazies) if (e.state === LAZY) one(e);
    } catch (error) {
      failed();
      throw error;
    }
    return {
      count,
      committed: () => {
        for (const e of dirty) clean(e);
        if (lazy) for (const e of lazies) clean(e);
        if (this.#whole.size !== 0) this.#whole.clear();
        this.#dirty = [];
        if (lazy) this.#lazy = [];
        else if (lazies.length > 4096) this.#lazy = lazies.filter((e) => e.state === LAZY);
      },
      failed,
    };
  }

  /**
   * Told, synchronously, of the tasks whose first write was in a commit that failed (none of
   * them is on disk): the scheduler withdraws the ones still unfinished (`AgentScheduler`), so a
   * task whose schedule could not be committed never runs, before the awaiting caller resumes
   * with the error.
   */
  unwritten: ((records: T[], error: Error) => void) | undefined = undefined;

  /** @internal Tells {@link unwritten} (after the failed transaction is rolled back). */
  reportUnwritten(error: StateStoreError): void {
    const records = this.#unwritten;
    if (records.length === 0) return;
    this.#unwritten = [];
    this.unwritten?.(records, error);
  }

  isOnDisk(id: string): boolean {
    const e = this.#find(id);
    return e !== undefined && e.state === CLEAN && e.rid !== undefined;
  }

  /** @internal A fresh row number for a task's insert. */
  newRow(): number {
    return this.#nextRid++;
  }

  /**
   * @internal Moves the start (`startedAt`) of each SCHEDULED or RUNNING task held by `ms`: the
   * wall clock stepped while this process ran (`StoreClock.moveStarts` says why; it moves the
   * stored rows in the transaction of the mark that follows). The records are changed in place
   * without being marked changed — the live `TaskRecord`s the scheduler put, or the plain
   * stored form before it adopted them (the two share the field names) — so a later write of a
   * task carries the moved start, and a task with no change pending is as the file holds it.
   * One pass over the tasks held, per step (a step is rare); nothing per write.
   */
  moveStarts(ms: number): void {
    for (const record of this.values()) {
      const r = record as { status?: unknown; startedAt?: unknown };
      if ((r.status === 'SCHEDULED' || r.status === 'RUNNING') && typeof r.startedAt === 'number') {
        r.startedAt = movedTime(r.startedAt, ms);
      }
    }
  }
}

/**
 * Budget state in the same file and the same group commit as the records.
 *
 * A scope that can lease (ScopeUsage) is written with a ceiling: its usage plus `leasePercent` %
 * of its limit (of its usage when it has none) in the newest bucket of each window — and, in a
 * window with a limit, the reservations in flight. A change that stays under that ceiling — same
 * limits, alerts and window buckets — is not written at all: it is already covered by what the
 * file holds, so a crash can over-count a scope's usage by at most one lease (plus estimates
 * not used) and never under-count it. A reservation past the ceiling is committed at once
 * ({@link coverReservation}, {@link commitCoverage}): the call it guards is forwarded only once
 * its estimate is on disk. A tool call then costs a commit only once per
 * lease, per new bucket (a minute for tokens, 15 minutes or a UTC day for cost) and per alert or
 * limit change, instead of once per batch of settles. `flush()` and `close()` write every leased
 * scope's exact usage, so a clean stop loses and adds nothing.
 */
export class SqliteBudgetStore implements BudgetStore {
  readonly #journal: Journal;
  readonly #select: Database.Statement<[string], { data: string }>;
  readonly #path: string;
  readonly #leasePercent: number;
  /** Scopes changed since the last commit; null = deleted. */
  readonly #dirty = new Map<string, BudgetStateSource | null>();
  /**
   * Scopes written with a lease or with reservations in flight (their row may hold more than
   * their usage): a clean stop writes them exact.
   */
  readonly #leased = new Map<string, BudgetStateSource>();
  /** Scopes {@link coverReservation} made pending, for {@link commitCoverage}. */
  #covering: string[] = [];

  /** @internal */
  constructor(db: Database.Database, path: string, journal: Journal, leasePercent: number) {
    this.#journal = journal;
    this.#path = path;
    this.#leasePercent = leasePercent;
    this.#select = db.prepare('SELECT data FROM budgets WHERE scope = ?');
  }

  load(scope: string): BudgetScopeSnapshot | undefined {
    const pending = this.#dirty.get(scope);
    if (pending === null) return undefined;
    if (pending !== undefined) return pending.toJSON();
    const row = this.#select.get(scope);
    if (row === undefined) return undefined;
    try {
      return JSON.parse(row.data) as BudgetScopeSnapshot;
    } catch (error) {
      throw new StateStoreError(this.#path, `budget scope ${JSON.stringify(scope)} is not JSON`, {
        cause: error,
      });
    }
  }

  changed(scope: string, source: BudgetStateSource): void {
    // Covered by the committed ceiling: nothing to write. (A scope still dirty — its last
    // commit failed — is written whatever its lease says.)
    if (source.leaseCovers?.() === true && !this.#dirty.has(scope)) return;
    this.#dirty.set(scope, source);
    this.#journal.touch('soon');
  }

  delete(scope: string): void {
    this.#leased.delete(scope);
    this.#dirty.set(scope, null);
    this.#journal.touch('soon');
  }

  coverReservation(scope: string, source: BudgetStateSource): boolean {
    // Covered by the committed ceiling: nothing to write (the common case). A scope with a
    // change pending may hold a ceiling a failed commit never wrote: it is committed first.
    if (source.reservationCovered?.() !== false && !this.#dirty.has(scope)) return false;
    this.#dirty.set(scope, source);
    this.#covering.push(scope);
    return true;
  }

  commitCoverage(): void {
    const covering = this.#covering;
    if (covering.length === 0) return;
    this.#covering = [];
    // A synchronous commit (everything pending goes with it): the call the reservation guards
    // is forwarded only after it. Throws its StateStoreError when it fails.
    this.#journal.touch('now');
    // Not committed without a failure: the store is closed.
    for (const scope of covering) {
      if (this.#dirty.has(scope)) {
        throw new StateStoreError(this.#path, 'is closed: the reservation was not committed');
      }
    }
  }

  /** @internal The pending changes; `exact`: every leased scope too, to be written exact. */
  pending(exact: boolean): Array<[string, BudgetStateSource | null]> {
    if (exact) for (const [scope, source] of this.#leased) this.#dirty.set(scope, source);
    return [...this.#dirty];
  }

  /**
   * @internal The JSON a commit writes for `source`: leased (see the class), or `exact`. Null
   * when the source's own serializer is to be used.
   */
  text(scope: string, source: BudgetStateSource, exact: boolean): string | null {
    if (source.toLeasedJSONText === undefined) return null;
    const percent = exact ? 0 : this.#leasePercent;
    // Written with `percent` 0 too, a scope's row holds its reservations in flight, which may
    // be released unused: a clean stop writes it again.
    if (!exact) this.#leased.set(scope, source);
    else this.#leased.delete(scope);
    return source.toLeasedJSONText(percent);
  }

  /** @internal */
  committed(done: ReadonlyArray<[string, BudgetStateSource | null]>): void {
    // The commit ran synchronously, so nothing changed between reading and committing.
    for (const [scope, source] of done)
      if (this.#dirty.get(scope) === source) this.#dirty.delete(scope);
  }
}

/**
 * Commits of the open stores to run when the process exits without closing them: `process.exit`
 * (a handler calling it), an uncaught exception, a second signal. An in-process attempt whose
 * start waited for the end-of-iteration commit (`putLazily`) and ended the process in the same
 * turn was otherwise never counted: the restart ran it again, and it ended that process too, for
 * ever. SQLite here is synchronous, so the commit can run in the `exit` event. A SIGKILL or a
 * native crash runs no `exit` event: such a start is still lost (see the README).
 */
const atExit = new Set<() => void>();

function commitAtExit(): void {
  for (const commit of atExit) commit();
}

/**
 * The durable store. Open it with {@link SqliteStore.open}; the fabric closes it.
 *
 * @example
 * const store = await SqliteStore.open('.fabric/state.db');
 * const fabric = new AgentFabric({}, { store }); // budgets use store.budgets
 */
export class SqliteStore<TTask = unknown, TAgent = unknown, TPool = unknown> implements FabricStore<
  TTask,
  TAgent,
  TPool
> {
  /** The state file. */
  readonly path: string;
  /** True when this open created the file (first start). */
  readonly created: boolean;
  /**
   * Tasks. Loaded records are the plain data the scheduler stored (`TaskData`); the scheduler
   * rebuilds its live records from them when the fabric starts and holds those from then on.
   */
  readonly tasks: SqliteTaskCollection<TTask>;
  readonly agents: SqliteCollection<TAgent>;
  readonly pools: SqliteCollection<TPool>;
  /** Committed synchronously: `put`/`delete` return after the transaction. */
  readonly approvals: SqliteCollection<Approval>;
  /** The gateway's task-augmented tool calls (MCP tasks). */
  readonly toolTasks: SqliteCollection<ToolTaskRecord>;
  /** Policy changes made at run time, by policy name. Committed synchronously, as approvals. */
  readonly policies: SqliteCollection<PolicyChangeRecord>;
  /** The aborts the scheduler owes remote agents (see `FabricStore.owedAborts`). */
  readonly owedAborts: SqliteCollection<OwedAborts>;
  /**
   * False when the file was of schema 2 or older when opened (written by a build that kept no
   * owed aborts); see `FabricStore.owedAbortsComplete`.
   */
  readonly owedAbortsComplete: boolean;
  readonly budgets: SqliteBudgetStore;
  /**
   * How far the wall clock stepped beyond elapsed time while no process had the file open (ms;
   * negative: back; 0 within a second or so): the times of open tasks, pending approvals and MCP
   * tasks were moved by it when the store opened, so each keeps the time it had left. Undefined when it
   * cannot be told (another boot of the machine, not Linux, a file from before the mark): then
   * only the wall clock spans the gap. See `store-clock.ts`.
   */
  readonly clockStepAtOpen: number | undefined;
  /**
   * Budget rows of pools that no longer exist that the open dropped: left by a version that kept
   * a deleted pool's budget (see {@link DROP_ORPHAN_POOL_BUDGETS}); 0 for a file without any.
   */
  readonly orphanPoolBudgetsDropped: number;
  readonly #clock: StoreClock;
  readonly #db: Database.Database;
  readonly #lock: StoreLock;
  readonly #onError: (error: StateStoreError) => void;
  readonly #upsert: Database.Statement<[string, string, string]>;
  readonly #remove: Database.Statement<[string, string]>;
  readonly #taskRows: TaskRowWriter;
  /**
   * Runs a commit's body in one transaction. Made once: better-sqlite3's `transaction()` builds
   * five wrapper functions each time, ~5 µs — a tenth of a lone commit.
   */
  readonly #inTransaction: (body: () => void) => void;
  readonly #upsertBudget: Database.Statement<[string, string]>;
  readonly #removeBudget: Database.Statement<[string]>;
  readonly #setMeta: Database.Statement<[string, string]>;
  readonly #getMeta: Database.Statement<[string], { value: string }>;
  /** A microtask commit is queued. */
  #soon = false;
  /** An end-of-iteration commit is queued (for lazy changes). */
  #later = false;
  #closed = false;
  #lastError: StateStoreError | undefined;
  /** The last commit failed with this; pending changes are only in memory (see `#retry`). */
  #failedCommit: StateStoreError | undefined;
  /** When the commits began to fail (wall clock ms), while {@link #failedCommit} is set. */
  #failedSince: number | undefined;
  /**
   * Commits tried since the store opened (a transaction, or a check that found nothing
   * pending), and the number of the last that succeeded: see {@link commitMark}.
   */
  #commitsTried = 0;
  #commitsDone = 0;
  /** {@link whenCommitted} callers waiting for a commit to succeed after a failed one. */
  #commitWaiters: Array<{ resolve(): void; reject(error: unknown): void }> = [];
  /** The open file's identity, to notice the path naming another file (or none). */
  readonly #identity: { dev: number; ino: number };
  /** Checks {@link #identity} every {@link FILE_CHECK_INTERVAL_MS}. */
  readonly #fileCheck: NodeJS.Timeout;
  /**
   * Set once the path no longer names the open file: where its state is saved (`target`), the
   * identity of the copy last saved there, and the error that stays reported until close.
   */
  #detached: Detached | undefined;
  /** The lock file was found to be another's (and that was reported). */
  #lockLost = false;
  /** The last repair of a removed `-wal`/`-shm` file failed (and was reported). */
  #walRepairFailed = false;
  readonly #stats = { commits: 0, failedCommits: 0, recordsWritten: 0, commitSeconds: 0 };

  private constructor(
    path: string,
    created: boolean,
    db: Database.Database,
    lock: StoreLock,
    options: SqliteStoreOptions,
    owedAbortsComplete: boolean,
  ) {
    this.path = path;
    this.owedAbortsComplete = owedAbortsComplete;
    this.created = created;
    this.#db = db;
    this.#lock = lock;
    this.#onError = options.onError ?? (() => undefined);
    const journal: Journal = { touch: (urgency) => this.#schedule(urgency) };
    const rows = (kind: Kind): Array<[string, never]> =>
      db
        .prepare<[string], { id: string; data: string }>(
          'SELECT id, data FROM records WHERE kind = ?',
        )
        .all(kind)
        .map((r) => [r.id, parseRecord(path, kind, r.id, r.data) as never]);
    // The clock first: it moves the stored times by a step made while none ran, and writes its
    // mark. In one transaction with the loading, so a file refused for a record it holds is left
    // as it was. The budget rows of pools that do not exist go here too: before the fabric
    // exists, so before anything (the config's pools) can make a pool under such an id, and
    // before a budget scope is loaded.
    let clock: StoreClock | undefined;
    let loaded: {
      tasks: Array<[string, never, number]>;
      records: Map<Kind, Array<[string, never]>>;
      orphans: number;
    };
    try {
      loaded = db.transaction(() => {
        clock = new StoreClock(db, options.boot);
        const records = new Map<Kind, Array<[string, never]>>();
        for (const kind of RECORD_KINDS) records.set(kind, rows(kind));
        const tasks = taskRows(path, db);
        return { tasks, records, orphans: dropOrphanPoolBudgetsOnce(db) };
      })();
    } catch (error) {
      if (error instanceof StateStoreError) throw error;
      throw new StateStoreError(path, `cannot be written: ${messageOf(error)}`, { cause: error });
    }
    this.#clock = clock!;
    this.clockStepAtOpen = this.#clock.stepAtOpen;
    this.orphanPoolBudgetsDropped = loaded.orphans;
    const stored = (kind: Kind): Array<[string, never]> => loaded.records.get(kind)!;
    this.tasks = new SqliteTaskCollection<TTask>(journal, loaded.tasks);
    this.agents = new SqliteCollection<TAgent>('agent', journal, stored('agent'), 'soon');
    this.pools = new SqliteCollection<TPool>('pool', journal, stored('pool'), 'soon');
    this.approvals = new SqliteCollection<Approval>('approval', journal, stored('approval'), 'now');
    this.toolTasks = new SqliteCollection<ToolTaskRecord>(
      'tool_task',
      journal,
      stored('tool_task'),
      'soon',
    );
    this.#clock.moveStarts = (ms) => {
      this.tasks.moveStarts(ms);
      this.toolTasks.moveTimes(TOOL_TASK_TIMES, ms);
    };
    this.policies = new SqliteCollection<PolicyChangeRecord>(
      'policy',
      journal,
      stored('policy'),
      'now',
    );
    this.owedAborts = new SqliteCollection<OwedAborts>(
      'owed_abort',
      journal,
      stored('owed_abort'),
      'soon',
    );
    this.budgets = new SqliteBudgetStore(
      db,
      path,
      journal,
      options.budgetLeasePercent ?? DEFAULT_BUDGET_LEASE_PERCENT,
    );
    this.#upsert = db.prepare(
      'INSERT INTO records (kind, id, data) VALUES (?, ?, ?) ON CONFLICT (kind, id) DO UPDATE SET data = excluded.data',
    );
    this.#remove = db.prepare('DELETE FROM records WHERE kind = ? AND id = ?');
    this.#taskRows = new TaskRowWriter(db);
    this.#inTransaction = db.transaction((body: () => void) => body());
    this.#upsertBudget = db.prepare(
      'INSERT INTO budgets (scope, data) VALUES (?, ?) ON CONFLICT (scope) DO UPDATE SET data = excluded.data',
    );
    this.#removeBudget = db.prepare('DELETE FROM budgets WHERE scope = ?');
    this.#setMeta = db.prepare(
      'INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value',
    );
    this.#getMeta = db.prepare('SELECT value FROM meta WHERE key = ?');
    const { dev, ino } = statSync(path);
    this.#identity = { dev, ino };
    this.#fileCheck = setInterval(() => {
      this.#checkFile();
      this.#retry();
      this.#clockTick();
    }, FILE_CHECK_INTERVAL_MS);
    this.#fileCheck.unref();
    // First among the `exit` handlers: the lock file's own (installed with the process's first
    // lock, before this) removes the lock, after which another process may open the file.
    if (atExit.size === 0) process.prependListener('exit', commitAtExit);
    atExit.add(this.#atExit);
  }

  /** What {@link commitAtExit} runs: the end-of-iteration commit, now; a failure ends nowhere. */
  readonly #atExit = (): void => {
    try {
      this.#flush(true);
    } catch {
      // The process is ending: the changes are lost as they were before this commit existed.
    }
  };

  /**
   * Opens (or creates, with its folder) the state file at `path` and takes its lock.
   * @throws StateLockedError when another process (or store in this one) has it open;
   *   StateVersionError for a newer schema; StateStoreError for a file that is not an Agent
   *   Fabric state file, is corrupt or cannot be read. In every error case the file is unchanged.
   */
  static async open<TTask = unknown, TAgent = unknown, TPool = unknown>(
    path: string,
    options: SqliteStoreOptions = {},
  ): Promise<SqliteStore<TTask, TAgent, TPool>> {
    if (typeof path !== 'string' || path.length === 0) {
      throw new InvalidArgumentError('path', 'must be a non-empty string');
    }
    const synchronous = options.synchronous ?? DEFAULT_STATE_SYNCHRONOUS;
    if (synchronous !== 'NORMAL' && synchronous !== 'FULL') {
      throw new InvalidArgumentError('options.synchronous', "must be 'NORMAL' or 'FULL'");
    }
    const lease = options.budgetLeasePercent ?? DEFAULT_BUDGET_LEASE_PERCENT;
    if (typeof lease !== 'number' || !(lease >= 0 && lease <= MAX_BUDGET_LEASE_PERCENT)) {
      throw new InvalidArgumentError(
        'options.budgetLeasePercent',
        `must be a number from 0 to ${MAX_BUDGET_LEASE_PERCENT}`,
      );
    }
    try {
      mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
    } catch (error) {
      throw new StateStoreError(path, `its folder cannot be created: ${messageOf(error)}`, {
        cause: error,
      });
    }
    const lock = await acquireLock(path);
    try {
      // A zero-length file with a WAL beside it is not new: its data is in the WAL.
      const created =
        !existsSync(path) || (statSync(path).size === 0 && !existsSync(`${path}-wal`));
      assertWritable(path);
      if (!created) inspect(path);
      let db: Database.Database | undefined;
      try {
        // The file holds credential hashes and the start-up agents' key: owner only. Made so
        // before SQLite opens it, which gives the WAL and its index (`-wal`, `-shm`, where every
        // commit lands first) the file's mode; chmod'ed after, they kept the umask's 0644.
        if (created) ownerOnly(path);
        privateSideFiles(path);
        db = new Database(path);
        db.pragma('journal_mode = WAL');
        db.pragma(`synchronous = ${synchronous}`);
        db.exec(SCHEMA);
      } catch (error) {
        db?.close();
        throw new StateStoreError(path, `cannot be opened: ${messageOf(error)}`, { cause: error });
      }
      let from: number;
      try {
        from = migrate(path, db);
      } catch (error) {
        db.close();
        throw error;
      }
      try {
        // Owed aborts are kept from schema 3 on; a new file (0) has none to miss.
        const complete = from === 0 || from >= 3;
        return new SqliteStore<TTask, TAgent, TPool>(path, created, db, lock, options, complete);
      } catch (error) {
        db.close();
        throw error;
      }
    } catch (error) {
      await lock.release();
      throw error;
    }
  }

  /** A value stored under `key` (admin token hash, key of start-up credentials), if any. */
  getMeta(key: string): string | undefined {
    this.#assertOpen();
    return this.#getMeta.get(key)?.value;
  }

  /** Stores `value` under `key`, committed before it returns. */
  setMeta(key: string, value: string): void {
    this.#assertOpen();
    this.#setMeta.run(key, value);
  }

  /**
   * The value under `key`, created (random 32 bytes, hex) and committed if missing. Used for the
   * secret from which the sidecar derives its start-up agents' credentials.
   */
  secret(key: string): string {
    const existing = this.getMeta(key);
    if (existing !== undefined) return existing;
    const value = randomBytes(32).toString('hex');
    this.setMeta(key, value);
    return value;
  }

  /** HMAC-SHA256 of `message` under {@link secret}(`key`), base64url. */
  derive(key: string, message: string): string {
    return createHmac('sha256', this.secret(key)).update(message).digest('base64url');
  }

  /**
   * Commits every pending change now, in one transaction, budget scopes with their exact usage
   * (no lease: see {@link SqliteBudgetStore}).
   * @throws StateStoreError when the write fails (the changes stay pending).
   */
  flush(): void {
    this.#flush(true, true);
  }

  /**
   * {@link flush}; `lazy`: also the changes made with `putLazily`; `exact`: budget scopes
   * written with a lease are written with their exact usage (see {@link SqliteBudgetStore}).
   */
  #flush(lazy: boolean, exact = false): void {
    if (!lazy) this.#soon = false;
    if (this.#closed) return;
    const tasks = this.tasks.hasPending(lazy);
    const agents = this.agents.pending(lazy);
    const pools = this.pools.pending(lazy);
    const approvals = this.approvals.pending(lazy);
    const toolTasks = this.toolTasks.pending(lazy);
    const policies = this.policies.pending(lazy);
    const owed = this.owedAborts.pending(lazy);
    const budgets = this.budgets.pending(exact);
    if (
      !tasks &&
      agents.length === 0 &&
      pools.length === 0 &&
      approvals.length === 0 &&
      toolTasks.length === 0 &&
      policies.length === 0 &&
      owed.length === 0 &&
      budgets.length === 0
    ) {
      // Every change made so far (lazy ones aside, without `lazy`) is on disk.
      this.#commitsDone = ++this.#commitsTried;
      if (lazy) this.#written(); // nothing only in memory
      return;
    }
    const attempt = ++this.#commitsTried;
    // Serialize first, one record at a time: a record that cannot be serialized (a BigInt or a
    // cycle an embedder put in it) is reported, not allowed to block every other record's commit.
    const unserializable: string[] = [];
    const json = (name: string, value: () => unknown): string | undefined => {
      try {
        return recordJson(value(), name);
      } catch {
        unserializable.push(name);
        return undefined;
      }
    };
    // A live budget scope writes its own JSON text (the generic stringify of its bucket arrays
    // was most of a commit's serialization).
    const budgetJson = (
      scope: string,
      name: string,
      source: BudgetStateSource,
    ): string | undefined => {
      try {
        const text = this.budgets.text(scope, source, exact);
        if (text !== null) return text;
        if (source.toJSONText === undefined) return json(name, () => source.toJSON());
        return source.toJSONText();
      } catch {
        unserializable.push(name);
        return undefined;
      }
    };
    const rows: Array<[Kind, string, string | undefined | null]> = [];
    for (const [c, changed] of [
      [this.agents, agents],
      [this.pools, pools],
      [this.approvals, approvals],
      [this.toolTasks, toolTasks],
      [this.policies, policies],
      [this.owedAborts, owed],
    ] as const) {
      for (const [id, record] of changed) {
        rows.push([
          c.kind as Kind,
          id,
          record === undefined ? null : json(`${c.kind} ${id}`, () => record),
        ]);
      }
    }
    const scopes = budgets.map(([scope, source]): [string, string | undefined | null] => [
      scope,
      source === null ? null : budgetJson(scope, `budget ${scope}`, source),
    ]);
    // Tasks are serialized inside the transaction, one at a time (no intermediate copies: they
    // are most of the writes); a task that cannot be serialized is skipped and reported.
    let written: { count: number; committed(): void; failed(): void } | undefined;
    const started = performance.now();
    try {
      this.#inTransaction(() => {
        // A step this call found moved the MCP tasks in memory after they were serialized above
        // (see `StoreClock.committing`): serialized again, they are written as moved.
        if (this.#clock.committing() !== 0) {
          for (const row of rows) {
            if (row[0] === 'tool_task' && typeof row[2] === 'string') {
              row[2] = json(`tool_task ${row[1]}`, () => this.toolTasks.get(row[1]));
            }
          }
        }
        if (tasks) {
          this.#taskRows.begin();
          written = this.tasks.write(
            lazy,
            (id, record, rid) => this.#writeTask(id, record, rid, unserializable),
            (id, record, rid) => {
              if (!this.#taskRows.rewriteFixed(rid, id, record)) unserializable.push(`task ${id}`);
            },
          );
          this.#taskRows.end();
        }
        for (const [kind, id, data] of rows) {
          if (data === null) this.#remove.run(kind, id);
          else if (data !== undefined) this.#upsert.run(kind, id, data);
        }
        for (const [scope, data] of scopes) {
          if (data === null) this.#removeBudget.run(scope);
          else if (data !== undefined) this.#upsertBudget.run(scope, data);
        }
      });
    } catch (error) {
      written?.failed();
      this.#clock.rolledBack();
      const failure = new StateStoreError(this.path, `write failed: ${messageOf(error)}`, {
        cause: error,
      });
      this.#failedCommit = failure;
      this.#failedSince ??= Date.now();
      this.tasks.reportUnwritten(failure);
      throw failure;
    }
    // Written (a record that cannot be serialized, reported below, never will be).
    this.#commitsDone = attempt;
    written?.committed();
    this.#written();
    const stats = this.#stats;
    stats.commits++;
    stats.recordsWritten += (written?.count ?? 0) + rows.length + scopes.length;
    stats.commitSeconds += (performance.now() - started) / 1000;
    this.agents.committed(agents.map(([id]) => id));
    this.pools.committed(pools.map(([id]) => id));
    this.approvals.committed(approvals.map(([id]) => id));
    this.toolTasks.committed(toolTasks.map(([id]) => id));
    this.policies.committed(policies.map(([id]) => id));
    this.owedAborts.committed(owed.map(([id]) => id));
    this.budgets.committed(budgets);
    if (unserializable.length > 0) {
      throw new StateStoreError(
        this.path,
        `not written, cannot be serialized as JSON: ${unserializable.join(', ')} (the rest was committed)`,
      );
    }
  }

  /** Nothing is only in memory any more: the store is healthy, its commit waiters go on. */
  #written(): void {
    this.#failedCommit = this.#failedSince = undefined;
    if (this.#commitWaiters.length === 0) return;
    const waiters = this.#commitWaiters;
    this.#commitWaiters = [];
    for (const w of waiters) w.resolve();
  }

  /**
   * Marks the changes made so far, for {@link commitOutcome}: take it in the synchronous run
   * that made the change, after it (an `await` between lets other callers' commits run).
   */
  commitMark(): number {
    return this.#commitsTried;
  }

  /**
   * The outcome of the commit that carried the changes made before `mark` was taken (every
   * commit writes all that is pending): undefined when one that succeeded did, else the error of
   * the failed one — never that of a later, unrelated commit when they are on disk, nor success
   * of an earlier one when they are not. When no commit has run since the mark, one runs now (the
   * microtask commit the change queued normally runs first). Lazy changes (`putLazily`) are not
   * covered.
   */
  commitOutcome(mark: number): StateStoreError | undefined {
    if (this.#commitsTried === mark && !this.#closed) this.#commit(false, false);
    if (this.#commitsDone > mark) return undefined;
    return (
      this.#failedCommit ??
      this.#lastError ??
      new StateStoreError(this.path, 'is closed: the change was not committed')
    );
  }

  /** How many {@link whenCommitted} callers wait (for `/metrics` and tests). */
  get commitWaiters(): number {
    return this.#commitWaiters.length;
  }

  /**
   * Resolves once a commit succeeds after a failed one (at once when the last commit did not
   * fail): then every change made before the call is on disk. Rejects with `close()`'s error
   * when the store closes first without committing them, and with `signal`'s reason when it
   * aborts first — the wait is then forgotten (a caller that gives up leaves nothing behind).
   */
  whenCommitted(signal?: AbortSignal): Promise<void> {
    if (this.#failedCommit === undefined) return Promise.resolve();
    if (this.#closed) return Promise.reject(this.#failedCommit);
    if (signal?.aborted === true) return Promise.reject(signal.reason as Error);
    return new Promise((resolve, reject) => {
      if (signal === undefined) {
        this.#commitWaiters.push({ resolve, reject });
        return;
      }
      const onAbort = (): void => {
        const i = this.#commitWaiters.indexOf(waiter);
        if (i >= 0) this.#commitWaiters.splice(i, 1);
        reject(signal.reason as Error);
      };
      const waiter = {
        resolve(): void {
          signal.removeEventListener('abort', onAbort);
          resolve();
        },
        reject(error: unknown): void {
          signal.removeEventListener('abort', onAbort);
          reject(error);
        },
      };
      signal.addEventListener('abort', onAbort, { once: true });
      this.#commitWaiters.push(waiter);
    });
  }

  /**
   * Writes the task `id` (inside the commit's transaction): a first write inserts its row (and
   * returns it), later ones update the columns that change, a deleted task's row goes.
   */
  #writeTask(
    id: string,
    record: TTask | undefined,
    rid: number | undefined,
    unserializable: string[],
  ): number | undefined {
    if (record === undefined) {
      if (rid !== undefined) this.#taskRows.remove(rid);
      return undefined;
    }
    if (rid !== undefined) {
      if (!this.#taskRows.update(rid, id, record)) unserializable.push(`task ${id}`);
      return undefined;
    }
    const row = this.tasks.newRow();
    if (this.#taskRows.insert(row, id, record)) return row;
    unserializable.push(`task ${id}`);
    return undefined;
  }

  /**
   * Commits what is pending, closes the database and releases the lock. Idempotent. A store
   * whose path was removed or replaced while open saves its state again first (see
   * `#checkFile`).
   * @throws StateStoreError when the last commit fails, when that save fails, or when the path
   *   was replaced (the state was saved beside it: the error says where).
   */
  async close(): Promise<void> {
    if (this.#closed) return;
    clearInterval(this.#fileCheck);
    let failure: unknown;
    try {
      this.flush();
      try {
        this.#clock.flush();
      } catch {
        // The mark of the last commit stays: it pairs the clocks as well, but for a step since.
      }
    } catch (error) {
      failure = error;
      const since = this.#failedSince;
      if (error instanceof StateStoreError && since !== undefined) {
        // Said plainly: what was kept in memory since then is lost with this process.
        failure = new StateStoreError(
          this.path,
          `${error.message.replace(/^state store .*?: /, '')}; every change not committed when commits began to fail (${new Date(since).toISOString()}) or made since was kept in memory only and is lost: the file holds the state of the last commit that succeeded — the calls answered FABRIC_ERR_STATE_STORE that said their change holds (completions, failures, progress, cancels, reported usage, terminations, pool shrinks and deletions) and the usage of the tool calls that found the failure are undone by the restart (tasks run again, agents and pools are back as the file held them, budget usage past what the file covers may be spent again)`,
          { cause: error },
        );
      }
    }
    this.#checkFile();
    const detached = this.#detached;
    if (detached !== undefined) {
      // Everything is in the open file now: save it again, over the copy saved when the
      // removal was noticed.
      try {
        // The lock made again when the state was saved back may have gone with the folder again.
        if (detached.target === this.path && this.#holdLock() !== undefined) {
          detached.target = besidePath(this.path);
          detached.saved = undefined;
          detached.error = new StateStoreError(
            this.path,
            `was removed while in use and its lock is not this store's: its state was saved to ${detached.target}`,
          );
        }
        this.#save(detached);
        if (detached.target !== this.path) failure ??= detached.error;
      } catch (error) {
        failure ??= error;
      }
    }
    this.#closed = true;
    atExit.delete(this.#atExit);
    if (atExit.size === 0) process.off('exit', commitAtExit);
    const waiters = this.#commitWaiters;
    this.#commitWaiters = [];
    for (const w of waiters) {
      if (this.#failedCommit === undefined) w.resolve();
      else w.reject(failure ?? this.#failedCommit);
    }
    try {
      this.#db.close();
    } finally {
      await this.#lock.release();
    }
    if (failure !== undefined) throw failure;
  }

  /**
   * Commits (transactions written), failed commits, records written (inserted, updated or
   * deleted) and the time spent in commits, since the store was opened (for `/metrics`).
   */
  get stats(): Readonly<{
    commits: number;
    failedCommits: number;
    recordsWritten: number;
    commitSeconds: number;
  }> {
    return this.#stats;
  }

  /**
   * The error of the last commit when it failed; what it held stays pending, in memory, until a
   * commit succeeds (retried every second, see `#retry`). Undefined once one does.
   */
  commitFailure(): StateStoreError | undefined {
    return this.#failedCommit;
  }

  /** The last background commit failure, if the latest commit failed. */
  get lastError(): StateStoreError | undefined {
    return this.#lastError;
  }

  /**
   * Agents, pools and budget usage commit on a microtask: before a caller awaiting the change
   * resumes (an awaited `spawn`, `recordUsage`, a tool call's settle before its response is
   * written), while every change made in the same synchronous run — the settles of all calls
   * answered by one chunk of upstream output, say — shares one transaction (group commit).
   * Approvals and policy changes commit at once (`now`): both are human-speed, and a library caller of the
   * synchronous `approve()` must not be able to observe it before it is on disk.
   * @throws StateStoreError (urgency `now` only) when that commit fails: the change stays
   *   pending and is retried with the next commit.
   */
  #schedule(urgency: Urgency): void {
    if (this.#closed) return;
    if (urgency === 'now') {
      this.#commit(true, false);
      return;
    }
    if (urgency === 'later') {
      if (this.#later) return;
      this.#later = true;
      setImmediate(() => {
        this.#later = false;
        this.#commit(false, true);
      });
      return;
    }
    if (this.#soon) return;
    this.#soon = true;
    queueMicrotask(() => this.#commit(false, false));
  }

  #commit(rethrow: boolean, lazy: boolean): void {
    try {
      this.#flush(lazy);
      this.#lastError = this.#detached?.error;
    } catch (error) {
      // Never thrown into a microtask (that would crash the process): reported, and the changes
      // stay pending for the next commit. A synchronous commit also throws to its caller.
      this.#lastError = error as StateStoreError;
      this.#stats.failedCommits++;
      this.#onError(this.#lastError);
      if (rethrow) throw error;
    }
  }

  /**
   * After a failed commit (disk full, I/O error), commits what is pending again once a second,
   * without waiting for a new change: once the write succeeds (space is back) the store is
   * healthy again (`lastError` cleared, `/readyz` ready). A retry that fails again is not
   * reported again (the first failure was).
   */
  #retry(): void {
    if (this.#closed || this.#detached !== undefined || this.#failedCommit === undefined) return;
    try {
      this.#flush(true);
      this.#lastError = undefined;
    } catch (error) {
      this.#lastError = error as StateStoreError;
      this.#stats.failedCommits++;
    }
  }

  /** See `StoreClock.tick`. */
  #clockTick(): void {
    if (this.#closed || this.#detached !== undefined) return;
    try {
      this.#clock.tick();
    } catch {
      // Not written (disk full, say): the next commit's or a later tick's mark is.
    }
  }

  #assertOpen(): void {
    if (this.#closed) throw new StateStoreError(this.path, 'is closed');
  }

  /**
   * Whether the path still names the open file. SQLite goes on writing into the file it has
   * open: after a removal (or a file put in its place) every change would go into a file no
   * later start reads. Once noticed, the store's state is saved back ({@link #save}: to the
   * path only when it holds the path's lock, made again if it went with the folder — else a
   * second sidecar could open the saved file beside this one — else beside the path) and the
   * store stays failed (`lastError`, readiness) until it is closed; changes go on into the open
   * file and are saved again by `close()`.
   */
  #checkFile(): void {
    if (this.#closed || this.#detached !== undefined) return;
    let now: ReturnType<typeof statSync>;
    try {
      now = statSync(this.path, { throwIfNoEntry: false });
    } catch {
      return; // cannot tell (its folder unreadable, say): the commits report what fails
    }
    if (now !== undefined && now.dev === this.#identity.dev && now.ino === this.#identity.ino) {
      this.#checkWal();
      this.#checkLock();
      return;
    }
    const removed = now === undefined;
    // Saved back to the path only holding its lock again (removed with its folder, say): else a
    // second sidecar could open the saved file beside this one.
    const unlocked = removed ? this.#holdLock() : undefined;
    const target = removed && unlocked === undefined ? this.path : besidePath(this.path);
    const detached: Detached = {
      target,
      error: new StateStoreError(this.path, 'is no longer the file this store has open'),
    };
    let saved: string;
    try {
      this.#save(detached);
      saved = `its state was saved to ${target}`;
    } catch (error) {
      saved = `its state could not be saved (${messageOf(error)}); it is saved at shutdown`;
    }
    detached.error = new StateStoreError(
      this.path,
      removed
        ? `was removed while in use${unlocked === undefined ? '' : ` and its lock is not this store's (${unlocked})`}: ${saved}; changes go on into the removed file and are saved there again at shutdown — restart the sidecar soon (a crash before then loses the changes since)`
        : `was replaced by another file while in use (left as it is): ${saved}; changes go on into the replaced file and are saved there again at shutdown — put the right file back and restart the sidecar`,
    );
    this.#detached = detached;
    this.#lastError = detached.error;
    this.#onError(detached.error);
  }

  /**
   * Makes the folder and the lock file `<path>.lock` again when they were removed (see
   * `StoreLock.restoreSync`: this process's identity, as at open). Returns `undefined` when
   * the store holds its lock, else why it does not.
   */
  #holdLock(): string | undefined {
    try {
      mkdirSync(dirname(this.path), { recursive: true, mode: 0o700 });
    } catch (error) {
      return `its folder cannot be made: ${messageOf(error)}`;
    }
    const state = this.#lock.restoreSync();
    return state === 'held' || state === 'made' ? undefined : state;
  }

  /**
   * Whether the lock file `<path>.lock` is still there, the state file being in place: one
   * removed (a clean-up of "stale" files) let a second sidecar open this state beside this one.
   * It is made again (`StoreLock.restoreSync`) and that is reported; a lock another process took
   * meanwhile is reported once.
   */
  #checkLock(): void {
    const state = this.#lock.restoreSync();
    if (state === 'held') {
      this.#lockLost = false;
      return;
    }
    if (state !== 'made' && this.#lockLost) return;
    this.#lockLost = state !== 'made';
    this.#onError(
      new StateStoreError(
        this.path,
        state === 'made'
          ? `its lock ${this.#lock.path} was removed while in use: it was made again for this process`
          : `its lock ${this.#lock.path} is not this store's (${state}): another process may open this state — stop it`,
      ),
    );
  }

  /**
   * Whether the `-wal` and `-shm` files are still there. SQLite keeps both open while it runs
   * and never removes them itself then; one removed (a clean-up of "temporary" files) holds
   * every change since the last checkpoint — at first the whole schema — in a file no later
   * start reads, so a crash would lose it. It is moved into the file (a checkpoint) and SQLite
   * makes both anew (leaving WAL mode and entering it again).
   */
  #checkWal(): void {
    const missing = [`${this.path}-wal`, `${this.path}-shm`].filter((f) => {
      try {
        return statSync(f, { throwIfNoEntry: false }) === undefined;
      } catch {
        return false;
      }
    });
    if (missing.length === 0) return;
    let outcome: string;
    try {
      this.#db.pragma('wal_checkpoint(TRUNCATE)');
      this.#db.pragma('journal_mode = DELETE');
      this.#db.pragma('journal_mode = WAL');
      outcome = 'its content was moved into the file and new ones were made';
      this.#walRepairFailed = false;
    } catch (error) {
      // Tried again every check (another connection may hold the file), reported once.
      if (this.#walRepairFailed) return;
      this.#walRepairFailed = true;
      outcome = `moving its content into the file failed (${messageOf(error)}; tried again every second): a crash before then loses the changes since the last checkpoint`;
    }
    this.#onError(
      new StateStoreError(
        this.path,
        `its ${missing.map((f) => f.slice(this.path.length)).join(' and ')} ${missing.length === 1 ? 'file was' : 'files were'} removed while in use: ${outcome}`,
      ),
    );
  }

  /**
   * Writes a copy of the open database (`VACUUM INTO`: committed changes, the WAL's included)
   * to a new file beside `detached.target`, owner-only, then renames it over the target — only
   * when the target is free or is the copy saved before, never over someone else's file.
   */
  #save(detached: Detached): void {
    const { target } = detached;
    const there = statSync(target, { throwIfNoEntry: false });
    if (
      there !== undefined &&
      !(there.dev === detached.saved?.dev && there.ino === detached.saved.ino)
    ) {
      throw new Error(`${target} exists`);
    }
    mkdirSync(dirname(target), { recursive: true, mode: 0o700 });
    const tmp = `${target}.${randomBytes(6).toString('hex')}.tmp`;
    try {
      closeSync(openSync(tmp, 'wx', 0o600));
      this.#db.prepare('VACUUM INTO ?').run(tmp);
      renameSync(tmp, target);
    } catch (error) {
      rmSync(tmp, { force: true });
      throw error;
    }
    const { dev, ino } = statSync(target);
    detached.saved = { dev, ino };
  }
}

/** A store whose path no longer names its open file (see `SqliteStore.#checkFile`). */
interface Detached {
  /**
   * Where its state is saved: the path when it was free and the store holds its lock (made
   * again when it was removed), else a file beside it.
   */
  target: string;
  /** The copy last saved at `target` (it may be replaced by the next save). */
  saved?: { dev: number; ino: number };
  /** What `lastError` reports until the store is closed. */
  error: StateStoreError;
}

/** A new file name beside `path` to save a detached store's state to. */
function besidePath(path: string): string {
  return join(
    dirname(path),
    `${basename(path)}.detached-${new Date().toISOString().replace(/[:.]/g, '-')}.db`,
  );
}

/** How often a store checks that its path still names the file it has open. */
const FILE_CHECK_INTERVAL_MS = 1000;

/** Takes `<path>.lock`, reporting a holder as a state (not hook) lock. */
async function acquireLock(path: string): Promise<StoreLock> {
  try {
    return await StoreLock.acquire(`${path}.lock`);
  } catch (error) {
    if (error instanceof HookStoreLockedError) {
      const { lockPath, pid, hostname, startedAt } = error.details as {
        lockPath: string;
        pid?: number;
        hostname?: string;
        startedAt?: string;
      };
      const who =
        pid === undefined ? 'an unreadable holder' : `pid ${pid} on ${hostname} since ${startedAt}`;
      const holder = pid === undefined ? {} : { pid, hostname, startedAt };
      throw new StateLockedError(
        lockPath,
        holder,
        `state store ${path} is in use by ${who} (lock ${lockPath}); one sidecar per state file. If that process is gone, remove the lock file`,
        { cause: error },
      );
    }
    throw new StateStoreError(path, `its lock cannot be taken: ${messageOf(error)}`, {
      cause: error,
    });
  }
}

/**
 * Refuses a state file this process may not write, before SQLite opens it: SQLite would open it
 * read-only without a word (the start-up then failing at its first write, with no path), and
 * make a `-shm` file with the file's read-only mode that kept failing later starts once the
 * file was fixed. `access(W_OK)` also sees a read-only mount.
 */
function assertWritable(path: string): void {
  for (const file of [dirname(path), path, `${path}-wal`, `${path}-shm`]) {
    try {
      accessSync(file, constants.W_OK);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') continue;
      throw new StateStoreError(
        path,
        `cannot be written (${file}: ${messageOf(error)}); this process needs write access to the file, its -wal and -shm files and its folder`,
        { cause: error },
      );
    }
  }
}

/**
 * Checks an existing file through a read-only connection before anything may write to it:
 * SQLite, ours, not newer, intact.
 */

/** Creates `path` (when missing) readable and writable by its owner only, and makes it so. */
function ownerOnly(path: string): void {
  closeSync(openSync(path, 'a', 0o600));
  chmodSync(path, 0o600);
}

/**
 * Takes from a WAL or WAL index left beside `path` (a crash of an earlier version, which made
 * them under the umask) every permission the state file itself does not grant: SQLite reuses
 * them as they are, and the WAL holds the latest commits.
 */
function privateSideFiles(path: string): void {
  if (!existsSync(path)) return;
  const mode = statSync(path).mode & 0o777;
  for (const side of [`${path}-wal`, `${path}-shm`]) {
    const sideMode = existsSync(side) ? statSync(side).mode & 0o777 : undefined;
    if (sideMode !== undefined && (sideMode & ~mode) !== 0) chmodSync(side, sideMode & mode);
  }
}

function inspect(path: string): void {
  let db: Database.Database;
  try {
    db = new Database(path, { readonly: true, fileMustExist: true });
  } catch (error) {
    throw new StateStoreError(path, `cannot be read: ${messageOf(error)}`, { cause: error });
  }
  try {
    let version: number;
    try {
      version = db.pragma('user_version', { simple: true }) as number;
    } catch (error) {
      throw new StateStoreError(
        path,
        `is not a SQLite database or is corrupt: ${messageOf(error)}`,
        {
          cause: error,
        },
      );
    }
    if (version > STATE_SCHEMA_VERSION) {
      throw new StateVersionError(path, version, STATE_SCHEMA_VERSION);
    }
    let check: string;
    try {
      check = String(db.pragma('quick_check', { simple: true }));
    } catch (error) {
      throw new StateStoreError(path, `is corrupt: ${messageOf(error)}`, { cause: error });
    }
    if (check !== 'ok') throw new StateStoreError(path, `is corrupt: ${check}`);
    const missing = missingTable(db, SCHEMA_TABLES[version] ?? {});
    if (missing !== undefined) {
      throw new StateStoreError(
        path,
        `is a SQLite database but not an Agent Fabric state file (schema ${version} without ${missing})`,
      );
    }
    if (version === 0) {
      const tables = db
        .prepare<[], { n: number }>("SELECT count(*) AS n FROM sqlite_master WHERE type = 'table'")
        .get();
      if ((tables?.n ?? 0) > 0) {
        throw new StateStoreError(
          path,
          'is a SQLite database but not an Agent Fabric state file (no schema version)',
        );
      }
    }
  } finally {
    db.close();
  }
}

/** The first of `tables` (or `table.column`) the file does not have, `undefined` when none. */
function missingTable(
  db: Database.Database,
  tables: Readonly<Record<string, readonly string[]>>,
): string | undefined {
  const columnsOf = db.prepare<[string], { name: string }>('SELECT name FROM pragma_table_info(?)');
  for (const [table, columns] of Object.entries(tables)) {
    const has = new Set(columnsOf.all(table).map((c) => c.name));
    if (has.size === 0) return `table ${table}`;
    const column = columns.find((c) => !has.has(c));
    if (column !== undefined) return `column ${table}.${column}`;
  }
  return undefined;
}

/**
 * Brings a file of an older schema to {@link STATE_SCHEMA_VERSION} in one transaction (a failure
 * leaves it as it was): 0 (new) or 1 creates the `tasks` table and moves schema 1's task
 * records (JSON in `records`) into it; 2 adds the tasks table's `report_mark` column.
 * @returns the schema version the file had when opened.
 * @throws StateStoreError naming the file and the task when a schema-1 task record is not JSON.
 */
function migrate(path: string, db: Database.Database): number {
  const version = db.pragma('user_version', { simple: true }) as number;
  if (version === STATE_SCHEMA_VERSION) return version;
  try {
    db.transaction(() => {
      if (version === 2) db.exec('ALTER TABLE tasks ADD COLUMN report_mark TEXT');
      else db.exec(TASKS_TABLE);
      if (version === 1) {
        const insert = db.prepare(INSERT_TASK);
        let rid = 0;
        for (const r of db
          .prepare<[], { id: string; data: string }>(
            "SELECT id, data FROM records WHERE kind = 'task' ORDER BY id",
          )
          .all()) {
          const cells = insertCells(r.id, parseRecord(path, 'task', r.id, r.data));
          cells[0] = ++rid;
          insert.run(cells);
        }
        db.exec("DELETE FROM records WHERE kind = 'task'");
      }
      db.pragma(`user_version = ${STATE_SCHEMA_VERSION}`);
    })();
  } catch (error) {
    if (error instanceof StateStoreError) throw error;
    throw new StateStoreError(
      path,
      `cannot be migrated from schema ${version} to ${STATE_SCHEMA_VERSION}: ${messageOf(error)}`,
      { cause: error },
    );
  }
  return version;
}

/**
 * The stored tasks with their rows, in row order.
 * @throws StateStoreError naming the task when a row cannot be read, or when two rows hold one
 *   task id (only a hand edit makes that: one row would be used, the other come back when it goes).
 */
function taskRows(path: string, db: Database.Database): Array<[string, never, number]> {
  const rowOf = new Map<string, number>();
  return db
    .prepare<[], TaskRow>('SELECT * FROM tasks ORDER BY rid')
    .all()
    .map((row) => {
      const other = rowOf.get(row.id);
      if (other !== undefined) {
        throw new StateStoreError(
          path,
          `task record ${JSON.stringify(row.id)} is stored twice (tasks rows ${other} and ${row.rid}): keep one`,
        );
      }
      rowOf.set(row.id, row.rid);
      try {
        return [row.id, taskFromRow(row) as never, row.rid];
      } catch (error) {
        throw new StateStoreError(
          path,
          `task record ${JSON.stringify(row.id)} cannot be read: ${messageOf(error)}`,
          { cause: error },
        );
      }
    });
}

function parseRecord(path: string, kind: Kind | 'task', id: string, data: string): unknown {
  try {
    const value: unknown = parseRecordJson(data, `${kind} record ${id}`);
    if (value !== null && typeof value === 'object') return value;
  } catch {
    // reported below
  }
  throw new StateStoreError(path, `${kind} record ${JSON.stringify(id)} is not a JSON object`);
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

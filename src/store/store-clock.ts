/**
 * The state file's clock mark: how the SQLite store tells time that passed while no sidecar ran
 * from a step of the wall clock made meanwhile.
 *
 * The times an open task or a pending approval keeps — its deadline, `notBefore`, the start of its
 * running attempt (its timeout counts from it), an approval's expiry, the creation of an MCP task
 * (it lives `ttl` from then) — are wall-clock epoch ms. Across a restart only the clock spans the
 * gap, and the wall clock may have been set ahead or back while the sidecar was down: set ahead a
 * day, every deadline and approval passed at start; set back, they lived a day longer. The
 * boot-time clock (`/proc/uptime`, suspend included) counts what really passed. So the file keeps
 * one mark, `{ wall, boot, bootId }` in `meta` (the budget clock's {@link ClockMark}, read by the
 * same {@link BudgetClock}): written when the store opens, with a commit once a second at most
 * and with the first commit after the wall clock stepped (see {@link StoreClock.committing}), at
 * once when the clock (looked at once a second) saw the wall clock step, and at close. A store
 * opened later on the same boot takes the difference between how far the wall clock moved and how
 * much time passed for a step, and moves those times by it — in the file, in one transaction with
 * a fresh mark, before anything reads them — so each keeps the elapsed time it had left.
 *
 * Why one mark for the file, not one per record: the mark only has to pair the two clocks at a
 * moment the records' times were on the same wall clock as at the last commit; without a step
 * the pair stays valid however old it is. One mark costs one small `meta` write a second while
 * commits happen and nothing per task (a task's row is the scheduler's hot path), where a mark
 * per task would add a column and a write to every one. And it corrects what no sidecar saw:
 * a step the running sidecar saw was already dealt with by its own rules (a queued deadline or
 * `notBefore` follows the wall clock while running; see `task-timers.ts`), which a mark taken
 * when each record was written would have applied a second time. The start of a SCHEDULED or
 * RUNNING attempt does not follow the wall clock while running: its timeout counts on the
 * monotonic clock then, but from its start across a restart; nor does an MCP task's creation
 * (its ttl likewise). The running store moves those starts and creations by each step it sees —
 * in memory at once, in the file in the transaction of the mark that follows the step (see
 * {@link StoreClock.moveStarts}) — so after a restart an attempt has its timeout, and an MCP task
 * its ttl, minus the time that really passed, whatever the steps made while it ran or while the
 * sidecar was down, and whenever a crash came.
 *
 * On another boot (the boot id differs), where the boot-time clock or boot id cannot be read
 * (not Linux), or in a file written before the mark existed, only the wall clock spans the gap,
 * as before. Budget rows carry marks of their own (`BudgetScopeSnapshot.clock`).
 *
 * @module
 */
import type Database from 'better-sqlite3';
import {
  BudgetClock,
  CLOCK_CHECK_INTERVAL_MS,
  readBootId,
  type BootClock,
  type ClockMark,
} from '../budget/budget-clock.js';
import { parseRecordJson, recordJson } from '../json-bytes.js';

/** The `meta` key the mark is kept under. */
export const CLOCK_MARK_KEY = 'clock';

/** The boot-time clock and boot id a store reads (tests give their own). */
export interface StoreBootOptions {
  /** @default `/proc/uptime` where it exists */
  clock?: BootClock;
  /** This boot's id; undefined: none (only the wall clock spans a restart). @default `/proc/sys/kernel/random/boot_id` */
  id?: string | undefined;
}

/**
 * The range a moved time is kept in (epoch ms): from 1970-01-01T00:00:00Z, the earliest a wall
 * clock reads, to 9999-12-31T23:59:59.999Z, the latest task deadline (`MAX_TASK_DEADLINE_MS`) and
 * what a `google.protobuf.Timestamp` holds. A move stops at either end.
 *
 * Why: a step back while down can be larger than the age of what is open. A step ahead the
 * running sidecar saw (a year typed wrong) moves no stored time but the mark follows it; its
 * correction while down is then taken for a step back and moves records made before the mistake
 * as far back — 3,000 years before 1970 for a mistyped millennium. Such a time says nothing a time
 * of 0 does not (both are in the past of any clock reading: a deadline, `notBefore` or expiry
 * there has passed, as it had for the running sidecar), but the Operator API's JSON encoding
 * refuses it (a Timestamp before the year 1): GetTask and ListTasks over the JSON door answered
 * an internal error for as long as the task was kept. The cost: records moved to 0 tie where
 * they were ordered by creation (the task listings then order them by id), and a running attempt's
 * timeout or an MCP task's ttl counts from 1970: it has passed unless the wall clock reads within
 * that timeout or ttl of 1970.
 */
const MIN_MOVED_MS = 0;
const MAX_MOVED_MS = 253_402_300_799_999;

/** SQL for `column` moved by `@ms` within the range above (NULL stays NULL). */
const movedColumn = (column: string): string =>
  `${column} = MIN(MAX(${column} + @ms, ${MIN_MOVED_MS}), ${MAX_MOVED_MS})`;

/**
 * The starts of the attempts whose timeout counts from them (see {@link StoreClock.committing}'s
 * companion {@link StoreClock.moveStarts}).
 */
const SHIFT_RUNNING_STARTS = `
  UPDATE tasks SET ${movedColumn('started_at')}
  WHERE status IN ('SCHEDULED', 'RUNNING') AND started_at IS NOT NULL`;

/** `ms` added to the time `t` (epoch ms), within {@link MIN_MOVED_MS}..{@link MAX_MOVED_MS}. */
export const movedTime = (t: number, ms: number): number =>
  Math.min(Math.max(t + ms, MIN_MOVED_MS), MAX_MOVED_MS);

/** A copy of `record` with its numeric `fields` moved by `ms` (see {@link movedTime}). */
export function movedRecord(
  record: Readonly<Record<string, unknown>>,
  fields: readonly string[],
  ms: number,
): Record<string, unknown> {
  const moved: Record<string, unknown> = { ...record };
  for (const f of fields) {
    const t = record[f];
    if (typeof t === 'number') moved[f] = movedTime(t, ms);
  }
  return moved;
}

const SHIFT_OPEN_TASKS = `
  UPDATE tasks SET
    ${['created_at', 'deadline', 'not_before', 'started_at'].map(movedColumn).join(',\n    ')}
  WHERE status IN ('PENDING', 'SCHEDULED', 'RUNNING')`;

/**
 * The mark of a state file: reads the previous process's, moves the times of open tasks and
 * pending approvals by the step made while no process ran (see the module comment), and writes
 * marks from then on.
 */
export class StoreClock {
  readonly #clock: BudgetClock;
  readonly #db: Database.Database;
  readonly #write: Database.Statement<[string, string]>;
  readonly #remove: Database.Statement<[string]>;
  readonly #moveStarts: Database.Statement<[{ ms: number }]>;
  /**
   * The wall-clock steps this process saw (ms, summed) that the running attempts' starts were
   * moved by in memory ({@link moveStarts}) but not yet in the file: moved there with the next
   * mark, in its transaction.
   */
  #unwrittenShift = 0;
  /** What of it the mark written by the commit in progress moved (undone if it rolls back). */
  #shiftInCommit = 0;
  /** When (monotonic ms) the next commit writes the mark. */
  #nextMark = 0;
  /** The clock saw the wall clock step since the last mark was written. */
  #stepped = false;
  /**
   * How far the wall clock stepped beyond elapsed time while no process had the file open (ms;
   * negative: back), as found at open and moved out of the stored times; 0 within the tolerance
   * of slewing; undefined when it cannot be told (another boot, no mark, no boot-time clock).
   */
  readonly stepAtOpen: number | undefined;

  /** Opens the clock of `db` (its schema made): moves the stored times, writes a fresh mark. */
  constructor(db: Database.Database, boot: StoreBootOptions = {}) {
    this.#clock = new BudgetClock(
      (step) => this.#steppedBy(step.stepMs),
      boot.clock,
      'id' in boot ? boot.id : readBootId(),
    );
    this.#db = db;
    this.#moveStarts = db.prepare(SHIFT_RUNNING_STARTS);
    this.#write = db.prepare(
      'INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value',
    );
    this.#remove = db.prepare('DELETE FROM meta WHERE key = ?');
    const stored = db
      .prepare<[string], { value: string }>('SELECT value FROM meta WHERE key = ?')
      .get(CLOCK_MARK_KEY)?.value;
    const step = this.#clock.stepSince(parseMark(stored));
    this.stepAtOpen = step === undefined ? undefined : Math.round(step);
    const shift = this.stepAtOpen ?? 0;
    db.transaction(() => {
      if (shift !== 0) shiftOpenTimes(db, shift);
      this.#writeMark();
    })();
  }

  /**
   * Called inside each commit's transaction, before its records are written: writes the mark
   * when the last one is a second old, and at once when the wall clock stepped since it was
   * written (one `meta` row; one `Date.now()` and one `performance.now()` otherwise).
   *
   * Why at once: the records this commit writes may hold times read from the stepped wall clock
   * (a task or approval made just after the step, a deadline given on the new clock). Were they
   * committed beside a mark from before the step — the clock checks itself once a second, the
   * store's tick reads it once a second, so up to two seconds — a crash then would leave a file
   * whose next open takes the step for one made while down and moves those times by it a second
   * time. With the mark of the same commit on the stepped clock, a file holds records and a mark
   * on one wall clock whatever the moment of a crash: a step no commit followed (the process died
   * first) is taken for one made while down and moves the records once, as a step made just
   * after the crash would; a step a commit followed moves nothing at the next open, as the
   * running sidecar moved nothing.
   *
   * Returns the move of stored times the mark written now made (ms; 0: none): the store then
   * serializes again the MCP task records it serialized before the transaction, which the move
   * made in memory (a step found by this very call) did not reach.
   */
  committing(): number {
    this.#shiftInCommit = 0;
    this.#clock.checkNow();
    if (this.#stepped || performance.now() >= this.#nextMark)
      this.#shiftInCommit = this.#writeMark();
    return this.#shiftInCommit;
  }

  /**
   * Set by the store once its tasks are loaded: moves the start (`startedAt`) of every SCHEDULED
   * or RUNNING attempt it holds in memory by `ms`, within the range above. Called synchronously
   * when the clock sees the wall clock step, right before the mark that moves the same starts
   * in the file is written.
   *
   * Why the starts: a running attempt's timeout counts on the monotonic clock
   * while the sidecar runs, but from its stored `startedAt` (wall clock) across a restart. The
   * mark follows a step the running sidecar saw, so the next open moves nothing: a step ahead of
   * two hours would time out at the restart an attempt with an hour's timeout that had run a
   * minute, a step back would let it run two hours past it. Moved with the mark, a start keeps
   * the time that really passed since it (what the monotonic clock counted while running, then
   * what the boot-time clock counts while down). A queued deadline and `notBefore` follow the
   * wall clock while running (`task-timers.ts`), so the mark moves them only for a step no
   * sidecar saw; `createdAt` is history. Pending approvals are not moved here (their expiry
   * follows the wall clock while running too: a decision after it finds them expired).
   *
   * MCP tasks (the gateway's `tool_task` records) are, every one, finished or not, in memory and
   * in the file alike: a task's ttl counts on the monotonic clock while the sidecar runs but
   * from its stored `createdAt` across a restart, as an attempt's timeout from its start. Not
   * moved, a step two hours ahead forgot at the restart every task with an hour's ttl (a result
   * never fetched, a call parked on an approval), a step back kept them two hours past it. Their
   * `updatedAt` moves with `createdAt`, so it is never before it.
   */
  moveStarts: ((ms: number) => void) | undefined = undefined;

  /**
   * Called when a commit's transaction was rolled back: the mark {@link committing} wrote in it,
   * if any, is undone, so the next commit writes one — also when it comes within the second and
   * the clock, which reported a step once, has none to report again.
   */
  rolledBack(): void {
    this.#nextMark = 0;
    // The starts it moved in the file are back as they were, still moved in memory: moved again
    // (not in memory) with the next mark, which ticks write at once too.
    this.#unwrittenShift += this.#shiftInCommit;
    this.#shiftInCommit = 0;
    if (this.#unwrittenShift !== 0) this.#stepped = true;
  }

  /**
   * The clock saw the wall clock step by `stepMs`: the starts and MCP tasks' times move in memory
   * now (see {@link moveStarts}).
   */
  #steppedBy(stepMs: number): void {
    this.#stepped = true;
    const ms = Math.round(stepMs);
    if (ms === 0) return;
    this.#unwrittenShift += ms;
    this.moveStarts?.(ms);
  }

  /**
   * Writes the mark of now (none where it cannot be read: see below), and moves the starts of
   * the running attempts and the MCP tasks' times in the file by the steps not yet moved there,
   * in one transaction (a savepoint inside a commit's): a file never holds a mark past a step
   * beside times from before it, or the other way round. Returns the move it wrote (ms).
   */
  #writeMark(): number {
    // Read first: reading the clock may find a step, which then moves the starts too.
    const mark = this.#clock.mark();
    const shift = this.#unwrittenShift;
    this.#db.transaction(() => {
      if (shift !== 0) {
        this.#moveStarts.run({ ms: shift });
        shiftToolTasks(this.#db, shift);
      }
      // None here (no boot id or boot-time clock): an earlier one no longer pairs the clocks
      // with what this process writes, so none is kept.
      if (mark === undefined) this.#remove.run(CLOCK_MARK_KEY);
      else this.#write.run(CLOCK_MARK_KEY, JSON.stringify(mark));
    })();
    // Only once written (a write that throws leaves a step to be marked by the next one).
    this.#unwrittenShift -= shift;
    this.#stepped = false;
    this.#nextMark = performance.now() + CLOCK_CHECK_INTERVAL_MS;
    return shift;
  }

  /**
   * Called once a second (the store's file check): reads the clock — its own check compares it
   * with the wall clock once a second — and writes the mark at once when the wall clock stepped,
   * so a step this process saw and dealt with is not taken after a crash for one made while
   * down, also when no commit came since. No write otherwise.
   */
  tick(): void {
    this.#clock.now();
    if (this.#stepped) this.#writeMark();
  }

  /** {@link committing}'s write, whatever the time: at close, the last pairing before the gap. */
  flush(): void {
    this.#writeMark();
  }
}

function parseMark(text: string | undefined): ClockMark | undefined {
  if (text === undefined) return undefined;
  try {
    return JSON.parse(text) as ClockMark; // checked by `stepSince`
  } catch {
    return undefined;
  }
}

/**
 * Moves the times of open tasks (created, deadline, `notBefore`, started), pending approvals
 * (created, expires) and the gateway's MCP tasks (created, updated: each lives `ttl` from its
 * creation, finished or not) by `ms`, each kept within {@link MIN_MOVED_MS}..{@link MAX_MOVED_MS}.
 * Finished tasks and decided approvals keep theirs: history.
 */
function shiftOpenTimes(db: Database.Database, ms: number): void {
  db.prepare(SHIFT_OPEN_TASKS).run({ ms });
  shiftRecords(db, 'approval', ms, ['createdAt', 'expiresAt'], (r) => r.status === 'pending');
  shiftToolTasks(db, ms);
}

/**
 * The times of the gateway's MCP tasks, moved at open by a step made while down and by each step
 * the running store sees (see {@link StoreClock.moveStarts}).
 */
export const TOOL_TASK_TIMES: readonly string[] = ['createdAt', 'updatedAt'];

/** Moves every MCP task's {@link TOOL_TASK_TIMES} in the file by `ms`. */
function shiftToolTasks(db: Database.Database, ms: number): void {
  shiftRecords(db, 'tool_task', ms, TOOL_TASK_TIMES, () => true);
}

/** Moves `fields` (those that are numbers) of the JSON records of `kind` that `which` picks. */
function shiftRecords(
  db: Database.Database,
  kind: string,
  ms: number,
  fields: readonly string[],
  which: (record: Record<string, unknown>) => boolean,
): void {
  const rows = db
    .prepare<[string], { id: string; data: string }>('SELECT id, data FROM records WHERE kind = ?')
    .all(kind);
  const update = db.prepare<[string, string, string]>(
    'UPDATE records SET data = ? WHERE kind = ? AND id = ?',
  );
  for (const { id, data } of rows) {
    let parsed: unknown;
    try {
      parsed = parseRecordJson(data, `${kind} record ${id}`);
    } catch {
      continue; // refused with a typed error when the store loads it
    }
    if (parsed === null || typeof parsed !== 'object') continue;
    const r = parsed as Record<string, unknown>;
    if (!which(r)) continue;
    const text = recordJson(movedRecord(r, fields, ms), `${kind} ${id}`);
    if (text !== undefined) update.run(text, kind, id);
  }
}

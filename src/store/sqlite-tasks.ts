/**
 * How the SQLite state store keeps tasks: a table of its own, one column per field of the stored
 * form (`TaskData`, see `scheduler/task-record.ts`), keyed by an integer the store assigns.
 *
 * Why not JSON in the generic `records` table (schema 1): a task is written two or three times in
 * its life (queued, started, finished), and with one JSON text per write every write serialized
 * and stored the whole record again, payload included, under a text key in a WITHOUT ROWID
 * B-tree. Profiled (bench/store `durable-dispatch`, 20k tasks), those writes were most of the
 * commit time. Here a task's first write inserts every column; later writes update only the
 * fields that change after creation ({@link MUTABLE_COLUMNS}) — the payload and the other fields
 * fixed at creation are written once — and JSON is only used for the values that are JSON
 * (payload, result, error, progress), through `recordJson` (a `bigint` stays exact).
 *
 * @module
 */
import type Database from 'better-sqlite3';
import { parseRecordJson, recordJson } from '../json-bytes.js';

/** The `tasks` table (schema 2). `rid` is the store's key; `id` the task id. */
export const TASKS_TABLE = `
  CREATE TABLE IF NOT EXISTS tasks (
    rid INTEGER PRIMARY KEY,
    id TEXT NOT NULL,
    type TEXT,
    payload TEXT,
    priority INTEGER,
    agent_id TEXT,
    pinned INTEGER,
    tenant TEXT,
    deadline REAL,
    timeout_ms REAL,
    max_attempts REAL,
    seq REAL,
    created_at REAL,
    pool_id TEXT,
    status TEXT,
    attempt REAL,
    undelivered REAL,
    assigned_agent_id TEXT,
    started_at REAL,
    finished_at REAL,
    not_before REAL,
    result TEXT,
    error TEXT,
    progress TEXT
  );
`;

/** Columns written at a task's first write only: fixed when the task is created. */
const FIXED_COLUMNS = [
  'id',
  'type',
  'payload',
  'priority',
  'agent_id',
  'pinned',
  'tenant',
  'deadline',
  'timeout_ms',
  'max_attempts',
  'seq',
  'created_at',
] as const;

/** Columns every write of a task updates. */
export const MUTABLE_COLUMNS = [
  'pool_id',
  'status',
  'attempt',
  'undelivered',
  'assigned_agent_id',
  'started_at',
  'finished_at',
  'not_before',
  'result',
  'error',
  'progress',
] as const;

/** `INSERT` of a new task: `rid`, then the fixed columns, then the mutable ones. */
export const INSERT_TASK = `INSERT INTO tasks (rid, ${[...FIXED_COLUMNS, ...MUTABLE_COLUMNS].join(', ')}) VALUES (${Array(
  1 + FIXED_COLUMNS.length + MUTABLE_COLUMNS.length,
)
  .fill('?')
  .join(', ')})`;

/** `UPDATE` of a stored task: the mutable columns, then `rid`. */
export const UPDATE_TASK = `UPDATE tasks SET ${MUTABLE_COLUMNS.map((c) => `${c} = ?`).join(', ')} WHERE rid = ?`;

/** One bound value of a task row. */
export type Cell = string | number | null;

/** A stored task row, as `SELECT * FROM tasks` gives it. */
export interface TaskRow {
  rid: number;
  id: string;
  [column: string]: Cell;
}

/**
 * The fields of `record` by name: a live `TaskRecord` has the stored form's field names (but
 * `taskType` for `type`), so no `toJSON()` copy is made per write; any other object is read as
 * the stored form itself.
 */
function fieldsOf(record: unknown): Record<string, unknown> {
  return (record !== null && typeof record === 'object' ? record : {}) as Record<string, unknown>;
}

/** A string column: the value if it is a string, else null (a record not of this shape). */
const str = (v: unknown): string | null => (typeof v === 'string' ? v : null);
/** A number column: the value if it is a finite number, else null. */
const num = (v: unknown): number | null => (typeof v === 'number' && Number.isFinite(v) ? v : null);
/**
 * A JSON column: its text, null for undefined (`field` names it in an error, built only then).
 * @throws what `recordJson` throws for a value that cannot be serialized (a cycle)
 */
function json(v: unknown, id: string, field: string): string | null {
  if (v === undefined) return null;
  let text: string | undefined;
  try {
    text = JSON.stringify(v);
  } catch {
    // A bigint (printed as its digits) or a cycle (thrown, naming the field): recordJson.
    text = recordJson(v, `task ${id} ${field}`);
  }
  return text ?? null;
}

/** Cells of {@link INSERT_TASK}: `rid`, the fixed columns, the mutable columns. */
export const INSERT_CELLS = 1 + FIXED_COLUMNS.length + MUTABLE_COLUMNS.length;

/** Cells of {@link UPDATE_TASK}: the mutable columns, then `rid`. */
export const UPDATE_CELLS = MUTABLE_COLUMNS.length + 1;

/** {@link INSERT_TASK} of `rows` tasks in one statement: their cells one row after the other. */
export function insertTasks(rows: number): string {
  const row = `(${Array(INSERT_CELLS).fill('?').join(', ')})`;
  return `${INSERT_TASK.slice(0, INSERT_TASK.indexOf(' VALUES '))} VALUES ${Array(rows).fill(row).join(', ')}`;
}

/**
 * {@link UPDATE_TASK} of `rows` tasks in one statement (each row's cells in
 * {@link UPDATE_TASK} order: the mutable columns, then `rid`).
 */
export function updateTasks(rows: number): string {
  const row = `(${Array(UPDATE_CELLS).fill('?').join(', ')})`;
  const set = MUTABLE_COLUMNS.map((c, i) => `${c} = v.column${i + 1}`).join(', ');
  return `UPDATE tasks SET ${set} FROM (VALUES ${Array(rows).fill(row).join(', ')}) AS v WHERE tasks.rid = v.column${UPDATE_CELLS}`;
}

/** `DELETE` of the tasks of `rows` row numbers in one statement. */
export function deleteTasks(rows: number): string {
  return `DELETE FROM tasks WHERE rid IN (${Array(rows).fill('?').join(', ')})`;
}

/**
 * The row of a new task: a placeholder for `rid` (the caller sets cell 0), then the fixed and
 * the mutable cells, in {@link INSERT_TASK} order.
 * @throws for a payload, result, error or progress that cannot be serialized
 */
export function insertCells(id: string, record: unknown): Cell[] {
  return fillInsertCells(new Array<Cell>(INSERT_CELLS).fill(null), 0, id, record);
}

/**
 * {@link insertCells} written into `cells` from index `at` on ({@link INSERT_CELLS} cells), in
 * an array the store reuses from write to write: the commit writes thousands of rows in one
 * synchronous run, and an array per row was the store's largest source of garbage. The first
 * cell (`rid`) is left for the caller.
 * @throws for a payload, result, error or progress that cannot be serialized (the cells are
 *   then partly written)
 */
export function fillInsertCells(cells: Cell[], at: number, id: string, record: unknown): Cell[] {
  const d = fieldsOf(record);
  cells[at + 1] = id;
  cells[at + 2] = str(d.type ?? d.taskType);
  cells[at + 3] = json(d.payload, id, 'payload');
  cells[at + 4] = num(d.priority);
  cells[at + 5] = str(d.agentId);
  cells[at + 6] = typeof d.pinned === 'boolean' ? (d.pinned ? 1 : 0) : null;
  cells[at + 7] = str(d.tenant);
  cells[at + 8] = num(d.deadline);
  cells[at + 9] = num(d.timeoutMs);
  cells[at + 10] = num(d.maxAttempts);
  cells[at + 11] = num(d.seq);
  cells[at + 12] = num(d.createdAt);
  fillMutable(cells, at + 1 + FIXED_COLUMNS.length, id, d);
  return cells;
}

/**
 * The mutable cells of a stored task, in {@link MUTABLE_COLUMNS} order, written into `cells`
 * from index `at` on (reused like {@link fillInsertCells}'); the caller sets the cell after
 * them to `rid`.
 * @throws for a result, error or progress that cannot be serialized
 */
export function fillUpdateCells(cells: Cell[], at: number, id: string, record: unknown): Cell[] {
  fillMutable(cells, at, id, fieldsOf(record));
  return cells;
}

function fillMutable(cells: Cell[], at: number, id: string, d: Record<string, unknown>): void {
  cells[at] = str(d.poolId);
  cells[at + 1] = str(d.status);
  cells[at + 2] = num(d.attempt);
  cells[at + 3] = num(d.undelivered);
  cells[at + 4] = str(d.assignedAgentId);
  cells[at + 5] = num(d.startedAt);
  cells[at + 6] = num(d.finishedAt);
  cells[at + 7] = num(d.notBefore);
  cells[at + 8] = json(d.result, id, 'result');
  cells[at + 9] = json(d.error, id, 'error');
  cells[at + 10] = json(d.progress, id, 'progress');
}

/** Column → `TaskData` field, for the columns read back as they are. */
const PLAIN_FIELDS: ReadonlyArray<readonly [string, string]> = [
  ['type', 'type'],
  ['priority', 'priority'],
  ['agent_id', 'agentId'],
  ['tenant', 'tenant'],
  ['deadline', 'deadline'],
  ['timeout_ms', 'timeoutMs'],
  ['max_attempts', 'maxAttempts'],
  ['seq', 'seq'],
  ['created_at', 'createdAt'],
  ['pool_id', 'poolId'],
  ['status', 'status'],
  ['attempt', 'attempt'],
  ['undelivered', 'undelivered'],
  ['assigned_agent_id', 'assignedAgentId'],
  ['started_at', 'startedAt'],
  ['finished_at', 'finishedAt'],
  ['not_before', 'notBefore'],
];

/** Columns holding JSON text → `TaskData` field. */
const JSON_FIELDS: ReadonlyArray<readonly [string, string]> = [
  ['payload', 'payload'],
  ['result', 'result'],
  ['error', 'error'],
  ['progress', 'progress'],
];

/**
 * The stored form (`TaskData`) of a row: null columns are absent fields.
 * @throws SyntaxError-like errors from the JSON parser for a JSON column that is not JSON
 */
export function taskFromRow(row: TaskRow): Record<string, unknown> {
  const d: Record<string, unknown> = { id: row.id };
  for (const [col, field] of PLAIN_FIELDS) {
    const v = row[col];
    if (v !== null && v !== undefined) d[field] = v;
  }
  if (row.pinned !== null && row.pinned !== undefined) d.pinned = row.pinned === 1;
  for (const [col, field] of JSON_FIELDS) {
    const v = row[col];
    if (typeof v === 'string') d[field] = parseRecordJson(v, `task ${row.id} ${field}`);
  }
  // `undelivered` is stored as 0 when absent from the record; the stored form omits a 0.
  if (d.undelivered === 0) delete d.undelivered;
  return d;
}

/** Rows per multi-row statement of {@link TaskRowWriter}. */
export const TASK_BATCH = 16;

/**
 * Writes task rows inside a commit's transaction, {@link TASK_BATCH} at a time: inserts, updates
 * and deletes are buffered and run as multi-row statements (the last few of a commit one row
 * each). Measured with better-sqlite3 on its own, a statement's fixed cost (the call, building
 * its result object, resetting it) was about a quarter of a one-row insert or update; sixteen
 * rows per statement saved ~0.5 µs per row. Cells are bound as arguments, not as one array:
 * better-sqlite3 reads an array's elements through V8's generic property API, which cost about
 * another quarter of each row write.
 *
 * The rows of one commit are independent (one write per task, row numbers never reused), so
 * their order within the transaction does not matter.
 */
export class TaskRowWriter {
  readonly #insertOne: Database.Statement<unknown[]>;
  readonly #updateOne: Database.Statement<unknown[]>;
  readonly #deleteOne: Database.Statement<[number]>;
  readonly #insertMany: Database.Statement<unknown[]>;
  readonly #updateMany: Database.Statement<unknown[]>;
  readonly #deleteMany: Database.Statement<unknown[]>;
  readonly #inserts = new Array<Cell>(TASK_BATCH * INSERT_CELLS).fill(null);
  readonly #updates = new Array<Cell>(TASK_BATCH * UPDATE_CELLS).fill(null);
  readonly #deletes = new Array<number>(TASK_BATCH).fill(0);
  readonly #oneInsert = new Array<Cell>(INSERT_CELLS).fill(null);
  readonly #oneUpdate = new Array<Cell>(UPDATE_CELLS).fill(null);
  #insertCount = 0;
  #updateCount = 0;
  #deleteCount = 0;

  constructor(db: Database.Database) {
    this.#insertOne = db.prepare(INSERT_TASK);
    this.#updateOne = db.prepare(UPDATE_TASK);
    this.#deleteOne = db.prepare('DELETE FROM tasks WHERE rid = ?');
    this.#insertMany = db.prepare(insertTasks(TASK_BATCH));
    this.#updateMany = db.prepare(updateTasks(TASK_BATCH));
    this.#deleteMany = db.prepare(deleteTasks(TASK_BATCH));
  }

  /** Starts a commit's writes: forgets whatever a failed commit left buffered. */
  begin(): void {
    this.#insertCount = this.#updateCount = this.#deleteCount = 0;
  }

  /**
   * Inserts the task `id` as row `rid`; false (nothing written) when its payload, result, error
   * or progress cannot be serialized.
   * @throws SqliteError from a statement run
   */
  insert(rid: number, id: string, record: unknown): boolean {
    const at = this.#insertCount * INSERT_CELLS;
    try {
      fillInsertCells(this.#inserts, at, id, record);
    } catch {
      return false;
    }
    this.#inserts[at] = rid;
    if (++this.#insertCount === TASK_BATCH) {
      this.#insertMany.run(...this.#inserts);
      this.#insertCount = 0;
    }
    return true;
  }

  /**
   * Updates the changing columns of the task `id` in row `rid`; false like {@link insert}.
   * @throws SqliteError from a statement run
   */
  update(rid: number, id: string, record: unknown): boolean {
    const at = this.#updateCount * UPDATE_CELLS;
    try {
      fillUpdateCells(this.#updates, at, id, record);
    } catch {
      return false;
    }
    this.#updates[at + UPDATE_CELLS - 1] = rid;
    if (++this.#updateCount === TASK_BATCH) {
      this.#updateMany.run(...this.#updates);
      this.#updateCount = 0;
    }
    return true;
  }

  /** Deletes row `rid`. @throws SqliteError from a statement run */
  remove(rid: number): void {
    this.#deletes[this.#deleteCount] = rid;
    if (++this.#deleteCount === TASK_BATCH) {
      this.#deleteMany.run(...this.#deletes);
      this.#deleteCount = 0;
    }
  }

  /** Writes what is buffered (before the transaction commits). @throws SqliteError */
  end(): void {
    const one = this.#oneInsert;
    for (let r = 0; r < this.#insertCount; r++) {
      for (let c = 0; c < INSERT_CELLS; c++) one[c] = this.#inserts[r * INSERT_CELLS + c]!;
      this.#insertOne.run(...one);
    }
    const upd = this.#oneUpdate;
    for (let r = 0; r < this.#updateCount; r++) {
      for (let c = 0; c < UPDATE_CELLS; c++) upd[c] = this.#updates[r * UPDATE_CELLS + c]!;
      this.#updateOne.run(...upd);
    }
    for (let r = 0; r < this.#deleteCount; r++) this.#deleteOne.run(this.#deletes[r]!);
    this.begin();
  }
}

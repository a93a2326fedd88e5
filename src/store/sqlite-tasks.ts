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

/**
 * The `tasks` table (schema 3: schema 2 without `report_mark`). `rid` is the store's key; `id`
 * the task id.
 */
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
    progress TEXT,
    report_mark TEXT
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
  'report_mark',
] as const;

/** Every column of the `tasks` table, as {@link TASKS_TABLE} makes it. */
export const TASK_COLUMNS: readonly string[] = ['rid', ...FIXED_COLUMNS, ...MUTABLE_COLUMNS];

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
  // Absent and 0 read back alike (absent); NULL is not bound (see TaskRowWriter).
  cells[at + 3] = d.undelivered === 0 ? null : num(d.undelivered);
  cells[at + 4] = str(d.assignedAgentId);
  cells[at + 5] = num(d.startedAt);
  cells[at + 6] = num(d.finishedAt);
  cells[at + 7] = num(d.notBefore);
  cells[at + 8] = json(d.result, id, 'result');
  cells[at + 9] = json(d.error, id, 'error');
  cells[at + 10] = json(d.progress, id, 'progress');
  cells[at + 11] = str(d.reportMark);
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
  ['report_mark', 'reportMark'],
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
  // `undelivered` 0 (written by earlier versions when absent) is absent in the stored form.
  if (d.undelivered === 0) delete d.undelivered;
  return d;
}

/** Rows per multi-row statement of {@link TaskRowWriter}. */
export const TASK_BATCH = 16;

/**
 * Most statement shapes {@link TaskRowWriter} keeps per kind of write (insert, update); a row of
 * any other shape is written with every column bound.
 */
export const MAX_TASK_SHAPES = 32;

/** The columns of {@link INSERT_TASK}, in cell order. */
const INSERT_COLUMNS: readonly string[] = ['rid', ...FIXED_COLUMNS, ...MUTABLE_COLUMNS];

/**
 * The statements of one shape of row: which of a write's cells are bound (the others are NULL,
 * written as the literal in the statement), and the rows buffered for its multi-row statement.
 */
interface Shape {
  /** Indexes of the bound cells in the full row ({@link INSERT_TASK} or {@link UPDATE_TASK} order). */
  readonly cells: readonly number[];
  readonly many: Database.Statement<unknown[]>;
  readonly one: Database.Statement<unknown[]>;
  /** {@link TASK_BATCH} rows of bound cells, one after the other. */
  readonly rows: Cell[];
  /** One row of bound cells (for the last rows of a commit). */
  readonly row: Cell[];
  count: number;
}

/** A multi-row `INSERT` binding only the `cells` of {@link INSERT_TASK} (the others are NULL). */
function insertShape(cells: readonly number[], rows: number): string {
  const row = `(${cells.map(() => '?').join(', ')})`;
  return `INSERT INTO tasks (${cells.map((c) => INSERT_COLUMNS[c]).join(', ')}) VALUES ${Array(rows).fill(row).join(', ')}`;
}

/**
 * An update of the mutable columns binding only the `cells` of {@link UPDATE_TASK} (the last,
 * `rid`, always; the mutable columns not among them are set to NULL), for `rows` rows, written
 * as an upsert on `rid`: `INSERT … VALUES … ON CONFLICT(rid) DO UPDATE SET col = excluded.col`.
 * Counted with callgrind (plain better-sqlite3, 16 rows a statement, a task's completion), that
 * cost ~12.5–13k instructions per row against ~15.7k for `UPDATE … FROM (VALUES …)` (which
 * builds the VALUES as a table first, then joins it) and ~16k for one `UPDATE … WHERE rid = ?`
 * a row: SQLite's VDBE seeks each row once and updates it in place. The row always exists (a
 * task's `rid` is only set once its insert committed, and only its delete removes it), so the
 * INSERT half never adds one; `id`, NOT NULL, gets a literal that only such an insert would keep.
 */
function updateShape(cells: readonly number[], rows: number): string {
  const bound = cells.slice(0, -1);
  const set = MUTABLE_COLUMNS.map(
    (c, i) => `${c} = ${bound.includes(i) ? `excluded.${c}` : 'NULL'}`,
  );
  // Bound cells are in column order with `rid` last, so the `?`s in column order match them.
  const columns = [...bound.map((i) => MUTABLE_COLUMNS[i]), 'id', 'rid'];
  const row = `(${[...bound.map(() => '?'), "''", '?'].join(', ')})`;
  return `INSERT INTO tasks (${columns.join(', ')}) VALUES ${Array(rows).fill(row).join(', ')} ON CONFLICT(rid) DO UPDATE SET ${set.join(', ')}`;
}

/** The shapes of one kind of write (insert or update), by the mask of their bound cells. */
class Shapes {
  readonly #db: Database.Database;
  readonly #width: number;
  readonly #sql: (cells: readonly number[], rows: number) => string;
  readonly #byMask = new Map<number, Shape>();
  /** The shapes made so far (at most {@link MAX_TASK_SHAPES}, plus the full one). */
  readonly list: Shape[] = [];
  /** Every cell bound: for a row of a shape beyond {@link MAX_TASK_SHAPES}. */
  readonly #full: Shape;

  constructor(
    db: Database.Database,
    width: number,
    sql: (cells: readonly number[], rows: number) => string,
  ) {
    // A shape is a bit mask of the row's cells in a 32-bit integer (`1 << c`): a wider row
    // would alias cells silently, so a table grown past 31 columns must change the mask first.
    if (width > 31) throw new Error(`task rows of ${width} cells do not fit a 31-bit shape mask`);
    this.#db = db;
    this.#width = width;
    this.#sql = sql;
    this.#full = this.#make(2 ** width - 1);
  }

  #make(mask: number): Shape {
    const cells: number[] = [];
    for (let c = 0; c < this.#width; c++) if ((mask & (1 << c)) !== 0) cells.push(c);
    const shape: Shape = {
      cells,
      many: this.#db.prepare(this.#sql(cells, TASK_BATCH)),
      one: this.#db.prepare(this.#sql(cells, 1)),
      rows: new Array<Cell>(TASK_BATCH * cells.length).fill(null),
      row: new Array<Cell>(cells.length).fill(null),
      count: 0,
    };
    this.#byMask.set(mask, shape);
    this.list.push(shape);
    return shape;
  }

  /**
   * Buffers the non-NULL cells of `full` (a whole row) in the shape of its NULLs, running that
   * shape's multi-row statement when {@link TASK_BATCH} rows are buffered.
   * @throws SqliteError from a statement run
   */
  add(full: readonly Cell[]): void {
    let mask = 0;
    for (let c = 0; c < this.#width; c++) if (full[c] !== null) mask |= 1 << c;
    const shape =
      this.#byMask.get(mask) ??
      (this.list.length <= MAX_TASK_SHAPES ? this.#make(mask) : this.#full);
    const cells = shape.cells;
    const rows = shape.rows;
    let at = shape.count * cells.length;
    for (let i = 0; i < cells.length; i++) rows[at++] = full[cells[i]!]!;
    if (++shape.count === TASK_BATCH) {
      shape.many.run(...rows);
      shape.count = 0;
    }
  }

  /** Runs each buffered row alone. @throws SqliteError */
  end(): void {
    for (const shape of this.list) {
      const width = shape.cells.length;
      for (let r = 0; r < shape.count; r++) {
        for (let c = 0; c < width; c++) shape.row[c] = shape.rows[r * width + c]!;
        shape.one.run(...shape.row);
      }
      shape.count = 0;
    }
  }

  /** Forgets what is buffered. */
  begin(): void {
    for (const shape of this.list) shape.count = 0;
  }
}

/**
 * Writes task rows inside a commit's transaction, {@link TASK_BATCH} at a time: inserts, updates
 * and deletes are buffered and run as multi-row statements (the last few of a commit one row
 * each). Measured with better-sqlite3 on its own, a statement's fixed cost (the call, building
 * its result object, resetting it) was about a quarter of a one-row insert or update; sixteen
 * rows per statement saved ~0.5 µs per row. Cells are bound as arguments, not as one array:
 * better-sqlite3 reads an array's elements through V8's generic property API, which cost about
 * another quarter of each row write.
 *
 * Only the cells that are not NULL are bound: a row goes to the statement of its shape (which
 * columns are NULL — a task without tenant, deadline, result, error … — those written as the
 * literal NULL). Counted with callgrind, binding one value (through V8's API, better-sqlite3 and
 * SQLite) cost ~500 instructions, a NULL as much as a value, and a new task's row has about ten
 * NULL columns. Tasks come in few shapes; past {@link MAX_TASK_SHAPES} per kind of write, a row
 * of a new shape is written with every column bound.
 *
 * The rows of one commit are independent (one write per task, row numbers never reused), so
 * their order within the transaction does not matter.
 */
export class TaskRowWriter {
  readonly #inserts: Shapes;
  readonly #updates: Shapes;
  readonly #deleteOne: Database.Statement<[number]>;
  readonly #deleteMany: Database.Statement<unknown[]>;
  readonly #deleteRange: Database.Statement<[number, number]>;
  readonly #rewriteFixed: Database.Statement<unknown[]>;
  /** The rows deleted by the commit in progress (sorted and written by {@link end}). */
  readonly #deletes: number[] = [];
  readonly #deleteBatch = new Array<number>(TASK_BATCH).fill(0);
  /** One whole row of the write in progress (reused: no array per row). */
  readonly #insertRow = new Array<Cell>(INSERT_CELLS).fill(null);
  readonly #updateRow = new Array<Cell>(UPDATE_CELLS).fill(null);
  #batched = 0;

  constructor(db: Database.Database) {
    this.#inserts = new Shapes(db, INSERT_CELLS, insertShape);
    this.#updates = new Shapes(db, UPDATE_CELLS, updateShape);
    this.#deleteOne = db.prepare('DELETE FROM tasks WHERE rid = ?');
    this.#deleteMany = db.prepare(deleteTasks(TASK_BATCH));
    this.#deleteRange = db.prepare('DELETE FROM tasks WHERE rid BETWEEN ? AND ?');
    this.#rewriteFixed = db.prepare(
      `UPDATE tasks SET ${FIXED_COLUMNS.map((c) => `${c} = ?`).join(', ')} WHERE rid = ?`,
    );
  }

  /** Starts a commit's writes: forgets whatever a failed commit left buffered. */
  begin(): void {
    this.#inserts.begin();
    this.#updates.begin();
    this.#deletes.length = 0;
  }

  /**
   * Inserts the task `id` as row `rid`; false (nothing written) when its payload, result, error
   * or progress cannot be serialized.
   * @throws SqliteError from a statement run
   */
  insert(rid: number, id: string, record: unknown): boolean {
    const row = this.#insertRow;
    try {
      fillInsertCells(row, 0, id, record);
    } catch {
      return false;
    }
    row[0] = rid;
    this.#inserts.add(row);
    return true;
  }

  /**
   * Updates the changing columns of the task `id` in row `rid`; false like {@link insert}.
   * @throws SqliteError from a statement run
   */
  update(rid: number, id: string, record: unknown): boolean {
    const row = this.#updateRow;
    try {
      fillUpdateCells(row, 0, id, record);
    } catch {
      return false;
    }
    row[UPDATE_CELLS - 1] = rid;
    this.#updates.add(row);
    return true;
  }

  /**
   * Writes again, at once, the columns of row `rid` written at the task's first write only (a
   * value of them lowered at load; rare, so one statement, not batched: the row is on disk and
   * no other write of the commit touches these columns); false like {@link insert}.
   * @throws SqliteError from the statement run
   */
  rewriteFixed(rid: number, id: string, record: unknown): boolean {
    const row = this.#insertRow;
    try {
      fillInsertCells(row, 0, id, record);
    } catch {
      return false;
    }
    this.#rewriteFixed.run(...row.slice(1, 1 + FIXED_COLUMNS.length), rid);
    return true;
  }

  /** Deletes row `rid` (with the commit's other deletes, in {@link end}). */
  remove(rid: number): void {
    this.#deletes.push(rid);
  }

  /** Writes what is buffered (before the transaction commits). @throws SqliteError */
  end(): void {
    this.#inserts.end();
    this.#updates.end();
    this.#writeDeletes();
    this.begin();
  }

  /**
   * The commit's deletes, in row order: a run of consecutive rows (retention evicts the tasks
   * that finished first, mostly those that came first) as one range, the other rows
   * {@link TASK_BATCH} to a statement. Counted with callgrind, a row deleted through
   * `rid IN (…)` cost ~5 000 instructions, most of it the statement's per-value work.
   * @throws SqliteError
   */
  #writeDeletes(): void {
    const rids = this.#deletes;
    if (rids.length === 0) return;
    rids.sort((a, b) => a - b);
    this.#batched = 0;
    for (let i = 0; i < rids.length;) {
      const first = rids[i]!;
      let j = i + 1;
      while (j < rids.length && rids[j] === rids[j - 1]! + 1) j++;
      // Rows first..rids[j-1] are all deleted: no row in between stays.
      if (j - i >= 4) this.#deleteRange.run(first, rids[j - 1]!);
      else for (let k = i; k < j; k++) this.#batchDelete(rids[k]!);
      i = j;
    }
    for (let r = 0; r < this.#batched; r++) this.#deleteOne.run(this.#deleteBatch[r]!);
  }

  #batchDelete(rid: number): void {
    this.#deleteBatch[this.#batched] = rid;
    if (++this.#batched === TASK_BATCH) {
      this.#deleteMany.run(...this.#deleteBatch);
      this.#batched = 0;
    }
  }
}

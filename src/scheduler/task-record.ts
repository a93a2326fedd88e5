/**
 * The scheduler's internal, mutable record of a task. The public {@link Task} is a snapshot of it.
 *
 * @module
 */
import { InvalidArgumentError } from '../errors.js';
import type { Priority, Task, TaskAssignment, TaskError } from '../task.js';
import { TaskStatus } from '../task.js';
import type { HeapSlot } from './indexed-heap.js';
import { NOT_IN_HEAP } from './indexed-heap.js';
import type { Flow } from './fair-queue.js';

/**
 * Most attempts a task may have: a protobuf `uint32`, what `TaskInfo.max_attempts` carries. A
 * larger one was queued, then every gRPC `ListTasks`, `GetTask` and `WaitTask` showing the task
 * failed (`INTERNAL: Error serializing response`); one an older build stored is lowered to it
 * when the task is loaded ({@link TaskRecord.fromData}).
 */
export const MAX_TASK_ATTEMPTS = 4_294_967_295;

/** Someone awaiting a task's end. */
export interface Waiter {
  resolve(task: Task): void;
  reject(err: Error): void;
}

/**
 * A task as stored: plain, JSON-serializable data, every field needed to rebuild the task after
 * a restart and nothing of the runtime (queue and timer positions, flows, waiters). A durable
 * store writes this (`JSON.stringify` of a {@link TaskRecord} yields it, through `toJSON`) and
 * gives it back on load; {@link TaskRecord.fromData} rebuilds the record from it.
 */
export interface TaskData {
  id: string;
  type: string;
  payload?: unknown;
  priority: Priority;
  agentId?: string;
  poolId?: string;
  pinned: boolean;
  tenant: string;
  deadline?: number;
  /** Held back until then (a budget in `queue` mode); absent once it may run. */
  notBefore?: number;
  timeoutMs: number;
  maxAttempts: number;
  seq: number;
  createdAt: number;
  status: TaskStatus;
  attempt: number;
  /** Attempts that never reached their agent (not counted against `maxAttempts`); absent: 0. */
  undelivered?: number;
  assignedAgentId?: string;
  startedAt?: number;
  finishedAt?: number;
  result?: unknown;
  error?: TaskError;
  progress?: unknown;
  /** See {@link TaskRecord.reportMark}. */
  reportMark?: string;
}

/** Mutable task state. Fields are public for speed; only the scheduler writes them. */
export class TaskRecord {
  status: TaskStatus = TaskStatus.PENDING;
  attempt = 0;
  /**
   * Attempts handed to a claim whose call ended before the task reached the agent: their
   * numbers stay used (a late report naming one is stale) but they do not count against
   * `maxAttempts` — see {@link TaskRecord.attemptsLeft}.
   */
  undelivered = 0;
  assignedAgentId: string | undefined = undefined;
  startedAt: number | undefined = undefined;
  finishedAt: number | undefined = undefined;
  result: unknown = undefined;
  error: TaskError | undefined = undefined;
  progress: unknown = undefined;
  /**
   * What the executor running the task wrote with its last progress (see
   * `ExecutorSink.progress`), kept with the task so that it outlives a restart on a durable
   * store: the `nats` executor's `<attempt>:<counter>:<take>` of the last report it accepted,
   * by which a replayed earlier report heard first after a restart is told from a later one.
   * Not part of the public {@link Task}.
   */
  reportMark: string | undefined = undefined;
  /** Position in its queue flow: heap index, or absolute FIFO slot when `inFifo`. */
  qIndex = NOT_IN_HEAP;
  /** Whether its flow keeps it in the FIFO (no deadline, never run) or the heap. */
  inFifo = false;
  /** Position in the timer heap. */
  tIndex = NOT_IN_HEAP;
  /** Position in its agent's running tasks (`RunningTasks`), or -1. */
  rIndex = -1;
  /** When the timer heap fires for it: the deadline while queued, the timeout while running. */
  timerAt = Number.POSITIVE_INFINITY;
  /** The flow it is queued in, while PENDING. */
  flow: Flow | undefined = undefined;
  /**
   * The first unbounded waiter for its end (kept inline: the common case). Only its resolve
   * function is kept — an error is delivered as a rejected promise it resolves with — so the
   * reject function dies young instead of living as long as the task.
   */
  resolve: ((task: Task | PromiseLike<Task>) => void) | undefined = undefined;
  /** Further waiters, and waiters with a timeout. */
  waiters: Waiter[] | undefined = undefined;
  /** Held back from its queue until then (epoch ms). */
  notBefore: number | undefined = undefined;

  constructor(
    readonly id: string,
    readonly taskType: string,
    readonly payload: unknown,
    readonly priority: Priority,
    /** The agent it was addressed to, if any. */
    readonly agentId: string | undefined,
    /** The pool it belongs to: scheduled to it, or inherited from its agent. */
    public poolId: string | undefined,
    /** Fail instead of moving to the pool when its agent is lost. */
    readonly pinned: boolean,
    readonly tenant: string,
    readonly deadline: number | undefined,
    readonly timeoutMs: number,
    readonly maxAttempts: number,
    /** Global arrival order: FIFO among equals. */
    readonly seq: number,
    readonly createdAt: number,
  ) {}

  /**
   * Makes this record, which nothing refers to any more (its task was evicted from the
   * scheduler's store), the record of a new task: the same state as `new TaskRecord(...)` with
   * these arguments, without allocating one. A record kept for a queued task lives through many
   * young-generation collections, each copying it; reusing one that is already in the old
   * generation skips that.
   */
  reuse(
    id: string,
    taskType: string,
    payload: unknown,
    priority: Priority,
    agentId: string | undefined,
    poolId: string | undefined,
    pinned: boolean,
    tenant: string,
    deadline: number | undefined,
    timeoutMs: number,
    maxAttempts: number,
    seq: number,
    createdAt: number,
  ): this {
    const w = this as { -readonly [K in keyof TaskRecord]: TaskRecord[K] };
    w.status = TaskStatus.PENDING;
    w.attempt = 0;
    w.undelivered = 0;
    w.assignedAgentId = undefined;
    w.startedAt = undefined;
    w.finishedAt = undefined;
    w.result = undefined;
    w.error = undefined;
    w.progress = undefined;
    w.reportMark = undefined;
    w.qIndex = NOT_IN_HEAP;
    w.inFifo = false;
    w.tIndex = NOT_IN_HEAP;
    w.rIndex = -1;
    w.timerAt = Number.POSITIVE_INFINITY;
    w.flow = undefined;
    w.resolve = undefined;
    w.waiters = undefined;
    w.notBefore = undefined;
    w.id = id;
    w.taskType = taskType;
    w.payload = payload;
    w.priority = priority;
    w.agentId = agentId;
    w.poolId = poolId;
    w.pinned = pinned;
    w.tenant = tenant;
    w.deadline = deadline;
    w.timeoutMs = timeoutMs;
    w.maxAttempts = maxAttempts;
    w.seq = seq;
    w.createdAt = createdAt;
    return this;
  }

  /**
   * The record rebuilt from its stored form, with no runtime state (not queued, no timer).
   * @throws InvalidArgumentError naming the task and the field when `data` is not a task record.
   */
  static fromData(data: unknown): TaskRecord {
    const d = data as Partial<TaskData> | null;
    const id = d !== null && typeof d === 'object' && typeof d.id === 'string' ? d.id : undefined;
    const bad = (field: string, what: string): never => {
      throw new InvalidArgumentError(
        `stored task ${id === undefined ? '(no id)' : JSON.stringify(id)}`,
        `is not a task record: ${field} must be ${what}`,
      );
    };
    if (id === undefined) return bad('id', 'a string');
    const str = (v: unknown, field: string, optional: boolean): string | undefined =>
      (optional && v === undefined) || typeof v === 'string' ? v : bad(field, 'a string');
    const num = (v: unknown, field: string, optional: boolean): number | undefined =>
      (optional && v === undefined) || (typeof v === 'number' && Number.isFinite(v))
        ? v
        : bad(field, 'a finite number');
    /** A count: an integer from `min` (attempts, deliveries; a file edited by hand has -5). */
    const count = (
      v: unknown,
      field: string,
      min: number,
      optional: boolean,
    ): number | undefined =>
      (optional && v === undefined) || (Number.isSafeInteger(v) && (v as number) >= min)
        ? (v as number | undefined)
        : bad(field, min === 0 ? 'a non-negative integer' : 'a positive integer');
    const rec = d!;
    if (rec.priority !== 0 && rec.priority !== 1 && rec.priority !== 2 && rec.priority !== 3)
      bad('priority', '0-3');
    if (typeof rec.pinned !== 'boolean') bad('pinned', 'a boolean');
    if (!Object.values(TaskStatus).includes(rec.status as TaskStatus))
      bad('status', 'a task status');
    const t = new TaskRecord(
      id,
      str(rec.type, 'type', false)!,
      rec.payload,
      rec.priority!,
      str(rec.agentId, 'agentId', true),
      str(rec.poolId, 'poolId', true),
      rec.pinned!,
      str(rec.tenant, 'tenant', false)!,
      num(rec.deadline, 'deadline', true),
      num(rec.timeoutMs, 'timeoutMs', false)! > 0 ? rec.timeoutMs! : bad('timeoutMs', 'positive'),
      // An older build queued any safe integer: lowered to what every door can show (a task
      // cannot use up 4,294,967,295 attempts anyway); `recoverTasks` warns of it.
      Math.min(count(rec.maxAttempts, 'maxAttempts', 1, false)!, MAX_TASK_ATTEMPTS),
      num(rec.seq, 'seq', false)!,
      num(rec.createdAt, 'createdAt', false)!,
    );
    t.status = rec.status!;
    t.attempt = count(rec.attempt, 'attempt', 0, false)!;
    t.undelivered = count(rec.undelivered, 'undelivered', 0, true) ?? 0;
    t.assignedAgentId = str(rec.assignedAgentId, 'assignedAgentId', true);
    t.startedAt = num(rec.startedAt, 'startedAt', true);
    t.finishedAt = num(rec.finishedAt, 'finishedAt', true);
    t.notBefore = num(rec.notBefore, 'notBefore', true);
    t.result = rec.result;
    if (rec.error !== undefined) {
      const e = rec.error as Partial<TaskError> | null;
      if (e === null || typeof e !== 'object' || typeof e.code !== 'string')
        bad('error', 'an object with a code');
      t.error = rec.error;
    }
    t.progress = rec.progress;
    t.reportMark = str(rec.reportMark, 'reportMark', true);
    return t;
  }

  /** The stored form ({@link TaskData}); what `JSON.stringify` of the record writes. */
  toJSON(): TaskData {
    return {
      id: this.id,
      type: this.taskType,
      payload: this.payload,
      priority: this.priority,
      agentId: this.agentId,
      poolId: this.poolId,
      pinned: this.pinned,
      tenant: this.tenant,
      deadline: this.deadline,
      notBefore: this.notBefore,
      timeoutMs: this.timeoutMs,
      maxAttempts: this.maxAttempts,
      seq: this.seq,
      createdAt: this.createdAt,
      status: this.status,
      attempt: this.attempt,
      ...(this.undelivered === 0 ? {} : { undelivered: this.undelivered }),
      assignedAgentId: this.assignedAgentId,
      startedAt: this.startedAt,
      finishedAt: this.finishedAt,
      result: this.result,
      error: this.error,
      progress: this.progress,
      reportMark: this.reportMark,
    };
  }

  /** Whether another attempt may start: attempts that reached an agent are below `maxAttempts`. */
  attemptsLeft(): boolean {
    return this.attempt - this.undelivered < this.maxAttempts;
  }

  /** A frozen point-in-time view. */
  snapshot(): Task {
    return {
      id: this.id,
      taskType: this.taskType,
      payload: this.payload,
      priority: this.priority,
      status: this.status,
      agentId: this.agentId,
      poolId: this.poolId,
      assignedAgentId: this.assignedAgentId,
      tenant: this.tenant,
      deadline: this.deadline,
      timeoutSeconds: this.timeoutMs / 1000,
      attempt: this.attempt,
      maxAttempts: this.maxAttempts,
      createdAt: this.createdAt,
      startedAt: this.startedAt,
      finishedAt: this.finishedAt,
      result: this.result,
      error: this.error,
      progress: this.progress,
    };
  }

  /** What an executor or a claiming agent receives. */
  assignment(): TaskAssignment {
    return {
      taskId: this.id,
      attempt: this.attempt,
      agentId: this.assignedAgentId!,
      taskType: this.taskType,
      payload: this.payload,
      deadline: this.deadline,
      timeoutSeconds: this.timeoutMs / 1000,
    };
  }
}

/** The time {@link clockMs} gave last, in the heap number every caller in its millisecond shares. */
let lastMs = Number.NaN;

/**
 * `Date.now()` for the record's time fields (`createdAt`, `startedAt`, `finishedAt`): the same
 * value, but one heap number per millisecond instead of one per call. Those fields hold their
 * number boxed, and each box lives as long as its record: at 100k tasks in flight, 16 B each
 * that the young-generation collector copies and promotes, where tasks made in one millisecond
 * (hundreds, at full rate) now share one.
 */
export function clockMs(): number {
  const now = Date.now();
  if (now !== lastMs) lastMs = now;
  return lastMs;
}

/** Queue order: priority, then earliest deadline, then arrival. */
export function runsBefore(a: TaskRecord, b: TaskRecord): boolean {
  if (a.priority !== b.priority) return a.priority < b.priority;
  const da = a.deadline ?? Number.POSITIVE_INFINITY;
  const db = b.deadline ?? Number.POSITIVE_INFINITY;
  if (da !== db) return da < db;
  return a.seq < b.seq;
}

export const QUEUE_SLOT: HeapSlot<TaskRecord> = {
  get: (t) => t.qIndex,
  set: (t, i) => {
    t.qIndex = i;
  },
};

export const TIMER_SLOT: HeapSlot<TaskRecord> = {
  get: (t) => t.tIndex,
  set: (t, i) => {
    t.tIndex = i;
  },
};

// V8 gives each field of the snapshot's object literal the representation of the first values
// stored in it. Were the first snapshot that of a finished task, `startedAt` and `finishedAt`
// would become unboxed-number fields, and every later snapshot would copy both numbers into new
// heap boxes (32 B per snapshot; the record already holds them boxed). One snapshot of an
// unstarted task first makes them plain fields, whatever the order of later calls.
new TaskRecord(
  '',
  '',
  undefined,
  0,
  undefined,
  undefined,
  false,
  '',
  undefined,
  0,
  1,
  0,
  0,
).snapshot();

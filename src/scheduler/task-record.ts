/**
 * The scheduler's internal, mutable record of a task. The public {@link Task} is a snapshot of it.
 *
 * @module
 */
import type { Priority, Task, TaskAssignment, TaskError } from '../task.js';
import { TaskStatus } from '../task.js';
import type { HeapSlot } from './indexed-heap.js';
import { NOT_IN_HEAP } from './indexed-heap.js';
import type { Flow } from './fair-queue.js';

/** Someone awaiting a task's end. */
export interface Waiter {
  resolve(task: Task): void;
  reject(err: Error): void;
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
  /** Position in its queue flow: heap index, or absolute FIFO slot when `inFifo`. */
  qIndex = NOT_IN_HEAP;
  /** Whether its flow keeps it in the FIFO (no deadline, never run) or the heap. */
  inFifo = false;
  /** Position in the timer heap. */
  tIndex = NOT_IN_HEAP;
  /** When the timer heap fires for it: the deadline while queued, the timeout while running. */
  timerAt = Number.POSITIVE_INFINITY;
  /** The flow it is queued in, while PENDING. */
  flow: Flow | undefined = undefined;
  /** The first unbounded waiter for its end (kept inline: the common case). */
  resolve: ((task: Task) => void) | undefined = undefined;
  reject: ((err: Error) => void) | undefined = undefined;
  /** Further waiters, and waiters with a timeout. */
  waiters: Waiter[] | undefined = undefined;

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

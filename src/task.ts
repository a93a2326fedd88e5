/**
 * Tasks: priorities, statuses and the public shape of a task.
 *
 * @module
 */

/** Task priority levels; lower runs first (values as in the Fabric Guide). */
export enum Priority {
  /** Emergency tasks. */
  CRITICAL = 0,
  /** Important tasks. */
  HIGH = 1,
  /** Standard tasks. */
  NORMAL = 2,
  /** Background tasks. */
  LOW = 3,
}

/** Where a task is in its life. */
export enum TaskStatus {
  /** Waiting in a queue. */
  PENDING = 'PENDING',
  /**
   * Assigned to an agent and handed to its executor, not yet started: on `local` agents until a
   * worker thread begins its batch. `remote` and `inprocess` tasks start at once (RUNNING).
   */
  SCHEDULED = 'SCHEDULED',
  /** In progress on an agent. */
  RUNNING = 'RUNNING',
  /** Finished successfully. */
  COMPLETED = 'COMPLETED',
  /** Failed during execution (or could not be executed). */
  FAILED = 'FAILED',
  /** Its deadline passed before it started, or it ran past its timeout. */
  TIMEOUT = 'TIMEOUT',
  /** Cancelled by a caller (or by draining). */
  CANCELLED = 'CANCELLED',
}

/** True for the statuses a task never leaves. */
export function isFinished(status: TaskStatus): boolean {
  return (
    status === TaskStatus.COMPLETED ||
    status === TaskStatus.FAILED ||
    status === TaskStatus.TIMEOUT ||
    status === TaskStatus.CANCELLED
  );
}

/** A task's error, as data (it may have crossed a thread or a wire). */
export interface TaskError {
  /** A catalog code (`FABRIC_ERR_*`) or the handler's own error name. */
  code: string;
  message: string;
  /** Extra facts, e.g. the handler error's stack. */
  details?: Record<string, unknown>;
}

/** Options of {@link AgentFabric.schedule} and {@link AgentFabric.scheduleToPool}. */
export interface ScheduleOptions {
  /** @default Priority.NORMAL */
  priority?: Priority;
  /**
   * When the task must have started by: a `Date` or epoch milliseconds. A task still queued at its
   * deadline ends TIMEOUT. Within a priority level, earlier deadlines run first.
   */
  deadline?: Date | number;
  /**
   * Hold the task back until then (a `Date` or epoch ms): it counts as queued but is not started
   * before. Used to park work until a budget window frees.
   */
  notBefore?: Date | number;
  /** Running-time limit; past it the task ends TIMEOUT and its executor is aborted. */
  timeoutSeconds?: number;
  /** Attempts before a task whose agent died or worker crashed fails for good. */
  maxAttempts?: number;
  /**
   * Fairness key: tasks of different tenants at the same priority are served by deficit round
   * robin across everything an agent serves (its own queue and its pool's), so no tenant starves
   * another, whichever queue each used.
   * @default 'default'
   */
  tenant?: string;
  /**
   * For a task addressed to an agent of a pool: fail it if that agent is lost, instead of moving
   * it to the pool. Tasks of agents without a pool are always pinned.
   * @default false
   */
  pinned?: boolean;
}

/** A task request addressed to one agent. */
export interface ScheduleRequest extends ScheduleOptions {
  agentId: string;
  taskType: string;
  payload?: unknown;
}

/** A point-in-time view of a task. */
export interface Task {
  readonly id: string;
  readonly taskType: string;
  readonly payload: unknown;
  readonly priority: Priority;
  readonly status: TaskStatus;
  /** The agent it was pinned to at schedule time, if any. */
  readonly agentId: string | undefined;
  /** The pool it was queued to, if any. */
  readonly poolId: string | undefined;
  /** The agent running (or that last ran) it. */
  readonly assignedAgentId: string | undefined;
  readonly tenant: string;
  /** Epoch ms, or undefined. */
  readonly deadline: number | undefined;
  readonly timeoutSeconds: number;
  /** 1-based number of the current (or last) attempt; 0 while never started. */
  readonly attempt: number;
  readonly maxAttempts: number;
  readonly createdAt: number;
  readonly startedAt: number | undefined;
  readonly finishedAt: number | undefined;
  readonly result: unknown;
  readonly error: TaskError | undefined;
  /** The last progress an agent reported for it. */
  readonly progress: unknown;
}

/** What an agent receives when it claims (or is dispatched) a task. */
export interface TaskAssignment {
  readonly taskId: string;
  /** Fencing token: completions must name the attempt they belong to. */
  readonly attempt: number;
  readonly agentId: string;
  readonly taskType: string;
  readonly payload: unknown;
  readonly deadline: number | undefined;
  readonly timeoutSeconds: number;
}

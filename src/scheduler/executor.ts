/**
 * The executor contract: how the scheduler hands tasks to whatever runs them — worker threads,
 * the main thread, or agents on other machines (which claim over MCP or gRPC, or pull from
 * JetStream: `src/transport/nats/nats-executor.ts`).
 *
 * Tasks cross this boundary as {@link TaskAssignment}s carrying `(taskId, attempt)`. The attempt is
 * a fencing token: a result for an attempt the scheduler has moved past (the task timed out,
 * was cancelled, or was retried on another agent after its first one died) is ignored, so
 * at-least-once delivery never double-completes a task.
 *
 * @module
 */
import type { TaskAssignment, TaskError } from '../task.js';

/** How an executor reports back. Every call is idempotent and ignores stale attempts. */
export interface ExecutorSink {
  /**
   * The task finished with `result`.
   * @returns the error the task failed with instead when `result` cannot be kept (a durable
   *   store refuses it: not JSON, nested too deep), so the executor can tell its worker; nothing
   *   when it was applied or ignored (a stale attempt).
   */
  complete(taskId: string, attempt: number, result: unknown): TaskError | void;
  /**
   * The task failed. With `retry`, the failure is an infrastructure fault (crashed worker, lost
   * connection) and the task is retried while it has attempts left.
   */
  fail(taskId: string, attempt: number, error: TaskError, options?: { retry?: boolean }): void;
  /** The executor started the task (only needed when {@link TaskExecutor.acknowledges}). */
  started(taskId: string, attempt: number): void;
  /**
   * Progress reported by the running task. `mark`, when given, is kept with the task in the
   * same write as the progress (`TaskRecord.reportMark`, in the store) and read back by the
   * executor's host after a restart: where the executor was in the attempt's reports.
   */
  progress(taskId: string, attempt: number, progress: unknown, mark?: string): void;
}

/** Something that runs tasks for agents. Registered with the scheduler under its `name`. */
export interface TaskExecutor {
  /** Registry name, used as `AgentConfig.executor`. */
  readonly name: string;
  /**
   * True when tasks stay SCHEDULED until the executor calls `sink.started` (the `local` executor:
   * when a worker thread begins the batch); false when dispatch means the task is running.
   */
  readonly acknowledges: boolean;
  /** True when the fabric heartbeats for this executor's agents while it is open. */
  readonly autoHeartbeat: boolean;
  /**
   * True when its tasks run inside this process (the main thread, worker threads) and end with
   * it. No assignment leaves the process, so an attempt whose start was never committed cannot
   * report later: a durable store may then commit the start of an attempt with its next commit
   * (at the latest at the end of the event-loop iteration) instead of before the executor hears
   * of it — a task that starts and ends in one turn is written once. Leave it unset for agents
   * elsewhere: their start (the attempt, the fencing token) is committed before the assignment
   * can leave.
   */
  readonly inProcess?: boolean;
  /**
   * True when its attempts outlive this process: they are held by workers elsewhere through a
   * queue that keeps them, and reports on them are still accepted after a restart on the same
   * durable store (the `nats` executor, whose lease key is kept in the store). A RUNNING or
   * SCHEDULED attempt restored from the store then goes on instead of being retried: a worker
   * may have begun a SCHEDULED one before its start was committed. A restored SCHEDULED attempt
   * is dispatched again, the same attempt, since the process may have stopped before it left:
   * such an executor must not deliver an attempt twice.
   */
  readonly resumable?: boolean;
  /** Called once, when the scheduler adopts the executor. */
  bind(sink: ExecutorSink): void;
  /**
   * How many more tasks the executor accepts for `agentId` right now. The scheduler also applies
   * `maxConcurrentTasksPerAgent`; return `Infinity` to leave the limit to it.
   */
  capacity(agentId: string): number;
  /**
   * Starts a batch of tasks. Must not throw; failures are reported through the sink. The array
   * is the executor's from then on (the scheduler hands over a new one each time and never
   * touches it again), so it may be kept instead of copied.
   */
  dispatch(batch: readonly TaskAssignment[]): void;
  /**
   * Stops a task (timeout, cancel, agent lost). Best effort; the scheduler has already moved on.
   * `agentId` is the agent the attempt ran on.
   */
  abort(taskId: string, attempt: number, reason: TaskError, agentId: string): void;
  /** An agent using this executor was added or removed. */
  attachAgent?(agentId: string): void;
  detachAgent?(agentId: string): void;
  /** Releases threads, sockets and timers. */
  close(): Promise<void>;
}

/** Context given to a task handler. */
export interface TaskHandlerContext {
  readonly taskId: string;
  readonly attempt: number;
  readonly agentId: string;
  readonly taskType: string;
  /** Aborted when the task times out, is cancelled, or its agent is lost. */
  readonly signal: AbortSignal;
}

/**
 * The {@link TaskHandlerContext} executors give handlers. Its AbortController is made only when
 * the handler reads `signal`: creating one costs more than dispatching a no-op task.
 */
export class LazyHandlerContext implements TaskHandlerContext {
  #controller: AbortController | undefined;
  #reason: Error | undefined;

  constructor(
    readonly taskId: string,
    readonly attempt: number,
    readonly agentId: string,
    readonly taskType: string,
  ) {}

  get signal(): AbortSignal {
    if (this.#controller === undefined) {
      this.#controller = new AbortController();
      if (this.#reason !== undefined) this.#controller.abort(this.#reason);
    }
    return this.#controller.signal;
  }

  /** Aborts the task's signal (now, or when the handler first reads it). Idempotent. */
  abort(reason: Error = new Error('task aborted')): void {
    if (this.#reason !== undefined) return;
    this.#reason = reason;
    this.#controller?.abort(reason);
  }
}

/** A task handler: receives the payload, returns the result (or throws). */
export type TaskHandler = (payload: unknown, context: TaskHandlerContext) => unknown;

/**
 * Turns anything thrown into a {@link TaskError}. Never throws: what a handler threw is its code
 * (a getter that throws, an object without a string form), and reading it runs where a throw
 * would escape its caller.
 */
export function toTaskError(err: unknown, fallbackCode = 'FABRIC_ERR_TASK_EXECUTION'): TaskError {
  try {
    if (err !== null && typeof err === 'object') {
      const e = err as { code?: unknown; name?: unknown; message?: unknown; stack?: unknown };
      const code =
        typeof e.code === 'string' ? e.code : typeof e.name === 'string' ? e.name : fallbackCode;
      const message = typeof e.message === 'string' ? e.message : String(err);
      return typeof e.stack === 'string'
        ? { code, message, details: { stack: e.stack } }
        : { code, message };
    }
    return { code: fallbackCode, message: String(err) };
  } catch {
    return { code: fallbackCode, message: 'the handler threw a value that cannot be read' };
  }
}

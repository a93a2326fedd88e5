/**
 * Runs task handlers on the main thread. For handlers that only await I/O (calling a model API,
 * an MCP tool) this is the cheapest executor; CPU-bound handlers belong on the `local` (piscina)
 * executor.
 *
 * @module
 */
import { HandlerNotFoundError, InvalidArgumentError } from '../errors.js';
import type { TaskAssignment, TaskError } from '../task.js';
import type { ExecutorSink, TaskExecutor, TaskHandler } from './executor.js';
import { LazyHandlerContext, toTaskError } from './executor.js';

/** Executor name of {@link InProcessExecutor}. */
export const INPROCESS_EXECUTOR = 'inprocess';

/** Runs registered handler functions on the main thread. */
export class InProcessExecutor implements TaskExecutor {
  readonly name: string;
  readonly acknowledges = false;
  readonly autoHeartbeat = true;
  readonly inProcess = true;
  readonly #handlers = new Map<string, TaskHandler>();
  readonly #running = new Map<string, LazyHandlerContext>();
  #sink: ExecutorSink | undefined;

  /** @param options.name - registry name; give each instance its own. @default 'inprocess' */
  constructor(options: { name?: string } = {}) {
    this.name = options.name ?? INPROCESS_EXECUTOR;
  }

  /** Registers the handler of `taskType` (replacing any earlier one). */
  registerHandler(taskType: string, handler: TaskHandler): void {
    if (typeof taskType !== 'string' || taskType.length === 0)
      throw new InvalidArgumentError('taskType', 'must be a non-empty string');
    if (typeof handler !== 'function')
      throw new InvalidArgumentError('handler', 'must be a function');
    this.#handlers.set(taskType, handler);
  }

  bind(sink: ExecutorSink): void {
    this.#sink = sink;
  }

  capacity(): number {
    return Number.POSITIVE_INFINITY;
  }

  dispatch(batch: readonly TaskAssignment[]): void {
    // Settle asynchronously: a handler that returns synchronously must not re-enter the
    // scheduler in the middle of its dispatch pass.
    queueMicrotask(() => {
      for (const a of batch) this.#run(a);
    });
  }

  #run(a: TaskAssignment): void {
    const sink = this.#sink!;
    const handler = this.#handlers.get(a.taskType);
    if (handler === undefined) {
      const err = new HandlerNotFoundError(a.taskType);
      sink.fail(a.taskId, a.attempt, { code: err.code, message: err.message });
      return;
    }
    const ctx = new LazyHandlerContext(a.taskId, a.attempt, a.agentId, a.taskType);
    // Everything the handler hands back is its code: calling it, reading `then` off what it
    // returned (a getter can throw) and calling that `then` (it can throw too) fail this task
    // only — a throw here would escape the microtask that runs the whole batch and end the
    // process, its batch-mates never run.
    let then: unknown;
    let result: unknown;
    try {
      result = handler(a.payload, ctx);
      then =
        result === null || result === undefined ? undefined : (result as { then?: unknown }).then;
    } catch (err) {
      sink.fail(a.taskId, a.attempt, toTaskError(err));
      return;
    }
    if (typeof then !== 'function') {
      sink.complete(a.taskId, a.attempt, result);
      return;
    }
    this.#running.set(a.taskId, ctx);
    let settled = false;
    const done = (): boolean => {
      if (settled) return false; // a thenable that calls back twice (or calls back, then throws)
      settled = true;
      if (this.#running.get(a.taskId) === ctx) this.#running.delete(a.taskId);
      return true;
    };
    try {
      (then as PromiseLike<unknown>['then']).call(
        result,
        (value) => {
          if (done()) sink.complete(a.taskId, a.attempt, value);
        },
        (err: unknown) => {
          if (done()) sink.fail(a.taskId, a.attempt, toTaskError(err));
        },
      );
    } catch (err) {
      if (done()) sink.fail(a.taskId, a.attempt, toTaskError(err));
    }
  }

  abort(taskId: string, attempt: number, reason: TaskError): void {
    const ctx = this.#running.get(taskId);
    if (ctx !== undefined && ctx.attempt === attempt) {
      this.#running.delete(taskId);
      ctx.abort(Object.assign(new Error(reason.message), { code: reason.code }));
    }
  }

  async close(): Promise<void> {
    for (const ctx of this.#running.values()) ctx.abort(new Error('executor closed'));
    this.#running.clear();
  }
}

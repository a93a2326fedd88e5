/**
 * The worker SDK: a remote agent's side of the fabric. A worker connects to a sidecar with its
 * agent credential, heartbeats, runs the work on its hook first ("if there is work on your hook,
 * you run it"), then claims tasks and runs them with its handlers. Every call goes through the
 * sidecar's policy pipeline like any tool call.
 *
 * The wire is a {@link WorkerTransport}: {@link FabricWorker.connect} opens the MCP one (which
 * opens a new session when the sidecar no longer knows its own, as after a restart: the next
 * heartbeat then learns which attempts the restarted sidecar ended); any other
 * goes through {@link FabricWorker.withTransport}. The run loop lives here, so every transport
 * gets the same behaviour:
 * - each task's handler gets its own `AbortSignal`, aborted when the fabric ends the task
 *   (cancelled, timed out: learned from the answers of heartbeats and progress reports), when
 *   the task's own timeout passes on this machine's clock, and when `run()` stops;
 * - a task a claim hands over after `run()` was told to stop is given back (`release`), and so is
 *   a task whose handler gave up because `run()` stopped — nothing stays RUNNING on a worker
 *   that left;
 * - hooks are looked up when `run()` starts and again every `hookCheckSeconds` — unless the
 *   sidecar serves none (hooks are optional), which `run()` learns from its first look;
 * - the sidecar down (restarting) never ends `run()`: a call that found it unreachable
 *   ({@link WorkerTransport.unreachable}) is tried again with backoff (250 ms doubling to 5 s)
 *   for as long as `run()` goes on; an answer of the sidecar (a refusal) still ends it;
 * - one task's outcome never ends `run()`: a failure or result the fabric refuses for what it
 *   carries (over `maxTaskResultBytes`, or a request body over the sidecar's HTTP body limit,
 *   which the transport reports as `FABRIC_ERR_PAYLOAD_TOO_LARGE`) fails the task with the
 *   refusal's code instead, and a result that is not JSON (a cycle, a bigint) with
 *   `FABRIC_ERR_INVALID_ARGUMENT`.
 *
 * @example
 * const worker = await FabricWorker.connect({ url: 'http://127.0.0.1:8765/mcp', credential });
 * const stop = new AbortController();
 * await worker.run({ code_review: async (payload) => ({ verdict: 'approve' }) }, { signal: stop.signal });
 * await worker.close();
 *
 * @module
 */
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import {
  AgentNotFoundError,
  AgentUnavailableError,
  HandlerNotFoundError,
  InvalidArgumentError,
  PayloadTooLargeError,
  TaskNotFoundError,
  TaskResultTooLargeError,
  TaskStateError,
  UnauthenticatedError,
} from '../errors.js';
import { MAX_CLAIM_ACK_SECONDS } from '../scheduler/claim-leases.js';
import { MAX_TIMER_MS } from '../scheduler/task-waiters.js';
import type { TaskAssignment } from '../task.js';
import { checkNumber, checkString } from '../validate.js';
import { McpWorkerTransport } from './mcp-worker-transport.js';
import {
  RemoteFabricError,
  type HeldTask,
  type WorkerFailure,
  type WorkerHook,
  type WorkerReportAnswer,
  type WorkerTransport,
} from './worker-transport.js';

export { RemoteFabricError };
export type { WorkerHook };

/** Default of {@link FabricWorkerOptions.heartbeatSeconds}. */
export const DEFAULT_WORKER_HEARTBEAT_SECONDS = 10;
/** Default of {@link FabricWorkerOptions.claimWaitSeconds}. */
export const DEFAULT_WORKER_CLAIM_WAIT_SECONDS = 20;
/** Default of {@link FabricWorkerOptions.claimAckSeconds}. */
export const DEFAULT_WORKER_CLAIM_ACK_SECONDS = 30;
/** Default of {@link FabricWorkerOptions.hookCheckSeconds}. */
export const DEFAULT_WORKER_HOOK_CHECK_SECONDS = 10;
/**
 * Longest wait of one claim inside `run()`: a claim is never abandoned (its answer could carry a
 * task), so stopping and the next hook check wait for it to return.
 */
export const MAX_RUN_CLAIM_WAIT_SECONDS = 5;
/**
 * First wait of `run()` before it tries again a call that found the sidecar unreachable
 * ({@link WorkerTransport.unreachable}); each failed try doubles it, up to
 * {@link WORKER_RETRY_MAX_MS}, with jitter (half to all of it).
 */
export const WORKER_RETRY_FIRST_MS = 250;
/** Longest wait of `run()` between tries while the sidecar is unreachable. */
export const WORKER_RETRY_MAX_MS = 5000;

/** Options of how a worker runs, whatever its transport. */
export interface FabricWorkerRunOptions {
  /**
   * How often `run` heartbeats. A cancel of a running task reaches its handler with the next
   * heartbeat (or progress report) at the latest.
   * @default 10
   */
  heartbeatSeconds?: number;
  /** How long one claim waits for a task (inside `run`, at most 5 s). @default 20 */
  claimWaitSeconds?: number;
  /** How often `run` looks for work on its hook besides at start. @default 10 */
  hookCheckSeconds?: number;
  /**
   * Delivery lease of the claims `run` makes over a transport whose answers can be lost (MCP;
   * at most 3600; 0 for none): `run` acknowledges each
   * claimed task at once with an empty progress report, before its handler starts; a task whose
   * claim answer was lost on the way (the connection dropped after the sidecar wrote it) goes
   * back to its queue after this long, its attempt not counted, instead of staying RUNNING on
   * this agent until its timeout. A task whose acknowledgement is refused (it went back
   * already) is not run.
   * @default 30
   */
  claimAckSeconds?: number;
}

/** Options of {@link FabricWorker.connect}. */
export interface FabricWorkerOptions extends FabricWorkerRunOptions {
  /** The sidecar's MCP endpoint, e.g. `http://127.0.0.1:8765/mcp`. */
  url: string | URL;
  /** This agent's credential (from `spawn`, or printed by `agent-fabric serve`). */
  credential: string;
}

/** Context of a task or hook handler. */
export interface WorkerTaskContext {
  readonly worker: FabricWorker;
  /**
   * Aborted when this task must stop: the fabric ended it (`reason` a {@link RemoteFabricError}
   * with the fabric's code, e.g. `FABRIC_ERR_CANCELLED`), its timeout passed (`reason` a
   * `TimeoutError` DOMException), or `run()` stopped (`reason` an `AbortError` DOMException).
   * A hook's signal aborts only when `run()` stops.
   */
  readonly signal: AbortSignal;
  /** Reports progress of the task being run. */
  progress(progress: unknown): Promise<void>;
}

/** A handler of one task type. Hooks are run by the handler named by `workItem.taskType`, else `hook`. */
export type WorkerHandler = (payload: unknown, context: WorkerTaskContext) => unknown;

interface ParsedRunOptions {
  readonly heartbeatMs: number;
  readonly claimWait: number;
  readonly hookCheckMs: number;
  readonly claimAck: number;
}

function parseRunOptions(options: FabricWorkerRunOptions): ParsedRunOptions {
  return Object.freeze({
    heartbeatMs:
      checkNumber(
        'options.heartbeatSeconds',
        options.heartbeatSeconds ?? DEFAULT_WORKER_HEARTBEAT_SECONDS,
        'positiveNumber',
      ) * 1000,
    claimWait: checkNumber(
      'options.claimWaitSeconds',
      options.claimWaitSeconds ?? DEFAULT_WORKER_CLAIM_WAIT_SECONDS,
      'nonNegativeNumber',
    ),
    hookCheckMs:
      checkNumber(
        'options.hookCheckSeconds',
        options.hookCheckSeconds ?? DEFAULT_WORKER_HOOK_CHECK_SECONDS,
        'positiveNumber',
      ) * 1000,
    claimAck: claimAckSeconds(options.claimAckSeconds ?? DEFAULT_WORKER_CLAIM_ACK_SECONDS),
  });
}

function claimAckSeconds(value: number): number {
  const seconds = checkNumber('options.claimAckSeconds', value, 'nonNegativeNumber');
  if (seconds > MAX_CLAIM_ACK_SECONDS) {
    throw new InvalidArgumentError(
      'options.claimAckSeconds',
      `must be at most ${MAX_CLAIM_ACK_SECONDS} (got ${seconds})`,
    );
  }
  return seconds;
}

/** A task whose handler runs now, and what aborts it. */
interface Running {
  readonly attempt: number;
  readonly controller: AbortController;
}

/** A connected worker. */
export class FabricWorker {
  readonly #transport: WorkerTransport;
  readonly #options: ParsedRunOptions;
  /** Handlers running now, by task id, so an ended-task notice reaches the right one. */
  readonly #running = new Map<string, Running>();
  /** The signal of the `run()` going on, if any: reports are retried while it has not aborted. */
  #stop: AbortSignal | undefined;

  private constructor(transport: WorkerTransport, options: ParsedRunOptions) {
    this.#transport = transport;
    this.#options = options;
  }

  /**
   * Connects to a sidecar over MCP as the agent the credential belongs to.
   * @throws the sidecar's 401 as an error when the credential is unknown.
   */
  static async connect(options: FabricWorkerOptions): Promise<FabricWorker> {
    const credential = checkString('options.credential', options.credential, 4096);
    const parsed = parseRunOptions(options);
    return new FabricWorker(
      await McpWorkerTransport.connect(new URL(options.url), credential),
      parsed,
    );
  }

  /** A worker over an already open transport (it is closed by {@link close}). */
  static withTransport(
    transport: WorkerTransport,
    options: FabricWorkerRunOptions = {},
  ): FabricWorker {
    return new FabricWorker(transport, parseRunOptions(options));
  }

  /** Records a heartbeat; ended-task notices in the answer abort the handlers they name. */
  async heartbeat(): Promise<WorkerReportAnswer> {
    return this.#noticed(await this.#transport.heartbeat());
  }

  /**
   * The next task of this agent or its pool, or `null` when none arrived within `waitSeconds`.
   * With `ackSeconds` (a delivery lease, none by default) the task goes back to its queue unless
   * the caller acknowledges it in time: a progress report (an empty one will do), a completion or
   * a failure naming its attempt.
   */
  claimTask(
    options: { waitSeconds?: number; ackSeconds?: number } = {},
  ): Promise<TaskAssignment | null> {
    return this.#transport.claim(
      options.waitSeconds ?? this.#options.claimWait,
      options.ackSeconds ?? 0,
    );
  }

  completeTask(task: HeldTask, result?: unknown): Promise<unknown> {
    return this.#transport.complete(task, result ?? null);
  }

  failTask(task: HeldTask, error: WorkerFailure): Promise<unknown> {
    return this.#transport.fail(task, error);
  }

  /**
   * Gives back a claimed task this worker will not run: it is queued again and this attempt
   * does not count against `maxAttempts`. False when the task has moved on.
   */
  releaseTask(task: HeldTask): Promise<boolean> {
    return this.#transport.release(task);
  }

  /** Reports progress; ended-task notices in the answer abort the handlers they name. */
  async reportProgress(task: HeldTask, progress: unknown): Promise<WorkerReportAnswer> {
    return this.#noticed(await this.#transport.reportProgress(task, progress));
  }

  /** Records model usage spent outside tool calls against this agent's budget. */
  recordUsage(usage: { tokens: number; cost: number }): Promise<unknown> {
    return this.#transport.recordUsage(usage);
  }

  /** The work on this agent's hook (ACTIVE, else oldest PENDING), or `null`. */
  hookFor(): Promise<WorkerHook | null> {
    return this.#transport.hookFor();
  }

  activateHook(hookId: string): Promise<unknown> {
    return this.#transport.activateHook(hookId);
  }

  hookProgress(hookId: string, note?: string): Promise<unknown> {
    return this.#transport.hookProgress(hookId, note);
  }

  completeHook(hookId: string, result?: unknown): Promise<unknown> {
    return this.#transport.completeHook(hookId, result ?? null);
  }

  failHook(hookId: string, error: WorkerFailure): Promise<unknown> {
    return this.#transport.failHook(hookId, error);
  }

  /**
   * Calls an upstream tool through the gateway (policy and budget apply).
   * @throws InvalidArgumentError when the transport does not reach the gateway.
   */
  callTool(name: string, args: Record<string, unknown> = {}): Promise<CallToolResult> {
    if (this.#transport.callTool === undefined) {
      return Promise.reject(
        new InvalidArgumentError('callTool', 'this worker transport does not carry tool calls'),
      );
    }
    return this.#transport.callTool(name, args);
  }

  /**
   * Runs until `signal` aborts: heartbeats every `heartbeatSeconds`; runs the work on its hook,
   * if any, with the handler named by the work item's `taskType` (else `hook`) — at start and
   * every `hookCheckSeconds`; between hook checks claims tasks one at a time and runs them with
   * `handlers[taskType]`. A handler's error fails the task (or hook) with the error's code and
   * message (its name when the message is empty); a result the fabric refuses (over
   * `maxTaskResultBytes`, or a request body over the sidecar's HTTP body limit) fails the task
   * with the refusal's code (`FABRIC_ERR_TASK_RESULT_TOO_LARGE`, `FABRIC_ERR_PAYLOAD_TOO_LARGE`),
   * a result that is not JSON with `FABRIC_ERR_INVALID_ARGUMENT`;
   * so does an error message refused the same way; a task type without a handler fails with
   * `FABRIC_ERR_HANDLER_NOT_FOUND`. A sidecar that serves no hooks is not asked again. Over a
   * transport that {@link WorkerTransport.leasesClaims}, each claim takes a delivery lease
   * (`claimAckSeconds`) and the task is acknowledged before its handler starts.
   *
   * When `signal` aborts, the running handler's signal aborts too; if the handler then throws,
   * the task is given back (queued again, the attempt not counted) — if it returns, its result
   * completes the task. A task a claim hands over after `signal` aborted is given back unrun.
   * A hook whose handler throws after `signal` aborted stays ACTIVE on this agent, to be picked
   * up on its next `run()`. Resolves once the claim in flight (at most 5 s) and the running
   * handler returned.
   */
  async run(
    handlers: Readonly<Record<string, WorkerHandler>>,
    options: { signal: AbortSignal },
  ): Promise<void> {
    const { signal } = options;
    if (!(signal instanceof AbortSignal))
      throw new InvalidArgumentError('options.signal', 'must be an AbortSignal');
    this.#stop = signal;
    const retry = new Backoff();
    // The sidecar may be down (restarting) when the run starts, too.
    for (;;) {
      try {
        await this.heartbeat();
        break;
      } catch (err) {
        if (!this.#unreachable(err) || signal.aborted) throw err;
        await retry.pause(signal);
      }
    }
    retry.reset();
    const beat = setInterval(
      () => void this.heartbeat().catch((err: unknown) => this.#agentGone(err)),
      this.#options.heartbeatMs,
    );
    const claimWait = Math.min(this.#options.claimWait, MAX_RUN_CLAIM_WAIT_SECONDS);
    try {
      let nextHookCheck = 0;
      // False once the sidecar said it serves no hooks (they are optional): not asked again.
      let hooks = true;
      while (!signal.aborted) {
        try {
          // Elapsed time: a wall clock set back must not pause hook checks for as long.
          if (hooks && performance.now() >= nextHookCheck) {
            hooks = await this.#runHooks(handlers, signal);
            nextHookCheck = performance.now() + this.#options.hookCheckMs;
            retry.reset();
            continue;
          }
          const ackSeconds = this.#transport.leasesClaims === true ? this.#options.claimAck : 0;
          const task = await this.claimTask({ waitSeconds: claimWait, ackSeconds });
          retry.reset();
          if (task === null) continue;
          if (signal.aborted) {
            // Stopped while the claim was out: the handler never started, so the task goes back.
            await this.releaseTask(task).catch(() => undefined);
            break;
          }
          if (ackSeconds > 0 && !(await this.#acknowledge(task))) continue;
          await this.#runTask(task, handlers, signal);
        } catch (err) {
          // The sidecar is down (restarting, the network away): wait and try again, as long as
          // the run goes on. What the fabric answered (a refusal) still ends the run.
          if (!this.#unreachable(err) || signal.aborted) throw err;
          await retry.pause(signal);
        }
      }
    } finally {
      clearInterval(beat);
      this.#stop = undefined;
    }
  }

  /**
   * Acknowledges a task claimed with a delivery lease (an empty progress report). False when the
   * fabric refused it — the lease ran out and the task went back, or it ended — so the task is
   * not run here; other errors are thrown, as a failed claim's are.
   */
  async #acknowledge(task: TaskAssignment): Promise<boolean> {
    try {
      await this.reportProgress(task, undefined);
      return true;
    } catch (err) {
      if (err instanceof RemoteFabricError) return false;
      throw err;
    }
  }

  async #runTask(
    task: TaskAssignment,
    handlers: Readonly<Record<string, WorkerHandler>>,
    stop: AbortSignal,
  ): Promise<void> {
    const handler = handlerFor(handlers, task.taskType);
    if (handler === undefined) {
      const err = new HandlerNotFoundError(task.taskType);
      await this.#fail(task, { code: err.code, message: err.message });
      return;
    }
    const controller = new AbortController();
    const running: Running = { attempt: task.attempt, controller };
    this.#running.set(task.taskId, running);
    const onStop = () => controller.abort(new DOMException('the worker is stopping', 'AbortError'));
    stop.addEventListener('abort', onStop, { once: true });
    // The fabric times the task out on its own clock and tells us; this stops the handler on
    // time even when that notice is late (the next heartbeat).
    const timeoutMs = task.timeoutSeconds * 1000;
    const timer =
      timeoutMs > 0 && timeoutMs <= MAX_TIMER_MS
        ? setTimeout(
            () =>
              controller.abort(
                new DOMException(`task ${task.taskId} ran past its timeout`, 'TimeoutError'),
              ),
            timeoutMs,
          )
        : undefined;
    const ctx: WorkerTaskContext = {
      worker: this,
      signal: controller.signal,
      progress: async (p) => void (await this.reportProgress(task, p)),
    };
    /** Detaches the task from what could abort it once its handler returned. */
    const settled = () => {
      clearTimeout(timer);
      stop.removeEventListener('abort', onStop);
      if (this.#running.get(task.taskId) === running) this.#running.delete(task.taskId);
    };
    let result: unknown;
    try {
      result = await handler(task.payload, ctx);
    } catch (err) {
      const reason: unknown = controller.signal.reason;
      const aborted = controller.signal.aborted;
      settled();
      if (!aborted) await this.#fail(task, errorInfo(err));
      else if (reason instanceof DOMException && reason.name === 'AbortError')
        await this.#report(() => this.releaseTask(task));
      // Ended by the fabric, or past its timeout (the fabric ends it): nothing to report.
      return;
    }
    // The handler is done: from here on nothing aborts it (a stop or notice during the report).
    settled();
    try {
      await this.#report(() => this.completeTask(task, result));
    } catch (err) {
      // The fabric refused the result itself (over maxTaskResultBytes, not storable; or the
      // request body over the sidecar's HTTP body limit, FABRIC_ERR_PAYLOAD_TOO_LARGE): the
      // task fails with the refusal's code instead of staying RUNNING here until its timeout.
      if (outcomeRefused(err)) {
        await this.#fail(task, { code: err.code, message: err.message || err.code });
        return;
      }
      // A result no transport can send (a cycle, a bigint: JSON.stringify threw before the call
      // left) fails the task the same way. Asked only after a failed report: no second
      // serialization of every result.
      const notJson = jsonError(result);
      if (notJson === undefined) throw err;
      await this.#fail(task, {
        code: InvalidArgumentError.code,
        message: `the handler's result is not JSON and cannot be sent: ${notJson}`,
      });
    }
  }

  /**
   * Fails a task this worker held with `failure`. A failure the fabric refuses as such (an
   * empty or oversized message, a malformed code) is reported again as the refusal's code
   * alone; refused again, it is dropped (the task ends with its timeout) — one task's outcome
   * never ends `run()`.
   */
  async #fail(task: HeldTask, failure: WorkerFailure): Promise<void> {
    try {
      await this.#report(() => this.failTask(task, failure));
    } catch (err) {
      if (!outcomeRefused(err)) throw err;
      await this.#report(() => this.failTask(task, { code: err.code, message: err.code })).catch(
        (again: unknown) => {
          if (!outcomeRefused(again)) throw again;
        },
      );
    }
  }

  /**
   * A report about a task this worker held. The task may have moved on meanwhile (cancelled,
   * timed out): the fabric's refusal of a stale report is expected and dropped; any other error
   * (the sidecar unreachable) is thrown — out of `run()` unless the caller handles it.
   */
  async #report(call: () => Promise<unknown>): Promise<void> {
    const retry = new Backoff();
    for (;;) {
      try {
        await call();
        return;
      } catch (err) {
        const code = (err as { code?: unknown } | null)?.code;
        if (code === TaskStateError.code || code === TaskNotFoundError.code) return;
        // The sidecar unreachable while the run goes on: the report is sent again once it
        // answers (a restarted one refuses it as stale if it retried the attempt meanwhile).
        const stop = this.#stop;
        if (stop === undefined || stop.aborted || !this.#unreachable(err)) throw err;
        await retry.pause(stop);
      }
    }
  }

  /** True when `err` says the sidecar could not be reached (see {@link WorkerTransport.unreachable}). */
  #unreachable(err: unknown): boolean {
    return this.#transport.unreachable?.(err) === true;
  }

  /**
   * A heartbeat refused because this worker's agent is gone (terminated: its credential revoked,
   * or its record forgotten): the fabric ended every attempt the agent held — cancelled them or
   * retried them on other agents — and no ended-task notice can reach an agent that no longer
   * exists, so the running handlers are aborted here (`run()` then ends with the refusal of its
   * next call). Other failures (the sidecar unreachable for a moment) change nothing.
   */
  #agentGone(err: unknown): void {
    if (!(err instanceof RemoteFabricError)) return;
    const gone =
      err.code === UnauthenticatedError.code ||
      err.code === AgentNotFoundError.code ||
      (err.code === AgentUnavailableError.code && err.details.status === 'TERMINATED');
    if (!gone) return;
    for (const [taskId, r] of this.#running) {
      r.controller.abort(
        new RemoteFabricError(
          AgentUnavailableError.code,
          'failed_precondition',
          `this worker's agent is gone, and the fabric ended the attempts it held: ${err.message}`,
          { taskId, attempt: r.attempt, cause: err.code },
        ),
      );
    }
  }

  /** Aborts the handlers of the attempts the fabric ended. */
  #noticed(answer: WorkerReportAnswer): WorkerReportAnswer {
    for (const n of answer.endedTasks) {
      const r = this.#running.get(n.taskId);
      // A notice for another attempt (or a task that already finished here) is stale.
      if (r === undefined || r.attempt !== n.attempt) continue;
      r.controller.abort(new RemoteFabricError(n.code, 'failed_precondition', n.message, { ...n }));
    }
    return answer;
  }

  /**
   * Runs the work on this agent's hooks until none is left that this worker can run. False when
   * the sidecar serves no hooks (hooks are optional: its `get_hook` is refused as
   * `FABRIC_ERR_INVALID_ARGUMENT` on the `hooks` field), so there never is hook work.
   */
  async #runHooks(
    handlers: Readonly<Record<string, WorkerHandler>>,
    stop: AbortSignal,
  ): Promise<boolean> {
    const seen = new Set<string>();
    while (!stop.aborted) {
      let hook: WorkerHook | null;
      try {
        hook = await this.hookFor();
      } catch (err) {
        if (hooksNotConfigured(err)) return false;
        throw err;
      }
      // The same hook twice in one pass: its report did not take; look again at the next check.
      if (hook === null || seen.has(hook.hookId)) return true;
      seen.add(hook.hookId);
      const item = hook.workItem as { taskType?: unknown } | null;
      const type =
        item !== null && typeof item === 'object' && typeof item.taskType === 'string'
          ? item.taskType
          : 'hook';
      const handler = handlerFor(handlers, type);
      if (handler === undefined) return true; // not ours to run: leave it for a worker that can
      if (hook.status === 'PENDING') await this.activateHook(hook.hookId);
      const ctx: WorkerTaskContext = {
        worker: this,
        signal: stop,
        progress: async (p) =>
          void (await this.hookProgress(
            hook.hookId,
            typeof p === 'string' ? p : JSON.stringify(p),
          )),
      };
      try {
        await this.completeHook(hook.hookId, await handler(hook.workItem, ctx));
      } catch (err) {
        // Stopped: the hook stays ACTIVE on this agent for its next run().
        if (stop.aborted) return true;
        await this.failHook(hook.hookId, errorInfo(err)).catch(() => undefined);
      }
    }
    return true;
  }

  /** Disconnects. */
  close(): Promise<void> {
    return this.#transport.close();
  }
}

/** Waits between tries of a call that found the sidecar unreachable (see WORKER_RETRY_FIRST_MS). */
class Backoff {
  #next = WORKER_RETRY_FIRST_MS;

  reset(): void {
    this.#next = WORKER_RETRY_FIRST_MS;
  }

  /** Waits the next delay, or until `signal` aborts. */
  pause(signal: AbortSignal): Promise<void> {
    const ms = this.#next * (0.5 + Math.random() / 2);
    this.#next = Math.min(this.#next * 2, WORKER_RETRY_MAX_MS);
    return new Promise((resolve) => {
      if (signal.aborted) return resolve();
      const done = () => {
        clearTimeout(timer);
        signal.removeEventListener('abort', done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      signal.addEventListener('abort', done, { once: true });
    });
  }
}

/**
 * The handler registered for `taskType`: an own property of `handlers` only. The name comes from
 * the task or hook (an agent's `fabric__schedule_task` chooses a task's type), so what every
 * object inherits (`constructor`, `toString`, `valueOf`, `__proto__` …) is no handler: run as one,
 * it completed the task or hook with whatever it returned (`Object(payload)`, `"[object Object]"`).
 */
function handlerFor(
  handlers: Readonly<Record<string, WorkerHandler>>,
  taskType: string,
): WorkerHandler | undefined {
  return Object.hasOwn(handlers, taskType) ? handlers[taskType] : undefined;
}

/** Why `value` cannot be written as JSON (a cycle, a bigint …), or undefined when it can. */
function jsonError(value: unknown): string | undefined {
  try {
    JSON.stringify(value);
    return undefined;
  } catch (err) {
    return err instanceof Error ? err.message : String(err);
  }
}

/**
 * Codes of a refusal of what a report carries (not of the report itself, nor the wire).
 * `FABRIC_ERR_PAYLOAD_TOO_LARGE` is the sidecar's HTTP body limit (a 413, before any tool ran).
 */
const OUTCOME_REFUSALS: ReadonlySet<string> = new Set([
  InvalidArgumentError.code,
  TaskResultTooLargeError.code,
  PayloadTooLargeError.code,
]);

/** True when the fabric refused an outcome for what it carries: reporting another can take. */
function outcomeRefused(err: unknown): err is RemoteFabricError {
  return err instanceof RemoteFabricError && OUTCOME_REFUSALS.has(err.code);
}

/**
 * True for the sidecar's answer to `get_hook` when it serves no hooks: an invalid-argument
 * refusal naming the `hooks` field (the call takes no arguments of its own).
 */
function hooksNotConfigured(err: unknown): boolean {
  return (
    err instanceof RemoteFabricError &&
    err.code === InvalidArgumentError.code &&
    err.details.field === 'hooks'
  );
}

/**
 * The failure a handler's error reports: its string `code` (else `FABRIC_ERR_TASK_EXECUTION`) and
 * message. The fabric needs a message of at least one character: an empty one (`new Error()`)
 * reports the error's name instead. Never throws, whatever was thrown.
 */
function errorInfo(err: unknown): WorkerFailure & { code: string } {
  let code = 'FABRIC_ERR_TASK_EXECUTION';
  let message = '';
  try {
    const e = err as { code?: unknown; message?: unknown; name?: unknown } | null | undefined;
    if (typeof e?.code === 'string' && e.code !== '') code = e.code;
    message = typeof e?.message === 'string' ? e.message : String(err);
    if (message === '' && typeof e?.name === 'string') message = e.name;
  } catch {
    // A getter that throws, a value without a string form: the code alone tells.
  }
  return { code, message: message === '' ? code : message };
}

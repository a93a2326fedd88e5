/**
 * The worker SDK: a remote agent's side of the fabric, over MCP. A worker connects to a sidecar
 * with its agent credential, heartbeats, runs the work on its hook first ("if there is work on
 * your hook, you run it"), then claims tasks and runs them with its handlers. Every call goes
 * through the sidecar's policy pipeline like any tool call.
 *
 * @example
 * const worker = await FabricWorker.connect({ url: 'http://127.0.0.1:8765/mcp', credential });
 * const stop = new AbortController();
 * await worker.run({ code_review: async (payload) => ({ verdict: 'approve' }) }, { signal: stop.signal });
 * await worker.close();
 *
 * @module
 */
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import { FabricError, InvalidArgumentError, type ErrorKind } from '../errors.js';
import { ERROR_META_KEY } from '../gateway/map-error.js';
import type { TaskAssignment } from '../task.js';
import { checkNumber, checkString } from '../validate.js';

/** Options of {@link FabricWorker.connect}. */
export interface FabricWorkerOptions {
  /** The sidecar's MCP endpoint, e.g. `http://127.0.0.1:8765/mcp`. */
  url: string | URL;
  /** This agent's credential (from `spawn`, or printed by `agent-fabric serve`). */
  credential: string;
  /** How often `run` heartbeats. @default 10 */
  heartbeatSeconds?: number;
  /** How long one claim waits for a task. @default 20 */
  claimWaitSeconds?: number;
}

/** A hook as the worker sees it. */
export interface WorkerHook {
  readonly hookId: string;
  readonly status: string;
  readonly workItem: unknown;
  readonly branch: string | null;
  readonly worktreePath: string | null;
  readonly [key: string]: unknown;
}

/** Context of a task or hook handler. */
export interface WorkerTaskContext {
  readonly worker: FabricWorker;
  readonly signal: AbortSignal;
  /** Reports progress of the task being run. */
  progress(progress: unknown): Promise<void>;
}

/** A handler of one task type. Hooks are run by the handler named by `workItem.taskType`, else `hook`. */
export type WorkerHandler = (payload: unknown, context: WorkerTaskContext) => unknown;

/** An error the sidecar returned, with its catalog code. */
export class RemoteFabricError extends FabricError {}

/** A connected worker. */
export class FabricWorker {
  readonly #client: Client;
  readonly #heartbeatMs: number;
  readonly #claimWait: number;

  private constructor(client: Client, heartbeatMs: number, claimWait: number) {
    this.#client = client;
    this.#heartbeatMs = heartbeatMs;
    this.#claimWait = claimWait;
  }

  /**
   * Connects to a sidecar as the agent the credential belongs to.
   * @throws the sidecar's 401 as an error when the credential is unknown.
   */
  static async connect(options: FabricWorkerOptions): Promise<FabricWorker> {
    const credential = checkString('options.credential', options.credential, 4096);
    const heartbeatMs =
      checkNumber('options.heartbeatSeconds', options.heartbeatSeconds ?? 10, 'positiveNumber') *
      1000;
    const claimWait = checkNumber(
      'options.claimWaitSeconds',
      options.claimWaitSeconds ?? 20,
      'nonNegativeNumber',
    );
    const transport = new StreamableHTTPClientTransport(new URL(options.url), {
      requestInit: { headers: { Authorization: `Bearer ${credential}` } },
    });
    const client = new Client({ name: 'agent-fabric-worker', version: '0.1.0' });
    await client.connect(transport);
    return new FabricWorker(client, heartbeatMs, claimWait);
  }

  /** Records a heartbeat. */
  heartbeat(): Promise<unknown> {
    return this.#call('heartbeat', {});
  }

  /** The next task of this agent or its pool, or `null` when none arrived within `waitSeconds`. */
  async claimTask(options: { waitSeconds?: number } = {}): Promise<TaskAssignment | null> {
    return (await this.#call('claim_task', {
      waitSeconds: options.waitSeconds ?? this.#claimWait,
    })) as TaskAssignment | null;
  }

  completeTask(task: TaskAssignment, result?: unknown): Promise<unknown> {
    return this.#call('complete_task', {
      taskId: task.taskId,
      attempt: task.attempt,
      result: result ?? null,
    });
  }

  failTask(task: TaskAssignment, error: { code?: string; message: string }): Promise<unknown> {
    return this.#call('fail_task', { taskId: task.taskId, attempt: task.attempt, ...error });
  }

  reportProgress(task: TaskAssignment, progress: unknown): Promise<unknown> {
    return this.#call('report_progress', { taskId: task.taskId, attempt: task.attempt, progress });
  }

  /** Records model usage spent outside tool calls against this agent's budget. */
  recordUsage(usage: { tokens: number; cost: number }): Promise<unknown> {
    return this.#call('record_usage', usage);
  }

  /** The work on this agent's hook (ACTIVE, else oldest PENDING), or `null`. */
  async hookFor(): Promise<WorkerHook | null> {
    return (await this.#call('get_hook', {})) as WorkerHook | null;
  }

  activateHook(hookId: string): Promise<unknown> {
    return this.#call('activate_hook', { hookId });
  }

  hookProgress(hookId: string, note?: string): Promise<unknown> {
    return this.#call('hook_progress', note === undefined ? { hookId } : { hookId, note });
  }

  completeHook(hookId: string, result?: unknown): Promise<unknown> {
    return this.#call('complete_hook', { hookId, result: result ?? null });
  }

  failHook(hookId: string, error: { code?: string; message: string }): Promise<unknown> {
    return this.#call('fail_hook', { hookId, ...error });
  }

  /** Calls an upstream tool through the gateway (policy and budget apply). */
  callTool(name: string, args: Record<string, unknown> = {}): Promise<CallToolResult> {
    return this.#client.callTool({ name, arguments: args }) as Promise<CallToolResult>;
  }

  /**
   * Runs until `signal` aborts: heartbeats every `heartbeatSeconds`; first runs the work on its
   * hook, if any, with the handler named by the work item's `taskType` (else `hook`); then claims
   * tasks one at a time and runs them with `handlers[taskType]`. A handler's error fails the task
   * (or hook) with the error's code and message; a task type without a handler fails with
   * `FABRIC_ERR_HANDLER_NOT_FOUND`.
   */
  async run(
    handlers: Readonly<Record<string, WorkerHandler>>,
    options: { signal: AbortSignal },
  ): Promise<void> {
    const { signal } = options;
    if (!(signal instanceof AbortSignal))
      throw new InvalidArgumentError('options.signal', 'must be an AbortSignal');
    await this.heartbeat();
    const beat = setInterval(() => void this.heartbeat().catch(() => undefined), this.#heartbeatMs);
    try {
      await this.#runHook(handlers, signal);
      while (!signal.aborted) {
        const task = await this.claimTask({ waitSeconds: Math.min(this.#claimWait, 5) });
        if (task === null || signal.aborted) continue;
        const handler = handlers[task.taskType];
        if (handler === undefined) {
          await this.failTask(task, {
            code: 'FABRIC_ERR_HANDLER_NOT_FOUND',
            message: `this worker has no handler for ${JSON.stringify(task.taskType)}`,
          });
          continue;
        }
        const ctx: WorkerTaskContext = {
          worker: this,
          signal,
          progress: async (p) => void (await this.reportProgress(task, p)),
        };
        try {
          await this.completeTask(task, await handler(task.payload, ctx));
        } catch (err) {
          await this.failTask(task, errorInfo(err)).catch(() => undefined);
        }
      }
    } finally {
      clearInterval(beat);
    }
  }

  async #runHook(
    handlers: Readonly<Record<string, WorkerHandler>>,
    signal: AbortSignal,
  ): Promise<void> {
    const hook = await this.hookFor();
    if (hook === null || signal.aborted) return;
    const item = hook.workItem as { taskType?: unknown } | null;
    const type =
      item !== null && typeof item === 'object' && typeof item.taskType === 'string'
        ? item.taskType
        : 'hook';
    const handler = handlers[type];
    if (handler === undefined) return; // not ours to run: leave it for a worker that can
    if (hook.status === 'PENDING') await this.activateHook(hook.hookId);
    const ctx: WorkerTaskContext = {
      worker: this,
      signal,
      progress: async (p) =>
        void (await this.hookProgress(hook.hookId, typeof p === 'string' ? p : JSON.stringify(p))),
    };
    try {
      await this.completeHook(hook.hookId, await handler(hook.workItem, ctx));
    } catch (err) {
      await this.failHook(hook.hookId, errorInfo(err)).catch(() => undefined);
    }
  }

  /** Disconnects. */
  async close(): Promise<void> {
    await this.#client.close();
  }

  async #call(tool: string, args: Record<string, unknown>): Promise<unknown> {
    const res = (await this.#client.callTool({
      name: `fabric__${tool}`,
      arguments: args,
    })) as CallToolResult;
    if (res.isError === true) {
      const meta = (res._meta?.[ERROR_META_KEY] ?? {}) as {
        code?: string;
        kind?: ErrorKind;
        message?: string;
        details?: Record<string, unknown>;
      };
      const text = res.content?.find((c) => c.type === 'text');
      throw new RemoteFabricError(
        meta.code ?? 'FABRIC_ERR_INTERNAL',
        meta.kind ?? 'internal',
        meta.message ?? (text?.type === 'text' ? text.text : `fabric__${tool} failed`),
        meta.details ?? {},
      );
    }
    return (res.structuredContent as { result?: unknown } | undefined)?.result ?? null;
  }
}

function errorInfo(err: unknown): { code: string; message: string } {
  const e = err as { code?: unknown; message?: unknown };
  return {
    code: typeof e?.code === 'string' ? e.code : 'FABRIC_ERR_TASK_EXECUTION',
    message: typeof e?.message === 'string' ? e.message : String(err),
  };
}

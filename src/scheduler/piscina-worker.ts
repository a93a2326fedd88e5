/**
 * Worker-thread side of the `local` executor: runs a batch of tasks, each with the handler module
 * registered for its type. One message carries many tasks — batching is what makes worker
 * dispatch cheap (see bench/scheduler.ts).
 *
 * A handler module default-exports (or exports as `handler`) a function
 * `(payload, context) => result | Promise<result>`; `context.signal` aborts when the task times
 * out or is cancelled.
 *
 * @module
 */
import { pathToFileURL } from 'node:url';
import type { TaskError } from '../task.js';
import type { TaskHandler } from './executor.js';
import { LazyHandlerContext, toTaskError } from './executor.js';

/** One task of a batch. */
export interface BatchItem {
  taskId: string;
  attempt: number;
  agentId: string;
  taskType: string;
  payload: unknown;
  /** URL of the handler module. */
  handler: string;
}

/** A batch: tasks plus one abort flag per task, and a begun flag, in shared memory. */
export interface BatchInput {
  items: BatchItem[];
  /**
   * Int32 per item; non-zero means "abort this task". One more at `items.length`: the worker
   * sets it to 1 and notifies when it begins the batch.
   */
  flags: Int32Array;
}

/** Per-task outcome, in batch order. */
export type BatchOutcome = { ok: true; result: unknown } | { ok: false; error: TaskError };

const ABORT_POLL_MS = 5;
const loaded = new Map<string, TaskHandler>();
const loading = new Map<string, Promise<TaskHandler>>();

function loadHandler(url: string): Promise<TaskHandler> {
  let p = loading.get(url);
  if (p === undefined) {
    const href = url.startsWith('file:') ? url : pathToFileURL(url).href;
    p = import(href).then((mod: { default?: unknown; handler?: unknown }) => {
      const fn = typeof mod.handler === 'function' ? mod.handler : mod.default;
      if (typeof fn !== 'function') {
        throw new TypeError(`handler module ${url} exports no function (default or "handler")`);
      }
      loaded.set(url, fn as TaskHandler);
      return fn as TaskHandler;
    });
    loading.set(url, p);
    // A module that failed to load may be fixed on disk; do not cache the failure.
    p.catch(() => loading.delete(url));
  }
  return p;
}

function isThenable(v: unknown): v is PromiseLike<unknown> {
  return (
    v !== null &&
    (typeof v === 'object' || typeof v === 'function') &&
    typeof (v as { then?: unknown }).then === 'function'
  );
}

/**
 * Runs every task of the batch; never rejects for a handler's failure. Synchronous handlers run
 * back to back with no promise per task; only pending async handlers are awaited.
 */
export default async function runBatch(input: BatchInput): Promise<BatchOutcome[]> {
  const { items, flags } = input;
  // The batch has begun: its tasks leave SCHEDULED for RUNNING (see PiscinaExecutor).
  Atomics.store(flags, items.length, 1);
  Atomics.notify(flags, items.length);
  const out = new Array<BatchOutcome>(items.length);
  for (const item of items) {
    if (!loaded.has(item.handler)) await loadHandler(item.handler).catch(() => undefined);
  }
  let pending: Promise<void>[] | undefined;
  let contexts: LazyHandlerContext[] | undefined;
  for (let i = 0; i < items.length; i++) {
    const item = items[i]!;
    const fn = loaded.get(item.handler);
    if (fn === undefined) {
      out[i] = await loadHandler(item.handler).then(
        () => ({
          ok: false,
          error: { code: 'FABRIC_ERR_HANDLER_NOT_FOUND', message: 'handler failed to load' },
        }),
        (err: unknown) => ({ ok: false, error: toTaskError(err, 'FABRIC_ERR_HANDLER_NOT_FOUND') }),
      );
      continue;
    }
    // Aborted while SCHEDULED (cancelled, timed out) before the batch got here: never start it.
    if (Atomics.load(flags, i) !== 0) {
      out[i] = {
        ok: false,
        error: { code: 'FABRIC_ERR_CANCELLED', message: 'aborted before start' },
      };
      continue;
    }
    const ctx = new LazyHandlerContext(item.taskId, item.attempt, item.agentId, item.taskType);
    try {
      const result = fn(item.payload, ctx);
      if (!isThenable(result)) {
        out[i] = { ok: true, result };
        continue;
      }
      (contexts ??= [])[i] = ctx;
      (pending ??= []).push(
        Promise.resolve(result).then(
          (value) => {
            out[i] = { ok: true, result: value };
          },
          (err: unknown) => {
            out[i] = { ok: false, error: toTaskError(err) };
          },
        ),
      );
    } catch (err) {
      out[i] = { ok: false, error: toTaskError(err) };
    }
  }
  if (pending === undefined) return out;
  // Only async handlers can observe an abort; poll the shared flags while any is pending.
  const ctxs = contexts!;
  const poll = setInterval(() => {
    for (let i = 0; i < items.length; i++) if (Atomics.load(flags, i) !== 0) ctxs[i]?.abort();
  }, ABORT_POLL_MS);
  try {
    await Promise.all(pending);
  } finally {
    clearInterval(poll);
  }
  return out;
}

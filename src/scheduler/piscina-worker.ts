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
import { toTaskError } from './executor.js';

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

/** A batch: tasks plus one abort flag per task in shared memory. */
export interface BatchInput {
  items: BatchItem[];
  /** Int32 per item; non-zero means "abort this task". */
  flags: Int32Array;
}

/** Per-task outcome, in batch order. */
export type BatchOutcome = { ok: true; result: unknown } | { ok: false; error: TaskError };

const ABORT_POLL_MS = 5;
const handlers = new Map<string, Promise<TaskHandler>>();

function loadHandler(url: string): Promise<TaskHandler> {
  let h = handlers.get(url);
  if (h === undefined) {
    const href = url.startsWith('file:') ? url : pathToFileURL(url).href;
    h = import(href).then((mod: { default?: unknown; handler?: unknown }) => {
      const fn = typeof mod.handler === 'function' ? mod.handler : mod.default;
      if (typeof fn !== 'function') {
        throw new TypeError(`handler module ${url} exports no function (default or "handler")`);
      }
      return fn as TaskHandler;
    });
    handlers.set(url, h);
    // A module that failed to load may be fixed on disk; do not cache the failure.
    h.catch(() => handlers.delete(url));
  }
  return h;
}

/** Runs every task of the batch; never rejects for a handler's failure. */
export default async function runBatch(input: BatchInput): Promise<BatchOutcome[]> {
  const { items, flags } = input;
  const out = new Array<BatchOutcome>(items.length);
  const controllers = items.map(() => new AbortController());
  const pending: Promise<void>[] = [];
  for (let i = 0; i < items.length; i++) {
    const item = items[i]!;
    const ctx = {
      taskId: item.taskId,
      attempt: item.attempt,
      agentId: item.agentId,
      taskType: item.taskType,
      signal: controllers[i]!.signal,
    };
    pending.push(
      loadHandler(item.handler)
        .then((fn) => fn(item.payload, ctx))
        .then(
          (result) => {
            out[i] = { ok: true, result };
          },
          (err: unknown) => {
            out[i] = { ok: false, error: toTaskError(err) };
          },
        ),
    );
  }
  const all = Promise.all(pending);
  // Only async handlers can observe an abort; poll the shared flags while any is pending.
  const poll = setInterval(() => {
    for (let i = 0; i < items.length; i++) {
      if (Atomics.load(flags, i) !== 0 && !controllers[i]!.signal.aborted) {
        controllers[i]!.abort(new Error('task aborted'));
      }
    }
  }, ABORT_POLL_MS);
  try {
    await all;
  } finally {
    clearInterval(poll);
  }
  return out;
}

/**
 * Worker-thread side of the `local` executor: runs a batch of tasks, each with the handler module
 * registered for its type. One message carries many tasks — batching is what makes worker
 * dispatch cheap (see bench/scheduler.ts).
 *
 * A handler module default-exports (or exports as `handler`) a function
 * `(payload, context) => result | Promise<result>`; `context.signal` aborts when the task times
 * out or is cancelled.
 *
 * Isolation stops at the thread: every agent's tasks share the pool, a thread runs several
 * batches at once, and handlers share its globals and module state. A callback a handler leaves
 * behind runs in later batches; only its throw is told apart (see {@link onUncaught}). Its side
 * effects cannot be: cancelling a batch's timers at its end would also cancel those library
 * internals start on its behalf (keep-alive, timeouts), and promises and I/O cannot be cancelled.
 *
 * @module
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import { pathToFileURL } from 'node:url';
import { workerData } from 'node:worker_threads';
import type { TaskError } from '../task.js';
import type { TaskHandler } from './executor.js';
import { LazyHandlerContext, toTaskError } from './executor.js';

/** What the tasks of a batch with the same handler, type and agent share (sent once a batch). */
export interface BatchKind {
  /** URL of the handler module. */
  handler: string;
  taskType: string;
  agentId: string;
}

/**
 * A batch, in columns: one entry per task in `taskIds`, `attempts`, `payloads` and `kinds` (an
 * index into `kindTable`). Columns of primitives cost a quarter of what one object per task does
 * to clone, on both threads (the main thread's share is on every task's path). The two columns
 * that nearly always hold one value are left out then: no `kinds` when every task is of the first
 * kind, no `attempts` when every task is on its first attempt.
 */
export interface BatchInput {
  kindTable: BatchKind[];
  /** Absent: every task is of kind 0. */
  kinds: number[] | undefined;
  taskIds: string[];
  /** Absent: every task is on attempt 1. */
  attempts: number[] | undefined;
  payloads: unknown[];
  /**
   * The batch's region of the shared flags buffer ({@link WorkerFlags}), or -1 when the batch
   * brings its own `flags`. Either way: an Int32 per task, non-zero meaning "abort this task", and
   * one more at `taskIds.length`, which the worker sets to 1 and notifies when it begins the batch.
   */
  region: number;
  /** The batch's own flags (when `region` is -1). */
  flags: Int32Array | undefined;
}

/**
 * Per-task outcomes, in batch order: `results[i]` is task `i`'s result unless `i` is listed in
 * `failed`, whose `errors` entry at the same position is its error (failures are rare; no object
 * per task).
 */
/** The pool's `workerData`: the flags buffer shared by every batch that names a region of it. */
export interface WorkerFlags {
  flags: SharedArrayBuffer;
  /** Int32 slots per region. */
  stride: number;
}

/** A view of each region of the shared flags buffer, made on first use. */
const regions: Int32Array[] = [];

function regionFlags(region: number): Int32Array {
  let view = regions[region];
  if (view === undefined) {
    const { flags, stride } = workerData as WorkerFlags;
    view = regions[region] = new Int32Array(flags, 4 * stride * region, stride);
  }
  return view;
}

export interface BatchOutcome {
  results: unknown[];
  failed: number[];
  errors: TaskError[];
}

const ABORT_POLL_MS = 5;

/** A batch as the callbacks its handlers leave behind see it (see {@link onUncaught}). */
interface BatchScope {
  /** Set once the batch's outcome is returned: its handlers' callbacks are strays then. */
  ended: boolean;
  kindTable: readonly BatchKind[];
}

/**
 * The batch whose handlers made the running callback: timers, listeners and promises a handler
 * makes carry it (AsyncLocalStorage follows them), so a throw can be told to be a stray — of a
 * batch that already ended — rather than a crash of the batch running now.
 */
const batchScope = new AsyncLocalStorage<BatchScope>();

/**
 * An error nothing caught on this thread: one thrown by a callback of a batch that has ended (a
 * handler's timer firing after its task returned) is reported on stderr and dropped — before, it
 * crashed the thread in the middle of whatever batch ran next, possibly another agent's, and
 * failed that batch's tasks (FABRIC_ERR_WORKER_CRASHED). Any other (a callback of the running
 * batch, or of no batch) is thrown again: the thread crashes and its batch fails, as without
 * this listener.
 */
function onUncaught(error: unknown): void {
  const scope = batchScope.getStore();
  if (scope === undefined && isCloneError(error)) markUnsendable();
  if (scope?.ended !== true) throw error;
  const kinds = scope.kindTable.map((k) => `${k.taskType} (agent ${k.agentId})`).join(', ');
  const what = error instanceof Error ? (error.stack ?? error.message) : String(error);
  process.stderr.write(
    `agent-fabric local executor: a callback a handler left behind threw after its batch ended (task types: ${kinds}); dropped: ${what}\n`,
  );
}
process.on('uncaughtException', onUncaught);

/**
 * Flag value a worker stores in a task's slot of its batch's flags ({@link BatchInput.region})
 * when the task's result cannot be cloned back to the main thread; the main thread reads it only
 * when the batch failed as a whole, and fails that task alone, not as a crash to retry.
 */
export const UNSENDABLE = 2;

/** A batch whose outcome was handed to piscina, which posts it in the same microtask run. */
interface Returned {
  outcome: BatchOutcome;
  flags: Int32Array;
}

/** Batches returned since the last macrotask (see {@link markUnsendable}). */
let returned: Returned[] = [];
let clearQueued = false;

function clearReturned(): void {
  returned = [];
  clearQueued = false;
}

function isCloneError(error: unknown): boolean {
  return (error as { name?: unknown } | null)?.name === 'DataCloneError';
}

/**
 * piscina could not post a batch's outcome (a result holds a function, a symbol …): it throws
 * the clone error on this thread outside any batch, and the thread crashes — the outcome never
 * reaches the main thread. Before it does, the tasks at fault are marked {@link UNSENDABLE} in
 * their batch's flags, so that they fail with a typed error there and the rest re-run without
 * spending an attempt. Only here, after the fact: checking every result before it is returned
 * would clone each one twice.
 */
function markUnsendable(): void {
  for (const { outcome, flags } of returned) {
    const failed = new Set(outcome.failed);
    outcome.results.forEach((result, i) => {
      if (failed.has(i)) return;
      try {
        structuredClone(result);
      } catch {
        Atomics.store(flags, i, UNSENDABLE);
      }
    });
  }
}

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
export default function runBatch(input: BatchInput): Promise<BatchOutcome> {
  const scope: BatchScope = { ended: false, kindTable: input.kindTable };
  const end = (): void => {
    scope.ended = true;
  };
  const outcome = batchScope.run(scope, runTasks, input);
  outcome.then((o) => {
    end();
    returned.push({ outcome: o, flags: input.flags ?? regionFlags(input.region) });
    if (!clearQueued) {
      clearQueued = true;
      setImmediate(clearReturned);
    }
  }, end);
  return outcome;
}

async function runTasks(input: BatchInput): Promise<BatchOutcome> {
  const { kindTable, kinds, taskIds, attempts, payloads } = input;
  const flags = input.flags ?? regionFlags(input.region);
  const n = taskIds.length;
  // The batch has begun: its tasks leave SCHEDULED for RUNNING (see PiscinaExecutor).
  Atomics.store(flags, n, 1);
  Atomics.notify(flags, n);
  const handlers: (TaskHandler | undefined)[] = [];
  for (const kind of kindTable) {
    let fn = loaded.get(kind.handler);
    if (fn === undefined) fn = await loadHandler(kind.handler).catch(() => undefined);
    handlers.push(fn);
  }
  // Packed arrays (filled in order, never holey) clone as plain lists.
  const results: unknown[] = [];
  const failed: number[] = [];
  const errors: TaskError[] = [];
  const fail = (i: number, error: TaskError): void => {
    failed.push(i);
    errors.push(error);
  };
  let pending: Promise<void>[] | undefined;
  let contexts: LazyHandlerContext[] | undefined;
  for (let i = 0; i < n; i++) {
    results.push(undefined);
    const k = kinds === undefined ? 0 : kinds[i]!;
    const kind = kindTable[k]!;
    const fn = handlers[k];
    if (fn === undefined) {
      fail(
        i,
        await loadHandler(kind.handler).then(
          () => ({ code: 'FABRIC_ERR_HANDLER_NOT_FOUND', message: 'handler failed to load' }),
          (err: unknown) => toTaskError(err, 'FABRIC_ERR_HANDLER_NOT_FOUND'),
        ),
      );
      continue;
    }
    // Aborted while SCHEDULED (cancelled, timed out) before the batch got here: never start it.
    if (Atomics.load(flags, i) !== 0) {
      fail(i, { code: 'FABRIC_ERR_CANCELLED', message: 'aborted before start' });
      continue;
    }
    const ctx = new LazyHandlerContext(
      taskIds[i]!,
      attempts === undefined ? 1 : attempts[i]!,
      kind.agentId,
      kind.taskType,
    );
    try {
      const result = fn(payloads[i], ctx);
      if (!isThenable(result)) {
        results[i] = result;
        continue;
      }
      (contexts ??= [])[i] = ctx;
      (pending ??= []).push(
        Promise.resolve(result).then(
          (value) => {
            results[i] = value;
          },
          (err: unknown) => fail(i, toTaskError(err)),
        ),
      );
    } catch (err) {
      fail(i, toTaskError(err));
    }
  }
  if (pending === undefined) return { results, failed, errors };
  // Only async handlers can observe an abort; poll the shared flags while any is pending.
  const ctxs = contexts!;
  const poll = setInterval(() => {
    for (let i = 0; i < n; i++) if (Atomics.load(flags, i) !== 0) ctxs[i]?.abort();
  }, ABORT_POLL_MS);
  try {
    await Promise.all(pending);
  } finally {
    clearInterval(poll);
  }
  return { results, failed, errors };
}

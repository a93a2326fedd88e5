/**
 * The `local` executor: task handlers run on a piscina worker-thread pool.
 *
 * Tasks are sent to workers in batches. While fewer than `maxBatchesInFlight` batches are out, a
 * task goes at once (low latency at low load); beyond that, tasks wait in a backlog and leave
 * together in the next batch (high throughput at high load). One `piscina.run` costs ~40 µs of
 * messaging whatever it carries, so batching is the lever (bench/scheduler.ts measures it).
 *
 * A task is SCHEDULED from the moment the scheduler hands it over until a worker thread begins
 * its batch: while it waits in the backlog, and while its batch waits behind another batch on a
 * busy thread. The worker marks the batch begun in the batch's shared flags and wakes an
 * `Atomics.waitAsync` here (one per batch, not per task; ~4 µs of main-thread time measured,
 * a tenth of a `piscina.run`), which reports the tasks RUNNING.
 *
 * The flags of the batches out at once live in one `SharedArrayBuffer`, made with the pool and
 * given to every worker as its `workerData`; a batch names its region. A buffer per batch cost
 * each young-generation collection a sweep of the dead buffers (3.8 ms of a 9.6 ms scavenge
 * pause, measured with `--trace-gc-nvp` under load), on the main thread, in the latency tail.
 * Only a batch beyond the regions (single-task re-runs after a failed batch) has its own buffer.
 *
 * Faults stay with their task: when a batch of several tasks fails as a whole (a handler crashed
 * its worker, or a result could not be cloned), each of its unfinished tasks is re-run alone once,
 * without spending an attempt, so only the task at fault fails.
 *
 * @module
 */
import { availableParallelism } from 'node:os';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { isAbsolute, resolve } from 'node:path';
import { Piscina } from 'piscina';
import { InvalidArgumentError } from '../errors.js';
import { checkNumber } from '../validate.js';
import type { TaskAssignment, TaskError } from '../task.js';
import type { ExecutorSink, TaskExecutor } from './executor.js';
import { toTaskError } from './executor.js';
import { setLongTimeout } from './task-waiters.js';
import type { BatchInput, BatchKind, BatchOutcome, WorkerFlags } from './piscina-worker.js';

/** `UNSENDABLE` of `piscina-worker.ts` (not imported: that module sets up a worker thread). */
const UNSENDABLE = 2;

/** Executor name of {@link PiscinaExecutor}. */
export const LOCAL_EXECUTOR = 'local';

/** Options of {@link PiscinaExecutor}. */
export interface PiscinaExecutorOptions {
  /** @default min(4, availableParallelism()) */
  maxThreads?: number;
  /** @default 1 */
  minThreads?: number;
  /** Batches a worker runs at once (useful for handlers that await I/O). @default 2 */
  concurrentTasksPerWorker?: number;
  /** Most tasks in one message to a worker. @default 256 */
  maxBatchSize?: number;
  /**
   * After a task is aborted, how long its worker may keep running before it is terminated (a
   * handler ignoring its signal must not hold a thread forever).
   * @default 2000
   */
  abortGraceMs?: number;
}

interface Batch {
  items: readonly TaskAssignment[];
  /** One abort flag per item, then the begun flag ({@link BEGUN} at index `items.length`). */
  flags: Int32Array;
  /** The region of the shared flags buffer `flags` views, or -1 for a buffer of its own. */
  region: number;
  done: boolean;
  /** Re-run of a single task after its batch failed as a whole. */
  solo: boolean;
  /** Terminates the batch's worker thread (a handler ignored its abort). */
  hard: HardAbort;
  /** Cancels the hard-abort timer armed when an item of it was aborted. */
  hardAbort: (() => void) | undefined;
  /** Indexes of the tasks the scheduler aborted (made on the first abort; nearly never). */
  aborted: Set<number> | undefined;
}

function workerFile(): { filename: string; execArgv: string[] } {
  const here = import.meta.url;
  if (here.endsWith('.ts')) {
    // Running from source (tests, tsx): the worker needs the same TypeScript loader.
    return { filename: new URL('./piscina-worker.ts', here).href, execArgv: ['--import', 'tsx'] };
  }
  return { filename: new URL('./piscina-worker.js', here).href, execArgv: [] };
}

/**
 * The abort signal piscina watches for one batch (it terminates the batch's thread on abort): one
 * listener and two fields. Nearly no batch is ever aborted, and an `AbortController` per batch
 * costs more main-thread time than the rest of the batch's bookkeeping.
 */
class HardAbort {
  aborted = false;
  reason: unknown;
  #listener: (() => void) | undefined;

  addEventListener(_type: 'abort', listener: () => void): void {
    this.#listener = listener;
  }

  removeEventListener(_type: 'abort', listener: () => void): void {
    if (this.#listener === listener) this.#listener = undefined;
  }

  abort(reason: unknown): void {
    if (this.aborted) return;
    this.aborted = true;
    this.reason = reason;
    const listener = this.#listener;
    this.#listener = undefined;
    listener?.();
  }
}

/** A packed array of `n` copies of `value` (to be pushed to). */
function filled(n: number, value: number): number[] {
  const out: number[] = [];
  for (let i = 0; i < n; i++) out.push(value);
  return out;
}

/** Value of a batch's begun flag once its worker thread has begun it. */
const BEGUN = 1;

/** `Atomics.waitAsync` (ES2024, in Node since 16): the project's `lib` is ES2023. */
const waitAsync = (
  Atomics as unknown as {
    waitAsync(
      array: Int32Array,
      index: number,
      value: number,
    ): { async: false; value: string } | { async: true; value: Promise<string> };
  }
).waitAsync;

/** Runs registered handler modules on worker threads, in batches. */
export class PiscinaExecutor implements TaskExecutor {
  readonly name = LOCAL_EXECUTOR;
  readonly acknowledges = true;
  readonly autoHeartbeat = true;
  readonly inProcess = true;
  readonly #handlers = new Map<string, string>();
  readonly #maxBatch: number;
  readonly #maxInFlight: number;
  readonly #graceMs: number;
  readonly #options: PiscinaExecutorOptions;
  #pool: Piscina<BatchInput, BatchOutcome> | undefined;
  /** Int32 slots of one batch's region of the shared flags: `maxBatchSize + 1`. */
  readonly #stride: number;
  /** A view of each region of the shared flags buffer (made with the pool). */
  #regions: Int32Array[] = [];
  /** Regions no batch holds. */
  #freeRegions: number[] = [];
  #sink: ExecutorSink | undefined;
  /** Tasks waiting to be sent (their handler is registered: checked on dispatch). */
  #backlog: TaskAssignment[] = [];
  #inFlight = 0;
  /**
   * Unsettled batches, which an abort looks through: at most `maxThreads ×
   * concurrentTasksPerWorker` batches of `maxBatchSize` (plus single-task re-runs), and aborts are
   * rare, so a search is cheaper than a task-id index kept up on every task's path.
   */
  readonly #unsettled = new Set<Batch>();
  #closed = false;

  constructor(options: PiscinaExecutorOptions = {}) {
    const maxThreads = options.maxThreads ?? Math.min(4, availableParallelism());
    checkNumber('options.maxThreads', maxThreads, 'positiveInt');
    const perWorker = options.concurrentTasksPerWorker ?? 2;
    checkNumber('options.concurrentTasksPerWorker', perWorker, 'positiveInt');
    this.#maxBatch = checkNumber(
      'options.maxBatchSize',
      options.maxBatchSize ?? 256,
      'positiveInt',
    );
    this.#graceMs = checkNumber(
      'options.abortGraceMs',
      options.abortGraceMs ?? 2000,
      'nonNegativeInt',
    );
    this.#maxInFlight = maxThreads * perWorker;
    this.#stride = this.#maxBatch + 1;
    this.#options = { ...options, maxThreads, concurrentTasksPerWorker: perWorker };
  }

  /**
   * Registers the handler module of `taskType`: a path (absolute, or relative to the working
   * directory) or a `file:` URL of an ES module exporting the handler as default or `handler`.
   */
  registerHandler(taskType: string, module: string | URL): void {
    if (typeof taskType !== 'string' || taskType.length === 0)
      throw new InvalidArgumentError('taskType', 'must be a non-empty string');
    let href: string;
    if (module instanceof URL) href = module.href;
    else if (typeof module === 'string' && module.startsWith('file:')) href = module;
    else if (typeof module === 'string' && module.length > 0)
      href = pathToFileURL(isAbsolute(module) ? module : resolve(module)).href;
    else throw new InvalidArgumentError('module', 'must be a file path or file: URL');
    // Fail at registration, not at first run, when the file is not there.
    fileURLToPath(href);
    this.#handlers.set(taskType, href);
  }

  /** True when a handler module is registered for `taskType`. */
  hasHandler(taskType: string): boolean {
    return this.#handlers.has(taskType);
  }

  bind(sink: ExecutorSink): void {
    this.#sink = sink;
  }

  capacity(): number {
    return Number.POSITIVE_INFINITY;
  }

  #ensurePool(): Piscina<BatchInput, BatchOutcome> {
    if (this.#pool === undefined) {
      const { filename, execArgv } = workerFile();
      // One region per batch that may be out at once (see the module notes).
      const regions = this.#maxInFlight;
      const shared = new SharedArrayBuffer(4 * this.#stride * regions);
      this.#regions = [];
      this.#freeRegions = [];
      for (let r = 0; r < regions; r++) {
        this.#regions.push(new Int32Array(shared, 4 * this.#stride * r, this.#stride));
        this.#freeRegions.push(regions - 1 - r);
      }
      const workerData: WorkerFlags = { flags: shared, stride: this.#stride };
      this.#pool = new Piscina<BatchInput, BatchOutcome>({
        filename,
        execArgv,
        workerData,
        minThreads: this.#options.minThreads ?? 1,
        maxThreads: this.#options.maxThreads!,
        concurrentTasksPerWorker: this.#options.concurrentTasksPerWorker!,
        idleTimeout: 30_000,
      });
    }
    return this.#pool;
  }

  dispatch(batch: readonly TaskAssignment[]): void {
    // The common case: every handler known, nothing waiting, a batch free. The scheduler's array
    // goes as it is (it hands a new one over each time), with no copy into the backlog.
    let known = true;
    let lastType: string | undefined;
    for (let i = 0; i < batch.length && known; i++) {
      const type = batch[i]!.taskType;
      if (type !== lastType) {
        known = this.#handlers.has(type);
        lastType = type;
      }
    }
    if (
      known &&
      batch.length > 0 &&
      batch.length <= this.#maxBatch &&
      this.#backlog.length === 0 &&
      this.#inFlight < this.#maxInFlight &&
      !this.#closed
    ) {
      this.#send(batch, false);
      return;
    }
    const sink = this.#sink!;
    for (const a of batch) {
      if (!this.#handlers.has(a.taskType)) {
        queueMicrotask(() =>
          sink.fail(a.taskId, a.attempt, {
            code: 'FABRIC_ERR_HANDLER_NOT_FOUND',
            message: `no handler is registered for task type ${JSON.stringify(a.taskType)}`,
          }),
        );
        continue;
      }
      this.#backlog.push(a);
    }
    this.#pump();
  }

  #pump(): void {
    while (this.#backlog.length > 0 && this.#inFlight < this.#maxInFlight && !this.#closed) {
      const items =
        this.#backlog.length <= this.#maxBatch
          ? this.#backlog
          : this.#backlog.splice(0, this.#maxBatch);
      if (items === this.#backlog) this.#backlog = [];
      this.#send(items, false);
    }
  }

  #send(items: readonly TaskAssignment[], solo: boolean): void {
    const n = items.length;
    const pool = this.#ensurePool();
    let region = n < this.#stride ? (this.#freeRegions.pop() ?? -1) : -1;
    let flags: Int32Array;
    if (region >= 0) {
      flags = this.#regions[region]!;
      // Its last batch has settled: its worker is done with it (see #settle).
      flags.fill(0, 0, n + 1);
    } else {
      region = -1;
      flags = new Int32Array(new SharedArrayBuffer(4 * (n + 1)));
    }
    const batch: Batch = {
      items,
      flags,
      region,
      done: false,
      solo,
      hard: new HardAbort(),
      hardAbort: undefined,
      aborted: undefined,
    };
    const kindTable: BatchKind[] = [];
    const taskIds: string[] = [];
    const payloads: unknown[] = [];
    // Made only when needed (see BatchInput): a kind other than the first, an attempt past 1.
    let kinds: number[] | undefined;
    let attempts: number[] | undefined;
    let last: BatchKind | undefined;
    let lastIndex = -1;
    for (let i = 0; i < n; i++) {
      const a = items[i]!;
      // A batch mostly holds runs of one agent's tasks of one type: compare with the last kind.
      // (The handler follows from the type: registered ones are never removed.)
      if (last === undefined || last.taskType !== a.taskType || last.agentId !== a.agentId) {
        lastIndex = kindTable.findIndex(
          (k) => k.taskType === a.taskType && k.agentId === a.agentId,
        );
        if (lastIndex < 0) {
          lastIndex = kindTable.length;
          const handler = this.#handlers.get(a.taskType)!;
          kindTable.push({ handler, taskType: a.taskType, agentId: a.agentId });
        }
        last = kindTable[lastIndex]!;
        if (lastIndex !== 0 && kinds === undefined) kinds = filled(i, 0);
      }
      if (kinds !== undefined) kinds.push(lastIndex);
      if (a.attempt !== 1 && attempts === undefined) attempts = filled(i, 1);
      if (attempts !== undefined) attempts.push(a.attempt);
      taskIds.push(a.taskId);
      payloads.push(a.payload);
    }
    const input: BatchInput = {
      kindTable,
      kinds,
      taskIds,
      attempts,
      payloads,
      region,
      flags: region < 0 ? flags : undefined,
    };
    this.#inFlight++;
    this.#unsettled.add(batch);
    pool.run(input, { signal: batch.hard }).then(
      (outcomes) => this.#settle(batch, outcomes, undefined),
      (err: unknown) => this.#settle(batch, undefined, err),
    );
    const begun = waitAsync.call(Atomics, flags, n, 0);
    if (begun.async) void begun.value.then(() => this.#begun(batch));
    else this.#begun(batch);
  }

  /** The worker began the batch (or it ended without beginning: then nothing is reported). */
  #begun(batch: Batch): void {
    // Settled first (its result overtook the wake-up): every task has already been reported.
    if (batch.done || Atomics.load(batch.flags, batch.items.length) !== BEGUN) return;
    const sink = this.#sink!;
    // Stale reports (a task already finished, aborted or retried) are ignored by the sink.
    for (const a of batch.items) sink.started(a.taskId, a.attempt);
  }

  #settle(batch: Batch, outcome: BatchOutcome | undefined, err: unknown): void {
    batch.done = true;
    this.#inFlight--;
    this.#unsettled.delete(batch);
    // A batch that never began (its worker died first) still has a waiter: release it.
    Atomics.notify(batch.flags, batch.items.length);
    batch.hardAbort?.();
    // The region is free once its worker can no longer touch it: the batch returned. After a
    // failure (a crashed or terminated worker, which may not have stopped yet) it is not reused.
    if (batch.region >= 0 && err === undefined) this.#freeRegions.push(batch.region);
    const sink = this.#sink!;
    const retryAlone: TaskAssignment[] = [];
    const items = batch.items;
    // Failed tasks by index (async handlers fail in any order); usually none.
    let errors: Map<number, TaskError> | undefined;
    if (outcome !== undefined && outcome.failed.length > 0) {
      errors = new Map();
      for (let k = 0; k < outcome.failed.length; k++)
        errors.set(outcome.failed[k]!, outcome.errors[k]!);
    }
    const aborted = batch.aborted;
    for (let i = 0; i < items.length; i++) {
      const it = items[i]!;
      const { taskId, attempt } = it;
      if (aborted?.has(i) === true) continue; // the scheduler already ended this attempt
      if (outcome !== undefined) {
        const error = errors?.get(i);
        if (error === undefined) sink.complete(taskId, attempt, outcome.results[i]);
        else sink.fail(taskId, attempt, error);
      } else if (Atomics.load(batch.flags, i) === UNSENDABLE) {
        // Its result could not be cloned back (see the worker's markUnsendable): it would fail
        // the same way on every attempt, and no worker crashed on its own.
        sink.fail(taskId, attempt, {
          code: InvalidArgumentError.code,
          message:
            "the handler's result could not be sent from its worker thread: it holds a value structured clone refuses (a function, a symbol …)",
        });
      } else if (!batch.solo && items.length > 1 && !this.#closed) {
        retryAlone.push(it);
      } else {
        const e = toTaskError(err);
        sink.fail(
          taskId,
          attempt,
          {
            code: 'FABRIC_ERR_WORKER_CRASHED',
            message: `worker failed: ${e.message}`,
            details: { cause: e },
          },
          { retry: true },
        );
      }
    }
    for (const it of retryAlone) this.#send([it], true);
    this.#pump();
  }

  abort(taskId: string, attempt: number, _reason: TaskError): void {
    const holds = (a: TaskAssignment): boolean => a.taskId === taskId && a.attempt === attempt;
    let batch: Batch | undefined;
    let index = -1;
    for (const b of this.#unsettled) {
      index = b.items.findIndex(holds);
      if (index >= 0) {
        batch = b;
        break;
      }
    }
    if (batch === undefined) {
      const i = this.#backlog.findIndex(holds);
      if (i >= 0) this.#backlog.splice(i, 1);
      return;
    }
    (batch.aborted ??= new Set()).add(index);
    Atomics.store(batch.flags, index, 1);
    if (batch.hardAbort === undefined) {
      // abortGraceMs is the caller's: past setTimeout's limit it is waited out in steps.
      batch.hardAbort = setLongTimeout(
        () => {
          if (!batch.done) batch.hard.abort(new Error('handler ignored its abort signal'));
        },
        this.#graceMs,
        { unref: true },
      );
    }
  }

  async close(): Promise<void> {
    this.#closed = true;
    const pool = this.#pool;
    this.#pool = undefined;
    const sink = this.#sink;
    for (const a of this.#backlog.splice(0)) {
      sink?.fail(a.taskId, a.attempt, { code: 'FABRIC_ERR_CLOSED', message: 'executor closed' });
    }
    if (pool !== undefined) await pool.destroy();
  }
}

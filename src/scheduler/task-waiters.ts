/**
 * Waiters for a task's end. They hang on the task's record (the common case, one unbounded
 * waiter, in two fields with no extra objects), so finishing a task costs nothing when nobody
 * waits; they are runtime state, never stored (after a restart a finished task answers at once).
 *
 * @module
 */
import { WaitTimeoutError } from '../errors.js';
import type { Task } from '../task.js';
import type { TaskRecord, Waiter } from './task-record.js';

/**
 * The longest delay `setTimeout` takes. Node fires a longer one after 1 ms (with a warning): a
 * caller-controlled delay is capped to it, or waited out in steps ({@link setLongTimeout}).
 */
export const MAX_TIMER_MS = 2 ** 31 - 1;

/** {@link MAX_TIMER_MS} in whole seconds (2147483, about 24.8 days): the longest timed setting. */
export const MAX_TIMER_SECONDS = Math.floor(MAX_TIMER_MS / 1000);

/**
 * What a duration past the timer limit is told, in its own unit: `must be at most 2147483
 * seconds (24.8 days)` (or `2147483647 ms`). Config schemas and option checks share it.
 */
export function timerLimitMessage(unit: 'seconds' | 'ms'): string {
  const max = unit === 'seconds' ? MAX_TIMER_SECONDS : MAX_TIMER_MS;
  const days = Math.floor(MAX_TIMER_MS / 8_640_000) / 10;
  return `must be at most ${max} ${unit} (${days} days)`;
}

/**
 * Calls `fn` once `ms` have passed, however long that is: a delay past {@link MAX_TIMER_MS} is
 * waited out in steps of at most that (`Infinity`: never). Returns what cancels it.
 * @param options.unref - does not keep the process alive (as `timer.unref()`).
 */
export function setLongTimeout(
  fn: () => void,
  ms: number,
  options: { unref?: boolean } = {},
): () => void {
  let left = Math.max(0, ms);
  let timer: NodeJS.Timeout;
  const arm = (): void => {
    const step = Math.min(left, MAX_TIMER_MS);
    left -= step;
    timer = setTimeout(left > 0 ? arm : fn, step);
    if (options.unref === true) timer.unref();
  };
  arm();
  return () => clearTimeout(timer);
}

/**
 * Waits for the end of an unfinished task.
 * @param timeoutMs - how long; `undefined` or `Infinity` as long as it takes.
 * @param signal - ends the wait (rejecting with the signal's reason) and removes the waiter.
 * @returns a promise that rejects with WaitTimeoutError when the wait runs out.
 */
export function waitForEnd(
  t: TaskRecord,
  timeoutMs: number | undefined,
  signal?: AbortSignal,
): Promise<Task> {
  if (signal?.aborted) return Promise.reject(signal.reason as Error);
  const unbounded = timeoutMs === undefined || timeoutMs === Number.POSITIVE_INFINITY;
  return new Promise<Task>((resolve, reject) => {
    if (unbounded && signal === undefined) {
      // The common case, one unbounded waiter, hangs on the record with no extra objects.
      if (t.resolve === undefined) t.resolve = resolve;
      else (t.waiters ??= []).push({ resolve, reject });
      return;
    }
    const list = (t.waiters ??= []);
    let cancelTimer: (() => void) | undefined;
    const done = (): void => {
      cancelTimer?.();
      signal?.removeEventListener('abort', onAbort);
    };
    const leave = (err: Error): void => {
      const i = list.indexOf(waiter);
      if (i >= 0) list.splice(i, 1);
      if (list.length === 0 && t.waiters === list) t.waiters = undefined;
      done();
      reject(err);
    };
    const onAbort = (): void => leave(signal!.reason as Error);
    const waiter: Waiter = {
      resolve: (task) => {
        done();
        resolve(task);
      },
      reject: (err) => {
        done();
        reject(err);
      },
    };
    if (!unbounded) {
      const ms = timeoutMs!;
      cancelTimer = setLongTimeout(
        () => leave(new WaitTimeoutError(`task ${t.id}`, ms / 1000)),
        ms,
      );
    }
    signal?.addEventListener('abort', onAbort, { once: true });
    list.push(waiter);
  });
}

/** True when someone waits for the task's end. */
export function hasWaiters(t: TaskRecord): boolean {
  return t.resolve !== undefined || t.waiters !== undefined;
}

/** Answers every waiter of the task with its final snapshot. */
export function settleWaiters(t: TaskRecord, snap: Task): void {
  const resolve = t.resolve;
  const waiters = t.waiters;
  t.resolve = undefined;
  t.waiters = undefined;
  resolve?.(snap);
  if (waiters !== undefined) for (const w of waiters) w.resolve(snap);
}

/** Rejects every waiter of the task (the scheduler closed). */
export function rejectWaiters(t: TaskRecord, err: Error): void {
  const resolve = t.resolve;
  const waiters = t.waiters;
  t.resolve = undefined;
  t.waiters = undefined;
  for (const w of waiters ?? []) w.reject(err);
  if (resolve !== undefined) {
    const rejected = Promise.reject(err);
    // Handled by the promise it resolves; this keeps Node from reporting it in between.
    rejected.catch(() => {});
    resolve(rejected);
  }
}

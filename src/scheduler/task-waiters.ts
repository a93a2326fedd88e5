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

/** The longest delay `setTimeout` takes. */
export const MAX_TIMER_MS = 2 ** 31 - 1;

/**
 * Waits for the end of an unfinished task.
 * @param timeoutMs - how long; `undefined` or `Infinity` as long as it takes.
 * @returns a promise that rejects with WaitTimeoutError when the wait runs out.
 */
export function waitForEnd(t: TaskRecord, timeoutMs: number | undefined): Promise<Task> {
  return new Promise<Task>((resolve, reject) => {
    if (timeoutMs === undefined || timeoutMs === Number.POSITIVE_INFINITY) {
      if (t.resolve === undefined) {
        t.resolve = resolve;
        t.reject = reject;
      } else (t.waiters ??= []).push({ resolve, reject });
      return;
    }
    const list = (t.waiters ??= []);
    const waiter: Waiter = {
      resolve: (task) => {
        clearTimeout(timer);
        resolve(task);
      },
      reject: (err) => {
        clearTimeout(timer);
        reject(err);
      },
    };
    const timer = setTimeout(
      () => {
        const i = list.indexOf(waiter);
        if (i >= 0) list.splice(i, 1);
        reject(new WaitTimeoutError(`task ${t.id}`, timeoutMs / 1000));
      },
      Math.min(timeoutMs, MAX_TIMER_MS),
    );
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
  t.resolve = t.reject = undefined;
  t.waiters = undefined;
  resolve?.(snap);
  if (waiters !== undefined) for (const w of waiters) w.resolve(snap);
}

/** Rejects every waiter of the task (the scheduler closed). */
export function rejectWaiters(t: TaskRecord, err: Error): void {
  const reject = t.reject;
  const waiters = t.waiters;
  t.resolve = t.reject = undefined;
  t.waiters = undefined;
  for (const w of waiters ?? []) w.reject(err);
  reject?.(err);
}

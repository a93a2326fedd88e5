/**
 * The scheduler's timers: one heap of tasks ordered by when they are due (a queued task's
 * deadline or `notBefore`, a running task's timeout) and ONE armed `setTimeout`, for the earliest.
 * O(log n) to set or clear a task's timer. Runtime state: re-armed from the task records on start.
 *
 * @module
 */
import { IndexedHeap } from './indexed-heap.js';
import type { TaskRecord } from './task-record.js';
import { TIMER_SLOT } from './task-record.js';
import { MAX_TIMER_MS } from './task-waiters.js';

/** Due-time heap plus the one timer armed for its head. */
export class TaskTimers {
  readonly #heap = new IndexedHeap<TaskRecord>((a, b) => a.timerAt < b.timerAt, TIMER_SLOT);
  #timer: NodeJS.Timeout | undefined;
  #armedAt = Number.POSITIVE_INFINITY;
  #closed = false;

  /** @param due - called for each task whose time came, already off the heap. */
  constructor(private readonly due: (t: TaskRecord, now: number) => void) {}

  /** Sets (or moves) the task's timer to `at` (epoch ms). */
  set(t: TaskRecord, at: number): void {
    t.timerAt = at;
    if (this.#heap.has(t)) this.#heap.update(t);
    else this.#heap.push(t);
    if (at < this.#armedAt) this.#arm(at);
  }

  /** Clears the task's timer, if it has one. */
  remove(t: TaskRecord): void {
    this.#heap.remove(t);
  }

  /** Stops the armed timer; nothing fires afterwards. */
  close(): void {
    this.#closed = true;
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  #arm(at: number): void {
    if (this.#closed) return;
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#armedAt = at;
    this.#timer = setTimeout(this.#fire, Math.max(0, Math.min(at - Date.now(), MAX_TIMER_MS)));
    this.#timer.unref();
  }

  readonly #fire = (): void => {
    this.#timer = undefined;
    this.#armedAt = Number.POSITIVE_INFINITY;
    const now = Date.now();
    for (let t = this.#heap.peek(); t !== undefined && t.timerAt <= now; t = this.#heap.peek()) {
      this.#heap.pop();
      this.due(t, now);
    }
    const next = this.#heap.peek();
    if (next !== undefined) this.#arm(next.timerAt);
  };
}

/**
 * The scheduler's timers: tasks ordered by when they are due and ONE armed `setTimeout` per
 * clock, for the earliest. A queued task's deadline or `notBefore` is a calendar time (epoch ms,
 * on the wall clock); a running task's timeout is a duration, counted on the monotonic clock
 * (`performance.now()`), so a step of the wall clock (NTP, an operator setting the date) neither
 * times out every running task at once nor lets them run for as long as the clock went back.
 * A `setTimeout` counts elapsed time, not the wall clock: the calendar-time timer is armed for
 * at most {@link WALL_RECHECK_MS} at a time, so a step of the wall clock ahead past a task's
 * `notBefore` or deadline releases (or times out) the task within that, not once the delay armed
 * before the step has elapsed (a step back is seen when the timer fires: what is not due yet is
 * armed again). The cost: one wake-up a second while any queued task waits for a calendar time.
 * A task has one timer at a time. O(log n) to set or clear a task's timer. Runtime state:
 * re-armed from the task records on start.
 *
 * @module
 */
import { IndexedHeap } from './indexed-heap.js';
import type { TaskRecord } from './task-record.js';
import { TIMER_SLOT } from './task-record.js';
import { MAX_TIMER_MS } from './task-waiters.js';

/**
 * Longest a calendar-time timer is armed for before the wall clock is read again (see the
 * module comment): how late a step of the wall clock ahead can make a task's release.
 */
export const WALL_RECHECK_MS = 1000;

/** One heap of due times on one clock, and the timer armed for its head. */
class ClockTimers {
  readonly heap = new IndexedHeap<TaskRecord>((a, b) => a.timerAt < b.timerAt, TIMER_SLOT);
  #timer: NodeJS.Timeout | undefined;
  #armedAt = Number.POSITIVE_INFINITY;
  #closed = false;

  /**
   * @param clock - the clock due times are on
   * @param due - called for each task whose time came, already off the heap
   * @param recheckMs - longest a timer is armed for (the wall clock may step meanwhile)
   */
  constructor(
    private readonly clock: () => number,
    private readonly due: (t: TaskRecord) => void,
    private readonly recheckMs: number = MAX_TIMER_MS,
  ) {}

  set(t: TaskRecord, at: number): void {
    t.timerAt = at;
    if (this.heap.has(t)) this.heap.update(t);
    else this.heap.push(t);
    if (at < this.#armedAt) this.#arm(at);
  }

  close(): void {
    this.#closed = true;
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  #arm(at: number): void {
    if (this.#closed) return;
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#armedAt = at;
    this.#timer = setTimeout(this.#fire, Math.max(0, Math.min(at - this.clock(), this.recheckMs)));
    this.#timer.unref();
  }

  readonly #fire = (): void => {
    this.#timer = undefined;
    this.#armedAt = Number.POSITIVE_INFINITY;
    const now = this.clock();
    try {
      for (let t = this.heap.peek(); t !== undefined && t.timerAt <= now; t = this.heap.peek()) {
        this.heap.pop();
        this.due(t);
      }
    } finally {
      // A `due` that throws (an embedding program's `task.finished` listener) still propagates,
      // but the timers stay armed: what else is due fires on the next turn, the rest in time.
      const next = this.heap.peek();
      if (next !== undefined) this.#arm(next.timerAt);
    }
  };
}

/** Due-time heaps (wall clock and monotonic) plus the timer armed for each head. */
export class TaskTimers {
  readonly #wall: ClockTimers;
  readonly #mono: ClockTimers;

  /** @param due - called for each task whose time came, already off its heap; `now` is epoch ms. */
  constructor(due: (t: TaskRecord, now: number) => void) {
    const fire = (t: TaskRecord): void => due(t, Date.now());
    this.#wall = new ClockTimers(() => Date.now(), fire, WALL_RECHECK_MS);
    this.#mono = new ClockTimers(() => performance.now(), fire);
  }

  /** Sets (or moves) the task's timer to the calendar time `at` (epoch ms). */
  set(t: TaskRecord, at: number): void {
    this.#mono.heap.remove(t);
    this.#wall.set(t, at);
  }

  /**
   * Sets (or moves) the task's timer to `ms` after `from` (a `performance.now()` reading, now by
   * default), however the wall clock moves meanwhile.
   */
  setIn(t: TaskRecord, ms: number, from: number = performance.now()): void {
    this.#wall.heap.remove(t);
    this.#mono.set(t, from + ms);
  }

  /** Clears the task's timer, if it has one. */
  remove(t: TaskRecord): void {
    // Most timers cleared are running tasks' timeouts: the monotonic heap first.
    if (!this.#mono.heap.remove(t)) this.#wall.heap.remove(t);
  }

  /** Stops the armed timers; nothing fires afterwards. */
  close(): void {
    this.#wall.close();
    this.#mono.close();
  }
}

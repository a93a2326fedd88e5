/**
 * The clock budget windows are read on: wall-clock time (epoch ms, so windows persist and
 * "per day" is the calendar day) that advances with the monotonic clock, so a step of the wall
 * clock (NTP correcting a clock that was behind, an operator setting the date) neither rolls a
 * window early — an agent that spent its hourly budget getting a fresh one at once — nor holds
 * one for as long as the clock went back.
 *
 * Each reading costs one `performance.now()`. Once a second of elapsed time (at the next
 * reading) the clock compares itself with `Date.now()` (and reads the boot-time clock, below): a difference within the tolerance is
 * the wall clock being slewed (NTP's gradual correction) and is followed; a larger one is a
 * step. On a step the clock jumps to the wall clock and tells its owner by how much, and the
 * owner moves the usage its windows hold by that much (see `UsageWindow.shift`), so every
 * window keeps the elapsed time it had left. A machine's suspend also shows as the wall clock
 * moving while the monotonic one stands still; where the boot-time clock can be read (Linux:
 * `/proc/uptime`, which counts suspended time) the time slept since the previous check is time
 * that really passed, and only the rest of the difference, either way, is a step.
 *
 * Its marks ({@link ClockMark}, {@link BudgetClock.stepSince}) also carry the state file's
 * open tasks and pending approvals across a restart (`store/store-clock.ts`): one clock, one
 * reading of a step made while no process ran.
 *
 * @module
 */
import { readFileSync } from 'node:fs';

/** How often (elapsed ms, at the next reading) the clock checks itself against the wall clock. */
export const CLOCK_CHECK_INTERVAL_MS = 1000;
/**
 * Largest difference from the wall clock, at a check, taken for slewing rather than a step: 1 s,
 * plus 1 ms per second since the previous check (NTP slews at most 0.5 ms/s) for a clock read
 * after a long idle time.
 */
export const CLOCK_STEP_TOLERANCE_MS = 1000;
const SLEW_PER_MS = 0.001;
/** Shortest suspend of the machine told from a step (see `#check`). */
const MIN_SUSPEND_MS = 60_000;

/** A wall-clock step the budget clock did not follow. */
export interface BudgetClockStep {
  /** How far the wall clock moved beyond elapsed time (ms; negative: it went back). */
  readonly stepMs: number;
  /** The wall-clock time it was noticed at (epoch ms). */
  readonly at: number;
}

/** Reads the boot-time clock (elapsed time including suspend), in ms; undefined where unknown. */
export type BootClock = () => number | undefined;

/** `/proc/uptime` (Linux: seconds since boot, suspend included), in ms; undefined elsewhere. */
export const procUptimeMs: BootClock = () => {
  try {
    const s = Number.parseFloat(readFileSync('/proc/uptime', 'latin1'));
    return Number.isFinite(s) ? s * 1000 : undefined;
  } catch {
    return undefined;
  }
};

/** This boot of the machine's id (Linux: `/proc/sys/kernel/random/boot_id`); undefined elsewhere. */
export function readBootId(): string | undefined {
  try {
    const id = readFileSync('/proc/sys/kernel/random/boot_id', 'latin1').trim();
    return id === '' ? undefined : id;
  } catch {
    return undefined;
  }
}

/**
 * A reading of the wall clock and of the boot-time clock together, kept with persisted windows
 * (`BudgetScopeSnapshot.clock`): a process that loads them later on the same boot tells time
 * that passed (the boot-time clock moved as much) from a step of the wall clock while no process
 * watched it (see {@link BudgetClock.stepSince}).
 */
export interface ClockMark {
  /** The budget clock's time (epoch ms). */
  readonly wall: number;
  /** The boot-time clock (ms since boot, suspend included). */
  readonly boot: number;
  /** The boot it was read on (see {@link readBootId}). */
  readonly bootId: string;
}

/** Largest time a `Date` holds (ms): a mark's readings beyond it are no clock's. */
const MAX_TIME_MS = 8.64e15;

/** A mark as {@link BudgetClock.mark} writes it: times a clock can read (a corrupt row is none). */
function isMark(m: unknown): m is ClockMark {
  const c = m as Partial<ClockMark> | null;
  return (
    typeof c === 'object' &&
    c !== null &&
    typeof c.wall === 'number' &&
    c.wall >= 0 &&
    c.wall <= MAX_TIME_MS &&
    typeof c.boot === 'number' &&
    c.boot >= 0 &&
    c.boot <= MAX_TIME_MS &&
    typeof c.bootId === 'string'
  );
}

/** See the module comment. */
export class BudgetClock {
  /** Wall minus monotonic time, as of the last check (ms). */
  #offset: number;
  #lastCheck: number;
  #nextCheck: number;
  readonly #onStep: (step: BudgetClockStep) => void;
  readonly #boot: BootClock;
  /** Boot-time minus monotonic time at the last check (suspended time so far), if known. */
  #suspended: number | undefined;

  /**
   * @param onStep called (synchronously, inside `now()`) when the wall clock stepped; `now()`
   *   then returns the new wall-clock time.
   * @param boot the boot-time clock used to tell a suspend from a step.
   * @param bootId this boot's id ({@link readBootId}), for {@link mark}; none: no marks.
   */
  constructor(
    onStep: (step: BudgetClockStep) => void,
    boot: BootClock = procUptimeMs,
    bootId?: string,
  ) {
    const mono = performance.now();
    this.#offset = Date.now() - mono;
    this.#lastCheck = mono;
    this.#nextCheck = mono + CLOCK_CHECK_INTERVAL_MS;
    this.#onStep = onStep;
    this.#boot = boot;
    this.#bootId = bootId;
    this.#suspended = suspendedSoFar(boot, mono);
  }

  readonly #bootId: string | undefined;

  /**
   * Now on this clock and on the boot-time clock (as of the last check: no file read), or
   * undefined where the boot-time clock or the boot's id cannot be read.
   */
  mark(): ClockMark | undefined {
    const wall = this.now();
    if (this.#suspended === undefined || this.#bootId === undefined) return undefined;
    return { wall, boot: wall - this.#offset + this.#suspended, bootId: this.#bootId };
  }

  /**
   * How far the wall clock stepped since `mark` was taken, beyond the time that passed by the
   * boot-time clock (ms; negative: back) — 0 within the tolerance of slewing; undefined when it
   * cannot be told (no mark or a malformed one, another boot, no boot-time clock here): then
   * only the wall clock spans the gap.
   */
  stepSince(mark: unknown): number | undefined {
    if (!isMark(mark) || this.#bootId === undefined || mark.bootId !== this.#bootId) {
      return undefined;
    }
    const now = this.mark();
    if (now === undefined) return undefined;
    const elapsed = now.boot - mark.boot;
    if (elapsed < 0) return undefined;
    const step = now.wall - mark.wall - elapsed;
    const tolerance = CLOCK_STEP_TOLERANCE_MS + elapsed * SLEW_PER_MS;
    return step > tolerance || step < -tolerance ? step : 0;
  }

  /**
   * Checks against the wall clock at once, not only once a second, when it is off this clock's
   * time by more than the tolerance: a step made since the last check is then reported (and
   * followed) now rather than at the next one. The state file's clock calls it at each commit
   * (`store/store-clock.ts`), whose records may already hold times read from the stepped wall
   * clock. One `Date.now()` and one `performance.now()`; the boot-time clock is read only when
   * the difference is that large.
   */
  checkNow(): void {
    const mono = performance.now();
    const drift = Date.now() - (mono + this.#offset);
    if (drift > CLOCK_STEP_TOLERANCE_MS || drift < -CLOCK_STEP_TOLERANCE_MS) this.#check(mono);
  }

  /** The current time (epoch ms). */
  now(): number {
    const mono = performance.now();
    if (mono >= this.#nextCheck) this.#check(mono);
    return mono + this.#offset;
  }

  #check(mono: number): void {
    const wall = Date.now();
    const drift = wall - (mono + this.#offset);
    const tolerance = CLOCK_STEP_TOLERANCE_MS + (mono - this.#lastCheck) * SLEW_PER_MS;
    this.#lastCheck = mono;
    this.#nextCheck = mono + CLOCK_CHECK_INTERVAL_MS;
    this.#offset += drift;
    // Time the machine spent suspended since the last check really passed. Read at every check,
    // not only when the wall clock moved too far: a suspend the wall clock hid (set back by as
    // much on waking) passed all the same, and a suspend already followed (a short one, within
    // the tolerance) must not explain a later step.
    const suspended = suspendedSoFar(this.#boot, mono);
    const slept =
      suspended !== undefined && this.#suspended !== undefined ? suspended - this.#suspended : 0;
    this.#suspended = suspended;
    // A short suspend is taken for a step (at most a minute's usage then leaves late):
    // /proc/uptime has 10 ms ticks, and a monotonic clock that is not the kernel's (a test's fake
    // one) differs from it by whatever real time passed meanwhile. With a suspend the wall clock
    // moved by the time slept plus the step, whichever way the step went.
    const step = slept >= MIN_SUSPEND_MS ? drift - slept : drift;
    if (step > tolerance || step < -tolerance)
      this.#onStep(Object.freeze({ stepMs: step, at: wall }));
  }
}

function suspendedSoFar(boot: BootClock, mono: number): number | undefined {
  const b = boot();
  return b === undefined ? undefined : b - mono;
}

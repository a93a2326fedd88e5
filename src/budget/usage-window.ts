/**
 * Usage windows: how much was used recently, in O(1) amortized time and fixed memory per scope.
 *
 * @module
 */

/** One hour, in milliseconds. */
export const HOUR_MS = 3_600_000;
/** One day, in milliseconds. */
export const DAY_MS = 86_400_000;

/** Serialized form of a {@link SlidingWindow}. */
export interface SlidingWindowState {
  kind: 'sliding';
  /** Length of the window (ms). */
  windowMs: number;
  /** Width of one bucket (ms). */
  bucketMs: number;
  /** Absolute index (`floor(epochMs / bucketMs)`) of the newest bucket. */
  head: number;
  /** Bucket amounts; bucket `i` holds absolute index `i mod length`. */
  buckets: number[];
}

/** Serialized form of a {@link UtcDayWindow}. */
export interface UtcDayWindowState {
  kind: 'utc-day';
  /** Days since the epoch (UTC) of `used`. */
  day: number;
  used: number;
  /**
   * Set when a wall-clock step moved the count across a midnight (see `UtcDayWindow.shift`):
   * `used` then holds usage of the day that was current before the step until this time (epoch
   * ms, before the end of `day`), when it falls to `tail`.
   */
  until?: number;
  /** With `until`: the usage recorded since the step, which stays counted in `day`. */
  tail?: number;
}

/** Serialized form of any usage window. */
export type UsageWindowState = SlidingWindowState | UtcDayWindowState;

/** A window of usage that forgets old amounts as time passes. Times are epoch milliseconds. */
export interface UsageWindow {
  readonly kind: UsageWindowState['kind'];
  /** Total usage still inside the window at `now`. */
  used(now: number): number;
  /** Records `amount` at `now`; returns the new total. */
  add(amount: number, now: number): number;
  /**
   * The earliest time at which at least `amount` (> 0) of today's usage will have left the
   * window, or null when even everything in the window is less than `amount`.
   */
  freedAt(amount: number, now: number): number | null;
  /** When usage next drops (the oldest amount leaves), or null when the window is empty. */
  nextDropAt(now: number): number | null;
  /**
   * The clock stepped by `deltaMs` (`now` is on the new clock): moves the usage held on the
   * time axis by as much, so it leaves the window after the elapsed time it had left — rounded
   * so that it never leaves early (at most one bucket late).
   */
  shift(deltaMs: number, now: number): void;
  /**
   * For a window read from a store: when it is ahead of `now` (the wall clock went back while
   * the process was down, or the writer's clock was ahead), moves it back to `now`, as if no
   * time had passed since it was written — nothing is forgiven, nothing held past its length.
   */
  clampTo(now: number): void;
  /**
   * Where new usage goes, as of the last `add`/`used`/`freedAt` (not advanced to now): the
   * absolute index of the newest bucket, or the UTC day. Only `add` to the same head raises
   * {@link headAmount}; everything else the window holds changes only when the head moves.
   */
  readonly head: number;
  /** The amount recorded in the head (bucket or day). */
  readonly headAmount: number;
  /**
   * Usage in the window as of its last move (`add`/`used`/`freedAt`/`shift`), not moved to any
   * other time: what a store reads without a clock of its own (the windows' times are the
   * BudgetManager's, see BudgetClock).
   */
  readonly total: number;
  toJSON(): UsageWindowState;
  /**
   * `JSON.stringify(this.toJSON())`, written directly (a durable store writes it per commit);
   * with `extra`, as if `extra` more had been added to the head (a persisted lease: see
   * ScopeUsage.toLeasedJSONText).
   */
  toJSONText(extra?: number): string;
}

/**
 * A sliding window kept as a ring of fixed-width buckets (no per-event storage).
 *
 * The ring holds `windowMs / bucketMs + 1` buckets, so an amount recorded at `t` leaves the
 * window between `t + windowMs` and `t + windowMs + bucketMs`: usage is never forgotten early
 * (no interval of `windowMs` can hold more than the limit), and at most one bucket late.
 * `add` and `used` are O(1) amortized: moving to a new bucket zeroes the buckets skipped
 * (at most the ring length, however long the gap) and re-sums the ring once.
 */
export class SlidingWindow implements UsageWindow {
  readonly kind = 'sliding' as const;
  readonly #windowMs: number;
  readonly #bucketMs: number;
  readonly #buckets: Float64Array;
  readonly #n: number;
  #head: number;
  #total = 0;
  /**
   * How much later (ms, in [0, bucketMs)) than the clock steps called for the usage sits after
   * the whole-bucket moves of {@link shift}; not stored (a restart starts at 0).
   */
  #lag = 0;

  constructor(windowMs: number, bucketMs: number, now: number) {
    if (!(bucketMs > 0) || windowMs % bucketMs !== 0) {
      throw new RangeError('windowMs must be a positive multiple of bucketMs');
    }
    this.#windowMs = windowMs;
    this.#bucketMs = bucketMs;
    this.#n = windowMs / bucketMs + 1;
    this.#buckets = new Float64Array(this.#n);
    this.#head = Math.floor(now / bucketMs);
  }

  /** Rebuilds a window from {@link toJSON} output. */
  static fromJSON(state: SlidingWindowState): SlidingWindow {
    const w = new SlidingWindow(state.windowMs, state.bucketMs, state.head * state.bucketMs);
    if (state.buckets.length !== w.#n) throw new RangeError('bucket count does not match window');
    let total = 0;
    for (let i = 0; i < w.#n; i++) {
      const v = storedAmount(state.buckets[i]);
      if (v === undefined) throw new RangeError('bucket amounts must be >= 0');
      w.#buckets[i] = v;
      total = Math.min(total + v, Number.MAX_VALUE);
    }
    w.#total = total;
    return w;
  }

  used(now: number): number {
    this.#advance(now);
    return this.#total;
  }

  add(amount: number, now: number): number {
    this.#advance(now);
    this.#buckets[mod(this.#head, this.#n)]! += amount;
    return (this.#total += amount);
  }

  freedAt(amount: number, now: number): number | null {
    this.#advance(now);
    let freed = 0;
    const oldest = this.#head - this.#n + 1;
    for (let b = oldest; b <= this.#head; b++) {
      freed += this.#buckets[mod(b, this.#n)]!;
      if (freed > 0 && freed >= amount) return (b + this.#n) * this.#bucketMs;
    }
    return null;
  }

  nextDropAt(now: number): number | null {
    return this.used(now) > 0 ? this.freedAt(Number.MIN_VALUE, now) : null;
  }

  shift(deltaMs: number): void {
    if (!Number.isFinite(deltaMs)) return;
    // Whole buckets, rounded up from what the steps so far call for: the rounding of one step
    // is taken off the next, so steps smaller than a bucket (a clock set right a few seconds
    // every minute) do not each move the usage a bucket later — it stays at most one late.
    const k = Math.ceil((deltaMs - this.#lag) / this.#bucketMs);
    this.#lag += k * this.#bucketMs - deltaMs;
    if (k === 0) return;
    const n = this.#n;
    const old = Float64Array.from(this.#buckets);
    for (let b = this.#head - n + 1; b <= this.#head; b++) {
      this.#buckets[mod(b + k, n)] = old[mod(b, n)]!;
    }
    this.#head += k;
  }

  clampTo(now: number): void {
    const idx = Math.floor(now / this.#bucketMs);
    if (idx < this.#head) this.shift((idx - this.#head) * this.#bucketMs);
  }

  get head(): number {
    return this.#head;
  }

  get headAmount(): number {
    return this.#buckets[mod(this.#head, this.#n)]!;
  }

  get total(): number {
    return this.#total;
  }

  toJSON(): SlidingWindowState {
    // A plain loop: `Array.from` walks a typed array through its iterator, and a budget's
    // windows are serialized on every commit (after each tool call's settle).
    const n = this.#n;
    const buckets = new Array<number>(n);
    for (let i = 0; i < n; i++) buckets[i] = this.#buckets[i]!;
    return {
      kind: 'sliding',
      windowMs: this.#windowMs,
      bucketMs: this.#bucketMs,
      head: this.#head,
      buckets,
    };
  }

  toJSONText(extra = 0): string {
    // JSON.stringify of the bucket array was most of a budget commit's serialization (the
    // generic path for a holey array of doubles). Most buckets are 0: a run of them is one
    // remembered string, so a window of a few used buckets is a handful of concatenations.
    const b = this.#buckets;
    const h = mod(this.#head, this.#n);
    let text = `{"kind":"sliding","windowMs":${jsonNumber(this.#windowMs)},"bucketMs":${jsonNumber(this.#bucketMs)},"head":${jsonNumber(this.#head)},"buckets":[`;
    const first = h === 0 ? b[0]! + extra : b[0]!;
    text += first === 0 ? '0' : jsonNumber(first);
    let zeros = 0;
    for (let i = 1; i < b.length; i++) {
      const v = i === h ? b[i]! + extra : b[i]!;
      if (v === 0) {
        zeros++;
        continue;
      }
      if (zeros > 0) text += zeroRun(zeros);
      zeros = 0;
      text += ',' + jsonNumber(v);
    }
    if (zeros > 0) text += zeroRun(zeros);
    return text + ']}';
  }

  #advance(now: number): void {
    const idx = Math.floor(now / this.#bucketMs);
    // A clock that steps back keeps adding to the newest bucket rather than rewriting history.
    if (idx <= this.#head) return;
    const n = this.#n;
    const buckets = this.#buckets;
    if (idx - this.#head >= n) {
      buckets.fill(0);
      this.#total = 0;
    } else {
      for (let b = this.#head + 1; b <= idx; b++) buckets[mod(b, n)] = 0;
      // Re-summing (once per bucket step, not per record) keeps float error from accumulating.
      let t = 0;
      for (let i = 0; i < n; i++) t += buckets[i]!;
      this.#total = t;
    }
    this.#head = idx;
  }
}

/**
 * Usage since 00:00 UTC today: one counter that resets when the UTC date changes.
 *
 * After a wall-clock step that moved the count across a midnight (see {@link shift}) the window
 * holds two: the count of the day that was current before the step, kept until that day's
 * elapsed length is over (`until`), and the usage since the step (`tail`), which is all that
 * stays counted after `until`, until the end of the (new) day.
 */
export class UtcDayWindow implements UsageWindow {
  readonly kind = 'utc-day' as const;
  #day: number;
  #used = 0;
  /** 0: no step extension; else see {@link UtcDayWindowState.until}. */
  #until = 0;
  #tail = 0;

  constructor(now: number) {
    this.#day = Math.floor(now / DAY_MS);
  }

  /** Rebuilds a window from {@link toJSON} output. */
  static fromJSON(state: UtcDayWindowState): UtcDayWindow {
    const w = new UtcDayWindow(state.day * DAY_MS);
    const used = storedAmount(state.used);
    if (used === undefined) throw new RangeError('used must be >= 0');
    w.#used = used;
    if (state.until !== undefined) {
      const tail = storedAmount(state.tail ?? 0);
      if (typeof state.until !== 'number' || !Number.isFinite(state.until) || tail === undefined) {
        throw new RangeError('until must be a time and tail >= 0');
      }
      w.#until = state.until;
      w.#tail = Math.min(tail, used);
    }
    return w;
  }

  used(now: number): number {
    this.#advance(now);
    return this.#used;
  }

  add(amount: number, now: number): number {
    this.#advance(now);
    if (this.#until !== 0) this.#tail += amount;
    return (this.#used += amount);
  }

  freedAt(amount: number, now: number): number | null {
    this.#advance(now);
    if (!(this.#used > 0 && this.#used >= amount)) return null;
    return this.#until !== 0 && this.#used - this.#tail >= amount
      ? this.#until
      : (this.#day + 1) * DAY_MS;
  }

  nextDropAt(now: number): number | null {
    this.#advance(now);
    if (this.#used <= 0) return null;
    return this.#until !== 0 && this.#used > this.#tail ? this.#until : (this.#day + 1) * DAY_MS;
  }

  /**
   * The count covers the elapsed time from its start to `end` (the end of its day, or `until`);
   * moved by `deltaMs`, both may fall in another UTC day than the one `now` is in. When the
   * moved start is in today (a step back, typically), everything counted happened today: the
   * count is today's. Otherwise it may straddle midnight: the count is kept until the moved end
   * (less than a day from now) and only what is recorded from now on stays counted after that.
   */
  shift(deltaMs: number, now: number): void {
    const today = Math.floor(now / DAY_MS);
    if (!Number.isFinite(deltaMs)) return;
    if (this.#used <= 0) {
      this.#day = today;
      this.#until = this.#tail = 0;
      return;
    }
    const end = (this.#until !== 0 ? this.#until : (this.#day + 1) * DAY_MS) + deltaMs;
    const start = end - DAY_MS;
    if (start >= today * DAY_MS) {
      this.#until = this.#tail = 0;
    } else if (end <= now) {
      this.#used = this.#until !== 0 ? this.#tail : 0;
      this.#until = this.#tail = 0;
    } else {
      if (this.#until === 0) this.#tail = 0;
      this.#until = end;
    }
    this.#day = today;
  }

  clampTo(now: number): void {
    const today = Math.floor(now / DAY_MS);
    if (today >= this.#day) return;
    // Ahead of now: all of it is today's (kept until tonight's midnight). Not `shift` by whole
    // days: a count a step extended (`until`, within its day) would move to before now and lose
    // the part that was to last until then.
    this.#day = today;
    this.#until = this.#tail = 0;
  }

  get head(): number {
    return this.#day;
  }

  get headAmount(): number {
    return this.#used;
  }

  get total(): number {
    return this.#used;
  }

  toJSON(): UtcDayWindowState {
    return this.#until === 0
      ? { kind: 'utc-day', day: this.#day, used: this.#used }
      : { kind: 'utc-day', day: this.#day, used: this.#used, until: this.#until, tail: this.#tail };
  }

  toJSONText(extra = 0): string {
    const text = `{"kind":"utc-day","day":${jsonNumber(this.#day)},"used":${jsonNumber(this.#used + extra)}`;
    // A lease is a ceiling of what was recorded since: it covers the tail too.
    return this.#until === 0
      ? text + '}'
      : `${text},"until":${jsonNumber(this.#until)},"tail":${jsonNumber(this.#tail + extra)}}`;
  }

  #advance(now: number): void {
    if (this.#until !== 0 && now >= this.#until) {
      this.#used = this.#tail;
      this.#until = this.#tail = 0;
    }
    const day = Math.floor(now / DAY_MS);
    if (day > this.#day) {
      this.#day = day;
      this.#used = 0;
      this.#until = this.#tail = 0;
    }
  }
}

/** Rebuilds any window from its serialized state. */
export function windowFromJSON(state: UsageWindowState): UsageWindow {
  return state.kind === 'sliding' ? SlidingWindow.fromJSON(state) : UtcDayWindow.fromJSON(state);
}

const zeroRuns: string[] = [];

/** `,0` repeated `n` times (remembered: windows have a fixed number of buckets). */
function zeroRun(n: number): string {
  return (zeroRuns[n] ??= ',0'.repeat(n));
}

/**
 * An amount as read from a store: a finite non-negative number as it is; `null` — what
 * {@link jsonNumber} writes for a count that overflowed (state files written before amounts were
 * capped at `MAX_USAGE_AMOUNT`) — as the largest number, so the scope stays exhausted until that
 * usage leaves its window rather than the whole state being unreadable; anything else
 * `undefined`.
 */
function storedAmount(v: unknown): number | undefined {
  if (v === null) return Number.MAX_VALUE;
  return typeof v === 'number' && v >= 0 && Number.isFinite(v) ? v : undefined;
}

/** `JSON.stringify` of a number: its shortest form, `null` when not finite (as `-0` → `0`). */
export function jsonNumber(n: number): string {
  return Number.isFinite(n) ? String(n) : 'null';
}

function mod(a: number, n: number): number {
  return ((a % n) + n) % n;
}

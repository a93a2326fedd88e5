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
   * Where new usage goes, as of the last `add`/`used`/`freedAt` (not advanced to now): the
   * absolute index of the newest bucket, or the UTC day. Only `add` to the same head raises
   * {@link headAmount}; everything else the window holds changes only when the head moves.
   */
  readonly head: number;
  /** The amount recorded in the head (bucket or day). */
  readonly headAmount: number;
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

  get head(): number {
    return this.#head;
  }

  get headAmount(): number {
    return this.#buckets[mod(this.#head, this.#n)]!;
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

/** Usage since 00:00 UTC today: one counter that resets when the UTC date changes. */
export class UtcDayWindow implements UsageWindow {
  readonly kind = 'utc-day' as const;
  #day: number;
  #used = 0;

  constructor(now: number) {
    this.#day = Math.floor(now / DAY_MS);
  }

  /** Rebuilds a window from {@link toJSON} output. */
  static fromJSON(state: UtcDayWindowState): UtcDayWindow {
    const w = new UtcDayWindow(state.day * DAY_MS);
    const used = storedAmount(state.used);
    if (used === undefined) throw new RangeError('used must be >= 0');
    w.#used = used;
    return w;
  }

  used(now: number): number {
    this.#advance(now);
    return this.#used;
  }

  add(amount: number, now: number): number {
    this.#advance(now);
    return (this.#used += amount);
  }

  freedAt(amount: number, now: number): number | null {
    this.#advance(now);
    return this.#used > 0 && this.#used >= amount ? (this.#day + 1) * DAY_MS : null;
  }

  nextDropAt(now: number): number | null {
    this.#advance(now);
    return this.#used > 0 ? (this.#day + 1) * DAY_MS : null;
  }

  get head(): number {
    return this.#day;
  }

  get headAmount(): number {
    return this.#used;
  }

  toJSON(): UtcDayWindowState {
    return { kind: 'utc-day', day: this.#day, used: this.#used };
  }

  toJSONText(extra = 0): string {
    return `{"kind":"utc-day","day":${jsonNumber(this.#day)},"used":${jsonNumber(this.#used + extra)}}`;
  }

  #advance(now: number): void {
    const day = Math.floor(now / DAY_MS);
    if (day > this.#day) {
      this.#day = day;
      this.#used = 0;
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

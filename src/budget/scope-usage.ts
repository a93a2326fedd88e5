/**
 * The live usage of one budget scope: its windows, in-flight reservations and alert state.
 * Internal to the BudgetManager (not exported from the package).
 *
 * @module
 */
import {
  parseBudgetConfig,
  type BudgetConfig,
  type ResolvedBudgetConfig,
} from './budget-config.js';
import type { BudgetScopeSnapshot, BudgetStateSource } from './budget-store.js';
import type { ClockMark } from './budget-clock.js';
import {
  DAY_MS,
  HOUR_MS,
  SlidingWindow,
  UtcDayWindow,
  windowFromJSON,
  type UsageWindow,
} from './usage-window.js';

/** Width of a token bucket: the hour window is 60 one-minute buckets (+1, see SlidingWindow). */
export const TOKEN_BUCKET_MS = 60_000;
/** Width of a cost bucket: the sliding day is 96 fifteen-minute buckets (+1). */
export const COST_BUCKET_MS = 900_000;

/** Which limit. */
export type BudgetLimit = 'tokens' | 'cost';

/** Why a call does not fit one scope. */
export interface BudgetShortfall {
  /** `agent:<id>`, `pool:<id>` or `fabric`. */
  readonly scope: string;
  readonly limit: BudgetLimit;
  /** Usage inside the window (settled and recorded). */
  readonly used: number;
  /** Held by in-flight reservations. */
  readonly reserved: number;
  /** What the call asked for. */
  readonly requested: number;
  readonly max: number;
  /**
   * When enough usage will have left the window for this call to fit (epoch ms), or null when
   * that cannot be known from the window (the request alone exceeds the limit, or in-flight
   * reservations block it).
   */
  readonly retryAt: number | null;
}

/** A threshold crossing, reported by `warning` and `exhausted` events. */
export interface BudgetAlert {
  readonly scope: string;
  readonly limit: BudgetLimit;
  readonly used: number;
  readonly max: number;
  readonly percentUsed: number;
  /** Epoch ms. */
  readonly at: number;
}

/** Emits an alert; `kind` is the event name. */
export type AlertSink = (kind: 'warning' | 'exhausted', alert: BudgetAlert) => void;

// Float sums of costs (0.1 + 0.2) must not turn an exact fit into a refusal.
const TOLERANCE = 1e-9;

function newCostWindow(kind: 'sliding' | 'utc-day', now: number): UsageWindow {
  return kind === 'sliding'
    ? new SlidingWindow(DAY_MS, COST_BUCKET_MS, now)
    : new UtcDayWindow(now);
}

/**
 * What the last leased write of a scope persisted (see {@link ScopeUsage.toLeasedJSONText}): the
 * state it was written from and the ceilings its windows' heads were written with.
 */
interface PersistedLease {
  readonly config: BudgetConfig | null;
  readonly cost: UsageWindow;
  readonly alerts: number;
  readonly tokensHead: number;
  readonly tokensCeiling: number;
  readonly costHead: number;
  readonly costCeiling: number;
  /** Written without a lease (`percent` 0): the ceilings are the exact state, reservations in. */
  readonly exact: boolean;
}

/** The clock a scope marks what it writes with, and reads the step since a mark by. */
export interface ScopeClock {
  mark(): ClockMark | undefined;
  stepSince(mark: unknown): number | undefined;
}

/** `,"clock":{…}` as `JSON.stringify` writes the mark, or nothing without one. */
function markText(mark: ClockMark | undefined): string {
  if (mark === undefined) return '';
  return `,"clock":{"wall":${JSON.stringify(mark.wall)},"boot":${JSON.stringify(mark.boot)},"bootId":${JSON.stringify(mark.bootId)}}`;
}

/** Live state of one scope. Fields are public for the manager's hot path. */
export class ScopeUsage implements BudgetStateSource {
  readonly scope: string;
  config: ResolvedBudgetConfig | undefined;
  rawConfig: BudgetConfig | null = null;
  readonly tokens: UsageWindow;
  cost: UsageWindow;
  reservedTokens = 0;
  reservedCost = 0;
  /**
   * How many reservations `reservedTokens`/`reservedCost` hold. When the last is given back the
   * sums are set to exactly 0: adding and taking back fractional amounts in another order leaves
   * float drift (a scope with nothing in flight read `costReserved` -4e-16).
   */
  reservedCount = 0;
  /** Of the reservations, those made with `reservationsAside` (a check made so counts them). */
  asideTokens = 0;
  asideCost = 0;
  /** How many reservations `asideTokens`/`asideCost` hold (reset as `reservedCount`). */
  asideCount = 0;
  tokensWarned = false;
  tokensExhausted = false;
  costWarned = false;
  costExhausted = false;
  /**
   * Dropped from its manager (an agent gone for good, a pool deleted): usage settling late is
   * not recorded.
   */
  forgotten = false;
  /** Usage at which the warning threshold is reached (Infinity without a limit). */
  #tokensWarnAt = Number.POSITIVE_INFINITY;
  #costWarnAt = Number.POSITIVE_INFINITY;
  /** The last leased write a store made of this scope (undefined: none). */
  #lease: PersistedLease | undefined;
  /** Marks what is written with the clocks' readings (see `ClockMark`). */
  readonly #clock: ScopeClock | undefined;

  /**
   * @param shiftMs for a scope read from `snapshot`: how far the clock has stepped since this
   *   process started (see BudgetClock); its windows are moved by as much, then back to `now`
   *   when they are ahead of it (see `UsageWindow.clampTo`).
   */
  constructor(
    scope: string,
    now: number,
    snapshot?: BudgetScopeSnapshot,
    shiftMs = 0,
    clock?: ScopeClock,
  ) {
    this.scope = scope;
    this.#clock = clock;
    if (snapshot === undefined) {
      this.tokens = new SlidingWindow(HOUR_MS, TOKEN_BUCKET_MS, now);
      this.cost = newCostWindow('sliding', now);
      return;
    }
    this.tokens = windowFromJSON(snapshot.tokens);
    this.cost = windowFromJSON(snapshot.cost);
    // Written with a clock mark on this boot: the step since it was written, made while this
    // process ran or while none did (a clock set ahead while the sidecar was down would
    // otherwise pass for time and free the windows early).
    const sinceMark = clock?.stepSince(snapshot.clock);
    if (sinceMark !== undefined) shiftMs = sinceMark;
    if (shiftMs !== 0) this.shift(shiftMs, now);
    this.tokens.clampTo(now);
    this.cost.clampTo(now);
    if (snapshot.config !== null) this.setConfig(snapshot.config, now);
    this.tokensWarned = snapshot.alerts.tokensWarned;
    this.tokensExhausted = snapshot.alerts.tokensExhausted;
    this.costWarned = snapshot.alerts.costWarned;
    this.costExhausted = snapshot.alerts.costExhausted;
  }

  /**
   * Sets (or with null clears) the limits. Switching the cost window kind carries the usage
   * currently counted over into the new window, so a switch never forgives usage.
   */
  setConfig(raw: BudgetConfig | null, now: number, field = 'config'): void {
    if (raw === null) {
      this.config = undefined;
      this.rawConfig = null;
      this.#tokensWarnAt = this.#costWarnAt = Number.POSITIVE_INFINITY;
      return;
    }
    const resolved = parseBudgetConfig(raw, field);
    if (resolved.costWindow !== this.cost.kind) {
      const carried = this.cost.used(now);
      this.cost = newCostWindow(resolved.costWindow, now);
      if (carried > 0) this.cost.add(carried, now);
    }
    this.config = resolved;
    this.rawConfig = Object.freeze({ ...raw });
    this.#tokensWarnAt = (resolved.maxTokensPerHour * resolved.warnAtPercent) / 100;
    this.#costWarnAt = (resolved.maxCostPerDay * resolved.warnAtPercent) / 100;
  }

  /** The clock stepped by `deltaMs`: moves the usage in both windows by as much. */
  shift(deltaMs: number, now: number): void {
    this.tokens.shift(deltaMs, now);
    this.cost.shift(deltaMs, now);
    // What the store holds is not the moved windows, even where their heads stayed put (a UTC
    // day given an `until`): the next `changed` writes them.
    this.#lease = undefined;
  }

  /**
   * Null when `tokens`/`cost` fit on top of usage and reservations (with `reservationsAside`, of
   * the usage and the reservations made that way alone: whether the scope is already at or over
   * a limit for them); else why not.
   */
  shortfall(
    tokens: number,
    cost: number,
    now: number,
    reservationsAside = false,
  ): BudgetShortfall | null {
    const c = this.config;
    if (c === undefined) return null;
    if (c.maxTokensPerHour !== Number.POSITIVE_INFINITY) {
      const used = this.tokens.used(now);
      const reserved = reservationsAside ? this.asideTokens : this.reservedTokens;
      if (!fits(used + reserved, tokens, c.maxTokensPerHour)) {
        return this.#shortfall('tokens', used, reserved, tokens, c.maxTokensPerHour, now);
      }
    }
    if (c.maxCostPerDay !== Number.POSITIVE_INFINITY) {
      const used = this.cost.used(now);
      const reserved = reservationsAside ? this.asideCost : this.reservedCost;
      if (!fits(used + reserved, cost, c.maxCostPerDay)) {
        return this.#shortfall('cost', used, reserved, cost, c.maxCostPerDay, now);
      }
    }
    return null;
  }

  /**
   * True when `tokens`/`cost` fit on top of the usage counted in the windows alone, in-flight
   * reservations aside: whether waiting for those to settle can let the call pass.
   */
  fitsUnreserved(tokens: number, cost: number, now: number): boolean {
    const c = this.config;
    if (c === undefined) return true;
    return (
      (c.maxTokensPerHour === Number.POSITIVE_INFINITY ||
        fits(this.tokens.used(now), tokens, c.maxTokensPerHour)) &&
      (c.maxCostPerDay === Number.POSITIVE_INFINITY ||
        fits(this.cost.used(now), cost, c.maxCostPerDay))
    );
  }

  /**
   * Null when `tokens` more would stay within the token limit on top of the usage counted (not
   * the reservations: this is the check of a result about to be delivered); else why not, with
   * `retryAt` when enough usage will have left the window for them (null when `tokens` alone
   * exceed the limit). Unlike {@link shortfall}, an exhausted scope still takes 0 tokens.
   */
  deliveryShortfall(tokens: number, now: number): BudgetShortfall | null {
    const max = this.config?.maxTokensPerHour ?? Number.POSITIVE_INFINITY;
    if (max === Number.POSITIVE_INFINITY) return null;
    const used = this.tokens.used(now);
    if (used + tokens <= max + TOLERANCE) return null;
    const retryAt = tokens > max ? null : this.tokens.freedAt(used + tokens - max, now);
    return Object.freeze({
      scope: this.scope,
      limit: 'tokens' as const,
      used,
      reserved: this.reservedTokens,
      requested: tokens,
      max,
      retryAt,
    });
  }

  /**
   * When a call refused with `short` (a shortfall of this scope) may fit: its `retryAt`, else —
   * for a request within the limit that in-flight reservations block — when enough usage leaves
   * the window for the request alone, or `fallback` when the window already has room for it.
   * Null when the request alone exceeds the limit.
   */
  retryHint(short: BudgetShortfall, now: number, fallback: number): number | null {
    if (short.retryAt !== null) return short.retryAt;
    if (short.requested > short.max + TOLERANCE) return null;
    const need = short.used + short.requested - short.max;
    if (need <= TOLERANCE) return fallback;
    return (short.limit === 'tokens' ? this.tokens : this.cost).freedAt(need, now) ?? fallback;
  }

  /** Records usage and fires threshold alerts. */
  record(tokens: number, cost: number, now: number, emit: AlertSink): void {
    if (tokens > 0) {
      const after = this.tokens.add(tokens, now);
      // Below the warning line with nothing to re-arm: the common case, no alert work.
      if (
        this.config !== undefined &&
        (after >= this.#tokensWarnAt || this.tokensWarned || this.tokensExhausted)
      ) {
        this.#alerts('tokens', after - tokens, after, this.config!.maxTokensPerHour, now, emit);
      }
    }
    if (cost > 0) {
      const after = this.cost.add(cost, now);
      if (
        this.config !== undefined &&
        (after >= this.#costWarnAt || this.costWarned || this.costExhausted)
      ) {
        this.#alerts('cost', after - cost, after, this.config!.maxCostPerDay, now, emit);
      }
    }
  }

  toJSON(): BudgetScopeSnapshot {
    // The mark first (see `#markFirst`).
    const mark = this.#markJSON();
    return {
      version: 1,
      config: this.rawConfig === null ? null : { ...this.rawConfig },
      tokens: this.tokens.toJSON(),
      cost: this.cost.toJSON(),
      alerts: {
        tokensWarned: this.tokensWarned,
        tokensExhausted: this.tokensExhausted,
        costWarned: this.costWarned,
        costExhausted: this.costExhausted,
      },
      ...mark,
    };
  }

  #markJSON(): { clock?: ClockMark } {
    const mark = this.#clock?.mark();
    return mark === undefined ? {} : { clock: mark };
  }

  /**
   * The scope's JSON as {@link toJSONText}, with a lease added to the head of each window: the
   * newest token bucket holds the tokens of the reservations in flight and `percent` % of
   * `maxTokensPerHour` more than was used (the lease at most up to the limit; without a token
   * limit, no reservations and `percent` % of the tokens used in the window), the cost window
   * likewise.
   * The persisted usage is then a ceiling: while {@link leaseCovers} holds, usage recorded
   * since is already inside what the store holds, and a crash can only over-count (by at most
   * the lease), never under-count. `percent` 0 writes the exact state (reservations in flight
   * counted as used: see {@link reservationCovered}). Only a store calls this,
   * for the text it commits: this scope remembers what was written.
   */
  toLeasedJSONText(percent: number): string {
    const mark = this.#markFirst();
    const c = this.config;
    const tokensLease = leaseOf(c?.maxTokensPerHour, this.tokens, this.#heldTokens(), percent);
    const costLease = leaseOf(c?.maxCostPerDay, this.cost, this.#heldCost(), percent);
    const text = this.#text(tokensLease, costLease, mark);
    // Remembered once the text exists (a throw leaves nothing claimed). The ceilings are computed
    // exactly as the windows write them (head amount + lease), and JSON numbers read back to the
    // same doubles.
    this.#lease = {
      config: this.rawConfig,
      cost: this.cost,
      alerts: this.#alertBits(),
      tokensHead: this.tokens.head,
      tokensCeiling: this.tokens.headAmount + tokensLease,
      costHead: this.cost.head,
      costCeiling: this.cost.headAmount + costLease,
      exact: percent === 0,
    };
    return text;
  }

  /**
   * Tokens of the in-flight reservations a leased write covers: those of a scope with a token
   * limit (a crash must not let the calls they guard, already forwarded, be paid for again);
   * none without one (nothing to overspend).
   */
  #heldTokens(): number {
    const max = this.config?.maxTokensPerHour;
    return max === undefined || max === Number.POSITIVE_INFINITY ? 0 : this.reservedTokens;
  }

  /** Cost of the in-flight reservations a leased write covers (see {@link #heldTokens}). */
  #heldCost(): number {
    const max = this.config?.maxCostPerDay;
    return max === undefined || max === Number.POSITIVE_INFINITY ? 0 : this.reservedCost;
  }

  /**
   * True when the last {@link toLeasedJSONText} covers the usage and the in-flight reservations
   * of every window with a limit: what the store holds counts every call already reserved, so a
   * crash cannot give its cost back. A scope without limits is always covered (nothing to
   * overspend). A store commits the scope before a reservation that is not covered is used.
   */
  reservationCovered(): boolean {
    const c = this.config;
    if (c === undefined) return true;
    const tokensMax = c.maxTokensPerHour !== Number.POSITIVE_INFINITY;
    const costMax = c.maxCostPerDay !== Number.POSITIVE_INFINITY;
    if (!tokensMax && !costMax) return true;
    const l = this.#lease;
    return (
      l !== undefined &&
      (!tokensMax ||
        (this.tokens.head === l.tokensHead &&
          this.tokens.headAmount + this.reservedTokens <= l.tokensCeiling)) &&
      (!costMax ||
        (l.cost === this.cost &&
          this.cost.head === l.costHead &&
          this.cost.headAmount + this.reservedCost <= l.costCeiling))
    );
  }

  /**
   * True when the last {@link toLeasedJSONText} still covers the live state: same limits, same
   * alert flags, the same window heads (usage only went into the buckets the lease was added
   * to) and no more usage in them — plus the reservations in flight, in a window with a limit —
   * than their ceilings (for an exact write, just as much). A store skips the write then.
   */
  leaseCovers(): boolean {
    const l = this.#lease;
    if (l === undefined) return false;
    const tokens = this.tokens.headAmount + this.#heldTokens();
    const cost = this.cost.headAmount + this.#heldCost();
    return (
      tokens <= l.tokensCeiling &&
      cost <= l.costCeiling &&
      // Written exact: covered only while it still is (a call settled for less than its
      // estimate is written down to what it used).
      (!l.exact || (tokens >= l.tokensCeiling && cost >= l.costCeiling)) &&
      this.tokens.head === l.tokensHead &&
      this.cost.head === l.costHead &&
      l.cost === this.cost &&
      l.config === this.rawConfig &&
      l.alerts === this.#alertBits()
    );
  }

  #alertBits(): number {
    return (
      (this.tokensWarned ? 1 : 0) |
      (this.tokensExhausted ? 2 : 0) |
      (this.costWarned ? 4 : 0) |
      (this.costExhausted ? 8 : 0)
    );
  }

  /**
   * `JSON.stringify(this.toJSON())`, written directly: a durable store serializes the scope on
   * every commit (each batch of settled tool calls), and the generic stringify of the windows'
   * bucket arrays was most of that commit's CPU.
   */
  toJSONText(): string {
    return this.#text(0, 0, this.#markFirst());
  }

  /**
   * The mark's JSON text, read before anything else of what is written: reading the clock for it
   * is also the clock's check against the wall clock (once a second, at the next reading), and a
   * step it finds moves every window (the manager's `clockStep`) — this scope's too. Read after
   * the windows were serialized (a commit long after the clock was last read: the close that
   * writes leased scopes exact after an idle spell, a retry after failed commits), it paired
   * windows from before the step with a mark from after it: the next start saw no step since the
   * mark and took the step for time that passed, freeing an hourly budget spent an hour before a
   * two-hour step ahead.
   */
  #markFirst(): string {
    return markText(this.#clock?.mark());
  }

  #text(tokensLease: number, costLease: number, mark: string): string {
    const config = this.rawConfig === null ? 'null' : JSON.stringify(this.rawConfig);
    return (
      `{"version":1,"config":${config},"tokens":${this.tokens.toJSONText(tokensLease)},"cost":${this.cost.toJSONText(costLease)}` +
      `,"alerts":{"tokensWarned":${this.tokensWarned},"tokensExhausted":${this.tokensExhausted}` +
      `,"costWarned":${this.costWarned},"costExhausted":${this.costExhausted}}` +
      mark +
      '}'
    );
  }

  #alerts(
    limit: BudgetLimit,
    before: number,
    after: number,
    max: number,
    now: number,
    emit: AlertSink,
  ): void {
    if (max === Number.POSITIVE_INFINITY) return;
    const warnAt = this.config!.warnAtPercent;
    const beforePct = (before / max) * 100;
    const pct = (after / max) * 100;
    const isTokens = limit === 'tokens';
    // Re-arm once usage has fallen back below a threshold (the window rolled, or a new UTC day).
    let warned = isTokens ? this.tokensWarned : this.costWarned;
    let exhausted = isTokens ? this.tokensExhausted : this.costExhausted;
    if (beforePct < warnAt) warned = false;
    if (beforePct < 100) exhausted = false;
    const fireWarning = !warned && pct >= warnAt;
    const fireExhausted = !exhausted && pct >= 100 - TOLERANCE;
    if (fireWarning) warned = true;
    if (fireExhausted) exhausted = true;
    if (isTokens) {
      this.tokensWarned = warned;
      this.tokensExhausted = exhausted;
    } else {
      this.costWarned = warned;
      this.costExhausted = exhausted;
    }
    if (fireWarning || fireExhausted) {
      const alert: BudgetAlert = Object.freeze({
        scope: this.scope,
        limit,
        used: after,
        max,
        percentUsed: pct,
        at: now,
      });
      if (fireWarning) emit('warning', alert);
      if (fireExhausted) emit('exhausted', alert);
    }
  }

  #shortfall(
    limit: BudgetLimit,
    used: number,
    reserved: number,
    requested: number,
    max: number,
    now: number,
  ): BudgetShortfall {
    const window = limit === 'tokens' ? this.tokens : this.cost;
    // Usage that must leave the window; at least a little when the scope is exactly exhausted.
    const need = Math.max(used + reserved + requested - max, Number.MIN_VALUE);
    const retryAt =
      requested > max || reserved + requested > max + TOLERANCE ? null : window.freedAt(need, now);
    return Object.freeze({ scope: this.scope, limit, used, reserved, requested, max, retryAt });
  }
}

/**
 * What a leased write adds to the head of one window: for a window with a limit, the in-flight
 * `reserved` (written as used, so a crash counts the calls already forwarded) plus `percent` % of
 * the limit, but the lease never past the limit (a crash then never leaves a scope looking more
 * exhausted than its usage and reservations made it: near the limit the lease shrinks, down to
 * an exact write at it); or, for a window without a limit (a scope that only tracks usage),
 * `percent` % of the usage in the window, so the over-count a crash can leave stays that share of
 * what was really used.
 */
function leaseOf(
  max: number | undefined,
  window: UsageWindow,
  reserved: number,
  percent: number,
): number {
  // As of the window's last move, not moved to the store's time: the windows are on the budget
  // manager's clock, and moving one on the wall clock's Date.now() in the second after a step
  // (before the manager noticed it) would drop the usage the step should keep.
  const used = window.total;
  if (max === undefined || max === Number.POSITIVE_INFINITY) return (used * percent) / 100;
  // The reservations in flight are written as used (see `reservationCovered`), the lease on top.
  if (percent === 0) return reserved;
  const lease = (max * percent) / 100;
  const room = max - used - reserved;
  return reserved + (room <= 0 ? 0 : lease < room ? lease : room);
}

/** A call fits when the total stays within the limit and the scope is not already exhausted. */
function fits(committed: number, requested: number, max: number): boolean {
  return committed + requested <= max + TOLERANCE && committed < max - TOLERANCE;
}

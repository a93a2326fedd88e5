/**
 * The BudgetManager: token and cost limits per agent, per pool and fabric-wide, enforced by
 * reserving an estimate before a call and settling the actual usage after it.
 *
 * @module
 */
import {
  BudgetExceededError,
  ConfigError,
  InvalidArgumentError,
  InvalidUsageError,
} from '../errors.js';
import { TypedEmitter } from '../events.js';
import { BudgetClock, readBootId, type BootClock, type BudgetClockStep } from './budget-clock.js';
import type { BudgetConfig } from './budget-config.js';
import { InMemoryBudgetStore, type BudgetStore } from './budget-store.js';
import { ScopeUsage, type BudgetAlert, type BudgetShortfall } from './scope-usage.js';

/** Tokens and/or cost of one call. A missing field counts as 0. */
export interface UsageAmount {
  tokens?: number;
  cost?: number;
}

/** Which pool a call runs in (its budget must fit too). */
export interface BudgetCallOptions {
  poolId?: string | undefined;
}

/** Options of {@link BudgetManager.reserve} and {@link BudgetManager.check}. */
export interface ReserveOptions extends BudgetCallOptions {
  /**
   * Hold at most the smallest token limit among the call's scopes, so a token estimate that is
   * a guess (a conservative prior larger than a small limit) cannot make a call impossible on an
   * idle budget. Meant for callers that settle with {@link SettleOptions.requireFit}, which
   * bounds what is charged whatever the estimate was.
   * @default false
   */
  clampTokens?: boolean | undefined;
  /**
   * Hold nothing and refuse nothing, not even on an exhausted scope: for a call whose usage
   * reaches the budgets another way — a usage report, counted by {@link BudgetManager.recordUsage},
   * which is never refused. Settling its reservation still charges what it is settled with.
   * @default false
   */
  unmetered?: boolean | undefined;
  /**
   * Leave the other in-flight reservations aside: fit the estimate on top of the usage counted
   * and of the reservations made with this option alone — whether a scope is already at or over
   * a limit for it, not whether it fits beside every call in flight (for work done inside a call
   * that holds a reservation of its own, which may fill the scope: an upstream's sampling
   * request). Such a reservation is still held against every other check and reservation.
   * @default false
   */
  reservationsAside?: boolean | undefined;
}

/** Options of {@link BudgetManager.check}. */
export type CheckOptions = ReserveOptions;

/** Options of {@link BudgetManager.reserveWhenFree}. */
export interface ReserveWhenFreeOptions extends ReserveOptions {
  /**
   * Longest wait, in ms, for in-flight reservations to settle when only they keep the call from
   * fitting. 0 decides at once, like {@link BudgetManager.reserve}.
   */
  waitMs: number;
  /** Ends the wait: the promise rejects with `signal.reason` and nothing stays reserved. */
  signal?: AbortSignal | undefined;
}

/** Options of {@link BudgetManager.settle}. */
export interface SettleOptions {
  /**
   * Charge the actual tokens only when they fit every scope's token limit on top of the usage
   * already counted (in-flight reservations of other calls aside). When they do not, only the
   * cost is charged and `settle` returns the shortfall: the caller must then withhold what the
   * tokens stand for (a tool result the agent has not seen yet). Delivered tokens then never
   * exceed a limit, whatever the estimates were.
   * @default false
   */
  requireFit?: boolean | undefined;
  /**
   * For usage the agent itself measured (the tokens of a sampling answer its own client wrote):
   * count it in full on the agent's scope, and on its pool's and the fabric's at most what the
   * agent's own limit had left, as `recordUsage` does — so an agent cannot spend shared budgets
   * beyond its own limit by how much it says it used.
   * @default false
   */
  shareUpToAgentLimit?: boolean | undefined;
}

/**
 * What {@link BudgetManager.recordUsage} charged the shared scopes (the agent's pool, the
 * fabric) short of a report that went past what the agent's own limit had left.
 */
export interface UnsharedUsage {
  /** The agent's scope, `agent:<id>`, which counted the report in full. */
  readonly scope: string;
  /** The first limit the report went past (`tokens` when both). */
  readonly limit: 'tokens' | 'cost';
  /** The agent's usage of that limit now, the report counted. */
  readonly used: number;
  /** The agent's limit. */
  readonly max: number;
  /** What was reported (the agent's scope counted all of it). */
  readonly recorded: { readonly tokens: number; readonly cost: number };
  /** What the pool's and the fabric's scopes were charged. */
  readonly shared: { readonly tokens: number; readonly cost: number };
}

/** Result of {@link BudgetManager.check}. */
export type BudgetCheck =
  { readonly allowed: true } | ({ readonly allowed: false } & BudgetShortfall);

/** Usage reserved for one in-flight call. Settle it with the actual usage, or release it. */
export interface Reservation {
  readonly agentId: string;
  readonly poolId: string | undefined;
  /** The reserved estimate. */
  readonly tokens: number;
  readonly cost: number;
  readonly state: 'reserved' | 'settled' | 'released';
}

/** Usage and limits of one scope. Limits that are not set read `Infinity`. */
export interface BudgetStatus {
  /** `agent:<id>`, `pool:<id>` or `fabric`. */
  readonly scope: string;
  /** Tokens in the sliding hour (settled and recorded usage). */
  readonly tokensUsed: number;
  /** Tokens held by in-flight reservations. */
  readonly tokensReserved: number;
  readonly tokensLimit: number;
  /** Cost in the day window. */
  readonly costUsed: number;
  readonly costReserved: number;
  readonly costLimit: number;
  /** The higher of tokensUsed/tokensLimit and costUsed/costLimit, in percent (0 without limits). */
  readonly percentUsed: number;
  readonly warnAtPercent: number;
  /** `percentUsed >= warnAtPercent`. */
  readonly warning: boolean;
  /** `percentUsed >= 100`: no call passes until usage leaves the window. */
  readonly exhausted: boolean;
  /** When the oldest counted usage leaves a window (epoch ms), or null when nothing is counted. */
  readonly resetsAt: number | null;
}

/** Options of a {@link BudgetManager}. */
export interface BudgetManagerOptions {
  /**
   * Where budget state is kept.
   * @default a new InMemoryBudgetStore
   */
  store?: BudgetStore;
  /**
   * Most calls one agent may have parked in {@link BudgetManager.reserveWhenFree}; more are
   * decided at once (refused with a `retryAt` when they do not fit). Every settle retries the
   * parked calls, so this bounds both their memory and that work.
   * @default DEFAULT_MAX_WAITERS_PER_AGENT
   */
  maxWaitersPerAgent?: number;
  /**
   * The boot-time clock (ms, suspended time included) the budget clock tells a machine's
   * suspend from a wall-clock step by; for tests.
   * @default `/proc/uptime` where it exists
   */
  bootClock?: BootClock;
  /**
   * This boot's id, which persisted windows are marked with (see `ClockMark`): windows marked on
   * another boot span the gap by the wall clock alone; undefined marks none. For tests.
   * @default `/proc/sys/kernel/random/boot_id` where it exists
   */
  bootId?: string | undefined;
}

/** Default of {@link BudgetManagerOptions.maxWaitersPerAgent}. */
export const DEFAULT_MAX_WAITERS_PER_AGENT = 64;

/**
 * Largest amount (tokens or cost) one usage, estimate or settle may carry. Far beyond any real
 * call, and small enough that no number of them sums to a non-finite count (two reports of
 * 1e308 used to make a scope's usage `Infinity`, which the state file cannot hold).
 */
export const MAX_USAGE_AMOUNT = 1e15;

/** Events of a {@link BudgetManager}. */
export type BudgetEvents = {
  /** Usage crossed `warnAtPercent` of a limit (once per crossing, re-armed when it falls below). */
  warning: [alert: BudgetAlert];
  /** Usage reached 100% of a limit. */
  exhausted: [alert: BudgetAlert];
  /**
   * The wall clock stepped (by more than `CLOCK_STEP_TOLERANCE_MS` beyond elapsed time); the
   * windows kept their elapsed time: the usage they hold was moved by the step.
   */
  clockStep: [step: BudgetClockStep];
};

/** A call parked by {@link BudgetManager.reserveWhenFree}. */
interface Waiter {
  readonly agentId: string;
  readonly poolId: string | undefined;
  readonly tokens: number;
  readonly cost: number;
  readonly clamp: boolean;
  readonly waitMs: number;
  readonly resolve: (r: Reservation) => void;
  readonly reject: (e: unknown) => void;
  readonly signal: AbortSignal | undefined;
  timer: NodeJS.Timeout | undefined;
  onAbort: (() => void) | undefined;
}

const ALLOWED: BudgetCheck = Object.freeze({ allowed: true });
const RESERVED = 0;
const SETTLED = 1;
const RELEASED = 2;
const STATES = ['reserved', 'settled', 'released'] as const;
const FABRIC = 'fabric';

class ReservationImpl implements Reservation {
  readonly agentId: string;
  readonly poolId: string | undefined;
  readonly tokens: number;
  readonly cost: number;
  readonly owner: BudgetManager;
  readonly agent: ScopeUsage;
  readonly pool: ScopeUsage | undefined;
  readonly fabric: ScopeUsage;
  /** Made with `reservationsAside` (counted in the scopes' `asideTokens`/`asideCost` too). */
  readonly aside: boolean;
  code = RESERVED;

  constructor(
    owner: BudgetManager,
    agentId: string,
    poolId: string | undefined,
    tokens: number,
    cost: number,
    agent: ScopeUsage,
    pool: ScopeUsage | undefined,
    fabric: ScopeUsage,
    aside: boolean,
  ) {
    this.owner = owner;
    this.aside = aside;
    this.agentId = agentId;
    this.poolId = poolId;
    this.tokens = tokens;
    this.cost = cost;
    this.agent = agent;
    this.pool = pool;
    this.fabric = fabric;
  }

  get state(): Reservation['state'] {
    return STATES[this.code]!;
  }
}

/**
 * Tracks usage against limits set on agents, pools and the whole fabric; a call must fit every
 * level it belongs to (its agent, its pool if given, and the fabric).
 *
 * **Windows.** Tokens count over a sliding hour (60 one-minute buckets), cost over a sliding
 * 24 h (96 fifteen-minute buckets) or the UTC calendar day (`costWindow: 'utc-day'`). Usage
 * leaves a sliding window at most one bucket after the window length, never before. Windows are
 * read on a {@link BudgetClock}: wall-clock time that counts elapsed time, so a step of the wall
 * clock neither frees a spent window nor holds one longer (the usage moves with the step; see
 * the `clockStep` event).
 *
 * **Reserve, then settle.** `reserve` checks the estimate against usage plus every in-flight
 * reservation and holds it; `settle` swaps the estimate for the actual usage; `release` gives it
 * back. Both are idempotent. Because the check and the hold are one synchronous step, concurrent
 * callers cannot all pass a nearly exhausted budget. `reserveWhenFree` waits (bounded) while
 * only in-flight reservations keep a call out; `settle` with `requireFit` charges tokens only
 * when they fit, so a caller can withhold a result that would overspend.
 *
 * @example
 * const budgets = new BudgetManager();
 * budgets.setBudget('agent-1', { maxTokensPerHour: 100_000, maxCostPerDay: 10 });
 * const r = budgets.reserve('agent-1', { tokens: 2_000, cost: 0.1 });
 * // … make the call …
 * budgets.settle(r, { tokens: 1_500, cost: 0.05 });
 * budgets.getStatus('agent-1').tokensUsed; // 1500
 */
export class BudgetManager extends TypedEmitter<BudgetEvents> {
  readonly #store: BudgetStore;
  readonly #agents = new Map<string, ScopeUsage>();
  readonly #pools = new Map<string, ScopeUsage>();
  #fabric: ScopeUsage | undefined;
  readonly #emit = (kind: 'warning' | 'exhausted', alert: BudgetAlert): void =>
    this.emit(kind, alert);
  /** Calls waiting for in-flight reservations to settle, oldest first. */
  #waiters: Waiter[] = [];
  /** Parked calls per agent (see `maxWaitersPerAgent`). */
  readonly #waitersOf = new Map<string, number>();
  readonly #maxWaiters: number;
  readonly #clock: BudgetClock;
  /** Sum of the wall-clock steps seen (ms): how far state stored before them is moved on load. */
  #steppedMs = 0;
  #clockSteps = 0;

  constructor(options: BudgetManagerOptions = {}) {
    super();
    if (options === null || typeof options !== 'object') {
      throw new ConfigError('options', 'must be an object');
    }
    for (const key of Object.keys(options)) {
      if (
        key !== 'store' &&
        key !== 'maxWaitersPerAgent' &&
        key !== 'bootClock' &&
        key !== 'bootId'
      ) {
        throw new ConfigError(`options.${key}`, 'is not a known option');
      }
    }
    const maxWaiters = options.maxWaitersPerAgent ?? DEFAULT_MAX_WAITERS_PER_AGENT;
    if (!Number.isSafeInteger(maxWaiters) || maxWaiters < 0) {
      throw new ConfigError('options.maxWaitersPerAgent', 'must be an integer >= 0');
    }
    this.#maxWaiters = maxWaiters;
    const store = options.store ?? new InMemoryBudgetStore();
    if (typeof store.load !== 'function' || typeof store.changed !== 'function') {
      throw new ConfigError('options.store', 'must implement BudgetStore (load, changed, delete)');
    }
    this.#store = store;
    this.#clock = new BudgetClock(
      (step) => this.#stepped(step),
      options.bootClock,
      'bootId' in options ? options.bootId : readBootId(),
    );
  }

  /**
   * The time windows are read at (epoch ms): the wall clock as of this manager's start, advanced
   * on the monotonic clock; it follows the wall clock's slewing, and a step too, but then moves
   * the usage every window holds by the step (see `BudgetClock`). `retryAt` and `resetsAt` are
   * on this clock, which is the wall clock but for at most a second after a step.
   */
  now(): number {
    return this.#clock.now();
  }

  /** Wall-clock steps seen since this manager started (see the `clockStep` event). */
  get clockSteps(): number {
    return this.#clockSteps;
  }

  /** The wall clock stepped: every live window keeps the elapsed time it had left. */
  #stepped(step: BudgetClockStep): void {
    this.#clockSteps++;
    this.#steppedMs += step.stepMs;
    const now = step.at;
    const moved = (s: ScopeUsage): void => {
      s.shift(step.stepMs, now);
      // The store writes the moved windows (a lease's heads no longer match: no write is skipped).
      this.#store.changed(s.scope, s);
    };
    for (const s of this.#agents.values()) moved(s);
    for (const s of this.#pools.values()) moved(s);
    if (this.#fabric !== undefined) moved(this.#fabric);
    this.emit('clockStep', step);
  }

  /** The store holding this manager's state. */
  get store(): BudgetStore {
    return this.#store;
  }

  /**
   * Sets the limits of an agent (replacing earlier ones; usage so far is kept).
   * @throws ConfigError naming the field (`config.maxTokensPerHour`, …).
   */
  setBudget(agentId: string, config: BudgetConfig): void {
    this.#configure(this.#agent(id('agentId', agentId)), config);
  }

  /** Sets the limits of a pool. @throws ConfigError naming the field. */
  setPoolBudget(poolId: string, config: BudgetConfig): void {
    this.#configure(this.#pool(id('poolId', poolId)), config);
  }

  /** Sets fabric-wide limits (all agents together). @throws ConfigError naming the field. */
  setFabricBudget(config: BudgetConfig): void {
    this.#configure(this.#fabricScope(), config);
  }

  /** Removes an agent's limits; its usage keeps being tracked. */
  removeBudget(agentId: string): void {
    this.#configure(this.#agent(id('agentId', agentId)), null);
  }

  /** Removes a pool's limits. */
  removePoolBudget(poolId: string): void {
    this.#configure(this.#pool(id('poolId', poolId)), null);
  }

  /**
   * Called before a change of a pool's limits its caller may not acknowledge (a pool creation
   * whose commit failed: `AgentFabric.createPool`): returns what puts the pool's budget back as
   * it is now — its limits as they were (set before the pool was created), or no budget state
   * at all, in memory or in the store, when it had none (never a scope without limits in place
   * of one with them).
   */
  poolBudgetRestorer(poolId: string): () => void {
    const key = id('poolId', poolId);
    const scope = `pool:${key}`;
    const held = this.#pools.get(key);
    const stored = held === undefined ? this.#store.load(scope) : undefined;
    if (held !== undefined || stored !== undefined) {
      const before = held !== undefined ? held.rawConfig : stored!.config;
      return () => this.#configure(this.#pool(key), before);
    }
    return () => this.#forget(this.#pools, key, scope);
  }

  /** Removes the fabric-wide limits. */
  removeFabricBudget(): void {
    this.#configure(this.#fabricScope(), null);
  }

  /**
   * Drops an agent's budget state (limits and usage) from memory and from the store, for an
   * agent that is gone for good — the fabric calls it when a terminated agent's record ages out
   * (`terminatedRetention`). What the agent used stays counted in its pool and the fabric; a
   * reservation still in flight settles into those alone. Asking for the agent again later
   * starts a fresh, unlimited scope.
   */
  forgetAgent(agentId: string): void {
    this.#forget(this.#agents, id('agentId', agentId), `agent:${agentId}`);
  }

  /**
   * Drops a pool's budget state (limits and usage) from memory and from the store, for a pool
   * that was deleted — the fabric calls it in the run that deletes the pool's record, so both go
   * in one commit. A pool created later under the same id starts with the limits it is created
   * with (none without a `budget`) and no usage: what the deleted pool's agents used stays
   * counted in their own scopes and the fabric's, and a reservation still in flight settles
   * into those alone. (Deleting and creating pools is the administrator's: an agent cannot
   * reset its pool's spend this way; the fabric-wide budget is what bounds spend across pools.)
   */
  forgetPool(poolId: string): void {
    this.#forget(this.#pools, id('poolId', poolId), `pool:${poolId}`);
  }

  /** Forgets the scope `scope` held under `key` in `map` and in the store. */
  #forget(map: Map<string, ScopeUsage>, key: string, scope: string): void {
    const held = map.get(key);
    if (held !== undefined) {
      held.forgotten = true;
      map.delete(key);
    }
    this.#store.delete(scope);
  }

  /** Agents whose budget state is held (in memory; a durable store may hold more). */
  get agentCount(): number {
    return this.#agents.size;
  }

  /**
   * Records usage that happened without a reservation — an agent's own report — never refused
   * for budget: it may push a scope over its limit (the next `check`/`reserve` then refuses).
   * It counts in full on the agent's scope; its pool's and the fabric's (shared with other
   * agents) are charged at most what the agent's own limit had left before it, per limit
   * (tokens, cost), so one agent's reports cannot spend shared budgets beyond what the agent is
   * allowed (an agent without a limit of that kind is not capped). A report within the agent's
   * limits counts the same everywhere.
   * @returns null when every scope was charged in full, else what the shared scopes were charged
   *   short of the report (the caller tells the agent: `BudgetExceededError.usageBeyondLimit`).
   * @throws InvalidUsageError for a negative, NaN, infinite or non-numeric amount.
   */
  recordUsage(
    agentId: string,
    usage: UsageAmount,
    options?: BudgetCallOptions,
  ): UnsharedUsage | null {
    const tokens = amount('usage.tokens', usage, 'tokens');
    const cost = amount('usage.cost', usage, 'cost');
    const now = this.#clock.now();
    const poolId = options?.poolId;
    const a = this.#agent(id('agentId', agentId));
    const p = poolId === undefined ? undefined : this.#pool(id('options.poolId', poolId));
    return this.#recordShareCapped(a, p, this.#fabricScope(), tokens, cost, now);
  }

  /**
   * Whether a call with this estimate would fit every level now (usage plus in-flight
   * reservations; see `reservationsAside`). Does not reserve anything. With `agentId` undefined only the pool and
   * fabric levels are checked (work queued to a pool before an agent is chosen).
   * @throws InvalidUsageError for a bad estimate.
   */
  check(agentId: string | undefined, estimate: UsageAmount, options?: CheckOptions): BudgetCheck {
    let tokens = amount('estimate.tokens', estimate, 'tokens');
    const cost = amount('estimate.cost', estimate, 'cost');
    const poolId = options?.poolId;
    if (options?.unmetered === true) return ALLOWED;
    if (options?.clampTokens === true) tokens = this.#clamp(agentId, poolId, tokens);
    const now = this.#clock.now();
    const short = this.#shortfall(agentId, poolId, tokens, cost, now, options?.reservationsAside);
    return short === null ? ALLOWED : Object.freeze({ allowed: false as const, ...short });
  }

  /**
   * Reserves an estimate on every level, or throws when it does not fit one of them. With a
   * durable store the reservation is covered on disk before this returns (see
   * `BudgetStore.coverReservation`: a commit only when it goes past what the store holds).
   * @throws BudgetExceededError carrying `scope`, `limit`, `used`, `max` and `retryAt`.
   * @throws InvalidUsageError for a bad estimate.
   * @throws StateStoreError when the commit that covers it fails: nothing stays reserved.
   */
  reserve(agentId: string, estimate: UsageAmount, options?: ReserveOptions): Reservation {
    let tokens = amount('estimate.tokens', estimate, 'tokens');
    const cost = amount('estimate.cost', estimate, 'cost');
    const poolId = options?.poolId;
    if (options?.unmetered === true) return this.#hold(agentId, poolId, 0, 0);
    if (options?.clampTokens === true) tokens = this.#clamp(agentId, poolId, tokens);
    const aside = options?.reservationsAside === true;
    const short = this.#shortfall(agentId, poolId, tokens, cost, this.#clock.now(), aside);
    if (short !== null) throw new BudgetExceededError(short);
    return this.#hold(agentId, poolId, tokens, cost, aside);
  }

  /**
   * {@link reserve}, waiting while only in-flight reservations keep the call out: it is retried
   * whenever a reservation settles or is released, oldest waiter first, and refused once its
   * usage could not fit even with them gone, after `waitMs`, or when `signal` aborts (then it
   * rejects with the signal's reason). A refusal always carries the best `retryAt` known: when
   * usage leaves the window, or — when only in-flight calls block it — the end of another wait.
   * An agent with `maxWaitersPerAgent` calls parked already is decided at once.
   * @throws BudgetExceededError (as a rejection) carrying `scope`, `limit`, `used`, `max`, `retryAt`.
   * @throws InvalidUsageError for a bad estimate.
   */
  reserveWhenFree(
    agentId: string,
    estimate: UsageAmount,
    options: ReserveWhenFreeOptions,
  ): Promise<Reservation> {
    const tokens = amount('estimate.tokens', estimate, 'tokens');
    const cost = amount('estimate.cost', estimate, 'cost');
    id('agentId', agentId);
    const poolId = options.poolId;
    if (poolId !== undefined) id('options.poolId', poolId);
    const waitMs = options.waitMs;
    if (typeof waitMs !== 'number' || !(waitMs >= 0) || waitMs === Number.POSITIVE_INFINITY) {
      throw new InvalidArgumentError('options.waitMs', 'must be a finite number >= 0');
    }
    const signal = options.signal;
    return new Promise<Reservation>((resolve, reject) => {
      if (signal?.aborted) {
        reject(abortReason(signal));
        return;
      }
      if (options.unmetered === true) {
        resolve(this.#hold(agentId, poolId, 0, 0));
        return;
      }
      const w: Waiter = {
        agentId,
        poolId,
        tokens,
        cost,
        clamp: options.clampTokens === true,
        waitMs,
        resolve,
        reject,
        signal,
        timer: undefined,
        onAbort: undefined,
      };
      const parked = this.#waitersOf.get(agentId) ?? 0;
      if (this.#attempt(w, waitMs === 0 || parked >= this.#maxWaiters)) return;
      w.timer = setTimeout(() => {
        this.#unpark(w);
        this.#attempt(w, true);
      }, waitMs);
      w.timer.unref?.();
      if (signal !== undefined) {
        w.onAbort = () => {
          this.#unpark(w);
          reject(abortReason(signal));
        };
        signal.addEventListener('abort', w.onAbort, { once: true });
      }
      this.#waiters.push(w);
      this.#waitersOf.set(agentId, parked + 1);
    });
  }

  /** Calls waiting in {@link reserveWhenFree}. */
  get waiting(): number {
    return this.#waiters.length;
  }

  /**
   * Reserves for `w` and resolves it (true), refuses it (true) when waiting cannot help or
   * `final`, or leaves it waiting (false).
   */
  #attempt(w: Waiter, final: boolean): boolean {
    const now = this.#clock.now();
    const tokens = w.clamp ? this.#clamp(w.agentId, w.poolId, w.tokens) : w.tokens;
    const short = this.#shortfall(w.agentId, w.poolId, tokens, w.cost, now);
    if (short === null) {
      let held: Reservation;
      try {
        held = this.#hold(w.agentId, w.poolId, tokens, w.cost);
      } catch (error) {
        w.reject(error); // its coverage could not be committed (StateStoreError)
        return true;
      }
      w.resolve(held);
      return true;
    }
    const waitable = this.#fitsUnreserved(w.agentId, w.poolId, tokens, w.cost, now);
    if (waitable && !final) return false;
    const scope = this.#scopeNamed(short.scope, w.agentId, w.poolId);
    const retryAt = scope.retryHint(short, now, now + Math.max(w.waitMs, MIN_RETRY_MS));
    w.reject(new BudgetExceededError({ ...short, retryAt }));
    return true;
  }

  /** Removes a waiter from the queue, with its timer and listener. */
  #unpark(w: Waiter): void {
    const i = this.#waiters.indexOf(w);
    if (i >= 0) this.#waiters.splice(i, 1);
    this.#disarm(w);
  }

  /** Clears a waiter's timer and listener and uncounts it (it has left the queue). */
  #disarm(w: Waiter): void {
    if (w.timer !== undefined) clearTimeout(w.timer);
    if (w.onAbort !== undefined) w.signal!.removeEventListener('abort', w.onAbort);
    const n = (this.#waitersOf.get(w.agentId) ?? 1) - 1;
    if (n > 0) this.#waitersOf.set(w.agentId, n);
    else this.#waitersOf.delete(w.agentId);
  }

  /** Retries every waiter, oldest first (after a reservation settled or was released). */
  #wake(): void {
    const waiters = this.#waiters;
    this.#waiters = [];
    for (const w of waiters) {
      if (this.#attempt(w, false)) this.#disarm(w);
      else this.#waiters.push(w);
    }
  }

  /** Holds a reservation on every level (the check was done). */
  #hold(
    agentId: string,
    poolId: string | undefined,
    tokens: number,
    cost: number,
    aside = false,
  ): Reservation {
    const a = this.#agent(agentId);
    const p = poolId === undefined ? undefined : this.#pool(poolId);
    const f = this.#fabricScope();
    const r = new ReservationImpl(this, agentId, poolId, tokens, cost, a, p, f, aside);
    holdOn(r, 1);
    const store = this.#store;
    if (store.coverReservation !== undefined && (tokens > 0 || cost > 0)) {
      // The call goes ahead only once what the store holds covers its estimate: a crash while it
      // is in flight (forwarded, its cost being spent) must not give that cost back. Under the
      // committed ceiling (a lease) nothing is written.
      let uncovered = store.coverReservation(a.scope, a);
      if (p !== undefined && store.coverReservation(p.scope, p)) uncovered = true;
      if (store.coverReservation(f.scope, f)) uncovered = true;
      if (uncovered) {
        try {
          store.commitCoverage!();
        } catch (error) {
          r.code = RELEASED;
          unreserve(r);
          throw error;
        }
      }
    }
    return r;
  }

  /**
   * Replaces a reservation's estimate with the actual usage (fields left out of `actual` keep
   * the estimate). A second settle, or a settle after release, does nothing.
   * @throws InvalidUsageError for a bad amount (the reservation stays reserved).
   * @throws InvalidArgumentError for a reservation from another manager.
   * @returns with `shareUpToAgentLimit`, what the shared scopes were charged short of `actual`
   *   (counted in full on the agent all the same), or null.
   */
  settle(
    reservation: Reservation,
    actual: UsageAmount | undefined,
    options: SettleOptions & { shareUpToAgentLimit: true; requireFit?: false | undefined },
  ): UnsharedUsage | null;
  /** @returns with `requireFit`, the shortfall that withheld `actual`'s tokens, or null. */
  settle(
    reservation: Reservation,
    actual?: UsageAmount,
    options?: SettleOptions,
  ): BudgetShortfall | null;
  settle(
    reservation: Reservation,
    actual?: UsageAmount,
    options?: SettleOptions,
  ): BudgetShortfall | UnsharedUsage | null {
    const r = this.#own(reservation);
    if (r.code !== RESERVED) return null;
    let tokens =
      actual?.tokens === undefined ? r.tokens : amount('actual.tokens', actual, 'tokens');
    const cost = actual?.cost === undefined ? r.cost : amount('actual.cost', actual, 'cost');
    r.code = SETTLED;
    unreserve(r);
    const now = this.#clock.now();
    let short: BudgetShortfall | null = null;
    if (options?.requireFit === true && tokens > 0) {
      // A forgotten agent's or pool's scope records nothing, so it cannot be overspent either.
      short =
        (r.agent.forgotten ? null : r.agent.deliveryShortfall(tokens, now)) ??
        (r.pool === undefined || r.pool.forgotten ? null : r.pool.deliveryShortfall(tokens, now)) ??
        r.fabric.deliveryShortfall(tokens, now);
      if (short !== null) tokens = 0;
    }
    let unshared: UnsharedUsage | null = null;
    if (options?.shareUpToAgentLimit === true)
      unshared = this.#recordShareCapped(r.agent, r.pool, r.fabric, tokens, cost, now);
    else this.#record(r.agent, r.pool, r.fabric, tokens, cost, now);
    if (this.#waiters.length > 0) this.#wake();
    return short ?? unshared;
  }

  /** Gives a reservation back unused. Idempotent; does nothing after settle. */
  release(reservation: Reservation): void {
    const r = this.#own(reservation);
    if (r.code !== RESERVED) return;
    r.code = RELEASED;
    unreserve(r);
    if (this.#waiters.length > 0) this.#wake();
  }

  /** Usage and limits of an agent. */
  getStatus(agentId: string): BudgetStatus {
    return status(this.#agent(id('agentId', agentId)), this.#clock.now());
  }

  /** Usage and limits of a pool (usage of every call made with this `poolId`). */
  getPoolStatus(poolId: string): BudgetStatus {
    return status(this.#pool(id('poolId', poolId)), this.#clock.now());
  }

  /** Fabric-wide usage and limits. */
  getFabricStatus(): BudgetStatus {
    return status(this.#fabricScope(), this.#clock.now());
  }

  #shortfall(
    agentId: string | undefined,
    poolId: string | undefined,
    tokens: number,
    cost: number,
    now: number,
    reservationsAside?: boolean,
  ): BudgetShortfall | null {
    if (agentId !== undefined) {
      id('agentId', agentId);
      const a = this.#agent(agentId).shortfall(tokens, cost, now, reservationsAside);
      if (a !== null) return a;
    }
    if (poolId !== undefined) {
      const p = this.#pool(id('options.poolId', poolId)).shortfall(
        tokens,
        cost,
        now,
        reservationsAside,
      );
      if (p !== null) return p;
    }
    return this.#fabricScope().shortfall(tokens, cost, now, reservationsAside);
  }

  /** True when no level is short of the call with in-flight reservations left aside. */
  #fitsUnreserved(
    agentId: string,
    poolId: string | undefined,
    tokens: number,
    cost: number,
    now: number,
  ): boolean {
    return (
      this.#agent(agentId).fitsUnreserved(tokens, cost, now) &&
      (poolId === undefined || this.#pool(poolId).fitsUnreserved(tokens, cost, now)) &&
      this.#fabricScope().fitsUnreserved(tokens, cost, now)
    );
  }

  /** `tokens`, but at most the smallest token limit of the call's levels. */
  #clamp(agentId: string | undefined, poolId: string | undefined, tokens: number): number {
    let cap = tokenLimit(this.#fabricScope());
    if (agentId !== undefined) cap = Math.min(cap, tokenLimit(this.#agent(id('agentId', agentId))));
    if (poolId !== undefined)
      cap = Math.min(cap, tokenLimit(this.#pool(id('options.poolId', poolId))));
    return tokens < cap ? tokens : cap;
  }

  /** The level a shortfall names. */
  #scopeNamed(scope: string, agentId: string, poolId: string | undefined): ScopeUsage {
    if (scope === FABRIC) return this.#fabricScope();
    return poolId !== undefined && scope === `pool:${poolId}`
      ? this.#pool(poolId)
      : this.#agent(agentId);
  }

  /**
   * Records `tokens`/`cost` in full on `a` (the agent's scope), and on `p` and `f` (shared with
   * other agents) at most what `a`'s own limits had left before them (see `recordUsage`).
   * @returns null when every scope was charged in full, else what the shared scopes were short.
   */
  #recordShareCapped(
    a: ScopeUsage,
    p: ScopeUsage | undefined,
    f: ScopeUsage,
    tokens: number,
    cost: number,
    now: number,
  ): UnsharedUsage | null {
    const c = a.config;
    const sharedTokens = capped(tokens, c?.maxTokensPerHour, a.tokens.used(now));
    const sharedCost = capped(cost, c?.maxCostPerDay, a.cost.used(now));
    if (sharedTokens === tokens && sharedCost === cost) {
      this.#record(a, p, f, tokens, cost, now);
      return null;
    }
    if (!a.forgotten) {
      a.record(tokens, cost, now, this.#emit);
      this.#store.changed(a.scope, a);
    }
    this.#record(undefined, p, f, sharedTokens, sharedCost, now);
    const limit = sharedTokens < tokens ? 'tokens' : 'cost';
    return Object.freeze({
      scope: a.scope,
      limit,
      used: limit === 'tokens' ? a.tokens.used(now) : a.cost.used(now),
      max: (limit === 'tokens' ? c!.maxTokensPerHour : c!.maxCostPerDay)!,
      recorded: Object.freeze({ tokens, cost }),
      shared: Object.freeze({ tokens: sharedTokens, cost: sharedCost }),
    });
  }

  #record(
    a: ScopeUsage | undefined,
    p: ScopeUsage | undefined,
    f: ScopeUsage,
    tokens: number,
    cost: number,
    now: number,
  ): void {
    if (a !== undefined && !a.forgotten) {
      a.record(tokens, cost, now, this.#emit);
      this.#store.changed(a.scope, a);
    }
    if (p !== undefined && !p.forgotten) {
      p.record(tokens, cost, now, this.#emit);
      this.#store.changed(p.scope, p);
    }
    f.record(tokens, cost, now, this.#emit);
    this.#store.changed(f.scope, f);
  }

  #configure(scope: ScopeUsage, config: BudgetConfig | null): void {
    scope.setConfig(config, this.#clock.now());
    this.#store.changed(scope.scope, scope);
    // Calls parked in reserveWhenFree are decided by the new limits now: a raised (or removed)
    // limit lets in those that fit, a lowered one refuses those that waiting can no longer help.
    if (this.#waiters.length > 0) this.#wake();
  }

  #own(reservation: Reservation): ReservationImpl {
    if (!(reservation instanceof ReservationImpl) || reservation.owner !== this) {
      throw new InvalidArgumentError('reservation', 'was not made by this BudgetManager');
    }
    return reservation;
  }

  #agent(agentId: string): ScopeUsage {
    return this.#agents.get(agentId) ?? this.#load(this.#agents, agentId, `agent:${agentId}`);
  }

  #pool(poolId: string): ScopeUsage {
    return this.#pools.get(poolId) ?? this.#load(this.#pools, poolId, `pool:${poolId}`);
  }

  #fabricScope(): ScopeUsage {
    return (this.#fabric ??= new ScopeUsage(
      FABRIC,
      this.#clock.now(),
      this.#store.load(FABRIC),
      this.#steppedMs,
      this.#clock,
    ));
  }

  #load(map: Map<string, ScopeUsage>, key: string, scope: string): ScopeUsage {
    const now = this.#clock.now();
    const s = new ScopeUsage(scope, now, this.#store.load(scope), this.#steppedMs, this.#clock);
    map.set(key, s);
    return s;
  }
}

/** The smallest `retryAt` hint after a wait, so a refused caller does not spin. */
const MIN_RETRY_MS = 1000;

function abortReason(signal: AbortSignal): unknown {
  return signal.reason instanceof Error ? signal.reason : new Error('cancelled');
}

function tokenLimit(s: ScopeUsage): number {
  return s.config?.maxTokensPerHour ?? Number.POSITIVE_INFINITY;
}

/** Adds (`sign` 1) or takes back (-1) a reservation's amounts on each of its scopes. */
function holdOn(r: ReservationImpl, sign: 1 | -1): void {
  const tokens = sign * r.tokens;
  const cost = sign * r.cost;
  addHeld(r.agent, sign, tokens, cost, r.aside);
  if (r.pool !== undefined) addHeld(r.pool, sign, tokens, cost, r.aside);
  addHeld(r.fabric, sign, tokens, cost, r.aside);
}

/**
 * Adds held amounts to one scope (`aside`: to its `reservationsAside` amounts too). The last
 * hold given back leaves the sums at exactly 0, not at the float drift of the adds and takes.
 */
function addHeld(s: ScopeUsage, sign: 1 | -1, tokens: number, cost: number, aside: boolean): void {
  if ((s.reservedCount += sign) === 0) {
    s.reservedTokens = 0;
    s.reservedCost = 0;
  } else {
    s.reservedTokens += tokens;
    s.reservedCost += cost;
  }
  if (aside) {
    if ((s.asideCount += sign) === 0) {
      s.asideTokens = 0;
      s.asideCost = 0;
    } else {
      s.asideTokens += tokens;
      s.asideCost += cost;
    }
  }
}

function unreserve(r: ReservationImpl): void {
  holdOn(r, -1);
}

function id(field: string, value: unknown): string {
  if (typeof value !== 'string' || value === '') {
    throw new InvalidArgumentError(field, 'must be a non-empty string');
  }
  return value;
}

function amount(field: string, usage: UsageAmount | undefined, key: 'tokens' | 'cost'): number {
  if (usage === null || typeof usage !== 'object')
    throw new InvalidUsageError(field, usage, MAX_USAGE_AMOUNT);
  const v: unknown = usage[key];
  if (v === undefined) return 0;
  if (typeof v !== 'number' || !(v >= 0) || v > MAX_USAGE_AMOUNT) {
    throw new InvalidUsageError(field, v, MAX_USAGE_AMOUNT);
  }
  return v;
}

/**
 * What a report of `amount` may charge shared scopes: all of it without a `limit`, else at most
 * what the agent's `limit` had left beside its `used`.
 */
function capped(amount: number, limit: number | undefined, used: number): number {
  if (limit === undefined) return amount;
  const left = limit - used;
  // A report that brings the agent to its limit exactly fits, float rounding of the sum aside.
  if (amount <= left + limit * USAGE_EPSILON) return amount;
  return left > 0 ? left : 0;
}

/** Relative float slack of {@link capped}: far below any real amount, above summing's error. */
const USAGE_EPSILON = 1e-9;

function status(s: ScopeUsage, now: number): BudgetStatus {
  const c = s.config;
  const tokensUsed = s.tokens.used(now);
  const costUsed = s.cost.used(now);
  const tokensLimit = c?.maxTokensPerHour ?? Number.POSITIVE_INFINITY;
  const costLimit = c?.maxCostPerDay ?? Number.POSITIVE_INFINITY;
  const percentUsed = Math.max((tokensUsed / tokensLimit) * 100, (costUsed / costLimit) * 100);
  const warnAtPercent = c?.warnAtPercent ?? 80;
  const drops = [s.tokens.nextDropAt(now), s.cost.nextDropAt(now)].filter(
    (t): t is number => t !== null,
  );
  return Object.freeze({
    scope: s.scope,
    tokensUsed,
    tokensReserved: s.reservedTokens,
    tokensLimit,
    costUsed,
    costReserved: s.reservedCost,
    costLimit,
    percentUsed,
    warnAtPercent,
    warning: c !== undefined && percentUsed >= warnAtPercent,
    exhausted: c !== undefined && percentUsed >= 100,
    resetsAt: drops.length === 0 ? null : Math.min(...drops),
  });
}

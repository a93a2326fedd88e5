/**
 * Token estimates of tool calls: what the budget reserves for a call before it runs, learned per
 * (agent, tool) from the sizes of that agent's results of that tool.
 *
 * An estimate is only a reservation: it decides how many calls may be in flight against a
 * budget, never what is charged (the result's size is, and the gateway withholds a result that
 * does not fit; see `BudgetManager.settle` with `requireFit`). So an agent that games its own
 * estimate — small results first, then a burst of huge ones — can only get its own results
 * withheld. What estimates must get right is fairness and waste: they are kept per agent (one
 * agent's large reads never raise another's reservation) and conservative (up at once to a
 * larger result, down by a quarter of the gap per smaller one), and a pair nobody has seen yet
 * reserves a prior — configured per tool glob, or {@link DEFAULT_TOKEN_ESTIMATE} — while its
 * first call runs alone ("single flight"): the others wait for that result to teach the
 * estimate instead of all going out on a guess.
 *
 * @module
 */
import { LRUCache } from 'lru-cache';
import { ConfigError } from '../errors.js';
import { globToRegExp, usageAmount } from './tool-costs.js';

/** Default prior: tokens reserved for a tool's first call by an agent when no glob matches. */
export const DEFAULT_TOKEN_ESTIMATE = 4000;
/** Default of {@link TokenEstimatesOptions.maxAgents}. */
export const DEFAULT_MAX_ESTIMATE_AGENTS = 10_000;
/** Fraction of the gap an estimate moves down per smaller result (it moves up at once). */
export const ESTIMATE_DECAY = 0.25;
/**
 * Tools remembered per agent. Only tools in the catalog reach the estimator, so this is a
 * backstop against a catalog that keeps changing names; the oldest entry makes room.
 */
const MAX_TOOLS_PER_AGENT = 1024;

/** Options of {@link TokenEstimates}. */
export interface TokenEstimatesOptions {
  /**
   * Tool-name glob (`*` any run, `?` one character) → prior tokens of that tool's first call by
   * an agent. Globs are tried in order; the first match wins.
   * @default {}
   */
  priors?: Readonly<Record<string, number>> | undefined;
  /**
   * Prior of a tool no glob matches.
   * @default DEFAULT_TOKEN_ESTIMATE
   */
  defaultPrior?: number | undefined;
  /**
   * Agents whose estimates are kept; the least recently active is forgotten first (its pairs
   * start again from their priors).
   * @default DEFAULT_MAX_ESTIMATE_AGENTS
   */
  maxAgents?: number | undefined;
}

interface FlightWaiter {
  go(held: boolean): void;
}

/**
 * The estimate of one (agent, tool) pair, and the single flight of its cold start.
 *
 * Cold (no result seen yet), a pair lets one call hold its flight at a time: {@link flight}
 * answers `true` to the caller that now holds it, which must {@link land} when its call ends.
 * Others wait (bounded): once a result was observed they go on with the learned estimate; if
 * the holder ended without a result (refused, failed, cancelled) the next waiter takes over.
 */
export class ToolEstimate {
  /** Tokens to reserve for the next call. */
  tokens: number;
  /** Whether a result of this pair was seen (the estimate is learned, not the prior). */
  observed = false;
  #busy = false;
  #waiters: FlightWaiter[] = [];

  constructor(prior: number) {
    this.tokens = prior;
  }

  /** Calls waiting for the pair's first result. */
  get waiting(): number {
    return this.#waiters.length;
  }

  /** Learns from a result of `tokens`: up at once, down by {@link ESTIMATE_DECAY} of the gap. */
  observe(tokens: number): void {
    if (!this.observed || tokens >= this.tokens) this.tokens = tokens;
    else this.tokens = Math.ceil(this.tokens - (this.tokens - tokens) * ESTIMATE_DECAY);
    if (!this.observed) {
      this.observed = true;
      this.#release();
    }
  }

  /**
   * Enters the cold pair's single flight. Synchronous `false` when the pair is warm (or
   * `waitMs` is 0): go without it. `true`: the caller holds it and must call {@link land}.
   * A promise when another call holds it: resolves `true` when the flight passes to this
   * caller, `false` when a result arrived or after `waitMs` (go on with the current estimate);
   * rejects with the signal's reason when `signal` aborts.
   */
  flight(waitMs: number, signal?: AbortSignal): boolean | Promise<boolean> {
    if (this.observed || !(waitMs > 0)) return false;
    if (!this.#busy) return (this.#busy = true);
    return new Promise<boolean>((resolve, reject) => {
      if (signal?.aborted) {
        reject(reasonOf(signal));
        return;
      }
      const onAbort = (): void => {
        if (!this.#remove(waiter)) return;
        clearTimeout(timer);
        reject(reasonOf(signal!));
      };
      const waiter: FlightWaiter = {
        go: (held) => {
          clearTimeout(timer);
          signal?.removeEventListener('abort', onAbort);
          resolve(held);
        },
      };
      const timer = setTimeout(() => {
        if (this.#remove(waiter)) waiter.go(false);
      }, waitMs);
      timer.unref?.();
      signal?.addEventListener('abort', onAbort, { once: true });
      this.#waiters.push(waiter);
    });
  }

  /** Ends the flight held by the caller (after {@link observe}, when there was a result). */
  land(): void {
    if (this.observed) {
      this.#busy = false;
      this.#release();
      return;
    }
    const next = this.#waiters.shift();
    if (next === undefined) this.#busy = false;
    else next.go(true); // still cold: the flight passes on
  }

  /** Lets every waiter go on with the learned estimate. */
  #release(): void {
    const waiters = this.#waiters;
    if (waiters.length === 0) return;
    this.#waiters = [];
    for (const w of waiters) w.go(false);
  }

  #remove(waiter: FlightWaiter): boolean {
    const i = this.#waiters.indexOf(waiter);
    if (i < 0) return false;
    this.#waiters.splice(i, 1);
    return true;
  }
}

/**
 * Learned token estimates per (agent, tool), bounded: at most `maxAgents` agents (least
 * recently active forgotten first) and a fixed number of tools each.
 *
 * @example
 * const estimates = new TokenEstimates({ priors: { 'fs__read_*': 2000 } });
 * const e = estimates.get('agent-1', 'fs__read_text_file'); // e.tokens === 2000 (the prior)
 * e.observe(120); // e.tokens === 120: learned from the first result
 * e.observe(9000); // e.tokens === 9000: up at once
 * e.observe(1000); // e.tokens === 7000: down by a quarter of the gap
 */
export class TokenEstimates {
  readonly #rules: readonly { re: RegExp; tokens: number }[];
  readonly #defaultPrior: number;
  readonly #priors = new Map<string, number>();
  readonly #agents: LRUCache<string, Map<string, ToolEstimate>>;

  /** @throws ConfigError naming the bad prior or option. */
  constructor(options: TokenEstimatesOptions = {}) {
    const priors = options.priors ?? {};
    if (priors === null || typeof priors !== 'object' || Array.isArray(priors)) {
      throw new ConfigError('tokenEstimates', 'must be a mapping of tool glob to tokens');
    }
    this.#rules = Object.entries(priors).map(([glob, tokens]) => ({
      re: globToRegExp(glob),
      tokens: tokenCount(`tokenEstimates.${glob}`, tokens),
    }));
    this.#defaultPrior = tokenCount('defaultPrior', options.defaultPrior ?? DEFAULT_TOKEN_ESTIMATE);
    const maxAgents = options.maxAgents ?? DEFAULT_MAX_ESTIMATE_AGENTS;
    if (!Number.isSafeInteger(maxAgents) || maxAgents < 1) {
      throw new ConfigError('maxAgents', 'must be a positive integer');
    }
    this.#agents = new LRUCache({ max: maxAgents });
  }

  /** The estimate of `agentId`'s next call of `tool` (created at the tool's prior). */
  get(agentId: string, tool: string): ToolEstimate {
    let tools = this.#agents.get(agentId);
    if (tools === undefined) this.#agents.set(agentId, (tools = new Map()));
    let e = tools.get(tool);
    if (e === undefined) {
      if (tools.size >= MAX_TOOLS_PER_AGENT) tools.delete(tools.keys().next().value!);
      tools.set(tool, (e = new ToolEstimate(this.priorOf(tool))));
    }
    return e;
  }

  /** The prior of `tool`: the first matching glob's tokens, else the default prior. */
  priorOf(tool: string): number {
    let p = this.#priors.get(tool);
    if (p === undefined) {
      p = this.#rules.find((r) => r.re.test(tool))?.tokens ?? this.#defaultPrior;
      this.#priors.set(tool, p);
    }
    return p;
  }

  /** Drops an agent's estimates (an agent gone for good). Calls in flight keep theirs. */
  forgetAgent(agentId: string): void {
    this.#agents.delete(agentId);
  }

  /** Agents whose estimates are held. */
  get agentCount(): number {
    return this.#agents.size;
  }
}

/** A prior the budgets can reserve (above `MAX_USAGE_AMOUNT` every call failed to). */
function tokenCount(field: string, value: unknown): number {
  return usageAmount(field, value, 'tokens');
}

function reasonOf(signal: AbortSignal): unknown {
  return signal.reason instanceof Error ? signal.reason : new Error('cancelled');
}

/**
 * Budget limits of one scope (an agent, a pool, or the whole fabric): defaults and validation.
 *
 * @module
 */
import { ConfigError } from '../errors.js';

/** Default for {@link BudgetConfig.warnAtPercent}. */
export const DEFAULT_WARN_AT_PERCENT = 80;
/** Default for {@link BudgetConfig.costWindow}. */
export const DEFAULT_COST_WINDOW: CostWindow = 'sliding';

/** How "per day" is measured for cost. */
export type CostWindow = 'sliding' | 'utc-day';

/** Limits of one scope. Every field is optional; an unset limit is unlimited. */
export interface BudgetConfig {
  /**
   * Most tokens in any sliding hour. Unset: no token limit (`tokensLimit` reads `Infinity`).
   * @default undefined
   */
  maxTokensPerHour?: number;
  /**
   * Most cost (in your currency unit) per day — a sliding 24 h, or the UTC calendar day
   * (see {@link costWindow}). Unset: no cost limit.
   * @default undefined
   */
  maxCostPerDay?: number;
  /**
   * Percentage of a limit at which a `warning` event fires (once per crossing), in (0, 100].
   * @default 80
   */
  warnAtPercent?: number;
  /**
   * `sliding`: the last 24 hours. `utc-day`: since 00:00 UTC, resetting at midnight.
   * @default 'sliding'
   */
  costWindow?: CostWindow;
}

/** A validated, frozen budget config; unset limits are `Infinity`. */
export interface ResolvedBudgetConfig {
  readonly maxTokensPerHour: number;
  readonly maxCostPerDay: number;
  readonly warnAtPercent: number;
  readonly costWindow: CostWindow;
}

const KEYS = new Set(['maxTokensPerHour', 'maxCostPerDay', 'warnAtPercent', 'costWindow']);

/**
 * Validates a budget config and fills in defaults.
 *
 * @param field how to name the config in errors (e.g. `config`).
 * @example
 * parseBudgetConfig({ maxTokensPerHour: 100_000 });
 * // { maxTokensPerHour: 100000, maxCostPerDay: Infinity, warnAtPercent: 80, costWindow: 'sliding' }
 * @throws ConfigError naming the field: limits must be positive finite numbers, `warnAtPercent`
 *   a number in (0, 100], `costWindow` one of `sliding`, `utc-day`; unknown keys are rejected.
 */
export function parseBudgetConfig(config: BudgetConfig, field = 'config'): ResolvedBudgetConfig {
  if (config === null || typeof config !== 'object' || Array.isArray(config)) {
    throw new ConfigError(field, 'must be an object');
  }
  for (const key of Object.keys(config)) {
    if (!KEYS.has(key)) throw new ConfigError(`${field}.${key}`, 'is not a known budget option');
  }
  const limit = (name: 'maxTokensPerHour' | 'maxCostPerDay'): number => {
    const v: unknown = config[name];
    if (v === undefined) return Number.POSITIVE_INFINITY;
    if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) {
      throw new ConfigError(`${field}.${name}`, `must be a positive finite number, got ${show(v)}`);
    }
    return v;
  };
  const warn: unknown = config.warnAtPercent ?? DEFAULT_WARN_AT_PERCENT;
  if (typeof warn !== 'number' || !Number.isFinite(warn) || warn <= 0 || warn > 100) {
    throw new ConfigError(
      `${field}.warnAtPercent`,
      `must be a number in (0, 100], got ${show(warn)}`,
    );
  }
  const costWindow: unknown = config.costWindow ?? DEFAULT_COST_WINDOW;
  if (costWindow !== 'sliding' && costWindow !== 'utc-day') {
    throw new ConfigError(
      `${field}.costWindow`,
      `must be 'sliding' or 'utc-day', got ${show(costWindow)}`,
    );
  }
  return Object.freeze({
    maxTokensPerHour: limit('maxTokensPerHour'),
    maxCostPerDay: limit('maxCostPerDay'),
    warnAtPercent: warn,
    costWindow,
  });
}

function show(v: unknown): string {
  return typeof v === 'string' ? JSON.stringify(v) : typeof v === 'number' ? String(v) : typeof v;
}

/**
 * Budgets: token and cost limits per agent, pool and fabric, with sliding windows and
 * reserve/settle accounting.
 *
 * @module
 */
export {
  BudgetClock,
  CLOCK_CHECK_INTERVAL_MS,
  CLOCK_STEP_TOLERANCE_MS,
  procUptimeMs,
} from './budget-clock.js';
export {
  DEFAULT_COST_WINDOW,
  DEFAULT_WARN_AT_PERCENT,
  parseBudgetConfig,
} from './budget-config.js';
export {
  BudgetManager,
  DEFAULT_MAX_WAITERS_PER_AGENT,
  MAX_USAGE_AMOUNT,
} from './budget-manager.js';
export { InMemoryBudgetStore } from './budget-store.js';
export { COST_BUCKET_MS, TOKEN_BUCKET_MS } from './scope-usage.js';
export { DAY_MS, HOUR_MS, SlidingWindow, UtcDayWindow, windowFromJSON } from './usage-window.js';

export type { BootClock, BudgetClockStep } from './budget-clock.js';
export type { BudgetConfig, CostWindow, ResolvedBudgetConfig } from './budget-config.js';
export type {
  BudgetCallOptions,
  BudgetCheck,
  BudgetEvents,
  BudgetManagerOptions,
  BudgetStatus,
  UnsharedUsage,
  Reservation,
  ReserveOptions,
  ReserveWhenFreeOptions,
  SettleOptions,
  UsageAmount,
} from './budget-manager.js';
export type { BudgetScopeSnapshot, BudgetStateSource, BudgetStore } from './budget-store.js';
export type { BudgetAlert, BudgetLimit, BudgetShortfall } from './scope-usage.js';
export type {
  SlidingWindowState,
  UsageWindow,
  UsageWindowState,
  UtcDayWindowState,
} from './usage-window.js';

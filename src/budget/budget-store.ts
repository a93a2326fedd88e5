/**
 * Where budget state lives: a small interface so a durable store can replace the in-memory one.
 *
 * @module
 */
import type { BudgetConfig } from './budget-config.js';
import type { UsageWindowState } from './usage-window.js';

/** Serializable state of one scope (`agent:<id>`, `pool:<id>` or `fabric`). Plain JSON. */
export interface BudgetScopeSnapshot {
  version: 1;
  /** The limits set on the scope, or null when it only tracks usage. */
  config: BudgetConfig | null;
  tokens: UsageWindowState;
  cost: UsageWindowState;
  /**
   * The wall and boot-time clocks when the windows were written (see `ClockMark`): a process
   * that loads them on the same boot moves them by a step of the wall clock made while none ran.
   * Absent where the boot-time clock cannot be read (and in files written before it existed).
   */
  clock?: { wall: number; boot: number; bootId: string };
  /** Which alerts have fired and not yet re-armed (so a restart does not repeat them). */
  alerts: {
    tokensWarned: boolean;
    tokensExhausted: boolean;
    costWarned: boolean;
    costExhausted: boolean;
  };
}

/** Something whose current state can be serialized (a live scope). */
export interface BudgetStateSource {
  toJSON(): BudgetScopeSnapshot;
  /** `JSON.stringify(toJSON())`, when the source can write it faster itself. */
  toJSONText?(): string;
  /**
   * Leased persistence, for a store that does not commit every change (both or neither): the
   * text to commit with `percent` % of a limit added to the usage of the current window heads
   * (a ceiling), remembered as what the store holds; `leaseCovers()` is true while the live
   * state is still within that ceiling (nothing to write). See ScopeUsage.
   */
  toLeasedJSONText?(percent: number): string;
  leaseCovers?(): boolean;
  /**
   * With leased persistence: true while what the store holds covers the usage and in-flight
   * reservations of every window with a limit (see ScopeUsage).
   */
  reservationCovered?(): boolean;
}

/**
 * Persistence of budget state. The BudgetManager keeps live state in memory and talks to the
 * store synchronously, so implementations must be cheap on the hot path:
 *
 * - `load` is called once per scope, the first time the manager touches it (after a restart,
 *   this is how usage survives: a crash must never reset a budget);
 * - `changed` is called after every change to a scope with the live state; a durable store
 *   records that the scope is dirty and writes its JSON behind, batched (`source.toJSONText()`
 *   when the source has it, else `JSON.stringify(source.toJSON())`: the same text). A store may
 *   instead write a leased ceiling (`toLeasedJSONText`) and skip the changes it covers.
 *
 * A store may cover in-flight reservations (`coverReservation`, `commitCoverage`): the calls
 * they guard were forwarded, and a crash must not let the agent pay for them again. Without
 * those (the in-memory store), reservations are not persisted: after a crash they are gone.
 */
export interface BudgetStore {
  load(scope: string): BudgetScopeSnapshot | undefined;
  changed(scope: string, source: BudgetStateSource): void;
  delete(scope: string): void;
  /**
   * Called after a reservation was added to `scope` (both or neither with `commitCoverage`):
   * true when what the store holds does not cover it — the scope is then pending, and the
   * caller must call {@link commitCoverage} before the reserved call goes ahead.
   */
  coverReservation?(scope: string, source: BudgetStateSource): boolean;
  /**
   * Commits what {@link coverReservation} found uncovered, synchronously.
   * @throws StateStoreError when that commit fails (or the store is closed): the reservation
   *   is not covered, and the call it guards must not go ahead.
   */
  commitCoverage?(): void;
}

/**
 * The default store: keeps everything in memory. `snapshot()` serializes every scope, and a
 * store built from a snapshot resumes it (used by tests, and as the reference for durable stores).
 *
 * @example
 * const saved = JSON.stringify(store.snapshot());
 * const restored = new BudgetManager({ store: new InMemoryBudgetStore(JSON.parse(saved)) });
 */
export class InMemoryBudgetStore implements BudgetStore {
  readonly #saved = new Map<string, BudgetScopeSnapshot>();
  readonly #live = new Map<string, BudgetStateSource>();

  constructor(snapshot: Readonly<Record<string, BudgetScopeSnapshot>> = {}) {
    for (const [scope, state] of Object.entries(snapshot)) this.#saved.set(scope, state);
  }

  load(scope: string): BudgetScopeSnapshot | undefined {
    return this.#live.get(scope)?.toJSON() ?? this.#saved.get(scope);
  }

  changed(scope: string, source: BudgetStateSource): void {
    if (this.#live.get(scope) !== source) this.#live.set(scope, source);
  }

  delete(scope: string): void {
    this.#saved.delete(scope);
    this.#live.delete(scope);
  }

  /** Every scope's state, as plain JSON-serializable data. */
  snapshot(): Record<string, BudgetScopeSnapshot> {
    const out: Record<string, BudgetScopeSnapshot> = {};
    for (const [scope, state] of this.#saved) out[scope] = state;
    for (const [scope, source] of this.#live) out[scope] = source.toJSON();
    return out;
  }
}

/**
 * Bounds on the audit lines of refusals that ran nothing (a malformed request, an unknown tool,
 * arguments past the input limits, a request reusing an in-flight id …): each costs its agent
 * nothing, so without a bound one token could fill the audit log. A session (or, for calls
 * that come without one — gRPC, in-process — an agent) writes at most `limit` lines of a kind a
 * window of `windowMs`; the rest are counted and told in one summary line of that kind when the
 * window ends (or the session closes first), so a flood cannot fill the log yet no refusal goes
 * unrecorded.
 *
 * @module
 */

/** Lines of one kind of refusal one session (or session-less agent) may write a window. */
export const REFUSAL_LINES = 100;
/** The window of {@link REFUSAL_LINES}: a minute. */
export const REFUSAL_WINDOW_MS = 60_000;

/**
 * Counts lines against a per-window limit.
 *
 * @example
 * const budget = new LineBudget(100, 60_000, (n) => writeSummary(n));
 * if (budget.take()) writeLine();
 * // when the session closes:
 * budget.close();
 */
export class LineBudget {
  readonly #limit: number;
  readonly #windowMs: number;
  readonly #summary: (suppressed: number) => void;
  readonly #idle: (() => void) | undefined;
  #lines = 0;
  #suppressed = 0;
  #timer: NodeJS.Timeout | undefined;
  #closed = false;

  /**
   * @param summary - called with how many lines were not written, once per window that had any
   *   (at its end, or at {@link close}).
   * @param idle - called when a window ends on its own (after its summary): the budget is as
   *   new until the next {@link take}, so its owner may forget it.
   */
  constructor(
    limit: number,
    windowMs: number,
    summary: (suppressed: number) => void,
    idle?: () => void,
  ) {
    this.#limit = limit;
    this.#windowMs = windowMs;
    this.#summary = summary;
    this.#idle = idle;
  }

  /** True when one more line may be written now; else it is counted for the summary. */
  take(): boolean {
    if (this.#closed) return true;
    this.#timer ??= setTimeout(() => {
      this.#endWindow();
      this.#idle?.();
    }, this.#windowMs).unref();
    if (this.#lines < this.#limit) {
      this.#lines++;
      return true;
    }
    this.#suppressed++;
    return false;
  }

  /** Writes the summary of the lines not written yet (if any) and stops counting. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    clearTimeout(this.#timer);
    this.#endWindow();
  }

  #endWindow(): void {
    this.#timer = undefined;
    const suppressed = this.#suppressed;
    this.#lines = 0;
    this.#suppressed = 0;
    if (suppressed > 0) this.#summary(suppressed);
  }
}

/** A kind of refusal bounded apart from the others: what its summary line says. */
export interface RefusalKind {
  /** The summary line's `tool`, e.g. `(unknown tools)`. */
  readonly tool: string;
  /** The `decision` of the kind's lines (and of its summary). */
  readonly decision: string;
  /** The `code` of the kind's lines (and of its summary). */
  readonly code: string;
}

/**
 * The {@link LineBudget}s of refusals that ran nothing, one per kind and session — or per kind
 * and agent for refusals that come without a session (gRPC, in-process callers), forgotten when
 * their window ends. Counts every line not written ({@link suppressed}, for the metrics).
 */
export class RefusalLines {
  readonly #summary: (agent: string, kind: RefusalKind, suppressed: number) => void;
  readonly #limit: number;
  readonly #windowMs: number;
  readonly #bySession = new WeakMap<object, Map<RefusalKind, LineBudget>>();
  readonly #byAgent = new Map<string, Map<RefusalKind, LineBudget>>();
  #suppressed = 0;
  #closed = false;

  /** @param summary - writes the summary line of `suppressed` refusals of `agent`'s. */
  constructor(
    summary: (agent: string, kind: RefusalKind, suppressed: number) => void,
    limit = REFUSAL_LINES,
    windowMs = REFUSAL_WINDOW_MS,
  ) {
    this.#summary = summary;
    this.#limit = limit;
    this.#windowMs = windowMs;
  }

  /** Lines not written one a line so far (each counted in a summary, written or pending). */
  get suppressed(): number {
    return this.#suppressed;
  }

  /**
   * True when the line of one more refusal of `kind` may be written; else it is counted for the
   * summary. `session` undefined: bounded per `agent`.
   */
  take(session: object | undefined, agent: string, kind: RefusalKind): boolean {
    if (this.#closed) return true;
    let budgets: Map<RefusalKind, LineBudget> | undefined;
    if (session !== undefined) {
      budgets = this.#bySession.get(session);
      if (budgets === undefined) this.#bySession.set(session, (budgets = new Map()));
    } else {
      budgets = this.#byAgent.get(agent);
      if (budgets === undefined) this.#byAgent.set(agent, (budgets = new Map()));
    }
    let budget = budgets.get(kind);
    if (budget === undefined) {
      const forget =
        session === undefined
          ? (): void => {
              budgets.delete(kind);
              if (budgets.size === 0) this.#byAgent.delete(agent);
            }
          : undefined;
      budget = new LineBudget(
        this.#limit,
        this.#windowMs,
        (n) => this.#summary(agent, kind, n),
        forget,
      );
      budgets.set(kind, budget);
    }
    if (budget.take()) return true;
    this.#suppressed++;
    return false;
  }

  /** Writes the summaries still pending of a session that closed. */
  closeSession(session: object): void {
    const budgets = this.#bySession.get(session);
    this.#bySession.delete(session);
    for (const b of budgets?.values() ?? []) b.close();
  }

  /**
   * Writes the summaries still pending of session-less agents and stops bounding (sessions
   * still open write theirs at {@link closeSession}). Idempotent.
   */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const budgets of this.#byAgent.values()) for (const b of budgets.values()) b.close();
    this.#byAgent.clear();
  }
}

/**
 * Bounds on the audit lines of refusals that ran nothing (a malformed request, an unknown tool,
 * arguments past the input limits, a request reusing an in-flight id …): each costs its agent
 * nothing, so without a bound one token could fill the audit log. An agent writes at most
 * `limit` lines of a kind a window of `windowMs`, whatever door or session they come through (a
 * bound per session let it flood on by opening new sessions); the rest are counted and told in a
 * summary line of that kind when the window ends, when one of its sessions closes, or when the
 * gateway stops, so a flood cannot fill the log yet no refusal goes unrecorded.
 *
 * @module
 */

/** Lines of one kind of refusal one agent may write a window. */
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

  /**
   * Writes the summary of the lines not written so far (if any) now; the window goes on (its
   * lines stay counted), so what follows in it is bounded as before.
   */
  flush(): void {
    const suppressed = this.#suppressed;
    this.#suppressed = 0;
    if (suppressed > 0) this.#summary(suppressed);
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
 * The {@link LineBudget}s of refusals that ran nothing, one per kind and agent — whatever door or
 * session the refusals came through, so an agent opening new sessions gets no new lines — each
 * forgotten when its window ends. Counts every line not written ({@link suppressed}, for the
 * metrics). `K` is what tells kinds apart (a `Map` key; the Streamable HTTP endpoint bounds its
 * lines of undelivered messages with one, a kind per reason).
 */
export class RefusalLines<K = RefusalKind> {
  readonly #summary: (agent: string, kind: K, suppressed: number) => void;
  readonly #limit: number;
  readonly #windowMs: number;
  readonly #byAgent = new Map<string, Map<K, LineBudget>>();
  #suppressed = 0;
  #closed = false;

  /** @param summary - writes the summary line of `suppressed` refusals of `agent`'s. */
  constructor(
    summary: (agent: string, kind: K, suppressed: number) => void,
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
   * True when the line of one more refusal of `kind` by `agent` may be written; else it is
   * counted for the summary.
   */
  take(agent: string, kind: K): boolean {
    if (this.#closed) return true;
    let budgets = this.#byAgent.get(agent);
    if (budgets === undefined) this.#byAgent.set(agent, (budgets = new Map()));
    let budget = budgets.get(kind);
    if (budget === undefined) {
      const mine = budgets;
      budget = new LineBudget(
        this.#limit,
        this.#windowMs,
        (n) => this.#summary(agent, kind, n),
        () => {
          mine.delete(kind);
          if (mine.size === 0) this.#byAgent.delete(agent);
        },
      );
      budgets.set(kind, budget);
    }
    if (budget.take()) return true;
    this.#suppressed++;
    return false;
  }

  /**
   * A session of `agent` closed: writes the agent's summaries pending so far. Its windows go on,
   * so a session opened next in the same minute has no new lines to write.
   */
  closeSession(agent: string): void {
    for (const b of this.#byAgent.get(agent)?.values() ?? []) b.flush();
  }

  /** Writes every summary still pending and stops bounding. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const budgets of this.#byAgent.values()) for (const b of budgets.values()) b.close();
    this.#byAgent.clear();
  }
}

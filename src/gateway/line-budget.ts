/**
 * A bound on the audit lines one session's refusals of a kind may write: at most `limit` a
 * window of `windowMs`, the rest counted and told in one summary line when the window ends (or
 * the session closes first), so a flood cannot fill the log yet no refusal goes unrecorded.
 *
 * @module
 */

/** Lines of requests reusing an in-flight id one session may write a window. */
export const REUSED_ID_LINES = 100;
/** The window of {@link REUSED_ID_LINES}: a minute. */
export const REUSED_ID_WINDOW_MS = 60_000;

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
  #lines = 0;
  #suppressed = 0;
  #timer: NodeJS.Timeout | undefined;
  #closed = false;

  /**
   * @param summary - called with how many lines were not written, once per window that had any
   *   (at its end, or at {@link close}).
   */
  constructor(limit: number, windowMs: number, summary: (suppressed: number) => void) {
    this.#limit = limit;
    this.#windowMs = windowMs;
    this.#summary = summary;
  }

  /** True when one more line may be written now; else it is counted for the summary. */
  take(): boolean {
    if (this.#closed) return true;
    this.#timer ??= setTimeout(() => this.#endWindow(), this.#windowMs).unref();
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

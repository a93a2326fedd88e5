/**
 * Logs a background job's failures without flooding the log: a job that fails on every run (the
 * hook patrol runs every `hooks.patrolIntervalSeconds`, 30 s by default, and may run far more
 * often) would otherwise write the same line forever. The first failure is logged at once; then
 * at most one line per `windowMs` for as long as failures go on, with the latest message and how
 * many failures it stands for. A failure after a quiet window is logged at once again.
 *
 * @module
 */
import type { GatewayLogEntry } from '../gateway/tool-call-pipeline.js';

/** Default of {@link FailureLogOptions.windowMs}: 5 minutes. */
export const DEFAULT_FAILURE_LOG_WINDOW_MS = 5 * 60_000;

/** Options of {@link FailureLog}. */
export interface FailureLogOptions {
  /** What writes a line (the sidecar's logger). */
  log: (entry: GatewayLogEntry) => void;
  /** Level of its lines. @default 'error' */
  level?: GatewayLogEntry['level'];
  /** Fewest ms between two lines. @default 300000 */
  windowMs?: number;
  /**
   * The clock in ms. Elapsed time: a wall clock set back does not silence failures for as long
   * as it went back. @default performance.now
   */
  now?: () => number;
}

/** One background job's failures, logged as the module comment says. */
export class FailureLog {
  readonly #log: (entry: GatewayLogEntry) => void;
  readonly #level: GatewayLogEntry['level'];
  readonly #windowMs: number;
  readonly #now: () => number;
  /** When the last line was written (undefined: none yet). */
  #loggedAt: number | undefined;
  /** Failures since that line that it did not show. */
  #unlogged = 0;

  constructor(options: FailureLogOptions) {
    this.#log = options.log;
    this.#level = options.level ?? 'error';
    this.#windowMs = options.windowMs ?? DEFAULT_FAILURE_LOG_WINDOW_MS;
    this.#now = options.now ?? (() => performance.now());
  }

  /** Records one failure: `what` says what failed, `error` why (its message only). */
  report(what: string, error: unknown): void {
    const now = this.#now();
    if (this.#loggedAt !== undefined && now - this.#loggedAt < this.#windowMs) {
      this.#unlogged++;
      return;
    }
    const more =
      this.#unlogged === 0
        ? ''
        : ` (${this.#unlogged} more failure${this.#unlogged === 1 ? '' : 's'} since the last line, not logged one by one)`;
    this.#loggedAt = now;
    this.#unlogged = 0;
    this.#log({ level: this.#level, msg: `${what}: ${messageOf(error)}${more}` });
  }
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

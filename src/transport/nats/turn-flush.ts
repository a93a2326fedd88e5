/**
 * When a sidecar's batch of task publishes is handed to the NATS connection: each socket write
 * is a cost for this process and a read for the server, the main cost per task at a paced rate,
 * so publishes dispatched close together should leave together — but the first ones of an
 * event-loop turn should not wait for the rest of the turn's I/O callbacks either.
 *
 * The first flush of a turn runs once the microtask queue it was asked for in has run (a
 * `nextTick` queued from a microtask runs only once the whole queue has: Node runs next-tick
 * callbacks between microtask checkpoints, not within one), so everything asked for in that run
 * — a burst of schedules, the dispatches after one socket read of reports — shares a write.
 * Flushes asked for later in the same turn (more I/O callbacks of the same poll phase, at a high
 * rate) wait for the turn's end (`setImmediate`) and leave together.
 *
 * (A worker's `start` reports still leave at the turn's end: flushed like this, the full
 * bench's dispatch rate fell — see bench/RESULTS.md, "NATS transport".)
 *
 * @module
 */
export class TurnFlush {
  readonly #flush: () => void;
  #queued = false;
  /** A flush ran at the end of a microtask run of this turn (reset at the turn's end). */
  #usedThisTurn = false;

  /** @param flush - sends what is waiting (called at most once per {@link queue}). */
  constructor(flush: () => void) {
    this.#flush = flush;
  }

  /** A flush is queued and has not run yet. */
  get queued(): boolean {
    return this.#queued;
  }

  /** Queues a flush (nothing when one is queued): see the module comment for when it runs. */
  queue(): void {
    if (this.#queued) return;
    this.#queued = true;
    if (this.#usedThisTurn) setImmediate(this.#late);
    else queueMicrotask(this.#tick);
  }

  readonly #tick = (): void => {
    process.nextTick(this.#soon);
  };

  readonly #soon = (): void => {
    this.#queued = false;
    if (!this.#usedThisTurn) {
      this.#usedThisTurn = true;
      setImmediate(this.#endOfTurn);
    }
    this.#flush();
  };

  readonly #late = (): void => {
    this.#queued = false;
    this.#flush();
  };

  readonly #endOfTurn = (): void => {
    this.#usedThisTurn = false;
  };
}

/**
 * The turn-taking of an `exclusive` upstream (one that keeps per-client state, e.g. a browser):
 * one owner's calls at a time. An owner is an MCP session — its own calls share the turn — or,
 * for a door without sessions (a gRPC call), the call itself. Waiting owners are admitted in
 * arrival order (FIFO); a waiting call that is cancelled leaves the queue.
 *
 * @module
 */

interface Waiter {
  readonly owner: object;
  readonly go: () => void;
}

/** The gate of one exclusive upstream. */
export class UpstreamGate {
  #owner: object | undefined;
  #active = 0;
  #waiting: Waiter[] = [];

  /**
   * Resolves when `owner` may use the upstream (at once when it is free, or `owner` already
   * has the turn and nobody waits). Rejects with `signal.reason` when the wait is cancelled.
   * Pair every resolved `enter` with one {@link leave}.
   */
  async enter(owner: object, signal: AbortSignal): Promise<void> {
    if (this.#owner === undefined || (this.#owner === owner && this.#waiting.length === 0)) {
      this.#owner = owner;
      this.#active++;
      return;
    }
    await new Promise<void>((resolve, reject) => {
      const waiter: Waiter = {
        owner,
        go: () => {
          signal.removeEventListener('abort', onAbort);
          resolve();
        },
      };
      const onAbort = (): void => {
        const i = this.#waiting.indexOf(waiter);
        if (i >= 0) this.#waiting.splice(i, 1);
        reject(signal.reason instanceof Error ? signal.reason : new Error('cancelled'));
      };
      signal.addEventListener('abort', onAbort, { once: true });
      this.#waiting.push(waiter);
    });
  }

  /** Ends one call; the next waiting owner takes over when the upstream is free. */
  leave(): void {
    if (--this.#active > 0) return;
    this.#owner = undefined;
    const next = this.#waiting[0]?.owner;
    if (next === undefined) return;
    // Admit every waiting call of the next owner together.
    this.#owner = next;
    for (const w of this.#waiting.filter((x) => x.owner === next)) {
      this.#active++;
      w.go();
    }
    this.#waiting = this.#waiting.filter((x) => x.owner !== next);
  }
}

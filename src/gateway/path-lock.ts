/**
 * The path lock of one upstream: a reader–writer lock that keeps the gateway's path check and
 * the upstream's own resolution of the same call from being told apart by another call of that
 * upstream (README, "Path resolution").
 *
 * A call that carries path-like values takes it before its paths are resolved for policy and
 * holds it until the upstream answers (or the call is cancelled, times out or is refused): a
 * call of a tool that may rename, move, link or remove names (server-filesystem's `move_file`)
 * takes it alone (exclusive); a call of a tool declared as keeping names (`paths.keepNames`)
 * shares it with other such calls. So no `move_file` runs between another call's check and that
 * call's answer, and calls that only read or write file contents still run side by side.
 *
 * Waiters are admitted in arrival order (FIFO): a waiting exclusive call holds back shared calls
 * that came after it, so a stream of reads cannot starve a move. A waiter leaves the queue when
 * its wait is cancelled. Taking a free lock allocates nothing but the release function and
 * returns no promise.
 *
 * @module
 */

/** Gives the lock back. Idempotent: a second call does nothing. */
export type PathLockRelease = () => void;

interface Waiter {
  readonly exclusive: boolean;
  readonly grant: () => void;
}

/** The path lock of one upstream. */
export class PathLock {
  /** Shared holders. */
  #shared = 0;
  #exclusive = false;
  #waiting: Waiter[] = [];

  /** Holders and waiters, for tests and diagnostics. */
  get state(): { shared: number; exclusive: boolean; waiting: number } {
    return { shared: this.#shared, exclusive: this.#exclusive, waiting: this.#waiting.length };
  }

  /**
   * Takes the lock now when it is free for `exclusive` and nobody waits (no promise), else
   * `undefined`: the caller waits with {@link wait}.
   */
  tryAcquire(exclusive: boolean): PathLockRelease | undefined {
    if (this.#waiting.length > 0 || !this.#fits(exclusive)) return undefined;
    return this.#take(exclusive);
  }

  /**
   * Waits for the lock in arrival order. Rejects with `signal`'s reason (an `Error`) when it
   * aborts first: the waiter leaves the queue and holds nothing.
   */
  wait(exclusive: boolean, signal: AbortSignal): Promise<PathLockRelease> {
    const now = this.tryAcquire(exclusive);
    if (now !== undefined) return Promise.resolve(now);
    if (signal.aborted) return Promise.reject(reasonOf(signal));
    return new Promise<PathLockRelease>((resolve, reject) => {
      const waiter: Waiter = {
        exclusive,
        grant: () => {
          signal.removeEventListener('abort', onAbort);
          resolve(this.#take(exclusive));
        },
      };
      const onAbort = (): void => {
        const i = this.#waiting.indexOf(waiter);
        if (i >= 0) this.#waiting.splice(i, 1);
        reject(reasonOf(signal));
        // A cancelled exclusive waiter at the head held back the shared calls behind it.
        this.#admit();
      };
      signal.addEventListener('abort', onAbort, { once: true });
      this.#waiting.push(waiter);
    });
  }

  #fits(exclusive: boolean): boolean {
    return exclusive ? !this.#exclusive && this.#shared === 0 : !this.#exclusive;
  }

  #take(exclusive: boolean): PathLockRelease {
    if (exclusive) this.#exclusive = true;
    else this.#shared++;
    let held = true;
    return () => {
      if (!held) return;
      held = false;
      if (exclusive) this.#exclusive = false;
      else this.#shared--;
      this.#admit();
    };
  }

  /** Grants the lock to the waiters at the head of the queue that fit, in order. */
  #admit(): void {
    while (this.#waiting.length > 0 && this.#fits(this.#waiting[0]!.exclusive)) {
      const next = this.#waiting.shift()!;
      next.grant();
    }
  }
}

function reasonOf(signal: AbortSignal): Error {
  const reason: unknown = signal.reason;
  return reason instanceof Error ? reason : new Error(String(reason ?? 'cancelled'));
}

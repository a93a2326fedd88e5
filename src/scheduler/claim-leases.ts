/**
 * Delivery leases of claimed tasks (`ackSeconds` of a claim, over gRPC, the HTTP door and MCP):
 * a task handed out by a claim that took a lease goes back to its queue as undelivered — the
 * attempt not counted, as for an answer the server saw undelivered — unless the agent
 * acknowledges it in time with a report naming its attempt (progress, completion, failure).
 * It covers the window a server cannot see: an answer it wrote that the client then dropped.
 *
 * Progress is seen on the scheduler's `task.progress` event (listened to only while a lease is
 * open), so a report through any door acknowledges; a completion, failure or retry moves the
 * task on, which an expiring lease finds (`unclaim` then does nothing).
 *
 * @module
 */
import type { Task } from '../task.js';
import type { AgentScheduler } from './agent-scheduler.js';

/** Longest delivery lease a claim may ask for, in seconds. */
export const MAX_CLAIM_ACK_SECONDS = 3600;

/** The open delivery leases of one scheduler. */
export class ClaimLeases {
  readonly #scheduler: AgentScheduler;
  /** Open leases by `taskId\nattempt`. */
  readonly #timers = new Map<string, NodeJS.Timeout>();
  #listening = false;
  readonly #onProgress = (t: Task): void => this.end(t.id, t.attempt);

  constructor(scheduler: AgentScheduler) {
    this.#scheduler = scheduler;
  }

  /** Starts the lease of `agentId`'s attempt: unacknowledged after `ms`, it is given back. */
  start(agentId: string, taskId: string, attempt: number, ms: number): void {
    const key = `${taskId}\n${attempt}`;
    clearTimeout(this.#timers.get(key));
    const timer = setTimeout(() => {
      this.#timers.delete(key);
      this.#listen();
      try {
        this.#scheduler.unclaim(taskId, attempt, agentId);
      } catch {
        // The scheduler closed meanwhile: nothing to give back to.
      }
    }, ms);
    timer.unref();
    this.#timers.set(key, timer);
    this.#listen();
  }

  /** Ends the lease of an attempt (acknowledged, or given back already); no-op without one. */
  end(taskId: string, attempt: number): void {
    const key = `${taskId}\n${attempt}`;
    const timer = this.#timers.get(key);
    if (timer === undefined) return;
    clearTimeout(timer);
    this.#timers.delete(key);
    this.#listen();
  }

  /** Ends every lease (the fabric closes). */
  clear(): void {
    for (const timer of this.#timers.values()) clearTimeout(timer);
    this.#timers.clear();
    this.#listen();
  }

  /** Listens to progress reports exactly while a lease is open. */
  #listen(): void {
    const want = this.#timers.size > 0;
    if (want === this.#listening) return;
    this.#listening = want;
    if (want) this.#scheduler.events.on('task.progress', this.#onProgress);
    else this.#scheduler.events.off('task.progress', this.#onProgress);
  }
}

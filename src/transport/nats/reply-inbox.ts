/**
 * Requests over one reply subscription: each request is a publish whose reply subject is
 * `<inbox>.<n>` under a wildcard subscription made once, with one timer that ends the requests
 * nobody answered in time.
 *
 * nats.js' own `request()` makes, per request, a promise, a `setTimeout`, an entry in its
 * request multiplexer and — when the answer arrives — an error object with a stack trace that
 * nobody sees (its cleanup "cancels" the finished request). On the hot paths of dispatch (a
 * JetStream publish per task, a report batch per event-loop turn) that was a tenth of a task's
 * CPU; here a request is a map entry and a callback.
 *
 * @module
 */
import type { Msg, NatsConnection, PublishOptions, Subscription } from '@nats-io/transport-node';
import { createInbox } from '@nats-io/transport-node';

/** Why a request got no answer. */
export type NoAnswer = 'timeout' | 'no-responders' | 'closed';

/**
 * Called with the answer, or once with why there is none. Given an answer, it may return
 * `false`: the message is not the answer (anyone may publish on a reply subject — one whose MAC
 * is wrong) and the request stays open, to be called again with the next message or at its
 * deadline.
 */
export type ReplyCallback = (
  msg: Msg | undefined,
  noAnswer: NoAnswer | undefined,
) => boolean | void;

interface Pending {
  readonly callback: ReplyCallback;
  readonly deadline: number;
}

/** Requests answered on one wildcard subscription; see the module comment. */
export class ReplyInbox {
  readonly #nc: NatsConnection;
  readonly #prefix: string;
  readonly #sub: Subscription;
  /** Open requests by number; numbers grow, so the map is in sending order. */
  readonly #pending = new Map<number, Pending>();
  readonly #sweep: NodeJS.Timeout;
  #next = 0;
  #closed = false;

  /**
   * @param sweepMs - how often requests are checked for their deadline (a timed-out request is
   *   told so up to this much late).
   */
  constructor(nc: NatsConnection, sweepMs = 100) {
    this.#nc = nc;
    // The connection's inbox prefix, so a server that permits only its inboxes still answers.
    const inboxPrefix = (nc as { options?: { inboxPrefix?: string } }).options?.inboxPrefix;
    this.#prefix = `${createInbox(inboxPrefix)}.`;
    this.#sub = nc.subscribe(`${this.#prefix}*`, {
      callback: (err, msg) => {
        // Nothing may throw out of here (nats.js would stop reading the connection): not even
        // a request's callback given something unexpected.
        try {
          if (err === null) this.#onReply(msg);
        } catch {
          // that request's answer is lost; it ended (its callback ran)
        }
      },
    });
    // Deadlines are monotonic: a wall-clock step neither times out every open request nor keeps
    // one waiting for as long as the clock went back.
    this.#sweep = setInterval(() => this.#expire(performance.now()), sweepMs);
    this.#sweep.unref();
  }

  /** Open requests. */
  get size(): number {
    return this.#pending.size;
  }

  /**
   * Publishes `data` to `subject` with a reply subject of this inbox; `callback` gets the answer
   * or, after `timeoutMs` (or at once when the connection is closed), why there is none.
   */
  request(
    subject: string,
    data: Uint8Array,
    timeoutMs: number,
    callback: ReplyCallback,
    headers?: PublishOptions['headers'],
  ): void {
    if (this.#closed || this.#nc.isClosed()) {
      callback(undefined, 'closed');
      return;
    }
    const id = ++this.#next;
    this.#pending.set(id, { callback, deadline: performance.now() + timeoutMs });
    const reply = this.#prefix + id;
    try {
      this.#nc.publish(subject, data, headers === undefined ? { reply } : { reply, headers });
    } catch {
      // Closed (or draining) between the check above and here.
      this.#pending.delete(id);
      callback(undefined, 'closed');
    }
  }

  #onReply(msg: Msg): void {
    const id = Number(msg.subject.slice(this.#prefix.length));
    const p = this.#pending.get(id);
    if (p === undefined) return; // answered after its deadline, or not ours
    // The server's "no responders" status: nobody subscribes the request's subject.
    if (msg.data.length === 0 && msg.headers?.code === 503) {
      this.#pending.delete(id);
      p.callback(undefined, 'no-responders');
      return;
    }
    this.#pending.delete(id);
    // Not the answer, says the callback: the request waits on, for the rest of its time.
    if (p.callback(msg, undefined) === false && !this.#closed) this.#pending.set(id, p);
  }

  #expire(now: number): void {
    for (const [id, p] of this.#pending) {
      // Timeouts differ per request, so the map is not in deadline order: look at every one.
      if (p.deadline > now) continue;
      this.#pending.delete(id);
      try {
        p.callback(undefined, 'timeout');
      } catch {
        // in a timer: must not end the process (the request has ended all the same)
      }
    }
  }

  /** Ends every open request (`closed`) and unsubscribes. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    clearInterval(this.#sweep);
    const open = [...this.#pending.values()];
    this.#pending.clear();
    for (const p of open) p.callback(undefined, 'closed');
    if (!this.#nc.isClosed()) this.#sub.unsubscribe();
  }
}

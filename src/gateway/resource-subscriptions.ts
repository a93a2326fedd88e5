/**
 * Who is subscribed to which resource. Upstreams are shared, so the gateway subscribes upstream
 * once per URI — when its first session subscribes — and unsubscribes when the last one leaves;
 * `notifications/resources/updated` goes to every session subscribed to the URI. Each session
 * also keeps its own set (`GatewaySession.subscriptions`), which bounds it and is walked when it
 * closes.
 *
 * @module
 */
import type { Notification } from '@modelcontextprotocol/sdk/types.js';
import type { GatewaySession } from './session.js';

/** The subscribers of every subscribed resource URI. */
export class ResourceSubscriptions {
  readonly #byUri = new Map<string, Set<GatewaySession>>();

  /** Subscribes `session` to `uri`; true when it is the URI's first subscriber (subscribe upstream). */
  add(session: GatewaySession, uri: string): boolean {
    let subs = this.#byUri.get(uri);
    if (!subs) this.#byUri.set(uri, (subs = new Set()));
    const first = subs.size === 0;
    subs.add(session);
    session.subscriptions.add(uri);
    return first;
  }

  /** Unsubscribes `session` from `uri`; true when it was the last subscriber (unsubscribe upstream). */
  remove(session: GatewaySession, uri: string): boolean {
    session.subscriptions.delete(uri);
    const subs = this.#byUri.get(uri);
    if (!subs?.delete(session) || subs.size > 0) return false;
    this.#byUri.delete(uri);
    return true;
  }

  /** Whether a session is subscribed to `uri`. */
  has(uri: string): boolean {
    return this.#byUri.has(uri);
  }

  /** Sends `n` (a resource update) to the sessions subscribed to `uri`. */
  notify(uri: string, n: Notification): void {
    for (const s of this.#byUri.get(uri) ?? []) s.notify(n);
  }

  /** Every URI with at least one subscriber (to subscribe again after an upstream restarted). */
  uris(): IterableIterator<string> {
    return this.#byUri.keys();
  }
}

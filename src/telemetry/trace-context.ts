/**
 * The W3C `traceparent` of the upstream call being made, carried across awaits so the HTTP
 * upstream transport can send it as a header. Kept apart from tracing.ts so that code on the
 * call path loads no OpenTelemetry module: without tracing nothing ever enters the store, and
 * {@link outgoingTraceparent} returns undefined.
 *
 * @module
 */
import { AsyncLocalStorage } from 'node:async_hooks';

const outgoing = new AsyncLocalStorage<string>();

/** Runs `fn` with `traceparent` as the context of the HTTP requests it makes. */
export function withOutgoingTraceparent<T>(traceparent: string, fn: () => T): T {
  return outgoing.run(traceparent, fn);
}

/**
 * The `traceparent` header value for an HTTP request made now: the upstream-call span's, when
 * the request is made inside a traced upstream call; otherwise undefined.
 */
export function outgoingTraceparent(): string | undefined {
  return outgoing.getStore();
}

/** A `fetch` that adds the current upstream-call span's `traceparent` header, when there is one. */
export function traceparentFetch(base: typeof fetch): typeof fetch {
  return (input, init) => {
    const traceparent = outgoing.getStore();
    if (traceparent === undefined) return base(input, init);
    const headers = new Headers(init?.headers);
    headers.set('traceparent', traceparent);
    return base(input, { ...init, headers });
  };
}

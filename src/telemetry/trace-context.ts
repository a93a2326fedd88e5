/**
 * W3C trace context carried across awaits: the `traceparent` of the upstream call being made
 * (the HTTP upstream transport sends it as a header), and the caller's context of a task being
 * scheduled (the `task <type>` span's parent). Kept apart from tracing.ts so that code on the
 * call path loads no OpenTelemetry module: without tracing nothing ever enters the outgoing
 * store, and {@link outgoingTraceparent} returns undefined.
 *
 * @module
 */
import { AsyncLocalStorage } from 'node:async_hooks';

const outgoing = new AsyncLocalStorage<string>();

/** Where the caller's W3C trace context may be: `_meta`, HTTP headers or gRPC metadata (unchecked). */
export interface TraceCarrier {
  readonly traceparent?: unknown;
  readonly tracestate?: unknown;
}

const scheduling = new AsyncLocalStorage<TraceCarrier>();

/**
 * Runs `fn` (which schedules a task) with the caller's trace context, which the `task <type>`
 * span then continues. Without a `traceparent` in `carrier`, `fn` just runs (no store entered).
 * The values are read and validated by the tracing module only when tracing is on.
 */
export function withScheduleTraceContext<T>(carrier: TraceCarrier | undefined, fn: () => T): T {
  if (carrier?.traceparent === undefined) return fn();
  return scheduling.run(carrier, fn);
}

/**
 * The trace context a task scheduled now continues: the caller's (see
 * {@link withScheduleTraceContext}), else the upstream-call span of the tool call scheduling it
 * (`fabric__schedule_task`), else none.
 */
export function scheduleTraceContext(): TraceCarrier | undefined {
  const carrier = scheduling.getStore();
  if (carrier !== undefined) return carrier;
  const traceparent = outgoing.getStore();
  return traceparent === undefined ? undefined : { traceparent };
}

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

/**
 * `request` with the current upstream-call span's `traceparent` in `params._meta` (SEP-414), for
 * a `tools/call` to an upstream without HTTP headers per request (stdio, SSE); `request` itself
 * outside a traced call. The span is the right parent of the upstream's work, so it replaces a
 * `traceparent` already in `_meta` (the gateway forwards none of the caller's `_meta` keys: the
 * caller's context is the span's ancestor, in the same trace). Other `_meta` keys are kept.
 */
export function withTraceparentMeta<R extends { method: string; params?: object | undefined }>(
  request: R,
): R {
  const traceparent = outgoing.getStore();
  if (traceparent === undefined || request.method !== 'tools/call') return request;
  const params = (request.params ?? {}) as { _meta?: Record<string, unknown> };
  return { ...request, params: { ...params, _meta: { ...params._meta, traceparent } } };
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

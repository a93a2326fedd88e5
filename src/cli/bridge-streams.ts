/**
 * What `agent-fabric mcp` sees of its SSE streams, below the SDK's client transport (as its
 * `fetch`), so that no request of the agent waits for an answer that can no longer come:
 *
 * - A POST answered with an SSE stream that ends (the connection cut) before the request's
 *   answer, having sent no event id, cannot be resumed: the SDK transport drops it silently
 *   (sessions of MCP versions before 2025-11-25 get no priming event id). Reported to
 *   `onUnresumable` with the request's id.
 * - A stream that can be resumed is resumed by the SDK transport, `GET` with `Last-Event-ID`,
 *   again and again while the sidecar cannot be reached. Past `resumeMs` from its first attempt
 *   (or once the SDK transport's own count of attempts is spent) the stream is given up:
 *   reported to `onGiveUp` with its number, and every later attempt for it is answered here
 *   (HTTP 410, never sent), so that no answer comes for it after the agent was told it is lost.
 *   An attempt whose response does not begin within {@link ATTEMPT_MS} fails (a sidecar host
 *   that dropped off the network would otherwise hold it for good). An attempt answered with
 *   405 gives the stream up at once: the SDK transport tries no more after it.
 * - A resumed stream's body is led by an event with the `Last-Event-ID` it was resumed from
 *   (no data): the SDK transport resumes a stream from that stream's own ids only, and one that
 *   broke again before its first event was reconnected with no `Last-Event-ID`. A resumption
 *   counts as one only once the sidecar sent a byte on it: resumptions broken before that (a
 *   proxy that cuts them) are given up after `resumeMs` too.
 *
 * @module
 */

/** Status text of the answers given here to a given-up stream's attempts (see {@link isOwnRefusal}). */
const GIVEN_UP = 'stream given up by agent-fabric mcp';

/** Longest wait for the response of one attempt to resume a stream. */
const ATTEMPT_MS = 10_000;

/** Backoff of the SDK transport's reconnections, and how many it makes. */
export interface Reconnection {
  initialReconnectionDelay: number;
  maxReconnectionDelay: number;
  reconnectionDelayGrowFactor: number;
  maxRetries: number;
}

/**
 * The SDK transport's reconnection options for resuming a stream for at least `resumeMs`:
 * 0.5 s, growing by half, at most 5 s apart, as many attempts as fit (the default, 40 s: 12).
 */
export function reconnectionFor(resumeMs: number): Reconnection {
  const options = {
    initialReconnectionDelay: 500,
    maxReconnectionDelay: 5_000,
    reconnectionDelayGrowFactor: 1.5,
    maxRetries: 0,
  };
  let waited = 0;
  while (waited < resumeMs) {
    waited += Math.min(
      options.initialReconnectionDelay * options.reconnectionDelayGrowFactor ** options.maxRetries,
      options.maxReconnectionDelay,
    );
    options.maxRetries += 1;
  }
  options.maxRetries = Math.max(1, options.maxRetries);
  return options;
}

/** True for an error the SDK transport reports about an attempt answered here (not worth a log line). */
export function isOwnRefusal(error: Error): boolean {
  return error.message.includes(GIVEN_UP);
}

/** The stream an SSE event id `<stream>.<n>` belongs to. */
export function streamOf(eventId: string): string {
  const dot = eventId.indexOf('.');
  return dot === -1 ? eventId : eventId.slice(0, dot);
}

interface Resuming {
  /** When its first attempt since the stream broke went out (monotonic ms). */
  since: number;
  failures: number;
  givenUp: boolean;
}

/** Watches one session's streams (one SDK transport). */
export class StreamWatch {
  readonly #resumeMs: number;
  readonly #maxRetries: number;
  readonly #onUnresumable: (id: string | number) => void;
  readonly #onGiveUp: (stream: string, why: string) => void;
  readonly #streams = new Map<string, Resuming>();

  constructor(options: {
    resumeMs: number;
    reconnection: Reconnection;
    onUnresumable: (id: string | number) => void;
    onGiveUp: (stream: string, why: string) => void;
  }) {
    this.#resumeMs = options.resumeMs;
    this.#maxRetries = options.reconnection.maxRetries;
    this.#onUnresumable = options.onUnresumable;
    this.#onGiveUp = options.onGiveUp;
  }

  /** The transport's `fetch`. */
  readonly fetch = async (url: string | URL, init?: RequestInit): Promise<Response> => {
    const method = init?.method ?? 'GET';
    if (method === 'GET') {
      const last = new Headers(init?.headers).get('last-event-id');
      if (last !== null) return this.#resume(streamOf(last), last, url, init);
    }
    const response = await fetch(url, init);
    if (method !== 'POST' || !response.ok || response.body === null) return response;
    if (!(response.headers.get('content-type') ?? '').startsWith('text/event-stream')) {
      return response;
    }
    const id = requestIdOf(init?.body);
    if (id === undefined) return response;
    return watchEnd(response, () => this.#onUnresumable(id));
  };

  async #resume(
    stream: string,
    last: string,
    url: string | URL,
    init?: RequestInit,
  ): Promise<Response> {
    let state = this.#streams.get(stream);
    if (state?.givenUp === true) return new Response(null, { status: 410, statusText: GIVEN_UP });
    if (state === undefined) {
      state = { since: performance.now(), failures: 0, givenUp: false };
      this.#streams.set(stream, state);
    }
    const left = this.#resumeMs - (performance.now() - state.since);
    let response: Response;
    try {
      response = await fetchBegun(url, init, Math.max(1_000, Math.min(ATTEMPT_MS, left)));
    } catch (error) {
      this.#failed(stream, state);
      throw error;
    }
    if (response.status === 405) {
      // The SDK transport takes it for "no SSE stream here" and tries no more.
      state.givenUp = true;
      this.#onGiveUp(stream, `the sidecar refused to resume the request's stream (HTTP 405)`);
      return response;
    }
    if (!response.ok) {
      this.#failed(stream, state);
      return response;
    }
    if (performance.now() - state.since >= this.#resumeMs) {
      // Resumed, but every resumption for the resume time broke before the sidecar sent a byte
      // on it (a proxy cutting it): given up, or the SDK transport tried for good.
      await response.body?.cancel().catch(() => undefined);
      this.#giveUp(stream, state);
      return new Response(null, { status: 410, statusText: GIVEN_UP });
    }
    if (response.body === null) {
      this.#streams.delete(stream);
      return response;
    }
    // Resumed once the sidecar sent on it: a later break starts a new count (as the SDK
    // transport's own does).
    return primed(response, last, () => {
      if (this.#streams.get(stream) === state) this.#streams.delete(stream);
    });
  }

  #failed(stream: string, state: Resuming): void {
    state.failures += 1;
    if (state.givenUp) return;
    if (state.failures >= this.#maxRetries || performance.now() - state.since >= this.#resumeMs) {
      this.#giveUp(stream, state);
    }
  }

  #giveUp(stream: string, state: Resuming): void {
    state.givenUp = true;
    this.#onGiveUp(
      stream,
      `the sidecar could not be reached to resume the request's stream for ${this.#resumeMs / 1000} s`,
    );
  }
}

/** The id of the JSON-RPC request a POST body carries (one message per POST here). */
function requestIdOf(body: unknown): string | number | undefined {
  if (typeof body !== 'string') return undefined;
  try {
    const m = JSON.parse(body) as { id?: unknown; method?: unknown };
    if (typeof m.method !== 'string') return undefined;
    return typeof m.id === 'string' || typeof m.id === 'number' ? m.id : undefined;
  } catch {
    return undefined;
  }
}

/**
 * `response` (a resumed stream) with its body led by an event of id `last`, no data: the SDK
 * transport takes the id of a stream it resumes from that stream's own events only, so a resumed
 * stream that broke again before it carried one was resumed with no `Last-Event-ID` at all — a
 * plain GET, which never brings the request's answer. `sent` is called with each chunk the
 * sidecar sent on it.
 */
function primed(response: Response, last: string, sent: () => void): Response {
  const lead = new TextEncoder().encode(`id: ${last}\ndata: \n\n`);
  const reader = (response.body as ReadableStream<Uint8Array>).getReader();
  let led = false;
  const body = new ReadableStream<Uint8Array>({
    async pull(controller) {
      if (!led) {
        led = true;
        controller.enqueue(lead);
        return;
      }
      try {
        const chunk = await reader.read();
        if (chunk.done) controller.close();
        else {
          sent();
          controller.enqueue(chunk.value);
        }
      } catch (error) {
        controller.error(error);
      }
    },
    cancel(reason) {
      return reader.cancel(reason);
    },
  });
  return new Response(body, {
    status: response.status,
    statusText: response.statusText,
    headers: response.headers,
  });
}

/**
 * `fetch`, failing when the response has not begun within `ms` (the body, once it has, is not
 * bounded: a stream may be quiet for long). The caller's signal still aborts it.
 */
async function fetchBegun(url: string | URL, init: RequestInit | undefined, ms: number) {
  const controller = new AbortController();
  const outer = init?.signal ?? undefined;
  const forward = (): void => controller.abort(outer?.reason);
  if (outer?.aborted === true) forward();
  else outer?.addEventListener('abort', forward, { once: true });
  const timer = setTimeout(
    () => controller.abort(new Error(`the sidecar did not answer within ${ms} ms`)),
    ms,
  );
  try {
    const response = await fetch(url, { ...init, signal: controller.signal });
    if (!response.ok || response.body === null) outer?.removeEventListener('abort', forward);
    else return watchEnd(response, () => outer?.removeEventListener('abort', forward));
    return response;
  } catch (error) {
    outer?.removeEventListener('abort', forward);
    throw error;
  } finally {
    clearTimeout(timer);
  }
}

/**
 * `response` with a body that calls `ended` once it ends or breaks, a moment later (after the
 * reader had the last events: the SDK transport parses them on promise jobs).
 */
function watchEnd(response: Response, ended: () => void): Response {
  const reader = (response.body as ReadableStream<Uint8Array>).getReader();
  let done = false;
  const end = (): void => {
    if (done) return;
    done = true;
    setTimeout(ended, 100).unref();
  };
  const body = new ReadableStream<Uint8Array>({
    async pull(controller) {
      try {
        const chunk = await reader.read();
        if (chunk.done) {
          end();
          controller.close();
        } else controller.enqueue(chunk.value);
      } catch (error) {
        end();
        controller.error(error);
      }
    },
    cancel(reason) {
      done = true; // read no further: cancelled by the reader, not cut
      return reader.cancel(reason);
    },
  });
  return new Response(body, {
    status: response.status,
    statusText: response.statusText,
    headers: response.headers,
  });
}

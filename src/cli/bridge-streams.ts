/**
 * What `agent-fabric mcp` sees of its SSE streams, below the SDK's client transport (as its
 * `fetch`), so that no request of the agent waits for an answer that can no longer come:
 *
 * - A POST answered with an SSE stream that ends (the connection cut) before the request's
 *   answer, having sent no event id, cannot be resumed: the SDK transport drops it silently
 *   (sessions of MCP versions before 2025-11-25 get no priming event id). Reported to
 *   `onLost` with the request's id (each id of a batch).
 * - A POST carrying requests answered 202 or 204 (no body: no answer will come on it): the SDK
 *   transport takes a 202 for "nothing due" and a 204 for a bad content type. Each request is
 *   reported to `onLost`, and the SDK transport sees a 202.
 * - A stream that can be resumed is resumed by the SDK transport, `GET` with `Last-Event-ID`,
 *   again and again while the sidecar cannot be reached. Past `resumeMs` from its first attempt
 *   (or once the SDK transport's own count of attempts is spent) the stream is given up:
 *   reported to `onGiveUp` with its number. An attempt whose response does not begin within
 *   {@link ATTEMPT_MS} fails (a sidecar host that dropped off the network would otherwise hold
 *   it for good). An attempt answered with a final status gives the stream up at once: a
 *   redirect, a 4xx but 408, 409, 425 and 429 (400: not an event id it knows; 404: the session
 *   is gone; 405: no resuming here; 410: the stream is no longer kept), or a 2xx without a
 *   stream (204: nothing more of it; another content type than `text/event-stream`: a proxy's
 *   page). The attempt that gives a stream up is answered here with
 *   HTTP 405 (never sent), after which the SDK transport tries that stream no more: nothing is
 *   kept of it, and no answer comes for it after the agent was told it is lost.
 * - The session's standalone stream (the SDK transport's `GET` without `Last-Event-ID`, or with
 *   one of that stream's ids, `0.<n>`) carries the sidecar's notifications, no call's answer: it
 *   is never given up for not reaching the sidecar. Its attempts go on inside one `fetch`, with
 *   backoff up to {@link STANDALONE_MAX_DELAY_MS} apart, until the sidecar answers (or the
 *   transport closes); past the resume time this is logged once, and so is its reopening. A
 *   final answer (as above; 404: the session is gone, and the bridge opens a new one on its
 *   own) gives it up.
 * - No request follows a redirect (`redirect: 'manual'`; the SDK transport would follow one
 *   within the origin): a POST, `DELETE` or plain `GET` answered with one fails with an error
 *   naming it, a resumption gives its stream up.
 * - A resumed stream's body is led by an event with the `Last-Event-ID` it was resumed from
 *   (no data): the SDK transport resumes a stream from that stream's own ids only, and one that
 *   broke again before its first event was reconnected with no `Last-Event-ID`. A resumption
 *   counts as one only once the sidecar sent a byte on it: resumptions broken before that (a
 *   proxy that cuts them) are given up after `resumeMs` too.
 *
 * @module
 */
import { requestIdsOf } from '../gateway/jsonrpc-message.js';

/** Status text of the answer given here to the attempt that gave its stream up. */
const GIVEN_UP = 'stream given up by agent-fabric mcp';

/** Answers that do not end a stream's resuming: it is tried again. */
const RETRIED = new Set([408, 409, 425, 429]);

/** Longest wait for the response of one attempt to resume a stream. */
const ATTEMPT_MS = 10_000;

/**
 * The number of the sidecar's standalone `GET` stream in its event ids, `0.<n>` (see
 * `gateway/downstream-http-transport.ts`).
 */
export const STANDALONE_STREAM = '0';

/**
 * Longest wait between two attempts to reopen the standalone stream: it is tried again as long as
 * the session lives, not only for the resume time (its notifications would stop for good).
 */
export const STANDALONE_MAX_DELAY_MS = 30_000;

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

/** The stream an SSE event id `<stream>.<n>` belongs to. */
export function streamOf(eventId: string): string {
  const dot = eventId.indexOf('.');
  return dot === -1 ? eventId : eventId.slice(0, dot);
}

interface Resuming {
  /** When its first attempt since the stream broke went out (monotonic ms). */
  since: number;
  failures: number;
}

/** Watches one session's streams (one SDK transport). */
export class StreamWatch {
  readonly #resumeMs: number;
  readonly #maxRetries: number;
  readonly #onLost: (id: string | number, why: string) => void;
  readonly #onGiveUp: (stream: string, why: string, sessionGone: boolean) => void;
  /** The streams being resumed (an attempt chain of the SDK transport running). */
  readonly #streams = new Map<string, Resuming>();
  readonly #log: (message: string) => void;
  readonly #onStandalone: () => void;
  /**
   * The standalone stream's attempts since it last carried a byte of the sidecar's (`failures`,
   * each one: the attempts, not only the failed ones); `told`: that it could not be reopened for
   * the resume time was logged.
   */
  #standalone: (Resuming & { told: boolean }) | undefined;

  constructor(options: {
    resumeMs: number;
    reconnection: Reconnection;
    /** The answer to the request `id` cannot come (`why`). */
    onLost: (id: string | number, why: string) => void;
    /** The stream `stream` cannot be resumed (`why`; `sessionGone`: the sidecar answered 404). */
    onGiveUp: (stream: string, why: string, sessionGone: boolean) => void;
    /** Where the standalone stream's outages are reported (stderr). */
    log?: (message: string) => void;
    /** The standalone stream opened (or was resumed): the sidecar knows the session. */
    onStandalone?: () => void;
  }) {
    this.#log = options.log ?? (() => undefined);
    this.#onStandalone = options.onStandalone ?? (() => undefined);
    this.#resumeMs = options.resumeMs;
    this.#maxRetries = options.reconnection.maxRetries;
    this.#onLost = options.onLost;
    this.#onGiveUp = options.onGiveUp;
  }

  /** How many streams are being resumed (a stream given up or resumed is not kept). */
  get streams(): number {
    return this.#streams.size;
  }

  /** The transport's `fetch`. */
  readonly fetch = async (url: string | URL, init?: RequestInit): Promise<Response> => {
    const method = init?.method ?? 'GET';
    if (method === 'GET') {
      const last = new Headers(init?.headers).get('last-event-id');
      if (last === null || streamOf(last) === STANDALONE_STREAM) {
        return this.#reopen(last ?? undefined, url, init);
      }
      return this.#resume(streamOf(last), last, url, init);
    }
    const response = await fetch(url, { ...init, redirect: 'manual' });
    if (redirects(response)) {
      await response.body?.cancel().catch(() => undefined);
      throw new Error(
        `the sidecar's address ${shown(new URL(url))} answered ${redirectText(response, url)}: give the sidecar's MCP URL`,
      );
    }
    if (method !== 'POST' || !response.ok) return response;
    const empty = response.status === 202 || response.status === 204 || response.body === null;
    const sse = (response.headers.get('content-type') ?? '').startsWith('text/event-stream');
    // The request's body is parsed only then: not for a call answered as JSON (the hot path).
    if (!empty && !sse) return response;
    const ids = requestIdsOf(init?.body);
    if (ids.length === 0) return response;
    if (empty) {
      await response.body?.cancel().catch(() => undefined);
      for (const id of ids) {
        this.#onLost(
          id,
          `the sidecar answered the request's POST with HTTP ${response.status} and no answer`,
        );
      }
      return new Response(null, { status: 202, headers: response.headers });
    }
    return watchEnd(response, () => {
      for (const id of ids) {
        this.#onLost(
          id,
          'the connection to the sidecar broke while the request was running, and its stream had no event id to resume it from',
        );
      }
    });
  };

  async #resume(
    stream: string,
    last: string,
    url: string | URL,
    init?: RequestInit,
  ): Promise<Response> {
    let state = this.#streams.get(stream);
    if (state === undefined) {
      state = { since: performance.now(), failures: 0 };
      this.#streams.set(stream, state);
    }
    const left = this.#resumeMs - (performance.now() - state.since);
    let response: Response;
    try {
      response = await fetchBegun(
        url,
        { ...init, redirect: 'manual' },
        Math.max(1_000, Math.min(ATTEMPT_MS, left)),
      );
    } catch (error) {
      if (this.#failed(stream, state)) return givenUp();
      throw error;
    }
    const final = finalAnswer(response, url, REQUEST_WHAT);
    if (final !== undefined) {
      await response.body?.cancel().catch(() => undefined);
      this.#giveUp(stream, `the sidecar ${final}`, response.status === 404);
      return givenUp();
    }
    if (!response.ok) {
      if (!this.#failed(stream, state)) return response;
      await response.body?.cancel().catch(() => undefined);
      return givenUp();
    }
    if (performance.now() - state.since >= this.#resumeMs) {
      // Resumed, but every resumption for the resume time broke before the sidecar sent a byte
      // on it (a proxy cutting it): given up, or the SDK transport tried for good.
      await response.body?.cancel().catch(() => undefined);
      this.#giveUp(stream, this.#unreachable(), false);
      return givenUp();
    }
    // Resumed once the sidecar sent on it: a later break starts a new count (as the SDK
    // transport's own does).
    return primed(response, last, () => {
      if (this.#streams.get(stream) === state) this.#streams.delete(stream);
    });
  }

  /**
   * Opens the standalone stream (the SDK transport's `GET` without `Last-Event-ID`), or resumes
   * it from `last`: tried again, with backoff up to {@link STANDALONE_MAX_DELAY_MS} apart, until
   * the sidecar answers it, for as long as the session lives (the transport closing aborts it).
   * Before, it was given up like a call's stream after the resume time (or the SDK transport's
   * count of attempts), and the session's notifications stopped for good while the sidecar, up
   * all along, could be reached again. A final answer still gives it up (404: the session is
   * gone). The SDK transport sees no failed attempt: its own count is never spent.
   */
  async #reopen(
    last: string | undefined,
    url: string | URL,
    init?: RequestInit,
  ): Promise<Response> {
    const signal = init?.signal ?? undefined;
    const state = (this.#standalone ??= { since: performance.now(), failures: 0, told: false });
    for (;;) {
      if (state.failures > 0 && !(await pause(standaloneDelay(state.failures), signal))) {
        return givenUp(); // the transport closed
      }
      state.failures += 1;
      let response: Response;
      try {
        response = await fetchBegun(url, { ...init, redirect: 'manual' }, ATTEMPT_MS);
      } catch (error) {
        if (signal?.aborted === true) return givenUp();
        this.#standaloneFailed(state, String(error));
        continue;
      }
      const final = finalAnswer(response, url, STANDALONE_WHAT);
      if (final !== undefined) {
        await response.body?.cancel().catch(() => undefined);
        this.#standalone = undefined;
        this.#onGiveUp(STANDALONE_STREAM, `the sidecar ${final}`, response.status === 404);
        return givenUp();
      }
      if (!response.ok) {
        await response.body?.cancel().catch(() => undefined);
        this.#standaloneFailed(state, `HTTP ${response.status}`);
        continue;
      }
      this.#onStandalone();
      // Counted again from the next break once the sidecar sent on it (a proxy may take the
      // connection and cut it before: that is not reaching the sidecar).
      return primed(response, last, () => {
        if (this.#standalone !== state) return;
        this.#standalone = undefined;
        if (state.told) this.#log(`agent-fabric mcp: reopened ${STANDALONE_WHAT}`);
      });
    }
  }

  #standaloneFailed(state: Resuming & { told: boolean }, why: string): void {
    if (state.told || performance.now() - state.since < this.#resumeMs) return;
    state.told = true;
    this.#log(
      `agent-fabric mcp: could not reopen ${STANDALONE_WHAT} for ${this.#resumeMs / 1000} s (${why}); trying again, at most ${STANDALONE_MAX_DELAY_MS / 1000} s apart, while the session lives`,
    );
  }

  /** Counts a failed attempt; true when it gives the stream up. */
  #failed(stream: string, state: Resuming): boolean {
    state.failures += 1;
    if (state.failures < this.#maxRetries && performance.now() - state.since < this.#resumeMs) {
      return false;
    }
    this.#giveUp(stream, this.#unreachable(), false);
    return true;
  }

  #unreachable(): string {
    return `the sidecar could not be reached to resume ${REQUEST_WHAT} for ${this.#resumeMs / 1000} s`;
  }

  /** Gives `stream` up: the attempt answered with {@link givenUp} is the SDK transport's last. */
  #giveUp(stream: string, why: string, sessionGone: boolean): void {
    this.#streams.delete(stream);
    this.#onGiveUp(stream, why, sessionGone);
  }
}

/** What the messages call a call's stream, and the standalone stream. */
const REQUEST_WHAT = "the request's stream";
const STANDALONE_WHAT = "the session's stream of notifications (the standalone GET)";

/** The wait before the standalone stream's attempt after `attempts` since it last carried a byte. */
function standaloneDelay(attempts: number): number {
  return Math.min(500 * 1.5 ** (attempts - 1), STANDALONE_MAX_DELAY_MS);
}

/** Waits `ms`; false (at once) when `signal` aborts. */
function pause(ms: number, signal: AbortSignal | undefined): Promise<boolean> {
  if (signal?.aborted === true) return Promise.resolve(false);
  return new Promise((resolve) => {
    const done = (ok: boolean): void => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', aborted);
      resolve(ok);
    };
    const aborted = (): void => done(false);
    const timer = setTimeout(() => done(true), ms);
    signal?.addEventListener('abort', aborted, { once: true });
  });
}

/** The answer to an attempt that gave its stream up: the SDK transport tries no more after a 405. */
function givenUp(): Response {
  return new Response(null, { status: 405, statusText: GIVEN_UP });
}

/** True for a redirect (with `redirect: 'manual'`, fetch hands it over as it came). */
function redirects(response: Response): boolean {
  return response.status >= 300 && response.status < 400;
}

/** `HTTP <status>, a redirect to <target>, …`: the target without userinfo, query or fragment. */
function redirectText(response: Response, url: string | URL): string {
  let target = 'elsewhere';
  try {
    target = shown(new URL(response.headers.get('location') ?? '', url));
  } catch {
    // no usable Location: "elsewhere"
  }
  return `HTTP ${response.status}, a redirect to ${target}, which agent-fabric mcp does not follow`;
}

/** `url` without userinfo, query or fragment (what an error message may name). */
function shown(url: URL): string {
  return `${url.origin}${url.pathname}`;
}

/**
 * What a resumption's answer says when it ends the stream's resuming (a redirect, a 4xx not
 * worth another try, a 2xx without a stream), as words after "the sidecar"; else undefined.
 */
function finalAnswer(response: Response, url: string | URL, what: string): string | undefined {
  const { status } = response;
  if (redirects(response)) {
    return `refused to resume ${what} (${redirectText(response, url)})`;
  }
  if (response.ok && (status === 204 || response.body === null)) {
    return `has nothing more of ${what} (HTTP ${status})`;
  }
  const type = (response.headers.get('content-type') ?? '').split(';', 1)[0]!.trim().toLowerCase();
  if (response.ok && type !== 'text/event-stream') {
    // A page in its place (a proxy's, a captive portal's): read as a stream with no events that
    // ended, it would be resumed again at once, for good.
    return `answered the resumption of ${what} with no stream (HTTP ${status}, ${type || 'no content type'})`;
  }
  if (status >= 400 && status < 500 && !RETRIED.has(status)) {
    return `refused to resume ${what} (HTTP ${status})`;
  }
  return undefined;
}

/**
 * `response` (a resumed stream) with its body led by an event of id `last`, no data: the SDK
 * transport takes the id of a stream it resumes from that stream's own events only, so a resumed
 * stream that broke again before it carried one was resumed with no `Last-Event-ID` at all — a
 * plain GET, which never brings the request's answer. `sent` is called with each chunk the
 * sidecar sent on it.
 */
function primed(response: Response, last: string | undefined, sent: () => void): Response {
  const lead = new TextEncoder().encode(`id: ${last}\ndata: \n\n`);
  const reader = (response.body as ReadableStream<Uint8Array>).getReader();
  let led = last === undefined; // a stream opened anew: nothing to lead it
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

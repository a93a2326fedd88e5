/**
 * Server side of one Streamable HTTP session, on `node:http` directly.
 *
 * Each POST that carries requests is answered with plain JSON when the server has nothing to
 * say before the response, and is switched to an SSE stream the moment a message related to
 * that request must go out first (progress, a log line, a sampling or elicitation request).
 * The common call thus costs one JSON response, and server→client traffic still reaches the
 * client on the stream of the call that caused it. Messages unrelated to any request go to the
 * session's standalone GET stream. SSE streams get keep-alive comments.
 *
 * @module
 */
import type { IncomingHttpHeaders, ServerResponse } from 'node:http';
import type {
  Transport,
  TransportSendOptions,
} from '@modelcontextprotocol/sdk/shared/transport.js';
import type {
  JSONRPCMessage,
  MessageExtraInfo,
  RequestId,
} from '@modelcontextprotocol/sdk/types.js';
import { serializeMessage } from './serialize-message.js';

/** Default keep-alive interval of SSE streams. */
export const DEFAULT_SSE_KEEP_ALIVE_MS = 15_000;

interface Exchange {
  readonly res: ServerResponse;
  readonly pending: Set<RequestId>;
  /** Serialized responses not yet written (see serialize-message.ts). */
  readonly responses: string[];
  readonly batch: boolean;
  sse: boolean;
  keepAlive: NodeJS.Timeout | undefined;
}

type Envelope = { id?: RequestId; method?: unknown; result?: unknown; error?: unknown };

const SSE_HEADERS = {
  'content-type': 'text/event-stream',
  'cache-control': 'no-cache, no-transform',
  connection: 'keep-alive',
  'x-accel-buffering': 'no',
};

/** One Streamable HTTP session's server transport. */
export class HttpSessionTransport implements Transport {
  readonly sessionId: string;
  onclose?: () => void;
  onerror?: (error: Error) => void;
  onmessage?: (message: JSONRPCMessage, extra?: MessageExtraInfo) => void;

  readonly #keepAliveMs: number;
  readonly #exchanges = new Map<RequestId, Exchange>();
  #standalone: { res: ServerResponse; keepAlive: NodeJS.Timeout } | undefined;
  #closed = false;

  constructor(sessionId: string, options: { keepAliveMs?: number } = {}) {
    this.sessionId = sessionId;
    this.#keepAliveMs = options.keepAliveMs ?? DEFAULT_SSE_KEEP_ALIVE_MS;
  }

  async start(): Promise<void> {}

  get closed(): boolean {
    return this.#closed;
  }

  /** True while a request awaits its response or the standalone SSE stream is open. */
  get busy(): boolean {
    return (
      this.#exchanges.size > 0 ||
      (this.#standalone !== undefined && !this.#standalone.res.writableEnded)
    );
  }

  /** Delivers a parsed POST body (one message or a batch) and answers on `res`. */
  handlePost(res: ServerResponse, body: unknown, headers: IncomingHttpHeaders): void {
    const messages = (Array.isArray(body) ? body : [body]) as JSONRPCMessage[];
    const ids: RequestId[] = [];
    for (const m of messages) {
      const e = m as Envelope;
      if (typeof e.method === 'string' && e.id !== undefined) ids.push(e.id);
    }
    const extra: MessageExtraInfo = { requestInfo: { headers } };
    if (ids.length === 0) {
      res.writeHead(202, { 'mcp-session-id': this.sessionId }).end();
      for (const m of messages) this.onmessage?.(m, extra);
      return;
    }
    const ex: Exchange = {
      res,
      pending: new Set(ids),
      responses: [],
      batch: Array.isArray(body),
      sse: false,
      keepAlive: undefined,
    };
    for (const id of ids) this.#exchanges.set(id, ex);
    res.once('close', () => {
      if (ex.keepAlive) clearInterval(ex.keepAlive);
    });
    for (const m of messages) this.onmessage?.(m, extra);
  }

  /** Opens the standalone SSE stream for messages unrelated to a request. */
  handleGet(res: ServerResponse): void {
    if (this.#standalone && !this.#standalone.res.writableEnded) {
      res.writeHead(409, { 'content-type': 'application/json' }).end(
        JSON.stringify({
          jsonrpc: '2.0',
          error: { code: -32000, message: 'Conflict: only one SSE stream is allowed per session' },
          id: null,
        }),
      );
      return;
    }
    res.writeHead(200, { ...SSE_HEADERS, 'mcp-session-id': this.sessionId });
    res.flushHeaders();
    const keepAlive = this.#startKeepAlive(res);
    const standalone = { res, keepAlive };
    this.#standalone = standalone;
    res.once('close', () => {
      clearInterval(keepAlive);
      if (this.#standalone === standalone) this.#standalone = undefined;
    });
  }

  #startKeepAlive(res: ServerResponse): NodeJS.Timeout {
    const timer = setInterval(() => {
      if (!res.writableEnded) res.write(': keep-alive\n\n');
    }, this.#keepAliveMs);
    timer.unref();
    return timer;
  }

  #writeEvent(res: ServerResponse, json: string): void {
    if (!res.writableEnded) res.write(`event: message\ndata: ${json}\n\n`);
  }

  async send(message: JSONRPCMessage, options?: TransportSendOptions): Promise<void> {
    if (this.#closed) throw new Error('Not connected');
    const e = message as Envelope;
    const isResponse = e.method === undefined && e.id !== undefined;
    if (isResponse) {
      const id = e.id as RequestId;
      const ex = this.#exchanges.get(id);
      if (!ex) return; // the client went away or the request was answered already
      // Serialized here, not in the timer below: it cannot throw for a response.
      const json = serializeMessage(message);
      this.#exchanges.delete(id);
      ex.pending.delete(id);
      if (ex.sse) {
        // The SDK client dispatches notifications on a microtask but responses synchronously,
        // so a response read in the same chunk as the last progress notification would
        // overtake it and the notification would be dropped. Write the response a turn later.
        setImmediate(() => {
          this.#writeEvent(ex.res, json);
          if (ex.pending.size === 0) {
            if (ex.keepAlive) clearInterval(ex.keepAlive);
            ex.res.end();
          }
        });
        return;
      }
      ex.responses.push(json);
      if (ex.pending.size === 0 && !ex.res.writableEnded) {
        const body = ex.batch ? `[${ex.responses.join(',')}]` : ex.responses[0]!;
        ex.res
          .writeHead(200, {
            'content-type': 'application/json',
            'content-length': Buffer.byteLength(body),
            'mcp-session-id': this.sessionId,
          })
          .end(body);
      }
      return;
    }
    // A request or notification that cannot be serialized rejects here, before any stream
    // changes (the sender handles it).
    const json = serializeMessage(message);
    const related = options?.relatedRequestId;
    const ex = related === undefined ? undefined : this.#exchanges.get(related);
    if (ex && !ex.res.writableEnded) {
      if (!ex.sse) {
        ex.sse = true;
        ex.res.writeHead(200, { ...SSE_HEADERS, 'mcp-session-id': this.sessionId });
        for (const r of ex.responses) this.#writeEvent(ex.res, r);
        ex.keepAlive = this.#startKeepAlive(ex.res);
      }
      this.#writeEvent(ex.res, json);
      return;
    }
    if (this.#standalone) this.#writeEvent(this.#standalone.res, json);
    // Otherwise there is no open stream: the message is dropped, as the spec allows.
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const ex of new Set(this.#exchanges.values())) {
      if (ex.keepAlive) clearInterval(ex.keepAlive);
      if (!ex.res.headersSent) {
        ex.res.writeHead(503, { 'content-type': 'application/json' });
      }
      ex.res.end();
    }
    this.#exchanges.clear();
    if (this.#standalone) {
      clearInterval(this.#standalone.keepAlive);
      this.#standalone.res.end();
      this.#standalone = undefined;
    }
    this.onclose?.();
  }
}

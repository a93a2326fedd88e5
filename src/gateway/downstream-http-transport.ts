/**
 * Server side of one Streamable HTTP session, on `node:http` directly.
 *
 * Each POST that carries requests is answered with plain JSON when the server has nothing to
 * say before the response, and is switched to an SSE stream the moment a message related to
 * that request must go out first (progress, a log line, a sampling or elicitation request).
 * The common call thus costs one JSON response, and server→client traffic still reaches the
 * client on the stream of the call that caused it. Messages unrelated to any request go to the
 * session's standalone GET stream. SSE streams get keep-alive comments. A message that reaches
 * no stream — its request's POST was answered as JSON and that connection closed, or it belongs
 * to no request and no GET stream is open (nor one to resume) — is dropped, as the spec allows,
 * but never silently: the owner is told ({@link HttpSessionTransportOptions.onMessageUndelivered}),
 * and a server→client request so dropped rejects its `send`, so its sender fails at once.
 *
 * Every POST is answered, whatever it holds: the SDK's `Protocol` never answers a message its
 * schemas reject, nor a request the client cancelled, so the transport does. Messages come
 * classified ({@link classifyMessage}); only valid ones reach `onmessage`, invalid ones get
 * `-32600` in the POST's answer. A request whose id is already in flight in this session is
 * refused the same way (its answer would otherwise be delivered to the other request's POST
 * and leave this one open forever). A `notifications/cancelled` for a request in flight ends
 * that request's part of its POST at once (the SDK sends no answer to a cancelled request).
 *
 * A client that does not read what it is sent must not make this process hold it: Node buffers
 * every write the socket cannot take, without limit. Two bounds follow. A notification (progress,
 * a log line, a list change, a resource update) to a stream that already holds
 * `maxStreamBacklogBytes` the client has not read is dropped — notifications carry no answer
 * anyone waits for, and an upstream emitting progress every millisecond filled ~20 MB a second
 * of one unread stream before. Responses and server→client requests are never dropped: a
 * request stays counted as in flight ({@link HttpSessionTransportOptions.onRequestsDone}) until
 * its POST's answer has left the process (the response finished, or its connection closed), so
 * the owner's in-flight limit bounds the answers an agent can leave unread.
 *
 * SSE streams can be resumed (MCP Streamable HTTP, "Resumability and Redelivery"). Every event
 * carries an id, `<stream>.<seq>`: stream 0 is the session's standalone GET stream, each POST
 * switched to SSE gets the next number. What a stream sent is kept ({@link StreamLog}): its
 * responses and server→client requests whole, its notifications up to `maxStreamBacklogBytes`
 * (the oldest go first). A client whose connection broke sends a GET with `Last-Event-ID`: the
 * events after that one are written again on the new connection, which then carries the rest of
 * the stream — the answers of a call still running reach the client, where before they were
 * lost with the connection. One connection at a time resumes a stream (each would hold its own
 * copy of the replay for as long as its client does not read), and the answers a resuming
 * connection carries stay in flight until they are out, as on the POST's; answers a stream keeps
 * while nobody is connected stay in flight until it ended. A stream is kept while requests of it
 * are pending and {@link RESUME_WINDOW_MS} after it ended, at most {@link MAX_ENDED_LOG_BYTES} of
 * ended streams per session. A POST answered with plain JSON sent no event id, so it cannot be
 * resumed: what its request still sends once its connection closed reaches no stream (above).
 *
 * @module
 */
import type { IncomingHttpHeaders, ServerResponse } from 'node:http';
import type {
  Transport,
  TransportSendOptions,
} from '@modelcontextprotocol/sdk/shared/transport.js';
import {
  ErrorCode,
  McpError,
  type JSONRPCMessage,
  type MessageExtraInfo,
  type RequestId,
} from '@modelcontextprotocol/sdk/types.js';
import {
  duplicateIdError,
  invalidMessageResponse,
  isRequestId,
  jsonRpcError,
  type MessageKind,
} from './jsonrpc-message.js';
import { MAX_TIMER_MS } from '../scheduler/task-waiters.js';
import { serializeMessage } from './serialize-message.js';

/** Default keep-alive interval of SSE streams. */
export const DEFAULT_SSE_KEEP_ALIVE_MS = 15_000;
/**
 * Default of {@link HttpSessionTransportOptions.maxStreamBacklogBytes}: 256 KiB held beyond what
 * the operating system buffers for the connection.
 */
export const DEFAULT_MAX_STREAM_BACKLOG_BYTES = 256 * 1024;
/** How long a session keeps an ended SSE stream's events for a client to resume it. */
export const RESUME_WINDOW_MS = 60_000;
/**
 * Bytes (characters of JSON text) of ended SSE streams' events a session keeps for resumption;
 * past it the oldest ended streams are forgotten first — one larger than this alone is not kept
 * once it ended.
 */
export const MAX_ENDED_LOG_BYTES = 1024 * 1024;

/** Options of an {@link HttpSessionTransport}. */
export interface HttpSessionTransportOptions {
  /** Keep-alive interval of SSE streams. @default 15000 */
  keepAliveMs?: number;
  /**
   * Bytes a response stream may hold that the client has not read yet (beyond the operating
   * system's socket buffers) and still take a notification; past it notifications to that
   * stream are dropped. Responses and requests are always written. @default 262144
   */
  maxStreamBacklogBytes?: number;
  /**
   * Called with the number of requests that stopped being in flight: answered and the answer
   * written out (its POST's response finished or its connection closed — a batch's requests
   * when the whole batch's answer has), cancelled by the client, refused as a duplicate, or
   * dropped when the session closed. With the count of requests handed to
   * {@link HttpSessionTransport.handlePost}, this is how an owner keeps an exact in-flight
   * count.
   */
  onRequestsDone?: (count: number) => void;
  /**
   * Called with each request refused because a request in flight in the session holds its id
   * (after its refusal was queued): its audit line.
   */
  onDuplicate?: (request: unknown) => void;
  /** Called for each notification dropped because its stream's client is not reading. */
  onNotificationDropped?: () => void;
  /**
   * Called for each message that reached no stream (see {@link UndeliveredMessage}); a request
   * so dropped also fails its sender at once (`send` rejects), where before it waited for an
   * answer that could not come.
   */
  onMessageUndelivered?: (message: UndeliveredMessage) => void;
  /**
   * Called when a response this session wrote to has finished or lost its connection (the
   * answer of a POST that carried requests, the standalone stream): the session was active.
   */
  onActivity?: () => void;
}

/**
 * Why a message for the client reached no stream: `request-gone` — it belongs to a request whose
 * POST was answered as plain JSON (no event id: nobody can resume it) and whose connection has
 * closed; `no-stream` — it belongs to no request and the client has no standalone GET stream
 * open, nor had one to resume.
 */
export type UndeliveredReason = 'request-gone' | 'no-stream';

/** A message {@link HttpSessionTransport.send} could not deliver: what it was, not what it held. */
export interface UndeliveredMessage {
  readonly reason: UndeliveredReason;
  readonly kind: 'request' | 'notification';
  /** Its method, cut to 100 characters. */
  readonly method: string;
}

interface Exchange {
  /** The connection answering: the POST's, or a later GET that resumed its stream. */
  res: ServerResponse;
  /** What the exchange's SSE stream sent, once it is one. */
  log: StreamLog | undefined;
  readonly pending: Set<RequestId>;
  /** Serialized responses not yet written (see serialize-message.ts). */
  readonly responses: string[];
  readonly batch: boolean;
  sse: boolean;
  keepAlive: NodeJS.Timeout | undefined;
  /** Answered requests whose answer has not left the process yet (still in flight). */
  held: number;
  /** The response finished or its connection closed. */
  closed: boolean;
  /** SSE responses waiting for their turn to be written (see {@link HttpSessionTransport.send}). */
  queued: number;
  /** Seen waiting for its JSON answer by the slow-call watch (switched to SSE at the next look). */
  slow: boolean;
  /** The client speaks MCP 2025-11-25 or later: it takes a priming event (an id, no data). */
  readonly prime: boolean;
}

/**
 * The slow-call watches, by keep-alive interval: one timer each, running while a session under
 * it has a POST waiting for a JSON answer (see `HttpSessionTransport.#lookAtSlowCalls`).
 */
const slowCallWatches = new Map<
  number,
  { readonly transports: Set<HttpSessionTransport>; readonly timer: NodeJS.Timeout }
>();

/** The first MCP version whose clients take a priming event (SSE id, empty data). */
const PRIMING_SINCE = '2025-11-25';

type Envelope = { id?: RequestId; method?: unknown; params?: unknown };

const SSE_HEADERS = {
  'content-type': 'text/event-stream',
  'cache-control': 'no-cache, no-transform',
  connection: 'keep-alive',
  'x-accel-buffering': 'no',
};

const SESSION_CLOSED = 'the session was closed before the request was answered';

/**
 * Nesting below which {@link HttpSessionTransport.sendLine} writes a response's text as it is:
 * far below the ~4,000 levels at which `JSON.stringify` runs out of stack, so a text within it
 * is one `send` would have serialized too.
 */
const RAW_MAX_NESTING = 1000;

/**
 * True when the JSON text `json` nests arrays and objects fewer than `limit` levels deep. A level
 * takes two characters, and the count of `{` and `[` bounds the depth: those settle nearly every
 * text at once; only a text with `limit` of them is walked (strings skipped).
 */
export function nestsFewerThan(json: string, limit: number): boolean {
  if (json.length < 2 * limit) return true;
  let openings = 0;
  for (let i = json.indexOf('{'); i !== -1 && openings < limit; i = json.indexOf('{', i + 1)) {
    openings++;
  }
  for (let i = json.indexOf('['); i !== -1 && openings < limit; i = json.indexOf('[', i + 1)) {
    openings++;
  }
  if (openings < limit) return true;
  let depth = 0;
  for (let i = 0; i < json.length; i++) {
    const c = json.charCodeAt(i);
    if (c === 0x22 /* " */) {
      // To the closing quote: the next one not escaped (preceded by an even run of `\`).
      for (;;) {
        i = json.indexOf('"', i + 1);
        if (i === -1) return false; // not JSON text: `send`'s serialization decides
        let backslashes = 0;
        while (json.charCodeAt(i - 1 - backslashes) === 0x5c /* \ */) backslashes++;
        if (backslashes % 2 === 0) break;
      }
    } else if (c === 0x7b /* { */ || c === 0x5b /* [ */) {
      if (++depth >= limit) return false;
    } else if (c === 0x7d /* } */ || c === 0x5d /* ] */) depth--;
  }
  return true;
}

/** `json` with its line breaks (whitespace between tokens in valid JSON text) as spaces. */
function oneLine(json: string): string {
  return json.replace(/[\r\n]/g, ' ');
}

/** One event an SSE stream sent: its number in the stream and its `data:` text. */
interface LoggedEvent {
  readonly seq: number;
  readonly data: string;
}

/**
 * What one SSE stream sent, for a client that resumes it with `Last-Event-ID`. Responses and
 * server→client requests are kept whole (a stream carries few: the requests of its POST); its
 * notifications up to `maxNoteChars` of text, the oldest forgotten first — a resumed stream then
 * misses those, as a notification may be dropped anyway.
 */
class StreamLog {
  readonly stream: number;
  /** The exchange whose requests are pending on this stream; undefined for stream 0 and once it ended. */
  exchange: Exchange | undefined;
  /** `performance.now()` when the stream ended. */
  endedAt = 0;
  /**
   * The connection of a client resuming this stream, until it closed: one at a time, so that
   * what the log holds is written out once however many GETs ask for it (each copy would sit in
   * memory for as long as its client does not read).
   */
  reader: ServerResponse | undefined;
  #seq = 0;
  readonly #kept: LoggedEvent[] = [];
  #keptChars = 0;
  readonly #notes: LoggedEvent[] = [];
  #notesHead = 0;
  #noteChars = 0;
  readonly #maxNoteChars: number;

  constructor(stream: number, exchange: Exchange | undefined, maxNoteChars: number) {
    this.stream = stream;
    this.exchange = exchange;
    this.#maxNoteChars = maxNoteChars;
  }

  /** What the log holds, in characters of event text (≈ bytes for JSON). */
  get chars(): number {
    return this.#keptChars + this.#noteChars;
  }

  /** The id of a priming event (no data, nothing kept): the client's cursor before any event. */
  prime(): string {
    return `${this.stream}.${++this.#seq}`;
  }

  /** Keeps `data` as the stream's next event; returns its id. */
  append(data: string, notification: boolean): string {
    const e: LoggedEvent = { seq: ++this.#seq, data };
    if (!notification) {
      this.#kept.push(e);
      this.#keptChars += data.length;
    } else {
      this.#notes.push(e);
      this.#noteChars += data.length;
      while (this.#noteChars > this.#maxNoteChars && this.#notesHead < this.#notes.length) {
        this.#noteChars -= this.#notes[this.#notesHead]!.data.length;
        this.#notesHead++;
      }
      if (this.#notesHead > 64 && this.#notesHead * 2 > this.#notes.length) {
        this.#notes.splice(0, this.#notesHead);
        this.#notesHead = 0;
      }
    }
    return `${this.stream}.${e.seq}`;
  }

  /** True when `seq` is a number this stream gave an event. */
  sent(seq: number): boolean {
    return seq <= this.#seq;
  }

  /**
   * The events kept that came after the one numbered `seq`, in order, as SSE text; `notesEnd`:
   * how many of them run up to the last notification among them; `last`: the number of the last
   * one (`seq` when there is none).
   */
  framesAfter(seq: number): { frames: string[]; notesEnd: number; last: number } {
    const out: string[] = [];
    let notesEnd = 0;
    let last = seq;
    const kept = this.#kept;
    const notes = this.#notes;
    let k = 0;
    while (k < kept.length && kept[k]!.seq <= seq) k++;
    let n = this.#notesHead;
    while (n < notes.length && notes[n]!.seq <= seq) n++;
    while (k < kept.length || n < notes.length) {
      const note = !(n >= notes.length || (k < kept.length && kept[k]!.seq < notes[n]!.seq));
      const e = note ? notes[n++]! : kept[k++]!;
      out.push(sseFrame(`${this.stream}.${e.seq}`, e.data));
      last = e.seq;
      if (note) notesEnd = out.length;
    }
    return { frames: out, notesEnd, last };
  }
}

/** One SSE event carrying a JSON-RPC message (`data` on one line), with its id when it has one. */
function sseFrame(id: string | undefined, data: string): string {
  return id === undefined
    ? `event: message\ndata: ${data}\n\n`
    : `event: message\nid: ${id}\ndata: ${data}\n\n`;
}

/** A response still writable: not ended by this side, its connection not closed. */
function writable(res: ServerResponse): boolean {
  return !res.writableEnded && !res.destroyed;
}

/** `Last-Event-ID` as this transport writes it: `<stream>.<seq>`. */
const EVENT_ID = /^(\d{1,9})\.(\d{1,15})$/;

/** One Streamable HTTP session's server transport. */
export class HttpSessionTransport implements Transport {
  readonly sessionId: string;
  onclose?: () => void;
  onerror?: (error: Error) => void;
  onmessage?: (message: JSONRPCMessage, extra?: MessageExtraInfo) => void;

  readonly #keepAliveMs: number;
  readonly #maxBacklog: number;
  readonly #onRequestsDone: (count: number) => void;
  readonly #onDropped: () => void;
  readonly #onUndelivered: (message: UndeliveredMessage) => void;
  readonly #onActivity: () => void;
  readonly #onDuplicate: ((request: unknown) => void) | undefined;
  readonly #exchanges = new Map<RequestId, Exchange>();
  /** Responses this session writes to and that have not closed (for {@link unsentBytes}). */
  readonly #open = new Set<ServerResponse>();
  #standalone: { res: ServerResponse; keepAlive: NodeJS.Timeout } | undefined;
  #closed = false;
  /** Stream 0's log, once a client opened the standalone stream. */
  #standaloneLog: StreamLog | undefined;
  /** Streams numbered so far (POSTs switched to SSE). */
  #streams = 0;
  /** Logs of streams whose exchange has requests pending. */
  readonly #liveLogs = new Map<number, StreamLog>();
  /** Logs of ended streams kept for resumption, oldest first. */
  readonly #endedLogs = new Map<number, StreamLog>();
  #endedChars = 0;
  /** Under the slow-call watch (see {@link #watchSlowCalls}). */
  #watched = false;

  constructor(sessionId: string, options: HttpSessionTransportOptions = {}) {
    this.sessionId = sessionId;
    // An interval past setTimeout's limit would run every 1 ms: capped (a keep-alive that
    // rare is none in effect).
    this.#keepAliveMs = Math.min(options.keepAliveMs ?? DEFAULT_SSE_KEEP_ALIVE_MS, MAX_TIMER_MS);
    this.#maxBacklog = options.maxStreamBacklogBytes ?? DEFAULT_MAX_STREAM_BACKLOG_BYTES;
    this.#onRequestsDone = options.onRequestsDone ?? (() => undefined);
    this.#onDropped = options.onNotificationDropped ?? (() => undefined);
    this.#onUndelivered = options.onMessageUndelivered ?? (() => undefined);
    this.#onActivity = options.onActivity ?? (() => undefined);
    this.#onDuplicate = options.onDuplicate;
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

  /** Requests received and not answered yet (nor cancelled). */
  get pendingRequests(): number {
    return this.#exchanges.size;
  }

  /** Bytes written to this session's open responses that have not left the process yet. */
  get unsentBytes(): number {
    let n = 0;
    for (const res of this.#open) n += res.writableLength;
    return n;
  }

  /**
   * Delivers the messages of one POST and answers on `res`: `202` when none is a request and all
   * are valid, `400` with the errors when none is a request and some are invalid, else the
   * responses (with the errors of the invalid ones) as JSON or SSE.
   *
   * @param kinds `classifyMessage` of each message; used as scratch (a duplicate id's entry
   *   becomes `invalid`).
   * @param batch The body was a JSON array: the answer is an array too.
   */
  handlePost(
    res: ServerResponse,
    messages: readonly unknown[],
    kinds: MessageKind[],
    batch: boolean,
    headers: IncomingHttpHeaders,
  ): void {
    if (this.#closed) {
      // Nothing is delivered to a closed session: its requests are done unanswered, here.
      let requests = 0;
      for (const kind of kinds) if (kind === 'request') requests++;
      if (requests > 0) this.#onRequestsDone(requests);
      this.#writeJson(res, 404, jsonRpcError(-32001, 'Session not found'));
      return;
    }
    let pending: Set<RequestId> | undefined;
    let errors: unknown[] | undefined;
    let duplicates: unknown[] | undefined;
    for (let i = 0; i < messages.length; i++) {
      const kind = kinds[i];
      if (kind === 'request') {
        const id = (messages[i] as Envelope).id!;
        if (this.#exchanges.has(id) || pending?.has(id)) {
          kinds[i] = 'invalid';
          (errors ??= []).push(duplicateIdError(id));
          (duplicates ??= []).push(messages[i]);
        } else {
          (pending ??= new Set()).add(id);
        }
      } else if (kind === 'invalid') {
        (errors ??= []).push(invalidMessageResponse(messages[i]));
      }
    }
    if (duplicates !== undefined) {
      this.#onRequestsDone(duplicates.length);
      if (this.#onDuplicate !== undefined) for (const m of duplicates) this.#onDuplicate(m);
    }
    if (pending === undefined) {
      if (errors === undefined) res.writeHead(202, { 'mcp-session-id': this.sessionId }).end();
      else this.#writeJson(res, 400, batch ? errors : errors[0]);
    } else {
      const ex: Exchange = {
        res,
        log: undefined,
        pending,
        responses: errors === undefined ? [] : errors.map((r) => JSON.stringify(r)),
        batch,
        sse: false,
        keepAlive: undefined,
        held: 0,
        closed: false,
        queued: 0,
        slow: false,
        // Versions are dates: they compare as strings.
        prime: String(headers['mcp-protocol-version'] ?? '') >= PRIMING_SINCE,
      };
      for (const id of pending) this.#exchanges.set(id, ex);
      this.#watchSlowCalls();
      this.#open.add(res);
      // `close` comes once (and this handler could take a second one): `on`, not `once`.
      res.on('close', () => {
        // A stream resumed on another connection has that one's keep-alive by now.
        if (ex.keepAlive && ex.res === res) clearInterval(ex.keepAlive);
        this.#open.delete(res);
        ex.closed = true;
        // The answers are out (or cannot be delivered any more): their requests are done.
        this.#release(ex);
        this.#onActivity();
      });
    }
    const extra: MessageExtraInfo = { requestInfo: { headers } };
    for (let i = 0; i < messages.length; i++) {
      const kind = kinds[i];
      if (kind === 'invalid') continue;
      const m = messages[i] as JSONRPCMessage;
      this.onmessage?.(m, extra);
      if (kind === 'notification' && (m as Envelope).method === 'notifications/cancelled') {
        this.#cancelled((m as Envelope).params);
      }
    }
  }

  /**
   * A client cancelled a request: the SDK will not answer it, so its part of the POST ends here.
   * Mirrors when `Protocol` (and the fast path) actually cancel: a truthy valid `requestId` and
   * a string `reason` or none.
   */
  #cancelled(params: unknown): void {
    const p = params as { requestId?: unknown; reason?: unknown } | undefined;
    const id = p?.requestId;
    if (!id || !isRequestId(id)) return;
    if (p.reason !== undefined && typeof p.reason !== 'string') return;
    const ex = this.#exchanges.get(id);
    if (!ex) return;
    this.#exchanges.delete(id);
    ex.pending.delete(id);
    this.#onRequestsDone(1);
    if (ex.pending.size === 0) this.#finish(ex);
  }

  /** Ends an exchange with nothing pending: what it collected, or `202` when that is nothing. */
  #finish(ex: Exchange): void {
    if (ex.queued > 0) return; // the last queued response's turn ends it
    if (ex.keepAlive) clearInterval(ex.keepAlive);
    if (ex.log !== undefined) this.#logEnded(ex.log);
    // Nobody connected: what the stream kept is in the ended streams' bound from now on.
    if (ex.closed) this.#release(ex);
    if (ex.res.writableEnded) return;
    if (ex.sse) ex.res.end();
    else if (ex.responses.length > 0) {
      this.#writeText(ex.res, 200, ex.batch ? `[${ex.responses.join(',')}]` : ex.responses[0]!);
    } else ex.res.writeHead(202, { 'mcp-session-id': this.sessionId }).end();
  }

  #writeJson(res: ServerResponse, status: number, body: unknown): void {
    this.#writeText(res, status, JSON.stringify(body));
  }

  #writeText(res: ServerResponse, status: number, json: string): void {
    if (res.writableEnded) return;
    res
      .writeHead(status, {
        'content-type': 'application/json',
        'content-length': Buffer.byteLength(json),
        'mcp-session-id': this.sessionId,
      })
      .end(json);
  }

  /**
   * Opens the standalone SSE stream for messages unrelated to a request, or, with
   * `lastEventId`, resumes the stream that event was sent on: the events after it are written
   * again, and the stream goes on on `res` (see the module's doc).
   */
  handleGet(res: ServerResponse, lastEventId?: string): void {
    if (this.#closed) {
      this.#writeJson(res, 404, jsonRpcError(-32001, 'Session not found'));
      return;
    }
    let after = 0;
    if (lastEventId !== undefined) {
      const m = EVENT_ID.exec(lastEventId);
      const stream = m === null ? -1 : Number(m[1]);
      if (m === null || stream > this.#streams) {
        this.#writeJson(
          res,
          400,
          jsonRpcError(-32000, 'Bad Request: Last-Event-ID is not an event id of this session'),
        );
        return;
      }
      after = Number(m[2]);
      if (stream > 0) {
        this.#resume(res, stream, after);
        return;
      }
    }
    if (this.#standalone && !this.#standalone.res.writableEnded) {
      this.#conflict(res, 'only one SSE stream is allowed per session');
      return;
    }
    res.writeHead(200, { ...SSE_HEADERS, 'mcp-session-id': this.sessionId });
    const log = (this.#standaloneLog ??= new StreamLog(0, undefined, this.#maxBacklog));
    // Those the client missed since `after` (a plain GET: none, it starts with what comes next).
    if (after > 0 && log.sent(after)) for (const f of log.framesAfter(after).frames) res.write(f);
    res.flushHeaders();
    const keepAlive = this.#startKeepAlive(res);
    const standalone = { res, keepAlive };
    this.#standalone = standalone;
    this.#open.add(res);
    res.once('close', () => {
      clearInterval(keepAlive);
      this.#open.delete(res);
      if (this.#standalone === standalone) this.#standalone = undefined;
      this.#onActivity();
    });
  }

  #conflict(res: ServerResponse, why: string): void {
    res.writeHead(409, { 'content-type': 'application/json' }).end(
      JSON.stringify({
        jsonrpc: '2.0',
        error: { code: -32000, message: `Conflict: ${why}` },
        id: null,
      }),
    );
  }

  /** {@link handleGet} resuming the stream of a POST, numbered `stream`, after its event `after`. */
  #resume(res: ServerResponse, stream: number, after: number): void {
    this.#prune();
    const log = this.#liveLogs.get(stream) ?? this.#endedLogs.get(stream);
    if (log === undefined) {
      this.#writeJson(
        res,
        410,
        jsonRpcError(
          -32000,
          `Gone: stream ${stream} has ended and is no longer kept (an ended stream is kept ${RESUME_WINDOW_MS / 1000} s)`,
        ),
      );
      return;
    }
    if (!log.sent(after)) {
      this.#writeJson(
        res,
        400,
        jsonRpcError(-32000, 'Bad Request: Last-Event-ID is not an event id of this session'),
      );
      return;
    }
    const ex = log.exchange;
    if (log.reader !== undefined) {
      this.#conflict(res, `stream ${stream} is being resumed on another connection`);
      return;
    }
    if (ex !== undefined && writable(ex.res)) {
      this.#conflict(res, `stream ${stream} is still open on another connection`);
      return;
    }
    if (ex === undefined && log.framesAfter(after).frames.length === 0) {
      // Ended, and the client had all of it: nothing to stream (an SSE answer that ends at once
      // would make a client that did not see a result response reconnect again and again).
      res.writeHead(204, { 'mcp-session-id': this.sessionId }).end();
      return;
    }
    res.writeHead(200, { ...SSE_HEADERS, 'mcp-session-id': this.sessionId });
    // At once, as the standalone stream's: with nothing to replay, the head would wait for the
    // first keep-alive (15 s by default), and a client bounding its wait gave up first.
    res.flushHeaders();
    log.reader = res;
    this.#open.add(res);
    if (ex !== undefined) {
      // The stream's answers leave through `res` from now on: in flight until they are out
      // (see `#answered`), as on the POST's own connection. And it is not ended before the
      // replay below attached it to `res`.
      ex.closed = false;
      ex.queued++;
    }
    res.once('close', () => {
      if (log.reader === res) log.reader = undefined;
      this.#open.delete(res);
      if (ex !== undefined) {
        if (ex.keepAlive && ex.res === res) clearInterval(ex.keepAlive);
        ex.closed = true;
        this.#release(ex);
      }
      this.#onActivity();
    });
    // Once the replay is written, the stream goes on on `res` (its pending requests' answers,
    // and what comes before them), or `res` ends for an ended stream.
    const attach = (): void => {
      if (ex === undefined) {
        res.end();
        return;
      }
      ex.queued--;
      if (writable(res)) {
        ex.res = res;
        ex.keepAlive = this.#startKeepAlive(res);
      }
      if (ex.pending.size === 0) this.#finish(ex);
    };
    // What the log holds after `from`, in order. Events that come meanwhile are only kept (`ex.res`
    // is still the broken connection) and written by the next step, after those before them:
    // written at once they overtook the replay's, and ids went out of order.
    const replay = (from: number): void => {
      if (!writable(res)) {
        attach();
        return;
      }
      const { frames, notesEnd, last } = log.framesAfter(from);
      for (let i = 0; i < notesEnd; i++) res.write(frames[i]!);
      if (notesEnd === frames.length) {
        attach();
        return;
      }
      // The responses after the last notification a turn later, as in {@link #respond}: the SDK
      // client would handle a response read in the same chunk before the notifications.
      setImmediate(() => {
        if (writable(res)) res.write(frames.slice(notesEnd).join(''));
        replay(last);
      });
    };
    replay(after);
  }

  /** Answers `ex`'s POST as an SSE stream from now on (numbered: it can be resumed). */
  #toSse(ex: Exchange): StreamLog {
    ex.sse = true;
    const log = (ex.log = new StreamLog(++this.#streams, ex, this.#maxBacklog));
    this.#liveLogs.set(log.stream, log);
    ex.res.writeHead(200, { ...SSE_HEADERS, 'mcp-session-id': this.sessionId });
    for (const r of ex.responses) this.#writeEvent(ex.res, log, r, false);
    ex.keepAlive = this.#startKeepAlive(ex.res);
    return log;
  }

  /**
   * One look of the slow-call watch at this session (see {@link watchSlowCalls}): a POST still
   * waiting for its JSON answer that was already waiting at the last look is switched to SSE,
   * so that keep-alives go out — a proxy cuts a connection idle for long (often 60 s) — and,
   * for a client of MCP 2025-11-25 or later, a priming event (an id, no data) lets it resume
   * the stream if its connection breaks anyway. Returns whether a POST still waits for JSON.
   */
  #lookAtSlowCalls(): boolean {
    let waiting = false;
    // Each exchange once: a batch's is there once per pending request.
    for (const ex of new Set(this.#exchanges.values())) {
      if (ex.sse || ex.closed || ex.res.writableEnded) continue;
      if (!ex.slow) {
        ex.slow = true;
        waiting = true;
        continue;
      }
      const log = this.#toSse(ex);
      if (ex.prime) ex.res.write(`id: ${log.prime()}\ndata: \n\n`);
      else ex.res.write(': keep-alive\n\n');
    }
    return waiting;
  }

  /** Puts this session under the slow-call watch while a POST waits for a JSON answer. */
  #watchSlowCalls(): void {
    if (this.#watched) return;
    this.#watched = true;
    const key = this.#keepAliveMs;
    let watch = slowCallWatches.get(key);
    if (watch === undefined) {
      const transports = new Set<HttpSessionTransport>();
      const timer = setInterval(() => {
        for (const t of transports) {
          if (!t.#closed && t.#lookAtSlowCalls()) continue;
          t.#watched = false;
          transports.delete(t);
        }
        if (transports.size === 0) {
          clearInterval(timer);
          slowCallWatches.delete(key);
        }
      }, key);
      timer.unref();
      watch = { transports, timer };
      slowCallWatches.set(key, watch);
    }
    watch.transports.add(this);
  }

  /** Takes this session out of the slow-call watch, and stops the watch when it was the last. */
  #unwatch(): void {
    if (!this.#watched) return;
    this.#watched = false;
    const watch = slowCallWatches.get(this.#keepAliveMs);
    if (watch === undefined) return;
    watch.transports.delete(this);
    if (watch.transports.size === 0) {
      clearInterval(watch.timer);
      slowCallWatches.delete(this.#keepAliveMs);
    }
  }

  /** `log`'s stream ended: kept {@link RESUME_WINDOW_MS} for a client to resume it. */
  #logEnded(log: StreamLog): void {
    if (log.exchange === undefined) return;
    log.exchange = undefined;
    log.endedAt = performance.now();
    this.#liveLogs.delete(log.stream);
    this.#endedLogs.set(log.stream, log);
    this.#endedChars += log.chars;
    this.#prune();
  }

  /** Forgets ended streams past their window, and the oldest beyond {@link MAX_ENDED_LOG_BYTES}. */
  #prune(): void {
    const now = performance.now();
    for (const log of this.#endedLogs.values()) {
      const expired = now - log.endedAt > RESUME_WINDOW_MS;
      if (!expired && this.#endedChars <= MAX_ENDED_LOG_BYTES) return;
      this.#endedLogs.delete(log.stream);
      this.#endedChars -= log.chars;
    }
  }

  #startKeepAlive(res: ServerResponse): NodeJS.Timeout {
    const timer = setInterval(() => {
      // A stream with bytes still waiting to go out is not idle: nothing to keep alive.
      if (!res.writableEnded && res.writableLength === 0) res.write(': keep-alive\n\n');
    }, this.#keepAliveMs);
    timer.unref();
    return timer;
  }

  /**
   * Writes `json` as the next event of `log`'s stream on `res`, while that is writable; the
   * event is kept in `log` (see {@link StreamLog}) whether or not it could be written.
   */
  #writeEvent(
    res: ServerResponse | undefined,
    log: StreamLog | undefined,
    json: string,
    notification: boolean,
  ): void {
    // One `data:` line: a line break in a response's text handed over by `sendLine` can only be
    // whitespace between JSON tokens (JSON escapes them inside strings). JSON.stringify writes
    // none.
    const data = json.includes('\n') || json.includes('\r') ? oneLine(json) : json;
    const id = log?.append(data, notification);
    if (res !== undefined && writable(res)) res.write(sseFrame(id, data));
  }

  /**
   * True when a notification to `res` must be dropped: the client has left more than
   * `maxStreamBacklogBytes` unread (Node would buffer every further write in memory).
   */
  #backlogged(res: ServerResponse): boolean {
    if (res.writableLength <= this.#maxBacklog) return false;
    this.#onDropped();
    return true;
  }

  /** An answered request of `ex`: in flight until the exchange's response has gone out. */
  #answered(ex: Exchange): void {
    // An SSE stream whose connection broke keeps the answer for a client resuming it: in flight
    // until the stream ended (or a resuming connection wrote it out). A JSON answer's connection
    // that closed sent no id: nobody can have it.
    if (ex.closed && !ex.sse) this.#onRequestsDone(1);
    else ex.held++;
  }

  /** The answers `ex` held are out, or can no longer be: their requests are done. */
  #release(ex: Exchange): void {
    const held = ex.held;
    ex.held = 0;
    if (held > 0) this.#onRequestsDone(held);
  }

  /** Answers `id`, a request of `ex` still pending, with the response text `json`. */
  #respond(ex: Exchange, id: RequestId, json: string): void {
    this.#exchanges.delete(id);
    ex.pending.delete(id);
    this.#answered(ex);
    if (ex.sse) {
      // The SDK client dispatches notifications on a microtask but responses synchronously,
      // so a response read in the same chunk as the last progress notification would
      // overtake it and the notification would be dropped. Write the response a turn later.
      // The stream ends after the last queued response: responses of a batch that arrive in
      // one turn were lost when the first one's turn ended the stream.
      ex.queued++;
      setImmediate(() => {
        ex.queued--;
        this.#writeEvent(ex.res, ex.log, json, false);
        if (ex.pending.size === 0) this.#finish(ex);
      });
      return;
    }
    // A JSON answer whose connection closed reaches nobody: not kept until the rest is answered.
    if (!ex.closed) ex.responses.push(json);
    if (ex.pending.size === 0) this.#finish(ex);
  }

  /**
   * {@link send} for a response already serialized: `json` is the JSON text of the response to
   * the request `id` (the fast path hands over its upstream's line with the agent's id, so the
   * result is not serialized again).
   */
  sendLine(json: string, id: RequestId): Promise<void> {
    if (this.#closed) return Promise.reject(new Error('Not connected'));
    const ex = this.#exchanges.get(id);
    if (ex === undefined) return Promise.resolve(); // cancelled, or the session closed
    let text: string;
    if (!nestsFewerThan(json, RAW_MAX_NESTING)) {
      // What `send` would write for it: an InternalError response when JSON.stringify cannot
      // serialize it (a hostile upstream's result nested thousands of levels deep).
      text = serializeMessage(JSON.parse(json) as JSONRPCMessage);
    } else text = json;
    this.#respond(ex, id, text);
    return Promise.resolve();
  }

  async send(message: JSONRPCMessage, options?: TransportSendOptions): Promise<void> {
    if (this.#closed) throw new Error('Not connected');
    const e = message as Envelope;
    const isResponse = e.method === undefined && e.id !== undefined;
    if (isResponse) {
      const id = e.id as RequestId;
      const ex = this.#exchanges.get(id);
      if (!ex) return; // the request was cancelled, or the session closed
      // Serialized here, not in the timer below: it cannot throw for a response.
      this.#respond(ex, id, serializeMessage(message));
      return;
    }
    const notification = e.id === undefined;
    const related = options?.relatedRequestId;
    const ex = related === undefined ? undefined : this.#exchanges.get(related);
    // A POST's stream takes its requests' messages until it ends; one whose connection closed
    // keeps them for a client resuming it. A POST answered as JSON whose connection closed sent
    // no event id: nobody can resume it, what it would carry is dropped.
    if (ex && !ex.res.writableEnded && (ex.sse || !ex.closed)) {
      // Checked before serializing: a flood to a client that does not read costs little.
      if (notification && ex.sse && writable(ex.res) && this.#backlogged(ex.res)) return;
      // A request or notification that cannot be serialized rejects here, before any stream
      // changes (the sender handles it).
      const json = serializeMessage(message);
      if (!ex.sse) this.#toSse(ex);
      this.#writeEvent(ex.res, ex.log, json, notification);
      return;
    }
    if (ex) {
      this.#undelivered(e, notification, 'request-gone');
      return;
    }
    const json = serializeMessage(message);
    const standalone = this.#standalone?.res;
    // Stream 0 lives as long as the session: everything it carries, a server's request too, is
    // kept as a notification is (up to the backlog bound, the oldest forgotten first), never
    // whole — a request forgotten so is one its sender times out on.
    if (standalone && !(notification && this.#backlogged(standalone))) {
      this.#writeEvent(standalone, this.#standaloneLog, json, true);
    } else if (standalone === undefined && this.#standaloneLog !== undefined) {
      // Between a client's standalone streams: kept for it to resume.
      this.#writeEvent(undefined, this.#standaloneLog, json, true);
    } else if (standalone === undefined) {
      // No stream, nor one to resume: the message is dropped, as the spec allows — told.
      this.#undelivered(e, notification, 'no-stream');
    }
  }

  /**
   * Tells of a message that reached no stream; for a request, rejects (`send` throws), so its
   * sender fails at once instead of waiting for an answer that cannot come.
   * @throws McpError (ConnectionClosed) for a request.
   */
  #undelivered(e: Envelope, notification: boolean, reason: UndeliveredReason): void {
    const method = typeof e.method === 'string' ? e.method.slice(0, 100) : '(none)';
    this.#onUndelivered({ reason, kind: notification ? 'notification' : 'request', method });
    if (notification) return;
    throw new McpError(
      ErrorCode.ConnectionClosed,
      reason === 'request-gone'
        ? `the agent's request this ${method} belongs to was answered as JSON and its connection has closed: nothing can carry it to the agent`
        : `the agent has no standalone SSE stream (GET) open to carry this ${method}`,
    );
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#unwatch();
    const dropped = this.#exchanges.size;
    for (const ex of new Set(this.#exchanges.values())) {
      if (ex.keepAlive) clearInterval(ex.keepAlive);
      if (!ex.res.headersSent) {
        this.#writeJson(ex.res, 503, jsonRpcError(ErrorCode.ConnectionClosed, SESSION_CLOSED));
        continue;
      }
      // An SSE stream: each request still pending gets its answer, an error, before the stream
      // ends (an ended stream without it left the client waiting for it forever); responses
      // waiting for their turn are written first, and the last one ends the stream.
      for (const id of ex.pending) {
        this.#writeEvent(
          ex.res,
          ex.log,
          JSON.stringify(jsonRpcError(ErrorCode.ConnectionClosed, SESSION_CLOSED, id)),
          false,
        );
      }
      ex.pending.clear();
      if (ex.queued === 0) ex.res.end();
      // Kept for a client resuming the stream, which the session's end forgets.
      if (ex.closed) this.#release(ex);
    }
    this.#exchanges.clear();
    this.#liveLogs.clear();
    this.#endedLogs.clear();
    this.#standaloneLog = undefined;
    if (dropped > 0) this.#onRequestsDone(dropped);
    if (this.#standalone) {
      clearInterval(this.#standalone.keepAlive);
      this.#standalone.res.end();
      this.#standalone = undefined;
    }
    this.onclose?.();
  }
}

/**
 * Server side of an MCP session over this process's stdin/stdout (`agent-fabric mcp`).
 *
 * A drop-in for the SDK's `StdioServerTransport` that splits lines with a {@link LineReader} and
 * checks each message's JSON-RPC envelope cheaply instead of parsing it against the full zod
 * message union (the session's Protocol still validates what it handles; messages the cheap
 * check does not vouch for get the SDK's schema parse). A message the SDK rejects is reported
 * through `onerror` and, when it carries an id the client may be waiting on, answered with
 * `-32600 Invalid Request` (the SDK alone would leave that client waiting forever); lines that
 * are not JSON have no id to answer and are only reported. Output goes through a
 * {@link LineWriter}. Before a line is parsed it is offered to `onrawline` (the fast path takes
 * plain `tools/call` lines there, parsing only their arguments).
 *
 * A client that stops reading stdout must not make this process hold what it is sent: Node
 * buffers every write a pipe cannot take, without limit (an in-process gateway held every
 * progress notification of an upstream flood, the stdio bridge every message the sidecar
 * sent). So, as over Streamable HTTP: a notification (progress, a log line, a list change, a
 * resource update) sent while `maxBacklogBytes` wait unread is dropped (counted, and reported
 * through `onbacklog` once when dropping starts and once, with the count, when the client has
 * caught up); and while more than that waits for the client, stdin is not read, so the
 * client's further requests wait in its own pipe instead of their answers piling up here. Responses and
 * requests are never dropped.
 *
 * @module
 */
import type { Transport } from '@modelcontextprotocol/sdk/shared/transport.js';
import {
  ErrorCode,
  JSONRPCMessageSchema,
  type JSONRPCMessage,
} from '@modelcontextprotocol/sdk/types.js';
import { StringDecoder } from 'node:string_decoder';
import { answerIdOf, invalidMessageResponse, jsonRpcError } from './jsonrpc-message.js';
import { LineReader } from './line-reader.js';
import { LINE_QUEUED, LineWriter, type LineSink } from './line-writer.js';
import { serializeMessage } from './serialize-message.js';
import { DEFAULT_MAX_STREAM_BACKLOG_BYTES } from './downstream-http-transport.js';

const NO_BATCH = 'Invalid Request: batches are not supported over stdio; send one message a line';

/** Largest line accepted (as the SDK's read buffer). */
export const STDIO_MAX_LINE_BYTES = 10 * 1024 * 1024;

/** What {@link StdioSessionTransport.onbacklog} reports. */
export type StdioBacklogEvent =
  /** The client left `unsentBytes` unread: notifications are dropped from here. */
  | { readonly state: 'dropping'; readonly unsentBytes: number }
  /** The client read what waited; `dropped` notifications were dropped meanwhile. */
  | { readonly state: 'caught-up'; readonly dropped: number };

/** Options of a {@link StdioSessionTransport}. */
export interface StdioSessionTransportOptions {
  /**
   * Bytes that may wait for the client to read stdout (beyond what the pipe holds) before
   * notifications to it are dropped. @default 262144 (as `http.maxStreamBacklogBytes`)
   */
  maxBacklogBytes?: number;
}

/** MCP server transport over stdin/stdout with a cheap envelope check. */
export class StdioSessionTransport implements Transport {
  onclose?: () => void;
  onerror?: (error: Error) => void;
  onmessage?: (message: JSONRPCMessage) => void;
  /**
   * Offered each non-empty line before it is parsed; returning true takes it (it is neither
   * parsed nor delivered to `onmessage`). The fast path reads the `tools/call` requests it can
   * with a parse of their arguments alone (see `plainToolCallRequest`). Must not throw.
   */
  onrawline: ((line: string) => boolean) | undefined = undefined;
  /** Told when notifications start being dropped for a client that does not read, and after. */
  onbacklog: ((event: StdioBacklogEvent) => void) | undefined = undefined;

  readonly #stdin: NodeJS.ReadableStream;
  readonly #stdout: NodeJS.WritableStream;
  readonly #decoder = new StringDecoder('utf8');
  readonly #reader = new LineReader(
    (line) => this.#online(line),
    STDIO_MAX_LINE_BYTES,
    () => this.#onoverflow(),
  );
  readonly #writer: LineWriter;
  readonly #maxBacklog: number;
  #started = false;
  #closed = false;
  /** stdin is paused until stdout drains. */
  #held = false;
  /** Notifications dropped since the client last caught up, and in all. */
  #droppedNow = 0;
  #dropped = 0;

  constructor(
    stdin: NodeJS.ReadableStream = process.stdin,
    stdout: NodeJS.WritableStream = process.stdout,
    options: StdioSessionTransportOptions = {},
  ) {
    this.#stdin = stdin;
    this.#stdout = stdout;
    this.#maxBacklog = options.maxBacklogBytes ?? DEFAULT_MAX_STREAM_BACKLOG_BYTES;
    this.#writer = new LineWriter(() => this.#stdout as NodeJS.WritableStream & LineSink);
  }

  /** Output not taken by stdout's pipe yet (UTF-16 units queued this turn, bytes after). */
  get unsentBytes(): number {
    return this.#writer.pending + (this.#sink.writableLength ?? 0);
  }

  /** Notifications dropped because the client was not reading. */
  get droppedNotifications(): number {
    return this.#dropped;
  }

  get #sink(): NodeJS.WritableStream & { writableLength?: number; writableNeedDrain?: boolean } {
    return this.#stdout;
  }

  /**
   * Called as a message is queued: when more than `maxBacklogBytes` wait for the client, stops
   * reading stdin until stdout drains (what the client sends meanwhile waits in its pipe), and
   * reports the end of a run of dropped notifications then. Not at stdout's own high-water mark:
   * a client that writes a large request before reading what came would then wait on a gateway
   * that waits on it.
   */
  #hold(): void {
    if (this.#held || this.#closed || this.#sink.writableNeedDrain !== true) return;
    if (this.unsentBytes <= this.#maxBacklog) return;
    this.#held = true;
    this.#stdin.pause();
    this.#stdout.once('drain', () => {
      this.#held = false;
      if (this.#droppedNow > 0) {
        const dropped = this.#droppedNow;
        this.#droppedNow = 0;
        this.onbacklog?.({ state: 'caught-up', dropped });
      }
      if (!this.#closed && this.#stdin.listenerCount('data') > 0) this.#stdin.resume();
    });
  }

  /** True (and counted) when a notification must be dropped: the client left too much unread. */
  #drops(): boolean {
    if (this.#sink.writableNeedDrain !== true) return false;
    const unsent = this.unsentBytes;
    if (unsent <= this.#maxBacklog) return false;
    this.#dropped++;
    if (this.#droppedNow++ === 0) this.onbacklog?.({ state: 'dropping', unsentBytes: unsent });
    return true;
  }

  readonly #ondata = (chunk: Buffer | string): void => {
    // A decoder keeps a UTF-8 character split between two chunks whole.
    this.#reader.push(typeof chunk === 'string' ? chunk : this.#decoder.write(chunk));
  };

  #online(line: string): void {
    if (line !== '') this.#line(line);
  }

  #onoverflow(): void {
    this.onerror?.(new Error(`ReadBuffer exceeded maximum size of ${STDIO_MAX_LINE_BYTES} bytes`));
    void this.close();
  }

  readonly #onerror = (error: Error): void => {
    this.onerror?.(error);
  };

  #line(line: string): void {
    if (this.onrawline?.(line) === true) return;
    let message: unknown;
    try {
      message = JSON.parse(line);
    } catch (error) {
      this.onerror?.(error instanceof Error ? error : new Error(String(error)));
      return;
    }
    if (!isEnvelope(message)) {
      // Let the SDK's schema name the problem.
      const parsed = JSONRPCMessageSchema.safeParse(message);
      if (!parsed.success) {
        this.onerror?.(parsed.error);
        this.#refuse(message);
        return;
      }
      message = parsed.data;
    }
    this.onmessage?.(message as JSONRPCMessage);
  }

  /**
   * Answers a message the SDK rejects when it carries an id a client may be waiting on (the
   * SDK itself would only report it through `onerror`, and the client would wait forever);
   * without one it is only reported.
   */
  #refuse(message: unknown): void {
    if (Array.isArray(message)) {
      for (const m of message) {
        const id = answerIdOf(m);
        if (id !== null)
          void this.sendLine(JSON.stringify(jsonRpcError(ErrorCode.InvalidRequest, NO_BATCH, id)));
      }
      return;
    }
    if (answerIdOf(message) !== null)
      void this.sendLine(JSON.stringify(invalidMessageResponse(message)));
  }

  async start(): Promise<void> {
    if (this.#started) throw new Error('StdioSessionTransport already started');
    this.#started = true;
    this.#stdin.on('data', this.#ondata);
    this.#stdin.on('error', this.#onerror);
  }

  /** Queues `message`; the messages sent during one turn go out in one write (LineWriter). */
  send(message: JSONRPCMessage): Promise<void> {
    this.#hold();
    const m = message as { id?: unknown; method?: unknown };
    if (m.id !== undefined || m.method === undefined) return this.#writer.send(message);
    // A notification waits for no drain (a call awaits its last progress before it answers, and
    // would wait for as long as the client does not read): past the backlog the next is dropped.
    if (this.#drops()) return LINE_QUEUED;
    let json: string;
    try {
      json = serializeMessage(message);
    } catch (error) {
      return Promise.reject(error as Error);
    }
    void this.#writer.sendLine(json);
    return LINE_QUEUED;
  }

  /** {@link send} for a message already serialized as one line of JSON (a response). */
  sendLine(json: string): Promise<void> {
    this.#hold();
    return this.#writer.sendLine(json);
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#writer.flush();
    this.#stdin.off('data', this.#ondata);
    this.#stdin.off('error', this.#onerror);
    if (this.#stdin.listenerCount('data') === 0) this.#stdin.pause();
    this.#reader.reset();
    this.onclose?.();
  }
}

/**
 * True when `m` is a JSON-RPC 2.0 request, notification or response the SDK's message schema
 * accepts as is: `jsonrpc: "2.0"`, a string or integer id, a string method, object params,
 * an object result or a `{ code, message }` error, and no other keys.
 */
function isEnvelope(m: unknown): boolean {
  if (typeof m !== 'object' || m === null || Array.isArray(m)) return false;
  const e = m as Record<string, unknown>;
  if (e.jsonrpc !== '2.0') return false;
  const id = e.id;
  const hasId = id !== undefined;
  if (hasId && typeof id !== 'string' && !Number.isSafeInteger(id)) return false;
  for (const k in e) {
    if (k !== 'jsonrpc' && k !== 'id' && k !== 'method' && k !== 'params') {
      if (k !== 'result' && k !== 'error') return false;
    }
  }
  if (e.method !== undefined) {
    if (typeof e.method !== 'string' || 'result' in e || 'error' in e) return false;
    const p = e.params;
    if (p !== undefined && (typeof p !== 'object' || p === null || Array.isArray(p))) return false;
    // _meta has a schema of its own; leave messages that carry one to the SDK.
    return p === undefined || (p as { _meta?: unknown })._meta === undefined;
  }
  if (!hasId || 'params' in e) return false;
  if ('result' in e) {
    const r = e.result;
    return (
      !('error' in e) &&
      typeof r === 'object' &&
      r !== null &&
      !Array.isArray(r) &&
      (r as { _meta?: unknown })._meta === undefined
    );
  }
  return false; // error responses are rare: the SDK schema checks them
}

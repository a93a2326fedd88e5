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
import { LineWriter, type LineSink } from './line-writer.js';

const NO_BATCH = 'Invalid Request: batches are not supported over stdio; send one message a line';

/** Largest line accepted (as the SDK's read buffer). */
export const STDIO_MAX_LINE_BYTES = 10 * 1024 * 1024;

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

  readonly #stdin: NodeJS.ReadableStream;
  readonly #stdout: NodeJS.WritableStream;
  readonly #decoder = new StringDecoder('utf8');
  readonly #reader = new LineReader(
    (line) => this.#online(line),
    STDIO_MAX_LINE_BYTES,
    () => this.#onoverflow(),
  );
  readonly #writer: LineWriter;
  #started = false;
  #closed = false;

  constructor(
    stdin: NodeJS.ReadableStream = process.stdin,
    stdout: NodeJS.WritableStream = process.stdout,
  ) {
    this.#stdin = stdin;
    this.#stdout = stdout;
    this.#writer = new LineWriter(() => this.#stdout as NodeJS.WritableStream & LineSink);
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
    return this.#writer.send(message);
  }

  /** {@link send} for a message already serialized as one line of JSON. */
  sendLine(json: string): Promise<void> {
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

/**
 * The `tools/call` fast path: the hot request and response handled beside the SDK's `Protocol`
 * instead of through it, with the same wire behaviour.
 *
 * The SDK validates every message several times with zod: the stdio reader parses it against
 * the JSON-RPC message union, `Protocol` re-parses it to tell requests from responses, the
 * `Server` re-validates `tools/call` requests and results, and the `Client` validates results
 * against the caller's schema. On a gateway that forwards a result it did not produce, that is
 * most of the CPU time of a call. Here a cheap structural check proves a message is one the
 * SDK would accept unchanged; anything else (unusual keys, `_meta`, progress tokens, task
 * augmentation, odd result shapes) goes through the SDK exactly as before, so errors, defaults
 * and stripping stay the SDK's own.
 *
 * - {@link FastUpstreamCalls}: sends requests on an SDK `Client`'s transport, drawing ids from
 *   the client's own counter, and takes their responses off the transport before `Protocol`
 *   sees them; timeouts, cancellation (`notifications/cancelled` upstream) and connection loss
 *   behave as in `Protocol.request`.
 * - {@link FastToolCalls}: serves `tools/call` requests arriving on a session's transport and
 *   writes their responses, honouring `notifications/cancelled` and connection close as
 *   `Protocol` does.
 *
 * Over stdio both read the commonest lines from their text before any parse (the transports
 * offer each line through `onrawline`): an agent's plain `tools/call` with one `JSON.parse` of
 * its arguments alone ({@link plainToolCallRequest}), and an upstream's one-text-block result
 * without a parse (`plainTextResponse` in raw-results.ts). Both accept only layouts whose every
 * key and separator is fixed, build exactly what `JSON.parse` of the whole line builds, and
 * leave any other line to the parse as before; a whole-line parse was the largest part of a
 * forwarded call's CPU time. The Streamable HTTP endpoint reads a POST's body with
 * {@link plainToolCallRequest} too (downstream-http.ts), before its whole-body parse.
 *
 * @module
 */
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { safeParse } from '@modelcontextprotocol/sdk/server/zod-compat.js';
import type { Transport } from '@modelcontextprotocol/sdk/shared/transport.js';
import {
  CallToolRequestSchema,
  CallToolResultSchema,
  ErrorCode,
  McpError,
  isJSONRPCErrorResponse,
  isJSONRPCResultResponse,
  type JSONRPCMessage,
  type MessageExtraInfo,
  type Request,
  type RequestId,
  type Result,
} from '@modelcontextprotocol/sdk/types.js';
import type { z } from 'zod';
import { argumentsJson } from './args-json.js';
import { ChurnMap } from './churn-collections.js';
import { duplicateIdError } from './jsonrpc-message.js';
import { LINE_QUEUED } from './line-writer.js';
import { RelayedMcpError } from './map-error.js';
import { NotConnectedError } from './process-stdio-transport.js';
import {
  JSON_STRING,
  plainTextResponse,
  rememberRawResult,
  rawResponseLine,
} from './raw-results.js';

/** A transport that offers each line before parsing it (ProcessStdioTransport). */
interface RawLineSource {
  onrawline: ((line: string) => boolean) | undefined;
}

/** The fields of a JSON-RPC message the fast path looks at. */
interface Envelope {
  jsonrpc?: unknown;
  id?: unknown;
  method?: unknown;
  params?: unknown;
  result?: unknown;
  error?: unknown;
}

type Obj = Record<string, unknown>;

function isObject(value: unknown): value is Obj {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function isRequestId(id: unknown): id is RequestId {
  return typeof id === 'string' || Number.isSafeInteger(id);
}

/** True when `message` has no keys besides `a`, `b`, `c` and `d`. */
function onlyKeys(message: object, a: string, b: string, c: string, d = c): boolean {
  for (const k in message) if (k !== a && k !== b && k !== c && k !== d) return false;
  return true;
}

// ---------------------------------------------------------------------------------------------
// Results

const TEXT_KEYS = new Set(['type', 'text', '_meta']);

/**
 * True when the SDK's `CallToolResultSchema` parse would return `result` unchanged: a content
 * array of plain text blocks (no annotations, no unknown keys), `isError` boolean or absent,
 * `structuredContent` an object or absent, no `_meta`.
 */
function isPlainCallToolResult(result: Obj): boolean {
  const content = result.content;
  if (!Array.isArray(content)) return false;
  if (result._meta !== undefined) return false;
  const isError = result.isError;
  if (isError !== undefined && typeof isError !== 'boolean') return false;
  const structured = result.structuredContent;
  if (structured !== undefined && !isObject(structured)) return false;
  for (const block of content as unknown[]) {
    if (!isObject(block) || block.type !== 'text' || typeof block.text !== 'string') return false;
    for (const k in block) if (!TEXT_KEYS.has(k)) return false;
    if (block._meta !== undefined && !isObject(block._meta)) return false;
  }
  return true;
}

/**
 * What the SDK's `Server` does with a `tools/call` handler's result: validate it against
 * `CallToolResultSchema` and answer with the parsed value, or fail the request with
 * `InvalidParams`. Plain results are returned as they are (the parse would not change them).
 */
export function validCallToolResult(result: unknown): Result {
  if (isObject(result) && isPlainCallToolResult(result)) return result as Result;
  const parsed = safeParse(CallToolResultSchema, result);
  if (!parsed.success) {
    const error: unknown = parsed.error;
    const message = error instanceof Error ? error.message : String(error);
    throw new McpError(ErrorCode.InvalidParams, `Invalid tools/call result: ${message}`);
  }
  return parsed.data as Result;
}

// ---------------------------------------------------------------------------------------------
// Upstream: requests on a Client's transport

let lastName = '';
let lastNameJson = '""';

/**
 * The line `JSON.stringify({ jsonrpc: '2.0', id, method, params })` makes of a request whose
 * params are `{ name, arguments }` (in that order, `arguments` a plain object or absent), built
 * around the arguments' text from {@link argumentsJson} — the text the audit log then digests
 * without serializing the arguments again. The generic serialization of the envelope, with its
 * `toJSON` lookups per object, was most of a forwarded call's `JSON.stringify` time. Undefined
 * for any other shape (and when the arguments cannot be serialized): the caller sends it as a
 * message, as before.
 */
function requestLine(id: number, method: string, params: unknown): string | undefined {
  if (!isObject(params)) return undefined;
  let keys = 0;
  for (const k in params) {
    if (k !== (keys === 0 ? 'name' : 'arguments') || keys === 2) return undefined;
    keys++;
  }
  const name = params.name;
  const args = params.arguments;
  if (typeof name !== 'string') return undefined;
  // A `toJSON` of the arguments themselves would be called with another key inside the
  // message than alone: such values take the generic path.
  if (args !== undefined && (!isObject(args) || typeof args.toJSON === 'function')) {
    return undefined;
  }
  let argsText: string;
  try {
    argsText = args === undefined ? '' : `,"arguments":${argumentsJson(args)}`;
  } catch {
    return undefined; // the generic path reports it as it always did
  }
  if (name !== lastName) {
    lastNameJson = JSON.stringify(name);
    lastName = name;
  }
  const m = method === 'tools/call' ? '"tools/call"' : JSON.stringify(method);
  return `{"jsonrpc":"2.0","id":${id},"method":${m},"params":{"name":${lastNameJson}${argsText}}}`;
}

interface Pending {
  resolve(result: Result): void;
  reject(error: unknown): void;
  timer: NodeJS.Timeout;
  cancel: Cancellation | undefined;
  onAbort: (() => void) | undefined;
}

/**
 * Cancellation of one call that needs no `AbortController` until somebody asks for a real
 * signal: creating one and adding and removing its listener is a measurable part of a call.
 */
export interface CancelHook {
  readonly aborted: boolean;
  readonly reason: unknown;
  /** A real signal, created on first use (approval waits, SDK requests, fabric tools). */
  readonly signal: AbortSignal;
  /** Sets the one listener run on cancellation; `undefined` removes it. */
  onCancel(listener: ((reason: unknown) => void) | undefined): void;
}

/** What a fast upstream request can be cancelled by. */
export type Cancellation = CancelHook | AbortSignal;

function isCancelHook(c: Cancellation): c is CancelHook {
  return 'onCancel' in c;
}

/** How many stopped requests {@link FastUpstreamCalls} remembers for their late answers. */
const MAX_STOPPED = 1024;

/** The id of a response as a number (an upstream may echo a numeric id as a string). */
function responseId(m: Envelope): number {
  return typeof m.id === 'number' ? m.id : typeof m.id === 'string' ? Number(m.id) : NaN;
}

/** The SDK client's request id counter (a plain field of `Protocol`). */
type IdCounter = { _requestMessageId: number };

/**
 * Requests sent on an SDK client's transport beside its `Protocol`. Install after
 * `client.connect()`; requests then share the client's id sequence, so ids never collide.
 */
export class FastUpstreamCalls {
  readonly client: Client;
  readonly #transport: Transport;
  readonly #schema: z.ZodType;
  readonly #pending = new ChurnMap<number, Pending>();
  /**
   * Requests cancelled or timed out here, newest last: the upstream may still answer them. Such
   * an answer is dropped without a word — handed on, the SDK would report it as an error with
   * the whole answer (a tool's result) in the message, which the gateway logs.
   */
  readonly #stopped = new Map<number, (() => void) | undefined>();
  /**
   * The id of each request stopped here by the error it was rejected with, so the caller can be
   * told when the upstream is done with it ({@link whenAnswered}).
   */
  readonly #stoppedBy = new WeakMap<object, number>();
  #open = true;

  /**
   * @returns undefined when this SDK version's client cannot be shared safely.
   */
  static install(
    client: Client,
    transport: Transport,
    resultSchema: z.ZodType,
  ): FastUpstreamCalls | undefined {
    if (typeof (client as unknown as IdCounter)._requestMessageId !== 'number') return undefined;
    if (typeof transport.onmessage !== 'function') return undefined;
    return new FastUpstreamCalls(client, transport, resultSchema);
  }

  private constructor(client: Client, transport: Transport, resultSchema: z.ZodType) {
    this.client = client;
    this.#transport = transport;
    this.#schema = resultSchema;
    const sdkMessage = transport.onmessage!;
    const sdkClose = transport.onclose;
    transport.onmessage = (message, extra) => {
      const m = message as Envelope;
      if (m.method === undefined) {
        if (this.#pending.size > 0 && this.#onResponse(m)) return;
        if (this.#stopped.size > 0 && this.#lateAnswer(responseId(m))) return;
      }
      sdkMessage.call(transport, message, extra);
    };
    transport.onclose = () => {
      // Protocol reports the close before failing its requests; so do we.
      sdkClose?.call(transport);
      this.#closed();
    };
    // A transport that offers its lines unparsed (stdio): a response of the SDK's one-text-block
    // layout to one of our requests is read from its text, without JSON.parse.
    if ('onrawline' in transport) {
      (transport as RawLineSource).onrawline = (line) =>
        this.#pending.size > 0 && this.#onPlainLine(line);
    }
  }

  /** Requests in flight on the fast path. */
  get size(): number {
    return this.#pending.size;
  }

  /**
   * Calls `done` once the upstream is done with the request that `error` stopped (cancelled or
   * timed out here): when its late answer arrives (and is dropped), or the connection closes.
   * Not when it is forgotten (more than {@link MAX_STOPPED} stopped after it): that says nothing
   * of the upstream being done with it, and the caller's own late window must end the wait.
   * False, and `done` is never called, when `error` is no such rejection of this connection's
   * (or its request was already answered or forgotten).
   */
  whenAnswered(error: unknown, done: () => void): boolean {
    if (typeof error !== 'object' || error === null) return false;
    const id = this.#stoppedBy.get(error);
    if (id === undefined || !this.#stopped.has(id)) return false;
    const previous = this.#stopped.get(id);
    this.#stopped.set(
      id,
      previous === undefined
        ? done
        : () => {
            previous();
            done();
          },
    );
    return true;
  }

  /** Drops the late answer of a stopped request `id` (true), telling who waits for it. */
  #lateAnswer(id: number): boolean {
    if (!this.#stopped.has(id)) return false;
    const done = this.#stopped.get(id);
    this.#stopped.delete(id);
    done?.();
    return true;
  }

  /**
   * Sends `request` and resolves with its result, as `client.request(request, schema,
   * { signal, timeout })` would. With `onError`, it rejects with what `onError` makes of the
   * failure instead of the failure itself (one promise, where a `.catch` would add a hop).
   */
  request(
    request: Request,
    cancel: Cancellation | undefined,
    timeout: number,
    onError?: (error: unknown) => unknown,
  ): Promise<Result> {
    return new Promise<Result>((resolve, rejectAs) => {
      const reject =
        onError === undefined
          ? (error: unknown): unknown => {
              rejectAs(error);
              return error;
            }
          : (error: unknown): unknown => {
              let mapped: unknown;
              try {
                mapped = onError(error);
              } catch (thrown) {
                mapped = thrown;
              }
              rejectAs(mapped);
              return mapped;
            };
      if (!this.#open) {
        reject(new NotConnectedError());
        return;
      }
      if (cancel?.aborted) {
        reject(cancel.reason);
        return;
      }
      const counter = this.client as unknown as IdCounter;
      const id = counter._requestMessageId++;
      const stop = (reason: unknown): void => {
        if (!this.#finish(id)) return;
        this.#stopped.set(id, undefined);
        if (this.#stopped.size > MAX_STOPPED) {
          // Forgotten: its late answer goes to the SDK (which reports it). Who waits for it is
          // not told: the upstream may still work on it (an agent stopping calls that never
          // answer would otherwise end another's given-up call's routing at will), so that wait
          // ends with its own late window (`callTimeoutSeconds`).
          this.#stopped.delete(this.#stopped.keys().next().value!);
        }
        if (this.#open) {
          this.#transport
            .send({
              jsonrpc: '2.0',
              method: 'notifications/cancelled',
              params: { requestId: id, reason: String(reason) },
            })
            .catch((error: unknown) =>
              this.client.onerror?.(new Error(`Failed to send cancellation: ${String(error)}`)),
            );
        }
        const given = reject(
          reason instanceof McpError
            ? reason
            : new McpError(ErrorCode.RequestTimeout, String(reason)),
        );
        if (typeof given === 'object' && given !== null) this.#stoppedBy.set(given, id);
      };
      const entry: Pending = {
        resolve,
        reject,
        timer: setTimeout(
          () =>
            stop(McpError.fromError(ErrorCode.RequestTimeout, 'Request timed out', { timeout })),
          timeout,
        ),
        cancel,
        onAbort: undefined,
      };
      if (cancel) {
        const c = cancel;
        if (isCancelHook(c)) c.onCancel(stop);
        else c.addEventListener('abort', (entry.onAbort = () => stop(c.reason)), { once: true });
      }
      this.#pending.set(id, entry);
      const transport = this.#transport as Transport & {
        sendLine?: (json: string) => Promise<void>;
      };
      const line =
        transport.sendLine === undefined
          ? undefined
          : requestLine(id, request.method, request.params);
      let sent: Promise<void>;
      if (line !== undefined) sent = transport.sendLine!(line);
      else {
        // A literal of fixed shape: spreading `request` cost more than the rest of the send.
        const message = { jsonrpc: '2.0', id, method: request.method, params: request.params };
        sent = transport.send(message as JSONRPCMessage);
      }
      if (sent !== LINE_QUEUED) {
        sent.catch((error: unknown) => {
          if (this.#finish(id)) reject(error);
        });
      }
    });
  }

  /** Removes a pending request and its timer and listener; false when it was not pending. */
  #finish(id: number): Pending | undefined {
    const entry = this.#pending.get(id);
    if (!entry) return undefined;
    this.#pending.delete(id);
    clearTimeout(entry.timer);
    const cancel = entry.cancel;
    if (cancel) {
      if (isCancelHook(cancel)) cancel.onCancel(undefined);
      else cancel.removeEventListener('abort', entry.onAbort!);
    }
    return entry;
  }

  /**
   * Settles a pending request from a response line {@link plainTextResponse} reads (its result
   * already notes the line, as `rememberRawResult` would): what
   * {@link #onResponse} does with the parsed message (such a message always takes its first
   * branch); false, and the line is parsed as usual, for any other line or an id not pending.
   */
  #onPlainLine(line: string): boolean {
    const plain = plainTextResponse(line);
    if (plain === undefined || !this.#pending.has(plain.id)) return false;
    const entry = this.#finish(plain.id)!;
    if (entry.cancel?.aborted) return true;
    entry.resolve(plain.result as Result);
    return true;
  }

  /** Settles a pending request from its response; false to leave the message to Protocol. */
  #onResponse(m: Envelope): boolean {
    const id = responseId(m);
    if (!this.#pending.has(id)) return false;
    const result = m.result;
    const error = m.error as { code?: unknown; message?: unknown; data?: unknown } | undefined;
    let outcome: { ok: true; result: unknown } | { ok: false; error: unknown } | undefined;
    if (m.jsonrpc === '2.0' && isRequestId(m.id)) {
      if (
        isObject(result) &&
        result._meta === undefined &&
        error === undefined &&
        onlyKeys(m, 'jsonrpc', 'id', 'result')
      ) {
        outcome = { ok: true, result };
        const line = (this.#transport as { currentLine?: string }).currentLine;
        if (line !== undefined && typeof m.id === 'number') rememberRawResult(result, line, m.id);
      } else if (
        result === undefined &&
        isObject(error) &&
        Number.isSafeInteger(error.code) &&
        typeof error.message === 'string' &&
        onlyKeys(m, 'jsonrpc', 'id', 'error') &&
        onlyKeys(error, 'code', 'message', 'data')
      ) {
        outcome = { ok: false, error };
      }
    }
    if (outcome === undefined) {
      // Unusual shapes: decide exactly as Protocol would.
      if (isJSONRPCResultResponse(m)) outcome = { ok: true, result };
      else if (isJSONRPCErrorResponse(m)) outcome = { ok: false, error };
      else return false; // Protocol reports it as an unknown message; the request times out
    }
    const entry = this.#finish(id)!;
    if (entry.cancel?.aborted) return true;
    if (!outcome.ok) {
      const e = outcome.error as { code: number; message: string; data?: unknown };
      // Relayed with the upstream's own message (McpError would prefix it).
      entry.reject(new RelayedMcpError(e.code, e.message, e.data));
      return true;
    }
    if (isObject(outcome.result)) {
      entry.resolve(outcome.result as Result);
      return true;
    }
    const parsed = safeParse(this.#schema, outcome.result);
    if (parsed.success) entry.resolve(parsed.data as Result);
    else entry.reject(parsed.error);
    return true;
  }

  #closed(): void {
    this.#open = false;
    const error = McpError.fromError(ErrorCode.ConnectionClosed, 'Connection closed');
    for (const id of this.#pending.keys()) this.#finish(id)?.reject(error);
    // No late answer comes on a closed connection.
    for (const id of [...this.#stopped.keys()]) this.#lateAnswer(id);
  }
}

// ---------------------------------------------------------------------------------------------
// Downstream: tools/call requests on a session's transport

/** What the fast path hands the gateway for one call (a subset of the SDK's handler extra). */
export interface FastCallExtra {
  /** Created on first use; prefer {@link cancel} on the hot path. */
  readonly signal: AbortSignal;
  readonly cancel: CancelHook;
  readonly requestId: RequestId;
  readonly _meta?: undefined;
  /** The HTTP request the call came in (its headers: a caller's `traceparent`); none over stdio. */
  readonly requestInfo?: MessageExtraInfo['requestInfo'];
  /** Registers work to run right after the response was written (or dropped), on a later tick. */
  defer(work: () => void): void;
}

/** Longest line {@link plainToolCallRequest} reads; longer ones are parsed whole. */
export const PLAIN_CALL_MAX_LINE = 64 * 1024;

/** A request id: a JSON integer as JSON.stringify writes a safe one (no `-0`), or a string. */
const JSON_ID = String.raw`(0|-?[1-9][0-9]{0,15}|${JSON_STRING})`;

/**
 * The two layouts of a plain `tools/call` request line: fields in the order a raw JSON-RPC
 * client writes them, and in the order the SDK's `Protocol` does (`method, params, jsonrpc,
 * id`). Every key and separator is fixed; the arguments are whatever lies between
 * `"arguments":` and the fixed end, and count only when `JSON.parse` reads them as one object.
 */
const PLAIN_CALL_LAYOUTS = [
  new RegExp(
    String.raw`^\{"jsonrpc":"2\.0","id":${JSON_ID},"method":"tools/call",` +
      String.raw`"params":\{"name":(${JSON_STRING}),"arguments":(.*)\}\}$`,
  ),
  new RegExp(
    String.raw`^\{"method":"tools/call","params":\{"name":(${JSON_STRING}),"arguments":(.*)\}` +
      String.raw`,"jsonrpc":"2\.0","id":${JSON_ID}\}$`,
  ),
] as const;

/** The value of a JSON string literal (without a parse when it has no escape). */
function stringLiteral(literal: string): string {
  return literal.indexOf('\\') === -1 ? literal.slice(1, -1) : (JSON.parse(literal) as string);
}

/** The value of a {@link JSON_ID}: digits read as Number would (≤ 16, so exact or unsafe). */
function requestIdOf(text: string): RequestId | undefined {
  if (text.charCodeAt(0) === 0x22 /* " */) return stringLiteral(text);
  const negative = text.charCodeAt(0) === 0x2d; /* - */
  let n = 0;
  for (let i = negative ? 1 : 0; i < text.length; i++) n = n * 10 + (text.charCodeAt(i) - 0x30);
  return Number.isSafeInteger(n) ? (negative ? -n : n) : undefined;
}

/**
 * Reads an agent's `tools/call` request line of a plain layout with one `JSON.parse`, of its
 * arguments alone: `{"jsonrpc":"2.0","id":I,"method":"tools/call","params":{"name":N,
 * "arguments":A}}`, or the same members in the SDK's order. The line is prefix + A + a fixed
 * end, so when A parses as one JSON value the whole line is valid JSON and parses to the same
 * members and values as the message returned (whose envelope members are always in the first
 * order) — JSON's grammar leaves no other reading (a duplicate key outside A, or anything
 * after it, makes A itself fail to parse). What is inside A (duplicate keys, an own
 * `__proto__`, escapes) is read by the same `JSON.parse` as before. Undefined for any other
 * line — arguments that are not an object included — which is then parsed whole as usual.
 *
 * @example
 * plainToolCallRequest('{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"m":"x"}}}');
 * // { jsonrpc: '2.0', id: 1, method: 'tools/call', params: { name: 'echo', arguments: { m: 'x' } } }
 */
export function plainToolCallRequest(
  line: string,
): (Request & { jsonrpc: '2.0'; id: RequestId }) | undefined {
  if (line.length > PLAIN_CALL_MAX_LINE) return undefined;
  const first = line.charCodeAt(2);
  const sdkOrder = first === 0x6d; /* m: {"method" */
  const m = PLAIN_CALL_LAYOUTS[sdkOrder ? 1 : 0].exec(line);
  if (m === null) return undefined;
  const [idText, nameText, argsText] = sdkOrder ? [m[3]!, m[1]!, m[2]!] : [m[1]!, m[2]!, m[3]!];
  let id: RequestId | undefined;
  let name: string;
  let args: unknown;
  try {
    id = requestIdOf(idText);
    name = stringLiteral(nameText);
    args = JSON.parse(argsText);
  } catch {
    return undefined; // not one JSON value: the whole line is parsed (and judged) as usual
  }
  if (id === undefined || !isObject(args)) return undefined;
  return { jsonrpc: '2.0', id, method: 'tools/call', params: { name, arguments: args } };
}

/** The ids of requests in flight (a `Map`'s `size` and `has`). */
interface InFlightIds {
  readonly size: number;
  has(id: RequestId): boolean;
}

const NO_IDS: InFlightIds = { size: 0, has: () => false };

/** One `tools/call` in flight on the fast path: its cancellation and its deferred work. */
class FastCall implements FastCallExtra, CancelHook {
  readonly requestId: RequestId;
  readonly requestInfo: MessageExtraInfo['requestInfo'];
  aborted = false;
  reason: unknown = undefined;
  after: (() => void) | undefined = undefined;
  #controller: AbortController | undefined = undefined;
  #listener: ((reason: unknown) => void) | undefined = undefined;

  constructor(requestId: RequestId, requestInfo: MessageExtraInfo['requestInfo']) {
    this.requestId = requestId;
    this.requestInfo = requestInfo;
  }

  get signal(): AbortSignal {
    if (this.#controller === undefined) {
      this.#controller = new AbortController();
      if (this.aborted) this.#controller.abort(this.reason);
    }
    return this.#controller.signal;
  }

  get cancel(): CancelHook {
    return this;
  }

  onCancel(listener: ((reason: unknown) => void) | undefined): void {
    this.#listener = listener;
  }

  /** Cancels the call (`AbortSignal` semantics: no reason means an `AbortError`). */
  abort(reason?: unknown): void {
    if (this.aborted) return;
    this.aborted = true;
    this.reason = reason ?? new DOMException('This operation was aborted', 'AbortError');
    this.#controller?.abort(this.reason);
    const listener = this.#listener;
    this.#listener = undefined;
    listener?.(this.reason);
  }

  defer(work: () => void): void {
    this.after = work;
  }
}

/**
 * Serves `tools/call` requests arriving on `transport` with `handler`, beside the SDK `Server`
 * connected to it (install after `server.connect(transport)`). Requests the fast path does not
 * take go to the server unchanged.
 */
export class FastToolCalls {
  readonly #transport: Transport;
  readonly #handler: (request: Request, extra: FastCallExtra) => Promise<unknown>;
  readonly #onerror: (error: Error) => void;
  readonly #answer: ((value: unknown, request: Request) => unknown) | undefined;
  readonly #oninvalid: ((request: Request) => void) | undefined;
  readonly #onduplicate: ((request: Request) => void) | undefined;
  readonly #inflight = new ChurnMap<RequestId, FastCall>();
  /** The requests in flight on the SDK's side (its Protocol's handlers, by id). */
  readonly #sdkInflight: InFlightIds;

  /**
   * @param answer Makes the tool result of what `handler` resolved with (or throws the error
   *   to answer with), right after the await of it. @default the value itself
   * @param oninvalid Told of a `tools/call` request whose params do not fit MCP's schema, before
   *   the SDK's Server refuses it (InvalidParams): such a call never reaches `handler`, but it
   *   still gets its audit line. Checked only for requests the fast path does not take.
   * @param server The SDK `Server` connected to `transport`: a request whose id one of its
   *   requests in flight holds is refused as one the fast path holds is (see {@link #reused}).
   * @param onduplicate Told of each request refused because a request in flight holds its id
   *   (after its refusal was sent): its audit line.
   */
  constructor(
    transport: Transport,
    handler: (request: Request, extra: FastCallExtra) => Promise<unknown>,
    onerror: (error: Error) => void,
    answer?: (value: unknown, request: Request) => unknown,
    oninvalid?: (request: Request) => void,
    server?: object,
    onduplicate?: (request: Request) => void,
  ) {
    this.#transport = transport;
    this.#sdkInflight =
      (server as { _requestHandlerAbortControllers?: InFlightIds } | undefined)
        ?._requestHandlerAbortControllers ?? NO_IDS;
    this.#handler = handler;
    this.#onerror = onerror;
    this.#answer = answer;
    this.#oninvalid = oninvalid;
    this.#onduplicate = onduplicate;
    const sdkMessage = transport.onmessage;
    const sdkClose = transport.onclose;
    transport.onmessage = (message, extra) => {
      const m = message as Envelope;
      if (m.method === 'tools/call') {
        if (this.#take(m, extra)) return;
        if (this.#reused(m)) return;
        if (
          this.#oninvalid !== undefined &&
          m.id !== undefined &&
          !safeParse(CallToolRequestSchema, m).success
        ) {
          this.#oninvalid(m as Request);
        }
      } else if (
        m.method === 'notifications/cancelled' &&
        m.id === undefined && // a request of that name is not a cancellation (Protocol agrees)
        this.#inflight.size > 0
      ) {
        this.#cancel(m);
      } else if (m.id !== undefined && m.method !== undefined && this.#reused(m)) {
        return;
      }
      sdkMessage?.call(transport, message, extra);
    };
    transport.onclose = () => {
      for (const c of this.#inflight.values()) c.abort();
      this.#inflight.clear();
      sdkClose?.call(transport);
    };
    // A transport that offers its lines unparsed (stdio): a plain tools/call is read with a
    // parse of its arguments alone, and taken as #take takes it (it passes every check there).
    if ('onrawline' in transport) {
      (transport as RawLineSource).onrawline = (line) => {
        const request = plainToolCallRequest(line);
        return request !== undefined && this.#take(request, undefined);
      };
    }
  }

  /** Takes a `tools/call` request the SDK would accept unchanged; false to leave it. */
  #take(m: Envelope, extra: MessageExtraInfo | undefined): boolean {
    const id = m.id;
    const params = m.params;
    if (m.jsonrpc !== '2.0' || !isRequestId(id) || !isObject(params)) return false;
    if (!onlyKeys(m, 'jsonrpc', 'id', 'method', 'params')) return false;
    if (typeof params.name !== 'string' || params._meta !== undefined) return false;
    if (params.task !== undefined) return false;
    const args = params.arguments;
    if (args !== undefined && !isObject(args)) return false;
    if (this.#reused(m)) return true;
    const call = new FastCall(id, extra?.requestInfo);
    this.#inflight.set(id, call);
    void this.#serve(m as Request & { id: RequestId }, call);
    return true;
  }

  /**
   * True, once it is answered with {@link duplicateIdError} (and audited), when request `m`'s id is held by a
   * request still in flight in this session, here or in the SDK's Protocol (MCP: an id is never
   * reused in a session). Either would otherwise replace the other's entry under that id: a
   * `notifications/cancelled` for it then reached only the later call, and the earlier one —
   * perhaps parked for a human — could no longer be cancelled and ran if approved. The later
   * request is refused unrun. (The Streamable HTTP transport refuses such a request before it
   * gets here: it keys each POST's answers by id.) A lookup in each map, the SDK's only when it
   * holds a request.
   */
  #reused(m: Envelope): boolean {
    const id = m.id;
    if (!isRequestId(id)) return false;
    if (!this.#inflight.has(id) && (this.#sdkInflight.size === 0 || !this.#sdkInflight.has(id))) {
      return false;
    }
    this.#transport
      .send(duplicateIdError(id) as JSONRPCMessage)
      .catch((error: unknown) =>
        this.#onerror(new Error(`Failed to send an error response: ${String(error)}`)),
      );
    this.#onduplicate?.(m as unknown as Request);
    return true;
  }

  async #serve(request: Request, call: FastCall): Promise<void> {
    const id = call.requestId;
    let response: JSONRPCMessage | undefined;
    try {
      const value = await this.#handler(request, call);
      const answer = this.#answer;
      const result = validCallToolResult(answer === undefined ? value : answer(value, request));
      if (!call.aborted) response = { result, jsonrpc: '2.0', id };
    } catch (caught) {
      if (!call.aborted) {
        const error = (caught ?? {}) as { code?: unknown; message?: unknown; data?: unknown };
        response = {
          jsonrpc: '2.0',
          id,
          error: {
            code: Number.isSafeInteger(error.code)
              ? (error.code as number)
              : ErrorCode.InternalError,
            message: (error.message as string | undefined) ?? 'Internal error',
            ...(error.data !== undefined && { data: error.data }),
          },
        };
      }
    } finally {
      if (this.#inflight.get(id) === call) this.#inflight.delete(id);
    }
    let sent: Promise<void> | undefined;
    try {
      if (response) {
        // A transport that takes a response's text (stdio, Streamable HTTP) gets the upstream's
        // line with the agent's id: the result is not serialized again.
        const sendLine = (
          this.#transport as { sendLine?: (json: string, id: RequestId) => Promise<void> }
        ).sendLine;
        const line =
          sendLine && 'result' in response ? rawResponseLine(response.result, id) : undefined;
        sent =
          line === undefined
            ? this.#transport.send(response)
            : sendLine!.call(this.#transport, line, id);
      }
    } catch (error) {
      sent = Promise.reject(error as Error);
    }
    // After the write: the transport flushes on this turn's first tick, queued before this one.
    if (call.after) process.nextTick(this.#runAfter, call);
    if (sent === LINE_QUEUED) return; // written with this turn's lines: nothing to wait for
    try {
      await sent;
    } catch (error) {
      this.#onerror(new Error(`Failed to send response: ${String(error)}`));
    }
  }

  readonly #runAfter = (call: FastCall): void => {
    try {
      call.after!();
    } catch (error) {
      this.#onerror(error instanceof Error ? error : new Error(String(error)));
    }
  };

  #cancel(m: Envelope): void {
    const params = m.params as { requestId?: unknown; reason?: unknown } | undefined;
    if (!isObject(params) || !params.requestId || !isRequestId(params.requestId)) return;
    if (params.reason !== undefined && typeof params.reason !== 'string') return;
    this.#inflight.get(params.requestId)?.abort(params.reason);
  }
}

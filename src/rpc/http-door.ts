/**
 * The HTTP door: the same {@link ServiceImplementation}s the gRPC server serves, as JSON over
 * HTTP — `POST <prefix><package.Service>/<Method>` with a JSON body in the protobuf JSON mapping
 * (protobuf-es `fromJson`/`toJson`).
 *
 * - **Unary methods** answer with the response message as JSON. This is the request and
 *   response form of the Connect protocol's unary calls, so a client can be a plain `curl`.
 * - **Server-streaming methods** (`EventService/Watch`, `ApprovalService/Watch`) answer `200`
 *   with `content-type: application/x-ndjson`: one JSON object per line, `{"message": <the
 *   response message>}` for each message, then exactly one last line `{"end": {}}` when the
 *   stream completed or `{"end": {"error": {code, kind, message, details}}}` when it failed (a
 *   slow reader's overflow, the deadline, the server stopping). A stream that stops without an
 *   `end` line was cut. U+2028 and U+2029 in a line are written as `\u2028`/`\u2029` escapes
 *   (json-lines.ts), so a tool name an agent made up with one in it cannot split a line for a
 *   reader that breaks there. While nothing happens an empty line is sent every `keepAliveMs` (skip
 *   empty lines). NDJSON rather than SSE: it is read the same way from `fetch` as from `curl -N`,
 *   and a browser's `EventSource` could not send the POST body and `authorization` header
 *   anyway; rather than Connect's binary-enveloped stream: a dashboard needs no framing code.
 *   At most `maxStreams` streams are open at once (one more: 429 `FABRIC_ERR_STREAM_LIMIT`
 *   before the stream starts); a client that stops reading costs at most
 *   `maxBufferedMessages` queued messages and `maxBufferedBytes` of their lines, then its stream
 *   ends with `FABRIC_ERR_STREAM_OVERFLOW` (as over gRPC). A watch's snapshot at its start is
 *   written as the client reads it, so a client that keeps up gets all of it.
 *
 * **Deadline:** the `connect-timeout-ms` header (Connect's; a positive integer of at most 10
 * digits) is the call's deadline, given to the method as its `CallContext.deadline` (ClaimTask
 * waits no longer, WaitTask neither). When it passes the method's signal aborts and the answer is
 * 504 `FABRIC_ERR_CALL_DEADLINE` (a stream's `end` error). A response that cannot be delivered —
 * the client went away or the deadline passed before it was written — runs the method's
 * `onUndelivered` undo, as over gRPC: a task `ClaimTask` assigned goes back to the queue.
 *
 * The same rules as gRPC, in the same order: the caller is authenticated from
 * `authorization: Bearer <credential>` before the body is read (no credential: 401; an agent's
 * on an admin service: 403) — or, without that header, from the web dashboard's session cookie,
 * which counts only with its CSRF token and the sidecar's own `Origin` (server/dashboard.ts), and
 * whose calls (streams included) end with `FABRIC_ERR_UNAUTHENTICATED` when the session ends, as
 * an agent's end when its credential is replaced; then the body is read within the size and time limits
 * (http-body.ts: 413, 408), parsed (not JSON, nested deeper than gRPC's decoder allows, or not
 * the method's message: 400 `FABRIC_ERR_INVALID_ARGUMENT`), and the method runs with a signal
 * that aborts when the client goes away. Errors answer with the HTTP status of their catalog
 * kind and the body `{ code, kind, message, details }` (`FabricError.toJSON()`; not Connect's
 * error shape), the code also in the `fabric-error-code` header as in gRPC's trailer. Every
 * answer — success, stream or error — carries `cache-control: no-store` and
 * `x-content-type-options: nosniff` ({@link API_RESPONSE_HEADERS}). An unknown
 * service or method, or another verb than POST, is 404 `FABRIC_ERR_ROUTE_NOT_FOUND`. The
 * Host/Origin guard runs before this, in the HTTP server, and answers its 403 through
 * {@link HttpDoor.refuse} in the same shape.
 *
 * @module
 */
import {
  fromJson,
  toJson,
  type DescMessage,
  type DescMethod,
  type JsonValue,
} from '@bufbuild/protobuf';
import { checkJsonNumbers } from './json-numbers.js';
import type { IncomingMessage, ServerResponse } from 'node:http';
import {
  CallDeadlineError,
  ClosedError,
  ConfigError,
  FabricError,
  InvalidArgumentError,
  RouteNotFoundError,
  StreamLimitError,
  UnauthenticatedError,
} from '../errors.js';
import type { AgentFabric } from '../fabric.js';
import type { ToolGateway } from '../gateway/gateway.js';
import { MAX_TIMER_MS } from '../scheduler/task-waiters.js';
import { exceededBound } from '../gateway/input-bounds.js';
import {
  closesConnection,
  DEFAULT_BODY_TIMEOUT_MS,
  readBody,
  sendJson,
} from '../gateway/http-body.js';
import { httpErrorBody, httpStatusOf } from '../gateway/map-error.js';
import { DEFAULT_GRPC_RECURSION_LIMIT } from './grpc-definition.js';
import {
  ActiveStreams,
  authenticateCaller,
  bearerCredential,
  DEFAULT_MAX_BUFFERED_STREAM_BYTES,
  DEFAULT_MAX_BUFFERED_STREAM_MESSAGES,
  positiveLimit,
  StreamOutbox,
  type CallContext,
  type Caller,
  type CallerKind,
  type MalformedHandler,
  type StreamSender,
} from './rpc-call.js';
import { lineSafeJson } from '../json-lines.js';
import { reserveWatchListeners } from './events-service.js';
import type { AnyServiceImplementation } from './services.js';

/** Path prefix of the HTTP door in the sidecar. */
export const DEFAULT_API_PREFIX = '/api/';
/** Largest request body of the HTTP door (1 MiB). */
export const DEFAULT_API_MAX_BODY_BYTES = 1024 * 1024;
/**
 * Most nested arrays and objects in a request body. Half of gRPC's decoder limit: a
 * `google.protobuf.Value` spends two message levels per JSON level.
 */
export const MAX_API_JSON_DEPTH = DEFAULT_GRPC_RECURSION_LIMIT / 2;
/** Most values in a request body (an array of a million zeros fits in 2 MiB). */
export const MAX_API_JSON_NODES = 200_000;
/** Default of {@link HttpDoorOptions.maxStreams}. */
export const DEFAULT_API_MAX_STREAMS = 64;

/** Largest `http.apiMaxStreams` the config accepts (each stream holds a response and a buffer). */
export const MAX_API_STREAMS = 65_536;

/** Largest `http.apiMaxBufferedMessages` the config accepts. */
export const MAX_API_BUFFERED_MESSAGES = 1_000_000;
/** Largest `http.apiMaxBufferedBytes` the config accepts (1 GiB). */
export const MAX_API_BUFFERED_BYTES = 1024 * 1024 * 1024;
/** Default of {@link HttpDoorOptions.keepAliveMs}. */
export const DEFAULT_API_KEEP_ALIVE_MS = 15_000;
/** Request header with the call's deadline in milliseconds (the Connect protocol's). */
export const DEADLINE_HEADER = 'connect-timeout-ms';
/** Content type of a server stream's answer: one JSON object per line. */
export const STREAM_CONTENT_TYPE = 'application/x-ndjson';
/**
 * Headers of every answer of the door — success, stream and error alike: answers carry secrets
 * (a spawned agent's credential, an approval's arguments) that no browser or proxy cache may
 * keep, and a browser must not sniff them into another type.
 */
export const API_RESPONSE_HEADERS: Readonly<Record<string, string>> = Object.freeze({
  'cache-control': 'no-store',
  'x-content-type-options': 'nosniff',
});

/** Options of {@link HttpDoor}. */
export interface HttpDoorOptions {
  fabric: AgentFabric;
  /**
   * The gateway whose tool calls the services' EventService `TOOL_CALLS` watches follow (the one
   * given to `fabricServices`): its emitter makes room for `maxStreams` watches, as the
   * fabric's do (see `reserveWatchListeners`).
   */
  gateway?: ToolGateway | undefined;
  /** What to serve: the list the gRPC server serves (services.ts). */
  services: readonly AnyServiceImplementation[];
  /** @default '/api/' */
  prefix?: string;
  /** @default 1 MiB */
  maxBodyBytes?: number;
  /** Time the client has to send the body (then 408). @default 30000 */
  bodyTimeoutMs?: number;
  /** Server streams open at once; one more is 429 `FABRIC_ERR_STREAM_LIMIT`. @default 64 */
  maxStreams?: number;
  /**
   * Messages of one stream that may wait to be written to a slow client; one more ends the
   * stream with `FABRIC_ERR_STREAM_OVERFLOW`. @default 1024
   */
  maxBufferedMessages?: number;
  /**
   * Bytes of one stream's lines (UTF-8 NDJSON, as sent) that may wait to be written to a slow
   * client; a message that would pass it ends the stream with `FABRIC_ERR_STREAM_OVERFLOW`
   * (`details.unit` `bytes`). A message larger than this is still sent when nothing waits.
   * @default 4 MiB
   */
  maxBufferedBytes?: number;
  /** An empty line is sent on a quiet stream this often (0: never). @default 15000 */
  keepAliveMs?: number;
  /**
   * The dashboard's sessions: a request without `authorization` is the admin it names when it
   * carries a session cookie (with its CSRF token and the own `Origin`, see
   * server/dashboard.ts). Returns undefined when the request has no session cookie; throws
   * when it has one that does not pass. The call (a stream, or a unary call until it is
   * answered) is held on the session and ends with `FABRIC_ERR_UNAUTHENTICATED` when it ends.
   */
  sessionCaller?: (req: IncomingMessage) => SessionCaller | undefined;
  /**
   * Counts an agent's unary call in flight (the MCP endpoint's `acquireInflight`, so both doors
   * share `http.maxInflightPerAgent`) until its answer has left the process (or the client left)
   * and its method settled; returns what ends it, throws `InflightLimitError` beyond.
   * @default no bound
   */
  inflight?: ((agentId: string) => () => void) | undefined;
  /**
   * Counts one more call of an agent in flight past the bound (the MCP endpoint's
   * `holdInflight`): what a call leaves running after it ended (a tool call given up while its
   * upstream may still work on it) keeps a slot through it (`CallContext.holdSlot`). Used only
   * with `inflight`. @default none held
   */
  holdInflight?: ((agentId: string) => () => void) | undefined;
}

/** A dashboard session's admin, and how a call is tied to the session (server/dashboard.ts). */
export interface SessionCaller {
  readonly admin: string;
  /**
   * Registers a call that `end` ends when the session ends; returns what removes it.
   * @throws UnauthenticatedError when the session has ended already.
   */
  hold(end: (reason: UnauthenticatedError) => void): () => void;
}

/**
 * Ties a call to what authorized it: `end` ends it when that stops; returns what unties it.
 * Throws `UnauthenticatedError` when that has stopped already.
 */
type Hold = (end: (reason: UnauthenticatedError) => void) => () => void;

type UnaryHandler = (
  caller: Caller,
  request: unknown,
  signal: AbortSignal,
  context: CallContext,
) => Promise<unknown>;
type StreamHandler = (
  caller: Caller,
  request: unknown,
  signal: AbortSignal,
  send: StreamSender<unknown>,
) => Promise<void>;

type Route = { readonly caller: CallerKind; readonly method: DescMethod } & (
  | {
      readonly kind: 'unary';
      readonly handler: UnaryHandler;
      readonly malformed: MalformedHandler | undefined;
    }
  | { readonly kind: 'stream'; readonly handler: StreamHandler }
);

/** An agent's unary call's slot of `maxInflightPerAgent` (see `HttpDoor.#call`). */
interface CallSlot {
  /** Frees the slot; absent: none was taken (not an agent's unary call, no bound). */
  release?: (() => void) | undefined;
  /** The method, when the call ended before it settled: the slot is freed once it has. */
  running?: Promise<unknown> | undefined;
}

/** One call's abort signal: the client went away, the deadline passed, or the door closes. */
interface CallScope {
  readonly controller: AbortController;
  readonly deadline: number;
  /** Stops the deadline timer and the close listener. */
  dispose(): void;
}

function positiveInteger(name: string, value: number): number {
  if (!Number.isSafeInteger(value) || value < 0) {
    throw new ConfigError(name, `must be a non-negative integer, got ${String(value)}`);
  }
  return value;
}

/** Serves the unary and server-streaming methods of every service as JSON over HTTP. */
export class HttpDoor {
  readonly prefix: string;
  readonly #fabric: AgentFabric;
  readonly #routes = new Map<string, Route>();
  readonly #maxBodyBytes: number;
  readonly #bodyTimeoutMs: number;
  readonly #maxStreams: number;
  readonly #maxBuffered: number;
  readonly #maxBufferedBytes: number;
  readonly #keepAliveMs: number;
  readonly #streams = new ActiveStreams();
  readonly #sessionCaller: ((req: IncomingMessage) => SessionCaller | undefined) | undefined;
  readonly #inflight: ((agentId: string) => () => void) | undefined;
  readonly #holdInflight: ((agentId: string) => () => void) | undefined;
  readonly #unreserve: () => void;

  /**
   * @throws ConfigError when a limit is not a non-negative integer (`maxStreams`,
   *   `maxBufferedMessages` and `maxBufferedBytes` ≥ 1).
   */
  constructor(options: HttpDoorOptions) {
    this.#fabric = options.fabric;
    this.#sessionCaller = options.sessionCaller;
    this.#inflight = options.inflight;
    this.#holdInflight = options.holdInflight;
    this.prefix = options.prefix ?? DEFAULT_API_PREFIX;
    this.#maxBodyBytes = options.maxBodyBytes ?? DEFAULT_API_MAX_BODY_BYTES;
    this.#bodyTimeoutMs = options.bodyTimeoutMs ?? DEFAULT_BODY_TIMEOUT_MS;
    this.#maxStreams = positiveInteger(
      'options.maxStreams',
      options.maxStreams ?? DEFAULT_API_MAX_STREAMS,
    );
    this.#maxBuffered = positiveInteger(
      'options.maxBufferedMessages',
      options.maxBufferedMessages ?? DEFAULT_MAX_BUFFERED_STREAM_MESSAGES,
    );
    if (this.#maxBuffered < 1) {
      throw new ConfigError('options.maxBufferedMessages', 'must be at least 1');
    }
    this.#maxBufferedBytes = positiveLimit(
      'options.maxBufferedBytes',
      options.maxBufferedBytes ?? DEFAULT_MAX_BUFFERED_STREAM_BYTES,
    );
    this.#keepAliveMs = positiveInteger(
      'options.keepAliveMs',
      options.keepAliveMs ?? DEFAULT_API_KEEP_ALIVE_MS,
    );
    this.#unreserve = reserveWatchListeners(options.fabric, options.gateway, this.#maxStreams);
    for (const impl of options.services) {
      const unary = impl.unary as Record<string, UnaryHandler | undefined>;
      const streams = (impl.serverStream ?? {}) as Record<string, StreamHandler | undefined>;
      const malformed = (impl.malformed ?? {}) as Record<string, MalformedHandler | undefined>;
      for (const method of impl.service.methods) {
        const key = `${impl.service.typeName}/${method.name}`;
        const route = { caller: impl.caller, method };
        if (method.methodKind === 'unary') {
          const handler = unary[method.localName];
          if (handler !== undefined) {
            const onMalformed = malformed[method.localName];
            this.#routes.set(key, { ...route, kind: 'unary', handler, malformed: onMalformed });
          }
        } else if (method.methodKind === 'server_streaming') {
          const handler = streams[method.localName];
          if (handler !== undefined) this.#routes.set(key, { ...route, kind: 'stream', handler });
        }
      }
    }
  }

  /** `<prefix><package.Service>/<Method>` of every served method. */
  get paths(): string[] {
    return [...this.#routes.keys()].map((k) => this.prefix + k);
  }

  /** Server streams open now. */
  get openStreams(): number {
    return this.#streams.size;
  }

  /** True when `pathname` is the door's to answer. */
  owns(pathname: string): boolean {
    return pathname.startsWith(this.prefix);
  }

  /** Ends every open stream with `FABRIC_ERR_CLOSED` (its `end` line), e.g. when the server stops. */
  close(): void {
    this.#streams.endAll(new ClosedError('HTTP door'));
    this.#unreserve();
  }

  /** Answers one request under the prefix; never rejects. */
  async handle(req: IncomingMessage, res: ServerResponse, pathname: string): Promise<void> {
    try {
      await this.#call(req, res, pathname);
    } catch (error) {
      this.refuse(req, res, error);
    }
  }

  /**
   * Answers with `error` in the door's shape: the status of its catalog kind, the body
   * `{ code, kind, message, details }`, the code in `fabric-error-code`; `connection: close`
   * when the body was not read.
   */
  refuse(req: IncomingMessage, res: ServerResponse, error: unknown): void {
    if (res.destroyed) return;
    const close = !req.complete || closesConnection(error);
    const body = httpErrorBody(error).error;
    sendJson(res, httpStatusOf(error), body, {
      ...API_RESPONSE_HEADERS,
      'fabric-error-code': String(body.code),
      ...(close ? { connection: 'close' } : {}),
    });
  }

  async #call(req: IncomingMessage, res: ServerResponse, pathname: string): Promise<void> {
    const slot: CallSlot = {};
    try {
      await this.#serve(req, res, pathname, slot);
    } finally {
      // The call is over (answered, refused or abandoned); a stream ends on its own. Its slot is
      // freed once the answer has left the process — the response closed: written out, or its
      // connection gone — as an /mcp request's: an answer the client does not read stays in
      // memory and keeps its slot. One abandoned while its method still runs keeps it until the
      // method settled, too: what it leaves running then (a tool call given up upstream) holds
      // one of its own by then. (A refusal is written after this: `close` follows it.)
      const { release, running } = slot;
      if (release !== undefined) {
        const free = running === undefined ? release : () => void running.then(release, release);
        if (res.closed) free();
        else res.once('close', free);
      }
    }
  }

  async #serve(
    req: IncomingMessage,
    res: ServerResponse,
    pathname: string,
    slot: CallSlot,
  ): Promise<void> {
    const route = this.#routes.get(pathname.slice(this.prefix.length));
    if (route === undefined) {
      throw new RouteNotFoundError(req.method ?? '', pathname, 'no such service method');
    }
    if (req.method !== 'POST') {
      throw new RouteNotFoundError(req.method ?? '', pathname, 'RPCs are called with POST');
    }
    // Read before the credential is checked: a change by the time the body is in means a
    // credential may have been revoked meanwhile.
    const epoch = this.#fabric.credentialEpoch();
    let { caller, hold } = this.#caller(req, route.caller);
    const type = (req.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();
    if (type !== 'application/json') {
      throw new InvalidArgumentError('content-type', 'must be application/json');
    }
    const timeoutMs = deadlineOf(req);
    // An agent's unary call holds a slot of `maxInflightPerAgent` from here until its answer is
    // out (or the client gone) and its method settled.
    if (route.kind === 'unary' && caller.kind === 'agent') {
      slot.release = this.#inflight?.(caller.id);
    }
    if (route.kind === 'stream' && this.#streams.size >= this.#maxStreams) {
      throw new StreamLimitError(this.#maxStreams);
    }
    const text = await readBody(req, {
      limit: this.#maxBodyBytes,
      timeoutMs: this.#bodyTimeoutMs,
    });
    // Checked again once the body is in, as the gRPC door checks a call again once its message
    // is (a credential revoked or replaced in between acts no more, for its agent or another).
    if (this.#fabric.credentialEpoch() !== epoch)
      ({ caller, hold } = this.#caller(req, route.caller));
    let request: unknown;
    try {
      request = decodeJson(route.method.input, text);
    } catch (error) {
      if (route.kind === 'unary') route.malformed?.(caller, sentBody(text));
      throw error;
    }
    if (route.kind === 'stream') {
      // Checked again: streams may have opened while this body was read.
      if (this.#streams.size >= this.#maxStreams) throw new StreamLimitError(this.#maxStreams);
      return this.#stream(res, route, caller, request, timeoutMs, hold);
    }
    // Registered in the same turn as the last check: a replacement of the credential, or the end
    // of the dashboard session (one that ended while the body was read: 401 now), from here on
    // ends the call (401) — a claim waiting for a task, a tool call waiting for its turn, a
    // WaitTask.
    let stop = (_reason: UnauthenticatedError): void => {};
    const unhold = hold?.((reason) => stop(reason));
    const scope = callScope(res, timeoutMs);
    stop = (reason) => scope.controller.abort(reason);
    const undos: (() => void)[] = [];
    const undo = (): void => {
      for (const u of undos.splice(0)) u();
    };
    const holdInflight = this.#holdInflight;
    const agentId = caller.id;
    const context: CallContext = {
      deadline: scope.deadline,
      onUndelivered: (u) => void undos.push(u),
      traceContext: { traceparent: req.headers.traceparent, tracestate: req.headers.tracestate },
      holdSlot:
        slot.release === undefined || holdInflight === undefined
          ? undefined
          : () => holdInflight(agentId),
    };
    const running = route.handler(caller, request, scope.controller.signal, context);
    try {
      const response = await Promise.race([running, aborted(scope.controller.signal)]);
      if (res.destroyed) return undo();
      const json = JSON.stringify(toJson(route.method.output, response as never));
      // Written but not flushed when the connection ends: the client never got it.
      res.once('close', () => {
        if (!res.writableFinished) undo();
      });
      res
        .writeHead(200, {
          ...API_RESPONSE_HEADERS,
          'content-type': 'application/json',
          'content-length': Buffer.byteLength(json),
        })
        .end(json);
    } catch (error) {
      // The answer the method gives after the deadline (or after the client left) goes nowhere.
      if (scope.controller.signal.aborted) {
        running.then(undo, () => {});
        slot.running = running;
      }
      throw error;
    } finally {
      unhold?.();
      scope.dispose();
    }
  }

  /**
   * The bearer credential's caller; without one, the dashboard session's admin (if any). With
   * `hold`, which ties a call to what authorized it: an agent's credential (until replaced) or
   * the dashboard session (until it ends). A bearer admin's call has none: the admin
   * credentials are fixed while the fabric runs.
   */
  #caller(req: IncomingMessage, kind: CallerKind): { caller: Caller; hold: Hold | undefined } {
    const authorization = req.headers.authorization;
    if (authorization === undefined && this.#sessionCaller !== undefined) {
      const session = this.#sessionCaller(req);
      if (session !== undefined) {
        if (kind === 'agent') {
          throw new UnauthenticatedError('the agent protocol needs an agent credential');
        }
        return { caller: { kind, id: session.admin }, hold: (end) => session.hold(end) };
      }
    }
    const caller = authenticateCaller(this.#fabric, kind, authorization ?? '');
    if (caller.kind !== 'agent') return { caller, hold: undefined };
    const credential = bearerCredential(authorization ?? '');
    return {
      caller,
      hold: (end) => this.#fabric.credentialCalls.hold(caller.id, credential, end),
    };
  }

  async #stream(
    res: ServerResponse,
    route: Route & { kind: 'stream' },
    caller: Caller,
    request: unknown,
    timeoutMs: number | undefined,
    hold: Hold | undefined,
  ): Promise<void> {
    // Registered in the same turn as the caller's last check (nothing awaited since): the end
    // of what authorized the stream (its dashboard session, its agent's credential) ends it. A
    // session that ended while the body was read: 401 before the stream starts.
    let stop = (_reason: UnauthenticatedError): void => {};
    const unhold = hold?.((reason) => stop(reason));
    const scope = callScope(res, timeoutMs);
    const { controller } = scope;
    let ended = false;
    // A line waits until `res.write` calls back: the socket took it.
    const outbox = new StreamOutbox<unknown, string>({
      maxMessages: this.#maxBuffered,
      maxBytes: this.#maxBufferedBytes,
      encode: (message) => {
        const chunk = `${lineSafeJson(JSON.stringify({ message: toJson(route.method.output, message as never) }))}\n`;
        return { chunk, bytes: Buffer.byteLength(chunk) };
      },
      write: (chunk, done) => void res.write(chunk, () => done()),
      fail: (err) => end(err),
    });
    /** Ends the stream once, with its `end` line unless the client is gone. */
    const end = (err?: unknown): void => {
      if (ended) return;
      ended = true;
      outbox.close();
      deregister();
      unhold?.();
      clearInterval(keepAlive);
      controller.abort(err ?? new ClosedError('stream'));
      scope.dispose();
      if (res.destroyed) return;
      res.end(
        `${lineSafeJson(JSON.stringify({ end: err === undefined ? {} : { error: httpErrorBody(err).error } }))}\n`,
      );
    };
    const deregister = this.#streams.add((err) => end(err));
    stop = (reason) => end(reason);
    controller.signal.addEventListener('abort', () => {
      const reason: unknown = controller.signal.reason;
      end(reason instanceof FabricError ? reason : new ClosedError('stream (the client left)'));
    });
    res.writeHead(200, {
      ...API_RESPONSE_HEADERS,
      'content-type': STREAM_CONTENT_TYPE,
      // Proxies that buffer answers (nginx) would hold the events back.
      'x-accel-buffering': 'no',
    });
    res.flushHeaders();
    const keepAlive =
      this.#keepAliveMs > 0
        ? setInterval(() => {
            if (outbox.waiting === 0) res.write('\n');
          }, this.#keepAliveMs)
        : undefined;
    keepAlive?.unref();
    const send: StreamSender<unknown> = outbox.sender();
    try {
      await route.handler(caller, request, controller.signal, send);
      end();
    } catch (error) {
      end(error);
    }
  }
}

/**
 * The `connect-timeout-ms` header in milliseconds (`undefined` without one).
 * @throws InvalidArgumentError when it is not a positive integer of at most 10 digits.
 */
function deadlineOf(req: IncomingMessage): number | undefined {
  const raw = req.headers[DEADLINE_HEADER];
  if (raw === undefined) return undefined;
  if (typeof raw !== 'string' || !/^[0-9]{1,10}$/.test(raw) || Number(raw) === 0) {
    throw new InvalidArgumentError(
      DEADLINE_HEADER,
      'must be a positive integer of at most 10 digits',
    );
  }
  return Number(raw);
}

/** A call's signal: aborts when `res` closes before it is answered or when `timeoutMs` passes. */
function callScope(res: ServerResponse, timeoutMs: number | undefined): CallScope {
  const controller = new AbortController();
  const onClose = (): void => {
    if (!res.writableFinished) controller.abort(new ClosedError('call (the client left)'));
  };
  res.once('close', onClose);
  const deadline = timeoutMs === undefined ? Infinity : Date.now() + timeoutMs;
  let timer: NodeJS.Timeout | undefined;
  // A timer fires at once beyond 2^31 − 1 ms (the header allows ten digits): re-armed in steps.
  const arm = (): void => {
    const left = deadline - Date.now();
    timer =
      left > MAX_TIMER_MS
        ? setTimeout(arm, MAX_TIMER_MS)
        : setTimeout(() => controller.abort(new CallDeadlineError(timeoutMs!)), left);
  };
  if (timeoutMs !== undefined) arm();
  return {
    controller,
    deadline,
    dispose: () => {
      clearTimeout(timer);
      res.off('close', onClose);
    },
  };
}

/** Rejects with `signal`'s reason once it aborts. */
function aborted(signal: AbortSignal): Promise<never> {
  return new Promise((_resolve, reject) => {
    if (signal.aborted) reject(signal.reason);
    signal.addEventListener('abort', () => reject(signal.reason), { once: true });
  });
}

/** A body {@link decodeJson} refused, for a {@link MalformedHandler}: its JSON, else its text. */
function sentBody(text: string): { json: unknown } | { text: string } {
  try {
    return { json: JSON.parse(text) as unknown };
  } catch {
    return { text };
  }
}

/**
 * A request body as a `schema` message.
 * @throws InvalidArgumentError (`details.field` `body`) when it is not JSON, nests deeper than
 *   {@link MAX_API_JSON_DEPTH} or holds more than {@link MAX_API_JSON_NODES} values, or is not a
 *   `schema` message in the protobuf JSON mapping (unknown fields included); naming the field
 *   (`body.tokens`) when a number is in a form other than a decimal one (see
 *   {@link checkJsonNumbers}: `"0x10"`, `" 16"`, `"1e1"` as a string, an integer beyond 2^53).
 */
export function decodeJson<D extends DescMessage>(schema: D, text: string): unknown {
  let json: unknown = {};
  if (text.trim() !== '') {
    try {
      json = JSON.parse(text);
    } catch {
      throw new InvalidArgumentError('body', 'is not JSON');
    }
  }
  const exceeded = exceededBound(json, {
    maxDepth: MAX_API_JSON_DEPTH,
    maxNodes: MAX_API_JSON_NODES,
  });
  if (exceeded !== undefined) {
    throw new InvalidArgumentError(
      'body',
      exceeded === 'depth'
        ? `nests deeper than ${MAX_API_JSON_DEPTH} levels`
        : `holds more than ${MAX_API_JSON_NODES} values`,
    );
  }
  checkJsonNumbers(schema, json);
  try {
    return fromJson(schema, json as JsonValue);
  } catch (error) {
    throw new InvalidArgumentError(
      'body',
      `is not a valid ${schema.typeName}: ${error instanceof Error ? error.message : String(error)}`,
      { cause: error },
    );
  }
}

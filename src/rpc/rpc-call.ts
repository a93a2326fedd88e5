/**
 * What every gRPC service of the fabric shares: authentication of a call from its
 * `authorization: Bearer <credential>` metadata, decoding of the request after that (see
 * grpc-definition.ts), the mapping of catalog errors to status codes, and the conversion of
 * `google.protobuf.Value` fields to and from JSON.
 *
 * Catalog errors map to gRPC status codes through `GRPC_STATUS_BY_KIND` (see
 * {@link toServiceError}), with the fabric's code in the `fabric-error-code` trailer and the
 * error's details as JSON in the `fabric-error-details` trailer; anything else is INTERNAL.
 *
 * Server-streaming methods get a `send` function whose messages wait in the call's own write
 * buffer while the client is slow; when `maxBufferedMessages` are waiting, or a message would
 * take what waits past `maxBufferedBytes` (as serialized), the stream ends with
 * RESOURCE_EXHAUSTED (`FABRIC_ERR_STREAM_OVERFLOW`) after them, so a client that stops reading
 * costs bounded memory and learns that it missed events instead of losing them silently. A
 * watch's snapshot of the state at its start goes through `send.paced`, taken only as the client
 * reads, so a client that keeps up gets all of it however large (see {@link StreamOutbox}).
 *
 * @module
 */
import {
  fromJson,
  toBinary,
  toJson,
  type DescMessage,
  type DescService,
  type JsonValue,
  type MessageShape,
} from '@bufbuild/protobuf';
import { ValueSchema, type Value } from '@bufbuild/protobuf/wkt';
import {
  Metadata,
  status,
  type Server,
  type sendUnaryData,
  type ServerUnaryCall,
  type ServerWritableStream,
  type UntypedHandleCall,
  type UntypedServiceImplementation,
} from '@grpc/grpc-js';
import {
  ClosedError,
  ConfigError,
  FabricError,
  GRPC_STATUS_BY_KIND,
  InflightLimitError,
  InvalidArgumentError,
  PermissionDeniedError,
  SECRET_DETAIL_KEY,
  StreamLimitError,
  StreamOverflowError,
  UnauthenticatedError,
} from '../errors.js';
import type { AgentFabric } from '../fabric.js';
import type { SlotHold } from '../gateway/session.js';
import type { TraceCarrier } from '../telemetry/tracing.js';
import { bigintAsNumber } from '../validate.js';
import { decodeRequest, grpcServerDefinition, sendAndCheckWritten } from './grpc-definition.js';

/** Who a call must come from: an agent (acting as itself) or the administrator. */
export type CallerKind = 'agent' | 'admin';

/** The authenticated caller handed to a handler: the agent's id, or the admin's name. */
export interface Caller {
  readonly kind: CallerKind;
  /** The agent id for agents; the admin credential's name for the administrator. */
  readonly id: string;
}

/**
 * What a method may know of the call carrying it beyond the request: its deadline, and a way to
 * undo work whose answer never reaches the client.
 */
export interface CallContext {
  /** Epoch milliseconds by which the client wants its answer; `Infinity` when it set none. */
  readonly deadline: number;
  /**
   * Registers `undo`, run when the method's response is not written because the call ended
   * first (the client cancelled, or its deadline passed): e.g. a claimed task goes back.
   */
  onUndelivered(undo: () => void): void;
  /** The caller's W3C trace context (`traceparent`, `tracestate` metadata or headers). */
  readonly traceContext?: TraceCarrier | undefined;
  /**
   * Takes one more in-flight slot of the calling agent at this door, past its bound, and
   * returns what frees it (idempotent): for work of the call that goes on after the call ended
   * (a tool call given up while its upstream may still work on it; see
   * `ToolCallRequest.holdSlot`). Absent when the door bounds nothing for this caller.
   */
  readonly holdSlot?: SlotHold | undefined;
}

/**
 * A JSON value as a `google.protobuf.Value` (`undefined` becomes `null`). A `bigint` (a large
 * integer from a `..._json` field) becomes the nearest double: a Value holds nothing else.
 */
export function toValue(v: unknown): Value {
  return fromJson(
    ValueSchema,
    (v === undefined ? null : JSON.parse(JSON.stringify(v, bigintAsNumber))) as JsonValue,
  );
}

/**
 * The JSON of a request's `Value` field.
 * @throws InvalidArgumentError naming `field` when it is not JSON (NaN, Infinity, no kind).
 */
export function fromValue(v: Value | undefined, field: string): unknown {
  if (v === undefined) return null;
  try {
    return toJson(ValueSchema, v);
  } catch (error) {
    throw new InvalidArgumentError(
      field,
      `is not a JSON value: ${error instanceof Error ? error.message : String(error)}`,
      { cause: error },
    );
  }
}

/** Largest `…_json` bytes field a request may carry (1 MiB). */
export const MAX_JSON_FIELD_BYTES = 1024 * 1024;

/** A JSON value as the UTF-8 bytes of a lossless `…_json` field. */
export function toJsonBytes(v: unknown): Uint8Array {
  return new TextEncoder().encode(JSON.stringify(v === undefined ? null : v));
}

/**
 * The JSON of a request's `…_json` bytes field.
 * @throws InvalidArgumentError naming `field` when it is larger than
 *   {@link MAX_JSON_FIELD_BYTES} or not UTF-8 JSON.
 */
export function fromJsonBytes(bytes: Uint8Array, field: string): unknown {
  if (bytes.length > MAX_JSON_FIELD_BYTES) {
    throw new InvalidArgumentError(field, `is larger than ${MAX_JSON_FIELD_BYTES} bytes`);
  }
  try {
    return JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes)) as unknown;
  } catch (error) {
    throw new InvalidArgumentError(
      field,
      `is not UTF-8 JSON: ${error instanceof Error ? error.message : String(error)}`,
      { cause: error },
    );
  }
}

/** Wraps an event listener so that what it throws ends the stream instead of the emitter's caller. */
export type ListenerGuard = <A extends unknown[]>(
  listener: (...args: A) => void,
) => (...args: A) => void;

/**
 * Runs a stream that forwards events: `subscribe` registers its listeners (each wrapped by the
 * guard it gets) and returns how to remove them. Settles when `signal` aborts (resolves) or a
 * guarded listener throws (rejects with that error, so the stream ends with its status rather
 * than the exception reaching whoever emitted the event); removes the listeners either way.
 */
export async function forwardEvents(
  signal: AbortSignal,
  subscribe: (guard: ListenerGuard) => () => void,
): Promise<void> {
  if (signal.aborted) return;
  let fail: (err: unknown) => void = () => {};
  const failed = new Promise<void>((_resolve, reject) => (fail = reject));
  let failure = false;
  const guard: ListenerGuard =
    (listener) =>
    (...args) => {
      if (failure) return;
      try {
        listener(...args);
      } catch (err) {
        failure = true;
        fail(err);
      }
    };
  const aborted = new Promise<void>((resolve) =>
    signal.addEventListener('abort', () => resolve(), { once: true }),
  );
  let unsubscribe: (() => void) | undefined;
  try {
    unsubscribe = subscribe(guard);
    await Promise.race([aborted, failed]);
  } finally {
    unsubscribe?.();
  }
}

/** Trailer with the fabric's error code (`FABRIC_ERR_…`) of a failed call. */
export const ERROR_CODE_TRAILER = 'fabric-error-code';
/** Trailer with the failed call's error details as a JSON object (see {@link toServiceError}). */
export const ERROR_DETAILS_TRAILER = 'fabric-error-details';
/** Longest `fabric-error-details` value: grpc-js clients refuse metadata over 8 KiB in all. */
export const MAX_ERROR_DETAILS_LENGTH = 4096;
/**
 * Longest status message, in UTF-8 bytes (it goes out percent-encoded, at most 3 KiB): a message
 * that echoes what the caller sent (`task <id> does not exist`) cannot grow the trailers past
 * what grpc-js clients read (8 KiB of metadata in all: a longer one killed the connection).
 */
export const MAX_STATUS_MESSAGE_BYTES = 1024;

/**
 * The one mapping of errors to gRPC statuses: a catalog error's kind to its status code
 * (`GRPC_STATUS_BY_KIND`), its code in the `fabric-error-code` trailer and its `details` (rule,
 * policy, limit, retryAt …) as a JSON object in the `fabric-error-details` trailer — see
 * {@link errorDetailsJson}. Anything else is INTERNAL with its message and
 * `FABRIC_ERR_INTERNAL`, without details.
 */
export function toServiceError(err: unknown): {
  code: number;
  details: string;
  metadata: Metadata;
} {
  const metadata = new Metadata();
  if (err instanceof FabricError) {
    metadata.set(ERROR_CODE_TRAILER, err.code);
    metadata.set(ERROR_DETAILS_TRAILER, errorDetailsJson(err.toJSON().details));
    return { code: GRPC_STATUS_BY_KIND[err.kind], details: statusMessage(err.message), metadata };
  }
  metadata.set('fabric-error-code', 'FABRIC_ERR_INTERNAL');
  return {
    code: status.INTERNAL,
    details: statusMessage(err instanceof Error ? err.message : String(err)),
    metadata,
  };
}

/** `message` cut to {@link MAX_STATUS_MESSAGE_BYTES} at a character boundary, marked `…`. */
export function statusMessage(message: string): string {
  // Cheap for the usual message: at most 3 UTF-8 bytes per UTF-16 unit.
  if (message.length * 3 <= MAX_STATUS_MESSAGE_BYTES) return message;
  if (Buffer.byteLength(message, 'utf8') <= MAX_STATUS_MESSAGE_BYTES) return message;
  const room = MAX_STATUS_MESSAGE_BYTES - 3; // the `…`
  let bytes = 0;
  let end = 0;
  for (const c of message) {
    const n = Buffer.byteLength(c, 'utf8');
    if (bytes + n > room) break;
    bytes += n;
    end += c.length;
  }
  return `${message.slice(0, end)}…`;
}

/**
 * The caller of a `kind` method from its `authorization` value (`Bearer <credential>`), the same
 * for every door.
 * @throws UnauthenticatedError without a valid credential, and for the admin credential on an
 *   agent method (it acts as no agent); PermissionDeniedError for an agent credential on an
 *   admin method.
 */
export function authenticateCaller(
  fabric: AgentFabric,
  kind: CallerKind,
  authorization: string,
): Caller {
  const identity = fabric.authenticate(bearerCredential(authorization));
  if (kind === 'agent') {
    if (identity.kind !== 'agent')
      throw new UnauthenticatedError('the agent protocol needs an agent credential');
    return { kind, id: identity.agentId };
  }
  if (identity.kind !== 'admin')
    throw new PermissionDeniedError('this operation needs the admin credential');
  return { kind, id: identity.name };
}

/** The credential of an `authorization` value (`Bearer <credential>`, or the credential alone). */
export function bearerCredential(authorization: string): string {
  return authorization.replace(/^Bearer\s+/i, '');
}

/** The `authorization` metadata of a gRPC call (`''` without one). */
function authorizationOf(metadata: Metadata): string {
  const header = metadata.get('authorization')[0];
  return typeof header === 'string' ? header : '';
}

/**
 * The caller of a gRPC call from its `authorization` metadata; see {@link authenticateCaller}.
 */
export function authenticateCall(
  fabric: AgentFabric,
  kind: CallerKind,
  metadata: Metadata,
): Caller {
  return authenticateCaller(fabric, kind, authorizationOf(metadata));
}

/**
 * `details` as the value of the `fabric-error-details` trailer: a JSON object without members
 * named like secrets (credential, token, password …), non-ASCII characters `\u`-escaped (a
 * metadata value is ASCII), at most {@link MAX_ERROR_DETAILS_LENGTH} characters — when the
 * whole does not fit, the members that do, in order, and `"truncated": true`.
 */
export function errorDetailsJson(details: Readonly<Record<string, unknown>>): string {
  const kept: [string, string][] = [];
  for (const [key, value] of Object.entries(details)) {
    if (SECRET_DETAIL_KEY.test(key)) continue;
    let json: string | undefined;
    try {
      json = JSON.stringify(value);
    } catch {
      json = undefined; // a cycle or a BigInt: not a wire fact
    }
    if (json !== undefined) kept.push([JSON.stringify(key), json]);
  }
  // Measured as sent: escaped to ASCII first (a non-ASCII character is six).
  const members = kept.map(([k, v]) => asciiJson(`${k}:${v}`));
  const whole = `{${members.join(',')}}`;
  if (whole.length <= MAX_ERROR_DETAILS_LENGTH) return whole;
  const fits: string[] = [];
  let length = '{"truncated":true}'.length;
  for (const member of members) {
    if (length + member.length + 1 > MAX_ERROR_DETAILS_LENGTH) continue;
    fits.push(member);
    length += member.length + 1;
  }
  return `{${[...fits, '"truncated":true'].join(',')}}`;
}

/** JSON text with every non-ASCII character as a `\u` escape (the same JSON value). */
function asciiJson(json: string): string {
  return json.replace(
    /[\u007f-\uffff]/g,
    (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`,
  );
}

/** The abort reason of a unary call the client cancelled (or whose deadline passed); one object. */
const CALL_CANCELLED = new ClosedError('call (cancelled by the client or past its deadline)');

/**
 * What unary and server-streaming calls share: `onCancel` runs when the client cancels or the
 * deadline passes (also when that happened before the handler ran: grpc-js emitted `cancelled`
 * before anyone listened), then the caller is authenticated as `kind` before the request is
 * decoded as `method.input`, then `run` runs. `onRevoked` runs when an agent caller's credential
 * is replaced while `run` has not settled (see `AgentFabric.credentialCalls`). Rejects with what
 * any step throws.
 */
function runCall<D extends DescMessage, R>(
  fabric: AgentFabric,
  kind: CallerKind,
  method: { readonly input: D },
  call: ServerUnaryCall<Buffer, unknown> | ServerWritableStream<Buffer, unknown>,
  onCancel: () => void,
  onRevoked: (reason: FabricError) => void,
  run: (caller: Caller, request: MessageShape<D>, holdSlot: SlotHold | undefined) => Promise<R>,
  inflight?: AgentInflight,
  malformed?: MalformedHandler,
): Promise<R> {
  // An agent's call holds a slot of `inflight` until its handler has settled and the call has
  // ended: grpc-js emits `cancelled` at the end of every call, once its answer went out (its
  // status follows the message's write) or the client left. An answer the client does not read
  // keeps its call open and the answer in memory; counted until then, what one agent can make
  // the server hold this way is bounded by its own slots, not by the connections it opens.
  let release: (() => void) | undefined;
  let settled = false;
  let ended = call.cancelled;
  call.on('cancelled', () => {
    ended = true;
    if (settled) release?.();
    onCancel();
  });
  if (ended) onCancel();
  return (async () => {
    const authorization = authorizationOf(call.metadata);
    const caller = authenticateCaller(fabric, kind, authorization);
    // What a call leaves running past its end holds one more slot (`CallContext.holdSlot`),
    // taken before the handler settles.
    release = caller.kind === 'agent' ? inflight?.acquire(caller.id) : undefined;
    const holdSlot = release === undefined ? undefined : () => inflight!.hold(caller.id);
    // Registered in the same turn as the check: a replacement after it ends this call.
    const unhold =
      caller.kind === 'agent'
        ? fabric.credentialCalls.hold(caller.id, bearerCredential(authorization), onRevoked)
        : undefined;
    try {
      let request: MessageShape<D>;
      try {
        request = decodeRequest(method.input, call.request);
      } catch (error) {
        malformed?.(caller, { bytes: call.request });
        throw error;
      }
      return await run(caller, request, holdSlot);
    } finally {
      unhold?.();
      settled = true;
      if (ended) release?.();
    }
  })();
}

/**
 * The unary calls each agent has in flight on one server, at most `max` at once: one more is
 * refused with `InflightLimitError` (RESOURCE_EXHAUSTED) before it is decoded or run. Without it
 * one agent's credential could park any number of calls (tool calls waiting for an approval or
 * a hanging upstream, claims waiting for tasks), each holding its request and the gateway's work.
 */
export class AgentInflight {
  readonly #counts = new Map<string, number>();

  /** @throws ConfigError when `max` is not a positive integer. */
  constructor(
    readonly max: number,
    readonly setting: string,
  ) {
    if (!Number.isSafeInteger(max) || max < 1) {
      throw new ConfigError(setting, `must be a positive integer (got ${String(max)})`);
    }
  }

  /** Agents with a call in flight (an agent is forgotten when its last call ends). */
  get agents(): number {
    return this.#counts.size;
  }

  /**
   * Counts a call of `agentId`; returns what ends it (idempotent).
   * @throws InflightLimitError when the agent already has {@link max} in flight.
   */
  acquire(agentId: string): () => void {
    const n = this.#counts.get(agentId) ?? 0;
    if (n >= this.max) throw new InflightLimitError(this.max, agentId, n, this.setting);
    return this.hold(agentId);
  }

  /**
   * Counts one more call of `agentId` past {@link max}: work a call of its leaves running after
   * it ended, which goes on counting until it is done (see `CallContext.holdSlot`). Returns what
   * ends it (idempotent).
   */
  hold(agentId: string): () => void {
    this.#counts.set(agentId, (this.#counts.get(agentId) ?? 0) + 1);
    let done = false;
    return () => {
      if (done) return;
      done = true;
      const left = (this.#counts.get(agentId) ?? 1) - 1;
      if (left === 0) this.#counts.delete(agentId);
      else this.#counts.set(agentId, left);
    };
  }
}

/**
 * A grpc-js unary handler that authenticates the call as a `kind` caller, then decodes its
 * request as a `method.input` message, runs `handler`, and maps errors to status codes. The
 * `signal` aborts when the client cancels the call or its deadline passes.
 *
 * No valid credential is UNAUTHENTICATED; an agent credential on an admin method is
 * PERMISSION_DENIED; the admin credential on an agent method (it acts as no agent) is
 * UNAUTHENTICATED.
 */
export function unaryHandler<D extends DescMessage, Res>(
  fabric: AgentFabric,
  kind: CallerKind,
  method: { readonly input: D },
  handler: (
    caller: Caller,
    request: MessageShape<D>,
    signal: AbortSignal,
    context: CallContext,
  ) => Promise<Res>,
  inflight?: AgentInflight,
  malformed?: MalformedHandler,
): UntypedHandleCall {
  return (call: ServerUnaryCall<Buffer, Res>, callback: sendUnaryData<Res>): void => {
    const controller = new AbortController();
    const undos: (() => void)[] = [];
    const deadline = call.getDeadline();
    let holdSlot: SlotHold | undefined;
    const context: CallContext = {
      deadline: deadline instanceof Date ? deadline.getTime() : deadline,
      onUndelivered: (undo) => void undos.push(undo),
      // The agent's, once it is authenticated (runCall).
      get holdSlot(): SlotHold | undefined {
        return holdSlot;
      },
      // Read only when the method asks (the tool service, when tracing is on).
      get traceContext(): TraceCarrier {
        return {
          traceparent: call.metadata.get('traceparent')[0],
          tracestate: call.metadata.get('tracestate')[0],
        };
      },
    };
    let settled = false;
    /** Why the call ended when its credential was replaced while it ran. */
    let revoked: FabricError | undefined;
    runCall(
      fabric,
      kind,
      method,
      call,
      // grpc-js emits `cancelled` at the end of every call, answered ones too: aborting then
      // would cost a DOMException (a stack trace) per RPC for nothing (bench/grpc profile).
      () => void (settled || controller.abort(CALL_CANCELLED)),
      (reason) => {
        revoked = reason;
        controller.abort(reason);
      },
      (caller, request, hold) => {
        holdSlot = hold;
        return handler(caller, request, controller.signal, context);
      },
      inflight,
      malformed,
    ).then(
      (res) => {
        settled = true;
        // What the method made for the old credential's holder (a claimed task) is undone: a
        // claim that ended without a task answers no task, not the agent's next one.
        if (revoked !== undefined) {
          for (const undo of undos) undo();
          return callback(toServiceError(revoked));
        }
        if (undos.length === 0) return callback(null, res);
        // The call may have ended while the method ran; grpc-js then drops the answer silently.
        const written =
          !controller.signal.aborted &&
          sendAndCheckWritten(res as object, () => callback(null, res));
        if (!written) for (const undo of undos) undo();
      },
      (err: unknown) => {
        settled = true;
        callback(toServiceError(revoked ?? err));
      },
    );
  };
}

/** The unary methods of a generated service, each as `(caller, request, signal) → response`. */
export type UnaryMethods<S extends DescService> = {
  [
    K in keyof S['method'] as S['method'][K]['methodKind'] extends 'unary' ? K : never
  ]: S['method'][K] extends { input: infer I; output: infer O }
    ? I extends DescMessage
      ? O extends DescMessage
        ? (
            caller: Caller,
            request: MessageShape<I>,
            signal: AbortSignal,
            context?: CallContext,
          ) => Promise<MessageShape<O>>
        : never
      : never
    : never;
};

/**
 * Sends one message of a server stream. It never blocks: the message waits in the stream's
 * bounded buffer (see {@link GrpcServiceOptions.maxBufferedMessages} and
 * {@link GrpcServiceOptions.maxBufferedBytes}). After the stream ended (cancelled, overflowed,
 * server stopping) it does nothing; `signal` has aborted by then.
 */
export interface StreamSender<M> {
  (message: M): void;
  /**
   * Sends `items.length` messages, `toMessage(items[i], i)` each, in order — made and queued only
   * as the client reads (while less than half of either bound waits in flight), so a client that
   * keeps up gets them all however many they are: a watch's snapshot of what exists at its start.
   * Messages sent meanwhile wait behind them and count against the bounds. What `toMessage`
   * throws ends the stream with that error.
   */
  paced<T>(items: readonly T[], toMessage: (item: T, index: number) => M): void;
}

/**
 * A sender of events that become stream messages numbered 1, 2, … without gaps in the order
 * they are sent (`wrap(event, sequence)`), also when a paced batch waits for the client: its
 * numbers are taken when it is sent.
 */
export function sequencedSender<E, M>(
  send: StreamSender<M>,
  wrap: (event: E, sequence: bigint) => M,
): StreamSender<E> {
  let sequence = 0n;
  const sender = ((event: E) => send(wrap(event, ++sequence))) as StreamSender<E>;
  sender.paced = (items, toEvent) => {
    const first = sequence + 1n;
    sequence += BigInt(items.length);
    send.paced(items, (item, i) => wrap(toEvent(item, i), first + BigInt(i)));
  };
  return sender;
}

/** A sender of `A`s that hands each to `send` as `f(a)`. */
export function mappedSender<A, M>(send: StreamSender<M>, f: (a: A) => M): StreamSender<A> {
  const sender = ((a: A) => send(f(a))) as StreamSender<A>;
  sender.paced = (items, toA) => send.paced(items, (item, i) => f(toA(item, i)));
  return sender;
}

/**
 * The server-streaming methods of a generated service, each as
 * `(caller, request, signal, send) → done`. The method sends with `send` and settles when the
 * stream is complete (OK) or failed (its error's status); it must stop sending and settle when
 * `signal` aborts — the client cancelled, its deadline passed, it read too slowly, or the
 * server stops — and release what it subscribed to.
 */
export type ServerStreamMethods<S extends DescService> = {
  [
    K in keyof S['method'] as S['method'][K]['methodKind'] extends 'server_streaming' ? K : never
  ]: S['method'][K] extends { input: infer I; output: infer O }
    ? I extends DescMessage
      ? O extends DescMessage
        ? (
            caller: Caller,
            request: MessageShape<I>,
            signal: AbortSignal,
            send: StreamSender<MessageShape<O>>,
          ) => Promise<void>
        : never
      : never
    : never;
};

/**
 * One service implemented once, served by every door (gRPC, and the HTTP door http-door.ts):
 * which service, who may call it, its unary methods and its server-streaming methods.
 */
export interface ServiceImplementation<S extends DescService> {
  readonly service: S;
  readonly caller: CallerKind;
  readonly unary: UnaryMethods<S>;
  readonly serverStream?: ServerStreamMethods<S>;
  /**
   * Told of an authenticated call of a unary method whose request the door could not decode as
   * the method's message (it is refused INVALID_ARGUMENT right after), with what was sent: the
   * gRPC message's bytes, or the HTTP door's body (its JSON when it parses, else its text).
   */
  readonly malformed?: { readonly [K in keyof UnaryMethods<S>]?: MalformedHandler };
}

/** See {@link ServiceImplementation.malformed}; must not throw. */
export type MalformedHandler = (
  caller: Caller,
  sent: { readonly bytes: Uint8Array } | { readonly json: unknown } | { readonly text: string },
) => void;

/** Default of {@link GrpcServiceOptions.maxBufferedMessages}. */
export const DEFAULT_MAX_BUFFERED_STREAM_MESSAGES = 1024;
/**
 * Default of {@link GrpcServiceOptions.maxBufferedBytes} (and the HTTP door's): 4 MiB. One event
 * may carry up to a megabyte an agent chose (an approval's parameters); 1024 of those waiting
 * for each of 64 stalled watchers would be 64 GiB.
 */
export const DEFAULT_MAX_BUFFERED_STREAM_BYTES = 4 * 1024 * 1024;

/**
 * @throws ConfigError naming `field` when `value` is not a positive safe integer.
 * @internal
 */
export function positiveLimit(field: string, value: number): number {
  if (!Number.isSafeInteger(value) || value < 1) {
    throw new ConfigError(field, `must be a positive integer, got ${String(value)}`);
  }
  return value;
}

/** One encoded message of a stream: what is written, and its size counted against the bound. */
interface Encoded<C> {
  readonly chunk: C;
  readonly bytes: number;
}

/** A paced batch of a stream (see {@link StreamSender.paced}). */
interface Batch<M> {
  readonly items: readonly unknown[];
  readonly toMessage: (item: unknown, index: number) => M;
  next: number;
}

/**
 * The bounded send side of one server stream, the same for every door: counts what waits to be
 * written — handed to the connection and not yet flushed (`write`'s `done` not called yet), or
 * queued behind a paced batch — and ends the stream (`fail` with `StreamOverflowError`) when a
 * message comes while `maxMessages` wait or would take what waits past `maxBytes` (a message
 * larger than `maxBytes` goes out alone when nothing waits). A paced batch's messages are made
 * and written only while less than half of either bound is in flight, so it never overflows a
 * client that keeps up. @internal
 */
export class StreamOutbox<M, C> {
  readonly #maxMessages: number;
  readonly #maxBytes: number;
  readonly #encode: (message: M) => Encoded<C>;
  readonly #write: (chunk: C, done: () => void) => void;
  readonly #fail: (err: unknown) => void;
  /** Written and not yet flushed. */
  #flight = 0;
  #flightBytes = 0;
  /** Queued behind a paced batch (already counted in {@link waiting}). */
  readonly #queue: (Encoded<C> | Batch<M>)[] = [];
  #waiting = 0;
  #waitingBytes = 0;
  /** A batch's next message, made but not yet written. */
  #peeked: Encoded<C> | undefined;
  #closed = false;
  #pumping = false;

  constructor(options: {
    maxMessages: number;
    maxBytes: number;
    encode: (message: M) => Encoded<C>;
    write: (chunk: C, done: () => void) => void;
    fail: (err: unknown) => void;
  }) {
    this.#maxMessages = options.maxMessages;
    this.#maxBytes = options.maxBytes;
    this.#encode = options.encode;
    this.#write = options.write;
    this.#fail = options.fail;
  }

  /** Messages waiting: written and not flushed, or queued. */
  get waiting(): number {
    return this.#waiting;
  }

  /** The `send` handed to the stream's method. */
  sender(): StreamSender<M> {
    const send = ((message: M) => this.send(message)) as StreamSender<M>;
    send.paced = (items, toMessage) =>
      this.paced(items, toMessage as (item: unknown, index: number) => M);
    return send;
  }

  /** Stops: nothing more is written; what is queued is dropped. */
  close(): void {
    this.#closed = true;
    this.#queue.length = 0;
    this.#peeked = undefined;
  }

  send(message: M): void {
    if (this.#closed) return;
    let encoded: Encoded<C>;
    try {
      encoded = this.#encode(message);
    } catch (err) {
      return this.#failWith(err);
    }
    if (!this.#admit(encoded)) return;
    if (this.#queue.length === 0) this.#put(encoded);
    else this.#queue.push(encoded);
  }

  paced(items: readonly unknown[], toMessage: (item: unknown, index: number) => M): void {
    if (this.#closed || items.length === 0) return;
    this.#queue.push({ items, toMessage, next: 0 });
    this.#pump();
  }

  /** Counts `e` as waiting; false (and the stream failed) when that passes a bound. */
  #admit(e: Encoded<C>): boolean {
    if (this.#waiting >= this.#maxMessages) {
      this.#failWith(new StreamOverflowError(this.#maxMessages));
      return false;
    }
    if (this.#waiting > 0 && this.#waitingBytes + e.bytes > this.#maxBytes) {
      this.#failWith(new StreamOverflowError(this.#maxBytes, 'bytes'));
      return false;
    }
    this.#waiting++;
    this.#waitingBytes += e.bytes;
    return true;
  }

  #put(e: Encoded<C>): void {
    this.#flight++;
    this.#flightBytes += e.bytes;
    this.#write(e.chunk, () => {
      this.#flight--;
      this.#flightBytes -= e.bytes;
      this.#waiting--;
      this.#waitingBytes -= e.bytes;
      this.#pump();
    });
  }

  /** Writes what the queue's head allows: queued messages, and a batch's while it has room. */
  #pump(): void {
    if (this.#pumping) return;
    this.#pumping = true;
    try {
      while (!this.#closed && this.#queue.length > 0) {
        const head = this.#queue[0]!;
        if (!('items' in head)) {
          this.#queue.shift();
          this.#put(head);
          continue;
        }
        if (head.next >= head.items.length) {
          this.#queue.shift();
          continue;
        }
        if (this.#peeked === undefined) {
          try {
            this.#peeked = this.#encode(head.toMessage(head.items[head.next], head.next));
          } catch (err) {
            this.#failWith(err);
            return;
          }
        }
        const e = this.#peeked;
        const room =
          this.#flight === 0 ||
          (this.#flight < this.#maxMessages / 2 &&
            this.#flightBytes + e.bytes <= this.#maxBytes / 2);
        if (!room) return; // the next `done` pumps again
        this.#peeked = undefined;
        head.next++;
        if (!this.#admit(e)) return;
        this.#put(e);
      }
    } finally {
      this.#pumping = false;
    }
  }

  #failWith(err: unknown): void {
    this.close();
    this.#fail(err);
  }
}

/**
 * The server streams in progress on one server, so stopping the server can end them (a watch
 * never ends on its own, and grpc-js's graceful shutdown waits for every call), and so their
 * number is bounded: each holds listeners on the fabric and a buffer for its client.
 */
export class ActiveStreams {
  readonly #ends = new Set<(err: unknown) => void>();
  /** Most streams in progress at once ({@link full} beyond). */
  readonly max: number;

  /**
   * @param max Most streams in progress at once. @default unbounded
   * @throws ConfigError when `max` is not a positive integer.
   */
  constructor(max?: number, field = 'options.maxStreams') {
    this.max = max === undefined ? Number.POSITIVE_INFINITY : positiveLimit(field, max);
  }

  /** Streams in progress. */
  get size(): number {
    return this.#ends.size;
  }

  /** True when {@link max} streams are in progress: one more must be refused. */
  get full(): boolean {
    return this.#ends.size >= this.max;
  }

  /** @internal registers a stream's ending; returns its deregistration. */
  add(end: (err: unknown) => void): () => void {
    this.#ends.add(end);
    return () => this.#ends.delete(end);
  }

  /** Ends every stream in progress with `err`'s status (UNAVAILABLE by default). */
  endAll(err: unknown = new ClosedError('gRPC server')): void {
    for (const end of [...this.#ends]) end(err);
  }
}

/** Options of {@link addGrpcService}. */
export interface GrpcServiceOptions {
  /**
   * Messages of one server stream that may wait to be written to a slow client; one more ends
   * the stream with RESOURCE_EXHAUSTED (`FABRIC_ERR_STREAM_OVERFLOW`) after the ones waiting.
   * @default 1024
   */
  maxBufferedMessages?: number;
  /**
   * Bytes (protobuf, as sent) of one server stream's messages that may wait to be written to a
   * slow client; a message that would pass it ends the stream with RESOURCE_EXHAUSTED
   * (`FABRIC_ERR_STREAM_OVERFLOW`, `details.unit` `bytes`) after the ones waiting. A message
   * larger than this is still sent when nothing waits. @default 4 MiB
   */
  maxBufferedBytes?: number;
  /**
   * Where the server's streams are registered, so {@link ActiveStreams.endAll} ends them; a
   * stream that would pass its `max` is refused with RESOURCE_EXHAUSTED
   * (`FABRIC_ERR_STREAM_LIMIT`).
   */
  streams?: ActiveStreams;
  /** Bounds each agent's unary calls in flight (see {@link AgentInflight}). @default no bound */
  inflight?: AgentInflight | undefined;
}

/**
 * A grpc-js server-streaming handler: authenticates the call as a `kind` caller before decoding
 * its request (as {@link unaryHandler}), then runs `handler` with a bounded `send` (a
 * {@link StreamOutbox}). Messages are serialized as `method.output` when sent — to be measured
 * — and handed to grpc-js as bytes: the method's `responseSerialize` must pass a `Buffer`
 * through ({@link addGrpcService} sets that up).
 * @throws ConfigError when `options.maxBufferedMessages` or `options.maxBufferedBytes` is not a
 *   positive integer.
 */
export function serverStreamHandler<D extends DescMessage, O extends DescMessage>(
  fabric: AgentFabric,
  kind: CallerKind,
  method: { readonly input: D; readonly output: O },
  handler: (
    caller: Caller,
    request: MessageShape<D>,
    signal: AbortSignal,
    send: StreamSender<MessageShape<O>>,
  ) => Promise<void>,
  options: GrpcServiceOptions = {},
): UntypedHandleCall {
  const maxMessages = positiveLimit(
    'options.maxBufferedMessages',
    options.maxBufferedMessages ?? DEFAULT_MAX_BUFFERED_STREAM_MESSAGES,
  );
  const maxBytes = positiveLimit(
    'options.maxBufferedBytes',
    options.maxBufferedBytes ?? DEFAULT_MAX_BUFFERED_STREAM_BYTES,
  );
  return (call: ServerWritableStream<Buffer, Buffer>): void => {
    const streams = options.streams;
    if (streams?.full) {
      // Refused before anything is subscribed or buffered for it (its credential was checked
      // before its request was read: auth-interceptor.ts).
      call.emit('error', toServiceError(new StreamLimitError(streams.max)));
      return;
    }
    const controller = new AbortController();
    let ended = false;
    const deregister = streams?.add((err) => end(err)) ?? (() => false);
    // A message waits until grpc-js calls back from the write: in the call's own buffer, or
    // handed to HTTP/2 whose flow control holds it while the client does not read.
    const outbox = new StreamOutbox<MessageShape<O>, Buffer>({
      maxMessages,
      maxBytes,
      encode: (message) => {
        const bytes = toBinary(method.output, message);
        return {
          chunk: Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength),
          bytes: bytes.byteLength,
        };
      },
      write: (chunk, done) => void call.write(chunk, done),
      fail: (err) => end(err),
    });
    /** Ends the stream once: OK without `err`, else `err`'s status; aborts `signal`. */
    const end = (err?: unknown): void => {
      if (ended) return;
      ended = true;
      outbox.close();
      deregister();
      controller.abort(err ?? new ClosedError('stream'));
      if (call.cancelled) return;
      if (err === undefined) call.end();
      else call.emit('error', toServiceError(err));
    };
    const send = outbox.sender();
    runCall(
      fabric,
      kind,
      method,
      call,
      () => end(new ClosedError('stream (cancelled by the client)')),
      (reason) => end(reason),
      (caller, request) => handler(caller, request, controller.signal, send),
    ).then(
      () => end(),
      (err: unknown) => end(err),
    );
  };
}

/**
 * Adds `impl`'s unary and server-streaming methods to a grpc-js `server` (messages as protobuf
 * binary).
 * @throws ConfigError when `options.maxBufferedMessages` is not a positive integer.
 */
export function addGrpcService<S extends DescService>(
  server: Server,
  fabric: AgentFabric,
  impl: ServiceImplementation<S>,
  options: GrpcServiceOptions = {},
): void {
  const handlers: UntypedServiceImplementation = {};
  const unary = impl.unary as Record<string, Parameters<typeof unaryHandler>[3] | undefined>;
  const streams = (impl.serverStream ?? {}) as Record<
    string,
    Parameters<typeof serverStreamHandler>[3] | undefined
  >;
  const definition = grpcServerDefinition(impl.service);
  for (const method of impl.service.methods) {
    const name = method.localName;
    if (method.methodKind === 'unary' && unary[name] !== undefined) {
      handlers[name] = unaryHandler(
        fabric,
        impl.caller,
        method,
        unary[name],
        options.inflight,
        (impl.malformed as Record<string, MalformedHandler | undefined> | undefined)?.[name],
      );
    } else if (method.methodKind === 'server_streaming' && streams[name] !== undefined) {
      handlers[name] = serverStreamHandler(fabric, impl.caller, method, streams[name], options);
      // The stream's messages reach grpc-js serialized already (measured by its outbox).
      const served = definition[name]!;
      const serialize = served.responseSerialize;
      served.responseSerialize = (m: unknown) => (Buffer.isBuffer(m) ? m : serialize(m as never));
    }
  }
  server.addService(definition, handlers);
}

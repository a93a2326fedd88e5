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
 * @module
 */
import {
  fromJson,
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
  type UntypedHandleCall,
  type UntypedServiceImplementation,
} from '@grpc/grpc-js';
import {
  FabricError,
  GRPC_STATUS_BY_KIND,
  InvalidArgumentError,
  PermissionDeniedError,
  UnauthenticatedError,
} from '../errors.js';
import type { AgentFabric } from '../fabric.js';
import { decodeRequest, grpcServerDefinition } from './grpc-definition.js';

/** Who a call must come from: an agent (acting as itself) or the administrator. */
export type CallerKind = 'agent' | 'admin';

/** The authenticated caller handed to a handler: the agent's id, or the admin's name. */
export interface Caller {
  readonly kind: CallerKind;
  /** The agent id for agents; the admin credential's name for the administrator. */
  readonly id: string;
}

/** A JSON value as a `google.protobuf.Value` (`undefined` becomes `null`). */
export function toValue(v: unknown): Value {
  return fromJson(
    ValueSchema,
    (v === undefined ? null : JSON.parse(JSON.stringify(v))) as JsonValue,
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

/** Trailer with the fabric's error code (`FABRIC_ERR_…`) of a failed call. */
export const ERROR_CODE_TRAILER = 'fabric-error-code';
/** Trailer with the failed call's error details as a JSON object (see {@link toServiceError}). */
export const ERROR_DETAILS_TRAILER = 'fabric-error-details';
/** Longest `fabric-error-details` value: grpc-js clients refuse metadata over 8 KiB in all. */
export const MAX_ERROR_DETAILS_LENGTH = 4096;
/** Detail members never put on the wire, whatever an error carries (credentials and the like). */
const SECRET_KEY =
  /credential|secret|password|authorization|^(access|bearer|admin)?_?token$|api[-_]?key/i;

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
    metadata.set(ERROR_DETAILS_TRAILER, errorDetailsJson(err.details));
    return { code: GRPC_STATUS_BY_KIND[err.kind], details: err.message, metadata };
  }
  metadata.set('fabric-error-code', 'FABRIC_ERR_INTERNAL');
  return {
    code: status.INTERNAL,
    details: err instanceof Error ? err.message : String(err),
    metadata,
  };
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
    if (SECRET_KEY.test(key)) continue;
    let json: string | undefined;
    try {
      json = JSON.stringify(value);
    } catch {
      json = undefined; // a cycle or a BigInt: not a wire fact
    }
    if (json !== undefined) kept.push([JSON.stringify(key), json]);
  }
  const whole = `{${kept.map(([k, v]) => `${k}:${v}`).join(',')}}`;
  if (whole.length <= MAX_ERROR_DETAILS_LENGTH) return asciiJson(whole);
  const fits: string[] = [];
  let length = '{"truncated":true}'.length;
  for (const [k, v] of kept) {
    const member = `${k}:${v}`;
    if (length + member.length + 1 > MAX_ERROR_DETAILS_LENGTH) continue;
    fits.push(member);
    length += member.length + 1;
  }
  return asciiJson(`{${[...fits, '"truncated":true'].join(',')}}`);
}

/** JSON text with every non-ASCII character as a `\u` escape (the same JSON value). */
function asciiJson(json: string): string {
  return json.replace(
    /[\u007f-\uffff]/g,
    (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`,
  );
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
  handler: (caller: Caller, request: MessageShape<D>, signal: AbortSignal) => Promise<Res>,
): UntypedHandleCall {
  return (call: ServerUnaryCall<Buffer, Res>, callback: sendUnaryData<Res>): void => {
    const controller = new AbortController();
    call.on('cancelled', () => controller.abort());
    // A deadline that passed before the handler ran emitted `cancelled` before anyone listened.
    if (call.cancelled) controller.abort();
    void (async () => {
      const header = call.metadata.get('authorization')[0];
      const credential = typeof header === 'string' ? header.replace(/^Bearer\s+/i, '') : '';
      const identity = fabric.authenticate(credential);
      let caller: Caller;
      if (kind === 'agent') {
        if (identity.kind !== 'agent')
          throw new UnauthenticatedError('the agent protocol needs an agent credential');
        caller = { kind, id: identity.agentId };
      } else {
        if (identity.kind !== 'admin')
          throw new PermissionDeniedError('this operation needs the admin credential');
        caller = { kind, id: identity.name };
      }
      const request = decodeRequest(method.input, call.request);
      return handler(caller, request, controller.signal);
    })().then(
      (res) => callback(null, res),
      (err: unknown) => callback(toServiceError(err)),
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
          ) => Promise<MessageShape<O>>
        : never
      : never
    : never;
};

/**
 * One service implemented once, served by every door (gRPC today): which service, who may call
 * it, and its unary methods.
 */
export interface ServiceImplementation<S extends DescService> {
  readonly service: S;
  readonly caller: CallerKind;
  readonly unary: UnaryMethods<S>;
}

/** Adds `impl`'s unary methods to a grpc-js `server` (messages as protobuf binary). */
export function addGrpcService<S extends DescService>(
  server: Server,
  fabric: AgentFabric,
  impl: ServiceImplementation<S>,
): void {
  const handlers: UntypedServiceImplementation = {};
  const methods = impl.unary as Record<
    string,
    (caller: Caller, request: never, signal: AbortSignal) => Promise<unknown>
  >;
  for (const method of impl.service.methods) {
    const handler = methods[method.localName];
    if (method.methodKind !== 'unary' || handler === undefined) continue;
    handlers[method.localName] = unaryHandler(fabric, impl.caller, method, (caller, req, signal) =>
      handler(caller, req as never, signal),
    );
  }
  server.addService(grpcServerDefinition(impl.service), handlers);
}

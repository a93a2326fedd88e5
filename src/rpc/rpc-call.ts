/**
 * What every gRPC service of the fabric shares: authentication of a call from its
 * `authorization: Bearer <credential>` metadata, decoding of the request after that (see
 * grpc-definition.ts), the mapping of catalog errors to status codes, and the conversion of
 * `google.protobuf.Value` fields to and from JSON.
 *
 * Catalog errors map to gRPC status codes through `GRPC_STATUS_BY_KIND`, with the fabric's code
 * in the `fabric-error-code` trailer; anything else is INTERNAL.
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
import { bigintAsNumber } from '../validate.js';
import { decodeRequest, grpcServerDefinition } from './grpc-definition.js';

/** Who a call must come from: an agent (acting as itself) or the administrator. */
export type CallerKind = 'agent' | 'admin';

/** The authenticated caller handed to a handler: the agent's id, or the admin's name. */
export interface Caller {
  readonly kind: CallerKind;
  /** The agent id for agents; the admin credential's name for the administrator. */
  readonly id: string;
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

/** A catalog error as a gRPC status; anything else is INTERNAL with its message. */
export function toServiceError(err: unknown): {
  code: number;
  details: string;
  metadata: Metadata;
} {
  const metadata = new Metadata();
  if (err instanceof FabricError) {
    metadata.set('fabric-error-code', err.code);
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
  const identity = fabric.authenticate(authorization.replace(/^Bearer\s+/i, ''));
  if (kind === 'agent') {
    if (identity.kind !== 'agent')
      throw new UnauthenticatedError('the agent protocol needs an agent credential');
    return { kind, id: identity.agentId };
  }
  if (identity.kind !== 'admin')
    throw new PermissionDeniedError('this operation needs the admin credential');
  return { kind, id: identity.name };
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
    void (async () => {
      const header = call.metadata.get('authorization')[0];
      const caller = authenticateCaller(fabric, kind, typeof header === 'string' ? header : '');
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

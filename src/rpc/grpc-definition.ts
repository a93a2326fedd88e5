/**
 * Turns a protobuf-es service descriptor into a grpc-js service definition: the generated code
 * stays the single source of truth for paths and message types, and messages cross the wire as
 * protobuf binary.
 *
 * A server gets requests as raw bytes ({@link grpcServerDefinition}) and decodes them itself
 * with {@link decodeRequest}, after the call is authenticated: grpc-js runs a definition's
 * `requestDeserialize` before any handler and answers INTERNAL ("Error deserializing request")
 * when it throws, so decoding there would let an unauthenticated caller make the server parse
 * anything it sends, and would report a malformed or over-deep message as a server fault
 * rather than the caller's.
 *
 * @module
 */
import {
  fromBinary,
  toBinary,
  type DescMessage,
  type DescService,
  type MessageShape,
} from '@bufbuild/protobuf';
import type { ServiceDefinition } from '@grpc/grpc-js';
import { InvalidArgumentError } from '../errors.js';
import { countFieldsOver } from './wire-fields.js';

/**
 * Most nested messages a request may hold when decoded: protobuf-es's default. A
 * `google.protobuf.Value` uses about two levels per level of JSON nesting (Value → Struct or
 * ListValue → Value), so this admits JSON about 50 levels deep.
 */
export const DEFAULT_GRPC_RECURSION_LIMIT = 100;
/**
 * Most fields one request may hold, at any depth, counted on its bytes before it is decoded
 * (see `wire-fields.ts`): a JSON value in a `google.protobuf.Value` is about two, so this is the
 * HTTP door's bound of 200,000 values.
 */
export const MAX_GRPC_REQUEST_FIELDS = 400_000;

/**
 * grpc-js definition of every unary and server-streaming method of `service`, keyed by the
 * method's local name (client- and bidi-streaming methods are not served).
 */
export function grpcDefinition(service: DescService): ServiceDefinition {
  const definition: Record<string, ServiceDefinition[string]> = {};
  for (const method of service.methods) {
    if (method.methodKind !== 'unary' && method.methodKind !== 'server_streaming') continue;
    definition[method.localName] = {
      path: `/${service.typeName}/${method.name}`,
      requestStream: false,
      responseStream: method.methodKind === 'server_streaming',
      requestSerialize: serializer(method.input),
      requestDeserialize: deserializer(method.input),
      responseSerialize: serializer(method.output),
      responseDeserialize: deserializer(method.output),
      originalName: method.localName,
    };
  }
  return definition as ServiceDefinition;
}

/**
 * {@link grpcDefinition} for a server: requests reach the handler as the raw `Buffer` grpc-js
 * received; decode them with {@link decodeRequest} once the caller is authenticated.
 */
export function grpcServerDefinition(service: DescService): ServiceDefinition {
  const definition = grpcDefinition(service);
  for (const method of Object.values(definition)) {
    (method as { requestDeserialize: (b: Buffer) => Buffer }).requestDeserialize = (b) => b;
    const serialize = method.responseSerialize;
    method.responseSerialize = (m: object) => {
      awaitingWrite.delete(m);
      return serialize(m);
    };
  }
  return definition;
}

/**
 * Responses handed to grpc-js whose bytes it has not produced yet. grpc-js serializes a response
 * just before it writes it to the call's stream and skips both when the call has already ended
 * (the client cancelled, its deadline passed), without telling the handler; a response still
 * here after the handler's callback returned was therefore never written.
 */
const awaitingWrite = new WeakSet<object>();

/**
 * Hands `response` to grpc-js through `send` and tells whether grpc-js wrote it: false when the
 * call had ended so the response was dropped. Relies on grpc-js serializing synchronously
 * inside the unary callback: it does through our one interceptor (auth-interceptor.ts), which
 * intercepts only the start of a call, so grpc-js passes the response straight on.
 */
export function sendAndCheckWritten(response: object, send: () => void): boolean {
  awaitingWrite.add(response);
  send();
  return !awaitingWrite.delete(response);
}

/**
 * Decodes a request's protobuf binary.
 * @throws InvalidArgumentError (`details.field` `request`) when `bytes` is not a valid message
 *   of `schema` — malformed, nested deeper than {@link DEFAULT_GRPC_RECURSION_LIMIT}, or
 *   holding more than {@link MAX_GRPC_REQUEST_FIELDS} fields (refused before decoding).
 */
export function decodeRequest<D extends DescMessage>(
  schema: D,
  bytes: Uint8Array,
): MessageShape<D> {
  if (countFieldsOver(schema, bytes, MAX_GRPC_REQUEST_FIELDS, DEFAULT_GRPC_RECURSION_LIMIT)) {
    throw new InvalidArgumentError(
      'request',
      `holds more than ${MAX_GRPC_REQUEST_FIELDS} fields (about ${MAX_GRPC_REQUEST_FIELDS / 2} JSON values)`,
    );
  }
  try {
    return fromBinary(schema, bytes, { recursionLimit: DEFAULT_GRPC_RECURSION_LIMIT });
  } catch (error) {
    throw new InvalidArgumentError(
      'request',
      `is not a valid ${schema.typeName} message: ${error instanceof Error ? error.message : String(error)}`,
      { cause: error },
    );
  }
}

function serializer<D extends DescMessage>(schema: D): (m: MessageShape<D>) => Buffer {
  return (m) => Buffer.from(toBinary(schema, m));
}

function deserializer<D extends DescMessage>(schema: D): (b: Buffer) => MessageShape<D> {
  return (b) => fromBinary(schema, b);
}

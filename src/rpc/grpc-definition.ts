/**
 * Turns a protobuf-es service descriptor into a grpc-js service definition: the generated code
 * stays the single source of truth for paths and message types, and messages cross the wire as
 * protobuf binary.
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

/** grpc-js definition of every unary method of `service`, keyed by the method's local name. */
export function grpcDefinition(service: DescService): ServiceDefinition {
  const definition: Record<string, ServiceDefinition[string]> = {};
  for (const method of service.methods) {
    if (method.methodKind !== 'unary') continue;
    definition[method.localName] = {
      path: `/${service.typeName}/${method.name}`,
      requestStream: false,
      responseStream: false,
      requestSerialize: serializer(method.input),
      requestDeserialize: deserializer(method.input),
      responseSerialize: serializer(method.output),
      responseDeserialize: deserializer(method.output),
      originalName: method.localName,
    };
  }
  return definition as ServiceDefinition;
}

function serializer<D extends DescMessage>(schema: D): (m: MessageShape<D>) => Buffer {
  return (m) => Buffer.from(toBinary(schema, m));
}

function deserializer<D extends DescMessage>(schema: D): (b: Buffer) => MessageShape<D> {
  return (b) => fromBinary(schema, b);
}

/**
 * gRPC server reflection (`grpc.reflection.v1.ServerReflection`, vendored in proto-grpc/, and
 * the older `grpc.reflection.v1alpha` name with the same messages): lets `grpcurl`, Postman or
 * a client in any language list the server's services and fetch their file descriptors instead
 * of needing proto/.
 *
 * The descriptors come from the protobuf-es generated code (`GenFile.proto`), the same single
 * source the server itself runs on. The maintained `@grpc/reflection` package was not used: it
 * takes a `@grpc/proto-loader` package definition, which would mean parsing proto/ a second
 * time at run time with protobufjs beside the protobuf-es descriptors we already have.
 *
 * Answers `list_services`, `file_by_filename` and `file_containing_symbol` (a file comes with
 * every file it imports, transitively). There are no extensions: `file_containing_extension` is
 * NOT_FOUND and `all_extension_numbers_of_type` lists none for a known message. Reflection needs
 * no credential: it tells what proto/ (shipped in the package) already says.
 *
 * @module
 */
import { create, fromBinary, toBinary, type DescFile, type DescService } from '@bufbuild/protobuf';
import { FileDescriptorProtoSchema } from '@bufbuild/protobuf/wkt';
import { nestedTypes } from '@bufbuild/protobuf/reflect';
import {
  status,
  type Server,
  type ServerDuplexStream,
  type ServiceDefinition,
} from '@grpc/grpc-js';
import {
  ServerReflection,
  ServerReflectionRequestSchema,
  ServerReflectionResponseSchema,
  type ServerReflectionRequest,
  type ServerReflectionResponse,
} from '../gen/grpc/reflection/v1/reflection_pb.js';

/** The service names reflection is served under (v1, and v1alpha for older clients). */
export const REFLECTION_SERVICE_NAMES = [
  ServerReflection.typeName,
  'grpc.reflection.v1alpha.ServerReflection',
] as const;

function definition(serviceName: string): ServiceDefinition {
  return {
    serverReflectionInfo: {
      path: `/${serviceName}/ServerReflectionInfo`,
      requestStream: true,
      responseStream: true,
      requestSerialize: (m: ServerReflectionRequest) =>
        Buffer.from(toBinary(ServerReflectionRequestSchema, m)),
      requestDeserialize: (b: Buffer) => fromBinary(ServerReflectionRequestSchema, b),
      responseSerialize: (m: ServerReflectionResponse) =>
        Buffer.from(toBinary(ServerReflectionResponseSchema, m)),
      responseDeserialize: (b: Buffer) => fromBinary(ServerReflectionResponseSchema, b),
    },
  };
}

/** The grpc-js definition of `grpc.reflection.v1.ServerReflection` (for clients too). */
export const REFLECTION_SERVICE_DEFINITION = definition(ServerReflection.typeName);

/** What reflection knows: the files of the served services, indexed by file name and symbol. */
class DescriptorIndex {
  readonly services: readonly string[];
  readonly #byName = new Map<string, DescFile>();
  readonly #bySymbol = new Map<string, DescFile>();
  readonly #encoded = new Map<DescFile, Uint8Array>();

  constructor(services: readonly DescService[]) {
    this.services = services.map((s) => s.typeName);
    for (const s of services) this.#addFile(s.file);
  }

  #addFile(file: DescFile): void {
    const name = file.proto.name;
    if (this.#byName.has(name)) return;
    this.#byName.set(name, file);
    this.#encoded.set(file, toBinary(FileDescriptorProtoSchema, file.proto));
    for (const type of nestedTypes(file)) {
      this.#bySymbol.set(type.typeName, file);
      if (type.kind === 'service') {
        for (const m of type.methods) this.#bySymbol.set(`${type.typeName}.${m.name}`, file);
      } else if (type.kind === 'enum') {
        // Enum values are symbols in their enum's scope's parent (protobuf scoping rules).
        const scope = type.typeName.slice(0, type.typeName.lastIndexOf('.') + 1);
        for (const v of type.values) this.#bySymbol.set(`${scope}${v.name}`, file);
      } else if (type.kind === 'message') {
        for (const f of type.fields) this.#bySymbol.set(`${type.typeName}.${f.name}`, file);
      }
    }
    for (const dep of file.dependencies) this.#addFile(dep);
  }

  byName(name: string): DescFile | undefined {
    return this.#byName.get(name);
  }

  bySymbol(symbol: string): DescFile | undefined {
    return this.#bySymbol.get(symbol);
  }

  /** `file` and every file it imports, transitively, each once, as FileDescriptorProto bytes. */
  withDependencies(file: DescFile): Uint8Array[] {
    const out: Uint8Array[] = [];
    const seen = new Set<DescFile>();
    const visit = (f: DescFile): void => {
      if (seen.has(f)) return;
      seen.add(f);
      out.push(this.#encoded.get(f) ?? toBinary(FileDescriptorProtoSchema, f.proto));
      for (const d of f.dependencies) visit(d);
    };
    visit(file);
    return out;
  }
}

function answer(index: DescriptorIndex, req: ServerReflectionRequest): ServerReflectionResponse {
  const base = { validHost: req.host, originalRequest: req };
  const notFound = (what: string): ServerReflectionResponse =>
    create(ServerReflectionResponseSchema, {
      ...base,
      messageResponse: {
        case: 'errorResponse',
        value: { errorCode: status.NOT_FOUND, errorMessage: `${what} not found` },
      },
    });
  const files = (file: DescFile | undefined, what: string): ServerReflectionResponse =>
    file === undefined
      ? notFound(what)
      : create(ServerReflectionResponseSchema, {
          ...base,
          messageResponse: {
            case: 'fileDescriptorResponse',
            value: { fileDescriptorProto: index.withDependencies(file) },
          },
        });
  const r = req.messageRequest;
  switch (r.case) {
    case 'listServices':
      return create(ServerReflectionResponseSchema, {
        ...base,
        messageResponse: {
          case: 'listServicesResponse',
          value: { service: index.services.map((name) => ({ name })) },
        },
      });
    case 'fileByFilename':
      return files(index.byName(r.value), `file ${r.value}`);
    case 'fileContainingSymbol':
      return files(index.bySymbol(r.value), `symbol ${r.value}`);
    case 'fileContainingExtension':
      return notFound(
        `extension ${r.value.extensionNumber} of ${r.value.containingType} (there are no extensions)`,
      );
    case 'allExtensionNumbersOfType':
      return index.bySymbol(r.value) === undefined
        ? notFound(`type ${r.value}`)
        : create(ServerReflectionResponseSchema, {
            ...base,
            messageResponse: {
              case: 'allExtensionNumbersResponse',
              value: { baseTypeName: r.value, extensionNumber: [] },
            },
          });
    default:
      return create(ServerReflectionResponseSchema, {
        ...base,
        messageResponse: {
          case: 'errorResponse',
          value: { errorCode: status.INVALID_ARGUMENT, errorMessage: 'no request set' },
        },
      });
  }
}

/**
 * Adds server reflection (v1 and v1alpha) describing `services` to `server`. Returns a function
 * that ends every open reflection stream (call it before shutting the server down).
 */
export function addReflectionService(server: Server, services: readonly DescService[]): () => void {
  const index = new DescriptorIndex([...services, ServerReflection]);
  const open = new Set<ServerDuplexStream<ServerReflectionRequest, ServerReflectionResponse>>();
  const handler = (
    call: ServerDuplexStream<ServerReflectionRequest, ServerReflectionResponse>,
  ): void => {
    open.add(call);
    // One request at a time: the next is read once this one's answer has been written out.
    // Reflection takes no credential, and an answer holds its request (`originalRequest`):
    // read on regardless, a client that never reads made the server hold every request it
    // sent (grpc-js reads a stream's messages as they come while it has a `data` listener).
    // Paused, grpc-js stops reading the stream and HTTP/2 flow control stops the client.
    call.on('data', (req: ServerReflectionRequest) => {
      call.pause();
      call.write(answer(index, req), () => call.resume());
    });
    call.on('end', () => {
      open.delete(call);
      call.end();
    });
    call.on('cancelled', () => open.delete(call));
    call.on('error', () => open.delete(call));
  };
  for (const name of REFLECTION_SERVICE_NAMES) {
    server.addService(definition(name), { serverReflectionInfo: handler });
  }
  return () => {
    for (const call of open) call.end();
    open.clear();
  };
}

/**
 * Server reflection with a client that stops reading its answers. Reflection takes no
 * credential (probes and tools such as grpcurl carry none), and each answer carries its request
 * (`originalRequest`, `validHost`): a client that writes requests and never reads must not make
 * the server read them all and hold every answer — it read them as fast as the client sent, so
 * anyone who could reach the port could fill the sidecar's heap.
 */
import { create } from '@bufbuild/protobuf';
import { credentials, makeGenericClientConstructor, type ClientDuplexStream } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentFabric } from '../../src/fabric.js';
import {
  ServerReflectionRequestSchema,
  type ServerReflectionRequest,
  type ServerReflectionResponse,
} from '../../src/gen/grpc/reflection/v1/reflection_pb.js';
import { REFLECTION_SERVICE_DEFINITION } from '../../src/rpc/reflection-service.js';
import { startGrpcServer, type GrpcServer } from '../../src/rpc/grpc-server.js';

const Reflection = makeGenericClientConstructor(REFLECTION_SERVICE_DEFINITION, 'ServerReflection');
type ReflectionClient = InstanceType<typeof Reflection> & {
  serverReflectionInfo(): ClientDuplexStream<ServerReflectionRequest, ServerReflectionResponse>;
};

/** Requests the client sends while it reads nothing: 320 × 256 KiB = 80 MiB. */
const REQUESTS = 320;
const HOST_CHARS = 256 * 1024;

describe('gRPC reflection with a client that does not read', () => {
  let fabric: AgentFabric;
  let server: GrpcServer;

  beforeAll(async () => {
    fabric = new AgentFabric();
    server = await startGrpcServer(fabric);
  });

  afterAll(async () => {
    await server?.close();
    await fabric?.close();
  });

  it('reads requests only as their answers go out, and answers them all once read', async () => {
    const client = new Reflection(server.address, credentials.createInsecure()) as ReflectionClient;
    const stream = client.serverReflectionInfo();
    const ask = (value: string): ServerReflectionRequest =>
      create(ServerReflectionRequestSchema, {
        host: 'h'.repeat(HOST_CHARS),
        messageRequest: { case: 'fileContainingSymbol', value },
      });
    // One answer read: the stream is up.
    const first = new Promise<ServerReflectionResponse>((resolve) => stream.once('data', resolve));
    stream.write(ask('fabric.v1.FabricService'));
    expect((await first).messageResponse.case).toBe('fileDescriptorResponse');
    stream.pause(); // reads nothing from here

    const before = process.memoryUsage().heapUsed;
    // The client writes as its stream takes them (it holds little itself): all of them when
    // the server reads on regardless, until the server stops reading when it does not.
    let written = 0;
    const allWritten = new Promise<void>((resolve) => {
      const more = (): void => {
        while (written < REQUESTS) {
          written++;
          if (!stream.write(ask('fabric.v1.FabricService'))) break;
        }
        if (written < REQUESTS) stream.once('drain', more);
        else resolve();
      };
      more();
    });
    // Waited for the writes, or for a while once the server stopped taking them.
    await Promise.race([allWritten, new Promise((resolve) => setTimeout(resolve, 3000))]);
    const held = process.memoryUsage().heapUsed - before;
    // Each request read holds its 256 KiB host (a string) until its answer is written: 80 MiB
    // for them all (the client had sent 400 of 512 in the 3 s, and the server held 112 MB of
    // them). Read only as answers go out, at most the few grpc-js reads ahead are.
    expect(held).toBeLessThan(32 * 1024 * 1024);

    // Reading again: every request is answered, in order, and the stream ends cleanly.
    let answered = 0;
    const done = new Promise<void>((resolve, reject) => {
      stream.on('data', (m: ServerReflectionResponse) => {
        if (m.messageResponse.case !== 'fileDescriptorResponse') {
          reject(new Error(`answer ${answered}: ${m.messageResponse.case}`));
        }
        if (++answered === REQUESTS) resolve();
      });
      stream.on('error', reject);
    });
    stream.resume();
    await allWritten;
    await done;
    expect(answered).toBe(REQUESTS);
    const ended = new Promise<void>((resolve) => stream.on('status', () => resolve()));
    stream.end();
    await ended;
    client.close();
  });
});

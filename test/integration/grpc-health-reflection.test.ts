/**
 * `grpc.health.v1.Health` and server reflection, asked by real grpc-js clients (no credential:
 * probes carry none) against a real server over a real fabric.
 */
import { create, fromBinary } from '@bufbuild/protobuf';
import { FileDescriptorProtoSchema } from '@bufbuild/protobuf/wkt';
import {
  credentials,
  makeGenericClientConstructor,
  status,
  type ClientDuplexStream,
  type ClientReadableStream,
  type ServiceError,
} from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentFabric } from '../../src/fabric.js';
import {
  HealthCheckRequestSchema,
  HealthCheckResponse_ServingStatus as Serving,
  type HealthCheckResponse,
} from '../../src/gen/grpc/health/v1/health_pb.js';
import {
  ServerReflectionRequestSchema,
  type ServerReflectionRequest,
  type ServerReflectionResponse,
} from '../../src/gen/grpc/reflection/v1/reflection_pb.js';
import { HEALTH_SERVICE_DEFINITION } from '../../src/rpc/health-service.js';
import {
  REFLECTION_SERVICE_DEFINITION,
  REFLECTION_SERVICE_NAMES,
} from '../../src/rpc/reflection-service.js';
import { startGrpcServer, type GrpcServer } from '../../src/rpc/grpc-server.js';

const HealthClient = makeGenericClientConstructor(HEALTH_SERVICE_DEFINITION, 'Health');
type HealthClient = InstanceType<typeof HealthClient> & {
  check(req: unknown, cb: (err: ServiceError | null, res: HealthCheckResponse) => void): void;
  watch(req: unknown): ClientReadableStream<HealthCheckResponse>;
};

function check(client: HealthClient, service: string): Promise<Serving | ServiceError> {
  return new Promise((resolve) =>
    client.check(create(HealthCheckRequestSchema, { service }), (err, res) =>
      resolve(err ?? res.status),
    ),
  );
}

describe('gRPC health and reflection', () => {
  let fabric: AgentFabric;
  let server: GrpcServer;
  let health: HealthClient;
  let stateOk = true;
  let upstreamOk = true;

  beforeAll(async () => {
    fabric = new AgentFabric();
    server = await startGrpcServer(fabric, {
      healthProbes: { state: () => stateOk, 'upstream/files': () => upstreamOk },
    });
    health = new HealthClient(server.address, credentials.createInsecure()) as HealthClient;
  });

  afterAll(async () => {
    health?.close();
    await server?.close();
    await fabric?.close();
  });

  it('answers Check for the server, each service and each probe, without a credential', async () => {
    expect(await check(health, '')).toBe(Serving.SERVING);
    expect(await check(health, 'fabric.v1.AgentService')).toBe(Serving.SERVING);
    expect(await check(health, 'upstream/files')).toBe(Serving.SERVING);
    expect(await check(health, 'no.such.Service')).toMatchObject({ code: status.NOT_FOUND });

    // An upstream down: the server as a whole is not serving, the agent service still is.
    upstreamOk = false;
    expect(await check(health, '')).toBe(Serving.NOT_SERVING);
    expect(await check(health, 'upstream/files')).toBe(Serving.NOT_SERVING);
    expect(await check(health, 'fabric.v1.AgentService')).toBe(Serving.SERVING);
    upstreamOk = true;

    // The state store failing takes the fabric's services down with it.
    stateOk = false;
    expect(await check(health, '')).toBe(Serving.NOT_SERVING);
    expect(await check(health, 'fabric.v1.AgentService')).toBe(Serving.NOT_SERVING);
    stateOk = true;
    expect(await check(health, '')).toBe(Serving.SERVING);
  });

  it('streams changes to a Watch, and SERVICE_UNKNOWN for an unknown name', async () => {
    const seen: Serving[] = [];
    const stream = health.watch(create(HealthCheckRequestSchema, { service: '' }));
    stream.on('data', (m: HealthCheckResponse) => seen.push(m.status));
    stream.on('error', () => undefined);
    await expect.poll(() => seen).toEqual([Serving.SERVING]);
    stateOk = false;
    await expect
      .poll(() => seen, { timeout: 5_000 })
      .toEqual([Serving.SERVING, Serving.NOT_SERVING]);
    stateOk = true;
    await expect
      .poll(() => seen, { timeout: 5_000 })
      .toEqual([Serving.SERVING, Serving.NOT_SERVING, Serving.SERVING]);
    stream.cancel();

    const unknown: Serving[] = [];
    const other = health.watch(create(HealthCheckRequestSchema, { service: 'no.such.Service' }));
    other.on('data', (m: HealthCheckResponse) => unknown.push(m.status));
    other.on('error', () => undefined);
    await expect.poll(() => unknown).toEqual([Serving.SERVICE_UNKNOWN]);
    other.cancel();
  });

  for (const name of REFLECTION_SERVICE_NAMES) {
    it(`lists the services and serves their file descriptors (${name})`, async () => {
      const Reflection = makeGenericClientConstructor(
        Object.fromEntries(
          Object.entries(REFLECTION_SERVICE_DEFINITION).map(([k, d]) => [
            k,
            { ...d, path: `/${name}/ServerReflectionInfo` },
          ]),
        ),
        'ServerReflection',
      );
      const client = new Reflection(server.address, credentials.createInsecure()) as InstanceType<
        typeof Reflection
      > & {
        serverReflectionInfo(): ClientDuplexStream<
          ServerReflectionRequest,
          ServerReflectionResponse
        >;
      };
      const stream = client.serverReflectionInfo();
      const answers: ServerReflectionResponse[] = [];
      stream.on('data', (m: ServerReflectionResponse) => answers.push(m));
      const ask = async (
        messageRequest: ServerReflectionRequest['messageRequest'],
      ): Promise<ServerReflectionResponse['messageResponse']> => {
        const n = answers.length;
        stream.write(create(ServerReflectionRequestSchema, { messageRequest }));
        await expect.poll(() => answers.length).toBe(n + 1);
        return answers[n]!.messageResponse;
      };
      try {
        const list = await ask({ case: 'listServices', value: '' });
        expect(list.case).toBe('listServicesResponse');
        const names =
          list.case === 'listServicesResponse' ? list.value.service.map((s) => s.name) : [];
        expect(names).toEqual(
          expect.arrayContaining([
            'fabric.v1.AgentService',
            'grpc.health.v1.Health',
            'grpc.reflection.v1.ServerReflection',
          ]),
        );

        for (const symbol of ['fabric.v1.AgentService', 'fabric.v1.AgentService.ClaimTask']) {
          const files = await ask({ case: 'fileContainingSymbol', value: symbol });
          expect(files.case).toBe('fileDescriptorResponse');
          const decoded =
            files.case === 'fileDescriptorResponse'
              ? files.value.fileDescriptorProto.map((b) => fromBinary(FileDescriptorProtoSchema, b))
              : [];
          expect(decoded[0]?.name).toBe('fabric/v1/agent.proto');
          const service = decoded[0]?.service.find((s) => s.name === 'AgentService');
          expect(service?.method.map((m) => m.name)).toEqual(
            expect.arrayContaining(['ClaimTask', 'RecordUsage', 'RecordHookProgress']),
          );
          // Its imports come along: a client can build every type from this answer alone.
          expect(decoded.map((f) => f.name)).toContain('google/protobuf/struct.proto');
        }

        const byName = await ask({ case: 'fileByFilename', value: 'grpc/health/v1/health.proto' });
        expect(byName.case).toBe('fileDescriptorResponse');

        for (const missing of [
          { case: 'fileByFilename' as const, value: 'nope.proto' },
          { case: 'fileContainingSymbol' as const, value: 'fabric.v1.Nope' },
        ]) {
          const e = await ask(missing);
          expect(e).toMatchObject({
            case: 'errorResponse',
            value: { errorCode: status.NOT_FOUND },
          });
        }
      } finally {
        stream.end();
        client.close();
      }
    });
  }

  it('closes with a Watch still open', async () => {
    const f = new AgentFabric();
    const s = await startGrpcServer(f);
    const c = new HealthClient(s.address, credentials.createInsecure()) as HealthClient;
    const seen: Serving[] = [];
    const stream = c.watch(create(HealthCheckRequestSchema, { service: '' }));
    stream.on('data', (m: HealthCheckResponse) => seen.push(m.status));
    const ended = new Promise<void>((resolve) => {
      stream.on('end', resolve);
      stream.on('error', () => resolve());
    });
    await expect.poll(() => seen).toEqual([Serving.SERVING]);
    await s.close();
    await ended;
    c.close();
    await f.close();
  });
});

/**
 * The gRPC door against clients without a valid credential sending large requests: the server
 * must answer from the call's metadata, without reading the request's message, and reset the
 * stream so the client stops sending it. grpc-js hands a call to its handler only once the whole
 * message is in (up to 4 MiB), so a credential checked there came after the server had read and
 * held every call's message: one connection of 64 calls of 3 MiB each without a credential made
 * the sidecar take in 201 MB before it answered them UNAUTHENTICATED.
 *
 * Real sidecar, real grpc-js clients; what the server read is measured outside it, as the bytes
 * the client could send through a TCP proxy: a server that does not read a stream holds the
 * client to HTTP/2 flow control windows (64 KiB), however large its message.
 */
import { create, toBinary } from '@bufbuild/protobuf';
import {
  credentials,
  makeGenericClientConstructor,
  Metadata,
  status,
  type Client,
  type ServiceDefinition,
  type ServiceError,
} from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CompleteTaskRequestSchema } from '../../src/gen/fabric/v1/agent_pb.js';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  ADMIN_TOKEN,
  agentId,
  agentToken,
  closeSidecar,
  startTestSidecar,
} from '../fixtures/gateway/harness.js';
import { startCountingProxy } from '../fixtures/grpc/counting-proxy.js';

/** Size of each request's message: under grpc-js's 4 MiB receive bound, so a server takes it. */
const MESSAGE_BYTES = 3 * 1024 * 1024;
/** A `CompleteTaskRequest` (and, for any service, a message with field 1) of MESSAGE_BYTES. */
const LARGE = Buffer.from(
  toBinary(
    CompleteTaskRequestSchema,
    create(CompleteTaskRequestSchema, { taskId: 'x'.repeat(MESSAGE_BYTES - 5), attempt: 1 }),
  ),
);

let sidecar: Sidecar;

beforeAll(async () => {
  sidecar = await startTestSidecar({
    grpc: { port: 0 },
    agents: [{ name: 'mallory' }, { name: 'gone' }],
  });
});

afterAll(async () => {
  await closeSidecar(sidecar);
});

type Who =
  'no credential' | 'an unknown credential' | 'the admin credential' | "an agent's credential";

function credentialOf(who: Who): string {
  if (who === 'no credential') return '';
  if (who === 'an unknown credential') return 'x'.repeat(40);
  if (who === 'the admin credential') return ADMIN_TOKEN;
  return agentToken(sidecar, 'mallory');
}

/** A client of `paths` (`Service/Method`; `stream` ones server-streaming) sending raw bytes. */
function rawClient(address: string, paths: readonly string[]): Client {
  const definition: Record<string, ServiceDefinition[string]> = {};
  for (const path of paths) {
    const stream = path.endsWith('/Watch');
    definition[path] = {
      path: `/fabric.v1.${path}`,
      requestStream: false,
      responseStream: stream,
      requestSerialize: (b: Buffer) => b,
      requestDeserialize: (b: Buffer) => b,
      responseSerialize: (b: Buffer) => b,
      responseDeserialize: (b: Buffer) => b,
      originalName: path,
    };
  }
  const Ctor = makeGenericClientConstructor(definition, 'Raw');
  return new Ctor(address, credentials.createInsecure());
}

/** Calls `path` with `request` and resolves with the status it ends with. */
function call(client: Client, path: string, request: Buffer, credential: string) {
  const metadata = new Metadata();
  if (credential) metadata.set('authorization', `Bearer ${credential}`);
  const method = (client as unknown as Record<string, (...args: unknown[]) => unknown>)[path]!;
  return new Promise<{ code: number; errorCode: unknown }>((resolve) => {
    const done = (err: ServiceError | null) =>
      resolve({
        code: err?.code ?? status.OK,
        errorCode: err?.metadata.get('fabric-error-code')[0],
      });
    if (path.endsWith('/Watch')) {
      const stream = method.call(client, request, metadata) as NodeJS.EventEmitter & {
        cancel(): void;
      };
      stream.on('data', () => stream.cancel());
      stream.on('error', done);
      stream.on('end', () => done(null));
    } else {
      method.call(client, request, metadata, (err: ServiceError | null) => done(err));
    }
  });
}

/**
 * Makes `n` calls of `path` at once on one new connection through a counting proxy; resolves
 * with their statuses and the bytes the client sent, counted once the connection has closed.
 */
async function flood(path: string, credential: string, n: number) {
  const proxy = await startCountingProxy(sidecar.grpcAddress!);
  const client = rawClient(proxy.address, [path]);
  try {
    const results = await Promise.all(
      Array.from({ length: n }, () => call(client, path, LARGE, credential)),
    );
    client.close();
    await proxy.drained();
    return { results, sent: proxy.clientBytes };
  } finally {
    client.close();
    await proxy.close();
  }
}

describe('calls without a valid credential', () => {
  it('64 calls of 3 MiB at once without a credential: all UNAUTHENTICATED, and not one message read', async () => {
    const n = 64;
    const { results, sent } = await flood('AgentService/CompleteTask', '', n);
    expect(results.map((r) => r.code)).toEqual(Array(n).fill(status.UNAUTHENTICATED));
    expect(results.map((r) => r.errorCode)).toEqual(Array(n).fill('FABRIC_ERR_UNAUTHENTICATED'));
    // All 64 together sent less than one of their messages.
    expect(sent).toBeLessThan(MESSAGE_BYTES);
  }, 60_000);

  it.each<[string, Who, number]>([
    ['AgentService/CompleteTask', 'an unknown credential', status.UNAUTHENTICATED],
    ['AgentService/CompleteTask', 'the admin credential', status.UNAUTHENTICATED],
    ['ToolService/CallTool', 'no credential', status.UNAUTHENTICATED],
    ['PolicyService/GetPolicy', 'no credential', status.UNAUTHENTICATED],
    ['PolicyService/GetPolicy', "an agent's credential", status.PERMISSION_DENIED],
    ['EventService/Watch', 'no credential', status.UNAUTHENTICATED],
    ['EventService/Watch', "an agent's credential", status.PERMISSION_DENIED],
  ])(
    '%s with %s: refused as the handler would, before the message is read',
    async (path, who, code) => {
      const { results, sent } = await flood(path, credentialOf(who), 4);
      expect(results.map((r) => r.code)).toEqual(Array(4).fill(code));
      expect(sent).toBeLessThan(MESSAGE_BYTES);
    },
    30_000,
  );

  it("a terminated agent's credential: UNAUTHENTICATED before the message is read", async () => {
    const credential = agentToken(sidecar, 'gone');
    await sidecar.fabric!.terminate(agentId(sidecar, 'gone'));
    const { results, sent } = await flood('AgentService/CompleteTask', credential, 4);
    expect(results.map((r) => r.code)).toEqual(Array(4).fill(status.UNAUTHENTICATED));
    expect(sent).toBeLessThan(MESSAGE_BYTES);
  });
});

describe('calls with a valid credential', () => {
  it('are read whole and answered by the method (the proxy counts what is read)', async () => {
    const { results, sent } = await flood(
      'AgentService/CompleteTask',
      agentToken(sidecar, 'mallory'),
      4,
    );
    expect(results.map((r) => r.errorCode)).toEqual(Array(4).fill('FABRIC_ERR_TASK_NOT_FOUND'));
    expect(sent).toBeGreaterThan(4 * MESSAGE_BYTES);
  });

  it('are read whole on a connection whose earlier calls were refused (the resets leave it usable)', async () => {
    const proxy = await startCountingProxy(sidecar.grpcAddress!);
    const path = 'AgentService/CompleteTask';
    const client = rawClient(proxy.address, [path]);
    try {
      for (let round = 0; round < 3; round++) {
        const before = proxy.clientBytes;
        const refused = await Promise.all(
          Array.from({ length: 40 }, () => call(client, path, LARGE, '')),
        );
        expect(refused.map((r) => r.code)).toEqual(Array(40).fill(status.UNAUTHENTICATED));
        const answered = await Promise.all(
          Array.from({ length: 2 }, () =>
            call(client, path, LARGE, agentToken(sidecar, 'mallory')),
          ),
        );
        expect(answered.map((r) => r.errorCode)).toEqual(
          Array(2).fill('FABRIC_ERR_TASK_NOT_FOUND'),
        );
        expect(proxy.clientBytes - before).toBeGreaterThan(2 * MESSAGE_BYTES);
        expect(proxy.clientBytes - before).toBeLessThan(3 * MESSAGE_BYTES);
      }
    } finally {
      client.close();
      await proxy.close();
    }
  }, 30_000);
});

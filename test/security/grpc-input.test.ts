/**
 * Hostile bytes at the gRPC agent service, from a real grpc-js client that sends raw bytes:
 * the credential is checked before anything is decoded, and what cannot be decoded is the
 * caller's error (INVALID_ARGUMENT with the fabric code), not the server's (INTERNAL).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { create, fromJson, toBinary, type JsonValue } from '@bufbuild/protobuf';
import { ValueSchema } from '@bufbuild/protobuf/wkt';
import {
  credentials,
  makeGenericClientConstructor,
  Metadata,
  status,
  type ServiceDefinition,
  type ServiceError,
} from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentFabric } from '../../src/fabric.js';
import {
  CompleteHookRequestSchema,
  CompleteTaskRequestSchema,
  ReportProgressRequestSchema,
} from '../../src/gen/fabric/v1/agent_pb.js';
import { AGENT_SERVICE_DEFINITION } from '../../src/rpc/agent-service.js';
import { startGrpcServer, type GrpcServer } from '../../src/rpc/grpc-server.js';

/** The service's definition with requests sent as the given bytes, unchanged. */
const RAW_DEFINITION: ServiceDefinition = Object.fromEntries(
  Object.entries(AGENT_SERVICE_DEFINITION).map(([name, method]) => [
    name,
    { ...method, requestSerialize: (b: Buffer) => b },
  ]),
);
const RawClient = makeGenericClientConstructor(RAW_DEFINITION, 'AgentService');
type Unary = (
  req: Buffer,
  md: Metadata,
  cb: (err: ServiceError | null, res: unknown) => void,
) => void;

/** Calls `method` with raw request bytes; resolves the response or the error. */
function callRaw(
  client: InstanceType<typeof RawClient>,
  method: string,
  bytes: Uint8Array,
  credential: string,
): Promise<{ ok: true; res: unknown } | { ok: false; err: ServiceError }> {
  const md = new Metadata();
  if (credential) md.set('authorization', `Bearer ${credential}`);
  return new Promise((resolve) =>
    (client as unknown as Record<string, Unary>)[method]!.call(
      client,
      Buffer.from(bytes),
      md,
      (err, res) => resolve(err ? { ok: false, err } : { ok: true, res }),
    ),
  );
}

/** Protobuf bytes of a `google.protobuf.Value` list nested `levels` deep: `[[[…]]]`. */
function deepValueBytes(levels: number): Uint8Array {
  // Value.list_value = field 6 (length-delimited); ListValue.values = field 1 (length-delimited).
  let inner: Uint8Array = new Uint8Array([0x08, 0x00]); // Value{null_value: 0}
  for (let i = 0; i < levels; i++) {
    const list = frame(1, inner); // ListValue{values: [inner]}
    inner = frame(6, list); // Value{list_value: list}
  }
  return inner;
}

function frame(field: number, payload: Uint8Array): Uint8Array {
  const len: number[] = [];
  let n = payload.length;
  do {
    len.push((n & 0x7f) | (n > 0x7f ? 0x80 : 0));
    n >>>= 7;
  } while (n > 0);
  return Buffer.concat([Buffer.from([(field << 3) | 2, ...len]), payload]);
}

const GARBAGE = new Uint8Array([0xff, 0xff, 0xff, 0xff, 0x0f, 0x12, 0x99, 0x01]);

describe('gRPC agent service against hostile bytes (real server, raw grpc-js client)', () => {
  let dir: string;
  let fabric: AgentFabric;
  let server: GrpcServer;
  let client: InstanceType<typeof RawClient>;
  let agent: { id: string; credential: string };

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'fabric-grpc-sec-'));
    fabric = new AgentFabric(
      {},
      { hooks: { storagePath: join(dir, 'hooks'), useGitWorktree: false } },
    );
    agent = await fabric.spawn({ model: 'm', name: 'raw', executor: 'remote' });
    server = await startGrpcServer(fabric);
    client = new RawClient(server.address, credentials.createInsecure());
  });

  afterAll(async () => {
    client?.close();
    await server?.close();
    await fabric?.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('answers unauthenticated garbage with UNAUTHENTICATED, before decoding it', async () => {
    for (const method of ['heartbeat', 'completeTask', 'claimTask', 'completeHook']) {
      for (const credential of ['', 'afk_not-a-real-credential']) {
        const r = await callRaw(client, method, GARBAGE, credential);
        expect(r.ok, method).toBe(false);
        if (r.ok) continue;
        expect(r.err.code, `${method} ${credential}`).toBe(status.UNAUTHENTICATED);
        expect(r.err.metadata.get('fabric-error-code')).toEqual(['FABRIC_ERR_UNAUTHENTICATED']);
      }
    }
    // Unauthenticated over-deep values too.
    const deep = await callRaw(client, 'reportProgress', deepValueBytes(500), '');
    expect(deep.ok ? undefined : deep.err.code).toBe(status.UNAUTHENTICATED);
  });

  it('answers an agent’s undecodable bytes with INVALID_ARGUMENT and the fabric code', async () => {
    const r = await callRaw(client, 'completeTask', GARBAGE, agent.credential);
    expect(r.ok).toBe(false);
    if (r.ok) return;
    expect(r.err.code).toBe(status.INVALID_ARGUMENT);
    expect(r.err.metadata.get('fabric-error-code')).toEqual(['FABRIC_ERR_INVALID_ARGUMENT']);
    expect(r.err.details).toMatch(/request is not a valid fabric\.v1\.CompleteTaskRequest message/);
  });

  it('answers a Value nested past the decoder’s limit with INVALID_ARGUMENT, not INTERNAL', async () => {
    // ReportProgressRequest.progress = field 3; CompleteHookRequest.result = field 2.
    for (const levels of [60, 200, 1_000]) {
      const progress = frame(3, deepValueBytes(levels));
      const r = await callRaw(client, 'reportProgress', progress, agent.credential);
      expect(r.ok ? undefined : r.err.code, `${levels}`).toBe(status.INVALID_ARGUMENT);
      if (!r.ok) {
        expect(r.err.metadata.get('fabric-error-code')).toEqual(['FABRIC_ERR_INVALID_ARGUMENT']);
        expect(r.err.details).toMatch(/maximum recursion depth/);
      }
      const hook = frame(2, deepValueBytes(levels));
      const h = await callRaw(client, 'completeHook', hook, agent.credential);
      expect(h.ok ? undefined : h.err.code, `${levels}`).toBe(status.INVALID_ARGUMENT);
    }
  });

  it('answers a Value that is not JSON (NaN) with INVALID_ARGUMENT', async () => {
    const nan = create(CompleteTaskRequestSchema, {
      taskId: 't',
      attempt: 1,
      result: create(ValueSchema, { kind: { case: 'numberValue', value: Number.NaN } }),
    });
    const r = await callRaw(
      client,
      'completeTask',
      toBinary(CompleteTaskRequestSchema, nan),
      agent.credential,
    );
    expect(r.ok ? undefined : r.err.code).toBe(status.INVALID_ARGUMENT);
    if (!r.ok) expect(r.err.details).toMatch(/^result is not a JSON value/);
  });

  it('still serves valid messages, nested as deep as the decoder allows', async () => {
    const hb = await callRaw(client, 'heartbeat', new Uint8Array(), agent.credential);
    expect(hb.ok).toBe(true);
    let json: JsonValue = 1;
    for (let i = 0; i < 40; i++) json = [json];
    const task = await fabric.schedule({ agentId: agent.id, taskType: 't', payload: {} });
    const claimed = await fabric.claimTask(agent.id, { waitSeconds: 1 });
    expect(claimed?.taskId).toBe(task.id);
    const progress = create(ReportProgressRequestSchema, {
      taskId: task.id,
      attempt: 1,
      progress: fromJson(ValueSchema, json),
    });
    const r = await callRaw(
      client,
      'reportProgress',
      toBinary(ReportProgressRequestSchema, progress),
      agent.credential,
    );
    expect(r.ok, r.ok ? '' : r.err.details).toBe(true);
    const hook = await fabric.hooks!.createHook({ agentId: agent.id, workItem: { w: 1 } });
    await fabric.activateHook(agent.id, hook.hookId);
    const done = create(CompleteHookRequestSchema, {
      hookId: hook.hookId,
      result: fromJson(ValueSchema, json),
    });
    const completed = await callRaw(
      client,
      'completeHook',
      toBinary(CompleteHookRequestSchema, done),
      agent.credential,
    );
    expect(completed.ok, completed.ok ? '' : completed.err.details).toBe(true);
  });
});

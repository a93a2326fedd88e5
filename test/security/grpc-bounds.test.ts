/**
 * The gRPC door against a hostile agent (and a hostile client without a credential): a task id
 * of hundreds of thousands of characters echoed into the status message (the trailers outgrew
 * what grpc-js clients read: no answer, and the connection was dead for every later call), a
 * request a few MiB wide (a million `Value`s decoded in one turn of the event loop before any
 * check), and health watches opened without end. Real sidecar, real grpc-js clients; what
 * happens to the task in the store is checked.
 */
import { create } from '@bufbuild/protobuf';
import {
  credentials,
  makeGenericClientConstructor,
  status,
  type Client,
  type ClientUnaryCall,
  type ServiceError,
} from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  ClaimTaskRequestSchema,
  CompleteTaskRequestSchema,
  HeartbeatRequestSchema,
  type ClaimTaskResponse,
} from '../../src/gen/fabric/v1/agent_pb.js';
import { CallToolRequestSchema, type CallToolResponse } from '../../src/gen/fabric/v1/tool_pb.js';
import { AGENT_SERVICE_DEFINITION } from '../../src/rpc/agent-service.js';
import { TOOL_SERVICE_DEFINITION } from '../../src/rpc/tool-service.js';
import { MAX_GRPC_REQUEST_FIELDS } from '../../src/rpc/grpc-definition.js';
import { MAX_HEALTH_WATCHES } from '../../src/rpc/health-service.js';
import { MAX_ERROR_DETAILS_LENGTH, MAX_STATUS_MESSAGE_BYTES } from '../../src/rpc/rpc-call.js';
import type { Sidecar } from '../../src/server/sidecar.js';
import { TaskStatus } from '../../src/task.js';
import {
  agentId,
  agentToken,
  closeSidecar,
  DEFAULT_ALLOW,
  HANGING_UPSTREAM,
  startTestSidecar,
  until,
} from '../fixtures/gateway/harness.js';
import { failure, grpcClient, openStream, unary } from '../fixtures/grpc-client.js';

let sidecar: Sidecar;
let client: Client;
let token: string;

beforeAll(async () => {
  sidecar = await startTestSidecar({ grpc: { port: 0 }, agents: [{ name: 'mallory' }] });
  client = grpcClient(AGENT_SERVICE_DEFINITION, sidecar.grpcAddress!);
  token = agentToken(sidecar, 'mallory');
});

afterAll(async () => {
  client?.close();
  await closeSidecar(sidecar);
});

const heartbeat = () =>
  unary(client, 'heartbeat', create(HeartbeatRequestSchema), token, {
    deadline: Date.now() + 5000,
  });

describe('an id the size of the request', () => {
  it.each([
    ['ASCII, 20 000', 'x'.repeat(20_000)],
    ['ASCII, 200 000', 'x'.repeat(200_000)],
    ['two-byte, 50 000', 'é'.repeat(50_000)],
    ['astral, 30 000', '😀'.repeat(30_000)],
  ])(
    '%s characters: NOT_FOUND with bounded trailers, and the connection serves on',
    async (_, id) => {
      const err = await failure(
        unary(
          client,
          'completeTask',
          create(CompleteTaskRequestSchema, { taskId: id, attempt: 1 }),
          token,
          {
            deadline: Date.now() + 5000,
          },
        ),
      );
      expect(err.code, err.details.slice(0, 100)).toBe(status.NOT_FOUND);
      expect(err.metadata.get('fabric-error-code')).toEqual(['FABRIC_ERR_TASK_NOT_FOUND']);
      expect(Buffer.byteLength(err.details)).toBeLessThanOrEqual(MAX_STATUS_MESSAGE_BYTES);
      expect(err.details).toMatch(/^task .*…$/s);
      const details = err.metadata.get('fabric-error-details')[0] as string;
      expect(details.length).toBeLessThanOrEqual(MAX_ERROR_DETAILS_LENGTH);
      expect(() => JSON.parse(details) as unknown).not.toThrow();
      await heartbeat();
    },
  );
});

/** A CompleteTask result that is a list of `n` nulls (two fields each on the wire). */
function nulls(taskId: string, attempt: number, n: number) {
  return create(CompleteTaskRequestSchema, {
    taskId,
    attempt,
    result: {
      kind: {
        case: 'listValue',
        value: {
          values: Array.from({ length: n }, () => ({ kind: { case: 'nullValue', value: 0 } })),
        },
      },
    },
  } as never);
}

describe('a request wider than the door takes', () => {
  it('is refused before it is decoded, and the task is untouched; one within the bound completes', async () => {
    const task = await sidecar.fabric!.schedule({
      agentId: agentId(sidecar, 'mallory'),
      taskType: 't',
      payload: 1,
    });
    const claimed = await unary<ClaimTaskResponse>(
      client,
      'claimTask',
      create(ClaimTaskRequestSchema, { waitSeconds: 5 }),
      token,
    );
    expect(claimed.task?.taskId).toBe(task.id);
    const wide = MAX_GRPC_REQUEST_FIELDS / 2 + 1_000;
    const err = await failure(unary(client, 'completeTask', nulls(task.id, 1, wide), token));
    expect(err.code).toBe(status.INVALID_ARGUMENT);
    expect(err.details).toContain(`holds more than ${MAX_GRPC_REQUEST_FIELDS} fields`);
    expect((await sidecar.fabric!.getTask(task.id)).status).toBe(TaskStatus.RUNNING);
    // Just within: decoded, and the result (under 1 MiB as JSON) is kept.
    const within = MAX_GRPC_REQUEST_FIELDS / 2 - 1_000;
    await unary(client, 'completeTask', nulls(task.id, 1, within), token);
    const done = await sidecar.fabric!.getTask(task.id);
    expect(done.status).toBe(TaskStatus.COMPLETED);
    expect((done.result as unknown[]).length).toBe(within);
  });
});

describe('health watches without a credential', () => {
  it(`are held open up to ${MAX_HEALTH_WATCHES} at once; one more is RESOURCE_EXHAUSTED, and a freed slot is reused`, async () => {
    const Health = makeGenericClientConstructor(
      {
        watch: {
          path: '/grpc.health.v1.Health/Watch',
          requestStream: false,
          responseStream: true,
          requestSerialize: (b: Buffer) => b,
          requestDeserialize: (b: Buffer) => b,
          responseSerialize: (b: Buffer) => b,
          responseDeserialize: (b: Buffer) => b,
        },
      },
      'Health',
    );
    // Several connections: one connection opens at most 100 streams at a time.
    const channels = Array.from(
      { length: Math.ceil(MAX_HEALTH_WATCHES / 90) + 1 },
      (_, i) =>
        new Health(sidecar.grpcAddress!, credentials.createInsecure(), {
          'grpc.primary_user_agent': `watcher-${i}`,
        }) as unknown as Client,
    );
    const open = [];
    try {
      for (let i = 0; i < MAX_HEALTH_WATCHES; i++) {
        const s = openStream<Buffer>(channels[i % channels.length]!, 'watch', Buffer.alloc(0), '');
        open.push(s);
      }
      // Every one of them is served: its first status arrives.
      await Promise.all(open.map((s) => s.first(1)));
      const extra = openStream<Buffer>(channels.at(-1)!, 'watch', Buffer.alloc(0), '');
      expect((await extra.ended)?.code).toBe(status.RESOURCE_EXHAUSTED);
      open.pop()!.stream.cancel();
      // The server hears the cancel shortly; then a new watch is served again.
      let again;
      for (let i = 0; i < 50; i++) {
        again = openStream<Buffer>(channels[0]!, 'watch', Buffer.alloc(0), '');
        const first = await Promise.race([again.first(1).then(() => 'ok'), again.ended]);
        if (first === 'ok') break;
        await new Promise((r) => setTimeout(r, 100));
      }
      expect(again!.messages.length).toBe(1);
      again!.stream.cancel();
    } finally {
      for (const s of open) s.stream.cancel();
      for (const c of channels) c.close();
    }
  }, 60_000);
});

describe("an agent's calls in flight", () => {
  it('at most grpc.maxInflightPerAgent at once: one more is RESOURCE_EXHAUSTED, others unaffected', async () => {
    const held = await startTestSidecar({
      grpc: { port: 0, maxInflightPerAgent: 2 },
      upstreams: { slow: HANGING_UPSTREAM },
      policies: [DEFAULT_ALLOW],
      agents: [{ name: 'mallory' }, { name: 'watcher' }],
    } as never);
    const tools = grpcClient(TOOL_SERVICE_DEFINITION, held.grpcAddress!);
    try {
      const mallory = agentToken(held, 'mallory');
      const watcher = agentToken(held, 'watcher');
      const call = (credential: string, name: string, started?: (c: ClientUnaryCall) => void) =>
        unary<CallToolResponse>(
          tools,
          'callTool',
          create(CallToolRequestSchema, { name }),
          credential,
          started ? { started } : {},
        );
      // How many `hang` calls reached the upstream (asked by another agent).
      const pending = async () => {
        const { result } = await call(watcher, 'slow__pending');
        const content = result?.content as { text?: string }[] | undefined;
        return Number(content?.[0]?.text ?? NaN);
      };
      const calls: ClientUnaryCall[] = [];
      const hanging = [0, 1].map(() =>
        call(mallory, 'slow__hang', (c) => calls.push(c)).catch((e: ServiceError) => e),
      );
      await until(async () => (await pending()) === 2);
      const third = await failure(call(mallory, 'slow__hang'));
      expect(third.code).toBe(status.RESOURCE_EXHAUSTED);
      expect(third.metadata.get('fabric-error-code')).toEqual(['FABRIC_ERR_INFLIGHT_LIMIT']);
      expect(third.details).toContain('grpc.maxInflightPerAgent');
      expect(await pending()).toBe(2); // the refused call never reached the upstream
      // Any method of the agent's counts, not only tool calls.
      const hb = await failure(heartbeatOn(held, mallory));
      expect(hb.code).toBe(status.RESOURCE_EXHAUSTED);
      // A call its client gives up after it was sent keeps its slot while the upstream may go
      // on with it: this one never answers a cancelled call, so until its callTimeoutSeconds
      // (cancel-holds-slot-doors: the slot frees when the upstream answers).
      calls[0]!.cancel();
      expect((await hanging[0]) as ServiceError).toMatchObject({ code: status.CANCELLED });
      await until(async () => (await pending()) === 1); // the cancel reached the upstream
      expect((await failure(heartbeatOn(held, mallory))).code).toBe(status.RESOURCE_EXHAUSTED);
      calls[1]!.cancel();
      await hanging[1];
    } finally {
      tools.close();
      await closeSidecar(held);
    }
  });
});

async function heartbeatOn(on: Sidecar, credential: string): Promise<unknown> {
  const agents = grpcClient(AGENT_SERVICE_DEFINITION, on.grpcAddress!);
  try {
    return await unary(agents, 'heartbeat', create(HeartbeatRequestSchema), credential, {
      deadline: Date.now() + 5000,
    });
  } finally {
    agents.close();
  }
}

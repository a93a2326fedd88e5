import { execFile, execFileSync } from 'node:child_process';
import { promisify } from 'node:util';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { create, fromJson, toJson, type JsonValue } from '@bufbuild/protobuf';
import { ValueSchema } from '@bufbuild/protobuf/wkt';
import { status, type Client, type ServiceError } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AgentFabric } from '../../src/fabric.js';
import {
  ClaimTaskRequestSchema,
  CompleteHookRequestSchema,
  CompleteTaskRequestSchema,
  GetHookRequestSchema,
  HeartbeatRequestSchema,
  ActivateHookRequestSchema,
  ReportProgressRequestSchema,
  type ClaimTaskResponse,
  type GetHookResponse,
  type HeartbeatResponse,
  type ActivateHookResponse,
  type CompleteHookResponse,
} from '../../src/gen/fabric/v1/agent_pb.js';
import { AGENT_SERVICE_DEFINITION } from '../../src/rpc/agent-service.js';
import type { GrpcServer } from '../../src/rpc/grpc-server.js';
import { grpcClient, unary as call } from '../fixtures/grpc-client.js';
import { startGrpcFabric, type GrpcFabric } from '../fixtures/grpc/fabric-server.js';
import { generatePythonStubs, PYTHON, pythonGrpc } from '../fixtures/grpc/python.js';
import { TaskStatus } from '../../src/task.js';

const root = new URL('../../', import.meta.url);

describe('the agent protocol over gRPC (real server, real grpc-js client, real fabric)', () => {
  let grpc: GrpcFabric;
  let fabric: AgentFabric;
  let server: GrpcServer;
  let client: Client;
  let alice: { id: string; credential: string };
  let bob: { id: string; credential: string };

  beforeAll(async () => {
    grpc = await startGrpcFabric('grpc');
    ({ fabric, server } = grpc);
    alice = await fabric.spawn({ model: 'm', name: 'alice', executor: 'remote' });
    bob = await fabric.spawn({ model: 'm', name: 'bob', executor: 'remote' });
    client = grpcClient(AGENT_SERVICE_DEFINITION, server.address);
  });

  afterAll(async () => {
    client?.close();
    await grpc?.close();
  });

  it('refuses calls without a valid agent credential', async () => {
    const none = await call(client, 'heartbeat', create(HeartbeatRequestSchema), '').catch(
      (e: ServiceError) => e,
    );
    expect(none).toMatchObject({ code: status.UNAUTHENTICATED });
    const wrong = await call(client, 'heartbeat', create(HeartbeatRequestSchema), 'afk_nope').catch(
      (e: ServiceError) => e,
    );
    expect(wrong).toMatchObject({ code: status.UNAUTHENTICATED });
    expect((wrong as ServiceError).metadata.get('fabric-error-code')).toEqual([
      'FABRIC_ERR_UNAUTHENTICATED',
    ]);
  });

  it('heartbeats, claims, reports progress and completes a task as the calling agent', async () => {
    const hb = await call<HeartbeatResponse>(
      client,
      'heartbeat',
      create(HeartbeatRequestSchema),
      alice.credential,
    );
    expect(hb).toMatchObject({ agentId: alice.id, status: 'HEALTHY' });
    const task = await fabric.schedule({
      agentId: alice.id,
      taskType: 'review',
      payload: { pr: 42, tags: ['a'] },
    });
    const claimed = await call<ClaimTaskResponse>(
      client,
      'claimTask',
      create(ClaimTaskRequestSchema, { waitSeconds: 5 }),
      alice.credential,
    );
    expect(claimed.task).toMatchObject({ taskId: task.id, attempt: 1, taskType: 'review' });
    expect(toJson(ValueSchema, claimed.task!.payload!)).toEqual({ pr: 42, tags: ['a'] });
    await call(
      client,
      'reportProgress',
      create(ReportProgressRequestSchema, {
        taskId: task.id,
        attempt: 1,
        progress: fromJson(ValueSchema, { pct: 50 }),
      }),
      alice.credential,
    );
    // Another agent cannot finish it.
    const foreign = await call(
      client,
      'completeTask',
      create(CompleteTaskRequestSchema, { taskId: task.id, attempt: 1 }),
      bob.credential,
    ).catch((e: ServiceError) => e);
    expect(foreign).toMatchObject({ code: status.NOT_FOUND });
    await call(
      client,
      'completeTask',
      create(CompleteTaskRequestSchema, {
        taskId: task.id,
        attempt: 1,
        result: fromJson(ValueSchema, { ok: true } as JsonValue),
      }),
      alice.credential,
    );
    expect(await fabric.waitForTask(task.id)).toMatchObject({
      status: TaskStatus.COMPLETED,
      result: { ok: true },
      progress: { pct: 50 },
    });
    const stale = await call(
      client,
      'completeTask',
      create(CompleteTaskRequestSchema, { taskId: task.id, attempt: 2 }),
      alice.credential,
    ).catch((e: ServiceError) => e);
    expect(stale).toMatchObject({ code: status.FAILED_PRECONDITION });
  });

  it('serves the work on the agent’s hook ("if there is work on your hook, you run it")', async () => {
    const empty = await call<GetHookResponse>(
      client,
      'getHook',
      create(GetHookRequestSchema),
      alice.credential,
    );
    expect(empty.hook).toBeUndefined();
    const hook = await fabric.hooks!.createHook({
      agentId: alice.id,
      workItem: { task: 'refactor', file: 'api.py' },
    });
    const got = await call<GetHookResponse>(
      client,
      'getHook',
      create(GetHookRequestSchema),
      alice.credential,
    );
    expect(got.hook).toMatchObject({ hookId: hook.hookId, status: 'PENDING', agentId: alice.id });
    expect(toJson(ValueSchema, got.hook!.workItem!)).toEqual({ task: 'refactor', file: 'api.py' });
    const foreign = await call(
      client,
      'activateHook',
      create(ActivateHookRequestSchema, { hookId: hook.hookId }),
      bob.credential,
    ).catch((e: ServiceError) => e);
    expect(foreign).toMatchObject({ code: status.NOT_FOUND });
    const active = await call<ActivateHookResponse>(
      client,
      'activateHook',
      create(ActivateHookRequestSchema, { hookId: hook.hookId }),
      alice.credential,
    );
    expect(active.hook?.status).toBe('ACTIVE');
    const done = await call<CompleteHookResponse>(
      client,
      'completeHook',
      create(CompleteHookRequestSchema, {
        hookId: hook.hookId,
        result: fromJson(ValueSchema, { changed: 1 }),
      }),
      alice.credential,
    );
    expect(done.hook?.status).toBe('COMPLETED');
    expect(toJson(ValueSchema, done.hook!.result!)).toEqual({ changed: 1 });
  });
});

describe('generated protobuf code', () => {
  it('is exactly what buf generates from proto/ (never edited by hand)', async () => {
    const out = await mkdtemp(join(tmpdir(), 'fabric-gen-'));
    try {
      execFileSync('npx', ['buf', 'generate', '--output', out], {
        cwd: new URL('.', root),
        stdio: 'pipe',
      });
      for (const file of [
        'src/gen/fabric/v1/agent_pb.ts',
        // The vendored gRPC wire specs (proto-grpc/) too.
        'src/gen/grpc/health/v1/health_pb.ts',
        'src/gen/grpc/reflection/v1/reflection_pb.ts',
      ]) {
        const fresh = await readFile(join(out, file), 'utf8');
        const committed = await readFile(new URL(file, root), 'utf8');
        expect(committed).toBe(fresh);
      }
    } finally {
      await rm(out, { recursive: true, force: true });
    }
  });
});

describe('a Python agent over gRPC (cross-language)', () => {
  // CI installs python3-grpcio; elsewhere the test runs when the packages are there.
  it.runIf(pythonGrpc || process.env.CI !== undefined)(
    'runs its hook and a task from Python',
    async () => {
      const { dir, fabric, server, close } = await startGrpcFabric('py');
      try {
        const agent = await fabric.spawn({ model: 'm', name: 'py', executor: 'remote' });
        const hook = await fabric.hooks!.createHook({
          agentId: agent.id,
          workItem: { task: 'lint' },
        });
        const task = await fabric.schedule({
          agentId: agent.id,
          taskType: 'add',
          payload: { a: 2, b: 3 },
        });
        const generated = join(dir, 'generated');
        execFileSync('mkdir', ['-p', generated]);
        generatePythonStubs('proto/fabric/v1/agent.proto', generated);
        // Asynchronously: the server runs in this process and must keep serving meanwhile.
        const { stdout: out } = await promisify(execFile)(
          PYTHON,
          [
            new URL('test/fixtures/grpc/python_agent.py', root).pathname,
            generated,
            server.address,
            agent.credential,
          ],
          { encoding: 'utf8', timeout: 30_000 },
        );
        const steps = out
          .trim()
          .split('\n')
          .map((l) => JSON.parse(l) as Record<string, unknown>);
        expect(steps).toEqual([
          { step: 'heartbeat', agent: agent.id, status: 'HEALTHY' },
          { step: 'hook_progress', status: 'ACTIVE' },
          { step: 'hook', id: hook.hookId, status: 'COMPLETED' },
          { step: 'ack', id: task.id },
          { step: 'task', id: task.id },
          { step: 'usage' },
          { step: 'refused', code: 'UNAUTHENTICATED' },
        ]);
        expect(await fabric.waitForTask(task.id)).toMatchObject({
          status: TaskStatus.COMPLETED,
          result: { sum: 5 },
        });
        expect(await fabric.hooks!.getHook(hook.hookId)).toMatchObject({
          result: { ranBy: 'python', item: { task: 'lint' } },
          progressNote: 'halfway',
        });
        expect(fabric.budgets.getStatus(agent.id)).toMatchObject({
          tokensUsed: 1234,
          costUsed: 0.5,
        });
      } finally {
        await close();
      }
    },
  );
});

describe('the sidecar’s gRPC listener', () => {
  it('serves the agent service when the config has a grpc section, and closes with the sidecar', async () => {
    const { startTestSidecar, closeSidecar, agentToken } =
      await import('../fixtures/gateway/harness.js');
    const sidecar = await startTestSidecar({ grpc: { port: 0 }, agents: [{ name: 'g' }] });
    const c = grpcClient(AGENT_SERVICE_DEFINITION, sidecar.grpcAddress!);
    try {
      const hb = await call<HeartbeatResponse>(
        c,
        'heartbeat',
        create(HeartbeatRequestSchema),
        agentToken(sidecar, 'g'),
      );
      expect(hb.status).toBe('HEALTHY');
    } finally {
      c.close();
      await closeSidecar(sidecar);
    }
  });
});

/**
 * The agent-side RPCs beyond claim/complete, over a real grpc-js client against a real server
 * and fabric: usage, hook progress, the hook's error, the notice of tasks the fabric ended, and
 * what an agent learns (nothing) about tasks and hooks that are not its own.
 */
import { create } from '@bufbuild/protobuf';
import { status, type Client, type ServiceError } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AgentFabric } from '../../src/fabric.js';
import {
  ActivateHookRequestSchema,
  ClaimTaskRequestSchema,
  CompleteTaskRequestSchema,
  FailHookRequestSchema,
  HeartbeatRequestSchema,
  RecordHookProgressRequestSchema,
  RecordUsageRequestSchema,
  ReportProgressRequestSchema,
  type ClaimTaskResponse,
  type FailHookResponse,
  type HeartbeatResponse,
  type RecordHookProgressResponse,
  type ReportProgressResponse,
} from '../../src/gen/fabric/v1/agent_pb.js';
import { AGENT_SERVICE_DEFINITION } from '../../src/rpc/agent-service.js';
import type { GrpcServer } from '../../src/rpc/grpc-server.js';
import { failure, grpcClient, unary as call } from '../fixtures/grpc-client.js';
import { startGrpcFabric, type GrpcFabric } from '../fixtures/grpc/fabric-server.js';
import { TaskStatus } from '../../src/task.js';

describe('agent-side RPCs over gRPC', () => {
  let grpc: GrpcFabric;
  let fabric: AgentFabric;
  let server: GrpcServer;
  let client: Client;
  let alice: { id: string; credential: string };
  let bob: { id: string; credential: string };

  beforeAll(async () => {
    grpc = await startGrpcFabric('grpc-side');
    ({ fabric, server } = grpc);
    alice = await fabric.spawn({ model: 'm', name: 'alice', executor: 'remote' });
    bob = await fabric.spawn({ model: 'm', name: 'bob', executor: 'remote' });
    client = grpcClient(AGENT_SERVICE_DEFINITION, server.address);
  });

  afterAll(async () => {
    client?.close();
    await grpc?.close();
  });

  it('records usage against the calling agent only, and refuses bad amounts', async () => {
    await call(
      client,
      'recordUsage',
      create(RecordUsageRequestSchema, { tokens: 700n, cost: 0.25 }),
      alice.credential,
    );
    expect(fabric.budgets.getStatus(alice.id)).toMatchObject({ tokensUsed: 700, costUsed: 0.25 });
    expect(fabric.budgets.getStatus(bob.id)).toMatchObject({ tokensUsed: 0, costUsed: 0 });
    for (const bad of [
      { tokens: -1n, cost: 0 },
      { tokens: 2n ** 60n, cost: 0 },
      { tokens: 1n, cost: Number.NaN },
      { tokens: 1n, cost: -5 },
      { tokens: 1n, cost: Number.POSITIVE_INFINITY },
    ]) {
      const e = await failure(
        call(client, 'recordUsage', create(RecordUsageRequestSchema, bad), alice.credential),
      );
      expect(e.code).toBe(status.INVALID_ARGUMENT);
    }
    // Nothing of the refused amounts was recorded.
    expect(fabric.budgets.getStatus(alice.id)).toMatchObject({ tokensUsed: 700, costUsed: 0.25 });
  });

  it('records hook progress, shows a failed hook its error, and hides foreign hooks', async () => {
    const hook = await fabric.hooks!.createHook({ agentId: alice.id, workItem: { n: 1 } });
    await call(
      client,
      'activateHook',
      create(ActivateHookRequestSchema, { hookId: hook.hookId }),
      alice.credential,
    );
    const progressed = await call<RecordHookProgressResponse>(
      client,
      'recordHookProgress',
      create(RecordHookProgressRequestSchema, { hookId: hook.hookId, note: 'step 1' }),
      alice.credential,
    );
    expect(progressed.hook).toMatchObject({ hookId: hook.hookId, status: 'ACTIVE' });
    expect((await fabric.hooks!.getHook(hook.hookId)).progressNote).toBe('step 1');

    const long = await failure(
      call(
        client,
        'recordHookProgress',
        create(RecordHookProgressRequestSchema, { hookId: hook.hookId, note: 'x'.repeat(5000) }),
        alice.credential,
      ),
    );
    expect(long.code).toBe(status.INVALID_ARGUMENT);
    expect((await fabric.hooks!.getHook(hook.hookId)).progressNote).toBe('step 1');

    // Bob gets for Alice's hook exactly what he gets for a hook that does not exist.
    const foreign = await failure(
      call(
        client,
        'recordHookProgress',
        create(RecordHookProgressRequestSchema, { hookId: hook.hookId, note: 'mine' }),
        bob.credential,
      ),
    );
    const missingId = 'hk-0000000000-0123456789abcdef';
    const missing = await failure(
      call(
        client,
        'recordHookProgress',
        create(RecordHookProgressRequestSchema, { hookId: missingId, note: 'mine' }),
        bob.credential,
      ),
    );
    expect(foreign.code).toBe(status.NOT_FOUND);
    expect(missing.code).toBe(status.NOT_FOUND);
    expect(foreign.details.replace(hook.hookId, 'ID')).toBe(
      missing.details.replace(missingId, 'ID'),
    );
    expect(foreign.metadata.get('fabric-error-code')).toEqual(
      missing.metadata.get('fabric-error-code'),
    );
    expect((await fabric.hooks!.getHook(hook.hookId)).progressNote).toBe('step 1');

    const failed = await call<FailHookResponse>(
      client,
      'failHook',
      create(FailHookRequestSchema, { hookId: hook.hookId, code: 'E_LINT', message: 'lint broke' }),
      alice.credential,
    );
    expect(failed.hook?.error).toMatchObject({ code: 'E_LINT', message: 'lint broke' });
  });

  it('answers a foreign task exactly like an unknown one and changes nothing', async () => {
    const task = await fabric.schedule({ agentId: alice.id, taskType: 't', payload: {} });
    const claimed = await call<ClaimTaskResponse>(
      client,
      'claimTask',
      create(ClaimTaskRequestSchema, { waitSeconds: 5 }),
      alice.credential,
    );
    expect(claimed.task?.taskId).toBe(task.id);
    const asBob = (taskId: string): Promise<ServiceError> =>
      failure(
        call(
          client,
          'completeTask',
          create(CompleteTaskRequestSchema, { taskId, attempt: 1 }),
          bob.credential,
        ),
      );
    const foreign = await asBob(task.id);
    const missing = await asBob('t_nope_1');
    expect(foreign.code).toBe(status.NOT_FOUND);
    expect(foreign.details.replace(task.id, 'ID')).toBe(missing.details.replace('t_nope_1', 'ID'));
    expect(foreign.metadata.get('fabric-error-code')).toEqual(['FABRIC_ERR_TASK_NOT_FOUND']);
    expect(await fabric.getTask(task.id)).toMatchObject({
      status: TaskStatus.RUNNING,
      assignedAgentId: alice.id,
    });
    await call(
      client,
      'completeTask',
      create(CompleteTaskRequestSchema, { taskId: task.id, attempt: 1 }),
      alice.credential,
    );
  });

  it('tells a remote worker, once, which of its tasks the fabric cancelled or timed out', async () => {
    const claim = async (): Promise<NonNullable<ClaimTaskResponse['task']>> =>
      (
        await call<ClaimTaskResponse>(
          client,
          'claimTask',
          create(ClaimTaskRequestSchema, { waitSeconds: 5 }),
          alice.credential,
        )
      ).task!;
    const cancelled = await fabric.schedule({ agentId: alice.id, taskType: 't', payload: {} });
    const first = await claim();
    const slow = await fabric.schedule({
      agentId: alice.id,
      taskType: 't',
      payload: {},
      timeoutSeconds: 0.05,
    });
    const second = await claim();
    expect([first.taskId, second.taskId]).toEqual([cancelled.id, slow.id]);
    await fabric.cancelTask(cancelled.id, 'operator changed their mind');
    await expect.poll(async () => (await fabric.getTask(slow.id)).status).toBe(TaskStatus.TIMEOUT);

    // Bob hears nothing of Alice's tasks.
    const bobs = await call<HeartbeatResponse>(
      client,
      'heartbeat',
      create(HeartbeatRequestSchema),
      bob.credential,
    );
    expect(bobs.endedTasks).toEqual([]);

    const hb = await call<HeartbeatResponse>(
      client,
      'heartbeat',
      create(HeartbeatRequestSchema),
      alice.credential,
    );
    expect(hb.endedTasks.map((t) => ({ ...t, $typeName: undefined }))).toEqual([
      {
        $typeName: undefined,
        taskId: cancelled.id,
        attempt: 1,
        code: 'FABRIC_ERR_CANCELLED',
        message: 'operator changed their mind',
      },
      {
        $typeName: undefined,
        taskId: slow.id,
        attempt: 1,
        code: 'FABRIC_ERR_TASK_TIMEOUT',
        message: expect.stringContaining('timeout') as unknown as string,
      },
    ]);
    // Told once: the next answer has no notices; a report on the ended task is refused.
    const again = await call<ReportProgressResponse>(
      client,
      'heartbeat',
      create(HeartbeatRequestSchema),
      alice.credential,
    );
    expect(again.endedTasks).toEqual([]);
    const late = await failure(
      call(
        client,
        'reportProgress',
        create(ReportProgressRequestSchema, { taskId: cancelled.id, attempt: 1 }),
        alice.credential,
      ),
    );
    expect(late.code).toBe(status.FAILED_PRECONDITION);
    // The slots are free again.
    expect(fabric.scheduler.agentLoad(alice.id).runningTasks).toBe(0);
  });
});

import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { create, fromJson, toJson, type DescMessage, type JsonValue } from '@bufbuild/protobuf';
import { durationFromMs, ValueSchema } from '@bufbuild/protobuf/wkt';
import { status, type Client, type ClientUnaryCall } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import type { AgentFabric } from '../../src/fabric.js';
import {
  ClaimTaskRequestSchema,
  CompleteTaskRequestSchema,
  type ClaimTaskResponse,
} from '../../src/gen/fabric/v1/agent_pb.js';
import {
  FabricService,
  type CreateHookResponse,
  type CreatePoolResponse,
  type FabricServiceGetHookResponse,
  type GetPoolResponse,
  type GetStatsResponse,
  type GetTaskResponse,
  type ListAgentsResponse,
  type ListHooksResponse,
  type ListPoolsResponse,
  type ListTasksResponse,
  type ReassignHookResponse,
  type ScalePoolResponse,
  type ScheduleTaskResponse,
  type SpawnAgentResponse,
  type WaitTaskResponse,
} from '../../src/gen/fabric/v1/fabric_pb.js';
import { HookStatus, TaskStatus } from '../../src/gen/fabric/v1/fabric_types_pb.js';
import { AGENT_SERVICE_DEFINITION } from '../../src/rpc/agent-service.js';
import { grpcDefinition } from '../../src/rpc/grpc-definition.js';
import type { GrpcServer } from '../../src/rpc/grpc-server.js';
import { failure, grpcClient, unary as call } from '../fixtures/grpc-client.js';
import { startGrpcFabric, type GrpcFabric } from '../fixtures/grpc/fabric-server.js';

const ADMIN = 'admin-credential-for-the-fabric-service-test';
const value = (v: JsonValue) => fromJson(ValueSchema, v);
const input = <D extends DescMessage>(schema: D, json: JsonValue) => fromJson(schema, json);
const method = (name: string) => FabricService.methods.find((m) => m.localName === name)!;

describe('FabricService over gRPC (real server, real grpc-js clients, real fabric and git)', () => {
  let grpc: GrpcFabric;
  let fabric: AgentFabric;
  let server: GrpcServer;
  let admin: Client;
  let agents: Client;
  let outsider: { id: string; credential: string };

  beforeAll(async () => {
    grpc = await startGrpcFabric('svc', {
      adminCredentials: [ADMIN],
      server: { maxWaitTaskSeconds: 30 },
    });
    ({ fabric, server } = grpc);
    outsider = await fabric.spawn({ model: 'm', name: 'outsider', executor: 'remote' });
    admin = grpcClient(grpcDefinition(FabricService), server.address);
    agents = grpcClient(AGENT_SERVICE_DEFINITION, server.address);
  });

  afterAll(async () => {
    admin?.close();
    agents?.close();
    await grpc?.close();
  });

  it('refuses every method to an agent credential (PERMISSION_DENIED) and to none (UNAUTHENTICATED), changing nothing', async () => {
    const before = {
      agents: (await fabric.listAgents()).length,
      pools: (await fabric.listPools()).length,
      tasks: fabric.scheduler.listTasks().length,
    };
    expect(FabricService.methods.length).toBeGreaterThanOrEqual(20);
    for (const m of FabricService.methods) {
      // Requests that would do something if they were let through.
      const req = input(
        m.input,
        m.localName === 'spawnAgent'
          ? { name: 'intruder', model: 'm' }
          : m.localName === 'createPool'
            ? { poolId: 'stolen', model: 'm', minAgents: 1 }
            : m.localName === 'scheduleTask'
              ? { agentId: outsider.id, taskType: 't' }
              : {},
      );
      const denied = await failure(call(admin, m.localName, req, outsider.credential));
      expect({ method: m.name, code: denied.code }).toEqual({
        method: m.name,
        code: status.PERMISSION_DENIED,
      });
      expect(denied.metadata.get('fabric-error-code')).toEqual(['FABRIC_ERR_PERMISSION_DENIED']);
      const anonymous = await failure(call(admin, m.localName, req, ''));
      expect({ method: m.name, code: anonymous.code }).toEqual({
        method: m.name,
        code: status.UNAUTHENTICATED,
      });
    }
    expect({
      agents: (await fabric.listAgents()).length,
      pools: (await fabric.listPools()).length,
      tasks: fabric.scheduler.listTasks().length,
    }).toEqual(before);
  });

  it('spawns a remote agent, schedules a task, and WaitTask returns the result its worker completed over AgentService', async () => {
    const { spawned } = await call<SpawnAgentResponse>(
      admin,
      'spawnAgent',
      input(method('spawnAgent').input, {
        name: 'worker',
        model: 'm',
        executor: 'remote',
        labels: { team: 'a' },
      }),
      ADMIN,
    );
    expect(spawned!.credential.length).toBeGreaterThan(30);
    expect(spawned!.agent).toMatchObject({
      name: 'worker',
      executor: 'remote',
      labels: { team: 'a' },
    });
    const workerId = spawned!.agent!.agentId;
    // The credential is the one the fabric knows for that agent.
    expect(fabric.authenticate(spawned!.credential)).toMatchObject({ agentId: workerId });

    const { task } = await call<ScheduleTaskResponse>(
      admin,
      'scheduleTask',
      input(method('scheduleTask').input, {
        agentId: workerId,
        taskType: 'review',
        payload: { pr: 7 },
        options: { priority: 'TASK_PRIORITY_HIGH', tenant: 'acme' },
      }),
      ADMIN,
    );
    expect(task).toMatchObject({ status: TaskStatus.PENDING, agentId: workerId, tenant: 'acme' });
    expect(fabric.scheduler.getTask(task!.taskId).priority).toBe(1); // guide's HIGH

    const waiting = call<WaitTaskResponse>(
      admin,
      'waitTask',
      input(method('waitTask').input, { taskId: task!.taskId }),
      ADMIN,
    );
    const claimed = await call<ClaimTaskResponse>(
      agents,
      'claimTask',
      create(ClaimTaskRequestSchema, { waitSeconds: 5 }),
      spawned!.credential,
    );
    expect(claimed.task?.taskId).toBe(task!.taskId);
    await call(
      agents,
      'completeTask',
      create(CompleteTaskRequestSchema, {
        taskId: task!.taskId,
        attempt: claimed.task!.attempt,
        result: value({ approved: true }),
      }),
      spawned!.credential,
    );
    const done = (await waiting).task!;
    expect(done.status).toBe(TaskStatus.COMPLETED);
    expect(done.assignedAgentId).toBe(workerId);
    expect(toJson(ValueSchema, done.result!)).toEqual({ approved: true });
    expect(JSON.parse(Buffer.from(done.resultJson).toString())).toEqual({ approved: true });
    expect(done.finishedAt).toBeDefined();

    const got = await call<GetTaskResponse>(
      admin,
      'getTask',
      input(method('getTask').input, { taskId: task!.taskId }),
      ADMIN,
    );
    expect(got.task!.status).toBe(TaskStatus.COMPLETED);
  });

  it('keeps a 2^53+1 payload exact through payload_json (and gives the worker the nearest double as a Value)', async () => {
    const text = '{"id":9007199254740993,"neg":-12345678901234567890,"f":1.5,"s":"x"}';
    const { task } = await call<ScheduleTaskResponse>(
      admin,
      'scheduleTask',
      input(method('scheduleTask').input, {
        agentId: outsider.id,
        taskType: 'big',
        payloadJson: Buffer.from(text).toString('base64'),
      }),
      ADMIN,
    );
    expect(Buffer.from(task!.payloadJson).toString()).toBe(text);
    const got = await call<GetTaskResponse>(
      admin,
      'getTask',
      input(method('getTask').input, { taskId: task!.taskId }),
      ADMIN,
    );
    expect(Buffer.from(got.task!.payloadJson).toString()).toBe(text);
    expect(toJson(ValueSchema, got.task!.payload!)).toMatchObject({ id: 9007199254740992 });
    // The remote worker still gets its task (the Value form cannot hold the exact integer).
    const claimed = await call<ClaimTaskResponse>(
      agents,
      'claimTask',
      create(ClaimTaskRequestSchema, { waitSeconds: 5 }),
      outsider.credential,
    );
    expect(claimed.task?.taskId).toBe(task!.taskId);
    await fabric.cancelTask(task!.taskId);

    const both = await failure(
      call(
        admin,
        'scheduleTask',
        input(method('scheduleTask').input, {
          agentId: outsider.id,
          taskType: 'big',
          payload: 1,
          payloadJson: Buffer.from('1').toString('base64'),
        }),
        ADMIN,
      ),
    );
    expect(both.code).toBe(status.INVALID_ARGUMENT);
    for (const bad of ['{"a":', '[1,]', '\u00ff', '{"a":1} x', '['.repeat(65) + ']'.repeat(65)]) {
      const e = await failure(
        call(
          admin,
          'scheduleTask',
          input(method('scheduleTask').input, {
            agentId: outsider.id,
            taskType: 'big',
            payloadJson: Buffer.from(bad, bad === '\u00ff' ? 'latin1' : 'utf8').toString('base64'),
          }),
          ADMIN,
        ),
      );
      expect({ bad, code: e.code }).toEqual({ bad, code: status.INVALID_ARGUMENT });
    }
  });

  it('pages agents and tasks: every item exactly once, in creation order, with filters', async () => {
    const ids: string[] = [];
    for (let i = 0; i < 7; i++) {
      ids.push(
        (await fabric.spawn({ model: 'm', name: `p${i}`, executor: 'remote', poolId: undefined }))
          .id,
      );
    }
    const seen: string[] = [];
    let token = '';
    let pages = 0;
    do {
      const page = await call<ListAgentsResponse>(
        admin,
        'listAgents',
        input(method('listAgents').input, { pageSize: 3, pageToken: token }),
        ADMIN,
      );
      expect(page.agents.length).toBeLessThanOrEqual(3);
      seen.push(...page.agents.map((a) => a.agentId));
      token = page.nextPageToken;
      pages++;
    } while (token !== '');
    const all = (await fabric.listAgents()).map((a) => a.id);
    expect(seen.sort()).toEqual([...all].sort());
    expect(new Set(seen).size).toBe(seen.length);
    expect(pages).toBe(Math.ceil(all.length / 3));
    for (const id of ids) expect(seen).toContain(id);

    for (let i = 0; i < 5; i++) await fabric.schedule({ agentId: ids[0]!, taskType: 'page' });
    const first = await call<ListTasksResponse>(
      admin,
      'listTasks',
      input(method('listTasks').input, {
        agentId: ids[0]!,
        status: 'TASK_STATUS_PENDING',
        pageSize: 2,
      }),
      ADMIN,
    );
    const second = await call<ListTasksResponse>(
      admin,
      'listTasks',
      input(method('listTasks').input, {
        agentId: ids[0]!,
        status: 'TASK_STATUS_PENDING',
        pageSize: 10,
        pageToken: first.nextPageToken,
      }),
      ADMIN,
    );
    expect(first.tasks.length).toBe(2);
    expect(second.tasks.length).toBe(3);
    expect(second.nextPageToken).toBe('');
    const listed = [...first.tasks, ...second.tasks];
    expect(listed.every((t) => t.agentId === ids[0] && t.taskType === 'page')).toBe(true);
    const created = listed.map(
      (t) => Number(t.createdAt!.seconds) * 1e3 + t.createdAt!.nanos / 1e6,
    );
    expect(created).toEqual([...created].sort((a, b) => a - b));

    const invalid: JsonValue[] = [{ pageToken: 'not-a-token' }, { pageSize: 5000 }, { status: 99 }];
    for (const req of invalid) {
      const e = await failure(
        call(admin, 'listTasks', input(method('listTasks').input, req), ADMIN),
      );
      expect({ req, code: e.code }).toEqual({ req, code: status.INVALID_ARGUMENT });
    }
  });

  it('WaitTask: runs out as DEADLINE_EXCEEDED (FABRIC_ERR_WAIT_TIMEOUT); a cancelled or expired call leaves no waiter', async () => {
    const task = await fabric.schedule({ agentId: outsider.id, taskType: 'never' });
    const out = await failure(
      call(
        admin,
        'waitTask',
        input(method('waitTask').input, { taskId: task.id, timeout: '0.05s' }),
        ADMIN,
      ),
    );
    expect(out.code).toBe(status.DEADLINE_EXCEEDED);
    expect(out.metadata.get('fabric-error-code')).toEqual(['FABRIC_ERR_WAIT_TIMEOUT']);
    expect(fabric.scheduler.waiterCount(task.id)).toBe(0);

    // The client cancels: the server's waiter goes away.
    let started: ClientUnaryCall | undefined;
    const cancelled = failure(
      call(admin, 'waitTask', input(method('waitTask').input, { taskId: task.id }), ADMIN, {
        started: (c) => (started = c),
      }),
    );
    await vi.waitFor(() => expect(fabric.scheduler.waiterCount(task.id)).toBe(1));
    started!.cancel();
    expect((await cancelled).code).toBe(status.CANCELLED);
    await vi.waitFor(() => expect(fabric.scheduler.waiterCount(task.id)).toBe(0));

    // The call's deadline passes: the same.
    const expired = await failure(
      call(admin, 'waitTask', input(method('waitTask').input, { taskId: task.id }), ADMIN, {
        deadline: Date.now() + 200,
      }),
    );
    expect(expired.code).toBe(status.DEADLINE_EXCEEDED);
    await vi.waitFor(() => expect(fabric.scheduler.waiterCount(task.id)).toBe(0));

    // Many callers, each cancelled: none left behind.
    const calls: ClientUnaryCall[] = [];
    const all = Array.from({ length: 20 }, () =>
      failure(
        call(admin, 'waitTask', input(method('waitTask').input, { taskId: task.id }), ADMIN, {
          started: (c) => calls.push(c),
        }),
      ),
    );
    await vi.waitFor(() => expect(fabric.scheduler.waiterCount(task.id)).toBe(20));
    for (const c of calls) c.cancel();
    await Promise.all(all);
    await vi.waitFor(() => expect(fabric.scheduler.waiterCount(task.id)).toBe(0));

    const bad = await failure(
      call(
        admin,
        'waitTask',
        input(method('waitTask').input, { taskId: task.id, timeout: '-1s' }),
        ADMIN,
      ),
    );
    expect(bad.code).toBe(status.INVALID_ARGUMENT);
    const cancelledTask = await call<{ task: { status: number } }>(
      admin,
      'cancelTask',
      input(method('cancelTask').input, { taskId: task.id, reason: 'test over' }),
      ADMIN,
    );
    expect(cancelledTask.task.status).toBe(TaskStatus.CANCELLED);
  });

  it('hooks: creates, lists, gets and reassigns, committed to the git store on disk', async () => {
    const a = await fabric.spawn({ model: 'm', name: 'hook-a', executor: 'remote' });
    const b = await fabric.spawn({ model: 'm', name: 'hook-b', executor: 'remote' });
    const { hook } = await call<CreateHookResponse>(
      admin,
      'createHook',
      input(method('createHook').input, { agentId: a.id, workItem: { file: 'api.py' } }),
      ADMIN,
    );
    expect(hook).toMatchObject({ agentId: a.id, status: HookStatus.PENDING, version: 1 });
    expect(toJson(ValueSchema, hook!.workItem!)).toEqual({ file: 'api.py' });

    const ghost = await failure(
      call(
        admin,
        'createHook',
        input(method('createHook').input, { agentId: 'no-such-agent', workItem: 1 }),
        ADMIN,
      ),
    );
    expect(ghost.code).toBe(status.NOT_FOUND);
    expect((await fabric.listHooks()).length).toBe(1);

    // The agent fails it; the operator gives it to another agent.
    await fabric.activateHook(a.id, hook!.hookId);
    await fabric.failHook(a.id, hook!.hookId, { code: 'E_BROKE', message: 'broke' });
    const moved = await call<ReassignHookResponse>(
      admin,
      'reassignHook',
      input(method('reassignHook').input, { hookId: hook!.hookId, agentId: b.id }),
      ADMIN,
    );
    expect(moved.hook).toMatchObject({
      agentId: b.id,
      status: HookStatus.PENDING,
      previousAgents: [a.id],
      reassignments: 1,
    });
    expect(moved.hook!.error).toMatchObject({ code: 'E_BROKE', message: 'broke' });
    const got = await call<FabricServiceGetHookResponse>(
      admin,
      'getHook',
      input(method('getHook').input, { hookId: hook!.hookId }),
      ADMIN,
    );
    expect(got.hook!.version).toBe(moved.hook!.version);
    const listed = await call<ListHooksResponse>(
      admin,
      'listHooks',
      input(method('listHooks').input, { agentId: b.id, status: 'HOOK_STATUS_PENDING' }),
      ADMIN,
    );
    expect(listed.hooks.map((h) => h.hookId)).toEqual([hook!.hookId]);
    const none = await call<ListHooksResponse>(
      admin,
      'listHooks',
      input(method('listHooks').input, { agentId: a.id }),
      ADMIN,
    );
    expect(none.hooks).toEqual([]);

    const log = execFileSync(
      'git',
      ['--git-dir', join(grpc.dir, 'hooks', '.git'), 'log', '--format=%s', 'refs/fabric/hooks'],
      { encoding: 'utf8' },
    );
    expect(log).toContain(hook!.hookId);
    expect(log.split('\n').filter((l) => l.includes(hook!.hookId)).length).toBe(
      moved.hook!.version,
    );
  });

  it('CreatePool with a provider: the registered provider starts its agents; an unknown one creates nothing', async () => {
    const started: string[] = [];
    fabric.registerPoolProvider({
      name: 'rpc-timers',
      executor: 'inprocess',
      start: async (a) => void started.push(a.agentId),
      stop: async () => undefined,
    });
    try {
      const created = await call<CreatePoolResponse>(
        admin,
        'createPool',
        input(method('createPool').input, {
          poolId: 'pool-provided',
          model: 'm',
          minAgents: 2,
          provider: 'rpc-timers',
        }),
        ADMIN,
      );
      expect(created.pool).toMatchObject({ poolId: 'pool-provided', provider: 'rpc-timers' });
      const ids = created.spawned.map((s) => s.agent!.agentId);
      expect(ids).toHaveLength(2);
      await vi.waitFor(() => expect(started.sort()).toEqual([...ids].sort()));
      for (const id of ids) expect((await fabric.getAgentInfo(id)).executor).toBe('inprocess');
      const got = await call<GetPoolResponse>(
        admin,
        'getPool',
        input(method('getPool').input, { poolId: 'pool-provided' }),
        ADMIN,
      );
      expect(got.pool!.provider).toBe('rpc-timers');

      const before = (await fabric.listAgents()).length;
      const bad = await failure(
        call(
          admin,
          'createPool',
          input(method('createPool').input, {
            poolId: 'pool-unknown-provider',
            model: 'm',
            minAgents: 1,
            provider: 'no-such-provider',
          }),
          ADMIN,
        ),
      );
      expect(bad.code).toBe(status.INVALID_ARGUMENT);
      expect(bad.details).toMatch(/config\.provider.*no-such-provider/);
      expect(fabric.pools.peek('pool-unknown-provider')).toBeUndefined();
      expect((await fabric.listAgents()).length).toBe(before);
    } finally {
      await fabric.deletePool('pool-provided', { drainTimeoutSeconds: 0 });
      fabric.unregisterPoolProvider('rpc-timers');
    }
  });

  it('pools: create, scale, schedule to, stats, delete', async () => {
    const created = await call<CreatePoolResponse>(
      admin,
      'createPool',
      input(method('createPool').input, {
        poolId: 'pool-rpc',
        model: 'm',
        executor: 'remote',
        minAgents: 1,
        maxAgents: 3,
      }),
      ADMIN,
    );
    expect(created.pool).toMatchObject({ poolId: 'pool-rpc', minAgents: 1, maxAgents: 3 });
    expect(created.spawned.length).toBe(1);
    const scaled = await call<ScalePoolResponse>(
      admin,
      'scalePool',
      input(method('scalePool').input, { poolId: 'pool-rpc', targetSize: 9 }),
      ADMIN,
    );
    expect(scaled.pool!.agentIds.length).toBe(3); // clamped to maxAgents
    expect(scaled.spawned.length).toBe(2);
    for (const s of [...created.spawned, ...scaled.spawned]) {
      expect(fabric.authenticate(s.credential)).toMatchObject({ agentId: s.agent!.agentId });
    }
    const { task } = await call<ScheduleTaskResponse>(
      admin,
      'scheduleTaskToPool',
      input(method('scheduleTaskToPool').input, { poolId: 'pool-rpc', taskType: 'p' }),
      ADMIN,
    );
    expect(task!.poolId).toBe('pool-rpc');
    const stats = await call<GetStatsResponse>(
      admin,
      'getStats',
      input(method('getStats').input, {}),
      ADMIN,
    );
    expect(stats.pools['pool-rpc']).toMatchObject({ agents: 3, queuedTasks: 1 });
    expect(stats.activeAgents).toBe(
      (await fabric.listAgents()).filter((a) => a.status !== 'TERMINATED').length,
    );
    await fabric.cancelTask(task!.taskId);

    await call(
      admin,
      'deletePool',
      input(method('deletePool').input, { poolId: 'pool-rpc', drainTimeout: '1s' }),
      ADMIN,
    );
    const pools = await call<ListPoolsResponse>(
      admin,
      'listPools',
      input(method('listPools').input, {}),
      ADMIN,
    );
    expect(pools.pools.map((p) => p.poolId)).not.toContain('pool-rpc');
    const gone = await failure(
      call(admin, 'getPool', input(method('getPool').input, { poolId: 'pool-rpc' }), ADMIN),
    );
    expect(gone.code).toBe(status.NOT_FOUND);
  });

  it('terminates an agent and maps unknown ids to NOT_FOUND', async () => {
    const a = await fabric.spawn({ model: 'm', name: 'short-lived', executor: 'remote' });
    const res = await call<{ agent: { status: number } }>(
      admin,
      'terminateAgent',
      input(method('terminateAgent').input, { agentId: a.id, drainTimeout: durationToJson(0) }),
      ADMIN,
    );
    expect(res.agent.status).toBe(6); // TERMINATED
    for (const [m, req] of [
      ['getAgent', { agentId: 'nope' }],
      ['getTask', { taskId: 'nope' }],
      ['getHook', { hookId: 'hk-0000000000-0000000000000000' }],
    ] as const) {
      const e = await failure(call(admin, m, input(method(m).input, req), ADMIN));
      expect({ m, code: e.code }).toEqual({ m, code: status.NOT_FOUND });
    }
  });
});

function durationToJson(ms: number): string {
  const d = durationFromMs(ms);
  return `${d.seconds}.${String(d.nanos).padStart(9, '0')}s`;
}

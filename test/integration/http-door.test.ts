import { request } from 'node:http';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { AgentService } from '../../src/gen/fabric/v1/agent_pb.js';
import { ApprovalService } from '../../src/gen/fabric/v1/approval_pb.js';
import { BudgetService } from '../../src/gen/fabric/v1/budget_pb.js';
import { EventService } from '../../src/gen/fabric/v1/events_pb.js';
import { FabricService } from '../../src/gen/fabric/v1/fabric_pb.js';
import { PolicyService } from '../../src/gen/fabric/v1/policy_pb.js';
import { ToolService } from '../../src/gen/fabric/v1/tool_pb.js';
import { HttpDoor } from '../../src/rpc/http-door.js';
import { fabricServices } from '../../src/rpc/services.js';
import type { Sidecar } from '../../src/server/sidecar.js';
import { TaskStatus } from '../../src/task.js';
import { postJson } from '../fixtures/api.js';
import { ADMIN_TOKEN, closeSidecar, startTestSidecar } from '../fixtures/gateway/harness.js';

type ErrorBody = { code: string; kind: string; message: string; details: Record<string, unknown> };

describe('the HTTP door: the gRPC services as JSON over the sidecar HTTP server', () => {
  let sidecar: Sidecar;
  let base: URL;

  beforeAll(async () => {
    sidecar = await startTestSidecar({ upstreams: {} });
    base = new URL('/api/', sidecar.url);
  });
  afterAll(() => closeSidecar(sidecar));

  const rpc = (
    path: string,
    body: unknown,
    credential: string | null = ADMIN_TOKEN,
    init: RequestInit = {},
  ): Promise<Response> => postJson(new URL(path, base), body, credential, init);

  const ok = async <T>(res: Response | Promise<Response>): Promise<T> => {
    const r = await res;
    const body = (await r.json()) as T;
    expect({ status: r.status, body }).toMatchObject({ status: 200 });
    return body;
  };

  const refused = async (res: Response | Promise<Response>, status: number, code: string) => {
    const r = await res;
    const body = (await r.json()) as ErrorBody;
    expect({ status: r.status, code: body.code }).toEqual({ status, code });
    expect(r.headers.get('fabric-error-code')).toBe(code);
    expect(typeof body.message).toBe('string');
    return body;
  };

  it('serves every unary and server-streaming method of every registered service', () => {
    const door = new HttpDoor({
      fabric: sidecar.fabric!,
      services: fabricServices(sidecar.fabric!),
    });
    const expected = [
      AgentService,
      ToolService,
      FabricService,
      PolicyService,
      ApprovalService,
      BudgetService,
      EventService,
    ].flatMap((s) => s.methods.map((m) => `/api/${s.typeName}/${m.name}`));
    expect(door.paths.sort()).toEqual(expected.sort());
    expect(door.paths).toContain('/api/fabric.v1.ApprovalService/ListApprovals');
    expect(door.paths).toContain('/api/fabric.v1.EventService/Watch');
    expect(door.paths).toContain('/api/fabric.v1.ApprovalService/Watch');
  });

  it('serves the admin services as the same implementation: budgets set over HTTP read back over HTTP', async () => {
    const { spawned } = await ok<{ spawned: { agent: { agentId: string } } }>(
      rpc('fabric.v1.FabricService/SpawnAgent', {
        name: 'budgeted',
        model: 'm',
        executor: 'remote',
      }),
    );
    const agentId = spawned.agent.agentId;
    await ok(
      rpc('fabric.v1.BudgetService/SetBudgetLimits', {
        scope: { agentId },
        limits: { maxTokensPerHour: 1234 },
      }),
    );
    const status = await ok<Record<string, unknown>>(
      rpc('fabric.v1.BudgetService/GetBudgetStatus', { scope: { agentId } }),
    );
    expect(JSON.stringify(status)).toContain('1234');
    expect(sidecar.fabric!.budgets.getStatus(agentId).tokensLimit).toBe(1234);
  });

  it('runs spawn → schedule → claim → complete → wait with fetch and JSON, as admin and as the agent', async () => {
    const { spawned } = await ok<{ spawned: { agent: { agentId: string }; credential: string } }>(
      rpc('fabric.v1.FabricService/SpawnAgent', {
        name: 'http-worker',
        model: 'm',
        executor: 'remote',
      }),
    );
    const { task } = await ok<{ task: { taskId: string; status: string; payload: unknown } }>(
      rpc('fabric.v1.FabricService/ScheduleTask', {
        agentId: spawned.agent.agentId,
        taskType: 'review',
        payload: { pr: 1 },
      }),
    );
    expect(task).toMatchObject({ status: 'TASK_STATUS_PENDING', payload: { pr: 1 } });
    const waiting = ok<{ task: { status: string; result: unknown } }>(
      rpc('fabric.v1.FabricService/WaitTask', { taskId: task.taskId, timeout: '20s' }),
    );
    const claimed = await ok<{ task: { taskId: string; attempt: number } }>(
      rpc('fabric.v1.AgentService/ClaimTask', { waitSeconds: 5 }, spawned.credential),
    );
    expect(claimed.task.taskId).toBe(task.taskId);
    await ok(
      rpc(
        'fabric.v1.AgentService/CompleteTask',
        { taskId: task.taskId, attempt: claimed.task.attempt, result: { lgtm: true } },
        spawned.credential,
      ),
    );
    expect((await waiting).task).toMatchObject({
      status: 'TASK_STATUS_COMPLETED',
      result: { lgtm: true },
    });
    const stats = await ok<{ completedTasks: string }>(rpc('fabric.v1.FabricService/GetStats', {}));
    expect(Number(stats.completedTasks)).toBeGreaterThanOrEqual(1);
  });

  it('a ClaimTask answer the client drops unread: with ackSeconds the task goes back, uncounted', async () => {
    const fabric = sidecar.fabric!;
    const a = await fabric.spawn({ model: 'm', name: 'http-lossy', executor: 'remote' });
    const task = await fabric.schedule({ agentId: a.id, taskType: 't', maxAttempts: 1 });
    // The door writes the answer; the client throws it away without reading it.
    const res = await rpc(
      'fabric.v1.AgentService/ClaimTask',
      { waitSeconds: 0, ackSeconds: 1 },
      a.credential,
    );
    expect(res.status).toBe(200);
    await res.body?.cancel();
    const lost = (await fabric.getTask(task.id)).attempt;
    await vi.waitFor(
      async () => expect((await fabric.getTask(task.id)).status).toBe(TaskStatus.PENDING),
      { timeout: 10_000 },
    );
    expect(fabric.scheduler.agentLoad(a.id).runningTasks).toBe(0);
    // maxAttempts 1 was not used up: claimed again (and read), it completes.
    const again = await ok<{ task: { taskId: string; attempt: number } }>(
      rpc('fabric.v1.AgentService/ClaimTask', { waitSeconds: 0 }, a.credential),
    );
    expect(again.task.taskId).toBe(task.id);
    expect(again.task.attempt).toBeGreaterThan(lost);
    await ok(
      rpc(
        'fabric.v1.AgentService/CompleteTask',
        { taskId: task.id, attempt: again.task.attempt },
        a.credential,
      ),
    );
    expect((await fabric.getTask(task.id)).status).toBe(TaskStatus.COMPLETED);
  });

  it('stops a WaitTask when its HTTP client goes away (no waiter left)', async () => {
    const fabric = sidecar.fabric!;
    const a = await fabric.spawn({ model: 'm', name: 'waited-on', executor: 'remote' });
    const task = await fabric.schedule({ agentId: a.id, taskType: 'never' });
    const controller = new AbortController();
    const waiting = rpc('fabric.v1.FabricService/WaitTask', { taskId: task.id }, ADMIN_TOKEN, {
      signal: controller.signal,
    }).catch((e: unknown) => e);
    await vi.waitFor(() => expect(fabric.scheduler.waiterCount(task.id)).toBe(1));
    controller.abort();
    expect(await waiting).toBeInstanceOf(Error);
    await vi.waitFor(() => expect(fabric.scheduler.waiterCount(task.id)).toBe(0));
    await fabric.cancelTask(task.id);
  });

  it('keeps a 2^53+1 payload exact through payloadJson (base64 in the JSON mapping)', async () => {
    const text = '{"n":9007199254740993}';
    const { spawned } = await ok<{ spawned: { agent: { agentId: string } } }>(
      rpc('fabric.v1.FabricService/SpawnAgent', { name: 'big', model: 'm', executor: 'remote' }),
    );
    const { task } = await ok<{ task: { taskId: string } }>(
      rpc('fabric.v1.FabricService/ScheduleTask', {
        agentId: spawned.agent.agentId,
        taskType: 'big',
        payloadJson: Buffer.from(text).toString('base64'),
      }),
    );
    const got = await ok<{ task: { payloadJson: string; payload: unknown } }>(
      rpc('fabric.v1.FabricService/GetTask', { taskId: task.taskId }),
    );
    expect(Buffer.from(got.task.payloadJson, 'base64').toString()).toBe(text);
    expect(got.task.payload).toEqual({ n: 9007199254740992 });
  });

  it('refuses without the admin credential: 401 without one, 403 for an agent, and nothing is spawned', async () => {
    const { spawned } = await ok<{ spawned: { credential: string } }>(
      rpc('fabric.v1.FabricService/SpawnAgent', { name: 'insider', model: 'm' }),
    );
    const before = (await sidecar.fabric!.listAgents()).length;
    for (const m of FabricService.methods) {
      await refused(
        rpc(`fabric.v1.FabricService/${m.name}`, { name: 'x', model: 'm' }, spawned.credential),
        403,
        'FABRIC_ERR_PERMISSION_DENIED',
      );
      await refused(
        rpc(`fabric.v1.FabricService/${m.name}`, { name: 'x', model: 'm' }, null),
        401,
        'FABRIC_ERR_UNAUTHENTICATED',
      );
    }
    // The admin credential acts as no agent.
    await refused(
      rpc('fabric.v1.AgentService/Heartbeat', {}, ADMIN_TOKEN),
      401,
      'FABRIC_ERR_UNAUTHENTICATED',
    );
    expect((await sidecar.fabric!.listAgents()).length).toBe(before);
  });

  it('answers bad requests with 400 FABRIC_ERR_INVALID_ARGUMENT', async () => {
    const m = 'fabric.v1.FabricService/ListAgents';
    for (const body of [
      '{"pageSize": ',
      '[1,2',
      '{"noSuchField": 1}',
      '{"pageSize": "many"}',
      '"a string"',
      '{"status": "AGENT_STATUS_NONSENSE"}',
    ]) {
      const e = await refused(rpc(m, body), 400, 'FABRIC_ERR_INVALID_ARGUMENT');
      expect(e.kind).toBe('invalid_argument');
    }
    const deep = `{"agentId":"a","taskType":"t","payload":${'['.repeat(5000)}${']'.repeat(5000)}}`;
    await refused(
      rpc('fabric.v1.FabricService/ScheduleTask', deep),
      400,
      'FABRIC_ERR_INVALID_ARGUMENT',
    );
    await refused(
      rpc(m, '{}', ADMIN_TOKEN, {
        headers: { 'content-type': 'text/plain', authorization: `Bearer ${ADMIN_TOKEN}` },
      }),
      400,
      'FABRIC_ERR_INVALID_ARGUMENT',
    );
    // An empty body is the empty message.
    await ok(rpc(m, ''));
  });

  it('answers a body over the limit with 413 and the sidecar keeps serving', async () => {
    const huge = JSON.stringify({ name: 'x'.repeat(2 * 1024 * 1024), model: 'm' });
    await refused(
      rpc('fabric.v1.FabricService/SpawnAgent', huge),
      413,
      'FABRIC_ERR_PAYLOAD_TOO_LARGE',
    );
    expect((await sidecar.fabric!.listAgents()).some((a) => a.name.startsWith('xxx'))).toBe(false);
    await ok(rpc('fabric.v1.FabricService/ListPools', {}));
  });

  it('answers unknown services and methods, GETs and other verbs with 404 JSON', async () => {
    await refused(
      rpc('fabric.v1.FabricService/NoSuchMethod', {}),
      404,
      'FABRIC_ERR_ROUTE_NOT_FOUND',
    );
    await refused(rpc('fabric.v1.NoService/GetStats', {}), 404, 'FABRIC_ERR_ROUTE_NOT_FOUND');
    await refused(rpc('', {}), 404, 'FABRIC_ERR_ROUTE_NOT_FOUND');
    await refused(
      fetch(new URL('fabric.v1.FabricService/GetStats', base), {
        headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
      }),
      404,
      'FABRIC_ERR_ROUTE_NOT_FOUND',
    );
  });

  it('passes the Host/Origin guard first (DNS rebinding: 403)', async () => {
    const status = await new Promise<number>((resolve, reject) => {
      const req = request(
        new URL('fabric.v1.FabricService/GetStats', base),
        {
          method: 'POST',
          headers: {
            host: 'evil.example',
            'content-type': 'application/json',
            authorization: `Bearer ${ADMIN_TOKEN}`,
          },
        },
        (res) => {
          res.resume();
          resolve(res.statusCode ?? 0);
        },
      );
      req.on('error', reject);
      req.end('{}');
    });
    expect(status).toBe(403);
    await refused(
      rpc('fabric.v1.FabricService/GetStats', {}, ADMIN_TOKEN, {
        headers: {
          origin: 'http://evil.example',
          'content-type': 'application/json',
          authorization: `Bearer ${ADMIN_TOKEN}`,
        },
      }),
      403,
      'FABRIC_ERR_HOST_NOT_ALLOWED',
    );
  });
});

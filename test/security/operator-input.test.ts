/**
 * An administrator's mistakes and a buggy operator client in another language, at the real
 * sidecar's doors (gRPC through grpc-js, `/api` through HTTP) with a state file read back: each
 * absurd value gets its typed error and leaves nothing half-done in the store.
 */
import { join } from 'node:path';
import { create } from '@bufbuild/protobuf';
import { status, type Client, type ServiceError } from '@grpc/grpc-js';
import Database from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  CreatePoolRequestSchema,
  FabricService,
  ListAgentsRequestSchema,
  ScheduleTaskRequestSchema,
} from '../../src/gen/fabric/v1/fabric_pb.js';
import {
  RemoveBudgetLimitsRequestSchema,
  SetBudgetLimitsRequestSchema,
} from '../../src/gen/fabric/v1/budget_pb.js';
import { BUDGET_SERVICE_DEFINITION } from '../../src/rpc/budget-service.js';
import { grpcDefinition } from '../../src/rpc/grpc-definition.js';
import type { Sidecar } from '../../src/server/sidecar.js';
import { failure, grpcClient, unary } from '../fixtures/grpc-client.js';
import {
  ADMIN_TOKEN,
  api,
  closeSidecar,
  startTestSidecar,
  tempDir,
} from '../fixtures/gateway/harness.js';

function fabricCode(err: ServiceError): unknown {
  return err.metadata.get('fabric-error-code')[0];
}

describe('operator API: what an admin or a buggy client sends (real sidecar, both doors)', () => {
  let sidecar: Sidecar;
  let statePath: string;
  let admin: Client;
  let budgets: Client;

  beforeAll(async () => {
    statePath = join(tempDir('operator-input'), 'state.db');
    sidecar = await startTestSidecar({
      state: { path: statePath },
      grpc: { host: '127.0.0.1', port: 0 },
    } as never);
    admin = grpcClient(grpcDefinition(FabricService), sidecar.grpcAddress!);
    budgets = grpcClient(BUDGET_SERVICE_DEFINITION, sidecar.grpcAddress!);
  });

  afterAll(async () => {
    admin?.close();
    budgets?.close();
    await closeSidecar(sidecar);
  });

  /** Budget rows of the state file (scope → stored JSON). */
  function storedBudgets(): Map<string, string> {
    const db = new Database(statePath, { readonly: true, fileMustExist: true });
    try {
      const rows = db.prepare('SELECT scope, data FROM budgets').all() as {
        scope: string;
        data: string;
      }[];
      return new Map(rows.map((r) => [r.scope, r.data]));
    } finally {
      db.close();
    }
  }

  /** Task ids in the state file (the tasks table). */
  function storedTasks(): string[] {
    const db = new Database(statePath, { readonly: true, fileMustExist: true });
    try {
      return (db.prepare('SELECT id FROM tasks ORDER BY rid').all() as { id: string }[]).map(
        (r) => r.id,
      );
    } finally {
      db.close();
    }
  }

  /** Records of a kind in the state file (the records table). */
  function storedCount(kind: 'agent' | 'pool'): number {
    const db = new Database(statePath, { readonly: true, fileMustExist: true });
    try {
      const row = db.prepare('SELECT count(*) AS n FROM records WHERE kind = ?').get(kind);
      return (row as { n: number }).n;
    } finally {
      db.close();
    }
  }

  async function spawnRemote(name: string): Promise<string> {
    const res = await api(sidecar, 'FabricService/SpawnAgent', {
      name,
      model: 'm',
      executor: 'remote',
    });
    expect(res.status).toBe(200);
    return ((await res.json()) as { spawned: { agent: { agentId: string } } }).spawned.agent
      .agentId;
  }

  it('a task timeout or deadline no Duration or Timestamp holds is refused: nothing queued, listings readable', async () => {
    const agentId = await spawnRemote('timeouts');
    const before = storedTasks();

    // Over /api: a Duration the JSON decoder takes (its seconds at the range's end) that the
    // task's answer could not carry back. Was 500 INTERNAL after the task had been queued, and
    // every ListTasks over /api answered 500 from then on.
    const res0 = await api(sidecar, 'FabricService/ScheduleTask', {
      agentId,
      taskType: 't',
      options: { timeout: '315576000000.999999999s' },
    });
    expect(res0.status).toBe(400);
    const body = (await res0.json()) as { code: string; details: { field: string } };
    expect(body.code).toBe('FABRIC_ERR_INVALID_ARGUMENT');
    expect(body.details.field).toBe('timeoutSeconds');
    // Over gRPC, whose binary carries any int64: a timeout and a deadline past year 9999.
    for (const [options, field] of [
      [{ timeout: { seconds: 10n ** 15n } }, 'timeoutSeconds'],
      [{ deadline: { seconds: 253402300800n } }, 'deadline'],
      [{ deadline: { seconds: 10n ** 17n } }, 'deadline'],
    ] as const) {
      const err = await failure(
        unary(
          admin,
          'scheduleTask',
          create(ScheduleTaskRequestSchema, { agentId, taskType: 't', options }),
          ADMIN_TOKEN,
        ),
      );
      expect(err.code).toBe(status.INVALID_ARGUMENT);
      expect(fabricCode(err)).toBe('FABRIC_ERR_INVALID_ARGUMENT');
      expect(err.details).toContain(field);
    }
    expect(storedTasks()).toEqual(before);

    // The largest each holds is taken, and read back over /api.
    const res = await api(sidecar, 'FabricService/ScheduleTask', {
      agentId,
      taskType: 't',
      options: { timeout: '315576000000s', deadline: '9999-12-31T23:59:59.999Z' },
    });
    expect(res.status).toBe(200);
    const { task } = (await res.json()) as { task: { taskId: string } };
    expect(storedTasks()).toEqual([...before, task.taskId]);
    const list = await api(sidecar, 'FabricService/ListTasks', { agentId });
    expect(list.status).toBe(200);
    const listed = (await list.json()) as {
      tasks: { taskId: string; timeout: string; deadline: string }[];
    };
    expect(listed.tasks).toEqual([
      expect.objectContaining({
        taskId: task.taskId,
        timeout: '315576000000s',
        deadline: '9999-12-31T23:59:59.999Z',
      }),
    ]);
  });

  it('a page token of one listing is refused by another, not taken as a position in it', async () => {
    for (const name of ['page-a', 'page-b']) await spawnRemote(name);
    const agents = await api(sidecar, 'FabricService/ListAgents', { pageSize: 1 });
    const agentToken = ((await agents.json()) as { nextPageToken: string }).nextPageToken;
    expect(agentToken).not.toBe('');
    // A ListAgents token on ListTasks: was 200 with the tasks created after that agent.
    const tasks = await api(sidecar, 'FabricService/ListTasks', { pageToken: agentToken });
    expect(tasks.status).toBe(400);
    const body = (await tasks.json()) as { code: string; details: { field: string } };
    expect(body).toMatchObject({
      code: 'FABRIC_ERR_INVALID_ARGUMENT',
      details: { field: 'page_token' },
    });
    // And a ListTasks token on ListAgents, over gRPC.
    const agentId = await spawnRemote('page-c');
    for (let i = 0; i < 2; i++) {
      const res = await api(sidecar, 'FabricService/ScheduleTask', { agentId, taskType: 't' });
      expect(res.status).toBe(200);
    }
    const listed = await api(sidecar, 'FabricService/ListTasks', { pageSize: 1 });
    const taskToken = ((await listed.json()) as { nextPageToken: string }).nextPageToken;
    expect(taskToken).not.toBe('');
    const err = await failure(
      unary(
        admin,
        'listAgents',
        create(ListAgentsRequestSchema, { pageToken: taskToken }),
        ADMIN_TOKEN,
      ),
    );
    expect(err.code).toBe(status.INVALID_ARGUMENT);
    expect(fabricCode(err)).toBe('FABRIC_ERR_INVALID_ARGUMENT');
    expect(err.details).toContain('page_token');
    // Each listing still takes its own.
    const next = await api(sidecar, 'FabricService/ListAgents', { pageToken: agentToken });
    expect(next.status).toBe(200);
  });

  it('labels and capabilities past their bounds are refused at spawn and pool creation: nothing stored', async () => {
    const many = (n: number, value = 'v'): Record<string, string> =>
      Object.fromEntries(Array.from({ length: n }, (_, i) => [`k${i}`, value]));
    const agentsBefore = storedCount('agent');
    const poolsBefore = storedCount('pool');
    // Over /api: 65 labels, a 1025-character value, 65 capabilities, an empty capability. Were
    // all taken (100,000 labels were), and every policy decision and listing carried them.
    for (const [extra, field] of [
      [{ labels: many(65) }, 'config.labels'],
      [{ labels: { k: 'x'.repeat(1025) } }, 'config.labels["k"]'],
      [{ capabilities: Array.from({ length: 65 }, (_, i) => `c${i}`) }, 'config.capabilities'],
      [{ capabilities: ['ok', ''] }, 'config.capabilities[1]'],
    ] as const) {
      const res = await api(sidecar, 'FabricService/SpawnAgent', {
        name: 'labels',
        model: 'm',
        executor: 'remote',
        ...extra,
      });
      expect(res.status).toBe(400);
      const body = (await res.json()) as { code: string; details: { field: string } };
      expect(body).toMatchObject({ code: 'FABRIC_ERR_INVALID_ARGUMENT', details: { field } });
    }
    // Over gRPC, a pool whose agents would carry them (min 0: no spawn would refuse them later).
    const err = await failure(
      unary(
        admin,
        'createPool',
        create(CreatePoolRequestSchema, {
          poolId: 'labelled',
          model: 'm',
          minAgents: 0,
          executor: 'remote',
          labels: many(65),
        }),
        ADMIN_TOKEN,
      ),
    );
    expect(err.code).toBe(status.INVALID_ARGUMENT);
    expect(fabricCode(err)).toBe('FABRIC_ERR_INVALID_ARGUMENT');
    expect(err.details).toContain('config.labels');
    expect(storedCount('agent')).toBe(agentsBefore);
    expect(storedCount('pool')).toBe(poolsBefore);
    // At the bounds: taken, and read back whole.
    const res = await api(sidecar, 'FabricService/SpawnAgent', {
      name: 'labels',
      model: 'm',
      executor: 'remote',
      labels: { ...many(62), long: 'x'.repeat(1024), empty: '' },
      capabilities: Array.from({ length: 64 }, (_, i) => `c${i}`),
    });
    expect(res.status).toBe(200);
    const { spawned } = (await res.json()) as {
      spawned: { agent: { labels: Record<string, string>; capabilities: string[] } };
    };
    expect(Object.keys(spawned.agent.labels)).toHaveLength(64);
    expect(spawned.agent.labels.long).toHaveLength(1024);
    expect(spawned.agent.capabilities).toHaveLength(64);
    expect(storedCount('agent')).toBe(agentsBefore + 1);
  });

  it('budget limits of a terminated agent are refused as its other mutations are (were taken, with no effect)', async () => {
    const agentId = await spawnRemote('budgeted');
    const limits = { maxTokensPerHour: 1000 };
    const set = await api(sidecar, 'BudgetService/SetBudgetLimits', {
      scope: { agentId },
      limits,
    });
    expect(set.status).toBe(200);
    const term = await api(sidecar, 'FabricService/TerminateAgent', { agentId });
    expect(term.status).toBe(200);
    const before = storedBudgets().get(`agent:${agentId}`);
    expect(before).toContain('1000');

    // Over /api: SetBudgetLimits and RemoveBudgetLimits, as CreateHook and ScheduleTask answer.
    for (const [method, body] of [
      ['BudgetService/SetBudgetLimits', { scope: { agentId }, limits: { maxTokensPerHour: 5 } }],
      ['BudgetService/RemoveBudgetLimits', { scope: { agentId } }],
      ['FabricService/ScheduleTask', { agentId, taskType: 't' }],
    ] as const) {
      const res = await api(sidecar, method, body);
      expect(res.status, method).toBe(409);
      const err = (await res.json()) as { code: string; details: { agentId: string } };
      expect(err, method).toMatchObject({
        code: 'FABRIC_ERR_AGENT_UNAVAILABLE',
        details: { agentId },
      });
    }
    // Over gRPC.
    for (const [method, req] of [
      [
        'setBudgetLimits',
        create(SetBudgetLimitsRequestSchema, {
          scope: { scope: { case: 'agentId', value: agentId } },
          limits: { maxTokensPerHour: 5 },
        }),
      ],
      [
        'removeBudgetLimits',
        create(RemoveBudgetLimitsRequestSchema, {
          scope: { scope: { case: 'agentId', value: agentId } },
        }),
      ],
    ] as const) {
      const err = await failure(unary(budgets, method, req, ADMIN_TOKEN));
      expect(err.code, method).toBe(status.FAILED_PRECONDITION);
      expect(fabricCode(err), method).toBe('FABRIC_ERR_AGENT_UNAVAILABLE');
    }
    // Its status stays readable: the limits it ended with, unchanged in the store.
    const read = await api(sidecar, 'BudgetService/GetBudgetStatus', { scope: { agentId } });
    expect(read.status).toBe(200);
    const { status: st } = (await read.json()) as { status: { tokens: { limit?: number } } };
    expect(st.tokens.limit).toBe(1000);
    expect(storedBudgets().get(`agent:${agentId}`)).toBe(before);
  });

  it('control characters in names are refused naming the field (were stored); other Unicode is taken', async () => {
    const agentsBefore = storedCount('agent');
    const poolsBefore = storedCount('pool');
    const tasksBefore = storedTasks();
    const live = await spawnRemote('names');
    const refusals: [string, unknown, string][] = [
      [
        'FabricService/SpawnAgent',
        { name: 'a\u0000b', model: 'm', executor: 'remote' },
        'config.name',
      ],
      [
        'FabricService/SpawnAgent',
        { name: 'n', model: 'm\u001b[31m', executor: 'remote' },
        'config.model',
      ],
      [
        'FabricService/SpawnAgent',
        { name: 'n', model: 'm', executor: 'remote', labels: { 'k\n': 'v' } },
        'config.labels key',
      ],
      [
        'FabricService/SpawnAgent',
        { name: 'n', model: 'm', executor: 'remote', labels: { k: 'v\u0000' } },
        'config.labels["k"]',
      ],
      [
        'FabricService/SpawnAgent',
        { name: 'n', model: 'm', executor: 'remote', capabilities: ['c\t'] },
        'config.capabilities[0]',
      ],
      [
        'FabricService/CreatePool',
        { poolId: 'p\u0000', model: 'm', minAgents: 0, executor: 'remote' },
        'config.poolId',
      ],
      [
        'FabricService/CreatePool',
        { poolId: 'p', name: 'pool\r\nname', model: 'm', minAgents: 0, executor: 'remote' },
        'config.name',
      ],
      [
        'FabricService/ScheduleTask',
        { agentId: live, taskType: 't', options: { tenant: 'ten\u0007' } },
        'tenant',
      ],
      ['FabricService/ScheduleTask', { agentId: live, taskType: 't\u0085' }, 'taskType'],
    ];
    for (const [method, body, field] of refusals) {
      const res = await api(sidecar, method, body);
      const err = (await res.json()) as {
        code: string;
        message: string;
        details: { field: string };
      };
      expect(res.status, `${method} ${field}`).toBe(400);
      expect(err, `${method} ${field}`).toMatchObject({
        code: 'FABRIC_ERR_INVALID_ARGUMENT',
        details: { field },
      });
      expect(err.message).toMatch(/control characters/);
    }
    // Over gRPC too.
    const err = await failure(
      unary(
        admin,
        'createPool',
        create(CreatePoolRequestSchema, {
          poolId: 'esc\u001b',
          model: 'm',
          minAgents: 0,
          executor: 'remote',
        }),
        ADMIN_TOKEN,
      ),
    );
    expect(err.code).toBe(status.INVALID_ARGUMENT);
    expect(fabricCode(err)).toBe('FABRIC_ERR_INVALID_ARGUMENT');
    expect(err.details).toContain('config.poolId');
    // A policy's name and a rule's tool: the policy code for invalid policies.
    for (const policy of [
      { name: 'p\u0000', rules: [{ tool: '*', action: 'allow' }] },
      { name: 'p', rules: [{ tool: 'fs__\u0000*', action: 'allow' }] },
    ]) {
      const res = await api(sidecar, 'PolicyService/AddPolicy', {
        policyJson: Buffer.from(JSON.stringify(policy)).toString('base64'),
      });
      expect(res.status).toBe(400);
      const body = (await res.json()) as { code: string; message: string };
      expect(body.code).toBe('FABRIC_ERR_POLICY_INVALID');
      expect(body.message).toMatch(/control characters/);
    }
    expect(storedCount('agent')).toBe(agentsBefore + 1);
    expect(storedCount('pool')).toBe(poolsBefore);
    expect(storedTasks()).toEqual(tasksBefore);
    // Names in any script, with emoji and bidirectional text, are taken and read back whole.
    const name = 'Ünïcødé-名前-שלום-🚀';
    const res = await api(sidecar, 'FabricService/SpawnAgent', {
      name,
      model: 'モデル',
      executor: 'remote',
      labels: { チーム: 'ü' },
    });
    expect(res.status).toBe(200);
    const { spawned } = (await res.json()) as {
      spawned: { agent: { agentId: string; name: string } };
    };
    expect(spawned.agent.name).toBe(name);
    const task = await api(sidecar, 'FabricService/ScheduleTask', {
      agentId: spawned.agent.agentId,
      taskType: 'タスク',
      options: { tenant: 'テナント' },
    });
    expect(task.status).toBe(200);
    expect(((await task.json()) as { task: { tenant: string } }).task.tenant).toBe('テナント');
  });
});

describe('a state file written before control characters were refused (real sidecar, restarted)', () => {
  it('still loads: agents, pools and tasks keep their names and can be read and ended', async () => {
    const statePath = join(tempDir('legacy-names'), 'state.db');
    const config = { state: { path: statePath } } as never;
    let sidecar = await startTestSidecar(config);
    let agentId: string;
    try {
      const res = await api(sidecar, 'FabricService/SpawnAgent', {
        name: 'legacy',
        model: 'm',
        executor: 'remote',
      });
      agentId = ((await res.json()) as { spawned: { agent: { agentId: string } } }).spawned.agent
        .agentId;
      expect(
        (
          await api(sidecar, 'FabricService/CreatePool', {
            poolId: 'old',
            model: 'm',
            minAgents: 0,
            executor: 'remote',
          })
        ).status,
      ).toBe(200);
      expect(
        (
          await api(sidecar, 'FabricService/ScheduleTask', {
            agentId,
            taskType: 't',
            options: { tenant: 'ten' },
          })
        ).status,
      ).toBe(200);
    } finally {
      await closeSidecar(sidecar);
    }
    // What the old code let in, written as it would have stored it.
    const db = new Database(statePath);
    try {
      const setName = db.prepare(
        "UPDATE records SET data = json_set(data, '$.name', ?) WHERE kind = ? AND id = ?",
      );
      expect(setName.run('leg\u0000acy\n', 'agent', agentId).changes).toBe(1);
      expect(setName.run('old\u001b[31m', 'pool', 'old').changes).toBe(1);
      expect(db.prepare('UPDATE tasks SET tenant = ?').run('ten\u0000').changes).toBe(1);
    } finally {
      db.close();
    }
    sidecar = await startTestSidecar(config);
    try {
      const agents = (await (await api(sidecar, 'FabricService/ListAgents', {})).json()) as {
        agents: { agentId: string; name: string }[];
      };
      expect(agents.agents.find((a) => a.agentId === agentId)?.name).toBe('leg\u0000acy\n');
      const pool = await api(sidecar, 'FabricService/GetPool', { poolId: 'old' });
      expect(pool.status).toBe(200);
      expect(((await pool.json()) as { pool: { name: string } }).pool.name).toBe('old\u001b[31m');
      const tasks = (await (await api(sidecar, 'FabricService/ListTasks', {})).json()) as {
        tasks: { tenant: string }[];
      };
      expect(tasks.tasks.map((t) => t.tenant)).toEqual(['ten\u0000']);
      // The pool's name makes its agents' names: it can no longer grow (README: recreate it).
      const scale = await api(sidecar, 'FabricService/ScalePool', { poolId: 'old', targetSize: 1 });
      expect(scale.status).toBe(400);
      expect(await scale.json()).toMatchObject({
        code: 'FABRIC_ERR_INVALID_ARGUMENT',
        details: { field: 'config.name' },
      });
      // Ended as any: the agent terminated, the pool deleted.
      expect((await api(sidecar, 'FabricService/TerminateAgent', { agentId })).status).toBe(200);
      expect((await api(sidecar, 'FabricService/DeletePool', { poolId: 'old' })).status).toBe(200);
    } finally {
      await closeSidecar(sidecar);
    }
  });
  // Found by the hostile review of 8745018: a pool *id* the old code let in (a pool name was
  // checked above) made the next start fail — the scheduler refused it while restoring the pool,
  // so the whole state file no longer loaded.
  it('a pool id with a control character (and its agent) loads, and can be read and deleted', async () => {
    const statePath = join(tempDir('legacy-pool-id'), 'state.db');
    const config = { state: { path: statePath } } as never;
    let sidecar = await startTestSidecar(config);
    let agentId: string;
    try {
      expect(
        (
          await api(sidecar, 'FabricService/CreatePool', {
            poolId: 'old',
            model: 'm',
            minAgents: 0,
            executor: 'remote',
          })
        ).status,
      ).toBe(200);
      const res = await api(sidecar, 'FabricService/SpawnAgent', {
        name: 'member',
        model: 'm',
        executor: 'remote',
        poolId: 'old',
      });
      expect(res.status, await res.clone().text()).toBe(200);
      agentId = ((await res.json()) as { spawned: { agent: { agentId: string } } }).spawned.agent
        .agentId;
    } finally {
      await closeSidecar(sidecar);
    }
    const legacy = 'old\u0000\n';
    const db = new Database(statePath);
    try {
      expect(
        db
          .prepare(
            "UPDATE records SET id = ?, data = json_set(data, '$.poolId', ?) WHERE kind = 'pool' AND id = 'old'",
          )
          .run(legacy, legacy).changes,
      ).toBe(1);
      expect(
        db
          .prepare(
            "UPDATE records SET data = json_set(data, '$.poolId', ?) WHERE kind = 'agent' AND id = ?",
          )
          .run(legacy, agentId).changes,
      ).toBe(1);
    } finally {
      db.close();
    }
    sidecar = await startTestSidecar(config);
    try {
      const pool = await api(sidecar, 'FabricService/GetPool', { poolId: legacy });
      expect(pool.status, await pool.clone().text()).toBe(200);
      expect(((await pool.json()) as { pool: { agentIds: string[] } }).pool.agentIds).toEqual([
        agentId,
      ]);
      const del = await api(sidecar, 'FabricService/DeletePool', { poolId: legacy });
      expect(del.status, await del.clone().text()).toBe(200);
      const agent = await api(sidecar, 'FabricService/GetAgent', { agentId });
      expect(((await agent.json()) as { agent: { status: string } }).agent.status).toBe(
        'AGENT_STATUS_TERMINATED',
      );
    } finally {
      await closeSidecar(sidecar);
    }
    const check = new Database(statePath, { readonly: true });
    try {
      expect(check.prepare("SELECT count(*) AS n FROM records WHERE kind = 'pool'").get()).toEqual({
        n: 0,
      });
    } finally {
      check.close();
    }
  });
});

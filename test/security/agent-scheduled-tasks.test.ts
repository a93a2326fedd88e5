/**
 * What one agent can make the fabric hold through `fabric__schedule_task` (tasks in its own
 * pool): it used to fill the whole `maxQueueDepth` (its peers and the operator then got
 * QUEUE_FULL), queue payloads of any size (the 1 MiB bound held only for results), queue a
 * payload nested deeper than a gRPC worker can decode (the claim failed, the task sat RUNNING on
 * that worker for its timeout), and a task type with a lone surrogate that came back another
 * after a restart. Real sidecar, real SQLite state file, the official SDK client, a real grpc-js
 * worker.
 */
import { join } from 'node:path';
import { create, toJson } from '@bufbuild/protobuf';
import { ValueSchema } from '@bufbuild/protobuf/wkt';
import type { Client as GrpcClient } from '@grpc/grpc-js';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import { afterEach, describe, expect, it } from 'vitest';
import { AgentFabric, MAX_AGENT_PAYLOAD_DEPTH } from '../../src/fabric.js';
import type { AgentRecord } from '../../src/lifecycle/lifecycle-manager.js';
import type { PoolRecord } from '../../src/pools/pool-manager.js';
import type { TaskRecord } from '../../src/scheduler/task-record.js';
import { SqliteStore } from '../../src/store/sqlite-store.js';
import {
  ClaimTaskRequestSchema,
  type ClaimTaskResponse,
} from '../../src/gen/fabric/v1/agent_pb.js';
import { AGENT_SERVICE_DEFINITION } from '../../src/rpc/agent-service.js';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  agentId,
  agentToken,
  api,
  closeSidecar,
  DEFAULT_ALLOW,
  httpClient,
  startTestSidecar,
  tempDir,
  text,
  until,
} from '../fixtures/gateway/harness.js';
import { grpcClient, unary } from '../fixtures/grpc-client.js';

let sidecar: Sidecar | undefined;
const clients: Client[] = [];
let grpc: GrpcClient | undefined;

afterEach(async () => {
  grpc?.close();
  grpc = undefined;
  for (const c of clients.splice(0)) await c.close().catch(() => undefined);
  await closeSidecar(sidecar);
  sidecar = undefined;
});

async function start(): Promise<Sidecar> {
  sidecar = await startTestSidecar({
    policies: [DEFAULT_ALLOW],
    fabric: { maxQueueDepth: 20, maxScheduledTasksPerAgent: 3, maxTaskResultBytes: 4096 },
    grpc: { port: 0 },
    pools: [{ id: 'crew' }],
    agents: [
      { name: 'attacker', poolId: 'crew' },
      { name: 'peer', poolId: 'crew' },
      { name: 'other' },
    ],
    gateway: { poolScheduling: true, shutdownGraceSeconds: 0 },
  });
  return sidecar;
}

async function client(name: string): Promise<Client> {
  const c = await httpClient(sidecar!.url!, agentToken(sidecar!, name));
  clients.push(c);
  return c;
}

/** A schedule_task call; the call waits for the task, so it is not awaited unless `wait`. */
function schedule(c: Client, args: Record<string, unknown>): Promise<CallToolResult> {
  return c
    .callTool({ name: 'fabric__schedule_task', arguments: args }, undefined, { timeout: 600_000 })
    .catch((e: unknown) => ({
      isError: true,
      content: [{ type: 'text', text: String(e) }],
    })) as Promise<CallToolResult>;
}

/** The agent's own unfinished tasks in the store. */
const queuedBy = (name: string) =>
  sidecar!
    .fabric!.scheduler.listTasks()
    .filter((t) => t.tenant === `agent:${agentId(sidecar!, name)}` && t.status === 'PENDING');

function nested(depth: number): unknown {
  let v: unknown = 1;
  for (let i = 0; i < depth; i++) v = [v];
  return v;
}

describe('tasks an agent schedules', () => {
  it('are bounded per agent, so its peers and the operator still queue work', async () => {
    await start();
    const attacker = await client('attacker');
    for (let i = 0; i < 3; i++) void schedule(attacker, { taskType: 'spam', payload: i });
    await until(() => queuedBy('attacker').length === 3);
    const refused = await schedule(attacker, { taskType: 'spam', payload: 3 });
    expect(text(refused)).toContain('FABRIC_ERR_QUEUE_FULL');
    expect(text(refused)).toContain('maxScheduledTasksPerAgent');
    expect(queuedBy('attacker')).toHaveLength(3);
    // Its peer and the operator are not starved.
    void schedule(await client('peer'), { taskType: 'real-work' });
    await until(() => queuedBy('peer').length === 1);
    const res = await api(sidecar!, 'FabricService/ScheduleTask', {
      agentId: agentId(sidecar!, 'other'),
      taskType: 'urgent',
    });
    expect(res.status, await res.text()).toBe(200);
    // One of its tasks finishes (cancelled): it may schedule one more.
    await sidecar!.fabric!.cancelTask(queuedBy('attacker')[0]!.id);
    void schedule(attacker, { taskType: 'spam', payload: 4 });
    await until(() => queuedBy('attacker').length === 3);
  });

  it('are counted again after a restart on the same state file', async () => {
    const path = join(tempDir('agent-scheduled-restart'), 'state.db');
    const open = async (): Promise<AgentFabric> => {
      const store = await SqliteStore.open<TaskRecord, AgentRecord, PoolRecord>(path);
      const fabric = new AgentFabric({ maxScheduledTasksPerAgent: 2 }, { store });
      await fabric.start();
      return fabric;
    };
    let fabric = await open();
    try {
      await fabric.createPool({ poolId: 'crew', model: 'm', executor: 'remote' });
      for (let i = 0; i < 2; i++) await fabric.scheduleFromAgent('a1', 'crew', 't', i);
      await expect(fabric.scheduleFromAgent('a1', 'crew', 't', 2)).rejects.toThrow(
        /maxScheduledTasksPerAgent/,
      );
      await fabric.close();
      fabric = await open();
      await expect(fabric.scheduleFromAgent('a1', 'crew', 't', 3)).rejects.toThrow(
        /maxScheduledTasksPerAgent/,
      );
      // Another agent has its own count.
      await fabric.scheduleFromAgent('a2', 'crew', 't', 4);
    } finally {
      await fabric.close();
    }
  });

  it("cannot be crowded out by an operator's tasks named as the agent's own tenant", async () => {
    // `agent:<id>` tenants are the agent's own: counted against maxScheduledTasksPerAgent (after
    // a restart, from the store) and evicting its finished tasks. An operator naming one used to
    // fill the agent's room: three such tasks, restart, and the agent could schedule nothing.
    await start();
    const attacker = agentId(sidecar!, 'attacker');
    for (const [method, body] of [
      ['ScheduleTaskToPool', { poolId: 'crew', taskType: 'ops' }],
      ['ScheduleTask', { agentId: agentId(sidecar!, 'other'), taskType: 'ops' }],
    ] as const) {
      const res = await api(sidecar!, `FabricService/${method}`, {
        ...body,
        options: { tenant: `agent:${attacker}` },
      });
      expect(res.status).toBe(400);
      expect(await res.text()).toMatch(/FABRIC_ERR_INVALID_ARGUMENT.*tenant/);
    }
    expect(sidecar!.fabric!.scheduler.listTasks().filter((t) => t.taskType === 'ops')).toEqual([]);
    // Through the library as well, before anything is queued; other tenants still go.
    await expect(
      sidecar!.fabric!.scheduleToPool('crew', 'ops', null, { tenant: 'agent:x' }),
    ).rejects.toThrow(/tenant must not start with "agent:"/);
    await sidecar!.fabric!.scheduleToPool('crew', 'ops', null, { tenant: 'team-agent:x' });
    // The agent's own three still fit.
    const own = await client('attacker');
    for (let i = 0; i < 3; i++) void schedule(own, { taskType: 'spam', payload: i });
    await until(() => queuedBy('attacker').length === 3);
  });

  it("of a plain call are cancelled when the sidecar stops cleanly (the call's answer would reach nobody)", async () => {
    const path = join(tempDir('agent-scheduled-stop'), 'state.db');
    sidecar = await startTestSidecar({
      policies: [DEFAULT_ALLOW],
      pools: [{ id: 'crew' }],
      agents: [{ name: 'attacker', poolId: 'crew' }],
      state: { path },
      gateway: { poolScheduling: true, shutdownGraceSeconds: 0 },
    } as never);
    const call = schedule(await client('attacker'), { taskType: 'left', payload: 1 });
    await until(() => queuedBy('attacker').length === 1);
    const [task] = queuedBy('attacker');
    await closeSidecar(sidecar);
    sidecar = undefined;
    expect((await call).isError).toBe(true);
    const store = await SqliteStore.open<TaskRecord, AgentRecord, PoolRecord>(path);
    try {
      expect(store.tasks.get(task!.id)?.status).toBe('CANCELLED');
    } finally {
      await store.close();
    }
  });

  it('carry payloads bounded like results: size, and depth a gRPC worker can decode', async () => {
    await start();
    const attacker = await client('attacker');
    const big = await schedule(attacker, { taskType: 'big', payload: 'x'.repeat(5000) });
    expect(text(big)).toContain('FABRIC_ERR_TASK_RESULT_TOO_LARGE');
    const deep = await schedule(attacker, {
      taskType: 'deep',
      payload: nested(MAX_AGENT_PAYLOAD_DEPTH + 1),
    });
    expect(text(deep)).toContain('FABRIC_ERR_INVALID_ARGUMENT');
    expect(text(deep)).toContain(`nests deeper than ${MAX_AGENT_PAYLOAD_DEPTH} levels`);
    expect(queuedBy('attacker')).toHaveLength(0);
    // The deepest allowed reaches a gRPC worker of the pool intact.
    void schedule(attacker, { taskType: 'deep', payload: nested(MAX_AGENT_PAYLOAD_DEPTH) });
    await until(() => queuedBy('attacker').length === 1);
    grpc = grpcClient(AGENT_SERVICE_DEFINITION, sidecar!.grpcAddress!);
    const claimed = await unary<ClaimTaskResponse>(
      grpc,
      'claimTask',
      create(ClaimTaskRequestSchema, { waitSeconds: 5 }),
      agentToken(sidecar!, 'peer'),
    );
    expect(toJson(ValueSchema, claimed.task!.payload!)).toEqual(nested(MAX_AGENT_PAYLOAD_DEPTH));
  });

  it('with a task type that is not well-formed Unicode are refused, not changed in the store', async () => {
    await start();
    const attacker = await client('attacker');
    const r = await schedule(attacker, { taskType: 'lone\ud800surrogate' });
    expect(text(r)).toContain('FABRIC_ERR_INVALID_ARGUMENT');
    expect(text(r)).toContain('lone surrogate');
    expect(queuedBy('attacker')).toHaveLength(0);
  });
});

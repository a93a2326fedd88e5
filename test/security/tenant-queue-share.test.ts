/**
 * One tenant flooding the queue through the operator doors (an admin-side client scheduling under
 * tenant `flood`) used to take the whole `maxQueueDepth`: every other tenant then got QUEUE_FULL.
 * A tenant now holds at most `maxQueueDepthPerTenant` (three quarters of the queue by default) of
 * the waiting tasks; its tasks past that are refused with a typed error naming it, and the rest of
 * the queue stays open to the others. Real sidecar, real SQLite state file, `/api/` and a real
 * grpc-js client of FabricService; what was acknowledged is checked in the state file.
 */
import { join } from 'node:path';
import { fromJson, type JsonValue } from '@bufbuild/protobuf';
import { status, type Client as GrpcClient } from '@grpc/grpc-js';
import { afterEach, describe, expect, it } from 'vitest';
import { FabricService, type ScheduleTaskResponse } from '../../src/gen/fabric/v1/fabric_pb.js';
import { grpcDefinition } from '../../src/rpc/grpc-definition.js';
import type { TaskRecord } from '../../src/scheduler/task-record.js';
import type { Sidecar } from '../../src/server/sidecar.js';
import { SqliteStore } from '../../src/store/sqlite-store.js';
import {
  ADMIN_TOKEN,
  api,
  closeSidecar,
  startTestSidecar,
  tempDir,
} from '../fixtures/gateway/harness.js';
import { failure, grpcClient, unary } from '../fixtures/grpc-client.js';

let sidecar: Sidecar | undefined;
let grpc: GrpcClient | undefined;

afterEach(async () => {
  grpc?.close();
  grpc = undefined;
  await closeSidecar(sidecar);
  sidecar = undefined;
});

const method = (name: string) => FabricService.methods.find((m) => m.localName === name)!;

/** A JSON answer of `/api/`: a task, or an error. */
interface ApiAnswer {
  task: { taskId: string };
  code?: string;
  error?: unknown;
}

/** Schedules one task to pool `crew` under `tenant` over `/api/`: the HTTP status and body. */
async function viaApi(tenant: string, i: number): Promise<{ status: number; body: ApiAnswer }> {
  const res = await api(sidecar!, 'FabricService/ScheduleTaskToPool', {
    poolId: 'crew',
    taskType: 'work',
    payload: { tenant, i },
    options: { tenant },
  });
  return { status: res.status, body: (await res.json()) as ApiAnswer };
}

/** Schedules one task to pool `crew` under `tenant` over gRPC. */
function viaGrpc(tenant: string, i: number): Promise<ScheduleTaskResponse> {
  const req = fromJson(method('scheduleTaskToPool').input, {
    poolId: 'crew',
    taskType: 'work',
    payload: { tenant, i } as JsonValue,
    options: { tenant },
  });
  return unary<ScheduleTaskResponse>(grpc!, 'scheduleTaskToPool', req, ADMIN_TOKEN);
}

/** The tasks the state file holds, by tenant. */
async function storedByTenant(path: string): Promise<Map<string, number>> {
  const store = await SqliteStore.open(path);
  try {
    const out = new Map<string, number>();
    for (const t of store.tasks.values() as Iterable<TaskRecord>) {
      out.set(t.tenant, (out.get(t.tenant) ?? 0) + 1);
    }
    return out;
  } finally {
    await store.close();
  }
}

describe('a tenant flooding the queue (security)', () => {
  it('is refused past its share with QUEUE_FULL naming it; other tenants still get in over /api/ and gRPC; nothing acknowledged is lost', async () => {
    const path = join(tempDir('tenant-queue-share'), 'state.db');
    sidecar = await startTestSidecar({
      fabric: { maxQueueDepth: 40 },
      state: { path },
      grpc: { port: 0 },
      // A pool with no agent: what is scheduled waits.
      pools: [{ id: 'crew', minAgents: 0 }],
    } as never);
    grpc = grpcClient(grpcDefinition(FabricService), sidecar.grpcAddress!);

    // The flood: more than the whole queue, all under one tenant.
    const accepted: string[] = [];
    const refused: { status: number; body: ApiAnswer }[] = [];
    for (let i = 0; i < 60; i++) {
      const r = await viaApi('flood', i);
      if (r.status === 200) accepted.push(r.body.task.taskId);
      else refused.push(r);
    }
    // Its share: three quarters of maxQueueDepth 40.
    expect(accepted).toHaveLength(30);
    expect(refused).toHaveLength(30);
    for (const r of refused) {
      expect(r.status).toBe(429);
      expect(r.body.error ?? r.body).toMatchObject({
        code: 'FABRIC_ERR_QUEUE_FULL',
        details: { limit: 30, tenant: 'flood' },
      });
    }
    // Over gRPC too, as RESOURCE_EXHAUSTED with the catalog code.
    const grpcRefused = await failure(viaGrpc('flood', 60));
    expect(grpcRefused.code).toBe(status.RESOURCE_EXHAUSTED);
    expect(grpcRefused.metadata.get('fabric-error-code')).toEqual(['FABRIC_ERR_QUEUE_FULL']);
    expect(grpcRefused.details).toContain('maxQueueDepthPerTenant');

    // Other tenants still get in, through both doors.
    const b = await viaGrpc('quiet-b', 0);
    expect(b.task).toMatchObject({ tenant: 'quiet-b' });
    const c = await viaApi('quiet-c', 0);
    expect(c.status, JSON.stringify(c.body)).toBe(200);
    for (let i = 1; i < 9; i++) expect((await viaApi('quiet-c', i)).status).toBe(200);
    // The whole queue is the bound of all of them together.
    expect(sidecar.fabric!.scheduler.stats().queueDepth).toBe(40);
    expect((await viaApi('quiet-d', 0)).body).toMatchObject({ code: 'FABRIC_ERR_QUEUE_FULL' });

    // Every acknowledged task is in the state file, and no refused one.
    await closeSidecar(sidecar);
    sidecar = undefined;
    const stored = await storedByTenant(path);
    expect(Object.fromEntries(stored)).toEqual({ flood: 30, 'quiet-b': 1, 'quiet-c': 9 });
  });

  it('lets the tenant in again once its own tasks leave the queue', async () => {
    sidecar = await startTestSidecar({
      fabric: { maxQueueDepth: 8, maxQueueDepthPerTenant: 2 },
      pools: [{ id: 'crew', minAgents: 0 }],
    } as never);
    const first = await viaApi('flood', 0);
    expect((await viaApi('flood', 1)).status).toBe(200);
    expect((await viaApi('flood', 2)).status).toBe(429);
    await sidecar.fabric!.cancelTask(first.body.task.taskId);
    expect((await viaApi('flood', 3)).status).toBe(200);
    expect((await viaApi('flood', 4)).status).toBe(429);
  });
});

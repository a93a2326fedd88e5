/**
 * `maxAttempts` past what a protobuf `uint32` holds (`TaskInfo.max_attempts`): the library (a
 * task's own, or the configured `defaultMaxAttempts`) took any safe integer, so a task with
 * 2^40 attempts was queued, and from then on every gRPC `ListTasks` showing it failed for every
 * operator with `INTERNAL: Error serializing response`. Now more than 4,294,967,295 is refused
 * with FABRIC_ERR_INVALID_ARGUMENT and nothing is queued; the largest that fits goes through
 * every door. Real sidecar, grpc-js client.
 *
 * A task an older build stored with more (it queued any safe integer) still loads from the state
 * file — and then every gRPC `ListTasks` showing it failed. Now it is lowered to 4,294,967,295 at
 * load, with a process warning (`FABRIC_TASK_MAX_ATTEMPTS_LOWERED`) naming the task and both
 * numbers, and is listed. Real SQLite state file (the value written into its `tasks` table as
 * the older build stored it).
 */
import { join } from 'node:path';
import { create } from '@bufbuild/protobuf';
import type { Client as GrpcClient } from '@grpc/grpc-js';
import Database from 'better-sqlite3';
import { afterEach, describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '../../src/errors.js';
import { AgentFabric } from '../../src/fabric.js';
import {
  FabricService,
  ListTasksRequestSchema,
  type ListTasksResponse,
} from '../../src/gen/fabric/v1/fabric_pb.js';
import { MAX_TASK_ATTEMPTS } from '../../src/scheduler/agent-scheduler.js';
import { grpcDefinition } from '../../src/rpc/grpc-definition.js';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  ADMIN_TOKEN,
  agentId,
  api,
  closeSidecar,
  DEFAULT_ALLOW,
  startTestSidecar,
  tempDir,
} from '../fixtures/gateway/harness.js';
import { grpcClient, unary } from '../fixtures/grpc-client.js';

let sidecar: Sidecar | undefined;
let grpc: GrpcClient | undefined;

afterEach(async () => {
  grpc?.close();
  grpc = undefined;
  await closeSidecar(sidecar);
  sidecar = undefined;
});

/** Every task, as gRPC `ListTasks` shows them to the admin (a grpc-js client). */
function listTasks(s: Sidecar): Promise<ListTasksResponse> {
  grpc = grpcClient(grpcDefinition(FabricService), s.grpcAddress!);
  return unary<ListTasksResponse>(
    grpc,
    'listTasks',
    create(ListTasksRequestSchema, {}),
    ADMIN_TOKEN,
  );
}

describe('maxAttempts past a protobuf uint32', () => {
  it('is refused at schedule time; the largest that fits is listed over gRPC and /api', async () => {
    sidecar = await startTestSidecar({
      policies: [DEFAULT_ALLOW],
      grpc: { port: 0 },
      pools: [{ id: 'crew' }],
      agents: [{ name: 'w' }],
    } as never);
    const fabric = sidecar.fabric!;
    const worker = agentId(sidecar, 'w');
    for (const maxAttempts of [MAX_TASK_ATTEMPTS + 1, 2 ** 40, Number.MAX_SAFE_INTEGER]) {
      await expect(
        fabric.schedule({ agentId: worker, taskType: 'many', maxAttempts }),
      ).rejects.toThrow(/maxAttempts must be at most 4294967295/);
      await expect(
        fabric.scheduleToPool('crew', 'many', null, { maxAttempts }),
      ).rejects.toBeInstanceOf(InvalidArgumentError);
    }
    expect(fabric.scheduler.listTasks()).toEqual([]);
    await fabric.schedule({ agentId: worker, taskType: 'most', maxAttempts: MAX_TASK_ATTEMPTS });
    const listed = await listTasks(sidecar);
    expect(listed.tasks.map((t) => [t.taskType, t.maxAttempts])).toEqual([
      ['most', MAX_TASK_ATTEMPTS],
    ]);
    const res = await api(sidecar, 'FabricService/ListTasks', {});
    expect(res.status).toBe(200);
    expect(await res.text()).toContain(`"maxAttempts":${MAX_TASK_ATTEMPTS}`);
  });

  it('as the configured defaultMaxAttempts is refused before anything starts', () => {
    expect(() => new AgentFabric({ defaultMaxAttempts: 2 ** 40 })).toThrow(
      /defaultMaxAttempts must be at most 4294967295/,
    );
  });
});

const config = (path: string) =>
  ({
    state: { path },
    grpc: { host: '127.0.0.1', port: 0 },
    agents: [{ name: 'w' }],
  }) as never;

/**
 * A state file at `path` holding one queued task as an older build stored it with maxAttempts
 * 2^40 (a real sidecar queues it, then its row is changed); the task's id.
 */
async function storedTask(path: string): Promise<string> {
  sidecar = await startTestSidecar(config(path));
  const task = await sidecar.fabric!.schedule({
    agentId: agentId(sidecar, 'w'),
    taskType: 'old',
    maxAttempts: 3,
  });
  await closeSidecar(sidecar);
  sidecar = undefined;
  const db = new Database(path);
  expect(
    db.prepare('UPDATE tasks SET max_attempts = ? WHERE id = ?').run(2 ** 40, task.id).changes,
  ).toBe(1);
  db.close();
  return task.id;
}

describe('a stored maxAttempts past a protobuf uint32', () => {
  it('is lowered at load, with a warning, and the task is listed over gRPC', async () => {
    const path = join(tempDir('max-attempts-stored'), 'state.db');
    const task = { id: await storedTask(path) };

    const warnings: Array<Error & { code?: string }> = [];
    const onWarning = (w: Error): void => void warnings.push(w);
    process.on('warning', onWarning);
    try {
      sidecar = await startTestSidecar(config(path));
      await new Promise((resolve) => setImmediate(resolve)); // warnings come on the next tick
    } finally {
      process.off('warning', onWarning);
    }
    const lowered = warnings.filter((w) => w.code === 'FABRIC_TASK_MAX_ATTEMPTS_LOWERED');
    expect(lowered).toHaveLength(1);
    expect(lowered[0]!.message).toContain(task.id);
    expect(lowered[0]!.message).toContain(`${2 ** 40}`);
    expect(lowered[0]!.message).toContain(`${MAX_TASK_ATTEMPTS}`);

    const listed = await listTasks(sidecar);
    expect(listed.tasks.map((t) => [t.taskId, t.maxAttempts])).toEqual([
      [task.id, MAX_TASK_ATTEMPTS],
    ]);
  });

  it('is written back lowered: a queued task nobody touches warns at one start only', async () => {
    const path = join(tempDir('max-attempts-once'), 'state.db');
    const task = { id: await storedTask(path) };
    const storedMaxAttempts = (): unknown => {
      const db = new Database(path, { readonly: true });
      try {
        return (
          db.prepare('SELECT max_attempts FROM tasks WHERE id = ?').get(task.id) as {
            max_attempts: unknown;
          }
        ).max_attempts;
      } finally {
        db.close();
      }
    };
    expect(storedMaxAttempts()).toBe(2 ** 40);

    const warnings: Array<Error & { code?: string }> = [];
    const onWarning = (w: Error): void => void warnings.push(w);
    process.on('warning', onWarning);
    try {
      for (let start = 0; start < 3; start++) {
        sidecar = await startTestSidecar(config(path));
        await new Promise((resolve) => setImmediate(resolve)); // warnings come on the next tick
        expect(sidecar.fabric!.scheduler.getTask(task.id)?.status).toBe('PENDING');
        await closeSidecar(sidecar);
        sidecar = undefined;
        expect(storedMaxAttempts()).toBe(MAX_TASK_ATTEMPTS);
      }
    } finally {
      process.off('warning', onWarning);
    }
    expect(warnings.filter((w) => w.code === 'FABRIC_TASK_MAX_ATTEMPTS_LOWERED')).toHaveLength(1);

    // The rest of the row is as it was: the task still runs.
    sidecar = await startTestSidecar(config(path));
    const listed = await listTasks(sidecar);
    expect(listed.tasks.map((t) => [t.taskId, t.taskType, t.maxAttempts])).toEqual([
      [task.id, 'old', MAX_TASK_ATTEMPTS],
    ]);
  });
});

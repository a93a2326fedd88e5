/**
 * `maxAttempts` past what a protobuf `uint32` holds (`TaskInfo.max_attempts`): the library (a
 * task's own, or the configured `defaultMaxAttempts`) took any safe integer, so a task with
 * 2^40 attempts was queued, and from then on every gRPC `ListTasks` showing it failed for every
 * operator with `INTERNAL: Error serializing response`. Now more than 4,294,967,295 is refused
 * with FABRIC_ERR_INVALID_ARGUMENT and nothing is queued; the largest that fits goes through
 * every door. Real sidecar, grpc-js client.
 */
import { create } from '@bufbuild/protobuf';
import type { Client as GrpcClient } from '@grpc/grpc-js';
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
    grpc = grpcClient(grpcDefinition(FabricService), sidecar.grpcAddress!);
    const listed = await unary<ListTasksResponse>(
      grpc,
      'listTasks',
      create(ListTasksRequestSchema, {}),
      ADMIN_TOKEN,
    );
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

/**
 * A task's deadline as a `google.protobuf.Timestamp` over gRPC (grpc-js client, real sidecar):
 * every valid Timestamp is taken, the largest — 9999-12-31T23:59:59.999999999Z — included.
 * protobuf-es's `timestampMs` rounds its nanoseconds, so that one became year 10000 and was
 * refused as past the latest deadline; now the nanoseconds are cut to the millisecond. A
 * Timestamp outside its range (nanos below 0 or past 999,999,999; seconds past year 9999) is
 * refused with FABRIC_ERR_INVALID_ARGUMENT naming the range, and nothing is queued.
 */
import { create } from '@bufbuild/protobuf';
import { TimestampSchema } from '@bufbuild/protobuf/wkt';
import { status, type Client } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  FabricService,
  ListTasksRequestSchema,
  ScheduleTaskRequestSchema,
  type ListTasksResponse,
  type ScheduleTaskResponse,
} from '../../src/gen/fabric/v1/fabric_pb.js';
import { grpcDefinition } from '../../src/rpc/grpc-definition.js';
import type { Sidecar } from '../../src/server/sidecar.js';
import { failure, grpcClient, unary } from '../fixtures/grpc-client.js';
import {
  ADMIN_TOKEN,
  agentId,
  closeSidecar,
  startTestSidecar,
} from '../fixtures/gateway/harness.js';

describe('ScheduleTask: a deadline as a protobuf Timestamp (grpc-js)', () => {
  let sidecar: Sidecar;
  let admin: Client;
  let worker: string;

  beforeAll(async () => {
    sidecar = await startTestSidecar({
      grpc: { host: '127.0.0.1', port: 0 },
      agents: [{ name: 'w' }],
    } as never);
    worker = agentId(sidecar, 'w');
    admin = grpcClient(grpcDefinition(FabricService), sidecar.grpcAddress!);
  });

  afterAll(async () => {
    admin?.close();
    await closeSidecar(sidecar);
  });

  const schedule = (seconds: bigint, nanos: number): Promise<ScheduleTaskResponse> =>
    unary<ScheduleTaskResponse>(
      admin,
      'scheduleTask',
      create(ScheduleTaskRequestSchema, {
        agentId: worker,
        taskType: 't',
        options: { deadline: create(TimestampSchema, { seconds, nanos }) },
      }),
      ADMIN_TOKEN,
    );

  it('takes the largest valid Timestamp, and lists it back', async () => {
    const { task } = await schedule(253_402_300_799n, 999_999_999);
    const listed = await unary<ListTasksResponse>(
      admin,
      'listTasks',
      create(ListTasksRequestSchema, {}),
      ADMIN_TOKEN,
    );
    const mine = listed.tasks.find((t) => t.taskId === task!.taskId)!;
    expect(mine.deadline?.seconds).toBe(253_402_300_799n);
    expect(mine.deadline?.nanos).toBe(999_000_000);
  });

  it('refuses a Timestamp outside its range, naming the range; nothing is queued', async () => {
    const before = sidecar.fabric!.scheduler.listTasks().length;
    for (const [seconds, nanos] of [
      [253_402_300_799n, 1_000_000_000],
      [4_000_000_000n, -1],
      [253_402_300_800n, 0],
    ] as const) {
      const err = await failure(schedule(seconds, nanos));
      expect(err.code).toBe(status.INVALID_ARGUMENT);
      expect(err.metadata.get('fabric-error-code')[0]).toBe('FABRIC_ERR_INVALID_ARGUMENT');
      expect(err.details).toContain('9999-12-31T23:59:59.999999999Z');
    }
    expect(sidecar.fabric!.scheduler.listTasks()).toHaveLength(before);
  });
});

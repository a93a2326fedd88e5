/**
 * A `ClaimTask` cut off by the client (its deadline passes, or it cancels) must never leave a
 * task RUNNING on an agent that did not get it: the task goes back to the queue, its attempt not
 * counted, and the agent's slot is free. Real grpc-js client, real server, real fabric; tasks
 * arrive around the moment each call's deadline passes, many times over.
 */
import { create } from '@bufbuild/protobuf';
import { Server, ServerCredentials, status, type Client, type ServiceError } from '@grpc/grpc-js';
import { afterEach, describe, expect, it } from 'vitest';
import { AgentFabric } from '../../src/fabric.js';
import type { AgentService } from '../../src/gen/fabric/v1/agent_pb.js';
import {
  ClaimTaskRequestSchema,
  CompleteTaskRequestSchema,
  type ClaimTaskResponse,
} from '../../src/gen/fabric/v1/agent_pb.js';
import { AGENT_SERVICE_DEFINITION, agentService } from '../../src/rpc/agent-service.js';
import { addGrpcService, type ServiceImplementation } from '../../src/rpc/rpc-call.js';
import { startGrpcServer, type GrpcServer } from '../../src/rpc/grpc-server.js';
import { TaskStatus } from '../../src/task.js';
import { grpcClient, unary } from '../fixtures/grpc-client.js';

/** A ClaimTask-style call with a deadline, or cancelled by the client after `cancelAfterMs`. */
function call<T>(
  client: Client,
  method: string,
  req: unknown,
  credential: string,
  options: { deadline?: number; cancelAfterMs?: number } = {},
): Promise<T> {
  const { deadline, cancelAfterMs } = options;
  return unary<T>(client, method, req, credential, {
    ...(deadline === undefined ? {} : { deadline }),
    ...(cancelAfterMs === undefined
      ? {}
      : { started: (c) => void setTimeout(() => c.cancel(), cancelAfterMs) }),
  });
}

describe('ClaimTask cut off by the client', () => {
  let fabric: AgentFabric | undefined;
  let server: GrpcServer | undefined;
  let client: Client | undefined;

  afterEach(async () => {
    client?.close();
    await server?.close();
    await fabric?.close();
  });

  it('never leaves a task RUNNING on an agent whose claim ran out of time (many runs)', async () => {
    const RUNS = 30;
    fabric = new AgentFabric({ maxConcurrentTasksPerAgent: 2 });
    const agent = await fabric.spawn({ model: 'm', name: 'w', executor: 'remote' });
    server = await startGrpcServer(fabric);
    client = grpcClient(AGENT_SERVICE_DEFINITION, server.address);
    const delivered = new Set<string>();
    const scheduled: string[] = [];
    for (let i = 0; i < RUNS; i++) {
      // The claim waits 5 s but its deadline is 300 ms away; the task arrives before, around
      // and after the moment the claim stops waiting (240 ms) and the deadline (300 ms).
      const deadlineMs = 300;
      const arriveMs = 200 + ((i * 7) % 130);
      const arrival = new Promise<void>((resolve) =>
        setTimeout(() => {
          void fabric!
            .schedule({ agentId: agent.id, taskType: 't', payload: { i }, maxAttempts: 1 })
            .then((t) => scheduled.push(t.id))
            .finally(resolve);
        }, arriveMs),
      );
      const res = await call<ClaimTaskResponse>(
        client,
        'claimTask',
        create(ClaimTaskRequestSchema, { waitSeconds: 5 }),
        agent.credential,
        { deadline: Date.now() + deadlineMs },
      ).catch((e: ServiceError) => e);
      await arrival;
      if (res instanceof Error) {
        expect(res.code).toBe(status.DEADLINE_EXCEEDED);
        continue;
      }
      if (res.task === undefined) continue;
      delivered.add(res.task.taskId);
      await complete(res.task.taskId, res.task.attempt, agent.credential);
    }
    // How many calls the deadline cut off depends on timing; what must hold is the state below.
    await everyUndeliveredTaskIsBack(agent, scheduled, delivered);
  });

  it('gives the task back when the call ended before its answer was written', async () => {
    fabric = new AgentFabric({ maxConcurrentTasksPerAgent: 1 });
    const agent = await fabric.spawn({ model: 'm', name: 'w', executor: 'remote' });
    const real = agentService(fabric);
    const handedOut: string[] = [];
    // The real ClaimTask, except that the claim is made once the call has already ended (as
    // when the task arrives in the instant the client gives up): the answer cannot be written.
    const late: ServiceImplementation<typeof AgentService> = {
      ...real,
      unary: {
        ...real.unary,
        claimTask: async (caller, req, signal, context) => {
          await new Promise((resolve) => signal.addEventListener('abort', resolve));
          await fabric!.schedule({ agentId: agent.id, taskType: 't', payload: {}, maxAttempts: 1 });
          const res = await real.unary.claimTask(
            caller,
            req,
            new AbortController().signal,
            context,
          );
          handedOut.push(res.task!.taskId);
          return res;
        },
      },
    };
    const grpc = new Server();
    addGrpcService(grpc, fabric, late);
    const port = await new Promise<number>((resolve, reject) =>
      grpc.bindAsync('127.0.0.1:0', ServerCredentials.createInsecure(), (e, p) =>
        e ? reject(e) : resolve(p),
      ),
    );
    client = grpcClient(AGENT_SERVICE_DEFINITION, `127.0.0.1:${port}`);
    try {
      const scheduled: string[] = [];
      fabric.scheduler.events.on('task.scheduled', (t) => scheduled.push(t.id));
      for (let i = 0; i < 10; i++) {
        const res = await call<ClaimTaskResponse>(
          client,
          'claimTask',
          create(ClaimTaskRequestSchema, { waitSeconds: 5 }),
          agent.credential,
          i % 2 === 0 ? { deadline: Date.now() + 50 } : { cancelAfterMs: 50 },
        ).catch((e: ServiceError) => e);
        expect(res).toBeInstanceOf(Error);
        // The handler handed out a task (the first queued: the ones given back come first)…
        await expect.poll(() => handedOut.length).toBe(i + 1);
        // …which is back in the queue, its attempt used but not counted; no slot is held.
        await expect
          .poll(async () => (await fabric!.getTask(handedOut[i]!)).status)
          .toBe(TaskStatus.PENDING);
        for (const id of scheduled)
          expect((await fabric.getTask(id)).status).toBe(TaskStatus.PENDING);
        expect(fabric.scheduler.agentLoad(agent.id).runningTasks).toBe(0);
      }
      client.close();
      client = undefined;
      server = await startGrpcServer(fabric);
      client = grpcClient(AGENT_SERVICE_DEFINITION, server.address);
      await everyUndeliveredTaskIsBack(agent, scheduled, new Set());
    } finally {
      grpc.forceShutdown();
    }
  });

  /** Every task not delivered is PENDING, no slot is held, and a patient claim gets each. */
  async function everyUndeliveredTaskIsBack(
    agent: { id: string; credential: string },
    scheduled: readonly string[],
    delivered: ReadonlySet<string>,
  ): Promise<void> {
    for (const id of scheduled) {
      const t = await fabric!.getTask(id);
      expect(t.status).toBe(delivered.has(id) ? TaskStatus.COMPLETED : TaskStatus.PENDING);
    }
    expect(fabric!.scheduler.agentLoad(agent.id).runningTasks).toBe(0);
    const left = new Set(scheduled.filter((x) => !delivered.has(x)));
    while (left.size > 0) {
      const res = await call<ClaimTaskResponse>(
        client!,
        'claimTask',
        create(ClaimTaskRequestSchema, { waitSeconds: 5 }),
        agent.credential,
      );
      expect(left.delete(res.task!.taskId)).toBe(true);
      // maxAttempts is 1: the attempts that never reached the agent did not count.
      await complete(res.task!.taskId, res.task!.attempt, agent.credential);
      expect((await fabric!.getTask(res.task!.taskId)).status).toBe(TaskStatus.COMPLETED);
    }
  }

  function complete(taskId: string, attempt: number, credential: string): Promise<unknown> {
    return call(
      client!,
      'completeTask',
      create(CompleteTaskRequestSchema, { taskId, attempt }),
      credential,
    );
  }
});

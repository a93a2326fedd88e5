/**
 * A `ClaimTask` cut off by the client (its deadline passes, or it cancels) must never leave a
 * task RUNNING on an agent that did not get it: the task goes back to the queue, its attempt not
 * counted, and the agent's slot is free. Real grpc-js client, real server, real fabric; tasks
 * arrive around the moment each call's deadline passes, many times over.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { create } from '@bufbuild/protobuf';
import Database from 'better-sqlite3';
import { Server, ServerCredentials, status, type Client, type ServiceError } from '@grpc/grpc-js';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { AgentFabric } from '../../src/fabric.js';
import type { AgentService } from '../../src/gen/fabric/v1/agent_pb.js';
import {
  ClaimTaskRequestSchema,
  CompleteTaskRequestSchema,
  ReportProgressRequestSchema,
  type ClaimTaskResponse,
} from '../../src/gen/fabric/v1/agent_pb.js';
import { AGENT_SERVICE_DEFINITION, agentService } from '../../src/rpc/agent-service.js';
import { addGrpcService, type ServiceImplementation } from '../../src/rpc/rpc-call.js';
import { startGrpcServer, type GrpcServer } from '../../src/rpc/grpc-server.js';
import { SqliteStore } from '../../src/store/sqlite-store.js';
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

  it('hammered: concurrent leased claims with tiny deadlines and cancels while the event loop stalls leave no task RUNNING on the agent that it did not get, and hold no slot (checked in the state file)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'fabric-claim-hammer-'));
    const path = join(dir, 'state.db');
    const CLAIMERS = 16;
    const CALLS = 25;
    try {
      fabric = new AgentFabric(
        { maxConcurrentTasksPerAgent: 8 },
        { store: (await SqliteStore.open(path)) as never },
      );
      const agent = await fabric.spawn({ model: 'm', name: 'w', executor: 'remote' });
      server = await startGrpcServer(fabric);
      client = grpcClient(AGENT_SERVICE_DEFINITION, server.address);
      const scheduled: string[] = [];
      fabric.scheduler.events.on('task.scheduled', (t) => scheduled.push(t.id));
      /** Attempt the agent got, by task: what a worker would run. */
      const delivered = new Map<string, number>();
      let cutOff = 0;
      let producing = true;
      // Tasks keep arriving while the claims run (maxAttempts 1: an attempt that never reached
      // the agent but counted would fail the task).
      const producer = (async () => {
        for (let i = 0; producing; i++) {
          await fabric!.schedule({
            agentId: agent.id,
            taskType: 't',
            payload: { i },
            maxAttempts: 1,
          });
          await new Promise((r) => setTimeout(r, i % 3));
        }
      })();
      // Heavy load: client and server share this event loop, and it stalls for up to 15 ms every
      // few ms, so deadlines pass while answers are being made, sent or are still unread.
      let stall = 0;
      const load = setInterval(() => {
        const end = performance.now() + (stall++ % 16);
        while (performance.now() < end);
      }, 3);
      try {
        await Promise.all(
          Array.from({ length: CLAIMERS }, async (_, c) => {
            for (let k = 0; k < CALLS; k++) {
              const n = c * CALLS + k;
              const res = await call<ClaimTaskResponse>(
                client!,
                'claimTask',
                create(ClaimTaskRequestSchema, {
                  waitSeconds: [0, 0.005, 0.02, 1][n % 4]!,
                  ackSeconds: 1,
                }),
                agent.credential,
                n % 5 === 4
                  ? { cancelAfterMs: n % 7 }
                  : { deadline: Date.now() + [1, 3, 8, 20, 50, 300, 5_000][n % 7]! },
              ).catch((e: ServiceError) => e);
              if (res instanceof Error) {
                // RESOURCE_EXHAUSTED: more claims open than the agent has slots (16 claimers, 8
                // slots; a claim the client gave up on is open until the server sees that).
                expect([
                  status.DEADLINE_EXCEEDED,
                  status.CANCELLED,
                  status.RESOURCE_EXHAUSTED,
                ]).toContain(res.code);
                cutOff++;
                continue;
              }
              if (res.task === undefined) continue;
              expect(delivered.has(res.task.taskId)).toBe(false);
              delivered.set(res.task.taskId, res.task.attempt);
              await complete(res.task.taskId, res.task.attempt, agent.credential);
            }
          }),
        );
      } finally {
        clearInterval(load);
        producing = false;
        await producer;
      }
      // The hammering did cut calls off and did deliver tasks (else it proved nothing; the 5 s
      // deadlines deliver even when the machine is loaded).
      expect(cutOff).toBeGreaterThan(0);
      expect(delivered.size).toBeGreaterThan(0);
      // Answers the server wrote but the client dropped (its deadline fired first: the server
      // cannot see that) hold their tasks until the 1 s delivery lease ends unacknowledged; the
      // answers the server saw undelivered gave their tasks back at once. Then no slot is held.
      await expect
        .poll(() => fabric!.scheduler.agentLoad(agent.id).runningTasks, { timeout: 20_000 })
        .toBe(0);
      // In the state file, as another reader sees it: no task is RUNNING (or SCHEDULED) on the
      // agent — every task it got was completed — and every other one is waiting, none failed.
      const db = new Database(path, { readonly: true });
      try {
        const rows = db
          .prepare<[], { id: string; status: string; assigned_agent_id: string | null }>(
            'SELECT id, status, assigned_agent_id FROM tasks',
          )
          .all();
        const stored = new Map(rows.map((r) => [r.id, r]));
        for (const id of scheduled) {
          const row = stored.get(id);
          expect(row?.status, `task ${id}`).toBe(
            delivered.has(id) ? TaskStatus.COMPLETED : TaskStatus.PENDING,
          );
        }
        expect(
          rows.filter((r) => r.status === TaskStatus.RUNNING || r.status === TaskStatus.SCHEDULED),
        ).toEqual([]);
      } finally {
        db.close();
      }
      await everyUndeliveredTaskIsBack(agent, scheduled, new Set(delivered.keys()));
    } finally {
      client?.close();
      client = undefined;
      await server?.close();
      server = undefined;
      await fabric?.close();
      fabric = undefined;
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a delivery lease: acknowledged by a report, the task stays; not acknowledged, it goes back uncounted; over 3600 s is refused', async () => {
    fabric = new AgentFabric({ maxConcurrentTasksPerAgent: 2 });
    const agent = await fabric.spawn({ model: 'm', name: 'w', executor: 'remote' });
    server = await startGrpcServer(fabric);
    client = grpcClient(AGENT_SERVICE_DEFINITION, server.address);
    const claim = (ackSeconds: number): Promise<ClaimTaskResponse> =>
      call<ClaimTaskResponse>(
        client!,
        'claimTask',
        create(ClaimTaskRequestSchema, { waitSeconds: 5, ackSeconds }),
        agent.credential,
      );
    const tooLong = await claim(3601).catch((e: ServiceError) => e);
    expect(tooLong).toMatchObject({ code: status.INVALID_ARGUMENT });
    expect((tooLong as ServiceError).details).toContain('ackSeconds');
    const kept = await fabric.schedule({
      agentId: agent.id,
      taskType: 't',
      payload: {},
      maxAttempts: 1,
    });
    const dropped = await fabric.schedule({
      agentId: agent.id,
      taskType: 't',
      payload: {},
      maxAttempts: 1,
    });
    const first = (await claim(1)).task!;
    const second = (await claim(1)).task!;
    expect([first.taskId, second.taskId]).toEqual([kept.id, dropped.id]);
    // The agent acknowledges the first with an empty progress report, and ignores the second (as
    // a client that dropped the answer would).
    await call(
      client,
      'reportProgress',
      create(ReportProgressRequestSchema, { taskId: first.taskId, attempt: first.attempt }),
      agent.credential,
    );
    await expect
      .poll(async () => (await fabric!.getTask(dropped.id)).status, { timeout: 10_000 })
      .toBe(TaskStatus.PENDING);
    // The acknowledged one is still the agent's, well past the lease; only it holds a slot.
    await new Promise((r) => setTimeout(r, 1_200));
    expect((await fabric.getTask(kept.id)).status).toBe(TaskStatus.RUNNING);
    expect(fabric.scheduler.agentLoad(agent.id).runningTasks).toBe(1);
    await complete(first.taskId, first.attempt, agent.credential);
    expect((await fabric.getTask(kept.id)).status).toBe(TaskStatus.COMPLETED);
    // The given-back task's lost attempt did not count (maxAttempts 1): it runs and completes.
    const again = (await claim(0)).task!;
    expect(again.taskId).toBe(dropped.id);
    expect(again.attempt).toBeGreaterThan(second.attempt);
    await complete(again.taskId, again.attempt, agent.credential);
    expect((await fabric.getTask(dropped.id)).status).toBe(TaskStatus.COMPLETED);
    // Leases that ended stop listening for progress.
    expect(fabric.scheduler.events.listens('task.progress')).toBe(false);
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
  it('a claim waiting while its agent is terminated ends FAILED_PRECONDITION, not "no task"', async () => {
    fabric = new AgentFabric();
    const agent = await fabric.spawn({ model: 'm', name: 'w', executor: 'remote' });
    server = await startGrpcServer(fabric);
    client = grpcClient(AGENT_SERVICE_DEFINITION, server.address);
    const waiting = call<ClaimTaskResponse>(
      client,
      'claimTask',
      create(ClaimTaskRequestSchema, { waitSeconds: 60 }),
      agent.credential,
    ).catch((e: ServiceError) => e);
    // Terminated once the claim waits: the door registered the call (credentialCalls) and, in
    // the same turn of the event loop, the claim; before, the call would be UNAUTHENTICATED.
    await vi.waitFor(() => expect(fabric!.credentialCalls.agents).toBe(1));
    await fabric.terminate(agent.id, { drainTimeoutSeconds: 0 });
    // Was an OK answer without a task: the worker took it for an idle queue and asked again.
    const res = await waiting;
    expect(res).toBeInstanceOf(Error);
    const err = res as ServiceError;
    expect(err.code).toBe(status.FAILED_PRECONDITION);
    expect(err.metadata.get('fabric-error-code')[0]).toBe('FABRIC_ERR_AGENT_UNAVAILABLE');
  });
});

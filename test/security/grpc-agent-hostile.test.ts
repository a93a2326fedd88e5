/**
 * A hostile agent on the gRPC agent protocol (a real grpc-js client, a real gRPC server over a
 * fabric on a real SQLite state file): acting on another agent's task, racing completes and
 * fails of one attempt, naming attempts out of order, sending results too big or too deep, and
 * racing claims. Every refusal is typed, and the state file holds exactly one end per task.
 */
import { connect } from 'node:http2';
import { join } from 'node:path';
import { create, fromJson, type JsonValue } from '@bufbuild/protobuf';
import { ListValueSchema, ValueSchema } from '@bufbuild/protobuf/wkt';
import { status, type Client, type ServiceError } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentFabric } from '../../src/fabric.js';
import {
  ClaimTaskRequestSchema,
  CompleteTaskRequestSchema,
  FailTaskRequestSchema,
  ReportProgressRequestSchema,
  type ClaimTaskResponse,
} from '../../src/gen/fabric/v1/agent_pb.js';
import type { AgentRecord } from '../../src/lifecycle/lifecycle-manager.js';
import type { PoolRecord } from '../../src/pools/pool-manager.js';
import { AGENT_SERVICE_DEFINITION } from '../../src/rpc/agent-service.js';
import { startGrpcServer, type GrpcServer } from '../../src/rpc/grpc-server.js';
import type { TaskRecord } from '../../src/scheduler/task-record.js';
import { SqliteStore } from '../../src/store/sqlite-store.js';
import { TaskStatus } from '../../src/task.js';
import { tempDir } from '../fixtures/gateway/harness.js';
import { grpcClient, unary as call } from '../fixtures/grpc-client.js';
import { onDisk } from '../fixtures/nats/state-sidecar.js';

describe('a hostile agent on the gRPC agent protocol', () => {
  let fabric: AgentFabric;
  let server: GrpcServer;
  let client: Client;
  let statePath: string;
  let alice: { id: string; credential: string };
  let bob: { id: string; credential: string };

  beforeAll(async () => {
    statePath = join(tempDir('grpc-hostile'), 'state.db');
    const store = await SqliteStore.open<TaskRecord, AgentRecord, PoolRecord>(statePath);
    fabric = new AgentFabric({}, { store });
    server = await startGrpcServer(fabric);
    alice = await fabric.spawn({ model: 'm', name: 'alice', executor: 'remote' });
    bob = await fabric.spawn({ model: 'm', name: 'bob', executor: 'remote' });
    client = grpcClient(AGENT_SERVICE_DEFINITION, server.address);
  });

  afterAll(async () => {
    client?.close();
    await server?.close();
    await fabric?.close();
  });

  const value = (v: JsonValue) => fromJson(ValueSchema, v);
  const refused = (p: Promise<unknown>): Promise<ServiceError> =>
    p.then(
      () => {
        throw new Error('expected a refusal');
      },
      (e: ServiceError) => e,
    );

  async function claimed(agent: { id: string; credential: string }, payload: JsonValue) {
    const task = await fabric.schedule({
      agentId: agent.id,
      taskType: 't',
      payload,
      maxAttempts: 3,
    });
    const res = await call<ClaimTaskResponse>(
      client,
      'claimTask',
      create(ClaimTaskRequestSchema, { waitSeconds: 5 }),
      agent.credential,
    );
    expect(res.task?.taskId).toBe(task.id);
    return { id: task.id, attempt: res.task!.attempt };
  }

  const complete = (cred: string, taskId: string, attempt: number, result: JsonValue) =>
    call(
      client,
      'completeTask',
      create(CompleteTaskRequestSchema, { taskId, attempt, result: value(result) }),
      cred,
    );
  const fail = (cred: string, taskId: string, attempt: number, retry: boolean) =>
    call(
      client,
      'failTask',
      create(FailTaskRequestSchema, { taskId, attempt, code: 'X', message: 'm', retry }),
      cred,
    );

  it('cannot complete, fail or report progress on another agent’s task', async () => {
    const t = await claimed(alice, { n: 1 });
    const errors = await Promise.all([
      refused(complete(bob.credential, t.id, t.attempt, 'bob')),
      refused(fail(bob.credential, t.id, t.attempt, false)),
      refused(
        call(
          client,
          'reportProgress',
          create(ReportProgressRequestSchema, {
            taskId: t.id,
            attempt: t.attempt,
            progress: value('bob'),
          }),
          bob.credential,
        ),
      ),
    ]);
    for (const e of errors) {
      expect(e.code, e.details).not.toBe(status.OK);
      expect(e.metadata.get('fabric-error-code')[0]).toMatch(/^FABRIC_ERR_/);
      expect(e.metadata.get('fabric-error-code')[0]).not.toBe('FABRIC_ERR_INTERNAL');
    }
    expect((await fabric.getTask(t.id)).status).toBe(TaskStatus.RUNNING);
    expect((await fabric.getTask(t.id)).progress).toBeUndefined();
    await complete(alice.credential, t.id, t.attempt, 'alice');
    await fabric.waitForTask(t.id, { timeoutSeconds: 5 });
    expect(onDisk(statePath).get(t.id)).toMatchObject({ status: 'COMPLETED', result: 'alice' });
  });

  it('races completes and fails of one attempt: one wins, the rest are refused, one end on disk', async () => {
    const t = await claimed(alice, { n: 2 });
    const tries = Array.from({ length: 40 }, (_, i) =>
      i % 2 === 0
        ? complete(alice.credential, t.id, t.attempt, `r${i}`).then(
            () => `c${i}`,
            (e: ServiceError) => e,
          )
        : fail(alice.credential, t.id, t.attempt, true).then(
            () => `f${i}`,
            (e: ServiceError) => e,
          ),
    );
    const out = await Promise.all(tries);
    const won = out.filter((o): o is string => typeof o === 'string');
    const lost = out.filter((o): o is ServiceError => typeof o !== 'string');
    // The first outcome stands; the same outcome sent again is answered ok and changes nothing
    // (README, "a repeated outcome"), the other outcome is refused as stale.
    const kinds = new Set(won.map((w) => w[0]));
    expect(kinds.size).toBe(1);
    expect(lost).toHaveLength(20);
    for (const e of lost) {
      expect(e.metadata.get('fabric-error-code')[0]).toMatch(/^FABRIC_ERR_/);
      expect(e.metadata.get('fabric-error-code')[0]).not.toBe('FABRIC_ERR_INTERNAL');
    }
    const task = await fabric.getTask(t.id);
    if (kinds.has('c')) {
      expect([task.status, task.attempt]).toEqual([TaskStatus.COMPLETED, 1]);
      expect(won.map((w) => `r${w.slice(1)}`)).toContain(task.result);
    } else {
      // A retried fail: queued again, nothing completed.
      expect(task.status).toBe(TaskStatus.PENDING);
      expect(task.result).toBeUndefined();
    }
    await expect.poll(() => onDisk(statePath).get(t.id)?.status).toBe(task.status);
    if (task.status === TaskStatus.PENDING) {
      const again = await call<ClaimTaskResponse>(
        client,
        'claimTask',
        create(ClaimTaskRequestSchema, { waitSeconds: 5 }),
        alice.credential,
      );
      expect([again.task?.taskId, again.task?.attempt]).toEqual([t.id, 2]);
      await complete(alice.credential, t.id, 2, 'second');
    }
  });

  it('refuses attempts out of order (past, future, zero, huge) and leaves the task as it was', async () => {
    const t = await claimed(alice, { n: 3 });
    for (const attempt of [0, t.attempt + 1, 2 ** 31 - 1, 4294967295]) {
      const e = await refused(complete(alice.credential, t.id, attempt, 'x'));
      expect(e.metadata.get('fabric-error-code')[0]).toMatch(/^FABRIC_ERR_/);
      const f = await refused(fail(alice.credential, t.id, attempt, false));
      expect(f.metadata.get('fabric-error-code')[0]).toMatch(/^FABRIC_ERR_/);
    }
    expect((await fabric.getTask(t.id)).status).toBe(TaskStatus.RUNNING);
    // A fail of attempt 1 with retry, then a late complete of attempt 1: stale, refused.
    await fail(alice.credential, t.id, t.attempt, true);
    const late = await refused(complete(alice.credential, t.id, t.attempt, 'late'));
    expect(late.metadata.get('fabric-error-code')[0]).toMatch(/^FABRIC_ERR_/);
    const again = await call<ClaimTaskResponse>(
      client,
      'claimTask',
      create(ClaimTaskRequestSchema, { waitSeconds: 5 }),
      alice.credential,
    );
    expect(again.task?.attempt).toBe(2);
    // Attempt 1 again, now that 2 runs: refused.
    await refused(complete(alice.credential, t.id, 1, 'stale'));
    await complete(alice.credential, t.id, 2, 'two');
    await fabric.waitForTask(t.id, { timeoutSeconds: 5 });
    expect(onDisk(statePath).get(t.id)).toMatchObject({
      status: 'COMPLETED',
      attempt: 2,
      result: 'two',
    });
  });

  it('refuses a result nested too deep, or not JSON, with INVALID_ARGUMENT; the task still completes', async () => {
    const t = await claimed(alice, { n: 4 });
    // Built by hand: the client's own JSON conversion stops at depth 100.
    let deep = create(ValueSchema, { kind: { case: 'stringValue', value: 'leaf' } });
    for (let i = 0; i < 200; i++) {
      deep = create(ValueSchema, {
        kind: { case: 'listValue', value: create(ListValueSchema, { values: [deep] }) },
      });
    }
    const e = await refused(
      call(
        client,
        'completeTask',
        create(CompleteTaskRequestSchema, { taskId: t.id, attempt: t.attempt, result: deep }),
        alice.credential,
      ),
    );
    expect([e.code, e.metadata.get('fabric-error-code')[0]]).toEqual([
      status.INVALID_ARGUMENT,
      'FABRIC_ERR_INVALID_ARGUMENT',
    ]);
    const nan = create(CompleteTaskRequestSchema, {
      taskId: t.id,
      attempt: t.attempt,
      result: create(ValueSchema, { kind: { case: 'numberValue', value: Number.NaN } }),
    });
    const n = await refused(call(client, 'completeTask', nan, alice.credential));
    expect(n.code).toBe(status.INVALID_ARGUMENT);
    expect((await fabric.getTask(t.id)).status).toBe(TaskStatus.RUNNING);
    await complete(alice.credential, t.id, t.attempt, { ok: true });
    await fabric.waitForTask(t.id, { timeoutSeconds: 5 });
    expect(onDisk(statePath).get(t.id)).toMatchObject({
      status: 'COMPLETED',
      result: { ok: true },
    });
  });

  it('refuses a result over the message limit with RESOURCE_EXHAUSTED; the task is untouched', async () => {
    const t = await claimed(alice, { n: 5 });
    const e = await refused(
      complete(alice.credential, t.id, t.attempt, 'x'.repeat(8 * 1024 * 1024)),
    );
    expect(e.code).toBe(status.RESOURCE_EXHAUSTED);
    expect((await fabric.getTask(t.id)).status).toBe(TaskStatus.RUNNING);
    await complete(alice.credential, t.id, t.attempt, 'small');
    await fabric.waitForTask(t.id, { timeoutSeconds: 5 });
    expect(onDisk(statePath).get(t.id)).toMatchObject({ status: 'COMPLETED', result: 'small' });
  });

  it('concurrent claims take a task once; another agent’s claim never gets it', async () => {
    const task = await fabric.schedule({ agentId: alice.id, taskType: 't', payload: { n: 6 } });
    const claim = (cred: string) =>
      call<ClaimTaskResponse>(
        client,
        'claimTask',
        create(ClaimTaskRequestSchema, { waitSeconds: 1 }),
        cred,
      );
    const got = await Promise.all([
      ...Array.from({ length: 5 }, () => claim(alice.credential)),
      ...Array.from({ length: 5 }, () => claim(bob.credential)),
    ]);
    const taken = got.flatMap((r, i) => (r.task === undefined ? [] : [[i, r.task.taskId]]));
    expect(taken).toHaveLength(1);
    expect(taken[0]![0]).toBeLessThan(5);
    expect(taken[0]![1]).toBe(task.id);
    await complete(alice.credential, task.id, 1, 'once');
    await fabric.waitForTask(task.id, { timeoutSeconds: 5 });
    expect(onDisk(statePath).get(task.id)).toMatchObject({ status: 'COMPLETED', attempt: 1 });
  });

  /** One raw HTTP/2 call of `method` with `body` as the whole request; its grpc-status and message. */
  function raw(method: string, body: Buffer, credential: string): Promise<[string, string]> {
    return new Promise((resolve, reject) => {
      const session = connect(`http://${server.address}`);
      session.on('error', reject);
      const req = session.request({
        ':method': 'POST',
        ':path': `/fabric.v1.AgentService/${method}`,
        'content-type': 'application/grpc',
        te: 'trailers',
        authorization: `Bearer ${credential}`,
      });
      let headers: Record<string, unknown> = {};
      req.on('response', (h) => (headers = { ...headers, ...h }));
      req.on('trailers', (h) => (headers = { ...headers, ...h }));
      req.on('data', () => undefined);
      req.on('error', reject);
      req.on('close', () => {
        session.close();
        resolve([
          String(headers['grpc-status']),
          decodeURIComponent(String(headers['grpc-message'])),
        ]);
      });
      req.end(body);
    });
  }
  const frame = (flag: number, declared: number, bytes: Buffer): Buffer => {
    const head = Buffer.alloc(5);
    head[0] = flag;
    head.writeUInt32BE(declared, 1);
    return Buffer.concat([head, bytes]);
  };

  it('raw HTTP/2: malformed, truncated or falsely compressed messages are refused; the task is untouched', async () => {
    const t = await claimed(alice, { n: 7 });
    const garbage = Buffer.from([0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x01]);
    const cases: [string, Buffer][] = [
      ['not protobuf', frame(0, garbage.length, garbage)],
      ['a frame shorter than it says', frame(0, 100, Buffer.from([0x0a, 0x01]))],
      ['compressed without an encoding', frame(1, 3, Buffer.from([1, 2, 3]))],
      ['a declared 4 GiB frame', frame(0, 0xffffffff, Buffer.alloc(16))],
      [
        'two messages for a unary call',
        Buffer.concat([frame(0, 0, Buffer.alloc(0)), frame(0, 0, Buffer.alloc(0))]),
      ],
    ];
    for (const [what, body] of cases) {
      const [code, message] = await raw('CompleteTask', body, alice.credential);
      expect([what, code]).not.toEqual([what, '0']);
      expect([what, code]).not.toEqual([what, 'undefined']);
      expect(message, what).not.toMatch(/FABRIC_ERR_INTERNAL/);
    }
    expect((await fabric.getTask(t.id)).status).toBe(TaskStatus.RUNNING);
    await complete(alice.credential, t.id, t.attempt, 'after');
    await fabric.waitForTask(t.id, { timeoutSeconds: 5 });
    expect(onDisk(statePath).get(t.id)).toMatchObject({ status: 'COMPLETED', result: 'after' });
  });
});

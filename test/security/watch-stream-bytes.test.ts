/**
 * Found in review: a stalled watcher's buffer was bounded in messages only (the HTTP door's
 * `pending >= maxBufferedMessages`, gRPC's `writableLength >= limit`), not in bytes. One event
 * may carry a megabyte an agent chose — a task's error message (bounded only by
 * `maxTaskResultBytes`), an approval's parameters — so one stalled admin watcher held 103 MiB
 * (worst case ~1 GiB, for each of 64 watchers). Now each stream also has a byte bound
 * (`maxBufferedBytes`, 4 MiB by default, serialized sizes summed) ending it with
 * FABRIC_ERR_STREAM_OVERFLOW (`details.unit` `bytes`) on both doors, and a task event's error
 * code and message are cut to 1,024 characters (the task keeps them whole).
 *
 * Real sidecar and HTTP clients; a real grpc-js server and client over the real fabric.
 */
import { request, createServer, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { create } from '@bufbuild/protobuf';
import { Server as GrpcServer, ServerCredentials, status, type Client } from '@grpc/grpc-js';
import { afterEach, describe, expect, it } from 'vitest';
import { AgentFabric } from '../../src/fabric.js';
import {
  EventServiceWatchRequestSchema,
  EventTopic,
  type EventServiceWatchResponse,
} from '../../src/gen/fabric/v1/events_pb.js';
import { EVENT_SERVICE_DEFINITION, eventService } from '../../src/rpc/events-service.js';
import { HttpDoor } from '../../src/rpc/http-door.js';
import { addGrpcService } from '../../src/rpc/rpc-call.js';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  ADMIN_TOKEN,
  agentId,
  agentToken,
  api,
  closeSidecar,
  DEFAULT_ALLOW,
  scheduleAndClaim,
  startTestSidecar,
} from '../fixtures/gateway/harness.js';
import { grpcClient, openStream } from '../fixtures/grpc-client.js';

const ADMIN = 'admin-credential-for-byte-bound-tests-0123';
const BOUND = 256 * 1024;
const BIG = 'x'.repeat(40 * 1024);
/** 2 × 400 events of ~40 KiB: ~32 MiB, well under the message bound (1024) in number. */
const ROUNDS = 400;

let cleanup: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanup.reverse()) await c();
  cleanup = [];
});

function approvalListeners(fabric: AgentFabric): number {
  return fabric.approvals.listenerCount('created') + fabric.approvals.listenerCount('resolved');
}

/** Approvals with ~40 KiB of parameters each, made and denied, with I/O turns in between. */
async function bigEvents(fabric: AgentFabric, agent: string, until: () => boolean): Promise<void> {
  for (let i = 0; i < ROUNDS && !until(); i++) {
    const a = fabric.approvals.create({ agentId: agent, tool: 'deploy', params: { i, BIG } });
    fabric.approvals.deny(a.id, { approver: 'test' });
    await new Promise((r) => setImmediate(r));
  }
}

function openPaused(url: URL, body: unknown, admin = ADMIN): Promise<IncomingMessage> {
  return new Promise((resolve, reject) => {
    const req = request(
      url,
      {
        method: 'POST',
        headers: { authorization: `Bearer ${admin}`, 'content-type': 'application/json' },
      },
      (res) => {
        res.pause(); // a watcher that stopped reading (a background tab, a stuck script)
        resolve(res);
      },
    );
    req.on('error', reject);
    req.end(JSON.stringify(body));
  });
}

function readAll(res: IncomingMessage): Promise<string> {
  return new Promise((resolve) => {
    let text = '';
    res.setEncoding('utf8');
    res.on('data', (c: string) => (text += c));
    res.on('end', () => resolve(text));
    res.resume();
  });
}

describe('a stalled watcher and big events: the byte bound', () => {
  it('HTTP door: the stream ends with FABRIC_ERR_STREAM_OVERFLOW (bytes) after what waited, in order', async () => {
    const fabric = new AgentFabric({}, { adminCredentials: [ADMIN] });
    cleanup.push(() => fabric.close());
    const agent = (await fabric.spawn({ model: 'm', name: 'a', executor: 'remote' })).id;
    const door = new HttpDoor({
      fabric,
      services: [eventService(fabric)],
      maxBufferedBytes: BOUND,
      keepAliveMs: 0,
    });
    const server: Server = createServer((req, res) => {
      void door.handle(req, res, new URL(req.url ?? '/', 'http://x').pathname);
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    cleanup.push(async () => {
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    });
    const { port } = server.address() as AddressInfo;
    const base = `http://127.0.0.1:${port}/api/fabric.v1.EventService/Watch`;
    const res = await openPaused(new URL(base), { topics: ['EVENT_TOPIC_APPROVALS'] });
    expect(approvalListeners(fabric)).toBe(2);

    await bigEvents(fabric, agent, () => approvalListeners(fabric) === 0);
    // The door ended the stream and unsubscribed while the client still read nothing.
    expect(approvalListeners(fabric)).toBe(0);

    const lines = (await readAll(res)).split('\n').filter((l) => l !== '');
    const last = JSON.parse(lines.at(-1)!) as {
      end?: { error?: { code: string; details: Record<string, unknown> } };
    };
    expect(last.end?.error).toMatchObject({
      code: 'FABRIC_ERR_STREAM_OVERFLOW',
      details: { limit: BOUND, unit: 'bytes' },
    });
    const sequences = lines
      .slice(0, -1)
      .map((l) => Number((JSON.parse(l) as { message: { sequence: string } }).message.sequence));
    expect(sequences.length).toBeGreaterThan(0);
    expect(sequences.length).toBeLessThan(2 * ROUNDS);
    expect(sequences).toEqual(sequences.map((_, i) => i + 1));
  });

  it('the sidecar: http.apiMaxBufferedBytes is the bound of its /api/ streams', async () => {
    const sidecar = await startTestSidecar({
      http: { apiMaxBufferedBytes: BOUND },
      agents: [{ name: 'a' }],
    } as never);
    cleanup.push(() => closeSidecar(sidecar));
    const fabric = sidecar.fabric!;
    const url = new URL('/api/fabric.v1.EventService/Watch', sidecar.url!);
    const res = await openPaused(url, { topics: ['EVENT_TOPIC_APPROVALS'] }, ADMIN_TOKEN);
    await bigEvents(fabric, agentId(sidecar, 'a'), () => approvalListeners(fabric) === 0);
    expect(approvalListeners(fabric)).toBe(0);
    const lines = (await readAll(res)).split('\n').filter((l) => l !== '');
    expect(JSON.parse(lines.at(-1)!)).toMatchObject({
      end: {
        error: { code: 'FABRIC_ERR_STREAM_OVERFLOW', details: { limit: BOUND, unit: 'bytes' } },
      },
    });
  });

  it('gRPC: the stream ends with RESOURCE_EXHAUSTED (bytes) after what waited, in order', async () => {
    const fabric = new AgentFabric({}, { adminCredentials: [ADMIN] });
    cleanup.push(() => fabric.close());
    const agent = (await fabric.spawn({ model: 'm', name: 'a', executor: 'remote' })).id;
    const server = new GrpcServer();
    addGrpcService(server, fabric, eventService(fabric), { maxBufferedBytes: BOUND });
    const port = await new Promise<number>((resolve, reject) =>
      server.bindAsync('127.0.0.1:0', ServerCredentials.createInsecure(), (e, p) =>
        e ? reject(e) : resolve(p),
      ),
    );
    cleanup.push(() => new Promise((r) => server.tryShutdown(() => r())));
    const client: Client = grpcClient(EVENT_SERVICE_DEFINITION, `127.0.0.1:${port}`);
    cleanup.push(async () => client.close());
    const slow = openStream<EventServiceWatchResponse>(
      client,
      'watch',
      create(EventServiceWatchRequestSchema, { topics: [EventTopic.APPROVALS] }),
      ADMIN,
      { paused: true },
    );
    while (approvalListeners(fabric) < 2) await new Promise((r) => setTimeout(r, 5));

    await bigEvents(fabric, agent, () => approvalListeners(fabric) === 0);
    expect(approvalListeners(fabric)).toBe(0);
    expect(slow.messages).toEqual([]);

    slow.stream.resume();
    const err = await slow.ended;
    expect(err).toMatchObject({ code: status.RESOURCE_EXHAUSTED });
    expect(err!.metadata.get('fabric-error-code')).toEqual(['FABRIC_ERR_STREAM_OVERFLOW']);
    expect(JSON.parse(String(err!.metadata.get('fabric-error-details')[0]))).toMatchObject({
      limit: BOUND,
      unit: 'bytes',
    });
    const received = slow.messages.map((m) => Number(m.sequence));
    expect(received.length).toBeGreaterThan(0);
    expect(received.length).toBeLessThan(2 * ROUNDS);
    expect(received).toEqual(received.map((_, i) => i + 1));
  });
});

describe('task events carry an agent error cut, not whole', () => {
  let sidecar: Sidecar | undefined;
  afterEach(async () => {
    await closeSidecar(sidecar);
    sidecar = undefined;
  });

  it('a stalled watcher of FailTask(900 KB message) × 120 holds kilobytes, and GetTask keeps the error whole', async () => {
    sidecar = await startTestSidecar({
      policies: [DEFAULT_ALLOW],
      agents: [{ name: 'worker', executor: 'remote' }],
    });
    const watch = await openPaused(
      new URL('/api/fabric.v1.EventService/Watch', sidecar.url!),
      { topics: ['EVENT_TOPIC_TASKS'] },
      ADMIN_TOKEN,
    );
    const token = agentToken(sidecar, 'worker');
    const message = 'x'.repeat(900_000);
    const code = `E${'c'.repeat(5000)}`;
    const N = 120;
    let lastTask = '';
    for (let i = 0; i < N; i++) {
      const task = await scheduleAndClaim(sidecar, 'worker', {
        taskType: 'job',
        options: { maxAttempts: 1 },
      });
      const f = await api(
        sidecar,
        'AgentService/FailTask',
        { taskId: task.taskId, attempt: task.attempt, code, message },
        token,
      );
      expect(f.status).toBe(200);
      lastTask = task.taskId;
    }
    // What the sidecar kept for the stalled client: three events per task, each small.
    let text = '';
    watch.setEncoding('utf8');
    await new Promise<void>((resolve) => {
      watch.on('data', (chunk: string) => {
        text += chunk;
        if (text.split('\n').filter((l) => l.startsWith('{"message"')).length >= 3 * N) resolve();
      });
      watch.resume();
    });
    watch.destroy();
    expect(text.length).toBeLessThan(3 * N * 4096);
    expect(text).not.toContain('FABRIC_ERR_STREAM_OVERFLOW');
    const finished = text
      .split('\n')
      .filter((l) => l.includes('TASK_EVENT_KIND_FINISHED'))
      .map((l) => (JSON.parse(l) as { message: { task: Record<string, string> } }).message.task);
    expect(finished).toHaveLength(N);
    expect(finished[0]!.errorMessage).toBe(`${'x'.repeat(1023)}…`);
    expect(finished[0]!.errorCode).toBe(`E${'c'.repeat(1022)}…`);

    const got = await api(sidecar, 'FabricService/GetTask', { taskId: lastTask });
    const body = (await got.json()) as { task: { error: { code: string; message: string } } };
    expect(body.task.error.message).toHaveLength(message.length);
    expect(body.task.error.code).toBe(code);
  }, 120_000);
});

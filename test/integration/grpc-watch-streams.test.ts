import { create } from '@bufbuild/protobuf';
import { status, type Client } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { AgentFabric } from '../../src/fabric.js';
import {
  ApprovalEventKind,
  ApprovalServiceWatchRequestSchema,
  ApprovalStatus,
  type ApprovalServiceWatchResponse,
} from '../../src/gen/fabric/v1/approval_pb.js';
import {
  EventServiceWatchRequestSchema,
  EventTopic,
  type EventServiceWatchResponse,
} from '../../src/gen/fabric/v1/events_pb.js';
import { APPROVAL_SERVICE_DEFINITION } from '../../src/rpc/approval-service.js';
import { EVENT_SERVICE_DEFINITION } from '../../src/rpc/events-service.js';
import { startGrpcServer, type GrpcServer } from '../../src/rpc/grpc-server.js';
import { grpcClient, openStream } from '../fixtures/grpc-client.js';

const ADMIN = 'admin-credential-for-watch-tests-0123456789';
const BOUND = 16;

/** Listeners on every emitter a watch subscribes to. */
function listeners(fabric: AgentFabric): number {
  return (
    fabric.approvals.listenerCount('created') +
    fabric.approvals.listenerCount('resolved') +
    fabric.lifecycle.events.listenerCount('agent.spawned') +
    fabric.lifecycle.events.listenerCount('agent.status') +
    fabric.lifecycle.events.listenerCount('agent.terminated') +
    fabric.scheduler.events.listenerCount('task.scheduled') +
    fabric.scheduler.events.listenerCount('task.started') +
    fabric.scheduler.events.listenerCount('task.retried') +
    fabric.scheduler.events.listenerCount('task.finished') +
    fabric.budgets.listenerCount('warning') +
    fabric.budgets.listenerCount('exhausted') +
    fabric.budgets.listenerCount('clockStep')
  );
}

describe('gRPC watch streams (real server, real grpc-js client, real fabric)', () => {
  let fabric: AgentFabric;
  let server: GrpcServer;
  let events: Client;
  let approvals: Client;
  let agentId: string;
  let baseline: number;

  beforeAll(async () => {
    fabric = new AgentFabric({}, { adminCredentials: [ADMIN] });
    agentId = (await fabric.spawn({ model: 'm', name: 'watched', executor: 'remote' })).id;
    server = await startGrpcServer(fabric, { maxBufferedMessages: BOUND });
    events = grpcClient(EVENT_SERVICE_DEFINITION, server.address);
    approvals = grpcClient(APPROVAL_SERVICE_DEFINITION, server.address);
    baseline = listeners(fabric);
  });

  afterAll(async () => {
    events?.close();
    approvals?.close();
    await server?.close();
    await fabric?.close();
  });

  it('ends on client cancel and leaves no listener behind', async () => {
    const all = openStream<EventServiceWatchResponse>(
      events,
      'watch',
      create(EventServiceWatchRequestSchema),
      ADMIN,
    );
    const watch = openStream<ApprovalServiceWatchResponse>(
      approvals,
      'watch',
      create(ApprovalServiceWatchRequestSchema),
      ADMIN,
    );
    // Every topic of the event watch (12 listeners) and the approval watch (2) subscribed.
    await vi.waitFor(() => expect(listeners(fabric)).toBe(baseline + 14));
    const a = fabric.approvals.create({ agentId, tool: 'deploy', params: { env: 'prod' } });
    const [fromAll] = await all.first(1);
    const [fromWatch] = await watch.first(1);
    expect(fromAll!.event).toMatchObject({ case: 'approval' });
    expect(fromWatch!.event).toMatchObject({
      kind: ApprovalEventKind.REQUESTED,
      existing: false,
      approval: { id: a.id },
    });

    all.stream.cancel();
    watch.stream.cancel();
    expect(await all.ended).toMatchObject({ code: status.CANCELLED });
    expect(await watch.ended).toMatchObject({ code: status.CANCELLED });
    await vi.waitFor(() => expect(listeners(fabric)).toBe(baseline));
    fabric.approvals.deny(a.id, { approver: 'test' });
  });

  it('reports an approval nobody decided in time as EXPIRED', async () => {
    const watch = openStream<ApprovalServiceWatchResponse>(
      approvals,
      'watch',
      create(ApprovalServiceWatchRequestSchema),
      ADMIN,
    );
    await vi.waitFor(() => expect(listeners(fabric)).toBe(baseline + 2));
    const a = fabric.approvals.create({ agentId, tool: 'deploy', params: {}, ttlSeconds: 0.05 });
    const [requested, expired] = await watch.first(2);
    expect(requested!.event).toMatchObject({ kind: ApprovalEventKind.REQUESTED });
    expect(expired!.event).toMatchObject({
      kind: ApprovalEventKind.EXPIRED,
      approval: { id: a.id, status: ApprovalStatus.EXPIRED, approver: '' },
    });
    expect(expired!.event!.approval!.decidedAt).toBeDefined();
    watch.stream.cancel();
    await watch.ended;
    await vi.waitFor(() => expect(listeners(fabric)).toBe(baseline));
  });

  it('a slow consumer hits the bound: RESOURCE_EXHAUSTED after every queued event, none skipped', async () => {
    const slow = openStream<EventServiceWatchResponse>(
      events,
      'watch',
      create(EventServiceWatchRequestSchema, { topics: [EventTopic.APPROVALS] }),
      ADMIN,
      { paused: true },
    );
    await vi.waitFor(() => expect(listeners(fabric)).toBe(baseline + 2));
    // Events arrive one by one, with I/O turns in between (not one burst), each ~8 KiB: the
    // client reads nothing, HTTP/2 flow control stops the server's writes, and the stream's
    // buffer fills. The cap only keeps a broken server from looping forever.
    const big = 'x'.repeat(8 * 1024);
    let emitted = 0;
    for (let i = 0; i < 5_000 && listeners(fabric) > baseline; i++) {
      const a = fabric.approvals.create({ agentId, tool: 'deploy', params: { i, big } });
      fabric.approvals.deny(a.id, { approver: 'test' });
      emitted += 2;
      await new Promise((r) => setImmediate(r));
    }
    // The server ended the stream and unsubscribed while the client still read nothing.
    expect(listeners(fabric)).toBe(baseline);
    expect(slow.messages).toEqual([]);

    slow.stream.resume();
    const err = await slow.ended;
    expect(err).toMatchObject({ code: status.RESOURCE_EXHAUSTED });
    expect(err!.metadata.get('fabric-error-code')).toEqual(['FABRIC_ERR_STREAM_OVERFLOW']);
    // Everything sent before the overflow arrives, in order, without a gap.
    const received = slow.messages.map((m) => Number(m.sequence));
    expect(received.length).toBeGreaterThan(0);
    expect(received).toEqual(received.map((_, i) => i + 1));
    expect(received.length).toBeLessThan(emitted);
  });

  it('a consumer that keeps up sees every event of the same load', async () => {
    const fast = openStream<EventServiceWatchResponse>(
      events,
      'watch',
      create(EventServiceWatchRequestSchema, { topics: [EventTopic.APPROVALS] }),
      ADMIN,
    );
    await vi.waitFor(() => expect(listeners(fabric)).toBe(baseline + 2));
    const big = 'x'.repeat(8 * 1024);
    for (let i = 0; i < 200; i++) {
      const a = fabric.approvals.create({ agentId, tool: 'deploy', params: { i, big } });
      fabric.approvals.deny(a.id, { approver: 'test' });
      await fast.first(2 * (i + 1));
    }
    expect(fast.messages.map((m) => Number(m.sequence))).toEqual(
      Array.from({ length: 400 }, (_, i) => i + 1),
    );
    fast.stream.cancel();
    expect(await fast.ended).toMatchObject({ code: status.CANCELLED });
    await vi.waitFor(() => expect(listeners(fabric)).toBe(baseline));
  });

  it('refuses a stream bound that would not bound anything', async () => {
    for (const maxBufferedMessages of [0, -1, Number.NaN, 1.5]) {
      await expect(startGrpcServer(fabric, { maxBufferedMessages })).rejects.toMatchObject({
        code: 'FABRIC_ERR_CONFIG',
        details: { field: 'options.maxBufferedMessages' },
      });
    }
  });

  it('ends open streams with UNAVAILABLE when the server closes', async () => {
    const other = await startGrpcServer(fabric);
    const client = grpcClient(EVENT_SERVICE_DEFINITION, other.address);
    try {
      const open = openStream<EventServiceWatchResponse>(
        client,
        'watch',
        create(EventServiceWatchRequestSchema),
        ADMIN,
      );
      await vi.waitFor(() => expect(listeners(fabric)).toBeGreaterThan(baseline));
      await other.close();
      expect(await open.ended).toMatchObject({ code: status.UNAVAILABLE });
      expect(listeners(fabric)).toBe(baseline);
    } finally {
      client.close();
    }
  });

  it('serves at most maxStreams streams at once: one more is RESOURCE_EXHAUSTED with nothing subscribed, a closed one frees its place', async () => {
    const capped = await startGrpcServer(fabric, { maxStreams: 2 });
    const client = grpcClient(EVENT_SERVICE_DEFINITION, capped.address);
    const watchClient = grpcClient(APPROVAL_SERVICE_DEFINITION, capped.address);
    const open = (): ReturnType<typeof openStream<EventServiceWatchResponse>> =>
      openStream<EventServiceWatchResponse>(
        client,
        'watch',
        create(EventServiceWatchRequestSchema),
        ADMIN,
      );
    try {
      const first = open();
      const second = open();
      // Every topic of each event watch (12 listeners each).
      await vi.waitFor(() => expect(listeners(fabric)).toBe(baseline + 24));

      // Before, a third (and a thousandth) stream was served: 12 more listeners each.
      const third = open();
      const refused = await third.ended;
      expect(refused).toMatchObject({ code: status.RESOURCE_EXHAUSTED });
      expect(refused!.metadata.get('fabric-error-code')).toEqual(['FABRIC_ERR_STREAM_LIMIT']);
      expect(refused!.details).toMatch(/2 streams are open/);
      // Any server-streaming method of the server counts against the same cap.
      const approvalWatch = openStream<ApprovalServiceWatchResponse>(
        watchClient,
        'watch',
        create(ApprovalServiceWatchRequestSchema),
        ADMIN,
      );
      expect(await approvalWatch.ended).toMatchObject({ code: status.RESOURCE_EXHAUSTED });
      expect(listeners(fabric)).toBe(baseline + 24);

      // Closing one frees its place: the next is served and subscribes.
      first.stream.cancel();
      expect(await first.ended).toMatchObject({ code: status.CANCELLED });
      await vi.waitFor(() => expect(listeners(fabric)).toBe(baseline + 12));
      const fourth = open();
      await vi.waitFor(() => expect(listeners(fabric)).toBe(baseline + 24));
      const a = fabric.approvals.create({ agentId, tool: 'deploy', params: { env: 'cap' } });
      const [event] = await fourth.first(1);
      expect(event!.event).toMatchObject({ case: 'approval' });
      fabric.approvals.deny(a.id, { approver: 'test' });

      second.stream.cancel();
      fourth.stream.cancel();
      await Promise.all([second.ended, fourth.ended]);
      await vi.waitFor(() => expect(listeners(fabric)).toBe(baseline));
    } finally {
      client.close();
      watchClient.close();
      await capped.close();
    }
  });

  it('refuses a stream cap that would not bound anything', async () => {
    for (const maxStreams of [0, -1, Number.NaN, 1.5]) {
      await expect(startGrpcServer(fabric, { maxStreams })).rejects.toMatchObject({
        code: 'FABRIC_ERR_CONFIG',
        details: { field: 'options.maxStreams' },
      });
    }
  });
});

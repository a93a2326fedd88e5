/**
 * Found in review: ApprovalService/Watch (and EventService/Watch, whose default topics include
 * approvals) sent every pending approval in one synchronous burst at watch start, while the
 * slow-reader bound counted messages not yet flushed — and nothing can flush during a
 * synchronous loop. With more approvals pending than `maxBufferedMessages` (1024 by default: 33
 * agents at their default 32 pending each) every watch, however fast its reader, ended at once
 * with FABRIC_ERR_STREAM_OVERFLOW, and watching again to resynchronize overflowed again. The
 * snapshot now goes out paced (`send.paced`): made and written as the client reads, numbered
 * before the events that happen meanwhile. Shown with the bound lowered below the snapshot.
 *
 * Real sidecar and HTTP client; a real grpc-js server and client over the real fabric.
 */
import { create } from '@bufbuild/protobuf';
import type { Client } from '@grpc/grpc-js';
import { afterEach, describe, expect, it } from 'vitest';
import { AgentFabric } from '../../src/fabric.js';
import {
  ApprovalEventKind,
  ApprovalServiceWatchRequestSchema,
  type ApprovalServiceWatchResponse,
} from '../../src/gen/fabric/v1/approval_pb.js';
import {
  EventServiceWatchRequestSchema,
  type EventServiceWatchResponse,
} from '../../src/gen/fabric/v1/events_pb.js';
import { APPROVAL_SERVICE_DEFINITION } from '../../src/rpc/approval-service.js';
import { EVENT_SERVICE_DEFINITION } from '../../src/rpc/events-service.js';
import { startGrpcServer } from '../../src/rpc/grpc-server.js';
import type { Sidecar } from '../../src/server/sidecar.js';
import { postJson } from '../fixtures/api.js';
import {
  ADMIN_TOKEN,
  agentToken,
  api,
  closeSidecar,
  DEFAULT_ALLOW,
  startTestSidecar,
  until,
} from '../fixtures/gateway/harness.js';
import { grpcClient, openStream } from '../fixtures/grpc-client.js';

const PENDING = 12;

let cleanup: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const c of cleanup.reverse()) await c();
  cleanup = [];
});

type Line = {
  message?: {
    sequence: string;
    event?: { existing?: boolean; approval?: { id: string } } & { case?: never };
    approval?: { existing?: boolean; approval?: { id: string } };
  };
  end?: { error?: { code: string } };
};

/** Reads NDJSON lines until `want` message lines or an `end` line. */
async function readLines(res: Response, want: number): Promise<Line[]> {
  const reader = res.body!.getReader();
  const decoder = new TextDecoder();
  let text = '';
  const lines = (): Line[] =>
    text
      .split('\n')
      .slice(0, -1)
      .filter((l) => l !== '')
      .map((l) => JSON.parse(l) as Line);
  while (lines().filter((l) => l.message).length < want && !lines().some((l) => l.end)) {
    const chunk = await reader.read();
    if (chunk.done) break;
    text += decoder.decode(chunk.value, { stream: true });
  }
  await reader.cancel().catch(() => undefined);
  return lines();
}

describe('watch start with more approvals pending than the stream bound', () => {
  it('HTTP door: ApprovalService/Watch and EventService/Watch deliver the whole snapshot, then live events', async () => {
    const sidecar: Sidecar = await startTestSidecar({
      http: { apiMaxBufferedMessages: 8, maxInflightPerAgent: 64 },
      policies: [
        {
          name: 'gate',
          priority: 100,
          rules: [{ tool: 'fabric__heartbeat', action: 'require_approval' }],
        },
        DEFAULT_ALLOW,
      ],
      agents: [{ name: 'a' }],
    });
    cleanup.push(() => closeSidecar(sidecar));
    const token = agentToken(sidecar, 'a');
    const stop = new AbortController();
    const park = (): Promise<unknown> =>
      postJson(
        new URL('/api/fabric.v1.ToolService/CallTool', sidecar.url!),
        { name: 'fabric__heartbeat', arguments: {} },
        token,
        { signal: stop.signal },
      ).catch(() => undefined);
    const parked = Array.from({ length: PENDING }, park);
    cleanup.push(async () => {
      stop.abort();
      await Promise.all(parked);
    });
    const pendingCount = async (): Promise<number> => {
      const r = await api(sidecar, 'ApprovalService/ListApprovals', {
        status: 'APPROVAL_STATUS_PENDING',
      });
      return ((await r.json()) as { approvals?: unknown[] }).approvals?.length ?? 0;
    };
    await until(async () => (await pendingCount()) === PENDING);

    for (const [path, body] of [
      ['/api/fabric.v1.ApprovalService/Watch', {}],
      ['/api/fabric.v1.EventService/Watch', { topics: ['EVENT_TOPIC_APPROVALS'] }],
    ] as const) {
      const pending = await pendingCount(); // more than the bound of 8
      const res = await postJson(new URL(path, sidecar.url!), body, ADMIN_TOKEN);
      expect(res.status).toBe(200);
      parked.push(park()); // one more approval: a live event after the snapshot
      const lines = await readLines(res, pending + 1);
      expect(lines.find((l) => l.end)).toBeUndefined();
      const messages = lines.filter((l) => l.message).map((l) => l.message!);
      expect(messages.map((m) => Number(m.sequence))).toEqual(
        Array.from({ length: pending + 1 }, (_, i) => i + 1),
      );
      const existing = messages.map((m) => (m.event ?? m.approval)!.existing === true);
      expect(existing).toEqual([...Array<boolean>(pending).fill(true), false]);
    }
  }, 30_000);

  it('gRPC: both watches deliver the whole snapshot numbered 1…n, then live events', async () => {
    const ADMIN = 'admin-credential-for-snapshot-tests-012345';
    const fabric = new AgentFabric({}, { adminCredentials: [ADMIN] });
    cleanup.push(() => fabric.close());
    const agent = (await fabric.spawn({ model: 'm', name: 'a', executor: 'remote' })).id;
    const server = await startGrpcServer(fabric, { maxBufferedMessages: 4 });
    cleanup.push(() => server.close());
    const approvals: Client = grpcClient(APPROVAL_SERVICE_DEFINITION, server.address);
    const events: Client = grpcClient(EVENT_SERVICE_DEFINITION, server.address);
    cleanup.push(async () => {
      approvals.close();
      events.close();
    });
    const ids = Array.from(
      { length: PENDING },
      (_, i) => fabric.approvals.create({ agentId: agent, tool: 'deploy', params: { i } }).id,
    );

    const a = openStream<ApprovalServiceWatchResponse>(
      approvals,
      'watch',
      create(ApprovalServiceWatchRequestSchema),
      ADMIN,
    );
    const e = openStream<EventServiceWatchResponse>(
      events,
      'watch',
      create(EventServiceWatchRequestSchema),
      ADMIN,
    );
    const snapshotA = await a.first(PENDING);
    const snapshotE = await e.first(PENDING);
    const live = fabric.approvals.create({ agentId: agent, tool: 'deploy', params: {} });
    const [, ...restA] = await a.first(PENDING + 1).then((m) => m.slice(PENDING - 1));
    const [, ...restE] = await e.first(PENDING + 1).then((m) => m.slice(PENDING - 1));

    expect(snapshotA.map((m) => m.event!.approval!.id)).toEqual(ids);
    expect(snapshotA.every((m) => m.event!.existing)).toBe(true);
    expect(restA[0]!.event).toMatchObject({
      kind: ApprovalEventKind.REQUESTED,
      existing: false,
      approval: { id: live.id },
    });
    expect(a.messages.map((m) => Number(m.sequence))).toEqual(
      Array.from({ length: PENDING + 1 }, (_, i) => i + 1),
    );
    expect(
      snapshotE.map((m) => (m.event.case === 'approval' ? m.event.value.approval!.id : '')),
    ).toEqual(ids);
    expect(restE[0]!.event).toMatchObject({ case: 'approval', value: { existing: false } });
    expect(e.messages.map((m) => Number(m.sequence))).toEqual(
      Array.from({ length: PENDING + 1 }, (_, i) => i + 1),
    );
    a.stream.cancel();
    e.stream.cancel();
    await Promise.all([a.ended, e.ended]);
  });
});

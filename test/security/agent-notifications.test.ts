/**
 * What an agent can send the gateway besides requests — notifications, and answers to the
 * requests an upstream sends back — must not reach or disturb another agent, nor the shared
 * upstream. Found sound by a hostile review; these pin it down (real sidecar, real
 * server-everything, official SDK clients):
 *
 * - a progress token is the caller's own: two agents choosing the same one each get only the
 *   progress of their own call;
 * - `notifications/cancelled` naming another agent's request id (or odd, huge or absent ids)
 *   cancels nothing of that agent's; an agent's own `notifications/progress`, a repeated
 *   `notifications/initialized` and unknown notifications are dropped;
 * - `notifications/roots/list_changed` is not passed to the upstream, whose connection every
 *   agent shares (the upstream would ask for roots again — from whichever agent has a call in
 *   flight there — and keep them for all), nor does it restart or reload anything;
 * - an answer to a sampling request id that was sent to another agent (or to none) is dropped;
 *   the agent the request was sent to answers it.
 */
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import type { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import {
  CallToolResultSchema,
  CreateMessageRequestSchema,
  ListRootsRequestSchema,
  ProgressNotificationSchema,
  type ProgressNotification,
} from '@modelcontextprotocol/sdk/types.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  agentToken,
  closeSidecar,
  DEFAULT_ALLOW,
  EVERYTHING_BIN,
  httpClient,
  startTestSidecar,
  text,
  until,
} from '../fixtures/gateway/harness.js';

const LONG = 'ev__trigger-long-running-operation';

type ProgressParams = ProgressNotification['params'];

describe('agent notifications and answers (server-everything, real sidecar)', () => {
  let sidecar: Sidecar;
  let a: Client;
  let b: Client;
  const rootsAsked = { a: 0, b: 0 };

  beforeAll(async () => {
    sidecar = await startTestSidecar({
      upstreams: {
        ev: {
          command: process.execPath,
          args: [EVERYTHING_BIN, 'stdio'],
          stderr: 'ignore',
          forwardRoots: true,
        },
      },
      policies: [DEFAULT_ALLOW],
      agents: [{ name: 'a' }, { name: 'b' }],
    });
    const caps = { sampling: {}, roots: { listChanged: true } };
    a = await httpClient(sidecar.url!, agentToken(sidecar, 'a'), caps);
    b = await httpClient(sidecar.url!, agentToken(sidecar, 'b'), caps);
    a.setRequestHandler(ListRootsRequestSchema, () => {
      rootsAsked.a++;
      return { roots: [{ uri: 'file:///agent-a' }] };
    });
    b.setRequestHandler(ListRootsRequestSchema, () => {
      rootsAsked.b++;
      return { roots: [{ uri: 'file:///agent-b' }] };
    });
  });

  afterAll(async () => {
    await a?.close();
    await b?.close();
    await closeSidecar(sidecar);
  });

  /** A long-running call with the progress token the caller chose (not the SDK's own). */
  const longCall = (
    client: Client,
    steps: number,
    progressToken: string | number,
    duration = 0.3,
  ) =>
    client.request(
      {
        method: 'tools/call',
        params: { name: LONG, arguments: { duration, steps }, _meta: { progressToken } },
      },
      CallToolResultSchema,
    );

  it('two agents with the same progress token each get only their own progress', async () => {
    const seen = { a: [] as ProgressParams[], b: [] as ProgressParams[] };
    a.setNotificationHandler(ProgressNotificationSchema, (n) => void seen.a.push(n.params));
    b.setNotificationHandler(ProgressNotificationSchema, (n) => void seen.b.push(n.params));
    const [ra, rb] = await Promise.all([longCall(a, 3, 'shared'), longCall(b, 2, 'shared')]);
    expect(text(ra)).toContain('Steps: 3');
    expect(text(rb)).toContain('Steps: 2');
    expect(seen.a.length).toBeGreaterThan(0);
    expect(seen.b.length).toBeGreaterThan(0);
    expect(seen.a.every((p) => p.total === 3 && p.progressToken === 'shared')).toBe(true);
    expect(seen.b.every((p) => p.total === 2 && p.progressToken === 'shared')).toBe(true);
  });

  it("cancelling another agent's request ids, odd ids and made-up notifications change nothing", async () => {
    const upstream = sidecar.gateway.upstreams.get('ev')!;
    const [pid, connects] = [upstream.pid, upstream.connectCount];
    // b's call is in flight under some small id of its session; a names every such id.
    const pending = longCall(b, 2, 'b-token');
    const cancel = (requestId: unknown) =>
      a.notification({
        method: 'notifications/cancelled',
        params: { requestId, reason: 'x' },
      } as never);
    for (let id = 0; id < 64; id++) await cancel(id);
    for (const odd of ['x'.repeat(100_000), -1, 2 ** 53 - 1, '0', '']) await cancel(odd);
    await a.notification({ method: 'notifications/cancelled', params: {} } as never);
    await a.notification({
      method: 'notifications/progress',
      params: { progressToken: 'b-token', progress: 99, total: 100 },
    });
    await a.notification({ method: 'notifications/initialized' });
    await a.notification({ method: 'notifications/initialized' });
    await a.notification({ method: 'notifications/made-up', params: { x: 1 } } as never);
    expect(text(await pending)).toContain('Long running operation completed');
    expect([upstream.pid, upstream.connectCount]).toEqual([pid, connects]);
    expect(text(await a.callTool({ name: 'ev__echo', arguments: { message: 'still' } }))).toBe(
      'Echo: still',
    );
  });

  it('roots/list_changed storms reach no upstream: nobody is asked for roots again', async () => {
    const upstream = sidecar.gateway.upstreams.get('ev')!;
    const [pid, connects] = [upstream.pid, upstream.connectCount];
    const asked = { ...rootsAsked };
    // a has a call running there (its first progress came): a roots/list from the upstream
    // would be routed to a.
    let running!: () => void;
    const started = new Promise<void>((resolve) => (running = resolve));
    a.setNotificationHandler(ProgressNotificationSchema, () => running());
    const pending = longCall(a, 2, 'a-token', 1);
    await started;
    for (let i = 0; i < 100; i++) await a.sendRootsListChanged();
    for (let i = 0; i < 20; i++) await b.sendRootsListChanged();
    await pending;
    expect(rootsAsked).toEqual(asked);
    expect([upstream.pid, upstream.connectCount]).toEqual([pid, connects]);
  });

  it("an answer to a sampling request sent to another agent is dropped; that agent's counts", async () => {
    let sampledId: string | number | undefined;
    let release!: () => void;
    const forged = new Promise<void>((resolve) => (release = resolve));
    b.setRequestHandler(CreateMessageRequestSchema, async (_req, extra) => {
      sampledId = extra.requestId;
      await forged;
      return { role: 'assistant', model: 'b-model', content: { type: 'text', text: 'from b' } };
    });
    a.setRequestHandler(CreateMessageRequestSchema, () => {
      throw new Error('a was asked to sample for b');
    });
    const call = b.callTool({ name: 'ev__trigger-sampling-request', arguments: { prompt: 'p' } });
    await until(() => sampledId !== undefined);
    // a answers, in its own session, the id b's session gave the request — twice, and once
    // with an id nobody used.
    const transport = a.transport as StreamableHTTPClientTransport;
    const answer = (id: string | number, words: string) =>
      transport.send({
        jsonrpc: '2.0',
        id,
        result: { role: 'assistant', model: 'a-model', content: { type: 'text', text: words } },
      });
    await answer(sampledId!, 'forged by a');
    await answer(sampledId!, 'forged by a again');
    await answer(987_654, 'to nobody');
    release();
    const result = text(await call);
    expect(result).toContain('from b');
    expect(result).not.toContain('forged');
  });
});

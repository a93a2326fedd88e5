/**
 * The HTTP door's server streams (NDJSON), call deadlines (`connect-timeout-ms`) and undelivered
 * answers, against a real sidecar (its fabric, its HTTP server) and, for the limits, a door with
 * small limits on its own `node:http` server over the same fabric.
 */
import { create } from '@bufbuild/protobuf';
import { createServer, request, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { AgentService, ClaimTaskResponseSchema } from '../../src/gen/fabric/v1/agent_pb.js';
import { HttpDoor, type HttpDoorOptions } from '../../src/rpc/http-door.js';
import type { CallContext } from '../../src/rpc/rpc-call.js';
import type { AnyServiceImplementation } from '../../src/rpc/services.js';
import { fabricServices } from '../../src/rpc/services.js';
import type { Sidecar } from '../../src/server/sidecar.js';
import { postJson } from '../fixtures/api.js';
import {
  ADMIN_TOKEN,
  closeSidecar,
  httpClient,
  startTestSidecar,
} from '../fixtures/gateway/harness.js';

type ErrorBody = { code: string; kind: string; message: string };
type Line = { message?: Record<string, unknown>; end?: { error?: ErrorBody } };

/** An open NDJSON stream: the lines read so far, and how to stop reading. */
interface Stream {
  readonly status: number;
  readonly contentType: string | null;
  readonly lines: Line[];
  /** Resolves when the server ended the stream (or the client aborted it). */
  readonly done: Promise<void>;
  abort(): void;
}

async function openStream(
  base: URL,
  path: string,
  body: unknown,
  headers: Record<string, string> = {},
  credential = ADMIN_TOKEN,
): Promise<Stream> {
  const controller = new AbortController();
  const res = await postJson(new URL(path, base), body, credential, {
    headers: {
      'content-type': 'application/json',
      authorization: `Bearer ${credential}`,
      ...headers,
    },
    signal: controller.signal,
  });
  const lines: Line[] = [];
  const done = (async () => {
    if (res.body === null) return;
    const decoder = new TextDecoder();
    let buffered = '';
    try {
      for await (const chunk of res.body) {
        buffered += decoder.decode(chunk as Uint8Array, { stream: true });
        let nl: number;
        while ((nl = buffered.indexOf('\n')) >= 0) {
          const text = buffered.slice(0, nl);
          buffered = buffered.slice(nl + 1);
          if (text !== '') lines.push(JSON.parse(text) as Line);
        }
      }
    } catch {
      // aborted by the test
    }
  })();
  return {
    status: res.status,
    contentType: res.headers.get('content-type'),
    lines,
    done,
    abort: () => controller.abort(),
  };
}

describe('the HTTP door: server streams, deadlines, undelivered answers', () => {
  let sidecar: Sidecar;
  let base: URL;

  beforeAll(async () => {
    sidecar = await startTestSidecar({ upstreams: {} });
    base = new URL('/api/', sidecar.url);
  });
  afterAll(() => closeSidecar(sidecar));

  const rpc = (
    path: string,
    body: unknown,
    credential = ADMIN_TOKEN,
    headers: Record<string, string> = {},
  ): Promise<Response> =>
    postJson(new URL(path, base), body, credential, {
      headers: {
        'content-type': 'application/json',
        authorization: `Bearer ${credential}`,
        ...headers,
      },
    });

  /** Listeners the event watch registers on the fabric (all topics). */
  const listeners = (): number => {
    const f = sidecar.fabric!;
    return (
      f.lifecycle.events.listenerCount('agent.spawned') +
      f.scheduler.events.listenerCount('task.scheduled') +
      f.budgets.listenerCount('warning') +
      f.approvals.listenerCount('created')
    );
  };

  it('streams EventService/Watch as NDJSON; a client that leaves frees every listener', async () => {
    const before = listeners();
    const stream = await openStream(base, 'fabric.v1.EventService/Watch', {
      topics: ['EVENT_TOPIC_AGENTS', 'EVENT_TOPIC_TASKS'],
    });
    expect(stream.status).toBe(200);
    expect(stream.contentType).toBe('application/x-ndjson');
    await vi.waitFor(() => expect(listeners()).toBeGreaterThan(before));
    const res = await rpc('fabric.v1.FabricService/SpawnAgent', {
      name: 'watched',
      model: 'm',
      executor: 'remote',
    });
    const { spawned } = (await res.json()) as { spawned: { agent: { agentId: string } } };
    await rpc('fabric.v1.FabricService/ScheduleTask', {
      agentId: spawned.agent.agentId,
      taskType: 'seen',
    });
    await vi.waitFor(() => expect(stream.lines.length).toBeGreaterThanOrEqual(2));
    expect(stream.lines[0]).toMatchObject({
      message: {
        sequence: '1',
        agent: { kind: 'AGENT_EVENT_KIND_SPAWNED', agentId: spawned.agent.agentId },
      },
    });
    expect(stream.lines.some((l) => l.message?.['sequence'] === '2')).toBe(true);
    expect(stream.lines.every((l) => l.end === undefined)).toBe(true);
    stream.abort();
    await stream.done;
    await vi.waitFor(() => expect(listeners()).toBe(before));
  });

  it('streams the TOOL_CALLS topic: each ended call with its decision and rule, never its arguments', async () => {
    const calls = sidecar.gateway.toolCalls;
    const before = calls.listenerCount('call.ended');
    for (const policy of [
      {
        name: 'hb-allow',
        priority: 5,
        rules: [{ tool: 'fabric__heartbeat', action: 'POLICY_ACTION_ALLOW' }],
      },
      {
        name: 'hb-deny',
        priority: 6,
        rules: [
          {
            tool: 'fabric__heartbeat',
            action: 'POLICY_ACTION_DENY',
            conditions: { mode: 'forbidden' },
          },
        ],
      },
    ]) {
      expect((await rpc('fabric.v1.PolicyService/AddPolicy', { policy })).status).toBe(200);
    }
    const res = await rpc('fabric.v1.FabricService/SpawnAgent', { name: 'caller', model: 'm' });
    const { spawned } = (await res.json()) as {
      spawned: { agent: { agentId: string }; credential: string };
    };
    // A watch of other topics gets no tool call.
    const others = await openStream(base, 'fabric.v1.EventService/Watch', {
      topics: ['EVENT_TOPIC_AGENTS'],
    });
    const stream = await openStream(base, 'fabric.v1.EventService/Watch', {
      topics: ['EVENT_TOPIC_TOOL_CALLS'],
    });
    await vi.waitFor(() => expect(calls.listenerCount('call.ended')).toBe(before + 1));
    const client = await httpClient(sidecar.url!, spawned.credential);
    try {
      const ok = await client.callTool({ name: 'fabric__heartbeat', arguments: {} });
      expect(ok.isError).toBeFalsy();
      const secret = 'tool-call-secret-value-123';
      const denied = await client.callTool({
        name: 'fabric__heartbeat',
        arguments: { mode: 'forbidden', token: secret },
      });
      expect(denied.isError).toBe(true);
      await vi.waitFor(() => expect(stream.lines).toHaveLength(2));
      const agentId = spawned.agent.agentId;
      expect(stream.lines.map((l) => l.message?.['toolCall'])).toEqual([
        expect.objectContaining({
          agentId,
          tool: 'fabric__heartbeat',
          decision: 'allow',
          rule: 'hb-allow#0',
          outcome: 'ok',
        }),
        expect.objectContaining({
          agentId,
          tool: 'fabric__heartbeat',
          decision: 'deny',
          rule: 'hb-deny#0',
          outcome: 'denied',
          errorCode: 'FABRIC_ERR_POLICY_DENIED',
        }),
      ]);
      expect(JSON.stringify(stream.lines)).not.toContain(secret);
    } finally {
      await client.close();
    }
    expect(others.lines.some((l) => l.message?.['toolCall'] !== undefined)).toBe(false);
    stream.abort();
    others.abort();
    await Promise.all([stream.done, others.done]);
    await vi.waitFor(() => expect(calls.listenerCount('call.ended')).toBe(before));
  });

  it('streams ApprovalService/Watch; the deadline header ends it with FABRIC_ERR_CALL_DEADLINE', async () => {
    const before = sidecar.fabric!.approvals.listenerCount('created');
    const stream = await openStream(
      base,
      'fabric.v1.ApprovalService/Watch',
      {},
      { 'connect-timeout-ms': '300' },
    );
    expect(stream.status).toBe(200);
    await stream.done;
    expect(stream.lines.at(-1)).toEqual({
      end: { error: expect.objectContaining({ code: 'FABRIC_ERR_CALL_DEADLINE' }) as unknown },
    });
    expect(stream.lines.filter((l) => l.end !== undefined)).toHaveLength(1);
    expect(sidecar.fabric!.approvals.listenerCount('created')).toBe(before);
  });

  it('refuses a stream to an agent credential (403) and a bad deadline header (400), opening nothing', async () => {
    const { credential } = await sidecar.fabric!.spawn({
      name: 'nosy',
      model: 'm',
      executor: 'remote',
    });
    const before = listeners();
    const asAgent = await rpc('fabric.v1.EventService/Watch', {}, credential);
    expect(asAgent.status).toBe(403);
    expect(((await asAgent.json()) as ErrorBody).code).toBe('FABRIC_ERR_PERMISSION_DENIED');
    for (const bad of ['0', '-5', '1e3', '12345678901', 'soon']) {
      const res = await rpc('fabric.v1.EventService/Watch', {}, ADMIN_TOKEN, {
        'connect-timeout-ms': bad,
      });
      expect(res.status).toBe(400);
      expect(((await res.json()) as ErrorBody).code).toBe('FABRIC_ERR_INVALID_ARGUMENT');
    }
    expect(listeners()).toBe(before);
  });

  it('answers a unary call past its deadline 504 FABRIC_ERR_CALL_DEADLINE and stops waiting', async () => {
    const fabric = sidecar.fabric!;
    const a = await fabric.spawn({ model: 'm', name: 'slow', executor: 'remote' });
    const task = await fabric.schedule({ agentId: a.id, taskType: 'never' });
    const res = await rpc(
      'fabric.v1.FabricService/WaitTask',
      { taskId: task.id, timeout: '60s' },
      ADMIN_TOKEN,
      { 'connect-timeout-ms': '200' },
    );
    expect(res.status).toBe(504);
    expect(((await res.json()) as ErrorBody).code).toBe('FABRIC_ERR_CALL_DEADLINE');
    await vi.waitFor(() => expect(fabric.scheduler.waiterCount(task.id)).toBe(0));
    await fabric.cancelTask(task.id);
  });

  describe('a door with small limits (its own HTTP server, the same fabric)', () => {
    const servers: Server[] = [];
    afterAll(async () => {
      for (const s of servers) {
        s.closeAllConnections();
        await new Promise((r) => s.close(r));
      }
    });

    async function serve(
      options: Partial<HttpDoorOptions>,
      services?: readonly AnyServiceImplementation[],
    ): Promise<{ door: HttpDoor; base: URL }> {
      const door = new HttpDoor({
        fabric: sidecar.fabric!,
        services: services ?? fabricServices(sidecar.fabric!),
        ...options,
      });
      const server = createServer((req, res) => {
        const { pathname } = new URL(req.url ?? '/', 'http://x');
        void door.handle(req, res, pathname);
      });
      servers.push(server);
      await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
      const { port } = server.address() as AddressInfo;
      return { door, base: new URL(`http://127.0.0.1:${port}/api/`) };
    }

    it('caps open streams (429 FABRIC_ERR_STREAM_LIMIT); one that ends frees its slot', async () => {
      const { door, base: b } = await serve({ maxStreams: 2 });
      const first = await openStream(b, 'fabric.v1.EventService/Watch', {});
      const second = await openStream(b, 'fabric.v1.ApprovalService/Watch', {});
      expect([first.status, second.status]).toEqual([200, 200]);
      expect(door.openStreams).toBe(2);
      const burst = await Promise.all(
        Array.from({ length: 20 }, () =>
          postJson(new URL('fabric.v1.EventService/Watch', b), {}, ADMIN_TOKEN),
        ),
      );
      for (const res of burst) {
        expect(res.status).toBe(429);
        expect(((await res.json()) as ErrorBody).code).toBe('FABRIC_ERR_STREAM_LIMIT');
      }
      expect(door.openStreams).toBe(2);
      first.abort();
      await vi.waitFor(() => expect(door.openStreams).toBe(1));
      const third = await openStream(b, 'fabric.v1.EventService/Watch', {});
      expect(third.status).toBe(200);
      // Closing the door ends the streams with their end line.
      door.close();
      await Promise.all([second.done, third.done]);
      for (const s of [second, third]) {
        expect(s.lines.at(-1)).toEqual({
          end: { error: expect.objectContaining({ code: 'FABRIC_ERR_CLOSED' }) as unknown },
        });
      }
      expect(door.openStreams).toBe(0);
    });

    it('a ClaimTask whose HTTP client left takes no task: the next claim gets it', async () => {
      const fabric = sidecar.fabric!;
      const services = fabricServices(fabric);
      const agentImpl = services.find((x) => x.service.typeName === AgentService.typeName)!;
      const unary = agentImpl.unary as Record<string, (...args: unknown[]) => Promise<unknown>>;
      const real = unary['claimTask']!;
      let entered!: () => void;
      const claimEntered = new Promise<void>((r) => (entered = r));
      let settled!: () => void;
      const claimSettled = new Promise<void>((r) => (settled = r));
      unary['claimTask'] = (...args) => {
        entered();
        return real(...args).finally(settled);
      };
      const { base: b } = await serve({}, services);
      const agent = await fabric.spawn({ model: 'm', name: 'dropper', executor: 'remote' });
      const claim = (signal?: AbortSignal): Promise<Response> =>
        postJson(
          new URL('fabric.v1.AgentService/ClaimTask', b),
          { waitSeconds: 30 },
          agent.credential,
          signal === undefined ? {} : { signal },
        );
      const controller = new AbortController();
      const dropped = claim(controller.signal).catch((e: unknown) => e);
      await claimEntered;
      controller.abort();
      expect(await dropped).toBeInstanceOf(Error);
      // The claim stops waiting when its client leaves (it would wait 30 s otherwise).
      await claimSettled;
      const task = await fabric.schedule({ agentId: agent.id, taskType: 'kept' });
      const res = await claim();
      expect(res.status).toBe(200);
      expect(await res.json()).toMatchObject({ task: { taskId: task.id } });
      expect(fabric.scheduler.getTask(task.id)).toMatchObject({ attempt: 1 });
    });

    it('cuts a body that dribbles in (slow loris) with 408 and closes the connection', async () => {
      const { base: b } = await serve({ bodyTimeoutMs: 300 });
      const answer = await new Promise<{ status: number; connection?: string; body: string }>(
        (resolve, reject) => {
          const req = request(
            new URL('fabric.v1.FabricService/GetStats', b),
            {
              method: 'POST',
              headers: {
                'content-type': 'application/json',
                authorization: `Bearer ${ADMIN_TOKEN}`,
                'content-length': '100',
              },
            },
            (res) => {
              let body = '';
              res.on('data', (c: Buffer) => (body += c.toString()));
              res.on('end', () =>
                resolve({
                  status: res.statusCode ?? 0,
                  ...(typeof res.headers.connection === 'string'
                    ? { connection: res.headers.connection }
                    : {}),
                  body,
                }),
              );
            },
          );
          req.on('error', reject);
          req.write('{');
          const drip = setInterval(() => req.write(' '), 50);
          req.on('close', () => clearInterval(drip));
        },
      );
      expect(answer.status).toBe(408);
      expect(answer.connection).toBe('close');
      expect((JSON.parse(answer.body) as ErrorBody).code).toBe('FABRIC_ERR_BODY_TIMEOUT');
    });

    it("runs the method's undo when its answer comes after the client left", async () => {
      let undone = 0;
      let calls = 0;
      let finished!: () => void;
      const answered = new Promise<void>((r) => (finished = r));
      const fake = {
        service: AgentService,
        caller: 'agent',
        unary: {
          claimTask: async (
            _caller: unknown,
            _req: unknown,
            signal: AbortSignal,
            context: CallContext,
          ) => {
            calls++;
            context.onUndelivered(() => {
              undone++;
              finished();
            });
            // Answers although the call ended: the door must not pretend it was delivered.
            await new Promise((r) => signal.addEventListener('abort', r, { once: true }));
            return create(ClaimTaskResponseSchema, {});
          },
        },
      } as unknown as AnyServiceImplementation;
      const { credential } = await sidecar.fabric!.spawn({
        name: 'undo',
        model: 'm',
        executor: 'remote',
      });
      const { base: b } = await serve({}, [fake]);
      const controller = new AbortController();
      const url = new URL('fabric.v1.AgentService/ClaimTask', b);
      const call = postJson(url, {}, credential, { signal: controller.signal }).catch(
        (e: unknown) => e,
      );
      await vi.waitFor(() => expect(calls).toBe(1));
      controller.abort();
      expect(await call).toBeInstanceOf(Error);
      await answered;
      expect(undone).toBe(1);
      // And by deadline: the answer after it is undelivered too.
      const late = await postJson(url, {}, credential, {
        headers: {
          'content-type': 'application/json',
          authorization: `Bearer ${credential}`,
          'connect-timeout-ms': '100',
        },
      });
      expect(late.status).toBe(504);
      await vi.waitFor(() => expect(undone).toBe(2));
    });
  });
});

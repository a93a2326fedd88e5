import { credentials, makeGenericClientConstructor, Metadata } from '@grpc/grpc-js';
import { create } from '@bufbuild/protobuf';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { createServer, request as httpRequest, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { BudgetManager } from '../../src/budget/budget-manager.js';
import {
  FabricService,
  ScheduleTaskRequestSchema,
  type ScheduleTaskResponse,
} from '../../src/gen/fabric/v1/fabric_pb.js';
import { CallToolRequestSchema } from '../../src/gen/fabric/v1/tool_pb.js';
import { ApprovalManager } from '../../src/policy/approval-manager.js';
import { PolicyEngine } from '../../src/policy/policy-engine.js';
import { ToolCallAuthorizer } from '../../src/policy/tool-call-authorizer.js';
import { grpcDefinition } from '../../src/rpc/grpc-definition.js';
import { TOOL_SERVICE_DEFINITION } from '../../src/rpc/tool-service.js';
import { parseSidecarConfig } from '../../src/server/config-file.js';
import type { Sidecar } from '../../src/server/sidecar.js';
import { Tracing } from '../../src/telemetry/tracing.js';
import { postJson } from '../fixtures/api.js';
import { grpcClient, unary } from '../fixtures/grpc-client.js';
import {
  ADMIN_TOKEN,
  agentId,
  agentToken,
  closeSidecar,
  httpClient,
  startEverythingHttp,
  startTestSidecar,
  text,
  until,
  type HttpUpstreamProcess,
} from '../fixtures/gateway/harness.js';

/** One span as the OTLP/HTTP JSON exporter sends it. */
interface OtlpSpan {
  traceId: string;
  spanId: string;
  parentSpanId?: string;
  name: string;
  kind: number;
  attributes: { key: string; value: Record<string, unknown> }[];
  status?: { code?: number; message?: string };
}

/** A real OTLP/HTTP receiver: accepts POST /v1/traces (JSON encoding) and keeps the spans. */
class OtlpReceiver {
  readonly spans: OtlpSpan[] = [];
  readonly services = new Set<string>();
  readonly contentTypes = new Set<string>();
  readonly #server: Server;

  constructor() {
    this.#server = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        if (req.method !== 'POST' || req.url !== '/v1/traces') {
          res.writeHead(404).end();
          return;
        }
        this.contentTypes.add(String(req.headers['content-type']));
        const body = JSON.parse(Buffer.concat(chunks).toString('utf8')) as {
          resourceSpans: {
            resource: { attributes: OtlpSpan['attributes'] };
            scopeSpans: { spans: OtlpSpan[] }[];
          }[];
        };
        for (const rs of body.resourceSpans) {
          const service = rs.resource.attributes.find((a) => a.key === 'service.name');
          if (service) this.services.add(String(service.value.stringValue));
          for (const ss of rs.scopeSpans) this.spans.push(...ss.spans);
        }
        res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
      });
    });
  }

  async listen(): Promise<string> {
    await new Promise<void>((resolve) => this.#server.listen(0, '127.0.0.1', resolve));
    return `http://127.0.0.1:${(this.#server.address() as AddressInfo).port}`;
  }

  close(): Promise<void> {
    return new Promise((resolve) => this.#server.close(() => resolve()));
  }

  /** Spans of trace `traceId`. */
  trace(traceId: string): OtlpSpan[] {
    return this.spans.filter((s) => s.traceId === traceId);
  }
}

/** A span attribute's value (string, int or bool). */
function attr(span: OtlpSpan | undefined, key: string): unknown {
  const v = span?.attributes.find((a) => a.key === key)?.value;
  if (v === undefined) return undefined;
  return v.stringValue ?? v.intValue ?? v.boolValue;
}

/**
 * A recording HTTP proxy in front of the real HTTP upstream: keeps the `traceparent` header of
 * every `tools/call` POST it forwards.
 */
async function recordingProxy(target: string): Promise<{
  url: string;
  calls: { traceparent: string | undefined; body: string }[];
  close(): Promise<void>;
}> {
  const calls: { traceparent: string | undefined; body: string }[] = [];
  const to = new URL(target);
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      const s = body.toString('utf8');
      if (s.includes('"tools/call"')) {
        const tp = req.headers.traceparent;
        calls.push({ traceparent: Array.isArray(tp) ? tp[0] : tp, body: s });
      }
      const up = httpRequest(
        {
          host: to.hostname,
          port: to.port,
          method: req.method,
          path: req.url,
          headers: { ...req.headers, host: to.host },
        },
        (ur) => {
          res.writeHead(ur.statusCode ?? 502, ur.headers);
          ur.pipe(res);
        },
      );
      up.on('error', () => res.destroy());
      up.end(body);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}${to.pathname}`,
    calls,
    close: () =>
      new Promise((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

const TRANSPARENCY = fileURLToPath(
  new URL('../fixtures/gateway/transparency-server.mjs', import.meta.url),
);
const CALLER_TRACE = '4bf92f3577b34da6a3ce929d0e0e4736';
const CALLER_SPAN = '00f067aa0ba902b7';
const SECRET = 'sk-live-0123456789abcdef-never-in-a-span';

describe('OpenTelemetry traces exported to a real OTLP/HTTP receiver', () => {
  const receiver = new OtlpReceiver();
  let upstream: HttpUpstreamProcess;
  let proxy: Awaited<ReturnType<typeof recordingProxy>>;
  let sseUpstream: HttpUpstreamProcess;
  let sseProxy: Awaited<ReturnType<typeof recordingProxy>>;
  let sidecar: Sidecar;
  let client: Client;

  beforeAll(async () => {
    const endpoint = await receiver.listen();
    upstream = await startEverythingHttp();
    proxy = await recordingProxy(upstream.url);
    sseUpstream = await startEverythingHttp('sse');
    sseProxy = await recordingProxy(sseUpstream.url);
    sidecar = await startTestSidecar({
      upstreams: {
        remote: { url: proxy.url, callTimeoutSeconds: 20 },
        local: { command: process.execPath, args: [TRANSPARENCY] },
        legacy: { transport: 'sse', url: sseProxy.url, callTimeoutSeconds: 20 },
      },
      policies: [
        {
          name: 'guard',
          priority: 10,
          rules: [
            { tool: 'remote__get-sum', action: 'deny', conditions: { a: 13 }, reason: 'unlucky' },
            {
              tool: 'remote__get-sum',
              action: 'require_approval',
              conditions: { a: 7 },
              reason: 'a human checks sevens',
            },
            { tool: 'remote__*', action: 'allow' },
            { tool: 'fabric__*', action: 'allow' },
            { tool: 'local__*', action: 'allow' },
            { tool: 'legacy__*', action: 'allow' },
          ],
        },
      ],
      pools: [{ id: 'crew' }],
      agents: [{ name: 'traced-agent' }, { name: 'lead', poolId: 'crew' }],
      gateway: { poolScheduling: true },
      grpc: { host: '127.0.0.1', port: 0 },
      telemetry: { serviceName: 'fabric-under-test', otlp: { endpoint, scheduledDelayMs: 100 } },
    });
    client = await httpClient(sidecar.url!, agentToken(sidecar, 'traced-agent'));
  });

  afterAll(async () => {
    await client?.close();
    await closeSidecar(sidecar);
    await proxy?.close();
    await upstream?.close();
    await sseProxy?.close();
    await sseUpstream?.close();
    await receiver.close();
  });

  /** Waits until trace `traceId` holds a span named `name`. */
  async function spanOf(traceId: string, name: string): Promise<OtlpSpan> {
    await until(() => receiver.trace(traceId).some((s) => s.name === name), 15_000);
    return receiver.trace(traceId).find((s) => s.name === name)!;
  }

  it('makes a span tree under the caller’s _meta traceparent and passes it to the HTTP upstream', async () => {
    const r = await client.callTool({
      name: 'remote__echo',
      arguments: { message: SECRET },
      _meta: { traceparent: `00-${CALLER_TRACE}-${CALLER_SPAN}-01`, tracestate: 'vendor=x' },
    });
    expect(text(r)).toBe(`Echo: ${SECRET}`);
    const root = await spanOf(CALLER_TRACE, 'tools/call remote__echo');
    await spanOf(CALLER_TRACE, 'upstream.call');
    expect(root.parentSpanId).toBe(CALLER_SPAN);
    expect(root.kind).toBe(2); // SERVER
    expect(attr(root, 'fabric.agent.id')).toBe(agentId(sidecar, 'traced-agent'));
    expect(attr(root, 'fabric.tool')).toBe('remote__echo');
    expect(attr(root, 'fabric.decision')).toBe('allow');
    expect(attr(root, 'fabric.rule')).toBe('guard#2');
    expect(attr(root, 'fabric.outcome')).toBe('ok');
    const children = receiver.trace(CALLER_TRACE).filter((s) => s.parentSpanId === root.spanId);
    expect(children.map((s) => s.name).sort()).toEqual(['budget', 'policy', 'upstream.call']);
    const policy = children.find((s) => s.name === 'policy');
    expect(attr(policy, 'fabric.decision')).toBe('allow');
    expect(attr(policy, 'fabric.rule')).toBe('guard#2');
    const call = children.find((s) => s.name === 'upstream.call')!;
    expect(call.kind).toBe(3); // CLIENT
    expect(attr(call, 'fabric.upstream')).toBe('remote');
    // The upstream got the trace: the upstream-call span is the parent of its request.
    const forwarded = proxy.calls.find((c) => c.body.includes(SECRET));
    expect(forwarded?.traceparent).toBe(`00-${CALLER_TRACE}-${call.spanId}-01`);
    // Never arguments, results or credentials in a span.
    const all = JSON.stringify(receiver.spans);
    expect(all).not.toContain(SECRET);
    expect(all).not.toContain(agentToken(sidecar, 'traced-agent'));
    expect(receiver.services).toContain('fabric-under-test');
    expect([...receiver.contentTypes].every((t) => t.startsWith('application/json'))).toBe(true);
  });

  it('takes the caller’s context from the HTTP traceparent header; a denied call has no upstream span', async () => {
    const trace = 'a'.repeat(31) + '1';
    const parent = 'b'.repeat(15) + '2';
    const headerClient = new Client({ name: 'header-agent', version: '1.0.0' });
    await headerClient.connect(
      new StreamableHTTPClientTransport(new URL(sidecar.url!), {
        requestInit: {
          headers: {
            authorization: `Bearer ${agentToken(sidecar, 'traced-agent')}`,
            traceparent: `00-${trace}-${parent}-01`,
          },
        },
      }),
    );
    try {
      const denied = await headerClient.callTool({
        name: 'remote__get-sum',
        arguments: { a: 13, b: 1 },
      });
      expect(denied.isError).toBe(true);
    } finally {
      await headerClient.close();
    }
    const root = await spanOf(trace, 'tools/call remote__get-sum');
    expect(root.parentSpanId).toBe(parent);
    expect(attr(root, 'fabric.decision')).toBe('deny');
    expect(attr(root, 'fabric.rule')).toBe('guard#0');
    expect(attr(root, 'fabric.outcome')).toBe('denied');
    expect(attr(root, 'fabric.error.code')).toBe('FABRIC_ERR_POLICY_DENIED');
    const names = receiver.trace(trace).map((s) => s.name);
    expect(names).toContain('policy');
    expect(names).not.toContain('upstream.call');
    expect(names).not.toContain('budget');
  });

  it('records the approval wait as its own span', async () => {
    const trace = 'c'.repeat(31) + '3';
    const pending = client.callTool({
      name: 'remote__get-sum',
      arguments: { a: 7, b: 1 },
      _meta: { traceparent: `00-${trace}-${'d'.repeat(15)}4-01` },
    });
    const fabric = sidecar.fabric!;
    await until(() => fabric.approvals.listApprovals({ status: 'pending' }).length > 0);
    const [approval] = fabric.approvals.listApprovals({ status: 'pending' });
    fabric.approvals.approve(approval!.id, { approver: 'ops' });
    expect(text(await pending)).toContain('8');
    const wait = await spanOf(trace, 'approval.wait');
    await spanOf(trace, 'tools/call remote__get-sum');
    const root = receiver.trace(trace).find((s) => s.name === 'tools/call remote__get-sum')!;
    expect(wait.parentSpanId).toBe(root.spanId);
    expect(attr(wait, 'fabric.approval.id')).toBe(approval!.id);
    expect(attr(wait, 'fabric.approval.status')).toBe('approved');
    expect(attr(root, 'fabric.decision')).toBe('approved');
  });

  it('takes the caller’s context from gRPC metadata', async () => {
    const trace = 'e'.repeat(31) + '5';
    const parent = 'f'.repeat(15) + '6';
    const Ctor = makeGenericClientConstructor(TOOL_SERVICE_DEFINITION, 'ToolService');
    const grpc = new Ctor(sidecar.grpcAddress!, credentials.createInsecure());
    try {
      const md = new Metadata();
      md.set('authorization', `Bearer ${agentToken(sidecar, 'traced-agent')}`);
      md.set('traceparent', `00-${trace}-${parent}-01`);
      await new Promise<void>((resolve, reject) => {
        (grpc as unknown as Record<string, (...a: unknown[]) => void>).callTool!.call(
          grpc,
          create(CallToolRequestSchema, {
            name: 'remote__echo',
            args: { case: 'argumentsJson', value: Buffer.from('{"message":"hi"}') },
          }),
          md,
          (err: Error | null) => (err ? reject(err) : resolve()),
        );
      });
    } finally {
      grpc.close();
    }
    const root = await spanOf(trace, 'tools/call remote__echo');
    expect(root.parentSpanId).toBe(parent);
    expect(attr(root, 'fabric.outcome')).toBe('ok');
    const call = await spanOf(trace, 'upstream.call');
    expect(proxy.calls.some((c) => c.traceparent === `00-${trace}-${call.spanId}-01`)).toBe(true);
  });

  it('ignores a malformed or huge traceparent: the call works and starts a new trace', async () => {
    const before = new Set(receiver.spans.map((s) => s.traceId));
    for (const bad of [
      'garbage',
      `00-${'0'.repeat(32)}-${CALLER_SPAN}-01`,
      `00-${'1'.repeat(1_000_000)}`,
    ]) {
      const r = await client.callTool({
        name: 'remote__echo',
        arguments: { message: 'still works' },
        _meta: { traceparent: bad, tracestate: 'x'.repeat(100_000) },
      });
      expect(text(r)).toBe('Echo: still works');
    }
    await until(
      () =>
        receiver.spans.filter((s) => s.name === 'tools/call remote__echo' && !before.has(s.traceId))
          .length >= 3,
      15_000,
    );
    const roots = receiver.spans.filter(
      (s) => s.name === 'tools/call remote__echo' && !before.has(s.traceId),
    );
    for (const r of roots) expect(r.parentSpanId ?? '').toBe('');
  });

  it('traces a task from schedule to end, one span per attempt', async () => {
    const fabric = sidecar.fabric!;
    const id = agentId(sidecar, 'traced-agent');
    const task = await fabric.schedule({
      agentId: id,
      taskType: 'traced-job',
      payload: { secret: SECRET },
      maxAttempts: 2,
    });
    const first = await fabric.claimTask(id);
    expect(first?.taskId).toBe(task.id);
    await fabric.failTask(id, task.id, first!.attempt, 'flaky', { retry: true });
    const second = await fabric.claimTask(id);
    expect(second?.attempt).toBe(2);
    await fabric.completeTask(id, task.id, second!.attempt, { ok: true });
    await until(() => receiver.spans.some((s) => attr(s, 'fabric.task.id') === task.id), 15_000);
    const root = receiver.spans.find((s) => attr(s, 'fabric.task.id') === task.id)!;
    expect(root.name).toBe('task traced-job');
    expect(attr(root, 'fabric.task.status')).toBe('COMPLETED');
    expect(String(attr(root, 'fabric.task.attempts'))).toBe('2');
    const children = receiver.trace(root.traceId).filter((s) => s.parentSpanId === root.spanId);
    const attempts = children.filter((s) => s.name === 'task.attempt');
    expect(attempts).toHaveLength(2);
    expect(attempts.map((a) => String(attr(a, 'fabric.task.attempt'))).sort()).toEqual(['1', '2']);
    const failed = attempts.find((a) => String(attr(a, 'fabric.task.attempt')) === '1');
    expect(failed?.status?.code).toBe(2); // ERROR
    expect(children.filter((s) => s.name === 'task.queued')).toHaveLength(2);
    expect(JSON.stringify(receiver.spans)).not.toContain(SECRET);
  });

  it('puts the upstream-call span’s traceparent in _meta of a tools/call to a stdio upstream', async () => {
    const trace = '7'.repeat(31) + 'd';
    const parent = '8'.repeat(15) + 'e';
    const r = await client.callTool({
      name: 'local__report',
      arguments: { x: 1 },
      _meta: {
        traceparent: `00-${trace}-${parent}-01`,
        tracestate: 'caller=1',
        other: 'not-forwarded',
      },
    });
    const received = JSON.parse(text(r)) as { _meta?: Record<string, unknown> };
    const call = await spanOf(trace, 'upstream.call');
    const root = await spanOf(trace, 'tools/call local__report');
    expect(root.parentSpanId).toBe(parent);
    expect(call.parentSpanId).toBe(root.spanId);
    expect(attr(call, 'fabric.upstream')).toBe('local');
    // The upstream-call span is its parent, not the caller's span; the caller's _meta keys are
    // not forwarded (the gateway never forwarded them).
    expect(received._meta?.traceparent).toBe(`00-${trace}-${call.spanId}-01`);
    expect(received._meta?.tracestate).toBeUndefined();
    expect(received._meta?.other).toBeUndefined();
    // A call that sent no context: a new trace, still passed on.
    const fresh = JSON.parse(
      text(await client.callTool({ name: 'local__report', arguments: {} })),
    ) as { _meta?: { traceparent?: string } };
    const [, freshTrace, freshSpan] = fresh._meta!.traceparent!.split('-');
    const freshCall = await spanOf(freshTrace!, 'upstream.call');
    expect(freshCall.spanId).toBe(freshSpan);
  });

  it('puts it in _meta of a tools/call to an SSE upstream', async () => {
    const trace = '9'.repeat(31) + 'f';
    const r = await client.callTool({
      name: 'legacy__echo',
      arguments: { message: 'over sse' },
      _meta: { traceparent: `00-${trace}-${'a'.repeat(15)}1-01` },
    });
    expect(text(r)).toBe('Echo: over sse');
    const call = await spanOf(trace, 'upstream.call');
    expect(attr(call, 'fabric.upstream')).toBe('legacy');
    const sent = sseProxy.calls.find((c) => c.body.includes('over sse'));
    const body = JSON.parse(sent!.body) as { params: { _meta?: { traceparent?: string } } };
    expect(body.params._meta?.traceparent).toBe(`00-${trace}-${call.spanId}-01`);
  });

  /** The exported `task <type>` span of task `taskId`. */
  async function taskSpan(taskId: string): Promise<OtlpSpan> {
    await until(() => receiver.spans.some((s) => attr(s, 'fabric.task.id') === taskId), 15_000);
    return receiver.spans.find((s) => attr(s, 'fabric.task.id') === taskId)!;
  }

  it('continues the scheduling caller’s trace: gRPC metadata and the HTTP /api traceparent header', async () => {
    const fabric = sidecar.fabric!;
    const id = agentId(sidecar, 'traced-agent');
    const admin = grpcClient(grpcDefinition(FabricService), sidecar.grpcAddress!);
    const grpcTrace = '1'.repeat(31) + '7';
    const grpcParent = '2'.repeat(15) + '8';
    let viaGrpc: string;
    try {
      const res = await unary<ScheduleTaskResponse>(
        admin,
        'scheduleTask',
        create(ScheduleTaskRequestSchema, { agentId: id, taskType: 'from-grpc' }),
        ADMIN_TOKEN,
        { metadata: { traceparent: `00-${grpcTrace}-${grpcParent}-01`, tracestate: 'v=1' } },
      );
      viaGrpc = res.task!.taskId;
      // A malformed traceparent: the task is scheduled all the same, in a new trace.
      const bad = await unary<ScheduleTaskResponse>(
        admin,
        'scheduleTask',
        create(ScheduleTaskRequestSchema, { agentId: id, taskType: 'bad-context' }),
        ADMIN_TOKEN,
        { metadata: { traceparent: `00-${'x'.repeat(32)}-${grpcParent}-01` } },
      );
      const badSpan = await taskSpanWhenEnded(bad.task!.taskId);
      expect(badSpan.parentSpanId ?? '').toBe('');
      expect(badSpan.traceId).not.toBe(grpcTrace);
    } finally {
      admin.close();
    }
    const httpTrace = '3'.repeat(31) + '9';
    const httpParent = '4'.repeat(15) + 'a';
    const res = await postJson(
      new URL('/api/fabric.v1.FabricService/ScheduleTask', sidecar.url!),
      { agentId: id, taskType: 'from-http' },
      null,
      {
        headers: {
          'content-type': 'application/json',
          authorization: `Bearer ${ADMIN_TOKEN}`,
          traceparent: `00-${httpTrace}-${httpParent}-01`,
        },
      },
    );
    expect(res.status).toBe(200);
    const viaHttp = ((await res.json()) as { task: { taskId: string } }).task.taskId;
    const fromGrpc = await taskSpanWhenEnded(viaGrpc);
    const fromHttp = await taskSpanWhenEnded(viaHttp);
    expect([fromGrpc.traceId, fromGrpc.parentSpanId]).toEqual([grpcTrace, grpcParent]);
    expect([fromHttp.traceId, fromHttp.parentSpanId]).toEqual([httpTrace, httpParent]);
    // The task's own children stay in the caller's trace.
    expect(
      receiver
        .trace(grpcTrace)
        .some((s) => s.name === 'task.queued' && s.parentSpanId === fromGrpc.spanId),
    ).toBe(true);
    expect((await fabric.getTask(viaGrpc)).status).toBe('CANCELLED');
  });

  /** Cancels task `taskId` (its span ends then) and waits for its exported `task` span. */
  async function taskSpanWhenEnded(taskId: string): Promise<OtlpSpan> {
    await sidecar.fabric!.cancelTask(taskId, 'test done');
    return taskSpan(taskId);
  }

  it('makes the task of fabric__schedule_task a child of that tool call', async () => {
    const fabric = sidecar.fabric!;
    const lead = agentId(sidecar, 'lead');
    const leadClient = await httpClient(sidecar.url!, agentToken(sidecar, 'lead'));
    const trace = '5'.repeat(31) + 'b';
    const parent = '6'.repeat(15) + 'c';
    try {
      const pending = leadClient.callTool({
        name: 'fabric__schedule_task',
        arguments: { taskType: 'from-mcp', payload: { secret: SECRET } },
        _meta: { traceparent: `00-${trace}-${parent}-01` },
      });
      let claimed: Awaited<ReturnType<typeof fabric.claimTask>>;
      await until(async () => (claimed = await fabric.claimTask(lead)) !== undefined);
      await fabric.completeTask(lead, claimed!.taskId, claimed!.attempt, { done: true });
      const r = await pending;
      expect(r.isError).toBeFalsy();
      const task = await taskSpan(claimed!.taskId);
      const call = await spanOf(trace, 'tools/call fabric__schedule_task');
      const upstreamCall = receiver
        .trace(trace)
        .find((s) => s.name === 'upstream.call' && s.parentSpanId === call.spanId)!;
      expect(call.parentSpanId).toBe(parent);
      expect(attr(upstreamCall, 'fabric.upstream')).toBe('fabric');
      expect(task.traceId).toBe(trace);
      expect(task.parentSpanId).toBe(upstreamCall.spanId);
      expect(attr(task, 'fabric.task.status')).toBe('COMPLETED');
      expect(JSON.stringify(receiver.spans)).not.toContain(SECRET);
    } finally {
      await leadClient.close();
    }
  });
});

/**
 * The fast path (`tryAuthorize`) leaves a budget refusal that may wait, or a call a human must
 * decide, to `authorize` — as the gateway's pipeline does, with a copy of the context sharing
 * the call's trace. Each phase must be recorded once.
 */
describe('policy and budget phases of a call the fast path hands over', () => {
  const receiver = new OtlpReceiver();
  let tracing: Tracing;
  let approvals: ApprovalManager;
  let budgets: BudgetManager;
  let auth: ToolCallAuthorizer;

  beforeAll(async () => {
    tracing = Tracing.create({ url: `${await receiver.listen()}/v1/traces` });
  });
  afterAll(async () => {
    await tracing.shutdown();
    await receiver.close();
  });
  beforeEach(() => {
    approvals = new ApprovalManager({ defaultTtlSeconds: 300 });
    const policies = new PolicyEngine({ approvals });
    policies.addPolicy({
      name: 'main',
      rules: [
        { tool: 'ask', action: 'require_approval' },
        { tool: '*', action: 'allow' },
      ],
    });
    budgets = new BudgetManager();
    budgets.setBudget('agent-1', { maxTokensPerHour: 1000 });
    auth = new ToolCallAuthorizer({ policies, approvals, budgets });
  });
  afterEach(() => approvals.close());

  /** tryAuthorize, then (when it hands over) authorize with a copy, as the pipeline does. */
  async function authorizeTraced(
    tool: string,
    tokens: number,
    whileWaiting?: () => void,
  ): Promise<{ traceId: string; allowed: boolean }> {
    const trace = tracing.toolCall('agent-1', tool);
    const ctx = {
      agentId: 'agent-1',
      tool,
      params: {},
      estimate: { tokens },
      budget: { waitMs: 10_000, clampTokens: true },
      trace,
    };
    let a = auth.tryAuthorize(ctx);
    if (a === undefined) {
      const later = auth.authorize({ ...ctx });
      whileWaiting?.();
      a = await later;
    }
    trace.end({ decision: a.allowed ? 'allow' : 'deny', outcome: a.allowed ? 'ok' : 'denied' });
    await tracing.flush();
    return { traceId: trace.traceId, allowed: a.allowed };
  }

  /** The names of the root's children in trace `traceId`, sorted. */
  function phases(traceId: string): string[] {
    const spans = receiver.trace(traceId);
    const root = spans.find((s) => s.name.startsWith('tools/call'))!;
    return spans
      .filter((s) => s.parentSpanId === root.spanId)
      .map((s) => s.name)
      .sort();
  }

  it('a budget refusal that waits, then fits: one policy and one budget span', async () => {
    const first = auth.tryAuthorize({
      agentId: 'agent-1',
      tool: 'read',
      params: {},
      estimate: { tokens: 950 },
    })!;
    expect(first.allowed).toBe(true);
    let waited = false;
    const r = await authorizeTraced('read', 100, () => {
      waited = true;
      auth.settle(first, { tokens: 500 });
    });
    expect(waited).toBe(true);
    expect(r.allowed).toBe(true);
    expect(phases(r.traceId)).toEqual(['budget', 'policy']);
    const budget = receiver.trace(r.traceId).find((s) => s.name === 'budget');
    expect(attr(budget, 'fabric.budget.reserved')).toBe(true);
    expect(budgets.getStatus('agent-1').tokensReserved).toBe(100);
  });

  it('a budget refusal with nothing in flight: one policy and one refused budget span', async () => {
    budgets.recordUsage('agent-1', { tokens: 1000 });
    const r = await authorizeTraced('read', 100);
    expect(r.allowed).toBe(false);
    expect(phases(r.traceId)).toEqual(['budget', 'policy']);
    const budget = receiver.trace(r.traceId).find((s) => s.name === 'budget');
    expect(attr(budget, 'fabric.budget.reserved')).toBe(false);
    expect(attr(budget, 'fabric.error.code')).toBe('FABRIC_ERR_BUDGET_EXCEEDED');
  });

  it('a call a human must decide: one policy span, then the wait and the budget', async () => {
    const r = await authorizeTraced('ask', 10, () => {
      const [pending] = approvals.listApprovals({ status: 'pending' });
      approvals.approve(pending!.id, { approver: 'ops' });
    });
    expect(r.allowed).toBe(true);
    expect(phases(r.traceId)).toEqual(['approval.wait', 'budget', 'policy']);
  });

  it('an untraced call is handed over as before (nothing kept for it)', async () => {
    const first = auth.tryAuthorize({
      agentId: 'agent-1',
      tool: 'read',
      params: {},
      estimate: { tokens: 1000 },
    })!;
    const ctx = {
      agentId: 'agent-1',
      tool: 'read',
      params: {},
      estimate: { tokens: 10 },
      budget: { waitMs: 10_000 },
    };
    expect(auth.tryAuthorize(ctx)).toBeUndefined();
    const later = auth.authorize(ctx);
    auth.settle(first, { tokens: 10 });
    expect((await later).allowed).toBe(true);
  });
});

describe('telemetry configuration', () => {
  it('is off without an endpoint: the gateway creates no spans', async () => {
    const sidecar = await startTestSidecar({ agents: [{ name: 'a' }] });
    try {
      expect(sidecar.gateway.traced).toBe(false);
    } finally {
      await closeSidecar(sidecar);
    }
  });

  it('honours OTEL_EXPORTER_OTLP_ENDPOINT and OTEL_SERVICE_NAME, and names them in errors', () => {
    const config = parseSidecarConfig('{}', 'c.json', {
      env: { OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4318', OTEL_SERVICE_NAME: 'svc' },
    });
    expect(config.telemetry.otlp?.endpoint).toBe('http://collector:4318');
    expect(config.telemetry.serviceName).toBe('svc');
    expect(() =>
      parseSidecarConfig('telemetry:\n  otlp:\n    endpoint: http://ok:4318\n', 'c.yaml', {
        env: { OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'not a url' },
      }),
    ).toThrow(/telemetry\.otlp\.tracesEndpoint.*env OTEL_EXPORTER_OTLP_TRACES_ENDPOINT/s);
    expect(() =>
      parseSidecarConfig('telemetry:\n  otlp:\n    endpoint: ftp://x\n', 'c.yaml', { env: {} }),
    ).toThrow(/telemetry\.otlp\.endpoint/);
  });
});

/**
 * The doors without MCP sessions — gRPC `ToolService/CallTool` and the HTTP door's `/api/`
 * CallTool — against an agent that gives up each call it makes, on an upstream that goes on
 * working after a cancel (a real stdio upstream that ignores `notifications/cancelled` and
 * answers anyway), on a real sidecar with real grpc-js clients and raw HTTP requests. A call
 * its client cancelled (or whose deadline passed, or whose request was dropped) freed the
 * agent's in-flight slot at once while its work went on upstream, so one agent could keep any
 * number of calls running there. Now, as over Streamable HTTP, a call the gateway gave up on
 * after it was sent keeps its agent's slot until the upstream answers it (the answer is dropped)
 * or its late window (`callTimeoutSeconds`) ends; other agents are not affected, and nothing
 * stays counted once the upstream answers.
 */
import { create } from '@bufbuild/protobuf';
import { status, type ClientUnaryCall, type ServiceError } from '@grpc/grpc-js';
import { request, type ClientRequest } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CallToolRequestSchema, type CallToolResponse } from '../../src/gen/fabric/v1/tool_pb.js';
import { TOOL_SERVICE_DEFINITION } from '../../src/rpc/tool-service.js';
import type { Sidecar } from '../../src/server/sidecar.js';
import { postJson } from '../fixtures/api.js';
import {
  agentToken,
  closeSidecar,
  DEFAULT_ALLOW,
  IGNORE_CANCEL_UPSTREAM,
  metricValue,
  startTestSidecar,
  until,
} from '../fixtures/gateway/harness.js';
import { failure, grpcClient, unary } from '../fixtures/grpc-client.js';

const SLOTS = 3;
const UPSTREAM = { up: IGNORE_CANCEL_UPSTREAM };

interface UpstreamState {
  held: number;
  cancelled: number;
}

describe('gRPC CallTool: a given-up call whose upstream goes on working (real sidecar)', () => {
  let sidecar: Sidecar;
  let tools: ReturnType<typeof grpcClient>;
  let canceller: string;
  let other: string;

  beforeAll(async () => {
    sidecar = await startTestSidecar({
      grpc: { port: 0, maxInflightPerAgent: SLOTS },
      upstreams: UPSTREAM,
      policies: [DEFAULT_ALLOW],
      agents: [{ name: 'canceller' }, { name: 'other' }],
    } as never);
    tools = grpcClient(TOOL_SERVICE_DEFINITION, sidecar.grpcAddress!);
    canceller = agentToken(sidecar, 'canceller');
    other = agentToken(sidecar, 'other');
  });
  afterAll(async () => {
    tools?.close();
    await closeSidecar(sidecar);
  });

  const call = (
    credential: string,
    name: string,
    options: { deadline?: number; started?: (c: ClientUnaryCall) => void } = {},
  ): Promise<CallToolResponse> =>
    unary<CallToolResponse>(
      tools,
      'callTool',
      create(CallToolRequestSchema, { name }),
      credential,
      options,
    );
  const textOf = (res: CallToolResponse): string =>
    String((res.result?.content as { text?: string }[] | undefined)?.[0]?.text);
  /** What the upstream holds and the cancels it saw (asked by the other agent). */
  const upstreamState = async (): Promise<UpstreamState> =>
    JSON.parse(textOf(await call(other, 'up__state'))) as UpstreamState;

  /**
   * Makes a `work` call of the canceller, waits until the upstream holds it (the `held`th), and
   * gives it up: cancelled by the client, or (`deadline`) its deadline passes; the `cancelled`th
   * cancel the upstream sees.
   */
  const givenUpWork = async (
    held: number,
    cancelled: number,
    how: 'cancel' | 'deadline',
  ): Promise<void> => {
    let started: ClientUnaryCall | undefined;
    const outcome = call(canceller, 'up__work', {
      ...(how === 'deadline' ? { deadline: Date.now() + 1500 } : {}),
      started: (c) => (started = c),
    }).then(
      () => undefined,
      (e: ServiceError) => e.code,
    );
    await until(async () => (await upstreamState()).held === held);
    if (how === 'cancel') started!.cancel();
    expect(await outcome).toBe(how === 'cancel' ? status.CANCELLED : status.DEADLINE_EXCEEDED);
    // The sidecar gave it up (and told the upstream): the agent's side is done.
    await until(async () => (await upstreamState()).cancelled === cancelled);
  };

  /**
   * Fills the canceller's slots with given-up calls the upstream still works on (`base`: the
   * cancels it saw before).
   */
  const fillSlots = async (base: number): Promise<void> => {
    for (let i = 1; i <= SLOTS; i++) {
      await givenUpWork(i, base + i, i === SLOTS ? 'deadline' : 'cancel');
    }
    expect(await upstreamState()).toEqual({ held: SLOTS, cancelled: base + SLOTS });
  };

  /** Whether a call of the canceller is served (not refused for its slots). */
  const cancellerServed = async (): Promise<boolean> => {
    try {
      await call(canceller, 'up__state');
      return true;
    } catch {
      return false;
    }
  };

  it('keeps the slot of a cancelled or timed-out call until the upstream answers it', async () => {
    await fillSlots(0);
    // The agent's slots are all held: one more call is refused at once.
    // Before, the cancels had freed them and this call ran upstream too.
    const refused = await failure(call(canceller, 'up__state'));
    expect(refused.code).toBe(status.RESOURCE_EXHAUSTED);
    expect(refused.metadata.get('fabric-error-code')).toEqual(['FABRIC_ERR_INFLIGHT_LIMIT']);
    expect(refused.details).toContain('grpc.maxInflightPerAgent');
    expect((await upstreamState()).held).toBe(SLOTS);

    // Another agent is served as before (its `state` calls above, and this one).
    expect(await upstreamState()).toEqual({ held: SLOTS, cancelled: SLOTS });

    // The upstream answers the given-up calls (the answers are dropped): the slots free.
    expect(textOf(await call(other, 'up__release'))).toBe(String(SLOTS));
    await until(cancellerServed);
    expect(JSON.parse(textOf(await call(canceller, 'up__state')))).toEqual({
      held: 0,
      cancelled: SLOTS,
    });

    // All of them: the agent holds exactly SLOTS given-up calls again, and no more.
    await fillSlots(SLOTS);
    expect((await failure(call(canceller, 'up__state'))).code).toBe(status.RESOURCE_EXHAUSTED);
    expect(textOf(await call(other, 'up__release'))).toBe(String(SLOTS));
    await until(cancellerServed);
  });
});

describe('/api/ CallTool: a given-up call whose upstream goes on working (real sidecar)', () => {
  let sidecar: Sidecar;
  let canceller: string;
  let other: string;

  beforeAll(async () => {
    sidecar = await startTestSidecar({
      http: { maxInflightPerAgent: SLOTS },
      upstreams: UPSTREAM,
      policies: [DEFAULT_ALLOW],
      agents: [{ name: 'canceller' }, { name: 'other' }],
    } as never);
    canceller = agentToken(sidecar, 'canceller');
    other = agentToken(sidecar, 'other');
  });
  afterAll(async () => {
    await closeSidecar(sidecar);
  });

  const callTool = (token: string, name: string): Promise<Response> =>
    postJson(new URL('/api/fabric.v1.ToolService/CallTool', sidecar.url!), { name }, token);
  const textOf = async (res: Response): Promise<string> => {
    expect(res.status).toBe(200);
    const body = (await res.json()) as { result?: { content?: { text?: string }[] } };
    return String(body.result?.content?.[0]?.text);
  };
  const upstreamState = async (): Promise<UpstreamState> =>
    JSON.parse(await textOf(await callTool(other, 'up__state'))) as UpstreamState;

  /** The sidecar's gauge of requests in flight over HTTP (`/mcp` and `/api/`, all agents). */
  const inflightGauge = (): Promise<number> =>
    metricValue(sidecar, 'agent_fabric_mcp_http_requests_in_flight');

  /**
   * A raw `work` CallTool of the canceller: the request is written whole, and either dropped by
   * the client (`abort`: the socket destroyed) or ended by its `connect-timeout-ms` deadline.
   */
  const rawWork = (
    deadlineMs?: number,
  ): { req: ClientRequest; answer: Promise<number | 'dropped'> } => {
    const url = new URL('/api/fabric.v1.ToolService/CallTool', sidecar.url!);
    const body = JSON.stringify({ name: 'up__work' });
    let req!: ClientRequest;
    const answer = new Promise<number | 'dropped'>((resolve) => {
      req = request(
        {
          host: url.hostname,
          port: url.port,
          method: 'POST',
          path: url.pathname,
          headers: {
            authorization: `Bearer ${canceller}`,
            'content-type': 'application/json',
            'content-length': Buffer.byteLength(body),
            ...(deadlineMs === undefined ? {} : { 'connect-timeout-ms': String(deadlineMs) }),
          },
        },
        (res) => {
          res.resume();
          res.on('end', () => resolve(res.statusCode!));
        },
      );
      req.on('error', () => resolve('dropped'));
      req.end(body);
    });
    return { req, answer };
  };

  const givenUpWork = async (
    held: number,
    cancelled: number,
    how: 'abort' | 'deadline',
  ): Promise<void> => {
    const { req, answer } = rawWork(how === 'deadline' ? 1500 : undefined);
    await until(async () => (await upstreamState()).held === held);
    if (how === 'abort') req.destroy();
    expect(await answer).toBe(how === 'abort' ? 'dropped' : 504);
    await until(async () => (await upstreamState()).cancelled === cancelled);
  };

  const fillSlots = async (base: number): Promise<void> => {
    for (let i = 1; i <= SLOTS; i++) {
      await givenUpWork(i, base + i, i === SLOTS ? 'deadline' : 'abort');
    }
    expect(await upstreamState()).toEqual({ held: SLOTS, cancelled: base + SLOTS });
  };

  it('keeps the slot of a dropped or timed-out call until the upstream answers it', async () => {
    await fillSlots(0);
    // Before, the dropped requests had freed their slots and this call ran upstream too.
    const refused = await callTool(canceller, 'up__state');
    expect(refused.status).toBe(429);
    expect(refused.headers.get('fabric-error-code')).toBe('FABRIC_ERR_INFLIGHT_LIMIT');
    expect((await upstreamState()).held).toBe(SLOTS);
    expect(await inflightGauge()).toBe(SLOTS);

    // Another agent is served as before.
    expect(await upstreamState()).toEqual({ held: SLOTS, cancelled: SLOTS });

    // The upstream answers the given-up calls (the answers are dropped): the slots free.
    expect(await textOf(await callTool(other, 'up__release'))).toBe(String(SLOTS));
    await until(async () => (await inflightGauge()) === 0);
    expect(JSON.parse(await textOf(await callTool(canceller, 'up__state')))).toEqual({
      held: 0,
      cancelled: SLOTS,
    });
    expect(await inflightGauge()).toBe(0);
  });
});

/**
 * The HTTP surface besides /mcp against a hostile agent and a rebound web page: an agent's calls
 * through the `/api/` door used to have no in-flight bound (six calls to a hanging tool all
 * stayed open where `http.maxInflightPerAgent` was 2), a call parked on an approval ran after its
 * agent was terminated (the credential already refused), `/readyz` told a rebound page every
 * upstream's name, and an unknown route answered a code not in the catalog. Real sidecar, real
 * upstreams, real HTTP clients.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { MAX_WIRE_ERROR_TEXT } from '../../src/errors.js';
import type { Sidecar } from '../../src/server/sidecar.js';
import { postJson } from '../fixtures/api.js';
import {
  agentId,
  agentToken,
  api,
  closeSidecar,
  DEFAULT_ALLOW,
  EVERYTHING_BIN,
  HANGING_UPSTREAM,
  httpClient,
  startTestSidecar,
  until,
} from '../fixtures/gateway/harness.js';
import { rawRequest } from '../fixtures/raw-http.js';

/** One raw request to the loopback port `port`. */
const raw = (port: number, method: string, path: string, headers: Record<string, string>) =>
  rawRequest(new URL(`http://127.0.0.1:${port}/`), method, path, headers);

let sidecar: Sidecar | undefined;
afterEach(async () => {
  await closeSidecar(sidecar);
  sidecar = undefined;
});

const callTool = (token: string, name: string, args: unknown = {}, signal?: AbortSignal) =>
  postJson(
    new URL('/api/fabric.v1.ToolService/CallTool', sidecar!.url!),
    { name, arguments: args },
    token,
    signal ? { signal } : {},
  );

describe('the /api/ door and an agent', () => {
  it('holds at most http.maxInflightPerAgent of its calls, shared with /mcp; 429 beyond', async () => {
    sidecar = await startTestSidecar({
      http: { maxInflightPerAgent: 2 },
      upstreams: { slow: HANGING_UPSTREAM },
      policies: [DEFAULT_ALLOW],
      agents: [{ name: 'mallory' }, { name: 'watcher' }],
    } as never);
    const token = agentToken(sidecar, 'mallory');
    const watcher = agentToken(sidecar, 'watcher');
    // How many `hang` calls reached the upstream (asked by another agent: mallory has no slot).
    const pending = async (): Promise<number> => {
      const r = await callTool(watcher, 'slow__pending');
      const body = (await r.json()) as { result?: { content?: { text?: string }[] } };
      return Number(body.result?.content?.[0]?.text ?? NaN);
    };
    const held = [new AbortController(), new AbortController()];
    const calls = held.map((c) =>
      callTool(token, 'slow__hang', {}, c.signal).catch(() => undefined),
    );
    await until(async () => (await pending()) === 2);
    const third = await callTool(token, 'slow__hang');
    expect(third.status).toBe(429);
    expect(third.headers.get('fabric-error-code')).toBe('FABRIC_ERR_INFLIGHT_LIMIT');
    expect(await pending()).toBe(2);
    // The same slots as its MCP requests: even an initialize over /mcp is refused now.
    await expect(httpClient(sidecar.url!, token)).rejects.toThrow(/FABRIC_ERR_INFLIGHT_LIMIT|429/);
    // A call its client gives up after it was sent keeps its slot while the upstream may go on
    // with it: this one never answers a cancelled call, so until its callTimeoutSeconds
    // (cancel-holds-slot-doors: the slot frees when the upstream answers).
    held[0]!.abort();
    await calls[0];
    await until(async () => (await pending()) === 1); // the cancel reached the upstream
    expect((await callTool(token, 'slow__pending')).status).toBe(429);
    held[1]!.abort();
    await calls[1];
  });

  it('a parked door call does not run after its agent was terminated', async () => {
    sidecar = await startTestSidecar({
      upstreams: {
        ev: { command: process.execPath, args: [EVERYTHING_BIN, 'stdio'], stderr: 'ignore' },
      },
      policies: [
        DEFAULT_ALLOW,
        { name: 'hold', priority: 10, rules: [{ tool: 'ev__echo', action: 'require_approval' }] },
      ],
      agents: [{ name: 'mallory' }],
    } as never);
    const token = agentToken(sidecar!, 'mallory');
    const call = postJson(
      new URL('/api/fabric.v1.ToolService/CallTool', sidecar!.url!),
      { name: 'ev__echo', arguments: { message: 'ran-after-termination' } },
      token,
    );
    let approvals: { id: string }[] = [];
    await until(async () => {
      const r = await api(sidecar!, 'ApprovalService/ListApprovals', {});
      approvals = ((await r.json()) as { approvals?: { id: string }[] }).approvals ?? [];
      return approvals.length > 0;
    });
    const term = await api(sidecar!, 'FabricService/TerminateAgent', {
      agentId: agentId(sidecar!, 'mallory'),
    });
    expect(term.status).toBe(200);
    // The credential is dead now: a new call is refused.
    const fresh = await postJson(
      new URL('/api/fabric.v1.ToolService/ListTools', sidecar!.url!),
      {},
      token,
    );
    expect(fresh.status).toBe(401);
    // An operator (or the dashboard's inbox) approves what is still listed as pending.
    await api(sidecar!, 'ApprovalService/Approve', { id: approvals[0]!.id, reason: 'ok' });
    const answer = await call;
    const body = await answer.text();
    // Expected: the call ended with the agent (refused/cancelled), the tool never ran.
    expect(body).not.toContain('Echo: ran-after-termination');
    expect(answer.status).not.toBe(200);
  });
});

describe('routes besides /mcp and /api/', () => {
  it('/readyz tells a rebound page only ready or not; an allowed Host gets the checks', async () => {
    sidecar = await startTestSidecar({
      upstreams: {
        'billing-prod-db': {
          command: process.execPath,
          args: [EVERYTHING_BIN, 'stdio'],
          stderr: 'ignore',
        },
      },
    } as never);
    const port = Number(new URL(sidecar.url!).port);
    const rebound = await raw(port, 'GET', '/readyz', {
      host: `attacker.example:${port}`,
      origin: `http://attacker.example:${port}`,
    });
    expect(rebound.status).toBe(200);
    expect(JSON.parse(rebound.body)).toEqual({ ready: true });
    const own = await raw(port, 'GET', '/readyz', { host: `127.0.0.1:${port}` });
    expect(JSON.parse(own.body)).toMatchObject({
      ready: true,
      checks: { 'upstream/billing-prod-db': true },
    });
  });

  it('an unknown route answers a catalog error (code, kind) like every other refusal', async () => {
    sidecar = await startTestSidecar({});
    const port = Number(new URL(sidecar.url!).port);
    for (const [method, path] of [
      ['GET', '/nope'],
      ['POST', '/metrics'],
    ] as const) {
      const a = await raw(port, method, path, { host: `127.0.0.1:${port}` });
      expect(a.status).toBe(404);
      const body = JSON.parse(a.body) as { error: { code: string; kind?: string } };
      expect(body.error).toMatchObject({ code: 'FABRIC_ERR_ROUTE_NOT_FOUND', kind: 'not_found' });
    }
  });
});

describe('error answers', () => {
  it('echo at most MAX_WIRE_ERROR_TEXT of what the caller sent, over /api/ and over MCP', async () => {
    sidecar = await startTestSidecar({
      policies: [DEFAULT_ALLOW],
      agents: [{ name: 'mallory' }],
    } as never);
    const token = agentToken(sidecar, 'mallory');
    const id = 'x'.repeat(200_000);
    const res = await api(sidecar, 'AgentService/CompleteTask', { taskId: id, attempt: 1 }, token);
    const text = await res.text();
    expect(res.status).toBe(404);
    const body = JSON.parse(text) as { code: string; message: string; details: object };
    expect(body.code).toBe('FABRIC_ERR_TASK_NOT_FOUND');
    expect(body.message.length).toBeLessThanOrEqual(MAX_WIRE_ERROR_TEXT);
    expect(body.message).toMatch(/^task x+…/);
    for (const value of Object.values(body.details))
      if (typeof value === 'string') expect(value.length).toBeLessThanOrEqual(MAX_WIRE_ERROR_TEXT);
    expect(text.length).toBeLessThan(4 * MAX_WIRE_ERROR_TEXT);

    const client = await httpClient(new URL('/mcp', sidecar.url!).href, token);
    try {
      const result = await client.callTool({
        name: 'fabric__complete_task',
        arguments: { taskId: id, attempt: 1 },
      });
      expect(result.isError).toBe(true);
      expect(JSON.stringify(result)).toContain('FABRIC_ERR_TASK_NOT_FOUND');
      expect(JSON.stringify(result).length).toBeLessThan(6 * MAX_WIRE_ERROR_TEXT);
    } finally {
      await client.close();
    }
  });
});

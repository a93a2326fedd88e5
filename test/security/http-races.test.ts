/**
 * The Streamable HTTP endpoint and the HTTP door against an agent that races its own requests:
 * a POST whose session closes while its body is still arriving, calls cancelled right after they
 * were sent (their upstream answers come back late), and a call deadline beyond what a Node.js
 * timer holds. Real sidecar, real upstream (server-everything), raw HTTP.
 */
import { request as httpRequest } from 'node:http';
import { connect } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  ADMIN_TOKEN,
  agentToken,
  closeSidecar,
  DEFAULT_ALLOW,
  EVERYTHING_BIN,
  INIT,
  INIT_BATCHING,
  startTestSidecar,
  until,
} from '../fixtures/gateway/harness.js';

/** No answer within this long counts as a hang. */
const DEADLINE_MS = 10_000;

interface Answer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

function send(
  port: number,
  options: { method?: string; path?: string; headers?: Record<string, string>; body?: string },
): Promise<Answer> {
  const { method = 'POST', path = '/mcp', headers = {}, body } = options;
  return new Promise((resolve, reject) => {
    const req = httpRequest(
      { host: '127.0.0.1', port, method, path, agent: false, headers },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (text += c));
        res.on('end', () => {
          clearTimeout(timer);
          resolve({ status: res.statusCode!, headers: res.headers, body: text });
        });
      },
    );
    const timer = setTimeout(() => {
      req.destroy();
      reject(new Error(`no answer within ${DEADLINE_MS} ms: ${method} ${path}`));
    }, DEADLINE_MS);
    req.on('error', reject);
    req.end(body);
  });
}

const mcpHeaders = (token: string, session?: string): Record<string, string> => ({
  'content-type': 'application/json',
  accept: 'application/json, text/event-stream',
  authorization: `Bearer ${token}`,
  ...(session === undefined ? {} : { 'mcp-session-id': session }),
});

async function openSession(port: number, token: string): Promise<string> {
  // Of the last MCP version with batches: some tests here POST them.
  const init = await send(port, {
    headers: mcpHeaders(token),
    body: JSON.stringify(INIT_BATCHING),
  });
  expect(init.status).toBe(200);
  const session = init.headers['mcp-session-id'] as string;
  const ack = await send(port, {
    headers: mcpHeaders(token, session),
    body: JSON.stringify({ jsonrpc: '2.0', method: 'notifications/initialized' }),
  });
  expect(ack.status).toBe(202);
  return session;
}

/** The first HTTP response on a raw socket: status and body (by its content-length). */
function firstResponse(
  socket: ReturnType<typeof connect>,
): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    let text = '';
    const timer = setTimeout(() => reject(new Error('no answer on the raw socket')), DEADLINE_MS);
    socket.setEncoding('utf8');
    socket.on('data', (c: string) => {
      text += c;
      const end = text.indexOf('\r\n\r\n');
      if (end < 0) return;
      const length = /\r\ncontent-length: *(\d+)/i.exec(text.slice(0, end));
      if (length === null || text.length - end - 4 < Number(length[1])) return;
      clearTimeout(timer);
      resolve({ status: Number(text.slice(9, 12)), body: text.slice(end + 4) });
    });
  });
}

async function metric(port: number, line: string): Promise<string[]> {
  const m = await send(port, {
    method: 'GET',
    path: '/metrics',
    headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
  });
  return m.body.split('\n').filter((l) => l.startsWith(line));
}

describe('HTTP requests racing their own session and calls (real sidecar)', () => {
  let sidecar: Sidecar;
  let port: number;
  const logs: { msg: string; error?: unknown }[] = [];

  beforeAll(async () => {
    sidecar = await startTestSidecar(
      {
        http: { maxInflightPerAgent: 64, bodyTimeoutSeconds: 5 },
        upstreams: {
          ev: { command: process.execPath, args: [EVERYTHING_BIN, 'stdio'], stderr: 'ignore' },
        },
        policies: [DEFAULT_ALLOW],
        agents: [{ name: 'a' }, { name: 'b' }, { name: 'w' }],
      },
      { logger: (e) => logs.push(e as { msg: string }) },
    );
    port = sidecar.port!;
  });
  afterAll(() => closeSidecar(sidecar));

  it('a POST whose session is deleted while its body arrives is answered 404, not run, and frees its slot', async () => {
    const token = agentToken(sidecar, 'a');
    // Another session of the agent keeps its load record alive, as any client with two has.
    const keeper = await openSession(port, token);
    // Each round's request used to stay counted in flight, for good.
    for (let i = 0; i < 6; i++) {
      const session = await openSession(port, token);
      const body = JSON.stringify({
        jsonrpc: '2.0',
        id: 7,
        method: 'tools/call',
        params: { name: 'ev__echo', arguments: { message: `raced-${i}` } },
      });
      const socket = connect(port, '127.0.0.1');
      const answer = firstResponse(socket);
      socket.write(
        `POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nContent-Type: application/json\r\n` +
          `Accept: application/json, text/event-stream\r\nAuthorization: Bearer ${token}\r\n` +
          `Mcp-Session-Id: ${session}\r\nContent-Length: ${body.length}\r\n\r\n${body.slice(0, 10)}`,
      );
      // The headers are parsed and authenticated; the handler waits for the rest of the body.
      await new Promise((r) => setTimeout(r, 150));
      const deleted = await send(port, { method: 'DELETE', headers: mcpHeaders(token, session) });
      expect(deleted.status).toBe(200);
      socket.write(body.slice(10));
      const got = await answer;
      socket.destroy();
      expect(got.status).toBe(404);
      expect(JSON.parse(got.body)).toMatchObject({ error: { code: -32001 } });
    }
    expect(await metric(port, 'agent_fabric_mcp_http_requests_in_flight ')).toEqual([
      'agent_fabric_mcp_http_requests_in_flight 0',
    ]);
    // Nothing was forwarded for the closed sessions.
    expect(await metric(port, 'agent_fabric_requests_total{tool="ev__echo"')).toEqual([]);
    const ping = await send(port, {
      headers: mcpHeaders(token, keeper),
      body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'ping' }),
    });
    expect(ping.status).toBe(200);
  });

  it("an upstream's late answers to cancelled calls do not put tool output in the log", async () => {
    const token = agentToken(sidecar, 'b');
    const session = await openSession(port, token);
    for (let round = 0; round < 10; round++) {
      const ids = Array.from({ length: 50 }, (_, i) => round * 100 + i + 1);
      const calls = ids.map((id) => ({
        jsonrpc: '2.0',
        id,
        method: 'tools/call',
        params: { name: 'ev__echo', arguments: { message: `TOOL-OUTPUT-${id}` } },
      }));
      const cancels = ids.map((id) => ({
        jsonrpc: '2.0',
        method: 'notifications/cancelled',
        params: { requestId: id, reason: 'changed my mind' },
      }));
      await Promise.all([
        send(port, { headers: mcpHeaders(token, session), body: JSON.stringify(calls) }),
        send(port, { headers: mcpHeaders(token, session), body: JSON.stringify(cancels) }),
      ]);
    }
    // The answers that raced their cancellation had time to come back.
    await until(
      async () => (await metric(port, 'agent_fabric_requests_total{tool="ev__echo"')).length > 0,
    );
    await new Promise((r) => setTimeout(r, 500));
    expect(logs.filter((l) => JSON.stringify(l).includes('TOOL-OUTPUT-'))).toEqual([]);
  });

  it('a connect-timeout-ms beyond 2^31 − 1 ms is a deadline that far away, not one passed at once', async () => {
    const token = agentToken(sidecar, 'w');
    for (const deadline of ['2147483647', '2147483648', '9999999999']) {
      const claim = await send(port, {
        path: '/api/fabric.v1.AgentService/ClaimTask',
        headers: {
          authorization: `Bearer ${token}`,
          'content-type': 'application/json',
          'connect-timeout-ms': deadline,
        },
        body: JSON.stringify({ waitSeconds: 1 }),
      });
      expect({ deadline, status: claim.status }).toEqual({ deadline, status: 200 });
    }
  });
  it('refuses what the Streamable HTTP transport refuses (415, 406, 400), after authentication', async () => {
    const token = agentToken(sidecar, 'a');
    const init = JSON.stringify(INIT);
    const statusOf = async (headers: Record<string, string>, body?: string, method = 'POST') =>
      (await send(port, { method, headers, ...(body === undefined ? {} : { body }) })).status;
    // No credential: 401 whatever the headers (nothing is told before authentication).
    expect(await statusOf({ 'content-type': 'text/plain' }, init)).toBe(401);
    expect(await statusOf({ ...mcpHeaders(token), 'content-type': 'text/plain' }, init)).toBe(415);
    expect(await statusOf({ ...mcpHeaders(token), accept: 'application/json' }, init)).toBe(406);
    const { accept: _accept, ...noAccept } = mcpHeaders(token);
    expect(await statusOf(noAccept, init)).toBe(406);
    // Parameters and wildcards are read as such.
    expect(
      await statusOf(
        { ...mcpHeaders(token), 'content-type': 'Application/JSON; charset=utf-8', accept: '*/*' },
        init,
      ),
    ).toBe(200);
    const session = await openSession(port, token);
    expect(
      await statusOf(
        { ...mcpHeaders(token, session), accept: 'application/json' },
        undefined,
        'GET',
      ),
    ).toBe(406);
    const ping = JSON.stringify({ jsonrpc: '2.0', id: 2, method: 'ping' });
    expect(
      await statusOf({ ...mcpHeaders(token, session), 'mcp-protocol-version': '1999-01-01' }, ping),
    ).toBe(400);
    expect(
      await statusOf({ ...mcpHeaders(token, session), 'mcp-protocol-version': '2025-06-18' }, ping),
    ).toBe(200);
    const again = await send(port, {
      headers: mcpHeaders(token, session),
      body: JSON.stringify({ ...INIT, id: 3 }),
    });
    expect(again.status).toBe(400);
    expect(JSON.parse(again.body)).toMatchObject({ error: { code: -32600 } });
    // The session still works.
    expect(await statusOf(mcpHeaders(token, session), ping)).toBe(200);
    // The last headers' answers are remembered (clients repeat them): each change is read anew,
    // either way, however often the same value came before.
    for (let round = 0; round < 2; round++) {
      expect(await statusOf(mcpHeaders(token, session), ping)).toBe(200);
      expect(
        await statusOf({ ...mcpHeaders(token, session), 'content-type': 'text/plain' }, ping),
      ).toBe(415);
      expect(
        await statusOf({ ...mcpHeaders(token, session), accept: 'text/event-stream' }, ping),
      ).toBe(406);
      expect(await statusOf(mcpHeaders(token, session), ping)).toBe(200);
    }
  });

  it('refuses an initialize batched with other messages, as the SDK transport does: no session, nothing run', async () => {
    const token = agentToken(sidecar, 'b');
    const before = await metric(port, 'agent_fabric_mcp_sessions ');
    const calls = await metric(port, 'agent_fabric_requests_total{tool="ev__echo"');
    const call = {
      jsonrpc: '2.0',
      id: 2,
      method: 'tools/call',
      params: { name: 'ev__echo', arguments: { message: 'batched' } },
    };
    for (const batch of [
      [INIT, call],
      [INIT, { ...INIT, id: 2 }],
      [{ jsonrpc: '2.0', method: 'notifications/initialized' }, INIT],
    ]) {
      const res = await send(port, { headers: mcpHeaders(token), body: JSON.stringify(batch) });
      expect(res.status).toBe(400);
      expect(res.headers['mcp-session-id']).toBeUndefined();
      expect(JSON.parse(res.body)).toMatchObject({
        id: null,
        error: { code: -32600, message: expect.stringMatching(/only one/i) },
      });
    }
    expect(await metric(port, 'agent_fabric_mcp_sessions ')).toEqual(before);
    expect(await metric(port, 'agent_fabric_requests_total{tool="ev__echo"')).toEqual(calls);
    // A batch of the initialize alone opens a session, as a lone initialize does.
    const alone = await send(port, { headers: mcpHeaders(token), body: JSON.stringify([INIT]) });
    expect(alone.status).toBe(200);
    expect(alone.headers['mcp-session-id']).toBeTypeOf('string');
  });
});

/**
 * The HTTP ingress against a hostile agent, on the real sidecar over real HTTP: DNS rebinding
 * (Host / Origin), malformed JSON-RPC (a seeded fuzz: every request answered, nothing left
 * pending), oversize and slow bodies, per-agent session and in-flight limits, and the server
 * timeouts (which must not cut SSE streams or long answers). Malformed lines over stdio too.
 *
 * Hangs are detected with a per-request deadline: a request the sidecar never answers fails the
 * test instead of the test waiting forever (that is what main did for most of these bodies).
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { request as httpRequest, type IncomingHttpHeaders } from 'node:http';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
import {
  isJSONRPCErrorResponse,
  isJSONRPCNotification,
  isJSONRPCRequest,
  isJSONRPCResultResponse,
} from '@modelcontextprotocol/sdk/types.js';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  ADMIN_TOKEN,
  api,
  agentId,
  agentToken,
  CLI_MAIN,
  closeSidecar,
  DEFAULT_ALLOW,
  EVERYTHING_BIN,
  httpClient,
  INIT,
  INIT_BATCHING,
  startTestSidecar,
  tempDir,
  text,
  TSX,
  until,
} from '../fixtures/gateway/harness.js';

/** No answer within this long counts as a hang. */
const DEADLINE_MS = 8_000;
/** Deadline of requests a test holds open until it decides them (beyond the test timeout). */
const HELD_DEADLINE_MS = 60_000;
const MAX_SESSIONS = 3;
const MAX_INFLIGHT = 16;
const MAX_BATCH = 20;
const HOLD = { name: 'ev__echo', arguments: { message: 'hold' } };

interface Answer {
  status: number;
  headers: IncomingHttpHeaders;
  body: string;
}

/** Deterministic PRNG (mulberry32): a failing case can be replayed. */
function prng(seed: number): () => number {
  let a = seed;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** What the SDK (the oracle, not our code) makes of a message. */
function sdkKind(m: unknown): 'request' | 'notification' | 'response' | 'invalid' {
  if (isJSONRPCResultResponse(m) || isJSONRPCErrorResponse(m)) return 'response';
  if (isJSONRPCRequest(m)) return 'request';
  if (isJSONRPCNotification(m)) return 'notification';
  return 'invalid';
}

describe('HTTP ingress against a hostile agent (real sidecar)', () => {
  let sidecar: Sidecar;
  let port: number;
  let mcpPath: string;

  beforeAll(async () => {
    sidecar = await startTestSidecar({
      http: {
        allowedHosts: ['mcp.example.test'],
        allowedOrigins: ['vscode-webview://abc123'],
        maxSessionsPerAgent: MAX_SESSIONS,
        maxInflightPerAgent: MAX_INFLIGHT,
        maxBatchMessages: MAX_BATCH,
        headersTimeoutSeconds: 1,
        requestTimeoutSeconds: 2,
        bodyTimeoutSeconds: 1,
        keepAliveSeconds: 0.3,
      },
      approvals: { timeoutSeconds: 120 },
      upstreams: {
        ev: { command: process.execPath, args: [EVERYTHING_BIN, 'stdio'], stderr: 'ignore' },
      },
      policies: [
        DEFAULT_ALLOW,
        {
          name: 'hold',
          priority: 10,
          rules: [
            { tool: 'ev__echo', action: 'require_approval', conditions: { message: 'hold' } },
          ],
        },
      ],
      agents: ['host', 'fuzz', 'cap', 'burst', 'hold', 'other', 'slow', 'sdk'].map((name) => ({
        name,
      })),
    });
    port = sidecar.port!;
    mcpPath = new URL(sidecar.url!).pathname;
  });
  afterAll(() => closeSidecar(sidecar));

  /** One HTTP request on a fresh connection; rejects when no answer comes in time. */
  function raw(options: {
    method?: string;
    path?: string;
    headers?: Record<string, string>;
    body?: string | Buffer;
    /** How long to wait for the answer; a request the test holds open on purpose waits longer. */
    deadlineMs?: number;
  }): Promise<Answer> {
    const { method = 'POST', path = mcpPath, headers = {}, body } = options;
    const deadlineMs = options.deadlineMs ?? DEADLINE_MS;
    return new Promise((resolve, reject) => {
      const req = httpRequest(
        {
          host: '127.0.0.1',
          port,
          method,
          path,
          agent: false,
          headers: { host: `127.0.0.1:${port}`, ...headers },
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => {
            clearTimeout(timer);
            resolve({
              status: res.statusCode!,
              headers: res.headers,
              body: Buffer.concat(chunks).toString(),
            });
          });
          res.on('error', reject);
        },
      );
      const timer = setTimeout(() => {
        req.destroy();
        reject(new Error(`no answer within ${deadlineMs} ms: ${method} ${String(body)}`));
      }, deadlineMs);
      req.on('error', (error) => {
        clearTimeout(timer);
        reject(error);
      });
      req.end(body);
    });
  }

  const mcpHeaders = (token: string, session?: string): Record<string, string> => ({
    'content-type': 'application/json',
    accept: 'application/json, text/event-stream',
    authorization: `Bearer ${token}`,
    ...(session === undefined ? {} : { 'mcp-session-id': session }),
  });

  function post(
    token: string,
    body: unknown,
    session?: string,
    headers: Record<string, string> = {},
    deadlineMs?: number,
  ): Promise<Answer> {
    return raw({
      headers: { ...mcpHeaders(token, session), ...headers },
      body: typeof body === 'string' ? body : JSON.stringify(body),
      ...(deadlineMs === undefined ? {} : { deadlineMs }),
    });
  }

  /** Opens a session of the last MCP version with batches: the tests here POST them. */
  async function openSession(token: string): Promise<string> {
    const res = await post(token, INIT_BATCHING);
    expect(res.status, res.body).toBe(200);
    const id = res.headers['mcp-session-id'] as string;
    const ack = await post(token, { jsonrpc: '2.0', method: 'notifications/initialized' }, id);
    expect(ack.status).toBe(202);
    return id;
  }

  async function closeSession(token: string, session: string): Promise<void> {
    const res = await raw({ method: 'DELETE', headers: mcpHeaders(token, session) });
    expect(res.status).toBe(200);
  }

  async function metric(name: string): Promise<number> {
    const res = await raw({
      method: 'GET',
      path: '/metrics',
      headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
    });
    expect(res.status).toBe(200);
    const line = res.body.split('\n').find((l) => l.startsWith(`${name} `));
    if (line === undefined) throw new Error(`no metric ${name}`);
    return Number(line.split(' ')[1]);
  }

  const sessionsOf = (name: string): number =>
    [...sidecar.gateway.sessions].filter((s) => s.identity.agentId === agentId(sidecar, name))
      .length;

  async function pendingApprovals(): Promise<{ id: string }[]> {
    const res = await api(sidecar, 'ApprovalService/ListApprovals', {
      status: 'APPROVAL_STATUS_PENDING',
    });
    return ((await res.json()) as { approvals?: { id: string }[] }).approvals ?? [];
  }

  describe('DNS rebinding: Host and Origin', () => {
    const allowedHosts = (p: number): string[] => [
      `127.0.0.1:${p}`,
      `localhost:${p}`,
      `LocalHost:${p}`,
      'localhost',
      `localhost.:${p}`,
      `[::1]:${p}`,
      `[0:0:0:0:0:0:0:1]:${p}`,
      `127.0.0.1:1`, // another port: a port forward or a proxy
      'mcp.example.test',
      'MCP.EXAMPLE.TEST:8443',
    ];
    const refusedHosts = (p: number): string[] => [
      'evil.example',
      `evil.example:${p}`,
      `localhost.evil.example:${p}`,
      `127.0.0.1.nip.io:${p}`,
      `evil.example@localhost:${p}`,
      `localhost:${p}@evil.example`,
      `localhost:99999`,
      `[::2]:${p}`,
      `[::1`,
      `127.1:${p}`,
      `mcp.example.test.evil.example`,
      '<script>alert(1)</script>',
    ];

    it('serves allowed Host spellings and refuses every other with 403, before auth', async () => {
      const token = agentToken(sidecar, 'host');
      const before = sessionsOf('host');
      for (const host of allowedHosts(port)) {
        const res = await post(token, { jsonrpc: '2.0', id: 1, method: 'ping' }, undefined, {
          host,
        });
        // No session: 400 from the endpoint itself, i.e. past the Host check.
        expect(res.status, host).toBe(400);
        expect(res.body).toContain('send initialize first');
      }
      for (const host of refusedHosts(port)) {
        for (const auth of [token, 'not-a-token']) {
          const res = await post(auth, INIT, undefined, { host });
          expect(res.status, host).toBe(403);
          expect(res.body).not.toContain('<script>');
          const body = JSON.parse(res.body) as {
            jsonrpc: string;
            id: null;
            error: { code: number; message: string; data: { code: string } };
          };
          expect(body).toMatchObject({ jsonrpc: '2.0', id: null });
          expect(body.error.data.code).toBe('FABRIC_ERR_HOST_NOT_ALLOWED');
          expect(body.error.message).toMatch(/Host|malformed/);
        }
      }
      // Nothing was opened by the refused initializes.
      expect(sessionsOf('host')).toBe(before);
    });

    it('checks Origin when present: loopback and listed origins pass, others get 403', async () => {
      const token = agentToken(sidecar, 'host');
      const allowed = [
        'http://localhost:6274',
        'https://127.0.0.1',
        'http://[::1]:3000',
        'HTTP://LOCALHOST:3000',
        'http://mcp.example.test',
        'vscode-webview://abc123',
      ];
      const refused = [
        'http://evil.example',
        `http://evil.example:${port}`,
        'null',
        'http://localhost.evil.example',
        'file://',
        'http://localhost:3000/path',
        'http://evil.example, http://localhost',
        'vscode-webview://other',
        'ftp://localhost',
      ];
      for (const origin of allowed) {
        const res = await post(token, INIT, undefined, { origin });
        expect(res.status, origin).toBe(200);
        await closeSession(token, res.headers['mcp-session-id'] as string);
      }
      for (const origin of refused) {
        const res = await post(token, INIT, undefined, { origin });
        expect(res.status, origin).toBe(403);
        expect(JSON.parse(res.body).error.data).toMatchObject({
          code: 'FABRIC_ERR_HOST_NOT_ALLOWED',
          details: { header: 'origin' },
        });
      }
    });

    it('guards the Operator API and /metrics too; /healthz stays open', async () => {
      const listAgents = async (): Promise<{ agents: unknown[] }> =>
        (await (await api(sidecar, 'FabricService/ListAgents')).json()) as { agents: unknown[] };
      const agentsBefore = await listAgents();
      const evil = { host: `evil.example:${port}`, authorization: `Bearer ${ADMIN_TOKEN}` };
      const spawn = await raw({
        path: '/api/fabric.v1.FabricService/SpawnAgent',
        headers: { ...evil, 'content-type': 'application/json' },
        body: JSON.stringify({ name: 'rebound' }),
      });
      expect(spawn.status).toBe(403);
      expect(JSON.parse(spawn.body).code).toBe('FABRIC_ERR_HOST_NOT_ALLOWED');
      const agentsAfter = await listAgents();
      expect(agentsAfter.agents.length).toBe(agentsBefore.agents.length); // nothing spawned
      const origin = { origin: 'http://evil.example', authorization: `Bearer ${ADMIN_TOKEN}` };
      expect((await raw({ method: 'GET', path: '/metrics', headers: evil })).status).toBe(403);
      expect((await raw({ method: 'GET', path: '/metrics', headers: origin })).status).toBe(403);
      const health = await raw({ method: 'GET', path: '/healthz', headers: evil });
      expect(health.status).toBe(200);
    });

    it('refuses a request without a Host header (HTTP/1.0)', async () => {
      const reply = await rawSocket(`GET ${mcpPath} HTTP/1.0\r\n\r\n`);
      expect(reply).toMatch(/^HTTP\/1\.[01] 403/);
    });

    it('survives a request target that is not a URL (was an uncaught exception)', async () => {
      const reply = await rawSocket(
        `GET //[ HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n`,
      );
      expect(reply).toMatch(/^HTTP\/1\.1 400/);
      expect((await raw({ method: 'GET', path: '/healthz' })).status).toBe(200);
    });
  });

  describe("requests Node's HTTP parser refuses: the /api/ door's error body (was an empty one)", () => {
    /** Status, lower-cased headers and JSON body of a raw reply (one answer, then close). */
    function parseReply(reply: string): {
      status: number;
      headers: Record<string, string>;
      body: { code?: string; kind?: string; message?: string };
    } {
      const end = reply.indexOf('\r\n\r\n');
      const [statusLine, ...lines] = reply.slice(0, end).split('\r\n');
      const headers = Object.fromEntries(
        lines.map((l) => [
          l.slice(0, l.indexOf(':')).toLowerCase(),
          l.slice(l.indexOf(':') + 1).trim(),
        ]),
      );
      const text = reply.slice(end + 4);
      expect(Buffer.byteLength(text), reply).toBe(Number(headers['content-length']));
      return {
        status: Number(statusLine!.split(' ')[1]),
        headers,
        body: JSON.parse(text) as { code?: string; kind?: string; message?: string },
      };
    }

    const api = '/api/fabric.v1.FabricService/ListAgents';
    const head = (method: string, extra: string): string =>
      `${method} ${api} HTTP/1.1\r\nHost: 127.0.0.1\r\n` +
      `Authorization: Bearer ${ADMIN_TOKEN}\r\nContent-Type: application/json\r\n${extra}`;

    it.each([
      [
        'a GET with a body but no content-length (x-http-method-override)',
        `${head('GET', 'X-Http-Method-Override: POST\r\n\r\n')}{}`,
        400,
        'FABRIC_ERR_INVALID_ARGUMENT',
        /HPE_/,
      ],
      [
        'content-length beside transfer-encoding',
        `${head('POST', 'Content-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n')}{}`,
        400,
        'FABRIC_ERR_INVALID_ARGUMENT',
        /HPE_/,
      ],
      [
        'a control character in a header name',
        `${head('POST', 'X-Bad\x01: v\r\nContent-Length: 2\r\n\r\n')}{}`,
        400,
        'FABRIC_ERR_INVALID_ARGUMENT',
        /HPE_/,
      ],
      [
        'headers past the size limit',
        `${head('POST', `X-Big: ${'a'.repeat(20_000)}\r\nContent-Length: 2\r\n\r\n`)}{}`,
        431,
        'FABRIC_ERR_INVALID_ARGUMENT',
        /headers/,
      ],
      [
        'a chunk extension past its limit',
        `${head('POST', 'Transfer-Encoding: chunked\r\n\r\n')}2;${'x'.repeat(20_000)}\r\n{}\r\n0\r\n\r\n`,
        413,
        'FABRIC_ERR_INVALID_ARGUMENT',
        /chunk extensions/,
      ],
      [
        'an Expect other than 100-continue',
        `${head('POST', 'Expect: teapot\r\nContent-Length: 2\r\n\r\n')}{}`,
        417,
        'FABRIC_ERR_INVALID_ARGUMENT',
        /100-continue/,
      ],
      [
        'headers that never end (http.headersTimeoutSeconds)',
        head('POST', 'X-Slow: '),
        408,
        'FABRIC_ERR_BODY_TIMEOUT',
        /http\.headersTimeoutSeconds/,
      ],
    ] as const)('%s', async (_label, request, status, code, message) => {
      const reply = parseReply(await rawSocket(request));
      expect(reply.status).toBe(status);
      expect(reply.headers['content-type']).toBe('application/json');
      expect(reply.headers['fabric-error-code']).toBe(code);
      expect(reply.headers['cache-control']).toBe('no-store');
      expect(reply.headers.connection).toBe('close');
      expect(reply.body.code).toBe(code);
      expect(reply.body.message).toMatch(message);
      // The server still serves.
      expect((await raw({ method: 'GET', path: '/healthz' })).status).toBe(200);
    });
  });

  /** Writes `data` on a raw connection and resolves with everything read until it closes. */
  function rawSocket(data: string, then?: (socket: Socket) => void): Promise<string> {
    return new Promise((resolve, reject) => {
      const socket = connect(port, '127.0.0.1', () => {
        socket.write(data);
        then?.(socket);
      });
      let out = '';
      socket.on('data', (c: Buffer) => (out += c.toString()));
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new Error(`connection not closed within ${DEADLINE_MS} ms; got ${out}`));
      }, DEADLINE_MS);
      socket.on('close', () => {
        clearTimeout(timer);
        resolve(out);
      });
      socket.on('error', () => undefined);
    });
  }

  describe('malformed JSON-RPC', () => {
    let nextId = 1000;
    const fresh = (): number => nextId++;

    /** A body a hostile agent might send, built from a seeded PRNG. */
    function hostileMessage(rand: () => number): unknown {
      const id = fresh();
      const pick = <T>(list: readonly T[]): T => list[Math.floor(rand() * list.length)]!;
      const valid = (): unknown => ({
        jsonrpc: '2.0',
        id: fresh(),
        method: pick(['ping', 'tools/list']),
      });
      const variants: (() => unknown)[] = [
        valid,
        () => ({
          jsonrpc: '2.0',
          id: pick([1.5, null, {}, [], 2 ** 53, 1e300, true, -0.5]),
          method: 'ping',
        }),
        () => ({ jsonrpc: pick(['1.0', 2, null]), id, method: 'ping' }),
        () => ({ jsonrpc: '2.0', id, method: pick([5, null, {}, [], true]) }),
        () => ({ jsonrpc: '2.0', id, method: 'ping', params: pick([[], null, 'x', 5, true]) }),
        () => ({
          jsonrpc: '2.0',
          id,
          method: 'ping',
          params: { _meta: pick([[], 'm', { progressToken: 1.5 }]) },
        }),
        () => ({ jsonrpc: '2.0', id, method: 'ping', extra: 1 }),
        () => ({ jsonrpc: '2.0', id, method: 'ping', result: {} }),
        () => ({ jsonrpc: '2.0', id }),
        () => ({ jsonrpc: '2.0', id, result: pick([[], null, 'r', 1]) }),
        () => ({
          jsonrpc: '2.0',
          id,
          error: pick([{ code: 'x' }, { code: 1.5, message: 'm' }, null]),
        }),
        () => ({ jsonrpc: '2.0', id: 999_999, result: {} }), // a response nobody asked for
        () => ({ jsonrpc: '2.0', result: {} }),
        () => ({ jsonrpc: '2.0', method: 'notifications/whatever' }),
        () => ({
          jsonrpc: '2.0',
          method: 'notifications/cancelled',
          params: { requestId: 424242 },
        }),
        () => ({
          jsonrpc: '2.0',
          method: 'notifications/cancelled',
          params: { requestId: id, reason: 5 },
        }),
        () => ({ jsonrpc: '2.0', id, method: 'notifications/cancelled', params: { requestId: 1 } }),
        () => ({ jsonrpc: '2.0', id, method: 'tools/call', params: { name: 5 } }),
        () => ({
          jsonrpc: '2.0',
          id,
          method: 'tools/call',
          params: { name: 'ev__echo', arguments: [] },
        }),
        () => null,
        () => 123,
        () => 'str',
        () => true,
        () => [],
      ];
      return pick(variants)();
    }

    function hostileBody(rand: () => number): string {
      const r = rand();
      if (r < 0.08) {
        const bytes = Buffer.alloc(1 + Math.floor(rand() * 64));
        for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(rand() * 256);
        return bytes.toString('latin1');
      }
      if (r < 0.12)
        return pick(rand, ['', '{', '[', '{"jsonrpc":"2.0"', '[1,', 'nul', '"\\ud800"']);
      if (r < 0.55) return JSON.stringify(hostileMessage(rand));
      const n = 1 + Math.floor(rand() * 6);
      const batch: unknown[] = [];
      for (let i = 0; i < n; i++) batch.push(hostileMessage(rand));
      // Sometimes the same id twice in one batch.
      if (rand() < 0.2) {
        const id = fresh();
        batch.push({ jsonrpc: '2.0', id, method: 'ping' }, { jsonrpc: '2.0', id, method: 'ping' });
      }
      return JSON.stringify(batch);
    }

    function pick<T>(rand: () => number, list: readonly T[]): T {
      return list[Math.floor(rand() * list.length)]!;
    }

    /** The JSON-RPC answers a body must get, per the SDK's own idea of each message. */
    function expectedAnswers(body: string): {
      kind: 'parse' | 'empty' | 'answers';
      count: number;
      requests: number;
    } {
      let parsed: unknown;
      try {
        parsed = JSON.parse(body);
      } catch {
        return { kind: 'parse', count: 1, requests: 0 };
      }
      const messages = Array.isArray(parsed) ? parsed : [parsed];
      if (messages.length === 0) return { kind: 'empty', count: 1, requests: 0 };
      let count = 0;
      let requests = 0;
      const ids = new Set<unknown>();
      for (const m of messages) {
        const kind = sdkKind(m);
        if (kind === 'request') {
          const id = (m as { id: unknown }).id;
          if (ids.has(id)) {
            count++; // a duplicate: refused, but answered
          } else {
            ids.add(id);
            count++;
            requests++;
          }
        } else if (kind === 'invalid') count++;
      }
      return { kind: 'answers', count, requests };
    }

    it('answers every fuzzed body promptly, leaves nothing pending and keeps serving (seeded)', async () => {
      const token = agentToken(sidecar, 'fuzz');
      const baselineSessions = await metric('agent_fabric_mcp_sessions');
      const session = await openSession(token);
      const rand = prng(0x5eed);
      const bodies: string[] = [];
      for (let i = 0; i < 240; i++) bodies.push(hostileBody(rand));
      // Three at a time: out-of-order answers and interleaved sessions state.
      for (let i = 0; i < bodies.length; i += 3) {
        await Promise.all(
          bodies.slice(i, i + 3).map(async (body) => {
            const res = await post(token, body, session);
            const want = expectedAnswers(body);
            const label = `${body.slice(0, 200)} → ${res.status} ${res.body.slice(0, 200)}`;
            expect(res.status, label).toBeLessThan(500);
            if (want.kind === 'parse' || want.kind === 'empty') {
              expect(res.status, label).toBe(400);
              const code = JSON.parse(res.body).error.code as number;
              expect(code, label).toBe(want.kind === 'parse' ? -32700 : -32600);
              return;
            }
            if (want.count === 0) {
              expect(res.status, label).toBe(202);
              return;
            }
            expect(res.status, label).toBe(want.requests > 0 ? 200 : 400);
            const answer = JSON.parse(res.body) as unknown;
            const answers = Array.isArray(answer) ? answer : [answer];
            expect(answers.length, label).toBe(want.count);
            for (const a of answers) {
              expect(a, label).toMatchObject({ jsonrpc: '2.0' });
              expect('result' in (a as object) || 'error' in (a as object), label).toBe(true);
            }
          }),
        );
      }
      // Nothing pending, the session still works, and closing it brings the count back.
      expect(await metric('agent_fabric_mcp_http_requests_in_flight')).toBe(0);
      const ping = await post(token, { jsonrpc: '2.0', id: fresh(), method: 'ping' }, session);
      expect(ping.status).toBe(200);
      expect(JSON.parse(ping.body)).toMatchObject({ result: {} });
      await closeSession(token, session);
      expect(await metric('agent_fabric_mcp_sessions')).toBe(baselineSessions);
      // A normal client and call still work.
      const client = await httpClient(sidecar.url!, token);
      try {
        const r = await client.callTool({ name: 'ev__echo', arguments: { message: 'still here' } });
        expect(text(r)).toContain('still here');
      } finally {
        await client.close();
      }
    });

    it('answers each message of a batch mixing valid and invalid ones', async () => {
      const token = agentToken(sidecar, 'fuzz');
      const session = await openSession(token);
      const res = await post(
        token,
        [
          { jsonrpc: '2.0', id: 1, method: 'ping' },
          { jsonrpc: '2.0', id: 1.5, method: 'ping' },
          { jsonrpc: '1.0', id: 'x', method: 'ping' },
          { jsonrpc: '2.0', method: 'notifications/whatever' },
          { jsonrpc: '2.0', id: 2, method: 'tools/list' },
          null,
        ],
        session,
      );
      expect(res.status).toBe(200);
      const answers = JSON.parse(res.body) as {
        id: unknown;
        result?: unknown;
        error?: { code: number };
      }[];
      expect(answers).toHaveLength(5);
      const byId = (id: unknown) => answers.filter((a) => a.id === id);
      expect(byId(1)[0]!.result).toEqual({});
      expect(byId(2)[0]!.result).toHaveProperty('tools');
      expect(byId('x')[0]!.error!.code).toBe(-32600);
      expect(byId(null).map((a) => a.error!.code)).toEqual([-32600, -32600]);
      await closeSession(token, session);
    });

    it('refuses a batch on a session of MCP 2025-06-18 (which removed batches), running none of it', async () => {
      // The spec of 2025-06-18 on: a POST's body MUST be a single message. Before, the gateway
      // (as the SDK's transport does) ran batches on sessions of every version.
      const token = agentToken(sidecar, 'fuzz');
      const before = new Set(sidecar.gateway.sessions);
      const init = await post(token, INIT);
      expect(init.status).toBe(200);
      const session = init.headers['mcp-session-id'] as string;
      expect(
        (await post(token, { jsonrpc: '2.0', method: 'notifications/initialized' }, session))
          .status,
      ).toBe(202);
      const [opened] = [...sidecar.gateway.sessions].filter((s) => !before.has(s));
      const setLevel = {
        jsonrpc: '2.0',
        id: 1,
        method: 'logging/setLevel',
        params: { level: 'error' },
      };
      const batch = [setLevel, { jsonrpc: '2.0', id: 2, method: 'ping' }];
      const refused = await post(token, batch, session);
      expect(refused.status).toBe(400);
      expect(JSON.parse(refused.body)).toMatchObject({
        jsonrpc: '2.0',
        id: null,
        error: {
          code: -32600,
          message: expect.stringContaining(
            'JSON-RPC batches were removed in MCP 2025-06-18 and this session speaks 2025-06-18',
          ) as unknown,
        },
      });
      expect(opened!.logLevel).toBeUndefined(); // nothing of it ran
      expect(opened!.protocolVersion).toBe('2025-06-18');
      // One message a POST, as that version has it, goes on working.
      expect((await post(token, setLevel, session)).status).toBe(200);
      expect(opened!.logLevel).toBe('error');
      await closeSession(token, session);
      // A session of 2025-03-26 (which has batches) still takes the same batch.
      const older = await openSession(token);
      const answered = await post(token, batch, older);
      expect(answered.status).toBe(200);
      expect(JSON.parse(answered.body)).toHaveLength(2);
      await closeSession(token, older);
    });

    it('gives null and [null] a 400 (were 500), and 123, "str", {} and [] a 400 (were 202)', async () => {
      const token = agentToken(sidecar, 'fuzz');
      const session = await openSession(token);
      for (const body of ['null', '[null]', '123', '"str"', '{}', '[]', '[1,2]']) {
        const res = await post(token, body, session);
        expect(res.status, body).toBe(400);
        const answer = JSON.parse(res.body) as unknown;
        for (const a of Array.isArray(answer) ? answer : [answer]) {
          expect(a, body).toMatchObject({ jsonrpc: '2.0', id: null, error: { code: -32600 } });
        }
      }
      const tooMany = Array.from({ length: MAX_BATCH + 1 }, (_, i) => ({
        jsonrpc: '2.0',
        method: `notifications/n${i}`,
      }));
      const res = await post(token, tooMany, session);
      expect(res.status).toBe(400);
      expect(res.body).toContain('maxBatchMessages');
      await closeSession(token, session);
    });

    it('refuses a second request with an id already in flight instead of losing one', async () => {
      const token = agentToken(sidecar, 'fuzz');
      const session = await openSession(token);
      const held = post(
        token,
        { jsonrpc: '2.0', id: 77, method: 'tools/call', params: HOLD },
        session,
      );
      await until(async () => (await pendingApprovals()).length === 1);
      const dup = await post(token, { jsonrpc: '2.0', id: 77, method: 'ping' }, session);
      expect(dup.status).toBe(400);
      expect(JSON.parse(dup.body)).toMatchObject({ id: 77, error: { code: -32600 } });
      // A request named notifications/cancelled is no cancellation: the held call stays held.
      const fake = await post(
        token,
        { jsonrpc: '2.0', id: 78, method: 'notifications/cancelled', params: { requestId: 77 } },
        session,
      );
      expect(JSON.parse(fake.body)).toMatchObject({ id: 78, error: { code: -32601 } });
      expect(await metric('agent_fabric_mcp_http_requests_in_flight')).toBe(1);
      const [approval] = await pendingApprovals();
      await api(sidecar, 'ApprovalService/Deny', { id: approval!.id, reason: 'test' });
      const answer = await held;
      expect(answer.status).toBe(200);
      expect(JSON.parse(answer.body)).toMatchObject({ id: 77, result: { isError: true } });
      await closeSession(token, session);
    });
  });

  describe('bodies: oversize and slow', () => {
    it('answers a body over 4 MiB with 413 and connection: close (was a reset)', async () => {
      const token = agentToken(sidecar, 'fuzz');
      const body = JSON.stringify({
        jsonrpc: '2.0',
        id: 1,
        method: 'initialize',
        params: { pad: 'x'.repeat(5 * 1024 * 1024) },
      });
      const res = await post(token, body);
      expect(res.status).toBe(413);
      expect(res.headers.connection).toBe('close');
      expect(JSON.parse(res.body)).toMatchObject({
        jsonrpc: '2.0',
        id: null,
        error: { code: -32600, data: { code: 'FABRIC_ERR_PAYLOAD_TOO_LARGE' } },
      });
      const viaFetch = await fetch(sidecar.url!, {
        method: 'POST',
        headers: mcpHeaders(token),
        body,
      });
      expect(viaFetch.status).toBe(413);
      await viaFetch.text();
      // Far beyond the drain bound: an answer or a cut connection, never a hang or a crash.
      const huge = await raw({
        headers: mcpHeaders(token),
        body: Buffer.alloc(40 * 1024 * 1024, 0x20),
      }).catch((e: Error) => e);
      if (!(huge instanceof Error)) expect(huge.status).toBe(413);
      else expect(huge.message).not.toMatch(/no answer/);
      expect((await raw({ method: 'GET', path: '/healthz' })).status).toBe(200);
    });

    const head = (token: string | undefined, length: number): string =>
      `POST ${mcpPath} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nContent-Type: application/json\r\n` +
      'Accept: application/json, text/event-stream\r\n' +
      `${token === undefined ? '' : `Authorization: Bearer ${token}\r\n`}Content-Length: ${length}\r\n\r\n`;

    it('cuts a body that stops arriving with 408 after http.bodyTimeoutSeconds', async () => {
      const reply = await rawSocket(`${head(agentToken(sidecar, 'slow'), 1000)}{"jsonrpc":`);
      expect(reply).toMatch(/^HTTP\/1\.1 408/);
      expect(reply).toContain('FABRIC_ERR_BODY_TIMEOUT');
      expect(reply.toLowerCase()).toContain('connection: close');
    });

    it('reads a body that came with its headers without a body timer', async () => {
      // The request event comes before the parser reaches the body of the same read; the
      // endpoint used to read every such body with listeners and a bodyTimeoutSeconds timer.
      const body = JSON.stringify(INIT);
      const spy = vi.spyOn(globalThis, 'setTimeout');
      try {
        const reply = await rawSocket(
          `${head(agentToken(sidecar, 'slow'), Buffer.byteLength(body)).replace(
            '\r\n\r\n',
            '\r\nConnection: close\r\n\r\n',
          )}${body}`,
        );
        expect(reply).toMatch(/^HTTP\/1\.1 200/);
        // The sidecar runs in this process: its body timers would be setTimeout(…, 1000).
        expect(spy.mock.calls.filter((call) => call[1] === 1000)).toHaveLength(0);
      } finally {
        spy.mockRestore();
      }
    });

    it('cuts a body that dribbles in (the timeout is for the whole body, not between bytes)', async () => {
      let timer: NodeJS.Timeout | undefined;
      const reply = await rawSocket(head(agentToken(sidecar, 'slow'), 1000), (socket) => {
        timer = setInterval(() => {
          if (!socket.destroyed) socket.write(' ');
        }, 150);
      });
      clearInterval(timer);
      expect(reply).toMatch(/^HTTP\/1\.1 408/);
    });

    it('refuses an unauthenticated body without reading it, and closes', async () => {
      const reply = await rawSocket(`${head(undefined, 100_000)}{"jsonrpc":`);
      expect(reply).toMatch(/^HTTP\/1\.1 401/);
      expect(reply.toLowerCase()).toContain('connection: close');
    });

    it('cuts headers that never end (http.headersTimeoutSeconds)', async () => {
      const reply = await rawSocket(`POST ${mcpPath} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: `);
      expect(reply).toMatch(/^HTTP\/1\.1 408/);
    });

    it('does not cut an SSE stream or a long answer with the request timeouts', async () => {
      const token = agentToken(sidecar, 'slow');
      const session = await openSession(token);
      // The standalone stream, read well past requestTimeoutSeconds (2) and headersTimeoutSeconds.
      const stream = await new Promise<{ late: number }>((resolve, reject) => {
        const req = httpRequest(
          {
            host: '127.0.0.1',
            port,
            path: mcpPath,
            method: 'GET',
            agent: false,
            headers: { ...mcpHeaders(token, session), accept: 'text/event-stream' },
          },
          (res) => {
            expect(res.statusCode).toBe(200);
            const start = Date.now();
            let late = 0;
            res.on('data', () => {
              if (Date.now() - start > 3000) late++;
            });
            setTimeout(() => {
              req.destroy();
              resolve({ late });
            }, 3600);
            res.on('error', () => undefined);
          },
        );
        req.on('error', reject);
        req.end();
      });
      expect(stream.late).toBeGreaterThan(0); // keep-alives still arrive after 3 s
      // A call held for approval past the request timeouts still gets its answer.
      const held = post(
        token,
        { jsonrpc: '2.0', id: 5, method: 'tools/call', params: HOLD },
        session,
      );
      await until(async () => (await pendingApprovals()).length === 1);
      await new Promise((r) => setTimeout(r, 2500));
      const [approval] = await pendingApprovals();
      await api(sidecar, 'ApprovalService/Approve', { id: approval!.id });
      const answer = await held;
      expect(answer.status).toBe(200);
      // Held past a keep-alive interval, its POST was switched to SSE (keep-alives go out, see
      // http-stream-resume.test.ts): the answer is the stream's last event.
      expect(answer.headers['content-type']).toBe('text/event-stream');
      const data = [...answer.body.matchAll(/^data: (.+)$/gm)].map((m) => m[1]!);
      expect(JSON.parse(data.at(-1)!)).toMatchObject({
        id: 5,
        result: { content: [{ type: 'text', text: 'Echo: hold' }] },
      });
      await closeSession(token, session);
    });
  });

  describe('per-agent limits', () => {
    it('caps sessions per agent (429 naming the limit); DELETE frees a slot', async () => {
      const token = agentToken(sidecar, 'cap');
      const sessions: string[] = [];
      for (let i = 0; i < MAX_SESSIONS; i++) sessions.push(await openSession(token));
      const over = await post(token, INIT);
      expect(over.status).toBe(429);
      expect(JSON.parse(over.body)).toMatchObject({
        jsonrpc: '2.0',
        id: null,
        error: { data: { code: 'FABRIC_ERR_SESSION_LIMIT', details: { limit: MAX_SESSIONS } } },
      });
      expect(over.body).toContain('maxSessionsPerAgent');
      expect(sessionsOf('cap')).toBe(MAX_SESSIONS);
      // The official client gets the refusal as an error, not a hang.
      await expect(httpClient(sidecar.url!, token)).rejects.toThrow(/429|maxSessionsPerAgent/);
      // Another agent is not affected.
      const other = await openSession(agentToken(sidecar, 'other'));
      await closeSession(agentToken(sidecar, 'other'), other);
      await closeSession(token, sessions.pop()!);
      sessions.push(await openSession(token));
      for (const s of sessions) await closeSession(token, s);
      expect(sessionsOf('cap')).toBe(0);
    });

    it('holds the cap under a burst of parallel initializes', async () => {
      const token = agentToken(sidecar, 'burst');
      const answers = await Promise.all(Array.from({ length: 24 }, () => post(token, INIT)));
      const statuses = answers.map((a) => a.status).sort();
      expect(statuses.filter((s) => s === 200)).toHaveLength(MAX_SESSIONS);
      expect(statuses.filter((s) => s === 429)).toHaveLength(24 - MAX_SESSIONS);
      expect(sessionsOf('burst')).toBe(MAX_SESSIONS);
      for (const a of answers.filter((x) => x.status === 200)) {
        await closeSession(token, a.headers['mcp-session-id'] as string);
      }
      expect(sessionsOf('burst')).toBe(0);
    });

    it('caps requests in flight per agent across sessions; cancellation frees a slot', async () => {
      const token = agentToken(sidecar, 'hold');
      const s1 = await openSession(token);
      const s2 = await openSession(token);
      // Held open for the whole test (parked for approval): bounded by the test's timeout, not
      // by the per-request deadline, which a loaded machine can outlast before the test decides.
      const held = Array.from({ length: MAX_INFLIGHT }, (_, i) =>
        post(
          token,
          { jsonrpc: '2.0', id: i + 1, method: 'tools/call', params: HOLD },
          i % 2 ? s2 : s1,
          {},
          HELD_DEADLINE_MS,
        ),
      );
      await until(async () => (await pendingApprovals()).length === MAX_INFLIGHT);
      expect(await metric('agent_fabric_mcp_http_requests_in_flight')).toBe(MAX_INFLIGHT);
      // One more request, on either session or a new one: refused at once, naming the limit.
      const over = await post(token, { jsonrpc: '2.0', id: 100, method: 'ping' }, s1);
      expect(over.status).toBe(429);
      expect(over.body).toContain('maxInflightPerAgent');
      expect(JSON.parse(over.body).error.data.code).toBe('FABRIC_ERR_INFLIGHT_LIMIT');
      expect((await post(token, INIT)).status).toBe(429);
      expect(sessionsOf('hold')).toBe(2); // the refused initialize opened nothing
      // Notifications still pass; another agent is not affected.
      const note = await post(token, { jsonrpc: '2.0', method: 'notifications/whatever' }, s1);
      expect(note.status).toBe(202);
      const otherToken = agentToken(sidecar, 'other');
      const other = await openSession(otherToken);
      expect(
        (await post(otherToken, { jsonrpc: '2.0', id: 1, method: 'ping' }, other)).status,
      ).toBe(200);
      await closeSession(otherToken, other);
      // The stdio bridge turns the refusal into an answer for its client (it waited forever).
      await expect(bridgeInitialize(token)).rejects.toThrow(/maxInflightPerAgent/);
      // Cancelling one held call ends its POST (the SDK sends no answer to it) and frees a slot.
      // Two keep-alive intervals (0.3 s) have passed since it was held: its POST is on SSE.
      await new Promise((r) => setTimeout(r, 700));
      const cancel = await post(
        token,
        {
          jsonrpc: '2.0',
          method: 'notifications/cancelled',
          params: { requestId: 1, reason: 'x' },
        },
        s1,
      );
      expect(cancel.status).toBe(202);
      // Held past a keep-alive interval, that POST was switched to SSE: its stream ends with no
      // answer.
      const ended = await held[0]!;
      expect(ended.status).toBe(200);
      expect(ended.body).not.toContain('data: {');
      expect(await metric('agent_fabric_mcp_http_requests_in_flight')).toBe(MAX_INFLIGHT - 1);
      expect((await post(token, { jsonrpc: '2.0', id: 101, method: 'ping' }, s2)).status).toBe(200);
      // Deciding the rest answers every held POST.
      for (const a of await pendingApprovals()) {
        await api(sidecar, 'ApprovalService/Deny', { id: a.id, reason: 'test over' });
      }
      const rest = await Promise.all(held.slice(1));
      for (const r of rest) expect(r.status).toBe(200);
      expect(await metric('agent_fabric_mcp_http_requests_in_flight')).toBe(0);
      await closeSession(token, s1);
      await closeSession(token, s2);
    });
  });

  /** Connects an SDK stdio client through `agent-fabric mcp --agent-token` (the bridge). */
  async function bridgeInitialize(token: string): Promise<void> {
    const transport = new StdioClientTransport({
      command: process.execPath,
      args: ['--import', TSX, CLI_MAIN, 'mcp', '--agent-token', token, '--url', sidecar.url!],
      stderr: 'ignore',
    });
    const client = new Client({ name: 'bridge-test', version: '1' }, { capabilities: {} });
    try {
      await client.connect(transport);
    } finally {
      await transport.close();
    }
  }
});

describe('malformed JSON-RPC over stdio (agent-fabric mcp --in-process)', () => {
  let child: ChildProcessWithoutNullStreams;
  const lines: unknown[] = [];

  beforeAll(() => {
    const dir = tempDir('stdio-ingress');
    const config = join(dir, 'fabric.yaml');
    writeFileSync(
      config,
      `adminToken: admin-token-for-stdio-tests-0123456789
policies:
  - { name: allow, rules: [{ tool: '*', action: allow }] }
agents:
  - name: a
`,
    );
    child = spawn(
      process.execPath,
      ['--import', TSX, CLI_MAIN, 'mcp', '--in-process', '--config', config],
      {
        env: { ...process.env, FABRIC_STATE: 'memory' },
        stdio: ['pipe', 'pipe', 'pipe'],
      },
    );
    let buffer = '';
    child.stdout.on('data', (c: Buffer) => {
      buffer += c.toString();
      let nl: number;
      while ((nl = buffer.indexOf('\n')) >= 0) {
        lines.push(JSON.parse(buffer.slice(0, nl)));
        buffer = buffer.slice(nl + 1);
      }
    });
    child.stderr.resume();
  });
  afterAll(async () => {
    child.kill('SIGTERM');
    await until(() => child.exitCode !== null || child.signalCode !== null, 15_000).catch(() =>
      child.kill('SIGKILL'),
    );
  });

  it('answers malformed lines that carry an id, drops the rest, and keeps serving', async () => {
    const send = (line: string): boolean => child.stdin.write(`${line}\n`);
    send(JSON.stringify(INIT));
    send(JSON.stringify({ jsonrpc: '2.0', id: 2, method: 'ping', params: [] }));
    send(JSON.stringify({ jsonrpc: '1.0', id: 3, method: 'ping' }));
    send(JSON.stringify({ jsonrpc: '2.0', id: 4.5, method: 'ping' }));
    send('not json at all');
    send(JSON.stringify([{ jsonrpc: '2.0', id: 6, method: 'ping' }]));
    send(JSON.stringify({ jsonrpc: '2.0', id: 'seven', method: 'tools/list', extra: true }));
    send(JSON.stringify({ jsonrpc: '2.0', id: 8, method: 'ping' }));
    const byId = (id: unknown) =>
      lines.find((l) => (l as { id?: unknown }).id === id) as
        { result?: unknown; error?: { code: number; message: string } } | undefined;
    await until(() => byId(8) !== undefined, 20_000);
    expect(byId(1)!.result).toHaveProperty('serverInfo');
    for (const id of [2, 3, 6, 'seven']) expect(byId(id)?.error?.code, String(id)).toBe(-32600);
    expect(byId(6)!.error!.message).toContain('batches');
    expect(byId(8)!.result).toEqual({});
    expect(lines).toHaveLength(6); // nothing for the fractional id or the non-JSON line
    expect(child.exitCode).toBeNull();
  });
});

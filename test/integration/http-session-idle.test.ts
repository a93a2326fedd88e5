import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  agentToken,
  closeSidecar,
  httpClient,
  DEFAULT_ALLOW,
  EVERYTHING_BIN,
  INIT,
  startTestSidecar,
  until,
} from '../fixtures/gateway/harness.js';

/** A JSON-RPC POST to the sidecar's MCP endpoint as the agent `token`, in session `sessionId`. */
function post(
  sidecar: Sidecar,
  token: string,
  body: unknown,
  sessionId?: string,
): Promise<Response> {
  return fetch(sidecar.url!, {
    method: 'POST',
    headers: {
      'content-type': 'application/json',
      accept: 'application/json, text/event-stream',
      authorization: `Bearer ${token}`,
      ...(sessionId === undefined ? {} : { 'mcp-session-id': sessionId }),
    },
    body: JSON.stringify(body),
  });
}

/** Opens a session with a raw `initialize` (answered 200); resolves its id. */
async function openSession(sidecar: Sidecar, token: string): Promise<string> {
  const res = await post(sidecar, token, INIT);
  expect(res.status).toBe(200);
  await res.text();
  return res.headers.get('mcp-session-id')!;
}

describe('Streamable HTTP sessions that go idle (real sidecar)', () => {
  let sidecar: Sidecar;
  let token: string;

  beforeAll(async () => {
    sidecar = await startTestSidecar({
      http: { sessionIdleSeconds: 0.6 }, // swept every 0.3 s
      upstreams: {
        ev: { command: process.execPath, args: [EVERYTHING_BIN, 'stdio'], stderr: 'ignore' },
      },
      policies: [DEFAULT_ALLOW],
      agents: [{ name: 'a' }],
    });
    token = agentToken(sidecar, 'a');
  });
  afterAll(() => closeSidecar(sidecar));

  const request = (body: unknown, sessionId?: string): Promise<Response> =>
    post(sidecar, token, body, sessionId);

  it('closes a session nobody uses; its id then gets 404', async () => {
    const before = sidecar.gateway.sessions.size;
    const id = await openSession(sidecar, token);
    expect(sidecar.gateway.sessions.size).toBe(before + 1);
    await until(() => sidecar.gateway.sessions.size === before, 10_000);
    const res = await request({ jsonrpc: '2.0', id: 2, method: 'tools/list' }, id);
    expect(res.status).toBe(404);
  });

  it('counts a long call as activity: the session survives it', async () => {
    const id = await openSession(sidecar, token);
    const long = await request(
      {
        jsonrpc: '2.0',
        id: 2,
        method: 'tools/call',
        params: {
          name: 'ev__trigger-long-running-operation',
          arguments: { duration: 1, steps: 2 },
        },
      },
      id,
    );
    expect(long.status).toBe(200);
    expect(await long.text()).toContain('Long running operation completed');
    // The call took 1 s, longer than the idle timeout, and a sweep passes after it: the
    // session is still there (idle counts from the end of the answer).
    await new Promise((r) => setTimeout(r, 350));
    const after = await request({ jsonrpc: '2.0', id: 3, method: 'tools/list' }, id);
    expect(after.status).toBe(200);
    await after.text();
  });

  it('keeps an official SDK client connected through idle time (it holds the SSE stream)', async () => {
    const client = await httpClient(sidecar.url!, token);
    try {
      await new Promise((r) => setTimeout(r, 1500)); // several idle timeouts
      expect((await client.listTools()).tools.length).toBeGreaterThan(0);
    } finally {
      await client.close();
    }
  });

  it('keeps a session whose client holds its SSE stream open, and one that keeps asking', async () => {
    // The SDK client above closed without DELETE: its session idles out first.
    await until(() => sidecar.gateway.sessions.size === 0, 10_000);
    const before = 0;
    const streaming = await openSession(sidecar, token);
    const stream = new AbortController();
    const get = await fetch(sidecar.url!, {
      headers: {
        accept: 'text/event-stream',
        authorization: `Bearer ${token}`,
        'mcp-session-id': streaming,
      },
      signal: stream.signal,
    });
    expect(get.status).toBe(200);
    const chatty = await openSession(sidecar, token);
    // Two idle timeouts pass; the chatty client asks in between.
    for (let i = 0; i < 6; i++) {
      await new Promise((r) => setTimeout(r, 200));
      const res = await request({ jsonrpc: '2.0', id: 10 + i, method: 'tools/list' }, chatty);
      expect(res.status).toBe(200);
      await res.text();
    }
    expect(sidecar.gateway.sessions.size).toBe(before + 2);
    // Closing the stream makes the first one idle (and the chatty one stops asking): both go.
    stream.abort();
    await get.body?.cancel().catch(() => undefined);
    await until(() => sidecar.gateway.sessions.size === before, 10_000);
    const res = await request({ jsonrpc: '2.0', id: 99, method: 'tools/list' }, streaming);
    expect(res.status).toBe(404);
  });
});

describe('Streamable HTTP sessions across a step of the wall clock (real sidecar)', () => {
  let sidecar: Sidecar;
  let token: string;

  beforeAll(async () => {
    sidecar = await startTestSidecar({
      http: { sessionIdleSeconds: 60 }, // swept every 30 s
      policies: [DEFAULT_ALLOW],
      agents: [{ name: 'a' }],
    });
    token = agentToken(sidecar, 'a');
  });
  afterAll(() => closeSidecar(sidecar));
  afterEach(() => {
    vi.useRealTimers();
  });

  const request = (body: unknown, sessionId?: string): Promise<Response> =>
    post(sidecar, token, body, sessionId);

  it('counts idleness in elapsed time: a clock a day ahead closes no session, a minute idle does', async () => {
    // The sweeper is armed with the first session, on the test's interval clock.
    vi.useFakeTimers({ toFake: ['Date', 'performance', 'setInterval', 'clearInterval'] });
    const id = await openSession(sidecar, token);
    expect(sidecar.gateway.sessions.size).toBe(1);
    // NTP moves the wall clock a day ahead; 30 s later a sweep runs.
    vi.setSystemTime(Date.now() + 86_400_000);
    vi.advanceTimersByTime(30_000);
    expect(sidecar.gateway.sessions.size).toBe(1);
    const alive = await request({ jsonrpc: '2.0', id: 2, method: 'tools/list' }, id);
    expect(alive.status).toBe(200);
    await alive.text();
    // A real minute without a request (after the last one) ends it.
    vi.advanceTimersByTime(90_000);
    await until(() => sidecar.gateway.sessions.size === 0, 10_000);
    const gone = await request({ jsonrpc: '2.0', id: 3, method: 'tools/list' }, id);
    expect(gone.status).toBe(404);
  });
});

/**
 * Resuming a Streamable HTTP SSE stream with `Last-Event-ID`, against a real sidecar and
 * server-everything. Before, SSE events carried no id: a client whose connection broke while a
 * call was running (a proxy's idle cut, a network change) could not resume, and the call's
 * answer — the call ran, and was charged — was lost with the connection.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { FetchLike } from '@modelcontextprotocol/sdk/shared/transport.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  ADMIN_TOKEN,
  agentToken,
  api,
  auditLines,
  closeSidecar,
  DEFAULT_ALLOW,
  EVERYTHING_BIN,
  httpClient,
  INIT,
  startSlowSidecar,
  startTestSidecar,
  tempDir,
  text,
  until,
} from '../fixtures/gateway/harness.js';

const LONG = 'ev__trigger-long-running-operation';

/**
 * A fetch that breaks the connection of the first POST answered as SSE right after `marker`
 * reached the client (the socket is closed, as a proxy cutting it would), and records the
 * `Last-Event-ID` of every GET.
 */
function cuttingFetch(resumedFrom: string[], marker = 'notifications/progress'): FetchLike {
  let cut = false;
  return async (url, init) => {
    const headers = new Headers(init?.headers);
    if (init?.method === 'GET' && headers.has('last-event-id')) {
      resumedFrom.push(headers.get('last-event-id')!);
    }
    const abort = new AbortController();
    init?.signal?.addEventListener('abort', () => abort.abort());
    const res = await fetch(url, { ...init, signal: abort.signal });
    const sse = res.headers.get('content-type')?.startsWith('text/event-stream') === true;
    if (cut || init?.method !== 'POST' || !sse || res.body === null) return res;
    cut = true;
    const reader = res.body.getReader();
    let seen = '';
    const body = new ReadableStream<Uint8Array>({
      async pull(controller) {
        if (seen.includes(marker)) {
          abort.abort();
          controller.error(new TypeError('terminated: the connection was cut'));
          return;
        }
        const { value, done } = await reader.read();
        if (done) {
          controller.close();
          return;
        }
        seen += new TextDecoder().decode(value);
        controller.enqueue(value);
      },
    });
    return new Response(body, { status: res.status, headers: res.headers });
  };
}

/** A raw request to the sidecar's MCP endpoint as `token`. */
function raw(
  sidecar: Sidecar,
  token: string,
  init: { method: 'GET' | 'POST'; session?: string; lastEventId?: string; body?: unknown },
  signal?: AbortSignal,
): Promise<Response> {
  return fetch(sidecar.url!, {
    method: init.method,
    headers: {
      accept: init.method === 'GET' ? 'text/event-stream' : 'application/json, text/event-stream',
      authorization: `Bearer ${token}`,
      ...(init.body === undefined ? {} : { 'content-type': 'application/json' }),
      ...(init.session === undefined ? {} : { 'mcp-session-id': init.session }),
      ...(init.lastEventId === undefined ? {} : { 'last-event-id': init.lastEventId }),
    },
    body: init.body === undefined ? undefined : JSON.stringify(init.body),
    signal,
  });
}

/** Reads SSE text from `res` until `done(text)` holds; resolves the text read. */
async function readUntil(res: Response, done: (text: string) => boolean): Promise<string> {
  const reader = res.body!.getReader();
  let all = '';
  while (!done(all)) {
    const { value, done: ended } = await reader.read();
    if (ended) break;
    all += new TextDecoder().decode(value);
  }
  reader.releaseLock();
  return all;
}

/** The `id:` fields of the SSE events in `sse`, in order. */
const eventIds = (sse: string): string[] => [...sse.matchAll(/^id: (.*)$/gm)].map((m) => m[1]!);

describe('Streamable HTTP: resuming an SSE stream with Last-Event-ID (real sidecar)', () => {
  let sidecar: Sidecar;
  let token: string;
  let other: string;
  let audit: string;

  beforeAll(async () => {
    audit = join(tempDir('resume'), 'audit.log');
    sidecar = await startTestSidecar({
      upstreams: {
        ev: {
          command: process.execPath,
          args: [EVERYTHING_BIN, 'stdio'],
          stderr: 'ignore',
          // A call given up on (its session closed) holds its agent's slot at most this long.
          callTimeoutSeconds: 5,
        },
      },
      policies: [DEFAULT_ALLOW],
      agents: [{ name: 'a' }, { name: 'b' }],
      audit: { path: audit, flushIntervalMs: 10 },
    });
    token = agentToken(sidecar, 'a');
    other = agentToken(sidecar, 'b');
  });
  afterAll(() => closeSidecar(sidecar));

  /** Opens a session with a raw `initialize`; resolves its id. */
  async function session(): Promise<string> {
    const res = await raw(sidecar, token, { method: 'POST', body: INIT });
    expect(res.status).toBe(200);
    await res.text();
    const id = res.headers.get('mcp-session-id')!;
    const done = await raw(sidecar, token, {
      method: 'POST',
      session: id,
      body: { jsonrpc: '2.0', method: 'notifications/initialized' },
    });
    expect(done.status).toBe(202);
    return id;
  }

  /** Starts a long call with progress on `id` (answered as SSE); resolves its response. */
  function longCall(id: string, requestId: number, signal?: AbortSignal): Promise<Response> {
    return raw(
      sidecar,
      token,
      {
        method: 'POST',
        session: id,
        body: {
          jsonrpc: '2.0',
          id: requestId,
          method: 'tools/call',
          params: {
            name: LONG,
            arguments: { duration: 1.5, steps: 3 },
            _meta: { progressToken: `p${requestId}` },
          },
        },
      },
      signal,
    );
  }

  it('an official SDK client whose call stream is cut mid-call resumes it and gets the answer; the call ran once', async () => {
    const resumedFrom: string[] = [];
    const client = await httpClient(sidecar.url!, token, {}, cuttingFetch(resumedFrom));
    try {
      const progress: number[] = [];
      const result = await client.callTool(
        { name: LONG, arguments: { duration: 2, steps: 4 } },
        undefined,
        { onprogress: (p) => progress.push(p.progress), timeout: 15_000 },
      );
      expect(text(result)).toContain('Long running operation completed');
      // It resumed after the first progress event, which carried the id it resumed from.
      expect(resumedFrom).toHaveLength(1);
      expect(resumedFrom[0]).toMatch(/^[1-9]\d*\.1$/);
      // Every step's progress arrived once, in order: the cut lost none and none came twice.
      expect(progress).toEqual([1, 2, 3, 4]);
    } finally {
      await client.close();
    }
    // The upstream ran it once: one audit line, answered.
    await until(() => auditLines(sidecar, audit, 'a', LONG).length > 0);
    const lines = auditLines(sidecar, audit, 'a', LONG);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatchObject({ outcome: 'ok' });
  });

  it('a raw client replays from any event it saw, and gets the answer that came while it was away', async () => {
    const id = await session();
    const cut = new AbortController();
    const post = await longCall(id, 7, cut.signal);
    expect(post.headers.get('content-type')).toContain('text/event-stream');
    const first = await readUntil(post, (t) => t.includes('notifications/progress'));
    const [firstId] = eventIds(first);
    expect(firstId).toMatch(/^[1-9]\d*\.1$/);
    cut.abort();
    // Away for the rest of the call (1.5 s): the answer is written while no connection is open.
    await new Promise((r) => setTimeout(r, 2_000));

    // Another agent cannot take the stream over with this session's id.
    const stranger = await raw(sidecar, other, {
      method: 'GET',
      session: id,
      lastEventId: firstId,
    });
    expect(stranger.status).toBe(403);
    await stranger.text();

    const resumed = await raw(sidecar, token, { method: 'GET', session: id, lastEventId: firstId });
    expect(resumed.status).toBe(200);
    const rest = await resumed.text(); // the stream ends after the answer
    expect(rest).not.toContain('"progressToken":"p7","progress":1,'); // what it saw is not sent again
    expect(rest).toContain('"progress":3');
    expect(rest).toContain('Long running operation completed');
    expect(rest).toContain('"id":7');
    const ids = eventIds(rest);
    const stream = firstId!.split('.')[0];
    expect(ids.every((e) => e.startsWith(`${stream}.`))).toBe(true);

    // Resuming from an earlier event again replays from there; from the last one, nothing is
    // left: 204, no stream (a client that reconnects after an ended stream is not kept busy).
    const again = await raw(sidecar, token, { method: 'GET', session: id, lastEventId: firstId });
    expect(eventIds(await again.text())).toEqual(ids);
    const last = await raw(sidecar, token, { method: 'GET', session: id, lastEventId: ids.at(-1) });
    expect(last.status).toBe(204);
  });

  it('refuses to resume a stream still open on its connection (409), and ids it never sent (400)', async () => {
    const id = await session();
    const live = new AbortController();
    const post = await longCall(id, 3, live.signal);
    const first = await readUntil(post, (t) => t.includes('notifications/progress'));
    const [firstId] = eventIds(first);
    const twice = await raw(sidecar, token, { method: 'GET', session: id, lastEventId: firstId });
    expect(twice.status).toBe(409);
    expect(await twice.text()).toContain('still open on another connection');
    for (const bad of ['nonsense', '99999.1', `${firstId!.split('.')[0]}.99999`, '1.2.3', '-1.1']) {
      const res = await raw(sidecar, token, { method: 'GET', session: id, lastEventId: bad });
      expect(res.status, bad).toBe(400);
      expect(await res.text()).toContain('Last-Event-ID is not an event id of this session');
    }
    // The call goes on undisturbed on its own connection.
    expect(await readUntil(post, (t) => t.includes('"id":3'))).toContain('completed');
    live.abort();
  });

  /** The value of the sidecar's Prometheus gauge `name`. */
  async function metric(name: string): Promise<number> {
    const url = new URL('/metrics', sidecar.url!);
    const res = await fetch(url, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
    const line = (await res.text()).split('\n').find((l) => l.startsWith(`${name} `));
    if (line === undefined) throw new Error(`no metric ${name}`);
    return Number(line.split(' ')[1]);
  }
  const inflight = (): Promise<number> => metric('agent_fabric_mcp_http_requests_in_flight');

  it('counts a cut call in flight until its answer is out: resumed, never resumed, or its session closed', async () => {
    // Resumed: the answer is read on the resuming GET.
    const a = await session();
    const cutA = new AbortController();
    const postA = await longCall(a, 11, cutA.signal);
    const [idA] = eventIds(await readUntil(postA, (t) => t.includes('notifications/progress')));
    cutA.abort();
    let back: Response | undefined;
    await until(async () => {
      back = await raw(sidecar, token, { method: 'GET', session: a, lastEventId: idA });
      if (back.status === 409) await back.text(); // the sidecar has not seen the cut yet
      return back.status !== 409;
    });
    expect(await inflight()).toBe(1);
    const rest = await back!.text();
    expect(rest).toContain('"id":11');
    const ids = eventIds(rest).map((e) => Number(e.split('.')[1]));
    expect(ids).toEqual([...ids].sort((x, y) => x - y)); // in order
    expect(new Set(ids).size).toBe(ids.length); // none twice
    await until(async () => (await inflight()) === 0);

    // Never resumed: done once answered.
    const calls = auditLines(sidecar, audit, 'a', LONG).length;
    const b = await session();
    const cutB = new AbortController();
    const postB = await longCall(b, 12, cutB.signal);
    await readUntil(postB, (t) => t.includes('notifications/progress'));
    cutB.abort();
    await until(() => auditLines(sidecar, audit, 'a', LONG).length > calls);
    await until(async () => (await inflight()) === 0);

    // Its session closed while a resuming GET carries it: answered with an error, then done.
    const c = await session();
    const cutC = new AbortController();
    const postC = await longCall(c, 13, cutC.signal);
    const [idC] = eventIds(await readUntil(postC, (t) => t.includes('notifications/progress')));
    cutC.abort();
    let backC: Response | undefined;
    await until(async () => {
      backC = await raw(sidecar, token, { method: 'GET', session: c, lastEventId: idC });
      if (backC.status === 409) await backC.text();
      return backC.status !== 409;
    });
    expect(backC!.status).toBe(200);
    const deleted = await fetch(sidecar.url!, {
      method: 'DELETE',
      headers: { authorization: `Bearer ${token}`, 'mcp-session-id': c },
    });
    expect(deleted.status).toBe(200);
    expect(await backC!.text()).toContain('the session was closed before the request was answered');
    // The call given up on holds its slot until the upstream is done or its late window ended.
    await until(async () => (await inflight()) === 0, 15_000);
  });

  it('replays what the standalone stream carried while the client was away', async () => {
    const id = await session();
    // A session is told of changes to the list it was last given.
    const list = async (requestId: number): Promise<string> => {
      const res = await raw(sidecar, token, {
        method: 'POST',
        session: id,
        body: { jsonrpc: '2.0', id: requestId, method: 'tools/list' },
      });
      return res.text();
    };
    expect(await list(1)).toContain('ev__get-sum');
    const away = new AbortController();
    const get = await raw(sidecar, token, { method: 'GET', session: id }, away.signal);
    expect(get.status).toBe(200);
    const hide = (tool: string) =>
      api(sidecar, 'PolicyService/AddPolicy', {
        policyJson: Buffer.from(
          JSON.stringify({
            name: `hide-${tool}`,
            priority: 100,
            rules: [{ tool, action: 'deny' }],
          }),
        ).toString('base64'),
      });
    expect((await hide('ev__echo')).status).toBe(200);
    const first = await readUntil(get, (t) => t.includes('list_changed'));
    const [firstId] = eventIds(first);
    expect(firstId).toMatch(/^0\.\d+$/);
    expect(await list(2)).not.toContain('ev__echo');
    away.abort();
    // A change while the client is away (kept whether or not the sidecar saw the cut yet).
    expect((await hide('ev__get-sum')).status).toBe(200);
    const back = new AbortController();
    let resumed: Response | undefined;
    await until(async () => {
      // 409 until the sidecar has seen the old connection close.
      resumed = await raw(
        sidecar,
        token,
        { method: 'GET', session: id, lastEventId: firstId },
        back.signal,
      );
      if (resumed.status === 409) await resumed.text();
      return resumed.status !== 409;
    });
    expect(resumed!.status).toBe(200);
    const missed = await readUntil(resumed!, (t) => t.includes('list_changed'));
    const [missedId] = eventIds(missed);
    expect(Number(missedId!.split('.')[1])).toBeGreaterThan(Number(firstId!.split('.')[1]));
    back.abort();
  });
});

describe('Streamable HTTP: a slow call without progress (real sidecar)', () => {
  let sidecar: Sidecar;
  let token: string;
  let ran: string;

  beforeAll(async () => {
    ({ sidecar, ran } = await startSlowSidecar('slow-resume'));
    token = agentToken(sidecar, 'a');
  });
  afterAll(() => closeSidecar(sidecar));

  it('is switched to SSE with a priming event id: the SDK client resumes it after a cut and gets the answer; it ran once', async () => {
    const resumedFrom: string[] = [];
    const client = await httpClient(sidecar.url!, token, {}, cuttingFetch(resumedFrom, 'id: '));
    try {
      const result = await client.callTool(
        { name: 's__slow', arguments: { label: 'one', ms: 1_500 } },
        undefined,
        { timeout: 15_000 },
      );
      expect(text(result)).toBe('slept one');
      expect(resumedFrom).toEqual([expect.stringMatching(/^[1-9]\d*\.1$/)]);
    } finally {
      await client.close();
    }
    expect(readFileSync(ran, 'utf8')).toBe('start one\nend one\n');
  });

  it('sends a client of an earlier MCP version keep-alives on the switched stream, and no priming event', async () => {
    const init = await raw(sidecar, token, {
      method: 'POST',
      body: { ...INIT, params: { ...INIT.params, protocolVersion: '2025-06-18' } },
    });
    const id = init.headers.get('mcp-session-id')!;
    await init.text();
    const res = await fetch(sidecar.url!, {
      method: 'POST',
      headers: {
        accept: 'application/json, text/event-stream',
        'content-type': 'application/json',
        authorization: `Bearer ${token}`,
        'mcp-session-id': id,
        'mcp-protocol-version': '2025-06-18',
      },
      body: JSON.stringify({
        jsonrpc: '2.0',
        id: 5,
        method: 'tools/call',
        params: { name: 's__slow', arguments: { label: 'two', ms: 1_000 } },
      }),
    });
    expect(res.headers.get('content-type')).toContain('text/event-stream');
    const body = await res.text();
    expect(body.startsWith(': keep-alive\n\n')).toBe(true);
    expect(body).not.toMatch(/data: \n/); // no event without data
    expect(body).toContain('slept two');
  });
});

/**
 * What one agent token can make the sidecar hold, on the real sidecar over real HTTP with the
 * real server-everything and server-filesystem: a client that sends requests and never reads
 * what comes back. Node buffers every write a socket cannot take, without limit, so what the
 * sidecar keeps for such a client must be bounded by the sidecar itself:
 *
 * - a progress flood to a stream the client does not read (server-everything's
 *   `trigger-long-running-operation`, one notification a millisecond per call) — main grew the
 *   heap by ~20 MB a second for one unread POST; now the stream holds at most
 *   `http.maxStreamBacklogBytes` of notifications, and every response still arrives;
 * - answers the client does not read — main counted a request out of flight once its answer
 *   was written to the socket's buffer, so an agent could leave any number of large answers
 *   unread (one connection each); now they hold the agent's in-flight slots until they leave.
 *
 * What the sidecar holds is read from its own gauges (`/metrics`), not guessed from timing.
 *
 * And what one agent can spend: a priced call the agent cancels once its upstream has started
 * (its first progress notification arrived) was settled at cost 0 on main, so cancelling every
 * call ran any number of them under a cost budget of a few.
 */
import { writeFileSync } from 'node:fs';
import { request as httpRequest, type IncomingMessage } from 'node:http';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  ADMIN_TOKEN,
  agentId,
  agentToken,
  closeSidecar,
  DEFAULT_ALLOW,
  EVERYTHING_BIN,
  FILESYSTEM_BIN,
  httpClient,
  INIT_BATCHING,
  startTestSidecar,
  tempDir,
  until,
} from '../fixtures/gateway/harness.js';

const BACKLOG = 64 * 1024;
const MAX_INFLIGHT = 100;
/** Calls in the flood and progress steps of each: ~13 MB of notifications in all. */
const FLOOD_CALLS = 100;
const FLOOD_STEPS = 1_000;
const LONG_RUNNING = 'ev__trigger-long-running-operation';
/** Larger than what the OS buffers for a loopback connection that is never read (~4 MiB). */
const BIG_FILE_BYTES = 12 * 1024 * 1024;

describe('resources an agent can make the sidecar hold (real sidecar)', () => {
  let sidecar: Sidecar;
  let port: number;
  let sandbox: string;
  const sockets: Socket[] = [];

  beforeAll(async () => {
    sandbox = tempDir('red-resources');
    writeFileSync(join(sandbox, 'big.txt'), 'a'.repeat(BIG_FILE_BYTES));
    sidecar = await startTestSidecar({
      http: { maxStreamBacklogBytes: BACKLOG, maxInflightPerAgent: MAX_INFLIGHT },
      upstreams: {
        ev: { command: process.execPath, args: [EVERYTHING_BIN, 'stdio'], stderr: 'ignore' },
        fs: { command: process.execPath, args: [FILESYSTEM_BIN, sandbox], stderr: 'ignore' },
      },
      policies: [DEFAULT_ALLOW],
      agents: [{ name: 'flood' }, { name: 'unread' }],
    });
    port = sidecar.port!;
  });
  afterAll(async () => {
    for (const s of sockets) s.destroy();
    await closeSidecar(sidecar);
  });

  /** The sidecar's metrics as `name{labels}` → value. */
  async function metrics(): Promise<Map<string, number>> {
    const res = await fetch(new URL('/metrics', sidecar.url), {
      headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
    });
    const out = new Map<string, number>();
    for (const line of (await res.text()).split('\n')) {
      if (line === '' || line.startsWith('#')) continue;
      const space = line.lastIndexOf(' ');
      out.set(line.slice(0, space), Number(line.slice(space + 1)));
    }
    return out;
  }

  function okCalls(m: Map<string, number>, tool: string): number {
    let n = 0;
    for (const [k, v] of m) {
      if (
        k.startsWith('agent_fabric_requests_total{') &&
        k.includes(`tool="${tool}"`) &&
        k.includes('outcome="ok"')
      ) {
        n += v;
      }
    }
    return n;
  }

  const gauge = async (name: string): Promise<number> => (await metrics()).get(name) ?? NaN;

  /** Opens a session for `token`; returns its id. */
  async function session(token: string): Promise<string> {
    const res = await fetch(sidecar.url!, {
      method: 'POST',
      headers: headers(token),
      // Of the last MCP version with batches: the floods here are batches.
      body: JSON.stringify(INIT_BATCHING),
    });
    await res.text();
    expect(res.status).toBe(200);
    return res.headers.get('mcp-session-id')!;
  }

  function headers(token: string, sid?: string): Record<string, string> {
    return {
      authorization: `Bearer ${token}`,
      'content-type': 'application/json',
      accept: 'application/json, text/event-stream',
      ...(sid === undefined ? {} : { 'mcp-session-id': sid }),
    };
  }

  /** One tools/call over fetch (a client that reads its answers). */
  async function call(token: string, sid: string, name: string, args: object): Promise<Response> {
    return fetch(sidecar.url!, {
      method: 'POST',
      headers: headers(token, sid),
      body: JSON.stringify({
        jsonrpc: '2.0',
        id: 'probe',
        method: 'tools/call',
        params: { name, arguments: args },
      }),
    });
  }

  it('a progress flood to a stream the client does not read: bounded backlog, no response lost', async () => {
    const token = agentToken(sidecar, 'flood');
    const sid = await session(token);
    const batch = Array.from({ length: FLOOD_CALLS }, (_, i) => ({
      jsonrpc: '2.0',
      id: i,
      method: 'tools/call',
      params: {
        name: LONG_RUNNING,
        arguments: { duration: 0, steps: FLOOD_STEPS },
        _meta: { progressToken: `p${i}` },
      },
    }));
    const body = JSON.stringify(batch);
    const response = await new Promise<IncomingMessage>((resolve, reject) => {
      const req = httpRequest(
        {
          host: '127.0.0.1',
          port,
          method: 'POST',
          path: new URL(sidecar.url!).pathname,
          agent: false,
          headers: { ...headers(token, sid), 'content-length': Buffer.byteLength(body) },
        },
        resolve,
      );
      req.on('error', reject);
      req.end(body);
    });
    // The client stops reading: what the sidecar writes now piles up at its end.
    response.pause();
    expect(response.headers['content-type']).toBe('text/event-stream');

    // Every call ran to its end (all progress sent) while nobody read.
    await until(async () => okCalls(await metrics(), LONG_RUNNING) === FLOOD_CALLS, 120_000);
    const m = await metrics();
    // On main the stream held ~10 MB here (all the progress the OS buffers did not take).
    expect(m.get('agent_fabric_mcp_http_unsent_bytes')).toBeLessThan(BACKLOG + 64 * 1024);
    expect(m.get('agent_fabric_mcp_http_notifications_dropped_total')).toBeGreaterThan(0);
    // Unread answers are still in flight: they have not left the process.
    expect(m.get('agent_fabric_mcp_http_requests_in_flight')).toBe(FLOOD_CALLS);

    // The client reads again: every response is there, whatever progress was dropped.
    const ids = new Set<unknown>();
    let progress = 0;
    let text = '';
    response.setEncoding('utf8');
    response.on('data', (chunk: string) => {
      text += chunk;
      let end: number;
      while ((end = text.indexOf('\n\n')) >= 0) {
        const event = text.slice(0, end);
        text = text.slice(end + 2);
        const data = /^data: (.*)$/m.exec(event)?.[1];
        if (data === undefined) continue;
        const msg = JSON.parse(data) as { id?: unknown; method?: string; result?: unknown };
        if (msg.method === 'notifications/progress') progress++;
        else if (msg.result !== undefined) ids.add(msg.id);
      }
    });
    response.resume();
    await new Promise((resolve) => response.once('end', resolve));
    expect(ids.size).toBe(FLOOD_CALLS);
    expect(progress).toBeLessThan(FLOOD_CALLS * FLOOD_STEPS);
    await until(async () => (await gauge('agent_fabric_mcp_http_requests_in_flight')) === 0);
    expect(await gauge('agent_fabric_mcp_http_unsent_bytes')).toBe(0);
  }, 180_000);

  it('answers the client does not read hold its in-flight slots until they leave', async () => {
    const token = agentToken(sidecar, 'unread');
    const sid = await session(token);
    // One batch fills every slot: 99 echoes and a read of a file larger than the OS buffers.
    const batch = [
      ...Array.from({ length: MAX_INFLIGHT - 1 }, (_, i) => ({
        jsonrpc: '2.0',
        id: i,
        method: 'tools/call',
        params: { name: 'ev__echo', arguments: { message: `m${i}` } },
      })),
      {
        jsonrpc: '2.0',
        id: 'big',
        method: 'tools/call',
        params: { name: 'fs__read_text_file', arguments: { path: join(sandbox, 'big.txt') } },
      },
    ];
    const body = JSON.stringify(batch);
    const socket = connect(port, '127.0.0.1');
    sockets.push(socket);
    socket.on('error', () => undefined);
    await new Promise((resolve) => socket.once('connect', resolve));
    socket.write(
      [
        `POST ${new URL(sidecar.url!).pathname} HTTP/1.1`,
        `host: 127.0.0.1:${port}`,
        ...Object.entries(headers(token, sid)).map(([k, v]) => `${k}: ${v}`),
        `content-length: ${Buffer.byteLength(body)}`,
        '',
        body,
      ].join('\r\n'),
    );
    // The first bytes of the answer arrive (it was written), then the client stops reading.
    await new Promise((resolve) => socket.once('data', resolve));
    socket.pause();

    // Main had counted all 100 out of flight at that point and took the next call.
    const refused = await call(token, sid, 'ev__echo', { message: 'one more' });
    expect(refused.status).toBe(429);
    expect(await refused.text()).toContain('FABRIC_ERR_INFLIGHT_LIMIT');
    expect(await gauge('agent_fabric_mcp_http_unsent_bytes')).toBeGreaterThan(0);

    // The connection goes away: the answer is gone, and so are the slots it held.
    socket.destroy();
    await until(async () => (await gauge('agent_fabric_mcp_http_requests_in_flight')) === 0);
    expect(await gauge('agent_fabric_mcp_http_unsent_bytes')).toBe(0);
    const ok = await call(token, sid, 'ev__echo', { message: 'after' });
    expect(ok.status).toBe(200);
    expect(await ok.text()).toContain('Echo: after');
  }, 60_000);
});

describe('cost budget against cancellation (real sidecar)', () => {
  let sidecar: Sidecar;
  let client: Client | undefined;
  const LIMIT = 3;

  beforeAll(async () => {
    sidecar = await startTestSidecar({
      upstreams: {
        ev: { command: process.execPath, args: [EVERYTHING_BIN, 'stdio'], stderr: 'ignore' },
      },
      policies: [DEFAULT_ALLOW],
      toolCosts: { [LONG_RUNNING]: 1 },
      agents: [{ name: 'canceller', budget: { maxCostPerDay: LIMIT } }],
    });
  });
  afterAll(async () => {
    await client?.close();
    await closeSidecar(sidecar);
  });

  it('a priced call cancelled after its upstream started is charged: cancelling cannot spend past the limit', async () => {
    client = await httpClient(sidecar.url!, agentToken(sidecar, 'canceller'));
    const id = agentId(sidecar, 'canceller');
    const outcomes: string[] = [];
    for (let i = 0; i < LIMIT * 3; i++) {
      const controller = new AbortController();
      let started = false;
      try {
        const result = await client.callTool(
          { name: LONG_RUNNING, arguments: { duration: 30, steps: 300 } },
          undefined,
          {
            signal: controller.signal,
            // The upstream is running the call: its first progress notification arrived.
            onprogress: () => {
              started = true;
              controller.abort();
            },
          },
        );
        outcomes.push(result.isError ? 'refused' : 'ok');
      } catch {
        outcomes.push(started ? 'cancelled' : 'error');
      }
    }
    // On main: every call started upstream, was cancelled and cost nothing.
    expect(outcomes.filter((o) => o === 'cancelled')).toHaveLength(LIMIT);
    expect(outcomes.filter((o) => o === 'refused')).toHaveLength(LIMIT * 2);
    const status = sidecar.fabric!.budgets.getStatus(id);
    expect(status.costUsed).toBe(LIMIT);
    expect(status.costReserved).toBe(0);
  }, 60_000);
});

/**
 * `agent-fabric mcp` keeping the session's standalone `GET` stream (the server's notifications)
 * while the sidecar, up all along, cannot be reached for longer than `--resume-seconds`: a real
 * sidecar, a TCP proxy the test pauses (every connection through it cut, every new one reset),
 * the official SDK client as the agent on the bridge's stdio, and a `tools/list_changed` the
 * sidecar sends when the operator adds or removes a policy that hides a tool.
 *
 * Before, the standalone stream was given up like a call's stream after the resume time (or
 * after the SDK transport's count of attempts) and never opened again: the agent heard no
 * notification of its session for the rest of its life.
 *
 * And when that stream finds the session gone (404: a real `agent-fabric serve` killed and
 * restarted on its port), the bridge opens a new session on its own, so an idle agent hears its
 * notifications again; bounded against a proxy that answers every session `GET` 404 itself.
 * Before, only the agent's next message opened a new session.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import {
  createServer as createHttpServer,
  type IncomingMessage,
  request as httpRequest,
  type Server as HttpServer,
  type ServerResponse,
} from 'node:http';
import { createServer, connect, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { ToolListChangedNotificationSchema } from '@modelcontextprotocol/sdk/types.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import { callApi } from '../fixtures/api.js';
import { bound } from '../fixtures/gateway/cutting-proxy.js';
import {
  agentToken,
  api,
  cliStdioClient,
  closeSidecar,
  DEFAULT_ALLOW,
  startSlowSidecar,
  startTestSidecar,
  tempDir,
  until,
} from '../fixtures/gateway/harness.js';
import { cleanUp, freePort, serve, stop } from '../fixtures/state/serve.js';

const SERVER = fileURLToPath(new URL('../fixtures/gateway/catalog-server.mjs', import.meta.url));
const CATALOG_A = { a: { command: process.execPath, args: [SERVER], env: { CATALOG_NAME: 'a' } } };

/** A sidecar serving the catalog upstream `a` to the agent `agent`, everything allowed. */
const catalogSidecar = (): Promise<Sidecar> =>
  startTestSidecar({
    upstreams: CATALOG_A,
    policies: [DEFAULT_ALLOW],
    agents: [{ name: 'agent' }],
  });

/** Denies `a__ping` outright: hidden from `tools/list`, so the sessions are told. */
const HIDE_PING = {
  name: 'hide-ping',
  priority: 100,
  rules: [{ tool: 'a__ping', action: 'deny' }],
};

/** A TCP proxy to `port` that can be paused; `gets` collects the session GETs it let through. */
interface PausableProxy {
  server: Server;
  /** Cuts every connection through it; new ones are reset until {@link resume}. */
  pause(): void;
  resume(): void;
  /** Heads of the session `GET`s forwarded (the standalone stream, opened or resumed). */
  gets: string[];
  /** How many of those the sidecar answered 200. */
  opened(): number;
}

async function pausableProxy(port: number): Promise<PausableProxy> {
  let paused = false;
  let opened = 0;
  const gets: string[] = [];
  const open = new Set<Socket>();
  const server = createServer((client: Socket) => {
    if (paused) {
      client.resetAndDestroy();
      return;
    }
    const upstream = connect(port, '127.0.0.1');
    open.add(client);
    client.on('close', () => open.delete(client));
    let get = false;
    client.on('data', (chunk: Buffer) => {
      const s = chunk.toString('latin1');
      if (/^(GET|POST|DELETE) /.test(s)) {
        get = /^GET [\s\S]*\r\nmcp-session-id:/i.test(s);
        if (get) gets.push(s.split('\r\n\r\n', 1)[0]!);
      }
      upstream.write(chunk);
    });
    upstream.on('data', (chunk: Buffer) => {
      if (get && chunk.toString('latin1').startsWith('HTTP/1.1 200')) opened++;
      client.write(chunk);
    });
    bound(client, upstream);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    server,
    pause: () => {
      paused = true;
      for (const socket of open) socket.resetAndDestroy();
    },
    resume: () => {
      paused = false;
    },
    gets,
    opened: () => opened,
  };
}

async function policy(sidecar: Sidecar, method: string, body: unknown): Promise<void> {
  const res = await api(sidecar, `PolicyService/${method}`, body);
  expect(res.status, await res.clone().text()).toBe(200);
}

const HIDE_PING_BODY = { policyJson: Buffer.from(JSON.stringify(HIDE_PING)).toString('base64') };
const addHidePing = (sidecar: Sidecar) => policy(sidecar, 'AddPolicy', HIDE_PING_BODY);
const removeHidePing = (sidecar: Sidecar) => policy(sidecar, 'RemovePolicy', { name: 'hide-ping' });

describe('agent-fabric mcp: the standalone stream after the sidecar could not be reached for longer than --resume-seconds (real sidecar, paused TCP proxy)', () => {
  let sidecar: Sidecar;

  beforeAll(async () => {
    sidecar = await catalogSidecar();
  });
  afterAll(() => closeSidecar(sidecar));

  /** The bridge through a pausable proxy, the agent counting its `tools/list_changed`. */
  async function bridge(): Promise<{
    client: Client;
    proxy: PausableProxy;
    changed: () => number;
    stderr: () => string;
  }> {
    const proxy = await pausableProxy(Number(new URL(sidecar.url!).port));
    const url = new URL(sidecar.url!);
    url.port = String((proxy.server.address() as { port: number }).port);
    const { client, transport } = await cliStdioClient(['mcp', '--resume-seconds', '2'], {
      env: { FABRIC_AGENT_TOKEN: agentToken(sidecar, 'agent'), FABRIC_URL: url.toString() },
    });
    let stderr = '';
    transport.stderr?.on('data', (c: Buffer) => (stderr += c.toString()));
    let changed = 0;
    client.setNotificationHandler(ToolListChangedNotificationSchema, () => {
      changed++;
    });
    expect((await client.listTools()).tools.map((t) => t.name)).toContain('a__ping');
    await until(() => proxy.opened() === 1); // the standalone stream, open
    return { client, proxy, changed: () => changed, stderr: () => stderr };
  }

  /** Pauses the proxy for twice the resume time (longer than the bridge resumed before). */
  async function outage(proxy: PausableProxy, during?: () => Promise<void>): Promise<void> {
    proxy.pause();
    await during?.();
    await new Promise((resolve) => setTimeout(resolve, 4_000));
    proxy.resume();
  }

  it('opens it again once the sidecar can be reached: a notification sent after reaches the agent', async () => {
    const { client, proxy, changed, stderr } = await bridge();
    try {
      await outage(proxy);
      // Before, no GET followed: the SDK transport had spent its attempts.
      await until(() => proxy.opened() === 2, 30_000);
      await addHidePing(sidecar);
      await until(() => changed() === 1);
      // Said on stderr: the outage past the resume time, then the stream back.
      expect(stderr()).toContain(
        "could not reopen the session's stream of notifications (the standalone GET) for 2 s",
      );
      await until(() => stderr().includes('reopened the session'));
      expect(stderr()).not.toContain('gave up stream');
    } finally {
      await removeHidePing(sidecar).catch(() => undefined);
      await client.close();
      await new Promise((resolve) => proxy.server.close(resolve));
    }
  }, 60_000);

  it('resumes it from its last event id: a notification sent during the outage reaches the agent', async () => {
    const { client, proxy, changed } = await bridge();
    try {
      await addHidePing(sidecar); // event 0.1 on the standalone stream
      await until(() => changed() === 1);
      expect((await client.listTools()).tools.map((t) => t.name)).not.toContain('a__ping');
      // Sent while the bridge cannot reach the sidecar: the sidecar keeps it for a resume.
      await outage(proxy, () => removeHidePing(sidecar));
      // Before, the stream was given up after --resume-seconds ("gave up stream 0"), for good.
      await until(() => changed() === 2, 30_000);
      expect(proxy.gets.at(-1)).toMatch(/\r\nlast-event-id: 0\.1(\r|$)/im);
      expect((await client.listTools()).tools.map((t) => t.name)).toContain('a__ping');
    } finally {
      await client.close();
      await new Promise((resolve) => proxy.server.close(resolve));
    }
  }, 60_000);
});

describe('agent-fabric mcp: an idle agent after the sidecar restarted (agent-fabric serve, SIGKILL, restarted on the same port)', () => {
  afterAll(cleanUp);

  it("opens a new session on its own when the standalone stream finds the session gone: the idle agent is told, and the restarted sidecar's notifications reach it", async () => {
    const dir = tempDir('bridge-idle-restart');
    const port = await freePort();
    const adminToken = `fab_admin_${'Id1e'.repeat(8)}`;
    writeFileSync(
      join(dir, 'fabric.json'),
      JSON.stringify({
        http: { host: '127.0.0.1', port },
        adminToken,
        upstreams: CATALOG_A,
        policies: [DEFAULT_ALLOW],
        agents: [{ name: 'worker' }],
      }),
    );
    const first = await serve(dir);
    // Counts the standalone GETs the sidecar answered 200 (through it to the fixed port: both
    // sidecars).
    const proxy = await pausableProxy(port);
    const url = new URL(first.url);
    url.port = String((proxy.server.address() as { port: number }).port);
    const { client, transport } = await cliStdioClient(['mcp'], {
      env: { FABRIC_AGENT_TOKEN: first.token, FABRIC_URL: url.toString() },
    });
    let stderr = '';
    transport.stderr?.on('data', (c: Buffer) => (stderr += c.toString()));
    let changed = 0;
    client.setNotificationHandler(ToolListChangedNotificationSchema, () => {
      changed++;
    });
    try {
      expect((await client.listTools()).tools.map((t) => t.name)).toContain('a__ping');
      await until(() => proxy.opened() === 1);
      await stop(first, 'SIGKILL');
      const second = await serve(dir);
      try {
        // The standalone stream reaches the new sidecar, which answers 404; the bridge opens a
        // new session and its stream. Before, nothing followed the 404: no second stream.
        await until(() => proxy.opened() === 2, 30_000);
        expect(stderr).toContain('gave up stream 0');
        expect(stderr).toContain('opening a new one');
        // The bridge tells the agent its lists may have changed (a new session's catalogue);
        // the agent lists again, as a client does on list_changed (the sidecar tells a session
        // of a change only against a list it was given).
        await until(() => changed === 1);
        expect((await client.listTools()).tools.map((t) => t.name)).toContain('a__ping');
        const res = await callApi(
          second.url,
          'PolicyService/AddPolicy',
          HIDE_PING_BODY,
          adminToken,
        );
        expect(res.status, await res.clone().text()).toBe(200);
        // Sent by the restarted sidecar on the new session's stream.
        await until(() => changed === 2);
        expect((await client.listTools()).tools.map((t) => t.name)).not.toContain('a__ping');
        // One stream, one session: no renewal storm.
        expect(proxy.opened()).toBe(2);
        expect(stderr).not.toContain('stopped opening new sessions');
      } finally {
        await stop(second, 'SIGTERM');
      }
    } finally {
      await client.close();
      await new Promise((resolve) => proxy.server.close(resolve));
    }
  }, 90_000);
});

/**
 * A proxy to `port` that answers every session `GET` (the standalone stream) 404 itself, as a
 * proxy that does not route it would, and forwards the rest; `gets` counts those it answered.
 */
async function getRefusingProxy(port: number): Promise<{ server: Server; gets: () => number }> {
  let gets = 0;
  const server = createServer((client: Socket) => {
    const upstream = connect(port, '127.0.0.1');
    let refused = false;
    client.on('data', (chunk: Buffer) => {
      if (refused) return;
      if (/^GET [\s\S]*\r\nmcp-session-id:/i.test(chunk.toString('latin1'))) {
        refused = true;
        gets++;
        client.end('HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n');
        upstream.destroy();
        return;
      }
      upstream.write(chunk);
    });
    upstream.on('data', (chunk: Buffer) => client.write(chunk));
    bound(client, upstream);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { server, gets: () => gets };
}

/**
 * `agent-fabric mcp` to `sidecar` through `proxy`, as `agent`; `stderr()`: what it said there.
 */
async function bridgeThrough(
  proxy: { server: Server | HttpServer },
  sidecar: Sidecar,
  agent: string,
): Promise<Awaited<ReturnType<typeof cliStdioClient>> & { stderr: () => string }> {
  const url = new URL(sidecar.url!);
  url.port = String((proxy.server.address() as { port: number }).port);
  const bridge = await cliStdioClient(['mcp'], {
    env: { FABRIC_AGENT_TOKEN: agentToken(sidecar, agent), FABRIC_URL: url.toString() },
  });
  let stderr = '';
  bridge.transport.stderr?.on('data', (c: Buffer) => (stderr += c.toString()));
  return { ...bridge, stderr: () => stderr };
}

describe('agent-fabric mcp: a proxy that answers every standalone GET with 404 (real sidecar)', () => {
  let sidecar: Sidecar;

  beforeAll(async () => {
    sidecar = await catalogSidecar();
  });
  afterAll(() => closeSidecar(sidecar));

  it('opens a bounded number of new sessions on its own, with backoff, says when it stops, and ends the sessions it replaced', async () => {
    const proxy = await getRefusingProxy(Number(new URL(sidecar.url!).port));
    const { client, stderr } = await bridgeThrough(proxy, sidecar, 'agent');
    try {
      await client.listTools();
      // The first GET, then one per session opened on its own (0, 1, 2, 4, 8 s apart).
      await until(() => stderr().includes('stopped opening new sessions on its own'), 40_000);
      expect(stderr()).toContain('attempt 5 of 5');
      expect(proxy.gets()).toBe(6);
      // No more after it said so.
      await new Promise((resolve) => setTimeout(resolve, 3_000));
      expect(proxy.gets()).toBe(6);
      // Each session it replaced was ended (DELETE): the sidecar holds one, the bridge's last.
      await until(() => sidecar.gateway.sessions.size === 1);
      // The agent's calls go on (its POSTs pass) on that session.
      expect((await client.listTools()).tools.map((t) => t.name)).toContain('a__ping');
      expect(sidecar.gateway.sessions.size).toBe(1);
    } finally {
      await client.close();
      await new Promise((resolve) => proxy.server.close(resolve));
    }
  }, 60_000);
});

/**
 * An HTTP proxy to `port`: each request (its body read whole) is offered to `intercept`, which
 * answers it itself (true) or lets it through; `seen` collects `GET <status>` for the session
 * `GET`s let through.
 */
async function httpProxy(
  port: number,
  seen: string[],
  intercept: (req: IncomingMessage, body: Buffer, res: ServerResponse) => boolean,
): Promise<HttpServer> {
  const server = createHttpServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      if (intercept(req, body, res)) return;
      const out = httpRequest(
        { host: '127.0.0.1', port, method: req.method, path: req.url, headers: req.headers },
        (answer) => {
          if (req.method === 'GET') seen.push(`GET ${answer.statusCode}`);
          res.writeHead(answer.statusCode ?? 502, answer.headers);
          answer.pipe(res);
        },
      );
      out.on('error', () => res.destroy());
      res.on('close', () => out.destroy());
      out.end(body);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return server;
}

/**
 * An HTTP proxy to `port` that answers the first session `GET` 404 itself (the session found
 * gone), holds the second `initialize` (the bridge's renewal) for `holdMs` and answers it 503
 * (a sidecar shutting down), and forwards the rest; `seen` lists what went through
 * (`initialize`, `DELETE`, `GET 200`...), in order.
 */
async function renewalRefusingProxy(
  port: number,
  holdMs: number,
): Promise<{ server: HttpServer; seen: string[]; holding: () => boolean }> {
  const seen: string[] = [];
  let gets = 0;
  let initializes = 0;
  let holding = false;
  const server = await httpProxy(port, seen, (req, body, res) => {
    const session = req.headers['mcp-session-id'] !== undefined;
    if (req.method === 'GET' && session && gets++ === 0) {
      seen.push('GET 404');
      res.writeHead(404).end();
      return true;
    }
    if (req.method === 'DELETE') seen.push('DELETE');
    if (req.method !== 'POST' || !body.toString().includes('"method":"initialize"')) return false;
    seen.push('initialize');
    if (++initializes !== 2) return false;
    holding = true;
    setTimeout(() => {
      holding = false;
      res
        .writeHead(503, { 'content-type': 'application/json' })
        .end('{"jsonrpc":"2.0","id":null,"error":{"code":-32000,"message":"shutting down"}}');
    }, holdMs);
    return true;
  });
  return { server, seen, holding: () => holding };
}

/**
 * An HTTP proxy to `port` that makes every session lose itself as its standalone `GET` comes:
 * that `GET` and every later request naming the session are answered 404, as a sidecar that
 * forgot it would; `gets` counts those `GET`s.
 */
async function sessionLosingProxy(
  port: number,
): Promise<{ server: HttpServer; gets: () => number }> {
  const lost = new Set<string>();
  let gets = 0;
  const server = await httpProxy(port, [], (req, _body, res) => {
    const session = req.headers['mcp-session-id'];
    if (typeof session !== 'string') return false;
    if (req.method === 'GET' && !lost.has(session)) {
      gets++;
      lost.add(session);
    }
    if (!lost.has(session)) return false;
    res.writeHead(404).end();
    return true;
  });
  return { server, gets: () => gets };
}

describe('agent-fabric mcp: a request of the agent sent while a renewal of its own is on its way, which fails (real sidecar, HTTP proxy)', () => {
  it("the session the agent's request then opens is kept: its call is answered, not ended by a late renewal of the bridge", async () => {
    const { sidecar, ran } = await startSlowSidecar('bridge-idle-race');
    const proxy = await renewalRefusingProxy(Number(new URL(sidecar.url!).port), 1_500);
    const { client, stderr } = await bridgeThrough(proxy, sidecar, 'a');
    try {
      // The standalone stream is answered 404: the bridge renews on its own; its initialize is
      // held, then refused.
      await until(() => proxy.holding());
      // Sent meanwhile: waits for that renewal, then opens a session of its own.
      const call = client.callTool({ name: 's__slow', arguments: { label: 'x', ms: 3_000 } });
      const result = await call;
      expect(result.isError).not.toBe(true);
      expect(JSON.stringify(result.content)).toContain('slept x');
      expect(readFileSync(ran, 'utf8')).toBe('start x\nend x\n');
      // Three sessions asked for (the agent's, the refused renewal, the request's); one ended,
      // the one the sidecar had lost. Before, a fourth replaced the request's a second after
      // it opened, and the call running on it was answered "the session was closed".
      expect(proxy.seen.filter((s) => s === 'initialize')).toHaveLength(3);
      expect(proxy.seen.filter((s) => s === 'DELETE')).toHaveLength(1);
      expect(sidecar.gateway.sessions.size).toBe(1);
      expect(stderr()).not.toContain('attempt 2 of 5');
    } finally {
      await client.close();
      await new Promise((resolve) => proxy.server.close(resolve));
      await closeSidecar(sidecar);
    }
  }, 60_000);
});

describe('agent-fabric mcp: sessions lost one after the other while the agent sends a request (real sidecar, HTTP proxy)', () => {
  let sidecar: Sidecar;

  beforeAll(async () => {
    sidecar = await catalogSidecar();
  });
  afterAll(() => closeSidecar(sidecar));

  it("goes on opening sessions on its own after the agent's request opened one that is lost too, until it says it stops", async () => {
    const proxy = await sessionLosingProxy(Number(new URL(sidecar.url!).port));
    const { client, stderr } = await bridgeThrough(proxy, sidecar, 'agent');
    try {
      // The first session's stream, then the first renewal's: the next waits 1 s.
      await until(() => stderr().includes('attempt 2 of 5'));
      // Sent meanwhile, on a session the sidecar lost: it opens a new one, lost as well.
      await client.listTools().catch(() => undefined);
      // Before, that session's loss was not renewed (a renewal of the session it replaced was
      // still waiting), and the bridge went quiet: no more sessions, no word of stopping.
      await until(() => stderr().includes('stopped opening new sessions on its own'), 40_000);
      expect(stderr()).toContain('attempt 5 of 5');
      const gets = proxy.gets();
      await new Promise((resolve) => setTimeout(resolve, 3_000));
      expect(proxy.gets()).toBe(gets);
    } finally {
      await client.close();
      await new Promise((resolve) => proxy.server.close(resolve));
    }
  }, 60_000);
});

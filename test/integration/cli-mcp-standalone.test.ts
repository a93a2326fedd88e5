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
 */
import { fileURLToPath } from 'node:url';
import { createServer, connect, type Server, type Socket } from 'node:net';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { ToolListChangedNotificationSchema } from '@modelcontextprotocol/sdk/types.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import { bound } from '../fixtures/gateway/cutting-proxy.js';
import {
  agentToken,
  api,
  cliStdioClient,
  closeSidecar,
  DEFAULT_ALLOW,
  startTestSidecar,
  until,
} from '../fixtures/gateway/harness.js';

const SERVER = fileURLToPath(new URL('../fixtures/gateway/catalog-server.mjs', import.meta.url));

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

const addHidePing = (sidecar: Sidecar) =>
  policy(sidecar, 'AddPolicy', {
    policyJson: Buffer.from(JSON.stringify(HIDE_PING)).toString('base64'),
  });
const removeHidePing = (sidecar: Sidecar) => policy(sidecar, 'RemovePolicy', { name: 'hide-ping' });

describe('agent-fabric mcp: the standalone stream after the sidecar could not be reached for longer than --resume-seconds (real sidecar, paused TCP proxy)', () => {
  let sidecar: Sidecar;

  beforeAll(async () => {
    sidecar = await startTestSidecar({
      upstreams: { a: { command: process.execPath, args: [SERVER], env: { CATALOG_NAME: 'a' } } },
      policies: [DEFAULT_ALLOW],
      agents: [{ name: 'agent' }],
    });
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

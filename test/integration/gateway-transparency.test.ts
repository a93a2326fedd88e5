/**
 * Transparency: with `namespace: none` an upstream's own words reach the agent unchanged — log
 * messages' `logger`, a call's `arguments` (absent stays absent), list-level hints (`ttlMs`,
 * `cacheScope`, `_meta`, unknown fields) and JSON-RPC errors (code, message, data). Each answer
 * through the real sidecar is compared with the same request sent straight to the upstream by
 * the official SDK client.
 */
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
import {
  CallToolResultSchema,
  LoggingMessageNotificationSchema,
  McpError,
  type LoggingMessageNotification,
} from '@modelcontextprotocol/sdk/types.js';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  agentToken,
  closeSidecar,
  DEFAULT_ALLOW,
  EVERYTHING_BIN,
  httpClient,
  startTestSidecar,
  text,
  until,
} from '../fixtures/gateway/harness.js';

const FIXTURE = fileURLToPath(
  new URL('../fixtures/gateway/transparency-server.mjs', import.meta.url),
);

const HINTS = {
  ttlMs: 60_000,
  cacheScope: 'public',
  _meta: { 'example.com/list-version': 'v7' },
  'x-extra': { nested: [1, 2] },
};
const FAIL_WITH = {
  code: -32002,
  message: 'Resource fixture://missing not found',
  data: { uri: 'fixture://missing', why: 'test' },
};

/** An SDK client connected straight to an upstream command (no gateway). */
async function direct(args: string[], env: Record<string, string> = {}): Promise<Client> {
  const client = new Client({ name: 'direct', version: '1.0.0' });
  await client.connect(
    new StdioClientTransport({
      command: process.execPath,
      args,
      env: { ...(process.env as Record<string, string>), ...env },
      stderr: 'ignore',
    }),
  );
  return client;
}

/** What a request failed with, as the agent's SDK client sees it. */
async function failure(
  request: Promise<unknown>,
): Promise<{ code: number; message: string; data: unknown }> {
  try {
    await request;
  } catch (error) {
    expect(error).toBeInstanceOf(McpError);
    const e = error as McpError;
    return { code: e.code, message: e.message, data: e.data };
  }
  throw new Error('the request succeeded');
}

/** A list result without its list: the list-level fields. */
function hintsOf(result: Record<string, unknown>, key: string): Record<string, unknown> {
  const { [key]: _list, ...rest } = result;
  return rest;
}

describe('transparency with namespace: none (one upstream)', () => {
  let sidecar: Sidecar;
  let client: Client;
  let upstream: Client;
  const logs: LoggingMessageNotification['params'][] = [];
  const env = { LIST_HINTS: JSON.stringify(HINTS), FAIL_WITH: JSON.stringify(FAIL_WITH) };

  beforeAll(async () => {
    sidecar = await startTestSidecar({
      upstreams: {
        fx: {
          command: process.execPath,
          args: [FIXTURE],
          env,
          namespace: 'none',
          stderr: 'ignore',
        },
      },
      policies: [DEFAULT_ALLOW],
      agents: [{ name: 'agent' }],
    });
    client = await httpClient(sidecar.url!, agentToken(sidecar, 'agent'));
    client.setNotificationHandler(LoggingMessageNotificationSchema, (n) => {
      logs.push(n.params);
    });
    upstream = await direct([FIXTURE], env);
  });

  afterAll(async () => {
    await client?.close();
    await upstream?.close();
    await closeSidecar(sidecar);
  });

  it('keeps the logger of a log message as the upstream sent it', async () => {
    await client.callTool({ name: 'log', arguments: {} });
    await until(() => logs.length > 0);
    expect(logs[0]).toEqual({ level: 'info', logger: 'fixture/logger', data: 'hello' });
  });

  it('forwards a call without arguments without adding them (fast path and SDK path)', async () => {
    const fast = await client.request(
      { method: 'tools/call', params: { name: 'report' } },
      CallToolResultSchema,
    );
    expect(JSON.parse(text(fast))).toEqual({ name: 'report' });
    // A progress token takes the SDK's Protocol path both downstream and upstream.
    const slow = await client.request(
      { method: 'tools/call', params: { name: 'report' } },
      CallToolResultSchema,
      { onprogress: () => undefined },
    );
    expect(JSON.parse(text(slow))).not.toHaveProperty('arguments');
    const withArgs = await client.callTool({ name: 'report', arguments: { a: 1 } });
    expect(JSON.parse(text(withArgs))).toEqual({ name: 'report', arguments: { a: 1 } });
  });

  it('lets the upstream refuse a call without arguments, as it would directly', async () => {
    const call = { method: 'tools/call', params: { name: 'strict' } } as const;
    const expected = await failure(upstream.request(call, CallToolResultSchema));
    expect(expected).toEqual({
      code: -32602,
      message: 'MCP error -32602: strict: arguments are required',
      data: { tool: 'strict' },
    });
    expect(await failure(client.request(call, CallToolResultSchema))).toEqual(expected);
  });

  it('relays an upstream JSON-RPC error unchanged: code, message (prefixed once), data', async () => {
    const call = { name: 'fail', arguments: {} };
    const expected = await failure(upstream.callTool(call));
    expect(expected).toEqual({
      code: FAIL_WITH.code,
      message: `MCP error ${FAIL_WITH.code}: ${FAIL_WITH.message}`,
      data: FAIL_WITH.data,
    });
    expect(await failure(client.callTool(call))).toEqual(expected);
    // The SDK path (progress) relays it the same way.
    expect(
      await failure(client.callTool(call, undefined, { onprogress: () => undefined })),
    ).toEqual(expected);
    const read = { uri: 'fixture://missing' };
    expect(await failure(client.readResource(read))).toEqual(
      await failure(upstream.readResource(read)),
    );
  });

  it('passes list-level hints through: ttlMs, cacheScope, _meta, unknown fields', async () => {
    const lists = [
      ['prompts', () => client.listPrompts(), () => upstream.listPrompts()],
      ['resources', () => client.listResources(), () => upstream.listResources()],
      [
        'resourceTemplates',
        () => client.listResourceTemplates(),
        () => upstream.listResourceTemplates(),
      ],
    ] as const;
    for (const [key, viaGateway, straight] of lists) {
      const upstreamHints = hintsOf(await straight(), key);
      expect(upstreamHints).toEqual(HINTS);
      expect(hintsOf(await viaGateway(), key)).toEqual(upstreamHints);
    }
    // The gateway filters tools/list by policy per agent: a shared cache must not serve one
    // agent's list to another, so `public` becomes `private`; the rest passes unchanged.
    expect(hintsOf(await client.listTools(), 'tools')).toEqual({
      ...HINTS,
      cacheScope: 'private',
    });
  });
});

describe('transparency with several upstreams (prefixed, merged lists)', () => {
  let sidecar: Sidecar;
  let client: Client;
  const logs: LoggingMessageNotification['params'][] = [];

  beforeAll(async () => {
    const fixture = (hints: object) => ({
      command: process.execPath,
      args: [FIXTURE],
      env: { LIST_HINTS: JSON.stringify(hints) },
      stderr: 'ignore' as const,
    });
    sidecar = await startTestSidecar({
      upstreams: {
        a: fixture(HINTS),
        b: fixture({ ttlMs: 5_000 }),
      },
      policies: [DEFAULT_ALLOW],
      agents: [{ name: 'agent' }],
      gateway: { hideDeniedTools: false },
    });
    client = await httpClient(sidecar.url!, agentToken(sidecar, 'agent'));
    client.setNotificationHandler(LoggingMessageNotificationSchema, (n) => {
      logs.push(n.params);
    });
  });

  afterAll(async () => {
    await client?.close();
    await closeSidecar(sidecar);
  });

  it('prefixes the logger with the upstream name, as its tool names', async () => {
    await client.callTool({ name: 'a__log', arguments: {} });
    await until(() => logs.length > 0);
    expect(logs[0]?.logger).toBe('a/fixture/logger');
  });

  it('combines list hints conservatively: the smallest ttlMs, private unless all are public, no _meta or unknown fields', async () => {
    const expected = { ttlMs: 5_000, cacheScope: 'private' };
    expect(hintsOf(await client.listTools(), 'tools')).toEqual(expected);
    expect(hintsOf(await client.listPrompts(), 'prompts')).toEqual(expected);
    expect(hintsOf(await client.listResources(), 'resources')).toEqual(expected);
    expect(hintsOf(await client.listResourceTemplates(), 'resourceTemplates')).toEqual(expected);
  });
});

describe('transparency with server-everything (namespace: none)', () => {
  let sidecar: Sidecar;
  let client: Client;
  let upstream: Client;
  const logs: LoggingMessageNotification['params'][] = [];

  beforeAll(async () => {
    sidecar = await startTestSidecar({
      upstreams: {
        ev: {
          command: process.execPath,
          args: [EVERYTHING_BIN, 'stdio'],
          stderr: 'ignore',
          namespace: 'none',
        },
      },
      policies: [DEFAULT_ALLOW],
      agents: [{ name: 'agent' }],
      gateway: { fabricTools: false },
    });
    client = await httpClient(sidecar.url!, agentToken(sidecar, 'agent'));
    client.setNotificationHandler(LoggingMessageNotificationSchema, (n) => {
      logs.push(n.params);
    });
    upstream = await direct([EVERYTHING_BIN, 'stdio']);
  });

  afterAll(async () => {
    await client?.close();
    await upstream?.close();
    await closeSidecar(sidecar);
  });

  it('relays a resource-not-found error exactly as server-everything sends it', async () => {
    const read = { uri: 'demo://resource/static/document/no-such-file.md' };
    const expected = await failure(upstream.readResource(read));
    expect(expected.code).toBe(-32602);
    expect(await failure(client.readResource(read))).toEqual(expected);
  });

  it('adds no logger to a log message that has none', async () => {
    await client.setLoggingLevel('debug');
    await client.callTool({ name: 'toggle-simulated-logging', arguments: {} });
    try {
      await until(() => logs.length > 0);
      expect(logs[0]).not.toHaveProperty('logger');
      expect(typeof logs[0]?.data).toBe('string');
    } finally {
      await client.callTool({ name: 'toggle-simulated-logging', arguments: {} });
    }
  });
});

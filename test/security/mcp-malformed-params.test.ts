/**
 * A malformed MCP request is the client's error: InvalidParams (-32602) naming its first
 * problem, with the fabric's typed error data — and the session goes on.
 *
 * Found by a hostile review of MCP Tasks: every request whose params did not fit the SDK's schema
 * (`resources/read` with a number `uri`, `prompts/get` with an array `name`, `tools/call` with a
 * string `task`) was answered InternalError (-32603) with the SDK's whole issue list as its
 * message — a server fault, to the client and to anything counting server errors.
 *
 * `initialize` too (a review of MCP conformance): a malformed one was answered the same way, and
 * over HTTP it opened a session first, which stayed open (a slot of `maxSessionsPerAgent`) until
 * the idle timeout, 30 minutes: a client retrying a bad initialize locked its agent out.
 */
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { McpError, EmptyResultSchema } from '@modelcontextprotocol/sdk/types.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import { rawRequest } from '../fixtures/raw-http.js';
import {
  agentToken,
  closeSidecar,
  DEFAULT_ALLOW,
  EVERYTHING_BIN,
  httpClient,
  startTestSidecar,
  text,
} from '../fixtures/gateway/harness.js';

describe('malformed MCP requests (server-everything behind a real sidecar, official SDK client)', () => {
  let sidecar: Sidecar;
  let client: Client;

  beforeAll(async () => {
    sidecar = await startTestSidecar({
      upstreams: {
        ev: { command: process.execPath, args: [EVERYTHING_BIN, 'stdio'], stderr: 'ignore' },
      },
      policies: [DEFAULT_ALLOW],
      agents: [{ name: 'a' }],
    });
    client = await httpClient(sidecar.url!, agentToken(sidecar, 'a'));
  });

  afterAll(async () => {
    await client?.close();
    await closeSidecar(sidecar);
  });

  /** The error a raw request is answered with (the SDK client sends params as given). */
  const refusal = (method: string, params: unknown): Promise<McpError> =>
    client.request({ method, params } as never, EmptyResultSchema).then(
      () => expect.fail(`${method} was not refused`),
      (e: unknown) => (expect(e).toBeInstanceOf(McpError), e as McpError),
    );

  it('is answered InvalidParams with the field and FABRIC_ERR_INVALID_ARGUMENT', async () => {
    for (const [method, params, field] of [
      ['resources/read', { uri: 5 }, 'resources/read params.uri'],
      ['resources/read', {}, 'resources/read params.uri'],
      ['prompts/get', { name: [1] }, 'prompts/get params.name'],
      ['resources/subscribe', { uri: { deep: true } }, 'resources/subscribe params.uri'],
      ['logging/setLevel', { level: 'loud' }, 'logging/setLevel params.level'],
      ['completion/complete', { ref: 7 }, 'completion/complete params.ref'],
    ] as const) {
      const e = await refusal(method, params);
      expect(e.code, method).toBe(-32602);
      expect(e.data, method).toMatchObject({
        code: 'FABRIC_ERR_INVALID_ARGUMENT',
        details: { field },
      });
      expect(e.message.length, method).toBeLessThan(300);
    }
  });

  it('tools/call with malformed params is InvalidParams too, and the session goes on', async () => {
    for (const params of [{ name: 5 }, { name: 'ev__echo', task: 'x' }, { arguments: 'x' }]) {
      const e = await refusal('tools/call', params);
      expect(e.code, JSON.stringify(params)).toBe(-32602);
    }
    const ok = await client.callTool({ name: 'ev__echo', arguments: { message: 'still here' } });
    expect(text(ok)).toBe('Echo: still here');
  });

  it('a malformed initialize is InvalidParams naming the field, and opens no session', async () => {
    const url = new URL(sidecar.url!);
    const headers = {
      authorization: `Bearer ${agentToken(sidecar, 'a')}`,
      'content-type': 'application/json',
      accept: 'application/json, text/event-stream',
    };
    const sessions = sidecar.gateway.sessions.size;
    for (const [params, field] of [
      [
        { protocolVersion: 5, capabilities: {}, clientInfo: { name: 'c', version: '1' } },
        'initialize params.protocolVersion',
      ],
      [
        { protocolVersion: '2025-06-18', clientInfo: { name: 'c', version: '1' } },
        'initialize params.capabilities',
      ],
      [
        { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: {} },
        'initialize params.clientInfo.name',
      ],
    ] as const) {
      const res = await rawRequest(
        url,
        'POST',
        url.pathname,
        headers,
        JSON.stringify({ jsonrpc: '2.0', id: 7, method: 'initialize', params }),
      );
      expect(res.headers['mcp-session-id'], field).toBeUndefined();
      const body = JSON.parse(res.body) as { id: unknown; error: McpError };
      expect(body.id).toBe(7);
      expect(body.error.code, field).toBe(-32602);
      expect(body.error.data, field).toMatchObject({
        code: 'FABRIC_ERR_INVALID_ARGUMENT',
        details: { field },
      });
      expect(body.error.message.length, field).toBeLessThan(300);
    }
    expect(sidecar.gateway.sessions.size).toBe(sessions);
  });
});

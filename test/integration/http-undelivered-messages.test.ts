/**
 * Messages for an agent that reach no Streamable HTTP stream are never dropped silently (real
 * sidecar, real upstream sending a server→client request, raw HTTP client).
 *
 * A call whose POST is answered as plain JSON sends no event id: once its connection closed,
 * nobody can resume it. An elicitation its upstream sent for it then was dropped without a word,
 * and the upstream waited for an answer that could not come (the SDK's 60 s, or forever). Now
 * the upstream's request fails at once with a ConnectionClosed error saying why, a `warn` line
 * tells the operator (what it was, not what it held), and
 * `agent_fabric_mcp_http_messages_undelivered_total{reason="request-gone"}` counts it. The line
 * is one per agent and reason a minute (the rest summed up when it ends): one per session let
 * an agent cycling sessions write one a cycle, without bound.
 */
import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { request as httpRequest, type ServerResponse } from 'node:http';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { GatewayLogEntry } from '../../src/gateway/gateway.js';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  agentToken,
  CALLBACK_SERVER,
  closeSidecar,
  DEFAULT_ALLOW,
  metricValue,
  startTestSidecar,
  tempDir,
  until,
} from '../fixtures/gateway/harness.js';

let sidecar: Sidecar | undefined;

afterEach(async () => {
  await closeSidecar(sidecar);
  sidecar = undefined;
});

/** POSTs `body` to the sidecar's MCP endpoint as `token`; resolves the answer's status, headers and text. */
async function post(
  token: string,
  body: unknown,
  session?: string,
): Promise<{ status: number; session: string | null; text: string }> {
  const res = await fetch(sidecar!.url!, {
    method: 'POST',
    headers: {
      'content-type': 'application/json',
      accept: 'application/json, text/event-stream',
      authorization: `Bearer ${token}`,
      ...(session === undefined ? {} : { 'mcp-session-id': session }),
    },
    body: JSON.stringify(body),
  });
  return { status: res.status, session: res.headers.get('mcp-session-id'), text: await res.text() };
}

/**
 * One cycle of an agent whose call's upstream sends an elicitation after the call's connection
 * closed: initialize, call `cb__elicit_when`, drop the connection, let the upstream send.
 * Resolves the session id and what the upstream got.
 */
async function elicitAfterClose(token: string): Promise<{ session: string; out: string }> {
  const init = await post(token, {
    jsonrpc: '2.0',
    id: 1,
    method: 'initialize',
    params: {
      protocolVersion: '2025-06-18',
      capabilities: { elicitation: {} },
      clientInfo: { name: 'raw', version: '1' },
    },
  });
  expect(init.status).toBe(200);
  const session = init.session!;
  await post(token, { jsonrpc: '2.0', method: 'notifications/initialized' }, session);

  // The server side of the call's POST, as Node hands it to the sidecar.
  let answer: ServerResponse | undefined;
  const seen = (message: unknown): void => {
    const m = message as {
      request: { headers: Record<string, unknown> };
      response: ServerResponse;
    };
    if (m.request.headers['x-test-call'] === '1') answer = m.response;
  };
  subscribe('http.server.request.start', seen);
  const gate = join(tempDir('undelivered'), 'gate');
  const call = httpRequest(sidecar!.url!, {
    method: 'POST',
    agent: false,
    headers: {
      'content-type': 'application/json',
      accept: 'application/json, text/event-stream',
      authorization: `Bearer ${token}`,
      'mcp-session-id': session,
      'mcp-protocol-version': '2025-06-18',
      'x-test-call': '1',
    },
  });
  call.on('error', () => undefined);
  call.end(
    JSON.stringify({
      jsonrpc: '2.0',
      id: 2,
      method: 'tools/call',
      params: { name: 'cb__elicit_when', arguments: { gate } },
    }),
  );
  try {
    // The call runs on the upstream; then the agent's connection goes (a client that gave up).
    await until(() => existsSync(`${gate}.started`));
    expect(answer).toBeDefined();
    const closed = new Promise((resolve) => answer!.once('close', resolve));
    call.destroy();
    await closed;
  } finally {
    unsubscribe('http.server.request.start', seen);
  }
  expect(answer!.headersSent).toBe(false); // never switched to SSE: no event id went out

  writeFileSync(gate, '');
  await until(() => existsSync(`${gate}.out`));
  // The upstream's elicitation failed at once, saying why (before: it waited, unanswered).
  const out = readFileSync(`${gate}.out`, 'utf8');
  expect(out).toMatch(/^error -32000: /);
  expect(out).toContain('answered as JSON and its connection has closed');

  return { session, out };
}

/** Starts {@link sidecar} with the callback upstream and agent `a`; resolves its log. */
async function startWithCallbacks(): Promise<GatewayLogEntry[]> {
  const logs: GatewayLogEntry[] = [];
  sidecar = await startTestSidecar(
    {
      // No slow-call switch to SSE within the test: the call's POST stays a JSON answer.
      http: { keepAliveSeconds: 600 },
      upstreams: {
        cb: { command: process.execPath, args: [CALLBACK_SERVER], stderr: 'ignore' },
      },
      policies: [DEFAULT_ALLOW],
      agents: [{ name: 'a' }],
    },
    { logger: (e) => logs.push(e) },
  );
  return logs;
}

describe('Streamable HTTP: a message that reaches no stream', () => {
  it("fails the upstream's request for a call whose JSON answer's connection closed, logged and counted", async () => {
    const logs = await startWithCallbacks();
    const token = agentToken(sidecar!, 'a');
    const { session } = await elicitAfterClose(token);
    expect(
      await metricValue(
        sidecar!,
        'agent_fabric_mcp_http_messages_undelivered_total{reason="request-gone"}',
      ),
    ).toBe(1);
    const told = logs.filter((l) => l.reason === 'request-gone');
    expect(told).toEqual([
      expect.objectContaining({ level: 'warn', kind: 'request', method: 'elicitation/create' }),
    ]);
    expect(JSON.stringify(told)).not.toContain(token);
    expect(JSON.stringify(told)).not.toContain(session);
  });

  it('an agent cycling sessions gets one line per reason a minute, the rest counted and summed up', async () => {
    // Before, the line was per session: initialize, a dropped elicitation, DELETE — one `warn`
    // line a cycle, without bound. The counter still counts every drop.
    const logs = await startWithCallbacks();
    const token = agentToken(sidecar!, 'a');
    for (let i = 0; i < 3; i++) {
      const { session } = await elicitAfterClose(token);
      const gone = await fetch(sidecar!.url!, {
        method: 'DELETE',
        headers: { authorization: `Bearer ${token}`, 'mcp-session-id': session },
      });
      expect(gone.status).toBeLessThan(300);
    }
    expect(
      await metricValue(
        sidecar!,
        'agent_fabric_mcp_http_messages_undelivered_total{reason="request-gone"}',
      ),
    ).toBe(3);
    expect(logs.filter((l) => l.reason === 'request-gone')).toEqual([
      expect.objectContaining({ level: 'warn', kind: 'request', method: 'elicitation/create' }),
    ]);
    // The minute's summary is written when it ends, or (here) when the endpoint closes.
    await closeSidecar(sidecar);
    sidecar = undefined;
    expect(logs.filter((l) => l.reason === 'request-gone')).toEqual([
      expect.objectContaining({ kind: 'request' }),
      expect.objectContaining({ level: 'warn', suppressed: 2, agentId: expect.any(String) }),
    ]);
  });
});

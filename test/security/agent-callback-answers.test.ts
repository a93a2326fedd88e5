/**
 * An agent's answer to a request an upstream sent back (sampling here) that nests too deep to
 * serialize: the SDK's HTTP and SSE client transports only report the failed send, so an HTTP
 * upstream never got an answer and waited — the agent's call with it — until a timeout, where a
 * stdio upstream got an InternalError at once. Now the gateway refuses such an answer (a result,
 * or an error's `data`) itself, over every upstream transport: the upstream gets an
 * InternalError naming it, and its call goes on at once.
 *
 * Found by a hostile review of agent-side answers. Real sidecar, real server-everything (over
 * Streamable HTTP and over stdio), the official SDK client — the deep answer itself is sent as
 * raw JSON text in the agent's own session (the SDK client cannot serialize it either).
 */
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import type { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { CreateMessageRequestSchema, McpError } from '@modelcontextprotocol/sdk/types.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  agentToken,
  closeSidecar,
  DEFAULT_ALLOW,
  EVERYTHING_BIN,
  httpClient,
  startEverythingHttp,
  startTestSidecar,
  text,
  type HttpUpstreamProcess,
} from '../fixtures/gateway/harness.js';

/** JSON text nested `levels` deep. */
const nested = (levels: number): string => '{"d":'.repeat(levels) + '{}' + '}'.repeat(levels);

describe("an agent's answer to an upstream's request that nests too deep to relay", () => {
  let upstreamHttp: HttpUpstreamProcess;
  let sidecar: Sidecar;
  let agent: Client;
  let other: Client;

  beforeAll(async () => {
    upstreamHttp = await startEverythingHttp();
    sidecar = await startTestSidecar({
      upstreams: {
        // Without the fix the HTTP upstream's call ends only at this timeout.
        web: { url: upstreamHttp.url, callTimeoutSeconds: 5 },
        pipe: { command: process.execPath, args: [EVERYTHING_BIN, 'stdio'], stderr: 'ignore' },
      },
      policies: [DEFAULT_ALLOW],
      agents: [{ name: 'agent' }, { name: 'other' }],
    });
    agent = await httpClient(sidecar.url!, agentToken(sidecar, 'agent'), { sampling: {} });
    other = await httpClient(sidecar.url!, agentToken(sidecar, 'other'));
  });

  afterAll(async () => {
    await agent?.close();
    await other?.close();
    await closeSidecar(sidecar);
    await upstreamHttp?.close();
  });

  /** Posts `json` (one JSON-RPC message's text) in the agent's own session. */
  async function postRaw(json: string): Promise<number> {
    const t = agent.transport as StreamableHTTPClientTransport;
    const res = await fetch(sidecar.url!, {
      method: 'POST',
      headers: {
        'content-type': 'application/json',
        accept: 'application/json, text/event-stream',
        authorization: `Bearer ${agentToken(sidecar, 'agent')}`,
        'mcp-session-id': t.sessionId!,
        'mcp-protocol-version': t.protocolVersion ?? '2025-06-18',
      },
      body: json,
    });
    await res.text();
    return res.status;
  }

  /** Makes the agent answer each sampling request with `answer(id)` as raw text. */
  function answerWith(answer: (id: string) => string): void {
    agent.setRequestHandler(CreateMessageRequestSchema, async (_req, extra) => {
      expect(await postRaw(answer(JSON.stringify(extra.requestId)))).toBe(202);
      return new Promise<never>(() => undefined); // answered above
    });
  }

  const sample = (upstream: string) =>
    agent
      .callTool({ name: `${upstream}__trigger-sampling-request`, arguments: { prompt: 'p' } })
      .then(
        (r) => `result: ${text(r)}`,
        (e: unknown) => (e instanceof McpError ? `error ${e.code}: ${e.message}` : String(e)),
      );

  const deepResult = (id: string) =>
    `{"jsonrpc":"2.0","id":${id},"result":{"role":"assistant","model":"m",` +
    `"content":{"type":"text","text":"x"},"extra":${nested(20_000)}}}`;
  const deepErrorData = (id: string) =>
    `{"jsonrpc":"2.0","id":${id},"error":{"code":-32000,"message":"no","data":${nested(20_000)}}}`;
  const REFUSED = "the agent's answer to sampling/createMessage nests deeper than 1000 levels";

  for (const upstream of ['web', 'pipe']) {
    it(`${upstream}: a deep result or error data reaches the upstream as an InternalError`, async () => {
      for (const answer of [deepResult, deepErrorData]) {
        answerWith(answer);
        const outcome = await sample(upstream);
        expect(outcome).toContain(REFUSED);
        expect(outcome).not.toContain('FABRIC_ERR_UPSTREAM_TIMEOUT');
      }
      // The agent's session and the upstream go on: a plain answer is relayed, and another
      // agent's call is served.
      agent.setRequestHandler(CreateMessageRequestSchema, () => ({
        role: 'assistant',
        model: 'm',
        content: { type: 'text', text: 'plain answer' },
      }));
      expect(await sample(upstream)).toContain('plain answer');
      const echo = await other.callTool({ name: `${upstream}__echo`, arguments: { message: 'x' } });
      expect(text(echo)).toBe('Echo: x');
    });
  }
});

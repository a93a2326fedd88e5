/**
 * A call whose request a legacy SSE upstream refuses as too large: the POST of its message gets
 * 413 (nginx's `client_max_body_size` in front of server-everything in sse mode; real sidecar,
 * SDK clients). Before, the agent got `FABRIC_ERR_INTERNAL` `Tool call failed: Error POSTing to
 * endpoint (HTTP 413): …` and was charged the call's cost as if it had reached the upstream. Now
 * it gets `FABRIC_ERR_PAYLOAD_TOO_LARGE` naming the upstream and saying the call was not sent,
 * is not charged (budget and audit line), and another agent's call in flight on the same
 * upstream connection is answered.
 */
import { join } from 'node:path';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  agentToken,
  auditLines,
  closeSidecar,
  costSpent,
  DEFAULT_ALLOW,
  httpClient,
  startEverythingHttp,
  startTestSidecar,
  tempDir,
  text,
  until,
  type HttpUpstreamProcess,
} from '../fixtures/gateway/harness.js';
import { startPostLimitProxy, type PostLimitProxy } from '../fixtures/gateway/post-limit-proxy.js';

describe('a request a legacy SSE upstream refuses as too large (real sidecar)', () => {
  let upstream: HttpUpstreamProcess;
  let proxy: PostLimitProxy;
  let sidecar: Sidecar;
  let payer: Client;
  let other: Client;
  const auditPath = join(tempDir('sse-post-too-large'), 'audit.jsonl');

  beforeAll(async () => {
    upstream = await startEverythingHttp('sse');
    proxy = await startPostLimitProxy(upstream.url, 64 * 1024);
    sidecar = await startTestSidecar({
      upstreams: { legacy: { transport: 'sse', url: proxy.url('/sse'), callTimeoutSeconds: 20 } },
      policies: [DEFAULT_ALLOW],
      agents: [{ name: 'payer', budget: { maxCostPerDay: 100 } }, { name: 'other' }],
      toolCosts: { 'legacy__*': 1 },
      audit: { path: auditPath },
    });
    payer = await httpClient(sidecar.url!, agentToken(sidecar, 'payer'));
    other = await httpClient(sidecar.url!, agentToken(sidecar, 'other'));
  });
  afterAll(async () => {
    await payer?.close();
    await other?.close();
    await closeSidecar(sidecar);
    await proxy?.close();
    await upstream?.close();
  });

  it('fails the call as too large and not sent, charges nothing, and loses no other answer', async () => {
    // Another agent's call is in flight on the same upstream connection meanwhile.
    const slow = other.callTool({
      name: 'legacy__trigger-long-running-operation',
      arguments: { duration: 2, steps: 2 },
    });
    const refused = (await payer.callTool({
      name: 'legacy__echo',
      arguments: { message: 'x'.repeat(256 * 1024) },
    })) as CallToolResult;
    expect(proxy.refused).toBe(1);
    expect(refused.isError).toBe(true);
    // Before: FABRIC_ERR_INTERNAL, `Tool call failed: Error POSTing to endpoint (HTTP 413): …`.
    expect(refused._meta?.['agent-fabric/error']).toMatchObject({
      code: 'FABRIC_ERR_PAYLOAD_TOO_LARGE',
    });
    expect(text(refused)).toMatch(
      /upstream legacy refused tools\/call as too large \(HTTP 413\); it was not sent/,
    );
    // Before: 1 (charged as having reached the upstream).
    expect(await costSpent(sidecar, 'payer')).toBe(0);
    await until(() => auditLines(sidecar, auditPath, 'payer', 'legacy__echo').length === 1);
    const [line] = auditLines(sidecar, auditPath, 'payer', 'legacy__echo');
    expect(line).toMatchObject({ code: 'FABRIC_ERR_PAYLOAD_TOO_LARGE' });
    expect(line!.cost ?? 0).toBe(0);

    expect(text(await slow)).toContain('Long running operation completed');
    // The connection lives on: a call that fits is answered and charged.
    expect(sidecar.gateway.upstreams.get('legacy')!.state).toBe('ready');
    expect(
      text(await payer.callTool({ name: 'legacy__echo', arguments: { message: 'fits' } })),
    ).toBe('Echo: fits');
    expect(await costSpent(sidecar, 'payer')).toBe(1);
  });
});

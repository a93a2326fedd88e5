import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  agentToken,
  alive,
  closeSidecar,
  DEFAULT_ALLOW,
  httpClient,
  startEverythingHttp,
  startTestSidecar,
  text,
  type HttpUpstreamProcess,
} from '../fixtures/gateway/harness.js';

describe('a legacy SSE upstream (server-everything in sse mode, real fabric)', () => {
  let upstream: HttpUpstreamProcess;
  let sidecar: Sidecar;
  let client: Client;

  beforeAll(async () => {
    upstream = await startEverythingHttp('sse');
    sidecar = await startTestSidecar({
      upstreams: { legacy: { transport: 'sse', url: upstream.url, callTimeoutSeconds: 20 } },
      policies: [
        {
          name: 'no-unlucky-sums',
          priority: 10,
          rules: [{ tool: 'legacy__get-sum', action: 'deny', conditions: { a: 13 } }],
        },
        DEFAULT_ALLOW,
      ],
      agents: [{ name: 'sse-agent' }],
    });
    client = await httpClient(sidecar.url!, agentToken(sidecar, 'sse-agent'));
  });

  afterAll(async () => {
    await client?.close();
    await closeSidecar(sidecar);
    await upstream?.close();
    if (upstream) expect(alive(upstream.pid)).toBe(false);
  });

  it('lists the SSE upstream’s tools and forwards calls through the same policies', async () => {
    const names = (await client.listTools()).tools.map((t) => t.name);
    expect(names).toContain('legacy__echo');
    expect(
      text(await client.callTool({ name: 'legacy__echo', arguments: { message: 'over sse' } })),
    ).toBe('Echo: over sse');
    const denied = await client.callTool({ name: 'legacy__get-sum', arguments: { a: 13, b: 1 } });
    expect(denied.isError).toBe(true);
    expect(text(denied)).toContain('FABRIC_ERR_POLICY_DENIED');
  });
});

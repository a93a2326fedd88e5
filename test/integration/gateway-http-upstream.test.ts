import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { CreateMessageRequestSchema, type Progress } from '@modelcontextprotocol/sdk/types.js';
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

describe('a Streamable HTTP upstream (server-everything in streamableHttp mode, real fabric)', () => {
  let upstream: HttpUpstreamProcess;
  let sidecar: Sidecar;
  let client: Client;

  beforeAll(async () => {
    upstream = await startEverythingHttp();
    sidecar = await startTestSidecar({
      upstreams: { remote: { url: upstream.url, callTimeoutSeconds: 20 } },
      policies: [
        {
          name: 'no-unlucky-sums',
          priority: 10,
          rules: [
            {
              tool: 'remote__get-sum',
              action: 'deny',
              conditions: { a: 13 },
              reason: 'thirteen is unlucky',
            },
          ],
        },
        DEFAULT_ALLOW,
      ],
      agents: [{ name: 'http-agent' }],
    });
    client = await httpClient(sidecar.url!, agentToken(sidecar, 'http-agent'), { sampling: {} });
    client.setRequestHandler(CreateMessageRequestSchema, async () => ({
      role: 'assistant',
      model: 'test-model',
      content: { type: 'text', text: 'sampled over http' },
    }));
  });

  afterAll(async () => {
    await client?.close();
    await closeSidecar(sidecar);
    await upstream?.close();
    if (upstream) expect(alive(upstream.pid)).toBe(false);
  });

  it('lists the upstream tools under its prefix and forwards a call', async () => {
    const names = (await client.listTools()).tools.map((t) => t.name);
    expect(names).toContain('remote__echo');
    const r = await client.callTool({ name: 'remote__echo', arguments: { message: 'over http' } });
    expect(text(r)).toBe('Echo: over http');
  });

  it('applies the same policies to an HTTP upstream', async () => {
    const ok = await client.callTool({ name: 'remote__get-sum', arguments: { a: 12, b: 1 } });
    expect(text(ok)).toContain('13');
    const denied = await client.callTool({ name: 'remote__get-sum', arguments: { a: 13, b: 1 } });
    expect(denied.isError).toBe(true);
    expect(text(denied)).toContain('FABRIC_ERR_POLICY_DENIED');
    expect(text(denied)).toContain('thirteen is unlucky');
  });

  it('forwards progress of an HTTP upstream call', async () => {
    const seen: Progress[] = [];
    const r = await client.callTool(
      { name: 'remote__trigger-long-running-operation', arguments: { duration: 0.2, steps: 2 } },
      undefined,
      { onprogress: (p) => seen.push(p) },
    );
    expect(text(r)).toContain('Long running operation completed');
    expect(seen[0]).toMatchObject({ progress: 1, total: 2 });
  });

  it('round-trips a sampling request from the HTTP upstream to the agent client', async () => {
    const r = await client.callTool({
      name: 'remote__trigger-sampling-request',
      arguments: { prompt: 'hello', maxTokens: 5 },
    });
    expect(text(r)).toContain('sampled over http');
  });

  it('reads resources and gets prompts of the HTTP upstream', async () => {
    const { resources } = await client.listResources();
    const read = await client.readResource({ uri: resources[0]!.uri });
    expect(read.contents.length).toBeGreaterThan(0);
    const prompt = await client.getPrompt({ name: 'remote__simple-prompt' });
    expect(prompt.messages.length).toBeGreaterThan(0);
  });

  it('returns an error result naming the upstream, not a hang, when the HTTP upstream is gone', async () => {
    await upstream.close();
    const r = await client.callTool({ name: 'remote__echo', arguments: { message: 'anyone?' } });
    expect(r.isError).toBe(true);
    expect(text(r)).toContain('Tool call failed');
    expect(text(r)).toContain('FABRIC_ERR_UPSTREAM_UNAVAILABLE');
    expect(text(r)).toContain('remote');
  });

  // A network failure of an HTTP upstream marks it down (it restarts with backoff), like a dead
  // stdio child: its tools leave the list until it is back.
  it('takes a dead HTTP upstream’s tools out of the list while it restarts', async () => {
    const names = (await client.listTools()).tools.map((t) => t.name);
    expect(names).not.toContain('remote__echo');
  });
});

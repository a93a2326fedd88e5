/**
 * `maxMessageBytes` on HTTP upstreams, past the plain cases (upstream-output-bounds.test.ts): a
 * gzip-encoded JSON body was trusted by its content-length (16 KiB of gzip reached the agent as
 * 16 MiB: fetch inflates it), and a refused POST on the legacy SSE transport was read whole by
 * the SDK (`response.text()` of 64 MiB). Real sidecar, a hand-written HTTP upstream that counts
 * what the sidecar read, the official SDK client.
 */
import { fileURLToPath } from 'node:url';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { afterEach, describe, expect, it } from 'vitest';
import type { UpstreamSpecInput } from '../../src/gateway/upstream-config.js';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  agentToken,
  closeSidecar,
  DEFAULT_ALLOW,
  httpClient,
  startHttpUpstream,
  startTestSidecar,
  text,
  type HttpUpstreamProcess,
} from '../fixtures/gateway/harness.js';

const SERVER = fileURLToPath(
  new URL('../fixtures/gateway/encoded-http-server.mjs', import.meta.url),
);
const MiB = 1024 * 1024;

let sidecar: Sidecar | undefined;
let client: Client | undefined;
let upstream: HttpUpstreamProcess | undefined;

afterEach(async () => {
  await client?.close().catch(() => undefined);
  await closeSidecar(sidecar);
  await upstream?.close();
  sidecar = client = upstream = undefined;
});

async function start(spec: UpstreamSpecInput): Promise<void> {
  sidecar = await startTestSidecar({
    upstreams: { big: { callTimeoutSeconds: 60, ...spec } },
    policies: [DEFAULT_ALLOW],
    agents: [{ name: 'a' }],
  });
  client = await httpClient(sidecar.url!, agentToken(sidecar, 'a'));
}

async function call(name: string, args: Record<string, unknown> = {}): Promise<string> {
  try {
    const result = await client!.callTool({ name: `big__${name}`, arguments: args });
    return `${result.isError === true ? 'isError: ' : ''}${text(result)}`;
  } catch (error) {
    return `error: ${(error as Error).message}`;
  }
}

describe('maxMessageBytes on an HTTP upstream', () => {
  it('bounds a gzip-encoded JSON body by what it inflates to, not by its content-length', async () => {
    upstream = await startHttpUpstream([SERVER], '/mcp');
    await start({ url: upstream.url, maxMessageBytes: MiB });
    expect(await call('ping')).toBe('http:ping');
    // 16 MiB of JSON sent as ~16 KiB of gzip with an honest content-length.
    const answer = await call('bomb', { mib: 16 });
    expect(answer.length).toBeLessThan(MiB);
    expect(answer).toContain('maxMessageBytes');
  }, 60_000);

  it('bounds the body of a refused POST on the legacy SSE transport', async () => {
    upstream = await startHttpUpstream([SERVER], '/sse');
    await start({ url: upstream.url, transport: 'sse', maxMessageBytes: MiB });
    expect(await call('ping')).toBe('http:ping');
    await call('errflood', { mib: 64 });
    const written = Number(await (await fetch(upstream.url.replace('/sse', '/written'))).text());
    // The sidecar should stop reading once the bound is passed (plus socket buffers).
    expect(written).toBeLessThan(16 * MiB);
  }, 60_000);
});

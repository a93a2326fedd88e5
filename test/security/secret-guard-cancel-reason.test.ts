/**
 * An agent's cancellation reason never reaches an upstream. Before, the free-text `reason` of
 * an agent's `notifications/cancelled` was relayed verbatim in the `notifications/cancelled` the
 * gateway sent upstream: a channel from the agent to the upstream that no policy sees — behind
 * secret-guard, an agent's own credential reached the upstream as the reason it cancelled a call.
 *
 * Real sidecar with the first-party secret-guard loaded from config, a real stdio upstream that
 * records every notification line it reads, the official SDK client as the agent (its abort
 * reason is what it sends as `reason`). Both ways the gateway sends a request upstream are
 * covered: its own fast path (a plain call) and the SDK client's (a call asking for progress).
 */
import { fileURLToPath } from 'node:url';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import type { RequestOptions } from '@modelcontextprotocol/sdk/shared/protocol.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import { UPSTREAM_CANCEL_REASON } from '../../src/gateway/upstream-cancel-reason.js';
import {
  agentToken,
  closeSidecar,
  DEFAULT_ALLOW,
  httpClient,
  recorded,
  recorderUpstream,
  startTestSidecar,
  text,
  until,
} from '../fixtures/gateway/harness.js';

const SECRET_GUARD = fileURLToPath(new URL('../../plugins/secret-guard/index.js', import.meta.url));
/** Made up, in the format of the fabric's agent credentials (`afk_` + 40). */
const CREDENTIAL = `afk_${'Zq3xW9vB'.repeat(5)}`;

describe('an agent cancelling a call behind secret-guard', () => {
  let sidecar: Sidecar | undefined;
  let client: Client;

  beforeAll(async () => {
    sidecar = await startTestSidecar({
      upstreams: {
        rec: recorderUpstream(),
        // The same, timing its calls out after a second.
        late: recorderUpstream(1),
      },
      policies: [DEFAULT_ALLOW],
      plugins: [{ module: SECRET_GUARD }],
      agents: [{ name: 'agent' }],
    });
    client = await httpClient(sidecar.url!, agentToken(sidecar, 'agent'));
  }, 60_000);

  afterAll(async () => {
    await client?.close();
    await closeSidecar(sidecar);
  });

  /** `work` calls the upstream holds, and the `notifications/cancelled` it has read. */
  async function seen(
    upstream = 'rec',
  ): Promise<{ held: number; cancels: { params: { reason?: string } }[] }> {
    const { held, lines } = await recorded(client, upstream);
    const cancels = lines
      .map((line) => JSON.parse(line) as { method: string; params: { reason?: string } })
      .filter((m) => m.method === 'notifications/cancelled');
    return { held, cancels };
  }

  for (const [how, options] of [
    ['a plain call (the fast path)', {}],
    ['a call asking for progress (the SDK client)', { onprogress: () => undefined }],
  ] as [string, RequestOptions][]) {
    it(`${how}: the upstream is told the gateway's reason, never the agent's`, async () => {
      const before = await seen();
      const ac = new AbortController();
      const call = client.callTool({ name: 'rec__work', arguments: {} }, undefined, {
        ...options,
        signal: ac.signal,
      });
      call.catch(() => undefined);
      // Cancelled once the upstream holds it: forwarded, so its cancellation is too.
      await until(async () => (await seen()).held > before.held);
      ac.abort(`my key is ${CREDENTIAL}`);
      await expect(call).rejects.toBeDefined();
      let got = before.cancels;
      await until(async () => (got = (await seen()).cancels).length > before.cancels.length);
      const told = got.slice(before.cancels.length);
      expect(told).toHaveLength(1);
      expect(told[0]!.params.reason).toBe(UPSTREAM_CANCEL_REASON);
      expect(JSON.stringify(got)).not.toContain(CREDENTIAL);
    });
  }

  it("a call the gateway timed out: the upstream is told the timeout's reason", async () => {
    const result = await client.callTool({ name: 'late__work', arguments: {} });
    expect(result.isError).toBe(true);
    expect(text(result)).toMatch(/did not answer/);
    let got: { params: { reason?: string } }[] = [];
    await until(async () => (got = (await seen('late')).cancels).length > 0);
    expect(got.map((m) => m.params.reason)).toEqual([
      'McpError: MCP error -32001: Request timed out',
    ]);
  });
});

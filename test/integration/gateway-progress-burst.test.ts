/**
 * Progress notifications a stdio upstream writes together with its result (one write, one chunk
 * read) all reach the agent, before the result. Before, the last ones were lost: the SDK's
 * `Protocol` on the sidecar's upstream side handles a notification on a microtask but a response
 * at once, so the response ended the call's progress handler before the notifications read with
 * it were handled.
 */
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  agentToken,
  closeSidecar,
  DEFAULT_ALLOW,
  httpClient,
  startTestSidecar,
  text,
} from '../fixtures/gateway/harness.js';

const BURST_SERVER = new URL('../fixtures/gateway/progress-burst-server.mjs', import.meta.url)
  .pathname;

describe('progress written with the result in one chunk (real sidecar, raw stdio upstream)', () => {
  let sidecar: Sidecar;
  let client: Client;

  beforeAll(async () => {
    sidecar = await startTestSidecar({
      upstreams: { b: { command: process.execPath, args: [BURST_SERVER], stderr: 'ignore' } },
      policies: [DEFAULT_ALLOW],
      agents: [{ name: 'a' }],
    });
    client = await httpClient(sidecar.url!, agentToken(sidecar, 'a'));
  });
  afterAll(async () => {
    await client?.close();
    await closeSidecar(sidecar);
  });

  it('delivers every step before the result', async () => {
    for (const steps of [1, 3, 20]) {
      const seen: number[] = [];
      const r = await client.callTool({ name: 'b__burst', arguments: { steps } }, undefined, {
        onprogress: (p) => seen.push(p.progress),
      });
      expect(text(r)).toBe(`done after ${steps}`);
      expect(seen).toEqual(Array.from({ length: steps }, (_, i) => i + 1));
    }
  });

  it('answers a call without a progress token as before (the fast path)', async () => {
    const r = await client.callTool({ name: 'b__burst', arguments: { steps: 2 } });
    expect(text(r)).toBe('done after 2');
  });
});

/**
 * A call made while the gateway is resetting a stdio upstream's connection (it wrote a line too
 * long to keep that could not be tied to a call) and the process has not exited yet: the
 * transport is closed, so nothing of the call is written, but the upstream still counts as
 * ready until the process is gone. Real sidecar, a real upstream that lingers after SIGTERM,
 * real SDK clients over Streamable HTTP. Such a call failed with a bare `Not connected`, taken
 * for a call that had reached its upstream: charged to the agent's budget. Now it fails as
 * `FABRIC_ERR_UPSTREAM_UNAVAILABLE` saying it was not sent, and is not charged.
 */
import { fileURLToPath } from 'node:url';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  agentToken,
  closeSidecar,
  costSpent,
  DEFAULT_ALLOW,
  httpClient,
  startTestSidecar,
  text,
} from '../fixtures/gateway/harness.js';

const RESET_SERVER = fileURLToPath(
  new URL('../fixtures/gateway/reset-server.mjs', import.meta.url),
);

describe('a call while a stdio upstream connection is being reset (real sidecar)', () => {
  let sidecar: Sidecar;
  let payer: Client;

  beforeAll(async () => {
    sidecar = await startTestSidecar({
      upstreams: {
        rs: {
          command: process.execPath,
          args: [RESET_SERVER],
          stderr: 'ignore',
          callTimeoutSeconds: 600,
          maxMessageBytes: 1024 * 1024,
        },
      },
      policies: [DEFAULT_ALLOW],
      agents: [{ name: 'payer', budget: { maxCostPerDay: 100 } }],
      toolCosts: { rs__echo: 1, rs__garble: 1 },
    });
    payer = await httpClient(sidecar.url!, agentToken(sidecar, 'payer'));
  });
  afterAll(async () => {
    await payer?.close();
    await closeSidecar(sidecar);
  });

  it('charges nothing for a call refused because the connection is closing', async () => {
    // A call that reaches its upstream is charged (the cost is set up).
    expect(text(await payer.callTool({ name: 'rs__echo', arguments: { text: 'ab' } }))).toBe('2');
    expect(await costSpent(sidecar, 'payer')).toBe(1);

    // The garbled answer resets the connection; the call it was for fails once the process is
    // gone (it reached the upstream: charged).
    const garbled = payer.callTool({ name: 'rs__garble', arguments: {} }).then(
      (r) => r as CallToolResult,
      (e: unknown) => e,
    );
    const upstream = sidecar.gateway.upstreams.get('rs')!;
    let refused: CallToolResult | undefined;
    let answered = 0;
    // Until the reset began: an echo is answered (charged) before, refused at once after.
    for (let i = 0; i < 200 && refused === undefined; i++) {
      const r = (await payer.callTool({
        name: 'rs__echo',
        arguments: { text: 'abc' },
      })) as CallToolResult;
      if (r.isError === true) refused = r;
      else answered++;
    }
    expect(refused).toBeDefined();
    // The process lingers (it ignores SIGTERM): the upstream was still ready for that call.
    expect(upstream.state).toBe('ready');
    // Before, the refused call was charged: one more.
    expect(await costSpent(sidecar, 'payer')).toBe(1 + answered);
    // Before: FABRIC_ERR_INTERNAL, `Tool call failed: Not connected`.
    expect(refused!._meta?.['agent-fabric/error']).toMatchObject({
      code: 'FABRIC_ERR_UPSTREAM_UNAVAILABLE',
    });
    expect(text(refused)).toMatch(
      /upstream rs is closing its connection; tools\/call was not sent/,
    );
    // The garbled call fails once the process is gone; it reached the upstream: charged.
    expect(await garbled).toMatchObject({ isError: true });
    expect(await costSpent(sidecar, 'payer')).toBe(2 + answered);
  });
});

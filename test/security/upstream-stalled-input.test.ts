/**
 * A stdio upstream that stops reading its stdin (a call blocked its event loop), on a real
 * sidecar with real SDK clients over Streamable HTTP. Node buffers every write a pipe cannot
 * take, without limit: each call sent to such an upstream waited in the sidecar — its arguments
 * with it — until its timeout and beyond (a timed-out call's request stays queued, and its
 * cancellation joins it), so agents calling on made the sidecar hold all they sent. Now at most
 * the upstream's `maxMessageBytes` waits for it; a call sent past that fails at once with
 * FABRIC_ERR_UPSTREAM_UNAVAILABLE saying the upstream is not reading its input, and other
 * upstreams are served as before. Such a refused call is not charged to the agent's budget:
 * nothing of it reached the upstream (it was charged before — the upstream was up when the call
 * started, and that was taken for the call having reached it).
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
  metricValue,
  startTestSidecar,
  text,
  until,
} from '../fixtures/gateway/harness.js';

const STALLING_SERVER = fileURLToPath(
  new URL('../fixtures/gateway/stalling-server.mjs', import.meta.url),
);
/** The stalled upstream's `maxMessageBytes`: what may wait for it. */
const MAX_MESSAGE = 1024 * 1024;
/** Calls sent to the stalled upstream, each with 256 KiB of arguments: 16 MiB in all. */
const CALLS = 64;
const ARG_CHARS = 256 * 1024;

describe('a stdio upstream that stops reading its input (real sidecar)', () => {
  let sidecar: Sidecar;
  let client: Client;

  beforeAll(async () => {
    const upstream = {
      command: process.execPath,
      args: [STALLING_SERVER],
      stderr: 'ignore' as const,
      callTimeoutSeconds: 600,
      maxMessageBytes: MAX_MESSAGE,
    };
    sidecar = await startTestSidecar({
      http: { maxInflightPerAgent: 1000 },
      upstreams: { st: upstream, ok: upstream },
      policies: [DEFAULT_ALLOW],
      agents: [{ name: 'caller' }, { name: 'payer', budget: { maxCostPerDay: 100 } }],
      toolCosts: { '*__echo': 1 },
    });
    client = await httpClient(sidecar.url!, agentToken(sidecar, 'caller'));
  });
  afterAll(async () => {
    await client?.close();
    await closeSidecar(sidecar);
  });

  it('holds at most maxMessageBytes for it and fails further calls at once, saying why', async () => {
    expect(text(await client.callTool({ name: 'st__stall', arguments: {} }))).toBe('stalled');

    const settled: (CallToolResult | Error)[] = [];
    for (let i = 0; i < CALLS; i++) {
      client
        .callTool({ name: 'st__echo', arguments: { text: 'x'.repeat(ARG_CHARS) } }, undefined, {
          timeout: 600_000,
        })
        .then(
          (r) => settled.push(r as CallToolResult),
          (e: unknown) => settled.push(e as Error),
        );
    }
    // Every call is refused or waits for the upstream (what waits is on the sidecar's gauge).
    const unsent = (): Promise<number> =>
      metricValue(sidecar, 'agent_fabric_upstream_unsent_input{upstream="st"}');
    const waiting = Math.ceil(MAX_MESSAGE / ARG_CHARS) + 1;
    let held = 0;
    await until(async () => {
      held = await unsent();
      return settled.length >= CALLS - waiting || held >= (CALLS - waiting) * ARG_CHARS;
    }, 60_000);
    // Before, every call waited in the sidecar (16 MiB, and none settled until its 600 s
    // timeout); now at most maxMessageBytes and the message that went past it.
    expect(held).toBeLessThanOrEqual(MAX_MESSAGE + ARG_CHARS + 1024);
    expect(settled.length).toBeGreaterThanOrEqual(CALLS - waiting);
    for (const r of settled) {
      expect(r).not.toBeInstanceOf(Error);
      const result = r as CallToolResult;
      expect(result.isError).toBe(true);
      expect(result._meta?.['agent-fabric/error']).toMatchObject({
        code: 'FABRIC_ERR_UPSTREAM_UNAVAILABLE',
      });
      expect(text(result)).toMatch(
        /upstream st is not reading its input \(\d+ characters wait for it, at most 1048576\); tools\/call was not sent/,
      );
    }

    // The other upstream is served as before.
    expect(text(await client.callTool({ name: 'ok__echo', arguments: { text: 'abc' } }))).toBe('3');
  });

  // After the test above: `st` reads nothing any more, and more than it may hold waits for it.
  it('charges nothing for a call refused because the upstream is not reading its input', async () => {
    const payer = await httpClient(sidecar.url!, agentToken(sidecar, 'payer'));
    try {
      // A call that reaches its upstream is charged (the cost is set up).
      expect(text(await payer.callTool({ name: 'ok__echo', arguments: { text: 'ab' } }))).toBe('2');
      expect(await costSpent(sidecar, 'payer')).toBe(1);

      const refused = (await payer.callTool({
        name: 'st__echo',
        arguments: { text: 'abc' },
      })) as CallToolResult;
      expect(refused.isError).toBe(true);
      expect(refused._meta?.['agent-fabric/error']).toMatchObject({
        code: 'FABRIC_ERR_UPSTREAM_UNAVAILABLE',
      });
      expect(text(refused)).toMatch(/is not reading its input .*tools\/call was not sent/);
      // Before, the refused call was charged: 2.
      expect(await costSpent(sidecar, 'payer')).toBe(1);
    } finally {
      await payer.close();
    }
  });
});

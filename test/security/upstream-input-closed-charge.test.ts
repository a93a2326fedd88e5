/**
 * A call written to a stdio upstream that closed its input (its stdin pipe has no reader: the
 * write fails with EPIPE) while the process lives on. Real sidecar, a real upstream that closes
 * file descriptor 0 and keeps running, real SDK clients over Streamable HTTP. Before, the failed
 * write was only logged: the call waited for an answer that could not come until
 * `callTimeoutSeconds`, was audited as a timeout and charged as having reached its upstream, and
 * so was every later call, the connection never being reset. Now the calls of the failed write
 * fail at once as `FABRIC_ERR_UPSTREAM_UNAVAILABLE` saying they were not sent, cost nothing, and
 * the connection is reset (the upstream restarts and answers again).
 */
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
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
  startTestSidecar,
  tempDir,
  text,
  until,
  upstreamPids,
} from '../fixtures/gateway/harness.js';

const INPUT_CLOSING_SERVER = fileURLToPath(
  new URL('../fixtures/gateway/input-closing-server.mjs', import.meta.url),
);

describe('a call to a stdio upstream whose input is closed (real sidecar)', () => {
  let sidecar: Sidecar;
  let payer: Client;
  const auditPath = join(tempDir('upstream-input-closed'), 'audit.jsonl');

  beforeAll(async () => {
    sidecar = await startTestSidecar({
      upstreams: {
        ic: {
          command: process.execPath,
          args: [INPUT_CLOSING_SERVER],
          stderr: 'ignore',
          // Long enough that the old code's wait shows as a timeout, short enough to end.
          callTimeoutSeconds: 5,
        },
      },
      policies: [DEFAULT_ALLOW],
      agents: [{ name: 'payer', budget: { maxCostPerDay: 100 } }],
      toolCosts: { ic__echo: 1, ic__close_input: 1 },
      audit: { path: auditPath },
    });
    payer = await httpClient(sidecar.url!, agentToken(sidecar, 'payer'));
  });
  afterAll(async () => {
    await payer?.close();
    await closeSidecar(sidecar);
  });

  it('fails the call as not sent, charges nothing and resets the connection', async () => {
    expect(text(await payer.callTool({ name: 'ic__echo', arguments: { text: 'ab' } }))).toBe('2');
    const [before] = upstreamPids(sidecar);
    // The upstream closes its stdin and answers (it reached it: charged).
    expect(text(await payer.callTool({ name: 'ic__close_input', arguments: {} }))).toBe('closed');
    expect(await costSpent(sidecar, 'payer')).toBe(2);

    // The next call's write fails with EPIPE: nothing of it reached the upstream.
    const refused = (await payer.callTool({
      name: 'ic__echo',
      arguments: { text: 'abc' },
    })) as CallToolResult;
    expect(refused.isError).toBe(true);
    // Before: FABRIC_ERR_UPSTREAM_TIMEOUT after callTimeoutSeconds, charged.
    expect(refused._meta?.['agent-fabric/error']).toMatchObject({
      code: 'FABRIC_ERR_UPSTREAM_UNAVAILABLE',
    });
    expect(text(refused)).toMatch(
      /upstream ic cannot be written to .*EPIPE.*tools\/call was not sent/,
    );
    expect(await costSpent(sidecar, 'payer')).toBe(2);
    await until(() => auditLines(sidecar, auditPath, 'payer', 'ic__echo').length === 2);
    const audited = auditLines(sidecar, auditPath, 'payer', 'ic__echo')[1]!;
    expect(audited).toMatchObject({ code: 'FABRIC_ERR_UPSTREAM_UNAVAILABLE' });
    expect(audited.cost ?? 0).toBe(0);

    // The connection was reset: a new process answers, and is charged as before.
    await until(
      () =>
        sidecar.gateway.upstreams.get('ic')!.state === 'ready' &&
        upstreamPids(sidecar)[0] !== before,
    );
    expect(text(await payer.callTool({ name: 'ic__echo', arguments: { text: 'abcd' } }))).toBe('4');
    expect(await costSpent(sidecar, 'payer')).toBe(3);
  });
});

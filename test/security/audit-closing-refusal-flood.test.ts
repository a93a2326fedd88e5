/**
 * Calls refused with FABRIC_ERR_CLOSED while the sidecar stops (the gateway is waiting out
 * `gateway.shutdownGraceSeconds` for a call in flight) ran nothing and cost nothing, yet each
 * wrote its own audit line: an agent calling on through the grace filled the log. Now they are
 * bounded as the other refusals that ran nothing: 100 lines a minute for the agent, the rest
 * counted in one summary line (`(calls refused while closing)`, `suppressed: n`) written at the
 * stop. Real gateway, real MCP client (in-memory pair), hanging upstream process.
 */
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { REFUSAL_LINES } from '../../src/gateway/line-budget.js';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  agentId,
  agentToken,
  auditFileLines,
  closeSidecar,
  DEFAULT_ALLOW,
  HANGING_SERVER,
  inMemoryClient,
  startTestSidecar,
  tempDir,
  text,
  until,
} from '../fixtures/gateway/harness.js';

let sidecar: Sidecar | undefined;
let dir: string | undefined;

afterEach(async () => {
  await closeSidecar(sidecar);
  sidecar = undefined;
  if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
  dir = undefined;
});

describe('audit: calls refused while the gateway closes', () => {
  it('are bounded per agent, the rest counted in a summary line at the stop', async () => {
    dir = tempDir('closing-flood');
    const audit = join(dir, 'audit.log');
    sidecar = await startTestSidecar(
      {
        audit: { path: audit },
        gateway: { shutdownGraceSeconds: 600 },
        upstreams: {
          slow: { command: process.execPath, args: [HANGING_SERVER], stderr: 'ignore' },
        },
        policies: [DEFAULT_ALLOW],
        agents: [{ name: 'caller' }],
      },
      { http: false },
    );
    const client = await inMemoryClient(sidecar, agentToken(sidecar, 'caller'));

    // A call in flight holds the gateway in its shutdown grace.
    const controller = new AbortController();
    const hanging = client.callTool({ name: 'slow__hang', arguments: {} }, undefined, {
      signal: controller.signal,
    });
    hanging.catch(() => undefined);
    await until(
      async () => text(await client.callTool({ name: 'slow__pending', arguments: {} })) === '1',
    );
    const closing = sidecar.gateway.close();

    const refused = REFUSAL_LINES + 50;
    for (let i = 0; i < refused; i++) {
      const result = await client.callTool({ name: 'slow__ping', arguments: {} });
      expect(result.isError).toBe(true);
      expect(text(result)).toContain('FABRIC_ERR_CLOSED');
    }
    controller.abort(new Error('caller gave up'));
    await expect(hanging).rejects.toThrow('caller gave up');
    await closing;

    const id = agentId(sidecar, 'caller');
    const lines = auditFileLines(audit).filter(
      (l) => l.agent === id && l.code === 'FABRIC_ERR_CLOSED',
    );
    const one = lines.filter((l) => l.tool === 'slow__ping');
    const summaries = lines.filter((l) => l.tool === '(calls refused while closing)');
    expect(one).toHaveLength(REFUSAL_LINES);
    expect(summaries).toHaveLength(1);
    expect(summaries[0]).toMatchObject({ decision: 'none', outcome: 'error', suppressed: 50 });
    // Every refusal is on record: the lines plus the summary's count.
    expect(one.length + (summaries[0]!.suppressed as number)).toBe(refused);
  });
});

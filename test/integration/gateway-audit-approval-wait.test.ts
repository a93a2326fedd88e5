/**
 * The audit line of a call that ended while it waited for a human's approval (its client
 * cancelled it, its session was deleted): it used to say `decision: "error"` with no rule, so
 * the operator could not tell that a `require_approval` rule had parked it, nor which. Now the
 * line names the decision and the rule, as the lines of approvals decided or expired do.
 * Real sidecar, official SDK client, a real stdio upstream.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  agentToken,
  closeSidecar,
  DEFAULT_ALLOW,
  HANGING_UPSTREAM,
  httpClient,
  startTestSidecar,
  tempDir,
  until,
} from '../fixtures/gateway/harness.js';

describe('audit line of a call ended while parked on an approval (real fabric)', () => {
  const path = join(tempDir('audit-approval-wait'), 'audit.log');
  let sidecar: Sidecar;

  beforeAll(async () => {
    sidecar = await startTestSidecar({
      upstreams: { hang: HANGING_UPSTREAM },
      policies: [
        { name: 'ask', priority: 100, rules: [{ tool: 'hang__ping', action: 'require_approval' }] },
        DEFAULT_ALLOW,
      ],
      agents: [{ name: 'waiter' }],
      audit: { path, flushIntervalMs: 0 },
    });
  });

  afterAll(async () => {
    await closeSidecar(sidecar);
  });

  const lineOf = (args: object): Record<string, unknown> | undefined => {
    const digest = sidecar.gateway.auditDigest(args);
    const line = readFileSync(path, 'utf8')
      .split('\n')
      .find((l) => l.includes(digest));
    return line === undefined ? undefined : (JSON.parse(line) as Record<string, unknown>);
  };

  it('names the approval rule when the client cancels the parked call', async () => {
    const client = await httpClient(sidecar.url!, agentToken(sidecar, 'waiter'));
    const approvals = sidecar.fabric!.approvals;
    const args = { k: 'cancelled while parked' };
    const stop = new AbortController();
    const parked = client
      .callTool({ name: 'hang__ping', arguments: args }, undefined, { signal: stop.signal })
      .catch((error: unknown) => error);
    await until(() => approvals.listApprovals({ status: 'pending' }).length === 1);
    stop.abort();
    expect(await parked).toBeInstanceOf(Error);
    await until(() => lineOf(args) !== undefined);
    expect(lineOf(args)).toMatchObject({
      tool: 'hang__ping',
      decision: 'require_approval',
      rule: 'ask#0',
      outcome: 'cancelled',
      code: 'FABRIC_ERR_CANCELLED',
    });
    await client.close();
  });
});

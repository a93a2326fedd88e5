/**
 * A policy plugin's deny whose `retryAt` no date can hold (a finite number past ±8.64e15 epoch
 * ms, e.g. 1e300 from clock arithmetic gone wrong) is still a typed refusal with the plugin's
 * reason, without a retry time. Before, the agent got an internal error (`-32603: Invalid time
 * value`, from `new Date(1e300).toISOString()` while the refusal was written) instead.
 *
 * Real sidecar, real server-everything upstream, the plugin loaded by path from the config, the
 * official SDK client; the answer and the audit log on disk are asserted.
 */
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MAX_WIRE_ERROR_TEXT } from '../../src/errors.js';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  agentToken,
  auditLines,
  closeSidecar,
  DEFAULT_ALLOW,
  EVERYTHING_BIN,
  httpClient,
  startTestSidecar,
  tempDir,
  text,
  until,
} from '../fixtures/gateway/harness.js';

const FAR_RETRY = fileURLToPath(
  new URL('../fixtures/plugins/far-retry-policy.mjs', import.meta.url),
);

describe.each([1e300, -1e300])('a policy plugin denying with retryAt %s', (retryAt) => {
  const auditPath = join(tempDir('plugin-retry-at'), 'audit.jsonl');
  let sidecar: Sidecar | undefined;
  let client: Client;

  beforeAll(async () => {
    sidecar = await startTestSidecar({
      upstreams: {
        ev: { command: process.execPath, args: [EVERYTHING_BIN, 'stdio'], stderr: 'ignore' },
      },
      policies: [DEFAULT_ALLOW],
      plugins: [
        {
          module: FAR_RETRY,
          options: { tool: 'ev__echo', retryAt, askTool: 'ev__get-env', reasonLength: 3_000_000 },
        },
      ],
      agents: [{ name: 'a' }],
      audit: { path: auditPath, flushIntervalMs: 0 },
    });
    client = await httpClient(sidecar.url!, agentToken(sidecar, 'a'));
  });

  afterAll(async () => {
    await client?.close();
    await closeSidecar(sidecar);
  });

  it('refuses the call with its reason and no retry time; the sidecar goes on', async () => {
    const res = (await client.callTool({
      name: 'ev__echo',
      arguments: { message: 'hi' },
    })) as CallToolResult;
    expect(res.isError).toBe(true);
    expect(text(res)).toContain('come back much later');
    const meta = res._meta?.['agent-fabric/error'] as Record<string, unknown>;
    expect(meta).toMatchObject({ code: 'FABRIC_ERR_POLICY_DENIED' });
    expect(meta.retryAt).toBeUndefined();
    const lines = () => auditLines(sidecar!, auditPath, 'a', 'ev__echo');
    await until(() => lines().length >= 1);
    expect(lines()[0]).toMatchObject({
      decision: 'deny',
      outcome: 'denied',
      rule: 'far-retry-policy',
    });
    const ok = (await client.callTool({
      name: 'ev__get-sum',
      arguments: { a: 1, b: 2 },
    })) as CallToolResult;
    expect(ok.isError).not.toBe(true);
  });

  it("keeps an approval's reason from a plugin bounded (as a wire cuts it)", async () => {
    const call = client.callTool({ name: 'ev__get-env', arguments: {} }).catch((e: unknown) => e);
    const approvals = () => sidecar!.fabric!.approvals.listApprovals({ status: 'pending' });
    await until(() => approvals().length >= 1);
    const reason = approvals()[0]!.reason ?? '';
    expect(reason.length).toBeLessThanOrEqual(MAX_WIRE_ERROR_TEXT + 100);
    expect(reason).toContain('QQQ');
    sidecar!.fabric!.approvals.deny(approvals()[0]!.id, { approver: 'test' });
    await call;
  });
});

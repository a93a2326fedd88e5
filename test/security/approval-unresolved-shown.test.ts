/**
 * An approval shows the human what the call forwards, also where the policy's view of its paths
 * has an unresolved-path marker. The approval kept the view as it was, and a marker serializes
 * as `{ unresolvedPath: reason, value }` with `value` the agent's spelling cut at 256 characters
 * — or empty for a marker that stands for what the walk did not inspect: every path-like value
 * past the 256th of a call, a subtree deeper than 32 levels, values past the 10,000th. A
 * `require_approval` rule matches a marker (fail closed), so such a call parked for a human who
 * could not see what it would touch: `read_multiple_files` of 257 files showed the 257th as
 * `{"unresolvedPath": "was not resolved (over 256 paths in one call)", "value": ""}`, the human
 * approved, and the upstream read it — here, the secret. Now the marker's `value` in the
 * approval is what the call forwards in its place; the policy still sees the marker.
 *
 * Real parts: a real sidecar, server-filesystem over stdio, the official MCP SDK client, the
 * Operator API over HTTP.
 */
import { mkdirSync, realpathSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import { listApprovals, type ApiApproval } from '../fixtures/api.js';
import { startFsApprovalSidecar } from '../fixtures/fs-approvals.js';
import {
  ADMIN_TOKEN,
  agentToken,
  api,
  closeSidecar,
  httpClient,
  tempDir,
  text,
  until,
} from '../fixtures/gateway/harness.js';

const SECRET = 'the-secret-the-approver-never-saw-7731';

describe('an approval of a call whose paths the policy could not all resolve', () => {
  const root = realpathSync(tempDir('approval-unresolved-shown'));
  let sidecar: Sidecar;
  let agent: Client;

  beforeAll(async () => {
    mkdirSync(join(root, 'notes'));
    for (let i = 0; i < 256; i++) writeFileSync(join(root, 'notes', `n${i}.txt`), `note ${i}`);
    writeFileSync(join(root, 'secret.txt'), SECRET);
    sidecar = await startFsApprovalSidecar(root, 'fs__read_multiple_files');
    agent = await httpClient(sidecar.url!, agentToken(sidecar, 'worker'));
  });

  afterAll(async () => {
    await agent?.close();
    await closeSidecar(sidecar);
  });

  it('shows the 257th path (past what the walk resolves), which the approved call then reads', async () => {
    const paths = [
      ...Array.from({ length: 256 }, (_, i) => join(root, 'notes', `n${i}.txt`)),
      join(root, 'secret.txt'),
    ];
    const call = agent.callTool(
      { name: 'fs__read_multiple_files', arguments: { paths } },
      undefined,
      { timeout: 600_000 },
    ) as Promise<CallToolResult>;
    let parked: ApiApproval | undefined;
    await until(async () => {
      parked = (await listApprovals(sidecar.url!, ADMIN_TOKEN, 'pending'))[0];
      return parked !== undefined;
    }, 30_000);
    const shown = (parked!.params as { paths: unknown[] }).paths;
    expect(shown).toHaveLength(257);
    // The resolved ones as the policy saw them; the 257th as forwarded, and marked.
    expect(shown[0]).toBe(join(root, 'notes', 'n0.txt'));
    expect(shown[256]).toEqual({
      unresolvedPath: 'was not resolved (over 256 paths in one call)',
      value: join(root, 'secret.txt'),
    });

    expect((await api(sidecar, 'ApprovalService/Approve', { id: parked!.id })).status).toBe(200);
    const result = await call;
    expect(result.isError, text(result)).toBeFalsy();
    expect(text(result)).toContain(SECRET); // what the human saw is what ran
  });

  it('shows a long unresolvable path whole, not cut at 256 characters', async () => {
    // Quoted at its end: ambiguous (an upstream may trim it or not), so the policy cannot
    // resolve it; it is longer than a marker's display of it.
    const value = `${join(root, 'notes', 'x'.repeat(300))}/../../secret.txt"`;
    const call = agent
      .callTool({ name: 'fs__read_multiple_files', arguments: { paths: [value] } }, undefined, {
        timeout: 600_000,
      })
      .catch((error: unknown) => error);
    let parked: ApiApproval | undefined;
    await until(async () => {
      parked = (await listApprovals(sidecar.url!, ADMIN_TOKEN, 'pending'))[0];
      return parked !== undefined;
    }, 30_000);
    const [marker] = (parked!.params as { paths: { unresolvedPath: string; value: string }[] })
      .paths;
    expect(marker!.unresolvedPath).toContain('quote');
    expect(marker!.value).toBe(value);
    await api(sidecar, 'ApprovalService/Deny', { id: parked!.id });
    await call;
  });
});

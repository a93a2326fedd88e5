/**
 * The audit log's `argsDigest` is an HMAC-SHA256 under a per-deployment key kept in the state
 * file (meta `auditDigestKey`, the file being 0600), not an unsalted SHA-256: a reader of the
 * audit log can no longer confirm a guess of an agent's arguments (a short secret) by hashing
 * it. The same arguments still give the same digest under the same state — across a restart —
 * so lines correlate. Real sidecar, real SQLite state file, the official SDK client, the audit
 * file on disk.
 */
import { createHash } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  agentToken,
  closeSidecar,
  DEFAULT_ALLOW,
  httpClient,
  startTestSidecar,
  tempDir,
  until,
} from '../fixtures/gateway/harness.js';
import { hmacDigest, stateDigestKey } from '../fixtures/audit/digest-key.js';

describe('audit argsDigest', () => {
  const dir = tempDir('audit-digest-keyed');
  const statePath = join(dir, 'state.db');
  const auditPath = join(dir, 'audit.log');
  let sidecar: Sidecar | undefined;

  afterAll(async () => {
    await closeSidecar(sidecar);
  });

  /** Starts the sidecar on the state file, records usage with `args`, returns its line's digest. */
  const digestOfCall = async (args: Record<string, unknown>): Promise<string> => {
    sidecar = await startTestSidecar({
      policies: [DEFAULT_ALLOW],
      agents: [{ name: 'auditor' }],
      state: { path: statePath },
      audit: { path: auditPath, flushIntervalMs: 0 },
    });
    const client = await httpClient(sidecar.url!, agentToken(sidecar, 'auditor'));
    const before = readFileSync(auditPath, 'utf8').split('\n').length;
    await client.callTool({ name: 'fabric__record_usage', arguments: args });
    await client.close();
    await until(() => readFileSync(auditPath, 'utf8').split('\n').length > before);
    const line = readFileSync(auditPath, 'utf8').trim().split('\n').at(-1)!;
    await closeSidecar(sidecar);
    sidecar = undefined;
    return (JSON.parse(line) as { argsDigest: string }).argsDigest;
  };

  it('is keyed by the state file, unguessable without it, and stable across a restart', async () => {
    const args = { tokens: 7, cost: 0, note: 'hunter2' };
    const json = JSON.stringify(args);
    const first = await digestOfCall(args);
    // A guess of the arguments hashed as before does not match.
    expect(first).not.toBe(createHash('sha256').update(json).digest('hex'));
    // The key is in the state file (owner-only), and the digest is the HMAC under it.
    const key = stateDigestKey(statePath);
    expect(key).toMatch(/^[0-9a-f]{64}$/);
    expect(statSync(statePath).mode & 0o077).toBe(0);
    expect(first).toBe(hmacDigest(key!, json));
    // Restarted on the same state: the same arguments, the same digest (lines correlate).
    expect(await digestOfCall(args)).toBe(first);
  }, 60_000);
});

/**
 * A call its client cancels while a policy provider's `decideAsync` is asked ends at once, even
 * when the provider never answers and ignores the signal it was given. Before, the engine waited
 * for every asked provider before it looked at the signal (`PolicyEngine.evaluateAsync`, whose
 * contract says it throws the signal's reason when it aborts while a provider is asked): a
 * cancelled call behind a hung policy service was never ended — no audit line, and whatever it
 * held kept held — for as long as the provider took, forever for one that never answers.
 *
 * Real sidecar with a user policy plugin loaded from a file (a service that never answers), a
 * real stdio upstream that counts the calls it gets, the official SDK client as the agent. The
 * audit log on disk is what is asserted, and that the upstream never got the call.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  agentToken,
  auditLines,
  closeSidecar,
  DEFAULT_ALLOW,
  httpClient,
  recorded,
  recorderUpstream,
  startTestSidecar,
  tempDir,
  until,
} from '../fixtures/gateway/harness.js';

const STUCK = fileURLToPath(
  new URL('../fixtures/plugins/stuck-policy-service.mjs', import.meta.url),
);

describe('a call cancelled while a policy provider that never answers is asked', () => {
  const dir = tempDir('stuck-policy');
  const askedFile = join(dir, 'asked');
  const auditPath = join(dir, 'audit.jsonl');
  let sidecar: Sidecar | undefined;
  let client: Client;

  beforeAll(async () => {
    sidecar = await startTestSidecar({
      upstreams: { rec: recorderUpstream() },
      policies: [DEFAULT_ALLOW],
      plugins: [{ module: STUCK, options: { askedFile, tool: 'rec__work' } }],
      audit: { path: auditPath, flushIntervalMs: 0 },
      agents: [{ name: 'agent' }],
    });
    client = await httpClient(sidecar.url!, agentToken(sidecar, 'agent'));
  }, 60_000);

  afterAll(async () => {
    await client?.close();
    await closeSidecar(sidecar);
  });

  const asked = (): string[] => {
    try {
      return readFileSync(askedFile, 'utf8').split('\n').filter(Boolean);
    } catch {
      return [];
    }
  };

  it('ends as cancelled (audited on disk) and never reaches the upstream', async () => {
    const ac = new AbortController();
    const call = client.callTool({ name: 'rec__work', arguments: {} }, undefined, {
      signal: ac.signal,
    });
    call.catch(() => undefined);
    await until(() => asked().includes('rec__work'));
    ac.abort('given up');
    await expect(call).rejects.toBeDefined();
    await until(() => auditLines(sidecar!, auditPath, 'agent', 'rec__work').length > 0);
    expect(auditLines(sidecar!, auditPath, 'agent', 'rec__work')).toEqual([
      expect.objectContaining({ outcome: 'cancelled', code: 'FABRIC_ERR_CANCELLED' }),
    ]);
    // The upstream never got it.
    const seen = await recorded(client, 'rec');
    expect(seen.held).toBe(0);
  });
});

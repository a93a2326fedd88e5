/**
 * Found in review: a `sampling/createMessage` an upstream sent to an agent whose client did not
 * declare the sampling capability was answered by the gateway itself (MethodNotFound, never sent
 * to the client) yet charged to the agent as if its model had read the request: a hostile
 * upstream sending large sampling requests drained the agent's token budget without any model
 * running, and once the budget was low the upstream got FABRIC_ERR_BUDGET_EXCEEDED instead of
 * being told the client cannot sample. Now a request the client cannot be sent is neither
 * admitted against the budget nor charged.
 *
 * Real parts: a sidecar on a SQLite state file with the SDK-built callback fixture over stdio
 * (`sample_many`), the official SDK client over Streamable HTTP without the sampling capability,
 * the usage read through the operator API and from the state file after the sidecar stopped,
 * and the audit file on disk.
 */
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  agentId,
  agentToken,
  auditLines,
  CALLBACK_SERVER,
  closeSidecar,
  DEFAULT_ALLOW,
  httpClient,
  startTestSidecar,
  storedTokensUsed,
  tempDir,
  text,
  tokensStatus,
  until,
  untilTool,
} from '../fixtures/gateway/harness.js';

/** Characters of each sampling request's text (about 10,000 tokens). */
const CHARS = 40_000;
const LIMIT = 25_000;

describe('budget: a sampling request the client cannot take is not charged', () => {
  const dir = tempDir('sampling-unsupported');
  const auditPath = join(dir, 'audit.jsonl');
  let sidecar: Sidecar;
  let client: Client;

  beforeAll(async () => {
    sidecar = await startTestSidecar({
      state: { path: join(dir, 'state.db') },
      upstreams: {
        cb: { command: process.execPath, args: [CALLBACK_SERVER], stderr: 'ignore' },
      },
      policies: [DEFAULT_ALLOW],
      agents: [{ name: 'a', budget: { maxTokensPerHour: LIMIT } }],
      audit: { path: auditPath, flushIntervalMs: 0 },
    });
    client = await httpClient(sidecar.url!, agentToken(sidecar, 'a')); // no sampling capability
    await untilTool(client, 'cb__sample_many');
  }, 60_000);

  afterAll(async () => {
    await client?.close().catch(() => undefined);
    await closeSidecar(sidecar);
  });

  it('ten large samplings to a client without the capability: none charged, none budget-refused', async () => {
    for (let i = 0; i < 2; i++) {
      const result = await client.callTool(
        { name: 'cb__sample_many', arguments: { count: 5, chars: CHARS } },
        undefined,
        { timeout: 60_000 },
      );
      expect(result.isError).toBeFalsy();
      expect(JSON.parse(text(result))).toEqual({ results: 0, errors: 5 });
    }
    await until(async () => (await tokensStatus(sidecar, 'a')).reserved === 0);
    // Only the calls' small results are charged (each sampling request is ~10,000 tokens).
    const { used } = await tokensStatus(sidecar, 'a');
    expect(used).toBeLessThan(200);
    // No sampling was refused by the budget: the client could not take them.
    expect(auditLines(sidecar, auditPath, 'a', 'sampling/createMessage')).toEqual([]);
    // The agent can still call.
    const again = await client.callTool({
      name: 'cb__sample_many',
      arguments: { count: 1, chars: 1 },
    });
    expect(again.isError).toBeFalsy();

    await client.close();
    await closeSidecar(sidecar);
    expect(await storedTokensUsed(join(dir, 'state.db'), agentId(sidecar, 'a'))).toBeLessThan(300);
  }, 90_000);
});

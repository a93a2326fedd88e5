/**
 * A `resources/subscribe` refused with FABRIC_ERR_SUBSCRIPTION_LIMIT gets an audit line, as every
 * other refused subscribe and read does: one past `gateway.maxSubscriptionsPerSession`
 * (`decision: "none"`, refused before policy) and one whose URI is longer than
 * `gateway.maxSubscriptionUriLength` (`decision: "invalid"`, past an input limit), each with
 * `tool: "resources/subscribe"`, `outcome: "error"`, the code, and the digest of `{ uri }` as an
 * unknown resource's subscribe has. Before, neither left a line: an agent hammering the limit
 * left no trace. Real sidecar, real server-everything upstream, the official SDK client, the
 * audit file on disk.
 */
import { join } from 'node:path';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { McpError } from '@modelcontextprotocol/sdk/types.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  agentId,
  agentToken,
  closeSidecar,
  DEFAULT_ALLOW,
  EVERYTHING_BIN,
  httpClient,
  startTestSidecar,
  tempDir,
  until,
  auditFileLines,
} from '../fixtures/gateway/harness.js';

const uri = (n: number): string => `demo://resource/dynamic/text/${n}`;

describe('audit line of a resources/subscribe refused with FABRIC_ERR_SUBSCRIPTION_LIMIT', () => {
  const path = join(tempDir('audit-subscription-limit'), 'audit.log');
  let sidecar: Sidecar;
  let client: Client;

  beforeAll(async () => {
    sidecar = await startTestSidecar({
      upstreams: {
        ev: { command: process.execPath, args: [EVERYTHING_BIN, 'stdio'], stderr: 'ignore' },
      },
      policies: [DEFAULT_ALLOW],
      agents: [{ name: 'subscriber' }],
      gateway: { maxSubscriptionsPerSession: 1, maxSubscriptionUriLength: 64 },
      audit: { path, flushIntervalMs: 0 },
    });
    client = await httpClient(sidecar.url!, agentToken(sidecar, 'subscriber'));
  }, 60_000);

  afterAll(async () => {
    await client?.close();
    await closeSidecar(sidecar);
  });

  const lines = (): Record<string, unknown>[] => auditFileLines(path);

  const refused = async (target: string): Promise<McpError> => {
    const error = await client.subscribeResource({ uri: target }).then(
      () => expect.fail(`subscribing to ${target} was not refused`),
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(McpError);
    expect((error as McpError).data).toMatchObject({ code: 'FABRIC_ERR_SUBSCRIPTION_LIMIT' });
    return error as McpError;
  };

  it('writes a line for the subscribe past the session limit and for the one past the URI length', async () => {
    await client.subscribeResource({ uri: uri(1) });
    await until(() => lines().length >= 1);
    await refused(uri(2));
    const long = `demo://resource/dynamic/text/${'9'.repeat(80)}`;
    await refused(long);
    // Subscribing again to the held URI is not one more: allowed, with its own line.
    await client.subscribeResource({ uri: uri(1) });
    await until(() => lines().length >= 4);
    const agent = agentId(sidecar, 'subscriber');
    expect(lines()).toEqual([
      expect.objectContaining({
        agent,
        tool: 'resources/subscribe',
        decision: 'allow',
        outcome: 'ok',
      }),
      expect.objectContaining({
        agent,
        tool: 'resources/subscribe',
        decision: 'none',
        outcome: 'error',
        code: 'FABRIC_ERR_SUBSCRIPTION_LIMIT',
        argsDigest: sidecar.gateway.auditDigest({ uri: uri(2) }),
      }),
      expect.objectContaining({
        agent,
        tool: 'resources/subscribe',
        decision: 'invalid',
        outcome: 'error',
        code: 'FABRIC_ERR_SUBSCRIPTION_LIMIT',
        argsDigest: sidecar.gateway.auditDigest({ uri: long }),
      }),
      expect.objectContaining({
        agent,
        tool: 'resources/subscribe',
        decision: 'allow',
        outcome: 'ok',
      }),
    ]);
    // Still held, once: the refusals changed nothing.
    expect([...sidecar.gateway.sessions.values()].map((s) => [...s.subscriptions])).toContainEqual([
      uri(1),
    ]);
  }, 60_000);
});

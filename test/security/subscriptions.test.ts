/**
 * A hostile agent subscribing to ever more resource URIs (templates make them unlimited) must hit
 * a per-session bound with a typed error, and the gateway must hold no more state than that.
 */
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { McpError } from '@modelcontextprotocol/sdk/types.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  agentToken,
  closeSidecar,
  DEFAULT_ALLOW,
  EVERYTHING_BIN,
  httpClient,
  startTestSidecar,
} from '../fixtures/gateway/harness.js';

const uri = (n: number): string => `demo://resource/dynamic/text/${n}`;

/** The McpError a refused request rejects with. */
const refusal = (promise: Promise<unknown>): Promise<McpError> =>
  promise.then(
    () => expect.fail('the request was not refused'),
    (e: unknown) => (expect(e).toBeInstanceOf(McpError), e as McpError),
  );

describe('resource subscriptions are bounded per session (server-everything, real sidecar)', () => {
  let sidecar: Sidecar;
  let first: Client;
  let second: Client;

  beforeAll(async () => {
    sidecar = await startTestSidecar({
      upstreams: {
        ev: { command: process.execPath, args: [EVERYTHING_BIN, 'stdio'], stderr: 'ignore' },
      },
      policies: [DEFAULT_ALLOW],
      agents: [{ name: 'subscriber' }],
      gateway: { maxSubscriptionsPerSession: 3 },
    });
    first = await httpClient(sidecar.url!, agentToken(sidecar, 'subscriber'));
    second = await httpClient(sidecar.url!, agentToken(sidecar, 'subscriber'));
  });

  afterAll(async () => {
    await first?.close();
    await second?.close();
    await closeSidecar(sidecar);
  });

  const held = (): number[] =>
    [...sidecar.gateway.sessions].map((s) => s.subscriptions.size).sort();

  it('refuses the subscription past the limit, keeps re-subscribing idempotent, frees on unsubscribe', async () => {
    for (const n of [1, 2, 3]) await first.subscribeResource({ uri: uri(n) });
    // Subscribing again to a URI the session holds is not a new subscription.
    await first.subscribeResource({ uri: uri(2) });
    const e = await refusal(first.subscribeResource({ uri: uri(4) }));
    expect(e.data).toMatchObject({ code: 'FABRIC_ERR_SUBSCRIPTION_LIMIT', details: { limit: 3 } });
    expect(e.message).toContain('gateway.maxSubscriptionsPerSession');
    // A flood of distinct URIs changes nothing the gateway holds.
    const flood = await Promise.allSettled(
      Array.from({ length: 200 }, (_, i) => first.subscribeResource({ uri: uri(100 + i) })),
    );
    expect(flood.every((r) => r.status === 'rejected')).toBe(true);
    expect(held()).toEqual([0, 3]);

    await first.unsubscribeResource({ uri: uri(1) });
    await first.subscribeResource({ uri: uri(4) });
    expect(held()).toEqual([0, 3]);
  });

  it('counts per session: another session of the same agent has its own quota', async () => {
    for (const n of [7, 8, 9]) await second.subscribeResource({ uri: uri(n) });
    await refusal(second.subscribeResource({ uri: uri(10) }));
    expect(held()).toEqual([3, 3]);
  });
});

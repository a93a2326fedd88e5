/**
 * A hostile agent subscribing to ever more resource URIs (templates make them unlimited) must hit
 * a per-session bound with a typed error, and the gateway must hold no more state than that.
 *
 * Found by a hostile review of routing: a second agent's subscription to a URI whose first
 * subscribe upstream was still in flight was answered at once; when that first subscribe then
 * failed (the first agent could make it fail), the upstream stayed unsubscribed while the second
 * agent was told it was subscribed — it never heard of an update.
 */
import { fileURLToPath } from 'node:url';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { McpError, ResourceUpdatedNotificationSchema } from '@modelcontextprotocol/sdk/types.js';
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
  text,
  until,
} from '../fixtures/gateway/harness.js';

const CATALOG_SERVER = fileURLToPath(
  new URL('../fixtures/gateway/catalog-server.mjs', import.meta.url),
);

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

describe("a subscription waiting on another agent's subscribe upstream", () => {
  const DOC = 'doc://shared';
  let sidecar: Sidecar;
  let attacker: Client;
  let victim: Client;

  beforeAll(async () => {
    const tools = ['holdsub', 'failsub', 'changed'].map((name) => ({
      name,
      inputSchema: { type: 'object' },
    }));
    sidecar = await startTestSidecar({
      upstreams: {
        cat: {
          command: process.execPath,
          args: [CATALOG_SERVER],
          stderr: 'ignore',
          env: {
            CATALOG_TOOLS: JSON.stringify(tools),
            CATALOG_RESOURCES: JSON.stringify([{ uri: DOC, name: 'shared' }]),
          },
        },
      },
      policies: [DEFAULT_ALLOW],
      agents: [{ name: 'attacker' }, { name: 'victim' }],
    });
    attacker = await httpClient(sidecar.url!, agentToken(sidecar, 'attacker'));
    victim = await httpClient(sidecar.url!, agentToken(sidecar, 'victim'));
  });

  afterAll(async () => {
    await attacker?.close();
    await victim?.close();
    await closeSidecar(sidecar);
  });

  const subscribedSessions = (id: string): number =>
    [...sidecar.gateway.sessions].filter(
      (s) => s.identity.agentId === id && s.subscriptions.has(DOC),
    ).length;

  it('is subscribed upstream when the first one fails, and hears of updates', async () => {
    const updates: string[] = [];
    victim.setNotificationHandler(ResourceUpdatedNotificationSchema, (n) => {
      updates.push(n.params.uri);
    });
    await attacker.callTool({ name: 'cat__holdsub', arguments: {} });
    // The attacker's subscribe is held upstream …
    const first = attacker.subscribeResource({ uri: DOC }).then(
      () => 'subscribed',
      (e: Error) => `failed: ${e.message}`,
    );
    await until(() => subscribedSessions(agentId(sidecar, 'attacker')) === 1);
    // … while the victim subscribes to the same URI,
    const second = victim.subscribeResource({ uri: DOC });
    await until(() => subscribedSessions(agentId(sidecar, 'victim')) === 1);
    // … and then it fails.
    await attacker.callTool({ name: 'cat__failsub', arguments: {} });
    expect(await first).toContain('failed: ');
    await second;
    // The upstream holds a subscription again, and the victim hears of the update.
    expect(text(await attacker.callTool({ name: 'cat__changed', arguments: { uri: DOC } }))).toBe(
      'sent',
    );
    await until(() => updates.includes(DOC));
  });
});

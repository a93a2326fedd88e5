/**
 * How much one subscription may hold. `gateway.maxSubscriptionsPerSession` (256) bounds how many
 * URIs a session is subscribed to, but not how long each is: a template URI of an upstream
 * (server-everything's `demo://resource/dynamic/text/{id}`) matched up to 1,000,000 characters,
 * so an agent subscribing to megabyte URIs made the gateway hold 256 of them per session, in 32
 * sessions (`http.maxSessionsPerAgent`) — gigabytes for one agent, and the upstream kept its own
 * copy of each. Now a subscription's URI is at most `gateway.maxSubscriptionUriLength`
 * characters (default 8192); a longer one is refused with `FABRIC_ERR_SUBSCRIPTION_LIMIT` before
 * policy or the upstream see it. Real sidecar, real server-everything, the official SDK client.
 */
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { McpError } from '@modelcontextprotocol/sdk/types.js';
import { afterEach, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  agentToken,
  closeSidecar,
  DEFAULT_ALLOW,
  EVERYTHING_BIN,
  httpClient,
  startTestSidecar,
} from '../fixtures/gateway/harness.js';

let sidecar: Sidecar | undefined;
const clients: Client[] = [];

afterEach(async () => {
  for (const c of clients.splice(0)) await c.close().catch(() => undefined);
  await closeSidecar(sidecar);
  sidecar = undefined;
});

async function start(gateway: Record<string, unknown> = {}): Promise<Sidecar> {
  sidecar = await startTestSidecar({
    upstreams: {
      ev: { command: process.execPath, args: [EVERYTHING_BIN, 'stdio'], stderr: 'ignore' },
    },
    policies: [DEFAULT_ALLOW],
    agents: [{ name: 'hoarder' }, { name: 'peer' }],
    gateway,
  } as never);
  return sidecar;
}

async function client(name: string): Promise<Client> {
  const c = await httpClient(sidecar!.url!, agentToken(sidecar!, name));
  clients.push(c);
  return c;
}

const uri = (id: string): string => `demo://resource/dynamic/text/${id}`;

/** Characters of the URIs the gateway's sessions hold. */
const heldChars = (): number =>
  [...sidecar!.gateway.sessions].reduce(
    (sum, s) => sum + [...s.subscriptions].reduce((n, u) => n + u.length, 0),
    0,
  );

async function refusal(promise: Promise<unknown>): Promise<McpError> {
  const error = await promise.then(
    () => expect.fail('the subscription was not refused'),
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(McpError);
  return error as McpError;
}

describe('a resource subscription', () => {
  it('with a URI past the default length is refused and holds nothing', async () => {
    await start();
    const hoarder = await client('hoarder');
    for (let i = 0; i < 3; i++) {
      const e = await refusal(hoarder.subscribeResource({ uri: uri(`${i}`.repeat(500_000)) }));
      expect(e.data).toMatchObject({
        code: 'FABRIC_ERR_SUBSCRIPTION_LIMIT',
        details: { limit: 8192, uriLength: uri('').length + 500_000 },
      });
      expect(e.message).toContain('gateway.maxSubscriptionUriLength');
    }
    expect(heldChars()).toBe(0);
    // At the bound it is taken, and another agent subscribes as before.
    const longest = uri('7'.repeat(8192 - uri('').length));
    await hoarder.subscribeResource({ uri: longest });
    await (await client('peer')).subscribeResource({ uri: uri('1') });
    expect(heldChars()).toBe(8192 + uri('1').length);
  });

  it('follows gateway.maxSubscriptionUriLength', async () => {
    await start({ maxSubscriptionUriLength: 64 });
    const hoarder = await client('hoarder');
    const e = await refusal(hoarder.subscribeResource({ uri: uri('9'.repeat(64)) }));
    expect(e.data).toMatchObject({ details: { limit: 64 } });
    await hoarder.subscribeResource({ uri: uri('9') });
    expect(heldChars()).toBe(uri('9').length);
  });
});

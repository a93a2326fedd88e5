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
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  agentId,
  agentToken,
  closeSidecar,
  DEFAULT_ALLOW,
  EVERYTHING_BIN,
  httpClient,
  INIT_BATCHING,
  startTestSidecar,
  text,
  until,
} from '../fixtures/gateway/harness.js';

const CATALOG_SERVER = fileURLToPath(
  new URL('../fixtures/gateway/catalog-server.mjs', import.meta.url),
);

/** A catalog-server upstream listing `tools` (by name, taking any object) and one `resource`. */
function catalogUpstream(tools: string[], resource: { uri: string; name: string }) {
  return {
    command: process.execPath,
    args: [CATALOG_SERVER],
    stderr: 'ignore' as const,
    env: {
      CATALOG_TOOLS: JSON.stringify(
        tools.map((name) => ({ name, inputSchema: { type: 'object' } })),
      ),
      CATALOG_RESOURCES: JSON.stringify([resource]),
    },
  };
}

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
      // `batcher` subscribes for the first time in a batch: its first subscribe holds the
      // single flight of a pair with no result yet, and the others wait for it.
      agents: [{ name: 'subscriber' }, { name: 'batcher' }],
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
  /** The sessions open before a test opened its own raw one. */
  let before: Set<unknown>;
  const LIMIT = 'FABRIC_ERR_SUBSCRIPTION_LIMIT';

  /** Opens a session of `batcher` over raw HTTP (the SDK client sends no batches). */
  async function rawSession(): Promise<string> {
    before = new Set(sidecar.gateway.sessions);
    const init = await fetch(sidecar.url!, {
      method: 'POST',
      headers: headers(),
      // Of the last MCP version with batches (2025-06-18 removed them).
      body: JSON.stringify(INIT_BATCHING),
    });
    expect(init.status).toBe(200);
    const session = init.headers.get('mcp-session-id')!;
    await init.text();
    const ack = await fetch(sidecar.url!, {
      method: 'POST',
      headers: headers(session),
      body: JSON.stringify({ jsonrpc: '2.0', method: 'notifications/initialized' }),
    });
    expect(ack.status).toBe(202);
    return session;
  }

  function headers(session?: string): Record<string, string> {
    return {
      'content-type': 'application/json',
      accept: 'application/json, text/event-stream',
      authorization: `Bearer ${agentToken(sidecar, 'batcher')}`,
      ...(session === undefined ? {} : { 'mcp-session-id': session }),
    };
  }

  interface Answer {
    id: number;
    result?: unknown;
    error?: { code: number; message: string; data?: unknown };
  }

  /** POSTs `body` to the session; the responses in it (from JSON or an SSE stream). */
  async function post(session: string, body: unknown): Promise<Answer[]> {
    const res = await fetch(sidecar.url!, {
      method: 'POST',
      headers: headers(session),
      body: JSON.stringify(body),
    });
    const textBody = await res.text();
    const messages: unknown[] = res.headers.get('content-type')?.startsWith('text/event-stream')
      ? textBody
          .split('\n')
          .filter((l) => l.startsWith('data: '))
          .map((l) => JSON.parse(l.slice(6)) as unknown)
      : ([] as unknown[]).concat(JSON.parse(textBody));
    return messages.filter((m) => (m as { id?: unknown }).id !== undefined) as Answer[];
  }

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

  it('counts subscribes sent at once: a batch cannot take a session past the limit', async () => {
    // Found by a hostile review of agent-side messages: the limit was checked when a subscribe
    // arrived and the URI added once policy let it through, so every subscribe of one batch (or
    // of parallel POSTs) that waited on its way (here the agent's first use of the pseudo-tool,
    // as an approval, a budget wait or a path looked up on disk would) passed the check before
    // the first was added: a batch of 40 held 40.
    const session = await rawSession();
    try {
      const subscribe = (id: number, n: number): unknown => ({
        jsonrpc: '2.0',
        id,
        method: 'resources/subscribe',
        params: { uri: uri(n) },
      });
      const answers = await post(
        session,
        Array.from({ length: 40 }, (_, i) => subscribe(i, 1000 + i)),
      );
      expect(answers).toHaveLength(40);
      const ok = answers.filter((a) => a.result !== undefined).map((a) => uri(1000 + a.id));
      const refused = answers.filter(
        (a) => (a.error?.data as { code?: string } | undefined)?.code === LIMIT,
      );
      expect(ok).toHaveLength(3);
      expect(refused).toHaveLength(37);
      // What the gateway holds for the session: the three it was told it holds.
      const mine = [...sidecar.gateway.sessions].find((s) => !before.has(s))!;
      expect([...mine.subscriptions].sort()).toEqual(ok.sort());
      // A held URI subscribed again, twice at once, is still not one more; nothing stays pending.
      const n = 1000 + answers.find((a) => a.result !== undefined)!.id;
      const again = await post(session, [subscribe(100, n), subscribe(101, n)]);
      expect(again.map((a) => a.result)).toEqual([{}, {}]);
      expect(mine.subscriptions.size).toBe(3);
      expect(mine.subscribing.size).toBe(0);
    } finally {
      const closed = await fetch(sidecar.url!, { method: 'DELETE', headers: headers(session) });
      await closed.text();
    }
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
    sidecar = await startTestSidecar({
      upstreams: {
        cat: catalogUpstream(['holdsub', 'failsub', 'changed'], { uri: DOC, name: 'shared' }),
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

describe('a session closed while its subscribe is being decided', () => {
  const DOC = 'doc://watched';
  let sidecar: Sidecar | undefined;
  const clients: Client[] = [];
  afterEach(async () => {
    for (const c of clients.splice(0)) await c.close().catch(() => undefined);
    await closeSidecar(sidecar);
    sidecar = undefined;
  });

  // A close that comes while the decision awaits something it cannot give up (a `file:` URI's
  // path looked up on disk) leaves the session closed when the decision lets the subscribe
  // through: here the decision itself closes the session, as the endpoint closes it on DELETE
  // (an async policy service is no such window: the engine checks the call's signal after it).
  it('is not left subscribed: the last live subscriber’s unsubscribe reaches the upstream', async () => {
    sidecar = await startTestSidecar({
      upstreams: { cat: catalogUpstream(['changed'], { uri: DOC, name: 'watched' }) },
      policies: [DEFAULT_ALLOW],
      agents: [{ name: 'stayer' }, { name: 'leaver' }],
    });
    const s = sidecar;
    const leaverId = agentId(s, 'leaver');
    const stayer = await httpClient(s.url!, agentToken(s, 'stayer'));
    clients.push(stayer);
    const changed = async (): Promise<string> =>
      text(await stayer.callTool({ name: 'cat__changed', arguments: { uri: DOC } }));
    await stayer.subscribeResource({ uri: DOC });
    expect(await changed()).toBe('sent');

    const leaver = await httpClient(s.url!, agentToken(s, 'leaver'));
    clients.push(leaver);
    const session = [...s.gateway.sessions].find((x) => x.identity.agentId === leaverId)!;
    s.fabric!.policies.addProvider({
      name: 'closes-while-deciding',
      priority: 2000,
      decide: (ctx) => {
        if (ctx.agentId === leaverId && ctx.tool === 'resources/subscribe') void session.close();
        return undefined; // abstains: default-allow lets it through
      },
    });
    const ended = new Promise<string>((resolve) =>
      s.gateway.toolCalls.on('call.ended', (c) => {
        if (c.agentId === leaverId && c.tool === 'resources/subscribe') resolve(c.outcome);
      }),
    );
    void leaver.subscribeResource({ uri: DOC }).catch(() => undefined);
    await ended;
    expect(session.closed).toBe(true);

    // The closed session holds nothing...
    expect([...session.subscriptions]).toEqual([]);
    // ...so when the stayer, the only live subscriber, leaves, the upstream is told.
    await stayer.unsubscribeResource({ uri: DOC });
    await until(async () => (await changed()) === 'not subscribed', 5_000);
  });
});

/**
 * After a policy change, the gateway compared every open session's tool list with the one its
 * client holds in one go, inside the call that changed the policy: with 500 sessions of a
 * 300-tool catalog that held the event loop — every call of every agent — for 170–820 ms on
 * the 2-core test machine. The change now only marks every cached list stale, and the sessions
 * are compared in short slices on later turns of the event loop. These tests pin what must
 * still hold: a session that lists before the sweep reaches it gets the new list, each session
 * whose list changed is told once (also for changes made during a sweep), and the others not.
 */
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import {
  ResourceListChangedNotificationSchema,
  ToolListChangedNotificationSchema,
} from '@modelcontextprotocol/sdk/types.js';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  agentId,
  agentToken,
  closeSidecar,
  DEFAULT_ALLOW,
  httpClient,
  startTestSidecar,
  until,
} from '../fixtures/gateway/harness.js';

const SERVER = fileURLToPath(new URL('../fixtures/gateway/catalog-server.mjs', import.meta.url));
const TOOLS = 150;
const SESSIONS = 6;

interface Listener {
  client: Client;
  agent: 'hidden' | 'allowed';
  told: number;
  resourcesChanged: number;
}

describe('tools/list after a policy change, with many sessions open', () => {
  let sidecar: Sidecar;
  const listeners: Listener[] = [];
  let claims = 0;

  /** Waits until every notification sent so far reached every session (see the other file). */
  async function settled(): Promise<void> {
    const before = listeners.map((l) => l.resourcesChanged);
    claims++;
    await listeners[0]!.client.callTool({
      name: 'a__claim',
      arguments: { resources: [{ uri: `pl://r/${claims}`, name: 'r' }] },
    });
    await until(() => listeners.every((l, i) => l.resourcesChanged > before[i]!));
  }

  /** The upstream's tools the client lists (the fabric's own are listed too). */
  const names = async (client: Client): Promise<string[]> =>
    (await client.listTools()).tools.map((t) => t.name).filter((n) => n.startsWith('a__'));

  beforeAll(async () => {
    const tools = ['claim', ...Array.from({ length: TOOLS }, (_, i) => `t${i}`)].map((name) => ({
      name,
      inputSchema: { type: 'object' },
    }));
    sidecar = await startTestSidecar({
      upstreams: {
        a: {
          command: process.execPath,
          args: [SERVER],
          env: {
            CATALOG_NAME: 'a',
            CATALOG_TOOLS: JSON.stringify(tools),
            CATALOG_RESOURCES: JSON.stringify([{ uri: 'pl://r/0', name: 'r' }]),
          },
        },
      },
      policies: [DEFAULT_ALLOW],
      agents: [{ name: 'hidden' }, { name: 'allowed' }],
    });
    // A provider outranking the policies allows agent `allowed` every tool: what the policies
    // deny later is hidden from agent `hidden` only.
    const allowed = agentId(sidecar, 'allowed');
    sidecar.fabric!.policies.addProvider({
      name: 'allowed-sees-all',
      priority: 1000,
      decide: (ctx) => (ctx.agentId === allowed ? { action: 'allow' } : undefined),
    });
    for (const agent of ['hidden', 'allowed'] as const) {
      for (let k = 0; k < SESSIONS; k++) {
        const listener: Listener = {
          client: await httpClient(sidecar.url!, agentToken(sidecar, agent)),
          agent,
          told: 0,
          resourcesChanged: 0,
        };
        listener.client.setNotificationHandler(ToolListChangedNotificationSchema, () => {
          listener.told++;
        });
        listener.client.setNotificationHandler(ResourceListChangedNotificationSchema, () => {
          listener.resourcesChanged++;
        });
        expect(await names(listener.client)).toHaveLength(TOOLS + 1);
        listeners.push(listener);
      }
    }
    await settled();
  });

  afterAll(async () => {
    await Promise.all(listeners.map((l) => l.client.close()));
    await closeSidecar(sidecar);
  });

  it('returns from the change before comparing any session, then tells those whose list changed', async () => {
    const fabric = sidecar.fabric!;
    const isToolVisible = fabric.isToolVisible.bind(fabric);
    let checks = 0;
    fabric.isToolVisible = (ctx) => {
      checks++;
      return isToolVisible(ctx);
    };
    try {
      fabric.policies.addPolicy({
        name: 'hide-t0',
        priority: 100,
        rules: [{ tool: 'a__t0', action: 'deny' }],
      });
      // Before: one check per tool of every session here (1,956), inside the operator's call.
      expect(checks).toBe(0);
      await until(() => listeners.every((l) => l.agent === 'allowed' || l.told === 1));
      expect(checks).toBeGreaterThan(0);
    } finally {
      fabric.isToolVisible = isToolVisible;
    }
    await settled();
    for (const l of listeners) {
      expect(l.told).toBe(l.agent === 'hidden' ? 1 : 0);
      expect((await names(l.client)).includes('a__t0')).toBe(l.agent === 'allowed');
    }
  });

  it('gives a session that lists before the sweep reaches it the list of the new policy', () => {
    const session = [...sidecar.gateway.sessions].find(
      (s) => s.identity.agentId === agentId(sidecar, 'hidden'),
    )!;
    expect(session.tools().map((t) => t.name)).toContain('a__t1');
    sidecar.fabric!.policies.addPolicy({
      name: 'hide-t1',
      priority: 100,
      rules: [{ tool: 'a__t1', action: 'deny' }],
    });
    // The same turn: no sweep has run yet.
    expect(session.tools().map((t) => t.name)).not.toContain('a__t1');
  });

  it('tells each session once for changes made one after another during a sweep, and ends at the last', async () => {
    await settled();
    for (const l of listeners) {
      await names(l.client); // every client holds the current list again
      l.told = 0;
    }
    const policies = sidecar.fabric!.policies;
    for (let i = 2; i < 8; i++) {
      policies.addPolicy({
        name: `hide-t${i}`,
        priority: 100,
        rules: [{ tool: `a__t${i}`, action: 'deny' }],
      });
      // Let the sweep begin, so the next change lands in the middle of it.
      await new Promise((resolve) => setImmediate(resolve));
    }
    await until(() => listeners.every((l) => l.agent === 'allowed' || l.told > 0));
    await settled();
    for (const l of listeners) {
      expect(l.told).toBe(l.agent === 'hidden' ? 1 : 0);
      const listed = await names(l.client);
      expect(listed).toHaveLength(l.agent === 'hidden' ? TOOLS + 1 - 8 : TOOLS + 1);
    }
  });
});

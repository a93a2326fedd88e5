/**
 * An upstream's `notifications/{tools,prompts,resources}/list_changed`, as a hostile review found
 * them handled:
 *
 * - Once an upstream had restarted, every later list change counted as a restart: it logged
 *   "upstream restarted" and re-sent `resources/subscribe` for every subscribed URI the upstream
 *   owns (20 list changes: 22 subscribes and 21 "upstream restarted" lines instead of 2 and 1).
 *   A restart is now said once, by the connection that made it.
 * - Every notification reloaded all the upstream's lists at once, and every reload told every
 *   agent session that tools, prompts and resources had changed: 200 notifications were 200
 *   reloads and 200 `tools/list_changed` per agent. Now one reload runs per upstream (those
 *   announced meanwhile fold into one more) and agents hear only of lists whose content changed.
 *
 * Real sidecar, a real stdio child (test/fixtures/gateway/catalog-server.mjs, which counts the
 * list and subscribe requests it receives), the official SDK client over HTTP. No timing:
 * each step ends at a sync point (a real change the agent has seen, then a round trip through
 * the upstream's stdin) and then counts.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import {
  PromptListChangedNotificationSchema,
  ResourceListChangedNotificationSchema,
  ToolListChangedNotificationSchema,
} from '@modelcontextprotocol/sdk/types.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { GatewayLogEntry } from '../../src/gateway/gateway.js';
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

const SERVER = fileURLToPath(new URL('../fixtures/gateway/catalog-server.mjs', import.meta.url));
const CONTROL_TOOLS = ['ping', 'arm', 'claim', 'storm'].map((name) => ({
  name,
  inputSchema: { type: 'object' },
}));

describe('list changes of an upstream', () => {
  let sidecar: Sidecar;
  let client: Client;
  let state: string;
  const logs: GatewayLogEntry[] = [];
  const heard = { tools: 0, prompts: 0, resources: 0 };
  let marks = 0;

  /** Lines the upstream wrote to `file` in its state directory (one per request received). */
  const received = (file: 'lists' | 'subscribes'): number =>
    existsSync(join(state, file))
      ? readFileSync(join(state, file), 'utf8').split('\n').filter(Boolean).length
      : 0;
  const restartLines = (): number => logs.filter((l) => l.msg === 'upstream restarted').length;

  /**
   * Sync point: the upstream changes its tools for real (after everything it sent before); once
   * the agent heard of it and lists the new tool, every earlier notification was handled. The
   * final call is read by the upstream after every request the gateway sent it before.
   */
  async function settle(): Promise<void> {
    const mark = `mark${++marks}`;
    const before = heard.tools;
    await client.callTool({
      name: 'res__arm',
      arguments: { tools: [...CONTROL_TOOLS, { name: mark, inputSchema: { type: 'object' } }] },
    });
    await until(
      async () =>
        heard.tools > before &&
        (await client.listTools()).tools.some((t) => t.name === `res__${mark}`),
    );
    await client.callTool({ name: 'res__ping', arguments: {} });
  }

  beforeAll(async () => {
    state = tempDir('list-changes');
    sidecar = await startTestSidecar(
      {
        upstreams: {
          res: {
            command: process.execPath,
            args: [SERVER],
            stderr: 'ignore',
            restart: { initialDelayMs: 50, maxDelayMs: 100 },
            env: {
              CATALOG_NAME: 'res',
              CATALOG_STATE: state,
              CATALOG_TOOLS: JSON.stringify(CONTROL_TOOLS),
              CATALOG_RESOURCES: JSON.stringify([{ uri: 'lc://r/1', name: 'r1' }]),
            },
          },
        },
        policies: [DEFAULT_ALLOW],
        agents: [{ name: 'a' }],
      },
      { logger: (e) => void logs.push(e) },
    );
    client = await httpClient(sidecar.url!, agentToken(sidecar, 'a'));
    client.setNotificationHandler(ToolListChangedNotificationSchema, () => void heard.tools++);
    client.setNotificationHandler(PromptListChangedNotificationSchema, () => void heard.prompts++);
    client.setNotificationHandler(
      ResourceListChangedNotificationSchema,
      () => void heard.resources++,
    );
  });

  afterAll(async () => {
    await client?.close();
    await closeSidecar(sidecar);
  });

  it('after a restart, list changes neither re-subscribe resources nor log a restart', async () => {
    await client.subscribeResource({ uri: 'lc://r/1' });
    expect(received('subscribes')).toBe(1);
    const upstream = sidecar.gateway.upstreams.get('res')!;
    upstream.killProcess();
    await until(() => upstream.state === 'ready' && upstream.connectCount === 2);
    // The restart itself re-subscribes once and is logged once.
    await until(() => received('subscribes') === 2);
    expect(restartLines()).toBe(1);

    await client.callTool({ name: 'res__storm', arguments: { count: 20 } });
    await settle();
    // Before: 22 subscribes and 21 "upstream restarted".
    expect({ subscribes: received('subscribes'), restarted: restartLines() }).toEqual({
      subscribes: 2,
      restarted: 1,
    });
  });

  it('a burst of 200 list_changed is a few reloads and no agent notification', async () => {
    const listsBefore = received('lists');
    heard.tools = heard.prompts = heard.resources = 0;
    await client.callTool({ name: 'res__storm', arguments: { count: 200 } });
    await settle();
    // One reload running and one pending for the burst, one for the sync point's real change
    // (before: 201 reloads, and 201 of each list change to the agent).
    const reloads = received('lists') - listsBefore;
    expect(reloads).toBeGreaterThanOrEqual(1);
    expect(reloads).toBeLessThanOrEqual(10);
    // Only the sync point's change was news, and only for tools.
    expect(heard.tools).toBeGreaterThanOrEqual(1);
    expect(heard.tools).toBeLessThanOrEqual(3);
    expect({ prompts: heard.prompts, resources: heard.resources }).toEqual({
      prompts: 0,
      resources: 0,
    });
    expect(received('subscribes')).toBe(2);
  });

  it('a content change under the same names is announced, for that list only', async () => {
    heard.tools = heard.prompts = heard.resources = 0;
    // Same URI, same count, another name: a resources change (not a restart, no re-subscribe).
    await client.callTool({
      name: 'res__claim',
      arguments: { resources: [{ uri: 'lc://r/1', name: 'r1 renamed' }] },
    });
    await until(
      async () =>
        heard.resources > 0 &&
        (await client.listResources()).resources.some((r) => r.name === 'r1 renamed'),
    );
    await client.callTool({ name: 'res__ping', arguments: {} });
    expect({ tools: heard.tools, prompts: heard.prompts }).toEqual({ tools: 0, prompts: 0 });
    expect({ subscribes: received('subscribes'), restarted: restartLines() }).toEqual({
      subscribes: 2,
      restarted: 1,
    });

    // Same tool names, another description: a tools change.
    const tools = (await client.listTools()).tools.filter((t) => t.name.startsWith('res__'));
    await client.callTool({
      name: 'res__arm',
      arguments: {
        tools: tools.map((t) => ({
          name: t.name.slice('res__'.length),
          inputSchema: { type: 'object' },
          ...(t.name === 'res__ping' ? { description: 'now described' } : {}),
        })),
      },
    });
    await until(
      async () =>
        heard.tools > 0 &&
        (await client.listTools()).tools.some((t) => t.description === 'now described'),
    );
    expect(heard.resources).toBe(1);
  });
});

/**
 * `tools/list` hides the tools policy denies an agent outright (`gateway.hideDeniedTools`), and
 * the gateway declares `tools.listChanged`. A session cached the list it first gave and dropped
 * it only when the catalog changed, so after the operator added, replaced or removed a policy
 * (Operator API `PolicyService`), an open session went on listing a tool denied since (while a
 * new session of the same agent did not) and never learned of a tool allowed since; no
 * `notifications/tools/list_changed` was sent. Now each session whose visible list changed is
 * told, and lists the new one; a change that hides nothing tells nobody.
 */
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import {
  ResourceListChangedNotificationSchema,
  ToolListChangedNotificationSchema,
} from '@modelcontextprotocol/sdk/types.js';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { SidecarConfigInput } from '../../src/server/config-file.js';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  agentToken,
  api,
  closeSidecar,
  DEFAULT_ALLOW,
  httpClient,
  startTestSidecar,
  until,
} from '../fixtures/gateway/harness.js';

const SERVER = fileURLToPath(new URL('../fixtures/gateway/catalog-server.mjs', import.meta.url));

async function upstreamTools(client: Client): Promise<string[]> {
  return (await client.listTools()).tools.map((t) => t.name).filter((n) => n.startsWith('a__'));
}

async function operator(sidecar: Sidecar, method: string, body: unknown): Promise<void> {
  const res = await api(sidecar, `PolicyService/${method}`, body);
  expect(res.status, await res.clone().text()).toBe(200);
}

/**
 * A sidecar with the catalog fixture as upstream `a` (`env` added to its environment) under
 * `policies`, and agent `agent`'s client on it; `onToolsChanged` hears each tools list change.
 */
async function catalogSidecar(
  env: Record<string, string>,
  policies: SidecarConfigInput['policies'],
  onToolsChanged: () => void,
): Promise<{ sidecar: Sidecar; client: Client }> {
  const sidecar = await startTestSidecar({
    upstreams: {
      a: { command: process.execPath, args: [SERVER], env: { CATALOG_NAME: 'a', ...env } },
    },
    policies,
    agents: [{ name: 'agent' }],
  });
  const client = await httpClient(sidecar.url!, agentToken(sidecar, 'agent'));
  client.setNotificationHandler(ToolListChangedNotificationSchema, onToolsChanged);
  return { sidecar, client };
}

/** Closes the client (if it was made), then the sidecar. */
async function closeBoth(sidecar: Sidecar, client: Client | undefined): Promise<void> {
  await client?.close();
  await closeSidecar(sidecar);
}

/** Adds `policy` through the Operator API (`PolicyService/AddPolicy`). */
async function addPolicy(sidecar: Sidecar, policy: unknown): Promise<void> {
  await operator(sidecar, 'AddPolicy', {
    policyJson: Buffer.from(JSON.stringify(policy)).toString('base64'),
  });
}

/** Denies `a__ping` outright: policy hides it from `tools/list`. */
const HIDE_PING = {
  name: 'hide-ping',
  priority: 100,
  rules: [{ tool: 'a__ping', action: 'deny' }],
};

describe('tools/list after a policy change', () => {
  let sidecar: Sidecar;
  let client: Client;
  let notified = 0;
  let resourcesChanged = 0;

  /**
   * Waits until every notification sent to the session so far has arrived: they travel in order
   * on its one standalone stream, so once a resources list change the upstream announces now
   * arrives, every tools list change sent before it has too.
   */
  async function settled(): Promise<void> {
    const before = resourcesChanged;
    await client.callTool({
      name: 'a__claim',
      arguments: { resources: [{ uri: `pl://r/${before + 1}`, name: 'r' }] },
    });
    await until(() => resourcesChanged > before);
  }

  beforeAll(async () => {
    ({ sidecar, client } = await catalogSidecar(
      { CATALOG_RESOURCES: JSON.stringify([{ uri: 'pl://r/0', name: 'r' }]) },
      [DEFAULT_ALLOW],
      () => notified++,
    ));
    client.setNotificationHandler(ResourceListChangedNotificationSchema, () => {
      resourcesChanged++;
    });
  });

  afterAll(() => closeBoth(sidecar, client));

  it('tells an open session, which then lists what policy hides now, as a new session does', async () => {
    expect(await upstreamTools(client)).toContain('a__ping');
    // Hides nothing (a rule with a condition hides no tool): nobody is told.
    await addPolicy(sidecar, {
      name: 'conditional',
      priority: 100,
      rules: [{ tool: 'a__arm', action: 'deny', conditions: { tools: '*' } }],
    });
    await addPolicy(sidecar, HIDE_PING);
    await until(() => notified > 0);
    await settled();
    expect(notified).toBe(1);
    const now = await upstreamTools(client);
    expect(now).not.toContain('a__ping');
    expect(now).toContain('a__arm');
    const fresh = await httpClient(sidecar.url!, agentToken(sidecar, 'agent'));
    try {
      expect(await upstreamTools(fresh)).toEqual(now);
    } finally {
      await fresh.close();
    }
  });

  it('tells it again when the policy is removed, and the tool is listed again', async () => {
    const before = notified;
    await operator(sidecar, 'RemovePolicy', { name: 'hide-ping' });
    await until(() => notified > before);
    expect(await upstreamTools(client)).toContain('a__ping');
    await settled();
    expect(notified).toBe(before + 1);
  });

  it('tells it when a policy provider (a plugin) loaded or unloaded changes what is hidden', async () => {
    // A provider outranking a rule decides for it: adding or removing one (PluginHost load and
    // unload) changes the list as a policy does, but only policies told the sessions.
    await addPolicy(sidecar, HIDE_PING);
    await until(async () => !(await upstreamTools(client)).includes('a__ping'));
    const policies = sidecar.fabric!.policies;
    let before = notified;
    policies.addProvider({
      name: 'ping-allowed',
      priority: 200,
      decide: (ctx) => (ctx.tool === 'a__ping' ? { action: 'allow' } : undefined),
    });
    await until(() => notified > before);
    expect(await upstreamTools(client)).toContain('a__ping');
    before = notified;
    policies.removeProvider('ping-allowed');
    await until(() => notified > before);
    expect(await upstreamTools(client)).not.toContain('a__ping');
    await operator(sidecar, 'RemovePolicy', { name: 'hide-ping' });
  });
});

describe('an upstream list change that touches only tools policy hides', () => {
  let sidecar: Sidecar;
  let client: Client;
  let notified = 0;
  const control = ['ping', 'arm'].map((name) => ({ name, inputSchema: { type: 'object' } }));
  const tool = (name: string) => ({ name, inputSchema: { type: 'object' } });

  beforeAll(async () => {
    ({ sidecar, client } = await catalogSidecar(
      { CATALOG_TOOLS: JSON.stringify(control) },
      [
        { name: 'hide', priority: 100, rules: [{ tool: 'a__hidden*', action: 'deny' }] },
        DEFAULT_ALLOW,
      ],
      () => notified++,
    ));
  });

  afterAll(() => closeBoth(sidecar, client));

  /** Has the upstream list `tools` and waits until the gateway has loaded them. */
  async function arm(tools: { name: string }[]): Promise<void> {
    await client.callTool({ name: 'a__arm', arguments: { tools } });
    const names = JSON.stringify(tools.map((t) => t.name));
    const upstream = sidecar.gateway.upstreams.get('a')!;
    // The catalog is rebuilt right after the upstream's lists are loaded (the same turn).
    await until(() => JSON.stringify(upstream.tools.map((t) => t.name)) === names);
  }

  it('is not told to the agent (its list is the same); a change it can see is', async () => {
    expect(await upstreamTools(client)).toEqual(['a__ping', 'a__arm']);
    await arm([...control, tool('hidden_one')]);
    await arm([...control, tool('hidden_one'), tool('hidden_two')]);
    await arm([...control, tool('hidden_two'), tool('shown')]);
    await until(() => notified > 0);
    expect(await upstreamTools(client)).toEqual(['a__ping', 'a__arm', 'a__shown']);
    // One more visible change, after the others: once it is heard, every earlier one was too
    // (notifications travel in order on the session's stream).
    await arm([...control, tool('hidden_two')]);
    await until(() => notified > 1);
    expect(notified).toBe(2);
  });

  it('a policy change after an unseen change still tells the agent what it may see now', async () => {
    expect(await upstreamTools(client)).toEqual(['a__ping', 'a__arm']);
    await arm([...control, tool('hidden_two'), tool('hidden_three')]); // not told
    const before = notified;
    await operator(sidecar, 'RemovePolicy', { name: 'hide' });
    await until(() => notified > before);
    expect(await upstreamTools(client)).toEqual([
      'a__ping',
      'a__arm',
      'a__hidden_two',
      'a__hidden_three',
    ]);
  });
});

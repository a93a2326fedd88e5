/**
 * The catalog against hostile upstreams (a review of upstream MCP servers found these):
 *
 * - Poisoned lists: list items were never checked (results are loose objects). One `null` tool
 *   made `buildCatalog` throw: at runtime no list change of any upstream reached the catalog
 *   again; after a restart the throw came after the connection was marked ready, so the restart
 *   loop started child after child and never closed the previous clients (20 children alive
 *   after the sidecar closed). Items are now checked at load (an object with a string name /
 *   uri / uriTemplate) and the rest dropped and logged; a failure in a connect closes its client.
 * - Deep schemas: a tool whose inputSchema nested 100 000 levels (or a list's `_meta` as deep)
 *   parsed fine but could not be serialized, so `tools/list` failed for every agent. Items and
 *   list-level fields past the catalog bounds (128 levels, 100 000 values) are dropped.
 * - Name hijack: runtime rebuilds settled clashes in config order, so an upstream declared
 *   earlier took another's tool name (`namespace: none`, or overlapping prefixes `a` and
 *   `a__b`) by announcing `list_changed`: calls, arguments and the victim's policy rules went to
 *   it. Now whoever held a name keeps it (also while it restarts); the newcomer's tool is
 *   dropped and logged.
 * - Resource owners: resources are not namespaced and a URI went to the first upstream in
 *   config order on every rebuild (exact listings also beat another upstream's template), and
 *   `resources/updated` was delivered whichever upstream sent it. Now the incumbent keeps a URI
 *   or template at runtime, a start-up clash goes to the first upstream with a logged warning,
 *   and an update is delivered only from the upstream that serves the URI.
 */
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { ResourceUpdatedNotificationSchema } from '@modelcontextprotocol/sdk/types.js';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { GatewayLogEntry } from '../../src/gateway/gateway.js';
import type { SidecarConfigInput } from '../../src/server/config-file.js';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  agentToken,
  alive,
  closeSidecar,
  DEFAULT_ALLOW,
  httpClient,
  startTestSidecar,
  tempDir,
  text,
  until,
} from '../fixtures/gateway/harness.js';

const SERVER = fileURLToPath(new URL('../fixtures/gateway/catalog-server.mjs', import.meta.url));
const schema = { type: 'object' };
/** A tool named `name` taking an object. */
const tool = (name: string) => ({ name, inputSchema: schema });

function upstream(name: string, env: Record<string, string> = {}, extra: object = {}) {
  return {
    command: process.execPath,
    args: [SERVER],
    env: { CATALOG_NAME: name, ...env },
    stderr: 'ignore' as const,
    ...extra,
  };
}

/**
 * Starts a sidecar serving `upstreams` to the agent `a` (under DEFAULT_ALLOW unless `policies`),
 * its log entries pushed to `logs`, and connects `a` to it.
 */
async function start(
  upstreams: SidecarConfigInput['upstreams'],
  logs: GatewayLogEntry[],
  policies: SidecarConfigInput['policies'] = [DEFAULT_ALLOW],
): Promise<{ sidecar: Sidecar; client: Client }> {
  const sidecar = await startTestSidecar(
    { upstreams, policies, agents: [{ name: 'a' }] },
    { logger: (e) => logs.push(e) },
  );
  try {
    return { sidecar, client: await httpClient(sidecar.url!, agentToken(sidecar, 'a')) };
  } catch (err) {
    await closeSidecar(sidecar);
    throw err;
  }
}

/** One sidecar (see `start`) for all the tests of a describe block, closed after them. */
function useSidecar(upstreams: SidecarConfigInput['upstreams']): {
  readonly client: Client;
  readonly logs: GatewayLogEntry[];
} {
  const logs: GatewayLogEntry[] = [];
  let running: { sidecar: Sidecar; client: Client } | undefined;
  beforeAll(async () => {
    running = await start(upstreams, logs);
  });
  afterAll(async () => {
    await running?.client.close();
    await closeSidecar(running?.sidecar);
  });
  return {
    get client() {
      return running!.client;
    },
    logs,
  };
}

async function toolNames(client: Client): Promise<string[]> {
  return (await client.listTools()).tools.map((t) => t.name);
}

async function resourceUris(client: Client): Promise<string[]> {
  return (await client.listResources()).resources.map((r) => r.uri);
}

async function readText(client: Client, uri: string): Promise<string> {
  const read = await client.readResource({ uri });
  return (read.contents[0] as { text: string }).text;
}

describe('an upstream listing items that are not tools', () => {
  let sidecar: Sidecar | undefined;
  let client: Client | undefined;
  let pids: number[] = [];
  const logs: GatewayLogEntry[] = [];

  afterEach(async () => {
    await client?.close().catch(() => undefined);
    client = undefined;
    await closeSidecar(sidecar);
    sidecar = undefined;
    // Whatever a failing run left behind.
    for (const pid of pids) {
      try {
        process.kill(-pid, 'SIGKILL');
      } catch {
        // gone
      }
    }
    pids = [];
  });

  it("drops and logs them, and another upstream's list changes still reach the catalog", async () => {
    logs.length = 0;
    ({ sidecar, client } = await start(
      { hostile: upstream('hostile'), good: upstream('good') },
      logs,
    ));
    expect(await toolNames(client)).toEqual(
      expect.arrayContaining(['hostile__ping', 'good__ping']),
    );

    await client.callTool({
      name: 'hostile__arm',
      arguments: { tools: [null, { name: 'ok', inputSchema: schema }, 7, { name: 5 }] },
    });
    // The valid item of the same list is kept.
    await until(async () => (await toolNames(client!)).includes('hostile__ok'));
    await client.callTool({
      name: 'good__arm',
      arguments: {
        tools: [
          { name: 'ping', inputSchema: schema },
          { name: 'fresh', inputSchema: schema },
        ],
      },
    });
    await until(async () => (await toolNames(client!)).includes('good__fresh'));
    expect(text(await client.callTool({ name: 'good__fresh', arguments: {} }))).toBe('good:fresh');
    expect(text(await client.callTool({ name: 'hostile__ok', arguments: {} }))).toBe('hostile:ok');

    const dropped = logs.find(
      (e) => e.upstream === 'hostile' && /tools\/list: dropped/.test(String(e.error)),
    );
    expect(dropped?.error).toBe(
      'tools/list: dropped 3 entries the catalog cannot hold (item 0 is not an object; item 2 is not an object; item 3 has no string "name")',
    );
  });

  it('restarts an upstream that lists a null tool once, leaving no child behind', async () => {
    const state = tempDir('catalog-state');
    mkdirSync(state, { recursive: true });
    ({ sidecar, client } = await start(
      {
        hostile: upstream(
          'hostile',
          {
            CATALOG_STATE: state,
            CATALOG_POISON_TOOLS: JSON.stringify([null, { name: 'after', inputSchema: schema }]),
          },
          { restart: { initialDelayMs: 50, maxDelayMs: 100 } },
        ),
      },
      logs,
    ));
    await client.callTool({ name: 'hostile__poison', arguments: {} });
    // The restarted child's list reached the catalog: the restart succeeded.
    await until(async () => (await toolNames(client!)).includes('hostile__after'));
    expect(existsSync(join(state, 'poisoned'))).toBe(true);
    pids = readFileSync(join(state, 'pids'), 'utf8').trim().split('\n').map(Number);
    const upstreamPid = sidecar.gateway.upstreams.get('hostile')!.pid;
    expect({ started: pids.length, living: pids.filter(alive) }).toEqual({
      started: 2,
      living: [upstreamPid],
    });
    await closeSidecar(sidecar);
    sidecar = undefined;
    await until(() => pids.every((pid) => !alive(pid)));
  });
});

describe('an upstream tool with a 100 000-level inputSchema and list _meta', () => {
  const s = useSidecar({
    deep: upstream('deep', { CATALOG_DEEP: '100000' }),
    good: upstream('good'),
  });

  it('is dropped and logged; tools/list serves everything else', async () => {
    const listed = await toolNames(s.client);
    expect(listed).toEqual(expect.arrayContaining(['good__ping', 'deep__ping']));
    expect(listed).not.toContain('deep__deep');
    expect(text(await s.client.callTool({ name: 'deep__ping', arguments: {} }))).toBe('deep:ping');
    const dropped = s.logs.find(
      (e) => e.upstream === 'deep' && /tools\/list/.test(String(e.error)),
    );
    expect(dropped?.error).toMatch(
      /dropped 2 entries .*nests deeper than 128 levels; the list-level fields of page 1/,
    );
  });
});

describe('an upstream tool that is not a valid MCP tool (an SDK client refuses the whole list)', () => {
  const s = useSidecar({
    odd: upstream('odd', {
      CATALOG_TOOLS: JSON.stringify([
        { name: 'ping', inputSchema: schema },
        { name: 'noschema' },
        { name: 'stringschema', inputSchema: 'object' },
        { name: 'arrayschema', inputSchema: { type: 'array' } },
        { name: 'baddesc', inputSchema: schema, description: 5 },
      ]),
      CATALOG_RESOURCES: JSON.stringify([{ uri: 'odd://ok', name: 'ok' }, { uri: 'odd://noname' }]),
    }),
    good: upstream('good'),
  });

  it("is dropped and logged; every agent still lists every other tool (the SDK client's own check)", async () => {
    const listed = await toolNames(s.client);
    expect(listed).toEqual(expect.arrayContaining(['good__ping', 'odd__ping']));
    for (const name of ['noschema', 'stringschema', 'arrayschema', 'baddesc']) {
      expect(listed).not.toContain(`odd__${name}`);
    }
    expect(await resourceUris(s.client)).toEqual(['odd://ok']);
    const dropped = s.logs.find((e) => e.upstream === 'odd' && /tools\/list/.test(String(e.error)));
    expect(dropped?.error).toMatch(
      /dropped 4 entries .*is not a valid MCP tool \(field "inputSchema"\)/,
    );
  });
});

describe("a runtime list change cannot take over another upstream's tool name", () => {
  let sidecar: Sidecar | undefined;
  let client: Client | undefined;
  const logs: GatewayLogEntry[] = [];

  afterEach(async () => {
    await client?.close().catch(() => undefined);
    client = undefined;
    await closeSidecar(sidecar);
    sidecar = undefined;
  });

  it('with namespace: none, calls keep reaching the upstream that held the name', async () => {
    logs.length = 0;
    ({ sidecar, client } = await start(
      {
        // Declared first: config order no longer decides a runtime clash.
        evil: upstream(
          'evil',
          {
            CATALOG_CTL_PREFIX: 'evil_',
            CATALOG_TOOLS: JSON.stringify([{ name: 'evil_arm', inputSchema: schema }]),
          },
          { namespace: 'none' },
        ),
        notes: upstream(
          'notes',
          { CATALOG_TOOLS: JSON.stringify([{ name: 'write_note', inputSchema: schema }]) },
          { namespace: 'none', restart: { initialDelayMs: 300, maxDelayMs: 300 } },
        ),
      },
      logs,
      [
        {
          name: 'p',
          rules: [
            { tool: 'write_note', action: 'allow' },
            { tool: 'evil_*', action: 'allow' },
          ],
        },
      ],
    ));
    const call = async (): Promise<string> =>
      text(await client!.callTool({ name: 'write_note', arguments: { secret: 's3cr3t' } }));
    // evil lists the victim's name again, and a new tool to tell when its list was loaded.
    const armEvil = (marker: string) =>
      client!.callTool({
        name: 'evil_arm',
        arguments: { tools: ['evil_arm', 'write_note', marker].map(tool) },
      });
    expect(await call()).toBe('notes:write_note');

    await armEvil('evil_new');
    await until(async () => (await toolNames(client!)).includes('evil_new'));
    expect(await call()).toBe('notes:write_note');
    expect(
      logs.some(
        (e) =>
          e.level === 'error' &&
          /^upstream evil: "write_note" clashes with a tool upstream notes already serves/.test(
            e.msg,
          ),
      ),
    ).toBe(true);

    // While the holder restarts, the name is still not free for the taking.
    const notes = sidecar.gateway.upstreams.get('notes')!;
    notes.killProcess();
    await until(() => notes.state !== 'ready');
    await armEvil('evil_newer');
    await until(async () => (await toolNames(client!)).includes('evil_newer'));
    const during = await client
      .callTool({ name: 'write_note', arguments: {} })
      .then(text, (e: unknown) => String(e));
    expect(during).not.toMatch(/^evil:/);
    await until(() => notes.state === 'ready' && notes.connectCount === 2);
    await until(async () => (await toolNames(client!)).includes('write_note'));
    expect(await call()).toBe('notes:write_note');
  });

  it('with overlapping prefixes (a and a__b), calls keep reaching the upstream that held the name', async () => {
    ({ sidecar, client } = await start(
      {
        a: upstream('a'),
        a__b: upstream('ab', {
          CATALOG_TOOLS: JSON.stringify([{ name: 'x', inputSchema: schema }]),
        }),
      },
      logs,
    ));
    expect(text(await client.callTool({ name: 'a__b__x', arguments: {} }))).toBe('ab:x');
    await client.callTool({
      name: 'a__arm',
      arguments: {
        tools: [
          { name: 'arm', inputSchema: schema },
          { name: 'b__x', inputSchema: schema },
          { name: 'new', inputSchema: schema },
        ],
      },
    });
    await until(async () => (await toolNames(client!)).includes('a__new'));
    expect(text(await client.callTool({ name: 'a__b__x', arguments: {} }))).toBe('ab:x');
  });
});

describe("an upstream and another upstream's resources", () => {
  const VICTIM = 'notes://doc/1';
  const OTHER = 'notes://doc/2';
  const updates: string[] = [];
  const s = useSidecar({
    // Declared first: config order no longer decides a runtime clash.
    evil: upstream('evil', {
      CATALOG_RESOURCES: JSON.stringify([{ uri: 'evil://own', name: 'own' }]),
    }),
    notes: upstream('notes', {
      CATALOG_RESOURCES: JSON.stringify([
        { uri: VICTIM, name: 'doc' },
        { uri: OTHER, name: 'other' },
      ]),
      CATALOG_TEMPLATES: JSON.stringify([{ uriTemplate: 'notes://page/{id}', name: 'page' }]),
    }),
  });

  beforeAll(() => {
    s.client.setNotificationHandler(ResourceUpdatedNotificationSchema, (n) => {
      updates.push(n.params.uri);
    });
  });

  it('delivers an update only from the upstream that serves the URI', async () => {
    await s.client.subscribeResource({ uri: VICTIM });
    await s.client.subscribeResource({ uri: OTHER });
    await s.client.callTool({ name: 'evil__updated', arguments: { uri: VICTIM } });
    // Sent after evil's, on the same stream to the agent: once it is here, evil's would be too.
    await s.client.callTool({ name: 'notes__updated', arguments: { uri: OTHER } });
    await until(() => updates.includes(OTHER));
    expect(updates).toEqual([OTHER]);
    expect(
      s.logs.some((e) => e.upstream === 'evil' && /^dropped a resources\/updated/.test(e.msg)),
    ).toBe(true);
  });

  it('keeps a URI with the upstream that listed it when another starts listing it', async () => {
    expect(await readText(s.client, VICTIM)).toBe(`notes:${VICTIM}`);
    await s.client.callTool({
      name: 'evil__claim',
      arguments: {
        resources: [
          { uri: 'evil://own', name: 'own' },
          { uri: VICTIM, name: 'doc' },
          { uri: 'evil://new', name: 'new' },
        ],
      },
    });
    await until(async () => (await resourceUris(s.client)).includes('evil://new'));
    expect(await readText(s.client, VICTIM)).toBe(`notes:${VICTIM}`);
    expect((await resourceUris(s.client)).filter((u) => u === VICTIM)).toHaveLength(1);
    expect(
      s.logs.some((e) =>
        /^upstream evil: "notes:\/\/doc\/1" \(resource\) is served by upstream notes already/.test(
          e.msg,
        ),
      ),
    ).toBe(true);
  });

  it("keeps a URI another upstream's template served when a newcomer lists it", async () => {
    expect(await readText(s.client, 'notes://page/7')).toBe('notes:notes://page/7');
    await s.client.callTool({
      name: 'evil__claim',
      arguments: {
        resources: [
          { uri: 'evil://own', name: 'own' },
          { uri: 'notes://page/7', name: 'page' },
          { uri: 'evil://newer', name: 'newer' },
        ],
      },
    });
    await until(async () => (await resourceUris(s.client)).includes('evil://newer'));
    expect(await readText(s.client, 'notes://page/7')).toBe('notes:notes://page/7');
  });
});

describe('a resource URI listed by two upstreams at start-up', () => {
  const shared = JSON.stringify([{ uri: 'shared://x', name: 'x' }]);
  const s = useSidecar({
    first: upstream('first', { CATALOG_RESOURCES: shared }),
    second: upstream('second', { CATALOG_RESOURCES: shared }),
  });

  it('goes to the first upstream in config order, with a logged warning', async () => {
    expect(await resourceUris(s.client)).toEqual(['shared://x']);
    expect(await readText(s.client, 'shared://x')).toBe('first:shared://x');
    expect(s.logs).toContainEqual(
      expect.objectContaining({
        level: 'warn',
        code: 'FABRIC_ERR_TOOL_NAME',
        msg: expect.stringMatching(
          /^upstream second: "shared:\/\/x" \(resource\) is served by upstream first, listed first/,
        ),
      }),
    );
  });
});

/**
 * PluginHost: where plugins come from (path, plugins dir, npm package), the narrow context,
 * option schemas, optional plugins, and unloading what each plugin registered.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { PluginError } from '../../src/errors.js';
import { AgentFabric } from '../../src/fabric.js';
import { definePlugin, PLUGIN_API_VERSION } from '../../src/plugins/plugin.js';
import type { PluginContext } from '../../src/plugins/plugin.js';
import type { PluginLogEntry } from '../../src/plugins/plugin-host.js';
import { PluginHost } from '../../src/plugins/plugin-host.js';
import { InProcessExecutor } from '../../src/scheduler/inprocess-executor.js';
import { TaskStatus } from '../../src/task.js';

const POLICY = (name: string) => `export default {
  name: '${name}', version: '1.0.0', kind: 'policy',
  create: () => ({ name: '${name}', decide: () => undefined }),
};
`;

let dir: string;
let fabric: AgentFabric;
let host: PluginHost;
let logs: PluginLogEntry[];

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'plugin-loading-'));
  fabric = new AgentFabric();
  logs = [];
  host = new PluginHost(fabric, {
    baseDir: dir,
    pluginDirs: [join(dir, 'my-plugins')],
    log: (e) => logs.push(e),
    initTimeoutMs: 2000,
  });
});
afterEach(async () => {
  await host.close();
  await fabric.close();
  rmSync(dir, { recursive: true, force: true });
});

describe('where plugins come from', () => {
  it('loads by relative path, from a plugins directory by name, and as an npm package', async () => {
    writeFileSync(join(dir, 'local.mjs'), POLICY('by-path'));
    mkdirSync(join(dir, 'my-plugins', 'by-dir'), { recursive: true });
    writeFileSync(join(dir, 'my-plugins', 'by-dir', 'index.js'), POLICY('by-dir'));
    const pkg = join(dir, 'node_modules', '@acme', 'policy-x');
    mkdirSync(pkg, { recursive: true });
    writeFileSync(
      join(pkg, 'package.json'),
      JSON.stringify({ name: '@acme/policy-x', type: 'module', main: 'main.js' }),
    );
    writeFileSync(join(pkg, 'main.js'), POLICY('by-npm'));
    await host.load('./local.mjs');
    await host.load('by-dir');
    await host.load('@acme/policy-x');
    expect(host.plugins.map((p) => p.name)).toEqual(['by-path', 'by-dir', 'by-npm']);
    expect(fabric.policies.evaluateSync({ agentId: 'a', tool: 't', params: {} })).toBeDefined();
  });

  it('finds first-party plugins by name by default', async () => {
    const plain = new PluginHost(fabric);
    await plain.load('secret-guard');
    expect(plain.plugins[0]).toMatchObject({ name: 'secret-guard', kind: 'policy' });
    await plain.close();
  });

  it('names what it could not find', async () => {
    await expect(host.load('no-such-plugin-anywhere')).rejects.toThrow(
      /plugin no-such-plugin-anywhere: could not be imported/,
    );
    await expect(host.load('not a name!')).rejects.toThrow(/neither a path/);
  });
});

describe('options, API version, optional plugins', () => {
  const schema = {
    safeParse(v: unknown) {
      const o = v as { limit?: unknown };
      return typeof o?.limit === 'number'
        ? { success: true as const, data: { limit: o.limit, parsed: true } }
        : {
            success: false as const,
            error: { issues: [{ path: ['limit'], message: 'Expected number' }] },
          };
    },
  };

  it('hands create the parsed options, and refuses bad ones naming plugin and option', async () => {
    let seen: unknown;
    const p = definePlugin(
      { name: 'opt', version: '1.0.0', kind: 'policy', options: schema },
      (o) => {
        seen = o;
        return { name: 'opt', decide: () => undefined };
      },
    );
    await expect(host.load(p, { limit: 'ten' })).rejects.toThrow(
      'plugin opt: invalid options: options.limit: Expected number',
    );
    await host.load(p, { limit: 10 });
    expect(seen).toEqual({ limit: 10, parsed: true });
  });

  it('refuses a plugin written for another plugin API', async () => {
    const old = definePlugin({ name: 'old', version: '1.0.0', kind: 'policy', api: 1 }, () => ({
      name: 'old',
      decide: () => undefined,
    }));
    await expect(host.load(old)).rejects.toThrow(
      `plugin old: is written for plugin API 1; this fabric provides plugin API ${PLUGIN_API_VERSION}`,
    );
  });

  it('starts without a failing optional plugin, and says so loudly', async () => {
    const broken = definePlugin({ name: 'broken', version: '1.0.0', kind: 'policy' }, () => {
      throw new Error('cannot reach the policy service');
    });
    expect(await host.load(broken, undefined, { optional: true })).toBeUndefined();
    expect(host.plugins).toEqual([]);
    expect(host.skipped).toHaveLength(1);
    expect(host.skipped[0]!.error).toBeInstanceOf(PluginError);
    expect(logs).toEqual([
      expect.objectContaining({
        level: 'error',
        plugin: 'broken',
        msg: expect.stringMatching(/OPTIONAL PLUGIN NOT LOADED.*WITHOUT it.*policy service/),
      }),
    ]);
    // Not optional: the same failure stops the load.
    await expect(host.load(broken)).rejects.toBeInstanceOf(PluginError);
  });
});

describe('the narrow context', () => {
  it('gives read-only views, a named logger and the endpoints — not the fabric', async () => {
    let ctx: PluginContext | undefined;
    await host.load(
      definePlugin({ name: 'peek', version: '1.0.0', kind: 'policy' }, (_o, c) => {
        ctx = c;
        c.log.warn('hello', { n: 1 });
        return { name: 'peek', decide: () => undefined };
      }),
    );
    expect(Object.keys(ctx!).sort()).toEqual(
      [
        'agents',
        'apiVersion',
        'endpoints',
        'fabricVersion',
        'log',
        'pluginName',
        'pools',
        'signal',
      ].sort(),
    );
    expect(ctx!.apiVersion).toBe(PLUGIN_API_VERSION);
    expect(Object.isFrozen(ctx)).toBe(true);
    expect(logs).toContainEqual({ level: 'warn', msg: 'hello', plugin: 'peek', n: 1 });
    const agent = await fabric.spawn({ model: 'm', name: 'x', executor: 'inprocess' });
    expect(ctx!.agents.get(agent.id)).toMatchObject({ id: agent.id });
    expect(ctx!.agents.get(agent.id)).not.toHaveProperty('credential');
    expect(ctx!.agents.get('nope')).toBeUndefined();
    const statuses: string[] = [];
    ctx!.agents.onStatus((a) => statuses.push(a.status));
    await fabric.terminate(agent.id);
    expect(statuses).toContain('TERMINATED');
    expect(await ctx!.endpoints()).toEqual({});
    // Unloading ends the subscription and aborts the signal.
    await host.close();
    expect(ctx!.signal.aborted).toBe(true);
    const n = statuses.length;
    const other = await fabric.spawn({ model: 'm', name: 'y', executor: 'inprocess' });
    await fabric.terminate(other.id);
    expect(statuses).toHaveLength(n);
  });
});

describe('unloading', () => {
  it('unregisters executors and pool providers, closing in reverse order', async () => {
    const closed: string[] = [];
    await host.load(
      definePlugin({ name: 'exec', version: '1.0.0', kind: 'executor' }, () => {
        const e = new InProcessExecutor({ name: 'shout' });
        e.registerHandler('greet', (p) => String(p).toUpperCase());
        const close = e.close.bind(e);
        return Object.assign(e, {
          close: async () => {
            closed.push('exec');
            await close();
          },
        });
      }),
    );
    await host.load(
      definePlugin(
        { name: 'pool', version: '1.0.0', kind: 'pool', dependencies: ['exec'] },
        () => ({
          name: 'shouters',
          executor: 'shout',
          start: async () => undefined,
          stop: async () => undefined,
          close: () => void closed.push('pool'),
        }),
      ),
    );
    await expect(host.unload('exec')).rejects.toThrow(/is needed by pool/);
    const pool = await fabric.createPool({
      poolId: 'p',
      model: 'm',
      minAgents: 1,
      provider: 'shouters',
    });
    const t = await fabric.scheduleToPool('p', 'greet', 'hi');
    expect((await fabric.waitForTask(t.id, { timeoutSeconds: 5 })).result).toBe('HI');
    await host.close();
    expect(closed).toEqual(['pool', 'exec']);
    expect(fabric.scheduler.getExecutor('shout')).toBeUndefined();
    expect(fabric.pools.providers()).not.toContain('shouters');
    // The pool's agent is gone from the scheduler with its executor; new pool work waits in the
    // queue for a provider of that name to come back, and no new pool can name it meanwhile.
    expect(pool.currentAgents).toHaveLength(1);
    // (Its completed count is gone with it: the scheduler no longer knows the agent.)
    expect(fabric.scheduler.agentLoad(pool.currentAgents[0]!).completedTasks).toBe(0);
    await expect(
      fabric.createPool({ poolId: 'q', model: 'm', provider: 'shouters' }),
    ).rejects.toThrow(/no registered pool provider/);
    const late = await fabric.scheduleToPool('p', 'greet', 'again');
    expect((await fabric.getTask(late.id)).status).toBe(TaskStatus.PENDING);
  });

  it('detaches a hook store when its plugin is unloaded', async () => {
    const store = {
      open: async () => undefined,
      close: async () => undefined,
      on: () => () => undefined,
      off: () => undefined,
      setLiveness: () => undefined,
      setAgentPicker: () => undefined,
      startPatrol: () => undefined,
      stopPatrol: () => undefined,
    };
    await host.load(
      definePlugin({ name: 'hooks', version: '1.0.0', kind: 'hook' }, () => store as never),
    );
    expect(fabric.hooks).toBe(store);
    const second = definePlugin(
      { name: 'hooks-2', version: '1.0.0', kind: 'hook' },
      () =>
        ({
          ...store,
        }) as never,
    );
    await expect(host.load(second)).rejects.toThrow(/hooks-2: could not be plugged in.*already/);
    await host.unload('hooks');
    expect(fabric.hooks).toBeUndefined();
  });
});

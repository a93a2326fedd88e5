import { readFileSync } from 'node:fs';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { parseSidecarConfig } from '../../src/server/config-file.js';
import { AgentFabric } from '../../src/fabric.js';
import { PluginError, PluginTimeoutError } from '../../src/errors.js';
import { definePlugin, type Plugin } from '../../src/plugins/plugin.js';
import { FABRIC_VERSION, PluginHost } from '../../src/plugins/plugin-host.js';
import { satisfies } from '../../src/plugins/version-range.js';
import { InProcessExecutor } from '../../src/scheduler/inprocess-executor.js';
import { TaskStatus } from '../../src/task.js';

const noShell = definePlugin({ name: 'no-shell', version: '1.0.0', kind: 'policy' }, () => ({
  name: 'no-shell',
  priority: 100,
  decide: (ctx) =>
    ctx.tool.startsWith('shell') ? { action: 'deny' as const, reason: 'no shells' } : undefined,
}));

describe('PluginHost', () => {
  let fabric: AgentFabric;
  let host: PluginHost;
  beforeEach(() => {
    fabric = new AgentFabric();
    fabric.policies.addPolicy({ name: 'allow-all', rules: [{ tool: '*', action: 'allow' }] });
    host = new PluginHost(fabric, { initTimeoutMs: 200 });
  });
  afterEach(async () => {
    await host.close();
    await fabric.close();
  });

  it('plugs a policy plugin into every decision, and unplugs it on close', async () => {
    expect(await host.load(noShell)).toEqual({
      name: 'no-shell',
      version: '1.0.0',
      kind: 'policy',
    });
    const ctx = { agentId: 'a', tool: 'shell_exec', params: {} };
    expect(fabric.policies.evaluateSync(ctx)).toMatchObject({
      action: 'deny',
      policy: 'no-shell',
      reason: 'no shells',
    });
    await host.close();
    expect(fabric.policies.evaluateSync(ctx).action).toBe('allow');
  });

  // An instance that renames itself once plugged in (a getter, a field it reassigns) is still
  // unplugged by the name it was plugged in under. Before, unload removed whatever provider bore
  // the new name — none — and the unloaded (and closed) plugin went on deciding every call.
  it('unplugs a policy plugin that renamed itself; its decisions keep its name', async () => {
    let closed = false;
    await host.load(
      definePlugin({ name: 'renamer', version: '1.0.0', kind: 'policy' }, () => ({
        name: 'renamer',
        priority: 100,
        decide(this: { name: string }) {
          this.name = 'someone-else';
          return { action: 'deny' as const, reason: 'no' };
        },
        close: () => void (closed = true),
      })),
    );
    const ctx = { agentId: 'a', tool: 't', params: {} };
    expect(fabric.policies.evaluateSync(ctx)).toMatchObject({ action: 'deny', policy: 'renamer' });
    expect(fabric.policies.evaluateSync(ctx)).toMatchObject({ action: 'deny', policy: 'renamer' });
    await host.unload('renamer');
    expect(closed).toBe(true);
    expect(fabric.policies.evaluateSync(ctx)).toMatchObject({
      action: 'allow',
      policy: 'allow-all',
    });
  });

  it('plugs an executor plugin in: agents that name it run their tasks on it', async () => {
    let closed = false;
    await host.load(
      definePlugin({ name: 'shouting', version: '0.1.0', kind: 'executor' }, () => {
        const e = new InProcessExecutor({ name: 'shouting' });
        e.registerHandler('greet', (p) => String(p).toUpperCase());
        const close = e.close.bind(e);
        return Object.assign(e, {
          close: async () => {
            closed = true;
            await close();
          },
        });
      }),
    );
    const agent = await fabric.spawn({ model: 'm', name: 'loud', executor: 'shouting' });
    const task = await fabric.schedule({ agentId: agent.id, taskType: 'greet', payload: 'hi' });
    expect(await fabric.waitForTask(task.id, { timeoutSeconds: 10 })).toMatchObject({
      status: TaskStatus.COMPLETED,
      result: 'HI',
    });
    await host.close();
    await fabric.close();
    expect(closed).toBe(true);
  });

  it.each([
    [{ name: 'x', version: '1.0.0', kind: 'firewall', create: () => ({}) }, /kind/],
    [{ name: 'x', version: 'one', kind: 'policy', create: () => ({}) }, /version/],
    [{ name: '', version: '1.0.0', kind: 'policy', create: () => ({}) }, /name/],
    [{ name: 'x', version: '1.0.0', kind: 'policy' }, /create/],
    [
      { name: 'x', version: '1.0.0', kind: 'policy', fabric: 'latest', create: () => ({}) },
      /fabric/,
    ],
  ])(
    'rejects a malformed manifest with a PluginError naming the field (%#)',
    async (plugin, message) => {
      const err = await host.load(plugin as unknown as Plugin).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(PluginError);
      expect((err as Error).message).toMatch(message);
    },
  );

  it('checks the fabric version, duplicates and dependencies', async () => {
    await expect(host.load({ ...noShell, name: 'future', fabric: '^99.0.0' })).rejects.toThrow(
      /needs fabric \^99/,
    );
    await expect(
      host.load({ ...noShell, name: 'needs-base', dependencies: ['base'] }),
    ).rejects.toThrow(/depends on base/);
    await host.load({ ...noShell, fabric: `^${FABRIC_VERSION}` });
    await expect(host.load(noShell)).rejects.toThrow(/already loaded/);
    await host.load(
      definePlugin(
        { name: 'needs-no-shell', version: '1.0.0', kind: 'policy', dependencies: ['no-shell'] },
        () => ({
          name: 'needs-no-shell',
          decide: () => undefined,
        }),
      ),
    );
    expect(host.plugins.map((p) => p.name)).toEqual(['no-shell', 'needs-no-shell']);
  });

  it('bounds start-up and reports create() failures', async () => {
    const slow = definePlugin(
      { name: 'slow', version: '1.0.0', kind: 'policy' },
      (_o, ctx) =>
        new Promise((_resolve, reject) =>
          ctx.signal.addEventListener('abort', () => reject(new Error('gave up'))),
        ),
    );
    await expect(host.load(slow)).rejects.toBeInstanceOf(PluginTimeoutError);
    const broken = definePlugin({ name: 'broken', version: '1.0.0', kind: 'policy' }, () => {
      throw new Error('no config');
    });
    await expect(host.load(broken)).rejects.toThrow(/plugin broken: create\(\) failed: no config/);
    await expect(host.load('./does/not/exist.js')).rejects.toThrow(/could not be imported/);
    expect(host.plugins).toEqual([]);
  });
});

describe('plugin version ranges', () => {
  it.each([
    ['1.2.3', '*', true],
    ['1.2.3', '1.2.3', true],
    ['1.2.4', '1.2.3', false],
    ['1.9.0', '^1.2.3', true],
    ['2.0.0', '^1.2.3', false],
    ['0.1.5', '^0.1.0', true],
    ['0.2.0', '^0.1.0', false],
    ['1.2.9', '~1.2.3', true],
    ['1.3.0', '~1.2.3', false],
    ['3.0.0', '>=1.0.0', true],
    ['0.9.0', '>=1.0.0', false],
  ])('%s satisfies %s: %s', (version, range, expected) => {
    expect(satisfies(version, range)).toBe(expected);
  });
});

describe('README plugin example', () => {
  it('is examples/plugins/no-shell.ts verbatim, and loads', async () => {
    const { readFileSync } = await import('node:fs');
    const readme = readFileSync(new URL('../../README.md', import.meta.url), 'utf8');
    const section = readme.slice(readme.indexOf('\n## Plugins\n'));
    const block = /```ts\n([\s\S]*?)```/.exec(section)![1]!;
    const file = readFileSync(
      new URL('../../examples/plugins/no-shell.ts', import.meta.url),
      'utf8',
    );
    expect(block).toBe(file);
    const plugin = (
      (await import('../../examples/plugins/no-shell.js')) as { default: Plugin<'policy'> }
    ).default;
    const fabric = new AgentFabric();
    const host = new PluginHost(fabric);
    await host.load(plugin);
    expect(
      fabric.policies.evaluateSync({ agentId: 'a', tool: 'shell_run', params: {} }).reason,
    ).toBe('no shells');
    await host.close();
    await fabric.close();
  });
});

describe('README plugin section', () => {
  const readme = () =>
    readFileSync(new URL('../../README.md', import.meta.url), 'utf8').slice(
      readFileSync(new URL('../../README.md', import.meta.url), 'utf8').indexOf('\n## Plugins\n'),
    );

  it('shows examples/plugins/pool-inline.ts verbatim, and it keeps a pool at size', async () => {
    const blocks = [...readme().matchAll(/```ts\n([\s\S]*?)```/g)].map((m) => m[1]);
    const file = readFileSync(
      new URL('../../examples/plugins/pool-inline.ts', import.meta.url),
      'utf8',
    );
    expect(blocks[2]).toBe(file);
    const fabric = new AgentFabric();
    const host = new PluginHost(fabric);
    await host.load(new URL('../../examples/plugins/pool-inline.ts', import.meta.url), {
      label: 'inline',
    });
    const pool = await fabric.createPool({
      poolId: 'p',
      model: 'm',
      minAgents: 2,
      provider: 'inline',
    });
    await fabric.terminate(pool.currentAgents[0]!);
    await new Promise((r) => setImmediate(r));
    expect((await fabric.getPool('p')).currentAgents).toHaveLength(2);
    await host.close();
    await fabric.close();
  });

  it('shows examples/plugins/no-internal-answers.ts verbatim, and it refuses such answers', async () => {
    const blocks = [...readme().matchAll(/```ts\n([\s\S]*?)```/g)].map((m) => m[1]);
    const file = readFileSync(
      new URL('../../examples/plugins/no-internal-answers.ts', import.meta.url),
      'utf8',
    );
    expect(blocks[1]).toBe(file);
    const fabric = new AgentFabric();
    const host = new PluginHost(fabric);
    await host.load(new URL('../../examples/plugins/no-internal-answers.ts', import.meta.url));
    const answer = (text: string) => ({
      agentId: 'a',
      upstream: 'web',
      method: 'sampling/createMessage',
      result: { role: 'assistant', content: { type: 'text', text } },
    });
    const signal = new AbortController().signal;
    expect(await fabric.checkCallbackAnswer(answer('INTERNAL-ONLY plan'), signal)).toEqual({
      allowed: false,
      policy: 'no-internal-answers',
      reason: 'internal text may not go to web',
    });
    expect(await fabric.checkCallbackAnswer(answer('hello'), signal)).toEqual({ allowed: true });
    await host.close();
    // Unloaded: its check is gone with it.
    expect(await fabric.checkCallbackAnswer(answer('INTERNAL-ONLY'), signal)).toEqual({
      allowed: true,
    });
    await fabric.close();
  });

  it('shows a config that the sidecar config parser accepts', () => {
    const yaml = /### Loading plugins from the config\n\n```yaml\n([\s\S]*?)```/.exec(
      readme(),
    )![1]!;
    const config = parseSidecarConfig(yaml, 'readme.yaml', { env: {} });
    expect(config.plugins.map((p) => p.module)).toEqual([
      'secret-guard',
      'policy-rate-limit',
      'policy-loop-guard',
      'pool-process',
      'policy-grpc',
      './plugins/pool-inline.js',
      '@acme/fabric-policy-pii',
    ]);
    expect(config.plugins.at(-1)!.optional).toBe(true);
    expect(config.pools[0]).toMatchObject({ id: 'workers', provider: 'process' });
    expect(config.plugins[4]!.options).toMatchObject({ authTokenEnv: 'POLICY_TOKEN' });
  });
});

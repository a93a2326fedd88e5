/**
 * A plugin's faults stay the plugin's. A hostile review found three ways a faulty (or hostile)
 * plugin took the whole sidecar with it:
 * - a `context.agents.onStatus` listener that throws: the host put it raw on the lifecycle
 *   emitter, the health sweep's timer emitted, the throw was uncaught and the process exited
 *   (the same held for a throwing abort listener on `context.signal`, rethrown by Node on the
 *   next tick when the plugin was unloaded);
 * - a `close()` that never settles: unloading awaited it without bound, so `serve` never exited
 *   on SIGTERM;
 * - a `create()` that throws or times out after subscribing: its listener stayed live, its
 *   signal was not aborted, and an instance made after the start-up bound was never closed.
 * Now every callback a plugin hands the host runs contained (logged with the plugin's name),
 * each close is bounded by `closeTimeoutMs`, and a plugin that fails to start is retired.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it, vi } from 'vitest';
import { AgentFabric } from '../../src/fabric.js';
import type { Plugin } from '../../src/plugins/plugin.js';
import { PluginHost, type PluginLogEntry } from '../../src/plugins/plugin-host.js';
import { CLI_MAIN, tempDir, TSX, until } from '../fixtures/gateway/harness.js';

interface Served {
  child: ChildProcess;
  url: string;
  output: () => string;
  exit: () => { code: number | null; signal: NodeJS.Signals | null } | undefined;
}

const spawned: ChildProcess[] = [];
afterAll(() => {
  for (const c of spawned) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
});

/** `agent-fabric serve` with `plugin` (a module's source) loaded, plus `config`. */
async function serve(plugin: string, config: Record<string, unknown> = {}): Promise<Served> {
  const dir = tempDir('plugin-faults');
  writeFileSync(join(dir, 'plugin.mjs'), plugin);
  const file = join(dir, 'fabric.json');
  writeFileSync(
    file,
    JSON.stringify({
      http: { host: '127.0.0.1', port: 0 },
      state: 'memory',
      adminToken: 'admin-token-for-plugin-faults-0123456789',
      plugins: [{ module: './plugin.mjs' }],
      ...config,
    }),
  );
  const child = spawn(process.execPath, ['--import', TSX, CLI_MAIN, 'serve', '--config', file], {
    cwd: dir,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  spawned.push(child);
  let out = '';
  child.stdout!.on('data', (c: Buffer) => (out += c.toString()));
  child.stderr!.on('data', (c: Buffer) => (out += c.toString()));
  let exit: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  child.once('exit', (code, signal) => (exit = { code, signal }));
  await until(() => /MCP URL:\s+\S+/.test(out) || exit !== undefined, 30_000);
  expect(exit, `did not start: ${out}`).toBeUndefined();
  return { child, url: /MCP URL:\s+(\S+)/.exec(out)![1]!, output: () => out, exit: () => exit };
}

describe('a plugin whose onStatus listener throws (real sidecar)', () => {
  it('is logged with its name; the sidecar keeps running and answering', async () => {
    const s = await serve(
      `export default {
        name: 'status-observer', version: '1.0.0', kind: 'policy',
        create(options, context) {
          context.agents.onStatus((agent) => {
            if (agent.status === 'DEGRADED' || agent.status === 'UNHEALTHY')
              throw new Error('observer bug: cannot handle ' + agent.status);
          });
          return { name: 'status-observer', decide: () => undefined };
        },
      };`,
      {
        fabric: { heartbeatIntervalSeconds: 0.5 },
        policies: [{ name: 'allow', rules: [{ tool: '*', action: 'allow' }] }],
        agents: [{ name: 'quiet' }],
      },
    );
    // The agent never heartbeats: the health sweep (a timer) makes it DEGRADED, then UNHEALTHY.
    await until(
      () => /observer bug: cannot handle UNHEALTHY/.test(s.output()) || !!s.exit(),
      30_000,
    );
    expect(s.exit(), `sidecar died: ${s.output().slice(-2000)}`).toBeUndefined();
    expect(s.output()).toMatch(/status-observer.*onStatus listener failed: observer bug/);
    const res = await fetch(new URL('/healthz', s.url));
    expect(res.status).toBe(200);
  }, 60_000);
});

describe('a plugin whose close() never settles (real sidecar)', () => {
  it('does not keep serve from exiting on SIGTERM; the stuck close is logged', async () => {
    const s = await serve(`export default {
      name: 'sticky', version: '1.0.0', kind: 'policy',
      create: () => ({
        name: 'sticky',
        decide: () => undefined,
        // Waits for a backend that never answers, and keeps the event loop alive.
        close: () => new Promise(() => { setInterval(() => {}, 1000); }),
      }),
    };`);
    s.child.kill('SIGTERM');
    // The default close bound is 10 s; shutdown of an idle sidecar is otherwise well under 1 s.
    await until(() => s.exit() !== undefined, 40_000).catch(() => undefined);
    expect(s.exit(), 'still running 40 s after SIGTERM').toBeDefined();
    expect(s.output()).toMatch(/sticky.*close\(\) did not finish within 10000 ms/);
  }, 90_000);
});

describe('PluginHost retires faulty plugins', () => {
  let fabric: AgentFabric | undefined;
  afterEach(async () => {
    await fabric?.close();
    fabric = undefined;
  });

  function setUp(options: { initTimeoutMs?: number; closeTimeoutMs?: number } = {}): {
    host: PluginHost;
    logs: PluginLogEntry[];
    fabric: AgentFabric;
  } {
    fabric = new AgentFabric();
    const logs: PluginLogEntry[] = [];
    return { host: new PluginHost(fabric, { ...options, log: (e) => logs.push(e) }), logs, fabric };
  }

  it('a create() that throws leaves no listener behind and its signal is aborted', async () => {
    const { host, fabric } = setUp();
    const before = fabric.lifecycle.events.listenerCount('agent.status');
    const seen: string[] = [];
    let signal: AbortSignal | undefined;
    const plugin: Plugin<'policy'> = {
      name: 'half-started',
      version: '1.0.0',
      kind: 'policy',
      create(_options, context) {
        signal = context.signal;
        context.agents.onStatus((agent) => seen.push(agent.status));
        throw new Error('cannot reach my backend');
      },
    };
    expect(await host.load(plugin, undefined, { optional: true })).toBeUndefined();
    expect(host.skipped.map((s) => s.source)).toEqual(['half-started']);

    const agent = await fabric.spawn({ model: 'm', name: 'a', executor: 'remote' });
    await fabric.terminate(agent.id, { drainTimeoutSeconds: 0 });
    expect({
      listeners: fabric.lifecycle.events.listenerCount('agent.status') - before,
      seen,
      aborted: signal?.aborted,
    }).toEqual({ listeners: 0, seen: [], aborted: true });
  });

  it('a create() past the start-up bound: no late subscription, and its late instance is closed', async () => {
    const { host, fabric } = setUp({ initTimeoutMs: 100 });
    const before = fabric.lifecycle.events.listenerCount('agent.status');
    let finish: (() => void) | undefined;
    let closed = false;
    const plugin: Plugin<'policy'> = {
      name: 'slow-starter',
      version: '1.0.0',
      kind: 'policy',
      async create(_options, context) {
        await new Promise<void>((r) => (finish = r));
        context.agents.onStatus(() => undefined);
        return {
          name: 'slow-starter',
          decide: () => undefined,
          close: () => void (closed = true),
        };
      },
    };
    await expect(host.load(plugin)).rejects.toMatchObject({ code: 'FABRIC_ERR_PLUGIN_TIMEOUT' });
    finish!();
    await vi.waitFor(() => expect(closed).toBe(true));
    expect(fabric.lifecycle.events.listenerCount('agent.status') - before).toBe(0);
    expect(host.plugins).toEqual([]);
  });

  it('a throwing onStatus listener is logged; the other listeners and the status change go on', async () => {
    const { host, logs, fabric } = setUp();
    const seen: string[] = [];
    await host.load({
      name: 'thrower',
      version: '1.0.0',
      kind: 'policy',
      create(_options, context) {
        context.agents.onStatus(() => {
          throw new Error('sync bug');
        });
        context.agents.onStatus(() => Promise.reject(new Error('async bug')));
        context.agents.onStatus((agent) => void seen.push(agent.status));
        return { name: 'thrower', decide: () => undefined };
      },
    } satisfies Plugin<'policy'>);
    const agent = await fabric.spawn({ model: 'm', name: 'a', executor: 'remote' });
    await fabric.terminate(agent.id, { drainTimeoutSeconds: 0 });
    expect(seen).toContain('TERMINATED');
    await vi.waitFor(() =>
      expect(logs.filter((l) => l.plugin === 'thrower').map((l) => l.msg)).toEqual(
        expect.arrayContaining([
          expect.stringMatching(/onStatus listener failed: sync bug/),
          expect.stringMatching(/onStatus listener failed: async bug/),
        ]),
      ),
    );
  });

  it('a throwing abort listener on its signal is logged when the plugin is unloaded', async () => {
    const { host, logs } = setUp();
    const calls: string[] = [];
    await host.load({
      name: 'abort-thrower',
      version: '1.0.0',
      kind: 'policy',
      create(_options, context) {
        context.signal.addEventListener('abort', () => {
          calls.push('listener');
          throw new Error('abort listener bug');
        });
        context.signal.onabort = () => {
          calls.push('onabort');
          throw new Error('onabort bug');
        };
        return { name: 'abort-thrower', decide: () => undefined };
      },
    } satisfies Plugin<'policy'>);
    await host.unload('abort-thrower');
    // Without containment Node rethrows these on the next tick, uncaught (the run fails).
    await new Promise((r) => setImmediate(r));
    expect(calls.sort()).toEqual(['listener', 'onabort']);
    expect(logs.map((l) => `${l.plugin}: ${l.msg}`)).toEqual(
      expect.arrayContaining([
        'abort-thrower: an abort listener failed: abort listener bug',
        'abort-thrower: an abort listener failed: onabort bug',
      ]),
    );
  });

  it('a close() that never settles is bounded by closeTimeoutMs, logged, and unloading goes on', async () => {
    const { host, logs } = setUp({ closeTimeoutMs: 200 });
    let closedSecond = false;
    await host.load({
      name: 'stuck',
      version: '1.0.0',
      kind: 'policy',
      create: () => ({
        name: 'stuck',
        decide: () => undefined,
        close: () => new Promise(() => {}),
      }),
    } satisfies Plugin<'policy'>);
    await host.load({
      name: 'fine',
      version: '1.0.0',
      kind: 'policy',
      create: () => ({
        name: 'fine',
        decide: () => undefined,
        close: () => void (closedSecond = true),
      }),
    } satisfies Plugin<'policy'>);
    await host.close();
    expect(closedSecond).toBe(true);
    expect(host.plugins).toEqual([]);
    expect(logs).toContainEqual(
      expect.objectContaining({
        level: 'error',
        plugin: 'stuck',
        msg: 'close() did not finish within 200 ms; going on without it',
      }),
    );
  });
});

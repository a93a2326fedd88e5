/**
 * The default pool provider, `threads` (plugins/pool-threads): a fabric configured with nothing
 * puts local pools on it and their agents run tasks on the worker threads as before; the plugin
 * takes the built-in's place while loaded and gives it back when unloaded.
 */
import { afterEach, describe, expect, it, vi } from 'vitest';
import { AgentStatus } from '../../src/agent.js';
import { AgentFabric } from '../../src/fabric.js';
import { PluginHost } from '../../src/plugins/plugin-host.js';
import { ThreadPoolProvider } from '../../src/pools/thread-pool-provider.js';
import { TaskStatus } from '../../src/task.js';
import { FIRST_PARTY } from '../contracts/load-plugin.js';

const ECHO = new URL('../fixtures/handlers/echo.mjs', import.meta.url);

describe('pool-threads, the default pool provider', () => {
  let fabric: AgentFabric | undefined;
  afterEach(async () => {
    await fabric?.close();
    fabric = undefined;
  });
  const make = (defaultExecutor?: string) =>
    (fabric = new AgentFabric(
      {},
      {
        pools: { reconcileIntervalMs: 50, startBackoffMs: 20, maxStartBackoffMs: 100 },
        ...(defaultExecutor === undefined ? {} : { defaultExecutor }),
      },
    ));

  it('a pool configured with nothing is a threads pool whose agents run tasks on worker threads', async () => {
    const f = make();
    f.registerHandler('echo', ECHO);
    const started: string[] = [];
    f.pools.events.on('pool.agent.started', (e) => started.push(e.agentId));
    const pool = await f.createPool({ poolId: 'p', model: 'm', minAgents: 2 });
    expect(pool.provider).toBe('threads');
    await vi.waitFor(() => expect(started.sort()).toEqual([...pool.currentAgents].sort()));
    for (const id of pool.currentAgents) {
      expect((await f.getAgentInfo(id)).executor).toBe('local');
    }
    const [a] = pool.currentAgents as [string];
    const task = await f.schedule({ agentId: a, taskType: 'echo', payload: { n: 7 } });
    expect(await f.waitForTask(task.id)).toMatchObject({
      status: TaskStatus.COMPLETED,
      result: { echoed: { n: 7 } },
    });
    // minAgents is kept: a terminated agent is replaced.
    await f.terminate(a);
    await vi.waitFor(async () => {
      const now = (await f.getPool('p')).currentAgents;
      expect(now).toHaveLength(2);
      expect(now).not.toContain(a);
    });
    expect((await f.getAgentInfo(a)).status).toBe(AgentStatus.TERMINATED);
  });

  it('pools on another executor, or with the fabric defaulting to another, get no provider (as before)', async () => {
    const f = make();
    const remote = await f.createPool({ poolId: 'r', model: 'm', executor: 'remote' });
    expect(remote.provider).toBeUndefined();
    await f.close();
    const g = make('inprocess');
    const p = await g.createPool({ poolId: 'p', model: 'm', minAgents: 1 });
    expect(p.provider).toBeUndefined();
    expect((await g.getAgentInfo(p.currentAgents[0]!)).executor).toBe('inprocess');
  });

  it('the plugin takes the built-in provider’s place while loaded, and gives it back', async () => {
    const f = make();
    const host = new PluginHost(f);
    await host.load(FIRST_PARTY('pool-threads'));
    const plugin = host.instanceOf<'pool'>('pool-threads') as unknown as ThreadPoolProvider;
    expect(plugin).toBeInstanceOf(ThreadPoolProvider);
    const pool = await f.createPool({ poolId: 'p', model: 'm', minAgents: 2 });
    await vi.waitFor(() => expect(plugin.size).toBe(2));
    for (const id of pool.currentAgents) expect(plugin.healthCheck(id)).toBe(true);
    await host.close();
    expect(f.pools.providers()).toContain('threads');
    // Built-in again: a new pool's agents start.
    const q = await f.createPool({ poolId: 'q', model: 'm', minAgents: 1 });
    expect(q.provider).toBe('threads');
    expect(plugin.size).toBe(0);
    expect(f.unregisterPoolProvider('threads')).toBe(false);
  });

  it('refuses a malformed replacement and keeps the built-in', async () => {
    const f = make();
    expect(() => f.registerPoolProvider({ name: 'threads' } as never)).toThrow(
      expect.objectContaining({ code: 'FABRIC_ERR_INVALID_ARGUMENT' }),
    );
    const p = await f.createPool({ poolId: 'p', model: 'm', minAgents: 1 });
    expect(p.provider).toBe('threads');
  });
});

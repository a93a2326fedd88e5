/**
 * The contract every PoolProvider (pool plugin) must keep, run against each implementation:
 * `runPoolProviderContract({ name, load })`, where `load(fabric)` loads the plugin into that
 * fabric (through a PluginHost) and returns the provider's name and an unload function.
 */
import { afterEach, describe, expect, it, vi } from 'vitest';
import { AgentStatus } from '../../src/agent.js';
import { AgentFabric } from '../../src/fabric.js';
import type { PoolProvider } from '../../src/pools/pool-provider.js';

export function runPoolProviderContract(options: {
  name: string;
  load: (fabric: AgentFabric) => Promise<{ provider: PoolProvider; unload(): Promise<void> }>;
}): void {
  describe(`PoolProvider contract: ${options.name}`, () => {
    let fabric: AgentFabric | undefined;
    let unload: (() => Promise<void>) | undefined;
    afterEach(async () => {
      await unload?.();
      await fabric?.close();
      fabric = undefined;
      unload = undefined;
    });

    async function setUp(): Promise<PoolProvider> {
      fabric = new AgentFabric(
        {},
        { pools: { reconcileIntervalMs: 100, startBackoffMs: 50, maxStartBackoffMs: 200 } },
      );
      const loaded = await options.load(fabric);
      unload = loaded.unload;
      return loaded.provider;
    }

    it('names itself and the executor its agents use (a registered one)', async () => {
      const p = await setUp();
      expect(p.name).toMatch(/\S/);
      expect(fabric!.scheduler.getExecutor(p.executor)).toBeDefined();
      expect(typeof p.start).toBe('function');
      expect(typeof p.stop).toBe('function');
    });

    it('starts every agent of a pool, and reports them alive', async () => {
      const p = await setUp();
      const started: string[] = [];
      fabric!.pools.events.on('pool.agent.started', (e) => started.push(e.agentId));
      const pool = await fabric!.createPool({
        poolId: 'p',
        model: 'm',
        minAgents: 2,
        provider: p.name,
      });
      await vi.waitFor(() => expect(started.sort()).toEqual([...pool.currentAgents].sort()), {
        timeout: 10_000,
      });
      if (p.healthCheck !== undefined) {
        for (const id of pool.currentAgents) expect(await p.healthCheck(id)).toBe(true);
      }
    });

    it('stops an agent whose record is terminated, and the pool gets a new one', async () => {
      const p = await setUp();
      const stopped: string[] = [];
      const stop = p.stop.bind(p);
      p.stop = async (id, reason) => {
        stopped.push(`${id}:${reason}`);
        await stop(id, reason);
      };
      const pool = await fabric!.createPool({
        poolId: 'p',
        model: 'm',
        minAgents: 1,
        provider: p.name,
      });
      const [a] = pool.currentAgents as [string];
      await vi.waitFor(async () => {
        if (p.healthCheck !== undefined) expect(await p.healthCheck(a)).toBe(true);
      });
      await fabric!.terminate(a);
      await vi.waitFor(() => expect(stopped).toEqual([`${a}:terminated`]));
      if (p.healthCheck !== undefined) expect(await p.healthCheck(a)).toBe(false);
      await vi.waitFor(async () => {
        const now = (await fabric!.getPool('p')).currentAgents;
        expect(now).toHaveLength(1);
        expect(now).not.toContain(a);
      });
      expect((await fabric!.getAgentInfo(a)).status).toBe(AgentStatus.TERMINATED);
    });

    it('stops what it started when unloaded', async () => {
      const p = await setUp();
      const pool = await fabric!.createPool({
        poolId: 'p',
        model: 'm',
        minAgents: 2,
        provider: p.name,
      });
      if (p.healthCheck === undefined) return;
      await vi.waitFor(async () => {
        for (const id of pool.currentAgents) expect(await p.healthCheck!(id)).toBe(true);
      });
      await unload!();
      unload = undefined;
      for (const id of pool.currentAgents) expect(await p.healthCheck(id)).toBe(false);
    });
  });
}

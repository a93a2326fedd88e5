/**
 * The contract every HookStore (hook plugin) must keep, run against each implementation:
 * `runHookStoreContract({ name, create })`. `create` returns an opened store on fresh state and
 * its cleanup; with `reopen`, the store is also checked to keep its hooks across a restart.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { AgentStatus } from '../../src/agent.js';
import { HookNotFoundError, HookStateError } from '../../src/errors.js';
import { AgentFabric } from '../../src/fabric.js';
import type { HookStore } from '../../src/hooks/hook-store.js';
import { HookStatus } from '../../src/hooks/hook-status.js';

export interface HookStoreUnderTest {
  store: HookStore;
  /** A new store over the same state (a restart); durable stores must give one. */
  reopen?: () => Promise<HookStore>;
  cleanup(): Promise<void>;
}

export function runHookStoreContract(options: {
  name: string;
  create: () => Promise<HookStoreUnderTest>;
  /** The store keeps hooks across restarts (its `create` must then give `reopen`). */
  durable: boolean;
}): void {
  describe(`HookStore contract: ${options.name}`, () => {
    const cleanups: (() => Promise<void>)[] = [];
    afterEach(async () => {
      for (const c of cleanups.splice(0)) await c();
    });
    async function fresh(): Promise<HookStoreUnderTest> {
      const t = await options.create();
      cleanups.push(t.cleanup);
      return t;
    }

    it('creates a PENDING hook and finds it by id, by agent and as the agent’s hook', async () => {
      const { store } = await fresh();
      const h = await store.createHook({ agentId: 'a1', workItem: { task: 'refactor', n: 1 } });
      expect(h).toMatchObject({ agentId: 'a1', status: HookStatus.PENDING, attempts: 1 });
      expect(h.workItem).toEqual({ task: 'refactor', n: 1 });
      expect(await store.getHook(h.hookId)).toEqual(h);
      expect((await store.listHooks({ agentId: 'a1' })).map((x) => x.hookId)).toEqual([h.hookId]);
      expect(await store.listHooks({ agentId: 'a2' })).toEqual([]);
      expect((await store.hookFor('a1'))?.hookId).toBe(h.hookId);
      expect(await store.hookFor('a2')).toBeUndefined();
    });

    it('runs PENDING → ACTIVE → COMPLETED, keeping the result', async () => {
      const { store } = await fresh();
      const h = await store.createHook({ agentId: 'a1', workItem: 'w' });
      expect((await store.activateHook(h.hookId, { agentId: 'a1' })).status).toBe(
        HookStatus.ACTIVE,
      );
      const done = await store.completeHook(h.hookId, { ok: true });
      expect(done).toMatchObject({ status: HookStatus.COMPLETED, result: { ok: true } });
      expect(await store.hookFor('a1')).toBeUndefined();
    });

    it('refuses wrong transitions and unknown hooks with typed errors', async () => {
      const { store } = await fresh();
      const h = await store.createHook({ agentId: 'a1', workItem: 'w' });
      await expect(store.completeHook(h.hookId, 1)).rejects.toBeInstanceOf(HookStateError);
      await expect(store.activateHook(h.hookId, { agentId: 'intruder' })).rejects.toBeInstanceOf(
        HookStateError,
      );
      const other = `${h.hookId.slice(0, -1)}${h.hookId.endsWith('a') ? 'b' : 'a'}`;
      await expect(store.getHook(other)).rejects.toBeInstanceOf(HookNotFoundError);
      await expect(store.reassignHook(h.hookId, 'a2')).rejects.toBeInstanceOf(HookStateError);
      // Nothing changed.
      expect((await store.getHook(h.hookId)).status).toBe(HookStatus.PENDING);
    });

    it('fails, abandons (announcing it) and reassigns to another agent', async () => {
      const { store } = await fresh();
      const abandoned: string[] = [];
      const off = store.on('hook.abandoned', (e) => abandoned.push(e.hook.hookId));
      const h = await store.createHook({ agentId: 'a1', workItem: 'w' });
      await store.activateHook(h.hookId);
      const failed = await store.failHook(h.hookId, { code: 'E_X', message: 'boom' });
      expect(failed.status).toBe(HookStatus.FAILED);
      expect(failed.error).toMatchObject({ message: 'boom', code: 'E_X' });
      const moved = await store.reassignHook(h.hookId, 'a2');
      expect(moved).toMatchObject({
        agentId: 'a2',
        status: HookStatus.PENDING,
        attempts: 2,
        reassignments: 1,
        previousAgents: ['a1'],
      });
      const gone = await store.abandonHook(h.hookId, 'agent a2 died');
      expect(gone).toMatchObject({ status: HookStatus.ABANDONED, abandonReason: 'agent a2 died' });
      expect(abandoned).toEqual([h.hookId]);
      off();
      const h2 = await store.createHook({ agentId: 'a1', workItem: 'w2' });
      await store.abandonHook(h2.hookId, 'again');
      expect(abandoned).toEqual([h.hookId]);
    });

    it('gives an ABANDONED hook to the agent recoverAbandoned picks', async () => {
      const { store } = await fresh();
      const h = await store.createHook({ agentId: 'a1', workItem: 'w' });
      await store.abandonHook(h.hookId, 'lost');
      const report = await store.recoverAbandoned({ pickAgent: () => 'a3', patrol: false });
      expect(report.reassigned.map((r) => r.hookId)).toEqual([h.hookId]);
      expect(await store.getHook(h.hookId)).toMatchObject({
        agentId: 'a3',
        status: HookStatus.PENDING,
      });
    });

    // Only durable stores promise this; a memory store is not asked (nor reported as skipped).
    if (options.durable) {
      it('keeps hooks across a restart', async () => {
        const t = await fresh();
        expect(t.reopen).toBeTypeOf('function');
        if (t.reopen === undefined) return;
        const h = await t.store.createHook({ agentId: 'a1', workItem: { keep: true } });
        await t.store.activateHook(h.hookId);
        await t.store.close();
        const again = await t.reopen();
        cleanups.push(() => again.close());
        expect(await again.getHook(h.hookId)).toMatchObject({
          status: HookStatus.ACTIVE,
          workItem: { keep: true },
        });
      });
    }

    it('plugs into a fabric: an agent can not move its own ABANDONED hook', async () => {
      const { store } = await fresh();
      const fabric = new AgentFabric();
      cleanups.push(async () => {
        fabric.detachHookStore(store);
        await fabric.close();
      });
      await fabric.useHookStore(store, { autoReassign: false });
      const a = (await fabric.spawn({ model: 'm', name: 'a', executor: 'inprocess' })).id;
      const h = await fabric.createHook({ agentId: a, workItem: 'w' });
      await fabric.activateHook(a, h.hookId);
      await store.abandonHook(h.hookId, 'went silent');
      await expect(fabric.failHook(a, h.hookId, { message: 'x' })).rejects.toBeInstanceOf(
        HookStateError,
      );
      await expect(fabric.completeHook(a, h.hookId, 'r')).rejects.toBeInstanceOf(HookStateError);
      await expect(fabric.recordHookProgress(a, h.hookId, 'n')).rejects.toBeInstanceOf(
        HookStateError,
      );
      expect(await store.getHook(h.hookId)).toMatchObject({
        status: HookStatus.ABANDONED,
        error: null,
      });
    });

    it('plugs into a fabric: a terminated agent’s hook moves to a healthy agent of its pool', async () => {
      const { store } = await fresh();
      const fabric = new AgentFabric();
      cleanups.push(async () => {
        fabric.detachHookStore(store);
        await fabric.close();
      });
      await fabric.useHookStore(store);
      const pool = await fabric.createPool({
        poolId: 'p',
        model: 'm',
        minAgents: 2,
        executor: 'inprocess',
      });
      const [a, b] = pool.currentAgents as [string, string];
      const h = await fabric.createHook({ agentId: a, workItem: 'w' });
      await fabric.activateHook(a, h.hookId);
      await fabric.terminate(a);
      await fabric.hookRecoveryIdle();
      const now = await fabric.getHook(h.hookId);
      expect(now.status).toBe(HookStatus.PENDING);
      expect(now.agentId).not.toBe(a);
      expect([b, ...(await fabric.getPool('p')).currentAgents]).toContain(now.agentId);
      expect((await fabric.getAgentInfo(now.agentId)).status).toBe(AgentStatus.HEALTHY);
      // An agent cannot act on a hook that is not its own.
      await expect(fabric.completeHook(a, h.hookId, 'stolen')).rejects.toBeInstanceOf(
        HookNotFoundError,
      );
    });
  });
}

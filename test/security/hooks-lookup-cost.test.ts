/**
 * `hookFor` is what every agent asks on start, on reconnect and on each worker hook check
 * (`fabric__get_hook`, gRPC `GetHook`, `FabricWorker` every `hookCheckSeconds`). A long-running
 * sidecar holds up to `finishedRetention` (default 10,000) finished hooks; an answer that
 * read (and sorted) all of them cost each call O(N log N) on the event loop — about 40 ms of CPU
 * with 20,000 hooks, which one agent calling `get_hook` in a loop turned into a stall for every
 * other agent. The answer now reads only the asking agent's open (PENDING and ACTIVE) hooks.
 * Checked without timing: the number of array elements sorted while answering, over a real git
 * store of hooks most of which are finished or another agent's; and the answer stays right
 * across activation, completion, abandonment, reassignment and a restart.
 */
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { AgentStatus } from '../../src/agent.js';
import { AgentFabric } from '../../src/fabric.js';
import { HookManager, HookStatus, type Hook } from '../../src/hooks/index.js';
import { sortedElements } from '../fixtures/hooks/sort-count.js';
import { tempDir, type TempDir } from '../fixtures/hooks/temp-store.js';

let dir: TempDir;
const opened: HookManager[] = [];

beforeEach(async () => {
  dir = await tempDir();
});

afterEach(async () => {
  vi.restoreAllMocks();
  await Promise.all(opened.splice(0).map((m) => m.close()));
  await dir.cleanup();
});

function manager(clock: () => number): HookManager {
  const m = new HookManager({
    storagePath: dir.path,
    useGitWorktree: false,
    fsync: false,
    maintenanceIntervalSeconds: 0,
    clock,
  });
  opened.push(m);
  return m;
}

describe("hookFor reads the asking agent's open hooks, not every hook ever made", () => {
  it('sorts nothing beyond its own hooks, with 600 hooks of others and finished ones', async () => {
    let now = 1_700_000_000_000;
    const hooks = manager(() => now);
    // 400 finished hooks of `victim`'s own, 200 open ones of other agents.
    const mine = await Promise.all(
      Array.from({ length: 400 }, (_, i) => hooks.createHook({ agentId: 'victim', workItem: i })),
    );
    for (const h of mine) await hooks.activateHook(h.hookId);
    await Promise.all(mine.map((h) => hooks.completeHook(h.hookId, 'done')));
    await Promise.all(
      Array.from({ length: 200 }, (_, i) =>
        hooks.createHook({ agentId: `other-${i % 7}`, workItem: i }),
      ),
    );
    now += 10;
    const open = await hooks.createHook({ agentId: 'victim', workItem: 'the one' });

    const { value, sorted } = await sortedElements(async () => {
      const answers: (Hook | undefined)[] = [];
      for (let i = 0; i < 10; i++) answers.push(await hooks.hookFor('victim'));
      answers.push(await hooks.hookFor('nobody'));
      return answers;
    });
    expect(value.slice(0, 10).map((h) => h?.hookId)).toEqual(Array(10).fill(open.hookId));
    expect(value[10]).toBeUndefined();
    // Old code: 11 × 601 elements sorted.
    expect(sorted).toBeLessThanOrEqual(10);
  }, 120_000);

  it('answers right across activation, abandonment, reassignment, completion and a restart', async () => {
    let now = 1_700_000_000_000;
    const tick = (): number => (now += 10);
    const hooks = manager(() => now);
    const a1 = await hooks.createHook({ agentId: 'a', workItem: 1 });
    tick();
    const a2 = await hooks.createHook({ agentId: 'a', workItem: 2 });
    tick();
    const b1 = await hooks.createHook({ agentId: 'b', workItem: 3 });
    expect((await hooks.hookFor('a'))?.hookId).toBe(a1.hookId);

    // The ACTIVE one comes before an older PENDING one.
    await hooks.activateHook(a2.hookId, { agentId: 'a' });
    expect((await hooks.hookFor('a'))?.hookId).toBe(a2.hookId);

    // Abandoned: no longer a's; reassigned: b's, and older than b's own PENDING hook.
    await hooks.abandonHook(a2.hookId, 'a went silent');
    expect((await hooks.hookFor('a'))?.hookId).toBe(a1.hookId);
    await hooks.reassignHook(a2.hookId, 'b');
    expect((await hooks.hookFor('b'))?.hookId).toBe(a2.hookId);
    await hooks.activateHook(a2.hookId, { agentId: 'b' });
    expect((await hooks.hookFor('b'))?.hookId).toBe(a2.hookId);
    await hooks.completeHook(a2.hookId, 'ok', { agentId: 'b' });
    expect((await hooks.hookFor('b'))?.hookId).toBe(b1.hookId);

    // Failed and completed hooks are no one's work.
    await hooks.activateHook(a1.hookId, { agentId: 'a' });
    await hooks.failHook(a1.hookId, 'no', { agentId: 'a' });
    expect(await hooks.hookFor('a')).toBeUndefined();
    await hooks.reassignHook(a1.hookId, 'a');
    expect((await hooks.hookFor('a'))?.hookId).toBe(a1.hookId);

    // Held progress (not yet committed) leaves the answer as it is.
    await hooks.activateHook(a1.hookId, { agentId: 'a' });
    await hooks.recordProgress(a1.hookId, 'halfway', { agentId: 'a' });
    expect(await hooks.hookFor('a')).toMatchObject({
      hookId: a1.hookId,
      status: HookStatus.ACTIVE,
      progressNote: 'halfway',
    });

    await hooks.close();
    const again = manager(() => now);
    expect(await again.hookFor('a')).toMatchObject({
      hookId: a1.hookId,
      status: HookStatus.ACTIVE,
      progressNote: 'halfway',
    });
    expect((await again.hookFor('b'))?.hookId).toBe(b1.hookId);
    expect(await again.hookFor('nobody')).toBeUndefined();
  });
});

describe("listHooks({ agentId }) reads that agent's hooks, not every hook the store holds", () => {
  /** 300 finished hooks of other agents, `victim`'s three hooks (one finished, two open). */
  async function crowded(hooks: HookManager, tick: () => void): Promise<Hook[]> {
    const others = await Promise.all(
      Array.from({ length: 300 }, (_, i) =>
        hooks.createHook({ agentId: `other-${i % 5}`, workItem: i }),
      ),
    );
    for (const h of others) await hooks.activateHook(h.hookId);
    await Promise.all(others.map((h) => hooks.completeHook(h.hookId, 'done')));
    tick();
    const done = await hooks.createHook({ agentId: 'victim', workItem: 'done' });
    await hooks.activateHook(done.hookId);
    await hooks.completeHook(done.hookId, 'ok');
    tick();
    const active = await hooks.activateHook(
      (await hooks.createHook({ agentId: 'victim', workItem: 'active' })).hookId,
    );
    tick();
    const pending = await hooks.createHook({ agentId: 'victim', workItem: 'pending' });
    return [await hooks.getHook(done.hookId), active, pending];
  }

  it('sorts only the agent’s hooks (its open ones when asked for an open status)', async () => {
    let now = 1_700_000_000_000;
    const hooks = manager(() => now);
    const [done, active, pending] = await crowded(hooks, () => (now += 10));
    const ids = (hs: Hook[]): string[] => hs.map((h) => h.hookId);

    const { value, sorted } = await sortedElements(async () => [
      await hooks.listHooks({ agentId: 'victim' }),
      await hooks.listHooks({ agentId: 'victim', status: HookStatus.PENDING }),
      await hooks.listHooks({ agentId: 'victim', status: [HookStatus.ACTIVE, HookStatus.PENDING] }),
      await hooks.listHooks({ agentId: 'victim', status: HookStatus.COMPLETED }),
      await hooks.listHooks({ agentId: 'nobody' }),
    ]);
    expect(value.map(ids)).toEqual([
      ids([done!, active!, pending!]),
      ids([pending!]),
      ids([active!, pending!]),
      ids([done!]),
      [],
    ]);
    // Old code: 5 × 303 elements sorted.
    expect(sorted).toBeLessThanOrEqual(3 + 1 + 2 + 3 + 0);

    // The index follows reassignment and a restart.
    await hooks.abandonHook(active!.hookId, 'gone');
    await hooks.reassignHook(active!.hookId, 'heir');
    expect(ids(await hooks.listHooks({ agentId: 'victim' }))).toEqual(ids([done!, pending!]));
    expect(ids(await hooks.listHooks({ agentId: 'heir' }))).toEqual(ids([active!]));
    await hooks.close();
    const again = manager(() => now);
    expect(ids(await again.listHooks({ agentId: 'victim' }))).toEqual(ids([done!, pending!]));
    expect(ids(await again.listHooks({ agentId: 'heir', status: HookStatus.PENDING }))).toEqual(
      ids([active!]),
    );
    expect(await again.listHooks()).toHaveLength(303);
  }, 120_000);

  it("the fabric's recovery of a lost agent sorts none of the store's finished hooks", async () => {
    vi.useFakeTimers({ toFake: ['Date', 'performance'] });
    try {
      const fabric = new AgentFabric(
        { heartbeatIntervalSeconds: 10 },
        { hooks: { storagePath: join(dir.path, 'fabric'), useGitWorktree: false, fsync: false } },
      );
      try {
        const pool = await fabric.createPool({
          poolId: 'p',
          model: 'm',
          minAgents: 1,
          maxAgents: 1,
          executor: 'remote',
        });
        const agent = pool.currentAgents[0]!;
        await fabric.heartbeat(agent);
        const hooks = fabric.hooks!;
        const finished = await Promise.all(
          Array.from({ length: 200 }, (_, i) => hooks.createHook({ agentId: agent, workItem: i })),
        );
        for (const h of finished) await hooks.activateHook(h.hookId);
        await Promise.all(finished.map((h) => hooks.completeHook(h.hookId, 'done')));
        const open = await hooks.createHook({ agentId: agent, workItem: 'open' });

        // Hooks sorted (the commit of the abandonment sorts its git trees' entries, by shard).
        const hooksOnly = (a: unknown[]): boolean =>
          a.some((x) => typeof x === 'object' && x !== null && 'hookId' in x);
        const { sorted } = await sortedElements(async () => {
          vi.advanceTimersByTime(3 * 10 * 1000 + 1); // silent for three heartbeats
          fabric.lifecycle.checkHealth();
          await fabric.hookRecoveryIdle();
        }, hooksOnly);
        expect((await fabric.getAgentInfo(agent)).status).toBe(AgentStatus.UNHEALTHY);
        expect((await hooks.getHook(open.hookId)).status).toBe(HookStatus.ABANDONED);
        // Old code: the agent's 201 hooks sorted to find its open one.
        expect(sorted).toBeLessThanOrEqual(5);
      } finally {
        await fabric.close();
      }
    } finally {
      vi.useRealTimers();
    }
  }, 120_000);
});

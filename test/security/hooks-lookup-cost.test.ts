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
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
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

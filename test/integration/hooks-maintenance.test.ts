/**
 * Maintenance of the hook store: every transition writes loose objects (the record, its trees,
 * the commit) and nothing ran `git gc`, so a long-running sidecar's store grew loose objects
 * without bound. `maintain()` (and the `maintenanceIntervalSeconds` timer) runs `git gc --auto`:
 * checked on a real git store that it packs, keeps every hook's history (hooks are refs), lets
 * transitions go on while it runs, never runs twice at once, and reports a failing gc without
 * failing hooks. The repository's `gc.auto` is lowered (as an operator may) so a few hundred
 * transitions are enough to trigger it.
 */
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { HookStoreError } from '../../src/errors.js';
import type { MaintenanceEvent } from '../../src/hooks/hook-events.js';
import { HookManager } from '../../src/hooks/hook-manager.js';
import { HookStatus } from '../../src/hooks/hook-status.js';
import { HOOKS_REF } from '../../src/hooks/state-store.js';
import { agentId, closeSidecar, startTestSidecar } from '../fixtures/gateway/harness.js';
import { git, tempDir, type TempDir } from '../fixtures/hooks/temp-store.js';

let dir: TempDir | undefined;
const managers: HookManager[] = [];

afterEach(async () => {
  for (const m of managers.splice(0)) await m.close();
  await dir?.cleanup();
  dir = undefined;
});

async function open(storagePath: string, extra: { maintenanceIntervalSeconds?: number } = {}) {
  const m = await HookManager.open({ storagePath, useGitWorktree: false, fsync: false, ...extra });
  managers.push(m);
  return m;
}

function counts(storagePath: string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const line of git(storagePath, 'count-objects', '-v').split('\n')) {
    const [k, v] = line.split(': ');
    out[k!] = Number(v);
  }
  return out;
}

/** `n` hooks, each created, activated and completed: three commits each. */
async function churn(m: HookManager, n: number): Promise<string[]> {
  const ids: string[] = [];
  for (let i = 0; i < n; i++) {
    const h = await m.createHook({ agentId: `a${i % 7}`, workItem: { i } });
    await m.activateHook(h.hookId);
    await m.completeHook(h.hookId, { done: i });
    ids.push(h.hookId);
  }
  return ids;
}

/** How many commits of the state ref name each hook. */
function historyOf(storagePath: string): Map<string, number> {
  const log = git(storagePath, 'log', '--format=%(trailers:key=Hook-Id,valueonly)', HOOKS_REF);
  const seen = new Map<string, number>();
  for (const id of log.split('\n').filter((l) => l !== '')) {
    seen.set(id, (seen.get(id) ?? 0) + 1);
  }
  return seen;
}

describe('hook store maintenance (git gc --auto)', () => {
  it('packs the loose objects of many transitions; every hook’s history and record reads back', async () => {
    dir = await tempDir('hooks-gc-');
    const storagePath = join(dir.path, 'hooks');
    const m = await open(storagePath);
    git(storagePath, 'config', 'gc.auto', '64');
    const ids = await churn(m, 200); // ~3000 objects: gc --auto's estimate samples 1/256 of them
    const before = counts(storagePath);
    expect(before.count).toBeGreaterThan(64 * 4); // ~5 objects per transition, all loose

    const report = await m.maintain();

    const after = counts(storagePath);
    expect(after.count).toBeLessThan(before.count! / 10);
    expect(after['in-pack']).toBeGreaterThan(before.count! / 2);
    expect(after.packs).toBeGreaterThanOrEqual(1);
    expect(report.before.loose).toBe(before.count);
    expect(report.after).toMatchObject({ loose: after.count, packs: after.packs });
    // The state ref went into packed-refs with the rest (one file for thousands of branches).
    expect(git(storagePath, 'show-ref', HOOKS_REF)).toContain(HOOKS_REF);
    expect(git(storagePath, 'cat-file', '-p', 'HEAD')).toContain('initialise hook store');
    // Nothing was pruned: three commits per hook, every one still there.
    const history = historyOf(storagePath);
    expect(history.size).toBe(ids.length);
    for (const id of ids) expect(history.get(id), id).toBe(3);
    expect(git(storagePath, 'fsck', '--strict', '--no-dangling', '--no-progress')).toBe('');

    // A transition after the gc lands on the packed ref; a restart reads every record back.
    const late = await m.createHook({ agentId: 'late', workItem: 2 });
    const expected = await m.listHooks();
    await m.close();
    const again = await open(storagePath);
    expect(await again.listHooks()).toEqual(expected);
    expect((await again.getHook(late.hookId)).agentId).toBe('late');
    expect(historyOf(storagePath).size).toBe(ids.length + 1);
  });

  it('with worktrees: agents’ branch commits and staged work survive gc, worktrees stay valid', async () => {
    dir = await tempDir('hooks-gc-');
    const storagePath = join(dir.path, 'hooks');
    const m = await HookManager.open({
      storagePath,
      useGitWorktree: true,
      fsync: false,
      progressCommitIntervalMs: 1,
    });
    managers.push(m);
    git(storagePath, 'config', 'gc.auto', '16');
    const hooks = [];
    for (let i = 0; i < 12; i++) {
      const h = await m.createHook({ agentId: `w${i}`, workItem: i, branch: `agent/t-${i}` });
      await m.activateHook(h.hookId);
      const wt = h.worktreePath!;
      await writeFile(join(wt, `done-${i}.txt`), `work ${i}\n`);
      git(wt, 'add', '.');
      git(wt, 'commit', '-q', '-m', `agent work ${i}`);
      // Staged, not committed: only the worktree's index refers to it.
      await writeFile(join(wt, `wip-${i}.txt`), `wip ${i}\n`);
      git(wt, 'add', `wip-${i}.txt`);
      hooks.push(h);
    }
    // Enough commits for gc --auto's estimate (it samples one object folder of 256).
    for (let n = 0; n < 60; n++) {
      for (const h of hooks) await m.recordProgress(h.hookId, `step ${n}`);
    }
    const before = counts(storagePath);
    await m.maintain();
    expect(counts(storagePath).count).toBeLessThan(before.count!);
    for (const [i, h] of hooks.entries()) {
      const wt = h.worktreePath!;
      expect(git(storagePath, 'log', '-1', '--format=%s', `agent/t-${i}`)).toBe(`agent work ${i}`);
      expect(git(wt, 'show', `:wip-${i}.txt`)).toBe(`wip ${i}`);
      expect((await m.inspectWorktree(h.hookId)).valid).toBe(true);
    }
    expect(git(storagePath, 'fsck', '--strict', '--no-dangling', '--no-progress')).toBe('');
  });

  it('transitions made while gc runs all land, in full, and gc does not trip over them', async () => {
    // gc runs back to back while hooks are created, activated and completed in bursts. Before,
    // a transition failed with ENOENT (gc removed an object folder it had emptied between the
    // writer's mkdir and its open), and gc failed on "loose object … is corrupt" (it read a
    // recent tree whose blob was not named yet: objects were named in any order).
    dir = await tempDir('hooks-gc-');
    const storagePath = join(dir.path, 'hooks');
    const m = await open(storagePath);
    git(storagePath, 'config', 'gc.auto', '8');
    const gcErrors: unknown[] = [];
    let runs = 0;
    let stop = false;
    const first = m.maintain();
    expect(m.maintain()).toBe(first); // one run at a time: a second call shares it
    const gcLoop = (async () => {
      await first.catch((e: unknown) => gcErrors.push(e));
      while (!stop) {
        await m.maintain().then(
          () => runs++,
          (e: unknown) => gcErrors.push(e),
        );
      }
    })();
    const failures: unknown[] = [];
    const ids: string[] = [];
    try {
      for (let round = 0; round < 20; round++) {
        const made = await Promise.allSettled(
          Array.from({ length: 20 }, (_, i) => m.createHook({ agentId: `b${i}`, workItem: round })),
        );
        for (const r of made) {
          if (r.status === 'rejected') failures.push(r.reason);
          else ids.push(r.value.hookId);
        }
        const fresh = made.flatMap((r) => (r.status === 'fulfilled' ? [r.value.hookId] : []));
        const moved = await Promise.allSettled(
          fresh.map((id) => m.activateHook(id).then(() => m.completeHook(id, 'ok'))),
        );
        for (const r of moved) if (r.status === 'rejected') failures.push(r.reason);
      }
    } finally {
      stop = true;
      await gcLoop;
    }
    expect(failures.map(String)).toEqual([]);
    expect(gcErrors.map(String)).toEqual([]);
    expect(runs).toBeGreaterThan(0);
    const history = historyOf(storagePath);
    expect(ids).toHaveLength(400);
    for (const id of ids) expect(history.get(id), id).toBe(3);
    expect(git(storagePath, 'fsck', '--strict', '--no-dangling', '--no-progress')).toBe('');
    await m.close();
    const again = await open(storagePath);
    const reread = await again.listHooks({ status: HookStatus.COMPLETED });
    expect(reread.map((h) => h.hookId).sort()).toEqual([...ids].sort());
  });

  it('does not run gc while the store config names a gc.recentObjectsHook (a program gc would run)', async () => {
    dir = await tempDir('hooks-gc-');
    const storagePath = join(dir.path, 'hooks');
    const m = await open(storagePath);
    await churn(m, 2);
    // What an agent with a worktree can write into the shared config. git ≥ 2.42 runs it during
    // gc's prune and repack (the git this suite runs on may be older and ignore it: the test
    // checks that the store refuses to run gc at all, and that the hooks go on).
    const marker = join(dir.path, 'ran');
    git(storagePath, 'config', 'gc.recentObjectsHook', `touch ${marker}`);
    const error = await m.maintain().catch((e: unknown) => e);
    expect(error).toBeInstanceOf(HookStoreError);
    expect((error as Error).message).toMatch(/gc\.recentObjectsHook/);
    const h = await m.createHook({ agentId: 'c', workItem: 'w' });
    expect((await m.activateHook(h.hookId)).status).toBe(HookStatus.ACTIVE);
    // Once the operator removes it, maintenance runs again.
    git(storagePath, 'config', '--unset-all', 'gc.recentObjectsHook');
    await expect(m.maintain()).resolves.toMatchObject({ after: expect.any(Object) });
  });

  it('runs on its timer after hooks were committed; a failing gc is reported, not fatal', async () => {
    dir = await tempDir('hooks-gc-');
    const storagePath = join(dir.path, 'hooks');
    const m = await open(storagePath, { maintenanceIntervalSeconds: 0.05 });
    const ran = new Promise<MaintenanceEvent>((resolve) => m.on('store.maintained', resolve));
    await churn(m, 2);
    expect((await ran).after.loose).toBeGreaterThan(0); // under gc.auto: nothing to pack
    // git refuses the repository's gc config: reported on the event, the hooks go on.
    git(storagePath, 'config', 'gc.logExpiry', 'not-a-date');
    const failed = new Promise<unknown>((resolve) =>
      m.on('store.maintenance_error', ({ error }) => resolve(error)),
    );
    const h = await m.createHook({ agentId: 'c', workItem: 'w' });
    const error = await failed;
    expect(error).toBeInstanceOf(HookStoreError);
    expect((error as HookStoreError).details).toMatchObject({ operation: 'maintenance' });
    expect(String((error as Error).message)).toMatch(/gc/);
    await m.activateHook(h.hookId);
    expect((await m.completeHook(h.hookId, 1)).status).toBe('COMPLETED');
    await expect(m.maintain()).rejects.toBeInstanceOf(HookStoreError);
  });

  it('a sidecar logs a failing maintenance run as a warning (hooks.maintenanceIntervalSeconds)', async () => {
    dir = await tempDir('hooks-gc-');
    const storagePath = join(dir.path, 'hooks');
    let warned: (msg: string) => void = () => undefined;
    const warning = new Promise<string>((resolve) => (warned = resolve));
    const sidecar = await startTestSidecar(
      {
        agents: [{ name: 'w' }],
        hooks: { storagePath, useGitWorktree: false, maintenanceIntervalSeconds: 0.05 },
      },
      {
        logger: (e) => {
          if (e.level === 'warn' && e.msg.includes('store maintenance')) warned(e.msg);
        },
      },
    );
    try {
      git(storagePath, 'config', 'gc.logExpiry', 'not-a-date');
      const h = await sidecar.fabric!.createHook({ agentId: agentId(sidecar, 'w'), workItem: 1 });
      expect(await warning).toMatch(/hooks: store maintenance failed .*gc/);
      expect((await sidecar.fabric!.getHook(h.hookId)).status).toBe('PENDING');
    } finally {
      await closeSidecar(sidecar);
    }
  });
});

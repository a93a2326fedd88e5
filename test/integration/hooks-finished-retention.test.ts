/**
 * `finishedRetention`: finished (COMPLETED, FAILED) hooks were kept forever — in memory and in
 * every state tree — so a long-running store grew without bound (20,000 hooks: 15 s to open,
 * the patrol sorting all of them each run). Past the limit the oldest finished ones leave
 * memory and the next commit's tree, while git's log of the state ref keeps their history;
 * open and ABANDONED hooks are never dropped. Checked on real git stores in temp dirs, signed,
 * across restarts, with the patrol's work counted (elements sorted), not timed.
 */
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { HookManager, HookStatus, type Hook, type StateSigning } from '../../src/hooks/index.js';
import { sortedElements } from '../fixtures/hooks/sort-count.js';
import { git, tempDir, type TempDir } from '../fixtures/hooks/temp-store.js';
import { HOOKS_REF } from '../../src/hooks/state-store.js';

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

/** A signing key with its marker and recorded head kept across the managers of one test. */
function signingState(): StateSigning {
  let signed = false;
  let head: string | undefined;
  return {
    key: 'k'.repeat(64),
    signed: () => signed,
    markSigned: () => {
      signed = true;
    },
    recordedHead: () => head,
    recordHead: (oid) => {
      head = oid;
    },
  };
}

function manager(
  finishedRetention: number | undefined,
  stateSigning?: StateSigning,
  clock: () => number = Date.now,
): HookManager {
  const m = new HookManager({
    storagePath: dir.path,
    useGitWorktree: false,
    fsync: false,
    maintenanceIntervalSeconds: 0,
    ...(finishedRetention === undefined ? {} : { finishedRetention }),
    ...(stateSigning === undefined ? {} : { stateSigning }),
    clock,
  });
  opened.push(m);
  return m;
}

/** Hook ids in the tree of the state ref's head, read with `git ls-tree`. */
function treeHookIds(): string[] {
  const out = git(dir.path, 'ls-tree', '-r', '--name-only', HOOKS_REF);
  return out
    .split('\n')
    .filter((p) => p.startsWith('hooks/') && p.endsWith('.json')) // records, not index entries
    .map((p) => p.slice(p.lastIndexOf('/') + 1, -'.json'.length))
    .sort();
}

const ids = (hooks: readonly Hook[]): string[] => hooks.map((h) => h.hookId).sort();

/** Creates, activates and completes (or fails) one hook of `agentId`. */
async function finish(hooks: HookManager, agentId: string, fail = false): Promise<Hook> {
  const h = await hooks.createHook({ agentId, workItem: agentId });
  await hooks.activateHook(h.hookId, { agentId });
  return fail
    ? hooks.failHook(h.hookId, 'no', { agentId })
    : hooks.completeHook(h.hookId, 'ok', { agentId });
}

describe('hooks.finishedRetention', () => {
  it('drops the oldest finished hooks from memory and the tree, keeps open ones, git log keeps all', async () => {
    let now = 1_700_000_000_000;
    const signing = signingState();
    const hooks = manager(3, signing, () => (now += 10));
    const pending = await hooks.createHook({ agentId: 'victim', workItem: 'pending' });
    const active = await hooks.createHook({ agentId: 'victim', workItem: 'active' });
    await hooks.activateHook(active.hookId);
    const abandoned = await hooks.createHook({ agentId: 'gone', workItem: 'abandoned' });
    await hooks.abandonHook(abandoned.hookId, 'went silent');
    const finished: Hook[] = [];
    for (let i = 0; i < 7; i++) finished.push(await finish(hooks, 'worker', i % 3 === 0));

    const open = [pending, active, abandoned];
    const kept = finished.slice(-3);
    const dropped = finished.slice(0, 4);
    expect(ids(await hooks.listHooks())).toEqual(ids([...open, ...kept]));
    expect(ids(await hooks.listHooks({ status: HookStatus.PENDING }))).toEqual([pending.hookId]);
    await expect(hooks.getHook(dropped[0]!.hookId)).rejects.toMatchObject({
      code: 'FABRIC_ERR_HOOK_NOT_FOUND',
    });
    expect(treeHookIds()).toEqual(ids([...open, ...kept]));
    // The history of the dropped hooks stays in the ref's log.
    for (const h of dropped) {
      const log = git(dir.path, 'log', '--format=%H', `--grep=Hook-Id: ${h.hookId}`, HOOKS_REF);
      expect(log.split('\n').filter(Boolean).length).toBe(3); // created, activated, finished
    }
    expect(git(dir.path, 'log', '--format=%s', HOOKS_REF)).toMatch(
      /^trim: 1 finished hook\(s\) dropped \(finishedRetention 3\)$/m,
    );

    // Restarted (signed): loads what the tree holds, verified, nothing quarantined.
    await hooks.close();
    const again = manager(3, signing, () => (now += 10));
    expect(ids(await again.listHooks())).toEqual(ids([...open, ...kept]));
    expect(again.stats.quarantinedHeads).toBe(0);
    expect((await again.hookFor('victim'))?.hookId).toBe(active.hookId);
  }, 120_000);

  it('trims a store over the limit at open in memory, and in git with its next commit', async () => {
    const first = manager(undefined);
    const finished: Hook[] = [];
    for (let i = 0; i < 6; i++) finished.push(await finish(first, 'worker'));
    const open = await first.createHook({ agentId: 'victim', workItem: 'open' });
    await first.close();
    expect(treeHookIds()).toHaveLength(7);

    const lowered = manager(2);
    expect(ids(await lowered.listHooks())).toEqual(ids([open, ...finished.slice(-2)]));
    expect(treeHookIds()).toHaveLength(7); // no commit yet
    const next = await lowered.createHook({ agentId: 'victim', workItem: 'next' });
    expect(treeHookIds()).toEqual(ids([open, next, ...finished.slice(-2)]));
    await lowered.close();
    // Without the limit lowered any more, a restart holds exactly the trimmed set.
    const restarted = manager(undefined);
    expect(ids(await restarted.listHooks())).toEqual(ids([open, next, ...finished.slice(-2)]));
  }, 120_000);

  it('a reassigned FAILED hook leaves the finished set; its next finish counts as newest', async () => {
    const hooks = manager(2);
    const failed = await finish(hooks, 'a', true);
    const done = await finish(hooks, 'a');
    await hooks.reassignHook(failed.hookId, 'b');
    const third = await finish(hooks, 'a');
    // `failed` is PENDING again: 2 finished (done, third), nothing dropped.
    expect(ids(await hooks.listHooks())).toEqual(ids([failed, done, third]));
    await hooks.activateHook(failed.hookId, { agentId: 'b' });
    await hooks.completeHook(failed.hookId, 'ok', { agentId: 'b' });
    // Now `done` is the oldest finished.
    expect(ids(await hooks.listHooks())).toEqual(ids([failed, third]));
    expect(treeHookIds()).toEqual(ids([failed, third]));
  }, 120_000);

  it('0 keeps no finished hook; the completion still answers with the record', async () => {
    const hooks = manager(0);
    const done = await finish(hooks, 'a');
    expect(done.status).toBe(HookStatus.COMPLETED);
    expect(await hooks.listHooks()).toEqual([]);
    expect(treeHookIds()).toEqual([]);
    const open = await hooks.createHook({ agentId: 'a', workItem: 'x' });
    expect(treeHookIds()).toEqual([open.hookId]);
  }, 120_000);

  it("an agent finishing many hooks of its own never drops another agent's open hook", async () => {
    const hooks = manager(5);
    const victimPending = await hooks.createHook({ agentId: 'victim', workItem: 'p' });
    const victimActive = await hooks.createHook({ agentId: 'victim', workItem: 'a' });
    await hooks.activateHook(victimActive.hookId, { agentId: 'victim' });
    const mine = await Promise.all(
      Array.from({ length: 60 }, (_, i) => hooks.createHook({ agentId: 'hostile', workItem: i })),
    );
    await Promise.all(mine.map((h) => hooks.activateHook(h.hookId, { agentId: 'hostile' })));
    await Promise.all(mine.map((h) => hooks.completeHook(h.hookId, 'x', { agentId: 'hostile' })));
    const left = await hooks.listHooks();
    expect(left.filter((h) => h.status === HookStatus.COMPLETED)).toHaveLength(5);
    expect(ids(left.filter((h) => h.agentId === 'victim'))).toEqual(
      ids([victimPending, victimActive]),
    );
    expect(treeHookIds()).toEqual(ids(left));
    expect((await hooks.hookFor('victim'))?.hookId).toBe(victimActive.hookId);
  }, 120_000);

  it('the patrol sorts only open and ABANDONED hooks, not every finished one', async () => {
    let now = 1_700_000_000_000;
    const hooks = manager(undefined, undefined, () => now);
    const finished = await Promise.all(
      Array.from({ length: 300 }, (_, i) => hooks.createHook({ agentId: 'w', workItem: i })),
    );
    await Promise.all(finished.map((h) => hooks.activateHook(h.hookId)));
    await Promise.all(finished.map((h) => hooks.completeHook(h.hookId, 'ok')));
    const open = await hooks.createHook({ agentId: 'x', workItem: 'open' });
    now += 10;
    const gone = await hooks.createHook({ agentId: 'y', workItem: 'abandoned' });
    await hooks.abandonHook(gone.hookId, 'gone');
    now += 10;

    const { value: report, sorted } = await sortedElements(() => hooks.checkPendingHooks());
    expect(report.map((h) => h.hookId)).toEqual([open.hookId, gone.hookId]);
    // Old code: 302 elements sorted.
    expect(sorted).toBeLessThanOrEqual(2);
  }, 120_000);
});

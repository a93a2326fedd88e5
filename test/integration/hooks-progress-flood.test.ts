/**
 * A flood of progress reports on one ACTIVE hook must not grow the hook store without bound:
 * reports within `progressCommitIntervalMs` of the hook's last commit are held in memory (seen at
 * once by getHook and the patrol) and go to git with the hook's next commit — the next report
 * after the interval, the timer at the interval's end, a transition, or close().
 */
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import {
  HOOKS_REF,
  HookManager,
  HookStatus,
  type Hook,
  type HookManagerOptions,
} from '../../src/hooks/index.js';
import { hookShard } from '../../src/hooks/hook-id.js';
import { git, tempDir, type TempDir } from '../fixtures/hooks/temp-store.js';

let dir: TempDir;
const open: HookManager[] = [];
/** The managers' clock: frozen unless a test moves it. */
let now = 1_700_000_000_000;

beforeEach(async () => {
  dir = await tempDir();
  now = 1_700_000_000_000;
});

afterEach(async () => {
  await Promise.all(open.splice(0).map((m) => m.close()));
  await dir.cleanup();
});

function manager(options: Partial<HookManagerOptions> = {}): HookManager {
  const m = new HookManager({
    storagePath: dir.path,
    useGitWorktree: false,
    clock: () => now,
    ...options,
  });
  open.push(m);
  return m;
}

/** Commits on the state ref. */
function commits(): number {
  return Number(git(dir.path, 'rev-list', '--count', HOOKS_REF));
}

/** Loose objects in the store (every commit writes its objects loose). */
function looseObjects(): number {
  const line = git(dir.path, 'count-objects', '-v')
    .split('\n')
    .find((l) => l.startsWith('count: '));
  return Number(line!.slice('count: '.length));
}

/** The hook's record as committed on the state ref. */
function committed(hookId: string): Hook {
  const path = `hooks/${hookShard(hookId)}/${hookId}.json`;
  return JSON.parse(git(dir.path, 'show', `${HOOKS_REF}:${path}`)) as Hook;
}

/** Message of the ref's last commit. */
function lastMessage(): string {
  return git(dir.path, 'log', '-1', '--format=%B', HOOKS_REF);
}

async function activeHook(hooks: HookManager): Promise<Hook> {
  const h = await hooks.createHook({ agentId: 'agent-1', workItem: { task: 'x'.repeat(2000) } });
  return hooks.activateHook(h.hookId);
}

const N = 300;

describe('progress reports on one hook', () => {
  it('a flood adds no commit and no object until the hook next commits; reads see the latest note', async () => {
    const hooks = manager({ progressCommitIntervalMs: 3_600_000 });
    const h = await activeHook(hooks);
    const events: (string | null)[] = [];
    hooks.on('hook.progress', (e) => events.push(e.commit));
    const commitsBefore = commits();
    const objectsBefore = looseObjects();

    // Half one after the other, half at once (they share the manager's write queue).
    for (let i = 0; i < N / 2; i++) await hooks.recordProgress(h.hookId, `step ${i}`);
    const last = await Promise.all(
      Array.from({ length: N / 2 }, (_, i) => hooks.recordProgress(h.hookId, `step ${N / 2 + i}`)),
    );
    expect(last.at(-1)).toMatchObject({ progressNote: `step ${N - 1}`, lastProgressAt: now });

    expect(commits()).toBe(commitsBefore);
    expect(looseObjects()).toBe(objectsBefore);
    // Every report was recorded (and announced, not yet with a commit)…
    expect(events).toHaveLength(N);
    expect(new Set(events)).toEqual(new Set([null]));
    // …and reads see the latest one at once: GetHook and the patrol's staleness clock.
    expect(await hooks.getHook(h.hookId)).toMatchObject({
      status: HookStatus.ACTIVE,
      progressNote: `step ${N - 1}`,
      lastProgressAt: now,
      version: h.version,
      updatedAt: h.updatedAt,
    });
    now += 599_000; // staleAfterSeconds is 600
    const reported = await hooks.recordProgress(h.hookId, 'late in the spell');
    expect(reported.lastProgressAt).toBe(now);
    now += 599_000;
    expect((await hooks.checkPendingHooks())[0]).toMatchObject({ stale: false });

    // The next commit of the hook (here: completing it) carries the latest note to git.
    await hooks.completeHook(h.hookId, { ok: true });
    expect(commits()).toBe(commitsBefore + 1);
    expect(looseObjects()).toBeLessThanOrEqual(objectsBefore + 5);
    expect(committed(h.hookId)).toMatchObject({
      status: HookStatus.COMPLETED,
      progressNote: 'late in the spell',
      lastProgressAt: now - 599_000,
      version: h.version + 1,
    });
    expect(lastMessage()).toContain(`Progress-Folded: ${N + 1}`);
    expect(lastMessage()).toContain('Progress-Note: late in the spell');
  });

  it('a report after the interval commits at once, with the held ones folded into it', async () => {
    const hooks = manager({ progressCommitIntervalMs: 60_000 });
    const h = await activeHook(hooks);
    const before = commits();
    for (let i = 0; i < 10; i++) await hooks.recordProgress(h.hookId, `step ${i}`);
    expect(commits()).toBe(before);

    now += 60_000;
    const reported = await hooks.recordProgress(h.hookId, 'after the interval');
    expect(commits()).toBe(before + 1);
    expect(reported).toMatchObject({ version: h.version + 1, updatedAt: now });
    expect(committed(h.hookId)).toEqual(reported);
    expect(lastMessage()).toMatch(/^hook \S+: progress \(ACTIVE\)$/m);
    expect(lastMessage()).toContain('Note: after the interval');
    expect(lastMessage()).toContain('Progress-Folded: 10');

    // The interval starts again from that commit.
    now += 59_999;
    await hooks.recordProgress(h.hookId, 'held again');
    expect(commits()).toBe(before + 1);
  });

  it('commits the latest note when the interval ends, without another call', async () => {
    const hooks = manager({ progressCommitIntervalMs: 50 });
    const h = await activeHook(hooks);
    const before = commits();
    for (let i = 0; i < 50; i++) await hooks.recordProgress(h.hookId, `step ${i}`);
    // Until git and memory agree (the ref can move a moment before the manager sees its commit).
    await vi.waitFor(
      async () => {
        const seen = await hooks.getHook(h.hookId);
        expect(seen.progressNote).toBe('step 49');
        expect(committed(h.hookId)).toEqual(seen);
      },
      { timeout: 10_000, interval: 20 },
    );
    expect(commits()).toBeGreaterThan(before);
    expect(lastMessage()).toContain('Note: step 49');
    expect(lastMessage()).toMatch(/^Progress-Folded: \d+$/m);
    // The audit trail agrees with the record: one commit per version.
    expect(commits()).toBe((await hooks.listHooks()).reduce((n, x) => n + x.version, 0));
  });

  it('close() commits held progress; a restart sees it', async () => {
    const first = manager({ progressCommitIntervalMs: 60_000 });
    const h = await activeHook(first);
    for (let i = 0; i < 20; i++) await first.recordProgress(h.hookId, `step ${i}`);
    const before = commits();
    await first.close();
    expect(commits()).toBe(before + 1);
    expect(lastMessage()).toContain('Progress-Folded: 20');

    const second = manager();
    expect(await second.getHook(h.hookId)).toMatchObject({
      status: HookStatus.ACTIVE,
      progressNote: 'step 19',
      version: h.version + 1,
    });
  });

  it('a transition carries held progress, also when the patrol abandons the hook', async () => {
    const dead = new Set<string>();
    const hooks = manager({
      progressCommitIntervalMs: 60_000,
      liveness: { isAlive: (id) => !dead.has(id) },
    });
    const h = await activeHook(hooks);
    await hooks.recordProgress(h.hookId, 'before the crash');
    const before = commits();
    dead.add('agent-1');
    await hooks.checkPendingHooks();
    expect(commits()).toBe(before + 1);
    expect(committed(h.hookId)).toMatchObject({
      status: HookStatus.ABANDONED,
      progressNote: 'before the crash',
    });
    expect(lastMessage()).toContain('Progress-Folded: 1');
  });
});

import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { HOOKS_REF, HookManager, HookRecordSchema, HookStatus } from '../../src/hooks/index.js';
import {
  exited,
  git,
  spawnFixture,
  tempDir,
  waitForLine,
  type TempDir,
} from '../fixtures/hooks/temp-store.js';

let dir: TempDir;

beforeEach(async () => {
  dir = await tempDir();
});

afterEach(async () => {
  await dir.cleanup();
});

/** Starts transition-loop, lets it commit past `ticks` transitions, then kill -9s it. */
async function killMidLoop(ticks: number, worktree: boolean): Promise<Map<string, string>> {
  const child = spawnFixture('transition-loop', [dir.path, ...(worktree ? ['--worktree'] : [])]);
  const committed = new Map<string, string>();
  child.stdout.on('data', (chunk: Buffer) => {
    for (const line of chunk.toString('utf8').split('\n')) {
      const m = /^tick \d+ (\S+) (\S+)$/.exec(line);
      if (m) committed.set(m[1]!, m[2]!);
    }
  });
  const pattern = new RegExp(`^tick ${ticks} `);
  await waitForLine(child, pattern);
  child.kill('SIGKILL');
  const { signal } = await exited(child);
  expect(signal).toBe('SIGKILL');
  return committed;
}

/** Checks the store after a crash: fsck passes and every hook is a valid committed record. */
async function checkStore(committed: Map<string, string>): Promise<void> {
  // Dangling objects from a write cut short are fine; anything broken is not.
  git(dir.path, 'fsck', '--strict', '--no-dangling', '--no-progress');
  const hooks = await HookManager.open({ storagePath: dir.path, useGitWorktree: false });
  try {
    const all = await hooks.listHooks();
    for (const h of all) expect(HookRecordSchema.safeParse(h).success).toBe(true);
    const byId = new Map(all.map((h) => [h.hookId, h]));
    // Every transition the child saw acknowledged is there (or a later one).
    for (const [hookId, status] of committed) {
      const now = byId.get(hookId);
      expect(now, `hook ${hookId} acknowledged as ${status}`).toBeDefined();
      expect(Object.values(HookStatus)).toContain(now!.status);
    }
    // The audit trail agrees with the records: one commit per version of every hook.
    const commits = Number(git(dir.path, 'rev-list', '--count', HOOKS_REF));
    expect(commits).toBe(all.reduce((n, h) => n + h.version, 0));
  } finally {
    await hooks.close();
  }
}

describe('kill -9 in the middle of transitions', () => {
  it('leaves the old or the new state, never a broken repository', async () => {
    let all = new Map<string, string>();
    for (const ticks of [17, 41, 29]) {
      const committed = await killMidLoop(ticks, false);
      all = new Map([...all, ...committed]);
      await checkStore(all);
    }
  });

  it('also with worktrees being created', async () => {
    const committed = await killMidLoop(13, true);
    await checkStore(committed);
    git(dir.path, 'worktree', 'list');
  });
});

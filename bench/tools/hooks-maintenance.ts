/**
 * Hook store maintenance, measured (not part of `npm run bench`; run with
 * `npx tsx bench/tools/hooks-maintenance.ts [hooks] [branches]`):
 *
 * - what `hooks` lifecycles (create → activate → complete, 3 commits each) leave in the store:
 *   loose objects and their size, then `maintain()` (`git gc --auto`, the repository's default
 *   `gc.auto`): how long it took and what is left;
 * - transition latency (one hook's 3 transitions, awaited) with no gc running vs while `git gc`
 *   (forced by a low `gc.auto`) runs back to back;
 * - `branches` loose hook branches (as `useGitWorktree` makes, one per hook): `for-each-ref` and
 *   the store's own read of its ref, loose vs packed (`pack-refs`, which gc runs).
 */
import { execFileSync } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { HookManager } from '../../src/hooks/index.js';
import { median } from '../lib.js';

const HOOKS = Number(process.argv[2] ?? 2000);
const BRANCHES = Number(process.argv[3] ?? 5000);
if (![HOOKS, BRANCHES].every((n) => Number.isInteger(n) && n > 0)) {
  console.error(
    'usage: npx tsx bench/tools/hooks-maintenance.ts [hooks] [branches] (positive integers)',
  );
  process.exit(2);
}

function git(cwd: string, ...args: string[]): string {
  return execFileSync('git', args, { cwd, encoding: 'utf8', maxBuffer: 1 << 28 }).trim();
}

function counts(dir: string): Record<string, number> {
  return Object.fromEntries(
    git(dir, 'count-objects', '-v')
      .split('\n')
      .map((l) => l.split(': '))
      .map(([k, v]) => [k!, Number(v)]),
  );
}

async function lifecycle(m: HookManager, i: number): Promise<number> {
  const t = performance.now();
  const h = await m.createHook({ agentId: `a${i % 16}`, workItem: { i, task: 'x'.repeat(200) } });
  await m.activateHook(h.hookId);
  await m.completeHook(h.hookId, { ok: i });
  return performance.now() - t;
}

function timeIt(n: number, fn: () => void): number {
  const ms: number[] = [];
  for (let i = 0; i < n; i++) {
    const t = performance.now();
    fn();
    ms.push(performance.now() - t);
  }
  return median(ms);
}

async function main(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'bench-hooks-gc-'));
  try {
    const m = await HookManager.open({
      storagePath: dir,
      useGitWorktree: false,
      maintenanceIntervalSeconds: 0,
    });
    const quiet: number[] = [];
    for (let i = 0; i < HOOKS; i++) quiet.push(await lifecycle(m, i));
    const before = counts(dir);
    const report = await m.maintain();
    const after = counts(dir);
    console.log(
      `${HOOKS} hooks (${HOOKS * 3} commits): loose ${before.count} objects / ${before.size} KiB` +
        ` -> gc --auto ${report.durationMs} ms -> loose ${after.count}, packed ${after['in-pack']}` +
        ` in ${after.packs} pack(s) / ${after['size-pack']} KiB`,
    );

    // Latency with gc running back to back (gc.auto low so every run has work).
    git(dir, 'config', 'gc.auto', '32');
    let stop = false;
    let runs = 0;
    const loop = (async () => {
      while (!stop) {
        await m.maintain();
        runs++;
      }
    })();
    const busy: number[] = [];
    for (let i = 0; i < 300; i++) busy.push(await lifecycle(m, HOOKS + i));
    stop = true;
    await loop;
    git(dir, 'config', '--unset', 'gc.auto');
    console.log(
      `lifecycle (3 transitions, fsync on) median ${median(quiet).toFixed(2)} ms quiet, ` +
        `${median(busy).toFixed(2)} ms while gc ran ${runs} times back to back`,
    );
    await m.close();

    // Thousands of hook branches: loose vs packed refs.
    const head = git(dir, 'rev-parse', 'HEAD');
    const input = Array.from(
      { length: BRANCHES },
      (_, i) => `create refs/heads/agent/task-${i} ${head}\n`,
    ).join('');
    execFileSync('git', ['update-ref', '--stdin'], { cwd: dir, input });
    git(dir, 'pack-refs', '--prune'); // only the state ref loose again below: measure loose
    execFileSync('git', ['update-ref', '--stdin'], {
      cwd: dir,
      input: Array.from(
        { length: BRANCHES },
        (_, i) => `update refs/heads/agent/task-${i} ${head}\n`,
      ).join(''),
    });
    const looseAll = timeIt(20, () => git(dir, 'for-each-ref', '--format=%(refname)'));
    const looseOne = timeIt(20, () => git(dir, 'for-each-ref', 'refs/fabric/hooks'));
    git(dir, 'pack-refs', '--all', '--prune');
    const packedAll = timeIt(20, () => git(dir, 'for-each-ref', '--format=%(refname)'));
    const packedOne = timeIt(20, () => git(dir, 'for-each-ref', 'refs/fabric/hooks'));
    console.log(
      `${BRANCHES} branches: for-each-ref all ${looseAll.toFixed(1)} ms loose vs ` +
        `${packedAll.toFixed(1)} ms packed; the store's read of its ref ${looseOne.toFixed(1)} ms ` +
        `loose vs ${packedOne.toFixed(1)} ms packed`,
    );
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

await main();

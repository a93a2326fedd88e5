/**
 * Opening a hook store with many finished hooks, measured (not part of `npm run bench`; run with
 * `npx tsx bench/tools/hooks-open.ts [finished] [pending] [other checkout]`):
 *
 * builds a store with `finished` COMPLETED hooks and `pending` PENDING ones (the real
 * HookManager, 64 lifecycles in flight), copies it, runs `git gc` on the copy, then opens each
 * (loose objects, packed) in a fresh `node` process — `HookManager.open()` then `hookFor` of a
 * pending hook's agent — 3 times each, alternating, and prints the median wall time, the
 * process's CPU time (its own and its git children's: `/usr/bin/time`) and how many git
 * processes it ran (a `git` shim first in `PATH` counts them). With another checkout of the
 * repository (its `bench/tools/hooks-open.ts`, e.g. a `git worktree` of an earlier commit), each
 * open is also run with that code, alternating, on the same stores: a same-run comparison.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { HookManager } from '../../src/hooks/index.js';
import { median } from '../lib.js';

const FINISHED = Number(process.argv[2] ?? 10_000);
const PENDING = Number(process.argv[3] ?? 3);
const self = fileURLToPath(import.meta.url);
const OTHER = process.argv[4];

if (process.argv[2] === '--open') {
  // Child: open the store at argv[3], find the pending work, close.
  const t = performance.now();
  const m = await HookManager.open({
    storagePath: process.argv[3]!,
    useGitWorktree: false,
    maintenanceIntervalSeconds: 0,
  });
  const mine = await m.hookFor('pending-0');
  const ms = performance.now() - t;
  await m.close();
  const cpu = process.cpuUsage();
  console.log(
    JSON.stringify({ ms, found: mine !== undefined, nodeCpuMs: (cpu.user + cpu.system) / 1000 }),
  );
  process.exit(0);
}

/** `name=path,…`: measure these existing stores instead (nothing built, no gc). */
const GIVEN = process.env.HOOKS_OPEN_STORES;

async function build(root: string): Promise<(readonly [string, string])[]> {
  const loose = join(root, 'loose');
  const m = await HookManager.open({
    storagePath: loose,
    fsync: false,
    useGitWorktree: false,
    maintenanceIntervalSeconds: 0,
  });
  let next = 0;
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: 64 }, async () => {
      while (next < FINISHED) {
        const i = next++;
        const h = await m.createHook({
          agentId: `a${i % 16}`,
          workItem: { i, task: 'x'.repeat(200) },
        });
        await m.activateHook(h.hookId);
        await m.completeHook(h.hookId, { ok: i });
      }
    }),
  );
  for (let i = 0; i < PENDING; i++)
    await m.createHook({ agentId: `pending-${i}`, workItem: { i } });
  await m.close();
  console.log(
    `built ${FINISHED} finished + ${PENDING} pending in ${((performance.now() - t0) / 1000).toFixed(1)} s`,
  );
  const packed = join(root, 'packed');
  execFileSync('cp', ['-a', loose, packed]);
  execFileSync('git', ['gc', '--quiet'], { cwd: packed });
  return [
    ['loose', loose],
    ['packed', packed],
  ];
}

const root = mkdtempSync(join(tmpdir(), 'hooks-open-'));
try {
  const stores =
    GIVEN === undefined
      ? await build(root)
      : GIVEN.split(',').map((pair) => pair.split('=') as [string, string]);

  const shim = join(root, 'bin');
  const log = join(root, 'git.log');
  execFileSync('mkdir', ['-p', shim]);
  const realGit = execFileSync('sh', ['-c', 'command -v git'], { encoding: 'utf8' }).trim();
  writeFileSync(join(shim, 'git'), `#!/bin/sh\necho x >> ${log}\nexec ${realGit} "$@"\n`);
  chmodSync(join(shim, 'git'), 0o755);

  const runs: Record<string, { ms: number[]; cpu: number[]; node: number[]; git: number[] }> = {};
  const codes: [string, string][] = [['this', self]];
  if (OTHER !== undefined) codes.push(['other', join(OTHER, 'bench/tools/hooks-open.ts')]);
  for (let r = 0; r < 3; r++) {
    for (const [store, dir] of stores)
      for (const [code, script] of codes) {
        const name = `${store} (${code} code)`;
        writeFileSync(log, '');
        const child = spawnSync(
          '/usr/bin/time',
          ['-f', 'TIME %U %S', process.execPath, '--import', 'tsx', script, '--open', dir],
          {
            encoding: 'utf8',
            cwd: dirname(dirname(dirname(script))),
            env: { ...process.env, PATH: `${shim}:${process.env.PATH}` },
          },
        );
        const out = child.stdout;
        const time = /TIME ([\d.]+) ([\d.]+)/.exec(child.stderr);
        if (child.status !== 0 || time === null) throw new Error(`open failed: ${child.stderr}`);
        const res = JSON.parse(out.trim().split('\n').pop()!) as {
          ms: number;
          found: boolean;
          nodeCpuMs: number;
        };
        if (!res.found) throw new Error('pending hook not found');
        const e = (runs[name] ??= { ms: [], cpu: [], node: [], git: [] });
        e.ms.push(res.ms);
        e.cpu.push((Number(time[1]) + Number(time[2])) * 1000);
        e.node.push(res.nodeCpuMs);
        e.git.push(readFileSync(log, 'utf8').split('\n').filter(Boolean).length);
      }
  }
  for (const [name, e] of Object.entries(runs)) {
    console.log(
      `${name}: open+hookFor median ${median(e.ms).toFixed(0)} ms (runs ${e.ms.map((x) => x.toFixed(0)).join(', ')}), node CPU ${median(e.node).toFixed(0)} ms, process+git CPU ${median(e.cpu).toFixed(0)} ms, git processes ${median(e.git)}`,
    );
  }
} finally {
  rmSync(root, { recursive: true, force: true });
}

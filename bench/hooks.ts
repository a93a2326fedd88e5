/**
 * Hook transitions against a bare git commit of the same file, in the same run.
 *
 * - `hook-transition`: create → activate → complete, one hook at a time (every call awaited, so
 *   every transition is durable before the next starts), vs writing the hook's JSON file and
 *   `git add` + `git commit` through simple-git.
 * - `hook-transition-raw-git`: the same, vs `git add` + `git commit` run directly with
 *   child_process (no simple-git overhead): the cost of git itself.
 * - `hook-transition-concurrent`: 16 hooks in flight at once (transitions queued during a write
 *   share the next ref update, each still its own commit), vs the simple-git baseline.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { promisify } from 'node:util';
import { simpleGit, type SimpleGit } from 'simple-git';
import { HookManager, stateSigningFrom } from '../src/hooks/index.js';
import { SqliteStore } from '../src/store/sqlite-store.js';
import { Latency, median, type BenchSuite } from './lib.js';

const run = promisify(execFile);
const IDENTITY = ['user.name=bench', 'user.email=bench@agent-fabric.local', 'commit.gpgsign=false'];

interface Side {
  opsPerSecond: number;
  latency: Latency;
}

async function tempDir(): Promise<string> {
  return mkdtemp(join(tmpdir(), 'bench-hooks-'));
}

/** `lifecycles` hooks, one after the other, 3 transitions each. */
async function hookSequential(
  hooks: HookManager,
  lifecycles: number,
  lat: Latency,
): Promise<number> {
  const start = performance.now();
  for (let i = 0; i < lifecycles; i++) {
    let t = performance.now();
    const h = await hooks.createHook({ agentId: `agent-${i % 4}`, workItem: { task: 'bench', i } });
    lat.recordMs(performance.now() - t);
    t = performance.now();
    await hooks.activateHook(h.hookId);
    lat.recordMs(performance.now() - t);
    t = performance.now();
    await hooks.completeHook(h.hookId, { ok: true });
    lat.recordMs(performance.now() - t);
  }
  return (lifecycles * 3) / ((performance.now() - start) / 1000);
}

/** `lifecycles` hooks, `inFlight` at a time. */
async function hookConcurrent(
  hooks: HookManager,
  lifecycles: number,
  inFlight: number,
  lat: Latency,
): Promise<number> {
  const start = performance.now();
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < lifecycles) {
      const i = next++;
      let t = performance.now();
      const h = await hooks.createHook({
        agentId: `agent-${i % 4}`,
        workItem: { task: 'bench', i },
      });
      lat.recordMs(performance.now() - t);
      t = performance.now();
      await hooks.activateHook(h.hookId);
      lat.recordMs(performance.now() - t);
      t = performance.now();
      await hooks.completeHook(h.hookId, { ok: true });
      lat.recordMs(performance.now() - t);
    }
  };
  await Promise.all(Array.from({ length: inFlight }, worker));
  return (lifecycles * 3) / ((performance.now() - start) / 1000);
}

/** The baseline: rewrite the hook's JSON file and commit it, `commits` times. */
async function gitCommits(
  repo: string,
  commit: (message: string) => Promise<void>,
  commits: number,
  lat: Latency,
): Promise<number> {
  const statuses = ['PENDING', 'ACTIVE', 'COMPLETED'];
  const start = performance.now();
  for (let i = 0; i < commits; i++) {
    const t = performance.now();
    const status = statuses[i % 3]!;
    await writeFile(
      join(repo, 'hook.json'),
      `${JSON.stringify({ hookId: `h${Math.floor(i / 3)}`, status, workItem: { task: 'bench', i } }, null, 2)}\n`,
    );
    await commit(`hook h${Math.floor(i / 3)}: -> ${status}`);
    lat.recordMs(performance.now() - t);
  }
  return commits / ((performance.now() - start) / 1000);
}

async function initRepo(): Promise<{ path: string; git: SimpleGit }> {
  const path = await tempDir();
  const git = simpleGit({ baseDir: path, config: IDENTITY });
  await git.raw(['init', '--initial-branch=main']);
  await git.raw(['commit', '--allow-empty', '-m', 'init']);
  return { path, git };
}

const suite: BenchSuite = {
  name: 'hooks',
  async run(ctx) {
    const rounds = ctx.quick ? 1 : 3;
    const lifecycles = ctx.quick ? 4 : 12;
    const commits = lifecycles * 3;
    const hookDir = await tempDir();
    const stateDir = await tempDir();
    // Signed, as a sidecar with a durable state file runs it: one HMAC per commit, and the
    // commit recorded in the state file after each.
    const state = await SqliteStore.open(join(stateDir, 'state.db'));
    const hooks = await HookManager.open({
      storagePath: hookDir,
      useGitWorktree: false,
      stateSigning: stateSigningFrom(state)!,
    });
    const base = await initRepo();
    const dirs = [hookDir, stateDir, base.path];
    try {
      const viaSimpleGit = async (message: string): Promise<void> => {
        await base.git.add('hook.json');
        await base.git.commit(message);
      };
      const cfg = IDENTITY.flatMap((c) => ['-c', c]);
      const viaRawGit = async (message: string): Promise<void> => {
        await run('git', [...cfg, 'add', 'hook.json'], { cwd: base.path });
        await run('git', [...cfg, 'commit', '-q', '-m', message], { cwd: base.path });
      };

      // Warm-up: both sides once.
      await hookSequential(hooks, 2, new Latency());
      await gitCommits(base.path, viaSimpleGit, 3, new Latency());
      await gitCommits(base.path, viaRawGit, 3, new Latency());

      const cases = [
        {
          name: 'hook-transition',
          baseline: 'git add + git commit of the same file via simple-git',
          project: (lat: Latency) => hookSequential(hooks, lifecycles, lat),
          base: (lat: Latency) => gitCommits(base.path, viaSimpleGit, commits, lat),
        },
        {
          name: 'hook-transition-raw-git',
          baseline: 'git add + git commit of the same file via child_process',
          project: (lat: Latency) => hookSequential(hooks, lifecycles, lat),
          base: (lat: Latency) => gitCommits(base.path, viaRawGit, commits, lat),
        },
        {
          name: 'hook-transition-concurrent',
          baseline: 'git add + git commit of the same file via simple-git (sequential)',
          project: (lat: Latency) => hookConcurrent(hooks, lifecycles * 4, 16, lat),
          base: (lat: Latency) => gitCommits(base.path, viaSimpleGit, commits, lat),
        },
      ];
      for (const c of cases) {
        const project: Side = { opsPerSecond: 0, latency: new Latency() };
        const baseline: Side = { opsPerSecond: 0, latency: new Latency() };
        const p: number[] = [];
        const b: number[] = [];
        const ratios: number[] = [];
        // Interleaved rounds; the ratio is the median of per-round ratios (noisy shared box).
        for (let r = 0; r < rounds; r++) {
          const pv = await c.project(project.latency);
          const bv = await c.base(baseline.latency);
          p.push(pv);
          b.push(bv);
          ratios.push(pv / bv);
        }
        project.opsPerSecond = median(p);
        baseline.opsPerSecond = median(b);
        ctx.report({
          suite: 'hooks',
          case: c.name,
          unit: 'transitions/s',
          value: Math.round(project.opsPerSecond * 10) / 10,
          baseline: c.baseline,
          baselineValue: Math.round(baseline.opsPerSecond * 10) / 10,
          ratio: Math.round(median(ratios) * 100) / 100,
          higherIsBetter: true,
          p50Us: project.latency.percentileUs(50),
          p99Us: project.latency.percentileUs(99),
          baselineP50Us: baseline.latency.percentileUs(50),
          baselineP99Us: baseline.latency.percentileUs(99),
          goal: c.name === 'hook-transition' ? 'ratio >= 0.5' : undefined,
        });
      }
    } finally {
      await hooks.close();
      await state.close();
      await Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true })));
    }
  },
};

export default suite;

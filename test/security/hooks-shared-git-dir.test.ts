/**
 * An agent works in its hook's git worktree, which shares the hook store's git directory
 * (config, hook scripts, info files, refs — `refs/fabric/hooks` too). Everything below is what
 * that agent can do with plain git from inside its own worktree; the sidecar must not run its
 * programs (hook scripts, an fsmonitor, filter drivers) nor take its forged state, and its
 * maintenance gc must neither be silenced nor prune the store's history. Real git, real
 * repositories in temp dirs; the effect is checked on disk and in the store.
 */
import { execFileSync, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { chmod, mkdir, readdir, readFile, rm, utimes, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { deflateSync } from 'node:zlib';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { HookStoreError } from '../../src/errors.js';
import { HOOKS_REF, HookManager, HookStatus } from '../../src/hooks/index.js';
import { tempDir, type TempDir } from '../fixtures/hooks/temp-store.js';

let dir: TempDir;
let storagePath: string;
let hooks: HookManager | undefined;

beforeEach(async () => {
  dir = await tempDir('hooks-shared-git-');
  storagePath = join(dir.path, 'store');
  hooks = await HookManager.open({ storagePath, useGitWorktree: true });
});

afterEach(async () => {
  await hooks?.close();
  await dir.cleanup();
});

/** git as the agent runs it: in its worktree, with a plain environment. */
function agentGit(
  cwd: string,
  args: string[],
  env: Record<string, string> = {},
  input?: string,
): string {
  return execFileSync('git', args, {
    cwd,
    input,
    encoding: 'utf8',
    env: {
      PATH: process.env.PATH!,
      HOME: dir.path,
      GIT_AUTHOR_NAME: 'evil',
      GIT_AUTHOR_EMAIL: 'evil@x',
      GIT_COMMITTER_NAME: 'evil',
      GIT_COMMITTER_EMAIL: 'evil@x',
      ...env,
    },
  }).trim();
}

/** The attacker's ACTIVE hook on `agent/evil`, and its worktree. */
async function attackerHook() {
  const mine = await hooks!.createHook({ agentId: 'attacker', workItem: 1, branch: 'agent/evil' });
  await hooks!.activateHook(mine.hookId);
  return { mine, wt: mine.worktreePath! };
}

/**
 * The victim's ACTIVE hook and the attacker's worktree, with what the agent reads there with
 * plain git: the path of the victim's record in the state ref's tree, and that record.
 */
async function victimRecordSeenByAttacker() {
  const victim = await hooks!.createHook({
    agentId: 'victim',
    workItem: { job: 'v' },
    branch: 'agent/v',
  });
  await hooks!.activateHook(victim.hookId);
  const { wt } = await attackerHook();
  const path = `hooks/${victim.hookId.slice(14, 16)}/${victim.hookId}.json`;
  const record = JSON.parse(agentGit(wt, ['show', `${HOOKS_REF}:${path}`])) as Record<
    string,
    unknown
  >;
  return { victim, wt, path, record };
}

describe('an agent inside its hook worktree', () => {
  it('cannot make the sidecar run its code through git hooks of the shared repository', async () => {
    const { mine, wt } = await attackerHook();

    // The agent, in its worktree: point the (shared) repository at hook scripts of its own.
    const marker = join(dir.path, 'PWNED');
    const hookDir = join(wt, '.evil-hooks');
    await mkdir(hookDir);
    for (const name of ['post-checkout', 'reference-transaction']) {
      await writeFile(join(hookDir, name), `#!/bin/sh\necho "$(id -u) ${name}" >> '${marker}'\n`);
      await chmod(join(hookDir, name), 0o755);
    }
    agentGit(wt, ['config', 'core.hooksPath', hookDir]);

    // The operator puts work on another agent's hook: the sidecar runs `git worktree add`.
    await hooks!.createHook({ agentId: 'victim', workItem: 2, branch: 'agent/victim' });
    // Also every later state transition (update-ref runs the reference-transaction hook).
    await hooks!.completeHook(mine.hookId, null);
    const ran = existsSync(marker) ? await readFile(marker, 'utf8') : '';
    expect(ran, 'sidecar ran scripts planted by the agent').toBe('');
    // Scripts dropped straight into the shared hooks/ folder are not run either.
    const gitDir = agentGit(wt, ['rev-parse', '--path-format=absolute', '--git-common-dir']);
    agentGit(wt, ['config', '--unset', 'core.hooksPath']);
    for (const name of ['post-checkout', 'reference-transaction']) {
      await writeFile(join(gitDir, 'hooks', name), `#!/bin/sh\necho "${name}" >> '${marker}'\n`);
      await chmod(join(gitDir, 'hooks', name), 0o755);
    }
    const victim2 = await hooks!.createHook({
      agentId: 'victim',
      workItem: 3,
      branch: 'agent/victim2',
    });
    await hooks!.activateHook(victim2.hookId);
    expect(existsSync(marker) ? await readFile(marker, 'utf8') : '').toBe('');
  });

  it('cannot make the sidecar run a filter driver or an fsmonitor of its own', async () => {
    const { mine, wt } = await attackerHook();
    const marker = join(dir.path, 'PWNED');
    const script = join(dir.path, 'evil.sh');
    await writeFile(script, `#!/bin/sh\necho ran >> '${marker}'\ncat\n`);
    await chmod(script, 0o755);
    // A driver in the shared config, selected for every file of its branch.
    agentGit(wt, ['config', 'filter.evil.smudge', script]);
    agentGit(wt, ['config', 'filter.evil.clean', script]);
    agentGit(wt, ['config', 'filter.evil.required', 'true']);
    agentGit(wt, ['config', 'core.fsmonitor', script]);
    await writeFile(join(wt, '.gitattributes'), '* filter=evil\n');
    await writeFile(join(wt, 'work.txt'), 'work\n');
    agentGit(wt, ['-c', 'core.fsmonitor=false', '-c', 'filter.evil.clean=cat', 'add', '-A']);
    agentGit(wt, ['-c', 'core.fsmonitor=false', 'commit', '-q', '-m', 'work']);
    await rm(marker, { force: true });
    // The hook is handed back and given out again on the same branch: `worktree add` checks the
    // branch out; inspecting a worktree runs `status` in it.
    await hooks!.completeHook(mine.hookId, null);
    await hooks!.removeWorktree(mine.hookId, { force: true });
    const again = await hooks!.createHook({ agentId: 'other', workItem: 2, branch: 'agent/evil' });
    expect(await readFile(join(again.worktreePath!, 'work.txt'), 'utf8')).toBe('work\n');
    await hooks!.inspectWorktree(again.hookId);
    expect(existsSync(marker), 'the sidecar ran a program the agent named').toBe(false);
  });

  it("cannot rewrite another agent's hook, nor wedge the store, through refs/fabric/hooks", async () => {
    const { victim, wt, path, record } = await victimRecordSeenByAttacker();
    // The agent forges a state commit: the victim's hook COMPLETED, with the agent's result.
    const forged = { ...record, status: 'COMPLETED', result: 'owned by attacker', version: 99 };
    const index = join(dir.path, 'evil-index');
    const env = { GIT_INDEX_FILE: index };
    agentGit(wt, ['read-tree', HOOKS_REF], env);
    const blob = agentGit(
      wt,
      ['hash-object', '-w', '--stdin'],
      env,
      `${JSON.stringify(forged, null, 2)}\n`,
    );
    agentGit(wt, ['update-index', '--cacheinfo', `100644,${blob},${path}`], env);
    const tree = agentGit(wt, ['write-tree'], env);
    const commit = agentGit(
      wt,
      ['commit-tree', tree, '-p', HOOKS_REF, '-m', 'nothing to see'],
      env,
    );
    agentGit(wt, ['update-ref', HOOKS_REF, commit]);

    // The sidecar keeps working for everyone else, puts its own state back, and says so…
    const moved: unknown[] = [];
    hooks!.on('store.ref_moved', (e) => moved.push(e));
    for (let i = 0; i < 2; i++) {
      const progress = await hooks!.recordProgress(victim.hookId, `still working ${i}`).then(
        () => 'ok',
        (err: unknown) => String(err),
      );
      expect(progress).toBe('ok');
      // Progress this soon after the hook's last commit is held for its next commit: another
      // hook's creation is what commits here.
      const other = await hooks!
        .createHook({ agentId: 'bystander', workItem: i, branch: `agent/bystander-${i}` })
        .then(
          () => 'ok',
          (err: unknown) => String(err),
        );
      expect(other).toBe('ok');
    }
    expect(moved).toEqual([{ found: commit, restored: expect.any(String) }]);
    expect(agentGit(wt, ['rev-parse', HOOKS_REF])).not.toBe(commit);

    // …and after a restart the victim's hook is what the sidecar committed (its held progress
    // too, committed by close()), not the forgery.
    await hooks!.close();
    hooks = await HookManager.open({ storagePath, useGitWorktree: true });
    expect(await hooks.getHook(victim.hookId)).toMatchObject({
      status: HookStatus.ACTIVE,
      agentId: 'victim',
      result: null,
      progressNote: 'still working 1',
    });
  });
});

describe('an agent inside its hook worktree, with replace refs', () => {
  it("cannot make the store read another agent's hook as something else through refs/replace", async () => {
    const { victim, wt, path, record } = await victimRecordSeenByAttacker();
    // The agent does not move refs/fabric/hooks (the store would notice and put its state
    // back): it tells git that the victim's record blob is another one, with `git replace`.
    const original = agentGit(wt, ['rev-parse', `${HOOKS_REF}:${path}`]);
    const forged = { ...record, status: 'COMPLETED', result: 'owned by attacker' };
    const blob = agentGit(
      wt,
      ['hash-object', '-w', '--stdin'],
      {},
      `${JSON.stringify(forged, null, 2)}\n`,
    );
    agentGit(wt, ['replace', original, blob]);
    // The replacement is in place for plain git (what the store's own commands saw before).
    expect(JSON.parse(agentGit(wt, ['show', `${HOOKS_REF}:${path}`]))).toMatchObject({
      status: 'COMPLETED',
    });

    // Other hooks go on; after a restart the victim's hook is still what the sidecar committed.
    await hooks!.createHook({ agentId: 'bystander', workItem: 1, branch: 'agent/bystander' });
    await hooks!.close();
    hooks = await HookManager.open({ storagePath, useGitWorktree: true });
    expect(await hooks.getHook(victim.hookId)).toMatchObject({
      status: HookStatus.ACTIVE,
      agentId: 'victim',
      result: null,
    });
  });
});

describe('an agent inside its hook worktree, at its removal', () => {
  it('cannot make the sidecar run a filter driver when its worktree is removed', async () => {
    const { mine, wt } = await attackerHook();
    const marker = join(dir.path, 'PWNED');
    const script = join(dir.path, 'evil.sh');
    await writeFile(script, `#!/bin/sh\necho ran >> '${marker}'\ncat\n`);
    await chmod(script, 0o755);
    await writeFile(join(wt, '.gitattributes'), '* filter=evil\n');
    await writeFile(join(wt, 'work.txt'), 'work\n');
    agentGit(wt, ['add', '-A']);
    agentGit(wt, ['commit', '-q', '-m', 'work']);
    // The driver goes into the shared config after the commit; the file's stat no longer
    // matches the index (same content), so a status has to read it through the driver.
    agentGit(wt, ['config', 'filter.evil.clean', script]);
    agentGit(wt, ['config', 'filter.evil.smudge', script]);
    agentGit(wt, ['config', 'filter.evil.required', 'true']);
    const later = new Date(Date.now() + 120_000);
    await utimes(join(wt, 'work.txt'), later, later);
    await writeFile(join(wt, 'work.txt'), 'work\n');

    // The hook is handed back and its (clean) worktree removed without force: git checks it is
    // clean first.
    await hooks!.completeHook(mine.hookId, null);
    expect(existsSync(marker)).toBe(false);
    await hooks!.removeWorktree(mine.hookId);
    expect(existsSync(wt)).toBe(false);
    expect(existsSync(marker), 'the sidecar ran a program the agent named').toBe(false);
  });
});

/**
 * The agent commits files whose blobs land in `objects/17`: the one folder `gc --auto` counts to
 * estimate the loose objects (more than 27 there: over git's default `gc.auto` of 6700).
 */
function commitGcTrigger(wt: string): void {
  const bulk = join(wt, 'bulk');
  mkdirSync(bulk);
  let found = 0;
  for (let i = 0; found < GC_SAMPLE_FILES; i++) {
    const content = `file ${i}\n`;
    const oid = createHash('sha1').update(`blob ${content.length}\0${content}`).digest('hex');
    if (!oid.startsWith('17')) continue;
    writeFileSync(join(bulk, `f${i}.txt`), content);
    found++;
  }
  agentGit(wt, ['add', '-A']);
  // Without its own `gc --auto` (in the background: it would race the store's).
  agentGit(wt, ['-c', 'gc.auto=0', 'commit', '-q', '-m', 'bulk']);
}
const GC_SAMPLE_FILES = 30;

/** `git count-objects -v` of the store. */
function objectCounts(): Record<string, number> {
  const out: Record<string, number> = {};
  for (const line of agentGit(storagePath, ['count-objects', '-v']).split('\n')) {
    const [k, v] = line.split(': ');
    out[k!] = Number(v);
  }
  return out;
}

/** Sets every loose object of the store (and every pack) to `days` days old. */
async function ageObjects(gitDir: string, days: number): Promise<void> {
  const then = new Date(Date.now() - days * 86_400_000);
  const objects = join(gitDir, 'objects');
  for (const d of await readdir(objects)) {
    if (!/^[0-9a-f]{2}$/.test(d) && d !== 'pack') continue;
    for (const f of await readdir(join(objects, d))) await utimes(join(objects, d, f), then, then);
  }
}

/**
 * Rewrites the repository's commit-graph so that it says no commit has a parent (the file's
 * CDAT chunk: per commit a tree id, two parent positions, generation and date).
 */
async function forgeCommitGraph(gitDir: string): Promise<void> {
  const file = join(gitDir, 'objects', 'info', 'commit-graph');
  const graph = await readFile(file);
  const hashLength = graph[5] === 2 ? 32 : 20;
  const chunks = graph[6]!;
  const offsets = new Map<string, number>();
  for (let i = 0; i <= chunks; i++) {
    const at = 8 + i * 12;
    offsets.set(graph.toString('latin1', at, at + 4), Number(graph.readBigUInt64BE(at + 4)));
  }
  const oidl = offsets.get('OIDL')!;
  const cdat = offsets.get('CDAT')!;
  const commits = (cdat - oidl) / hashLength;
  for (let i = 0; i < commits; i++) {
    const record = cdat + i * (hashLength + 16);
    graph.writeUInt32BE(0x70000000, record + hashLength); // GRAPH_PARENT_NONE
    graph.writeUInt32BE(0x70000000, record + hashLength + 4);
  }
  await chmod(file, 0o644);
  await writeFile(file, graph);
}

describe("an agent inside its hook worktree, at the store's maintenance", () => {
  it("cannot turn the store's gc off through the shared config (gc.auto 0 or huge, gc.autoPackLimit=0)", async () => {
    const { wt } = await attackerHook();
    agentGit(wt, ['config', 'gc.auto', '0']);
    agentGit(wt, ['config', '--add', 'gc.auto', '100000000']);
    agentGit(wt, ['config', 'gc.autoPackLimit', '0']);
    // And a pre-auto-gc hook script (the one gc --auto runs), which must not run either.
    const marker = join(dir.path, 'PWNED');
    await mkdir(join(wt, '.evil-hooks'));
    await writeFile(join(wt, '.evil-hooks', 'pre-auto-gc'), `#!/bin/sh\ntouch '${marker}'\n`);
    await chmod(join(wt, '.evil-hooks', 'pre-auto-gc'), 0o755);
    agentGit(wt, ['config', 'core.hooksPath', join(wt, '.evil-hooks')]);
    // As many loose objects as gc --auto counts past git's default gc.auto (6700).
    commitGcTrigger(wt);
    const before = objectCounts();
    expect(before.packs).toBe(0);

    const report = await hooks!.maintain();

    const after = objectCounts();
    expect(report.before.loose).toBe(before.count);
    expect(after.count, 'gc packed nothing').toBeLessThan(before.count! - GC_SAMPLE_FILES);
    expect(after['in-pack']).toBeGreaterThan(GC_SAMPLE_FILES);
    expect(existsSync(marker), 'the store ran the agent’s pre-auto-gc hook').toBe(false);
  });

  it('cannot make the store’s gc delete hook history through a forged commit-graph', async () => {
    const { wt } = await attackerHook();
    const bystander = await hooks!.createHook({ agentId: 'b', workItem: 1, branch: 'agent/b' });
    await hooks!.activateHook(bystander.hookId);
    await hooks!.completeHook(bystander.hookId, 'done');
    commitGcTrigger(wt); // enough loose objects for gc --auto to run
    const noGraph = ['-c', 'core.commitGraph=false'];
    const history = agentGit(storagePath, [...noGraph, 'rev-list', HOOKS_REF]).split('\n');
    expect(history.length).toBeGreaterThan(4);

    // The agent writes a commit-graph (as `git commit-graph write` does), then edits it: no
    // commit has parents. The history objects are older than gc's two-week prune expiry.
    agentGit(wt, ['commit-graph', 'write', '--reachable']);
    const gitDir = agentGit(wt, ['rev-parse', '--path-format=absolute', '--git-common-dir']);
    await forgeCommitGraph(gitDir);
    expect(agentGit(storagePath, ['rev-list', HOOKS_REF]).split('\n')).toHaveLength(1);
    await ageObjects(gitDir, 30);

    await hooks!.maintain();
    expect(objectCounts().packs).toBe(1);

    expect(agentGit(storagePath, [...noGraph, 'rev-list', HOOKS_REF]).split('\n')).toEqual(history);
    expect(agentGit(storagePath, [...noGraph, 'fsck', '--no-dangling', '--no-progress'])).toBe('');
    await hooks!.close();
    hooks = await HookManager.open({ storagePath, useGitWorktree: true });
    expect((await hooks.getHook(bystander.hookId)).status).toBe(HookStatus.COMPLETED);
  });

  it('cannot make the store’s gc delete hook history by declaring the store shallow', async () => {
    const { wt } = await attackerHook();
    const bystander = await hooks!.createHook({ agentId: 'b', workItem: 1, branch: 'agent/b' });
    await hooks!.activateHook(bystander.hookId);
    await hooks!.completeHook(bystander.hookId, 'done');
    commitGcTrigger(wt);
    const history = agentGit(storagePath, ['rev-list', HOOKS_REF]).split('\n');
    expect(history.length).toBeGreaterThan(2);

    // The agent writes the shared `shallow` file (what a shallow clone has): git then takes the
    // state ref's head for a commit without parents. The history is older than gc's expiry.
    const gitDir = agentGit(wt, ['rev-parse', '--path-format=absolute', '--git-common-dir']);
    await writeFile(join(gitDir, 'shallow'), `${history[0]}\n`);
    expect(agentGit(storagePath, ['rev-list', HOOKS_REF]).split('\n')).toHaveLength(1);
    await ageObjects(gitDir, 30);

    await hooks!.maintain();

    expect(objectCounts().packs).toBe(1);
    const noShallow = { GIT_SHALLOW_FILE: '' };
    expect(agentGit(storagePath, ['rev-list', HOOKS_REF], noShallow).split('\n')).toEqual(history);
    expect(agentGit(storagePath, ['fsck', '--no-dangling', '--no-progress'], noShallow)).toBe('');
  });

  it('cannot make the store’s gc a silent no-op with extensions.preciousObjects', async () => {
    const { wt } = await attackerHook();
    // Read from the config file when git opens the repository: no -c takes it back, and with it
    // gc neither packs nor prunes, and exits 0.
    agentGit(wt, ['config', 'core.repositoryformatversion', '1']);
    agentGit(wt, ['config', 'extensions.preciousObjects', 'true']);
    commitGcTrigger(wt);
    const before = objectCounts();
    const error = await hooks!.maintain().catch((e: unknown) => e);
    expect(error).toBeInstanceOf(HookStoreError);
    expect((error as Error).message).toMatch(/extensions\.preciousObjects/);
    // The hooks go on; once the operator removes it, gc packs.
    const h = await hooks!.createHook({ agentId: 'c', workItem: 'w', branch: 'agent/c' });
    expect((await hooks!.activateHook(h.hookId)).status).toBe(HookStatus.ACTIVE);
    agentGit(storagePath, ['config', '--unset', 'extensions.preciousObjects']);
    await hooks!.maintain();
    expect(objectCounts().count).toBeLessThan(before.count! - GC_SAMPLE_FILES);
  });
});

describe("an agent inside its hook worktree, at the store's maintenance, with gc.pid", () => {
  it('cannot make the store’s gc a silent no-op with a gc.pid of a gc that does not run', async () => {
    const { wt } = await attackerHook();
    commitGcTrigger(wt);
    const gitDir = agentGit(wt, ['rev-parse', '--path-format=absolute', '--git-common-dir']);
    // What a running gc writes; git skips gc --auto (exit 0, nothing done) while it is under
    // 12 hours old and names another host, or a live process of this one (pid 1 always is).
    for (const holder of ['4242 build-host-elsewhere', `1 ${hostname()}`]) {
      await writeFile(join(gitDir, 'gc.pid'), holder);
      const error = await hooks!.maintain().catch((e: unknown) => e);
      expect(error, holder).toBeInstanceOf(HookStoreError);
      expect((error as Error).message).toMatch(/gc\.pid/);
    }
    expect(objectCounts().packs).toBe(0);
    // A gc.pid left by a gc of this host that is gone (killed) does not stop it, as for git.
    const gone = spawn(process.execPath, ['-e', '']);
    await new Promise((resolve) => gone.on('exit', resolve));
    await writeFile(join(gitDir, 'gc.pid'), `${gone.pid} ${hostname()}`);
    const before = objectCounts();
    await hooks!.maintain();
    expect(objectCounts().count).toBeLessThan(before.count! - GC_SAMPLE_FILES);
  });
});

describe('an agent inside its hook worktree, in the object store', () => {
  it("cannot make the store read another agent's hook as its forgery by rewriting the object file", async () => {
    const { victim, wt, path, record } = await victimRecordSeenByAttacker();
    // Neither a ref nor a replace ref: the agent overwrites the (loose) object file of the
    // victim's record blob with its forgery, under the same name. git reads objects without
    // checking their content against their id.
    const oid = agentGit(wt, ['rev-parse', `${HOOKS_REF}:${path}`]);
    const forged = Buffer.from(
      `${JSON.stringify({ ...record, status: 'COMPLETED', result: 'owned by attacker' })}\n`,
    );
    const gitDir = agentGit(wt, ['rev-parse', '--path-format=absolute', '--git-common-dir']);
    const file = join(gitDir, 'objects', oid.slice(0, 2), oid.slice(2));
    await rm(file, { force: true });
    await writeFile(
      file,
      deflateSync(Buffer.concat([Buffer.from(`blob ${forged.length}\0`), forged])),
    );
    expect(JSON.parse(agentGit(wt, ['cat-file', 'blob', oid]))).toMatchObject({
      status: 'COMPLETED',
    });

    // At its next open the store does not take the forgery for the victim's hook: it refuses
    // the altered object store with a typed error naming the object.
    await hooks!.close();
    hooks = undefined;
    const opened = await HookManager.open({ storagePath, useGitWorktree: true }).then(
      (m) => m,
      (err: unknown) => err,
    );
    if (opened instanceof HookManager) {
      hooks = opened;
      expect(await opened.getHook(victim.hookId)).toMatchObject({ status: HookStatus.ACTIVE });
    }
    expect(opened).toBeInstanceOf(HookStoreError);
    expect((opened as Error).message).toContain(oid);
  });
});

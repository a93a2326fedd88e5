/**
 * A minimal git runner for the two commands simple-git cannot serve well: those that read stdin
 * (`cat-file --batch`) and the hot-path `update-ref`, which prints nothing — simple-git 4 waits
 * 50 ms after any command that prints nothing before it resolves, which would cap the hook
 * store at ~20 transitions/s. Everything else goes through simple-git.
 *
 * @module
 */
import { spawn } from 'node:child_process';
import { setPriority } from 'node:os';

/** A git command that exited non-zero (or could not start). */
export class GitCommandError extends Error {
  readonly exitCode: number | null;
  readonly stderr: string;
  constructor(args: readonly string[], exitCode: number | null, stderr: string, cause?: unknown) {
    super(
      `git ${args[0] ?? ''} failed${exitCode === null ? '' : ` (exit ${exitCode})`}: ${stderr.trim() || 'no output'}`,
      cause === undefined ? undefined : { cause },
    );
    this.name = 'GitCommandError';
    this.exitCode = exitCode;
    this.stderr = stderr;
  }
}

/** Variables git commands inherit; everything else in the parent's environment is dropped. */
const INHERITED_ENV = [
  'PATH',
  'HOME',
  'USER',
  'LOGNAME',
  'LANG',
  'LC_ALL',
  'LC_CTYPE',
  'LC_MESSAGES',
  'TMPDIR',
  'TMP',
  'TEMP',
  'XDG_CONFIG_HOME',
  'SYSTEMROOT',
];

/**
 * The environment git commands run with: an allow-list of the parent's. `GIT_*` variables are
 * never inherited — a sidecar started from a git hook has `GIT_DIR`, `GIT_INDEX_FILE` … pointing
 * at another repository — nor are editors, pagers or askpass helpers (simple-git refuses to run
 * with those set, and the hook store never needs them).
 */
export function gitEnv(): Record<string, string> {
  const env: Record<string, string> = { ...PINNED_ENV };
  for (const key of INHERITED_ENV) {
    const value = process.env[key];
    if (value !== undefined) env[key] = value;
  }
  return env;
}

/**
 * Set for every git command of the store (and the git commands they run, as gc does): no
 * `shallow` file. Worktrees share the git directory, and one an agent wrote there naming the
 * state ref's head (what a shallow clone has) made git take that commit for one without parents,
 * so the maintenance gc pruned the store's history. An empty path is git's "not shallow"; no
 * `-c` setting does this.
 */
const PINNED_ENV: Readonly<Record<string, string>> = Object.freeze({ GIT_SHALLOW_FILE: '' });

/** simple-git's `allowEnvironment`: it refuses `GIT_*` variables (ours) unless named. */
export const SIMPLE_GIT_ALLOW_ENV: readonly string[] = Object.freeze(Object.keys(PINNED_ENV));

/**
 * Settings every git command of the hook store runs with (as `-c`, which wins over the
 * repository's config; git passes them on to the git commands it runs itself, as gc does). This
 * list is the one place they are pinned: {@link runGit}, {@link RefUpdater} and the store's
 * simple-git instances all put it first.
 *
 * Worktrees share the store's git directory — its config, hook scripts, info files and object
 * store — with whoever works in them, so an agent could name programs there that git runs for
 * the sidecar: hook scripts (`core.hooksPath`, or files in `hooks/`; gc runs `pre-auto-gc`), an
 * fsmonitor, submodule fetches on checkout. These turn all of them off; filter drivers are
 * turned off per command by {@link filterOverrides}. Refs are shared too: a `refs/replace/<oid>`
 * ref (`git replace`) makes git read another object wherever one is named — a hook's record blob
 * read as the agent's forgery at the next load, without `refs/fabric/hooks` moving — so replace
 * refs are not used. Nor is a commit-graph (`objects/info/commit-graph`, which git trusts for a
 * commit's parents): one the agent edited to say the state commits have none made the
 * maintenance gc see the store's history as unreachable and prune it; gc writes none either.
 *
 * The rest pin what maintenance (`gc --auto`, see `HookManager.maintain`) relies on to git's
 * defaults, so an agent cannot make it a no-op nor its cost unbounded: `gc.auto` itself is given
 * per run (an operator may lower it); packs are merged past 50 (`gc.autoPackLimit=0` turned that
 * off), none kept as big (`gc.bigPackThreshold`), refs packed; unreachable objects pruned after
 * two weeks (a shorter expiry would race the store's own writes, whose objects are written
 * before the ref names them), worktrees' records after three months; the delta search, delta
 * caches, compression and pack size of `repack` as git's defaults (a huge `pack.window` or
 * `pack.depth` is CPU, `pack.threads` and the caches memory, `pack.packSizeLimit` one pack per
 * MiB, delta islands, a low `core.bigFileThreshold` or `pack.compression=0` a bigger store); and
 * the store's own ref updates write no reflog (`core.logAllRefUpdates=always` with a reflog
 * that never expires would grow one line per transition forever). Two settings no `-c` can take
 * back are refused by maintenance instead (`gc.recentObjectsHook`,
 * `extensions.preciousObjects`); a value git rejects makes gc fail, which is reported.
 */
export const SAFE_GIT_CONFIG: readonly string[] = Object.freeze([
  'core.hooksPath=/dev/null',
  'core.fsmonitor=false',
  'submodule.recurse=false',
  'core.useReplaceRefs=false',
  'core.commitGraph=false',
  'gc.writeCommitGraph=false',
  'gc.autoDetach=false',
  'gc.autoPackLimit=50',
  'gc.bigPackThreshold=0',
  'gc.packRefs=true',
  'gc.pruneExpire=2.weeks.ago',
  'gc.worktreePruneExpire=3.months.ago',
  'pack.window=10',
  'pack.depth=50',
  'pack.windowMemory=0',
  'pack.threads=0',
  'pack.deltaCacheSize=256m',
  'pack.deltaCacheLimit=1000',
  'pack.compression=-1',
  'pack.packSizeLimit=0',
  'core.bigFileThreshold=512m',
  'repack.useDeltaIslands=false',
  'core.logAllRefUpdates=false',
]);

/** {@link SAFE_GIT_CONFIG} as command-line arguments. */
export const SAFE_GIT_ARGS: readonly string[] = Object.freeze(
  SAFE_GIT_CONFIG.flatMap((c) => ['-c', c]),
);

/**
 * simple-git refuses to pass the settings of {@link SAFE_GIT_CONFIG} and {@link filterOverrides}
 * unless told to: they could name programs in general, ours turn programs off.
 */
export const SIMPLE_GIT_UNSAFE = Object.freeze({
  allowUnsafeHooksPath: true,
  allowUnsafeFsMonitor: true,
  allowUnsafeFilter: true,
});

/**
 * `-c` arguments that turn off every filter driver the repository's config defines
 * (`filter.<driver>.smudge/clean/process`), read just before a command that checks files out or
 * looks at them (`worktree add`, `status`): the drivers come from config an agent can write, and
 * the attributes that select them from files it can write. A driver defined between this read
 * and the command is not covered; hook scripts and fsmonitors always are ({@link SAFE_GIT_CONFIG}).
 */
export async function filterOverrides(configList: () => Promise<string>): Promise<string[]> {
  let out: string;
  try {
    out = await configList();
  } catch {
    return []; // `git config --get-regexp` exits 1 when nothing matches
  }
  const drivers = new Set<string>();
  for (const line of out.split('\n')) {
    const key = line.split(' ', 1)[0]!;
    const m = /^filter\.(.+)\.[^.]+$/s.exec(key);
    if (m) drivers.add(m[1]!);
  }
  const args: string[] = [];
  for (const d of drivers) {
    for (const v of ['smudge=', 'clean=', 'process=', 'required=false']) {
      args.push('-c', `filter.${d}.${v}`);
    }
  }
  return args;
}

/** Options of {@link runGit}. */
export interface RunGitOptions {
  /** Ends the command (SIGTERM) when aborted. */
  signal?: AbortSignal | undefined;
  /** Run at background CPU priority (nice 10): maintenance, not to slow transitions down. */
  background?: boolean;
}

const BACKGROUND_PRIORITY = 10;

/** Runs `git <args>` in `cwd`, writing `input` to its stdin, and returns its stdout. */
export function runGit(
  cwd: string,
  args: readonly string[],
  input?: Buffer | string,
  env: Record<string, string> = gitEnv(),
  options: RunGitOptions = {},
): Promise<Buffer> {
  const { signal, background } = options;
  return new Promise((resolve, reject) => {
    const child = spawn('git', [...SAFE_GIT_ARGS, ...args], {
      cwd,
      env,
      stdio: [input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
      // Aborting sends SIGTERM: git removes its lock files on it (and leaves at most temporary
      // pack files, which the next gc removes).
      ...(signal === undefined ? {} : { signal }),
    });
    if (background === true && child.pid !== undefined) {
      try {
        setPriority(child.pid, BACKGROUND_PRIORITY); // its children (pack-objects…) inherit it
      } catch {
        // not permitted here: it runs at normal priority
      }
    }
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout!.on('data', (b: Buffer) => out.push(b));
    child.stderr!.on('data', (b: Buffer) => err.push(b));
    child.on('error', (e) => reject(new GitCommandError(args, null, e.message, e)));
    child.on('close', (code) => {
      if (code === 0) resolve(Buffer.concat(out));
      else reject(new GitCommandError(args, code, Buffer.concat(err).toString('utf8')));
    });
    if (input !== undefined && child.stdin) {
      // EPIPE when git exits early is reported through the exit code instead.
      child.stdin.on('error', () => undefined);
      child.stdin.end(input);
    }
  });
}

/**
 * Moves refs through one long-running `git update-ref --stdin` process, one transaction per
 * call (`start` / `update <ref> <new> <old>` / `prepare` / `commit`, git ≥ 2.27), so a
 * transition does not pay for starting a git process. When git says `commit: ok` the ref is
 * on disk. A failed transaction makes git exit; the next call starts a new process. Falls back
 * to one `git update-ref` per call when the persistent mode is not available.
 */
export class RefUpdater {
  readonly #cwd: string;
  readonly #config: readonly string[];
  #child: ReturnType<typeof spawn> | undefined;
  #stdout = '';
  #stderr = '';
  #waiter: { resolve: () => void; reject: (err: unknown) => void } | undefined;
  #oneShot = false;

  /**
   * @param cwd repository folder.
   * @param config `-c key=value` pairs put before `update-ref` (e.g. fsync settings).
   */
  constructor(cwd: string, config: readonly string[]) {
    this.#cwd = cwd;
    this.#config = config;
  }

  /** Sets `ref` to `next` if it is `old` now (all zeros: if it does not exist). */
  async update(ref: string, next: string, old: string): Promise<void> {
    if (this.#oneShot) {
      await runGit(this.#cwd, [...this.#config, 'update-ref', ref, next, old]);
      return;
    }
    if (this.#waiter !== undefined) throw new Error('RefUpdater.update is not re-entrant');
    const child = this.#ensure();
    try {
      await new Promise<void>((resolve, reject) => {
        this.#waiter = { resolve, reject };
        this.#keepAlive(child, true);
        child.stdin!.write(`start\nupdate ${ref} ${next} ${old}\nprepare\ncommit\n`);
      });
    } catch (err) {
      if (err instanceof GitCommandError && /unknown command: start/.test(err.stderr)) {
        // git older than 2.27: no transactions on stdin.
        this.#oneShot = true;
        await this.update(ref, next, old);
        return;
      }
      throw err;
    }
  }

  /** Ends the git process. */
  close(): void {
    const child = this.#child;
    this.#child = undefined;
    child?.stdin?.end();
  }

  #ensure(): ReturnType<typeof spawn> {
    if (this.#child !== undefined) return this.#child;
    const args = [...SAFE_GIT_ARGS, ...this.#config, 'update-ref', '--stdin'];
    const child = spawn('git', args, { cwd: this.#cwd, env: gitEnv(), stdio: 'pipe' });
    this.#child = child;
    this.#stdout = '';
    this.#stderr = '';
    child.stdout!.on('data', (b: Buffer) => {
      this.#stdout += b.toString('utf8');
      let nl: number;
      while ((nl = this.#stdout.indexOf('\n')) >= 0) {
        const line = this.#stdout.slice(0, nl);
        this.#stdout = this.#stdout.slice(nl + 1);
        if (line === 'commit: ok') this.#settle();
      }
    });
    child.stderr!.on('data', (b: Buffer) => {
      this.#stderr += b.toString('utf8');
    });
    child.stdin!.on('error', () => undefined);
    const gone = (code: number | null, error?: Error): void => {
      if (this.#child === child) this.#child = undefined;
      this.#settle(
        new GitCommandError(
          ['update-ref', '--stdin'],
          code,
          this.#stderr || error?.message || '',
          error,
        ),
      );
    };
    child.on('error', (e) => gone(null, e));
    child.on('close', (code) => gone(code));
    this.#keepAlive(child, false);
    return child;
  }

  /** An idle updater must not keep the process alive; one with a transaction in flight must. */
  #keepAlive(child: ReturnType<typeof spawn>, on: boolean): void {
    if (on) child.ref();
    else child.unref();
    for (const s of [child.stdin, child.stdout, child.stderr]) {
      const handle = s as unknown as { ref?: () => void; unref?: () => void } | null;
      if (on) handle?.ref?.();
      else handle?.unref?.();
    }
  }

  #settle(err?: unknown): void {
    const w = this.#waiter;
    this.#waiter = undefined;
    if (this.#child !== undefined) this.#keepAlive(this.#child, false);
    if (w === undefined) return;
    if (err === undefined) w.resolve();
    else w.reject(err);
  }
}

/**
 * What the store's maintenance (`git gc --auto`) takes from the repository's config. Worktrees
 * share that config with agents, so everything else gc relies on is pinned on the command line
 * (`SAFE_GIT_CONFIG`). Read here, in one `git config` before each run:
 *
 * - `gc.auto`, which an operator may lower (gc then packs sooner): the smallest positive value
 *   set is used, at most git's default 6700 — so `gc.auto=0` (gc never packs) or a huge value
 *   (the same) from an agent leaves git's default in force.
 * - two settings no `-c` can take back, which make maintenance refuse to run (a reported
 *   failure, each run, until the operator removes them): `gc.recentObjectsHook` (a shell command
 *   git ≥ 2.42 runs during gc, multi-valued) and `extensions.preciousObjects` (read from the
 *   config file itself when git opens the repository; with it gc neither packs nor prunes, and
 *   still exits 0).
 *
 * And the `gc.pid` file: a gc that git believes is running makes `gc --auto` skip silently, so
 * one that is not stale is reported instead ({@link gcPidHolder}).
 *
 * @module
 */
import { readFile, stat } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';

/** How long git takes a `gc.pid` for a running gc (older ones are ignored). */
const GC_PID_LIFETIME_MS = 12 * 3600 * 1000;

/**
 * Why `git gc --auto` would do nothing because of the repository's `gc.pid` (the file a running
 * gc writes: `<pid> <host>`), or `undefined` when it would run. git skips, and exits 0, while the
 * file is under 12 hours old and names another host or a live process of this one — which an
 * agent can write (pid 1 is always alive) and keep fresh. A file left by a gc of this host that
 * is gone does not stop git, and so is not reported.
 */
export async function gcPidHolder(gitDir: string): Promise<string | undefined> {
  let content: string;
  let mtimeMs: number;
  try {
    const file = join(gitDir, 'gc.pid');
    mtimeMs = (await stat(file)).mtimeMs;
    content = await readFile(file, 'utf8');
  } catch {
    return undefined; // none: no gc runs
  }
  if (Date.now() - mtimeMs > GC_PID_LIFETIME_MS) return undefined;
  const m = /^(\d+) (\S+)/.exec(content);
  if (!m) return undefined; // git ignores what it cannot read
  const [, pid, host] = m as unknown as [string, string, string];
  if (host === hostname() && !isAlive(Number(pid))) return undefined;
  return `gc.pid says a gc runs as pid ${pid} on ${host}; not run (remove the file if none does)`;
}

/** Whether a process with this pid exists (EPERM: it does, another user's). */
function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** git's default `gc.auto`: the most loose objects the store's maintenance leaves unpacked. */
export const GIT_DEFAULT_GC_AUTO = 6700;

/** `git config -z --get-regexp` pattern of the keys {@link gcSettings} reads. */
export const GC_SETTINGS_PATTERN =
  '^(gc\\.auto|gc\\.recentobjectshook|extensions\\.preciousobjects)$';

/** What maintenance runs with. */
export interface GcSettings {
  /** The `gc.auto` to pass to `git gc --auto`. */
  readonly gcAuto: number;
}

/**
 * The settings in `listing` (the output of `git config -z --get-regexp` with
 * {@link GC_SETTINGS_PATTERN}: `key\nvalue\0`, a key without value alone).
 * @throws Error naming the setting when maintenance must not run.
 */
export function gcSettings(listing: string): GcSettings {
  let gcAuto = GIT_DEFAULT_GC_AUTO;
  for (const entry of listing.split('\0')) {
    if (entry === '') continue;
    const nl = entry.indexOf('\n');
    const key = (nl < 0 ? entry : entry.slice(0, nl)).toLowerCase();
    const value = nl < 0 ? undefined : entry.slice(nl + 1);
    if (key === 'gc.recentobjectshook' && value !== undefined && value.trim() !== '') {
      throw new Error(
        "the store's git config sets gc.recentObjectsHook (a program gc would run); not run",
      );
    }
    if (key === 'extensions.preciousobjects' && isTrue(value)) {
      throw new Error(
        "the store's git config sets extensions.preciousObjects (gc would neither pack nor prune); not run",
      );
    }
    if (key === 'gc.auto') {
      const n = value === undefined ? undefined : gitInt(value);
      if (n !== undefined && n > 0 && n < gcAuto) gcAuto = n;
    }
  }
  return Object.freeze({ gcAuto });
}

/** git's reading of a boolean: a key without value is true; so is anything but a false word. */
function isTrue(value: string | undefined): boolean {
  if (value === undefined) return true;
  const v = value.trim().toLowerCase();
  return !(v === '' || v === 'false' || v === 'no' || v === 'off' || /^[-+]?0+$/.test(v));
}

const UNITS: Readonly<Record<string, number>> = { k: 1024, m: 1024 ** 2, g: 1024 ** 3 };

/** An integer as git reads one (`k`, `m`, `g` suffixes); `undefined` when git would refuse it. */
function gitInt(value: string): number | undefined {
  const m = /^\s*([-+]?\d+)([kmg]?)\s*$/i.exec(value);
  if (!m) return undefined;
  const n = Number(m[1]) * (UNITS[m[2]!.toLowerCase()] ?? 1);
  return Number.isSafeInteger(n) ? n : undefined;
}

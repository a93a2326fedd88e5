/**
 * Per-upstream path resolution: the policy's view of a call's parameters, with every path-like
 * value resolved the way the upstream that receives the call will resolve it. The upstream
 * itself still gets the agent's parameters unchanged; only the policy (rules, `when`, policy
 * plugins, approval records) sees the view.
 *
 * Why: a policy that matches `/sandbox/protected/**` against the agent's spelling is bypassed by
 * every other spelling the upstream accepts — `protected/x` (server-filesystem resolves relative
 * paths against its allowed directories), `~/…`, a symlink inside the sandbox, an NFD spelling
 * of a name. So each value is resolved like server-filesystem's `validatePath` does it (the
 * model for stdio servers that share our disk):
 *
 * 1. refused as unresolvable: a NUL byte, more than {@link MAX_PATH_LENGTH} characters, or
 *    leading/trailing whitespace or quotes (server-filesystem trims those for its containment
 *    check but not for the file it opens; other servers may trim or not — ambiguous);
 * 2. `~` and `~/x` against `home` (unknown home: unresolvable);
 * 3. a relative path against the first root under which it stays inside some root, else the
 *    first root (no roots, or roots the agent's client forwards: unresolvable). With `realpath`, the roots are read as server-filesystem
 *    reads its allowed directories when it starts ({@link PathResolver.readRoots}, called on
 *    every connect): each declared root, then its real path when that differs, then only those
 *    that are existing directories — so `../<real name>/x` under a symlinked root, or a declared
 *    root missing at start, resolves where the server will put it;
 * 4. lexical normalization (`path.posix.resolve`: `.`/`..`/`//`, no trailing slash);
 * 5. with `realpath`: the longest existing prefix is realpath'd and the rest appended; a missing
 *    component that matches exactly one existing entry up to Unicode NFC is taken as that entry
 *    (as the server does); a dangling symlink is followed to where it would create its target;
 *    an error other than "does not exist" (ELOOP, EACCES, ENOTDIR, ENAMETOOLONG) or an
 *    ambiguous name is unresolvable;
 * 6. the result is NFC-normalized (rule values are too).
 *
 * With `realpath`, a value whose real path is not its absolute spelling (a symlink, or another
 * Unicode spelling, on the way) also keeps the names it went by: the absolute path as given,
 * then the path after each symlink followed, one at a time (NFC). `deny` and
 * `require_approval` conditions match those too ({@link recordSpellings}), so a rule naming a
 * folder by a name that is a symlink (a glob-tail pattern such as `**` + `/protected/**`) still
 * catches a call through that name. They cost a `lstat` per component below the roots (and a
 * `readlink` per link), only for such values, each component once per call (the values of a
 * call share their folders: 256 files through one pnpm workspace link cost its folders once).
 *
 * With `realpath`, a value also records what it reaches on disk besides its name
 * ({@link recordReach}), from one `stat` taken beside its realpath: a folder reaches everything
 * below it (a walk, listing or move of it touches those names), and so does a new name a folder
 * of the same call may become (`move_file`'s destination); a file with more than one hard link
 * reaches names the policy cannot know. `deny` and `require_approval` conditions on a path see
 * that reach (a rule that could match below the folder; any path pattern for a linked file).
 *
 * What cannot be resolved with certainty becomes an {@link UnresolvedPath} marker in the view:
 * deny/require_approval conditions on it match, allow conditions do not, a `when` reading it
 * fails closed. The walk over the parameters is iterative and bounded
 * ({@link MAX_PATH_WALK_DEPTH}, {@link MAX_PATH_WALK_NODES}, {@link MAX_PATHS_PER_CALL}); what it
 * does not inspect becomes a marker too.
 *
 * @module
 */
import type { Stats } from 'node:fs';
import { lstat, readdir, readlink, realpath, stat } from 'node:fs/promises';
import { homedir } from 'node:os';
import { posix } from 'node:path';
import { looksLikePath, PATH_KEY_PATTERN } from '../policy/conditions.js';
import {
  markHoldsUnresolved,
  type PathReach,
  recordReach,
  recordSpellings,
  UnresolvedPath,
} from '../policy/unresolved-path.js';
import type { UpstreamSpec } from './upstream-config.js';

/** Longest path-like value resolved (Linux `PATH_MAX`); longer ones are unresolvable. */
export const MAX_PATH_LENGTH = 4096;
/** Deepest nesting of parameters the walk inspects; a deeper object or array is a marker. */
export const MAX_PATH_WALK_DEPTH = 32;
/** Most parameter values (of any type) one walk visits; what is left over becomes markers. */
export const MAX_PATH_WALK_NODES = 10_000;
/** Most path-like values resolved for one call; the rest are markers. */
export const MAX_PATHS_PER_CALL = 256;
/** Most symlinks (and Unicode-equivalent renames) followed for one value (Linux `SYMLOOP_MAX`). */
export const MAX_SYMLINK_HOPS = 40;
/**
 * Most filesystem lookups (`realpath`, `lstat`, `readlink`, `readdir`) spent on one call's paths;
 * values still unresolved then are markers. A path usually costs 1–4.
 */
export const MAX_DISK_LOOKUPS_PER_CALL = 1024;
/** Paths of one call looked up on disk at the same time. */
const DISK_CONCURRENCY = 8;
/** Default of {@link PathResolutionOptions.realpath} for stdio upstreams (they share our disk). */
export const DEFAULT_STDIO_REALPATH = true;
/** Default of {@link PathResolutionOptions.realpath} for remote upstreams. */
export const DEFAULT_REMOTE_REALPATH = false;

/** How one upstream resolves paths (the upstream spec's `paths:`, defaults filled in). */
export interface PathResolutionOptions {
  /**
   * Absolute directories relative paths are resolved against (server-filesystem: its allowed
   * directories, in the same order). Empty: relative paths are unresolvable.
   * @default []
   */
  readonly roots: readonly string[];
  /**
   * What `~` means. `undefined`: `~` paths are unresolvable.
   * @default stdio: the child's HOME (`env.HOME` of the spec, else the sidecar's home); remote: unknown
   */
  readonly home: string | undefined;
  /**
   * Resolve symlinks (and Unicode-equivalent names) on disk.
   * @default true for stdio upstreams, false for remote ones
   */
  readonly realpath: boolean;
  /**
   * With `realpath`, what a file with more than one hard link matches: `closed` — every
   * `deny`/`require_approval` condition with a path pattern on it; `named` — only its names.
   * @default 'closed'
   */
  readonly hardLinks?: 'closed' | 'named' | undefined;
  /**
   * Parameter names taken as paths besides those {@link PATH_KEY_PATTERN} matches (a tool's
   * `output`, `to` …): their string values (and an array's strings) are resolved too.
   * @default []
   */
  readonly params?: readonly string[] | undefined;
  /**
   * The upstream takes its roots from the agent's client (`forwardRoots`), so no declared root
   * says what a relative path means to it: relative paths are unresolvable.
   * @default false
   */
  readonly rootsFromClient?: boolean | undefined;
}

/** The path resolution of an upstream spec: its `paths:` with the transport's defaults. */
export function pathResolutionOf(spec: UpstreamSpec): Readonly<PathResolutionOptions> {
  const declared = spec.paths;
  const stdio = spec.transport === 'stdio';
  const home = declared?.home ?? (stdio ? (spec.env.HOME ?? homedir()) : undefined);
  return Object.freeze({
    roots: Object.freeze((declared?.roots ?? []).map((r) => posix.resolve(r))),
    home,
    realpath: declared?.realpath ?? (stdio ? DEFAULT_STDIO_REALPATH : DEFAULT_REMOTE_REALPATH),
    hardLinks: declared?.hardLinks ?? 'closed',
    params: Object.freeze([...(declared?.params ?? [])]),
    rootsFromClient: spec.forwardRoots,
  });
}

/** Whether a parameter name is path-like: the built-in pattern, or one of `extra`. */
type PathKeyTest = (key: string) => boolean;

const builtInPathKey: PathKeyTest = (key) => PATH_KEY_PATTERN.test(key);

/** Markers of each view built by a resolver (for refusal messages). */
const VIEW_MARKERS = new WeakMap<object, readonly UnresolvedPath[]>();

/** The markers a resolved view holds (empty for anything else). */
export function unresolvedPathsIn(view: object): readonly UnresolvedPath[] {
  return VIEW_MARKERS.get(view) ?? [];
}

/** A container met by the walk. */
interface Frame {
  readonly node: object;
  readonly parent: Frame | undefined;
  readonly key: string | number;
  readonly depth: number;
  /** Whether string elements (of an array) count as paths by their parameter's name. */
  readonly pathKey: boolean;
  /** The view's copy, made when something below it changes. */
  copy: Record<string | number, unknown> | undefined;
}

/** The path-like values found in one call's parameters ({@link PathResolver.pathsIn}). */
export type PathSlots = readonly Slot[];

/** One value of the view that differs from the parameters. */
interface Slot {
  readonly frame: Frame;
  readonly key: string | number;
  /** A path to resolve, or the marker that replaces the value. */
  readonly value: string | UnresolvedPath;
}

type Resolved = string | UnresolvedPath;

function unresolved(value: string, reason: string): UnresolvedPath {
  return new UnresolvedPath(value, reason);
}

function errnoOf(error: unknown): string {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : 'an error';
}

/** Trimming changes it, or it starts or ends with a quote. */
function hasAmbiguousEnds(value: string): boolean {
  if (value.length === 0) return false;
  const first = value.charCodeAt(0);
  const last = value.charCodeAt(value.length - 1);
  if (first === 34 || first === 39 || last === 34 || last === 39) return true; // " '
  return value !== value.trim();
}

/**
 * Resolves an upstream's path-like parameters for the policy (see the module comment).
 *
 * @example
 * const r = new PathResolver({ roots: ['/srv/sandbox'], home: '/home/me', realpath: false });
 * r.resolve('protected/x'); // '/srv/sandbox/protected/x'
 * r.view({ path: '~/a', content: 'x' }); // { path: '/home/me/a', content: 'x' }
 */
export class PathResolver {
  readonly options: Readonly<PathResolutionOptions>;
  readonly #isPathKey: PathKeyTest;
  /** What relative paths resolve against: the declared roots until {@link readRoots}. */
  #roots: readonly string[];
  /** Declared roots that are symlinks, with their real paths (read by {@link readRoots}). */
  #rootLinks: readonly (readonly [root: string, real: string])[] = [];
  /** Roots that were their own real paths when read (no symlink on them). */
  #realRoots: readonly string[] = [];

  constructor(options: PathResolutionOptions) {
    for (const root of options.roots) {
      if (!posix.isAbsolute(root)) throw new TypeError(`paths.roots: ${root} is not absolute`);
    }
    this.options = Object.freeze({
      roots: Object.freeze(options.roots.map((r) => posix.resolve(r))),
      home: options.home,
      realpath: options.realpath,
      hardLinks: options.hardLinks ?? 'closed',
      params: Object.freeze([...(options.params ?? [])]),
      rootsFromClient: options.rootsFromClient ?? false,
    });
    this.#roots = this.options.rootsFromClient ? [] : this.options.roots;
    const extra = new Set(this.options.params);
    this.#isPathKey =
      extra.size === 0 ? builtInPathKey : (key) => extra.has(key) || PATH_KEY_PATTERN.test(key);
  }

  /** The directories relative paths resolve against now, in order. */
  get roots(): readonly string[] {
    return this.#roots;
  }

  /**
   * With `realpath`, reads the declared roots from disk the way server-filesystem builds its
   * allowed directories when it starts: each root as declared, then its real path when that
   * differs, then only the entries that are existing directories (a root that is missing or not
   * a directory is skipped, so the next one becomes the first). The upstream calls this on every
   * connect, right after the server started. Without `realpath` the declared roots stand.
   */
  async readRoots(): Promise<void> {
    if (!this.options.realpath || this.options.rootsFromClient) return;
    const expanded: string[] = [];
    const links: (readonly [string, string])[] = [];
    for (const root of this.options.roots) {
      expanded.push(root);
      const real = await realOrMissing(root);
      if (typeof real === 'string' && real !== root) {
        expanded.push(real);
        links.push([root, real]);
      }
    }
    this.#rootLinks = Object.freeze(links);
    const present: string[] = [];
    for (const dir of expanded) {
      try {
        if ((await stat(dir)).isDirectory()) present.push(dir);
      } catch {
        // missing or unreadable: the server skips it too
      }
    }
    this.#roots = Object.freeze(present);
    this.#realRoots = Object.freeze(present.filter((dir) => !links.some(([r]) => r === dir)));
  }

  /**
   * The path-like values of `params` ({@link view} takes them), or `undefined` when it holds
   * none — a call that carries no paths takes no path lock (see path-lock.ts) and costs nothing.
   */
  pathsIn(params: Readonly<Record<string, unknown>>): PathSlots | undefined {
    if (!mayHoldPaths(params, this.#isPathKey)) return undefined;
    const slots = walk(params, this.#isPathKey);
    return slots.length === 0 ? undefined : slots;
  }

  /**
   * The policy's view of `params`: `params` itself when nothing in it is path-like (no copy, no
   * promise) or every path in it is already in its resolved form, else a copy in which
   * path-like values are resolved or replaced by markers (branches without changes are shared,
   * not copied). A promise only when something must be looked up on disk (`realpath`).
   */
  view(
    params: Readonly<Record<string, unknown>>,
    slots: PathSlots | undefined = this.pathsIn(params),
  ): Readonly<Record<string, unknown>> | Promise<Readonly<Record<string, unknown>>> {
    if (slots === undefined) return params;
    const resolved = new Map<string, Resolved>();
    const spellings = new Map<string, readonly string[]>();
    const reach = new Map<string, PathReach>();
    const disk: (readonly [value: string, abs: string])[] = [];
    for (const slot of slots) {
      const value = slot.value;
      if (typeof value !== 'string' || resolved.has(value)) continue;
      const abs = this.#lexical(value);
      if (typeof abs === 'string' && this.options.realpath) {
        resolved.set(value, abs); // replaced by the real path below
        disk.push([value, abs]);
      } else {
        resolved.set(value, typeof abs === 'string' ? abs.normalize('NFC') : abs);
      }
    }
    if (disk.length === 0) return buildView(params, slots, resolved, spellings, reach);
    return this.#realAll(disk, resolved, spellings, reach).then(() =>
      buildView(params, slots, resolved, spellings, reach),
    );
  }

  /**
   * Looks `disk` up, {@link DISK_CONCURRENCY} at a time in walk order (top-level parameters
   * first), under one {@link MAX_DISK_LOOKUPS_PER_CALL} budget: the parameters a rule most
   * likely reads get the budget first, and one call cannot flood libuv's thread pool.
   */
  async #realAll(
    disk: readonly (readonly [value: string, abs: string])[],
    resolved: Map<string, Resolved>,
    spellings: Map<string, readonly string[]>,
    reach: Map<string, PathReach>,
  ): Promise<void> {
    const budget: DiskBudget = { left: MAX_DISK_LOOKUPS_PER_CALL };
    const walked: WalkLookups = new Map();
    const linked = this.options.hardLinks !== 'named';
    /** Values that name nothing yet (a folder of the same call may become them). */
    const fresh: string[] = [];
    for (let i = 0; i < disk.length; i += DISK_CONCURRENCY) {
      await Promise.all(
        disk.slice(i, i + DISK_CONCURRENCY).map(async ([value, abs]) => {
          // What the path is (a folder, a linked file) is stat'd beside the realpath, not after
          // it: an existing path costs one lookup's latency, not two.
          const found = { fresh: false };
          const [r, seen] = await Promise.all([
            this.#real(value, abs, budget, found),
            budget.left-- > 0 ? statOrMissing(abs) : undefined,
          ]);
          if (typeof r !== 'string') {
            resolved.set(value, r);
            return;
          }
          const real = r.normalize('NFC');
          const names =
            real === abs.normalize('NFC')
              ? []
              : await spelledHops(value, abs, real, this.#rootLinks, this.#realRoots, {
                  budget,
                  walked,
                });
          if (names instanceof UnresolvedPath) {
            resolved.set(value, names);
            return;
          }
          const kind = found.fresh ? 'new' : await kindOf(value, r, seen, budget);
          if (kind instanceof UnresolvedPath) {
            resolved.set(value, kind);
            return;
          }
          if (kind === 'new') fresh.push(value);
          else if (kind === 'below' || (kind === 'linked' && linked)) reach.set(value, kind);
          resolved.set(value, real);
          const other = [...new Set(names.map((n) => n.normalize('NFC')))].filter(
            (n) => n !== real,
          );
          if (other.length > 0) spellings.set(value, other);
        }),
      );
    }
    // A call that names a folder may make a new name of it that folder (move_file's
    // destination): the new name reaches below itself too.
    if (fresh.length > 0 && [...reach.values()].includes('below')) {
      for (const value of fresh)
        if (typeof resolved.get(value) === 'string') reach.set(value, 'below');
    }
  }

  /**
   * One path-like value as the upstream will see it: an absolute, normalized, NFC path, or a
   * marker. A promise only with `realpath`.
   */
  resolve(value: string): Resolved | Promise<Resolved> {
    const abs = this.#lexical(value);
    if (typeof abs !== 'string') return abs;
    if (!this.options.realpath) return abs.normalize('NFC');
    return this.#real(value, abs, { left: MAX_DISK_LOOKUPS_PER_CALL }).then((r) =>
      typeof r === 'string' ? r.normalize('NFC') : r,
    );
  }

  /** Steps 1–4: an absolute normalized path, or a marker. */
  #lexical(value: string): Resolved {
    if (value.length > MAX_PATH_LENGTH) {
      return unresolved(value, `longer than ${MAX_PATH_LENGTH} characters`);
    }
    if (value.includes('\0')) return unresolved(value, 'contains a NUL byte');
    if (hasAmbiguousEnds(value)) {
      return unresolved(
        value,
        'starts or ends with whitespace or a quote (an upstream may trim it or not)',
      );
    }
    let p = value;
    if (p === '~' || p.startsWith('~/')) {
      const home = this.options.home;
      if (home === undefined) {
        return unresolved(value, "starts with ~ and the upstream's home is not known (paths.home)");
      }
      p = posix.join(home, p.slice(1));
    }
    if (posix.isAbsolute(p)) return posix.resolve(p);
    const roots = this.#roots;
    if (roots.length === 0) {
      return unresolved(
        value,
        this.options.rootsFromClient
          ? "is relative and the upstream takes its roots from the agent's client (forwardRoots)"
          : this.options.roots.length === 0
            ? 'is relative and the upstream declares no paths.roots'
            : 'is relative and none of paths.roots is an existing directory',
      );
    }
    // server-filesystem's rule: the first root under which the result stays inside some root.
    for (const root of roots) {
      const candidate = posix.resolve(root, p);
      if (insideAny(candidate, roots)) return candidate;
    }
    return posix.resolve(roots[0]!, p);
  }

  /**
   * Step 5: the path on disk, following symlinks as the OS would. Sets `found.fresh` when the
   * result is known to name nothing yet.
   */
  async #real(
    value: string,
    abs: string,
    budget: DiskBudget,
    found: { fresh: boolean } = { fresh: false },
  ): Promise<Resolved> {
    const spent = (): UnresolvedPath | undefined =>
      budget.left-- > 0 ? undefined : overBudget(value);
    let path = abs;
    for (let hops = 0; hops <= MAX_SYMLINK_HOPS; hops++) {
      let over = spent();
      if (over) return over;
      try {
        return await realpath(path);
      } catch (error) {
        if (errnoOf(error) !== 'ENOENT') return unreadable(value, error);
      }
      const parts = path.split('/').filter((s) => s !== '');
      // The deepest existing prefix: usually the parent, else found by bisection (existence
      // is monotonic along a path), so a deep missing path costs O(log n) lookups.
      let lo = 0;
      let real = '/'; // the root's real path is itself
      let hi = parts.length;
      if ((over = spent())) return over;
      const parent = await realOrMissing(prefix(parts, hi - 1));
      if (parent instanceof Error) return unreadable(value, parent);
      if (parent !== undefined) {
        lo = hi - 1;
        real = parent;
      } else {
        hi -= 1;
        while (hi - lo > 1) {
          const mid = (lo + hi) >>> 1;
          if ((over = spent())) return over;
          const r = await realOrMissing(prefix(parts, mid));
          if (r instanceof Error) return unreadable(value, r);
          if (r === undefined) hi = mid;
          else {
            lo = mid;
            real = r;
          }
        }
      }
      // parts[lo] does not resolve: a dangling symlink, another spelling of an entry, or new.
      const name = parts[lo]!;
      const rest = parts.slice(lo + 1);
      let entry = name;
      if ((over = spent())) return over;
      let stat = await lstatOrMissing(posix.join(real, name));
      if (stat instanceof Error) return unreadable(value, stat);
      if (stat === undefined) {
        if (!hasNoOtherSpelling(name) && (over = spent())) return over;
        const match = await equivalentEntry(real, name);
        if (match instanceof Error) return unreadable(value, match);
        if (match === null) {
          return unresolved(value, `names an entry ambiguously (Unicode-equivalent names)`);
        }
        if (match === undefined) {
          found.fresh = true;
          return posix.join(real, name, ...rest);
        }
        entry = match;
        if ((over = spent())) return over;
        stat = await lstatOrMissing(posix.join(real, entry));
        if (stat instanceof Error) return unreadable(value, stat);
        if (stat === undefined) {
          found.fresh = true; // removed meanwhile
          return posix.join(real, name, ...rest);
        }
      }
      if (stat.isSymbolicLink()) {
        // Dangling: what an open(O_CREAT) would create is the link's target.
        let target: string;
        if ((over = spent())) return over;
        try {
          target = await readlink(posix.join(real, entry));
        } catch (error) {
          return unreadable(value, error);
        }
        path = posix.resolve(real, target, ...rest);
      } else {
        path = posix.join(real, entry, ...rest);
      }
    }
    return unresolved(value, `follows more than ${MAX_SYMLINK_HOPS} symlinks`);
  }
}

/**
 * What the resolved `path` of `value` is on disk, for the policy ({@link PathReach}): `below`
 * for a folder, `linked` for anything else with more than one hard link, `new` when nothing is
 * there, `undefined` for a file with one name. `seen` is the `stat` of the name as given, taken
 * beside the realpath (the same file when it exists); without it (missing under that spelling,
 * an error, no budget left) one `lstat` of `path` decides (it has no symlink left); an error
 * other than "does not exist" is a marker.
 */
async function kindOf(
  value: string,
  path: string,
  seen: Awaited<ReturnType<typeof statOrMissing>>,
  budget: DiskBudget,
): Promise<PathReach | 'new' | undefined | UnresolvedPath> {
  let stat = seen;
  if (stat === undefined || stat instanceof Error) {
    if (budget.left-- <= 0) return overBudget(value);
    stat = await lstatOrMissing(path);
  }
  if (stat === undefined) return 'new';
  if (stat instanceof Error) return unreadable(value, stat);
  if (stat.isDirectory()) return 'below';
  return stat.nlink > 1 ? 'linked' : undefined;
}

/** What is left of one call's {@link MAX_DISK_LOOKUPS_PER_CALL}. */
interface DiskBudget {
  left: number;
}

function overBudget(value: string): UnresolvedPath {
  return unresolved(value, `needs more than ${MAX_DISK_LOOKUPS_PER_CALL} disk lookups in one call`);
}

function unreadable(value: string, error: unknown): UnresolvedPath {
  return unresolved(value, `cannot be resolved on disk (${errnoOf(error)})`);
}

/**
 * The names `abs` goes by on the way to its real path `real`: `abs`, then the path after each
 * symlink on it is followed, one at a time and from the left (a link's target is resolved
 * lexically against its folder, as the names a rule could give it); a missing name ends the walk
 * (the rest is new), and a name missing only in this spelling is taken as its one
 * Unicode-equivalent entry. A root that is a symlink (`rootLinks`, read at connect) is the first
 * hop without a lookup, and the folders of a root's real path are not looked up; nor are the
 * folders a hop's target shares with the path already walked, nor anything once a hop reaches
 * the real path. Called only for values whose real
 * path differs from `abs`; spends `budget` like the resolution, and is a marker when it runs out
 * or meets an error.
 */
async function spelledHops(
  value: string,
  abs: string,
  real: string,
  rootLinks: readonly (readonly [root: string, real: string])[],
  realRoots: readonly string[],
  { budget, walked }: { budget: DiskBudget; walked: WalkLookups },
): Promise<string[] | UnresolvedPath> {
  const names = [abs];
  let path = abs;
  /** Leading components of `path` known to be folders, not links. */
  let known = 0;
  const depth = (dir: string): number => dir.split('/').filter((c) => c !== '').length;
  for (const [root, rootReal] of rootLinks) {
    if (!insideAny(abs, [root])) continue;
    path = rootReal + abs.slice(root.length);
    names.push(path);
    if (path.normalize('NFC') === real) return names;
    known = depth(rootReal);
    break;
  }
  for (const root of realRoots) if (insideAny(path, [root])) known = Math.max(known, depth(root));
  for (let hops = 0; hops < MAX_SYMLINK_HOPS; hops++) {
    const parts = path.split('/').filter((c) => c !== '');
    let dir = prefix(parts, known);
    let next: string | undefined;
    for (let i = known; i < parts.length && next === undefined; i++) {
      let here = posix.join(dir, parts[i]!);
      let lookup = walked.get(here);
      if (lookup === undefined) {
        // The values of one call share their folders: each is looked up (and paid for) once.
        if (budget.left-- <= 0) return overBudget(value);
        walked.set(here, (lookup = walkLookup(here)));
      }
      let { stat, target } = await lookup;
      if (stat instanceof Error) return unreadable(value, stat);
      if (stat === undefined) {
        if (!hasNoOtherSpelling(parts[i]!) && budget.left-- <= 0) return overBudget(value);
        const match = await equivalentEntry(dir, parts[i]!);
        if (match instanceof Error) return unreadable(value, match);
        if (typeof match !== 'string') return names; // new from here (ambiguous: a marker already)
        here = posix.join(dir, match);
        ({ stat, target } = await walkLookup(here));
        if (stat instanceof Error) return unreadable(value, stat);
        if (stat === undefined) return names;
      }
      if (stat.isSymbolicLink()) {
        if (typeof target !== 'string') return unreadable(value, target);
        next = posix.resolve(dir, target, ...parts.slice(i + 1));
        known = sharedFolders(dir, next);
      } else {
        dir = here;
      }
    }
    if (next === undefined) return names;
    names.push(next);
    if (next.normalize('NFC') === real) return names; // the real path: no link left on it
    path = next;
  }
  return names;
}

/** What the names walk of one call learnt of each path it looked up ({@link walkLookup}). */
type WalkLookups = Map<string, Promise<WalkLookup>>;

interface WalkLookup {
  /** Its `lstat` (undefined: missing). */
  readonly stat: Awaited<ReturnType<typeof lstatOrMissing>>;
  /** A symlink's target (or why it could not be read). */
  readonly target?: string | Error;
}

/** `path`'s `lstat` and, for a symlink, its target. */
async function walkLookup(path: string): Promise<WalkLookup> {
  const stat = await lstatOrMissing(path);
  if (stat === undefined || stat instanceof Error || !stat.isSymbolicLink()) return { stat };
  try {
    return { stat, target: await readlink(path) };
  } catch (error) {
    return { stat, target: error as Error };
  }
}

/** How many leading components `next` shares with the folder `dir` (all of them real folders). */
function sharedFolders(dir: string, next: string): number {
  const a = dir.split('/').filter((c) => c !== '');
  const b = next.split('/').filter((c) => c !== '');
  let n = 0;
  // The last component of `next` is what it names, not a folder on its way.
  while (n < a.length && n < b.length - 1 && a[n] === b[n]) n++;
  return n;
}

function prefix(parts: readonly string[], n: number): string {
  return `/${parts.slice(0, n).join('/')}`;
}

/** What `lookup` answers for `path`, `undefined` when it does not exist, or the error. */
async function orMissing<T>(
  lookup: (path: string) => Promise<T>,
  path: string,
): Promise<T | undefined | Error> {
  try {
    return await lookup(path);
  } catch (error) {
    return errnoOf(error) === 'ENOENT' ? undefined : (error as Error);
  }
}

// The string and `Stats` overloads, as values.
const realpathOf = (p: string): Promise<string> => realpath(p);
const statOf = (p: string): Promise<Stats> => stat(p);
const lstatOf = (p: string): Promise<Stats> => lstat(p);

/** The real path, `undefined` when it does not exist, or the error. */
function realOrMissing(path: string): Promise<string | undefined | Error> {
  return orMissing(realpathOf, path);
}

/** `stat` (symlinks followed), `undefined` when it does not exist, or the error. */
function statOrMissing(path: string): Promise<Stats | undefined | Error> {
  return orMissing(statOf, path);
}

/** `lstat`, `undefined` when it does not exist, or the error. */
function lstatOrMissing(path: string): Promise<Stats | undefined | Error> {
  return orMissing(lstatOf, path);
}

/**
 * The one entry of `dir` equal to `name` up to Unicode NFC (server-filesystem opens it for
 * `name`); `undefined` when none, `null` when several.
 */
async function equivalentEntry(
  dir: string,
  name: string,
): Promise<string | undefined | null | Error> {
  // Only three non-ASCII characters normalize to ASCII (U+037E → `;`, U+1FEF → `` ` ``,
  // U+212A → `K`): an ASCII name without those has no other spelling, and needs no listing.
  if (hasNoOtherSpelling(name)) return undefined;
  let entries: string[];
  try {
    entries = await readdir(dir);
  } catch (error) {
    return error as Error;
  }
  const wanted = name.normalize('NFC');
  let found: string | undefined;
  for (const e of entries) {
    if (e.normalize('NFC') !== wanted) continue;
    if (found !== undefined) return null;
    found = e;
  }
  return found;
}

/** ASCII, and none of the characters a non-ASCII one NFC-normalizes to. */
function hasNoOtherSpelling(name: string): boolean {
  for (let i = 0; i < name.length; i++) {
    const c = name.charCodeAt(i);
    if (c > 0x7f || c === 0x3b /* ; */ || c === 0x4b /* K */ || c === 0x60 /* ` */) return false;
  }
  return true;
}

function insideAny(path: string, roots: readonly string[]): boolean {
  for (const root of roots) {
    if (path === root || root === '/' || path.startsWith(`${root}/`)) return true;
  }
  return false;
}

/** True unless `params` is flat and has no path-like string (the common call: no walk). */
function mayHoldPaths(params: Readonly<Record<string, unknown>>, isPathKey: PathKeyTest): boolean {
  for (const key in params) {
    const v = params[key];
    if (typeof v === 'string') {
      if (looksLikePath(v) || isPathKey(key)) return true;
    } else if (typeof v === 'object' && v !== null) {
      return true;
    }
  }
  return false;
}

/**
 * Finds the values of `params` the view changes: path-like strings (to resolve), and markers for
 * what the walk does not inspect. Iterative, and bounded: nothing deeper than
 * {@link MAX_PATH_WALK_DEPTH} is entered, and once {@link MAX_PATH_WALK_NODES} values were
 * visited nothing more is entered — every object or array not yet walked, and every path-like
 * string not yet seen, stands as a marker (one shared instance, so a huge call costs no more
 * than a pass over what is left of the containers already entered).
 */
function walk(params: Readonly<Record<string, unknown>>, isPathKey: PathKeyTest): Slot[] {
  const root: Frame = {
    node: params,
    parent: undefined,
    key: '',
    depth: 0,
    pathKey: false,
    copy: undefined,
  };
  // Plain state and top-level functions, no closures: this runs for every call with a path.
  const w: Walk = {
    slots: [],
    stack: [root],
    nodes: 0,
    paths: 0,
    over: undefined,
    many: undefined,
  };
  while (w.stack.length > 0) {
    const frame = w.stack.pop()!;
    if (w.over !== undefined && frame.parent !== undefined) {
      w.slots.push({ frame: frame.parent, key: frame.key, value: w.over });
      continue;
    }
    const node = frame.node;
    if (Array.isArray(node)) {
      for (let i = 0; i < node.length; i++) visit(w, frame, i, node[i], frame.pathKey);
    } else {
      const obj = node as Record<string, unknown>;
      for (const key in obj) {
        if (Object.hasOwn(obj, key)) visit(w, frame, key, obj[key], isPathKey(key));
      }
    }
  }
  return w.slots;
}

/** State of one {@link walk}. */
interface Walk {
  readonly slots: Slot[];
  readonly stack: Frame[];
  nodes: number;
  paths: number;
  /** Set once the node budget is spent: the marker of everything not inspected. */
  over: UnresolvedPath | undefined;
  /** The marker of paths over {@link MAX_PATHS_PER_CALL}. */
  many: UnresolvedPath | undefined;
}

function visit(
  w: Walk,
  frame: Frame,
  key: string | number,
  child: unknown,
  pathKey: boolean,
): void {
  if (w.over === undefined && ++w.nodes > MAX_PATH_WALK_NODES) {
    w.over = new UnresolvedPath(
      '',
      `was not inspected (over ${MAX_PATH_WALK_NODES} values in one call)`,
    );
  }
  if (typeof child === 'string') {
    if (!looksLikePath(child) && !pathKey) return;
    let value: string | UnresolvedPath = child;
    if (w.over !== undefined) value = w.over;
    else if (++w.paths > MAX_PATHS_PER_CALL) {
      value = w.many ??= new UnresolvedPath(
        '',
        `was not resolved (over ${MAX_PATHS_PER_CALL} paths in one call)`,
      );
    }
    w.slots.push({ frame, key, value });
  } else if (typeof child === 'object' && child !== null) {
    if (child instanceof UnresolvedPath) w.slots.push({ frame, key, value: child });
    else if (w.over !== undefined) w.slots.push({ frame, key, value: w.over });
    else if (frame.depth >= MAX_PATH_WALK_DEPTH) {
      w.slots.push({
        frame,
        key,
        value: new UnresolvedPath('', `is nested deeper than ${MAX_PATH_WALK_DEPTH} levels`),
      });
    } else {
      w.stack.push({
        node: child,
        parent: frame,
        key,
        depth: frame.depth + 1,
        pathKey,
        copy: undefined,
      });
    }
  }
}

function copyOf(frame: Frame): Record<string | number, unknown> {
  if (frame.copy !== undefined) return frame.copy;
  const node = frame.node as Record<string | number, unknown>;
  const copy = (Array.isArray(node) ? node.slice() : { ...node }) as Record<
    string | number,
    unknown
  >;
  frame.copy = copy;
  // Depth-limited by MAX_PATH_WALK_DEPTH.
  if (frame.parent !== undefined) setOwn(copyOf(frame.parent), frame.key, copy);
  return copy;
}

/** Assigns without invoking the `__proto__` setter (a JSON key like any other). */
function setOwn(obj: Record<string | number, unknown>, key: string | number, value: unknown): void {
  if (key === '__proto__') {
    Object.defineProperty(obj, key, {
      value,
      writable: true,
      enumerable: true,
      configurable: true,
    });
  } else {
    obj[key] = value;
  }
}

function buildView(
  params: Readonly<Record<string, unknown>>,
  slots: readonly Slot[],
  resolved: ReadonlyMap<string, Resolved>,
  spellings: ReadonlyMap<string, readonly string[]>,
  reach: ReadonlyMap<string, PathReach>,
): Readonly<Record<string, unknown>> {
  const markers: UnresolvedPath[] = [];
  let root: Frame | undefined;
  for (const slot of slots) {
    const value = typeof slot.value === 'string' ? resolved.get(slot.value)! : slot.value;
    const reaches = typeof slot.value === 'string' ? reach.get(slot.value) : undefined;
    // Already canonical, and nothing to record about it: no copy.
    if (value === slot.value && typeof value === 'string' && reaches === undefined) continue;
    const copy = copyOf(slot.frame);
    setOwn(copy, slot.key, value);
    const names = typeof slot.value === 'string' ? spellings.get(slot.value) : undefined;
    if (names !== undefined) recordSpellings(copy, slot.key, names);
    if (reaches !== undefined) recordReach(copy, slot.key, reaches);
    if (value instanceof UnresolvedPath) {
      markers.push(value);
      for (let f: Frame | undefined = slot.frame; f !== undefined; f = f.parent) {
        markHoldsUnresolved(f.copy!);
      }
    }
    root ??= rootOf(slot.frame);
  }
  if (root === undefined) return params; // every path was canonical already: no copy
  const view = root.copy!;
  if (markers.length > 0) VIEW_MARKERS.set(view, markers);
  return view;
}

function rootOf(frame: Frame): Frame {
  let f = frame;
  while (f.parent !== undefined) f = f.parent;
  return f;
}

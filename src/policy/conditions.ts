/**
 * Shorthand rule conditions (`{ language: 'python' }`, `{ path: '/etc/*' }`), compiled into one
 * predicate over a tool call's parameters; and the path normalization they rely on.
 *
 * Normalization here is lexical. The gateway gives the engine a *resolved* view of a call's
 * parameters instead (relative paths, `~`, symlinks resolved the way the upstream resolves them,
 * see `gateway/path-resolver.ts`), where a value it cannot resolve is an {@link UnresolvedPath}
 * marker: a restrictive rule's condition on a marker matches, an allow rule's does not.
 *
 * @module
 */
import { posix } from 'node:path';
import { compileGlob, hasGlobSyntax } from './glob.js';
import { resolvePatternPath } from './pattern-realpath.js';
import type { ConditionScalar, PolicyConditions } from './policy.js';
import { reachOf, spellingsOf, UnresolvedPath } from './unresolved-path.js';

/**
 * A compiled condition set: true when every condition matches `params`. `raw`: the parameters
 * as sent to the tool when `params` is a resolved view of them (see `PolicyContext.rawParams`);
 * a deny or require_approval condition on a parameter whose name is not path-like also matches
 * the value as sent, so resolving a value that only looks like a path cannot hide it.
 */
export type ParamsPredicate = (
  params: Readonly<Record<string, unknown>>,
  raw?: Readonly<Record<string, unknown>>,
) => boolean;

/**
 * Parameter names treated as paths whatever their value looks like: the name (or the last
 * segment of a dotted name) is, or ends with, one of these words, case-insensitively — `path`,
 * `filePath`, `target_dir`, `paths`, `source`, `destination`, `cwd`…
 */
export const PATH_KEY_PATTERN =
  /(?:path|file|filename|dir|directory|folder|cwd|root|source|src|dest|destination|target)s?$/i;

/**
 * True when a string *value* looks like a path on its own: it starts with `/`, `~`, `./` or
 * `../` (or is `.` / `..`). Other strings (`https://…`, `a/b` in code) are left alone unless
 * their parameter name is path-like (see {@link PATH_KEY_PATTERN}).
 */
export function looksLikePath(value: string): boolean {
  const c = value.charCodeAt(0);
  if (c === 47 /* / */ || c === 126 /* ~ */) return true;
  return value === '.' || value === '..' || value.startsWith('./') || value.startsWith('../');
}

/**
 * Normalizes a path for matching with `path.posix.normalize` semantics: `.` segments and
 * repeated slashes are removed and `..` is resolved lexically (`/tmp/../etc/passwd` →
 * `/etc/passwd`; `..` above the root stays at the root), then a trailing slash is dropped
 * (`/etc/` → `/etc`), then the result is Unicode-NFC-normalized (rule values are too, so an NFD
 * spelling of a name matches). Nothing is read from disk (symlinks are not resolved) and nothing
 * is percent-decoded. A relative path stays relative (`../etc/passwd` does not match `/etc/*`).
 */
export function normalizePath(value: string): string {
  if (value === '') return value;
  const n = posix.normalize(value);
  return (n.length > 1 && n.endsWith('/') ? n.slice(0, -1) : n).normalize('NFC');
}

type ValueTest = (value: string) => boolean;

/**
 * Compiles `conditions`. `restrictive` is true for deny and require_approval rules: it decides
 * how an array-valued parameter matches — any element for restrictive rules, every element
 * (of a non-empty array) for allow rules — so an array can never be used to slip a forbidden
 * value past a deny or to borrow an allow for a value it does not cover. It also decides an
 * {@link UnresolvedPath} marker (in the value, or on the way to it through dotted keys): a
 * condition on one matches exactly when `restrictive` is true, so what could not be resolved
 * is caught by deny rules and never allowed by allow rules. A restrictive condition with a path
 * pattern also matches what a resolved value reaches ({@link reachOf}): a folder when the pattern
 * could match a path below it, a hard-linked file whatever the pattern. A dotted key (`a.b`) reads both the
 * literal parameter `a.b` and the nested `a` → `b`, combined the same way as array elements.
 *
 * @throws GlobSyntaxError for a malformed glob value.
 */
export function compileConditions(
  conditions: PolicyConditions,
  restrictive: boolean,
): ParamsPredicate {
  const checks = Object.entries(conditions).map(([key, expected]) =>
    compileCondition(key, expected, restrictive),
  );
  if (checks.length === 1) return checks[0]!;
  return (params, raw) => {
    for (let i = 0; i < checks.length; i++) if (!checks[i]!(params, raw)) return false;
    return true;
  };
}

function compileCondition(
  key: string,
  expected: ConditionScalar | readonly ConditionScalar[],
  restrictive: boolean,
): ParamsPredicate {
  const lastSegment = key.slice(key.lastIndexOf('.') + 1);
  const pathKey = PATH_KEY_PATTERN.test(lastSegment);
  const alternatives = (Array.isArray(expected) ? expected : [expected]) as ConditionScalar[];
  const compiled = alternatives.map((e) => compileValue(e, pathKey, restrictive));
  const tests = compiled.map((c) => c.test);
  const one =
    tests.length === 1
      ? tests[0]!
      : (v: unknown): boolean => {
          for (let i = 0; i < tests.length; i++) if (tests[i]!(v)) return true;
          return false;
        };
  const below = anyBelow(compiled);
  // A restrictive rule also matches the names a resolved path went by (recordSpellings), and
  // what it reaches on disk (recordReach): a path below a folder, a hard-linked file's names.
  const oneAt = restrictive
    ? (v: unknown, holder: object, k: string | number): boolean => {
        if (one(v)) return true;
        if (typeof v !== 'string') return false;
        const names = spellingsOf(holder, k);
        if (names !== undefined) for (const n of names) if (one(n)) return true;
        if (below === undefined) return false;
        const reach = reachOf(holder, k);
        if (reach === undefined) return false;
        if (reach === 'linked') return true;
        if (below(v)) return true;
        if (names !== undefined) for (const n of names) if (below(n)) return true;
        return false;
      }
    : one;
  const matches = (value: unknown, holder: object, k: string | number): boolean => {
    if (!Array.isArray(value)) return oneAt(value, holder, k);
    if (restrictive) {
      for (let i = 0; i < value.length; i++) if (oneAt(value[i], value, i)) return true;
      return false;
    }
    if (value.length === 0) return false;
    for (let i = 0; i < value.length; i++) if (!one(value[i])) return false;
    return true;
  };
  const check = compileLookup(key, matches, restrictive);
  if (!restrictive || pathKey) return check;
  // Not a path-like name: the gateway's view may hold a resolved path where the tool gets text
  // that merely starts with `/`; a restrictive rule matches the value as sent too.
  return (params, raw) => check(params) || (raw !== undefined && raw !== params && check(raw));
}

/** Reads the parameter `key` (dotted: both spellings) and applies `matches`. */
function compileLookup(
  key: string,
  matches: (value: unknown, holder: object, key: string | number) => boolean,
  restrictive: boolean,
): ParamsPredicate {
  if (!key.includes('.')) {
    return (params) => {
      if (params === null || typeof params !== 'object' || !Object.hasOwn(params, key)) {
        return false;
      }
      const value = params[key];
      return value !== undefined && matches(value, params, key);
    };
  }
  // A dotted key names two parameters an agent controls at once: the literal key `a.b` and the
  // nested `a` → `b`, and which one the tool reads is the tool's business. Both are matched
  // like an array's elements: a restrictive rule matches if either does (else `{"a.b": ok,
  // "a": {"b": bad}}` slips `bad` past a deny), an allow rule only if every one present does.
  const dotted = key.split('.');
  const last = dotted[dotted.length - 1]!;
  return (params) => {
    if (params === null || typeof params !== 'object') return false;
    const literal = Object.hasOwn(params, key) ? params[key] : undefined;
    const at = walkDotted(params, dotted);
    const nested = at?.value;
    const nestedMatches = (): boolean => matches(nested, at!.holder, last);
    if (literal === undefined) return nested !== undefined && nestedMatches();
    if (nested === undefined) return matches(literal, params, key);
    return restrictive
      ? matches(literal, params, key) || nestedMatches()
      : matches(literal, params, key) && nestedMatches();
  };
}

/**
 * The value at `params.a.b…` (own properties only) and the object holding it, or a marker met
 * on the way (then `holder` is not where the marker was: a marker has no other spellings).
 */
function walkDotted(
  params: Readonly<Record<string, unknown>>,
  dotted: readonly string[],
): { readonly value: unknown; readonly holder: object } | undefined {
  let v: unknown = params;
  let holder: object = params;
  for (const k of dotted) {
    // Nothing below a marker can be known: the marker answers for it.
    if (v instanceof UnresolvedPath) return { value: v, holder };
    if (v === null || typeof v !== 'object' || !Object.hasOwn(v, k)) return undefined;
    holder = v;
    v = (v as Record<string, unknown>)[k];
  }
  return { value: v, holder };
}

/**
 * Whether any path pattern of `compiled` could match a path below the folder `dir` (a
 * resolved, absolute path); `undefined` when none of them is a path pattern.
 */
function anyBelow(compiled: readonly CompiledValue[]): ((dir: string) => boolean) | undefined {
  const belows = compiled.flatMap((c) => (c.below === undefined ? [] : [c.below]));
  if (belows.length === 0) return undefined;
  return (dir) => {
    const n = normalizePath(dir);
    const prefix = n === '/' ? n : `${n}/`;
    for (let i = 0; i < belows.length; i++) if (belows[i]!(prefix)) return true;
    return false;
  };
}

/** One condition value compiled: its test, and for a path pattern its test below a folder. */
interface CompiledValue {
  readonly test: (v: unknown) => boolean;
  /** True when the pattern could match some path starting with `prefix` (path patterns only). */
  readonly below?: ((prefix: string) => boolean) | undefined;
}

function compileValue(
  expected: ConditionScalar,
  pathKey: boolean,
  restrictive: boolean,
): CompiledValue {
  if (typeof expected !== 'string') {
    return { test: (v) => v === expected || (restrictive && v instanceof UnresolvedPath) };
  }
  const pathish = pathKey || looksLikePath(expected);
  const { test, below } = compileTest(expected, pathish, restrictive);
  return { test: valueTest(test, pathKey, restrictive), below: pathish ? below : undefined };
}

function valueTest(
  test: ValueTest,
  pathKey: boolean,
  restrictive: boolean,
): (v: unknown) => boolean {
  return (v) => {
    if (typeof v !== 'string') return restrictive && v instanceof UnresolvedPath;
    if (!pathKey && !looksLikePath(v)) return test(v);
    const n = normalizePath(v);
    // `/etc` is matched as `/etc/` too, so a rule on `/etc/*` also covers the directory itself.
    if (test(n) || (n !== '/' && test(`${n}/`))) return true;
    // A parameter whose name is not path-like may hold text that merely starts with `/` (a
    // file's content): normalizing it could erase what a deny looks for (`/<secret>/../..`
    // is `/`), while the tool gets the text as sent. A restrictive rule also matches it as sent.
    return restrictive && !pathKey && n !== v && test(v);
  };
}

/**
 * The test of one string rule value. A path pattern (absolute, on a path-like parameter or
 * looking like a path) is also resolved on disk ({@link resolvePatternPath}): the gateway
 * matches rules against the real path a call touches, so `${SANDBOX}/protected/**` must name
 * the real folder when `.fabric`, the sandbox or `protected/` is a symlink. Which spelling
 * matches depends on the action, so that resolving can only ever make a rule fail closed:
 * a deny or require_approval rule matches the resolved pattern *or* the pattern as written
 * (values that are not realpath'd — a remote upstream's paths, the engine called directly, a
 * link created after the rule was compiled — still meet the written spelling); an allow rule
 * matches only the resolved one (a value that is not realpath'd and goes through a local
 * symlink is then not allowed, rather than an allow widened to wherever a name points).
 */
function compileTest(
  expected: string,
  pathish: boolean,
  restrictive: boolean,
): { test: ValueTest; below: (prefix: string) => boolean } {
  if (hasGlobSyntax(expected)) {
    const spelled = pathish ? expected.normalize('NFC') : expected;
    const glob = compileGlob(spelled);
    const real = pathish ? resolvePatternPath(spelled, true) : spelled;
    if (real === spelled) return { test: (s) => glob.test(s), below: glob.matchesSomeWith };
    const realGlob = compileGlob(real);
    return restrictive
      ? {
          test: (s) => realGlob.test(s) || glob.test(s),
          below: (p) => realGlob.matchesSomeWith(p) || glob.matchesSomeWith(p),
        }
      : { test: (s) => realGlob.test(s), below: realGlob.matchesSomeWith };
  }
  const literal = pathish ? normalizePath(expected) : expected;
  const real = pathish ? resolvePatternPath(literal, false) : literal;
  if (real === literal) return { test: (s) => s === literal, below: (p) => literal.startsWith(p) };
  return restrictive
    ? {
        test: (s) => s === real || s === literal,
        below: (p) => real.startsWith(p) || literal.startsWith(p),
      }
    : { test: (s) => s === real, below: (p) => real.startsWith(p) };
}

/**
 * What is worth telling the author of `policy` before it goes live: condition values on paths
 * that match no call in the gateway. The gateway matches a path parameter as the absolute path
 * it resolves to (`protected/x` is `/srv/sandbox/protected/x` there), so a relative path pattern
 * (`protected/**`, `./build`, `~/.ssh/*` — the gateway expands `~` in calls, not in rules) never
 * matches: a `deny` that does nothing. Only values that look like paths are named (they contain
 * a `/` or start with `.` or `~`), on parameters a rule treats as paths, and only when the
 * pattern cannot match any absolute path (it starts with a character other than `/` or a glob
 * wildcard). Called directly (`PolicyEngine.evaluate` without the gateway) such a pattern still
 * matches the relative value as sent; the warning says where it does not.
 *
 * @returns one sentence per such value, naming the rule and the condition.
 */
export function policyWarnings(policy: {
  readonly rules: readonly { readonly conditions?: PolicyConditions | undefined }[];
}): string[] {
  const warnings: string[] = [];
  policy.rules.forEach((rule, i) => {
    for (const [key, expected] of Object.entries(rule.conditions ?? {})) {
      const pathKey = PATH_KEY_PATTERN.test(key.slice(key.lastIndexOf('.') + 1));
      const values = (Array.isArray(expected) ? expected : [expected]) as ConditionScalar[];
      for (const value of values) {
        if (typeof value !== 'string' || !(pathKey || looksLikePath(value))) continue;
        if (!neverAbsolute(value)) continue;
        if (!value.includes('/') && value[0] !== '.' && value[0] !== '~') continue;
        const hint = value.startsWith('~')
          ? 'write the home directory out'
          : `anchor it (\`/srv/sandbox/${value.replace(/^(?:\.{1,2}\/)+/, '')}\`, \`\${SANDBOX}/…\` in a config) or start it with \`**/\``;
        warnings.push(
          `rule #${i} condition ${JSON.stringify(key)}: ${JSON.stringify(value)} is a relative path; the gateway matches path parameters as the absolute paths they resolve to, so it matches no call there (${hint})`,
        );
      }
    }
  });
  return warnings;
}

/** True when glob or literal `pattern` cannot match a string that starts with `/`. */
function neverAbsolute(pattern: string): boolean {
  const c = pattern[0];
  if (c === undefined || c === '/' || c === '*' || c === '?' || c === '[' || c === '{') {
    return false;
  }
  if (c === '\\') return pattern[1] !== '/';
  return true;
}

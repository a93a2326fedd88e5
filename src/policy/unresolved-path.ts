/**
 * The "unresolved path" marker: what a policy sees in place of a path-like parameter that could
 * not be resolved with certainty (a relative path when the upstream declares no roots, `~` with
 * no known home, a realpath error other than "does not exist", a NUL byte, an over-long value,
 * a `file:` URI that cannot be decoded…).
 *
 * Policies fail closed on it, whichever way they read it: a `deny` or `require_approval` rule's
 * condition on it matches and an `allow` rule's does not (see `conditions.ts`); a JSON-logic
 * `var` that reads it — or reads an object or array holding one — throws, and a `when` that
 * throws fails closed the same way (see `json-logic.ts`). Code that reads it as a string (a
 * policy plugin calling `String(p)`, `p + ''` or `p == 'x'`) gets a `TypeError`, and a provider
 * that throws denies. Serialized (approval records, logs) it is
 * `{ "unresolvedPath": reason, "value": <the agent's spelling, truncated> }`.
 *
 * @module
 */

/** Longest part of the agent's spelling a marker keeps for display. */
export const MAX_UNRESOLVED_VALUE_DISPLAY = 256;

/**
 * Stands in for a path-like value the policy cannot trust. Frozen; compare with
 * {@link isUnresolvedPath}, never by value.
 *
 * @example
 * const p = new UnresolvedPath('protected/x', 'relative path and the upstream declares no paths.roots');
 * isUnresolvedPath(p); // true
 * JSON.stringify(p); // {"unresolvedPath":"relative path and …","value":"protected/x"}
 */
export class UnresolvedPath {
  /** The agent's spelling (at most {@link MAX_UNRESOLVED_VALUE_DISPLAY} characters). */
  readonly value: string;
  /** Why it could not be resolved. */
  readonly reason: string;

  constructor(value: string, reason: string) {
    this.value =
      value.length > MAX_UNRESOLVED_VALUE_DISPLAY
        ? `${value.slice(0, MAX_UNRESOLVED_VALUE_DISPLAY)}…`
        : value;
    this.reason = reason;
    Object.freeze(this);
  }

  /** The serialized form (approval records, logs). */
  toJSON(): { unresolvedPath: string; value: string } {
    return { unresolvedPath: this.reason, value: this.value };
  }

  /** Reading the marker as a string or number is a policy bug waiting to fail open: refuse. */
  [Symbol.toPrimitive](): never {
    throw new TypeError(`unresolved path ${JSON.stringify(this.value)}: ${this.reason}`);
  }
}

/** True for an {@link UnresolvedPath} marker. */
export function isUnresolvedPath(value: unknown): value is UnresolvedPath {
  return value instanceof UnresolvedPath;
}

/** Objects and arrays of a resolved view that hold a marker somewhere below them. */
const HOLDERS = new WeakSet<object>();

/**
 * Records that `container` (an object or array of a resolved parameter view) holds an
 * {@link UnresolvedPath} somewhere below it, so that reading the container whole fails closed
 * too. The resolver calls it for every ancestor of a marker.
 */
export function markHoldsUnresolved(container: object): void {
  HOLDERS.add(container);
}

/** True for a marker, or an object or array recorded with {@link markHoldsUnresolved}. */
export function holdsUnresolved(value: unknown): boolean {
  return (
    typeof value === 'object' &&
    value !== null &&
    (value instanceof UnresolvedPath || HOLDERS.has(value))
  );
}

/** Other spellings of resolved path values, by the view container and key that hold them. */
const SPELLINGS = new WeakMap<object, Map<string | number, readonly string[]>>();

/**
 * Records the names a resolved path value at `container[key]` went by on its way to its real
 * path (the absolute path as the agent named it, then the path after each symlink followed;
 * NFC). A `deny` or `require_approval` condition matches them too, so a rule that names a folder
 * by a name that is a symlink (a glob tail such as `**` + `/protected/**`, or a link made after
 * the rule was loaded) still catches a call through that name; an `allow` condition matches
 * only the real path.
 */
export function recordSpellings(
  container: object,
  key: string | number,
  spellings: readonly string[],
): void {
  let byKey = SPELLINGS.get(container);
  if (byKey === undefined) SPELLINGS.set(container, (byKey = new Map()));
  byKey.set(key, spellings);
}

/** The spellings {@link recordSpellings} recorded for `container[key]`, if any. */
export function spellingsOf(
  container: object,
  key: string | number,
): readonly string[] | undefined {
  return SPELLINGS.get(container)?.get(key);
}

/**
 * What a resolved path value reaches on disk besides its own name (see {@link recordReach}):
 * `below` — it is a folder (or a new name a folder of the same call may become), so a call on
 * it may list, move or remove everything below it; `linked` — it is a file with more than one
 * hard link, whose other names (anywhere on its disk) cannot be known.
 */
export type PathReach = 'below' | 'linked';

/** {@link PathReach} of resolved path values, by the view container and key that hold them. */
const REACH = new WeakMap<object, Map<string | number, PathReach>>();

/**
 * Records what the resolved path value at `container[key]` reaches besides its name. A `deny`
 * or `require_approval` condition on a path then matches when the rule could match a path
 * below a `below` value (a walk, move or removal of a folder touches every name under it), and
 * matches a `linked` value whatever its pattern (the file may be one under a denied folder by
 * another name); an `allow` condition matches the value's own path only.
 */
export function recordReach(container: object, key: string | number, reach: PathReach): void {
  let byKey = REACH.get(container);
  if (byKey === undefined) REACH.set(container, (byKey = new Map()));
  byKey.set(key, reach);
}

/** The reach {@link recordReach} recorded for `container[key]`, if any. */
export function reachOf(container: object, key: string | number): PathReach | undefined {
  return REACH.get(container)?.get(key);
}

/**
 * The parameters an approval keeps for the human who decides it: the policy's `view`, with each
 * marker shown as `{ unresolvedPath: reason, value }` where `value` is what the call forwards in
 * its place (`raw` at the same position) — not the marker's truncated spelling, nor the empty
 * value of one that stands for what the walk did not inspect (a path past the 256th, a subtree
 * deeper than 32 levels or past 10,000 values): the human must see everything that runs when
 * they approve. `view` itself when it holds no marker, or when `raw` is not given.
 */
export function approvalParams(
  view: Readonly<Record<string, unknown>>,
  raw: Readonly<Record<string, unknown>> | undefined,
): Readonly<Record<string, unknown>> {
  if (raw === undefined || !holdsUnresolved(view)) return view;
  return shownAsForwarded(view, raw) as Readonly<Record<string, unknown>>;
}

/** {@link approvalParams} of one value of the view and its forwarded counterpart. */
function shownAsForwarded(view: unknown, raw: unknown): unknown {
  if (view instanceof UnresolvedPath) {
    return { unresolvedPath: view.reason, value: raw === undefined ? view.value : raw };
  }
  // The view is as deep as the walk went (32 levels), so this recursion is bounded by it.
  if (!holdsUnresolved(view) || typeof raw !== 'object' || raw === null) return view;
  if (Array.isArray(view)) {
    const rawItems = Array.isArray(raw) ? (raw as unknown[]) : [];
    return view.map((v, i) => shownAsForwarded(v, rawItems[i]));
  }
  const out: Record<string, unknown> = {};
  for (const [key, v] of Object.entries(view as Record<string, unknown>)) {
    const r = Object.hasOwn(raw, key) ? (raw as Record<string, unknown>)[key] : undefined;
    // Defined as own data properties: a key `__proto__` stays a key, as in the arguments.
    Object.defineProperty(out, key, {
      value: shownAsForwarded(v, r),
      enumerable: true,
      writable: true,
      configurable: true,
    });
  }
  return out;
}

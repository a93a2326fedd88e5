/**
 * The small semver subset plugin manifests use for `fabric`: `*`, exact `x.y.z`, `^x.y.z`,
 * `~x.y.z` and `>=x.y.z` (pre-release tags are not supported).
 *
 * @module
 */

type Version = [number, number, number];

function parse(v: string): Version | undefined {
  const m = /^(\d+)\.(\d+)\.(\d+)$/.exec(v.trim());
  return m === null ? undefined : [Number(m[1]), Number(m[2]), Number(m[3])];
}

function compare(a: Version, b: Version): number {
  return a[0] - b[0] || a[1] - b[1] || a[2] - b[2];
}

/** True when `range` is one of the supported forms. */
export function isValidRange(range: string): boolean {
  return range.trim() === '*' || parse(range.replace(/^(\^|~|>=)/, '')) !== undefined;
}

/** True when `version` satisfies `range`. */
export function satisfies(version: string, range: string): boolean {
  const r = range.trim();
  if (r === '*') return true;
  const v = parse(version);
  if (v === undefined) return false;
  const op = /^(\^|~|>=)/.exec(r)?.[1] ?? '';
  const base = parse(r.slice(op.length));
  if (base === undefined) return false;
  if (op === '') return compare(v, base) === 0;
  if (compare(v, base) < 0) return false;
  if (op === '>=') return true;
  if (op === '~') return v[0] === base[0] && v[1] === base[1];
  // Caret: same left-most non-zero part.
  if (base[0] > 0) return v[0] === base[0];
  if (base[1] > 0) return v[0] === 0 && v[1] === base[1];
  return v[0] === 0 && v[1] === 0 && v[2] === base[2];
}

/**
 * List-level hints: the top-level fields of a `tools/list`, `prompts/list`, `resources/list` or
 * `resources/templates/list` result besides the list itself and `nextCursor` — `_meta`, the
 * caching hints `ttlMs` and `cacheScope` (MCP 2026-07-28, SEP-2549: a freshness time in
 * milliseconds, and whether a shared cache may serve the result to other callers, `public`, or
 * only to the same one, `private`, the default) and any field a newer protocol adds.
 *
 * The SDK's list result schemas are loose objects, so these fields reach the gateway and would
 * reach the agent's client; the gateway builds its own list answers, so it must carry them over
 * itself. Where one upstream answers, its hints pass through unchanged. Where the gateway merges
 * several upstreams, only the caching hints can be merged meaningfully, and conservatively: the
 * shortest `ttlMs` (none unless every upstream gave one), `public` only if every upstream said
 * so; `_meta` and unknown fields of several upstreams are dropped rather than attributed to all.
 *
 * @module
 */

/** The list a hint belongs to (the key of the list in the result). */
export type ListKey = 'tools' | 'prompts' | 'resources' | 'resourceTemplates';

/** The top-level fields of a list result other than the list and `nextCursor`. */
export type ListHints = Readonly<Record<string, unknown>>;

/** No hints: shared, never mutated. */
export const NO_HINTS: ListHints = Object.freeze({});

/** The hints of one page of a list result (`NO_HINTS` when it has none). */
export function pageHints(result: Readonly<Record<string, unknown>>, key: ListKey): ListHints {
  let hints: Record<string, unknown> | undefined;
  for (const field in result) {
    if (field === key || field === 'nextCursor') continue;
    (hints ??= {})[field] = result[field];
  }
  return hints ?? NO_HINTS;
}

function validTtl(value: unknown): value is number {
  return typeof value === 'number' && Number.isFinite(value) && value >= 0;
}

/**
 * The hints of one answer made of several parts (pages of one upstream's list, or the lists of
 * several upstreams). One part: its hints unchanged. Several: `ttlMs` the smallest when every
 * part has a valid one; `cacheScope` `public` when every part says `public`, else `private` when
 * any part has a scope; everything else only when `keepFirst` (from the first part).
 */
export function combineHints(parts: readonly ListHints[], keepFirst: boolean): ListHints {
  if (parts.length === 0) return NO_HINTS;
  if (parts.length === 1) return parts[0]!;
  const out: Record<string, unknown> = keepFirst ? { ...parts[0] } : {};
  delete out.ttlMs;
  delete out.cacheScope;
  if (parts.every((p) => validTtl(p.ttlMs))) {
    out.ttlMs = Math.min(...parts.map((p) => p.ttlMs as number));
  }
  if (parts.every((p) => p.cacheScope === 'public')) out.cacheScope = 'public';
  else if (parts.some((p) => p.cacheScope !== undefined)) out.cacheScope = 'private';
  return Object.keys(out).length === 0 ? NO_HINTS : out;
}

/**
 * `hints` for an answer that differs by caller (a tool list filtered by policy): a `public`
 * scope would let a shared cache hand one agent's list to another, so it becomes `private`.
 */
export function perCaller(hints: ListHints): ListHints {
  return hints.cacheScope === 'public' ? { ...hints, cacheScope: 'private' } : hints;
}

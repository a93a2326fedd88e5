/**
 * Which lists differ between two catalogs, as agents see them: an upstream's `list_changed` (or
 * a restart) is passed on to the agents only for the lists whose content changed, so an upstream
 * repeating the announcement without changing anything does not make every agent reload every
 * list.
 *
 * @module
 */
import type { Catalog, Route } from './catalog.js';

/** The lists of {@link Catalog} that agents are told about with a `list_changed`. */
export interface CatalogChanges {
  tools: boolean;
  /**
   * With `tools`: the downstream names of the tools added, removed or changed, when that is all
   * that changed (an agent that may see none of them has the same list as before); `undefined`
   * when the list changed as a whole (order, list-level hints).
   */
  toolNames?: ReadonlySet<string> | undefined;
  prompts: boolean;
  /** `resources/list` or `resources/templates/list`. */
  resources: boolean;
}

/** Compares the lists of `before` and `after` by content (names, order, items, list hints). */
export function catalogChanges(before: Catalog, after: Catalog): CatalogChanges {
  const tools =
    !sameRoutes(before.tools, after.tools) || !sameJson(before.hints.tools, after.hints.tools);
  return {
    tools,
    toolNames:
      tools && sameJson(before.hints.tools, after.hints.tools)
        ? changedNames(before.tools, after.tools)
        : undefined,
    prompts:
      !sameRoutes(before.prompts, after.prompts) ||
      !sameJson(before.hints.prompts, after.hints.prompts),
    resources:
      !sameJson(before.resources, after.resources) ||
      !sameJson(before.resourceTemplates, after.resourceTemplates) ||
      !sameJson(before.hints.resources, after.hints.resources) ||
      !sameJson(before.hints.resourceTemplates, after.hints.resourceTemplates),
  };
}

/**
 * The names whose route was added, removed or changed between `a` and `b`; `undefined` when
 * the names that stay are in another order (the list changed as a whole).
 */
function changedNames<T>(
  a: ReadonlyMap<string, Route<T>>,
  b: ReadonlyMap<string, Route<T>>,
): Set<string> | undefined {
  const names = new Set<string>();
  for (const [name, route] of a) {
    const other = b.get(name);
    if (other === undefined || !sameRoute(route, other)) names.add(name);
  }
  for (const name of b.keys()) if (!a.has(name)) names.add(name);
  // The names both keep, in the same order in both.
  const kept = [...b.keys()].filter((n) => a.has(n));
  let i = 0;
  for (const name of a.keys()) {
    if (!b.has(name)) continue;
    if (kept[i++] !== name) return undefined;
  }
  return names;
}

function sameRoute<T>(a: Route<T>, b: Route<T>): boolean {
  return a.upstream === b.upstream && a.upstreamName === b.upstreamName && sameJson(a.item, b.item);
}

/**
 * Same names in the same order, each from the same upstream (a tool's listing depends on its
 * upstream, e.g. its task support) with an equal item.
 */
function sameRoutes<T>(a: ReadonlyMap<string, Route<T>>, b: ReadonlyMap<string, Route<T>>) {
  if (a.size !== b.size) return false;
  const other = b.entries();
  for (const [name, route] of a) {
    const next = other.next();
    if (next.done === true) return false;
    const [otherName, otherRoute] = next.value;
    if (name !== otherName || !sameRoute(route, otherRoute)) return false;
  }
  return true;
}

/**
 * Deep equality of two JSON values (what an upstream's lists are parsed from; key order does
 * not matter). Iterative, so it does not depend on the depth bound items are loaded with: a
 * hostile upstream's schema can nest deeper than the call stack (or `JSON.stringify`) goes.
 * Each value is visited at most once, and parts both catalogs share (an unchanged upstream's
 * items) are skipped at once.
 */
export function sameJson(a: unknown, b: unknown): boolean {
  const pending: [unknown, unknown][] = [[a, b]];
  for (let pair = pending.pop(); pair !== undefined; pair = pending.pop()) {
    const [x, y] = pair;
    if (x === y) continue;
    if (typeof x !== 'object' || typeof y !== 'object' || x === null || y === null) return false;
    if (Array.isArray(x)) {
      if (!Array.isArray(y) || x.length !== y.length) return false;
      for (let i = 0; i < x.length; i++) pending.push([x[i], y[i]]);
      continue;
    }
    if (Array.isArray(y)) return false;
    const xs = x as Record<string, unknown>;
    const ys = y as Record<string, unknown>;
    const keys = Object.keys(xs);
    if (keys.length !== Object.keys(ys).length) return false;
    for (const key of keys) {
      if (!Object.hasOwn(ys, key)) return false;
      pending.push([xs[key], ys[key]]);
    }
  }
  return true;
}

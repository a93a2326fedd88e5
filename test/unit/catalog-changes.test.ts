/**
 * The content comparison behind the gateway's list-change notifications (catalog-changes.ts).
 * It walks upstream list items. Items are depth-checked when loaded (catalog.ts), but the walk
 * does not rely on that: it must not recurse, as a hostile upstream's schema once nested
 * 100 000 levels deep.
 */
import { describe, expect, it } from 'vitest';
import type { Catalog } from '../../src/gateway/catalog.js';
import { catalogChanges, sameJson } from '../../src/gateway/catalog-changes.js';
import type { Upstream } from '../../src/gateway/upstream.js';

/** `{ a: { a: … leaf … } }`, `depth` levels, built without recursion. */
function nested(depth: number, leaf: unknown): unknown {
  let value = leaf;
  for (let i = 0; i < depth; i++) value = { a: value };
  return value;
}

describe('sameJson', () => {
  it('compares by content, whatever the key order', () => {
    expect(sameJson({ a: 1, b: [1, { c: 'x' }] }, { b: [1, { c: 'x' }], a: 1 })).toBe(true);
    expect(sameJson({ a: 1 }, { a: 1, b: undefined })).toBe(false);
    expect(sameJson({ a: 1 }, { b: 1 })).toBe(false);
    expect(sameJson([1, 2], [2, 1])).toBe(false);
    expect(sameJson([], {})).toBe(false);
    expect(sameJson({ 0: 'x' }, ['x'])).toBe(false);
    expect(sameJson(null, {})).toBe(false);
    expect(sameJson('1', 1)).toBe(false);
  });

  it('walks 200 000 levels without overflowing the stack', () => {
    expect(sameJson(nested(200_000, 1), nested(200_000, 1))).toBe(true);
    expect(sameJson(nested(200_000, 1), nested(200_000, 2))).toBe(false);
  });
});

describe('catalogChanges: which tools changed', () => {
  const up = {} as Upstream;
  const catalog = (names: string[], descriptions: Record<string, string> = {}, ttlMs = 1) =>
    ({
      tools: new Map(
        names.map((name) => [
          name,
          { upstream: up, upstreamName: name, item: { name, description: descriptions[name] } },
        ]),
      ),
      prompts: new Map(),
      resources: [],
      resourceTemplates: [],
      hints: { tools: { ttlMs }, prompts: {}, resources: {}, resourceTemplates: {} },
    }) as unknown as Catalog;

  it('names the tools added, removed and changed when nothing else changed', () => {
    const changed = catalogChanges(
      catalog(['a', 'b', 'c']),
      catalog(['a', 'c', 'd'], { c: 'new' }),
    );
    expect(changed.tools).toBe(true);
    expect([...(changed.toolNames ?? [])].sort()).toEqual(['b', 'c', 'd']);
    expect(catalogChanges(catalog(['a']), catalog(['a']))).toMatchObject({ tools: false });
  });

  it('names none (the whole list changed) for a new order or new list-level hints', () => {
    expect(catalogChanges(catalog(['a', 'b']), catalog(['b', 'a'])).toolNames).toBeUndefined();
    expect(catalogChanges(catalog(['a']), catalog(['a', 'b'], {}, 2)).toolNames).toBeUndefined();
  });
});

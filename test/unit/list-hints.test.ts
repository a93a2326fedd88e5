import { describe, expect, it } from 'vitest';
import { combineHints, NO_HINTS, pageHints, perCaller } from '../../src/gateway/list-hints.js';

describe('list hints', () => {
  it('are the top-level fields of a list page besides the list and nextCursor', () => {
    const page = { tools: [], nextCursor: 'c', ttlMs: 5, _meta: { a: 1 }, 'x-new': true };
    expect(pageHints(page, 'tools')).toEqual({ ttlMs: 5, _meta: { a: 1 }, 'x-new': true });
    expect(pageHints({ tools: [] }, 'tools')).toBe(NO_HINTS);
  });

  it('pass through unchanged from one part, whatever they hold', () => {
    const only = { ttlMs: -1, cacheScope: 'weird', _meta: { a: 1 } };
    expect(combineHints([only], false)).toBe(only);
    expect(combineHints([], false)).toBe(NO_HINTS);
  });

  it('combine several parts conservatively', () => {
    const pub = { ttlMs: 60_000, cacheScope: 'public', _meta: { a: 1 }, x: 1 };
    expect(combineHints([pub, { ttlMs: 10, cacheScope: 'public' }], false)).toEqual({
      ttlMs: 10,
      cacheScope: 'public',
    });
    // One part without a ttl (or an invalid one): no ttl; a part without a scope is private.
    expect(combineHints([pub, {}], false)).toEqual({ cacheScope: 'private' });
    expect(combineHints([pub, { ttlMs: 'soon', cacheScope: 'public' }], false)).toEqual({
      cacheScope: 'public',
    });
    expect(combineHints([pub, { cacheScope: 'private', ttlMs: 0 }], false)).toEqual({
      ttlMs: 0,
      cacheScope: 'private',
    });
    expect(combineHints([{}, {}], false)).toBe(NO_HINTS);
    // Pages of one list keep the first page's other fields.
    expect(combineHints([pub, { ttlMs: 10, cacheScope: 'public', y: 2 }], true)).toEqual({
      ttlMs: 10,
      cacheScope: 'public',
      _meta: { a: 1 },
      x: 1,
    });
  });

  it('of an answer that differs by caller are never public', () => {
    expect(perCaller({ ttlMs: 1, cacheScope: 'public' })).toEqual({
      ttlMs: 1,
      cacheScope: 'private',
    });
    const priv = { cacheScope: 'private' };
    expect(perCaller(priv)).toBe(priv);
  });
});

import { describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '../../src/errors.js';
import { DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, pageOf, type PageKey } from '../../src/paging.js';

interface Item {
  id: string;
  at: number;
}
const key = (i: Item): PageKey => [i.at, i.id];

/** Every page of `items` at `size`, fetching each page from `source()` at the time. */
function all(source: () => Item[], size: number): string[] {
  const seen: string[] = [];
  let token = '';
  do {
    const page = pageOf('items', source(), key, { pageSize: size, pageToken: token });
    expect(page.items.length).toBeLessThanOrEqual(size);
    seen.push(...page.items.map((i) => i.id));
    token = page.nextPageToken;
  } while (token !== '');
  return seen;
}

describe('pageOf', () => {
  it('hands out every item once, ordered by time then id, whatever the input order', () => {
    const items = Array.from({ length: 23 }, (_, n) => ({ id: `i${n % 7}-${n}`, at: n % 5 }));
    const shuffled = [...items].reverse();
    const seen = all(() => shuffled, 4);
    const sorted = [...items]
      .sort((a, b) => a.at - b.at || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0))
      .map((i) => i.id);
    expect(seen).toEqual(sorted);
  });

  it('neither repeats nor skips items that exist throughout, when others come and go between pages', () => {
    let items: Item[] = Array.from({ length: 10 }, (_, n) => ({ id: `a${n}`, at: n }));
    let calls = 0;
    const seen = all(() => {
      calls++;
      // Between pages: the oldest item goes, a new one arrives.
      if (calls > 1) items = [...items.slice(1), { id: `new${calls}`, at: 100 + calls }];
      return items;
    }, 3);
    expect(new Set(seen).size).toBe(seen.length);
    for (let n = 3; n < 10; n++) expect(seen).toContain(`a${n}`);
  });

  it('uses the default size for 0 and refuses sizes and tokens it cannot use', () => {
    const items = Array.from({ length: DEFAULT_PAGE_SIZE + 1 }, (_, n) => ({ id: `x${n}`, at: n }));
    expect(pageOf('items', items, key, { pageSize: 0 }).items.length).toBe(DEFAULT_PAGE_SIZE);
    for (const bad of [MAX_PAGE_SIZE + 1, -1, 1.5]) {
      expect(() => pageOf('items', items, key, { pageSize: bad })).toThrow(InvalidArgumentError);
    }
    for (const token of [
      'x',
      Buffer.from('[1]').toString('base64url'),
      Buffer.from('{"a":1}').toString('base64url'),
    ]) {
      expect(() => pageOf('items', items, key, { pageToken: token })).toThrow(InvalidArgumentError);
    }
    // A token of another listing is not a position in this one.
    const { nextPageToken } = pageOf('others', items, key, { pageSize: 1 });
    expect(() => pageOf('items', items, key, { pageToken: nextPageToken })).toThrow(
      /page_token is a token of the "others" listing/,
    );
  });
});

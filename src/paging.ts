/**
 * Paging of operator listings (agents, tasks, hooks): items in a stable order by creation time,
 * then id, and an opaque token naming the last item handed out.
 *
 * The token is a position, not an offset: an item created or removed between two pages neither
 * repeats nor shifts what follows, and every item that exists throughout the listing is handed
 * out exactly once. Each page sorts what matches (the listings are bounded by the fabric's
 * retention limits), which keeps the managers free of listing indexes.
 *
 * @module
 */
import { InvalidArgumentError } from './errors.js';

/** Page size when a request names none. */
export const DEFAULT_PAGE_SIZE = 100;
/** Largest page a request may ask for. */
export const MAX_PAGE_SIZE = 1000;

/** Which page to return. */
export interface PageRequest {
  /** Most items in the page (0 or unset: {@link DEFAULT_PAGE_SIZE}); at most {@link MAX_PAGE_SIZE}. */
  pageSize?: number;
  /** `nextPageToken` of the previous page; unset or empty for the first page. */
  pageToken?: string;
}

/** One page of a listing. */
export interface Page<T> {
  readonly items: T[];
  /** Token of the next page; empty when this page is the last. */
  readonly nextPageToken: string;
}

/** Position of an item: creation time (epoch ms), then id. */
export type PageKey = readonly [createdAt: number, id: string];

function before(a: PageKey, b: PageKey): boolean {
  return a[0] < b[0] || (a[0] === b[0] && a[1] < b[1]);
}

function encodeToken(key: PageKey): string {
  return Buffer.from(JSON.stringify(key)).toString('base64url');
}

function decodeToken(token: string): PageKey {
  let key: unknown;
  try {
    key = JSON.parse(Buffer.from(token, 'base64url').toString('utf8'));
  } catch {
    key = undefined;
  }
  if (
    !Array.isArray(key) ||
    key.length !== 2 ||
    typeof key[0] !== 'number' ||
    !Number.isFinite(key[0]) ||
    typeof key[1] !== 'string'
  ) {
    throw new InvalidArgumentError('page_token', 'is not a token this server handed out');
  }
  return [key[0], key[1]];
}

/**
 * The page `request` asks for of `items`, ordered by `keyOf`.
 * @throws InvalidArgumentError for a page size over {@link MAX_PAGE_SIZE} (or not an integer
 *   ≥ 0) or a malformed token.
 */
export function pageOf<T>(
  items: Iterable<T>,
  keyOf: (item: T) => PageKey,
  request: PageRequest = {},
): Page<T> {
  const size = request.pageSize || DEFAULT_PAGE_SIZE;
  if (!Number.isInteger(size) || size < 0 || size > MAX_PAGE_SIZE) {
    throw new InvalidArgumentError(
      'page_size',
      `must be an integer from 0 to ${MAX_PAGE_SIZE} (0 for ${DEFAULT_PAGE_SIZE})`,
    );
  }
  const after = request.pageToken ? decodeToken(request.pageToken) : undefined;
  const keyed: { item: T; key: PageKey }[] = [];
  for (const item of items) {
    const key = keyOf(item);
    if (after === undefined || before(after, key)) keyed.push({ item, key });
  }
  keyed.sort((a, b) => (before(a.key, b.key) ? -1 : before(b.key, a.key) ? 1 : 0));
  const page = keyed.slice(0, size);
  return {
    items: page.map((k) => k.item),
    nextPageToken: keyed.length > size ? encodeToken(page[page.length - 1]!.key) : '',
  };
}

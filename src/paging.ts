/**
 * Paging of operator listings (agents, tasks, hooks): items in a stable order by creation time,
 * then id, and an opaque token naming the last item handed out.
 *
 * The token is a position, not an offset: an item created or removed between two pages neither
 * repeats nor shifts what follows, and every item that exists throughout the listing is handed
 * out exactly once. It names its listing too: a token of another listing is refused rather than
 * read as a position in this one (a ListAgents token on ListTasks skipped every task created
 * before that agent, silently). Each page sorts what matches (the listings are bounded by the fabric's
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

function encodeToken(list: string, key: PageKey): string {
  return Buffer.from(JSON.stringify([list, ...key])).toString('base64url');
}

function decodeToken(list: string, token: string): PageKey {
  let key: unknown;
  try {
    key = JSON.parse(Buffer.from(token, 'base64url').toString('utf8'));
  } catch {
    key = undefined;
  }
  if (
    !Array.isArray(key) ||
    key.length !== 3 ||
    typeof key[0] !== 'string' ||
    typeof key[1] !== 'number' ||
    !Number.isFinite(key[1]) ||
    typeof key[2] !== 'string'
  ) {
    throw new InvalidArgumentError('page_token', 'is not a token this server handed out');
  }
  if (key[0] !== list) {
    throw new InvalidArgumentError(
      'page_token',
      `is a token of the ${JSON.stringify(key[0])} listing, not of ${JSON.stringify(list)}`,
    );
  }
  return [key[1], key[2]];
}

/**
 * The page `request` asks for of `items`, ordered by `keyOf`; `list` names the listing (its
 * tokens are refused by any other).
 * @throws InvalidArgumentError for a page size over {@link MAX_PAGE_SIZE} (or not an integer
 *   ≥ 0), a malformed token or one of another listing.
 */
export function pageOf<T>(
  list: string,
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
  const after = request.pageToken ? decodeToken(list, request.pageToken) : undefined;
  const keyed: { item: T; key: PageKey }[] = [];
  for (const item of items) {
    const key = keyOf(item);
    if (after === undefined || before(after, key)) keyed.push({ item, key });
  }
  keyed.sort((a, b) => (before(a.key, b.key) ? -1 : before(b.key, a.key) ? 1 : 0));
  const page = keyed.slice(0, size);
  return {
    items: page.map((k) => k.item),
    nextPageToken: keyed.length > size ? encodeToken(list, page[page.length - 1]!.key) : '',
  };
}

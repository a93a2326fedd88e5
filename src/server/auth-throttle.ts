/**
 * The bound on failed dashboard logins: a wrong admin token at `/ui/login` counts against the
 * client's address. After
 * {@link AuthThrottleOptions.maxFailures} in one window of {@link AuthThrottleOptions.windowMs}
 * (10 a minute), that address's logins are not checked until the window is over: the
 * login answers 429 `FABRIC_ERR_AUTH_THROTTLED` with `Retry-After` (the seconds left), the right
 * credential included — otherwise the answer to each guess would still tell right from wrong.
 *
 * Bearer credentials at the `/api/` door, `/mcp` and gRPC are not counted: agents share client
 * addresses (all of loopback is one), so a bound there would let one agent sending unknown
 * credentials lock every other client of its address out; agent credentials are 256-bit random
 * and the admin's is at least 16 characters.
 *
 * - A successful login resets nothing: the count is of failures in the window.
 * - A live session's requests are never refused here, and a session cookie that names no live
 *   session is no guess (a page whose session ended polls several views at once, and that must
 *   not keep the operator from logging in again).
 * - An address is the client's socket address; an IPv6 one counts by its /64 (one host usually
 *   holds a whole /64), an IPv4-mapped one as its IPv4 address. Clients behind one proxy share
 *   its address (forwarding headers are not trusted).
 * - State is bounded: at most {@link AuthThrottleOptions.maxAddresses} addresses are tracked;
 *   past that the oldest window is forgotten first (expired ones go first anyway).
 *
 * @module
 */
import { isIPv6 } from 'node:net';
import { AuthThrottledError } from '../errors.js';

/** Default of {@link AuthThrottleOptions.maxFailures}. */
export const DEFAULT_MAX_AUTH_FAILURES = 10;
/** Default of {@link AuthThrottleOptions.windowMs}: one minute. */
export const DEFAULT_AUTH_WINDOW_MS = 60_000;
/** Default of {@link AuthThrottleOptions.maxAddresses}. */
export const DEFAULT_MAX_THROTTLED_ADDRESSES = 10_000;

/** Options of an {@link AuthThrottle}. */
export interface AuthThrottleOptions {
  /** Failed attempts of one address per window; one more is refused. @default 10 */
  maxFailures?: number;
  /** Length of a window, from an address's first failure in it. @default 60 000 */
  windowMs?: number;
  /** Addresses tracked at once. @default 10 000 */
  maxAddresses?: number;
  /**
   * Clock in ms (tests). Elapsed time: a step of the wall clock neither keeps an address locked
   * out for as long as the clock went back nor forgives its failures. @default performance.now
   */
  now?: () => number;
}

interface Window {
  readonly start: number;
  failures: number;
}

/** The key of a client address: IPv4 as is, IPv4-mapped as IPv4, IPv6 by its /64. */
export function addressKey(address: string): string {
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  if (mapped) return mapped[1]!;
  if (!isIPv6(address)) return address;
  const [head = '', tail] = address.split('::');
  const left = head === '' ? [] : head.split(':');
  const right = tail === undefined || tail === '' ? [] : tail.split(':');
  const groups = [...left, ...Array<string>(8 - left.length - right.length).fill('0'), ...right];
  return `${groups
    .slice(0, 4)
    .map((g) => g.toLowerCase().replace(/^0+(?=.)/, ''))
    .join(':')}::/64`;
}

/** Failed logins per client address (see the module's documentation). */
export class AuthThrottle {
  readonly #windows = new Map<string, Window>();
  readonly #maxFailures: number;
  readonly #windowMs: number;
  readonly #maxAddresses: number;
  readonly #now: () => number;

  constructor(options: AuthThrottleOptions = {}) {
    this.#maxFailures = options.maxFailures ?? DEFAULT_MAX_AUTH_FAILURES;
    this.#windowMs = options.windowMs ?? DEFAULT_AUTH_WINDOW_MS;
    this.#maxAddresses = options.maxAddresses ?? DEFAULT_MAX_THROTTLED_ADDRESSES;
    this.#now = options.now ?? (() => performance.now());
  }

  /** Addresses tracked now. */
  get size(): number {
    return this.#windows.size;
  }

  /**
   * Before a credential of `address` is checked.
   * @throws AuthThrottledError when the address has used up its failures of this window.
   */
  check(address: string): void {
    const key = addressKey(address);
    const w = this.#windows.get(key);
    if (w === undefined) return;
    const left = w.start + this.#windowMs - this.#now();
    if (left <= 0) {
      this.#windows.delete(key);
      return;
    }
    if (w.failures >= this.#maxFailures) {
      throw new AuthThrottledError(
        this.#maxFailures,
        Math.ceil(this.#windowMs / 1000),
        Math.max(1, Math.ceil(left / 1000)),
      );
    }
  }

  /** A credential of `address` was wrong. */
  fail(address: string): void {
    const key = addressKey(address);
    const now = this.#now();
    const w = this.#windows.get(key);
    if (w !== undefined && w.start + this.#windowMs > now) {
      w.failures++;
      return;
    }
    // A new window goes last: the map stays in the order the windows started.
    this.#windows.delete(key);
    this.#windows.set(key, { start: now, failures: 1 });
    if (this.#windows.size <= this.#maxAddresses) return;
    for (const [k, old] of this.#windows) {
      if (this.#windows.size <= this.#maxAddresses && old.start + this.#windowMs > now) break;
      this.#windows.delete(k);
    }
  }
}

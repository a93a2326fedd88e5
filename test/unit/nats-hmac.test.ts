/**
 * `hmacSha256` (two one-shot hashes over reused scratch buffers) gives exactly what
 * `createHmac('sha256', key).update(text).digest(encoding)` gives, for every key and text
 * length around the fast path's limits, non-ASCII and lone surrogates included, and a call
 * leaves nothing behind that changes the next one.
 */
import { createHmac } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { hmacSha256 } from '../../src/transport/nats/hmac.js';
import { seededRandom } from '../fixtures/line-mutations.js';

const reference = (key: string, text: string, encoding: 'base64url' | 'hex'): string =>
  createHmac('sha256', key).update(text).digest(encoding);

/** Characters of 1 to 4 UTF-8 bytes, a lone high and a lone low surrogate. */
const UNITS = ['a', 'Z', '0', ':', 'é', 'ß', '€', '中', '😀', '\ud800', '\udfff', '\u0000'];

function randomText(random: (n: number) => number, length: number): string {
  let s = '';
  while (s.length < length) s += UNITS[random(UNITS.length)];
  return s;
}

describe('hmacSha256', () => {
  it('matches createHmac at every key length up to past a block, both encodings', () => {
    const random = seededRandom(11);
    for (let keyLength = 0; keyLength <= 80; keyLength++) {
      for (const encoding of ['base64url', 'hex'] as const) {
        const key = randomText(random, keyLength);
        const text = randomText(random, random(200));
        expect(hmacSha256(key, text, encoding)).toBe(reference(key, text, encoding));
      }
    }
  });

  it('matches createHmac at every text length around the scratch limit', () => {
    const random = seededRandom(12);
    const key = 'f'.repeat(64); // a hex credential hash: exactly one block
    for (let length = 1000; length <= 1060; length++) {
      const ascii = 'x'.repeat(length);
      const wide = randomText(random, length);
      const threeByte = '€'.repeat(length); // 3 bytes a unit: the most a unit can take
      expect(hmacSha256(key, ascii, 'base64url')).toBe(reference(key, ascii, 'base64url'));
      expect(hmacSha256(key, threeByte, 'hex')).toBe(reference(key, threeByte, 'hex'));
      expect(hmacSha256(key, wide, 'base64url')).toBe(reference(key, wide, 'base64url'));
    }
    const huge = randomText(random, 100_000);
    expect(hmacSha256(key, huge, 'hex')).toBe(reference(key, huge, 'hex'));
  });

  it('carries nothing from one call to the next (long key, then short; long text, then empty)', () => {
    const random = seededRandom(13);
    const calls: [string, string][] = [];
    for (let i = 0; i < 2000; i++) {
      calls.push([
        randomText(random, random(90)),
        randomText(random, random(3) === 0 ? 0 : random(400)),
      ]);
    }
    for (const [key, text] of calls) {
      expect(hmacSha256(key, text, 'base64url')).toBe(reference(key, text, 'base64url'));
    }
  });
});

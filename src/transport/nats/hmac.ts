/**
 * HMAC-SHA256 (RFC 2104) from two one-shot `crypto.hash` calls, with the same output as
 * `createHmac('sha256', key).update(text).digest(encoding)` for string keys and texts.
 *
 * Why not `createHmac`: every `Hmac` object wraps a native one held by a weak handle, which each
 * young-generation collection has to visit until the object is collected. At a few HMACs per
 * task and thousands of tasks a second that made every scavenge's pause several milliseconds
 * longer — the tail of enqueue-to-start. `crypto.hash` makes no object; the two inputs are
 * written into scratch buffers reused by every call (the calls are synchronous).
 */
import { createHmac, hash } from 'node:crypto';

const BLOCK = 64; // SHA-256's block size in bytes
const DIGEST = 32;
/** Longest text (in UTF-16 code units) the fast path takes: 3 bytes each fit in the scratch. */
const MAX_TEXT_UNITS = 1024;

const inner = Buffer.alloc(BLOCK + 3 * MAX_TEXT_UNITS);
const outer = Buffer.alloc(BLOCK + DIGEST);
const keyBytes = Buffer.alloc(BLOCK);

/** HMAC-SHA256 of `text` (UTF-8) under `key` (UTF-8), as `encoding`. */
export function hmacSha256(key: string, text: string, encoding: 'base64url' | 'hex'): string {
  // A key longer than a block is hashed first (RFC 2104); with 3 bytes a unit at most, a key of
  // ≤ 21 units surely fits, a longer one is measured. Long keys and texts take `createHmac`.
  if (
    (key.length > BLOCK / 3 && Buffer.byteLength(key, 'utf8') > BLOCK) ||
    text.length > MAX_TEXT_UNITS
  ) {
    return createHmac('sha256', key).update(text).digest(encoding);
  }
  keyBytes.fill(0);
  keyBytes.write(key, 0, 'utf8');
  for (let i = 0; i < BLOCK; i++) {
    const k = keyBytes[i]!;
    inner[i] = k ^ 0x36;
    outer[i] = k ^ 0x5c;
  }
  const n = inner.write(text, BLOCK, 'utf8');
  const innerDigest = hash('sha256', inner.subarray(0, BLOCK + n), 'binary');
  outer.write(innerDigest, BLOCK, 'binary');
  return hash('sha256', outer, encoding);
}

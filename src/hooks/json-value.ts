/**
 * Work items and results are plain JSON: checked value by value (so a Date, a Map, NaN or a
 * cycle is an error naming where it is, not a silent change), then size-limited.
 *
 * @module
 */
import { HookWorkItemTooLargeError, InvalidArgumentError } from '../errors.js';

/** A JSON value, as stored in a hook. */
export type JsonValue =
  null | boolean | number | string | readonly JsonValue[] | { readonly [key: string]: JsonValue };

/** Most nesting accepted; deeper values are almost certainly a mistake (or an attack). */
const MAX_DEPTH = 64;

/**
 * Checks that `value` is plain JSON and at most `maxBytes` bytes once serialised, and returns
 * a deep-frozen copy of it.
 * @throws InvalidArgumentError naming the path of the first value that is not JSON.
 * @throws HookWorkItemTooLargeError when the JSON is larger than `maxBytes`.
 */
export function toJsonValue(value: unknown, field: string, maxBytes: number): JsonValue {
  checkJson(value, field, 0, new Set());
  const text = JSON.stringify(value);
  const bytes = Buffer.byteLength(text, 'utf8');
  if (bytes > maxBytes) throw new HookWorkItemTooLargeError(field, bytes, maxBytes);
  return deepFreeze(JSON.parse(text) as JsonValue);
}

/** True when `value` is plain JSON (no size limit). */
export function isJsonValue(value: unknown): value is JsonValue {
  try {
    checkJson(value, 'value', 0, new Set());
    return true;
  } catch {
    return false;
  }
}

function checkJson(value: unknown, path: string, depth: number, seen: Set<object>): void {
  if (depth > MAX_DEPTH) throw new InvalidArgumentError(path, `nests deeper than ${MAX_DEPTH}`);
  switch (typeof value) {
    case 'string':
    case 'boolean':
      return;
    case 'number':
      if (!Number.isFinite(value)) throw new InvalidArgumentError(path, `is ${value}, not JSON`);
      return;
    case 'object':
      break;
    default:
      throw new InvalidArgumentError(path, `is a ${typeof value}, not JSON`);
  }
  if (value === null) return;
  if (seen.has(value)) throw new InvalidArgumentError(path, 'is a circular reference');
  seen.add(value);
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) checkJson(value[i], `${path}[${i}]`, depth + 1, seen);
  } else {
    const proto: unknown = Object.getPrototypeOf(value);
    if (proto !== Object.prototype && proto !== null) {
      const name = (value as object).constructor?.name ?? 'object';
      throw new InvalidArgumentError(path, `is a ${name}, not a plain JSON object`);
    }
    for (const [key, child] of Object.entries(value)) {
      // JSON.stringify drops undefined properties; so do we (optional fields left unset).
      if (child === undefined) continue;
      checkJson(child, `${path}.${key}`, depth + 1, seen);
    }
  }
  seen.delete(value);
}

/** Freezes `value` and everything inside it. */
export function deepFreeze<T>(value: T): T {
  if (value !== null && typeof value === 'object' && !Object.isFrozen(value)) {
    for (const child of Object.values(value)) deepFreeze(child);
    Object.freeze(value);
  }
  return value;
}

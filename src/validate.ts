/**
 * Small argument checks shared by the managers, so every bad input gets the same kind of
 * message: `<field> must be …, got …`.
 *
 * @module
 */
import type { FabricError } from './errors.js';
import { InvalidArgumentError } from './errors.js';
import { MAX_RECORD_DEPTH, nestsDeeper, recordJson } from './json-bytes.js';

/** What kind of number a field takes. */
export type NumberKind = 'positiveInt' | 'nonNegativeInt' | 'positiveNumber' | 'nonNegativeNumber';

type MakeError = (field: string, message: string) => FabricError;
const invalidArgument: MakeError = (field, message) => new InvalidArgumentError(field, message);

/** A short description of a bad value for error messages (never the value of a secret). */
export function describeValue(value: unknown): string {
  if (value === null) return 'null';
  if (typeof value === 'string') return `string ${JSON.stringify(value.slice(0, 40))}`;
  if (typeof value === 'number') return String(value);
  return typeof value;
}

/**
 * Returns `value` when it is a number of the given kind.
 * @throws InvalidArgumentError (or what `makeError` builds) naming `field`.
 */
export function checkNumber(
  field: string,
  value: unknown,
  kind: NumberKind,
  makeError: MakeError = invalidArgument,
): number {
  if (typeof value !== 'number' || Number.isNaN(value)) {
    throw makeError(field, `must be a number, got ${describeValue(value)}`);
  }
  switch (kind) {
    case 'positiveInt':
      if (!Number.isSafeInteger(value) || value <= 0)
        throw makeError(field, `must be a positive integer, got ${value}`);
      break;
    case 'nonNegativeInt':
      if (!Number.isSafeInteger(value) || value < 0)
        throw makeError(field, `must be a non-negative integer, got ${value}`);
      break;
    case 'positiveNumber':
      if (!Number.isFinite(value) || value <= 0)
        throw makeError(field, `must be a positive finite number, got ${value}`);
      break;
    case 'nonNegativeNumber':
      if (!Number.isFinite(value) || value < 0)
        throw makeError(field, `must be a non-negative finite number, got ${value}`);
      break;
  }
  return value;
}

/**
 * Longest id (agent, pool, task) taken from outside: the default bound of {@link checkString},
 * and of the ids in the NATS transport's reports (`wire.ts`).
 */
export const MAX_ID_LENGTH = 256;

/**
 * Returns `value` when it is a non-empty string of at most `maxLength` characters.
 * @throws InvalidArgumentError naming `field`.
 */
export function checkString(field: string, value: unknown, maxLength = MAX_ID_LENGTH): string {
  if (typeof value !== 'string' || value.length === 0) {
    throw new InvalidArgumentError(
      field,
      `must be a non-empty string, got ${describeValue(value)}`,
    );
  }
  if (value.length > maxLength) {
    throw new InvalidArgumentError(field, `must be at most ${maxLength} characters`);
  }
  // A lone surrogate has no UTF-8 form: a text column would store U+FFFD in its place, and the
  // id, type or tenant read back after a restart would be another.
  if (!(value as unknown as { isWellFormed(): boolean }).isWellFormed()) {
    throw new InvalidArgumentError(field, 'must be well-formed Unicode (it has a lone surrogate)');
  }
  return value;
}

/**
 * Bytes of `value` as UTF-8 JSON (0 for `undefined`), as the state store writes it: a `bigint`
 * (an exact large integer from a `..._json` field) as its digits (see `recordJson`). This is
 * the check of what may go into a task record: what passes, the store writes and reads back.
 * @throws InvalidArgumentError naming `field` when it cannot be serialized (a cycle, nesting too
 *   deep for the serializer) or nests deeper than `MAX_RECORD_DEPTH` levels.
 */
export function jsonByteLength(field: string, value: unknown): number {
  let text: string | undefined;
  try {
    text = recordJson(value, field);
  } catch (error) {
    throw new InvalidArgumentError(
      field,
      `cannot be serialized as JSON (${error instanceof Error ? error.message : String(error)})`,
    );
  }
  if (text === undefined) return 0;
  if (nestsDeeper(text, MAX_RECORD_DEPTH)) {
    throw new InvalidArgumentError(
      field,
      `nests deeper than ${MAX_RECORD_DEPTH} levels of arrays and objects (the most the state store keeps)`,
    );
  }
  return Buffer.byteLength(text, 'utf8');
}

/**
 * A `JSON.stringify` replacer that writes a `bigint` (a payload integer beyond 2^53 kept exact
 * from the operator API's `payload_json`) as the nearest number: plain JSON has no other way,
 * and `JSON.stringify` would throw.
 */
export function bigintAsNumber(_key: string, value: unknown): unknown {
  return typeof value === 'bigint' ? Number(value) : value;
}

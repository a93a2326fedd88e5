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
 * The control characters no name or id may hold: C0 (NUL, line breaks, tab, ESC …), DEL and C1.
 * Other Unicode (letters of any script, emoji, bidirectional text) is taken.
 */
// eslint-disable-next-line no-control-regex
const CONTROL_CHARACTER = /[\u0000-\u001f\u007f-\u009f]/;

/** True when `value` holds a control character (see {@link checkString}). */
export function hasControlCharacter(value: string): boolean {
  return CONTROL_CHARACTER.test(value);
}

/**
 * Returns `value` when it is a non-empty string of at most `maxLength` characters of
 * well-formed Unicode without control characters (a NUL, a line break, an ESC: a name is shown
 * in listings, logs and terminals, and compared byte for byte).
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
  const control = CONTROL_CHARACTER.exec(value);
  if (control !== null) {
    throw new InvalidArgumentError(
      field,
      `must not contain control characters (U+0000–U+001F, U+007F–U+009F): it has U+${control[0].charCodeAt(0).toString(16).toUpperCase().padStart(4, '0')} at index ${control.index}`,
    );
  }
  return value;
}

/** Most capabilities an agent or pool may have (each a non-empty string of at most 256 characters). */
export const MAX_AGENT_CAPABILITIES = 64;
/** Most labels an agent or pool may have (keys of at most 256 characters, values of at most 1024). */
export const MAX_AGENT_LABELS = 64;
const MAX_LABEL_VALUE_LENGTH = 1024;

/**
 * An agent's (or pool's) capabilities checked: an array of at most
 * {@link MAX_AGENT_CAPABILITIES} strings, each as {@link checkString} takes them.
 * @throws InvalidArgumentError naming `config.capabilities` or the offending entry.
 */
export function checkCapabilities(value: unknown): string[] {
  if (!Array.isArray(value)) {
    throw new InvalidArgumentError('config.capabilities', 'must be an array of non-empty strings');
  }
  if (value.length > MAX_AGENT_CAPABILITIES) {
    throw new InvalidArgumentError(
      'config.capabilities',
      `must have at most ${MAX_AGENT_CAPABILITIES} entries, got ${value.length}`,
    );
  }
  value.forEach((c, i) => checkString(`config.capabilities[${i}]`, c));
  return value as string[];
}

/**
 * An agent's (or pool's) labels checked: a plain object of at most {@link MAX_AGENT_LABELS}
 * entries, each a key as {@link checkString} takes it and a string value (empty allowed) of at
 * most 1024 characters of well-formed Unicode without control characters. Every policy decision
 * and agent listing carries them, so they are bounded like ids.
 * @throws InvalidArgumentError naming `config.labels` or the offending label.
 */
export function checkLabels(value: unknown): Record<string, string> {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new InvalidArgumentError('config.labels', 'must map strings to strings');
  }
  const entries = Object.entries(value);
  if (entries.length > MAX_AGENT_LABELS) {
    throw new InvalidArgumentError(
      'config.labels',
      `must have at most ${MAX_AGENT_LABELS} entries, got ${entries.length}`,
    );
  }
  for (const [key, label] of entries) {
    checkString('config.labels key', key);
    const field = `config.labels[${JSON.stringify(key)}]`;
    if (typeof label !== 'string') throw new InvalidArgumentError(field, 'must be a string');
    if (label.length > 0) checkString(field, label, MAX_LABEL_VALUE_LENGTH);
  }
  return value as Record<string, string>;
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

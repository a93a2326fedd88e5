/**
 * The numbers of a request body in the protobuf JSON mapping, checked before protobuf-es's
 * `fromJson` reads them: it reads an integer given as a string with `BigInt`, which takes
 * `"0x10"`, `"0b1"`, `"0o7"`, `" 16 "` and `"  "` (0), and a double given as a string with
 * `Number`, which takes `"0x10"`, `" 1"` and `"1."`; and `JSON.parse` has already rounded an integer
 * beyond 2^53 written as a number. Each of those is refused here with the field named.
 *
 * @module
 */
import { ScalarType, type DescField, type DescMessage } from '@bufbuild/protobuf';
import { InvalidArgumentError } from '../errors.js';

/** A decimal integer as a string: an optional `-`, no leading zero, nothing around it. */
const INTEGER_STRING = /^-?(?:0|[1-9][0-9]*)$/;
/**
 * A decimal number as a string: an integer with an optional fraction and an optional exponent
 * (the protobuf JSON mapping accepts exponent notation for floats; `Number` reads it exactly so).
 */
const DECIMAL_STRING = /^-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?$/;
/** The strings the protobuf JSON mapping gives a float or double that is not finite. */
const NON_FINITE = new Set(['NaN', 'Infinity', '-Infinity']);

/**
 * Throws for a number of `json` (a request body as `JSON.parse` gave it) that `schema`'s
 * fields hold in a form other than a decimal one: an integer field's string that is not
 * `-?digits` (no sign `+`, leading zero, base prefix, exponent or whitespace) or its number
 * that is not a safe integer (JSON gave it rounded), a float field's string that is not
 * `-?digits[.digits][e±digits]` nor `NaN`/`Infinity`/`-Infinity`. What else is wrong `fromJson` tells.
 * Messages of `google.protobuf` (Value, Struct, Timestamp, Duration) keep their own mapping.
 * @throws InvalidArgumentError naming the field (`body.tokens`, `body.spec.deadlineMs`, …).
 */
export function checkJsonNumbers(schema: DescMessage, json: unknown, path = 'body'): void {
  if (json === null || typeof json !== 'object' || Array.isArray(json)) return;
  if (schema.typeName.startsWith('google.protobuf.')) return;
  const body = json as Record<string, unknown>;
  for (const field of schema.fields) {
    const key = Object.hasOwn(body, field.jsonName)
      ? field.jsonName
      : Object.hasOwn(body, field.name)
        ? field.name
        : undefined;
    if (key === undefined) continue;
    checkField(field, body[key], `${path}.${key}`);
  }
}

function checkField(field: DescField, value: unknown, path: string): void {
  if (value === null || value === undefined) return;
  switch (field.fieldKind) {
    case 'scalar':
      checkScalar(field.scalar, value, path);
      return;
    case 'message':
      checkJsonNumbers(field.message, value, path);
      return;
    case 'list':
      if (!Array.isArray(value)) return;
      value.forEach((item: unknown, i) => {
        if (field.listKind === 'scalar') checkScalar(field.scalar, item, `${path}[${i}]`);
        else if (field.listKind === 'message')
          checkJsonNumbers(field.message, item, `${path}[${i}]`);
      });
      return;
    case 'map':
      if (value === null || typeof value !== 'object' || Array.isArray(value)) return;
      for (const [k, item] of Object.entries(value)) {
        if (field.mapKey !== ScalarType.STRING && field.mapKey !== ScalarType.BOOL)
          checkScalar(field.mapKey, k, `${path} key ${JSON.stringify(k)}`);
        if (field.mapKind === 'scalar') checkScalar(field.scalar, item, `${path}[${k}]`);
        else if (field.mapKind === 'message')
          checkJsonNumbers(field.message, item, `${path}[${k}]`);
      }
      return;
    default:
      return;
  }
}

function checkScalar(type: ScalarType, value: unknown, path: string): void {
  switch (type) {
    case ScalarType.DOUBLE:
    case ScalarType.FLOAT:
      if (typeof value === 'string' && !DECIMAL_STRING.test(value) && !NON_FINITE.has(value)) {
        throw new InvalidArgumentError(
          path,
          `must be a number, or a decimal number as a string (no base prefix, sign + or whitespace), got ${JSON.stringify(value)}`,
        );
      }
      return;
    case ScalarType.STRING:
    case ScalarType.BYTES:
    case ScalarType.BOOL:
      return;
    default: // the integer types
      if (typeof value === 'string' && !INTEGER_STRING.test(value)) {
        throw new InvalidArgumentError(
          path,
          `must be an integer, or a decimal integer as a string (no sign +, leading zero, exponent, base prefix or whitespace), got ${JSON.stringify(value)}`,
        );
      }
      if (typeof value === 'number' && Number.isFinite(value) && Number.isInteger(value)) {
        if (!Number.isSafeInteger(value)) {
          throw new InvalidArgumentError(
            path,
            `is beyond 2^53 as a JSON number (it reads rounded); give it as a decimal string, got ${value}`,
          );
        }
      }
      return;
  }
}

/**
 * The `..._json` bytes fields of the operator API: JSON text that keeps integers of any size.
 *
 * `JSON.parse` turns every number into a double, so 2^53+1 arrives as 2^53. Node 20 has neither
 * `JSON.parse` source text access nor `JSON.rawJSON`, so this module parses and prints JSON
 * itself: an integer literal that a double cannot print back as written (2^53+1, not 1e20)
 * becomes a `bigint` (other numbers stay doubles, as in `JSON.parse`), and a `bigint` prints as
 * its digits. Strings are decoded and
 * encoded by `JSON.parse`/`JSON.stringify` themselves; a `__proto__` key is an own property, as
 * with `JSON.parse`. Nesting is bounded ({@link MAX_JSON_DEPTH}), so hostile input cannot
 * exhaust the stack.
 *
 * @module
 */
import { InvalidArgumentError } from './errors.js';

/** Deepest nesting of arrays and objects accepted (the same order as a `Value`'s ~50 levels). */
export const MAX_JSON_DEPTH = 64;

/** Deepest nesting {@link jsonBytes} and {@link recordJson} print (`toJSON` results count). */
const PRINT_DEPTH = MAX_JSON_DEPTH * 4;

/**
 * Deepest nesting of a value the state store keeps (see {@link nestsDeeper}): what
 * {@link recordJson} prints with `bigint`s and {@link parseRecordJson} reads back.
 */
export const MAX_RECORD_DEPTH = PRINT_DEPTH;

const NUMBER = /-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?/y;
const WHITESPACE = /[ \t\n\r]*/y;

class Parser {
  #i = 0;
  /** Set when the text was refused for nesting deeper than `maxDepth`. */
  tooDeep = false;
  constructor(
    readonly text: string,
    readonly field: string,
    readonly maxDepth = MAX_JSON_DEPTH,
  ) {}

  fail(what: string): never {
    throw new InvalidArgumentError(this.field, `is not JSON: ${what} at offset ${this.#i}`);
  }

  ws(): void {
    WHITESPACE.lastIndex = this.#i;
    WHITESPACE.exec(this.text);
    this.#i = WHITESPACE.lastIndex;
  }

  document(): unknown {
    const v = this.value(0);
    this.ws();
    if (this.#i !== this.text.length) this.fail('unexpected text after the value');
    return v;
  }

  value(depth: number): unknown {
    this.ws();
    const c = this.text[this.#i];
    if (c === '{' || c === '[') {
      if (depth >= this.maxDepth) {
        this.tooDeep = true;
        this.fail(`nesting deeper than ${this.maxDepth}`);
      }
      return c === '{' ? this.object(depth + 1) : this.array(depth + 1);
    }
    if (c === '"') return this.string();
    for (const [word, v] of LITERALS) {
      if (this.text.startsWith(word, this.#i)) {
        this.#i += word.length;
        return v;
      }
    }
    NUMBER.lastIndex = this.#i;
    const m = NUMBER.exec(this.text);
    if (m === null) this.fail('unexpected character');
    this.#i = NUMBER.lastIndex;
    const n = Number(m[0]);
    if (Number.isSafeInteger(n) || !/^-?\d+$/.test(m[0])) return n;
    // An integer literal a double prints back as written (`100000000000000000000` is 1e20) is
    // that double, as JSON.parse makes it; only one a double would change is a `bigint`. So a
    // value that never held a `bigint` reads back without one (the state store wrote 1e20 so).
    return JSON.stringify(n) === m[0] ? n : BigInt(m[0]);
  }

  string(): string {
    const start = this.#i;
    let i = start + 1;
    for (;;) {
      const c = this.text.charCodeAt(i);
      if (Number.isNaN(c)) this.fail('unterminated string');
      if (c === 0x22) break;
      i += c === 0x5c ? 2 : 1;
    }
    this.#i = i + 1;
    try {
      return JSON.parse(this.text.slice(start, i + 1)) as string;
    } catch {
      return this.fail('malformed string');
    }
  }

  array(depth: number): unknown[] {
    this.#i++;
    const out: unknown[] = [];
    this.ws();
    if (this.text[this.#i] === ']') {
      this.#i++;
      return out;
    }
    for (;;) {
      out.push(this.value(depth));
      this.ws();
      const c = this.text[this.#i++];
      if (c === ']') return out;
      if (c !== ',') this.fail("expected ',' or ']'");
    }
  }

  object(depth: number): Record<string, unknown> {
    this.#i++;
    const out: Record<string, unknown> = {};
    this.ws();
    if (this.text[this.#i] === '}') {
      this.#i++;
      return out;
    }
    for (;;) {
      this.ws();
      if (this.text[this.#i] !== '"') this.fail('expected a key');
      const key = this.string();
      this.ws();
      if (this.text[this.#i++] !== ':') this.fail("expected ':'");
      const v = this.value(depth);
      // Own property, never the prototype (what JSON.parse does too).
      Object.defineProperty(out, key, {
        value: v,
        enumerable: true,
        writable: true,
        configurable: true,
      });
      this.ws();
      const c = this.text[this.#i++];
      if (c === '}') return out;
      if (c !== ',') this.fail("expected ',' or '}'");
    }
  }
}

const LITERALS: readonly (readonly [string, unknown])[] = [
  ['true', true],
  ['false', false],
  ['null', null],
];

const decoder = new TextDecoder('utf-8', { fatal: true });

/**
 * Parses UTF-8 JSON `bytes` keeping large integers as `bigint`.
 * @throws InvalidArgumentError naming `field` for bytes that are not UTF-8 JSON or nest deeper
 *   than {@link MAX_JSON_DEPTH}.
 */
export function parseJsonBytes(bytes: Uint8Array, field: string): unknown {
  let text: string;
  try {
    text = decoder.decode(bytes);
  } catch (error) {
    throw new InvalidArgumentError(field, 'is not UTF-8', { cause: error });
  }
  return new Parser(text, field).document();
}

function print(v: unknown, depth: number, field: string): string | undefined {
  switch (typeof v) {
    case 'bigint':
      return v.toString();
    case 'string':
    case 'number':
    case 'boolean':
      return JSON.stringify(v);
    case 'undefined':
    case 'function':
    case 'symbol':
      return undefined;
  }
  if (v === null) return 'null';
  if (depth >= PRINT_DEPTH) {
    throw new InvalidArgumentError(field, 'nests too deep to print as JSON');
  }
  const o = v as Record<string, unknown> & { toJSON?: () => unknown };
  if (typeof o.toJSON === 'function') return print(o.toJSON(), depth + 1, field);
  if (Array.isArray(v)) {
    return `[${v.map((x) => print(x, depth + 1, field) ?? 'null').join(',')}]`;
  }
  const parts: string[] = [];
  for (const key of Object.keys(o)) {
    const text = print(o[key], depth + 1, field);
    if (text !== undefined) parts.push(`${JSON.stringify(key)}:${text}`);
  }
  return `{${parts.join(',')}}`;
}

/**
 * `value` as UTF-8 JSON, `bigint`s as their digits (otherwise as `JSON.stringify` prints it);
 * empty bytes for `undefined`.
 */
export function jsonBytes(value: unknown, field: string): Uint8Array {
  const text = print(value, 0, field);
  return text === undefined ? new Uint8Array(0) : Buffer.from(text, 'utf8');
}

/**
 * The JSON text of a record the state store keeps: `JSON.stringify`'s, except for a value that
 * holds a `bigint` (an integer beyond 2^53 that came in exact through a `..._json` field), which
 * `JSON.stringify` cannot print: that one is printed with the `bigint`s as their digits, so the
 * store keeps it exact. `undefined` for a value JSON has no text for.
 * @throws what `JSON.stringify` throws for a cycle; InvalidArgumentError naming `field` for a
 *   `bigint`-holding value nested deeper than JSON bytes allow.
 */
export function recordJson(value: unknown, field: string): string | undefined {
  try {
    return JSON.stringify(value);
  } catch (error) {
    if (!(error instanceof TypeError) || !/BigInt/i.test(error.message)) throw error;
    return print(value, 0, field);
  }
}

/** Integer literals this long may be beyond 2^53 (9007199254740993 has 16 digits). */
const LONG_DIGITS = /\d{16}/;

/**
 * Parses text {@link recordJson} wrote: with `JSON.parse`, unless the text has a run of 16 or
 * more digits — then with this module's parser, so an integer beyond 2^53 comes back as the
 * same `bigint` (other numbers as `JSON.parse` makes them). Text nested too deep for that parser
 * was written by `JSON.stringify` (a `bigint`-holding value nests at most
 * {@link MAX_RECORD_DEPTH}), so it holds no `bigint`: `JSON.parse` reads it back as written.
 */
export function parseRecordJson(text: string, field: string): unknown {
  if (!LONG_DIGITS.test(text)) return JSON.parse(text);
  const parser = new Parser(text, field, PRINT_DEPTH + 1);
  try {
    return parser.document();
  } catch (error) {
    if (parser.tooDeep) return JSON.parse(text);
    throw error;
  }
}

/**
 * Whether JSON `text` (well-formed, as `JSON.stringify` prints it) nests arrays and objects
 * more than `max` levels deep. Linear in the text, without recursion.
 */
export function nestsDeeper(text: string, max: number): boolean {
  if (text.length <= 2 * max) return false; // n levels take 2n characters
  let depth = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x22) {
      // A string: on to its closing quote, one not escaped (an odd run of backslashes before it).
      for (;;) {
        i = text.indexOf('"', i + 1);
        if (i < 0) return false;
        let b = i - 1;
        while (text.charCodeAt(b) === 0x5c) b--;
        if ((i - b) % 2 === 1) break;
      }
    } else if (c === 0x5b || c === 0x7b) {
      if (++depth > max) return true;
    } else if (c === 0x5d || c === 0x7d) {
      depth--;
    }
  }
  return false;
}

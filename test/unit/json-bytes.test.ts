import { describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '../../src/errors.js';
import {
  jsonBytes,
  MAX_JSON_DEPTH,
  parseJsonBytes,
  parseRecordJson,
} from '../../src/json-bytes.js';

const parse = (text: string): unknown => parseJsonBytes(Buffer.from(text), 'payload_json');
const print = (v: unknown): string => Buffer.from(jsonBytes(v, 'payload')).toString();

describe('lossless JSON bytes', () => {
  it('keeps integers beyond 2^53 exact as bigint, both ways', () => {
    const text =
      '{"a":9007199254740993,"b":-99999999999999999999999,"c":[1,2.5,-0.125e3],"d":9007199254740991}';
    const v = parse(text) as Record<string, unknown>;
    expect(v.a).toBe(9007199254740993n);
    expect(v.b).toBe(-99999999999999999999999n);
    expect(v.d).toBe(9007199254740991); // safe: a number
    expect(v.c).toEqual([1, 2.5, -125]);
    expect(print(v)).toBe(text.replace('-0.125e3', '-125'));
  });

  it('parses what JSON.parse parses, the same way', () => {
    for (const text of [
      'null',
      ' true ',
      '"\\u00e9\\n\\"x\\""',
      '{"":{},"k":[[],{}]}',
      '[1e400, -1e-400, 0.1]',
      '{"a":1,"a":2}',
      '"😀"',
    ]) {
      expect(parse(text)).toEqual(JSON.parse(text));
    }
  });

  it('makes __proto__ an own property, never the prototype', () => {
    const v = parse('{"__proto__":{"polluted":true}}') as Record<string, unknown>;
    expect(Object.getPrototypeOf(v)).toBe(Object.prototype);
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
    expect(Object.keys(v)).toEqual(['__proto__']);
    expect(print(v)).toBe('{"__proto__":{"polluted":true}}');
  });

  it('refuses what is not UTF-8 JSON, or nests too deep, with InvalidArgumentError', () => {
    for (const text of [
      '',
      '{',
      '[1,]',
      '{"a" 1}',
      '{a:1}',
      "'x'",
      '"\u0001"',
      '01',
      '1 2',
      'nul',
      '"unterminated',
      '['.repeat(MAX_JSON_DEPTH + 1) + ']'.repeat(MAX_JSON_DEPTH + 1),
    ]) {
      expect(() => parse(text), text).toThrow(InvalidArgumentError);
    }
    expect(() => parseJsonBytes(Uint8Array.of(0x22, 0xff, 0x22), 'f')).toThrow(/UTF-8/);
    expect(parse('['.repeat(MAX_JSON_DEPTH) + ']'.repeat(MAX_JSON_DEPTH))).toBeDefined();
    // A million levels is refused without exhausting the stack.
    expect(() => parse('['.repeat(1_000_000))).toThrow(InvalidArgumentError);
  });

  it('prints like JSON.stringify for plain values (undefined → empty bytes)', () => {
    const v = { s: 'é"\n', n: [1, null, undefined, () => 1], d: new Date(0), u: undefined, x: NaN };
    expect(print(v)).toBe(JSON.stringify(v));
    expect(jsonBytes(undefined, 'r').length).toBe(0);
  });
});

describe('numbers a double prints back as written', () => {
  it('stay numbers (1e20 is 100000000000000000000), so a record without a bigint reads back without one', () => {
    const text = '{"a":100000000000000000000,"b":-9007199254740992,"c":123456789012345680000}';
    const v = parse(text) as Record<string, unknown>;
    expect(v).toEqual({ a: 1e20, b: -(2 ** 53), c: 123456789012345680000 });
    expect(print(v)).toBe(text);
    expect(parseRecordJson(JSON.stringify({ x: 1e20, y: [2 ** 60] }), 'r')).toEqual({
      x: 1e20,
      y: [2 ** 60],
    });
    // One a double would change is still exact.
    expect(parseRecordJson('{"x":9007199254740993}', 'r')).toEqual({ x: 9007199254740993n });
    expect(parse('[-99999999999999999999999]')).toEqual([-99999999999999999999999n]);
  });
});

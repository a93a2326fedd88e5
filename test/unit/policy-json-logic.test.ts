import jsonLogic from 'json-logic-js';
import { describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import {
  compileJsonLogic,
  JsonLogicCompileError,
  MAX_JSON_LOGIC_DEPTH,
} from '../../src/policy/json-logic.js';

type Case = [logic: unknown, data: unknown, expected: unknown];

const fixture = JSON.parse(
  readFileSync(new URL('../fixtures/json-logic-tests.json', import.meta.url), 'utf8'),
) as (string | Case)[];
const cases = fixture.filter((c): c is Case => Array.isArray(c));

/** Compares as JSON does (undefined and Infinity read as null, as in the published suite). */
function json(v: unknown): unknown {
  return (JSON.parse(JSON.stringify({ v })) as { v?: unknown }).v ?? null;
}

describe('compileJsonLogic agrees with json-logic-js', () => {
  it('has a representative fixture', () => {
    expect(cases.length).toBeGreaterThan(250);
  });

  it.each(cases.map((c, i) => [i, JSON.stringify(c[0]), JSON.stringify(c[1]), c] as const))(
    'case %i: %s on %s',
    (_i, _l, _d, [logic, data, expected]) => {
      const reference = jsonLogic.apply(logic as jsonLogic.RulesLogic, data);
      const compiled = compileJsonLogic(logic)(data);
      expect(json(reference)).toEqual(json(expected));
      expect(json(compiled)).toEqual(json(reference));
    },
  );

  it('throws where json-logic-js throws ({"*":[]})', () => {
    expect(() => jsonLogic.apply({ '*': [] } as unknown as jsonLogic.RulesLogic)).toThrow();
    expect(() => compileJsonLogic({ '*': [] })({})).toThrow();
  });

  it('can be evaluated many times against different data', () => {
    const f = compileJsonLogic({ in: [{ var: 'tool' }, ['a', 'b']] });
    expect([f({ tool: 'a' }), f({ tool: 'c' }), f({ tool: 'b' })]).toEqual([true, false, true]);
  });
});

describe('compileJsonLogic rejects at compile time', () => {
  it('an unknown operator, naming its path', () => {
    let err: unknown;
    try {
      compileJsonLogic({ and: [true, { or: [false, { regex: ['a', 'b'] }] }] });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(JsonLogicCompileError);
    expect((err as JsonLogicCompileError).path).toBe('and[1].or[1]');
    expect((err as Error).message).toMatch(/unknown JSON-logic operator "regex"/);
  });

  it('log (policies have no side effects) and prototype keys', () => {
    expect(() => compileJsonLogic({ log: 'x' })).toThrow(JsonLogicCompileError);
    expect(() => compileJsonLogic({ toString: [] })).toThrow(JsonLogicCompileError);
    expect(() => compileJsonLogic(JSON.parse('{"__proto__": [1]}'))).toThrow(JsonLogicCompileError);
  });

  it('var and missing read own properties only, never what every object inherits', () => {
    const data = { params: { s: 'abc', a: [1, 2], own: JSON.parse('{"__proto__":{"x":1}}') } };
    for (const path of [
      'params.constructor',
      'params.toString',
      'params.__proto__',
      'params.s.constructor',
    ]) {
      // Both the constant-path fast path and the generic one.
      expect(compileJsonLogic({ var: path })(data)).toBeNull();
      expect(compileJsonLogic({ var: [{ cat: [path] }] })(data)).toBeNull();
      expect(compileJsonLogic({ missing: [path] })(data)).toEqual([path]);
    }
    expect(compileJsonLogic({ var: 'params.s.length' })(data)).toBe(3);
    expect(compileJsonLogic({ var: 'params.a.1' })(data)).toBe(2);
    expect(compileJsonLogic({ var: 'params.own.__proto__.x' })(data)).toBe(1);
  });

  it('expressions nested too deeply', () => {
    let logic: unknown = true;
    for (let i = 0; i <= MAX_JSON_LOGIC_DEPTH + 1; i++) logic = { '!': [logic] };
    expect(() => compileJsonLogic(logic)).toThrow(/nested deeper/);
  });
});

/**
 * A JSON-logic compiler: turns an expression into a closure once, so a policy's `when` costs a
 * few function calls per evaluation instead of a tree walk.
 *
 * Semantics are exactly those of `json-logic-js` 2.x (the reference implementation): the same
 * truthiness, the same loose comparisons, the same argument handling. `test/unit/policy-json-logic
 * .test.ts` runs the published JSON-logic test cases through this compiler and `json-logic-js` and
 * asserts they agree. We did not use `json-logic-engine` v5: it deliberately departs from
 * `json-logic-js` in ways that matter for authorization (`{"==":[null,0]}` is `true`, `1/0` and
 * `max` over strings throw) and its interpreted and compiled modes disagree on `{"!":[[0]]}`.
 *
 * Differences from `json-logic-js`: an unknown operator is rejected when the expression is
 * compiled (not when it runs), `log` is not available (policies have no side effects),
 * expressions nested deeper than {@link MAX_JSON_LOGIC_DEPTH} are rejected, a `var` (or
 * `missing`) reads own properties only — `params.constructor` or `params.toString` of a call that
 * sent no such parameter is not found, not what every object inherits (as with `conditions`; a
 * string's `length` and an array's indexes are own properties, so they still read) — and a `var` (or
 * `missing`) that reads an {@link UnresolvedPath} marker — the value itself, through it, or an
 * object or array holding one — throws, so a rule cannot decide on a path nobody could resolve
 * (a `when` that throws fails closed in the engine).
 *
 * @module
 */
import { holdsUnresolved, UnresolvedPath } from './unresolved-path.js';

/** A compiled expression: evaluates against `data` like `jsonLogic.apply(logic, data)`. */
export type CompiledLogic = (data: unknown) => unknown;

/** Deepest expression nesting accepted (guards the compiler's recursion). */
export const MAX_JSON_LOGIC_DEPTH = 64;

/** Thrown by {@link compileJsonLogic}; `path` locates the offending node, e.g. `and[1].foo`. */
export class JsonLogicCompileError extends Error {
  /** Where in the expression, e.g. `and[1]` (empty for the root). */
  readonly path: string;
  /** The message without the path. */
  readonly reason: string;
  constructor(path: string, reason: string) {
    super(path === '' ? reason : `${path}: ${reason}`);
    this.name = 'JsonLogicCompileError';
    this.path = path;
    this.reason = reason;
  }
}

/** JSON-logic truthiness: like JavaScript's, except that an empty array is falsy. */
export function truthy(value: unknown): boolean {
  if (Array.isArray(value) && value.length === 0) return false;
  return !!value;
}

/* eslint-disable @typescript-eslint/no-explicit-any -- the operators are JavaScript's loose ops */
type Op = (data: any, args: any[]) => unknown;

/** What reading a marker throws (the engine turns it into a fail-closed match). */
function unresolvedRead(path: string): Error {
  return new TypeError(`var ${JSON.stringify(path)} reads an unresolved path`);
}

function getVar(data: any, a: any, b: any): unknown {
  const notFound = b === undefined ? null : b;
  if (a === undefined || a === '' || a === null) return data;
  const props = String(a).split('.');
  for (let i = 0; i < props.length; i++) {
    if (data === null || data === undefined || !Object.hasOwn(data, props[i]!)) return notFound;
    data = data[props[i]!];
    if (data === undefined) return notFound;
    if (data instanceof UnresolvedPath) throw unresolvedRead(String(a));
  }
  if (holdsUnresolved(data)) throw unresolvedRead(String(a));
  return data;
}

function missing(data: any, args: any[]): unknown[] {
  const out: unknown[] = [];
  const keys: any[] = Array.isArray(args[0]) ? args[0] : args;
  for (const key of keys) {
    // json-logic-js evaluates {"var": key}, so an array key is [path, default].
    const value = Array.isArray(key) ? getVar(data, key[0], key[1]) : getVar(data, key, undefined);
    if (value === null || value === '') out.push(key);
  }
  return out;
}

function toNumber(v: any): number {
  return parseFloat(v);
}

/** The eager operators: arguments are evaluated first, then passed in. */
const OPS: Readonly<Record<string, Op>> = Object.freeze({
  '==': (_d, [a, b]) => a == b,
  '===': (_d, [a, b]) => a === b,
  '!=': (_d, [a, b]) => a != b,
  '!==': (_d, [a, b]) => a !== b,
  '>': (_d, [a, b]) => a > b,
  '>=': (_d, [a, b]) => a >= b,
  '<': (_d, [a, b, c]) => (c === undefined ? a < b : a < b && b < c),
  '<=': (_d, [a, b, c]) => (c === undefined ? a <= b : a <= b && b <= c),
  '!!': (_d, [a]) => truthy(a),
  '!': (_d, [a]) => !truthy(a),
  '%': (_d, [a, b]) => a % b,
  in: (_d, [a, b]) => {
    if (!b || typeof b.indexOf === 'undefined') return false;
    return b.indexOf(a) !== -1;
  },
  cat: (_d, args) => args.join(''),
  substr: (_d, [source, start, end]) => {
    if (end < 0) {
      const temp = String(source).substr(start);
      return temp.substr(0, temp.length + end);
    }
    return String(source).substr(start, end);
  },
  '+': (_d, args) => args.reduce((a: any, b: any) => toNumber(a) + toNumber(b), 0),
  // No initial value, as in json-logic-js: `{"*":[]}` throws.
  '*': (_d, args) => args.reduce((a: any, b: any) => toNumber(a) * toNumber(b)),
  '-': (_d, [a, b]) => (b === undefined ? -a : a - b),
  '/': (_d, [a, b]) => a / b,
  min: (_d, args) => Math.min(...args),
  max: (_d, args) => Math.max(...args),
  merge: (_d, args) => args.reduce((a: any[], b: any) => a.concat(b), []),
  var: (d, [a, b]) => getVar(d, a, b),
  missing: (d, args) => missing(d, args),
  missing_some: (d, [needCount, options]) => {
    const areMissing = missing(d, Array.isArray(options) ? options : [options]);
    return options.length - areMissing.length >= needCount ? [] : areMissing;
  },
});

/** Operators that control evaluation of their own arguments. */
const CONTROL = new Set([
  'if',
  '?:',
  'and',
  'or',
  'filter',
  'map',
  'reduce',
  'all',
  'none',
  'some',
]);

/** Every operator name the compiler accepts. */
export const JSON_LOGIC_OPERATORS: readonly string[] = Object.freeze([
  ...CONTROL,
  ...Object.keys(OPS),
]);

function isLogic(logic: unknown): logic is Record<string, unknown> {
  return (
    typeof logic === 'object' &&
    logic !== null &&
    !Array.isArray(logic) &&
    Object.keys(logic).length === 1
  );
}

function isConstant(logic: unknown): boolean {
  if (Array.isArray(logic)) return logic.every(isConstant);
  return !isLogic(logic);
}

/**
 * Compiles a JSON-logic expression into a closure.
 *
 * @example
 * const f = compileJsonLogic({ '==': [{ var: 'params.language' }, 'python'] });
 * f({ params: { language: 'python' } }); // true
 * @throws JsonLogicCompileError naming the path of an unknown operator or a too-deep expression.
 */
export function compileJsonLogic(logic: unknown): CompiledLogic {
  return compile(logic, '', 0);
}

function compile(logic: unknown, path: string, depth: number): CompiledLogic {
  if (depth > MAX_JSON_LOGIC_DEPTH) {
    throw new JsonLogicCompileError(path, `is nested deeper than ${MAX_JSON_LOGIC_DEPTH} levels`);
  }
  if (Array.isArray(logic)) {
    if (isConstant(logic)) return () => logic.slice();
    const items = logic.map((l, i) => compile(l, `${path}[${i}]`, depth + 1));
    return (data) => items.map((f) => f(data));
  }
  if (!isLogic(logic)) return () => logic;

  const op = Object.keys(logic)[0]!;
  const raw = logic[op];
  const values: unknown[] = Array.isArray(raw) ? raw : [raw];
  const at = path === '' ? op : `${path}.${op}`;
  const sub = (i: number): CompiledLogic => compile(values[i], `${at}[${i}]`, depth + 1);

  if (CONTROL.has(op)) return compileControl(op, values, sub);

  if (!Object.hasOwn(OPS, op)) {
    throw new JsonLogicCompileError(
      path,
      `unknown JSON-logic operator ${JSON.stringify(op)} (known: ${JSON_LOGIC_OPERATORS.join(' ')})`,
    );
  }
  const impl = OPS[op]!;
  const args = values.map((_, i) => sub(i));

  // Fast paths for the shapes policies use most; each is equivalent to the generic call below.
  if (op === 'var' && values.every(isConstant)) {
    const [a, b] = values as [unknown, unknown];
    if (a === undefined || a === '' || a === null) return (data) => data;
    const props = String(a).split('.');
    const notFound = b === undefined ? null : b;
    const path = String(a);
    return (data) => {
      let d: any = data;
      for (let i = 0; i < props.length; i++) {
        if (d === null || d === undefined || !Object.hasOwn(d, props[i]!)) return notFound;
        d = d[props[i]!];
        if (d === undefined) return notFound;
        if (d instanceof UnresolvedPath) throw unresolvedRead(path);
      }
      // Only objects can hold a marker; strings and numbers (the usual case) skip the lookup.
      if (typeof d === 'object' && d !== null && holdsUnresolved(d)) throw unresolvedRead(path);
      return d;
    };
  }
  if (args.length === 2) {
    const [fa, fb] = args as [CompiledLogic, CompiledLogic];
    switch (op) {
      case '==':
        return (d) => fa(d) == fb(d);
      case '===':
        return (d) => fa(d) === fb(d);
      case '!=':
        return (d) => fa(d) != fb(d);
      case '!==':
        return (d) => fa(d) !== fb(d);
      case '>':
        return (d) => (fa(d) as any) > (fb(d) as any);
      case '>=':
        return (d) => (fa(d) as any) >= (fb(d) as any);
      case '<':
        return (d) => (fa(d) as any) < (fb(d) as any);
      case '<=':
        return (d) => (fa(d) as any) <= (fb(d) as any);
    }
  }
  if (args.length === 1 && (op === '!' || op === '!!')) {
    const fa = args[0]!;
    return op === '!' ? (d) => !truthy(fa(d)) : (d) => truthy(fa(d));
  }
  const n = args.length;
  return (data) => {
    const evaluated = new Array<unknown>(n);
    for (let i = 0; i < n; i++) evaluated[i] = args[i]!(data);
    return impl(data, evaluated);
  };
}

function compileControl(
  op: string,
  values: unknown[],
  sub: (i: number) => CompiledLogic,
): CompiledLogic {
  switch (op) {
    case 'if':
    case '?:': {
      const fs = values.map((_, i) => sub(i));
      const n = fs.length;
      return (data) => {
        let i: number;
        for (i = 0; i < n - 1; i += 2) {
          if (truthy(fs[i]!(data))) return fs[i + 1]!(data);
        }
        if (n === i + 1) return fs[i]!(data);
        return null;
      };
    }
    case 'and':
    case 'or': {
      const fs = values.map((_, i) => sub(i));
      const wantTruthy = op === 'or';
      return (data) => {
        let current: unknown;
        for (const f of fs) {
          current = f(data);
          if (truthy(current) === wantTruthy) return current;
        }
        return current;
      };
    }
    default: {
      const scope = sub(0);
      const scoped = sub(1);
      switch (op) {
        case 'filter':
          return (data) => {
            const items = scope(data);
            return Array.isArray(items) ? items.filter((x) => truthy(scoped(x))) : [];
          };
        case 'map':
          return (data) => {
            const items = scope(data);
            return Array.isArray(items) ? items.map((x) => scoped(x)) : [];
          };
        case 'reduce': {
          const initial = values[2] !== undefined ? sub(2) : () => null;
          return (data) => {
            const items = scope(data);
            const init = initial(data);
            if (!Array.isArray(items)) return init;
            return items.reduce(
              (accumulator: unknown, current: unknown) => scoped({ current, accumulator }),
              init,
            );
          };
        }
        case 'all':
          return (data) => {
            const items = scope(data);
            if (!Array.isArray(items) || items.length === 0) return false;
            for (const x of items) if (!truthy(scoped(x))) return false;
            return true;
          };
        case 'none':
          return (data) => {
            const items = scope(data);
            if (!Array.isArray(items) || items.length === 0) return true;
            for (const x of items) if (truthy(scoped(x))) return false;
            return true;
          };
        default: // some
          return (data) => {
            const items = scope(data);
            if (!Array.isArray(items) || items.length === 0) return false;
            for (const x of items) if (truthy(scoped(x))) return true;
            return false;
          };
      }
    }
  }
}
/* eslint-enable @typescript-eslint/no-explicit-any */

/**
 * What policy providers (plugins) are handed: a frozen copy of what they decide on. A provider
 * that writes over its context — the call's arguments, `params`, `rawParams`, labels — then
 * changes neither what the gateway forwards, nor what the rules decided on, nor what the other
 * providers see: policy sees and forwards the same thing.
 *
 * @module
 */

function copied(value: unknown): value is object {
  if (typeof value !== 'object' || value === null) return false;
  if (Array.isArray(value)) return true;
  const proto: unknown = Object.getPrototypeOf(value);
  return proto === Object.prototype || proto === null;
}

/**
 * A deep, frozen copy of `value`: plain objects and arrays are copied (own enumerable keys,
 * `__proto__` kept as a key); anything else — primitives, `UnresolvedPath` markers (frozen) —
 * is taken as it is. Walked without recursion, so any depth; a cycle is copied as a cycle.
 */
export function frozenCopy<T>(value: T): T {
  if (!copied(value)) return value;
  return (shallowCopy(value, 0) ?? walkedCopy(value)) as T;
}

/** Nesting {@link shallowCopy} copies by recursion; deeper (or cyclic) values are walked. */
const RECURSION_DEPTH = 32;

/** The common case, fast: a copy by recursion; `undefined` past {@link RECURSION_DEPTH}. */
function shallowCopy(value: object, depth: number): object | undefined {
  if (depth > RECURSION_DEPTH) return undefined;
  if (Array.isArray(value)) {
    const out = new Array<unknown>(value.length);
    for (let i = 0; i < value.length; i++) {
      const v: unknown = value[i];
      if (!copied(v)) out[i] = v;
      else if ((out[i] = shallowCopy(v, depth + 1)) === undefined) return undefined;
    }
    return Object.freeze(out);
  }
  const src = value as Record<string, unknown>;
  const out: Record<string, unknown> =
    Object.getPrototypeOf(value) === null ? (Object.create(null) as Record<string, unknown>) : {};
  for (const k of Object.keys(src)) {
    const v = src[k];
    let c = v;
    if (copied(v) && (c = shallowCopy(v, depth + 1)) === undefined) return undefined;
    put(out, k, c);
  }
  return Object.freeze(out);
}

/** A copy of any depth, without recursion; a cycle is copied as a cycle. */
function walkedCopy(value: object): object {
  const copies = new Map<object, Record<string, unknown>>();
  const unwalked: object[] = [];
  const copyOf = (v: object): Record<string, unknown> => {
    let c = copies.get(v);
    if (c === undefined) {
      c = (
        Array.isArray(v) ? new Array<unknown>(v.length) : Object.create(Object.getPrototypeOf(v))
      ) as Record<string, unknown>;
      copies.set(v, c);
      unwalked.push(v);
    }
    return c;
  };
  const root = copyOf(value);
  for (let src = unwalked.pop(); src !== undefined; src = unwalked.pop()) {
    const dst = copies.get(src)!;
    for (const k of Object.keys(src)) {
      const v = (src as Record<string, unknown>)[k];
      const c = copied(v) ? copyOf(v) : v;
      put(dst, k, c);
    }
  }
  for (const c of copies.values()) Object.freeze(c);
  return root;
}

/** Sets `out[key]`; a `__proto__` key as an own member (assigning it would set the prototype). */
function put(out: Record<string, unknown>, key: string, value: unknown): void {
  if (key === '__proto__') {
    Object.defineProperty(out, key, {
      value,
      enumerable: true,
      writable: true,
      configurable: true,
    });
  } else out[key] = value;
}

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
  const copies = new Map<object, Record<string, unknown>>();
  const todo: object[] = [];
  const copyOf = (v: object): Record<string, unknown> => {
    let c = copies.get(v);
    if (c === undefined) {
      c = (
        Array.isArray(v) ? new Array<unknown>(v.length) : Object.create(Object.getPrototypeOf(v))
      ) as Record<string, unknown>;
      copies.set(v, c);
      todo.push(v);
    }
    return c;
  };
  const root = copyOf(value);
  for (let src = todo.pop(); src !== undefined; src = todo.pop()) {
    const dst = copies.get(src)!;
    for (const k of Object.keys(src)) {
      const v = (src as Record<string, unknown>)[k];
      const c = copied(v) ? copyOf(v) : v;
      if (k === '__proto__') {
        Object.defineProperty(dst, k, {
          value: c,
          enumerable: true,
          writable: true,
          configurable: true,
        });
      } else dst[k] = c;
    }
  }
  for (const c of copies.values()) Object.freeze(c);
  return root as T;
}

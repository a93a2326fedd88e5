/**
 * Collections for bookkeeping that lives as long as the gateway and changes with every call
 * (the requests in flight), where V8's `Map` and `Set` cost far more than their operations.
 *
 * A `Map` or `Set` keeps its entries in a hash table that V8 replaces whenever it grows, shrinks
 * or clears out deleted entries — with ~32 calls in flight, every few dozen calls — and the
 * replaced table keeps a pointer to its successor (for iterators) and its old entries. Once the
 * collection is old enough for its table to sit in the old generation, each replaced table is
 * dead but still in the old generation, where the young-generation collector treats what it
 * points to as alive: its successor table and that table's entries — each call's request and all
 * it references — survive the scavenge, are promoted, and the successor, replaced in turn, does
 * the same to the next one. Measured in the stdio gateway (bench/RESULTS.md, Gateway over stdio):
 * after the first full collection, scavenges promoted ~1.2 MB each instead of ~20 KB, full
 * collections came every second, and the gateway spent about a quarter more CPU per call.
 *
 * These two keep their entries where no table chain forms: {@link ChurnMap} in an object in
 * dictionary mode (its hash table is replaced without a pointer to the next), {@link SlotSet} in
 * an array whose slots are cleared as entries leave (and which is compacted into a new array,
 * without a pointer from the old one).
 *
 * @module
 */

/** A key of a {@link ChurnMap}: what JSON-RPC request ids are. */
export type ChurnKey = string | number;

/** The property name of key `k`: numbers and strings apart ("1" is not 1), `__proto__` safe. */
function slotName(k: ChurnKey): string {
  return typeof k === 'number' ? `n${k}` : `s${k}`;
}

/**
 * A `Map` of request ids for entries that come and go with every call (see the module comment).
 * Keys compare as `Map` compares them (`0` and `-0` are one key, `NaN` is one key); iteration
 * order is unspecified.
 */
export class ChurnMap<K extends ChurnKey, V> {
  #entries: Record<string, [K, V]> = ChurnMap.#dictionary();
  #size = 0;

  /** An object V8 keeps in dictionary mode from the start: no hidden class per key. */
  static #dictionary<T>(): Record<string, T> {
    const o = Object.create(null) as Record<string, T>;
    // Deleting a property other than the last one added turns an object into a dictionary.
    (o as Record<string, unknown>).a = 0;
    (o as Record<string, unknown>).b = 0;
    delete o.a;
    delete o.b;
    return o;
  }

  get size(): number {
    return this.#size;
  }

  get(k: K): V | undefined {
    return this.#entries[slotName(k)]?.[1];
  }

  has(k: K): boolean {
    return this.#entries[slotName(k)] !== undefined;
  }

  set(k: K, v: V): this {
    const name = slotName(k);
    const e = this.#entries[name];
    if (e === undefined) {
      // As Map.prototype.set: a key of -0 is kept as 0.
      this.#entries[name] = [k === 0 ? (0 as K) : k, v];
      this.#size++;
    } else {
      e[1] = v;
    }
    return this;
  }

  delete(k: K): boolean {
    const name = slotName(k);
    if (this.#entries[name] === undefined) return false;
    delete this.#entries[name];
    this.#size--;
    return true;
  }

  clear(): void {
    this.#entries = ChurnMap.#dictionary();
    this.#size = 0;
  }

  /** The keys, as an array (a snapshot: the map may change while the caller goes through it). */
  keys(): K[] {
    return Object.values(this.#entries).map((e) => e[0]);
  }

  /** The values, as an array (a snapshot, as {@link keys}). */
  values(): V[] {
    return Object.values(this.#entries).map((e) => e[1]);
  }
}

/** An entry of a {@link SlotSet}: where it is, kept by the set. */
export interface Slotted {
  slot: number;
}

/**
 * A `Set` of entries that come and go with every call (see the module comment), in an array:
 * an entry knows its index, leaving empties its slot, and the array is compacted once at most
 * half of its slots hold entries. Iterates in insertion order, as `Set` does; an entry belongs to
 * one set at a time.
 */
export class SlotSet<T extends Slotted> implements Iterable<T> {
  #items: (T | undefined)[] = [];
  #size = 0;

  get size(): number {
    return this.#size;
  }

  add(item: T): this {
    if (item.slot >= 0 && this.#items[item.slot] === item) return this;
    item.slot = this.#items.length;
    this.#items.push(item);
    this.#size++;
    return this;
  }

  delete(item: T): boolean {
    const i = item.slot;
    if (i < 0 || this.#items[i] !== item) return false;
    this.#items[i] = undefined;
    item.slot = -1;
    this.#size--;
    if (this.#size === 0) this.#items.length = 0;
    else if (this.#items.length >= 64 && this.#size * 2 <= this.#items.length) this.#compact();
    return true;
  }

  #compact(): void {
    const items: T[] = [];
    for (const x of this.#items) {
      if (x === undefined) continue;
      x.slot = items.length;
      items.push(x);
    }
    this.#items = items;
  }

  *[Symbol.iterator](): Iterator<T> {
    for (const x of this.#items) if (x !== undefined) yield x;
  }
}

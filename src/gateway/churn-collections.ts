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
 * These two keep their entries where no table chain forms: {@link ChurnMap} in arrays whose
 * slots are cleared as entries leave (integer keys) or in an object in dictionary mode (other
 * keys; its hash table is replaced without a pointer to the next), {@link SlotSet} in an array
 * whose slots are cleared as entries leave (and which is compacted into a new array, without a
 * pointer from the old one).
 *
 * @module
 */

/** A key of a {@link ChurnMap}: what JSON-RPC request ids are. */
export type ChurnKey = string | number;

/** The property name of a key the dictionary holds: numbers and strings apart, `__proto__` safe. */
function slotName(k: ChurnKey): string {
  return typeof k === 'number' ? `n${k}` : `s${k}`;
}

/** Slots of a new integer table; it doubles when over half full. */
const MIN_SLOTS = 64;
/**
 * Fewest slots of a table that halves once under a sixteenth full: below this it stays, so the
 * usual ebb and flow of calls in flight never resizes it.
 */
const SHRINK_ABOVE = 512;

/**
 * A `Map` of request ids for entries that come and go with every call (see the module comment).
 * Keys compare as `Map` compares them (`0` and `-0` are one key, `NaN` is one key); iteration
 * order is unspecified.
 *
 * Safe integers — the ids JSON-RPC clients, the SDK among them, nearly always send, and the ids
 * the gateway gives its own upstream requests — live in an open-addressed table (linear probing,
 * deletion by backward shift, so no tombstones pile up): two long-lived arrays whose slots are
 * emptied as entries leave. Every other key goes to an object in dictionary mode. A number used
 * as a property name is first made a string and interned, which cost the gateway more per call
 * than the rest of this bookkeeping (bench/RESULTS.md, Gateway over stdio).
 *
 * The table's hash mixes in a random seed per map, so which slots an agent's ids land in is not
 * the agent's choice alone.
 */
export class ChurnMap<K extends ChurnKey, V> {
  /** Integer keys by slot; NaN marks an empty slot (NaN is never a safe integer). */
  #keys = new Float64Array(MIN_SLOTS).fill(Number.NaN);
  #values: (V | undefined)[] = new Array<V | undefined>(MIN_SLOTS).fill(undefined);
  #mask = MIN_SLOTS - 1;
  #ints = 0;
  readonly #seed = (Math.random() * 2 ** 32) | 0;
  /** Every other key, by {@link slotName}. */
  #others: Record<string, [K, V]> = ChurnMap.#dictionary();
  #otherCount = 0;

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
    return this.#ints + this.#otherCount;
  }

  /** The home slot of safe integer `k`: its low and high 32 bits mixed with the seed. */
  #home(k: number): number {
    let h = Math.imul((k | 0) ^ this.#seed, 0x9e3779b1) ^ ((k / 4294967296) | 0);
    h = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
    return (h ^ (h >>> 13)) & this.#mask;
  }

  /** The slot holding safe integer `k`, else the empty slot that ends its probe (where it goes). */
  #probe(k: number): number {
    const keys = this.#keys;
    let i = this.#home(k);
    for (let at = keys[i]!; at !== k && at === at; at = keys[i]!) i = (i + 1) & this.#mask;
    return i;
  }

  /** The slot holding safe integer `k`, or -1. */
  #find(k: number): number {
    const i = this.#probe(k);
    return this.#keys[i] === k ? i : -1;
  }

  get(k: K): V | undefined {
    if (Number.isSafeInteger(k)) {
      const i = this.#find(k as number);
      return i < 0 ? undefined : this.#values[i];
    }
    return this.#others[slotName(k)]?.[1];
  }

  has(k: K): boolean {
    if (Number.isSafeInteger(k)) return this.#find(k as number) >= 0;
    return this.#others[slotName(k)] !== undefined;
  }

  set(k: K, v: V): this {
    if (!Number.isSafeInteger(k)) return this.#setOther(k, v);
    // As Map.prototype.set: a key of -0 is kept as 0.
    const n = (k as number) === 0 ? 0 : (k as number);
    const keys = this.#keys;
    const i = this.#probe(n);
    this.#values[i] = v;
    if (keys[i] === n) return this;
    keys[i] = n;
    if (++this.#ints * 2 > keys.length) this.#resize(keys.length * 2);
    return this;
  }

  #setOther(k: K, v: V): this {
    const name = slotName(k);
    const e = this.#others[name];
    if (e === undefined) {
      this.#others[name] = [k, v];
      this.#otherCount++;
    } else {
      e[1] = v;
    }
    return this;
  }

  delete(k: K): boolean {
    if (!Number.isSafeInteger(k)) {
      const name = slotName(k);
      if (this.#others[name] === undefined) return false;
      delete this.#others[name];
      this.#otherCount--;
      return true;
    }
    let hole = this.#find(k as number);
    if (hole < 0) return false;
    // Backward shift: each later entry of the run moves into the hole unless its home slot lies
    // cyclically after the hole (up to where it is), so every probe still finds its key.
    const keys = this.#keys;
    const values = this.#values;
    const mask = this.#mask;
    for (let j = (hole + 1) & mask; ; j = (j + 1) & mask) {
      const at = keys[j]!;
      if (at !== at) break;
      const home = this.#home(at);
      if (hole <= j ? hole < home && home <= j : hole < home || home <= j) continue;
      keys[hole] = at;
      values[hole] = values[j];
      hole = j;
    }
    keys[hole] = Number.NaN;
    values[hole] = undefined;
    this.#ints--;
    if (keys.length > SHRINK_ABOVE && this.#ints * 16 < keys.length) this.#resize(keys.length / 2);
    return true;
  }

  #resize(slots: number): void {
    const keys = this.#keys;
    const values = this.#values;
    this.#keys = new Float64Array(slots).fill(Number.NaN);
    this.#values = new Array<V | undefined>(slots).fill(undefined);
    this.#mask = slots - 1;
    for (let i = 0; i < keys.length; i++) {
      const k = keys[i]!;
      if (k !== k) continue;
      const j = this.#probe(k);
      this.#keys[j] = k;
      this.#values[j] = values[i];
    }
  }

  clear(): void {
    this.#keys = new Float64Array(MIN_SLOTS).fill(Number.NaN);
    this.#values = new Array<V | undefined>(MIN_SLOTS).fill(undefined);
    this.#mask = MIN_SLOTS - 1;
    this.#ints = 0;
    this.#others = ChurnMap.#dictionary();
    this.#otherCount = 0;
  }

  /** The keys, as an array (a snapshot: the map may change while the caller goes through it). */
  keys(): K[] {
    const out: K[] = [];
    for (const k of this.#keys) if (k === k) out.push(k as K);
    for (const e of Object.values(this.#others)) out.push(e[0]);
    return out;
  }

  /** The values, as an array (a snapshot, as {@link keys}). */
  values(): V[] {
    const out: V[] = [];
    const keys = this.#keys;
    for (let i = 0; i < keys.length; i++) if (keys[i] === keys[i]) out.push(this.#values[i]!);
    for (const e of Object.values(this.#others)) out.push(e[1]);
    return out;
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

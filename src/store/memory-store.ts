/**
 * The in-memory {@link FabricStore}: plain Maps, and for tasks a {@link SequentialCollection}.
 * The default for the library and for tests.
 *
 * @module
 */
import type { Approval } from '../policy/approval-manager.js';
import type { Collection, FabricStore } from './store.js';

/** A Map-backed collection. */
export class MemoryCollection<T> implements Collection<T> {
  readonly holdsReferences = true;
  readonly #map = new Map<string, T>();

  get(id: string): T | undefined {
    return this.#map.get(id);
  }

  put(id: string, record: T): void {
    this.#map.set(id, record);
  }

  delete(id: string): boolean {
    return this.#map.delete(id);
  }

  values(): IterableIterator<T> {
    return this.#map.values();
  }

  get size(): number {
    return this.#map.size;
  }
}

/** Counters of more base-36 digits than this are not indexed (36^10 < 2^53). */
const MAX_COUNTER_DIGITS = 10;
/** Holes a window keeps before it drops its front (or moves what is left there to the Map). */
const SLACK = 1024;

/**
 * A collection for keys made of a fixed prefix and a growing base-36 counter, as the scheduler's
 * task ids are (`t_<random>_<counter>`): records whose counter is recent sit in an array window
 * indexed by the counter, so `get`, `put` and `delete` hash nothing and touch one slot, and
 * their cost does not grow with the number of records (a Map of 100k string keys misses the
 * cache on every probe). Any other key — another prefix, a counter not in canonical form (no
 * leading zero, lower case), a record that outlived the window — sits in a Map. The prefix is
 * that of the first key put that has the form `<prefix>_<counter>`.
 *
 * The window stays within about twice its live records: holes at its front are dropped, and
 * when records that outlive most of their neighbours pin it, the older half moves to the Map.
 * Each costs O(records moved) after at least as many puts or deletes: O(1) amortized.
 */
export class SequentialCollection<T> implements Collection<T> {
  readonly holdsReferences = true;
  #prefix: string | undefined = undefined;
  /** `#window[i]` holds the record of counter `#base + i`; `undefined` marks a hole. */
  #window: (T | undefined)[] = [];
  #base = 0;
  /** Index of the first slot that may be live (those before it are holes). */
  #head = 0;
  /** Records in the window. */
  #live = 0;
  /** Keys outside the window (a counter below `#base`, or not of the window's form). */
  readonly #map = new Map<string, T>();

  get(id: string): T | undefined {
    const c = this.#counter(id);
    if (c >= this.#base) {
      const i = c - this.#base;
      return i < this.#window.length ? this.#window[i] : undefined;
    }
    return this.#map.size === 0 ? undefined : this.#map.get(id);
  }

  put(id: string, record: T): void {
    if (this.#prefix === undefined) this.#learn(id);
    const c = this.#counter(id);
    if (c < this.#base) {
      this.#map.set(id, record);
      return;
    }
    const window = this.#window;
    const i = c - this.#base;
    if (i < window.length) {
      if (window[i] === undefined) this.#live++;
      window[i] = record;
      return;
    }
    if (this.#live === 0) {
      // Empty: the window starts at this counter.
      window.length = 0;
      this.#base = c;
      this.#head = 0;
    } else if (i - window.length > Math.max(SLACK, window.length)) {
      // A jump far past the window: what it holds moves to the Map, the window starts here.
      this.#spill(window.length);
      window.length = 0;
      this.#base = c;
      this.#head = 0;
    } else {
      while (window.length < i) window.push(undefined);
    }
    window.push(record);
    this.#live++;
    const span = window.length - this.#head;
    if (span > 2 * this.#live + SLACK) this.#spill(this.#head + (span >> 1));
  }

  delete(id: string): boolean {
    const c = this.#counter(id);
    if (c < this.#base) return this.#map.delete(id);
    const window = this.#window;
    const i = c - this.#base;
    if (i >= window.length || window[i] === undefined) return false;
    window[i] = undefined;
    this.#live--;
    if (i === this.#head) {
      let h = i + 1;
      while (h < window.length && window[h] === undefined) h++;
      this.#head = h;
      if (h === window.length) {
        this.#base += h;
        window.length = 0;
        this.#head = 0;
      } else if (h > SLACK && h * 2 > window.length) {
        window.splice(0, h);
        this.#base += h;
        this.#head = 0;
      }
    }
    return true;
  }

  *values(): IterableIterator<T> {
    // By counter, not by slot: records deleted meanwhile may shift the window.
    for (let c = this.#base + this.#head; ; c++) {
      if (c < this.#base + this.#head) c = this.#base + this.#head;
      const i = c - this.#base;
      if (i >= this.#window.length) break;
      const t = this.#window[i];
      if (t !== undefined) yield t;
    }
    yield* this.#map.values();
  }

  get size(): number {
    return this.#live + this.#map.size;
  }

  /** Slots the window array holds, live or hole (memory it keeps; for tests and diagnostics). */
  get windowSlots(): number {
    return this.#window.length;
  }

  /** The counter of `id` when it has the window's form, else -1. */
  #counter(id: string): number {
    const prefix = this.#prefix;
    if (prefix === undefined) return -1;
    const p = prefix.length;
    const n = id.length;
    if (n <= p || n - p > MAX_COUNTER_DIGITS || !id.startsWith(prefix)) return -1;
    if (id.charCodeAt(p) === 48 /* 0 */ && n > p + 1) return -1;
    let c = 0;
    for (let i = p; i < n; i++) {
      const code = id.charCodeAt(i);
      if (code >= 48 && code <= 57) c = c * 36 + code - 48;
      else if (code >= 97 && code <= 122) c = c * 36 + code - 87;
      else return -1;
    }
    return c;
  }

  #learn(id: string): void {
    const sep = id.lastIndexOf('_');
    if (sep < 0 || sep === id.length - 1) return;
    this.#prefix = id.slice(0, sep + 1);
    if (this.#counter(id) < 0) this.#prefix = undefined;
  }

  /** Moves the live records of the window's slots before `end` to the Map and drops the slots. */
  #spill(end: number): void {
    const window = this.#window;
    for (let i = this.#head; i < end; i++) {
      const t = window[i];
      if (t === undefined) continue;
      this.#map.set(`${this.#prefix!}${(this.#base + i).toString(36)}`, t);
      this.#live--;
    }
    window.splice(0, end);
    this.#base += end;
    this.#head = 0;
    while (this.#head < window.length && window[this.#head] === undefined) this.#head++;
  }
}

/** Keeps every record in memory; nothing survives the process. */
export class MemoryStore<TTask = unknown, TAgent = unknown, TPool = unknown> implements FabricStore<
  TTask,
  TAgent,
  TPool
> {
  readonly tasks = new SequentialCollection<TTask>();
  readonly agents = new MemoryCollection<TAgent>();
  readonly pools = new MemoryCollection<TPool>();
  readonly approvals = new MemoryCollection<Approval>();

  async close(): Promise<void> {}
}

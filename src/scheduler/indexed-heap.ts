/**
 * A binary min-heap whose items remember their own position, so that removing or re-ordering
 * any item is O(log n) — the scheduler cancels queued tasks and clears timers without scans.
 *
 * @module
 */

/** Where an item keeps its position in one heap; an item may sit in several heaps at once. */
export interface HeapSlot<T> {
  get(item: T): number;
  set(item: T, index: number): void;
}

/** Position value of an item that is in no heap. */
export const NOT_IN_HEAP = -1;

/** Binary min-heap ordered by `before`, with O(log n) `remove` of any member. */
export class IndexedHeap<T> {
  readonly #items: T[] = [];
  readonly #before: (a: T, b: T) => boolean;
  readonly #slot: HeapSlot<T>;

  /**
   * @param before - true when `a` must come out before `b`.
   * @param slot - where each item stores its index in this heap.
   */
  constructor(before: (a: T, b: T) => boolean, slot: HeapSlot<T>) {
    this.#before = before;
    this.#slot = slot;
  }

  get size(): number {
    return this.#items.length;
  }

  /** The first item, without removing it. */
  peek(): T | undefined {
    return this.#items[0];
  }

  /** True when `item` is in this heap. */
  has(item: T): boolean {
    const i = this.#slot.get(item);
    return i >= 0 && i < this.#items.length && this.#items[i] === item;
  }

  push(item: T): void {
    const i = this.#items.length;
    this.#items.push(item);
    this.#slot.set(item, i);
    this.#up(i);
  }

  /** Removes and returns the first item. */
  pop(): T | undefined {
    const items = this.#items;
    const top = items[0];
    if (top === undefined) return undefined;
    const last = items.pop()!;
    this.#slot.set(top, NOT_IN_HEAP);
    if (items.length > 0) {
      items[0] = last;
      this.#slot.set(last, 0);
      this.#down(0);
    }
    return top;
  }

  /** Removes `item` if present; returns whether it was. */
  remove(item: T): boolean {
    if (!this.has(item)) return false;
    const items = this.#items;
    const i = this.#slot.get(item);
    const last = items.pop()!;
    this.#slot.set(item, NOT_IN_HEAP);
    if (i < items.length) {
      items[i] = last;
      this.#slot.set(last, i);
      this.#down(i);
      this.#up(this.#slot.get(last));
    }
    return true;
  }

  /** Restores order after `item`'s sort key changed. */
  update(item: T): void {
    if (!this.has(item)) return;
    const i = this.#slot.get(item);
    this.#up(i);
    this.#down(this.#slot.get(item));
  }

  /** Removes every item and returns them (in no particular order). */
  drain(): T[] {
    const all = this.#items.splice(0);
    for (const item of all) this.#slot.set(item, NOT_IN_HEAP);
    return all;
  }

  #up(i: number): void {
    const items = this.#items;
    const item = items[i]!;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      const p = items[parent]!;
      if (!this.#before(item, p)) break;
      items[i] = p;
      this.#slot.set(p, i);
      i = parent;
    }
    items[i] = item;
    this.#slot.set(item, i);
  }

  #down(i: number): void {
    const items = this.#items;
    const n = items.length;
    const item = items[i]!;
    for (;;) {
      const l = 2 * i + 1;
      if (l >= n) break;
      const r = l + 1;
      let c = l;
      if (r < n && this.#before(items[r]!, items[l]!)) c = r;
      const child = items[c]!;
      if (!this.#before(child, item)) break;
      items[i] = child;
      this.#slot.set(child, i);
      i = c;
    }
    items[i] = item;
    this.#slot.set(item, i);
  }
}

/**
 * Which finished tasks are still kept: the newest `limit`, in the order they finished. Older ones
 * are handed to `evict` (the scheduler deletes them from its store). After a restart the order is
 * rebuilt from the records' `finishedAt`.
 *
 * @module
 */

/**
 * A bounded FIFO of finished task ids, in a ring that grows to `limit + 1` slots and then
 * allocates nothing: every finished task passes through it, so an array that is pushed to and
 * cut from the front would be reallocated over and over. With a limit of 0 an id is evicted as
 * it arrives.
 */
export class FinishedRetention {
  #ring: (string | undefined)[] = [];
  /** Slot of the oldest id. */
  #head = 0;
  #count = 0;

  constructor(
    readonly limit: number,
    private readonly evict: (id: string) => void,
  ) {}

  /** Keeps `id` as the newest finished task, evicting the oldest beyond the limit. */
  add(id: string): void {
    if (this.#count === 0 && this.limit === 0) {
      this.evict(id);
      return;
    }
    this.#push(id);
    this.trim();
  }

  /** Adds ids in the order they finished without evicting (then call {@link trim}). */
  load(ids: Iterable<string>): void {
    for (const id of ids) this.#push(id);
  }

  /** Evicts the oldest ids beyond the limit. */
  trim(): void {
    const ring = this.#ring;
    while (this.#count > this.limit) {
      const id = ring[this.#head]!;
      ring[this.#head] = undefined;
      this.#head = this.#head + 1 === ring.length ? 0 : this.#head + 1;
      this.#count--;
      this.evict(id);
    }
  }

  #push(id: string): void {
    let ring = this.#ring;
    if (this.#count === ring.length) {
      // Full: a larger ring, oldest first.
      const grown: (string | undefined)[] = [];
      for (let k = 0; k < this.#count; k++) grown.push(ring[(this.#head + k) % ring.length]);
      const room = Math.max(16, Math.min(this.#count, this.limit + 1 - this.#count));
      for (let k = 0; k < room; k++) grown.push(undefined);
      this.#ring = ring = grown;
      this.#head = 0;
    }
    let slot = this.#head + this.#count;
    if (slot >= ring.length) slot -= ring.length;
    ring[slot] = id;
    this.#count++;
  }
}

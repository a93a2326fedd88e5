/**
 * Which finished tasks are still kept: the newest `limit`, in the order they finished. Older ones
 * are handed to `evict` (the scheduler deletes them from its store). After a restart the order is
 * rebuilt from the records' `finishedAt`.
 *
 * @module
 */

/** A bounded FIFO of finished task ids. */
export class FinishedRetention {
  readonly #ids: string[] = [];
  #head = 0;

  constructor(
    readonly limit: number,
    private readonly evict: (id: string) => void,
  ) {}

  /** Keeps `id` as the newest finished task, evicting the oldest beyond the limit. */
  add(id: string): void {
    this.#ids.push(id);
    this.trim();
  }

  /** Adds ids in the order they finished without evicting (then call {@link trim}). */
  load(ids: Iterable<string>): void {
    for (const id of ids) this.#ids.push(id);
  }

  /** Evicts the oldest ids beyond the limit. */
  trim(): void {
    const list = this.#ids;
    while (list.length - this.#head > this.limit) this.evict(list[this.#head++]!);
    // Drop the evicted prefix now and then, not on every eviction.
    if (this.#head > 4096 && this.#head * 2 > list.length) {
      list.splice(0, this.#head);
      this.#head = 0;
    }
  }
}

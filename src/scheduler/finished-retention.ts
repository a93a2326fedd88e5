/**
 * Which finished tasks are still kept: the newest `limit`, in the order they finished. Older ones
 * are handed to `evict` (the scheduler deletes them from its store). After a restart the order is
 * rebuilt from the records' `finishedAt`.
 *
 * A task may belong to a group (the fabric puts the tasks an agent scheduled itself in one group
 * per agent): a group keeps only its newest `groupLimit`, so one party that finishes tasks in a
 * loop evicts its own, not the others' — with the global FIFO alone its tasks pushed everyone
 * else's out and it held the whole retention. A grouped task still counts in `limit`.
 *
 * @module
 */

/**
 * A bounded FIFO of finished task ids, in a ring that grows to `limit + 1` slots and then
 * allocates nothing for ungrouped ids: every finished task passes through it, so an array that is
 * pushed to and cut from the front would be reallocated over and over. With a limit of 0 an id is
 * evicted as it arrives. A grouped id its group evicts stays in the ring as a ghost (skipped, not
 * counted) until it reaches the front or the ring is compacted, which happens once ghosts are as
 * many as the ids kept, so the ring stays within twice what it keeps.
 */
export class FinishedRetention {
  #ring: (string | undefined)[] = [];
  /** Slot of the oldest id. */
  #head = 0;
  /** Ids in the ring, ghosts included. */
  #count = 0;
  /** Ids in the ring a group evicted already. */
  readonly #ghosts = new Set<string>();
  /** Kept grouped ids, oldest first per group (a Set keeps insertion order). */
  readonly #groups = new Map<string, Set<string>>();
  /** The group of each kept grouped id. */
  readonly #groupOf = new Map<string, string>();
  /** Groups a {@link load} left past `groupLimit`, for the next {@link trim}. */
  readonly #over = new Set<string>();

  /**
   * @param limit - most ids kept in all.
   * @param evict - called with each id no longer kept, once.
   * @param groupLimit - most ids kept of one group. @default Infinity
   */
  constructor(
    readonly limit: number,
    private readonly evict: (id: string) => void,
    readonly groupLimit = Number.POSITIVE_INFINITY,
  ) {}

  /** How many ids are kept (ghosts not counted). */
  get size(): number {
    return this.#count - this.#ghosts.size;
  }

  /**
   * Keeps `id` as the newest finished task, evicting the oldest beyond the limit — first the
   * oldest of `group` beyond `groupLimit`.
   */
  add(id: string, group?: string): void {
    if (this.#count === 0 && this.limit === 0) {
      this.evict(id);
      return;
    }
    this.#push(id);
    if (group !== undefined) {
      this.#join(id, group);
      this.#trimGroup(group);
    }
    this.trim();
  }

  /**
   * Adds ids in the order they finished without evicting (then call {@link trim});
   * `groupOf` names the group of an id, if it has one.
   */
  load(ids: Iterable<string>, groupOf?: (id: string) => string | undefined): void {
    for (const id of ids) {
      this.#push(id);
      const group = groupOf?.(id);
      if (group === undefined) continue;
      const members = this.#join(id, group);
      if (members.size > this.groupLimit) this.#over.add(group);
    }
  }

  /** Evicts the oldest ids beyond the limits. */
  trim(): void {
    for (const group of this.#over) this.#trimGroup(group);
    this.#over.clear();
    const ring = this.#ring;
    while (
      this.#count > 0 &&
      (this.size > this.limit || (this.#ghosts.size > 0 && this.#ghosts.has(ring[this.#head]!)))
    ) {
      const id = ring[this.#head]!;
      ring[this.#head] = undefined;
      this.#head = this.#head + 1 === ring.length ? 0 : this.#head + 1;
      this.#count--;
      if (this.#ghosts.delete(id)) continue;
      this.#leave(id);
      this.evict(id);
    }
  }

  #join(id: string, group: string): Set<string> {
    let members = this.#groups.get(group);
    if (members === undefined) this.#groups.set(group, (members = new Set()));
    members.add(id);
    this.#groupOf.set(id, group);
    return members;
  }

  /** Forgets the group of `id` (kept or not), the group itself once empty. */
  #leave(id: string): void {
    const group = this.#groupOf.get(id);
    if (group === undefined) return;
    this.#groupOf.delete(id);
    const members = this.#groups.get(group)!;
    members.delete(id);
    if (members.size === 0) this.#groups.delete(group);
  }

  /** Evicts the oldest of `group` beyond `groupLimit`; they stay in the ring as ghosts. */
  #trimGroup(group: string): void {
    const members = this.#groups.get(group);
    if (members === undefined) return;
    while (members.size > this.groupLimit) {
      const oldest = members.values().next().value!;
      this.#leave(oldest);
      this.#ghosts.add(oldest);
      this.evict(oldest);
    }
    if (this.#ghosts.size > 16 && this.#ghosts.size >= this.size) this.#compact();
  }

  /** Rebuilds the ring without its ghosts, oldest first. */
  #compact(): void {
    const ring = this.#ring;
    const kept: (string | undefined)[] = [];
    for (let k = 0; k < this.#count; k++) {
      const id = ring[(this.#head + k) % ring.length]!;
      if (!this.#ghosts.has(id)) kept.push(id);
    }
    this.#ghosts.clear();
    this.#count = kept.length;
    const room = Math.max(16, Math.min(this.#count, this.limit + 1 - this.#count));
    for (let k = 0; k < room; k++) kept.push(undefined);
    this.#ring = kept;
    this.#head = 0;
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

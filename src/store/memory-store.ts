/**
 * The in-memory {@link FabricStore}: plain Maps. The default for the library and for tests.
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

/** Keeps every record in memory; nothing survives the process. */
export class MemoryStore<TTask = unknown, TAgent = unknown, TPool = unknown> implements FabricStore<
  TTask,
  TAgent,
  TPool
> {
  readonly tasks = new MemoryCollection<TTask>();
  readonly agents = new MemoryCollection<TAgent>();
  readonly pools = new MemoryCollection<TPool>();
  readonly approvals = new MemoryCollection<Approval>();

  async close(): Promise<void> {}
}

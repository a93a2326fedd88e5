/**
 * A typed wrapper over Node's EventEmitter: event names and argument tuples are checked.
 *
 * @module
 */
import { EventEmitter } from 'node:events';

/** Map of event name → listener argument tuple. */
export type EventMap = { [event: string]: unknown[] };

/** A typed event emitter. Listener errors are not caught: listeners must not throw. */
export class TypedEmitter<E extends EventMap> {
  readonly #ee = new EventEmitter({ captureRejections: false });

  constructor() {
    this.#ee.setMaxListeners(100);
  }

  on<K extends keyof E & string>(event: K, listener: (...args: E[K]) => void): this {
    this.#ee.on(event, listener as (...args: unknown[]) => void);
    return this;
  }

  once<K extends keyof E & string>(event: K, listener: (...args: E[K]) => void): this {
    this.#ee.once(event, listener as (...args: unknown[]) => void);
    return this;
  }

  off<K extends keyof E & string>(event: K, listener: (...args: E[K]) => void): this {
    this.#ee.off(event, listener as (...args: unknown[]) => void);
    return this;
  }

  /** True when someone listens: callers skip building event payloads otherwise. */
  listens(event: keyof E & string): boolean {
    return this.#ee.listenerCount(event) > 0;
  }

  /** @internal */
  emit<K extends keyof E & string>(event: K, ...args: E[K]): void {
    this.#ee.emit(event, ...args);
  }

  removeAllListeners(): void {
    this.#ee.removeAllListeners();
  }
}

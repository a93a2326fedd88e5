/**
 * A typed wrapper over Node's EventEmitter: event names and argument tuples are checked.
 *
 * @module
 */
import { EventEmitter } from 'node:events';

/** Map of event name → listener argument tuple. */
export type EventMap = { [event: string]: unknown[] };

/** A listener of event `K` of map `E`. */
export type Listener<E extends EventMap, K extends keyof E> = (...args: E[K]) => void;

/**
 * A typed event emitter, used by composition (`manager.events.on(…)`) or as a base class.
 * Listeners run synchronously, in registration order, after the state change they report; an
 * exception thrown by a listener propagates to the caller of the method that emitted it.
 */
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

  /** Number of listeners of `event`. */
  listenerCount(event: keyof E & string): number {
    return this.#ee.listenerCount(event);
  }

  /** @internal */
  emit<K extends keyof E & string>(event: K, ...args: E[K]): void {
    this.#ee.emit(event, ...args);
  }

  /**
   * Allows `by` more listeners of each event before Node warns of a possible leak
   * (MaxListenersExceededWarning); returns what takes them back (idempotent). For listeners
   * whose number a caller bounds itself: a door's watch streams, at most its stream cap.
   */
  raiseMaxListeners(by: number): () => void {
    this.#ee.setMaxListeners(this.#ee.getMaxListeners() + by);
    let done = false;
    return () => {
      if (done) return;
      done = true;
      this.#ee.setMaxListeners(this.#ee.getMaxListeners() - by);
    };
  }

  removeAllListeners(): void {
    this.#ee.removeAllListeners();
  }
}

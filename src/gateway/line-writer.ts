/**
 * Newline-delimited JSON-RPC output to a stream (a child's stdin, this process's stdout).
 *
 * Messages sent during one turn of the event loop are joined and written together when the
 * turn's ticks end, so a loaded gateway makes one write(2) — and wakes its peer once — for a
 * whole burst of concurrent calls instead of once per message. (Writing a turn's first message
 * at once was measured: it cut no latency and cost 10–20 % throughput, each burst then waking
 * the peer twice.) With `flush: 'poll'` the messages of a whole poll phase go out together,
 * after every I/O callback of that phase ran (`setImmediate`): the calls of concurrent HTTP
 * requests each arrive in a callback of their own, and would otherwise take a write each.
 *
 * @module
 */
import type { JSONRPCMessage } from '@modelcontextprotocol/sdk/types.js';
import { serializeMessage } from './serialize-message.js';

/** The part of a writable stream a {@link LineWriter} uses. */
export interface LineSink {
  write(chunk: string, callback?: (error: Error | null | undefined) => void): unknown;
  once(event: 'drain', listener: () => void): unknown;
  readonly writableNeedDrain?: boolean;
  readonly writableEnded?: boolean;
  /** What the stream holds unwritten (its in-flight write included). */
  readonly writableLength?: number;
}

/**
 * A write a pipe makes all or nothing (POSIX `PIPE_BUF`: 4096 bytes on Linux, at least 512
 * elsewhere), in UTF-16 units (each at most 3 bytes of UTF-8).
 */
const ATOMIC_WRITE_UNITS = Math.floor((process.platform === 'linux' ? 4096 : 512) / 3);

/**
 * Told of a write that failed and of which nothing reached the stream's reader: its lines
 * (joined, each ending in a newline) and the error.
 */
export type UnsentLines = (lines: string, error: Error) => void;

/**
 * When a {@link LineWriter} writes what it queued: `ticks` when the ticks of the I/O callback
 * (or timer) that queued the first message end; `poll` after every I/O callback of the current
 * poll phase ran (`setImmediate`).
 */
export type LineFlush = 'ticks' | 'poll';

/**
 * What {@link LineWriter.sendLine} returns when the line was queued and the stream needs no
 * drain: one promise, already resolved, for every such line. A caller may compare with it and
 * skip reacting (a `.catch` or an `await` of a resolved promise still costs a microtask).
 */
export const LINE_QUEUED: Promise<void> = Promise.resolve();

/** Serializes messages onto a stream, one JSON line each. */
export class LineWriter {
  readonly #sink: () => LineSink | undefined;
  readonly #poll: boolean;
  #out = '';
  #inTurn = false;
  /**
   * The writes waiting for the stream's `drain`, and the stream they wait on: one `drain`
   * listener serves them all. A listener per waiting write made Node warn of a leak
   * (MaxListenersExceededWarning) once eleven waited, as they do while a client does not read.
   */
  #drainWaiters: (() => void)[] = [];
  #drainSink: LineSink | undefined;
  readonly #onUnsent: UnsentLines | undefined;

  /**
   * @param sink The stream to write to, looked up on each write (undefined: dropped).
   * @param flush When the queued messages are written. @default 'ticks'
   * @param onUnsent Told of a write that failed with nothing of it written: one alone on the
   *   stream (nothing before it unwritten) and short enough that a pipe writes it all or nothing
   *   (`PIPE_BUF`). A failed write that is not, could have been read in part.
   */
  constructor(
    sink: () => LineSink | undefined,
    flush: LineFlush = 'ticks',
    onUnsent?: UnsentLines,
  ) {
    this.#sink = sink;
    this.#poll = flush === 'poll';
    this.#onUnsent = onUnsent;
  }

  /**
   * Queues `message` for this turn's write. Resolves when the stream can take more; a full
   * stream's `drain` resolves it. A response that cannot be serialized is written as an error
   * response (see serialize-message.ts); other such messages reject.
   */
  send(message: JSONRPCMessage): Promise<void> {
    let json: string;
    try {
      json = serializeMessage(message);
    } catch (error) {
      return Promise.reject(error as Error);
    }
    return this.sendLine(json);
  }

  /** {@link send} for a message already serialized (one line of JSON, no newline). */
  sendLine(json: string): Promise<void> {
    this.#out += json + '\n';
    if (!this.#inTurn) {
      this.#inTurn = true;
      if (this.#poll) setImmediate(this.flush);
      else process.nextTick(this.flush);
    }
    const sink = this.#sink();
    if (!sink?.writableNeedDrain) return LINE_QUEUED;
    return new Promise((resolve) => this.#awaitDrain(sink, resolve));
  }

  /** Runs `resolve` at `sink`'s next `drain`, through the one listener on it. */
  #awaitDrain(sink: LineSink, resolve: () => void): void {
    if (this.#drainSink === sink) {
      this.#drainWaiters.push(resolve);
      return;
    }
    // The first write to wait (or the stream was replaced: the writes waiting on the previous
    // one keep their own listener there).
    const waiters = [resolve];
    this.#drainSink = sink;
    this.#drainWaiters = waiters;
    sink.once('drain', () => {
      if (this.#drainWaiters === waiters) {
        this.#drainSink = undefined;
        this.#drainWaiters = [];
      }
      for (const w of waiters) w();
    });
  }

  /** Characters queued for this turn's write and not yet handed to the stream. */
  get pending(): number {
    return this.#out.length;
  }

  /** Writes what this turn queued (also called when the turn's ticks end). */
  readonly flush = (): void => {
    this.#inTurn = false;
    const out = this.#out;
    if (out === '') return;
    this.#out = '';
    const sink = this.#sink();
    if (!sink || sink.writableEnded) return;
    const onUnsent = this.#onUnsent;
    if (onUnsent !== undefined && out.length <= ATOMIC_WRITE_UNITS && sink.writableLength === 0) {
      sink.write(out, (error) => {
        if (error) onUnsent(out, error);
      });
    } else sink.write(out);
  };
}

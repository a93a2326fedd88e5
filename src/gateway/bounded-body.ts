/**
 * Byte bounds on what an HTTP upstream sends back (`maxMessageBytes`).
 *
 * Neither the SDK's event-stream parser nor `response.json()` bounds what it buffers: one SSE
 * event that never ends, or one endless JSON body, grew the sidecar's heap by as much as the
 * upstream wrote. These wrappers count bytes as the body streams through: a JSON (or any
 * non-SSE) body past the bound errors, so `response.json()` rejects and the request fails; an
 * SSE stream counts bytes since its last event boundary (a blank line) and, past the bound,
 * ends the event with a type the SDK ignores, answers the request(s) it carried with an error
 * event and closes. At most `max` bytes of one message are ever held.
 *
 * @module
 */

import { MAX_TIMER_MS } from '../scheduler/task-waiters.js';
import {
  DROPPED_HEAD_LENGTH,
  DROPPED_TAIL_LENGTH,
  droppedAnswer,
  droppedMessage,
} from './dropped-message.js';

/** What a call fails with when its upstream's answer is over the bound. */
export class UpstreamMessageTooLargeError extends Error {
  constructor(max: number, what: string) {
    super(`the upstream's ${what} was longer than ${max} bytes (maxMessageBytes) and was dropped`);
    this.name = 'UpstreamMessageTooLargeError';
  }
}

/**
 * A non-SSE body that errors past `max` bytes, counted as it is read (after `fetch` decoded any
 * `content-encoding`). Only for a body sent as it is (no `content-encoding`, or `identity`) does
 * `content-length` say what it holds: within the bound it needs no counting, past it the call
 * fails before a byte is read. A compressed body's length says nothing of what it inflates to
 * (16 KiB of gzip is 16 MiB of JSON), so it is always counted.
 */
export function boundedBody(
  response: Response,
  max: number,
): ReadableStream<Uint8Array> | Error | undefined {
  const body = response.body;
  if (!body) return undefined;
  const encoding = response.headers.get('content-encoding')?.trim().toLowerCase() ?? '';
  if (encoding === '' || encoding === 'identity') {
    const declared = Number(response.headers.get('content-length') ?? NaN);
    if (Number.isFinite(declared) && declared <= max) return undefined;
    if (Number.isFinite(declared)) return new UpstreamMessageTooLargeError(max, 'response body');
  }
  let total = 0;
  return body.pipeThrough(
    new TransformStream<Uint8Array, Uint8Array>({
      transform(chunk, controller) {
        total += chunk.byteLength;
        if (total > max) {
          controller.error(new UpstreamMessageTooLargeError(max, 'response body'));
          return;
        }
        controller.enqueue(chunk);
      },
    }),
  );
}

const CR = 0x0d;
const LF = 0x0a;

/**
 * An SSE body bounded per event: bytes since the last blank line (two line ends in a row: LF,
 * CR or CRLF each) may not pass `max`. Past it, the partial event is closed with `event:
 * fabric-dropped` (the SDK ignores events that are not `message`).
 *
 * Without `follow` (the stream answers a POST), each id of `requestIds` gets an error event, and
 * the stream ends; `onoverflow` is then called (abort the connection).
 *
 * With `follow` (a stream that carried no request: the legacy SSE transport's one stream, which
 * carries every answer, or a Streamable HTTP GET stream), the event is skipped to its end keeping
 * its start and its last bytes, which name it (dropped-message.ts): an answer is replaced by an
 * error answer to its call, and the stream goes on; a notification or request of the upstream's
 * is only reported (`follow` gets the report). The skipped event may run to any length (only its
 * start and last bytes are kept); one that names none of these, or has not ended `followMs`
 * after it passed the bound (no other event can arrive before its end), ends the stream as above.
 *
 * Finding the last boundary of a chunk uses the native `lastIndexOf`, one step per line end.
 */
export function boundedEventStream(
  body: ReadableStream<Uint8Array>,
  max: number,
  requestIds: () => readonly (string | number)[],
  onend: () => void,
  onoverflow: () => void,
  follow?: (report: string) => void,
  followMs = 60_000,
): ReadableStream<Uint8Array> {
  let since = 0;
  // The last two bytes of the previous chunk (0 when none), for a boundary split between chunks.
  let prev1 = 0;
  let prev2 = 0;
  let done = false;
  // With `follow`: the first bytes of the event being read (views of the chunks), and once it is
  // too long, the state of skipping it.
  let start: Uint8Array[] = [];
  let startLength = 0;
  let skipping = false;
  let head = '';
  let tail: Uint8Array = new Uint8Array(0);
  let timer: NodeJS.Timeout | undefined;
  const what = `upstream sent an event longer than ${max} bytes (maxMessageBytes); it was dropped`;

  const remember = (chunk: Uint8Array, from: number): void => {
    if (startLength >= DROPPED_HEAD_LENGTH || from >= chunk.byteLength) return;
    const piece = chunk.subarray(from, from + DROPPED_HEAD_LENGTH - startLength);
    start.push(piece);
    startLength += piece.byteLength;
  };
  const keepLast = (chunk: Uint8Array): void => {
    const n = chunk.byteLength;
    if (n >= 2) {
      prev2 = chunk[n - 2]!;
      prev1 = chunk[n - 1]!;
    } else if (n === 1) {
      prev2 = prev1;
      prev1 = chunk[0]!;
    }
  };
  const end = (controller: TransformStreamDefaultController<Uint8Array>, closing: string): void => {
    done = true;
    clearTimeout(timer);
    let text = closing;
    const message = new UpstreamMessageTooLargeError(max, 'event').message;
    for (const id of requestIds()) {
      const answer = { jsonrpc: '2.0', id, error: { code: -32603, message } };
      text += `event: message\ndata: ${JSON.stringify(answer)}\n\n`;
    }
    if (text !== '') controller.enqueue(new TextEncoder().encode(text));
    controller.terminate();
    onend();
    onoverflow();
  };

  /** A chunk (or the rest of one) read as events. */
  const pass = (chunk: Uint8Array, controller: TransformStreamDefaultController<Uint8Array>) => {
    const n = chunk.byteLength;
    const last = lastBoundary(chunk, prev1, prev2);
    since = last === -1 ? since + n : n - (last + 1);
    if (follow) {
      if (last !== -1) {
        start = [];
        startLength = 0;
      }
      remember(chunk, last + 1);
    }
    if (since <= max) {
      keepLast(chunk);
      controller.enqueue(chunk);
      return;
    }
    // What comes before the overflowing event is forwarded; the event itself is not (its
    // first bytes, forwarded with earlier chunks, are ended here with a type the SDK drops).
    let lastSent = prev1;
    if (last !== -1) {
      controller.enqueue(chunk.subarray(0, last + 1));
      lastSent = chunk[last]!;
    }
    const closing = `${isLineEnd(lastSent) ? '' : '\n'}event: fabric-dropped\n\n`;
    if (!follow) {
      end(controller, closing);
      return;
    }
    controller.enqueue(new TextEncoder().encode(closing));
    head = dataOf(new TextDecoder().decode(concatBytes(start)));
    start = [];
    startLength = 0;
    skipping = true;
    tail = new Uint8Array(0);
    const ms = Math.min(followMs, MAX_TIMER_MS);
    timer = setTimeout(() => {
      if (done || !skipping) return;
      try {
        end(controller, '');
      } catch {
        return; // the stream was closed meanwhile (its reader cancelled it): nothing to report
      }
      follow!(
        `${what}, and it did not end within ${ms} ms (callTimeoutSeconds); the stream is closed`,
      );
    }, ms);
    timer.unref();
    skip(chunk.subarray(last + 1));
  };

  /** Bytes of the dropped event: its last ones are kept. */
  const skip = (piece: Uint8Array): void => {
    tail = keepTail(tail, piece);
    keepLast(piece);
  };

  /** A chunk while an event too long is skipped. */
  const skipRest = (
    chunk: Uint8Array,
    controller: TransformStreamDefaultController<Uint8Array>,
  ) => {
    const b = firstBoundary(chunk, prev1, prev2);
    const upto = b === -1 ? chunk.byteLength : b + 1;
    skip(chunk.subarray(0, upto));
    if (b === -1) return;
    skipping = false;
    clearTimeout(timer);
    since = 0;
    const message = droppedMessage(head, new TextDecoder().decode(tail));
    if (message.kind === 'answer') {
      follow!(`${what}: the call it answered (id ${message.idText}) failed`);
      const answer = JSON.stringify(droppedAnswer(message.id, `${max} bytes`));
      controller.enqueue(new TextEncoder().encode(`event: message\ndata: ${answer}\n\n`));
    } else if (message.kind === 'request') {
      follow!(`${what} (a ${message.method} request, id ${message.idText}): left unanswered`);
    } else if (message.kind === 'notification') {
      follow!(`${what} (a ${message.method} message)`);
    } else {
      follow!(`${what}; the answer it held cannot be told, the stream is closed`);
      end(controller, '');
      return;
    }
    if (upto < chunk.byteLength) pass(chunk.subarray(upto), controller);
  };

  return body.pipeThrough(
    new TransformStream<Uint8Array, Uint8Array>({
      transform(chunk, controller) {
        if (done) return;
        if (skipping) skipRest(chunk, controller);
        else pass(chunk, controller);
      },
      flush() {
        clearTimeout(timer);
        if (!done) onend();
      },
    }),
  );
}

/** The value of the first `data:` field in the start of an event (its first line only). */
function dataOf(event: string): string {
  const m = /(?:^|\r\n|\r|\n)data: ?([^\r\n]*)/.exec(event);
  return m === null ? '' : m[1]!;
}

function concatBytes(pieces: readonly Uint8Array[]): Uint8Array {
  if (pieces.length === 1) return pieces[0]!;
  let n = 0;
  for (const p of pieces) n += p.byteLength;
  const out = new Uint8Array(n);
  let at = 0;
  for (const p of pieces) {
    out.set(p, at);
    at += p.byteLength;
  }
  return out;
}

/** The last {@link DROPPED_TAIL_LENGTH} bytes of `kept` then `piece` (a copy). */
function keepTail(kept: Uint8Array, piece: Uint8Array): Uint8Array {
  const n = DROPPED_TAIL_LENGTH;
  if (piece.byteLength >= n) return piece.slice(piece.byteLength - n);
  const joined = concatBytes([kept, piece]);
  return joined.byteLength > n ? joined.slice(joined.byteLength - n) : joined.slice();
}

function isLineEnd(b: number): boolean {
  return b === LF || b === CR;
}

/**
 * Index of the last byte of the last event boundary in `chunk` (a line end that directly
 * follows another line end), or -1. `prev1`/`prev2` are the bytes before the chunk. One step
 * per line end, each found by the native `lastIndexOf`.
 */
function lastBoundary(chunk: Uint8Array, prev1: number, prev2: number): number {
  const at = (i: number): number => (i >= 0 ? chunk[i]! : i === -1 ? prev1 : prev2);
  let lf = chunk.lastIndexOf(LF);
  let cr = chunk.lastIndexOf(CR);
  while (lf !== -1 || cr !== -1) {
    const i = Math.max(lf, cr);
    const before = at(i - 1);
    // CRLF is one line end: a boundary only when another line end comes before it.
    if (isLineEnd(before) && (!(before === CR && chunk[i] === LF) || isLineEnd(at(i - 2)))) {
      return i;
    }
    if (i === lf) lf = i === 0 ? -1 : chunk.lastIndexOf(LF, i - 1);
    else cr = i === 0 ? -1 : chunk.lastIndexOf(CR, i - 1);
  }
  return -1;
}

/**
 * Index of the last byte of the first event boundary in `chunk` (as {@link lastBoundary}; a
 * boundary ending in CR followed by LF ends after the LF), or -1.
 */
function firstBoundary(chunk: Uint8Array, prev1: number, prev2: number): number {
  const at = (i: number): number => (i >= 0 ? chunk[i]! : i === -1 ? prev1 : prev2);
  let lf = chunk.indexOf(LF);
  let cr = chunk.indexOf(CR);
  while (lf !== -1 || cr !== -1) {
    const i = lf === -1 ? cr : cr === -1 ? lf : Math.min(lf, cr);
    const before = at(i - 1);
    if (isLineEnd(before) && (!(before === CR && chunk[i] === LF) || isLineEnd(at(i - 2)))) {
      return chunk[i] === CR && chunk[i + 1] === LF ? i + 1 : i;
    }
    if (i === lf) lf = chunk.indexOf(LF, i + 1);
    else cr = chunk.indexOf(CR, i + 1);
  }
  return -1;
}

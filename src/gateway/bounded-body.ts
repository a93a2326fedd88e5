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
 * fabric-dropped` (the SDK ignores events that are not `message`), each id of `requestIds` gets
 * an error event, and the stream ends; `onoverflow` is then called (abort the connection).
 * Finding the last boundary of a chunk uses the native `lastIndexOf`, one step per line end.
 */
export function boundedEventStream(
  body: ReadableStream<Uint8Array>,
  max: number,
  requestIds: () => readonly (string | number)[],
  onend: () => void,
  onoverflow: () => void,
): ReadableStream<Uint8Array> {
  let since = 0;
  // The last two bytes of the previous chunk (0 when none), for a boundary split between chunks.
  let prev1 = 0;
  let prev2 = 0;
  let done = false;
  return body.pipeThrough(
    new TransformStream<Uint8Array, Uint8Array>({
      transform(chunk, controller) {
        if (done) return;
        const n = chunk.byteLength;
        const end = lastBoundary(chunk, prev1, prev2);
        since = end === -1 ? since + n : n - (end + 1);
        if (since <= max) {
          if (n >= 2) {
            prev2 = chunk[n - 2]!;
            prev1 = chunk[n - 1]!;
          } else if (n === 1) {
            prev2 = prev1;
            prev1 = chunk[0]!;
          }
          controller.enqueue(chunk);
          return;
        }
        done = true;
        // What comes before the overflowing event is forwarded; the event itself is not (its
        // first bytes, forwarded with earlier chunks, are ended here with a type the SDK drops).
        let lastSent = prev1;
        if (end !== -1) {
          controller.enqueue(chunk.subarray(0, end + 1));
          lastSent = chunk[end]!;
        }
        let tail = isLineEnd(lastSent) ? '' : '\n';
        tail += 'event: fabric-dropped\n\n';
        const message = new UpstreamMessageTooLargeError(max, 'event').message;
        for (const id of requestIds()) {
          const answer = { jsonrpc: '2.0', id, error: { code: -32603, message } };
          tail += `event: message\ndata: ${JSON.stringify(answer)}\n\n`;
        }
        controller.enqueue(new TextEncoder().encode(tail));
        controller.terminate();
        onend();
        onoverflow();
      },
      flush() {
        if (!done) onend();
      },
    }),
  );
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

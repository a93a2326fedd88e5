/**
 * Splits a stream of text chunks into lines (newline-delimited JSON-RPC).
 *
 * Only each new chunk is searched for a newline, and the pieces of a line that spans chunks
 * are joined once, when it ends: a 1 MB message arriving in 64 KB chunks is copied once, not
 * re-scanned and re-flattened on every chunk (which made large tool results quadratic).
 *
 * @module
 */

/** Line splitter with a bound on the length of one line. */
export class LineReader {
  readonly #online: (line: string) => void;
  readonly #maxLineLength: number;
  readonly #onoverflow: ((head: string) => void) | undefined;
  #parts: string[] = [];
  #length = 0;
  /** The line being read was already too long: drop it up to its newline. */
  #skipping = false;

  /**
   * @param online Called with each complete line, without its `\n` (or `\r\n`).
   * @param maxLineLength Longest line kept, in UTF-16 units; a longer one is dropped whole and
   *   `onoverflow` is called once for it, with the line's first piece as read (its start: at
   *   least what came in its first chunk, not the whole line). Memory stays bounded: a line
   *   found too long is not kept, the rest of it is skipped up to its newline as it arrives.
   */
  constructor(
    online: (line: string) => void,
    maxLineLength = Number.POSITIVE_INFINITY,
    onoverflow?: (head: string) => void,
  ) {
    this.#online = online;
    this.#maxLineLength = maxLineLength;
    this.#onoverflow = onoverflow;
  }

  /** Feeds a chunk; complete lines are delivered before this returns. */
  push(chunk: string): void {
    let start = 0;
    let newline = chunk.indexOf('\n');
    while (newline !== -1) {
      let line = chunk.slice(start, newline);
      if (this.#parts.length > 0) {
        this.#parts.push(line);
        line = this.#parts.join('');
      }
      const skipped = this.#skipping;
      this.reset();
      if (skipped) {
        // the rest of a line already reported as too long
      } else if (line.length > this.#maxLineLength) {
        this.#onoverflow?.(line);
      } else {
        // charCodeAt, not endsWith('\r'): the builtin call was a visible part of a short line.
        const end = line.length - 1;
        this.#online(end >= 0 && line.charCodeAt(end) === 0x0d ? line.slice(0, -1) : line);
      }
      start = newline + 1;
      newline = chunk.indexOf('\n', start);
    }
    if (start < chunk.length && !this.#skipping) {
      const rest = start === 0 ? chunk : chunk.slice(start);
      this.#length += rest.length;
      if (this.#length > this.#maxLineLength) {
        const head = this.#parts.length > 0 ? this.#parts[0]! : rest;
        this.reset();
        this.#skipping = true;
        this.#onoverflow?.(head);
        return;
      }
      this.#parts.push(rest);
    }
  }

  /** Drops a partial line. */
  reset(): void {
    if (this.#parts.length > 0) this.#parts = [];
    this.#length = 0;
    this.#skipping = false;
  }
}

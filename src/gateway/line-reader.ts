/**
 * Splits a stream of text chunks into lines (newline-delimited JSON-RPC).
 *
 * Only each new chunk is searched for a newline, and the pieces of a line that spans chunks
 * are joined once, when it ends: a 1 MB message arriving in 64 KB chunks is copied once, not
 * re-scanned and re-flattened on every chunk (which made large tool results quadratic).
 *
 * @module
 */

/**
 * Following a dropped line to its end: its last characters are kept (the members a message
 * ends with name it, e.g. the `id` the MCP SDK writes after `result`), and `onend` gets them
 * when its newline arrives, however long the line ran (only the kept characters are held).
 */
export interface OverflowTail {
  /** Characters kept from the end of a dropped line. */
  readonly tailLength: number;
  /**
   * Characters of a dropped line's start handed to `onoverflow`: at least this many when the
   * line has them, whatever its chunks (its first chunk may hold only a few characters of it:
   * a pipe read can end anywhere). Without it, its first piece as read.
   */
  readonly headLength?: number;
  readonly onend: (tail: string) => void;
}

/** Line splitter with a bound on the length of one line. */
export class LineReader {
  readonly #online: (line: string) => void;
  readonly #maxLineLength: number;
  readonly #onoverflow: ((head: string) => void) | undefined;
  readonly #tail: OverflowTail | undefined;
  #parts: string[] = [];
  #length = 0;
  /** The line being read was already too long: drop it up to its newline. */
  #skipping = false;
  /** While skipping with a {@link OverflowTail}: the line's last characters so far. */
  #kept: string | undefined;

  /**
   * @param online Called with each complete line, without its `\n` (or `\r\n`).
   * @param maxLineLength Longest line kept, in UTF-16 units; a longer one is dropped whole and
   *   `onoverflow` is called once for it, with the line's start (what came in its first chunk,
   *   and with `tail.headLength` at least that many characters; not the whole line when it
   *   spans chunks). Memory stays bounded: a line found too long is not kept, the rest of it is
   *   skipped up to its newline as it arrives.
   */
  constructor(
    online: (line: string) => void,
    maxLineLength = Number.POSITIVE_INFINITY,
    onoverflow?: (head: string) => void,
    tail?: OverflowTail,
  ) {
    this.#online = online;
    this.#maxLineLength = maxLineLength;
    this.#onoverflow = onoverflow;
    this.#tail = tail;
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
      if (this.#skipping) {
        // the rest of a line already reported as too long
        if (this.#kept !== undefined) this.#follow(line);
        const last = this.#kept;
        this.reset();
        if (last !== undefined) this.#tail!.onend(last);
      } else if (line.length > this.#maxLineLength) {
        this.reset();
        this.#onoverflow?.(line);
        const tail = this.#tail;
        if (tail) tail.onend(line.slice(-tail.tailLength));
      } else {
        this.reset();
        // charCodeAt, not endsWith('\r'): the builtin call was a visible part of a short line.
        const end = line.length - 1;
        this.#online(end >= 0 && line.charCodeAt(end) === 0x0d ? line.slice(0, -1) : line);
      }
      start = newline + 1;
      newline = chunk.indexOf('\n', start);
    }
    if (start >= chunk.length) return;
    const rest = start === 0 ? chunk : chunk.slice(start);
    if (this.#skipping) {
      if (this.#kept !== undefined) this.#follow(rest);
      return;
    }
    this.#length += rest.length;
    if (this.#length > this.#maxLineLength) {
      const head = firstChars(this.#parts, rest, this.#tail?.headLength ?? 0);
      const last = this.#tail ? lastChars(this.#parts, rest, this.#tail.tailLength) : undefined;
      this.reset();
      this.#skipping = true;
      this.#onoverflow?.(head);
      if (last !== undefined) this.#kept = last;
      return;
    }
    this.#parts.push(rest);
  }

  /** Another piece of a dropped line (no newline in it): keep the last `tailLength` characters. */
  #follow(piece: string): void {
    const n = this.#tail!.tailLength;
    this.#kept = piece.length >= n ? piece.slice(-n) : (this.#kept! + piece).slice(-n);
  }

  /** Drops a partial line. */
  reset(): void {
    if (this.#parts.length > 0) this.#parts = [];
    this.#length = 0;
    this.#skipping = false;
    this.#kept = undefined;
  }
}

/**
 * The start of `parts` joined and then `rest`: the first piece, and the next ones while fewer
 * than `n` characters are in (without joining all of them).
 */
function firstChars(parts: readonly string[], rest: string, n: number): string {
  let out = parts.length > 0 ? parts[0]! : rest;
  for (let i = 1; out.length < n && i <= parts.length; i++) {
    out += i < parts.length ? parts[i]! : rest;
  }
  return out;
}

/** The last `n` characters of `parts` joined and then `rest`, without joining all of them. */
function lastChars(parts: readonly string[], rest: string, n: number): string {
  let out = rest.length >= n ? rest.slice(-n) : rest;
  for (let i = parts.length - 1; i >= 0 && out.length < n; i--) {
    out = (parts[i]! + out).slice(-n);
  }
  return out;
}

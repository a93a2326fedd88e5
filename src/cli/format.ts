/**
 * Plain-text output of the CLI: aligned tables and short forms of protobuf values. Colourless,
 * and without control characters: much of what the CLI shows was chosen by agents (a task's
 * type and error, a hook's progress note, an approval's tool and parameters), and an agent must
 * not send escape sequences to the operator's terminal or forge rows with a line break. So
 * every table cell passes {@link printable}, and JSON output {@link printableJson}: C0 and C1
 * control characters, DEL, the bidirectional-text controls and the characters a terminal draws
 * as nothing (tag characters, the soft hyphen, zero-width ones: see `unprintable.ts`) come out as
 * `\xNN`/`\u{NNNN}` escapes (JSON: `\uNNNN`). Other Unicode text (names in any script) is
 * printed as it is. Each line written to stdout passes {@link terminalSafe} as well, and each
 * error line written to stderr {@link printable} (main.ts), whatever the command did.
 *
 * @module
 */
import { timestampDate, type Timestamp } from '@bufbuild/protobuf/wkt';
import { clip, printable, UNPRINTABLE_CLASS } from '../unprintable.js';

/** Table cells and error lines escape with the same function as the readable log. */
export { clip, printable };

/**
 * `c` as JSON's `\uhhhh` escapes (four hex digits): one for a character up to U+FFFF, its
 * surrogate pair past it (JSON has no other escape for those).
 */
function jsonEscape(c: string): string {
  let escaped = '';
  for (let i = 0; i < c.length; i++) {
    escaped += `\\u${c.charCodeAt(i).toString(16).padStart(4, '0')}`;
  }
  return escaped;
}

/**
 * The {@link UNPRINTABLE_CLASS} characters `JSON.stringify` leaves as they are: all but C0 (it
 * escapes those inside strings; outside them they are the line breaks of indented JSON).
 */
const UNPRINTABLE_IN_JSON = new RegExp(`(?![\\u0000-\\u001f])${UNPRINTABLE_CLASS}`, 'gu');

/**
 * `JSON.stringify` output with DEL, C1, the line separators and the default-ignorable characters
 * (bidirectional controls, tag characters, the soft hyphen …) `\u`-escaped too: the same JSON
 * value (they can only stand inside strings; C0 controls there are escaped already, and the line
 * breaks of indented JSON are left alone).
 */
export function printableJson(json: string): string {
  return json.replace(UNPRINTABLE_IN_JSON, jsonEscape);
}

/** {@link UNPRINTABLE_CLASS} but the line feed. */
const UNPRINTABLE_BUT_LF = new RegExp(`(?!\\n)${UNPRINTABLE_CLASS}`, 'gu');

/**
 * `text` with every {@link UNPRINTABLE_CLASS} character but the line feed `\u`-escaped (`\u001b`,
 * a tag character as its surrogate pair `\udb40\udc72`: the same escapes inside a JSON string).
 * Every line the CLI writes to stdout passes it: what a command forgot to make
 * {@link printable} (a field of a hostile sidecar's answer, a name in a config file under
 * `config check`) still cannot act on the terminal or hide in it.
 */
export function terminalSafe(text: string): string {
  return text.replace(UNPRINTABLE_BUT_LF, jsonEscape);
}

/**
 * Rows as aligned columns under `header`, every cell {@link printable}; `(none)` when there is
 * no row.
 */
export function table(header: readonly string[], rawRows: readonly (readonly string[])[]): string {
  if (rawRows.length === 0) return '(none)';
  const rows = rawRows.map((r) => r.map(printable));
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: readonly string[]): string =>
    cells
      .map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i] ?? 0)))
      .join('  ')
      .trimEnd();
  return [line(header), ...rows.map(line)].join('\n');
}

/** A timestamp as ISO-8601 UTC to the second, or `-` when unset. */
export function when(ts: Timestamp | undefined): string {
  if (ts === undefined) return '-';
  return timestampDate(ts)
    .toISOString()
    .replace(/\.\d{3}Z$/, 'Z');
}

/** The name of an enum value without its prefix (`AgentStatus[2]` → `HEALTHY`), `-` for 0. */
export function enumName(e: Record<number, string>, value: number): string {
  return value === 0 ? '-' : (e[value] ?? String(value));
}

/** `value` or `-` when empty. */
export function orDash(value: string | undefined): string {
  return value === undefined || value === '' ? '-' : value;
}

/** A number with at most two decimals (budget figures). */
export function num(n: number): string {
  return Number.isInteger(n) ? String(n) : n.toFixed(2);
}

/** A one-line JSON view of a value, cut to `max` characters. */
export function brief(value: unknown, max = 60): string {
  return clip(value === undefined ? '' : JSON.stringify(value), max);
}

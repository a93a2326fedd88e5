/**
 * Plain-text output of the CLI: aligned tables and short forms of protobuf values. Stays
 * ASCII-only and colourless so that `grep`/`awk` and logs see the same text as a terminal.
 *
 * @module
 */
import { timestampDate, type Timestamp } from '@bufbuild/protobuf/wkt';

/** Rows as aligned columns under `header`; `(none)` when there is no row. */
export function table(header: readonly string[], rows: readonly (readonly string[])[]): string {
  if (rows.length === 0) return '(none)';
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
  const text = value === undefined ? '' : JSON.stringify(value);
  return text.length > max ? `${text.slice(0, max - 3)}...` : text;
}

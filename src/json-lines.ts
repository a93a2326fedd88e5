/**
 * JSON text safe to write as one line of a JSON-lines file (the audit log, the sidecar's log).
 *
 * `JSON.stringify` escapes C0 controls but leaves U+2028 (LINE SEPARATOR) and U+2029 (PARAGRAPH
 * SEPARATOR) raw, which is valid JSON, yet Python's `str.splitlines()`, JavaScript's `^`/`$` in
 * multiline regexes and many log viewers break a line there: a tool name an agent made up with
 * one in it split its audit line in two, neither half JSON. Written as `\u2028`/`\u2029` escapes,
 * the same JSON value, every line splits right in any language.
 *
 * @module
 */

const SEPARATORS = /[\u2028\u2029]/g;

/** `json` (JSON text) with U+2028 and U+2029 written as `\u` escapes; `json` itself when it has none. */
export function lineSafeJson(json: string): string {
  return json.replace(SEPARATORS, (c) => (c === '\u2028' ? '\\u2028' : '\\u2029'));
}

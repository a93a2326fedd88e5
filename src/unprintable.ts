/**
 * The characters a terminal acts on rather than shows, or draws as nothing, in one place for
 * every output an agent's text reaches an operator through: the CLI's tables and JSON
 * (`cli/format.ts`), the readable log (`server/logger.ts`) and the hook store's commit messages
 * (read with `git log`); and {@link clip}, which cuts the CLI's cells and the trailers short.
 *
 * @module
 */

/**
 * A regex character class of them, for a regex with the `u` flag (it uses property escapes, and
 * a character past U+FFFF must match as one, not as two surrogate halves): the control
 * characters (C0 — line breaks, tabs and ESC included — DEL, C1: CSI, OSC, NEL …), the Unicode
 * line and paragraph separators, and every Default_Ignorable_Code_Point. The last set holds the
 * bidirectional controls that reorder what follows (U+061C, U+200E, U+200F, U+202A–U+202E,
 * U+2066–U+2069), the zero-width characters (U+200B–U+200D, U+2060–U+2064, U+FEFF) and the rest a
 * terminal or font shows nothing for: the soft hyphen, the Hangul fillers, variation selectors,
 * U+180E and the tag characters (U+E0000–U+E007F), which spell ASCII text nobody sees but a model
 * reads. The dashboard escapes the same set (`ui/lib/dom.js`), line feed and tab aside.
 */
export const UNPRINTABLE_CLASS = '[\\p{Cc}\\u2028\\u2029\\p{Default_Ignorable_Code_Point}]';

const UNPRINTABLE = new RegExp(UNPRINTABLE_CLASS, 'gu');

/**
 * `text` with every {@link UNPRINTABLE_CLASS} character escaped: `\x1b`, `\x0a`, `\u{202e}`,
 * `\u{e0072}` (one escape for a character past U+FFFF).
 */
export function printable(text: string): string {
  return text.replace(UNPRINTABLE, (c) => {
    const code = c.codePointAt(0)!;
    return code <= 0xff ? `\\x${code.toString(16).padStart(2, '0')}` : `\\u{${code.toString(16)}}`;
  });
}

/**
 * `text` cut to at most `max` UTF-16 units, `mark` included, when it is longer; the cut never
 * falls inside a surrogate pair (half of one would print as U+FFFD, or leave an escape's half).
 */
export function clip(text: string, max: number, mark = '...'): string {
  if (text.length <= max) return text;
  let end = max - mark.length;
  const last = text.charCodeAt(end - 1);
  if (last >= 0xd800 && last <= 0xdbff) end--;
  return `${text.slice(0, end)}${mark}`;
}

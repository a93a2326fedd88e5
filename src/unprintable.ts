/**
 * The characters a terminal acts on rather than shows, in one place for every output an agent's
 * text reaches an operator through: the CLI's tables and JSON (`cli/format.ts`) and the hook
 * store's commit messages (read with `git log`).
 *
 * @module
 */

/**
 * A regex character class of them: C0 controls (line breaks, tabs and ESC included), DEL, C1
 * controls (CSI, OSC, NEL …), the bidirectional controls that reorder what follows (U+061C,
 * U+200E, U+200F, U+202A–U+202E, U+2066–U+2069) and the Unicode line and paragraph separators.
 */
export const UNPRINTABLE_CLASS =
  '[\\u0000-\\u001f\\u007f-\\u009f\\u061c\\u200e\\u200f\\u2028-\\u202e\\u2066-\\u2069]';

/**
 * Small DOM helpers. Text is always set through `textContent`, never parsed as HTML, so data
 * from the fabric (agent names, tool arguments, reasons) cannot inject markup; and it goes
 * through {@link visible} first, so it cannot reorder or hide itself either.
 */

/**
 * Characters that act on the text around them instead of showing, or that a browser draws as
 * nothing: the control characters but line feed and tab (JSON's own line breaks) — C0, DEL, C1
 * — the line and paragraph separators, and every Default_Ignorable_Code_Point. The last set holds
 * the bidirectional controls (U+061C, U+200E, U+200F, U+202A–U+202E, U+2066–U+2069), the
 * zero-width ones (U+200B–U+200D, U+2060–U+2064, U+FEFF) and the rest a font shows no glyph for:
 * the soft hyphen, the Hangul fillers, variation selectors, U+180E, and the tag characters
 * (U+E0000–U+E007F), which spell ASCII text nobody sees but a model upstream reads.
 */
const HIDDEN = /(?![\n\t])[\p{Cc}\u2028\u2029\p{Default_Ignorable_Code_Point}]/gu;

/**
 * `text` with each character of {@link HIDDEN} written as its escape (hex digits) — `\uhhhh`,
 * or `\u{hhhhh}` past U+FFFF: an agent's right-to-left override shows as `\u202e` instead of
 * making what follows read backwards, and a tag character as `\u{e0072}` instead of nothing.
 */
export function visible(text) {
  return text.replace(HIDDEN, (c) => {
    const code = c.codePointAt(0);
    return code > 0xffff ? `\\u{${code.toString(16)}}` : `\\u${code.toString(16).padStart(4, '0')}`;
  });
}

/** A word: a run of characters without white space. */
const WORD = /\S+/g;
const ASCII_LETTER = /[A-Za-z]/;
const NOT_ASCII = /[\u0080-\u{10ffff}]+/gu;
const HAS_NOT_ASCII = /[\u0080-\u{10ffff}]/u;

/**
 * Letters of other scripts a reader takes for Latin ones: Cyrillic, Greek and Armenian letters
 * drawn as (or nearly as) a Latin letter, and the fullwidth Latin letters. A word whose letters are
 * all among them ("раураӏ", all Cyrillic) reads as a Latin word it is not.
 */
const LATIN_LOOKALIKE = 'аеорсухіјѕһӏԁԛԝүАВЕКМНОРСТХІЈЅҮӀҺԚԜΑΒΕΖΗΙΚΜΝΟΡΤΥΧονօցսհոＡ-Ｚａ-ｚ';
const LETTER = /\p{L}/u;
/** A word none of whose letters is one outside {@link LATIN_LOOKALIKE}. */
const ONLY_LOOKALIKE_LETTERS = new RegExp(`^(?:(?!\\p{L})\\S|[${LATIN_LOOKALIKE}])+$`, 'u');
const LOOKALIKE_LETTER = new RegExp(`^[${LATIN_LOOKALIKE}]$`, 'u');
const ASCII_LETTERS = /^[A-Za-z]+$/;

/**
 * Whether `word` (without ASCII letters) reads as a Latin word it is not: it has letters, and
 * each is one of {@link LATIN_LOOKALIKE} or a compatibility form of Latin letters (what NFKC
 * makes ASCII letters of: mathematical `𝐩𝐚𝐲𝐩𝐚𝐥`, circled `ⓟ`, ligatures `ﬁ`, `™` …).
 */
function readsAsLatin(word) {
  if (LETTER.test(word) && ONLY_LOOKALIKE_LETTERS.test(word)) return true;
  let latin = false;
  for (const c of word) {
    if (LOOKALIKE_LETTER.test(c) || ASCII_LETTERS.test(c.normalize('NFKC'))) latin = true;
    else if (LETTER.test(c)) return false; // a letter of another script, drawn as itself
  }
  return latin;
}

/** `U+0456` for `і`. */
export function codePoint(c) {
  return `U+${c.codePointAt(0).toString(16).toUpperCase().padStart(4, '0')}`;
}

/** Most runs {@link markLookalikes} marks in one text (an agent may send 256 KiB of them). */
export const MAX_MARKED = 100;

/**
 * `text` ({@link visible}) as nodes in which every run of characters outside ASCII that stands in
 * a word with ASCII letters is a `<mark class="lookalike">` titled with its code points: in
 * "https://gіthub.com" the Cyrillic і, which reads as the Latin i, is marked, so the operator
 * does not approve a call to another domain than the one they read. So is every such run of a
 * word without ASCII letters whose letters all read as Latin ones ({@link readsAsLatin}:
 * "раураӏ" in Cyrillic, "𝐩𝐚𝐲𝐩𝐚𝐥" in mathematical bold). A word with any other letter of another script ("Привет")
 * is not marked.
 * At most {@link MAX_MARKED} runs are marked (`more` tells there were others): the page must
 * not build hundreds of thousands of elements for one agent's arguments.
 * `found` lists the marked characters, each once.
 */
export function markLookalikes(text) {
  const shown = visible(text);
  const nodes = [];
  const found = new Set();
  let last = 0;
  let marked = 0;
  let more = false;
  words: for (const word of shown.matchAll(WORD)) {
    if (!HAS_NOT_ASCII.test(word[0])) continue;
    if (!ASCII_LETTER.test(word[0]) && !readsAsLatin(word[0])) continue;
    for (const run of word[0].matchAll(NOT_ASCII)) {
      if (marked === MAX_MARKED) {
        more = true;
        break words;
      }
      marked++;
      const at = word.index + run.index;
      if (at > last) nodes.push(shown.slice(last, at));
      const chars = [...run[0]];
      nodes.push(h('mark', { class: 'lookalike', title: chars.map(codePoint).join(' ') }, run[0]));
      for (const c of chars) found.add(c);
      last = at + run[0].length;
    }
  }
  if (last < shown.length) nodes.push(shown.slice(last));
  return { nodes, found: [...found], more };
}

/**
 * Creates an element: `h('td', { class: 'x', onclick: fn }, 'text', childElement)`.
 * Attributes starting with `on` are event listeners, `style` is an object of CSSOM properties;
 * `null`/`undefined`/`false` children are skipped.
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith('on') && typeof value === 'function') {
      el.addEventListener(key.slice(2), value);
    } else if (key === 'dataset') {
      Object.assign(el.dataset, value);
    } else if (key === 'style') {
      // Through the CSSOM: the Content-Security-Policy blocks inline `style` attributes.
      Object.assign(el.style, value);
    } else {
      el.setAttribute(key, value === true ? '' : String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : visible(String(child)));
  }
}

/** Replaces the children of `el`. */
export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
}

/** A table with a header row; `rows` are arrays of cells (text or nodes). */
export function table(headers, rows, empty = 'Nothing here yet.') {
  if (rows.length === 0) return h('p', { class: 'empty' }, empty);
  return h(
    'table',
    {},
    h(
      'thead',
      {},
      h(
        'tr',
        {},
        headers.map((t) => h('th', {}, t)),
      ),
    ),
    h(
      'tbody',
      {},
      rows.map((cells) =>
        h(
          'tr',
          { dataset: cells.dataset ?? {} },
          cells.map((c) => h('td', {}, c)),
        ),
      ),
    ),
  );
}

/**
 * A table whose rows are kept across updates: a row is rebuilt only when its item's `sig`
 * (signature) changed, and not while the user is typing into one of its fields, so what the user
 * typed (a reason, a pool size) or an armed button survive the periodic refresh. Times in rows are {@link since}/{@link until} spans that
 * {@link tickTimes} updates in place.
 */
export class KeyedTable {
  constructor(headers, empty = 'Nothing here yet.') {
    this.tbody = h('tbody');
    this.table = h(
      'table',
      {},
      h(
        'thead',
        {},
        h(
          'tr',
          {},
          headers.map((t) => h('th', {}, t)),
        ),
      ),
      this.tbody,
    );
    this.empty = h('p', { class: 'empty' }, empty);
    this.el = h('div', {}, this.empty);
    this.rows = new Map();
  }

  /**
   * `items`: `{ key, sig, dataset, cells: () => [...], times }` in display order. `sig` leaves out
   * the row's times: `times` (ISO strings) are written into the row's {@link since} spans, in
   * order, without rebuilding it.
   */
  update(items) {
    // Moving a row (or the table) out of the document and back takes the keyboard focus away
    // from what it holds (an armed button a keyboard user is about to confirm): given back below.
    const focused = document.activeElement;
    const keep = new Set();
    const ordered = items.map((item) => {
      keep.add(item.key);
      let row = this.rows.get(item.key);
      if (row === undefined || (row.sig !== item.sig && !editing(row.tr))) {
        const tr = h(
          'tr',
          { dataset: item.dataset ?? {} },
          item.cells().map((c) => h('td', {}, c)),
        );
        if (row !== undefined) row.tr.replaceWith(tr);
        row = { tr, sig: item.sig };
        this.rows.set(item.key, row);
      }
      if (item.times) {
        row.tr.querySelectorAll('span.time').forEach((el, i) => {
          if (item.times[i] !== undefined) el.dataset.at = item.times[i] ?? '';
        });
      }
      return row.tr;
    });
    for (const [key, row] of this.rows) {
      if (!keep.has(key)) {
        row.tr.remove();
        this.rows.delete(key);
      }
    }
    // Re-append in order (moving an element keeps its state).
    ordered.forEach((tr, i) => {
      if (this.tbody.children[i] !== tr)
        this.tbody.insertBefore(tr, this.tbody.children[i] ?? null);
    });
    const shown = items.length === 0 ? this.empty : this.table;
    if (this.el.childNodes.length !== 1 || this.el.firstChild !== shown) {
      this.el.replaceChildren(shown);
    }
    if (
      focused instanceof HTMLElement &&
      focused !== document.activeElement &&
      focused.isConnected &&
      this.el.contains(focused)
    ) {
      focused.focus({ preventScroll: true });
    }
  }
}

/**
 * A span showing how long ago `iso` was ("12s ago") or, for a future time, how long is left
 * ("4m 2s left"), kept current by {@link tickTimes}.
 */
export function since(iso) {
  return h('span', { class: 'time', 'data-at': iso ?? '' }, age(iso));
}

/** Updates every {@link since}/{@link until} span under `root`. */
export function tickTimes(root) {
  const now = Date.now();
  for (const el of root.querySelectorAll('span.time')) {
    el.textContent = age(el.dataset.at || undefined, now);
  }
}

/** A status badge; `kind` picks its colour (ok, warn, bad, muted). */
export function badge(text, kind = 'muted') {
  return h('span', { class: `badge ${kind}` }, text);
}

/** `ENUM_PREFIX_VALUE` → `VALUE`. */
export function enumName(value, prefix) {
  if (typeof value !== 'string') return '';
  return value.startsWith(prefix) ? value.slice(prefix.length) : value;
}

/** "12s", "4m", "3h", "2d" since (or, negative, until) an ISO time. */
export function age(iso, now = Date.now()) {
  if (!iso) return '—';
  const ms = now - Date.parse(iso);
  return duration(Math.abs(ms)) + (ms < 0 ? ' left' : ' ago');
}

/** A short human duration of `ms`. */
export function duration(ms) {
  const s = Math.floor(ms / 1000);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
}

/** A local time of day for an ISO time. */
export function clock(iso) {
  return iso ? new Date(iso).toLocaleTimeString() : '—';
}

/** A button that runs `action` and shows its error instead of throwing. */
export function button(label, action, attrs = {}) {
  const el = h('button', { type: 'button', ...attrs }, label);
  el.addEventListener('click', async () => {
    el.disabled = true;
    try {
      await action();
    } finally {
      el.disabled = false;
    }
  });
  return el;
}

/**
 * How long the armed button of {@link confirmButton} takes no click: the rest of a double or
 * triple click lands while it takes none instead of confirming.
 */
export const CONFIRM_DELAY_MS = 600;

/**
 * A button that asks once more before `action` runs: the first click arms it, a click of its own
 * runs it. Once armed it takes no click for {@link CONFIRM_DELAY_MS} (`aria-disabled`), so the
 * second and third click of one double or triple click (a habit, or a page that asked for one
 * and moved the dashboard under the pointer after the first) do not confirm, nor do the key
 * presses of a burst; it disarms 4 s after it can be clicked. Not `disabled`: a disabled button
 * loses the focus, and a keyboard user who armed it with Enter could no longer confirm it.
 */
export function confirmButton(label, action, attrs = {}) {
  let armed = false;
  let settling = false;
  let timer;
  const el = h('button', { type: 'button', ...attrs }, label);
  const disarm = () => {
    clearTimeout(timer);
    armed = false;
    el.textContent = label;
    el.classList.remove('armed');
  };
  el.addEventListener('click', async () => {
    if (settling) return;
    if (!armed) {
      armed = true;
      el.textContent = `Confirm ${label.toLowerCase()}`;
      el.classList.add('armed');
      settling = true;
      el.setAttribute('aria-disabled', 'true');
      timer = setTimeout(() => {
        settling = false;
        el.removeAttribute('aria-disabled');
        timer = setTimeout(disarm, 4000);
      }, CONFIRM_DELAY_MS);
      return;
    }
    disarm();
    el.disabled = true;
    try {
      await action();
    } finally {
      el.disabled = false;
    }
  });
  return el;
}

/**
 * True while the user types into (or picks in) a field of `tr`, or a button of it is armed
 * ({@link confirmButton}): it is not rebuilt then — a rebuild would put an unarmed button in
 * place of the armed one (and take the keyboard focus away), e.g. when the agent's name became
 * known while the operator confirmed.
 */
function editing(tr) {
  const active = document.activeElement;
  return (
    (active !== null &&
      ['INPUT', 'SELECT', 'TEXTAREA'].includes(active.tagName) &&
      tr.contains(active)) ||
    tr.querySelector('button.armed') !== null
  );
}

/**
 * Globs for tool names and parameter values: one dialect everywhere, compiled once.
 *
 * | syntax      | matches                                                         |
 * | ----------- | --------------------------------------------------------------- |
 * | `*`, `**`   | any run of characters, **including `/`** (and the empty run)    |
 * | `?`         | exactly one character                                           |
 * | `[abc]`     | one of the listed characters; ranges `[a-z]`; `[!a]`/`[^a]` negate |
 * | `{a,b}`     | either alternative (alternatives may nest and contain globs)    |
 * | `\x`        | the character `x` literally                                     |
 *
 * `*` crossing `/` is deliberate: a rule on `/etc/*` covers the whole tree under `/etc`
 * (`/etc/ssh/sshd_config` too), so a deny on a directory cannot be sidestepped by going one level
 * deeper. `**` is accepted as a synonym so patterns written for gitignore-style globs still work.
 * Matching is case-sensitive and anchored (the whole value must match).
 *
 * @module
 */
import { LRUCache } from 'lru-cache';

/** A compiled glob. */
export interface GlobMatcher {
  /** The pattern as written. */
  readonly pattern: string;
  /** True when the pattern has no wildcards (it matches only itself). */
  readonly literal: boolean;
  /** True when `value` matches the whole pattern. */
  test(value: string): boolean;
  /**
   * True when some value that starts with `prefix` matches (`/srv/a/` for `/srv/a/b/**`, and
   * for `/srv/**`, `**` + `/b/**`): what a rule on a path could match below a folder.
   */
  matchesSomeWith(prefix: string): boolean;
}

/** Thrown by {@link compileGlob} for a malformed pattern. */
export class GlobSyntaxError extends Error {
  constructor(pattern: string, message: string) {
    super(`invalid glob ${JSON.stringify(pattern)}: ${message}`);
    this.name = 'GlobSyntaxError';
  }
}

const SPECIAL = /[*?[\]{}\\]/;

/** True when `pattern` contains glob syntax (so it is not a plain literal). */
export function hasGlobSyntax(pattern: string): boolean {
  return SPECIAL.test(pattern);
}

// Patterns repeat across policies (`fs__*`, `/etc/*`); compile each once per process.
const cache = new LRUCache<string, GlobMatcher>({ max: 4096 });

/**
 * Compiles `pattern` (see the module docs for the syntax).
 *
 * @example
 * compileGlob('/etc/*').test('/etc/ssh/sshd_config'); // true
 * compileGlob('fs__{read,write}_file').test('fs__read_file'); // true
 * @throws GlobSyntaxError for an empty pattern, an unclosed `[` or `{`, an unmatched `}`,
 *   an empty `[]` or a trailing `\`.
 */
export function compileGlob(pattern: string): GlobMatcher {
  const hit = cache.get(pattern);
  if (hit !== undefined) return hit;
  const matcher = build(pattern);
  cache.set(pattern, matcher);
  return matcher;
}

function build(pattern: string): GlobMatcher {
  if (pattern.length === 0) throw new GlobSyntaxError(pattern, 'is empty');
  if (!hasGlobSyntax(pattern)) return literalMatcher(pattern, pattern);
  const prefix = /^([^*?[\]{}\\]*)\*+$/.exec(pattern)?.[1];
  if (prefix !== undefined) {
    // `fs__*`, `/etc/*`: the common shape, a prefix test.
    return Object.freeze({
      pattern,
      literal: false,
      test: (v: string) => v.startsWith(prefix),
      matchesSomeWith: (p: string) => p.startsWith(prefix) || prefix.startsWith(p),
    });
  }
  const { seq, literal } = parse(pattern);
  // Only escapes: still a literal.
  if (literal !== undefined) return literalMatcher(pattern, literal);
  const test = compileSeq(seq);
  let nfa: Nfa | undefined;
  return Object.freeze({
    pattern,
    literal: false,
    test,
    // Rarely asked (a folder's path against a deny rule): the NFA is built on first use.
    matchesSomeWith: (p: string) => liveAfter((nfa ??= buildNfa(seq)), p),
  });
}

function literalMatcher(pattern: string, literal: string): GlobMatcher {
  return Object.freeze({
    pattern,
    literal: true,
    test: (v: string) => v === literal,
    matchesSomeWith: (p: string) => literal.startsWith(p),
  });
}

/**
 * Escapes `value` so that, pasted into a glob, it matches only itself: every glob
 * metacharacter (`*`, `?`, `[`, `]`, `{`, `}`, `,` and `\`) gets a `\` in front.
 *
 * @example
 * compileGlob(`${escapeGlob('/srv/app{v2}')}/protected/**`).test('/srv/app{v2}/protected/x'); // true
 */
export function escapeGlob(value: string): string {
  return value.replace(/[*?[\]{}\\,]/g, '\\$&');
}

// Matching is linear in the value (no backtracking RegExp): a brace-free pattern is a run of
// `*`-separated segments of one-character matchers, matched left to right with each middle
// segment at its leftmost position (O(value × pattern) at worst, `indexOf` for literal
// segments); braces are expanded into such patterns (up to MAX_EXPANSIONS of them), beyond that
// a Thompson NFA is simulated over the value (also O(value × pattern)). Characters are UTF-16
// code units, as the RegExp (no `u` flag) this replaced matched them.

/** One character: a literal code unit, any (`?`), or a class. */
type CharTest =
  | { readonly kind: 'lit'; readonly code: number }
  | { readonly kind: 'any' }
  | { readonly kind: 'class'; readonly negate: boolean; readonly ranges: readonly number[] };
type Node =
  CharTest | { readonly kind: 'star' } | { readonly kind: 'alt'; readonly alts: readonly Node[][] };

/** Brace-expanded patterns matched one by one at most; more use the NFA. */
const MAX_EXPANSIONS = 64;

/** The parsed pattern, and its text when it is a literal written with escapes. */
function parse(pattern: string): { seq: Node[]; literal: string | undefined } {
  const top: Node[] = [];
  // Open braces: the alternatives so far, each a sequence; `cur` is the one being filled.
  const stack: { alts: Node[][]; outer: Node[] }[] = [];
  let cur = top;
  let literal = '';
  let onlyLiteral = true;
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i]!;
    switch (c) {
      case '\\': {
        const next = pattern[i + 1];
        if (next === undefined) throw new GlobSyntaxError(pattern, 'ends with an escape (\\)');
        cur.push({ kind: 'lit', code: pattern.charCodeAt(i + 1) });
        literal += next;
        i++;
        break;
      }
      case '*':
        while (pattern[i + 1] === '*') i++;
        cur.push({ kind: 'star' });
        onlyLiteral = false;
        break;
      case '?':
        cur.push({ kind: 'any' });
        onlyLiteral = false;
        break;
      case '[': {
        const end = pattern.indexOf(']', i + 2);
        if (end === -1) throw new GlobSyntaxError(pattern, `unclosed [ at ${i}`);
        let body = pattern.slice(i + 1, end);
        let negate = false;
        if (body.startsWith('!') || body.startsWith('^')) {
          negate = true;
          body = body.slice(1);
        }
        if (body.length === 0) throw new GlobSyntaxError(pattern, `empty [] at ${i}`);
        cur.push({ kind: 'class', negate, ranges: classRanges(pattern, body, i) });
        i = end;
        onlyLiteral = false;
        break;
      }
      case ']':
        throw new GlobSyntaxError(pattern, `unmatched ] at ${i}`);
      case '{': {
        const alt: Node[] = [];
        stack.push({ alts: [alt], outer: cur });
        cur = alt;
        onlyLiteral = false;
        break;
      }
      case '}': {
        const open = stack.pop();
        if (open === undefined) throw new GlobSyntaxError(pattern, `unmatched } at ${i}`);
        open.outer.push({ kind: 'alt', alts: open.alts });
        cur = open.outer;
        break;
      }
      case ',':
        if (stack.length > 0) {
          const alt: Node[] = [];
          stack[stack.length - 1]!.alts.push(alt);
          cur = alt;
        } else {
          cur.push({ kind: 'lit', code: 44 });
        }
        literal += ',';
        break;
      default:
        cur.push({ kind: 'lit', code: pattern.charCodeAt(i) });
        literal += c;
    }
  }
  if (stack.length > 0) throw new GlobSyntaxError(pattern, 'unclosed {');
  return { seq: top, literal: onlyLiteral ? literal : undefined };
}

/**
 * A class body as `[lo, hi, lo, hi…]` code-unit ranges, read like the RegExp class it used to
 * be compiled into: `a-z` a range, a `-` first or last (or right after a range) literal.
 */
function classRanges(pattern: string, body: string, at: number): number[] {
  const ranges: number[] = [];
  for (let j = 0; j < body.length; j++) {
    const lo = body.charCodeAt(j);
    if (body[j + 1] === '-' && j + 2 < body.length) {
      const hi = body.charCodeAt(j + 2);
      if (hi < lo) throw new GlobSyntaxError(pattern, `range out of order in [] at ${at}`);
      ranges.push(lo, hi);
      j += 2;
    } else {
      ranges.push(lo, lo);
    }
  }
  return ranges;
}

function charMatches(t: CharTest, code: number): boolean {
  if (t.kind === 'lit') return t.code === code;
  if (t.kind === 'any') return true;
  const r = t.ranges;
  let inside = false;
  for (let k = 0; k < r.length; k += 2) {
    if (code >= r[k]! && code <= r[k + 1]!) {
      inside = true;
      break;
    }
  }
  return inside !== t.negate;
}

/** The brace-free patterns `seq` stands for, or `undefined` when more than `max`. */
function expand(seq: readonly Node[], max: number): CharOrStar[][] | undefined {
  let out: CharOrStar[][] = [[]];
  for (const node of seq) {
    if (node.kind !== 'alt') {
      for (const o of out) o.push(node);
      continue;
    }
    const options: CharOrStar[][] = [];
    for (const alt of node.alts) {
      const e = expand(alt, max);
      if (e === undefined) return undefined;
      options.push(...e);
      if (options.length > max) return undefined;
    }
    if (out.length * options.length > max) return undefined;
    const next: CharOrStar[][] = [];
    for (const o of out) for (const opt of options) next.push([...o, ...opt]);
    out = next;
  }
  return out;
}

type CharOrStar = CharTest | { readonly kind: 'star' };

function compileSeq(seq: readonly Node[]): (value: string) => boolean {
  const expanded = expand(seq, MAX_EXPANSIONS);
  if (expanded === undefined) return compileNfa(seq);
  const tests = expanded.map(compileStars);
  if (tests.length === 1) return tests[0]!;
  return (v) => {
    for (let i = 0; i < tests.length; i++) if (tests[i]!(v)) return true;
    return false;
  };
}

/** A segment between stars: its one-character tests, and its text when all are literal. */
interface Segment {
  readonly chars: readonly CharTest[];
  readonly text: string | undefined;
}

function segmentOf(chars: CharTest[]): Segment {
  const literal = chars.every((c) => c.kind === 'lit');
  return {
    chars,
    text: literal
      ? String.fromCharCode(...chars.map((c) => (c as { code: number }).code))
      : undefined,
  };
}

/** A matcher for a brace-free pattern, linear in the value for each segment. */
function compileStars(items: readonly CharOrStar[]): (value: string) => boolean {
  const segments: Segment[] = [];
  let chars: CharTest[] = [];
  let stars = 0;
  for (const it of items) {
    if (it.kind === 'star') {
      segments.push(segmentOf(chars));
      chars = [];
      stars++;
    } else {
      chars.push(it);
    }
  }
  segments.push(segmentOf(chars));
  const first = segments[0]!;
  if (stars === 0) {
    return (v) => v.length === first.chars.length && matchAt(first, v, 0);
  }
  const last = segments[segments.length - 1]!;
  const middle = segments.slice(1, -1).filter((s) => s.chars.length > 0);
  const fixed = first.chars.length + last.chars.length;
  return (v) => {
    if (v.length < fixed) return false;
    if (!matchAt(first, v, 0)) return false;
    const end = v.length - last.chars.length;
    if (!matchAt(last, v, end)) return false;
    let pos = first.chars.length;
    for (let s = 0; s < middle.length; s++) {
      const seg = middle[s]!;
      const at = find(seg, v, pos, end);
      if (at === -1) return false;
      pos = at + seg.chars.length;
    }
    return true;
  };
}

function matchAt(seg: Segment, v: string, at: number): boolean {
  if (seg.text !== undefined) return v.startsWith(seg.text, at);
  const chars = seg.chars;
  for (let k = 0; k < chars.length; k++) {
    if (!charMatches(chars[k]!, v.charCodeAt(at + k))) return false;
  }
  return true;
}

/** The leftmost `i` in `[from, end - length]` where `seg` matches, or -1. */
function find(seg: Segment, v: string, from: number, end: number): number {
  const last = end - seg.chars.length;
  if (seg.text !== undefined) {
    const i = v.indexOf(seg.text, from);
    return i !== -1 && i <= last ? i : -1;
  }
  for (let i = from; i <= last; i++) if (matchAt(seg, v, i)) return i;
  return -1;
}

/** NFA state: a one-character test, or epsilon edges (`char` undefined). */
interface State {
  char: CharTest | undefined;
  out: number[];
}

/** A Thompson NFA: its states, the start and the accepting state. */
interface Nfa {
  readonly states: readonly State[];
  readonly start: number;
  readonly accept: number;
}

/** A Thompson NFA over `seq`. */
function buildNfa(seq: readonly Node[]): Nfa {
  const states: State[] = [];
  const add = (char: CharTest | undefined): number => states.push({ char, out: [] }) - 1;
  // Builds `nodes` from state `from`; returns the state reached at their end.
  const build = (nodes: readonly Node[], from: number): number => {
    let at = from;
    for (const node of nodes) {
      if (node.kind === 'star') {
        const loop = add(undefined);
        const any = add({ kind: 'any' });
        states[at]!.out.push(loop);
        states[loop]!.out.push(any);
        states[any]!.out.push(loop);
        at = loop;
      } else if (node.kind === 'alt') {
        const join = add(undefined);
        for (const alt of node.alts) {
          const start = add(undefined);
          states[at]!.out.push(start);
          states[build(alt, start)]!.out.push(join);
        }
        at = join;
      } else {
        const s = add(node);
        const after = add(undefined);
        states[at]!.out.push(s);
        states[s]!.out.push(after);
        at = after;
      }
    }
    return at;
  };
  const start = add(undefined);
  const accept = build(seq, start);
  return { states, start, accept };
}

/**
 * Simulates `nfa` over `v` with a state set (O(value × pattern), no backtracking): the states
 * alive after it, and the step marks (`mark[accept] === v.length` when accept is among them).
 */
function simulate(nfa: Nfa, v: string): { current: number[]; mark: Int32Array } {
  const { states, start } = nfa;
  const mark = new Int32Array(states.length).fill(-1);
  let current: number[] = [];
  let next: number[] = [];
  // Adds `s` and its epsilon closure to `list` for step `gen`.
  const close = (s: number, gen: number, list: number[]): void => {
    const frontier = [s];
    while (frontier.length > 0) {
      const x = frontier.pop()!;
      if (mark[x] === gen) continue;
      mark[x] = gen;
      list.push(x);
      if (states[x]!.char === undefined) for (const o of states[x]!.out) frontier.push(o);
    }
  };
  close(start, 0, current);
  for (let i = 0; i < v.length && current.length > 0; i++) {
    const code = v.charCodeAt(i);
    next.length = 0;
    for (const x of current) {
      const c = states[x]!.char;
      if (c !== undefined && charMatches(c, code)) close(states[x]!.out[0]!, i + 1, next);
    }
    [current, next] = [next, current];
  }
  return { current, mark };
}

/**
 * True when some value starting with `prefix` matches: a state is still alive after it (every
 * state of a glob's NFA reaches the accepting one; a class no character meets is not worth
 * telling apart — the answer is then a conservative yes).
 */
function liveAfter(nfa: Nfa, prefix: string): boolean {
  return simulate(nfa, prefix).current.length > 0;
}

/** A matcher simulating the NFA of `seq` (braces with too many expansions). */
function compileNfa(seq: readonly Node[]): (value: string) => boolean {
  const nfa = buildNfa(seq);
  return (v) => {
    const { current, mark } = simulate(nfa, v);
    return mark[nfa.accept] === v.length && current.includes(nfa.accept);
  };
}

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
  if (!hasGlobSyntax(pattern)) {
    return Object.freeze({ pattern, literal: true, test: (v: string) => v === pattern });
  }
  const prefix = /^([^*?[\]{}\\]*)\*+$/.exec(pattern)?.[1];
  if (prefix !== undefined) {
    // `fs__*`, `/etc/*`: the common shape, a prefix test.
    return Object.freeze({ pattern, literal: false, test: (v: string) => v.startsWith(prefix) });
  }
  let re = '';
  let literal = '';
  let braces = 0;
  let onlyLiteral = true;
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i]!;
    switch (c) {
      case '\\': {
        const next = pattern[i + 1];
        if (next === undefined) throw new GlobSyntaxError(pattern, 'ends with an escape (\\)');
        re += escapeRe(next);
        literal += next;
        i++;
        break;
      }
      case '*':
        while (pattern[i + 1] === '*') i++;
        re += '.*';
        onlyLiteral = false;
        break;
      case '?':
        re += '.';
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
        re += `[${negate ? '^' : ''}${body.replace(/[\\\]^]/g, '\\$&')}]`;
        i = end;
        onlyLiteral = false;
        break;
      }
      case ']':
        throw new GlobSyntaxError(pattern, `unmatched ] at ${i}`);
      case '{':
        braces++;
        re += '(?:';
        onlyLiteral = false;
        break;
      case '}':
        if (braces === 0) throw new GlobSyntaxError(pattern, `unmatched } at ${i}`);
        braces--;
        re += ')';
        break;
      case ',':
        re += braces > 0 ? '|' : ',';
        literal += ',';
        break;
      default:
        re += escapeRe(c);
        literal += c;
    }
  }
  if (braces > 0) throw new GlobSyntaxError(pattern, 'unclosed {');
  if (onlyLiteral) {
    // Only escapes: still a literal.
    return Object.freeze({ pattern, literal: true, test: (v: string) => v === literal });
  }
  const regex = new RegExp(`^${re}$`, 's');
  return Object.freeze({ pattern, literal: false, test: (v: string) => regex.test(v) });
}

function escapeRe(c: string): string {
  return c.replace(/[.*+?^${}()|[\]\\/-]/g, '\\$&');
}

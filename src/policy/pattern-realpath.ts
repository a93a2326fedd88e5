/**
 * Rule patterns resolved on disk the way the gateway resolves a call's paths
 * (`gateway/path-resolver.ts`): the gateway matches rules against the *real* path a call will
 * touch, so a rule's pattern must name real paths too, or a symlink anywhere in its leading
 * directories (`.fabric` linked to a data volume, `protected/` itself a link) makes it never
 * match. Done once, when a rule is compiled (policies added, replaced or reloaded), synchronously.
 *
 * @module
 */
import { lstatSync, readlinkSync, realpathSync } from 'node:fs';
import { posix } from 'node:path';
import { escapeGlob } from './glob.js';

/** Most symlinks followed while resolving one pattern (as the resolver). */
const MAX_HOPS = 40;

const META = '*?[]{}';

/**
 * `pattern` (an absolute glob, or an absolute literal when `glob` is false) with its leading
 * directories resolved on disk: for a glob, the longest prefix before the first glob
 * metacharacter, cut back to its last `/`; for a literal, the whole path. The prefix is
 * realpath'd as far as it exists (the rest appended; a dangling symlink followed to what it
 * would create), the result NFC-normalized and, for a glob, escaped and followed by the
 * pattern's unchanged glob tail. Anything that is not absolute, or whose resolution fails
 * with an error other than "does not exist", is returned unchanged.
 *
 * @example
 * // with /srv/data -> /mnt/vol/data
 * resolvePatternPath('/srv/data/protected/**', true); // '/mnt/vol/data/protected/**'
 */
export function resolvePatternPath(pattern: string, glob: boolean): string {
  if (!pattern.startsWith('/')) return pattern;
  if (!glob) {
    const real = realAsFarAsExists(posix.resolve(pattern));
    return real === undefined ? pattern : real.normalize('NFC');
  }
  // The literal text before the first metacharacter (escapes undone), and where its last `/` is.
  let literal = '';
  let slashInPattern = -1;
  let slashInLiteral = -1;
  let i = 0;
  for (; i < pattern.length; i++) {
    const c = pattern[i]!;
    if (c === '\\') {
      if (i + 1 >= pattern.length) return pattern;
      literal += pattern[++i]!;
      continue;
    }
    if (META.includes(c)) break;
    if (c === '/') {
      slashInPattern = i;
      slashInLiteral = literal.length;
    }
    literal += c;
  }
  if (i === pattern.length) {
    // Only escapes: a literal, re-escaped.
    const real = realAsFarAsExists(posix.resolve(literal));
    return real === undefined ? pattern : escapeGlob(real.normalize('NFC'));
  }
  const dir = literal.slice(0, slashInLiteral);
  if (dir === '') return pattern; // `/*`, `/etc*`: nothing to resolve
  const real = realAsFarAsExists(posix.resolve(dir));
  if (real === undefined) return pattern;
  const tail = pattern.slice(slashInPattern);
  return real === '/' ? tail : `${escapeGlob(real.normalize('NFC'))}${tail}`;
}

/**
 * The real path of absolute `path` as far as it exists, the missing rest appended; a dangling
 * symlink is followed. `undefined` on any other error or too many symlinks.
 */
function realAsFarAsExists(path: string): string | undefined {
  let p = path;
  for (let hops = 0; hops <= MAX_HOPS; hops++) {
    const whole = realOrMissing(p);
    if (whole !== null) return whole;
    const parts = p.split('/').filter((s) => s !== '');
    let n = parts.length - 1;
    let real: string | null | undefined = null;
    for (; n >= 0; n--) {
      real = realOrMissing(`/${parts.slice(0, n).join('/')}`);
      if (real !== null) break;
    }
    if (typeof real !== 'string') return undefined;
    const entry = posix.join(real, parts[n]!);
    const rest = parts.slice(n + 1);
    let link: string | undefined;
    try {
      if (lstatSync(entry).isSymbolicLink()) link = readlinkSync(entry);
    } catch (error) {
      if ((error as { code?: unknown }).code === 'ENOENT') return posix.join(entry, ...rest);
      return undefined;
    }
    if (link === undefined) return posix.join(entry, ...rest);
    p = posix.resolve(real, link, ...rest);
  }
  return undefined;
}

/** The real path; `null` when it does not exist; `undefined` on another error. */
function realOrMissing(path: string): string | null | undefined {
  try {
    return realpathSync.native(path);
  } catch (error) {
    return (error as { code?: unknown }).code === 'ENOENT' ? null : undefined;
  }
}

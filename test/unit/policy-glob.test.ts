import { describe, expect, it } from 'vitest';
import { looksLikePath, normalizePath } from '../../src/policy/conditions.js';
import { compileGlob, GlobSyntaxError, hasGlobSyntax } from '../../src/policy/glob.js';

describe('compileGlob', () => {
  it.each([
    ['file_*', 'file_write', true],
    ['file_*', 'file_', true],
    ['file_*', 'xfile_write', false],
    ['fs__*', 'fs__read_file', true],
    ['/etc/*', '/etc/ssh/sshd_config', true],
    ['/etc/**', '/etc/ssh/sshd_config', true],
    ['/etc/*.conf', '/etc/a/b.conf', true],
    ['/etc/*.conf', '/etc/a/b.cfg', false],
    ['tool_?', 'tool_1', true],
    ['tool_?', 'tool_12', false],
    ['tool_[0-9]', 'tool_7', true],
    ['tool_[!0-9]', 'tool_7', false],
    ['tool_[^0-9]', 'tool_x', true],
    ['fs__{read,write}_file', 'fs__write_file', true],
    ['fs__{read,write}_file', 'fs__delete_file', false],
    ['{a,b{c,d}}', 'bd', true],
    ['a\\*b', 'a*b', true],
    ['a\\*b', 'axb', false],
    ['a.b', 'axb', false],
    ['a,b', 'a,b', true],
    ['x(y)+', 'x(y)+', true],
    ['*', '', true],
    ['a*', 'a\nb', true],
  ])('%s ~ %j → %s', (pattern, value, expected) => {
    expect(compileGlob(pattern).test(value)).toBe(expected);
  });

  it('marks literals', () => {
    expect(compileGlob('execute_code').literal).toBe(true);
    expect(compileGlob('a\\*').literal).toBe(true);
    expect(compileGlob('a*').literal).toBe(false);
    expect(hasGlobSyntax('a-b_c.d')).toBe(false);
  });

  it.each(['', 'a[', 'a[]', 'a]', '{a,b', 'a}', 'a\\'])('rejects %j', (pattern) => {
    expect(() => compileGlob(pattern)).toThrow(GlobSyntaxError);
  });
});

describe('normalizePath / looksLikePath', () => {
  it.each([
    ['/etc/../etc/passwd', '/etc/passwd'],
    ['//etc//passwd', '/etc/passwd'],
    ['/etc/./passwd', '/etc/passwd'],
    ['/tmp/../etc/passwd', '/etc/passwd'],
    ['/../etc', '/etc'],
    ['/etc/', '/etc'],
    ['/', '/'],
    ['a/b/../c', 'a/c'],
    ['../x', '../x'],
    ['', ''],
    ['~/x/./y', '~/x/y'],
  ])('%j → %j', (input, expected) => {
    expect(normalizePath(input)).toBe(expected);
  });

  it('recognizes path-like values', () => {
    expect(['/a', '~', '~/a', './a', '../a', '.', '..'].every(looksLikePath)).toBe(true);
    expect(['a/b', 'https://x', 'abc', ''].some(looksLikePath)).toBe(false);
  });
});

describe('GlobMatcher.matchesSomeWith (could a rule match a path below a folder)', () => {
  it.each([
    // literal, escaped literal, prefix shape, general shape, braces past the expansion limit
    ['/s/a/protected', '/s/a/', true],
    ['/s/a/protected', '/s/b/', false],
    ['/s/a\\*/protected', '/s/a*/', true],
    ['/s/a/protected/**', '/s/', true],
    ['/s/a/protected/**', '/s/a/protected/x/', true],
    ['/s/a/protected/**', '/s/b/', false],
    ['/s/a/protected/**', '/s/a/prot/', false],
    ['/s/*.key', '/s/deep/', true],
    ['/s/x/*.key', '/s/y/', false],
    ['**/secrets/**', '/anything/', true],
    ['/s/{a,b}/p/**', '/s/b/', true],
    ['/s/{a,b}/p/**', '/s/c/', false],
    ['/s/[ab]/p/**', '/s/c/', false],
    ['/s/[ab]/p/**', '/s/a/', true],
    [`/s/${'{a,b}'.repeat(8)}/p`, '/s/abab', true],
    [`/s/${'{a,b}'.repeat(8)}/p`, '/s/ab/', false],
    [`/s/${'{a,b}'.repeat(8)}/p`, '/s/c/', false],
  ])('%s below %s → %s', (pattern, prefix, expected) => {
    expect(compileGlob(pattern).matchesSomeWith(prefix)).toBe(expected);
  });
});

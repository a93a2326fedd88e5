import { linkSync, mkdirSync, realpathSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  MAX_DISK_LOOKUPS_PER_CALL,
  MAX_PATH_LENGTH,
  MAX_PATH_WALK_DEPTH,
  MAX_PATH_WALK_NODES,
  MAX_PATHS_PER_CALL,
  MAX_SYMLINK_HOPS,
  PathResolver,
  pathResolutionOf,
  unresolvedPathsIn,
} from '../../src/gateway/path-resolver.js';
import { upstreamSpecSchema } from '../../src/gateway/upstream-config.js';
import { compileConditions } from '../../src/policy/conditions.js';
import {
  holdsUnresolved,
  isUnresolvedPath,
  reachOf,
  spellingsOf,
} from '../../src/policy/unresolved-path.js';
import { tempDir } from '../fixtures/gateway/harness.js';

// eslint-disable-next-line @typescript-eslint/no-explicit-any -- test views are walked by hand
type Any = any;

const lexical = (roots: string[], home?: string): PathResolver =>
  new PathResolver({ roots, home, realpath: false });

function reason(value: unknown): string {
  expect(isUnresolvedPath(value), JSON.stringify(value)).toBe(true);
  return (value as { reason: string }).reason;
}

describe('PathResolver: lexical resolution (server-filesystem rules)', () => {
  const r = lexical(['/srv/sandbox'], '/home/me');

  it('resolves relative paths against the root, ~ against home, and normalizes', () => {
    expect(r.resolve('protected/x')).toBe('/srv/sandbox/protected/x');
    expect(r.resolve('./protected/x')).toBe('/srv/sandbox/protected/x');
    expect(r.resolve('../sandbox/protected/x')).toBe('/srv/sandbox/protected/x');
    expect(r.resolve('protected//x/')).toBe('/srv/sandbox/protected/x');
    expect(r.resolve('protected/./sub/../x')).toBe('/srv/sandbox/protected/x');
    expect(r.resolve('')).toBe('/srv/sandbox');
    expect(r.resolve('~')).toBe('/home/me');
    expect(r.resolve('~/a/../b')).toBe('/home/me/b');
    // Only `~` and `~/` are expanded, as the server does: `~user` is a relative name.
    expect(r.resolve('~root/x')).toBe('/srv/sandbox/~root/x');
    expect(r.resolve('/etc/../etc//passwd/')).toBe('/etc/passwd');
    expect(r.resolve('/../../etc')).toBe('/etc');
  });

  it('picks the first root under which the result stays inside some root, else the first', () => {
    const two = lexical(['/a', '/b']);
    expect(two.resolve('x')).toBe('/a/x');
    expect(two.resolve('../b/x')).toBe('/b/x'); // /a/../b/x is inside /b
    expect(two.resolve('../c/x')).toBe('/c/x'); // inside neither: the first root's answer
    expect(lexical(['/']).resolve('etc/x')).toBe('/etc/x');
  });

  it('NFC-normalizes the result', () => {
    expect(r.resolve('cafe\u0301/x')).toBe('/srv/sandbox/caf\u00e9/x');
  });

  it('marks what cannot be resolved with certainty', () => {
    expect(reason(lexical([]).resolve('protected/x'))).toMatch(/relative.*paths\.roots/);
    expect(reason(lexical([]).resolve('./x'))).toMatch(/paths\.roots/);
    expect(reason(lexical(['/s']).resolve('~/x'))).toMatch(/home/);
    expect(reason(lexical(['/s']).resolve('~'))).toMatch(/home/);
    expect(reason(r.resolve('a\0b'))).toMatch(/NUL/);
    expect(reason(r.resolve('/x'.repeat(MAX_PATH_LENGTH)))).toMatch(/longer than/);
    for (const v of [' protected/x', 'protected/x ', '\tx', 'x\n', '"x"', "'x", 'x"', '\u00a0x']) {
      expect(reason(r.resolve(v)), JSON.stringify(v)).toMatch(/whitespace or a quote/);
    }
  });

  it('a home that is not absolute is joined as the server does (then resolved like any path)', () => {
    expect(lexical(['/s'], '').resolve('~/x')).toBe('/x');
    expect(lexical(['/s'], 'rel').resolve('~/x')).toBe('/s/rel/x');
  });
});

describe('PathResolver: realpath on disk', () => {
  const base = realpathSync(tempDir('resolver'));
  const s = join(base, 'sandbox');
  mkdirSync(join(s, 'protected'), { recursive: true });
  mkdirSync(join(s, 'caf\u00e9'));
  writeFileSync(join(s, 'protected', 'secret.txt'), 'x');
  writeFileSync(join(s, 'file.txt'), 'x');
  symlinkSync('protected', join(s, 'plink'));
  symlinkSync('protected/secret.txt', join(s, 'flink'));
  symlinkSync('plink', join(s, 'chain2'));
  symlinkSync('chain2', join(s, 'chain1'));
  symlinkSync('protected/new.txt', join(s, 'dangle'));
  symlinkSync('dangle2', join(s, 'dangle1'));
  symlinkSync('protected/deeper/new.txt', join(s, 'dangle2'));
  symlinkSync('loop2', join(s, 'loop1'));
  symlinkSync('loop1', join(s, 'loop2'));
  symlinkSync('protected', join(s, 'p\u00e9'));
  // Two names equal up to NFC (Å precomposed and A + ring); a third spelling (the ANGSTROM
  // SIGN) matches both: the server refuses to pick one, and so do we.
  mkdirSync(join(s, '\u00c5'));
  mkdirSync(join(s, 'A\u030a'));
  const r = new PathResolver({ roots: [s], home: base, realpath: true });
  const p = (rel: string): string => join(s, rel);

  it('follows symlinks in existing paths, and in the existing prefix of new ones', async () => {
    expect(await r.resolve('plink/secret.txt')).toBe(p('protected/secret.txt'));
    expect(await r.resolve('flink')).toBe(p('protected/secret.txt'));
    expect(await r.resolve('chain1/new/deeper.txt')).toBe(p('protected/new/deeper.txt'));
    expect(await r.resolve('~/sandbox/plink/x')).toBe(p('protected/x'));
    expect(await r.resolve(`${s}/a/b/c/d/e/f/g`)).toBe(p('a/b/c/d/e/f/g'));
    expect(await r.resolve('/')).toBe('/');
  });

  it('follows dangling symlinks to what creating through them would create', async () => {
    expect(await r.resolve('dangle')).toBe(p('protected/new.txt'));
    expect(await r.resolve('dangle1')).toBe(p('protected/deeper/new.txt'));
  });

  it('takes a missing name as its one Unicode-equivalent entry (as the server does)', async () => {
    expect(await r.resolve('pe\u0301/x')).toBe(p('protected/x'));
    expect(await r.resolve('cafe\u0301/x')).toBe(p('caf\u00e9/x'));
    expect(await r.resolve('\u00c5/x')).toBe(p('\u00c5/x')); // an exact name wins
    expect(reason(await r.resolve('\u212b/x'))).toMatch(/ambiguously/);
  });

  it('keeps the names a value went by; restrictive conditions match them, allow ones do not', async () => {
    const view = (await r.view({
      path: 'chain1/x',
      paths: ['work/ok', 'pe\u0301/y'],
      nested: { file: 'dangle' },
      plain: p('protected/secret.txt'),
    })) as Any;
    expect(view.path).toBe(p('protected/x'));
    expect(spellingsOf(view, 'path')).toEqual([p('chain1/x'), p('chain2/x'), p('plink/x')]);
    expect(spellingsOf(view.paths, 1)).toEqual([p('p\u00e9/y')]);
    expect(spellingsOf(view.paths, 0)).toBeUndefined(); // nothing on the way
    expect(spellingsOf(view.nested, 'file')).toEqual([p('dangle')]);
    expect(spellingsOf(view, 'plain')).toBeUndefined(); // already its real path
    const named = (restrictive: boolean, key: string, glob: string) =>
      compileConditions({ [key]: glob }, restrictive)(view);
    for (const [key, glob] of [
      ['path', '**/chain2/**'],
      ['paths', '**/p\u00e9/**'],
      ['nested.file', '**/dangle'],
    ] as const) {
      expect(named(true, key, glob), `${key} ${glob}`).toBe(true);
      expect(named(false, key, glob), `${key} ${glob}`).toBe(false);
    }
    expect(named(false, 'path', '**/protected/**')).toBe(true);
  });

  it('marks errors other than "does not exist"', async () => {
    expect(reason(await r.resolve('loop1/x'))).toMatch(/ELOOP/);
    expect(reason(await r.resolve('file.txt/x'))).toMatch(/ENOTDIR/);
    expect(reason(await r.resolve(`${'n'.repeat(300)}/x`))).toMatch(/ENAMETOOLONG/);
  });

  it('spends at most MAX_DISK_LOOKUPS_PER_CALL lookups on one call; the rest are markers', async () => {
    // Deep missing paths cost a bisection each (about a dozen lookups): 200 of them overspend.
    const deep = (i: number): string => `${base}/missing-${i}/${'d/'.repeat(1000)}x`;
    const view = (await r.view({ paths: Array.from({ length: 200 }, (_, i) => deep(i)) })) as {
      paths: unknown[];
    };
    const markers = view.paths.filter(isUnresolvedPath);
    expect(markers.length).toBeGreaterThan(0);
    expect(reason(markers[0])).toMatch(new RegExp(`${MAX_DISK_LOOKUPS_PER_CALL} disk lookups`));
    // Looked up in order: the first values got the budget, the last ones did not.
    expect(typeof view.paths[0]).toBe('string');
    expect(isUnresolvedPath(view.paths.at(-1))).toBe(true);
  });

  it('gives up after MAX_SYMLINK_HOPS links', async () => {
    // A chain of dangling links longer than the bound, each pointing to the next.
    const dir = join(base, 'hops');
    mkdirSync(dir);
    for (let i = 0; i <= MAX_SYMLINK_HOPS + 1; i++) symlinkSync(`h${i + 1}`, join(dir, `h${i}`));
    const hops = new PathResolver({ roots: [dir], home: undefined, realpath: true });
    // The kernel's own limit (40) or ours, whichever is met first.
    expect(reason(await hops.resolve('h0'))).toMatch(/ELOOP|symlinks/);
  });
});

describe('PathResolver.view: the policy view of a call', () => {
  const r = lexical(['/s'], '/h');

  it('returns the same object, synchronously, when nothing in it is path-like', () => {
    const flat = { message: 'hi', n: 1, ok: true, none: null };
    expect(r.view(flat)).toBe(flat);
    const nested = { options: { mode: 'fast', list: ['a', 'b'] }, text: 'x/y' };
    expect(r.view(nested)).toBe(nested);
  });

  it('resolves path-like values by name or by shape, in copies, leaving params untouched', () => {
    const params = {
      path: 'a/b',
      content: 'protected/x', // not a path by name or shape
      note: './rel', // a path by shape
      edits: [{ oldText: '/etc/x', newText: 'y' }],
      paths: ['x', '~/y'],
      nested: { target_dir: 'd' },
    };
    const snapshot = structuredClone(params);
    const view = r.view(params) as Record<string, unknown>;
    expect(view).toEqual({
      path: '/s/a/b',
      content: 'protected/x',
      note: '/s/rel',
      edits: [{ oldText: '/etc/x', newText: 'y' }],
      paths: ['/s/x', '/h/y'],
      nested: { target_dir: '/s/d' },
    });
    expect(params).toEqual(snapshot);
    expect(view).not.toBe(params);
    expect(view.edits).toBe(params.edits); // unchanged branches are shared
    const canonical = { path: '/s/a', paths: ['/etc/x'] };
    expect(r.view(canonical)).toBe(canonical); // nothing to change: no copy
  });

  it('resolves the parameter names an upstream declares in paths.params, at any depth', () => {
    const params = { output: 'protected/x', job: { to: ['a', 'b'] }, content: 'protected/y' };
    // Not path-like by name or shape: left as written without the declaration…
    expect(r.view(params)).toBe(params);
    // …and resolved with it (a deny rule on /s/protected/** then matches).
    const declared = new PathResolver({
      roots: ['/s'],
      home: '/h',
      realpath: false,
      params: ['output', 'to'],
    });
    expect(declared.view(params)).toEqual({
      output: '/s/protected/x',
      job: { to: ['/s/a', '/s/b'] },
      content: 'protected/y',
    });
    const spec = upstreamSpecSchema.parse({ command: 'x', paths: { params: ['output'] } });
    expect(pathResolutionOf(spec).params).toEqual(['output']);
    expect(pathResolutionOf(upstreamSpecSchema.parse({ command: 'x' })).params).toEqual([]);
  });

  it('with realpath, the view is a promise', async () => {
    const real = new PathResolver({ roots: ['/'], home: undefined, realpath: true });
    const v = real.view({ path: 'tmp' });
    expect(v).toBeInstanceOf(Promise);
    expect(await v).toEqual({ path: realpathSync('/tmp') });
  });

  it('marks containers that hold a marker, and lists the markers', () => {
    const none = lexical([]);
    const view = none.view({ a: { b: ['ok', './rel'] }, path: '/abs' }) as Record<string, Any>;
    expect(isUnresolvedPath(view.a.b[1])).toBe(true);
    expect(holdsUnresolved(view)).toBe(true);
    expect(holdsUnresolved(view.a)).toBe(true);
    expect(holdsUnresolved(view.a.b)).toBe(true);
    expect(view.path).toBe('/abs');
    expect(unresolvedPathsIn(view).map((m) => m.value)).toEqual(['./rel']);
  });

  it('treats a __proto__ key as data', () => {
    const params = JSON.parse('{"__proto__": {"path": "x"}, "path": "y"}') as Record<string, Any>;
    const view = r.view(params) as Record<string, Any>;
    expect(Object.getPrototypeOf(view)).toBe(Object.prototype);
    expect(Object.getOwnPropertyDescriptor(view, '__proto__')?.value).toEqual({ path: '/s/x' });
    expect(view.path).toBe('/s/y');
  });

  it('marks what is nested deeper than MAX_PATH_WALK_DEPTH, without recursing', () => {
    let deep: unknown = { path: 'x' };
    for (let i = 0; i < 100_000; i++) deep = { d: deep };
    const view = r.view({ deep, path: 'top' }) as Record<string, Any>;
    expect(view.path).toBe('/s/top');
    let v = view.deep;
    for (let i = 0; i < MAX_PATH_WALK_DEPTH - 1; i++) v = v.d;
    expect(reason(v.d)).toMatch(/nested deeper/);
  });

  it('resolves at most MAX_PATHS_PER_CALL paths; the rest are markers', () => {
    const paths = Array.from({ length: MAX_PATHS_PER_CALL + 10 }, (_, i) => `f${i}`);
    const view = r.view({ paths }) as { paths: unknown[] };
    expect(view.paths[0]).toBe('/s/f0');
    expect(view.paths[MAX_PATHS_PER_CALL - 1]).toBe(`/s/f${MAX_PATHS_PER_CALL - 1}`);
    expect(reason(view.paths[MAX_PATHS_PER_CALL])).toMatch(/paths in one call/);
  });

  it('over MAX_PATH_WALK_NODES values, what was not walked stands as markers', () => {
    const junk = Array.from({ length: MAX_PATH_WALK_NODES }, (_, i) => ({ n: i }));
    const view = r.view({ path: 'first', junk, later: { path: 'x' } }) as Record<string, Any>;
    expect(view.path).toBe('/s/first'); // top-level values are visited before any nesting
    // Containers are walked last in, first out: `later` before `junk`, whose objects were
    // counted but, the budget spent, are never entered.
    expect(view.later.path).toBe('/s/x');
    const junkView = view.junk as unknown[];
    expect(junkView.every(isUnresolvedPath)).toBe(true);
    expect(reason(junkView[0])).toMatch(/not inspected/);
  });
});

describe('pathResolutionOf: defaults by transport', () => {
  it('stdio: the child HOME, realpath on; remote: no home, realpath off; declared values win', () => {
    const stdio = upstreamSpecSchema.parse({ command: 'x', env: { HOME: '/child' } });
    expect(pathResolutionOf(stdio)).toEqual({
      roots: [],
      home: '/child',
      realpath: true,
      hardLinks: 'closed',
      params: [],
      rootsFromClient: false,
    });
    const remote = upstreamSpecSchema.parse({ url: 'http://127.0.0.1:1/mcp' });
    expect(pathResolutionOf(remote)).toEqual({
      roots: [],
      home: undefined,
      realpath: false,
      hardLinks: 'closed',
      params: [],
      rootsFromClient: false,
    });
    const declared = upstreamSpecSchema.parse({
      url: 'http://127.0.0.1:1/mcp',
      paths: { roots: ['/a/./b/'], home: '/h', realpath: true, hardLinks: 'named', params: ['to'] },
    });
    expect(pathResolutionOf(declared)).toEqual({
      roots: ['/a/b'],
      home: '/h',
      realpath: true,
      hardLinks: 'named',
      params: ['to'],
      rootsFromClient: false,
    });
  });

  it('an upstream that takes its roots from the client (forwardRoots) resolves no relative path', async () => {
    const spec = upstreamSpecSchema.parse({
      command: 'x',
      forwardRoots: true,
      paths: { roots: ['/'] },
    });
    const r = new PathResolver(pathResolutionOf(spec));
    await r.readRoots();
    expect(reason(await r.resolve('tmp/x'))).toMatch(/roots from the agent's client/);
    expect(await r.resolve('/tmp/x')).toBe(`${realpathSync('/tmp')}/x`);
  });

  it('refuses relative roots and homes in the config', () => {
    for (const paths of [{ roots: ['rel'] }, { home: '~' }, { roots: ['/a\0'] }, { other: 1 }]) {
      expect(
        upstreamSpecSchema.safeParse({ command: 'x', paths }).success,
        JSON.stringify(paths),
      ).toBe(false);
    }
  });
});

describe('PathResolver.readRoots (roots as server-filesystem reads them at start)', () => {
  it('adds a root’s real path after it, skips missing and non-directory roots, re-reads', async () => {
    const base = realpathSync(tempDir('resolver-roots'));
    const real = join(base, 'real');
    mkdirSync(real);
    const link = join(base, 'link');
    symlinkSync(real, link);
    const file = join(base, 'file.txt');
    writeFileSync(file, 'x');
    const missing = join(base, 'missing');
    const r = new PathResolver({ roots: [missing, file, link], home: undefined, realpath: true });
    expect(r.roots).toEqual([missing, file, link]); // declared, until read
    await r.readRoots();
    expect(r.roots).toEqual([link, real]);
    expect(await r.resolve('x')).toBe(join(real, 'x'));
    // `../real/x` against the link is inside the link's real path: taken at the first root.
    expect(await r.resolve('../real/x')).toBe(join(real, 'x'));
    mkdirSync(missing);
    expect(await r.resolve('y')).toBe(join(real, 'y')); // the server has not seen it either
    await r.readRoots(); // a restarted server reads it
    expect(r.roots).toEqual([missing, link, real]);
    expect(await r.resolve('y')).toBe(join(missing, 'y'));
  });

  it('a symlinked root is a known first hop: a value below it keeps both spellings', async () => {
    const base = realpathSync(tempDir('resolver-root-link'));
    const real = join(base, 'real');
    mkdirSync(join(real, 'vault'), { recursive: true });
    symlinkSync('vault', join(real, 'protected'));
    const link = join(base, 'link');
    symlinkSync(real, link);
    const r = new PathResolver({ roots: [link], home: undefined, realpath: true });
    await r.readRoots();
    const view = (await r.view({ path: 'x', file: 'protected/y' })) as Any;
    expect(view.path).toBe(join(real, 'x'));
    expect(spellingsOf(view, 'path')).toEqual([join(link, 'x')]);
    expect(view.file).toBe(join(real, 'vault', 'y'));
    expect(spellingsOf(view, 'file')).toEqual([
      join(link, 'protected/y'),
      join(real, 'protected/y'),
    ]);
  });

  it('keeping the names costs few lookups: MAX_PATHS_PER_CALL paths through a link all resolve', async () => {
    const s = realpathSync(tempDir('resolver-names-budget'));
    mkdirSync(join(s, 'vault', 'sub'), { recursive: true });
    symlinkSync('vault', join(s, 'protected'));
    const files = Array.from({ length: MAX_PATHS_PER_CALL }, (_, i) => `protected/sub/f${i}`);
    for (const f of files.slice(0, 100)) writeFileSync(join(s, f), 'x'); // others are new
    const r = new PathResolver({ roots: [s], home: undefined, realpath: true });
    await r.readRoots();
    const view = (await r.view({ paths: files })) as Any;
    expect(unresolvedPathsIn(view)).toEqual([]);
    files.forEach((f, i) => {
      expect(view.paths[i]).toBe(join(s, 'vault', f.slice('protected/'.length)));
      expect(spellingsOf(view.paths, i)).toEqual([join(s, f)]);
    });
  });

  it('keeping the names of paths through a link below folders (a pnpm workspace) costs few lookups: MAX_PATHS_PER_CALL of them all resolve', async () => {
    // packages/app/node_modules/@scope/lib -> ../../../lib, as a pnpm workspace links its packages:
    // each file below it goes by the link's name, five folders down.
    const s = realpathSync(tempDir('resolver-names-deep-link'));
    const modules = join(s, 'packages', 'app', 'node_modules', '@scope');
    mkdirSync(modules, { recursive: true });
    mkdirSync(join(s, 'packages', 'lib', 'src'), { recursive: true });
    symlinkSync('../../../lib', join(modules, 'lib'));
    const files = Array.from(
      { length: MAX_PATHS_PER_CALL },
      (_, i) => `packages/app/node_modules/@scope/lib/src/f${i}.ts`,
    );
    for (const f of files) writeFileSync(join(s, f), 'x');
    const r = new PathResolver({ roots: [s], home: undefined, realpath: true });
    await r.readRoots();
    const view = (await r.view({ paths: files })) as Any;
    expect(unresolvedPathsIn(view)).toEqual([]);
    files.forEach((f, i) => {
      expect(view.paths[i]).toBe(join(s, 'packages', 'lib', 'src', `f${i}.ts`));
      expect(spellingsOf(view.paths, i)).toEqual([join(s, f)]);
    });
  });

  it('no root left: relative paths are unresolvable, with a reason naming why', async () => {
    const r = new PathResolver({ roots: ['/nonexistent/a'], home: undefined, realpath: true });
    await r.readRoots();
    expect(r.roots).toEqual([]);
    expect(reason(await r.resolve('x'))).toMatch(/none of paths\.roots is an existing directory/);
  });

  it('without realpath (a remote upstream) the declared roots stand', async () => {
    const r = lexical(['/nonexistent/a']);
    await r.readRoots();
    expect(r.roots).toEqual(['/nonexistent/a']);
    expect(r.resolve('x')).toBe('/nonexistent/a/x');
  });
});

describe('PathResolver: what a path reaches (recordReach), and the conditions that read it', () => {
  const base = realpathSync(tempDir('reach'));
  mkdirSync(join(base, 'a', 'protected'), { recursive: true });
  writeFileSync(join(base, 'plain.txt'), 'x');
  writeFileSync(join(base, 'one.txt'), 'x');
  linkSync(join(base, 'one.txt'), join(base, 'two.txt'));
  const deny = compileConditions({ source: `${base}/a/protected/**` }, true);
  const denyDest = compileConditions({ destination: `${base}/a/protected/**` }, true);
  const allow = compileConditions({ source: `${base}/**` }, false);

  it('a plain file is its name only: no copy of the parameters, nothing recorded', async () => {
    const r = new PathResolver({ roots: [base], home: undefined, realpath: true });
    const params = { source: join(base, 'plain.txt') };
    expect(await r.view(params)).toBe(params);
  });

  it('a folder reaches below itself, and so does a new name in the same call', async () => {
    const r = new PathResolver({ roots: [base], home: undefined, realpath: true });
    const params = { source: join(base, 'a'), destination: join(base, 'new') };
    const view = (await r.view(params)) as Any;
    expect(view).toEqual(params);
    expect(reachOf(view, 'source')).toBe('below');
    expect(reachOf(view, 'destination')).toBe('below');
    expect(deny(view, params)).toBe(true);
    expect(allow(view, params)).toBe(true); // an allow rule sees the path itself
    // A file moved to a new name: neither reaches below.
    const file = (await r.view({ source: 'plain.txt', destination: 'a/protected' })) as Any;
    expect(reachOf(file, 'source')).toBeUndefined();
    expect(deny(file)).toBe(false);
    expect(denyDest(file)).toBe(true); // the name itself, as before
  });

  it('a hard-linked file matches every restrictive path condition, unless hardLinks is named', async () => {
    const closed = new PathResolver({ roots: [base], home: undefined, realpath: true });
    const view = (await closed.view({ source: 'two.txt' })) as Any;
    expect(reachOf(view, 'source')).toBe('linked');
    expect(deny(view)).toBe(true);
    expect(allow(view)).toBe(true);
    const named = new PathResolver({
      roots: [base],
      home: undefined,
      realpath: true,
      hardLinks: 'named',
    });
    const params = { source: join(base, 'two.txt') };
    expect(await named.view(params)).toBe(params);
  });
});

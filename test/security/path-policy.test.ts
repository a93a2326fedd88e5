/**
 * A hostile agent against the path policy: every spelling of a path inside `protected/` that
 * the real server-filesystem accepts, through the real sidecar with the shipped example config,
 * checked on disk (the protected file is unchanged, nothing new appears under `protected/`) —
 * and the legitimate writes outside it still land. Then an upstream that declares no roots
 * (fails closed), a `when`-based allow rule, and resource reads of `file:` URIs spelled every
 * way the WHATWG URL parser accepts.
 */
import {
  existsSync,
  mkdirSync,
  readFileSync,
  realpathSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { McpError, type CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  agentToken,
  closeSidecar,
  FILESYSTEM_BIN,
  httpClient,
  startTestSidecar,
  tempDir,
  text,
  fileTree,
  startShippedSidecar,
} from '../fixtures/gateway/harness.js';

const FILE_RESOURCE_SERVER = fileURLToPath(
  new URL('../fixtures/gateway/file-resource-server.mjs', import.meta.url),
);
const SECRET = 'keep me';

/**
 * A sandbox with `protected/secret.txt`, `protected/sub/`, a `work/` folder, and symlinks an
 * agent could use: to the protected folder, to the file, a chain, dangling ones pointing into
 * protected/, and an NFC-named link to protected/ (requested in NFD).
 */
function makeSandbox(sandbox: string): void {
  mkdirSync(join(sandbox, 'protected', 'sub'), { recursive: true });
  mkdirSync(join(sandbox, 'work'), { recursive: true });
  writeFileSync(join(sandbox, 'protected', 'secret.txt'), SECRET);
  writeFileSync(join(sandbox, 'work', 'mine.txt'), 'mine');
  symlinkSync('protected', join(sandbox, 'plink'));
  symlinkSync('protected/secret.txt', join(sandbox, 'flink'));
  symlinkSync('plink', join(sandbox, 'chain2'));
  symlinkSync('chain2', join(sandbox, 'chain1'));
  symlinkSync('protected/created-by-dangle.txt', join(sandbox, 'dangle'));
  symlinkSync('protected/dangle-dir', join(sandbox, 'dangle-dir'));
  symlinkSync('protected', join(sandbox, 'p\u00e9')); // NFC "pé"
}

describe('the shipped config keeps protected/ read-only against every spelling (real sidecar, real server-filesystem)', () => {
  // The sandbox lives under HOME, so `~/…` spellings reach it (the child inherits HOME).
  const base = realpathSync(tempDir('path-policy'));
  const sandbox = join(base, '.fabric', 'sandbox');
  const protectedDir = join(sandbox, 'protected');
  const savedHome = process.env.HOME;
  let sidecar: Sidecar;
  let client: Client;
  let before: string[];

  const call = async (name: string, args: Record<string, unknown>): Promise<CallToolResult> =>
    (await client.callTool({ name: `fs__${name}`, arguments: args })) as CallToolResult;

  /** protected/ is exactly as it was and the secret is intact. */
  const protectedUntouched = (): void => {
    expect(fileTree(protectedDir)).toEqual(before);
    expect(readFileSync(join(protectedDir, 'secret.txt'), 'utf8')).toBe(SECRET);
  };

  beforeAll(async () => {
    process.env.HOME = base;
    makeSandbox(sandbox);
    before = fileTree(protectedDir);
    sidecar = await startShippedSidecar(base);
    client = await httpClient(sidecar.url!, agentToken(sidecar, 'local-agent'));
  });

  afterAll(async () => {
    await client?.close();
    await closeSidecar(sidecar);
    process.env.HOME = savedHome;
  });

  const home = '~/.fabric/sandbox';
  const writeSpellings: [string, string][] = [
    ['relative', 'protected/x.txt'],
    ['dot-relative', './protected/x.txt'],
    ['up and back in', '../sandbox/protected/x.txt'],
    ['through another folder', 'work/../protected/x.txt'],
    ['double slash', 'protected//x.txt'],
    ['dot segment', 'protected/./x.txt'],
    ['up from a subfolder', 'protected/sub/../x.txt'],
    ['home', `${home}/protected/x.txt`],
    ['home, dotted', `${home}/./work/../protected/x.txt`],
    ['leading space', ' protected/x.txt'],
    ['trailing space', 'protected/x.txt '],
    ['quoted', '"protected/x.txt"'],
    ['symlink to the folder', 'plink/x.txt'],
    ['symlink chain', 'chain1/x.txt'],
    ['NFD spelling of an NFC-named symlink', 'pe\u0301/x.txt'],
    ['dangling symlink into protected/', 'dangle'],
    ['symlink to the file', 'flink'],
    ['absolute through a symlink', '<sandbox>/plink/x.txt'],
  ];

  it.each(writeSpellings)(
    'write_file: %s (%j) is refused and nothing lands in protected/',
    async (_n, p) => {
      const path = p.replace('<sandbox>', sandbox);
      const r = await call('write_file', { path, content: 'pwned' });
      expect(r.isError).toBe(true);
      expect(text(r)).toContain('FABRIC_ERR_POLICY_DENIED');
      protectedUntouched();
    },
  );

  it('write_file: an absolute path with a trailing slash or a spaced folder name is refused', async () => {
    for (const path of [`${protectedDir}/`, `${sandbox}/./protected/x.txt`]) {
      const r = await call('write_file', { path, content: 'pwned' });
      expect(text(r), path).toContain('FABRIC_ERR_POLICY_DENIED');
    }
    protectedUntouched();
  });

  it('write_file: PROTECTED/ is another folder on a case-sensitive disk (no parent: the server refuses)', async () => {
    // Linux names are case-sensitive: PROTECTED/x.txt is not under protected/, so policy allows
    // it; the server refuses because PROTECTED/ does not exist. protected/ stays untouched.
    const r = await call('write_file', { path: 'PROTECTED/x.txt', content: 'pwned' });
    expect(text(r)).not.toContain('FABRIC_ERR_POLICY_DENIED');
    expect(existsSync(join(sandbox, 'PROTECTED'))).toBe(false);
    protectedUntouched();
  });

  it.each([
    ['relative', 'protected/secret.txt'],
    ['symlink to the file', 'flink'],
    ['symlink to the folder', 'plink/secret.txt'],
    ['home', `${home}/protected/secret.txt`],
    ['NFD through a symlink', 'pe\u0301/secret.txt'],
  ])('edit_file: %s (%j) is refused and the file is unchanged', async (_n, path) => {
    const r = await call('edit_file', {
      path,
      edits: [{ oldText: SECRET, newText: 'pwned' }],
    });
    expect(text(r)).toContain('FABRIC_ERR_POLICY_DENIED');
    protectedUntouched();
  });

  it.each([
    ['relative', 'protected/newdir'],
    ['relative, trailing slash', 'protected/newdir/'],
    ['nested', 'protected/a/b/c'],
    ['symlink to the folder', 'plink/newdir'],
    ['home', `${home}/protected/newdir`],
    ['dangling symlink to a folder in protected/', 'dangle-dir'],
    ['symlink chain', 'chain1/newdir'],
  ])('create_directory: %s (%j) is refused and no folder appears', async (_n, path) => {
    const r = await call('create_directory', { path });
    expect(text(r)).toContain('FABRIC_ERR_POLICY_DENIED');
    protectedUntouched();
  });

  it.each([
    ['out of protected/, relative', 'protected/secret.txt', 'work/stolen.txt'],
    ['out of protected/, through a file symlink', 'flink', 'work/stolen.txt'],
    ['out of protected/, through a folder symlink', 'plink/secret.txt', 'work/stolen.txt'],
    ['the protected folder itself, through its symlink', 'plink', 'work/stolen'],
    ['into protected/, relative', 'work/mine.txt', 'protected/planted.txt'],
    ['into protected/, up and back in', 'work/mine.txt', '../sandbox/protected/planted.txt'],
    ['into protected/, through a symlink', 'work/mine.txt', 'plink/planted.txt'],
    ['into protected/, home', 'work/mine.txt', `${home}/protected/planted.txt`],
    ['into protected/, NFD', 'work/mine.txt', 'pe\u0301/planted.txt'],
  ])('move_file: %s is refused and nothing moves', async (_n, source, destination) => {
    const r = await call('move_file', { source, destination });
    expect(text(r)).toContain('FABRIC_ERR_POLICY_DENIED');
    protectedUntouched();
    expect(readFileSync(join(sandbox, 'work', 'mine.txt'), 'utf8')).toBe('mine');
    expect(existsSync(join(sandbox, 'work', 'stolen.txt'))).toBe(false);
    expect(existsSync(join(sandbox, 'work', 'stolen'))).toBe(false);
  });

  it('many concurrent calls with mixed spellings: every protected one refused, every other lands', async () => {
    const bad = writeSpellings.map(([, p]) => p.replace('<sandbox>', sandbox));
    const calls = Array.from({ length: 60 }, (_, i) =>
      i % 2 === 0
        ? call('write_file', { path: bad[i % bad.length]!, content: `pwned ${i}` })
        : call('write_file', { path: `work/concurrent-${i}.txt`, content: `ok ${i}` }),
    );
    const results = await Promise.all(calls);
    results.forEach((r, i) => {
      if (i % 2 === 0) expect(text(r)).toContain('FABRIC_ERR_POLICY_DENIED');
      else {
        expect(r.isError, text(r)).toBeFalsy();
        expect(readFileSync(join(sandbox, 'work', `concurrent-${i}.txt`), 'utf8')).toBe(`ok ${i}`);
      }
    });
    protectedUntouched();
  });

  it('a call with a huge, deep argument beside the path is still refused', async () => {
    let deep: unknown = 'protected/deep.txt';
    for (let i = 0; i < 30; i++) deep = { d: deep };
    const outcome = await client
      .callTool({
        name: 'fs__write_file',
        arguments: {
          junk: Array.from({ length: 20_000 }, (_, i) => `./protected/${i}`),
          deep,
          path: 'protected/x.txt',
          content: 'pwned',
        },
      })
      .then(
        (r) => text(r),
        (e: unknown) => String(e),
      );
    // Refused by the policy on `path` (or by an ingress bound on argument size, if one applies).
    expect(outcome).toMatch(/FABRIC_ERR_|-32602|too/);
    protectedUntouched();
  });

  it('secret-guard scans what is forwarded, not the resolved view (where `..` erased the secret)', async () => {
    const key = 'AKIAIOSFODNN7EXAMPLE';
    const r = await call('write_file', { path: `work/${key}/../leak.txt`, content: 'x' });
    expect(text(r)).toMatch(/params\.path looks like a secret/);
    expect(text(r)).not.toContain(key);
    expect(existsSync(join(sandbox, 'work', 'leak.txt'))).toBe(false);
  });

  it('legitimate work outside protected/ still works with every kind of spelling', async () => {
    const w = (path: string, content: string) => call('write_file', { path, content });
    for (const [path, file] of [
      ['work/relative.txt', 'relative.txt'],
      ['./work/dot.txt', 'dot.txt'],
      [`${home}/work/home.txt`, 'home.txt'],
      [`${sandbox}/work/absolute.txt`, 'absolute.txt'],
      ['plink/../work/through-link-parent.txt', 'through-link-parent.txt'],
    ] as const) {
      const r = await w(path, file);
      expect(r.isError, `${path}: ${text(r)}`).toBeFalsy();
      expect(readFileSync(join(sandbox, 'work', file), 'utf8')).toBe(file);
    }
    const mk = await call('create_directory', { path: 'work/made/deeper' });
    expect(mk.isError, text(mk)).toBeFalsy();
    expect(existsSync(join(sandbox, 'work', 'made', 'deeper'))).toBe(true);
    const mv = await call('move_file', {
      source: 'work/relative.txt',
      destination: 'work/moved.txt',
    });
    expect(mv.isError, text(mv)).toBeFalsy();
    expect(readFileSync(join(sandbox, 'work', 'moved.txt'), 'utf8')).toBe('relative.txt');
    const ed = await call('edit_file', {
      path: 'work/moved.txt',
      edits: [{ oldText: 'relative.txt', newText: 'edited' }],
    });
    expect(ed.isError, text(ed)).toBeFalsy();
    expect(readFileSync(join(sandbox, 'work', 'moved.txt'), 'utf8')).toBe('edited');
    // Reads are allowed everywhere, also through the symlink.
    const rd = await call('read_text_file', { path: 'plink/secret.txt' });
    expect(text(rd)).toBe(SECRET);
    protectedUntouched();
  });
});

describe('fail closed where a path cannot be resolved, and resource URIs (real sidecar)', () => {
  const sandbox = realpathSync(tempDir('path-policy-2'));
  const protectedDir = join(sandbox, 'protected');
  let sidecar: Sidecar;
  let client: Client;
  let before: string[];

  beforeAll(async () => {
    makeSandbox(sandbox);
    before = fileTree(protectedDir);
    const deny = `${sandbox}/protected/**`;
    sidecar = await startTestSidecar({
      upstreams: {
        // The same server twice: `fs` declares how it resolves paths, `bare` does not.
        fs: {
          command: process.execPath,
          args: [FILESYSTEM_BIN, sandbox],
          stderr: 'ignore',
          paths: { roots: [sandbox] },
        },
        bare: { command: process.execPath, args: [FILESYSTEM_BIN, sandbox], stderr: 'ignore' },
        files: { command: process.execPath, args: [FILE_RESOURCE_SERVER], stderr: 'ignore' },
      },
      policies: [
        {
          name: 'protected',
          priority: 100,
          rules: [
            { tool: '*__write_file', action: 'deny', conditions: { path: deny } },
            { tool: 'resources/*', action: 'deny', conditions: { path: deny } },
            { tool: 'completion/complete', action: 'deny', conditions: { path: deny } },
          ],
        },
        {
          name: 'allow-lists',
          priority: 10,
          rules: [
            // An allow-list by condition, and one by `when` that a careless reading would pass.
            {
              tool: '*__write_file',
              action: 'allow',
              conditions: { path: `${sandbox}/work/**` },
            },
            {
              tool: '*__create_directory',
              action: 'allow',
              when: { '!': { in: ['protected', { var: 'params.path' }] } },
            },
            { tool: '*__read_text_file', action: 'allow' },
            { tool: 'resources/*', action: 'allow' },
            { tool: 'completion/complete', action: 'allow' },
          ],
        },
      ],
      agents: [{ name: 'attacker' }],
    });
    client = await httpClient(sidecar.url!, agentToken(sidecar, 'attacker'));
  });

  afterAll(async () => {
    await client?.close();
    await closeSidecar(sidecar);
  });

  const protectedUntouched = (): void => {
    expect(fileTree(protectedDir)).toEqual(before);
    expect(readFileSync(join(protectedDir, 'secret.txt'), 'utf8')).toBe(SECRET);
  };

  it('an upstream without paths.roots: a relative path is unresolved — the deny matches, the allow-list does not', async () => {
    const bad = (await client.callTool({
      name: 'bare__write_file',
      arguments: { path: 'protected/x.txt', content: 'pwned' },
    })) as CallToolResult;
    expect(text(bad)).toContain('FABRIC_ERR_POLICY_DENIED');
    expect(text(bad)).toContain('unresolved path');
    expect(text(bad)).toContain('paths.roots');
    // Even a harmless relative path is not allowed by an allow-list it cannot be checked against.
    const harmless = (await client.callTool({
      name: 'bare__write_file',
      arguments: { path: 'work/y.txt', content: 'y' },
    })) as CallToolResult;
    expect(text(harmless)).toContain('FABRIC_ERR_POLICY_DENIED');
    expect(existsSync(join(sandbox, 'work', 'y.txt'))).toBe(false);
    // Absolute paths are still resolved (realpath: true by default for stdio upstreams).
    const viaLink = (await client.callTool({
      name: 'bare__write_file',
      arguments: { path: `${sandbox}/plink/x.txt`, content: 'pwned' },
    })) as CallToolResult;
    expect(text(viaLink)).toContain('FABRIC_ERR_POLICY_DENIED');
    const ok = (await client.callTool({
      name: 'bare__write_file',
      arguments: { path: `${sandbox}/work/abs.txt`, content: 'abs' },
    })) as CallToolResult;
    expect(ok.isError, text(ok)).toBeFalsy();
    expect(readFileSync(join(sandbox, 'work', 'abs.txt'), 'utf8')).toBe('abs');
    // With roots declared, the same relative path is resolved and allowed.
    const fsOk = (await client.callTool({
      name: 'fs__write_file',
      arguments: { path: 'work/y.txt', content: 'y' },
    })) as CallToolResult;
    expect(fsOk.isError, text(fsOk)).toBeFalsy();
    expect(readFileSync(join(sandbox, 'work', 'y.txt'), 'utf8')).toBe('y');
    protectedUntouched();
  });

  it('an allow rule whose `when` reads a path allows only what was resolved', async () => {
    const mk = async (name: string, path: string): Promise<string> =>
      text(await client.callTool({ name, arguments: { path } }));
    // Resolved: the real target contains "protected", so the allow rule does not match.
    expect(await mk('fs__create_directory', 'plink/newdir')).toContain('FABRIC_ERR_POLICY_DENIED');
    expect(await mk('fs__create_directory', 'pe\u0301/newdir')).toContain(
      'FABRIC_ERR_POLICY_DENIED',
    );
    // Unresolved (no roots): reading it throws, and a throwing `when` never allows.
    expect(await mk('bare__create_directory', 'plink/newdir')).toContain(
      'FABRIC_ERR_POLICY_DENIED',
    );
    expect(await mk('bare__create_directory', 'work/newdir')).toContain('FABRIC_ERR_POLICY_DENIED');
    expect(existsSync(join(sandbox, 'work', 'newdir'))).toBe(false);
    expect(await mk('fs__create_directory', 'work/newdir')).not.toContain('FABRIC_ERR');
    expect(existsSync(join(sandbox, 'work', 'newdir'))).toBe(true);
    protectedUntouched();
  });

  /** The rejection of a request, which must be a policy refusal. */
  async function refused(promise: Promise<unknown>): Promise<McpError> {
    const error = await promise.then(
      (r) => r,
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(McpError);
    expect((error as McpError).message).toContain('FABRIC_ERR_POLICY_DENIED');
    return error as McpError;
  }

  const secretUris = (): [string, string][] => [
    ['plain', `file://${sandbox}/protected/secret.txt`],
    ['upper-case scheme', `FILE://${sandbox}/protected/secret.txt`],
    ['mixed-case scheme, localhost', `File://localhost${sandbox}/protected/secret.txt`],
    ['leading space', ` file://${sandbox}/protected/secret.txt`],
    ['leading control character', `\u0001file://${sandbox}/protected/secret.txt`],
    ['tab inside', `file://${sandbox}/prot\tected/secret.txt`],
    ['newline inside', `file://${sandbox}/protected/\nsecret.txt`],
    ['encoded dot-dot', `file://${sandbox}/work/%2e%2e/protected/secret.txt`],
    ['encoded letter', `file://${sandbox}/%70rotected/secret.txt`],
    ['symlink to the folder', `file://${sandbox}/plink/secret.txt`],
    ['symlink to the file', `file://${sandbox}/flink`],
    ['NFD through a symlink', `file://${sandbox}/pe%CC%81/secret.txt`],
  ];

  it('the file server really reads those URIs (so the policy must catch them)', async () => {
    // Sanity: an allowed file read through the same server and the same URI tricks.
    const r = await client.readResource({ uri: `FILE://${sandbox}/work/%6Dine.txt` });
    expect((r.contents[0] as { text: string }).text).toBe('mine');
  });

  it.each(secretUris())(
    'resources/read: %s is refused and the secret never comes back',
    async (_n, uri) => {
      const error = await refused(client.readResource({ uri }));
      expect(JSON.stringify(error)).not.toContain(SECRET);
    },
  );

  it.each(secretUris())('resources/subscribe: %s is refused', async (_n, uri) => {
    await refused(client.subscribeResource({ uri }));
  });

  it.each([
    ['an encoded slash', `file://${sandbox}/protected%2Fsecret.txt`],
    ['invalid UTF-8', `file://${sandbox}/%FF/secret.txt`],
    ['a remote host', `file://elsewhere${sandbox}/protected/secret.txt`],
    ['an encoded NUL', `file://${sandbox}/protected/secret.txt%00`],
  ])('a file: URI with %s cannot be decoded: deny rules on path match it', async (_n, uri) => {
    const error = await refused(client.readResource({ uri }));
    expect(error.message).toContain('unresolved path');
  });

  it('completion/complete on a file: template that names protected/ is refused', async () => {
    await refused(
      client.complete({
        ref: { type: 'ref/resource', uri: `FILE://${sandbox}/plink/{name}` },
        argument: { name: 'name', value: 's' },
      }),
    );
    const ok = await client.complete({
      ref: { type: 'ref/resource', uri: 'file:///{+path}' },
      argument: { name: 'path', value: 'w' },
    });
    expect(ok.completion.values).toEqual([]);
  });
});

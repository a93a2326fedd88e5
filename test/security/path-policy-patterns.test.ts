/**
 * Rule *patterns* against a hostile agent (the calls' paths are covered by path-policy.test.ts):
 * a sandbox or `protected/` reached through a symlink (the gateway realpaths every call, so the
 * pattern must name the real folder too), a working directory whose name holds glob syntax
 * (`${SANDBOX}` pasted into a glob), a content rule fed a multi-megabyte value (the glob must
 * not backtrack), and content that merely starts with `/` (path normalization must not erase
 * what a deny looks for). Real sidecar, real server-filesystem over stdio, the official SDK
 * client; every effect is checked on disk.
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
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import { afterEach, describe, expect, it } from 'vitest';
import { compileGlob } from '../../src/policy/glob.js';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  agentToken,
  closeSidecar,
  DEFAULT_ALLOW,
  FILESYSTEM_BIN,
  httpClient,
  startTestSidecar,
  tempDir,
  text,
  readOnlyRules,
  fileTree,
  startShippedSidecar,
} from '../fixtures/gateway/harness.js';

const SECRET = 'keep me';

let sidecar: Sidecar | undefined;
let client: Client | undefined;

afterEach(async () => {
  await client?.close();
  await closeSidecar(sidecar);
  client = undefined;
  sidecar = undefined;
});

async function call(name: string, args: Record<string, unknown>): Promise<CallToolResult> {
  return (await client!.callTool({ name: `fs__${name}`, arguments: args })) as CallToolResult;
}

/** Starts the shipped example config from `cwd`, as `agent-fabric serve` would. */
async function startShipped(cwd: string): Promise<void> {
  sidecar = await startShippedSidecar(cwd, { memoryState: true });
  client = await httpClient(sidecar.url!, agentToken(sidecar, 'local-agent'));
}

/**
 * Starts a sidecar whose fs upstream serves `sandbox` (one folder, or several: server arguments
 * and `paths.roots` alike), with `policies`.
 */
async function startWith(
  sandbox: string | string[],
  policies: unknown[],
  options: Parameters<typeof startTestSidecar>[1] = {},
): Promise<void> {
  const roots = typeof sandbox === 'string' ? [sandbox] : sandbox;
  sidecar = await startTestSidecar(
    {
      upstreams: {
        fs: {
          command: process.execPath,
          args: [FILESYSTEM_BIN, ...roots],
          stderr: 'ignore',
          paths: { roots },
        },
      },
      policies: policies as never,
      agents: [{ name: 'attacker' }],
    },
    options,
  );
  client = await httpClient(sidecar.url!, agentToken(sidecar, 'attacker'));
}

function readOnly(glob: string): unknown {
  return {
    name: 'protected-files',
    priority: 100,
    rules: readOnlyRules(glob),
  };
}

/** Every way to change protected/ is refused, and protected/ is unchanged on disk. */
async function expectProtected(protectedDir: string, sandboxSpelling: string): Promise<void> {
  const before = fileTree(protectedDir);
  const attempts: [string, Record<string, unknown>][] = [
    ['write_file', { path: 'protected/planted.txt', content: 'pwned' }],
    ['write_file', { path: `${sandboxSpelling}/protected/abs.txt`, content: 'pwned' }],
    ['edit_file', { path: 'protected/secret.txt', edits: [{ oldText: SECRET, newText: 'PWNED' }] }],
    ['create_directory', { path: 'protected/newdir' }],
    ['move_file', { source: 'protected/secret.txt', destination: 'stolen.txt' }],
    ['move_file', { source: 'work/mine.txt', destination: 'protected/mine.txt' }],
  ];
  for (const [tool, args] of attempts) {
    const r = await call(tool, args);
    expect(text(r), `${tool} ${JSON.stringify(args)}`).toContain('FABRIC_ERR_POLICY_DENIED');
  }
  expect(fileTree(protectedDir)).toEqual(before);
  expect(readFileSync(join(protectedDir, 'secret.txt'), 'utf8')).toBe(SECRET);
  // Work outside protected/ still lands.
  const ok = await call('write_file', { path: 'work/ok.txt', content: 'fine' });
  expect(ok.isError, text(ok)).toBeFalsy();
}

describe('rule patterns through symlinks (rules are resolved like the calls they match)', () => {
  it('the shipped config with `.fabric` a symlink to another volume keeps protected/ read-only', async () => {
    const base = realpathSync(tempDir('pattern-fabric-link'));
    const cwd = join(base, 'project');
    const data = join(base, 'volume', 'fabric-data');
    const realProtected = join(data, 'sandbox', 'protected');
    mkdirSync(cwd, { recursive: true });
    mkdirSync(realProtected, { recursive: true });
    mkdirSync(join(data, 'sandbox', 'work'));
    writeFileSync(join(realProtected, 'secret.txt'), SECRET);
    writeFileSync(join(data, 'sandbox', 'work', 'mine.txt'), 'mine');
    symlinkSync(data, join(cwd, '.fabric'));
    await startShipped(cwd);
    await expectProtected(realProtected, join(cwd, '.fabric', 'sandbox'));
    expect(existsSync(join(data, 'sandbox', 'stolen.txt'))).toBe(false);
  });

  it('protected/ itself a symlink inside the sandbox stays read-only', async () => {
    const sandbox = realpathSync(tempDir('pattern-protected-link'));
    const store = join(sandbox, '.store', 'protected');
    mkdirSync(store, { recursive: true });
    mkdirSync(join(sandbox, 'work'));
    writeFileSync(join(store, 'secret.txt'), SECRET);
    writeFileSync(join(sandbox, 'work', 'mine.txt'), 'mine');
    symlinkSync('.store/protected', join(sandbox, 'protected'));
    await startWith(sandbox, [readOnly(`${sandbox}/protected/**`), DEFAULT_ALLOW]);
    await expectProtected(store, sandbox);
  });

  it('a policy replaced after protected/ became a symlink is resolved again', async () => {
    const sandbox = realpathSync(tempDir('pattern-reload'));
    mkdirSync(join(sandbox, 'work'));
    writeFileSync(join(sandbox, 'work', 'mine.txt'), 'mine');
    await startWith(sandbox, [readOnly(`${sandbox}/protected/**`), DEFAULT_ALLOW]);
    // protected/ appears only now, as a link to a folder elsewhere in the sandbox.
    const store = join(sandbox, 'vault');
    mkdirSync(store);
    writeFileSync(join(store, 'secret.txt'), SECRET);
    symlinkSync('vault', join(sandbox, 'protected'));
    sidecar!.fabric!.policies.addPolicy(readOnly(`${sandbox}/protected/**`), { replace: true });
    await expectProtected(store, sandbox);
  });

  it('an allow-list on a symlinked sandbox allows what is really inside it, nothing else', async () => {
    const base = realpathSync(tempDir('pattern-allow-link'));
    const real = join(base, 'real-sandbox');
    mkdirSync(join(real, 'work'), { recursive: true });
    writeFileSync(join(real, 'work', 'mine.txt'), 'mine');
    const link = join(base, 'sandbox');
    symlinkSync(real, link);
    await startWith(link, [
      {
        name: 'allow-work',
        rules: [
          { tool: 'fs__write_file', action: 'allow', conditions: { path: `${link}/work/**` } },
        ],
      },
    ]);
    const ok = await call('write_file', { path: 'work/ok.txt', content: 'fine' });
    expect(ok.isError, text(ok)).toBeFalsy();
    expect(readFileSync(join(real, 'work', 'ok.txt'), 'utf8')).toBe('fine');
    const no = await call('write_file', { path: 'elsewhere.txt', content: 'x' });
    expect(text(no)).toContain('FABRIC_ERR_POLICY_DENIED');
    expect(existsSync(join(real, 'elsewhere.txt'))).toBe(false);
  });

  /** A sandbox whose protected/ is a link to `vault/` (and `alias` a link to protected/). */
  function linkedVault(prefix: string): { sandbox: string; vault: string } {
    const sandbox = realpathSync(tempDir(prefix));
    const vault = join(sandbox, 'vault');
    mkdirSync(vault);
    mkdirSync(join(sandbox, 'work'));
    writeFileSync(join(vault, 'secret.txt'), SECRET);
    writeFileSync(join(sandbox, 'work', 'mine.txt'), 'mine');
    symlinkSync('vault', join(sandbox, 'protected'));
    symlinkSync('protected', join(sandbox, 'alias'));
    return { sandbox, vault };
  }

  it('a glob-tail rule (`**/protected/**`) on a protected/ that is a symlink matches every name the call goes through', async () => {
    // The glob tail cannot be resolved when the rule is loaded, and the call's real path is
    // `vault/…`: a deny matches the spellings the call passes through on the way there too.
    const { sandbox, vault } = linkedVault('pattern-glob-tail-link');
    await startWith(sandbox, [readOnly('**/protected/**'), DEFAULT_ALLOW]);
    await expectProtected(vault, sandbox);
    for (const path of ['alias/planted.txt', `${sandbox}/alias/abs.txt`]) {
      const r = await call('write_file', { path, content: 'pwned' });
      expect(text(r), path).toContain('FABRIC_ERR_POLICY_DENIED');
    }
    const moved = await call('move_file', { source: 'work/mine.txt', destination: 'alias/m.txt' });
    expect(text(moved)).toContain('FABRIC_ERR_POLICY_DENIED');
    expect(fileTree(vault)).toEqual(['secret.txt']);
    // Reached by its own name the vault is another folder to this rule: it names folders by name.
    const direct = await call('write_file', { path: 'vault/direct.txt', content: 'by name' });
    expect(direct.isError, text(direct)).toBeFalsy();
  });

  it('a link made after the rule was loaded is matched by the name the call gives, without a reload', async () => {
    const sandbox = realpathSync(tempDir('pattern-late-link'));
    mkdirSync(join(sandbox, 'work'));
    writeFileSync(join(sandbox, 'work', 'mine.txt'), 'mine');
    await startWith(sandbox, [readOnly(`${sandbox}/protected/**`), DEFAULT_ALLOW]);
    const vault = join(sandbox, 'vault');
    mkdirSync(vault);
    writeFileSync(join(vault, 'secret.txt'), SECRET);
    symlinkSync('vault', join(sandbox, 'protected'));
    await expectProtected(vault, sandbox);
  });

  it('an allow rule still matches only the real path, not a name on the way', async () => {
    const { sandbox, vault } = linkedVault('pattern-allow-tail-link');
    await startWith(sandbox, [
      {
        name: 'allow-protected-name',
        rules: [
          { tool: 'fs__write_file', action: 'allow', conditions: { path: '**/protected/**' } },
        ],
      },
    ]);
    const r = await call('write_file', { path: 'protected/x.txt', content: 'x' });
    expect(text(r)).toContain('FABRIC_ERR_POLICY_DENIED');
    expect(fileTree(vault)).toEqual(['secret.txt']);
  });
});

describe('config variables are pasted into rule globs escaped', () => {
  it.each(['report [final]', 'app{v2}', 'a*b?c,d'])(
    'the shipped config started from a folder named %j keeps protected/ read-only',
    async (name) => {
      const cwd = join(realpathSync(tempDir('pattern-meta')), name);
      const sandbox = join(cwd, '.fabric', 'sandbox');
      const protectedDir = join(sandbox, 'protected');
      mkdirSync(protectedDir, { recursive: true });
      mkdirSync(join(sandbox, 'work'));
      writeFileSync(join(protectedDir, 'secret.txt'), SECRET);
      writeFileSync(join(sandbox, 'work', 'mine.txt'), 'mine');
      await startShipped(cwd);
      await expectProtected(protectedDir, sandbox);
    },
  );
});

describe('content rules', () => {
  const dlp = (glob: string): unknown => ({
    name: 'dlp',
    priority: 100,
    rules: [{ tool: 'fs__write_file', action: 'deny', conditions: { content: glob } }],
  });

  // A backtracking glob takes minutes on these values; the test timeout is the hang detector.
  it('a multi-megabyte value against a several-star glob is decided without stalling', async () => {
    const sandbox = realpathSync(tempDir('pattern-redos'));
    mkdirSync(join(sandbox, 'work'));
    await startWith(sandbox, [dlp('*BEGIN *PRIVATE KEY*'), DEFAULT_ALLOW]);
    const innocent = 'BEGIN '.repeat(200_000); // 1.2 MB, no key
    const ok = await call('write_file', { path: 'work/blob.txt', content: innocent });
    expect(ok.isError, text(ok).slice(0, 200)).toBeFalsy();
    expect(readFileSync(join(sandbox, 'work', 'blob.txt'), 'utf8')).toBe(innocent);
    const key = `${innocent}-----BEGIN RSA PRIVATE KEY-----\nMIIE\n`;
    const no = await call('write_file', { path: 'work/key.pem', content: key });
    expect(text(no)).toContain('FABRIC_ERR_POLICY_DENIED');
    expect(existsSync(join(sandbox, 'work', 'key.pem'))).toBe(false);
  }, 20_000);

  it('compileGlob matches 1 MB hostile values in linear time', async () => {
    const value = 'BEGIN '.repeat(175_000); // 1 MB
    for (const p of ['*BEGIN *PRIVATE KEY*', '*B?GIN *[P]RIVATE*KEY*', '*{BEGIN,END} *KEY*']) {
      await new Promise((r) => setTimeout(r, 0)); // lets the test timeout fire after a stall
      expect(compileGlob(p).test(value)).toBe(false);
      expect(compileGlob(p).test(`${value}PRIVATE KEY`)).toBe(true);
    }
    await new Promise((r) => setTimeout(r, 0));
  }, 10_000);

  it('content that starts with `/` cannot normalize a forbidden text away (`/<pem>/../..`)', async () => {
    const sandbox = realpathSync(tempDir('pattern-content-dotdot'));
    mkdirSync(join(sandbox, 'work'));
    await startWith(sandbox, [dlp('*PRIVATE KEY*'), DEFAULT_ALLOW]);
    const pem =
      '-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7bq/9+Yk3/LBv1c\n-----END RSA PRIVATE KEY-----\n';
    const evasive = `/${pem}${'/..'.repeat(`/${pem}`.split('/').length)}`;
    for (const content of [pem, evasive, `/${pem}`]) {
      const r = await call('write_file', { path: 'work/k.pem', content });
      expect(text(r)).toContain('FABRIC_ERR_POLICY_DENIED');
    }
    expect(existsSync(join(sandbox, 'work', 'k.pem'))).toBe(false);
    // Ordinary content starting with `/` is still written.
    const ok = await call('write_file', { path: 'work/notes.txt', content: '/etc/hosts is fine' });
    expect(ok.isError, text(ok)).toBeFalsy();
  });
});

describe('relative paths resolve against the roots as the server reads them at start', () => {
  it('a symlinked root: `../<real name>/protected/x` is where the server writes it', async () => {
    // Roots: /B/l (a link to /B/R) and /B/q/R. server-filesystem allows [/B/l, /B/R, /B/q/R]:
    // `../R/protected/x` against /B/l is /B/R/protected/x, inside its real root, so it writes
    // there; against the declared roots alone the first candidate is outside both, and the
    // second (/B/q/R/protected/x) is not what the server touches.
    const base = realpathSync(tempDir('roots-link'));
    const real = join(base, 'R');
    mkdirSync(join(real, 'protected'), { recursive: true });
    mkdirSync(join(real, 'work'));
    writeFileSync(join(real, 'protected', 'secret.txt'), SECRET);
    writeFileSync(join(real, 'work', 'mine.txt'), 'mine');
    const link = join(base, 'l');
    symlinkSync(real, link);
    const other = join(base, 'q', 'R');
    mkdirSync(other, { recursive: true });
    await startWith([link, other], [readOnly(`${link}/protected/**`), DEFAULT_ALLOW]);
    const before = fileTree(join(real, 'protected'));
    for (const [tool, args] of [
      ['write_file', { path: '../R/protected/planted.txt', content: 'pwned' }],
      ['write_file', { path: '../R/protected/secret.txt', content: 'pwned' }],
      ['create_directory', { path: '../R/protected/newdir' }],
      ['move_file', { source: '../R/protected/secret.txt', destination: 'work/stolen.txt' }],
    ] as const) {
      const r = await call(tool, args);
      expect(text(r), `${tool} ${JSON.stringify(args)}`).toContain('FABRIC_ERR_POLICY_DENIED');
    }
    expect(fileTree(join(real, 'protected'))).toEqual(before);
    expect(readFileSync(join(real, 'protected', 'secret.txt'), 'utf8')).toBe(SECRET);
    expect(fileTree(other)).toEqual([]);
    await expectProtected(join(real, 'protected'), link);
  });

  it('a declared root missing at start is skipped, as the server skips it', async () => {
    const base = realpathSync(tempDir('roots-missing'));
    const missing = join(base, 'not-yet');
    const sandbox = join(base, 'sandbox');
    mkdirSync(join(sandbox, 'protected'), { recursive: true });
    mkdirSync(join(sandbox, 'work'));
    writeFileSync(join(sandbox, 'protected', 'secret.txt'), SECRET);
    writeFileSync(join(sandbox, 'work', 'mine.txt'), 'mine');
    await startWith([missing, sandbox], [readOnly(`${sandbox}/protected/**`), DEFAULT_ALLOW]);
    // Created after the server started: the server still does not know it, nor does policy.
    mkdirSync(missing);
    await expectProtected(join(sandbox, 'protected'), sandbox);
    expect(fileTree(missing)).toEqual([]);
  });
});

describe('a relative rule pattern', () => {
  it('is stored, matches no call in the gateway, and the sidecar says so at start', async () => {
    const sandbox = realpathSync(tempDir('pattern-relative'));
    mkdirSync(join(sandbox, 'protected'));
    const logs: { level: string; msg: string }[] = [];
    await startWith(sandbox, [readOnly('protected/**'), DEFAULT_ALLOW], {
      logger: (e) => logs.push({ level: e.level, msg: e.msg }),
    });
    const warned = logs.filter((l) => l.level === 'warn' && l.msg.includes('relative path'));
    // One per condition: write_file/edit_file/create_directory's path, move_file's two.
    expect(warned.map((l) => l.msg)).toEqual([
      expect.stringMatching(/^policy protected-files: rule #0 condition "path": "protected\/\*\*"/),
      expect.stringMatching(/^policy protected-files: rule #1 condition "source"/),
      expect.stringMatching(/^policy protected-files: rule #2 condition "destination"/),
    ]);
    // What the warning says: the call is not matched (the default-allow lets it through).
    const r = await call('write_file', { path: 'protected/x.txt', content: 'x' });
    expect(r.isError, text(r)).toBeFalsy();
    expect(readFileSync(join(sandbox, 'protected', 'x.txt'), 'utf8')).toBe('x');
  });
});

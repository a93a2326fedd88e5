/**
 * A hostile agent with one token against what a path reaches beyond its own name, through the
 * real sidecar and a real server-filesystem, every effect checked on disk: a hard link (made by
 * another process) to a file under a read-denied folder; a walk or listing (`directory_tree`,
 * `search_files`, `list_directory`, `list_directory_with_sizes`) started above a denied folder;
 * and a read-only folder moved away and back by moving one of its ancestors (or a folder
 * carrying a `protected/` moved into the place of a read-only one that does not exist yet).
 * Everyday calls that reach nothing denied still work, with the shipped example config too.
 */
import {
  existsSync,
  linkSync,
  mkdirSync,
  readFileSync,
  realpathSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  agentToken,
  closeSidecar,
  FILESYSTEM_BIN,
  httpClient,
  readOnlyRules,
  startTestSidecar,
  tempDir,
  text,
  fileTree,
  startShippedSidecar,
} from '../fixtures/gateway/harness.js';

const ORIGINAL = 'original';
const KEY = 'TOPSECRET-KEY';
const DENIED = 'FABRIC_ERR_POLICY_DENIED';

async function callTool(
  client: Client,
  name: string,
  args: Record<string, unknown>,
): Promise<CallToolResult> {
  return (await client.callTool({ name, arguments: args })) as CallToolResult;
}

describe('what a path reaches: hard links, walks, ancestor moves (real sidecar, real server-filesystem)', () => {
  const base = realpathSync(tempDir('path-reach'));
  const sandbox = join(base, 'sandbox');
  const protectedDir = join(sandbox, 'a', 'protected');
  const secretsDir = join(sandbox, 'secrets');
  let sidecar: Sidecar;
  let client: Client;
  let before: string[];

  const call = (name: string, args: Record<string, unknown>): Promise<CallToolResult> =>
    callTool(client, `fs__${name}`, args);

  const protectedUntouched = (): void => {
    expect(fileTree(protectedDir)).toEqual(before);
    expect(readFileSync(join(protectedDir, 'f'), 'utf8')).toBe(ORIGINAL);
  };

  beforeAll(async () => {
    mkdirSync(protectedDir, { recursive: true });
    mkdirSync(secretsDir);
    mkdirSync(join(sandbox, 'work', 'sub'), { recursive: true });
    writeFileSync(join(protectedDir, 'f'), ORIGINAL);
    mkdirSync(join(sandbox, 'p\u00e9', 'protected'), { recursive: true }); // NFC "pé"
    writeFileSync(join(sandbox, 'p\u00e9', 'protected', 'f'), ORIGINAL);
    writeFileSync(join(secretsDir, 'key.txt'), KEY);
    writeFileSync(join(sandbox, 'work', 'mine.txt'), 'mine');
    writeFileSync(join(sandbox, 'work', 'sub', 'x.txt'), 'x');
    // Another process links the secret into the agent's folder (or it was there already).
    linkSync(join(secretsDir, 'key.txt'), join(sandbox, 'work', 'hard'));
    // Two names of one file, both outside any denied folder (a pnpm store's `node_modules`).
    writeFileSync(join(sandbox, 'work', 'pair-a'), 'pair');
    linkSync(join(sandbox, 'work', 'pair-a'), join(sandbox, 'work', 'pair-b'));
    before = fileTree(protectedDir);
    const under = (dir: string): string => `${sandbox}/${dir}/**`;
    sidecar = await startTestSidecar({
      upstreams: {
        fs: {
          command: process.execPath,
          args: [FILESYSTEM_BIN, sandbox],
          stderr: 'ignore',
          paths: { roots: [sandbox] },
        },
        // The same server, trusting hard links (matched by their names only).
        named: {
          command: process.execPath,
          args: [FILESYSTEM_BIN, sandbox],
          stderr: 'ignore',
          paths: { roots: [sandbox], hardLinks: 'named' },
        },
      },
      policies: [
        {
          name: 'guarded',
          priority: 100,
          rules: [
            ...readOnlyRules(under('a/protected')),
            // c/protected/ is read-only before it exists.
            ...readOnlyRules(under('c/protected')),
            ...readOnlyRules(under('p\u00e9/protected')),
            // secrets/ is read by no tool, through any of its path parameters.
            { tool: '*', action: 'deny', conditions: { path: under('secrets') } },
            { tool: '*', action: 'deny', conditions: { paths: under('secrets') } },
            { tool: '*', action: 'deny', conditions: { source: under('secrets') } },
          ],
        },
        { name: 'default-allow', rules: [{ tool: '*', action: 'allow' }] },
      ],
      agents: [{ name: 'attacker' }],
    });
    client = await httpClient(sidecar.url!, agentToken(sidecar, 'attacker'));
  });

  afterAll(async () => {
    await client?.close();
    await closeSidecar(sidecar);
  });

  it('moving an ancestor of a read-only folder away (to write into it and move it back) is denied', async () => {
    const away = await call('move_file', { source: 'a', destination: 'b' });
    expect(away.isError).toBe(true);
    expect(text(away)).toContain(DENIED);
    // Had it moved, this write would land in the read-only folder once `b` moved back.
    const w = await call('write_file', { path: 'b/protected/f', content: 'pwned' });
    expect(w.isError).toBe(true);
    const back = await call('move_file', { source: 'b', destination: 'a' });
    expect(back.isError).toBe(true);
    expect(existsSync(join(sandbox, 'b'))).toBe(false);
    protectedUntouched();
  });

  it('the whole sandbox-relative chain, spelled absolute and with ./, is denied too', async () => {
    for (const source of [join(sandbox, 'a'), './a', 'work/../a']) {
      const r = await call('move_file', { source, destination: 'moved' });
      expect(r.isError, source).toBe(true);
      expect(text(r)).toContain(DENIED);
    }
    expect(existsSync(join(sandbox, 'moved'))).toBe(false);
    protectedUntouched();
  });

  it('an ancestor named in another Unicode spelling (NFD for an NFC folder) is caught too', async () => {
    const r = await call('move_file', { source: 'pe\u0301', destination: 'moved-nfd' });
    expect(r.isError).toBe(true);
    expect(text(r)).toContain(DENIED);
    expect(existsSync(join(sandbox, 'moved-nfd'))).toBe(false);
    expect(readFileSync(join(sandbox, 'p\u00e9', 'protected', 'f'), 'utf8')).toBe(ORIGINAL);
  });

  it('a folder carrying protected/ cannot be moved into the place of a read-only one', async () => {
    const dir = await call('create_directory', { path: 'work/evil/protected' });
    expect(dir.isError, text(dir)).toBeFalsy();
    const made = await call('write_file', { path: 'work/evil/protected/f', content: 'planted' });
    expect(made.isError, text(made)).toBeFalsy();
    const r = await call('move_file', { source: 'work/evil', destination: 'c' });
    expect(r.isError).toBe(true);
    expect(text(r)).toContain(DENIED);
    expect(existsSync(join(sandbox, 'c'))).toBe(false);
    expect(readFileSync(join(sandbox, 'work', 'evil', 'protected', 'f'), 'utf8')).toBe('planted');
  });

  it('a hard link to a file under a denied folder does not read it, by any read tool', async () => {
    for (const [tool, args] of [
      ['read_text_file', { path: 'work/hard' }],
      ['read_file', { path: 'work/hard' }],
      ['read_media_file', { path: 'work/hard' }],
      ['get_file_info', { path: 'work/hard' }],
      ['read_multiple_files', { paths: ['work/mine.txt', 'work/hard'] }],
    ] as const) {
      const r = await call(tool, args);
      expect(r.isError, tool).toBe(true);
      expect(text(r), tool).toContain(DENIED);
      expect(text(r), tool).not.toContain(KEY);
    }
  });

  it('paths.hardLinks: named matches a hard-linked file by its names only (the operator trusts them)', async () => {
    const closed = await call('read_text_file', { path: 'work/pair-a' });
    expect(closed.isError).toBe(true);
    expect(text(closed)).toContain(DENIED);
    const named = await callTool(client, 'named__read_text_file', { path: 'work/pair-a' });
    expect(named.isError, text(named)).toBeFalsy();
    expect(text(named)).toContain('pair');
    const secret = await callTool(client, 'named__read_text_file', { path: 'secrets/key.txt' });
    expect(text(secret)).toContain(DENIED);
  });

  it('a walk or listing started above a denied folder is denied: no name below it leaks', async () => {
    for (const [tool, args] of [
      ['directory_tree', { path: '.' }],
      ['directory_tree', { path: sandbox }],
      ['search_files', { path: '.', pattern: '**/key*' }],
      ['list_directory', { path: 'secrets' }],
      ['list_directory_with_sizes', { path: 'secrets/' }],
      ['list_directory', { path: '.' }],
    ] as const) {
      const r = await call(tool, args);
      expect(r.isError, `${tool} ${JSON.stringify(args)}`).toBe(true);
      expect(text(r)).toContain(DENIED);
      expect(text(r)).not.toContain('key.txt');
    }
  });

  it('everyday calls that reach nothing denied still work', async () => {
    const read = await call('read_text_file', { path: 'work/mine.txt' });
    expect(text(read)).toContain('mine');
    const list = await call('list_directory', { path: 'work' });
    expect(list.isError, text(list)).toBeFalsy();
    expect(text(list)).toContain('mine.txt');
    const treeOf = await call('directory_tree', { path: 'work/sub' });
    expect(text(treeOf)).toContain('x.txt');
    const found = await call('search_files', { path: 'work', pattern: '**/x*' });
    expect(text(found)).toContain('x.txt');
    const moved = await call('move_file', { source: 'work/sub', destination: 'work/sub2' });
    expect(moved.isError, text(moved)).toBeFalsy();
    expect(readFileSync(join(sandbox, 'work', 'sub2', 'x.txt'), 'utf8')).toBe('x');
    const file = await call('move_file', { source: 'work/mine.txt', destination: 'work/m.txt' });
    expect(file.isError, text(file)).toBeFalsy();
    expect(readFileSync(join(sandbox, 'work', 'm.txt'), 'utf8')).toBe('mine');
    const write = await call('write_file', { path: 'a/other.txt', content: 'ok' });
    expect(write.isError, text(write)).toBeFalsy();
    expect(readFileSync(join(sandbox, 'a', 'other.txt'), 'utf8')).toBe('ok');
  });
});

describe('the shipped example config: listing, walking and moving folders still work', () => {
  const base = realpathSync(tempDir('path-reach-shipped'));
  const sandbox = join(base, '.fabric', 'sandbox');
  let sidecar: Sidecar;
  let client: Client;

  const call = (name: string, args: Record<string, unknown>): Promise<CallToolResult> =>
    callTool(client, `fs__${name}`, args);

  beforeAll(async () => {
    mkdirSync(join(sandbox, 'protected'), { recursive: true });
    mkdirSync(join(sandbox, 'work', 'sub'), { recursive: true });
    writeFileSync(join(sandbox, 'protected', 'secret.txt'), ORIGINAL);
    writeFileSync(join(sandbox, 'work', 'sub', 'x.txt'), 'x');
    sidecar = await startShippedSidecar(base, { memoryState: true });
    client = await httpClient(sidecar.url!, agentToken(sidecar, 'local-agent'));
  });

  afterAll(async () => {
    await client?.close();
    await closeSidecar(sidecar);
  });

  it('lists and walks the sandbox (no rule denies reading), moves a folder and back', async () => {
    const list = await call('list_directory', { path: '.' });
    expect(text(list)).toContain('protected');
    const walked = await call('directory_tree', { path: '.' });
    expect(text(walked)).toContain('secret.txt');
    const found = await call('search_files', { path: '.', pattern: '**/*.txt' });
    expect(text(found)).toContain('x.txt');
    const away = await call('move_file', { source: 'work', destination: 'work2' });
    expect(away.isError, text(away)).toBeFalsy();
    const back = await call('move_file', { source: 'work2', destination: 'work' });
    expect(back.isError, text(back)).toBeFalsy();
    expect(readFileSync(join(sandbox, 'work', 'sub', 'x.txt'), 'utf8')).toBe('x');
    // Moving the folder that holds protected/ into it is still denied, and nothing moved.
    const into = await call('move_file', { source: 'work', destination: 'protected/work' });
    expect(into.isError).toBe(true);
    expect(readFileSync(join(sandbox, 'protected', 'secret.txt'), 'utf8')).toBe(ORIGINAL);
    expect(fileTree(join(sandbox, 'protected'))).toEqual(['secret.txt']);
  });
});

/**
 * A hostile agent against the path policy with odd argument shapes and every tool that reads or
 * writes, through the real sidecar and a real server-filesystem (path-policy.test.ts covers the
 * spellings of one path): hard links, a parameter given as an array, number or object, extra
 * and differently-cased keys, the same key twice in the raw JSON body, `file:` URIs, `~user`,
 * backslashes and percent-encoding (all plain names to the server), `..` after a symlink, and a
 * read-denied folder reached by each read tool. Every effect is checked on disk.
 */
import {
  existsSync,
  linkSync,
  mkdirSync,
  readFileSync,
  realpathSync,
  symlinkSync,
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
  startTestSidecar,
  tempDir,
  text,
  readOnlyRules,
  fileTree,
} from '../fixtures/gateway/harness.js';

const SECRET = 'keep me';
const KEY = 'TOPSECRET';
const DENIED = 'FABRIC_ERR_POLICY_DENIED';

describe('argument shapes and read tools against server-filesystem (real sidecar)', () => {
  const base = realpathSync(tempDir('path-shapes'));
  const sandbox = join(base, 'sandbox');
  const protectedDir = join(sandbox, 'protected');
  const secretsDir = join(sandbox, 'secrets');
  let sidecar: Sidecar;
  let client: Client;
  let token: string;
  let before: string[];

  const call = async (name: string, args: unknown): Promise<CallToolResult> =>
    (await client.callTool({
      name: `fs__${name}`,
      arguments: args as Record<string, unknown>,
    })) as CallToolResult;

  const protectedUntouched = (): void => {
    expect(fileTree(protectedDir)).toEqual(before);
    expect(readFileSync(join(protectedDir, 'secret.txt'), 'utf8')).toBe(SECRET);
  };

  /** A tools/call posted as raw text on the client's session (to send what JSON objects cannot). */
  const rawCall = async (id: number, argumentsJson: string): Promise<string> => {
    const { sessionId } = (client as unknown as { transport: { sessionId?: string } }).transport;
    const res = await fetch(sidecar.url!, {
      method: 'POST',
      headers: {
        authorization: `Bearer ${token}`,
        'content-type': 'application/json',
        accept: 'application/json, text/event-stream',
        'mcp-session-id': sessionId ?? '',
        'mcp-protocol-version': '2025-06-18',
      },
      body: `{"jsonrpc":"2.0","id":${id},"method":"tools/call","params":{"name":"fs__write_file","arguments":${argumentsJson}}}`,
    });
    return res.text();
  };

  beforeAll(async () => {
    mkdirSync(join(protectedDir, 'sub'), { recursive: true });
    mkdirSync(secretsDir);
    mkdirSync(join(sandbox, 'work', 'deep'), { recursive: true });
    writeFileSync(join(protectedDir, 'secret.txt'), SECRET);
    writeFileSync(join(secretsDir, 'key.txt'), KEY);
    writeFileSync(join(sandbox, 'work', 'mine.txt'), 'mine');
    linkSync(join(protectedDir, 'secret.txt'), join(sandbox, 'work', 'hard'));
    linkSync(join(protectedDir, 'secret.txt'), join(sandbox, 'work', 'hard2'));
    symlinkSync('../secrets', join(sandbox, 'work', 'slink'));
    symlinkSync('../../protected/sub', join(sandbox, 'work', 'deep', 'psub'));
    before = fileTree(protectedDir);
    const under = (dir: string): string => `${sandbox}/${dir}/**`;
    sidecar = await startTestSidecar({
      upstreams: {
        fs: {
          command: process.execPath,
          args: [FILESYSTEM_BIN, sandbox],
          stderr: 'ignore',
          paths: { roots: [sandbox] },
          env: { HOME: sandbox },
        },
      },
      policies: [
        {
          name: 'protected',
          priority: 100,
          rules: [
            ...readOnlyRules(under('protected')),
            // secrets/ is not to be read by any tool, by any of its path parameters.
            { tool: 'fs__*', action: 'deny', conditions: { path: under('secrets') } },
            { tool: 'fs__*', action: 'deny', conditions: { paths: under('secrets') } },
            { tool: 'fs__*', action: 'deny', conditions: { source: under('secrets') } },
          ],
        },
        { name: 'default-allow', rules: [{ tool: '*', action: 'allow' }] },
      ],
      agents: [{ name: 'attacker' }],
    });
    token = agentToken(sidecar, 'attacker');
    client = await httpClient(sidecar.url!, token);
  });

  afterAll(async () => {
    await client?.close();
    await closeSidecar(sidecar);
  });

  it('writes through a hard link to a protected file are denied (its other names are unknown); it is unchanged', async () => {
    const w = await call('write_file', { path: 'work/hard', content: 'pwned' });
    expect(w.isError).toBe(true);
    expect(text(w)).toContain(DENIED);
    const e = await call('edit_file', {
      path: 'work/hard2',
      edits: [{ oldText: SECRET, newText: 'PWNED' }],
    });
    expect(e.isError).toBe(true);
    expect(text(e)).toContain(DENIED);
    expect(readFileSync(join(sandbox, 'work', 'hard'), 'utf8')).toBe(SECRET);
    expect(readFileSync(join(sandbox, 'work', 'hard2'), 'utf8')).toBe(SECRET);
    protectedUntouched();
  });

  it.each([
    ['an array', ['protected/x.txt']],
    ['a number', 42],
    ['an object', { toString: 'protected/x.txt' }],
    ['null', null],
  ])('a path given as %s is refused, and nothing is written', async (_n, path) => {
    const r = await call('write_file', { path, content: 'pwned' });
    expect(r.isError).toBe(true);
    protectedUntouched();
  });

  it('extra keys the server does not read cannot redirect the write: it lands where `path` says', async () => {
    const r = await call('write_file', {
      path: 'work/extra.txt',
      content: 'x',
      Path: 'protected/x.txt',
      arguments: { path: 'protected/x.txt' },
    });
    expect(r.isError, text(r)).toBeFalsy();
    expect(readFileSync(join(sandbox, 'work', 'extra.txt'), 'utf8')).toBe('x');
    protectedUntouched();
  });

  it('the same key twice in the raw JSON: policy and server both read the last one', async () => {
    const denied = await rawCall(
      901,
      '{"path":"work/dup.txt","path":"protected/dup.txt","content":"x"}',
    );
    expect(denied).toContain(DENIED);
    const allowed = await rawCall(
      902,
      '{"path":"protected/dup2.txt","path":"work/dup2.txt","content":"x"}',
    );
    expect(allowed).not.toContain(DENIED);
    expect(readFileSync(join(sandbox, 'work', 'dup2.txt'), 'utf8')).toBe('x');
    expect(existsSync(join(sandbox, 'work', 'dup.txt'))).toBe(false);
    const proto = await rawCall(903, '{"__proto__":{"path":"protected/p.txt"},"content":"x"}');
    expect(proto).toContain('-32602'); // no own `path`: the server refuses the call
    protectedUntouched();
  });

  it.each([
    ['FILE: URI', (p: string) => `FILE://${p}/x.txt`],
    ['file: URI', (p: string) => `file:${p}/x.txt`],
    ['~user', () => '~root/x.txt'],
    ['backslash', () => 'protected\\x.txt'],
    ['percent-encoded slash', () => 'protected%2Fx.txt'],
  ])('%s is a plain name to the server: nothing lands in protected/', async (_n, spell) => {
    await call('write_file', { path: spell(protectedDir), content: 'x' });
    protectedUntouched();
  });

  it('`..` after a symlink is lexical, as the server reads it; through the link is protected/', async () => {
    const up = await call('write_file', { path: 'work/deep/psub/../x.txt', content: 'x' });
    expect(up.isError, text(up)).toBeFalsy();
    expect(readFileSync(join(sandbox, 'work', 'deep', 'x.txt'), 'utf8')).toBe('x');
    const through = await call('write_file', { path: 'work/deep/psub/x.txt', content: 'x' });
    expect(text(through)).toContain(DENIED);
    protectedUntouched();
  });

  it.each([
    ['read_text_file', { path: 'work/slink/key.txt' }],
    ['read_text_file', { path: '~/secrets/key.txt' }],
    ['read_media_file', { path: 'secrets/key.txt' }],
    ['read_multiple_files', { paths: ['work/mine.txt', 'work/slink/key.txt'] }],
    ['get_file_info', { path: 'work/slink' }],
    ['list_directory', { path: 'work/slink/.' }],
    ['list_directory_with_sizes', { path: 'work/slink/' }],
    ['directory_tree', { path: 'work/slink' }],
    ['search_files', { path: 'work/slink', pattern: '*' }],
    ['edit_file', { path: 'work/slink/key.txt', edits: [], dryRun: true }],
    ['move_file', { source: 'work/slink/key.txt', destination: 'work/key.txt' }],
  ])('%s of a read-denied folder (%j) is refused and shows nothing of it', async (tool, args) => {
    const r = await call(tool, args);
    expect(text(r)).toContain(DENIED);
    expect(text(r)).not.toContain(KEY);
    expect(readFileSync(join(secretsDir, 'key.txt'), 'utf8')).toBe(KEY);
    expect(existsSync(join(sandbox, 'work', 'key.txt'))).toBe(false);
  });
});

/**
 * The path lock (src/gateway/path-lock.ts) against a hostile agent with one token: a
 * `write_file` through a folder that a concurrent `move_file` is moving into place, where the
 * folder holds a symlink into the read-only `protected/`. Without the lock the write was checked
 * while its folder was missing (allowed) and ran after the move, landing in `protected/` (121 of
 * 200 tries). Real server-filesystem, real sidecar, the official SDK client; the effect is
 * checked on disk.
 */
import {
  existsSync,
  mkdirSync,
  readdirSync,
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
  DEFAULT_ALLOW,
  FILESYSTEM_KEEP_NAMES,
  filesystemUpstream,
  httpClient,
  tempDir,
  startTestSidecar,
  text,
  readOnlyRules,
} from '../fixtures/gateway/harness.js';
import { parse } from 'yaml';
import { defaultConfigPath } from '../../src/server/config-file.js';

/** The shipped config's declaration of server-filesystem's tools (examples/fabric.yaml). */
function shippedKeepNames(): string[] {
  const config = parse(readFileSync(defaultConfigPath(), 'utf8')) as {
    upstreams: { fs: { paths?: { keepNames?: string[] } } };
  };
  return config.upstreams.fs.paths?.keepNames ?? [];
}

describe('path lock: a concurrent move_file cannot redirect a checked write', () => {
  const sandbox = join(realpathSync(tempDir('pathlock-race')), 'sandbox');
  const protectedDir = join(sandbox, 'protected');
  let sidecar: Sidecar;
  let client: Client;
  const call = async (name: string, args: Record<string, unknown>): Promise<string> => {
    try {
      const r = (await client.callTool({ name: `fs__${name}`, arguments: args })) as CallToolResult;
      return `${r.isError ? 'ERR' : 'OK'} ${text(r)}`;
    } catch (error) {
      return `THROW ${String(error)}`;
    }
  };

  beforeAll(async () => {
    mkdirSync(protectedDir, { recursive: true });
    mkdirSync(join(sandbox, 'work'));
    writeFileSync(join(protectedDir, 'secret.txt'), 'keep me');
    const deny = `${sandbox}/protected/**`;
    sidecar = await startTestSidecar({
      upstreams: {
        // server-filesystem with the shipped config's `keepNames` (asserted equal above).
        fs: { ...filesystemUpstream(sandbox), env: { HOME: sandbox } },
      },
      policies: [
        {
          name: 'protected',
          priority: 100,
          rules: readOnlyRules(deny),
        },
        DEFAULT_ALLOW,
      ],
      agents: [{ name: 'attacker' }],
    });
    client = await httpClient(sidecar.url!, agentToken(sidecar, 'attacker'));
  });

  afterAll(async () => {
    await client?.close();
    await closeSidecar(sidecar);
  });

  it('the shipped config shares the lock for every server-filesystem tool but move_file', () => {
    const keep = shippedKeepNames();
    expect(keep).toEqual([...FILESYSTEM_KEEP_NAMES]); // what the other tests run with
    expect(keep).not.toContain('move_file');
    for (const tool of ['read_text_file', 'write_file', 'edit_file', 'create_directory']) {
      expect(keep).toContain(tool);
    }
  });

  it('200 write/move pairs (link to protected/ and to the sandbox above it): nothing lands in protected/', async () => {
    const N = 200;
    for (let i = 0; i < N; i++) {
      mkdirSync(join(sandbox, 'work', `box${i}`));
      symlinkSync(i % 2 === 0 ? '../protected' : '..', join(sandbox, 'work', `box${i}`, 'l'));
    }
    const moved: string[] = [];
    const legit: string[] = [];
    for (let i = 0; i < N; i++) {
      const target = i % 2 === 0 ? `x${i}/l/pwn${i}.txt` : `x${i}/l/protected/pwn${i}.txt`;
      const [, move, ok] = await Promise.all([
        call('write_file', { path: target, content: 'pwned' }),
        call('move_file', { source: `work/box${i}`, destination: `x${i}` }),
        // A legitimate write beside them, sharing the lock with the attacker's write.
        call('write_file', { path: `work/ok${i}.txt`, content: 'fine' }),
      ]);
      moved.push(move);
      legit.push(ok);
    }
    // On disk: protected/ holds what it held, and nothing else.
    expect(readdirSync(protectedDir)).toEqual(['secret.txt']);
    // The legitimate calls all went through: every move, every write beside them.
    expect(moved.filter((m) => !m.startsWith('OK'))).toEqual([]);
    expect(legit.filter((m) => !m.startsWith('OK'))).toEqual([]);
    for (let i = 0; i < N; i++) {
      expect(existsSync(join(sandbox, `x${i}`, 'l'))).toBe(true);
      expect(existsSync(join(sandbox, 'work', `ok${i}.txt`))).toBe(true);
    }
    // The lock is free once every call answered.
    expect(sidecar.gateway.upstreams.get('fs')!.pathLock.state).toEqual({
      shared: 0,
      exclusive: false,
      waiting: 0,
    });
  }, 300_000);
});

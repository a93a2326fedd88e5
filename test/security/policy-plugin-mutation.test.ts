/**
 * A policy plugin that writes over what it is given — the call's arguments (`ctx.rawParams ??
 * ctx.params`) or the context's fields — must not change what the upstream receives, what the
 * rules decided on, or what the other providers see: the policy sees and forwards the same
 * thing. Before, a plugin's in-place write went to the upstream: a write the rules allowed (to
 * `public/`) landed in `protected/`, which they deny, with the plugin's content; and an agent's
 * answer to an upstream's callback reached the upstream as the plugin rewrote it.
 *
 * Real sidecar, real server-filesystem on a temp folder, the user plugin loaded by path from
 * the config, the official SDK client; the files on disk and the audit log are asserted.
 */
import { existsSync, mkdirSync, readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  answeringClient,
  auditLines,
  CALLBACK_SERVER,
  closeSidecar,
  DEFAULT_ALLOW,
  EVERYTHING_BIN,
  filesystemUpstream,
  startTestSidecar,
  tempDir,
  text,
  until,
} from '../fixtures/gateway/harness.js';

const MUTATING = fileURLToPath(new URL('../fixtures/plugins/mutating-policy.mjs', import.meta.url));

describe('a policy plugin that writes over the call it is asked about', () => {
  const dir = tempDir('plugin-mutation');
  const root = join(dir, 'root');
  const auditPath = join(dir, 'audit.jsonl');
  let sidecar: Sidecar | undefined;
  let client: Client;

  beforeAll(async () => {
    mkdirSync(join(root, 'public'), { recursive: true });
    mkdirSync(join(root, 'protected'), { recursive: true });
    sidecar = await startTestSidecar({
      upstreams: {
        fs: filesystemUpstream(root),
        ev: { command: process.execPath, args: [EVERYTHING_BIN, 'stdio'], stderr: 'ignore' },
        cb: { command: process.execPath, args: [CALLBACK_SERVER], stderr: 'ignore' },
      },
      policies: [
        {
          name: 'protect',
          priority: 100,
          rules: [
            { tool: 'fs__write_file', action: 'deny', conditions: { path: '**/protected/**' } },
          ],
        },
        DEFAULT_ALLOW,
      ],
      plugins: [
        {
          module: MUTATING,
          options: {
            priority: 500,
            set: {
              path: join(root, 'protected', 'owned.txt'),
              content: 'SCRIBBLED',
              message: 'SCRIBBLED',
            },
          },
        },
      ],
      agents: [{ name: 'a' }],
      audit: { path: auditPath, flushIntervalMs: 0 },
    });
    client = await answeringClient(sidecar, 'a', { text: 'the agent wrote this' });
  });

  afterAll(async () => {
    await client?.close();
    await closeSidecar(sidecar);
  });

  it('forwards the write the rules allowed, as the agent sent it', async () => {
    const res = (await client.callTool({
      name: 'fs__write_file',
      arguments: { path: join(root, 'public', 'a.txt'), content: 'hello' },
    })) as CallToolResult;
    expect(res.isError, text(res)).not.toBe(true);
    expect(readFileSync(join(root, 'public', 'a.txt'), 'utf8')).toBe('hello');
    expect(readdirSync(join(root, 'protected'))).toEqual([]);
    expect(existsSync(join(root, 'protected', 'owned.txt'))).toBe(false);
    const lines = () => auditLines(sidecar!, auditPath, 'a', 'fs__write_file');
    await until(() => lines().length >= 1);
    expect(lines()[0]).toMatchObject({ decision: 'allow', outcome: 'ok' });
  });

  it('still refuses the write the rules deny', async () => {
    const res = (await client.callTool({
      name: 'fs__write_file',
      arguments: { path: join(root, 'protected', 'b.txt'), content: 'x' },
    })) as CallToolResult;
    expect(res.isError).toBe(true);
    expect(readdirSync(join(root, 'protected'))).toEqual([]);
  });

  it('forwards arguments the policy sees as they are (no resolved view) unchanged', async () => {
    const res = (await client.callTool({
      name: 'ev__echo',
      arguments: { message: 'as sent' },
    })) as CallToolResult;
    expect(text(res)).toBe('Echo: as sent');
  });

  it("sends the upstream the agent's answer to its callback, as the agent wrote it", async () => {
    const got = text(await client.callTool({ name: 'cb__sample', arguments: {} }));
    expect(got).toMatch(/^received: /);
    expect(got).toContain('the agent wrote this');
    expect(got).not.toContain('SCRIBBLED');
    expect(got).not.toContain('scribbled');
  });
});

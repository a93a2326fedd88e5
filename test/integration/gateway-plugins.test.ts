import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
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
} from '../fixtures/gateway/harness.js';

const SECRET_GUARD = fileURLToPath(new URL('../../plugins/secret-guard/index.js', import.meta.url));

/** The first-party secret-guard plugin, loaded from config like a user's plugin, in front of a real filesystem server. */
describe('policy plugins in the sidecar (secret-guard)', () => {
  const sandbox = tempDir('plugins');
  let sidecar: Sidecar;
  let agent: Client;

  beforeAll(async () => {
    sidecar = await startTestSidecar({
      upstreams: {
        fs: { command: process.execPath, args: [FILESYSTEM_BIN, sandbox], stderr: 'ignore' },
      },
      policies: [DEFAULT_ALLOW],
      plugins: [{ module: SECRET_GUARD }],
      agents: [{ name: 'writer' }],
    });
    agent = await httpClient(sidecar.url!, agentToken(sidecar, 'writer'));
  });

  afterAll(async () => {
    await agent?.close();
    await closeSidecar(sidecar);
  });

  it('refuses a call that would hand a credential to a tool, without echoing it', async () => {
    const key = 'AKIAIOSFODNN7EXAMPLE';
    const path = join(sandbox, 'creds.txt');
    const res = (await agent.callTool({
      name: 'fs__write_file',
      arguments: { path, content: `aws_access_key_id = ${key}` },
    })) as CallToolResult;
    expect(res.isError).toBe(true);
    expect(text(res)).toMatch(/params\.content looks like a secret \(AWS access key id\)/);
    expect(text(res)).not.toContain(key);
    expect(existsSync(path)).toBe(false);
  });

  it('lets ordinary calls through', async () => {
    const path = join(sandbox, 'notes.txt');
    const res = (await agent.callTool({
      name: 'fs__write_file',
      arguments: { path, content: 'hello' },
    })) as CallToolResult;
    expect(res.isError, text(res)).toBeFalsy();
    expect(existsSync(path)).toBe(true);
  });

  it('fails start-up with a typed error for a plugin that does not load', async () => {
    await expect(
      startTestSidecar({ plugins: [{ module: join(sandbox, 'missing-plugin.js') }] }),
    ).rejects.toMatchObject({ code: 'FABRIC_ERR_PLUGIN' });
  });
});

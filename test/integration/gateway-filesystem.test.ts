import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseSidecarConfig } from '../../src/server/config-file.js';
import { Sidecar } from '../../src/server/sidecar.js';
import { FakeBackend } from '../fixtures/gateway/fake-backend.js';
import { FILESYSTEM_BIN, httpClient, tempDir } from '../fixtures/gateway/harness.js';

const text = (r: unknown): string =>
  ((r as CallToolResult).content[0] as { text: string } | undefined)?.text ?? '';

describe('gateway with server-filesystem and the guide policies', () => {
  const sandbox = tempDir('fs');
  const backend = new FakeBackend();
  let sidecar: Sidecar;
  let client: Client;

  beforeAll(async () => {
    mkdirSync(join(sandbox, 'protected'), { recursive: true });
    writeFileSync(join(sandbox, 'protected', 'secret.txt'), 'keep me');
    const config = parseSidecarConfig(
      JSON.stringify({
        http: { port: 0 },
        upstreams: {
          fs: { command: process.execPath, args: [FILESYSTEM_BIN, sandbox], stderr: 'ignore' },
        },
        audit: { path: join(sandbox, '..', `${sandbox.split('/').pop()}-audit.log`) },
      }),
      'test.json',
    );
    backend.engine.addPolicy({
      name: 'protected-files',
      rules: [
        { tool: 'fs__write_file', action: 'deny', conditions: { path: `${sandbox}/protected/**` } },
        { tool: 'fs__create_directory', action: 'deny' },
      ],
    });
    sidecar = await Sidecar.start({ config, backend });
    const agent = await backend.spawn({ name: 'fs-agent' });
    client = await httpClient(sidecar.url!, agent.credential);
  });

  afterAll(async () => {
    await client?.close();
    await sidecar?.close();
  });

  it('lists namespaced tools and hides tools denied outright', async () => {
    const { tools } = await client.listTools();
    const names = tools.map((t) => t.name);
    expect(names).toContain('fs__read_text_file');
    expect(names).toContain('fs__write_file'); // its deny rule has conditions: not hidden
    expect(names).not.toContain('fs__create_directory');
    expect(names).toContain('fabric__claim_task');
  });

  it('allows reads, including under the protected path', async () => {
    const r = await client.callTool({
      name: 'fs__read_text_file',
      arguments: { path: join(sandbox, 'protected', 'secret.txt') },
    });
    expect(r.isError).toBeFalsy();
    expect(text(r)).toContain('keep me');
  });

  it('allows writes outside the protected path', async () => {
    const r = await client.callTool({
      name: 'fs__write_file',
      arguments: { path: join(sandbox, 'notes.txt'), content: 'hello' },
    });
    expect(r.isError).toBeFalsy();
    expect(readFileSync(join(sandbox, 'notes.txt'), 'utf8')).toBe('hello');
  });

  it.each([
    ['plain', (s: string) => `${s}/protected/x.txt`],
    ['dot-dot', (s: string) => `${s}/protected/../protected/x.txt`],
    ['double slashes', (s: string) => `/${s}//protected//x.txt`],
    ['dot segment', (s: string) => `${s}/./protected/x.txt`],
  ])('denies a write under the protected path (%s spelling)', async (_name, spell) => {
    const r = await client.callTool({
      name: 'fs__write_file',
      arguments: { path: spell(sandbox), content: 'pwned' },
    });
    expect(r.isError).toBe(true);
    expect(text(r)).toContain('FABRIC_ERR_POLICY_DENIED');
    expect(() => readFileSync(join(sandbox, 'protected', 'x.txt'))).toThrow();
  });

  it('returns a readable error for a tool denied outright, and writes audit lines without raw args', async () => {
    const r = await client.callTool({
      name: 'fs__create_directory',
      arguments: { path: `${sandbox}/d` },
    });
    expect(r.isError).toBe(true);
    await new Promise((resolve) => setImmediate(resolve));
    const auditPath = join(sandbox, '..', `${sandbox.split('/').pop()}-audit.log`);
    const lines = readFileSync(auditPath, 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(lines.length).toBeGreaterThanOrEqual(5);
    const denied = lines.find((l) => l.tool === 'fs__create_directory');
    expect(denied).toMatchObject({
      decision: 'deny',
      outcome: 'denied',
      code: 'FABRIC_ERR_POLICY_DENIED',
    });
    expect(denied?.argsDigest).toMatch(/^[0-9a-f]{64}$/);
    expect(readFileSync(auditPath, 'utf8')).not.toContain('pwned');
  });
});

import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  agentId,
  agentToken,
  closeSidecar,
  DEFAULT_ALLOW,
  FILESYSTEM_BIN,
  httpClient,
  startTestSidecar,
  tempDir,
  text,
  until,
} from '../fixtures/gateway/harness.js';

describe('gateway with server-filesystem and the guide policies (real fabric)', () => {
  const sandbox = tempDir('fs');
  const auditPath = join(tempDir('fs-audit'), 'audit.log');
  let sidecar: Sidecar;
  let client: Client;

  beforeAll(async () => {
    mkdirSync(join(sandbox, 'protected'), { recursive: true });
    writeFileSync(join(sandbox, 'protected', 'secret.txt'), 'keep me');
    sidecar = await startTestSidecar({
      upstreams: {
        fs: { command: process.execPath, args: [FILESYSTEM_BIN, sandbox], stderr: 'ignore' },
      },
      policies: [
        {
          name: 'protected-files',
          priority: 100,
          rules: [
            {
              tool: 'fs__write_file',
              action: 'deny',
              conditions: { path: `${sandbox}/protected/**` },
              reason: 'files under protected/ are read-only for agents',
            },
            { tool: 'fs__create_directory', action: 'deny', reason: 'no new folders' },
          ],
        },
        DEFAULT_ALLOW,
      ],
      agents: [{ name: 'fs-agent' }],
      audit: { path: auditPath },
    });
    client = await httpClient(sidecar.url!, agentToken(sidecar, 'fs-agent'));
  });

  afterAll(async () => {
    await client?.close();
    await closeSidecar(sidecar);
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
    expect(text(r)).toContain('files under protected/ are read-only for agents');
    expect(() => readFileSync(join(sandbox, 'protected', 'x.txt'))).toThrow();
  });

  it('answers a tool denied outright (hidden) called by name as an unknown tool', async () => {
    const r = await client
      .callTool({ name: 'fs__create_directory', arguments: { path: `${sandbox}/d` } })
      .then(
        () => 'answered',
        (e: Error) => e.message,
      );
    expect(r).toContain('Unknown tool: fs__create_directory');
    expect(r).not.toContain('no new folders');
  });

  it('writes one audit line per call with an argsDigest and never the raw arguments', async () => {
    const args = { path: `${sandbox}/protected/audit-probe.txt`, content: 'pwned-by-audit-probe' };
    await client.callTool({ name: 'fs__write_file', arguments: args });
    // Records are written in batches (audit.flushIntervalMs); wait for the probe's line.
    await until(() => readFileSync(auditPath, 'utf8').includes(sidecar.gateway.auditDigest(args)));
    const raw = readFileSync(auditPath, 'utf8');
    const lines = raw
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    // read, write, 4 denied writes, create_directory, the probe
    expect(lines.length).toBeGreaterThanOrEqual(8);
    for (const l of lines) {
      expect(l).toMatchObject({ agent: agentId(sidecar, 'fs-agent') });
      expect(l.argsDigest).toMatch(/^[0-9a-f]{64}$/);
      expect(typeof l.durationMs).toBe('number');
    }
    const probe = lines.at(-1);
    expect(probe).toMatchObject({
      tool: 'fs__write_file',
      decision: 'deny',
      rule: 'protected-files#0',
      outcome: 'denied',
      code: 'FABRIC_ERR_POLICY_DENIED',
      argsDigest: sidecar.gateway.auditDigest(args),
    });
    expect(lines.find((l) => l.tool === 'fs__read_text_file')).toMatchObject({
      decision: 'allow',
      outcome: 'ok',
    });
    expect(lines.find((l) => l.tool === 'fs__create_directory')).toMatchObject({
      decision: 'deny',
      outcome: 'denied',
    });
    expect(raw).not.toContain('pwned');
    expect(raw).not.toContain('keep me');
  });
});

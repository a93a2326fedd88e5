/**
 * The sidecar's state file inside a folder a filesystem upstream serves. The state file holds
 * the key every start-up agent's credential is derived from (`afk_` + HMAC of the agent's id):
 * found by the disclosure review, an agent whose server-filesystem was rooted at the folder the
 * sidecar ran in (which holds `.fabric/state.db`) read `.fabric/state.db-wal` with
 * `fs__read_text_file`, took the 64-hex key and the agents' ids out of it and computed another
 * agent's token. Now such a start is refused before the state file is made, and an audit log or
 * hook store in such a folder is logged as a warning. Real sidecar, real server-filesystem.
 */
import { existsSync, mkdirSync, symlinkSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { ConfigError } from '../../src/errors.js';
import type { GatewayLogEntry } from '../../src/gateway/tool-call-pipeline.js';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  closeSidecar,
  DEFAULT_ALLOW,
  filesystemUpstream,
  startTestSidecar,
  tempDir,
} from '../fixtures/gateway/harness.js';

let sidecar: Sidecar | undefined;
afterEach(async () => {
  await closeSidecar(sidecar);
  sidecar = undefined;
});

async function startError(config: Parameters<typeof startTestSidecar>[0]): Promise<unknown> {
  try {
    sidecar = await startTestSidecar(config);
  } catch (error) {
    return error;
  }
  throw new Error('the sidecar started');
}

describe("the state file inside an upstream's root", () => {
  it('is refused before it is made, naming the field, the file, the root and the upstream', async () => {
    const project = tempDir('own-files-project');
    const statePath = join(project, '.fabric', 'state.db');
    const error = await startError({
      state: { path: statePath },
      upstreams: { fs: filesystemUpstream(project) },
      policies: [DEFAULT_ALLOW],
      agents: [{ name: 'a1' }, { name: 'victim' }],
    });
    expect(error).toBeInstanceOf(ConfigError);
    const e = error as ConfigError;
    expect(e.code).toBe('FABRIC_ERR_CONFIG');
    expect(e.details).toEqual({ field: 'state.path' });
    expect(e.message).toContain(statePath);
    expect(e.message).toContain('upstream fs');
    expect(e.message).toContain(JSON.stringify(project));
    expect(existsSync(statePath)).toBe(false);
  });

  it('is refused through a symlinked root too', async () => {
    const real = tempDir('own-files-real');
    const link = join(tempDir('own-files-link'), 'project');
    symlinkSync(real, link);
    const error = await startError({
      state: { path: join(real, 'state.db') },
      upstreams: { fs: filesystemUpstream(link) },
      policies: [DEFAULT_ALLOW],
      agents: [{ name: 'a1' }],
    });
    expect((error as ConfigError).code).toBe('FABRIC_ERR_CONFIG');
    expect(existsSync(join(real, 'state.db'))).toBe(false);
  });

  it('beside the root (the shipped layout: .fabric/state.db and .fabric/sandbox) starts, an audit log inside it is a warning', async () => {
    const home = join(tempDir('own-files-home'), '.fabric');
    const sandbox = join(home, 'sandbox');
    mkdirSync(sandbox, { recursive: true });
    const logs: GatewayLogEntry[] = [];
    const auditPath = join(sandbox, 'audit.log');
    sidecar = await startTestSidecar(
      {
        state: { path: join(home, 'state.db') },
        upstreams: { fs: filesystemUpstream(sandbox) },
        policies: [DEFAULT_ALLOW],
        agents: [{ name: 'a1' }],
        audit: { path: auditPath },
      },
      { logger: (entry) => logs.push(entry) },
    );
    expect(existsSync(join(home, 'state.db'))).toBe(true);
    const warnings = logs.filter((l) => l.level === 'warn' && l.msg.startsWith('audit.path'));
    expect(warnings).toHaveLength(1);
    expect(warnings[0]!.msg).toContain(auditPath);
    expect(warnings[0]!.msg).toContain('upstream fs');
  });
});

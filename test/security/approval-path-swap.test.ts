/**
 * What an operator approves is what runs: a call parked on an approval shows the operator its
 * paths resolved (symlinks followed), but the upstream resolves the agent's path again when the
 * call runs. A symlink repointed while the call waited for a human must not make the approved
 * call touch another file than the one approved — here one a `deny` rule protects. Real sidecar,
 * real server-filesystem, the official SDK client; the effect is checked on disk.
 */
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, symlinkSync } from 'node:fs';
import { join } from 'node:path';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import { listApprovals } from '../fixtures/api.js';
import {
  ADMIN_TOKEN,
  agentToken,
  api,
  closeSidecar,
  DEFAULT_ALLOW,
  filesystemUpstream,
  httpClient,
  startTestSidecar,
  tempDir,
  text,
  until,
} from '../fixtures/gateway/harness.js';

describe('a symlink repointed while a call waits for approval', () => {
  let sidecar: Sidecar;
  let agent: Client;
  let sandbox: string;
  let auditPath: string;

  beforeAll(async () => {
    sandbox = tempDir('approval-path-swap');
    auditPath = join(tempDir('approval-path-swap-audit'), 'audit.jsonl');
    mkdirSync(join(sandbox, 'public'));
    mkdirSync(join(sandbox, 'protected'));
    symlinkSync(join(sandbox, 'public'), join(sandbox, 'link'));
    sidecar = await startTestSidecar({
      upstreams: {
        fs: filesystemUpstream(sandbox),
      },
      policies: [
        {
          name: 'guard',
          priority: 100,
          rules: [
            { tool: 'fs__*', action: 'deny', conditions: { path: `${sandbox}/protected/**` } },
            { tool: 'fs__write_file', action: 'require_approval', reason: 'writes' },
          ],
        },
        DEFAULT_ALLOW,
      ],
      agents: [{ name: 'attacker' }],
      audit: { path: auditPath, flushIntervalMs: 0 },
      gateway: { shutdownGraceSeconds: 0 },
    });
    agent = await httpClient(sidecar.url!, agentToken(sidecar, 'attacker'));
  });

  afterAll(async () => {
    await agent?.close();
    await closeSidecar(sidecar);
  });

  /** Starts a write that needs approval; resolves once its approval is pending. */
  async function pendingWrite(path: string, content: string) {
    const call = agent.callTool(
      { name: 'fs__write_file', arguments: { path, content } },
      undefined,
      { timeout: 60_000 },
    );
    let approval: { id: string; params: unknown } | undefined;
    await until(async () => {
      approval = (await listApprovals(sidecar.url!, ADMIN_TOKEN, 'pending'))[0];
      return approval !== undefined;
    });
    return { call, approval: approval! };
  }

  it('the write into protected/ is refused directly', async () => {
    const res = await agent.callTool({
      name: 'fs__write_file',
      arguments: { path: join(sandbox, 'protected', 'direct.txt'), content: 'x' },
    });
    expect(res.isError).toBe(true);
    expect(existsSync(join(sandbox, 'protected', 'direct.txt'))).toBe(false);
  });

  it('does not write where the operator did not approve', async () => {
    const { call, approval } = await pendingWrite(join(sandbox, 'link', 'x.txt'), 'pwned');
    // The operator sees the path the call resolves to now: into public/.
    expect(approval.params).toMatchObject({ path: join(sandbox, 'public', 'x.txt') });
    // Before the operator decides, the link is turned into protected/.
    rmSync(join(sandbox, 'link'));
    symlinkSync(join(sandbox, 'protected'), join(sandbox, 'link'));
    const res = await api(sidecar, 'ApprovalService/Approve', { id: approval.id });
    expect(res.status).toBe(200);
    const result = await call;

    expect(existsSync(join(sandbox, 'protected', 'x.txt'))).toBe(false);
    expect(result.isError).toBe(true);
    expect(text(result)).toContain('FABRIC_ERR_APPROVAL_STALE');
    // Nor was the approved file written: the agent must ask again for what the path is now.
    expect(existsSync(join(sandbox, 'public', 'x.txt'))).toBe(false);
  });

  it('audits the refused call once, as approved and denied with the code', async () => {
    await until(() => existsSync(auditPath) && readFileSync(auditPath, 'utf8').includes('STALE'));
    const lines = readFileSync(auditPath, 'utf8')
      .split('\n')
      .filter((l) => l !== '')
      .map(
        (l) => JSON.parse(l) as { tool: string; decision: string; outcome: string; code?: string },
      )
      .filter((l) => l.tool === 'fs__write_file' && l.decision === 'approved');
    expect(lines).toEqual([
      expect.objectContaining({ outcome: 'denied', code: 'FABRIC_ERR_APPROVAL_STALE' }),
    ]);
  });

  it('a real folder on the path replaced by a symlink after approval is caught too', async () => {
    mkdirSync(join(sandbox, 'drop'));
    const { call, approval } = await pendingWrite(join(sandbox, 'drop', 'y.txt'), 'pwned');
    const id = approval.id;
    renameSync(join(sandbox, 'drop'), join(sandbox, 'drop-gone'));
    symlinkSync(join(sandbox, 'protected'), join(sandbox, 'drop'));
    expect((await api(sidecar, 'ApprovalService/Approve', { id })).status).toBe(200);
    const result = await call;
    expect(existsSync(join(sandbox, 'protected', 'y.txt'))).toBe(false);
    expect(text(result)).toContain('FABRIC_ERR_APPROVAL_STALE');
  });

  it('an approved call whose paths did not change still runs', async () => {
    rmSync(join(sandbox, 'link'));
    symlinkSync(join(sandbox, 'public'), join(sandbox, 'link'));
    const { call, approval } = await pendingWrite(join(sandbox, 'link', 'ok.txt'), 'ok');
    const id = approval.id;
    expect((await api(sidecar, 'ApprovalService/Approve', { id })).status).toBe(200);
    const result = await call;
    expect(result.isError).toBeFalsy();
    expect(readFileSync(join(sandbox, 'public', 'ok.txt'), 'utf8')).toBe('ok');
  });
});

/**
 * Races around a call parked on a human approval, as an agent holding one token would try them:
 * the call cancelled or its session deleted while the operator approves, two operators deciding
 * at once, an approval used for the call it was asked for and then replayed for the same call
 * made again. Real sidecar, real server-filesystem, the official SDK client; the effect is
 * checked on disk and in the audit log.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import type { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
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
  until,
} from '../fixtures/gateway/harness.js';

interface AuditLine {
  tool: string;
  decision: string;
  outcome: string;
  code?: string;
}

describe('approval races', () => {
  let sidecar: Sidecar;
  let sandbox: string;
  let auditPath: string;
  const clients: Client[] = [];

  beforeAll(async () => {
    sandbox = tempDir('approval-races');
    auditPath = join(tempDir('approval-races-audit'), 'audit.jsonl');
    sidecar = await startTestSidecar({
      upstreams: {
        fs: filesystemUpstream(sandbox),
      },
      policies: [
        {
          name: 'writes',
          priority: 100,
          rules: [{ tool: 'fs__write_file', action: 'require_approval', reason: 'writes' }],
        },
        DEFAULT_ALLOW,
      ],
      agents: [{ name: 'attacker' }],
      audit: { path: auditPath, flushIntervalMs: 0 },
      gateway: { shutdownGraceSeconds: 0 },
    });
  });

  afterAll(async () => {
    for (const c of clients) await c.close().catch(() => undefined);
    await closeSidecar(sidecar);
  });

  async function client(): Promise<Client> {
    const c = await httpClient(sidecar.url!, agentToken(sidecar, 'attacker'));
    clients.push(c);
    return c;
  }

  /** The one pending approval whose path is `path`. */
  async function pendingFor(path: string): Promise<string> {
    let id = '';
    await until(async () => {
      const p = await listApprovals(sidecar.url!, ADMIN_TOKEN, 'pending');
      id = p.find((a) => (a.params as { path?: string }).path === path)?.id ?? '';
      return id !== '';
    });
    return id;
  }

  async function orphaned(id: string): Promise<void> {
    await until(async () => {
      const p = (await listApprovals(sidecar.url!, ADMIN_TOKEN, 'pending')) as {
        id: string;
        orphaned?: boolean;
      }[];
      return p.find((a) => a.id === id)?.orphaned === true;
    });
  }

  function write(c: Client, path: string, signal?: AbortSignal): Promise<unknown> {
    return c
      .callTool({ name: 'fs__write_file', arguments: { path, content: 'x' } }, undefined, {
        timeout: 60_000,
        ...(signal === undefined ? {} : { signal }),
      })
      .catch((e: unknown) => e);
  }

  /** Audit lines of write_file calls so far (the log writes at the end of each event-loop turn). */
  function audited(): AuditLine[] {
    if (!existsSync(auditPath)) return [];
    return readFileSync(auditPath, 'utf8')
      .split('\n')
      .filter((l) => l !== '')
      .map((l) => JSON.parse(l) as AuditLine)
      .filter((l) => l.tool === 'fs__write_file');
  }

  it('a call cancelled by its client, then approved, writes nothing and is audited once as cancelled', async () => {
    const c = await client();
    const target = join(sandbox, 'cancelled.txt');
    const abort = new AbortController();
    const call = write(c, target, abort.signal);
    const id = await pendingFor(target);
    const before = audited().length;
    abort.abort();
    await call;
    await orphaned(id);
    expect((await api(sidecar, 'ApprovalService/Approve', { id })).status).toBe(200);
    // A wrongly resumed call would reach the filesystem server now.
    await new Promise((r) => setTimeout(r, 500));
    expect(existsSync(target)).toBe(false);
    // Counted as the cancel it was, not as an internal error (it was FABRIC_ERR_INTERNAL).
    expect(audited().slice(before)).toEqual([
      expect.objectContaining({ outcome: 'cancelled', code: 'FABRIC_ERR_CANCELLED' }),
    ]);
  });

  it('a call whose session was deleted, then approved, writes nothing', async () => {
    const c = await client();
    const target = join(sandbox, 'session-gone.txt');
    const call = write(c, target);
    const id = await pendingFor(target);
    await (c.transport as StreamableHTTPClientTransport).terminateSession();
    await orphaned(id);
    expect((await api(sidecar, 'ApprovalService/Approve', { id })).status).toBe(200);
    await new Promise((r) => setTimeout(r, 500));
    void call;
    expect(existsSync(target)).toBe(false);
  });

  it('two operators deciding at once: one decision wins, the call follows it, audited once', async () => {
    const c = await client();
    const target = join(sandbox, 'two-operators.txt');
    const call = write(c, target);
    const id = await pendingFor(target);
    const before = audited().length;
    const [a, d] = await Promise.all([
      api(sidecar, 'ApprovalService/Approve', { id }),
      api(sidecar, 'ApprovalService/Deny', { id, reason: 'no' }),
    ]);
    expect([a.status, d.status].filter((s) => s === 200)).toHaveLength(1);
    await call;
    const approved = a.status === 200;
    expect(existsSync(target)).toBe(approved);
    const [record] = (await listApprovals(sidecar.url!, ADMIN_TOKEN)).filter((x) => x.id === id);
    expect(record?.status).toBe(approved ? 'approved' : 'denied');
    await until(() => audited().length > before);
    expect(audited().slice(before)).toEqual([
      expect.objectContaining(
        approved
          ? { decision: 'approved', outcome: 'ok' }
          : { outcome: 'denied', code: 'FABRIC_ERR_APPROVAL_DENIED' },
      ),
    ]);
  });

  it('an approval used once does not run the same call again, from this or another session', async () => {
    const first = await client();
    const target = join(sandbox, 'once.txt');
    const call = write(first, target);
    const id = await pendingFor(target);
    expect((await api(sidecar, 'ApprovalService/Approve', { id })).status).toBe(200);
    await call;
    expect(existsSync(target)).toBe(true);
    // Approving the used id again is refused.
    expect((await api(sidecar, 'ApprovalService/Approve', { id })).status).not.toBe(200);
    for (const c of [first, await client()]) {
      const again = write(c, target);
      const next = await pendingFor(target);
      expect(next).not.toBe(id);
      expect((await api(sidecar, 'ApprovalService/Deny', { id: next })).status).toBe(200);
      const res = (await again) as { isError?: boolean };
      expect(res.isError).toBe(true);
    }
  });
});

/**
 * The audit line of a call a human decided names the approval and who decided it. It said only
 * `decision: "approved"` and the rule: nothing on disk tied a call that ran to the human who let
 * it through once the approval record was forgotten (`approvals.maxResolved`, 1000 decisions, or
 * any restart with `state: memory`) — the audit log, the one append-only record, could not answer
 * "who approved the write that ran at 03:12?". Now the lines of calls that waited for a human
 * carry `approval` (its id) and, when a human decided it, `approver`; other lines are unchanged.
 *
 * Real parts: a real sidecar, server-filesystem over stdio (its writes checked on disk), the
 * official MCP SDK client, the Operator API over HTTP, the audit file as written.
 */
import { existsSync, readFileSync, realpathSync } from 'node:fs';
import { join } from 'node:path';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import { listApprovals } from '../fixtures/api.js';
import { startFsApprovalSidecar } from '../fixtures/fs-approvals.js';
import {
  ADMIN_TOKEN,
  agentToken,
  api,
  closeSidecar,
  httpClient,
  tempDir,
  text,
  until,
} from '../fixtures/gateway/harness.js';

/**
 * A server-filesystem sidecar whose writes need a human, auditing to a file, and its agent's
 * client, for the tests of one `describe` (`extra` is added to the config).
 */
function auditedSidecar(label: string, extra: Parameters<typeof startFsApprovalSidecar>[2] = {}) {
  const root = realpathSync(tempDir(label));
  const auditPath = join(tempDir(`${label}-log`), 'audit.log');
  let sidecar: Sidecar;
  let agent: Client;

  beforeAll(async () => {
    sidecar = await startFsApprovalSidecar(root, 'fs__write_file', {
      audit: { path: auditPath, flushIntervalMs: 0 },
      ...extra,
    });
    agent = await httpClient(sidecar.url!, agentToken(sidecar, 'worker'));
  });

  afterAll(async () => {
    await agent?.close();
    await closeSidecar(sidecar);
  });

  return {
    root,
    get sidecar(): Sidecar {
      return sidecar;
    },
    get agent(): Client {
      return agent;
    },
    /** The approval parked for a write of `path`, once it is there. */
    async parkedFor(path: string): Promise<string> {
      let id: string | undefined;
      await until(async () => {
        const list = await listApprovals(sidecar.url!, ADMIN_TOKEN, 'pending');
        id = list.find((a) => (a.params as { path?: string }).path === path)?.id;
        return id !== undefined;
      }, 30_000);
      return id!;
    },
    /** The audit line of the call with these arguments, once it is written. */
    async lineOf(args: object): Promise<Record<string, unknown>> {
      const digest = sidecar.gateway.auditDigest(args);
      let line: string | undefined;
      await until(() => {
        const all = existsSync(auditPath) ? readFileSync(auditPath, 'utf8') : '';
        line = all.split('\n').find((l) => l.includes(digest));
        return line !== undefined;
      }, 30_000);
      return JSON.parse(line!) as Record<string, unknown>;
    },
  };
}

describe('audit lines of calls a human decided (real sidecar, server-filesystem)', () => {
  const audited = auditedSidecar('audit-approval-fields');
  const { root, parkedFor, lineOf } = audited;
  let sidecar: Sidecar;
  let agent: Client;
  beforeAll(() => {
    ({ sidecar, agent } = audited);
  });

  it('an approved call that ran: the approval and its approver', async () => {
    const args = { path: join(root, 'approved.txt'), content: 'ran' };
    const call = agent.callTool({ name: 'fs__write_file', arguments: args }, undefined, {
      timeout: 600_000,
    }) as Promise<CallToolResult>;
    const id = await parkedFor(args.path);
    expect((await api(sidecar, 'ApprovalService/Approve', { id })).status).toBe(200);
    const result = await call;
    expect(result.isError, text(result)).toBeFalsy();
    expect(readFileSync(args.path, 'utf8')).toBe('ran');
    expect(await lineOf(args)).toMatchObject({
      decision: 'approved',
      rule: 'human#0',
      outcome: 'ok',
      approval: id,
      approver: 'admin',
    });
  });

  it('a denied call: the approval and who denied it; nothing written', async () => {
    const args = { path: join(root, 'denied.txt'), content: 'never' };
    const call = agent.callTool({ name: 'fs__write_file', arguments: args }, undefined, {
      timeout: 600_000,
    }) as Promise<CallToolResult>;
    const id = await parkedFor(args.path);
    expect((await api(sidecar, 'ApprovalService/Deny', { id, reason: 'no' })).status).toBe(200);
    expect(text(await call)).toContain('FABRIC_ERR_APPROVAL_DENIED');
    expect(existsSync(args.path)).toBe(false);
    expect(await lineOf(args)).toMatchObject({
      outcome: 'denied',
      code: 'FABRIC_ERR_APPROVAL_DENIED',
      approval: id,
      approver: 'admin',
    });
  });

  it('a call cancelled while parked: the approval it left', async () => {
    const args = { path: join(root, 'cancelled.txt'), content: 'never' };
    const abort = new AbortController();
    const call = agent
      .callTool({ name: 'fs__write_file', arguments: args }, undefined, {
        signal: abort.signal,
        timeout: 600_000,
      })
      .catch((error: unknown) => error);
    const id = await parkedFor(args.path);
    abort.abort();
    await call;
    const line = await lineOf(args);
    expect(line).toMatchObject({
      decision: 'require_approval',
      outcome: 'cancelled',
      approval: id,
    });
    expect(line).not.toHaveProperty('approver');
  });

  it('an approved call the rules refuse after (a deny added while it waited): the approval and its approver', async () => {
    const args = { path: join(root, 'locked.txt'), content: 'never' };
    const call = agent.callTool({ name: 'fs__write_file', arguments: args }, undefined, {
      timeout: 600_000,
    }) as Promise<CallToolResult>;
    const id = await parkedFor(args.path);
    const lockdown = {
      name: 'lockdown',
      priority: 200,
      rules: [{ tool: 'fs__write_file', action: 'POLICY_ACTION_DENY', reason: 'frozen' }],
    };
    expect((await api(sidecar, 'PolicyService/AddPolicy', { policy: lockdown })).status).toBe(200);
    try {
      expect((await api(sidecar, 'ApprovalService/Approve', { id })).status).toBe(200);
      expect(text(await call)).toContain('FABRIC_ERR_POLICY_DENIED');
    } finally {
      await api(sidecar, 'PolicyService/RemovePolicy', { name: 'lockdown' });
    }
    expect(existsSync(args.path)).toBe(false);
    expect(await lineOf(args)).toMatchObject({
      outcome: 'denied',
      code: 'FABRIC_ERR_POLICY_DENIED',
      approval: id,
      approver: 'admin',
    });
  });

  it('a call no human decided has neither field', async () => {
    const args = { path: join(root, 'approved.txt') };
    const read = await agent.callTool({ name: 'fs__read_text_file', arguments: args });
    expect(text(read)).toContain('ran');
    const line = await lineOf(args);
    expect(line).toMatchObject({ decision: 'allow', outcome: 'ok' });
    expect(line).not.toHaveProperty('approval');
    expect(line).not.toHaveProperty('approver');
  });
});

describe('the audit line of an approved call the budget refuses after', () => {
  // One unit a day; a write and a listing cost one each.
  const audited = auditedSidecar('audit-approval-budget', {
    agents: [{ name: 'worker', budget: { maxCostPerDay: 1 } }],
    toolCosts: { fs__write_file: 1, fs__list_directory: 1 },
  });

  it('names the approval and its approver', async () => {
    const { root, sidecar, agent } = audited;
    const args = { path: join(root, 'over-budget.txt'), content: 'never' };
    const call = agent.callTool({ name: 'fs__write_file', arguments: args }, undefined, {
      timeout: 600_000,
    }) as Promise<CallToolResult>;
    const id = await audited.parkedFor(args.path);
    // While it waits, another call spends the day's one unit.
    const listed = await agent.callTool({
      name: 'fs__list_directory',
      arguments: { path: root },
    });
    expect(listed.isError, text(listed)).toBeFalsy();
    expect((await api(sidecar, 'ApprovalService/Approve', { id })).status).toBe(200);
    expect(text(await call)).toContain('FABRIC_ERR_BUDGET_EXCEEDED');
    expect(existsSync(args.path)).toBe(false);
    expect(await audited.lineOf(args)).toMatchObject({
      outcome: 'denied',
      code: 'FABRIC_ERR_BUDGET_EXCEEDED',
      approval: id,
      approver: 'admin',
    });
  });
});

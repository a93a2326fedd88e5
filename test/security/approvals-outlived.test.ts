/**
 * Calls parked on a human approval that outlive what they belonged to: an MCP task whose ttl ran
 * out (its call ran when approved later, the sweep coming up to a minute late), and an agent
 * terminated meanwhile (its call ran when approved, as a task or through the `/api/` door).
 * Approving must run nothing then. Real sidecar, real server-filesystem, the official SDK client;
 * the effect is checked on disk.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import { listApprovals } from '../fixtures/api.js';
import {
  ADMIN_TOKEN,
  agentId,
  agentToken,
  api,
  closeSidecar,
  DEFAULT_ALLOW,
  FILESYSTEM_BIN,
  httpClient,
  startTestSidecar,
  tempDir,
  until,
} from '../fixtures/gateway/harness.js';
import { callAsTask } from '../fixtures/gateway/tasks.js';

/** A sidecar over server-filesystem on `sandbox` whose writes need a human's approval. */
function startWritesNeedApproval(sandbox: string, agents: string[]): Promise<Sidecar> {
  return startTestSidecar({
    upstreams: {
      fs: { command: process.execPath, args: [FILESYSTEM_BIN, sandbox], stderr: 'ignore' },
    },
    policies: [
      {
        name: 'writes',
        priority: 100,
        rules: [{ tool: 'fs__write_file', action: 'require_approval', reason: 'writes' }],
      },
      DEFAULT_ALLOW,
    ],
    agents: agents.map((name) => ({ name })),
    gateway: { shutdownGraceSeconds: 0 },
  });
}

describe('a task that expired while parked on an approval', () => {
  let sidecar: Sidecar;
  let agent: Client;
  let sandbox: string;

  beforeAll(async () => {
    sandbox = tempDir('approval-expired-task');
    sidecar = await startWritesNeedApproval(sandbox, ['attacker']);
    agent = await httpClient(sidecar.url!, agentToken(sidecar, 'attacker'));
  });

  afterAll(async () => {
    await agent?.close();
    await closeSidecar(sidecar);
  });

  it('does not run the call when its approval is granted after the task expired', async () => {
    const target = join(sandbox, 'after-expiry.txt');
    const { task } = await callAsTask(
      agent,
      'fs__write_file',
      { path: target, content: 'written after the task expired' },
      1000, // the task lives one second
    );
    let approvalId = '';
    await until(async () => {
      const p = await listApprovals(sidecar.url!, ADMIN_TOKEN, 'pending');
      approvalId = p[0]?.id ?? '';
      return approvalId !== '';
    });
    // When the task's ttl runs out, its call ends and the approval is marked orphaned.
    await until(async () => {
      const p = (await listApprovals(sidecar.url!, ADMIN_TOKEN, 'pending')) as {
        id: string;
        orphaned?: boolean;
      }[];
      return p.find((x) => x.id === approvalId)?.orphaned === true;
    });
    expect(Date.now()).toBeGreaterThan(Date.parse(task.createdAt) + task.ttl!);
    const res = await api(sidecar, 'ApprovalService/Approve', { id: approvalId });
    expect(res.status).toBe(200);
    // Give a wrongly-resumed call every chance to reach the filesystem server.
    await new Promise((r) => setTimeout(r, 1000));

    expect(existsSync(target)).toBe(false);
  });
});

describe('an approval granted after its agent was terminated', () => {
  let sidecar: Sidecar;
  let sandbox: string;
  const clients: Client[] = [];

  beforeAll(async () => {
    sandbox = tempDir('approval-terminated-agent');
    sidecar = await startWritesNeedApproval(sandbox, ['as-task', 'plain']);
  });

  afterAll(async () => {
    for (const c of clients) await c.close().catch(() => undefined);
    await closeSidecar(sidecar);
  });

  async function pendingOf(agent: string): Promise<string> {
    let id = '';
    await until(async () => {
      const p = await listApprovals(sidecar.url!, ADMIN_TOKEN, 'pending');
      id = p.find((a) => a.agentId === agentId(sidecar, agent))?.id ?? '';
      return id !== '';
    });
    return id;
  }

  async function terminate(agent: string): Promise<void> {
    const res = await api(sidecar, 'FabricService/TerminateAgent', {
      agentId: agentId(sidecar, agent),
      drainTimeout: '0s',
    });
    expect(res.status).toBe(200);
    await until(async () => {
      const r = await api(sidecar, 'FabricService/GetAgent', { agentId: agentId(sidecar, agent) });
      const body = (await r.json()) as { agent?: { status?: string } };
      return body.agent?.status === 'AGENT_STATUS_TERMINATED';
    });
  }

  it('task: a terminated agent’s parked call does not run when approved', async () => {
    const agent = await httpClient(sidecar.url!, agentToken(sidecar, 'as-task'));
    clients.push(agent);
    const target = join(sandbox, 'task-after-terminate.txt');
    await callAsTask(agent, 'fs__write_file', { path: target, content: 'x' }, 60_000);
    const id = await pendingOf('as-task');
    await terminate('as-task');
    const res = await api(sidecar, 'ApprovalService/Approve', { id });
    expect(res.status).toBe(200);
    await new Promise((r) => setTimeout(r, 1000));
    expect(existsSync(target)).toBe(false);
  });

  it('plain call: a terminated agent’s parked call does not run when approved', async () => {
    const agent = await httpClient(sidecar.url!, agentToken(sidecar, 'plain'));
    clients.push(agent);
    const target = join(sandbox, 'plain-after-terminate.txt');
    const call = agent
      .callTool({ name: 'fs__write_file', arguments: { path: target, content: 'x' } }, undefined, {
        timeout: 60_000,
      })
      .catch((e: unknown) => e);
    const id = await pendingOf('plain');
    await terminate('plain');
    const res = await api(sidecar, 'ApprovalService/Approve', { id });
    expect(res.status).toBe(200);
    await call;
    await new Promise((r) => setTimeout(r, 500));
    expect(existsSync(target)).toBe(false);
  });
});

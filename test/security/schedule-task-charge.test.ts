/**
 * `fabric__schedule_task` cancelled by a hostile agent with a cost budget of 1, at each point of
 * its life: the official SDK client against the real sidecar over Streamable HTTP, the real
 * fabric's scheduler, policy, approvals and budgets, another agent of the pool claiming the work,
 * and the audit file.
 *
 * A plain upstream call cancelled once it reached its upstream is charged its whole cost (the
 * work may have been done; a cancel only asks it to stop). `fabric__schedule_task`'s effect is
 * the fabric task it schedules: once scheduled, the work is queued (and may be claimed and run
 * by the pool), so a call cancelled after that must be charged as one that was not. Before, the
 * wait for the fabric task failed with an error not marked as having had its effect, so the
 * call was settled and audited with cost 0 — an agent could schedule any amount of pool work on
 * a cost budget of 1 by cancelling each call (or MCP task) once its work was queued. A call
 * cancelled before anything was scheduled (here: while it waits for a human approval) is still
 * charged nothing.
 */
import { join } from 'node:path';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { CallToolResultSchema, type CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import { listApprovals } from '../fixtures/api.js';
import {
  ADMIN_TOKEN,
  agentId,
  agentToken,
  closeSidecar,
  DEFAULT_ALLOW,
  httpClient,
  startTestSidecar,
  tempDir,
  text,
  until,
  auditLines,
  costSpent,
} from '../fixtures/gateway/harness.js';
import { callAsTask } from '../fixtures/gateway/tasks.js';

const TOOL = 'fabric__schedule_task';
const APPROVAL_POLICY = {
  name: 'approvals',
  priority: 100,
  rules: [
    {
      tool: TOOL,
      action: 'require_approval',
      conditions: { taskType: 'needs-approval' },
      reason: 'a human decides',
    },
  ],
};

describe('fabric__schedule_task cancelled by its agent', () => {
  let sidecar: Sidecar;
  let worker: Client;
  let auditPath: string;

  beforeAll(async () => {
    auditPath = join(tempDir('schedule-charge-audit-'), 'audit.jsonl');
    sidecar = await startTestSidecar({
      policies: [DEFAULT_ALLOW, APPROVAL_POLICY],
      pools: [{ id: 'crew' }],
      agents: [
        { name: 'worker', poolId: 'crew' },
        { name: 'plain', poolId: 'crew', budget: { maxCostPerDay: 1 } },
        { name: 'tasker', poolId: 'crew', budget: { maxCostPerDay: 1 } },
      ],
      toolCosts: { [TOOL]: 1 },
      audit: { path: auditPath, flushIntervalMs: 0 },
      gateway: { poolScheduling: true, shutdownGraceSeconds: 0 },
    });
    worker = await httpClient(sidecar.url!, agentToken(sidecar, 'worker'));
  });

  afterAll(async () => {
    await worker?.close();
    await closeSidecar(sidecar);
  });

  const lines = (name: string) => auditLines(sidecar, auditPath, name, TOOL);
  const spent = (name: string) => costSpent(sidecar, name);

  /** The fabric tasks `name` scheduled (the store's records). */
  const scheduledBy = (name: string) =>
    sidecar
      .fabric!.scheduler.listTasks()
      .filter((t) => t.tenant === `agent:${agentId(sidecar, name)}`);

  /** `name`'s pending approval, once its call waits for it. */
  const pendingApproval = async (name: string): Promise<string> => {
    let id = '';
    await until(async () => {
      const mine = (await listApprovals(sidecar.url!, ADMIN_TOKEN, 'pending')).filter(
        (a) => (a as { agentId?: string }).agentId === agentId(sidecar, name),
      );
      id = mine[0]?.id ?? '';
      return id !== '';
    });
    return id;
  };

  /** A plain schedule_task call cancelled with `signal`; resolves once the client gave up. */
  const scheduleUntil = (
    agent: Client,
    args: Record<string, unknown>,
    signal: AbortSignal,
  ): Promise<unknown> =>
    agent.callTool({ name: TOOL, arguments: args }, undefined, { signal, timeout: 600_000 }).then(
      (r) => r,
      (e: unknown) => e,
    );

  it('plain call: nothing charged before its work is queued, its whole cost after; then refused', async () => {
    const agent = await httpClient(sidecar.url!, agentToken(sidecar, 'plain'));
    try {
      // 1. Cancelled while it waits for a human approval: nothing was scheduled.
      const early = new AbortController();
      const waiting = scheduleUntil(agent, { taskType: 'needs-approval' }, early.signal);
      await pendingApproval('plain');
      early.abort();
      await waiting;
      await until(() => lines('plain').length === 1);
      expect(lines('plain')[0]).toMatchObject({ outcome: 'cancelled' });
      expect(lines('plain')[0]!.cost ?? 0).toBe(0);
      expect(scheduledBy('plain')).toHaveLength(0);
      expect(await spent('plain')).toBe(0);

      // 2. Cancelled once its fabric task is queued: charged as if it had not been.
      const late = new AbortController();
      const queued = scheduleUntil(agent, { taskType: 'work', payload: 1 }, late.signal);
      await until(() => scheduledBy('plain').some((t) => t.status === 'PENDING'));
      late.abort();
      await queued;
      await until(() => lines('plain').length === 2);
      expect(lines('plain')[1]).toMatchObject({
        decision: 'allow',
        outcome: 'cancelled',
        code: 'FABRIC_ERR_CANCELLED',
        cost: 1,
      });
      expect(await spent('plain')).toBe(1);
      // The cancel still cancels the work.
      await until(() => scheduledBy('plain').every((t) => t.status === 'CANCELLED'));

      // 3. The budget is spent: the next call is refused and schedules nothing.
      const refused = (await agent.callTool({
        name: TOOL,
        arguments: { taskType: 'work', payload: 2 },
      })) as CallToolResult;
      expect(refused.isError).toBe(true);
      expect(text(refused)).toContain('FABRIC_ERR_BUDGET_EXCEEDED');
      expect(scheduledBy('plain')).toHaveLength(1);
      await until(() => lines('plain').length === 3);
      expect(lines('plain')[2]).toMatchObject({
        outcome: 'denied',
        code: 'FABRIC_ERR_BUDGET_EXCEEDED',
      });
      expect(await spent('plain')).toBe(1);
    } finally {
      await agent.close();
    }
  });

  it('MCP task: nothing charged while it waits for approval, its whole cost once claimed; then refused', async () => {
    const agent = await httpClient(sidecar.url!, agentToken(sidecar, 'tasker'));
    try {
      // 1. Cancelled while it waits for a human approval.
      const early = (await callAsTask(agent, TOOL, { taskType: 'needs-approval' })).task;
      await pendingApproval('tasker');
      expect((await agent.experimental.tasks.cancelTask(early.taskId)).status).toBe('cancelled');
      await until(() => lines('tasker').length === 1);
      expect(lines('tasker')[0]).toMatchObject({ outcome: 'cancelled' });
      expect(lines('tasker')[0]!.cost ?? 0).toBe(0);
      expect(scheduledBy('tasker')).toHaveLength(0);
      expect(await spent('tasker')).toBe(0);

      // 2. Cancelled once another agent of the pool has claimed and is running its work.
      const late = (await callAsTask(agent, TOOL, { taskType: 'work', payload: 'x' })).task;
      await until(() => scheduledBy('tasker').length === 1);
      const claimed = await worker.callTool({
        name: 'fabric__claim_task',
        arguments: { waitSeconds: 10 },
      });
      const work = (claimed as CallToolResult).structuredContent?.result as { taskId: string };
      expect(work.taskId).toBe(scheduledBy('tasker')[0]!.id);
      expect(scheduledBy('tasker')[0]!.status).toBe('RUNNING');
      expect((await agent.experimental.tasks.cancelTask(late.taskId)).status).toBe('cancelled');
      await until(() => lines('tasker').length === 2);
      expect(lines('tasker')[1]).toMatchObject({
        decision: 'allow',
        outcome: 'cancelled',
        cost: 1,
      });
      expect(await spent('tasker')).toBe(1);
      await until(() => scheduledBy('tasker')[0]!.status === 'CANCELLED');

      // 3. The budget is spent: the next task is refused and schedules nothing.
      const next = (await callAsTask(agent, TOOL, { taskType: 'work', payload: 'y' })).task;
      const refused = await agent.experimental.tasks.getTaskResult(
        next.taskId,
        CallToolResultSchema,
      );
      expect(refused.isError).toBe(true);
      expect(text(refused)).toContain('FABRIC_ERR_BUDGET_EXCEEDED');
      expect(scheduledBy('tasker')).toHaveLength(1);
      expect(await spent('tasker')).toBe(1);
    } finally {
      await agent.close();
    }
  });
});

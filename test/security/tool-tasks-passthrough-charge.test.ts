/**
 * A passed-through MCP task that the upstream has made, then ended by the agent before its
 * result: the official SDK client against the real sidecar, a real stdio upstream built on the
 * SDK's experimental task support (test/fixtures/gateway/task-server.mjs), the real fabric's
 * budgets and the audit file.
 *
 * A plain call cancelled once it reached its upstream is charged its whole cost (the upstream
 * may have done the work; a cancel only asks it to stop). A task-augmented call of the same tool,
 * passed through to the upstream's own task, must be charged the same when the agent cancels the
 * task (or lets its ttl run out) after the upstream made its task: before, the wait for the
 * upstream's `tasks/result` failed with an error not marked as having reached the upstream, so
 * the call was settled and audited with cost 0 — an agent with a cost budget of 1 could start
 * any number of upstream tasks by cancelling each once it was made.
 */
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { CallToolResultSchema } from '@modelcontextprotocol/sdk/types.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
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

const TASK_SERVER = fileURLToPath(new URL('../fixtures/gateway/task-server.mjs', import.meta.url));

/** What the upstream holds, as it reports it itself. */
async function upstreamState(
  client: Client,
): Promise<{ tasks: Array<{ taskId: string; status: string }>; waiting: string[] }> {
  const r = await client.callTool({ name: 'tk__upstream_tasks', arguments: {} });
  return JSON.parse(text(r)) as {
    tasks: Array<{ taskId: string; status: string }>;
    waiting: string[];
  };
}

describe('a passed-through task ended after the upstream made its task', () => {
  let sidecar: Sidecar;
  let watcher: Client;
  let auditPath: string;

  beforeAll(async () => {
    auditPath = join(tempDir('tasks-charge-audit-'), 'audit.jsonl');
    sidecar = await startTestSidecar({
      upstreams: {
        tk: { command: process.execPath, args: [TASK_SERVER], stderr: 'ignore' },
      },
      policies: [DEFAULT_ALLOW],
      agents: [
        { name: 'watcher' },
        { name: 'canceller', budget: { maxCostPerDay: 1 } },
        { name: 'expirer', budget: { maxCostPerDay: 1 } },
      ],
      toolCosts: { tk__slow_echo: 1 },
      audit: { path: auditPath },
      gateway: { tasks: { maxTtlSeconds: 120 }, shutdownGraceSeconds: 0 },
    });
    watcher = await httpClient(sidecar.url!, agentToken(sidecar, 'watcher'));
  });

  afterAll(async () => {
    await watcher?.close();
    await closeSidecar(sidecar);
  });

  const lines = (name: string) => auditLines(sidecar, auditPath, name, 'tk__slow_echo');
  const spent = (name: string) => costSpent(sidecar, name);

  /** After its first call was charged, the agent's next call is refused and never sent. */
  const expectBudgetSpent = async (agent: Client, message: string): Promise<void> => {
    const before = (await upstreamState(watcher)).tasks.length;
    const { task } = await callAsTask(agent, 'tk__slow_echo', { message });
    const refused = await agent.experimental.tasks.getTaskResult(task.taskId, CallToolResultSchema);
    expect(refused.isError).toBe(true);
    expect(text(refused)).toContain('FABRIC_ERR_BUDGET_EXCEEDED');
    expect((await upstreamState(watcher)).tasks).toHaveLength(before);
  };

  it('cancelled by the agent: charged and audited with its cost, as a plain call', async () => {
    const agent = await httpClient(sidecar.url!, agentToken(sidecar, 'canceller'));
    try {
      const { task } = await callAsTask(agent, 'tk__slow_echo', { message: 'c1', hold: true });
      // The upstream made its task and is working on it.
      await until(async () => (await upstreamState(watcher)).waiting.includes('c1'));
      expect((await agent.experimental.tasks.cancelTask(task.taskId)).status).toBe('cancelled');
      await until(() => lines('canceller').length === 1);
      expect(lines('canceller')[0]).toMatchObject({ outcome: 'cancelled', cost: 1 });
      expect(await spent('canceller')).toBe(1);
      await expectBudgetSpent(agent, 'c2');
    } finally {
      await agent.close();
    }
  });

  it('ended by its ttl: charged and audited with its cost', async () => {
    const agent = await httpClient(sidecar.url!, agentToken(sidecar, 'expirer'));
    try {
      await callAsTask(agent, 'tk__slow_echo', { message: 'e1', hold: true }, 1500);
      await until(async () => (await upstreamState(watcher)).waiting.includes('e1'));
      await until(() => lines('expirer').length === 1);
      expect(lines('expirer')[0]).toMatchObject({ cost: 1 });
      expect(await spent('expirer')).toBe(1);
      await expectBudgetSpent(agent, 'e2');
    } finally {
      await agent.close();
    }
  });
});

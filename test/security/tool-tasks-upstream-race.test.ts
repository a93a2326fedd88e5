/**
 * A passed-through MCP task cancelled while the upstream is still making its own task: the
 * official SDK client against the real sidecar, a real stdio upstream built on the SDK's
 * experimental task support (test/fixtures/gateway/task-server.mjs) whose `gate` holds the
 * task-augmented call's answer until released.
 *
 * The agent's `tasks/cancel` (or the task's ttl) must reach the upstream's task even when it
 * lands before the upstream answered with that task's id: else the upstream task runs on, and
 * stays, with nobody to cancel it.
 */
import { fileURLToPath } from 'node:url';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  agentToken,
  closeSidecar,
  DEFAULT_ALLOW,
  httpClient,
  startTestSidecar,
  text,
  until,
} from '../fixtures/gateway/harness.js';
import { callAsTask } from '../fixtures/gateway/tasks.js';

const TASK_SERVER = fileURLToPath(new URL('../fixtures/gateway/task-server.mjs', import.meta.url));

interface UpstreamState {
  tasks: Array<{ taskId: string; status: string }>;
  waiting: string[];
}

/** What the upstream holds, as it reports it itself. */
async function upstreamState(client: Client): Promise<UpstreamState> {
  const r = await client.callTool({ name: 'tk__upstream_tasks', arguments: {} });
  return JSON.parse(text(r)) as UpstreamState;
}

describe('a passed-through task cancelled before the upstream made its task', () => {
  let sidecar: Sidecar;
  let agent: Client;

  beforeAll(async () => {
    sidecar = await startTestSidecar({
      upstreams: {
        tk: { command: process.execPath, args: [TASK_SERVER], stderr: 'ignore' },
      },
      policies: [DEFAULT_ALLOW],
      agents: [{ name: 'mallory' }],
      gateway: { tasks: { maxTtlSeconds: 120 }, shutdownGraceSeconds: 0 },
    });
    agent = await httpClient(sidecar.url!, agentToken(sidecar, 'mallory'));
  });

  afterAll(async () => {
    await agent?.close();
    await closeSidecar(sidecar);
  });

  it('cancels the upstream task once the upstream names it', async () => {
    const before = (await upstreamState(agent)).tasks.map((t) => t.taskId);
    const { task } = await callAsTask(agent, 'tk__slow_echo', {
      message: 'raced',
      gate: true,
      hold: true,
    });
    // The task-augmented call is at the upstream, its task not made yet.
    await until(async () => (await upstreamState(agent)).waiting.includes('raced'));
    expect((await agent.experimental.tasks.cancelTask(task.taskId)).status).toBe('cancelled');
    // The upstream makes its task now (and holds it): the gateway must cancel it.
    await agent.callTool({ name: 'tk__release', arguments: { message: 'raced' } });
    const fresh = async (): Promise<Array<{ taskId: string; status: string }>> =>
      (await upstreamState(agent)).tasks.filter((t) => !before.includes(t.taskId));
    await until(async () => (await fresh()).length === 1);
    await until(async () => (await fresh())[0]?.status === 'cancelled');
    expect((await agent.experimental.tasks.getTask(task.taskId)).status).toBe('cancelled');
  });
});

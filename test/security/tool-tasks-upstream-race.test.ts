/**
 * A passed-through MCP task cancelled while the upstream is still making its own task: the
 * official SDK client against the real sidecar, a real stdio upstream built on the SDK's
 * experimental task support (test/fixtures/gateway/task-server.mjs) whose `gate` holds the
 * task-augmented call's answer until released.
 *
 * The agent's `tasks/cancel` (or the task's ttl) must reach the upstream's task even when it
 * lands before the upstream answered with that task's id: else the upstream task runs on, and
 * stays, with nobody to cancel it.
 *
 * Found in the second review of that fix: the cancelled task's call, still awaited upstream, no
 * longer counted against `gateway.tasks.maxPerAgent` (a cancelled or expired task is finished),
 * so an agent creating and cancelling tasks (or giving them a short ttl) kept any number of calls
 * running on the upstream, each holding its arguments in the sidecar until its call timeout.
 *
 * Found in the third: a task's call forwarded as a plain call (the upstream takes no task for the
 * tool, server-everything's trigger-long-running-operation, which ignores cancellation) ended
 * with its task, so creating and cancelling tasks (or giving them a short ttl) still ran any
 * number of calls on such an upstream — where a plain call given up keeps its in-flight slot
 * until the upstream answers it.
 */
import { fileURLToPath } from 'node:url';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { SidecarConfigInput } from '../../src/server/config-file.js';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  agentToken,
  closeSidecar,
  DEFAULT_ALLOW,
  EVERYTHING_BIN,
  httpClient,
  startTestSidecar,
  text,
  until,
} from '../fixtures/gateway/harness.js';
import { callAsTask, rpcError } from '../fixtures/gateway/tasks.js';

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

/**
 * A sidecar over `upstreams` (gateway.tasks.maxPerAgent 2) for the suite, and mallory's client.
 */
function mallorysSidecar(upstreams: SidecarConfigInput['upstreams']): () => Client {
  let sidecar: Sidecar;
  let agent: Client;
  beforeAll(async () => {
    sidecar = await startTestSidecar({
      upstreams,
      policies: [DEFAULT_ALLOW],
      agents: [{ name: 'mallory' }],
      gateway: { tasks: { maxTtlSeconds: 120, maxPerAgent: 2 }, shutdownGraceSeconds: 0 },
    });
    agent = await httpClient(sidecar.url!, agentToken(sidecar, 'mallory'));
  });
  afterAll(async () => {
    await agent?.close();
    await closeSidecar(sidecar);
  });
  return () => agent;
}

/** Waits until the agent's task `id` is gone (its ttl ran out). */
async function expired(agent: Client, id: string): Promise<void> {
  await until(() =>
    agent.experimental.tasks.getTask(id).then(
      () => false,
      () => true,
    ),
  );
}

/** Waits until a task-augmented call of `name` is taken again (the agent is under its cap). */
async function takenAgain(
  agent: Client,
  name: string,
  args: Record<string, unknown>,
  timeoutMs?: number,
): Promise<void> {
  await until(async () => {
    try {
      await callAsTask(agent, name, args);
      return true;
    } catch {
      return false;
    }
  }, timeoutMs);
}

describe('task calls still awaited upstream after their task ended', () => {
  const mallory = mallorysSidecar({
    tk: { command: process.execPath, args: [TASK_SERVER], stderr: 'ignore' },
  });

  it('count against maxPerAgent: cancelling or letting tasks expire does not run more', async () => {
    const agent = mallory();
    const gated = async (message: string, ttl?: number): Promise<string> => {
      const { task } = await callAsTask(agent, 'tk__slow_echo', { message, gate: true }, ttl);
      await until(async () => (await upstreamState(agent)).waiting.includes(message));
      return task.taskId;
    };
    // A first call of the tool answered: later ones are not held one at a time while the
    // gateway has no estimate of its answers yet.
    const { task: warm } = await callAsTask(agent, 'tk__slow_echo', { message: 'warm' });
    await until(
      async () => (await agent.experimental.tasks.getTask(warm.taskId)).status === 'completed',
    );
    await agent.experimental.tasks.cancelTask(await gated('held-1'));
    await expired(agent, await gated('held-2', 1_000));
    // Both calls still wait upstream for their answer: a third is refused, not sent.
    const refused = await rpcError(
      callAsTask(agent, 'tk__slow_echo', { message: 'held-3', gate: true }),
    );
    expect(JSON.stringify(refused.data)).toContain('FABRIC_ERR_TOOL_TASK_LIMIT');
    expect((await upstreamState(agent)).waiting).toEqual(['held-1', 'held-2']);
    // Once the upstream answers (and the gateway cancels its tasks), the agent may go on.
    await agent.callTool({ name: 'tk__release', arguments: { message: 'held-1' } });
    await agent.callTool({ name: 'tk__release', arguments: { message: 'held-2' } });
    await takenAgain(agent, 'tk__slow_echo', { message: 'after' });
  });
});

describe('plain task calls given up after they were sent upstream', () => {
  const mallory = mallorysSidecar({
    ev: {
      command: process.execPath,
      args: [EVERYTHING_BIN, 'stdio'],
      stderr: 'ignore',
      // The SDK's server sends no answer to a request cancelled: the wait ends at this.
      callTimeoutSeconds: 8,
    },
  });

  it('count against maxPerAgent until the upstream answers them', async () => {
    const agent = mallory();
    const tool = 'ev__trigger-long-running-operation';
    // A first call of the tool answered: later ones are not held one at a time while the
    // gateway has no estimate of its answers yet.
    await agent.callTool({ name: tool, arguments: { duration: 0.1, steps: 1 } });
    // Two calls the upstream works on for a minute, their tasks ended by a 1 s ttl.
    for (let i = 0; i < 2; i++) {
      const { task } = await callAsTask(agent, tool, { duration: 60, steps: 1 }, 1_000);
      await expired(agent, task.taskId);
    }
    // The upstream still works on both: a third is refused, not sent.
    const refused = await rpcError(callAsTask(agent, tool, { duration: 60, steps: 1 }));
    expect(JSON.stringify(refused.data)).toContain('FABRIC_ERR_TOOL_TASK_LIMIT');
    // Once the upstream is done with them (an answer dropped, or the upstream's call timeout
    // passed), the agent may go on.
    await takenAgain(agent, tool, { duration: 0.1, steps: 1 }, 30_000);
  }, 60_000);
});

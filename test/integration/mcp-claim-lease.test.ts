/**
 * `fabric__claim_task` over MCP and the answer a client drops: the sidecar writes the claim's
 * answer, the client never reads it (its request timed out, the connection dropped). The sidecar
 * cannot see that, so without a delivery lease the task stays RUNNING on the agent; with
 * `ackSeconds` it goes back to its queue unacknowledged, its attempt not counted. Checked in the
 * state file, as another reader sees it.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AgentFabric } from '../../src/fabric.js';
import { ERROR_META_KEY } from '../../src/gateway/map-error.js';
import type { Sidecar } from '../../src/server/sidecar.js';
import { TaskStatus, type TaskAssignment } from '../../src/task.js';
import {
  agentId,
  agentToken,
  closeSidecar,
  DEFAULT_ALLOW,
  httpClient,
  startTestSidecar,
  text,
} from '../fixtures/gateway/harness.js';

let dir: string;
let statePath: string;
let sidecar: Sidecar;
let fabric: AgentFabric;
/** A client that reads its answers. */
let reader: Client;
/** A client whose claim answers are written by the sidecar and dropped unread. */
let dropper: Client;
let dropped = 0;

/**
 * An MCP client whose `fabric__claim_task` answers are lost: the request reaches the sidecar and
 * its answer comes back, but the client throws it away unread, as one whose timeout fired would.
 */
function droppingClient(url: string, token: string): Promise<Client> {
  return httpClient(url, token, {}, async (input, init) => {
    const res = await fetch(input, init);
    if (typeof init?.body === 'string' && init.body.includes('fabric__claim_task')) {
      await res.body?.cancel();
      dropped++;
      throw new Error('the answer was dropped');
    }
    return res;
  });
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'mcp-claim-lease-'));
  statePath = join(dir, 'state.db');
  sidecar = await startTestSidecar({
    policies: [DEFAULT_ALLOW],
    state: { path: statePath },
    agents: [{ name: 'w' }],
  });
  fabric = sidecar.fabric!;
  reader = await httpClient(sidecar.url!, agentToken(sidecar, 'w'));
  dropper = await droppingClient(sidecar.url!, agentToken(sidecar, 'w'));
});

afterAll(async () => {
  await reader?.close();
  await dropper?.close();
  await closeSidecar(sidecar);
  await rm(dir, { recursive: true, force: true });
});

interface Row {
  id: string;
  status: string;
  attempt: number;
  undelivered: number | null;
  assigned_agent_id: string | null;
}

/** The task's row in the state file. */
function stored(id: string): Row | undefined {
  const db = new Database(statePath, { readonly: true });
  try {
    return db
      .prepare<[string], Row>(
        'SELECT id, status, attempt, undelivered, assigned_agent_id FROM tasks WHERE id = ?',
      )
      .get(id);
  } finally {
    db.close();
  }
}

const call = (client: Client, name: string, args: Record<string, unknown>) =>
  client.callTool({ name: `fabric__${name}`, arguments: args }) as Promise<CallToolResult>;

/** Claims with a client whose answer is dropped; resolves once the sidecar has answered. */
async function dropClaim(args: Record<string, unknown>): Promise<void> {
  await expect(call(dropper, 'claim_task', args)).rejects.toThrow('the answer was dropped');
}

const schedule = () =>
  fabric.schedule({ agentId: agentId(sidecar, 'w'), taskType: 't', payload: {}, maxAttempts: 1 });

async function claimRead(args: Record<string, unknown>): Promise<TaskAssignment> {
  const res = await call(reader, 'claim_task', args);
  expect(res.isError, text(res)).toBeFalsy();
  return (res.structuredContent as { result: TaskAssignment }).result;
}

describe('fabric__claim_task and a dropped answer', () => {
  it('without ackSeconds the task stays RUNNING on the agent that never got it', async () => {
    const t = await schedule();
    await dropClaim({ waitSeconds: 0 });
    // The window the lease closes: nothing tells the sidecar the answer was lost.
    await new Promise((r) => setTimeout(r, 1_500));
    await expect.poll(() => stored(t.id)?.status).toBe(TaskStatus.RUNNING);
    expect(stored(t.id)?.assigned_agent_id).toBe(agentId(sidecar, 'w'));
    // Clean up: the test gives it back itself.
    expect(
      fabric.unclaimTask(agentId(sidecar, 'w'), t.id, (await fabric.getTask(t.id)).attempt),
    ).toBe(true);
    const again = await claimRead({ waitSeconds: 0 });
    await call(reader, 'complete_task', { taskId: again.taskId, attempt: again.attempt });
    expect((await fabric.getTask(t.id)).status).toBe(TaskStatus.COMPLETED);
  });

  it('with ackSeconds the dropped task goes back PENDING, its attempt not counted, and runs later', async () => {
    const t = await schedule();
    await dropClaim({ waitSeconds: 0, ackSeconds: 1 });
    // The sidecar handed it out (the answer was written, then dropped by the client).
    expect((await fabric.getTask(t.id)).status).toBe(TaskStatus.RUNNING);
    await expect
      .poll(() => stored(t.id), { timeout: 10_000 })
      .toMatchObject({ status: TaskStatus.PENDING, undelivered: 1 });
    expect(fabric.scheduler.agentLoad(agentId(sidecar, 'w')).runningTasks).toBe(0);
    // maxAttempts 1: the lost attempt did not use it up.
    const lost = stored(t.id)!.attempt;
    const again = await claimRead({ waitSeconds: 0, ackSeconds: 1 });
    expect(again).toMatchObject({ taskId: t.id });
    expect(again.attempt).toBeGreaterThan(lost);
    const stale = await call(reader, 'complete_task', { taskId: t.id, attempt: lost });
    expect(stale.isError).toBe(true);
    await call(reader, 'complete_task', { taskId: again.taskId, attempt: again.attempt });
    await expect.poll(() => stored(t.id)?.status).toBe(TaskStatus.COMPLETED);
  });

  it('an empty report_progress acknowledges: the task stays past its lease', async () => {
    const t = await schedule();
    const a = await claimRead({ waitSeconds: 0, ackSeconds: 1 });
    expect(a.taskId).toBe(t.id);
    const ack = await call(reader, 'report_progress', { taskId: a.taskId, attempt: a.attempt });
    expect(ack.isError, text(ack)).toBeFalsy();
    await new Promise((r) => setTimeout(r, 1_500));
    expect(stored(t.id)).toMatchObject({ status: TaskStatus.RUNNING, attempt: a.attempt });
    await call(reader, 'complete_task', { taskId: a.taskId, attempt: a.attempt, result: 1 });
    await expect.poll(() => stored(t.id)?.status).toBe(TaskStatus.COMPLETED);
    expect(fabric.scheduler.events.listens('task.progress')).toBe(false);
  });

  it('concurrent dropped claims with leases: every task back PENDING, none counted, no slot held', async () => {
    const tasks = await Promise.all(Array.from({ length: 4 }, () => schedule()));
    const before = dropped;
    await Promise.all(tasks.map(() => dropClaim({ waitSeconds: 0, ackSeconds: 1 })));
    expect(dropped).toBe(before + tasks.length);
    for (const t of tasks) {
      await expect
        .poll(() => stored(t.id), { timeout: 10_000 })
        .toMatchObject({ status: TaskStatus.PENDING, undelivered: 1 });
    }
    expect(fabric.scheduler.agentLoad(agentId(sidecar, 'w')).runningTasks).toBe(0);
    // Each is delivered again and completes (maxAttempts 1).
    for (let i = 0; i < tasks.length; i++) {
      const a = await claimRead({ waitSeconds: 0 });
      await call(reader, 'complete_task', { taskId: a.taskId, attempt: a.attempt });
    }
    for (const t of tasks) expect((await fabric.getTask(t.id)).status).toBe(TaskStatus.COMPLETED);
  });

  it('refuses a bad ackSeconds with a typed error and claims nothing', async () => {
    const t = await schedule();
    for (const ackSeconds of [3601, -1, '1', null, 1e308]) {
      const res = await call(reader, 'claim_task', { waitSeconds: 0, ackSeconds });
      expect(res.isError, JSON.stringify(ackSeconds)).toBe(true);
      expect(res._meta?.[ERROR_META_KEY]).toMatchObject({ code: 'FABRIC_ERR_INVALID_ARGUMENT' });
      expect(text(res)).toContain('ackSeconds');
    }
    expect(stored(t.id)).toMatchObject({ status: TaskStatus.PENDING, attempt: 0 });
    const a = await claimRead({ waitSeconds: 0 });
    expect(a.taskId).toBe(t.id);
    await call(reader, 'complete_task', { taskId: a.taskId, attempt: a.attempt });
  });
});

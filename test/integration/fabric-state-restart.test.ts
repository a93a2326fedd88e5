/**
 * The library over a real SQLite state file: what one AgentFabric persisted, the next one on the
 * same file serves — pools and their agents back in the scheduler (work runs on them), agents'
 * credentials, budgets and their usage, finished tasks; terminated agents stay terminated.
 */
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { AgentStatus } from '../../src/agent.js';
import { AgentFabric } from '../../src/fabric.js';
import type { AgentRecord } from '../../src/lifecycle/lifecycle-manager.js';
import type { PoolRecord } from '../../src/pools/pool-manager.js';
import type { TaskRecord } from '../../src/scheduler/task-record.js';
import { SqliteStore } from '../../src/store/sqlite-store.js';
import { tempDir, until } from '../fixtures/gateway/harness.js';

const fabrics: AgentFabric[] = [];
afterEach(async () => {
  for (const f of fabrics.splice(0)) await f.close();
});

let store: SqliteStore<TaskRecord, AgentRecord, PoolRecord>;

async function openFabric(path: string): Promise<AgentFabric> {
  store = await SqliteStore.open<TaskRecord, AgentRecord, PoolRecord>(path);
  const fabric = new AgentFabric({}, { store });
  fabric.registerInProcessHandler('echo', (payload) => payload);
  fabrics.push(fabric);
  return fabric;
}

describe('AgentFabric over a SqliteStore, reopened', () => {
  it('serves what the previous fabric persisted', async () => {
    const path = join(tempDir('fabric-state'), 'state.db');
    const first = await openFabric(path);
    const pool = await first.createPool({
      poolId: 'p',
      model: 'm',
      executor: 'inprocess',
      minAgents: 2,
    });
    const solo = await first.spawn({
      name: 'solo',
      model: 'm',
      executor: 'inprocess',
      budget: { maxCostPerDay: 4 },
    });
    const gone = await first.spawn({ name: 'gone', model: 'm', executor: 'inprocess' });
    await first.terminate(gone.id, { drainTimeoutSeconds: 0 });
    await first.recordUsage(solo.id, { tokens: 0, cost: 4 });
    // A pool whose deletion a crash interrupted: its record says DRAINING.
    const doomed = await first.createPool({
      poolId: 'doomed',
      model: 'm',
      executor: 'inprocess',
      minAgents: 1,
    });
    const rec = store.pools.get('doomed')!;
    rec.status = 'DRAINING';
    store.pools.put('doomed', rec);
    const task = await first.scheduleToPool('p', 'echo', { n: 1 });
    expect((await first.waitForTask(task.id)).result).toEqual({ n: 1 });
    await first.close();
    fabrics.splice(fabrics.indexOf(first), 1);

    const second = await openFabric(path);
    // The pool and its agents, back in the scheduler: work queued to the pool runs.
    expect((await second.getPool('p')).currentAgents).toEqual(pool.currentAgents);
    const again = await second.scheduleToPool('p', 'echo', { n: 2 });
    const done = await second.waitForTask(again.id, { timeoutSeconds: 20 });
    expect(done.result).toEqual({ n: 2 });
    expect(pool.currentAgents).toContain(done.assignedAgentId);
    // Credentials and identity.
    const id = second.authenticate(solo.credential);
    expect(id.kind === 'agent' && id.agentId).toBe(solo.id);
    expect(() => second.authenticate(gone.credential)).toThrow(/revoked/);
    expect((await second.getAgentInfo(gone.id)).status).toBe(AgentStatus.TERMINATED);
    // Budget and its usage: the agent at its limit stays refused.
    expect(second.budgets.getStatus(solo.id)).toMatchObject({ costUsed: 4, costLimit: 4 });
    await expect(
      second.schedule({ agentId: solo.id, taskType: 'echo', payload: {} }),
    ).rejects.toMatchObject({ code: 'FABRIC_ERR_BUDGET_EXCEEDED' });
    // The interrupted deletion is finished: pool gone, its agent terminated.
    await until(async () => (await second.listPools()).every((p) => p.poolId !== 'doomed'));
    expect((await second.getAgentInfo(doomed.currentAgents[0]!)).status).toBe(
      AgentStatus.TERMINATED,
    );
    // The finished task, its result readable after the restart.
    expect(await second.getTask(task.id)).toMatchObject({
      status: 'COMPLETED',
      result: { n: 1 },
      attempt: 1,
    });
  }, 60_000);
  it('makes agents that joined a pool by poolId members after a restart, also from older state', async () => {
    const path = join(tempDir('fabric-state'), 'state.db');
    const first = await openFabric(path);
    await first.createPool({ poolId: 'p', model: 'm', executor: 'remote', minAgents: 1 });
    const joined = await first.spawn({ name: 'j', model: 'm', executor: 'remote', poolId: 'p' });
    const members = (await first.getPool('p')).currentAgents;
    expect(members).toHaveLength(2);
    expect(members).toContain(joined.id);
    await first.close();

    // Reopened: the same members, none added or replaced.
    const second = await openFabric(path);
    expect((await second.getPool('p')).currentAgents).toEqual(members);
    expect((await second.getPool('p')).desiredAgents).toBe(2);
    second.pools.reconcile();
    expect(second.lifecycle.listAgents()).toHaveLength(2);
    // State written before joined agents were members: the pool's record does not name it.
    const rec = store.pools.get('p')!;
    store.pools.put('p', {
      ...rec,
      agentIds: rec.agentIds.filter((id) => id !== joined.id),
      joinedIds: undefined,
      desired: 1,
    } as PoolRecord);
    await second.close();

    const third = await openFabric(path);
    expect((await third.getPool('p')).currentAgents).toEqual([
      ...members.filter((id) => id !== joined.id),
      joined.id,
    ]);
    await third.deletePool('p', { drainTimeoutSeconds: 0 });
    expect(third.lifecycle.agentInfo(joined.id).status).toBe(AgentStatus.TERMINATED);
    expect(store.agents.get(joined.id)?.status).toBe(AgentStatus.TERMINATED);
  }, 60_000);
});

/**
 * A pool deleted and created again under the same id, through the Operator API of a real
 * `agent-fabric serve` (real SQLite state file, real restart), as an operator does it.
 *
 * Before, the deleted pool's budget scope stayed — its limits and its usage: a pool created
 * again without a budget was held to the old limits (documented nowhere), and one created with
 * its own limits started with the old pool's spend. Now deleting a pool forgets its budget in
 * the same commit: the new pool starts with the limits it is created with and no usage. What
 * the deleted pool's agents used stays counted in the fabric's budget (only the administrator
 * can delete and create pools, so an agent cannot reset its spend this way).
 *
 * State files written before that still held the budget rows of pools deleted back then, and a
 * pool created again under such an id inherited them. Now opening a state file drops the budget
 * rows of pools it holds no record of — before the config's pools are made — and keeps every
 * other scope (agents, the fabric, existing pools).
 */
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, expect, it } from 'vitest';
import { callApi } from '../fixtures/api.js';
import { ADMIN_TOKEN } from '../fixtures/gateway/harness.js';
import { budgetOnDisk, budgetRowsOnDisk as rows } from '../fixtures/state/budget-rows.js';
import { agentIdOf, ENV, oneWorkerDir } from '../fixtures/state/one-worker.js';
import { cleanUp, serve, stop, type Running } from '../fixtures/state/serve.js';

afterAll(cleanUp);

/** An Operator API call as the administrator that must answer 200; resolves its body. */
async function ok<T>(r: Running, method: string, body: unknown, token = ADMIN_TOKEN): Promise<T> {
  const res = await callApi(r.url, method, body, token);
  const text = await res.text();
  expect(res.status, `${method}: ${text}`).toBe(200);
  return JSON.parse(text) as T;
}

interface Usage {
  used?: number;
  limit?: number;
}

/** The tokens part of a budget scope's status (`used` 0 and `limit` undefined: unlimited). */
async function tokens(r: Running, scope: Record<string, unknown>): Promise<Usage> {
  const body = await ok<{ status: { tokens?: Usage } }>(r, 'BudgetService/GetBudgetStatus', {
    scope,
  });
  return { used: body.status.tokens?.used ?? 0, limit: body.status.tokens?.limit };
}

/** Creates pool `crew` with one remote agent (and `budget` if given); resolves its credential. */
async function createCrew(r: Running, budget?: { maxTokensPerHour: number }): Promise<string> {
  const created = await ok<{ spawned: { credential: string }[] }>(r, 'FabricService/CreatePool', {
    poolId: 'crew',
    model: 'm',
    minAgents: 1,
    executor: 'remote',
    ...(budget === undefined ? {} : { budget }),
  });
  expect(created.spawned).toHaveLength(1);
  return created.spawned[0]!.credential;
}

it("a pool created again under a deleted pool's id starts with its own limits and no usage, also after a restart", async () => {
  const dir = await oneWorkerDir('pool-budget-reuse');
  const first = await serve(dir, ENV);
  const crew = { poolId: 'crew' };

  const member = await createCrew(first, { maxTokensPerHour: 50 });
  await ok(first, 'AgentService/RecordUsage', { tokens: 40 }, member);
  expect(await tokens(first, crew)).toEqual({ used: 40, limit: 50 });
  await ok(first, 'FabricService/DeletePool', { poolId: 'crew', drainTimeout: '0s' });

  // Made again without a budget: no limits, nothing used.
  await createCrew(first);
  expect(await tokens(first, crew)).toEqual({ used: 0, limit: undefined });
  // Made again with its own budget: those limits, nothing used; its agents spend against them.
  await ok(first, 'FabricService/DeletePool', { poolId: 'crew', drainTimeout: '0s' });
  const next = await createCrew(first, { maxTokensPerHour: 1_000 });
  expect(await tokens(first, crew)).toEqual({ used: 0, limit: 1_000 });
  await ok(first, 'AgentService/RecordUsage', { tokens: 60 }, next);
  expect(await tokens(first, crew)).toEqual({ used: 60, limit: 1_000 });
  // The fabric's budget still counts what the deleted pool's agent used.
  expect((await tokens(first, { fabric: true })).used).toBe(100);

  // The state file agrees: after a restart the pool's budget is the new one's.
  expect(await stop(first, 'SIGTERM')).toBe(0);
  const second = await serve(dir, ENV);
  expect(await tokens(second, crew)).toEqual({ used: 60, limit: 1_000 });
  await ok(second, 'FabricService/DeletePool', { poolId: 'crew', drainTimeout: '0s' });
  expect(await stop(second, 'SIGTERM')).toBe(0);
  const third = await serve(dir, ENV);
  await createCrew(third);
  expect(await tokens(third, crew)).toEqual({ used: 0, limit: undefined });
  expect(await stop(third, 'SIGTERM')).toBe(0);
}, 120_000);

it("opening a state file written before deleted pools' budgets went with them drops the budget rows of pools that no longer exist", async () => {
  // `keep` comes from the config: made at the first start, found in the file at the next ones.
  const dir = await oneWorkerDir('pool-budget-old-file', {
    pools: [{ id: 'keep', minAgents: 1, executor: 'remote' }],
  });
  const path = join(dir, '.fabric', 'state.db');
  const first = await serve(dir, ENV);
  const worker = agentIdOf(first);
  const member = await createCrew(first, { maxTokensPerHour: 50 });
  await ok(first, 'AgentService/RecordUsage', { tokens: 40 }, member);
  await ok(first, 'BudgetService/SetBudgetLimits', {
    scope: { poolId: 'keep' },
    limits: { maxTokensPerHour: 70 },
  });
  await ok(first, 'BudgetService/SetBudgetLimits', {
    scope: { agentId: worker },
    limits: { maxTokensPerHour: 90 },
  });
  expect(await stop(first, 'SIGTERM')).toBe(0);
  const crewRow = rows(path).get('pool:crew');
  expect(crewRow).toBeDefined();

  // Deleted, then the row put back: the file as a sidecar that kept deleted pools' budgets left
  // it (the pool's record gone, its budget row there).
  const second = await serve(dir, ENV);
  await ok(second, 'FabricService/DeletePool', { poolId: 'crew', drainTimeout: '0s' });
  expect(await stop(second, 'SIGTERM')).toBe(0);
  const db = new Database(path);
  try {
    db.prepare('INSERT INTO budgets (scope, data) VALUES (?, ?)').run('pool:crew', crewRow!);
    // A pool id that looks like a prefix of an existing one's is a pool of its own.
    db.prepare('INSERT INTO budgets (scope, data) VALUES (?, ?)').run('pool:kee', crewRow!);
    // Nor has an older version's file the flag that the drop ran on it.
    const flag = db.prepare("DELETE FROM meta WHERE key = 'budgets.orphanPoolsDropped'").run();
    expect(flag.changes).toBe(1);
    expect(db.prepare("SELECT COUNT(*) AS n FROM records WHERE kind = 'pool'").get()).toEqual({
      n: 1,
    });
  } finally {
    db.close();
  }
  const before = rows(path);
  expect([...before.keys()].sort()).toEqual(
    expect.arrayContaining(['fabric', 'pool:crew', 'pool:kee', 'pool:keep', `agent:${worker}`]),
  );

  const third = await serve(dir, ENV);
  // On disk at once: the rows of the pools that do not exist are gone, every other row stays.
  const after = rows(path);
  expect(after.has('pool:crew')).toBe(false);
  expect(after.has('pool:kee')).toBe(false);
  const kept = [...before.keys()].filter((k) => k !== 'pool:crew' && k !== 'pool:kee');
  expect([...after.keys()].sort()).toEqual(kept.sort());
  expect(third.err()).toContain('dropped the budgets (limits and usage) of 2 pool(s)');
  expect(budgetOnDisk(path, 'pool:keep')?.config).toMatchObject({ maxTokensPerHour: 70 });
  expect(budgetOnDisk(path, `agent:${worker}`)?.config).toMatchObject({ maxTokensPerHour: 90 });
  expect(await tokens(third, { poolId: 'keep' })).toEqual({ used: 0, limit: 70 });
  expect((await tokens(third, { fabric: true })).used).toBe(40);
  // Made again without a budget: no limits, nothing used (before: limit 50, 40 used).
  await createCrew(third);
  expect(await tokens(third, { poolId: 'crew' })).toEqual({ used: 0, limit: undefined });
  expect(await stop(third, 'SIGTERM')).toBe(0);
  // Once per file: a row without its pool written since — limits a library caller set with
  // `budgets.setPoolBudget` before creating the pool — outlasts the next opens.
  const again = new Database(path);
  try {
    again.prepare('INSERT INTO budgets (scope, data) VALUES (?, ?)').run('pool:later', crewRow!);
  } finally {
    again.close();
  }
  const fourth = await serve(dir, ENV);
  expect(fourth.err()).not.toContain('dropped the budgets');
  expect(rows(path).get('pool:later')).toBe(crewRow);
  expect(await stop(fourth, 'SIGTERM')).toBe(0);
}, 120_000);

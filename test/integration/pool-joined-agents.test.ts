/**
 * Agents that join a pool by `poolId` from outside the pool manager — a config agent (the
 * embedded default config's `local-agent` in `pool-default`), the operator API's `SpawnAgent`
 * with a pool id — are members of that pool: the real CLI's `pools`, `pools scale` and
 * `pools drain` against a real sidecar count, scale and terminate them, `/api` `GetPool` and
 * `ListPools` list them, a full pool refuses one more, one that ends elsewhere leaves the pool
 * without a replacement, and across a restart over a state file the membership is the same
 * (no double counting of the start-up agent).
 */
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { AgentStatus } from '../../src/agent.js';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  ADMIN_TOKEN,
  agentId,
  api,
  CLI_MAIN,
  closeSidecar,
  DEFAULT_ALLOW,
  startTestSidecar,
  tempDir,
  TSX,
  until,
} from '../fixtures/gateway/harness.js';

interface Ran {
  code: number | null;
  out: string;
  err: string;
}

/** Runs `agent-fabric <args> --url <sidecar>` to its end, with the admin token. */
function cli(sidecar: Sidecar, args: readonly string[]): Promise<Ran> {
  const env: NodeJS.ProcessEnv = { ...process.env, FABRIC_ADMIN_TOKEN: ADMIN_TOKEN };
  delete env['FABRIC_URL'];
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      ['--import', TSX, CLI_MAIN, ...args, '--url', sidecar.url!],
      { env, timeout: 60_000 },
      (error, out, err) => {
        const code = error ? (typeof error.code === 'number' ? error.code : null) : 0;
        resolve({ code, out, err });
      },
    );
  });
}

/** The `AGENTS` cell of the pool's row in the `pools` table. */
async function agentsColumn(sidecar: Sidecar, poolId: string): Promise<string> {
  const ran = await cli(sidecar, ['pools']);
  expect(ran.code, ran.err).toBe(0);
  const [header, ...rows] = ran.out.trim().split('\n');
  const cells = (line: string): string[] => line.trim().split(/\s{2,}/);
  const col = cells(header!).indexOf('AGENTS');
  const row = rows.find((r) => cells(r)[0] === poolId);
  expect(row, ran.out).toBeDefined();
  return cells(row!)[col]!;
}

async function apiJson<T>(sidecar: Sidecar, method: string, body: unknown): Promise<T> {
  const res = await api(sidecar, method, body);
  const json = (await res.json()) as T;
  expect(res.status, JSON.stringify(json)).toBe(200);
  return json;
}

/** The embedded default config's pool and agent (examples/fabric.yaml). */
const DEFAULT_POOLS = [{ id: 'pool-default', name: 'Default agents', minAgents: 0, maxAgents: 4 }];
const DEFAULT_AGENTS = [{ name: 'local-agent', poolId: 'pool-default' }];

describe('agents that join a pool by poolId are its members (real CLI, real sidecar)', () => {
  let sidecar: Sidecar | undefined;

  afterEach(async () => {
    await closeSidecar(sidecar);
    sidecar = undefined;
  });

  it('counts, scales and drains the config agent and an operator-spawned one with the pool', async () => {
    sidecar = await startTestSidecar({
      policies: [DEFAULT_ALLOW],
      pools: DEFAULT_POOLS,
      agents: DEFAULT_AGENTS,
    });
    const fabric = sidecar.fabric!;
    const local = agentId(sidecar, 'local-agent');

    // Listed by the pool (library, /api GetPool and ListPools, the CLI table).
    expect((await fabric.getPool('pool-default')).currentAgents).toEqual([local]);
    expect(await agentsColumn(sidecar, 'pool-default')).toBe('1');
    const got = await apiJson<{ pool: { agentIds: string[] } }>(sidecar, 'FabricService/GetPool', {
      poolId: 'pool-default',
    });
    expect(got.pool.agentIds).toEqual([local]);
    // Nothing replaced or trimmed it: the pool's size grew by the agent that joined.
    fabric.pools.reconcile();
    expect((await fabric.getPool('pool-default')).desiredAgents).toBe(1);
    expect(fabric.lifecycle.agentInfo(local).status).not.toBe(AgentStatus.TERMINATED);

    // `pools scale 2` counts it: one agent is spawned, not two.
    const up = await cli(sidecar, ['pools', 'scale', 'pool-default', '2']);
    expect(up.code, up.err).toBe(0);
    expect(up.out.split('\n')[0]).toMatch(/^pool pool-default: ACTIVE, 1 agents /);
    expect(up.out.trim().split('\n').at(-1)).toMatch(
      /^pool pool-default scaled to 2 agents; spawned \S+$/,
    );
    const afterUp = (await fabric.getPool('pool-default')).currentAgents;
    expect(afterUp).toHaveLength(2);
    expect(afterUp[0]).toBe(local);
    expect(await agentsColumn(sidecar, 'pool-default')).toBe('2');

    // The operator API's SpawnAgent with the pool id joins it too.
    const spawned = await apiJson<{ spawned: { agent: { agentId: string } } }>(
      sidecar,
      'FabricService/SpawnAgent',
      { name: 'joiner', model: 'm', executor: 'remote', poolId: 'pool-default' },
    );
    const joiner = spawned.spawned.agent.agentId;
    const listed = await apiJson<{ pools: { poolId: string; agentIds: string[] }[] }>(
      sidecar,
      'FabricService/ListPools',
      {},
    );
    expect(listed.pools.find((p) => p.poolId === 'pool-default')!.agentIds).toEqual([
      ...afterUp,
      joiner,
    ]);
    expect(await agentsColumn(sidecar, 'pool-default')).toBe('3');

    // Scaling down removes members, the pool's own agent first on a tie, then the newest
    // joined one; the config agent stays.
    const down = await cli(sidecar, ['pools', 'scale', 'pool-default', '1']);
    expect(down.code, down.err).toBe(0);
    expect((await fabric.getPool('pool-default')).currentAgents).toEqual([local]);
    expect(fabric.lifecycle.agentInfo(joiner).status).toBe(AgentStatus.TERMINATED);
    expect(fabric.lifecycle.agentInfo(afterUp[1]!).status).toBe(AgentStatus.TERMINATED);

    // Full: an agent joining takes the place of one of the pool's own (it drains away), so the
    // pool stays at its maxAgents with the config agent and the newcomer in it.
    expect((await cli(sidecar, ['pools', 'scale', 'pool-default', '4'])).code).toBe(0);
    const own = (await fabric.getPool('pool-default')).currentAgents.filter((id) => id !== local);
    const joinedFull = await api(sidecar, 'FabricService/SpawnAgent', {
      name: 'one-more',
      model: 'm',
      executor: 'remote',
      poolId: 'pool-default',
    });
    expect(joinedFull.status).toBe(200);
    const newcomer = ((await joinedFull.json()) as { spawned: { agent: { agentId: string } } })
      .spawned.agent.agentId;
    await until(async () => (await fabric.getPool('pool-default')).currentAgents.length === 4);
    const afterFull = (await fabric.getPool('pool-default')).currentAgents;
    expect(afterFull).toContain(local);
    expect(afterFull).toContain(newcomer);
    expect(own.filter((id) => !afterFull.includes(id))).toHaveLength(1);

    // Drain terminates every member, the config agent included, and deletes the pool.
    const members = (await fabric.getPool('pool-default')).currentAgents;
    const drain = await cli(sidecar, ['pools', 'drain', 'pool-default', '--timeout', '1']);
    expect(drain.code, drain.err).toBe(0);
    expect(fabric.pools.peek('pool-default')).toBeUndefined();
    expect(fabric.lifecycle.agentInfo(local).status).toBe(AgentStatus.TERMINATED);
    for (const id of members) {
      expect(fabric.lifecycle.agentInfo(id).status).toBe(AgentStatus.TERMINATED);
    }
    const live = fabric.lifecycle
      .listAgents({ poolId: 'pool-default' })
      .filter((a) => a.status !== AgentStatus.TERMINATED);
    expect(live).toEqual([]);
  }, 180_000);

  it('a joined agent terminated elsewhere leaves the pool and is not replaced', async () => {
    sidecar = await startTestSidecar({
      policies: [DEFAULT_ALLOW],
      pools: DEFAULT_POOLS,
      agents: DEFAULT_AGENTS,
    });
    const fabric = sidecar.fabric!;
    const local = agentId(sidecar, 'local-agent');
    expect((await fabric.getPool('pool-default')).currentAgents).toEqual([local]);
    const term = await cli(sidecar, ['agents', 'drain', local, '--timeout', '0']);
    expect(term.code, term.err).toBe(0);
    fabric.pools.reconcile();
    await Promise.resolve();
    const pool = await fabric.getPool('pool-default');
    expect(pool.currentAgents).toEqual([]);
    expect(pool.desiredAgents).toBe(0);
    expect(
      fabric.lifecycle.listAgents().filter((a) => a.status !== AgentStatus.TERMINATED),
    ).toEqual([]);
    expect(await agentsColumn(sidecar, 'pool-default')).toBe('0');
  }, 120_000);

  it('keeps the membership exactly across a restart over a state file', async () => {
    const path = join(tempDir('pool-joined-'), 'state.db');
    const config = {
      policies: [DEFAULT_ALLOW],
      pools: DEFAULT_POOLS,
      agents: DEFAULT_AGENTS,
      state: { path },
    };
    sidecar = await startTestSidecar(config);
    const local = agentId(sidecar, 'local-agent');
    expect((await cli(sidecar, ['pools', 'scale', 'pool-default', '2'])).code).toBe(0);
    const members = (await sidecar.fabric!.getPool('pool-default')).currentAgents;
    expect(members).toHaveLength(2);
    await closeSidecar(sidecar);

    sidecar = await startTestSidecar(config);
    // The start-up agent is the one kept, not a new one, and counted once.
    expect(agentId(sidecar, 'local-agent')).toBe(local);
    const fabric = sidecar.fabric!;
    const pool = await fabric.getPool('pool-default');
    expect(pool.currentAgents).toEqual(members);
    expect(pool.desiredAgents).toBe(2);
    fabric.pools.reconcile();
    expect((await fabric.getPool('pool-default')).currentAgents).toEqual(members);
    expect(
      fabric.lifecycle.listAgents().filter((a) => a.status !== AgentStatus.TERMINATED),
    ).toHaveLength(2);
    expect(await agentsColumn(sidecar, 'pool-default')).toBe('2');

    // And the restored membership drains: the config agent ends TERMINATED, on disk too.
    const drain = await cli(sidecar, ['pools', 'drain', 'pool-default', '--timeout', '0']);
    expect(drain.code, drain.err).toBe(0);
    expect(fabric.lifecycle.agentInfo(local).status).toBe(AgentStatus.TERMINATED);
    await closeSidecar(sidecar);
    sidecar = await startTestSidecar({ ...config, pools: [], agents: [] });
    expect(sidecar.fabric!.lifecycle.agentInfo(local).status).toBe(AgentStatus.TERMINATED);
    expect(sidecar.fabric!.pools.peek('pool-default')).toBeUndefined();
  }, 180_000);
});

/**
 * An operator lowers the config's top-level `budget` (every spawned agent's) and restarts the
 * sidecar on the same state file: the new limit reaches the start-up agents, the agents of a
 * config pool kept from the earlier start, and the agents that pool spawns afterwards. Real
 * sidecar, real SQLite state file.
 */
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  agentId,
  closeSidecar,
  DEFAULT_ALLOW,
  startTestSidecar,
  tempDir,
} from '../fixtures/gateway/harness.js';

let sidecar: Sidecar | undefined;
afterEach(async () => {
  await closeSidecar(sidecar);
  sidecar = undefined;
});

const config = (statePath: string, maxTokensPerHour: number) => ({
  policies: [DEFAULT_ALLOW],
  state: { path: statePath },
  budget: { maxTokensPerHour },
  agents: [{ name: 'solo' }],
  pools: [{ id: 'workers', minAgents: 1, maxAgents: 3 }],
});

describe('a lowered top-level budget after a restart', () => {
  it('applies to start-up agents, to the pool agents kept, and to those the pool spawns later', async () => {
    const statePath = join(tempDir('config-budget-restart'), 'state.db');
    sidecar = await startTestSidecar(config(statePath, 100_000));
    const poolAgents = () =>
      sidecar!.fabric!.lifecycle.listAgents({ poolId: 'workers' }).map((a) => a.id);
    const [kept] = poolAgents();
    expect(sidecar.fabric!.budgets.getStatus(kept!).tokensLimit).toBe(100_000);
    await closeSidecar(sidecar);

    sidecar = await startTestSidecar(config(statePath, 100));
    const budgets = sidecar.fabric!.budgets;
    expect(budgets.getStatus(agentId(sidecar, 'solo')).tokensLimit).toBe(100);
    expect(poolAgents()).toEqual([kept]);
    expect(budgets.getStatus(kept!).tokensLimit).toBe(100);
    await sidecar.fabric!.scalePool('workers', 2);
    const added = poolAgents().filter((id) => id !== kept);
    expect(added).toHaveLength(1);
    expect(budgets.getStatus(added[0]!).tokensLimit).toBe(100);
  });
});

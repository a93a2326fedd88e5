/**
 * Usage an agent reports itself (`fabric__record_usage`) against the budgets it shares. Recorded
 * usage is counted even past a limit, and it was charged in full to the agent's pool and the
 * fabric too: an agent whose own limit was 1,000 tokens an hour reported 10^9 and the fabric
 * budget refused every other agent's calls for the hour (checked on a real sidecar). Now the
 * shared scopes are charged only the part that fit under the agent's own limits, so an agent's
 * own limit bounds what it takes of what others need; an agent without a limit of its own is
 * trusted as before. Real sidecar, real server-everything, the official SDK client.
 */
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { afterEach, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  agentToken,
  closeSidecar,
  DEFAULT_ALLOW,
  EVERYTHING_BIN,
  httpClient,
  startTestSidecar,
  text,
} from '../fixtures/gateway/harness.js';

let sidecar: Sidecar | undefined;
const clients: Client[] = [];

afterEach(async () => {
  for (const c of clients.splice(0)) await c.close().catch(() => undefined);
  await closeSidecar(sidecar);
  sidecar = undefined;
});

async function client(name: string): Promise<Client> {
  const c = await httpClient(sidecar!.url!, agentToken(sidecar!, name));
  clients.push(c);
  return c;
}

const echo = (c: Client) => c.callTool({ name: 'ev__echo', arguments: { message: 'hi' } });
const record = (c: Client, tokens: number, cost = 0) =>
  c.callTool({ name: 'fabric__record_usage', arguments: { tokens, cost } });

describe('usage an agent records itself', () => {
  it('takes of the pool and fabric budgets at most what its own limit leaves', async () => {
    sidecar = await startTestSidecar({
      upstreams: {
        ev: { command: process.execPath, args: [EVERYTHING_BIN, 'stdio'], stderr: 'ignore' },
      },
      policies: [DEFAULT_ALLOW],
      pools: [{ id: 'crew' }],
      agents: [
        { name: 'liar', poolId: 'crew', budget: { maxTokensPerHour: 1000, maxCostPerDay: 1 } },
        { name: 'peer', poolId: 'crew' },
        { name: 'trusted' },
      ],
    } as never);
    const budgets = sidecar.fabric!.budgets;
    budgets.setFabricBudget({ maxTokensPerHour: 1_000_000, maxCostPerDay: 100 });
    budgets.setPoolBudget('crew', { maxTokensPerHour: 1_000_000, maxCostPerDay: 100 });
    const liar = await client('liar');
    const peer = await client('peer');
    expect((await echo(peer)).isError).toBeFalsy();
    const before = budgets.getFabricStatus();

    const r = await record(liar, 1_000_000_000, 1_000_000);
    expect(r.isError, text(r)).toBeFalsy();
    // The liar's own scope counts all of it: its own calls are refused.
    const own = await echo(liar);
    expect(text(own)).toContain('FABRIC_ERR_BUDGET_EXCEEDED');
    const liarId = sidecar.fabric!.lifecycle.listAgents().find((a) => a.name === 'liar')!.id;
    expect(budgets.getStatus(liarId).tokensUsed).toBeGreaterThanOrEqual(1_000_000_000);
    // The shared scopes got at most its limit; its peer and the other agent go on.
    for (const status of [budgets.getFabricStatus(), budgets.getPoolStatus('crew')]) {
      expect(status.tokensUsed).toBeLessThanOrEqual(before.tokensUsed + 1000);
      expect(status.costUsed).toBeLessThanOrEqual(before.costUsed + 1);
    }
    expect((await echo(peer)).isError, 'peer').toBeFalsy();
    expect((await echo(await client('trusted'))).isError, 'trusted').toBeFalsy();
    // Once its limit is used, more reports add nothing to them.
    const used = budgets.getFabricStatus().tokensUsed;
    await record(liar, 5000);
    expect(budgets.getFabricStatus().tokensUsed).toBe(used);
  });

  it('of an agent without a limit of its own is charged to the shared scopes in full', async () => {
    sidecar = await startTestSidecar({
      upstreams: {
        ev: { command: process.execPath, args: [EVERYTHING_BIN, 'stdio'], stderr: 'ignore' },
      },
      policies: [DEFAULT_ALLOW],
      agents: [{ name: 'trusted' }],
    } as never);
    const budgets = sidecar.fabric!.budgets;
    budgets.setFabricBudget({ maxTokensPerHour: 1_000_000 });
    await record(await client('trusted'), 2_000_000);
    expect(budgets.getFabricStatus().tokensUsed).toBeGreaterThanOrEqual(2_000_000);
  });
});

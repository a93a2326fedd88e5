/**
 * A budget scope with nothing in flight reads `reserved` exactly 0, after many concurrent calls
 * with fractional tool costs (a real `agent-fabric serve` with a SQLite state file, a real
 * server-everything upstream, the official SDK client over Streamable HTTP, the Operator API).
 *
 * Before, each call's estimate was added to the scope's reserved sum and taken back when it
 * settled; with fractional costs settling in another order than they were reserved, the float
 * sum drifted off 0 (e.g. -3.6e-16) and `GetBudgetStatus` answered that as the cost reserved of
 * an idle scope. Now the last reservation given back leaves the sums at exactly 0.
 */
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { ADMIN_TOKEN, EVERYTHING_BIN, text } from '../fixtures/gateway/harness.js';
import { costOnDisk } from '../fixtures/state/budget-rows.js';
import { agentIdOf, ENV, oneWorkerDir } from '../fixtures/state/one-worker.js';
import { adminApi, cleanUp, connect, serve, stop, type Running } from '../fixtures/state/serve.js';

afterAll(cleanUp);

interface Usage {
  used?: number;
  reserved?: number;
}

/** Cost and tokens of a scope's `GetBudgetStatus` (a field left out of the JSON is 0). */
async function status(
  r: Running,
  scope: Record<string, unknown>,
): Promise<{ cost: Required<Usage>; tokensReserved: number }> {
  const body = (await adminApi(r, ADMIN_TOKEN, 'BudgetService/GetBudgetStatus', { scope })) as {
    status: { cost?: Usage; tokens?: Usage };
  };
  return {
    cost: { used: body.status.cost?.used ?? 0, reserved: body.status.cost?.reserved ?? 0 },
    tokensReserved: body.status.tokens?.reserved ?? 0,
  };
}

it('a scope with no call in flight reads cost reserved exactly 0 after many fractional-cost calls', async () => {
  const costs: Record<string, number> = { 'ev__get-sum': 0.1, ev__echo: 0.7, 'ev__get-env': 0.3 };
  const dir = await oneWorkerDir('budget-reserved-exact', {
    upstreams: {
      ev: { command: process.execPath, args: [EVERYTHING_BIN, 'stdio'], stderr: 'ignore' },
    },
    agents: [{ name: 'worker', budget: { maxCostPerDay: 1_000 } }],
    toolCosts: costs,
  });
  const r = await serve(dir, ENV);
  const agent = { agentId: agentIdOf(r) };
  const clients = await Promise.all([1, 2, 3].map(() => connect(r.url, r.token)));
  const args: Record<string, Record<string, unknown>> = {
    'ev__get-sum': { a: 1, b: 2 },
    ev__echo: { message: 'hi' },
    'ev__get-env': {},
  };
  const names = Object.keys(costs);
  let calls = 0;
  let expected = 0;
  for (let round = 0; round < 10; round++) {
    const results = await Promise.all(
      clients.flatMap((c, i) =>
        names.flatMap((name, j) =>
          Array.from({ length: 2 + ((round + i + j) % 3) }, () =>
            c.callTool({ name, arguments: args[name] }),
          ),
        ),
      ),
    );
    for (const res of results) expect(res.isError, text(res)).toBeFalsy();
    calls += results.length;
    const afterRound = await status(r, agent);
    expect(afterRound.cost.reserved).toBe(0);
    expected = afterRound.cost.used;
  }
  expect(calls).toBeGreaterThan(200);
  for (const scope of [agent, { fabric: true }]) {
    const s = await status(r, scope);
    expect(s.cost.reserved).toBe(0);
    expect(s.tokensReserved).toBe(0);
    expect(s.cost.used).toBeCloseTo(expected, 9);
  }
  expect(await stop(r, 'SIGTERM')).toBe(0);
  const statePath = join(dir, '.fabric', 'state.db');
  expect(costOnDisk(statePath, `agent:${agent.agentId}`)).toBeCloseTo(expected, 9);
});

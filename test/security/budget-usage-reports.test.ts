/**
 * Usage an agent reports itself (`fabric__record_usage`), as a hostile agent sends it: amounts so
 * large their sum overflows (two reports of 1e308 used to make the fabric's cost `Infinity`; the
 * state file then held `null` and no agent could call a tool after a restart), and reports past
 * an exhausted budget (they used to be refused as tool calls, and the usage was lost; now
 * counted on the agent, and on shared scopes up to its own limit). Real
 * sidecar, real server-everything upstream, real SQLite state file; what a restarted sidecar
 * reads back is checked.
 */
import { join } from 'node:path';
import Database from 'better-sqlite3';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import { afterEach, describe, expect, it } from 'vitest';
import { MAX_USAGE_AMOUNT } from '../../src/budget/budget-manager.js';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  agentId,
  agentToken,
  closeSidecar,
  DEFAULT_ALLOW,
  EVERYTHING_BIN,
  httpClient,
  startTestSidecar,
  tempDir,
  text,
} from '../fixtures/gateway/harness.js';

let sidecar: Sidecar | undefined;
const clients: Client[] = [];

afterEach(async () => {
  for (const c of clients.splice(0)) await c.close().catch(() => undefined);
  await closeSidecar(sidecar);
  sidecar = undefined;
});

async function start(statePath: string): Promise<Sidecar> {
  sidecar = await startTestSidecar({
    upstreams: {
      ev: { command: process.execPath, args: [EVERYTHING_BIN, 'stdio'], stderr: 'ignore' },
    },
    policies: [DEFAULT_ALLOW],
    state: { path: statePath },
    agents: [
      { name: 'attacker' },
      { name: 'victim', budget: { maxCostPerDay: 10 } },
      { name: 'tok', budget: { maxTokensPerHour: 100 } },
      { name: 'spender', budget: { maxCostPerDay: 1 } },
    ],
    toolCosts: { ev__echo: 0.01 },
  });
  return sidecar;
}

async function client(s: Sidecar, name: string): Promise<Client> {
  const c = await httpClient(s.url!, agentToken(s, name));
  clients.push(c);
  return c;
}

const record = (c: Client, tokens: number, cost: number): Promise<CallToolResult> =>
  c.callTool({
    name: 'fabric__record_usage',
    arguments: { tokens, cost },
  }) as Promise<CallToolResult>;

/** The fabric scope's usage windows as stored. */
function storedFabricWindows(statePath: string): unknown {
  const db = new Database(statePath, { readonly: true });
  try {
    const row = db.prepare("SELECT data FROM budgets WHERE scope = 'fabric'").get() as {
      data: string;
    };
    const data = JSON.parse(row.data) as { tokens: unknown; cost: unknown };
    return [data.tokens, data.cost];
  } finally {
    db.close();
  }
}

describe('huge usage reports', () => {
  it('are refused above 1e15, keep every count finite, and a restarted sidecar serves everyone', async () => {
    const statePath = join(tempDir('usage-huge'), 'state.db');
    const s = await start(statePath);
    const attacker = await client(s, 'attacker');
    for (const cost of [1e308, Number.MAX_VALUE, MAX_USAGE_AMOUNT * 2]) {
      const r = await record(attacker, 0, cost);
      expect(r.isError, `${cost}: ${text(r)}`).toBe(true);
    }
    const tokens = await record(attacker, Number.MAX_SAFE_INTEGER, 0);
    expect(tokens.isError).toBe(true);
    const fabricBefore = s.fabric!.budgets.getFabricStatus().costUsed;
    expect(fabricBefore).toBe(0);
    // The most one report may carry is counted, twice over.
    for (let i = 0; i < 2; i++) {
      const ok = await record(attacker, 0, MAX_USAGE_AMOUNT);
      expect(ok.isError, text(ok)).toBeFalsy();
    }
    expect(s.fabric!.budgets.getFabricStatus().costUsed).toBe(2 * MAX_USAGE_AMOUNT);
    expect(s.fabric!.budgets.getStatus(agentId(s, 'attacker')).costUsed).toBe(2e15);
    await closeSidecar(s);
    sidecar = undefined;
    clients.length = 0;
    // Every count finite: none written as `null`.
    expect(JSON.stringify(storedFabricWindows(statePath))).not.toContain('null');

    const again = await start(statePath);
    const victim = await client(again, 'victim');
    const r = (await victim.callTool({
      name: 'ev__echo',
      arguments: { message: 'hi' },
    })) as CallToolResult;
    expect(r.isError, text(r)).toBeFalsy();
    expect(again.fabric!.budgets.getFabricStatus().costUsed).toBeGreaterThanOrEqual(2e15);
  });

  it('a state file an overflow already broke (a bucket stored as null) is read back, not refused', async () => {
    const statePath = join(tempDir('usage-null-bucket'), 'state.db');
    const s = await start(statePath);
    await record(await client(s, 'attacker'), 0, 5);
    await closeSidecar(s);
    sidecar = undefined;
    clients.length = 0;
    // What the old code wrote for an infinite count: null in the cost window.
    const db = new Database(statePath);
    const row = db.prepare("SELECT data FROM budgets WHERE scope = 'fabric'").get() as {
      data: string;
    };
    const data = JSON.parse(row.data) as { cost: { buckets?: unknown[]; used?: unknown } };
    if (data.cost.buckets) data.cost.buckets[data.cost.buckets.length - 1] = null;
    else data.cost.used = null;
    db.prepare("UPDATE budgets SET data = ? WHERE scope = 'fabric'").run(JSON.stringify(data));
    db.close();

    const again = await start(statePath);
    expect(again.fabric!.budgets.getFabricStatus().costUsed).toBe(Number.MAX_VALUE);
    // No fabric-wide limit is set: the count is huge, and calls go on.
    const victim = await client(again, 'victim');
    const r = (await victim.callTool({
      name: 'ev__echo',
      arguments: { message: 'hi' },
    })) as CallToolResult;
    expect(r.isError, text(r)).toBeFalsy();
  });
});

describe('usage reports past an exhausted budget', () => {
  it('are counted on the agent, and on its scopes and the fabric up to its own limit, over MCP', async () => {
    const s = await start(join(tempDir('usage-exhausted'), 'state.db'));
    const tok = await client(s, 'tok');
    const fabricBefore = s.fabric!.budgets.getFabricStatus().tokensUsed;
    // Past its limit (100): counted in full on the agent, on the fabric up to what it had left,
    // and the agent is told so.
    const first = await record(tok, 500, 0);
    expect(first.isError).toBe(true);
    expect(text(first)).toContain('FABRIC_ERR_BUDGET_EXCEEDED');
    expect(text(first)).toContain('do not report it again');
    expect(s.fabric!.budgets.getFabricStatus().tokensUsed).toBe(fabricBefore + 100);
    const second = await record(tok, 700, 0);
    expect(second.isError).toBe(true);
    // The tool's own answer is a few tokens, not charged past the limit.
    expect(s.fabric!.budgets.getStatus(agentId(s, 'tok')).tokensUsed).toBe(1200);
    expect(s.fabric!.budgets.getFabricStatus().tokensUsed).toBe(fabricBefore + 100);

    const spender = await client(s, 'spender');
    const within = await record(spender, 0, 0.5);
    expect(within.isError, text(within)).toBeFalsy();
    expect((await record(spender, 0, 3)).isError).toBe(true);
    expect(s.fabric!.budgets.getStatus(agentId(s, 'spender')).costUsed).toBe(3.5);
    expect(s.fabric!.budgets.getFabricStatus().costUsed).toBe(1);
    // Other tool calls of the exhausted agent are still refused.
    const refused = (await spender.callTool({
      name: 'ev__echo',
      arguments: { message: 'hi' },
    })) as CallToolResult;
    expect(text(refused)).toContain('FABRIC_ERR_BUDGET_EXCEEDED');
  });
});

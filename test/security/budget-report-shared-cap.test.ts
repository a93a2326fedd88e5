/**
 * A hostile agent's usage reports against the budgets it shares with others: one
 * `fabric__record_usage` (or `RecordUsage` over gRPC) of `cost: 1e15` used to count in full on
 * the fabric's scope and exhaust the fabric's daily budget for every agent. A report now counts
 * in full on the reporting agent's own budget, and on its pool's and the fabric's at most what
 * its own limit had left; the agent is told (`FABRIC_ERR_BUDGET_EXCEEDED`, "do not report it
 * again") and the audit log has the line. Real sidecar, real server-everything upstream, the
 * official MCP SDK client, a grpc-js client, a real SQLite state file read back after a restart.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { create } from '@bufbuild/protobuf';
import { status, type Client as GrpcClient } from '@grpc/grpc-js';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import { afterEach, describe, expect, it } from 'vitest';
import { RecordUsageRequestSchema } from '../../src/gen/fabric/v1/agent_pb.js';
import { AGENT_SERVICE_DEFINITION } from '../../src/rpc/agent-service.js';
import type { Sidecar } from '../../src/server/sidecar.js';
import { failure, grpcClient, unary } from '../fixtures/grpc-client.js';
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
  type AuditLine,
} from '../fixtures/gateway/harness.js';

let sidecar: Sidecar | undefined;
const clients: Client[] = [];
let grpc: GrpcClient | undefined;

afterEach(async () => {
  grpc?.close();
  grpc = undefined;
  for (const c of clients.splice(0)) await c.close().catch(() => undefined);
  await closeSidecar(sidecar);
  sidecar = undefined;
});

async function start(dir: string): Promise<Sidecar> {
  sidecar = await startTestSidecar({
    upstreams: {
      ev: { command: process.execPath, args: [EVERYTHING_BIN, 'stdio'], stderr: 'ignore' },
    },
    policies: [DEFAULT_ALLOW],
    // No lease: the stored usage is the exact count.
    state: { path: join(dir, 'state.db'), budgetLeasePercent: 0 },
    audit: { path: join(dir, 'audit.jsonl'), flushIntervalMs: 0 },
    grpc: { host: '127.0.0.1', port: 0 },
    agents: [
      { name: 'attacker', budget: { maxCostPerDay: 1, maxTokensPerHour: 1000 } },
      { name: 'via-grpc', budget: { maxCostPerDay: 2 } },
      { name: 'victim', budget: { maxCostPerDay: 5 } },
      { name: 'racer', budget: { maxCostPerDay: 1 } },
    ],
    toolCosts: { ev__echo: 0.25 },
  });
  sidecar.fabric!.budgets.setFabricBudget({ maxCostPerDay: 10, maxTokensPerHour: 10_000 });
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

describe('usage reports charge shared budgets at most what the agent itself is allowed', () => {
  it('a report of cost 1e15 over MCP and gRPC leaves the fabric budget to the others', async () => {
    const dir = tempDir('report-cap');
    const s = await start(dir);
    const budgets = s.fabric!.budgets;
    const attacker = await client(s, 'attacker');

    const huge = await record(attacker, 0, 1e15);
    expect(huge.isError).toBe(true);
    expect(text(huge)).toContain('FABRIC_ERR_BUDGET_EXCEEDED');
    expect(text(huge)).toContain('do not report it again');
    // Counted in full on the attacker's own budget, on the fabric only up to its limit (1).
    expect(budgets.getStatus(agentId(s, 'attacker')).costUsed).toBe(1e15);
    expect(budgets.getFabricStatus().costUsed).toBe(1);
    // Its next reports, in the same window, charge the fabric nothing more.
    expect((await record(attacker, 0, 5)).isError).toBe(true);
    expect((await record(attacker, 50_000, 0)).isError).toBe(true);
    expect(budgets.getFabricStatus()).toMatchObject({ costUsed: 1, tokensUsed: 1000 });

    // Over gRPC, the same: RESOURCE_EXHAUSTED saying it is counted; the fabric gets 2 (its limit).
    grpc = grpcClient(AGENT_SERVICE_DEFINITION, s.grpcAddress!);
    const e = await failure(
      unary(
        grpc,
        'recordUsage',
        create(RecordUsageRequestSchema, { tokens: 0n, cost: 1e15 }),
        agentToken(s, 'via-grpc'),
      ),
    );
    expect(e.code).toBe(status.RESOURCE_EXHAUSTED);
    expect(e.details).toContain('do not report it again');
    expect(budgets.getStatus(agentId(s, 'via-grpc')).costUsed).toBe(1e15);
    expect(budgets.getFabricStatus().costUsed).toBe(3);

    // The victim's budget and the fabric's still have room: its calls and reports go on, and an
    // honest report within its limit counts in full everywhere.
    const victim = await client(s, 'victim');
    const echo = (await victim.callTool({
      name: 'ev__echo',
      arguments: { message: 'hi' },
    })) as CallToolResult;
    expect(echo.isError, text(echo)).toBeFalsy();
    const honest = await record(victim, 100, 0.5);
    expect(honest.isError, text(honest)).toBeFalsy();
    expect(budgets.getStatus(agentId(s, 'victim'))).toMatchObject({ costUsed: 0.75 });
    expect(budgets.getFabricStatus().costUsed).toBeCloseTo(3.75, 9);

    // Six sessions of one agent racing reports of 0.4 against its limit of 1: two fit, a third
    // gets the 0.2 left on the fabric, the rest nothing, whatever the interleaving.
    const racers = await Promise.all(Array.from({ length: 6 }, () => client(s, 'racer')));
    const raced = await Promise.all(racers.map((c) => record(c, 0, 0.4)));
    expect(raced.filter((r) => r.isError !== true)).toHaveLength(2);
    expect(budgets.getStatus(agentId(s, 'racer')).costUsed).toBeCloseTo(2.4, 9);
    const fabric = budgets.getFabricStatus();
    expect(fabric.costUsed).toBeCloseTo(4.75, 9);
    expect(fabric.exhausted).toBe(false);

    // What the state file holds, read back by a restarted sidecar: the same counts.
    await closeSidecar(s);
    sidecar = undefined;
    clients.length = 0;
    grpc?.close();
    grpc = undefined;
    const lines = readFileSync(join(dir, 'audit.jsonl'), 'utf8')
      .split('\n')
      .filter((l) => l !== '')
      .map((l) => JSON.parse(l) as AuditLine);
    const reports = lines.filter(
      (l) => l.tool === 'fabric__record_usage' && l.agent === agentId(s, 'attacker'),
    );
    expect(reports).toHaveLength(3);
    for (const l of reports) expect(l.code).toBe('FABRIC_ERR_BUDGET_EXCEEDED');

    const again = await start(dir);
    const after = again.fabric!.budgets.getFabricStatus();
    expect(after.costUsed).toBeCloseTo(4.75, 9);
    expect(after.tokensUsed).toBeLessThan(2000);
    expect(again.fabric!.budgets.getStatus(agentId(again, 'attacker')).costUsed).toBe(1e15 + 5);
    const victimAgain = await client(again, 'victim');
    const r = (await victimAgain.callTool({
      name: 'ev__echo',
      arguments: { message: 'again' },
    })) as CallToolResult;
    expect(r.isError, text(r)).toBeFalsy();
  });
});

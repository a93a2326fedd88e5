/**
 * Token budgets against a hostile agent with one token: hundreds of parallel calls, estimates
 * gamed on small results, other agents' traffic, cancellation while waiting. Real sidecar, real
 * AgentFabric, real server-filesystem reading real 40 KB files, real server-everything; usage is
 * checked in the BudgetManager and the audit log, not only in the gateway's answers.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { McpError, type CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  agentId,
  api,
  agentToken,
  closeSidecar,
  DEFAULT_ALLOW,
  EVERYTHING_BIN,
  FILESYSTEM_BIN,
  FILESYSTEM_KEEP_NAMES,
  httpClient,
  startTestSidecar,
  tempDir,
  text,
  until,
} from '../fixtures/gateway/harness.js';

const LIMIT = 20_000;
const PARALLEL = 220;
/** The file of the attack: its read (text and structured copy) alone exceeds the limit. */
const BIG_BYTES = 40 * 1024;
/** A read of ~8.5k tokens (server-filesystem sends the text twice): two fit the limit. */
const MID_BYTES = 16 * 1024;

interface AuditLine {
  agent: string;
  tool: string;
  outcome: string;
  code?: string;
  tokens?: number;
  cost?: number;
}

/**
 * What an answer was: delivered, or a budget refusal, which must say when to retry — except a
 * withheld result larger than the whole limit, which no retry can fit (the text says so).
 */
function classify(r: CallToolResult): 'ok' | 'refused' | 'withheld' {
  if (!r.isError) return 'ok';
  const meta = r._meta?.['agent-fabric/error'] as
    | {
        code?: string;
        retryAt?: string;
        details?: { withheld?: boolean; requested?: number; max?: number };
      }
    | undefined;
  expect(meta?.code, text(r)).toBe('FABRIC_ERR_BUDGET_EXCEEDED');
  const d = meta!.details!;
  if (d.withheld === true && d.requested! > d.max!) {
    expect(meta!.retryAt).toBeUndefined();
    expect(text(r)).toContain('Do not retry');
  } else {
    expect(Date.parse(meta?.retryAt ?? ''), text(r)).toBeGreaterThan(Date.now() - 1000);
  }
  return d.withheld === true ? 'withheld' : 'refused';
}

function count<T>(items: readonly T[], value: T): number {
  return items.filter((i) => i === value).length;
}

describe('token budgets hold under concurrency (server-filesystem, real fabric)', () => {
  const sandbox = tempDir('budget-conc');
  const auditPath = join(tempDir('budget-conc-audit'), 'audit.log');
  const big = join(sandbox, 'big.txt');
  const mid = join(sandbox, 'mid.txt');
  const small = join(sandbox, 'small.txt');
  let sidecar: Sidecar;
  const clients: Client[] = [];

  const client = async (name: string): Promise<Client> => {
    const c = await httpClient(sidecar.url!, agentToken(sidecar, name));
    clients.push(c);
    return c;
  };
  const status = (name: string) => sidecar.fabric!.budgets.getStatus(agentId(sidecar, name));
  const read = (c: Client, path: string): Promise<CallToolResult> =>
    c.callTool({ name: 'fs__read_text_file', arguments: { path } }) as Promise<CallToolResult>;
  const audit = async (name: string, tool: string): Promise<AuditLine[]> => {
    const id = agentId(sidecar, name);
    const lines = (): AuditLine[] =>
      readFileSync(auditPath, 'utf8')
        .trim()
        .split('\n')
        .filter(Boolean)
        .map((l) => JSON.parse(l) as AuditLine)
        .filter((l) => l.agent === id && l.tool === tool);
    return lines();
  };

  beforeAll(async () => {
    // Varied lines, so nothing in the path can compress the file away.
    let body = '';
    for (let i = 0; body.length < BIG_BYTES; i++) body += `line ${i}: ${'x'.repeat(i % 70)}\n`;
    writeFileSync(big, body.slice(0, BIG_BYTES));
    writeFileSync(mid, body.slice(0, MID_BYTES));
    writeFileSync(small, 'y');
    const budget = { maxTokensPerHour: LIMIT };
    sidecar = await startTestSidecar({
      upstreams: {
        fs: {
          command: process.execPath,
          args: [FILESYSTEM_BIN, sandbox],
          stderr: 'ignore',
          // Its reads share the path lock, so they run in parallel (see path-lock.ts).
          paths: { keepNames: [...FILESYSTEM_KEEP_NAMES] },
        },
        ev: { command: process.execPath, args: [EVERYTHING_BIN, 'stdio'], stderr: 'ignore' },
      },
      policies: [DEFAULT_ALLOW],
      agents: [
        { name: 'issue', budget },
        { name: 'flood', budget },
        { name: 'gamer', budget },
        { name: 'hog', budget },
        // Smaller than one large result: a shared estimate used to refuse its first 1-byte read.
        { name: 'quiet', budget: { maxTokensPerHour: 5000 } },
        { name: 'payer', budget: { maxCostPerDay: 1 } },
        { name: 'canceller', budget },
        { name: 'reader', budget: { maxTokensPerHour: 50 } },
        { name: 'reporter', budget: { maxTokensPerHour: 100 } },
        { name: 'leaver', budget },
      ],
      toolCosts: { fs__list_allowed_directories: 0.1 },
      // The long operation reserves the whole budget while it runs.
      tokenEstimates: { 'ev__trigger-long-running-operation': LIMIT },
      audit: { path: auditPath, flushIntervalMs: 0 },
      // Generous, so a slow machine's long operation still ends inside a wait.
      gateway: { budgetWaitSeconds: 20 },
      // A terminated agent is forgotten at once (and what the gateway learned about it).
      fabric: { terminatedAgentRetention: 0 },
    });
  });

  afterAll(async () => {
    await Promise.all(clients.map((c) => c.close()));
    await closeSidecar(sidecar);
  });

  it(`the issue's attack: ${PARALLEL} parallel 40 KB reads under ${LIMIT} tokens/hour never deliver more than the limit, and every call is answered`, async () => {
    const c = await client('issue');
    const answers = await Promise.all(Array.from({ length: PARALLEL }, () => read(c, big)));
    const kinds = answers.map(classify); // was: all 220 passed, 4.6 M tokens charged
    const s = status('issue');
    expect(s.tokensUsed).toBeLessThanOrEqual(LIMIT);
    expect(s.tokensReserved).toBe(0);
    expect(sidecar.fabric!.budgets.waiting).toBe(0);
    // One such read is larger than the whole budget: none can be delivered.
    expect(count(kinds, 'ok')).toBe(0);
    await until(async () => (await audit('issue', 'fs__read_text_file')).length === PARALLEL);
    const lines = await audit('issue', 'fs__read_text_file');
    expect(lines.filter((l) => l.outcome === 'ok')).toHaveLength(0);
    expect(s.tokensUsed).toBe(0);
  });

  it(`${PARALLEL} parallel 16 KB reads: the first result teaches the estimate, the rest are covered by it`, async () => {
    const c = await client('flood');
    const answers = await Promise.all(Array.from({ length: PARALLEL }, () => read(c, mid)));
    const kinds = answers.map(classify);
    const s = status('flood');
    expect(s.tokensUsed).toBeGreaterThan(0);
    expect(s.tokensUsed).toBeLessThanOrEqual(LIMIT);
    expect(s.tokensReserved).toBe(0);
    expect(count(kinds, 'ok')).toBeGreaterThanOrEqual(1);
    // Every delivered result is the whole file; what was delivered is what was charged.
    for (const r of answers.filter((a) => !a.isError)) expect(text(r)).toHaveLength(MID_BYTES);
    await until(async () => (await audit('flood', 'fs__read_text_file')).length === PARALLEL);
    const lines = await audit('flood', 'fs__read_text_file');
    const delivered = lines.filter((l) => l.outcome === 'ok');
    expect(delivered).toHaveLength(count(kinds, 'ok'));
    expect(delivered.reduce((sum, l) => sum + (l.tokens ?? 0), 0)).toBe(s.tokensUsed);
    // The first result taught the estimate before the rest went out: few reads reached the
    // upstream at all (single flight, then in-flight cover), not hundreds.
    const upstreamReads = lines.filter((l) => l.outcome === 'ok' || l.outcome === 'withheld');
    expect(upstreamReads.length).toBeLessThan(20);
  });

  it('learn a tiny estimate on small files, then read a big one in parallel: the overflow is withheld, never delivered', async () => {
    const c = await client('gamer');
    for (let i = 0; i < 5; i++) expect((await read(c, small)).isError).toBeFalsy();
    const before = status('gamer').tokensUsed;
    expect(before).toBeLessThan(100);
    const answers = await Promise.all(Array.from({ length: PARALLEL }, () => read(c, mid)));
    const kinds = answers.map(classify);
    const s = status('gamer');
    expect(s.tokensUsed).toBeLessThanOrEqual(LIMIT);
    expect(s.tokensReserved).toBe(0);
    // The gamed estimate let many reads out; their results did not fit and were withheld.
    expect(count(kinds, 'withheld')).toBeGreaterThan(0);
    expect(count(kinds, 'ok')).toBeLessThanOrEqual(2);
    const withheld = answers.find((a) => classify(a) === 'withheld')!;
    expect(text(withheld)).toContain('the call ran, but its result');
    expect(text(withheld)).toContain('was withheld');
    expect(text(withheld)).not.toContain('line 1:');
    const meta = withheld._meta?.['agent-fabric/error'] as { details: Record<string, unknown> };
    expect(meta.details).toMatchObject({ scope: `agent:${agentId(sidecar, 'gamer')}`, max: LIMIT });
    expect(meta.details.requested).toBeGreaterThan(MID_BYTES / 4);
    // The audit says so, with the tokens the result would have cost (none charged).
    await until(async () => (await audit('gamer', 'fs__read_text_file')).length === PARALLEL + 5);
    const lines = await audit('gamer', 'fs__read_text_file');
    const w = lines.filter((l) => l.outcome === 'withheld');
    expect(w).toHaveLength(count(kinds, 'withheld'));
    expect(w.every((l) => l.code === 'FABRIC_ERR_BUDGET_EXCEEDED')).toBe(true);
    expect(w[0]!.tokens).toBeGreaterThan(MID_BYTES / 4);
    const charged = lines.filter((l) => l.outcome === 'ok').reduce((n, l) => n + l.tokens!, 0);
    expect(charged).toBe(s.tokensUsed);
    // Now the estimate is learned: the next big read is refused up front, not sent upstream.
    const again = await read(c, mid);
    expect(classify(again)).toBe('refused');
  });

  it("one agent's large reads never refuse another agent's small read", async () => {
    const hog = await client('hog');
    const quiet = await client('quiet');
    const hogReads = Promise.all(Array.from({ length: 50 }, () => read(hog, mid)));
    const mine = await read(quiet, small);
    expect(mine.isError, text(mine)).toBeFalsy();
    expect(text(mine)).toBe('y');
    (await hogReads).forEach(classify);
    expect(status('hog').tokensUsed).toBeLessThanOrEqual(LIMIT);
    // And after the hog's results taught the gateway 10k-token reads, still not.
    const again = await read(quiet, small);
    expect(again.isError, text(again)).toBeFalsy();
    expect(status('quiet').tokensUsed).toBeLessThan(100);
  });

  it('the cost budget still holds: 200 parallel priced calls spend at most the limit', async () => {
    const c = await client('payer');
    const answers = (await Promise.all(
      Array.from({ length: 200 }, () =>
        c.callTool({ name: 'fs__list_allowed_directories', arguments: {} }),
      ),
    )) as CallToolResult[];
    const kinds = answers.map(classify);
    const s = status('payer');
    expect(s.costUsed).toBeLessThanOrEqual(1 + 1e-9);
    expect(s.costReserved).toBeCloseTo(0, 9);
    expect(count(kinds, 'ok')).toBe(10);
    expect(count(kinds, 'refused')).toBe(190);
  });

  it('a call cancelled while it waits for in-flight reservations leaves nothing reserved', async () => {
    const c = await client('canceller');
    const budgets = sidecar.fabric!.budgets;
    // Holds the whole budget (its estimate is the limit) while it runs.
    const long = c.callTool({
      name: 'ev__trigger-long-running-operation',
      arguments: { duration: 2, steps: 2 },
    }) as Promise<CallToolResult>;
    await until(() => status('canceller').tokensReserved === LIMIT);
    // Two calls wait for it: one will be cancelled by its client, one goes on.
    const patient = read(c, small);
    const ac = new AbortController();
    const impatient = c
      .callTool({ name: 'fs__get_file_info', arguments: { path: small } }, undefined, {
        signal: ac.signal,
      })
      .then(
        () => 'answered',
        () => 'cancelled',
      );
    await until(() => budgets.waiting === 2);
    expect(status('canceller').tokensReserved).toBe(LIMIT);
    ac.abort();
    expect(await impatient).toBe('cancelled');
    // The gateway heard the cancellation: the waiter is gone, nothing was reserved for it.
    await until(() => budgets.waiting === 1);
    expect(status('canceller').tokensReserved).toBe(LIMIT);
    expect((await long).isError).toBeFalsy();
    const r = await patient;
    expect(r.isError, text(r)).toBeFalsy();
    expect(text(r)).toBe('y');
    await until(() => status('canceller').tokensReserved === 0);
    expect(budgets.waiting).toBe(0);
    const lines = await audit('canceller', 'fs__get_file_info');
    expect(lines.map((l) => l.outcome)).toEqual(['cancelled']);
  });

  it('a resource read whose content does not fit is withheld as a JSON-RPC error, nothing charged', async () => {
    const c = await client('reader');
    const error = await c
      .readResource({ uri: 'demo://resource/static/document/architecture.md' })
      .then(
        () => undefined,
        (e: unknown) => e,
      );
    expect(error).toBeInstanceOf(McpError);
    const e = error as McpError;
    expect(e.message).toContain('was withheld');
    expect(e.data).toMatchObject({
      code: 'FABRIC_ERR_BUDGET_EXCEEDED',
      details: { withheld: true, max: 50 },
    });
    expect(status('reader')).toMatchObject({ tokensUsed: 0, tokensReserved: 0 });
  });

  it('self-reported usage is recorded past the limit and confirmed once; then nothing is delivered', async () => {
    const c = await client('reporter');
    const r = (await c.callTool({
      name: 'fabric__record_usage',
      arguments: { tokens: 500, cost: 0 },
    })) as CallToolResult;
    // The answer arrives (an agent that missed it would report twice), uncharged: past its limit,
    // the report is counted and the agent told so (its pool and the fabric got only the limit).
    expect(r.isError).toBe(true);
    expect(text(r)).toContain('FABRIC_ERR_BUDGET_EXCEEDED');
    expect(text(r)).toContain('do not report it again');
    expect(status('reporter')).toMatchObject({ tokensUsed: 500, tokensReserved: 0 });
    const after = await read(c, small);
    expect(classify(after)).toBe('refused');
    expect(status('reporter').tokensUsed).toBe(500);
  });

  it("forgets an agent's estimates when the fabric forgets the agent", async () => {
    const c = await client('leaver');
    const id = agentId(sidecar, 'leaver');
    expect((await read(c, small)).isError).toBeFalsy();
    const estimates = sidecar.gateway.tokenEstimates;
    const before = estimates.agentCount;
    const res = await api(sidecar, 'FabricService/TerminateAgent', {
      agentId: id,
      drainTimeout: '0s',
    });
    expect(res.status).toBe(200);
    await until(() => estimates.agentCount === before - 1);
  });
});

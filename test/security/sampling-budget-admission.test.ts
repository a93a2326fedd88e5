/**
 * Found in review: a `sampling/createMessage` an upstream sends during an agent's call was
 * relayed to the agent's client even when the agent's budget was already exhausted — the call
 * that caused it was admitted before, and sampling is recorded after it ran, never checked — so
 * an upstream (or a tool that samples in a loop within one call) ran the agent's model past its
 * limit. Now the gateway asks the budget before it sends the request (`admitSampling`): a scope
 * at or over a limit for the request's tokens refuses it, the upstream gets a JSON-RPC error
 * with `data.code` FABRIC_ERR_BUDGET_EXCEEDED, the agent's client is never asked, nothing is
 * charged for it, and the audit log gets a line.
 *
 * The exhausted-while-admitted state is made as it happens in use: two sessions of one agent
 * call a sampling tool of an `exclusive` upstream; the second call is admitted (its reservation
 * held) and waits for its turn while the first one's sampling runs; meanwhile the agent reports
 * usage (`fabric__record_usage`) that exhausts its budget; then the second call's upstream asks
 * for sampling.
 *
 * Real parts: a sidecar with @modelcontextprotocol/server-everything
 * (`trigger-sampling-request`) and the SDK-built callback fixture (which reports the error the
 * upstream got) over stdio, the official SDK client over Streamable HTTP whose sampling handlers
 * count their runs, the stored usage read through the operator API, and the audit file on disk.
 */
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { CreateMessageRequestSchema } from '@modelcontextprotocol/sdk/types.js';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  agentId,
  agentToken,
  api,
  auditLines,
  CALLBACK_SERVER,
  closeSidecar,
  DEFAULT_ALLOW,
  EVERYTHING_BIN,
  httpClient,
  startTestSidecar,
  tempDir,
  text,
  until,
} from '../fixtures/gateway/harness.js';

/** Characters of each sampling answer (2000 tokens). */
const ANSWER_CHARS = 8000;

/** The agent's stored usage and in-flight reservations (the operator API's view). */
async function budget(
  sidecar: Sidecar,
  agent: string,
): Promise<{ tokens: number; reserved: number; cost: number }> {
  const res = await api(sidecar, 'BudgetService/GetBudgetStatus', {
    scope: { agentId: agentId(sidecar, agent) },
  });
  expect(res.status).toBe(200);
  const { status } = (await res.json()) as {
    status: { tokens?: { used?: number; reserved?: number }; cost?: { used?: number } };
  };
  return {
    tokens: Number(status.tokens?.used ?? 0),
    reserved: Number(status.tokens?.reserved ?? 0),
    cost: Number(status.cost?.used ?? 0),
  };
}

/** A client of `agent` whose sampling handler counts its runs and waits for `gate` (if set). */
interface Sampler {
  client: Client;
  runs: number;
  gate?: Promise<void>;
}

describe('budget: sampling is not sent to an agent whose budget is exhausted', () => {
  const auditPath = join(tempDir('sampling-admission'), 'audit.jsonl');
  let sidecar: Sidecar;
  const clients: Client[] = [];

  const sampler = async (agent: string): Promise<Sampler> => {
    const client = await httpClient(sidecar.url!, agentToken(sidecar, agent), { sampling: {} });
    const s: Sampler = { client, runs: 0 };
    client.setRequestHandler(CreateMessageRequestSchema, async () => {
      s.runs += 1;
      await s.gate;
      return {
        role: 'assistant',
        model: 'test-model',
        content: { type: 'text', text: 'a'.repeat(ANSWER_CHARS) },
      };
    });
    clients.push(client);
    return s;
  };

  beforeAll(async () => {
    sidecar = await startTestSidecar({
      upstreams: {
        ev: {
          command: process.execPath,
          args: [EVERYTHING_BIN, 'stdio'],
          stderr: 'ignore',
          exclusive: true,
        },
        cb: {
          command: process.execPath,
          args: [CALLBACK_SERVER],
          stderr: 'ignore',
          exclusive: true,
        },
      },
      policies: [DEFAULT_ALLOW],
      agents: [
        { name: 'tokens', budget: { maxTokensPerHour: 50_000 } },
        { name: 'cost', budget: { maxCostPerDay: 1 } },
      ],
      audit: { path: auditPath, flushIntervalMs: 0 },
    });
    const probe = await sampler('tokens');
    await until(async () => {
      const names = (await probe.client.listTools()).tools.map((t) => t.name);
      return names.includes('ev__trigger-sampling-request') && names.includes('cb__sample');
    }, 30_000);
  }, 60_000);

  afterAll(async () => {
    for (const c of clients) await c.close().catch(() => undefined);
    await closeSidecar(sidecar);
  });

  /**
   * Runs `tool` from a first session of `agent` (its sampling held open), then from a second
   * one (admitted, waiting for its turn on the exclusive upstream), reports `usage` for the
   * agent meanwhile, then lets the first sampling answer. Returns both sessions and results.
   */
  async function exhaustedBetween(
    agent: string,
    tool: string,
    args: Record<string, unknown>,
    usage: { tokens: number; cost: number },
  ) {
    const first = await sampler(agent);
    const second = await sampler(agent);
    // A first call of the tool, so the next ones reserve a learned estimate at once (no single
    // flight behind the first result).
    await first.client.callTool({ name: tool, arguments: args });
    expect(first.runs).toBe(1);
    let open!: () => void;
    first.gate = new Promise((resolve) => (open = resolve));
    const a = first.client.callTool({ name: tool, arguments: args });
    await until(() => first.runs === 2);
    const alone = (await budget(sidecar, agent)).reserved;
    expect(alone).toBeGreaterThan(0);
    const b = second.client.callTool({ name: tool, arguments: args });
    // The second call is admitted (its reservation held) and waits for the upstream.
    await until(async () => (await budget(sidecar, agent)).reserved > alone);
    await first.client.callTool({ name: 'fabric__record_usage', arguments: usage });
    const before = await budget(sidecar, agent);
    open();
    const results = { a: await a, b: await b };
    return { first, second, before, results };
  }

  it('an exhausted token budget: the second session is never asked, and nothing more is charged for it', async () => {
    const { first, second, before } = await exhaustedBetween(
      'tokens',
      'ev__trigger-sampling-request',
      { prompt: 'hello' },
      { tokens: 50_000, cost: 0 },
    );
    expect(first.runs).toBe(2);
    expect(second.runs).toBe(0);
    // Charged since: the first session's held sampling (its request and 2000-token answer) and
    // nothing else — not a second sampling, nor a result (both calls' results are withheld).
    const charged = (await budget(sidecar, 'tokens')).tokens - before.tokens;
    expect(charged).toBeGreaterThanOrEqual(ANSWER_CHARS / 4);
    expect(charged).toBeLessThan((2 * ANSWER_CHARS) / 4);
    await until(
      () => auditLines(sidecar, auditPath, 'tokens', 'sampling/createMessage').length === 1,
    );
    expect(auditLines(sidecar, auditPath, 'tokens', 'sampling/createMessage')[0]).toMatchObject({
      upstream: 'ev',
      decision: 'none',
      outcome: 'denied',
      code: 'FABRIC_ERR_BUDGET_EXCEEDED',
    });
  });

  it('an exhausted cost budget: the upstream gets a JSON-RPC error naming FABRIC_ERR_BUDGET_EXCEEDED', async () => {
    const { first, second, results } = await exhaustedBetween(
      'cost',
      'cb__sample',
      {},
      { tokens: 0, cost: 1 },
    );
    expect(first.runs).toBe(2);
    expect(second.runs).toBe(0);
    // The result fits (no token limit) and tells what the upstream got instead of an answer (its
    // SDK prefixes the message with `MCP error <code>: ` on receipt).
    const got = text(results.b);
    expect(got).toMatch(
      /^error -32603: MCP error -32603: sampling\/createMessage of upstream cb was not sent to the agent's client: budget of agent:\S+ exceeded: cost 1\/1/,
    );
    expect(got).toContain('"code":"FABRIC_ERR_BUDGET_EXCEEDED"');
    expect(got).not.toContain('aaaa');
    expect((await budget(sidecar, 'cost')).cost).toBe(1);
    await until(
      () => auditLines(sidecar, auditPath, 'cost', 'sampling/createMessage').length === 1,
    );
    expect(auditLines(sidecar, auditPath, 'cost', 'sampling/createMessage')[0]).toMatchObject({
      upstream: 'cb',
      decision: 'none',
      outcome: 'denied',
      code: 'FABRIC_ERR_BUDGET_EXCEEDED',
    });
  });
});

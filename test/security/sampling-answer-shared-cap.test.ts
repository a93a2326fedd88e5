/**
 * Found in review of 2de8cc1 (a usage report counts on shared budgets at most what the agent's
 * own limit had left): the same door stayed open through sampling. The tokens of a
 * `sampling/createMessage` answer are measured from what the agent's own client answered, and
 * were settled in full on the agent's pool and the fabric — so an agent with a 1,000-token
 * limit whose client answers one sampling request with 400,000 characters charged the
 * fabric-wide budget 100,000 tokens, exhausting it for every agent. Now the answer's tokens
 * count in full on the agent and on shared scopes at most what the agent's limit had left, as
 * a report does.
 *
 * Real parts: a sidecar with @modelcontextprotocol/server-everything
 * (`trigger-sampling-request`) over stdio, the official SDK client over Streamable HTTP
 * answering the sampling request, the usage read through the operator API.
 */
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { CreateMessageRequestSchema } from '@modelcontextprotocol/sdk/types.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  agentId,
  agentToken,
  api,
  closeSidecar,
  DEFAULT_ALLOW,
  EVERYTHING_BIN,
  httpClient,
  startTestSidecar,
  until,
} from '../fixtures/gateway/harness.js';

const AGENT_LIMIT = 1_000;

async function used(sidecar: Sidecar, scope: Record<string, unknown>): Promise<number> {
  const res = await api(sidecar, 'BudgetService/GetBudgetStatus', { scope });
  expect(res.status).toBe(200);
  const { status } = (await res.json()) as { status: { tokens?: { used?: number } } };
  return Number(status.tokens?.used ?? 0);
}

describe('budget: a sampling answer charges shared budgets at most what the agent had left', () => {
  let sidecar: Sidecar;
  let client: Client;

  beforeAll(async () => {
    sidecar = await startTestSidecar({
      budget: { maxTokensPerHour: 10_000_000 },
      upstreams: {
        ev: { command: process.execPath, args: [EVERYTHING_BIN, 'stdio'], stderr: 'ignore' },
      },
      policies: [DEFAULT_ALLOW],
      agents: [{ name: 'greedy', budget: { maxTokensPerHour: AGENT_LIMIT } }],
    });
    client = await httpClient(sidecar.url!, agentToken(sidecar, 'greedy'), { sampling: {} });
    client.setRequestHandler(CreateMessageRequestSchema, async () => ({
      role: 'assistant',
      model: 'test-model',
      content: { type: 'text', text: 'a'.repeat(400_000) },
    }));
    await until(async () => {
      const names = (await client.listTools()).tools.map((t) => t.name);
      return names.includes('ev__trigger-sampling-request');
    }, 30_000);
  }, 60_000);

  afterAll(async () => {
    await client?.close().catch(() => undefined);
    await closeSidecar(sidecar);
  });

  it('counts the answer in full on the agent, and on the fabric only up to its limit', async () => {
    await client.callTool({ name: 'ev__trigger-sampling-request', arguments: { prompt: 'hi' } });
    const id = agentId(sidecar, 'greedy');
    // The sampling is charged once its answer came: wait for the agent's scope to show it.
    await until(async () => (await used(sidecar, { agentId: id })) > AGENT_LIMIT);
    const agent = await used(sidecar, { agentId: id });
    expect(agent).toBeGreaterThanOrEqual(100_000); // all of the answer, on the agent itself
    const fabric = await used(sidecar, { fabric: true });
    // The fabric holds the tool call and, of the answer, what the agent's limit had left.
    expect(fabric).toBeLessThanOrEqual(AGENT_LIMIT * 2);
  });
});

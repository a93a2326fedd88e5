/**
 * A sampling answer that goes past what its agent's own budget had left is counted in full on
 * the agent, and on its pool and the fabric only that remainder. Found in review: nobody was
 * told — over an admission (`admitSampling`) the capped settle said nothing, and over a backend
 * without one (`recordUsage`, which answers such a report `BudgetExceededError.usageBeyondLimit`)
 * the gateway logged `charging a sampling request failed` although the usage WAS counted. Now
 * both log one `warn` line saying what happened: agent, scope, recorded and shared (never what
 * the sampling held).
 *
 * Real parts: a sidecar over a real fabric, the SDK-built callback fixture (`sample`) over
 * stdio, the official SDK client over Streamable HTTP answering the sampling request.
 */
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { CreateMessageRequestSchema } from '@modelcontextprotocol/sdk/types.js';
import { afterEach, describe, expect, it } from 'vitest';
import type { GatewayLogEntry } from '../../src/gateway/gateway.js';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  agentToken,
  CALLBACK_SERVER,
  closeSidecar,
  DEFAULT_ALLOW,
  httpClient,
  startTestSidecar,
  until,
} from '../fixtures/gateway/harness.js';

/** Characters of the sampling answer: about 2000 tokens, past the agent's 1000. */
const ANSWER_CHARS = 8000;

let sidecar: Sidecar | undefined;
let client: Client | undefined;

afterEach(async () => {
  await client?.close().catch(() => undefined);
  client = undefined;
  await closeSidecar(sidecar);
  sidecar = undefined;
});

async function sampleOnce(withoutAdmission: boolean): Promise<GatewayLogEntry[]> {
  const logs: GatewayLogEntry[] = [];
  sidecar = await startTestSidecar(
    {
      upstreams: { cb: { command: process.execPath, args: [CALLBACK_SERVER], stderr: 'ignore' } },
      policies: [DEFAULT_ALLOW],
      agents: [{ name: 'a', budget: { maxTokensPerHour: 1000 } }],
    },
    { logger: (e) => logs.push(e) },
  );
  // A backend that does not implement the optional admission: the gateway records the
  // sampling as the agent's own report (`recordUsage`).
  if (withoutAdmission) {
    Object.defineProperty(sidecar.backend, 'admitSampling', { value: undefined });
  }
  client = await httpClient(sidecar.url!, agentToken(sidecar, 'a'), { sampling: {} });
  client.setRequestHandler(CreateMessageRequestSchema, () => ({
    role: 'assistant',
    model: 'test-model',
    content: { type: 'text', text: 'a'.repeat(ANSWER_CHARS) },
  }));
  await until(
    async () => (await client!.listTools()).tools.some((t) => t.name === 'cb__sample'),
    30_000,
  );
  // The call's own result (the answer, echoed) does not fit the exhausted budget: withheld.
  const out = await client.callTool({ name: 'cb__sample', arguments: {} });
  expect(JSON.stringify(out)).toContain('FABRIC_ERR_BUDGET_EXCEEDED');
  await until(() => logs.some((l) => /sampling/.test(String(l.msg))));
  return logs;
}

function expectCappedLine(logs: GatewayLogEntry[]): void {
  const told = logs.filter((l) => /sampling/.test(String(l.msg)));
  expect(told).toEqual([
    expect.objectContaining({
      level: 'warn',
      agentId: sidecar!.agents[0]!.id,
      scope: `agent:${sidecar!.agents[0]!.id}`,
      limit: 'tokens',
      max: 1000,
    }),
  ]);
  const line = told[0] as GatewayLogEntry & {
    recorded: { tokens: number };
    shared: { tokens: number };
  };
  expect(line.msg).toMatch(/counted in full/);
  expect(line.msg).not.toMatch(/failed/);
  expect(line.recorded.tokens).toBeGreaterThan(1000);
  expect(line.shared.tokens).toBeLessThan(line.recorded.tokens);
  expect(JSON.stringify(line)).not.toContain('aaaa'); // never what the sampling held
}

describe('sampling past the agent’s own budget: counted, and told', () => {
  it('over an admission (capped settle): one warn line, recorded vs shared', async () => {
    expectCappedLine(await sampleOnce(false));
  }, 60_000);

  it('over a backend without admitSampling (recordUsage answers usageBeyondLimit): said counted, not "failed"', async () => {
    expectCappedLine(await sampleOnce(true));
  }, 60_000);
});

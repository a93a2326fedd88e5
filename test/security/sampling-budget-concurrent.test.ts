/**
 * Left open by the sampling-admission fix: an upstream's `sampling/createMessage` was admitted
 * against the usage counted alone, and charged only once its answer came, so samplings running
 * at the same time were each admitted against the same remaining budget and together ran the
 * agent's model past its limit. A hostile upstream sends 50 at once within one call, against a
 * token limit that has room for 5: all 50 reached the agent's client. Now admission reserves the
 * request's tokens (samplings in flight count against each other; the calling tool's own
 * reservation stays aside) and the reservation is settled with what the sampling used, so only
 * 5 reach the client, the other 45 are refused with FABRIC_ERR_BUDGET_EXCEEDED (audited), and
 * the store holds the 5 samplings' usage (and the call's result) with nothing left reserved.
 * A refused sampling was not counted in `/metrics` either: now it is, as a budget refusal
 * (`agent_fabric_request_failures_total{outcome="denied",code="FABRIC_ERR_BUDGET_EXCEEDED"}`).
 *
 * Real parts: a sidecar on a SQLite state file with the SDK-built callback fixture over stdio
 * (`sample_many`: 50 sampling requests at once), the official SDK client over Streamable HTTP
 * whose sampling handler counts its runs and holds every answer until each request was either
 * run or refused, the usage read through the operator API and from the state file after the
 * sidecar stopped, `/metrics`, and the audit file on disk.
 */
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { CreateMessageRequestSchema } from '@modelcontextprotocol/sdk/types.js';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import { estimateTokens } from '../../src/gateway/tool-costs.js';
import {
  agentId,
  agentToken,
  auditLines,
  CALLBACK_SERVER,
  closeSidecar,
  DEFAULT_ALLOW,
  httpClient,
  sampleManyTokens,
  metricValue,
  startTestSidecar,
  storedTokensUsed,
  tempDir,
  text,
  tokensStatus,
  until,
  untilTool,
} from '../fixtures/gateway/harness.js';

/** Sampling requests the upstream sends at once. */
const COUNT = 50;
/** Characters of each request's text. */
const CHARS = 4000;
/** Tokens of one request's params, as the gateway estimates them. */
const ASKED = sampleManyTokens(CHARS);
/** Room for 5 requests, not 6. */
const LIMIT = 5 * ASKED + ASKED / 2;
const ANSWER = { role: 'assistant', model: 'm', content: { type: 'text', text: 'ok' } };

describe('budget: samplings running at the same time cannot together pass a limit', () => {
  const dir = tempDir('sampling-concurrent');
  const auditPath = join(dir, 'audit.jsonl');
  let sidecar: Sidecar;
  let client: Client;
  let runs = 0;
  let usedBeforeStop = 0;

  beforeAll(async () => {
    sidecar = await startTestSidecar({
      state: { path: join(dir, 'state.db') },
      upstreams: {
        cb: { command: process.execPath, args: [CALLBACK_SERVER], stderr: 'ignore' },
      },
      policies: [DEFAULT_ALLOW],
      agents: [{ name: 'a', budget: { maxTokensPerHour: LIMIT } }],
      audit: { path: auditPath, flushIntervalMs: 0 },
    });
    client = await httpClient(sidecar.url!, agentToken(sidecar, 'a'), { sampling: {} });
    // Every answer waits until each of the requests was run or refused (so none is charged
    // before every admission was decided).
    const refused = () => auditLines(sidecar, auditPath, 'a', 'sampling/createMessage').length;
    client.setRequestHandler(CreateMessageRequestSchema, async () => {
      runs += 1;
      await until(() => runs + refused() >= COUNT, 30_000);
      return ANSWER;
    });
    await untilTool(client, 'cb__sample_many');
  }, 60_000);

  afterAll(async () => {
    await client?.close().catch(() => undefined);
    await closeSidecar(sidecar);
  });

  it('50 samplings at once against room for 5: 5 run, 45 are refused, the store holds 5', async () => {
    expect(ASKED).toBeGreaterThan(1000);
    const result = await client.callTool(
      { name: 'cb__sample_many', arguments: { count: COUNT, chars: CHARS } },
      undefined,
      { timeout: 60_000 },
    );
    expect(runs).toBe(5);
    const lines = auditLines(sidecar, auditPath, 'a', 'sampling/createMessage');
    expect(lines).toHaveLength(COUNT - 5);
    for (const line of lines) {
      expect(line).toMatchObject({ outcome: 'denied', code: 'FABRIC_ERR_BUDGET_EXCEEDED' });
    }
    // What the upstream saw (the result fits what is left).
    expect(JSON.parse(text(result))).toEqual({ results: 5, errors: 45 });
    // Charged: the 5 samplings' requests and answers, and the call's small result; nothing left
    // reserved.
    await until(async () => (await tokensStatus(sidecar, 'a')).reserved === 0);
    const { used } = await tokensStatus(sidecar, 'a');
    const samplings = 5 * (ASKED + estimateTokens(ANSWER));
    expect(used).toBeGreaterThan(samplings);
    expect(used).toBeLessThan(samplings + 50);
    expect(used).toBeLessThanOrEqual(LIMIT);
    usedBeforeStop = used;
  }, 90_000);

  it('each refused sampling is counted in /metrics as a budget refusal', async () => {
    // The call above succeeded: the budget refusals counted are its 45 samplings'.
    expect(
      await metricValue(
        sidecar,
        'agent_fabric_request_failures_total{outcome="denied",code="FABRIC_ERR_BUDGET_EXCEEDED"}',
      ),
    ).toBe(COUNT - 5);
  }, 90_000);

  it('the state file holds the same usage after the sidecar stopped', async () => {
    expect(usedBeforeStop).toBeGreaterThan(5 * ASKED);
    await client.close();
    await closeSidecar(sidecar);
    expect(await storedTokensUsed(join(dir, 'state.db'), agentId(sidecar, 'a'))).toBe(
      usedBeforeStop,
    );
  });
});

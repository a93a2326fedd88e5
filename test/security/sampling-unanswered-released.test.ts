/**
 * Left open by the sampling-reservation fix: an upstream's `sampling/createMessage` reserves its
 * request's tokens until the agent's client answers. A client that never answers, to an upstream
 * that never cancels (it waits weeks for the answer), kept that hold until the session closed —
 * the session bounds a server→client request at 24 h — so the agent's budget stayed blocked by
 * it long after the call that asked had timed out, and the upstream waited as long. Now the
 * request is bounded by the upstream's `callTimeoutSeconds`: it is cancelled (here the call's
 * stream has ended: the cancellation reaches the client's sampling handler on the session's
 * standalone GET stream — it did not before, as the session numbered its server→client requests
 * from 0 and the SDK client ignores a cancellation of request id 0), the
 * upstream gets `FABRIC_ERR_CALLBACK_TIMEOUT`, and the hold is settled as a refused sampling's is
 * (the request's tokens, which reached the client), so nothing stays reserved, in memory or in
 * the state file.
 *
 * Real parts: a sidecar on a SQLite state file with the SDK-built callback fixture over stdio
 * (`sample_many` with a 23-day timeout of its own), the official SDK client over Streamable HTTP
 * whose sampling handler never resolves, the budget read through the operator API and from the
 * state file after the sidecar stopped, and `/metrics`.
 */
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { CreateMessageRequestSchema } from '@modelcontextprotocol/sdk/types.js';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  agentId,
  agentToken,
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

const CHARS = 4000;
/** Tokens of the request's params, as the gateway estimates them. */
const ASKED = sampleManyTokens(CHARS);
/** The upstream's own wait for the answer: far past any bound of the gateway's. */
const UPSTREAM_WAIT_MS = 2_000_000_000;

describe('budget: a sampling the client never answers does not hold the budget past the call timeout', () => {
  const dir = tempDir('sampling-unanswered');
  const statePath = join(dir, 'state.db');
  let sidecar: Sidecar;
  let client: Client;
  let runs = 0;
  let used = 0;
  /** Why the client's sampling handler was aborted (the gateway's cancellation), once it was. */
  let aborted: unknown;

  beforeAll(async () => {
    sidecar = await startSidecar();
    client = await httpClient(sidecar.url!, agentToken(sidecar, 'a'), { sampling: {} });
    client.setRequestHandler(CreateMessageRequestSchema, (_request, extra) => {
      runs += 1;
      extra.signal.addEventListener('abort', () => (aborted = extra.signal.reason ?? 'aborted'));
      return new Promise(() => undefined); // never answers
    });
    await untilTool(client, 'cb__sample_many');
  }, 60_000);

  function startSidecar(): Promise<Sidecar> {
    return startTestSidecar({
      state: { path: statePath },
      upstreams: {
        cb: {
          command: process.execPath,
          args: [CALLBACK_SERVER],
          stderr: 'ignore',
          callTimeoutSeconds: 2,
        },
      },
      policies: [DEFAULT_ALLOW],
      agents: [{ name: 'a', budget: { maxTokensPerHour: 10 * ASKED } }],
    });
  }

  afterAll(async () => {
    await client?.close().catch(() => undefined);
    await closeSidecar(sidecar);
  });

  it('the upstream is told the client did not answer in time, and the hold is settled', async () => {
    const call = client
      .callTool(
        {
          name: 'cb__sample_many',
          arguments: { count: 1, chars: CHARS, timeoutMs: UPSTREAM_WAIT_MS },
        },
        undefined,
        { timeout: 30_000 },
      )
      .catch((error: unknown) => error);
    await until(() => runs === 1);
    expect((await tokensStatus(sidecar, 'a')).reserved).toBeGreaterThanOrEqual(ASKED);
    // The call itself times out (callTimeoutSeconds); the sampling it asked for is bounded alike.
    await call;
    await until(async () => (await tokensStatus(sidecar, 'a')).reserved === 0, 15_000);
    // The cancellation reached the client's handler, though the call's stream had ended.
    await until(() => aborted !== undefined, 15_000);
    // Charged as a refused sampling is: the request, which reached the client (and the timed-out
    // call's error, a few tokens).
    const status = await tokensStatus(sidecar, 'a');
    expect(status.used).toBeGreaterThanOrEqual(ASKED);
    expect(status.used).toBeLessThan(ASKED + 100);
    // What the upstream got for its request (read in a second call: the first one's result was
    // dropped when it timed out).
    await until(async () => {
      const r = await client.callTool({ name: 'cb__last_errors', arguments: {} });
      return JSON.parse(text(r)).length === 1;
    }, 15_000);
    const r = await client.callTool({ name: 'cb__last_errors', arguments: {} });
    const [error] = JSON.parse(text(r)) as Array<{ code: number; message: string; data: unknown }>;
    expect(error!.message).toContain("the agent's client did not answer within 2000 ms");
    expect(error!.data).toMatchObject({
      code: 'FABRIC_ERR_CALLBACK_TIMEOUT',
      details: { upstream: 'cb', method: 'sampling/createMessage', timeoutMs: 2000 },
    });
    used = (await tokensStatus(sidecar, 'a')).used;
    expect(
      await metricValue(
        sidecar,
        'agent_fabric_request_failures_total{outcome="error",code="FABRIC_ERR_CALLBACK_TIMEOUT"}',
      ),
    ).toBe(1);
  }, 60_000);

  it('the state file holds the settled usage after the sidecar stopped', async () => {
    expect(used).toBeGreaterThan(0);
    await client.close();
    await closeSidecar(sidecar);
    expect(await storedTokensUsed(statePath, agentId(sidecar, 'a'))).toBe(used);
  }, 30_000);
});

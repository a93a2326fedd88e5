/**
 * An agent that cancels each call it makes, against an upstream that goes on working after a
 * cancel (a real stdio upstream that ignores `notifications/cancelled` and answers anyway), on a
 * real sidecar with real SDK clients over Streamable HTTP. The cancel freed the agent's
 * `maxInflightPerAgent` slot at once while the work went on upstream, so one agent could keep
 * any number of calls running there: `maxInflightPerAgent` cancelled calls, then as many again.
 * Now a call the gateway gave up on keeps its agent's slot until the upstream answers it (the
 * answer is dropped) or its late window (`callTimeoutSeconds`) ends; other agents are not
 * affected, and nothing stays counted once the upstream answers.
 */
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  agentToken,
  closeSidecar,
  DEFAULT_ALLOW,
  httpClient,
  IGNORE_CANCEL_UPSTREAM,
  metricValue,
  startTestSidecar,
  text,
  until,
} from '../fixtures/gateway/harness.js';

const SLOTS = 3;

describe('a cancelled call whose upstream goes on working (real sidecar)', () => {
  let sidecar: Sidecar;
  let canceller: Client;
  let other: Client;

  beforeAll(async () => {
    sidecar = await startTestSidecar({
      http: { maxInflightPerAgent: SLOTS },
      upstreams: { up: IGNORE_CANCEL_UPSTREAM },
      policies: [DEFAULT_ALLOW],
      agents: [{ name: 'canceller' }, { name: 'other' }],
    });
    canceller = await httpClient(sidecar.url!, agentToken(sidecar, 'canceller'));
    other = await httpClient(sidecar.url!, agentToken(sidecar, 'other'));
  });
  afterAll(async () => {
    await canceller?.close();
    await other?.close();
    await closeSidecar(sidecar);
  });

  /** What the upstream holds and the cancels it saw (asked by the other agent). */
  const upstreamState = async (): Promise<{ held: number; cancelled: number }> =>
    JSON.parse(text(await other.callTool({ name: 'up__state', arguments: {} }))) as {
      held: number;
      cancelled: number;
    };

  /** The sidecar's gauge of MCP requests in flight (all agents). */
  const inflightGauge = (): Promise<number> =>
    metricValue(sidecar, 'agent_fabric_mcp_http_requests_in_flight');

  /** Makes a `work` call of the canceller, waits until the upstream holds it, and cancels it. */
  const cancelledWork = async (n: number): Promise<void> => {
    const abort = new AbortController();
    const call = canceller.callTool({ name: 'up__work', arguments: {} }, undefined, {
      signal: abort.signal,
    });
    const outcome = call.then(
      () => 'answered',
      () => 'rejected',
    );
    await until(async () => (await upstreamState()).held === n);
    abort.abort();
    expect(await outcome).toBe('rejected');
    // The cancel reached the sidecar (which told the upstream): the agent's side is done.
    await until(async () => (await upstreamState()).cancelled === n);
  };

  it('keeps the slot of a cancelled call until the upstream answers it', async () => {
    for (let i = 1; i <= SLOTS; i++) await cancelledWork(i);
    // The upstream still works on all of them.
    expect(await upstreamState()).toEqual({ held: SLOTS, cancelled: SLOTS });

    // The agent's slots are all held: one more call is refused at once, as for a full set.
    // Before, the cancels had freed them and this call ran upstream too (held 4, and so on).
    await expect(canceller.callTool({ name: 'up__state', arguments: {} })).rejects.toThrow(
      /FABRIC_ERR_INFLIGHT_LIMIT/,
    );
    expect((await upstreamState()).held).toBe(SLOTS);
    expect(await inflightGauge()).toBe(SLOTS);

    // Another agent is served as before (its `state` calls above, and this one).
    expect(JSON.parse(text(await other.callTool({ name: 'up__state', arguments: {} })))).toEqual({
      held: SLOTS,
      cancelled: SLOTS,
    });

    // The upstream answers the given-up calls (the answers are dropped): the slots free.
    expect(text(await other.callTool({ name: 'up__release', arguments: {} }))).toBe(String(SLOTS));
    await until(async () => (await inflightGauge()) === 0);
    expect(
      JSON.parse(text(await canceller.callTool({ name: 'up__state', arguments: {} }))),
    ).toEqual({ held: 0, cancelled: SLOTS });
    expect(await inflightGauge()).toBe(0);
  });
});

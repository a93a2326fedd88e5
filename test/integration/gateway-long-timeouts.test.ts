/**
 * Regression (review finding): an upstream's `callTimeoutSeconds` had no upper bound, and Node
 * fires a timer past 2^31 - 1 ms (~24.8 days) after 1 ms — `callTimeoutSeconds: 3000000` made
 * every call fail at once with FABRIC_ERR_UPSTREAM_TIMEOUT ("did not answer tools/call within
 * 3000000000 ms"). Such a config is now refused at start; the longest one accepted works.
 */
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { afterEach, describe, expect, it } from 'vitest';
import { MAX_TIMER_MS, MAX_TIMER_SECONDS } from '../../src/scheduler/task-waiters.js';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  agentToken,
  closeSidecar,
  DEFAULT_ALLOW,
  HANGING_SERVER,
  httpClient,
  startTestSidecar,
  text,
  until,
} from '../fixtures/gateway/harness.js';

describe('the longest timed settings of an upstream (real fabric, SDK fixture server)', () => {
  let sidecar: Sidecar | undefined;
  let client: Client | undefined;

  afterEach(async () => {
    await client?.close();
    client = undefined;
    await closeSidecar(sidecar);
    sidecar = undefined;
  });

  const upstream = (seconds: number, ms: number) => ({
    command: process.execPath,
    args: [HANGING_SERVER],
    stderr: 'ignore' as const,
    callTimeoutSeconds: seconds,
    startTimeoutSeconds: seconds,
    restart: { initialDelayMs: ms, maxDelayMs: ms },
  });

  it('at the limit, calls are answered and a long call stays in flight until cancelled', async () => {
    sidecar = await startTestSidecar({
      http: { keepAliveSeconds: MAX_TIMER_SECONDS },
      upstreams: { slow: upstream(MAX_TIMER_SECONDS, MAX_TIMER_MS) },
      policies: [DEFAULT_ALLOW],
      agents: [{ name: 'caller' }],
    });
    client = await httpClient(sidecar.url!, agentToken(sidecar, 'caller'));
    const c = client;
    const ping = await c.callTool({ name: 'slow__ping', arguments: {} });
    expect(ping.isError).toBeFalsy();
    expect(text(ping)).toBe('pong');

    const controller = new AbortController();
    let settled: unknown;
    const hang = c
      .callTool({ name: 'slow__hang', arguments: {} }, undefined, {
        signal: controller.signal,
        timeout: MAX_TIMER_MS,
      })
      .then(
        (r) => (settled = r),
        (e: unknown) => (settled = e),
      );
    await until(
      async () => text(await c.callTool({ name: 'slow__pending', arguments: {} })) === '1',
    );
    // A whole round trip after the upstream took the call, it is still in flight (a 1 ms
    // timer would have ended it with FABRIC_ERR_UPSTREAM_TIMEOUT long before).
    expect(text(await c.callTool({ name: 'slow__ping', arguments: {} }))).toBe('pong');
    expect(settled).toBeUndefined();
    controller.abort();
    await hang;
    await until(
      async () => text(await c.callTool({ name: 'slow__pending', arguments: {} })) === '0',
    );
  });

  it('past the limit, the sidecar refuses to start, naming the key and the limit', async () => {
    const started = startTestSidecar({
      upstreams: { slow: upstream(3_000_000, 100) },
      policies: [DEFAULT_ALLOW],
    });
    // (Before the fix it started: keep its upstream from outliving the test.)
    await expect(
      started.then(async (s) => {
        await closeSidecar(s);
        return 'started';
      }),
    ).rejects.toThrow(
      'upstreams.slow.callTimeoutSeconds: must be at most 2147483 seconds (24.8 days)',
    );
  });
});

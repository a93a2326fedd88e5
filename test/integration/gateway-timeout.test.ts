import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
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

describe('a hung upstream call (real fabric, SDK fixture server that never answers)', () => {
  let sidecar: Sidecar;
  let client: Client;

  beforeAll(async () => {
    sidecar = await startTestSidecar({
      upstreams: {
        slow: {
          command: process.execPath,
          args: [HANGING_SERVER],
          stderr: 'ignore',
          // Also bounds the upstream's start-up (see the last test), so not much shorter.
          callTimeoutSeconds: 5,
        },
      },
      policies: [DEFAULT_ALLOW],
      agents: [{ name: 'waiter' }],
    });
    client = await httpClient(sidecar.url!, agentToken(sidecar, 'waiter'));
  });

  afterAll(async () => {
    await client?.close();
    await closeSidecar(sidecar);
  });

  const pendingUpstream = async (): Promise<string> =>
    text(await client.callTool({ name: 'slow__pending', arguments: {} }));

  it('ends the call with a readable timeout error once the call timeout passes', async () => {
    const r = await client.callTool({ name: 'slow__hang', arguments: {} });
    expect(r.isError).toBe(true);
    expect(text(r)).toContain('FABRIC_ERR_UPSTREAM_TIMEOUT');
    expect(text(r)).toContain('slow');
  });

  it('cancels the hung call upstream and keeps the upstream connection serving', async () => {
    const upstream = sidecar.gateway.upstreams.get('slow')!;
    await until(async () => (await pendingUpstream()) === '0');
    expect(text(await client.callTool({ name: 'slow__ping', arguments: {} }))).toBe('pong');
    expect(upstream.state).toBe('ready');
    expect(upstream.connectCount).toBe(1);
  });

  it('forwards an agent cancellation upstream', async () => {
    const controller = new AbortController();
    const call = client.callTool({ name: 'slow__hang', arguments: {} }, undefined, {
      signal: controller.signal,
      timeout: 60_000,
    });
    await until(async () => (await pendingUpstream()) === '1');
    controller.abort(new Error('agent gave up'));
    await expect(call).rejects.toThrow('agent gave up');
    await until(async () => (await pendingUpstream()) === '0');
  });
});

describe('start-up of a slow upstream', () => {
  // Start-up has its own bound (`startTimeoutSeconds`): an upstream that takes longer to start
  // than one call may run (npx, a cold JVM) still comes up.
  it('starts an upstream whose start-up takes longer than its call timeout', async () => {
    let sidecar: Sidecar | undefined;
    try {
      sidecar = await startTestSidecar({
        upstreams: {
          late: {
            command: process.execPath,
            args: [HANGING_SERVER],
            env: { STARTUP_DELAY_MS: '2000' },
            stderr: 'ignore',
            callTimeoutSeconds: 0.5,
          },
        },
        policies: [DEFAULT_ALLOW],
      });
      expect(sidecar.gateway.upstreams.get('late')?.state).toBe('ready');
    } finally {
      await closeSidecar(sidecar);
    }
  });
});

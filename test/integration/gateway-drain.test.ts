import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  agentId,
  closeSidecar,
  DEFAULT_ALLOW,
  HANGING_SERVER,
  inMemoryClient,
  startTestSidecar,
  tempDir,
  text,
  until,
} from '../fixtures/gateway/harness.js';

/**
 * `ToolGateway.close()` waits for the calls in flight, and only for them: every call is counted
 * in when it starts and out exactly once when it ends — after its deferred audit line on the
 * fast path, as its pipeline run settles on the SDK path. `Upstream.close()` marks the upstream
 * closed at once, so its state shows whether close() went on without waiting.
 */
describe('gateway close() and the calls in flight', () => {
  let sidecar: Sidecar | undefined;
  let dir: string | undefined;

  afterEach(async () => {
    await closeSidecar(sidecar);
    sidecar = undefined;
    if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
    dir = undefined;
  });

  async function start(
    audit?: string,
    graceSeconds?: number,
    policies: (typeof DEFAULT_ALLOW)[] = [],
  ): Promise<Client> {
    sidecar = await startTestSidecar(
      {
        ...(audit === undefined ? {} : { audit: { path: audit } }),
        ...(graceSeconds === undefined ? {} : { gateway: { shutdownGraceSeconds: graceSeconds } }),
        upstreams: {
          slow: { command: process.execPath, args: [HANGING_SERVER], stderr: 'ignore' },
        },
        policies: [...policies, DEFAULT_ALLOW],
        toolCosts: { slow__hang: 1 },
        agents: [{ name: 'caller', budget: { maxCostPerDay: 10 } }],
      },
      { http: false },
    );
    return inMemoryClient(sidecar, sidecar.agents[0]!.credential);
  }

  /** Ended calls on both paths: the fast path (plain) and the SDK path (with a progress token). */
  async function endedCalls(client: Client): Promise<void> {
    for (let i = 0; i < 3; i++) {
      expect(text(await client.callTool({ name: 'slow__ping', arguments: {} }))).toBe('pong');
      const viaSdk = await client.callTool({ name: 'slow__ping', arguments: {} }, undefined, {
        onprogress: () => undefined,
      });
      expect(text(viaSdk)).toBe('pong');
    }
    await new Promise((resolve) => setImmediate(resolve)); // the deferred audits ran
  }

  it('does not wait once every call has ended (each audited once)', async () => {
    dir = tempDir('drain');
    const audit = join(dir, 'audit.log');
    const client = await start(audit);
    await endedCalls(client);
    const upstream = sidecar!.gateway.upstreams.get('slow')!;
    const closing = sidecar!.gateway.close();
    expect(upstream.state).toBe('closed'); // went on at once: nothing counted in flight
    await closing;
    const lines = readFileSync(audit, 'utf8')
      .split('\n')
      .filter((l) => l.includes('"tool":"slow__ping"'));
    expect(lines).toHaveLength(6);
    for (const line of lines) expect(JSON.parse(line)).toMatchObject({ outcome: 'ok' });
  });

  it('waits for a call in flight, however many calls ended before it (charged: it reached its upstream)', async () => {
    const client = await start();
    await endedCalls(client);
    const upstream = sidecar!.gateway.upstreams.get('slow')!;
    const controller = new AbortController();
    const hanging = client.callTool({ name: 'slow__hang', arguments: {} }, undefined, {
      signal: controller.signal,
    });
    hanging.catch(() => undefined);
    await until(
      async () => text(await client.callTool({ name: 'slow__pending', arguments: {} })) === '1',
    );
    await new Promise((resolve) => setImmediate(resolve));
    const closing = sidecar!.gateway.close();
    await new Promise((resolve) => setImmediate(resolve));
    expect(upstream.state).toBe('ready'); // waiting for the hanging call
    controller.abort(new Error('caller gave up'));
    await expect(hanging).rejects.toThrow('caller gave up');
    await closing;
    expect(upstream.state).toBe('closed');
    // Cancelled after the upstream got it: its cost is charged (the upstream may have worked).
    const status = sidecar!.fabric!.budgets.getStatus(agentId(sidecar!, 'caller'));
    expect(status.costUsed).toBe(1);
    expect(status.costReserved).toBe(0);
  });

  it('tells a call cut off when the grace ran out that the gateway is shutting down', async () => {
    const client = await start(undefined, 0);
    const hanging = client.callTool({ name: 'slow__hang', arguments: {} });
    await until(
      async () => text(await client.callTool({ name: 'slow__pending', arguments: {} })) === '1',
    );
    await sidecar!.gateway.close();
    const result = await hanging;
    expect(result.isError).toBe(true);
    // Not "it is being restarted": the upstream is closed for good, nothing comes back.
    expect(text(result)).toContain(
      'upstream slow was closed during tools/call: the gateway is shutting down',
    );
    expect(text(result)).toContain('FABRIC_ERR_UPSTREAM_UNAVAILABLE');
  });

  it('answers a call still waiting for a human approval when the grace ran out: FABRIC_ERR_CLOSED', async () => {
    dir = tempDir('drain-approval');
    const audit = join(dir, 'audit.log');
    const approval = {
      name: 'ask',
      priority: 100,
      rules: [{ tool: 'slow__ping', action: 'require_approval' }],
    };
    const client = await start(audit, 0, [approval]);
    const parked = client.callTool({ name: 'slow__ping', arguments: {} });
    const approvals = sidecar!.fabric!.approvals;
    await until(() => approvals.listApprovals({ status: 'pending' }).length === 1);
    await sidecar!.gateway.close();
    // Answered while the session could still carry it (before: the session's close ended the
    // request unanswered, an untyped "connection closed").
    const result = await parked;
    expect(result.isError).toBe(true);
    expect(text(result)).toContain('FABRIC_ERR_CLOSED');
    const line = readFileSync(audit, 'utf8')
      .split('\n')
      .find((l) => l.includes('"tool":"slow__ping"'));
    expect(JSON.parse(line!)).toMatchObject({ outcome: 'error', code: 'FABRIC_ERR_CLOSED' });
    // Still pending: a human can decide it; no call waits for it any more.
    expect(approvals.listApprovals({ status: 'pending' })).toEqual([
      expect.objectContaining({ tool: 'slow__ping', orphaned: true }),
    ]);
  });

  it('holds more than ten calls waiting for approvals with no listener-leak warning', async () => {
    // Each waiting call listens to the gateway's closing signal; past ten at once node warned
    // "Possible EventTarget memory leak detected" (a leak to an operator; there was none).
    const warnings: string[] = [];
    const onWarning = (w: Error): void => {
      warnings.push(`${w.name}: ${w.message}`);
    };
    process.on('warning', onWarning);
    try {
      const approval = {
        name: 'ask',
        priority: 100,
        rules: [{ tool: 'slow__ping', action: 'require_approval' }],
      };
      const client = await start(undefined, 0, [approval]);
      const parked = Array.from({ length: 12 }, () =>
        client.callTool({ name: 'slow__ping', arguments: {} }),
      );
      const approvals = sidecar!.fabric!.approvals;
      await until(() => approvals.listApprovals({ status: 'pending' }).length === 12);
      // A warning is emitted on the next tick after the listener that passed the limit.
      await new Promise((resolve) => setImmediate(resolve));
      await sidecar!.gateway.close();
      for (const result of await Promise.all(parked))
        expect(text(result)).toContain('FABRIC_ERR_CLOSED');
      expect(warnings.filter((w) => w.includes('MaxListenersExceededWarning'))).toEqual([]);
    } finally {
      process.off('warning', onWarning);
    }
  });
});

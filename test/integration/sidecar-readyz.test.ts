/**
 * `GET /readyz` of a real sidecar (real server-everything upstream, a real upstream that cannot
 * start): 200 while every required upstream is connected, with an optional one reported down;
 * 503 while a required upstream is down (its process SIGKILLed), 200 again once it is restarted.
 * No credential is needed, and nothing but part names and states is told.
 *
 * With `nats:` configured (a real nats-server): `checks.nats` is true while connected; the
 * nats-server stopped → 503 with `nats: false` (the client is reconnecting); restarted → 200.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  closeSidecar,
  EVERYTHING_BIN,
  startTestSidecar,
  until,
  upstreamPids,
} from '../fixtures/gateway/harness.js';
import { describeNats, startNatsServer, type NatsServer } from '../fixtures/nats-server.js';

const LEAKY = new URL('../fixtures/log/leaky-upstream.mjs', import.meta.url).pathname;

describe('GET /readyz', () => {
  let sidecar: Sidecar;
  beforeAll(async () => {
    sidecar = await startTestSidecar({
      upstreams: {
        ev: { command: process.execPath, args: [EVERYTHING_BIN, 'stdio'], stderr: 'ignore' },
        broken: { command: process.execPath, args: [LEAKY], stderr: 'ignore', required: false },
      },
    });
  }, 60_000);
  afterAll(() => closeSidecar(sidecar));

  const readyz = async (): Promise<{ status: number; body: unknown }> => {
    const res = await fetch(new URL('/readyz', sidecar.url));
    return { status: res.status, body: await res.json() };
  };

  it('is ready with an optional upstream down, unready while a required one is down', async () => {
    expect(await readyz()).toEqual({
      status: 200,
      body: {
        ready: true,
        checks: { fabric: true, state: true, 'upstream/ev': true, 'upstream/broken': false },
      },
    });
    const ev = sidecar.gateway.upstreams.get('ev')!;
    const pid = ev.pid!;
    expect(upstreamPids(sidecar)).toContain(pid);
    process.kill(pid, 'SIGKILL');
    await until(async () => (await readyz()).status === 503, 30_000);
    expect((await readyz()).body).toMatchObject({ ready: false, checks: { 'upstream/ev': false } });
    await until(async () => (await readyz()).status === 200, 60_000);
    expect(ev.pid).not.toBe(pid);
  }, 120_000);
});

describeNats('GET /readyz with nats: configured', () => {
  let nats: NatsServer;
  let sidecar: Sidecar | undefined;
  beforeAll(async () => {
    nats = await startNatsServer();
    sidecar = await startTestSidecar({ nats: { url: nats.url } });
  }, 60_000);
  afterAll(async () => {
    if (sidecar !== undefined) await closeSidecar(sidecar);
    await nats?.close();
  });

  const readyz = async (): Promise<{ status: number; body: unknown }> => {
    const res = await fetch(new URL('/readyz', sidecar!.url));
    return { status: res.status, body: await res.json() };
  };

  it('is unready while the NATS connection is down, ready again once it reconnects', async () => {
    expect(await readyz()).toEqual({
      status: 200,
      body: { ready: true, checks: { fabric: true, state: true, nats: true } },
    });
    await nats.stop();
    await until(async () => (await readyz()).status === 503, 30_000);
    expect((await readyz()).body).toEqual({
      ready: false,
      checks: { fabric: true, state: true, nats: false },
    });
    await nats.restart();
    await until(async () => (await readyz()).status === 200, 60_000);
    expect((await readyz()).body).toMatchObject({ ready: true, checks: { nats: true } });
  }, 120_000);
});

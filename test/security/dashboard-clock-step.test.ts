/**
 * The dashboard's session life and idle time, and the failed-login bound, on the sidecar's own
 * clock (no injected one) while the wall clock steps: a session must end 8 hours after login
 * and an address's lock-out after its minute, however the wall clock was set meanwhile, and a
 * session must end when the wall clock says its time passed while the monotonic clock stood
 * still (a suspended machine).
 */
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { CSRF_HEADER, SESSION_COOKIE } from '../../src/server/dashboard.js';
import type { Sidecar } from '../../src/server/sidecar.js';
import { ADMIN_TOKEN, closeSidecar, startTestSidecar } from '../fixtures/gateway/harness.js';
import { rawRequest as raw, type RawAnswer as Answer } from '../fixtures/raw-http.js';

const DAY = 86_400_000;

describe('the dashboard when the wall clock steps (real sidecar, its own clock)', () => {
  let sidecar: Sidecar;
  let base: URL;

  beforeAll(async () => {
    // Date and performance.now are the test's; timers are real.
    vi.useFakeTimers({ toFake: ['Date', 'performance'] });
    sidecar = await startTestSidecar({ upstreams: {}, agents: [{ name: 'worker' }] });
    base = new URL(sidecar.url!);
  });
  afterAll(async () => {
    vi.useRealTimers();
    await closeSidecar(sidecar);
  });

  const login = (token: string, from?: string): Promise<Answer> =>
    raw(
      base,
      'POST',
      '/ui/login',
      { 'content-type': 'application/json', origin: base.origin },
      JSON.stringify({ token }),
      from,
    );

  it('ends a session 8 hours after login even when the wall clock was set a day back', async () => {
    const res = await login(ADMIN_TOKEN);
    expect(res.status).toBe(200);
    const cookie = String(res.headers['set-cookie']).split(';')[0]!;
    expect(cookie.startsWith(`${SESSION_COOKIE}=`)).toBe(true);
    const csrf = (JSON.parse(res.body) as { csrf: string }).csrf;
    const list = async (): Promise<number> =>
      (
        await raw(
          base,
          'POST',
          '/api/fabric.v1.FabricService/ListAgents',
          { 'content-type': 'application/json', cookie, [CSRF_HEADER]: csrf, origin: base.origin },
          '{}',
        )
      ).status;
    expect(await list()).toBe(200);
    vi.setSystemTime(Date.now() - DAY);
    // Active every 20 minutes for 8 hours: alive until its life is over, then 401.
    for (let i = 0; i < 23; i++) {
      vi.advanceTimersByTime(20 * 60_000);
      expect(await list()).toBe(200);
    }
    vi.advanceTimersByTime(20 * 60_000);
    expect(await list()).toBe(401);
    expect((await raw(base, 'GET', '/ui/session', { cookie })).status).toBe(401);
  });

  it('ends a session idle for half an hour by the wall clock though no time passed here (a suspend)', async () => {
    const res = await login(ADMIN_TOKEN);
    expect(res.status).toBe(200);
    const cookie = String(res.headers['set-cookie']).split(';')[0]!;
    expect((await raw(base, 'GET', '/ui/session', { cookie })).status).toBe(200);
    // The machine slept for half an hour: the wall clock moved, the monotonic one did not.
    vi.setSystemTime(Date.now() + 30 * 60_000);
    expect((await raw(base, 'GET', '/ui/session', { cookie })).status).toBe(401);
  });

  it('lets an address log in again a minute after its lock-out, even when the clock went back', async () => {
    const from = '127.0.0.3';
    for (let i = 0; i < 10; i++) expect((await login('wrong', from)).status).toBe(401);
    expect((await login(ADMIN_TOKEN, from)).status).toBe(429);
    vi.setSystemTime(Date.now() - DAY);
    vi.advanceTimersByTime(60_001);
    expect((await login(ADMIN_TOKEN, from)).status).toBe(200);
  });
});

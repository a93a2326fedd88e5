/**
 * The dashboard's idle timeout and the bound on failed logins, against a real sidecar over raw
 * HTTP (node:http: cookies, Origin and the client's own address as given). The sidecar's
 * dashboard runs on the test's clock (`SidecarOptions.dashboard.now`), so no test sleeps: half
 * an hour passes when the clock is moved.
 *
 * - A session ends after 30 minutes without a request of its page that the page made while
 *   visible (`x-fabric-background: 1` marks those of a hidden page, which do not count), and 8
 *   hours after login however active.
 * - Failed logins (`/ui/login`) and unknown bearer credentials (`/api/`) count per client
 *   address: the 11th in a minute is 429 with Retry-After, the right token included, until the
 *   minute is over; other addresses and live sessions go on.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AuthThrottle } from '../../src/server/auth-throttle.js';
import { BACKGROUND_HEADER, CSRF_HEADER, SESSION_COOKIE } from '../../src/server/dashboard.js';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  ADMIN_TOKEN,
  agentToken,
  closeSidecar,
  startTestSidecar,
} from '../fixtures/gateway/harness.js';
import { rawRequest as raw, type RawAnswer as Answer } from '../fixtures/raw-http.js';

const MINUTE = 60_000;

describe('the dashboard against a real sidecar on a test clock', () => {
  let sidecar: Sidecar;
  let base: URL;
  let origin: string;
  let now = Date.UTC(2026, 11, 4, 12);

  beforeAll(async () => {
    sidecar = await startTestSidecar(
      { upstreams: {}, agents: [{ name: 'worker' }] },
      { dashboard: { now: () => now } },
    );
    base = new URL(sidecar.url!);
    origin = base.origin;
  });
  afterAll(() => closeSidecar(sidecar));

  const login = (token: string, from?: string): Promise<Answer> =>
    raw(
      base,
      'POST',
      '/ui/login',
      { 'content-type': 'application/json', origin },
      JSON.stringify({ token }),
      from,
    );

  /** Logs in; a call of the `/api` door with the session, as the page makes it. */
  async function session(): Promise<{
    list: (background?: boolean) => Promise<number>;
    state: () => Promise<number>;
  }> {
    const res = await login(ADMIN_TOKEN);
    expect(res.status).toBe(200);
    const cookie = String(res.headers['set-cookie']).split(';')[0]!;
    expect(cookie.startsWith(`${SESSION_COOKIE}=`)).toBe(true);
    const csrf = (JSON.parse(res.body) as { csrf: string }).csrf;
    return {
      list: async (background = false) =>
        (
          await raw(
            base,
            'POST',
            '/api/fabric.v1.FabricService/ListAgents',
            {
              'content-type': 'application/json',
              cookie,
              [CSRF_HEADER]: csrf,
              origin,
              ...(background ? { [BACKGROUND_HEADER]: '1' } : {}),
            },
            '{}',
          )
        ).status,
      state: async () => (await raw(base, 'GET', '/ui/session', { cookie })).status,
    };
  }

  /** A call with `token` as its bearer credential. */
  const bearer = async (token: string, from?: string): Promise<Answer> =>
    raw(
      base,
      'POST',
      '/api/fabric.v1.FabricService/ListAgents',
      { 'content-type': 'application/json', authorization: `Bearer ${token}` },
      '{}',
      from,
    );

  describe('idle timeout', () => {
    it('a session used at least every 30 minutes lives on; 30 minutes without a request end it', async () => {
      const s = await session();
      expect(await s.list()).toBe(200);
      now += 29 * MINUTE;
      expect(await s.list()).toBe(200);
      now += 29 * MINUTE;
      // 58 minutes after login, 29 after its last request.
      expect(await s.list()).toBe(200);
      now += 30 * MINUTE;
      expect(await s.list()).toBe(401);
      expect(await s.state()).toBe(401);
      // Even once active again, an ended session stays ended.
      now -= 1;
      expect(await s.list()).toBe(401);
      now += 1;
    });

    it('what a hidden page fetches on its own does not keep its session', async () => {
      const s = await session();
      for (let i = 0; i < 5; i++) {
        now += 5 * MINUTE;
        expect(await s.list(true)).toBe(200);
      }
      now += 5 * MINUTE;
      expect(await s.list(true)).toBe(401);
    });

    it('GET /ui/session (no CSRF token, any same-site page can send it) is no activity', async () => {
      const s = await session();
      now += 20 * MINUTE;
      expect(await s.state()).toBe(200);
      now += 10 * MINUTE;
      expect(await s.list()).toBe(401);
    });

    it('an active session still ends 8 hours after login', async () => {
      const s = await session();
      for (let t = 0; t < 8 * 60 - 20; t += 20) {
        now += 20 * MINUTE;
        expect(await s.list()).toBe(200);
      }
      now += 20 * MINUTE;
      expect(await s.list()).toBe(401);
    });
  });

  describe('failed logins', () => {
    it('the 11th wrong token in a minute from one address is 429 with Retry-After, the right one too, until the minute is over', async () => {
      now += 10 * MINUTE;
      const s = await session();
      for (let i = 0; i < 10; i++) expect((await login(`guess-${i}`)).status).toBe(401);
      const refused = await login('guess-10');
      expect(refused.status).toBe(429);
      expect(JSON.parse(refused.body).error.code).toBe('FABRIC_ERR_AUTH_THROTTLED');
      const retry = Number(refused.headers['retry-after']);
      expect(retry).toBeGreaterThan(0);
      expect(retry).toBeLessThanOrEqual(60);
      // The right token is not even checked at the login now; bearer calls are not bounded.
      expect((await login(ADMIN_TOKEN)).status).toBe(429);
      expect((await bearer(ADMIN_TOKEN)).status).toBe(200);
      // A live session goes on (its cookie is no guess), and so does another address.
      expect(await s.list()).toBe(200);
      expect((await login(ADMIN_TOKEN, '127.0.0.2')).status).toBe(200);
      // Once the minute is over the real admin gets in.
      now += retry * 1000;
      expect((await login(ADMIN_TOKEN)).status).toBe(200);
    });

    it('unknown bearer credentials at /api are neither counted nor refused: one client cannot lock out its address', async () => {
      now += 10 * MINUTE;
      const agent = agentToken(sidecar, 'worker');
      const from = '127.0.0.3';
      // All of loopback is one address: an agent sending unknown credentials must not lock the
      // other clients there (agents, the admin's CLI) out of /api.
      for (let i = 0; i < 20; i++) {
        expect((await bearer(`afk_guess${i}`, from)).status).toBe(401);
      }
      expect((await bearer(agent, from)).status).toBe(403); // checked: not the admin's
      expect((await bearer(ADMIN_TOKEN, from)).status).toBe(200);
      expect((await login(ADMIN_TOKEN, from)).status).toBe(200);
    });

    it('a request without a credential, and a session cookie that names no session, are no guesses', async () => {
      now += 10 * MINUTE;
      const from = '127.0.0.4';
      for (let i = 0; i < 20; i++) {
        const none = await raw(
          base,
          'POST',
          '/api/fabric.v1.FabricService/ListAgents',
          { 'content-type': 'application/json' },
          '{}',
          from,
        );
        expect(none.status).toBe(401);
        const gone = await raw(
          base,
          'POST',
          '/api/fabric.v1.FabricService/ListAgents',
          {
            'content-type': 'application/json',
            cookie: `${SESSION_COOKIE}=ended${i}`,
            [CSRF_HEADER]: 'x',
            origin,
          },
          '{}',
          from,
        );
        // An ended session's page polls several views at once: that must not lock the
        // operator out of logging in again.
        expect(gone.status).toBe(401);
      }
      expect((await login(ADMIN_TOKEN, from)).status).toBe(200);
    });
  });
});

describe('AuthThrottle', () => {
  it('keeps at most maxAddresses entries however many addresses fail', () => {
    let now = 0;
    const throttle = new AuthThrottle({ maxAddresses: 100, now: () => now });
    for (let i = 0; i < 10_000; i++) {
      throttle.fail(`10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`);
      now += 1;
    }
    expect(throttle.size).toBeLessThanOrEqual(100);
  });

  it('counts an IPv6 /64 as one address, and an IPv4-mapped address as its IPv4 one', () => {
    const throttle = new AuthThrottle({ maxFailures: 2, now: () => 0 });
    throttle.fail('2001:db8:1:2::1');
    throttle.fail('2001:db8:1:2:ffff:ffff:ffff:ffff');
    expect(() => throttle.check('2001:db8:1:2:0:0:0:99')).toThrow(/too many/);
    expect(() => throttle.check('2001:db8:1:3::1')).not.toThrow();
    throttle.fail('::ffff:192.0.2.7');
    throttle.fail('192.0.2.7');
    expect(() => throttle.check('192.0.2.7')).toThrow(/too many/);
  });
});

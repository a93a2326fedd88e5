/**
 * The web dashboard's session (src/server/dashboard.ts) against hostile requests, over plain
 * HTTP (no browser): the login sets a cookie only for the right token; the `/api/` door takes the
 * cookie as the admin only with its CSRF token and the sidecar's own `Origin`; a forged, ended or
 * expired session is 401; `/ui` never hands out a file outside `ui/` nor the admin token. The
 * effect of refused actions is checked in the fabric, not only in the answer.
 */
import { readdirSync, statSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join, relative } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HttpDoor } from '../../src/rpc/http-door.js';
import { fabricServices } from '../../src/rpc/services.js';
import {
  CSRF_HEADER,
  Dashboard,
  DEFAULT_UI_DIR,
  SESSION_COOKIE,
} from '../../src/server/dashboard.js';
import type { GatewayLogEntry } from '../../src/gateway/gateway.js';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  ADMIN_TOKEN,
  agentToken,
  closeSidecar,
  startTestSidecar,
} from '../fixtures/gateway/harness.js';
import { rawRequest as raw, type RawAnswer as Answer } from '../fixtures/raw-http.js';

/** POSTs `body` to /ui/login with `headers` as given (no Origin unless named). */
function postLogin(base: URL, headers: Record<string, string>, body: string): Promise<Answer> {
  return raw(base, 'POST', '/ui/login', headers, body);
}

function setCookie(a: Answer): string[] {
  const v = a.headers['set-cookie'];
  return v === undefined ? [] : Array.isArray(v) ? v : [v];
}

/** The session id from a login answer's cookie. */
function sessionId(a: Answer): string {
  const cookie = setCookie(a)[0] ?? '';
  const m = new RegExp(`^${SESSION_COOKIE}=([^;]*)`).exec(cookie);
  if (!m) throw new Error(`no session cookie in ${cookie}`);
  return m[1]!;
}

/** Every file of the dashboard as its `/ui/…` path. */
function uiPaths(dir = DEFAULT_UI_DIR): string[] {
  const out: string[] = [];
  const walk = (d: string): void => {
    for (const name of readdirSync(d)) {
      const p = join(d, name);
      if (statSync(p).isDirectory()) walk(p);
      else out.push(`/ui/${relative(dir, p).split('\\').join('/')}`);
    }
  };
  walk(dir);
  return out;
}

describe('dashboard sessions against a real sidecar', () => {
  let sidecar: Sidecar;
  let base: URL;
  let origin: string;
  const logs: GatewayLogEntry[] = [];

  beforeAll(async () => {
    sidecar = await startTestSidecar(
      { upstreams: {}, agents: [{ name: 'victim' }] },
      { logger: (e) => void logs.push(e) },
    );
    base = new URL(sidecar.url!);
    origin = base.origin;
  });
  afterAll(() => closeSidecar(sidecar));

  const loginRaw = (headers: Record<string, string>, body: string): Promise<Answer> =>
    postLogin(base, headers, body);
  const login = (token: string, headers: Record<string, string> = {}): Promise<Answer> =>
    loginRaw({ 'content-type': 'application/json', origin, ...headers }, JSON.stringify({ token }));

  /** Logs in; the cookie header and CSRF token of the new session. */
  async function session(): Promise<{ cookie: string; csrf: string; id: string }> {
    const res = await login(ADMIN_TOKEN);
    expect(res.status).toBe(200);
    const id = sessionId(res);
    return {
      cookie: `${SESSION_COOKIE}=${id}`,
      csrf: (JSON.parse(res.body) as { csrf: string }).csrf,
      id,
    };
  }

  const apiCall = (
    method: string,
    body: unknown,
    headers: Record<string, string>,
  ): Promise<Answer> =>
    raw(
      base,
      'POST',
      `/api/fabric.v1.${method}`,
      { 'content-type': 'application/json', ...headers },
      JSON.stringify(body),
    );

  const victim = (): string => sidecar.agents.find((a) => a.name === 'victim')!.id;
  const victimStatus = async (): Promise<string> =>
    (await sidecar.fabric!.getAgentInfo(victim())).status;

  it('serves the dashboard files with a strict CSP, no inline script and never the admin token', async () => {
    const paths = uiPaths();
    expect(paths).toContain('/ui/index.html');
    expect(paths.some((p) => p.startsWith('/ui/views/'))).toBe(true);
    for (const path of [...paths, '/ui/']) {
      const res = await raw(base, 'GET', path);
      expect(res.status, path).toBe(200);
      expect(res.headers['content-security-policy']).toContain("script-src 'self'");
      expect(res.headers['content-security-policy']).not.toContain('unsafe-inline');
      expect(res.headers['x-content-type-options']).toBe('nosniff');
      expect(res.body).not.toContain(ADMIN_TOKEN);
    }
    const index = await raw(base, 'GET', '/ui/');
    expect(index.headers['content-type']).toMatch(/^text\/html/);
    // Every <script> loads a file of the sidecar's own; none carries code inline.
    const scripts = [...index.body.matchAll(/<script([^>]*)>([\s\S]*?)<\/script>/g)];
    expect(scripts.length).toBeGreaterThan(0);
    for (const [, attrs, code] of scripts) {
      expect(attrs).toMatch(/src="\/ui\//);
      expect(code!.trim()).toBe('');
    }
    expect(index.body).not.toMatch(/https?:\/\//); // no CDN
  });

  it('serves nothing outside ui/: dot segments, encoded ones and unknown files are 404', async () => {
    for (const path of [
      '/ui/%2e%2e/package.json',
      '/ui/..%2fpackage.json',
      '/ui/views/%2e%2e/%2e%2e/package.json',
      '/ui/nope.js',
      '/ui/index.html/',
    ]) {
      const res = await raw(base, 'GET', path);
      expect(res.status, path).toBe(404);
      expect(res.body).not.toContain('"name": "agent-fabric"');
    }
    expect((await raw(base, 'POST', '/ui/app.js')).status).toBe(404);
  });

  it('a wrong token answers 401 with a clear error and sets no cookie', async () => {
    const res = await login('not-the-admin-token-000000');
    expect(res.status).toBe(401);
    expect(setCookie(res)).toEqual([]);
    expect(JSON.parse(res.body)).toMatchObject({ error: { code: 'FABRIC_ERR_UNAUTHENTICATED' } });
    // An agent's credential is no admin's either.
    const agent = sidecar.agents.find((a) => a.name === 'victim')!.credential;
    const asAgent = await login(agent);
    expect(asAgent.status).toBe(401);
    expect(setCookie(asAgent)).toEqual([]);
  });

  it('refuses a login from another origin, without an Origin, or as a form post', async () => {
    const other = await login(ADMIN_TOKEN, { origin: `http://127.0.0.1:${Number(base.port) + 1}` });
    expect(other.status).toBe(403);
    expect(setCookie(other)).toEqual([]);
    const evil = await login(ADMIN_TOKEN, { origin: 'http://evil.example' });
    expect(evil.status).toBe(403);
    expect(setCookie(evil)).toEqual([]);
    const none = await loginRaw(
      { 'content-type': 'application/json' },
      JSON.stringify({ token: ADMIN_TOKEN }),
    );
    expect(none.status).toBe(403);
    const form = await loginRaw(
      { 'content-type': 'application/x-www-form-urlencoded', origin },
      `token=${ADMIN_TOKEN}`,
    );
    expect(form.status).toBe(400);
    expect(setCookie(form)).toEqual([]);
    const huge = await login('x'.repeat(100_000));
    expect(huge.status).toBe(413);
    const notJson = await loginRaw({ 'content-type': 'application/json', origin }, '{');
    expect(notJson.status).toBe(400);
  });

  it('the session cookie is HttpOnly, SameSite=Strict, Path=/ with a Max-Age; the answer holds no token', async () => {
    const res = await login(ADMIN_TOKEN);
    expect(res.status).toBe(200);
    const [cookie] = setCookie(res);
    const attrs = cookie!.split(';').map((s) => s.trim());
    expect(attrs).toContain('HttpOnly');
    expect(attrs).toContain('SameSite=Strict');
    expect(attrs).toContain('Path=/');
    expect(attrs.some((a) => /^Max-Age=\d+$/.test(a) && Number(a.slice(8)) > 0)).toBe(true);
    expect(attrs).not.toContain('Secure'); // plain HTTP here; see the TLS case below
    expect(sessionId(res)).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(res.body).not.toContain(ADMIN_TOKEN);
    expect(JSON.parse(res.body)).toEqual({
      admin: 'admin',
      csrf: expect.stringMatching(/^[A-Za-z0-9_-]{43}$/),
    });
  });

  it('the /api door takes the cookie with the CSRF token and the own Origin', async () => {
    const s = await session();
    const res = await apiCall(
      'FabricService/ListAgents',
      {},
      { cookie: s.cookie, [CSRF_HEADER]: s.csrf, origin },
    );
    expect(res.status).toBe(200);
    expect(JSON.parse(res.body).agents.map((a: { name: string }) => a.name)).toContain('victim');
  });

  it('without the CSRF token, with a wrong one, cross-origin or without Origin: 403 and nothing happens', async () => {
    const s = await session();
    const attempts: Record<string, string>[] = [
      { cookie: s.cookie, origin },
      { cookie: s.cookie, origin, [CSRF_HEADER]: '' },
      // Its last character changed (to one it is not: the token may end in A).
      {
        cookie: s.cookie,
        origin,
        [CSRF_HEADER]: `${s.csrf.slice(0, -1)}${s.csrf.endsWith('A') ? 'B' : 'A'}`,
      },
      { cookie: s.cookie, origin, [CSRF_HEADER]: s.id }, // the session id is not the CSRF token
      { cookie: s.cookie, [CSRF_HEADER]: s.csrf }, // no Origin
      { cookie: s.cookie, [CSRF_HEADER]: s.csrf, origin: `http://localhost:${base.port}` },
      {
        cookie: s.cookie,
        [CSRF_HEADER]: s.csrf,
        origin: `http://127.0.0.1:${Number(base.port) + 1}`,
      },
      { cookie: s.cookie, [CSRF_HEADER]: s.csrf, origin: `https://127.0.0.1:${base.port}` },
      { cookie: s.cookie, [CSRF_HEADER]: s.csrf, origin: 'null' },
    ];
    for (const headers of attempts) {
      const res = await apiCall('FabricService/TerminateAgent', { agentId: victim() }, headers);
      expect(res.status, JSON.stringify(headers)).toBe(403);
      expect(JSON.parse(res.body).code).toMatch(/FABRIC_ERR_(PERMISSION_DENIED|HOST_NOT_ALLOWED)/);
    }
    // The streams too: a watch is not opened without the token.
    const watch = await apiCall('EventService/Watch', {}, { cookie: s.cookie, origin });
    expect(watch.status).toBe(403);
    expect(await victimStatus()).not.toBe('TERMINATED');
  });

  it('a forged, logged-out or malformed session is 401; the cookie never reaches the agent services', async () => {
    const s = await session();
    for (const cookie of [
      `${SESSION_COOKIE}=${'A'.repeat(43)}`,
      `${SESSION_COOKIE}=`,
      `${SESSION_COOKIE}=${'x'.repeat(5000)}`,
      `${SESSION_COOKIE}=${s.id}x`,
    ]) {
      const res = await apiCall(
        'FabricService/TerminateAgent',
        { agentId: victim() },
        { cookie, [CSRF_HEADER]: s.csrf, origin },
      );
      expect(res.status, cookie.slice(0, 40)).toBe(401);
    }
    // Logout ends the session and clears the cookie; the old cookie is then 401.
    const noCsrf = await raw(base, 'POST', '/ui/logout', { cookie: s.cookie, origin });
    expect(noCsrf.status).toBe(403);
    const out = await raw(base, 'POST', '/ui/logout', {
      cookie: s.cookie,
      origin,
      [CSRF_HEADER]: s.csrf,
    });
    expect(out.status).toBe(200);
    expect(setCookie(out)[0]).toMatch(new RegExp(`^${SESSION_COOKIE}=;.*Max-Age=0`));
    const after = await apiCall(
      'FabricService/ListAgents',
      {},
      { cookie: s.cookie, [CSRF_HEADER]: s.csrf, origin },
    );
    expect(after.status).toBe(401);
    expect((await raw(base, 'GET', '/ui/session', { cookie: s.cookie })).status).toBe(401);
    // An admin session is no agent: the agent protocol refuses it.
    const s2 = await session();
    const hb = await apiCall(
      'AgentService/Heartbeat',
      {},
      { cookie: s2.cookie, [CSRF_HEADER]: s2.csrf, origin },
    );
    expect(hb.status).toBe(401);
    expect(await victimStatus()).not.toBe('TERMINATED');
  });

  it('a bearer header wins over the cookie: an agent credential with an admin cookie is still an agent', async () => {
    const s = await session();
    const agent = sidecar.agents.find((a) => a.name === 'victim')!.credential;
    const res = await apiCall(
      'FabricService/TerminateAgent',
      { agentId: victim() },
      { cookie: s.cookie, [CSRF_HEADER]: s.csrf, origin, authorization: `Bearer ${agent}` },
    );
    expect(res.status).toBe(403);
    expect(await victimStatus()).not.toBe('TERMINATED');
  });

  it('GET /ui/session tells a live session and its CSRF token, never the credential', async () => {
    const s = await session();
    const res = await raw(base, 'GET', '/ui/session', { cookie: s.cookie });
    expect(res.status).toBe(200);
    expect(JSON.parse(res.body)).toEqual({ admin: 'admin', csrf: s.csrf });
    expect((await raw(base, 'GET', '/ui/session')).status).toBe(401);
  });

  it('every /api and /ui answer — success, stream, error, 404, refused — is no-store and nosniff', async () => {
    const s = await session();
    const asAdmin = { cookie: s.cookie, [CSRF_HEADER]: s.csrf, origin };
    const answers: Record<string, Answer> = {
      // A spawned agent's answer holds its credential: no cache may keep it.
      spawn: await apiCall(
        'FabricService/SpawnAgent',
        { name: 'cached', model: 'm', executor: 'remote' },
        asAdmin,
      ),
      unary: await apiCall('FabricService/ListAgents', {}, asAdmin),
      stream: await apiCall('EventService/Watch', {}, { ...asAdmin, 'connect-timeout-ms': '50' }),
      unauthenticated: await apiCall('FabricService/ListAgents', {}, {}),
      csrf: await apiCall('FabricService/ListAgents', {}, { cookie: s.cookie, origin }),
      badBody: await apiCall('FabricService/ListAgents', [1], asAdmin),
      noMethod: await apiCall('FabricService/NoSuchMethod', {}, asAdmin),
      hostRefused: await raw(base, 'POST', '/api/fabric.v1.FabricService/ListAgents', {
        host: 'evil.example',
        'content-type': 'application/json',
      }),
      uiMissing: await raw(base, 'GET', '/ui/no-such-file.js'),
      uiSession: await raw(base, 'GET', '/ui/session'),
      uiLogin: await login('not-the-admin-token-000000'),
    };
    expect(answers.spawn!.body).toContain('afk_');
    for (const [name, res] of Object.entries(answers)) {
      expect(res.headers['cache-control'], name).toBe('no-store');
      expect(res.headers['x-content-type-options'], name).toBe('nosniff');
    }
  });

  it('a cookie tossed by another port of the same host (Path=/api) does not shadow the session', async () => {
    // A page on http://127.0.0.1:<any port> may set cookies for 127.0.0.1 (cookies ignore the
    // port); one with a longer Path is sent first. It must not log the operator out.
    const s = await session();
    // A browser keeps about 180 cookies per host: the page can set dozens, each for a longer path.
    const tossed = [
      ...Array.from({ length: 40 }, (_, i) => `${SESSION_COOKIE}=tossed-by-another-port-${i}`),
      s.cookie,
    ].join('; ');
    const res = await apiCall(
      'FabricService/ListAgents',
      {},
      { cookie: tossed, [CSRF_HEADER]: s.csrf, origin },
    );
    expect(res.status, res.body).toBe(200);
    const read = await raw(base, 'GET', '/ui/session', { cookie: tossed });
    expect(read.status, read.body).toBe(200);
    expect(JSON.parse(read.body)).toEqual({ admin: 'admin', csrf: s.csrf });
    const out = await raw(base, 'POST', '/ui/logout', {
      cookie: tossed,
      [CSRF_HEADER]: s.csrf,
      origin,
    });
    expect(out.status, out.body).toBe(200);
    // Logged out for real: the session is gone on the server.
    const after = await apiCall(
      'FabricService/ListAgents',
      {},
      { cookie: s.cookie, [CSRF_HEADER]: s.csrf, origin },
    );
    expect(after.status).toBe(401);
    // Only tossed values: still 401, as a forged session.
    expect((await raw(base, 'GET', '/ui/session', { cookie: `${SESSION_COOKIE}=x` })).status).toBe(
      401,
    );
  });

  it('an agent credential cannot log in to the dashboard', async () => {
    const res = await login(agentToken(sidecar, 'victim'));
    expect(res.status).toBe(401);
    expect(setCookie(res)).toEqual([]);
  });

  it('the admin token never appears in the sidecar log after all of this', () => {
    expect(logs.length).toBeGreaterThan(0);
    expect(JSON.stringify(logs)).not.toContain(ADMIN_TOKEN);
  });
});

describe('dashboard sessions: expiry, the session cap and TLS cookies (a door over a real fabric)', () => {
  let sidecar: Sidecar;
  let server: Server;
  let base: URL;
  let now = 1_000_000;
  let tls = false;
  let dashboard: Dashboard;

  beforeAll(async () => {
    sidecar = await startTestSidecar({ upstreams: {} });
    const fabric = sidecar.fabric!;
    const make = (): Dashboard =>
      new Dashboard({
        authenticateAdmin: (c) => {
          const id = fabric.authenticate(c);
          return id.kind === 'admin' ? id.name : undefined;
        },
        tls,
        sessionTtlMs: 60_000,
        maxSessions: 2,
        now: () => now,
      });
    dashboard = make();
    const door = new HttpDoor({
      fabric,
      services: fabricServices(fabric),
      sessionCaller: (req) => dashboard.sessionCaller(req),
    });
    server = createServer((req, res) => {
      const path = new URL(req.url!, 'http://x').pathname;
      if (door.owns(path)) void door.handle(req, res, path);
      else if (dashboard.owns(path)) void dashboard.handle(req, res, path);
      else res.writeHead(404).end();
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    base = new URL(`http://127.0.0.1:${(server.address() as AddressInfo).port}/`);
    // A second dashboard over TLS settings (the cookie's attributes do not need a TLS socket).
    tls = true;
    tlsDashboard = make();
  });
  let tlsDashboard: Dashboard;
  afterAll(async () => {
    await new Promise<void>((r) => server.close(() => r()));
    await closeSidecar(sidecar);
  });

  const login = (origin = base.origin): Promise<Answer> =>
    postLogin(
      base,
      { 'content-type': 'application/json', origin },
      JSON.stringify({ token: ADMIN_TOKEN }),
    );

  it('a session expires after its life: 401 at the door and at /ui/session', async () => {
    const res = await login();
    const cookie = `${SESSION_COOKIE}=${sessionId(res)}`;
    const csrf = (JSON.parse(res.body) as { csrf: string }).csrf;
    const list = (): Promise<Answer> =>
      raw(
        base,
        'POST',
        '/api/fabric.v1.FabricService/ListAgents',
        { 'content-type': 'application/json', cookie, [CSRF_HEADER]: csrf, origin: base.origin },
        '{}',
      );
    expect((await list()).status).toBe(200);
    now += 59_999;
    expect((await list()).status).toBe(200);
    now += 1;
    expect((await list()).status).toBe(401);
    expect((await raw(base, 'GET', '/ui/session', { cookie })).status).toBe(401);
    expect(dashboard.sessionCount).toBe(0);
  });

  it('at most maxSessions live at once: a new login ends the oldest', async () => {
    const ids = [];
    for (let i = 0; i < 3; i++) ids.push(sessionId(await login()));
    expect(dashboard.sessionCount).toBe(2);
    const state = async (id: string): Promise<number> =>
      (await raw(base, 'GET', '/ui/session', { cookie: `${SESSION_COOKIE}=${id}` })).status;
    expect(await state(ids[0]!)).toBe(401);
    expect(await state(ids[1]!)).toBe(200);
    expect(await state(ids[2]!)).toBe(200);
  });

  it('without its ui/ folder the dashboard answers 404 saying so; sessions still work', async () => {
    const swap = dashboard;
    dashboard = new Dashboard({
      authenticateAdmin: () => 'admin',
      tls: false,
      dir: join(DEFAULT_UI_DIR, 'no-such-folder'),
    });
    try {
      const res = await raw(base, 'GET', '/ui/');
      expect(res.status).toBe(404);
      expect(JSON.parse(res.body).error.message).toContain('not installed');
      expect((await login()).status).toBe(200);
    } finally {
      dashboard = swap;
    }
  });

  it('over TLS the cookie is Secure and only the https origin may log in', async () => {
    const swap = dashboard;
    dashboard = tlsDashboard;
    try {
      const plain = await login();
      expect(plain.status).toBe(403);
      const res = await login(`https://127.0.0.1:${base.port}`);
      expect(res.status).toBe(200);
      expect(
        setCookie(res)[0]!
          .split(';')
          .map((s) => s.trim()),
      ).toContain('Secure');
    } finally {
      dashboard = swap;
    }
  });
});

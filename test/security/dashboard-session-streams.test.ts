/**
 * What a dashboard session opened at the `/api/` door ends with it, against a real sidecar over
 * raw HTTP on the test's clock (`SidecarOptions.dashboard.now`): a stream (`EventService/Watch`,
 * which carries approval arguments and tool calls) or a unary call still waiting (`WaitTask`)
 * authorized by a session's cookie ends when the session does — logout, 30 minutes idle, 8 hours
 * of life, evicted by newer logins past the cap — with the door's stream-end error (or answer)
 * `FABRIC_ERR_UNAUTHENTICATED`, while the admin's bearer streams on the same sidecar go on. The
 * dashboard notices expiry without a request: its sweep (every `sweepMs`, here 10 ms) reads the
 * same clock, so a test moves the clock and waits for the stream's end line.
 */
import { request, type ClientRequest } from 'node:http';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { CSRF_HEADER, SESSION_COOKIE } from '../../src/server/dashboard.js';
import type { Sidecar } from '../../src/server/sidecar.js';
import { ADMIN_TOKEN, closeSidecar, startTestSidecar } from '../fixtures/gateway/harness.js';
import { rawRequest } from '../fixtures/raw-http.js';

/** One raw JSON POST: its status and body. */
const raw = (base: URL, path: string, headers: Record<string, string>, body = '{}') =>
  rawRequest(base, 'POST', path, { 'content-type': 'application/json', ...headers }, body);

const MINUTE = 60_000;
/** How long a test waits for what must happen at once (a sweep is every 10 ms). */
const PROMPTLY_MS = 5_000;

interface Line {
  message?: Record<string, unknown>;
  end?: { error?: { code?: string; kind?: string } };
}

/** An open NDJSON stream: its status, the lines so far, and when the server ended it. */
interface Stream {
  status: number;
  lines: Line[];
  /** Resolves when the response ends (or the connection closes). */
  ended: Promise<void>;
  isEnded: () => boolean;
  close: () => void;
}

function openStream(base: URL, path: string, headers: Record<string, string>): Promise<Stream> {
  return new Promise((resolve, reject) => {
    let req: ClientRequest | undefined = undefined;
    req = request(
      new URL(path, base),
      {
        method: 'POST',
        headers: { 'content-type': 'application/json', ...headers },
        agent: false,
      },
      (res) => {
        const lines: Line[] = [];
        let buffered = '';
        let done = false;
        const ended = new Promise<void>((r) => {
          const finish = (): void => {
            done = true;
            r();
          };
          res.on('end', finish);
          res.on('close', finish);
          res.on('error', finish);
        });
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => {
          buffered += chunk;
          let nl: number;
          while ((nl = buffered.indexOf('\n')) >= 0) {
            const text = buffered.slice(0, nl);
            buffered = buffered.slice(nl + 1);
            if (text !== '') lines.push(JSON.parse(text) as Line);
          }
        });
        resolve({
          status: res.statusCode!,
          lines,
          ended,
          isEnded: () => done,
          close: () => req!.destroy(),
        });
      },
    );
    req.on('error', reject);
    req.end('{}');
  });
}

/** `promise`, or a failure naming `what` when it has not settled within {@link PROMPTLY_MS}. */
async function promptly<T>(promise: Promise<T>, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_r, reject) => {
        timer = setTimeout(
          () => reject(new Error(`${what}: not within ${PROMPTLY_MS} ms`)),
          PROMPTLY_MS,
        );
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

describe('a dashboard session’s streams and calls end with the session', () => {
  let sidecar: Sidecar;
  let base: URL;
  let origin: string;
  let now = Date.UTC(2026, 11, 4, 12);
  const opened: Stream[] = [];

  beforeAll(async () => {
    sidecar = await startTestSidecar(
      { upstreams: {}, agents: [{ name: 'worker' }] },
      { dashboard: { now: () => now, sweepMs: 10, maxSessions: 3 } },
    );
    base = new URL(sidecar.url!);
    origin = base.origin;
  });
  afterAll(async () => {
    for (const s of opened) s.close();
    await closeSidecar(sidecar);
  });

  /** Logs in: the headers a page sends with its session at `/api/`, and its logout. */
  async function session(): Promise<{
    headers: Record<string, string>;
    logout: () => Promise<number>;
  }> {
    const res = await raw(base, '/ui/login', { origin }, JSON.stringify({ token: ADMIN_TOKEN }));
    expect(res.status).toBe(200);
    const cookie = String(res.headers['set-cookie']).split(';')[0]!;
    expect(cookie.startsWith(`${SESSION_COOKIE}=`)).toBe(true);
    const csrf = (JSON.parse(res.body) as { csrf: string }).csrf;
    const headers = { cookie, [CSRF_HEADER]: csrf, origin };
    return { headers, logout: async () => (await raw(base, '/ui/logout', headers, '')).status };
  }

  async function watch(headers: Record<string, string>): Promise<Stream> {
    const s = await openStream(base, '/api/fabric.v1.EventService/Watch', headers);
    opened.push(s);
    expect(s.status).toBe(200);
    return s;
  }

  const bearerWatch = (): Promise<Stream> => watch({ authorization: `Bearer ${ADMIN_TOKEN}` });

  /** The stream ended with the door's end line FABRIC_ERR_UNAUTHENTICATED. */
  async function endsUnauthenticated(s: Stream, what: string, why: string): Promise<void> {
    await promptly(s.ended, what);
    expect(s.lines.at(-1)).toEqual({
      end: {
        error: expect.objectContaining({
          code: 'FABRIC_ERR_UNAUTHENTICATED',
          kind: 'unauthenticated',
          message: expect.stringContaining(why) as unknown,
        }) as unknown,
      },
    });
  }

  /** The bearer stream is still open and still gets events (a spawn is one). */
  async function goesOn(s: Stream, name: string): Promise<void> {
    expect(s.isEnded()).toBe(false);
    const before = s.lines.length;
    const res = await raw(
      base,
      '/api/fabric.v1.FabricService/SpawnAgent',
      { authorization: `Bearer ${ADMIN_TOKEN}` },
      JSON.stringify({ name, model: 'm', executor: 'remote' }),
    );
    expect(res.status).toBe(200);
    await vi.waitFor(() => expect(s.lines.length).toBeGreaterThan(before), {
      timeout: PROMPTLY_MS,
    });
    expect(s.lines.slice(before).every((l) => l.message !== undefined)).toBe(true);
    expect(s.isEnded()).toBe(false);
  }

  it('logout ends the session’s stream and its waiting unary call with FABRIC_ERR_UNAUTHENTICATED; a bearer stream goes on', async () => {
    const s = await session();
    const bearer = await bearerWatch();
    const stream = await watch(s.headers);
    // A call that waits: WaitTask on a task nobody runs.
    const scheduled = await raw(
      base,
      '/api/fabric.v1.FabricService/ScheduleTask',
      s.headers,
      JSON.stringify({
        agentId: sidecar.fabric!.lifecycle.listAgents()[0]!.id,
        taskType: 'never-run',
      }),
    );
    expect(scheduled.status).toBe(200);
    const taskId = (JSON.parse(scheduled.body) as { task: { taskId: string } }).task.taskId;
    const waiting = raw(
      base,
      '/api/fabric.v1.FabricService/WaitTask',
      s.headers,
      JSON.stringify({ taskId, timeout: '60s' }),
    );
    waiting.catch(() => undefined); // awaited below; not unhandled if a test fails first
    // Logged out only once the call waits (a spawn's resolver counts as one already).
    const waiters = sidecar.fabric!.scheduler.waiterCount(taskId);
    await vi.waitFor(() => expect(sidecar.fabric!.scheduler.waiterCount(taskId)).toBe(waiters + 1));
    expect(await s.logout()).toBe(200);
    await endsUnauthenticated(stream, 'the logged-out session’s stream ended', 'logged out');
    const answer = await promptly(waiting, 'the logged-out session’s WaitTask answered');
    expect(answer.status).toBe(401);
    expect((JSON.parse(answer.body) as { code: string }).code).toBe('FABRIC_ERR_UNAUTHENTICATED');
    await goesOn(bearer, 'after-logout');
    bearer.close();
  });

  it('a session logged out while a call’s body is read: the call is 401, no stream starts', async () => {
    const s = await session();
    const answer = new Promise<{ status: number; body: string }>((resolve, reject) => {
      const req = request(
        new URL('/api/fabric.v1.EventService/Watch', base),
        {
          method: 'POST',
          headers: { 'content-type': 'application/json', ...s.headers },
          agent: false,
        },
        (res) => {
          // A stream that started (200): its status is the answer.
          if (res.statusCode === 200) {
            resolve({ status: 200, body: '' });
            req.destroy();
            return;
          }
          let text = '';
          res.setEncoding('utf8');
          res.on('data', (c: string) => (text += c));
          res.on('end', () => resolve({ status: res.statusCode!, body: text }));
        },
      );
      req.on('error', reject);
      // The headers now (the session checked), the body after the logout.
      req.flushHeaders();
      void s.logout().then((status) => {
        expect(status).toBe(200);
        req.end('{}');
      }, reject);
    });
    const { status, body } = await promptly(answer, 'the call was answered');
    expect(status).toBe(401);
    expect((JSON.parse(body) as { code: string }).code).toBe('FABRIC_ERR_UNAUTHENTICATED');
  });

  it('30 idle minutes end the session’s stream without any request; a bearer stream goes on', async () => {
    const s = await session();
    const bearer = await bearerWatch();
    const stream = await watch(s.headers);
    now += 29 * MINUTE;
    // No sweep ends it early: a later event still arrives on it.
    await goesOn(stream, 'idle-29');
    now += MINUTE;
    await endsUnauthenticated(stream, 'the idle session’s stream ended', 'idle');
    await goesOn(bearer, 'after-idle');
    bearer.close();
  });

  it('8 hours end an active session’s stream', async () => {
    const s = await session();
    const stream = await watch(s.headers);
    for (let t = 0; t < 8 * 60 - 20; t += 20) {
      now += 20 * MINUTE;
      const res = await raw(base, '/api/fabric.v1.FabricService/ListAgents', s.headers);
      expect(res.status).toBe(200);
    }
    expect(stream.isEnded()).toBe(false);
    now += 20 * MINUTE;
    await endsUnauthenticated(stream, 'the 8-hour session’s stream ended', 'its life');
  });

  it('a session evicted by newer logins past the cap ends its stream', async () => {
    now += 10 * MINUTE;
    const first = await session();
    const stream = await watch(first.headers);
    // The cap is 3 here: three more logins end the first one.
    await session();
    await session();
    await session();
    await endsUnauthenticated(stream, 'the evicted session’s stream ended', 'newer logins');
    const res = await raw(base, '/api/fabric.v1.FabricService/ListAgents', first.headers);
    expect(res.status).toBe(401);
  });
});

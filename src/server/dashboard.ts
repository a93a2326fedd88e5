/**
 * The web dashboard (`/ui` on the sidecar's HTTP port): its static files and its admin sessions.
 *
 * **Files.** The dashboard is plain ES modules and CSS in the package's top-level `ui/` folder
 * (no build step, no CDN). They are read once when the sidecar starts and served from memory:
 * only the files found then, by exact path, so nothing else on disk can be reached through
 * `/ui/`. Every `/ui` answer carries a Content-Security-Policy that allows scripts, styles and
 * connections from the sidecar's own origin only (no inline script, no `eval`), and
 * `frame-ancestors 'none'`.
 *
 * **Sessions.** `POST /ui/login` with `{"token": "<admin credential>"}` (JSON: a cross-site HTML
 * form cannot send that content type) checks the credential like every door does; a right one
 * starts a session: a random 256-bit id in the cookie `fabric_session` (`HttpOnly;
 * SameSite=Strict; Path=/`, `Secure` over TLS, `Max-Age` the session's life) and a random CSRF
 * token in the answer. The server keeps only the SHA-256 of the id, with the admin's name, the
 * CSRF token and the expiry — never the credential. A wrong credential answers 401 and sets no
 * cookie. `GET /ui/session` tells the page whether its cookie is a live session (and its CSRF
 * token, after a reload); `POST /ui/logout` ends it and clears the cookie.
 *
 * **The cookie at the `/api/` door** (see {@link Dashboard.sessionCaller}): a request without an
 * `authorization` header but with the session cookie is the admin only when (1) the session is
 * known and not expired (else 401; of several `fabric_session` cookies the first live one counts,
 * so one that a page on another port of this host set for a longer path cannot hide it), (2) it carries the session's CSRF token in
 * `x-fabric-csrf` (a header a cross-site form cannot set, and a cross-site `fetch` cannot send
 * without a CORS preflight this server never grants; else 403) and (3) its `Origin` is the
 * sidecar's own origin — the scheme it serves and the request's `Host` (else 403). An
 * `authorization` header, when present, is used instead and the cookie is ignored.
 *
 * Sessions last {@link DashboardOptions.sessionTtlMs} from login (absolute, not sliding), and end
 * sooner after {@link DashboardOptions.sessionIdleMs} without activity: a request of the `/api/`
 * door that passed the session's checks (cookie, CSRF token, `Origin`) and does not carry
 * `x-fabric-background: 1` ({@link BACKGROUND_HEADER}), which the page sets on what it fetches
 * while hidden. So an open, visible page keeps its session (it re-reads its views every 5 s); a
 * closed tab, or one left in the background, ends it after the idle time. `GET /ui/session` is
 * no activity (any same-site page can send it). At most {@link DashboardOptions.maxSessions} live
 * at once (a new login then ends the oldest).
 *
 * **What a session authorized ends with it.** The `/api/` door holds each call a session's cookie
 * authorized — a stream (`EventService/Watch`, `ApprovalService/Watch`) or a unary call still in
 * flight — on the session ({@link SessionCaller.hold}); when the session ends (logout, idle, its
 * life, evicted by a newer login past the cap) each ends with
 * `FABRIC_ERR_UNAUTHENTICATED` (a stream's `end` line, a unary call's 401). Idle and life expiry
 * are noticed without a request: every {@link DashboardOptions.sweepMs} (1 s) while a session
 * lives, a sweep on the sessions' clock ends those that are over. So a stolen cookie's stream
 * stops receiving events when the operator logs out or the session times out.
 *
 * **Failed logins** count against the client's address in the {@link DashboardOptions.throttle}
 * (server/auth-throttle.ts): past the bound a login is 429
 * `FABRIC_ERR_AUTH_THROTTLED` with `Retry-After`, the right token included.
 *
 * @module
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { extname, join, relative, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { IncomingMessage, ServerResponse } from 'node:http';
import {
  AuthThrottledError,
  ConfigError,
  InvalidArgumentError,
  PermissionDeniedError,
  RouteNotFoundError,
  UnauthenticatedError,
} from '../errors.js';
import { closesConnection, readBody } from '../gateway/http-body.js';
import { httpErrorBody, httpStatusOf } from '../gateway/map-error.js';
import type { AuthThrottle } from './auth-throttle.js';
import { parseAuthority, parseOrigin } from './host-guard.js';

/** Path prefix of the dashboard. */
export const UI_PATH = '/ui';
/** Name of the session cookie. */
export const SESSION_COOKIE = 'fabric_session';
/** Request header that must carry the session's CSRF token. */
export const CSRF_HEADER = 'x-fabric-csrf';
/** Default of {@link DashboardOptions.sessionTtlMs}: 8 hours. */
export const DEFAULT_SESSION_TTL_MS = 8 * 60 * 60 * 1000;
/** Default of {@link DashboardOptions.sessionIdleMs}: 30 minutes. */
export const DEFAULT_SESSION_IDLE_MS = 30 * 60 * 1000;
/**
 * Request header the page sets (`1`) on what it fetches while hidden: such a request is served
 * but is no activity of its session (see {@link DashboardOptions.sessionIdleMs}).
 */
export const BACKGROUND_HEADER = 'x-fabric-background';
/** Default of {@link DashboardOptions.maxSessions}. */
export const DEFAULT_MAX_SESSIONS = 256;
/** Default of {@link DashboardOptions.sweepMs}: 1 second. */
export const DEFAULT_SESSION_SWEEP_MS = 1000;
/** Largest login body. */
const MAX_LOGIN_BYTES = 4096;
/** Time a client has to send the login body. */
const LOGIN_BODY_TIMEOUT_MS = 10_000;

/** The dashboard's files: `ui/` at the package's top level, from `src/server` or `dist/server`. */
export const DEFAULT_UI_DIR = fileURLToPath(new URL('../../ui/', import.meta.url));

/** What `/ui` answers carry besides their content type. */
export const UI_SECURITY_HEADERS: Readonly<Record<string, string>> = Object.freeze({
  'content-security-policy':
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
  'x-content-type-options': 'nosniff',
  'x-frame-options': 'DENY',
  'referrer-policy': 'no-referrer',
  'cache-control': 'no-store',
});

const CONTENT_TYPES: Readonly<Record<string, string>> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.ico': 'image/x-icon',
};

/** Options of a {@link Dashboard}. */
export interface DashboardOptions {
  /**
   * Maps a credential to the admin's name; throws (or returns undefined) for anything that is not
   * an admin credential.
   */
  authenticateAdmin(credential: string): string | undefined;
  /** The server speaks TLS: cookies get `Secure`, the expected origin is `https://`. */
  tls: boolean;
  /** Folder of the files. @default the package's `ui/` */
  dir?: string;
  /** Life of a session from login. @default 8 hours */
  sessionTtlMs?: number;
  /**
   * A session ends this long after its last activity: a request with the session at the `/api/`
   * door without {@link BACKGROUND_HEADER}. @default 30 minutes
   */
  sessionIdleMs?: number;
  /** Where failed logins count. @default none: no bound */
  throttle?: AuthThrottle | undefined;
  /** Sessions alive at once. @default 256 */
  maxSessions?: number;
  /**
   * Clock in ms (tests): then the only one. By default a session's life and idle time are judged
   * by both elapsed time (`performance.now()`) and the wall clock, and end when either says so:
   * a wall clock set back does not lengthen them, nor does a suspend of the machine.
   */
  now?: () => number;
  /**
   * How often the sessions are checked for their end (idle or past their life) while any is
   * live, so that what a session authorized ends without waiting for its next request. Reads
   * {@link now}. @default 1000
   */
  sweepMs?: number;
}

/**
 * The admin a request acts as through its session cookie, and what ties a call to that session:
 * `hold(end)` registers a call (a stream, or a unary call in flight) that `end` ends, with
 * `FABRIC_ERR_UNAUTHENTICATED`, when the session ends (logout, idle, life, evicted); it returns
 * what removes the call (idempotent). It throws that error when the session has ended already
 * (between the request's check and the call's start: logged out while the body was read).
 */
export interface SessionCaller {
  readonly admin: string;
  hold(end: (reason: UnauthenticatedError) => void): () => void;
}

/**
 * A moment on both clocks a session is judged by: elapsed time (`performance.now()`) and the
 * wall clock. A session is over when either says so — a wall clock set back does not lengthen
 * it, and neither does a suspend of the machine (the monotonic clock stands still meanwhile).
 */
interface Moment {
  readonly mono: number;
  readonly wall: number;
}

interface Session {
  readonly admin: string;
  readonly csrf: string;
  readonly loginAt: Moment;
  /** Its last activity (login, or a foreground request at the `/api/` door). */
  activeAt: Moment;
  /** The calls it authorized that are still open; ended with it. */
  readonly calls: Set<(reason: UnauthenticatedError) => void>;
  /** Why it ended, once it has. */
  ended?: string;
}

interface StaticFile {
  readonly body: Buffer;
  readonly type: string;
}

/** Reads every servable file under `dir` (one level of subfolders deep is enough for views). */
function readFiles(dir: string): Map<string, StaticFile> {
  const files = new Map<string, StaticFile>();
  const walk = (folder: string, depth: number): void => {
    for (const name of readdirSync(folder)) {
      if (name.startsWith('.')) continue;
      const path = join(folder, name);
      const st = statSync(path);
      if (st.isDirectory()) {
        if (depth < 2) walk(path, depth + 1);
        continue;
      }
      const type = CONTENT_TYPES[extname(name)];
      if (type === undefined) continue;
      const rel = relative(dir, path).split(sep).join('/');
      files.set(`${UI_PATH}/${rel}`, { body: readFileSync(path), type });
    }
  };
  try {
    walk(dir, 0);
  } catch (error) {
    // A package without its ui/ folder still serves everything else; /ui then answers 404.
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
  }
  return files;
}

function sha256(text: string): string {
  return createHash('sha256').update(text).digest('hex');
}

/** What a call a session authorized ends with when the session ends. */
function endedError(why: string): UnauthenticatedError {
  return new UnauthenticatedError(`the dashboard session this call was made with ended (${why})`);
}

function sameSecret(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}

/**
 * The values of cookie `name` in `req`, in the order sent. A browser sends every cookie of that
 * name whose path matches, the longest path first, and cookies ignore the port: a page on another
 * port of the same host can set dozens (a browser keeps about 180 per host), each for a longer
 * path than `/`. All are returned: the header is bounded by the server's header size (16 KiB),
 * and a value longer than a session id is dismissed without hashing.
 */
export function cookieValues(req: IncomingMessage, name: string): string[] {
  const header = req.headers.cookie;
  const values: string[] = [];
  if (header === undefined) return values;
  for (const part of header.split(';')) {
    const eq = part.indexOf('=');
    if (eq < 0) continue;
    if (part.slice(0, eq).trim() !== name) continue;
    values.push(part.slice(eq + 1).trim());
  }
  return values;
}

function send(
  res: ServerResponse,
  status: number,
  body: string | Buffer,
  type: string,
  extra: Record<string, string | string[]> = {},
): void {
  res.writeHead(status, {
    ...UI_SECURITY_HEADERS,
    'content-type': type,
    'content-length': Buffer.byteLength(body),
    ...extra,
  });
  res.end(body);
}

/** The dashboard's files and sessions; the HTTP server routes `/ui` and `/ui/…` here. */
export class Dashboard {
  readonly #files: Map<string, StaticFile>;
  readonly #sessions = new Map<string, Session>();
  readonly #authenticateAdmin: (credential: string) => string | undefined;
  readonly #tls: boolean;
  readonly #ttlMs: number;
  readonly #idleMs: number;
  readonly #throttle: AuthThrottle | undefined;
  readonly #maxSessions: number;
  readonly #now: () => Moment;
  readonly #sweepMs: number;
  #sweep: NodeJS.Timeout | undefined;
  #closed = false;

  constructor(options: DashboardOptions) {
    this.#files = readFiles(options.dir ?? DEFAULT_UI_DIR);
    this.#authenticateAdmin = options.authenticateAdmin;
    this.#tls = options.tls;
    this.#ttlMs = options.sessionTtlMs ?? DEFAULT_SESSION_TTL_MS;
    this.#idleMs = options.sessionIdleMs ?? DEFAULT_SESSION_IDLE_MS;
    this.#throttle = options.throttle;
    this.#maxSessions = options.maxSessions ?? DEFAULT_MAX_SESSIONS;
    const now = options.now;
    this.#now =
      now === undefined
        ? () => ({ mono: performance.now(), wall: Date.now() })
        : () => {
            const t = now();
            return { mono: t, wall: t };
          };
    this.#sweepMs = options.sweepMs ?? DEFAULT_SESSION_SWEEP_MS;
    if (!Number.isSafeInteger(this.#sweepMs) || this.#sweepMs < 1) {
      throw new ConfigError('dashboard.sweepMs', 'must be a positive integer of milliseconds');
    }
  }

  /**
   * Stops the sweep: the server stops (its door ends the streams; unary calls in flight finish
   * as a graceful stop lets them). Sessions still end when a request finds them over.
   */
  close(): void {
    this.#closed = true;
    clearInterval(this.#sweep);
    this.#sweep = undefined;
  }

  /** The dashboard's files were found (`ui/` ships in the package). */
  get installed(): boolean {
    return this.#files.size > 0;
  }

  /** Sessions alive now. */
  get sessionCount(): number {
    this.#prune();
    return this.#sessions.size;
  }

  /** True when `pathname` is the dashboard's to answer. */
  owns(pathname: string): boolean {
    return pathname === UI_PATH || pathname.startsWith(`${UI_PATH}/`);
  }

  /** Answers one `/ui` request; never rejects. */
  async handle(req: IncomingMessage, res: ServerResponse, pathname: string): Promise<void> {
    try {
      if (pathname === `${UI_PATH}/login`) return await this.#login(req, res);
      if (pathname === `${UI_PATH}/logout`) return this.#logout(req, res);
      if (pathname === `${UI_PATH}/session`) return this.#session(req, res);
      if (req.method !== 'GET' && req.method !== 'HEAD') {
        throw new RouteNotFoundError(req.method ?? '', pathname, 'the dashboard serves GET');
      }
      if (pathname === UI_PATH) {
        res.writeHead(308, { ...UI_SECURITY_HEADERS, location: `${UI_PATH}/` }).end();
        return;
      }
      const file = this.#files.get(pathname === `${UI_PATH}/` ? `${UI_PATH}/index.html` : pathname);
      if (file === undefined) {
        throw new RouteNotFoundError(
          'GET',
          pathname,
          this.#files.size === 0 ? 'the dashboard files (ui/) are not installed' : 'no such file',
        );
      }
      send(res, 200, req.method === 'HEAD' ? '' : file.body, file.type);
    } catch (error) {
      this.refuse(req, res, error);
    }
  }

  /** Answers `error` as `{ error: { code, kind, message, details } }` with its catalog status. */
  refuse(req: IncomingMessage, res: ServerResponse, error: unknown): void {
    if (res.headersSent) {
      res.destroy();
      return;
    }
    const close = !req.complete || closesConnection(error);
    send(res, httpStatusOf(error), JSON.stringify(httpErrorBody(error)), 'application/json', {
      ...(close ? { connection: 'close' } : {}),
      ...(error instanceof AuthThrottledError
        ? { 'retry-after': String(error.retryAfterSeconds) }
        : {}),
    });
  }

  /**
   * The admin a request to the `/api/` door acts as through its session cookie: undefined when it
   * has no session cookie (then the door's bearer rules apply).
   * @throws UnauthenticatedError when the cookie names no live session;
   *   PermissionDeniedError when the CSRF token or the `Origin` is missing or wrong.
   */
  sessionCaller(req: IncomingMessage): SessionCaller | undefined {
    const ids = cookieValues(req, SESSION_COOKIE);
    if (ids.length === 0) return undefined;
    const { session } = this.#requireSession(req, ids);
    // What a hidden page fetches on its own keeps no session alive.
    if (req.headers[BACKGROUND_HEADER] !== '1') session.activeAt = this.#now();
    return {
      admin: session.admin,
      hold: (end) => {
        if (session.ended !== undefined) throw endedError(session.ended);
        session.calls.add(end);
        return () => void session.calls.delete(end);
      },
    };
  }

  /**
   * The live session among the request's session cookies — the first that names one: a cookie
   * of the same name that another port of this host set (with a longer path, so sent first)
   * does not hide the operator's session.
   */
  #live(ids: readonly string[]): { id: string; session: Session } | undefined {
    for (const id of ids) {
      const session = this.#lookup(id);
      if (session !== undefined) return { id, session };
    }
    return undefined;
  }

  #requireSession(req: IncomingMessage, ids: readonly string[]): { id: string; session: Session } {
    const live = this.#live(ids);
    if (live === undefined) {
      throw new UnauthenticatedError('the dashboard session is unknown or expired: log in again');
    }
    this.#requireSameOrigin(req);
    const csrf = req.headers[CSRF_HEADER];
    if (typeof csrf !== 'string' || !sameSecret(csrf, live.session.csrf)) {
      throw new PermissionDeniedError(
        `a request with the dashboard session must carry its CSRF token in ${CSRF_HEADER}`,
        { reason: 'csrf' },
      );
    }
    return live;
  }

  /** The request's `Origin` must be this server's own: its scheme and the request's `Host`. */
  #requireSameOrigin(req: IncomingMessage): void {
    const origin = req.headers.origin;
    const host = parseAuthority(req.headers.host ?? '');
    const parsed = typeof origin === 'string' ? parseOrigin(origin) : undefined;
    const scheme = this.#tls ? 'https' : 'http';
    const defaultPort = this.#tls ? 443 : 80;
    if (
      parsed === undefined ||
      parsed === 'null' ||
      host === undefined ||
      parsed.scheme !== scheme ||
      parsed.host !== host.host ||
      parsed.port !== (host.port ?? defaultPort)
    ) {
      throw new PermissionDeniedError(
        'a dashboard request must come from the dashboard’s own origin',
        { reason: 'origin' },
      );
    }
  }

  #lookup(id: string): Session | undefined {
    if (id.length === 0 || id.length > 128) return undefined;
    const key = sha256(id);
    const session = this.#sessions.get(key);
    if (session === undefined) return undefined;
    const why = this.#ended(session, this.#now());
    if (why !== undefined) {
      this.#end(key, session, why);
      return undefined;
    }
    return session;
  }

  /** Why it has ended — past its life, or idle too long — or undefined while it lives. */
  #ended(s: Session, now: Moment): string | undefined {
    if (passed(s.loginAt, now, this.#ttlMs)) return 'it reached its life';
    if (passed(s.activeAt, now, this.#idleMs)) return 'it was idle too long';
    return undefined;
  }

  /** Ends the sessions past their life or idle too long, and what they authorized. */
  #prune(): void {
    const now = this.#now();
    for (const [key, s] of this.#sessions) {
      const why = this.#ended(s, now);
      if (why !== undefined) this.#end(key, s, why);
    }
  }

  /** Forgets the session and ends the calls it authorized (streams, unary calls in flight). */
  #end(key: string, s: Session, why: string): void {
    if (this.#sessions.get(key) === s) this.#sessions.delete(key);
    if (s.ended === undefined) s.ended = why;
    const calls = [...s.calls];
    s.calls.clear();
    for (const end of calls) {
      try {
        end(endedError(why));
      } catch {
        // One call's end failing keeps neither the others nor the sweep from going on.
      }
    }
    if (this.#sessions.size === 0) {
      clearInterval(this.#sweep);
      this.#sweep = undefined;
    }
  }

  /** Sweeps every {@link DashboardOptions.sweepMs} while a session lives (not after close). */
  #armSweep(): void {
    if (this.#sweep !== undefined || this.#closed) return;
    this.#sweep = setInterval(() => this.#prune(), this.#sweepMs);
    this.#sweep.unref();
  }

  #cookie(value: string, maxAgeSeconds: number): string {
    return (
      `${SESSION_COOKIE}=${value}; HttpOnly; SameSite=Strict; Path=/; Max-Age=${maxAgeSeconds}` +
      (this.#tls ? '; Secure' : '')
    );
  }

  async #login(req: IncomingMessage, res: ServerResponse): Promise<void> {
    if (req.method !== 'POST') {
      throw new RouteNotFoundError(req.method ?? '', `${UI_PATH}/login`, 'log in with POST');
    }
    this.#requireSameOrigin(req);
    const type = (req.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();
    if (type !== 'application/json') {
      throw new InvalidArgumentError('content-type', 'must be application/json');
    }
    const text = await readBody(req, { limit: MAX_LOGIN_BYTES, timeoutMs: LOGIN_BODY_TIMEOUT_MS });
    let token: unknown;
    try {
      token = (JSON.parse(text) as { token?: unknown } | null)?.token;
    } catch {
      throw new InvalidArgumentError('body', 'is not JSON');
    }
    if (typeof token !== 'string' || token === '') {
      throw new InvalidArgumentError('token', 'must be the admin credential (a string)');
    }
    const address = req.socket.remoteAddress ?? '';
    // Past the bound the token is not even checked: the answer would tell a right one.
    this.#throttle?.check(address);
    let admin: string | undefined;
    try {
      admin = this.#authenticateAdmin(token);
    } catch {
      admin = undefined;
    }
    if (admin === undefined) {
      this.#throttle?.fail(address);
      throw new UnauthenticatedError('that is not the admin credential');
    }
    this.#prune();
    while (this.#sessions.size >= this.#maxSessions) {
      const [oldest, s] = this.#sessions.entries().next().value as [string, Session];
      this.#end(oldest, s, `newer logins passed the ${this.#maxSessions} sessions`);
    }
    const id = randomBytes(32).toString('base64url');
    const csrf = randomBytes(32).toString('base64url');
    const now = this.#now();
    this.#sessions.set(sha256(id), {
      admin,
      csrf,
      loginAt: now,
      activeAt: now,
      calls: new Set(),
    });
    this.#armSweep();
    send(res, 200, JSON.stringify({ admin, csrf }), 'application/json', {
      'set-cookie': this.#cookie(id, Math.floor(this.#ttlMs / 1000)),
    });
  }

  #logout(req: IncomingMessage, res: ServerResponse): void {
    if (req.method !== 'POST') {
      throw new RouteNotFoundError(req.method ?? '', `${UI_PATH}/logout`, 'log out with POST');
    }
    const ids = cookieValues(req, SESSION_COOKIE);
    if (ids.length === 0) throw new UnauthenticatedError('no dashboard session');
    const { id, session } = this.#requireSession(req, ids);
    this.#end(sha256(id), session, 'it was logged out');
    send(res, 200, '{}', 'application/json', { 'set-cookie': this.#cookie('', 0) });
  }

  #session(req: IncomingMessage, res: ServerResponse): void {
    if (req.method !== 'GET') {
      throw new RouteNotFoundError(req.method ?? '', `${UI_PATH}/session`, 'read it with GET');
    }
    const session = this.#live(cookieValues(req, SESSION_COOKIE))?.session;
    if (session === undefined) throw new UnauthenticatedError('no dashboard session');
    send(
      res,
      200,
      JSON.stringify({ admin: session.admin, csrf: session.csrf }),
      'application/json',
    );
  }
}

/** True when `ms` have passed since `from` by either clock. */
function passed(from: Moment, now: Moment, ms: number): boolean {
  return now.mono - from.mono >= ms || now.wall - from.wall >= ms;
}

/**
 * The sidecar's HTTP server: the MCP endpoint, the admin API and a health check, on `node:http`.
 *
 * Operator API (the gRPC services as JSON, see rpc/http-door.ts): `POST /api/<package.Service>/<Method>`,
 * the only admin API over HTTP. The `/admin/...` routes of earlier versions were a second
 * implementation of some of its methods and are gone: they answer 404 `FABRIC_ERR_ROUTE_NOT_FOUND`
 * naming the `/api/` door. `GET /metrics` (Prometheus text, admin credential) stays. The web
 * dashboard is served under `/ui` (dashboard.ts); its session cookie is an admin credential at
 * the `/api/` door only with its CSRF token and the sidecar's own `Origin`.
 *
 * `GET /readyz` answers 200 `{ ready: true, checks }` when the sidecar can serve, else 503 with
 * `ready: false` — `checks` names each part (`fabric`, `state`, `upstream/<name>`) and whether it
 * works (see {@link Readiness}); like gRPC health, it needs no credential.
 *
 * Every route but `GET /healthz` (which tells nothing but "up") and `GET /readyz` first passes the
 * {@link HostGuard} (DNS rebinding protection: 403); `/readyz` answers a request the guard
 * refuses with `{ ready }` alone (a probe may dial the pod's address; a rebound page learns no
 * part names). The server's own timeouts bound how long a
 * client may take to send its request: `headersTimeoutMs` for the headers, `requestTimeoutMs`
 * for the whole request, and the body read timeout of the MCP endpoint and the `/api/` door.
 * They end once the request has arrived: an SSE stream or a long-running call's answer is not
 * cut by them. What Node's parser refuses (and those timeouts) is answered with a JSON error
 * body, not Node's empty one (client-error.ts).
 *
 * @module
 */
import {
  createServer as createHttpServer,
  type IncomingMessage,
  type RequestListener,
  type Server,
  type ServerOptions,
  type ServerResponse,
} from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { ConfigError, InvalidArgumentError, RouteNotFoundError } from '../errors.js';
import { DEFAULT_HEADERS_TIMEOUT_MS, DEFAULT_REQUEST_TIMEOUT_MS } from './config-file.js';
import { bearerToken, type McpHttpEndpoint } from '../gateway/downstream-http.js';
import { closesConnection, sendJson, sendJsonRpcRefusal } from '../gateway/http-body.js';
import { httpErrorBody, httpStatusOf } from '../gateway/map-error.js';
import { answerClientError, refuseExpectation } from './client-error.js';
import { HostGuard } from './host-guard.js';
import type { HttpDoor } from '../rpc/http-door.js';
import type { Dashboard } from './dashboard.js';
import type { TlsMaterial } from './tls.js';

/** What `GET /metrics` needs: the admin check. */
export interface AdminApi {
  /**
   * Returns the admin's name.
   * @throws UnauthenticatedError / PermissionDeniedError unless `credential` is an admin's.
   */
  requireAdmin(credential: string | undefined): string | void;
}

/** Options of {@link startHttpServer}. */
/** What `GET /readyz` answers. */
export interface Readiness {
  /** True when every check that must pass does (an optional upstream may be down). */
  ready: boolean;
  /** Each part and whether it works now. */
  checks: Record<string, boolean>;
}

export interface HttpServerOptions {
  host: string;
  port: number;
  mcpPath: string;
  mcp: McpHttpEndpoint;
  admin: AdminApi;
  /** The gRPC services as JSON under the door's prefix (`/api/`); absent: those paths are 404. */
  api?: HttpDoor;
  /** The web dashboard under `/ui` (dashboard.ts); absent: those paths are 404. */
  dashboard?: Dashboard;
  /** Renders `GET /metrics` (Prometheus text; admin token required). */
  metrics?: () => string;
  /** Answers `GET /readyz`; without it the route is not served. */
  readiness?: () => Readiness;
  /**
   * Host and Origin allow-lists. @default loopback names and `host` (see {@link HostGuard})
   */
  hostGuard?: HostGuard;
  /** Time a client has to send the request headers (then 408 and close). @default 10000 */
  headersTimeoutMs?: number;
  /**
   * Time a client has to send a whole request, headers and body (then 408 and close); the
   * answer's time is not counted. Must be ≥ `headersTimeoutMs`. @default 60000
   */
  requestTimeoutMs?: number;
  /** Serve HTTPS with this certificate and key; with `ca`, require client certificates from it. */
  tls?: TlsMaterial | undefined;
}

/** A started HTTP server and its address. */
export interface StartedHttpServer {
  readonly server: Server;
  readonly port: number;
  readonly url: string;
  /**
   * Stops accepting connections and ends the door's streams at once; requests in progress go on
   * until `drained` settles (the gateway's in-flight calls finished or their grace ran out, so
   * their answers reach the agents), then what is left open (SSE streams never go idle) is cut
   * after a moment. @param drained default: already settled
   */
  close(drained?: Promise<unknown>): Promise<void>;
}

/** Time the connections still open get to finish once the calls in flight ended at shutdown. */
const CLOSE_CUT_MS = 1000;

/** Sends an error of a non-MCP route; the connection closes when the body was not read. */
function sendError(req: IncomingMessage, res: ServerResponse, error: unknown): void {
  const close = !req.complete || closesConnection(error);
  sendJson(res, httpStatusOf(error), httpErrorBody(error), close ? { connection: 'close' } : {});
}

function timeout(name: string, value: number | undefined, fallback: number): number {
  const v = value ?? fallback;
  if (!Number.isFinite(v) || v <= 0) throw new ConfigError(name, 'must be a number > 0');
  return Math.ceil(v);
}

/** The pathname URL parsing gives `path` (undefined when it does not parse). */
function normalPath(path: string): string | undefined {
  try {
    return new URL(path, 'http://localhost').pathname;
  } catch {
    return undefined;
  }
}

/**
 * Makes the server: plain HTTP, or with `tls` HTTPS — an HTTP server that speaks TLS, with the
 * same requests and methods (with `tls.ca`, clients must present a certificate it issued).
 */
function serverFactory(
  tls: TlsMaterial | undefined,
): (options: ServerOptions, handler: RequestListener) => Server {
  if (tls === undefined) return (options, handler) => createHttpServer(options, handler);
  const secure = {
    cert: tls.cert,
    key: tls.key,
    ...(tls.ca === undefined ? {} : { ca: tls.ca, requestCert: true, rejectUnauthorized: true }),
  };
  return (options, handler) =>
    createHttpsServer({ ...options, ...secure }, handler) as unknown as Server;
}

/**
 * Starts the HTTP server; resolves once it listens.
 * @throws ConfigError on a bad timeout; the listen error when the port is taken.
 */
export async function startHttpServer(options: HttpServerOptions): Promise<StartedHttpServer> {
  const headersTimeout = timeout(
    'headersTimeoutMs',
    options.headersTimeoutMs,
    DEFAULT_HEADERS_TIMEOUT_MS,
  );
  const requestTimeout = timeout(
    'requestTimeoutMs',
    options.requestTimeoutMs,
    DEFAULT_REQUEST_TIMEOUT_MS,
  );
  if (headersTimeout > requestTimeout) {
    throw new ConfigError('headersTimeoutMs', `must be ≤ requestTimeoutMs (${requestTimeout})`);
  }
  const guard = options.hostGuard ?? new HostGuard({ bindHost: options.host });
  const createServer = serverFactory(options.tls);
  // A request target equal to the MCP path is routed there without parsing a URL when that is
  // what parsing would conclude (the path is already in the form URL parsing gives).
  const mcpTarget = normalPath(options.mcpPath) === options.mcpPath ? options.mcpPath : undefined;
  const server = createServer(
    {
      headersTimeout,
      requestTimeout,
      // Node looks for expired requests on this interval (30 s by default, which would let a
      // 10 s headers timeout run to 40 s).
      connectionsCheckingInterval: Math.max(100, Math.min(headersTimeout / 4, 5_000)),
    },
    (req, res) => {
      // The MCP path as MCP clients send it (nearly every request) needs no URL parsed.
      const target = req.url ?? '/';
      let pathname: string;
      if (target === mcpTarget) pathname = target;
      else {
        try {
          pathname = new URL(target, 'http://localhost').pathname;
        } catch {
          // `GET //[ HTTP/1.1` is a request line Node accepts; throwing here would end the process.
          sendError(req, res, new InvalidArgumentError('the request target', 'is not a valid URL'));
          return;
        }
      }
      if (pathname === '/healthz') {
        sendJson(res, 200, { ok: true });
        return;
      }
      const refused = guard.check(req);
      if (pathname === '/readyz' && options.readiness) {
        // Answered to any Host (a probe may dial the pod's address), but which parts are up —
        // upstream names included — only to a request the Host guard lets through: a page
        // rebound to this port learns nothing beyond ready or not.
        const r = options.readiness();
        sendJson(res, r.ready ? 200 : 503, refused ? { ready: r.ready } : r);
        return;
      }
      if (refused) {
        if (pathname === options.mcpPath) sendJsonRpcRefusal(req, res, refused, -32000);
        else if (options.api?.owns(pathname)) options.api.refuse(req, res, refused);
        else sendError(req, res, refused);
        return;
      }
      if (pathname === options.mcpPath) {
        void options.mcp.handle(req, res);
        return;
      }
      if (pathname === '/metrics' && options.metrics && req.method === 'GET') {
        try {
          options.admin.requireAdmin(bearerToken(req));
          const body = options.metrics();
          res.writeHead(200, {
            'content-type': 'text/plain; version=0.0.4; charset=utf-8',
            'content-length': Buffer.byteLength(body),
          });
          res.end(body);
        } catch (error) {
          sendError(req, res, error);
        }
        return;
      }
      if (options.api?.owns(pathname)) {
        void options.api.handle(req, res, pathname);
        return;
      }
      if (options.dashboard?.owns(pathname)) {
        void options.dashboard.handle(req, res, pathname);
        return;
      }
      if (pathname.startsWith('/admin/')) {
        sendError(
          req,
          res,
          new RouteNotFoundError(
            req.method ?? '',
            pathname,
            'the admin routes are the Operator API now: POST /api/fabric.v1.<Service>/<Method>',
          ),
        );
        return;
      }
      sendError(req, res, new RouteNotFoundError(req.method ?? '', pathname, 'no such route'));
    },
  );
  // Node answers what its parser refuses (and an unknown `Expect`) with an empty body.
  server.on('clientError', (error: Error, socket) =>
    answerClientError(error, socket, {
      headersTimeoutMs: headersTimeout,
      requestTimeoutMs: requestTimeout,
    }),
  );
  server.on('checkExpectation', refuseExpectation);
  server.keepAliveTimeout = 65_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port, options.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const port = (server.address() as AddressInfo).port;
  const host = options.host.includes(':') ? `[${options.host}]` : options.host;
  return {
    server,
    port,
    url: `${options.tls === undefined ? 'http' : 'https'}://${host === '0.0.0.0' ? '127.0.0.1' : host}:${port}${options.mcpPath}`,
    close: (drained = Promise.resolve()) =>
      new Promise<void>((resolve) => {
        // The door's streams (watches) never end on their own: end them with their `end` line.
        options.api?.close();
        // Then the sessions and their sweep timer.
        options.dashboard?.close();
        server.close(() => resolve());
        server.closeIdleConnections();
        // SSE streams never go idle on their own; cut what is left a moment after the calls in
        // flight were answered (cut before, their answers were lost though they had run).
        const cut = (): void => {
          server.closeIdleConnections();
          setTimeout(() => server.closeAllConnections(), CLOSE_CUT_MS).unref();
        };
        drained.then(cut, cut);
      }),
  };
}

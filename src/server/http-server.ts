/**
 * The sidecar's HTTP server: the MCP endpoint, the admin API and a health check, on `node:http`.
 *
 * Admin API (admin bearer credential):
 * - `GET  /admin/approvals?status=pending` — list approvals
 * - `POST /admin/approvals/:id/approve` `{ approver?, reason? }` — approve a parked call
 * - `POST /admin/approvals/:id/deny` `{ approver?, reason? }` — deny it
 * - `POST /admin/agents` `{ name, model?, poolId?, labels? }` — spawn an agent, returns its credential
 *
 * @module
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { z } from 'zod';
import { InvalidArgumentError } from '../errors.js';
import { agentSchema } from './config-file.js';
import type { AdminBackend } from '../gateway/backend.js';
import {
  bearerToken,
  readBody,
  sendJson,
  type McpHttpEndpoint,
} from '../gateway/downstream-http.js';
import { httpErrorBody, httpStatusOf } from '../gateway/map-error.js';

/** What the admin routes need. */
export interface AdminApi extends AdminBackend {
  /**
   * Returns the admin's name (recorded as the approver unless the body names one).
   * @throws UnauthenticatedError / PermissionDeniedError unless `credential` is an admin's.
   */
  requireAdmin(credential: string | undefined): string | void;
}

/** Options of {@link startHttpServer}. */
export interface HttpServerOptions {
  host: string;
  port: number;
  mcpPath: string;
  mcp: McpHttpEndpoint;
  admin: AdminApi;
  /** Renders `GET /metrics` (Prometheus text; admin token required). */
  metrics?: () => string;
}

const decisionBody = z
  .object({ approver: z.string().min(1).optional(), reason: z.string().optional() })
  .strict();
const spawnBody = agentSchema.omit({ budget: true });

async function parseJson<T extends z.ZodType>(
  req: IncomingMessage,
  schema: T,
): Promise<z.output<T>> {
  const text = await readBody(req, 1024 * 1024);
  let value: unknown = {};
  if (text.trim() !== '') {
    try {
      value = JSON.parse(text);
    } catch {
      throw new InvalidArgumentError('body', 'is not JSON');
    }
  }
  const parsed = schema.safeParse(value);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new InvalidArgumentError(
      `body.${issue?.path.join('.') ?? ''}`,
      issue?.message ?? 'is invalid',
    );
  }
  return parsed.data;
}

async function admin(
  req: IncomingMessage,
  res: ServerResponse,
  url: URL,
  api: AdminApi,
): Promise<void> {
  const adminName = api.requireAdmin(bearerToken(req)) ?? 'admin';
  const parts = url.pathname.split('/').filter(Boolean); // ['admin', ...]
  if (req.method === 'GET' && parts[1] === 'approvals' && parts.length === 2) {
    const status = url.searchParams.get('status') ?? undefined;
    sendJson(res, 200, { approvals: await api.listApprovals(status ? { status } : {}) });
    return;
  }
  if (req.method === 'POST' && parts[1] === 'approvals' && parts.length === 4) {
    const id = decodeURIComponent(parts[2]!);
    const body = await parseJson(req, decisionBody);
    const opts = {
      approver: body.approver ?? adminName,
      ...(body.reason ? { reason: body.reason } : {}),
    };
    if (parts[3] === 'approve') {
      sendJson(res, 200, { approval: await api.approve(id, opts) });
      return;
    }
    if (parts[3] === 'deny') {
      sendJson(res, 200, { approval: await api.deny(id, opts) });
      return;
    }
  }
  if (parts[1] === 'agents' && parts.length === 2) {
    if (req.method === 'POST') {
      const body = await parseJson(req, spawnBody);
      sendJson(res, 201, await api.spawn(body));
      return;
    }
    if (req.method === 'GET') {
      const status = url.searchParams.get('status') ?? undefined;
      const poolId = url.searchParams.get('poolId') ?? undefined;
      const agents = await api.listAgents({
        ...(status === undefined ? {} : { status }),
        ...(poolId === undefined ? {} : { poolId }),
      });
      sendJson(res, 200, { agents });
      return;
    }
  }
  if (parts[1] === 'agents' && parts.length === 3) {
    const id = decodeURIComponent(parts[2]!);
    if (req.method === 'GET') {
      sendJson(res, 200, await api.getAgent(id));
      return;
    }
    if (req.method === 'DELETE') {
      const drain = url.searchParams.get('drainTimeoutSeconds'); // validated by the fabric
      const agent = await api.terminateAgent(
        id,
        drain === null ? {} : { drainTimeoutSeconds: Number(drain) },
      );
      sendJson(res, 200, { agent });
      return;
    }
  }
  sendJson(res, 404, {
    error: { code: 'FABRIC_ERR_NOT_FOUND', message: `no route ${req.method} ${url.pathname}` },
  });
}

/** A started HTTP server and its address. */
export interface StartedHttpServer {
  readonly server: Server;
  readonly port: number;
  readonly url: string;
  close(): Promise<void>;
}

/** Starts the HTTP server; resolves once it listens. */
export async function startHttpServer(options: HttpServerOptions): Promise<StartedHttpServer> {
  const server = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://localhost');
    if (url.pathname === options.mcpPath) {
      void options.mcp.handle(req, res);
      return;
    }
    if (url.pathname === '/healthz') {
      sendJson(res, 200, { ok: true });
      return;
    }
    if (url.pathname === '/metrics' && options.metrics && req.method === 'GET') {
      try {
        options.admin.requireAdmin(bearerToken(req));
        const body = options.metrics();
        res.writeHead(200, {
          'content-type': 'text/plain; version=0.0.4; charset=utf-8',
          'content-length': Buffer.byteLength(body),
        });
        res.end(body);
      } catch (error) {
        sendJson(res, httpStatusOf(error), httpErrorBody(error));
      }
      return;
    }
    if (url.pathname.startsWith('/admin/')) {
      admin(req, res, url, options.admin).catch((error: unknown) => {
        if (res.headersSent) res.end();
        else sendJson(res, httpStatusOf(error), httpErrorBody(error));
      });
      return;
    }
    sendJson(res, 404, {
      error: { code: 'FABRIC_ERR_NOT_FOUND', message: `no route ${url.pathname}` },
    });
  });
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
    url: `http://${host === '0.0.0.0' ? '127.0.0.1' : host}:${port}${options.mcpPath}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeIdleConnections();
        // SSE streams never go idle on their own; cut what is left after a moment.
        setTimeout(() => server.closeAllConnections(), 1000).unref();
      }),
  };
}

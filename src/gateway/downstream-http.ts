/**
 * The `/mcp` endpoint: Streamable HTTP sessions, one agent each, authenticated by bearer token.
 *
 * @module
 */
import { randomUUID, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import {
  ConfigError,
  FabricError,
  PermissionDeniedError,
  UnauthenticatedError,
} from '../errors.js';
import type { AgentIdentity, GatewayIdentity } from './backend.js';
import { HttpSessionTransport } from './downstream-http-transport.js';
import type { ToolGateway } from './gateway.js';
import { httpErrorBody, httpStatusOf } from './map-error.js';
import type { GatewaySession } from './session.js';

/** Default of {@link McpHttpEndpointOptions.maxBodyBytes}: 4 MiB. */
export const DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024;

/** Options of an {@link McpHttpEndpoint}. */
export interface McpHttpEndpointOptions {
  gateway: ToolGateway;
  /** Maps a bearer token to an identity; throws UnauthenticatedError when unknown. */
  authenticate(credential: string): GatewayIdentity | Promise<GatewayIdentity>;
  /** Identity of requests without a token; without it they get 401. */
  anonymous?: AgentIdentity | undefined;
  /** Keep-alive interval of SSE streams. @default 15000 */
  keepAliveMs?: number;
  /** Largest accepted request body. @default 4194304 */
  maxBodyBytes?: number;
  /**
   * A session with no request in flight, no open SSE stream and no request for this long is
   * closed (clients that vanish without `DELETE` would otherwise hold it forever); its id then
   * gets 404 and the client starts a new session. `0` never expires sessions.
   * @default 1800000 (30 minutes)
   */
  idleTimeoutMs?: number;
}

/** Default of {@link McpHttpEndpointOptions.idleTimeoutMs}: 30 minutes. */
export const DEFAULT_SESSION_IDLE_TIMEOUT_MS = 30 * 60_000;

interface HttpSession {
  readonly transport: HttpSessionTransport;
  readonly session: GatewaySession;
  readonly credential: string | undefined;
  /** Date.now() of the last request. */
  lastSeen: number;
}

/** Reads a request body up to `limit` bytes. */
export function readBody(req: IncomingMessage, limit: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > limit) {
        reject(new PayloadTooLargeError(limit));
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.once('end', () =>
      resolve(
        chunks.length === 1 ? chunks[0]!.toString('utf8') : Buffer.concat(chunks).toString('utf8'),
      ),
    );
    req.once('error', reject);
  });
}

class PayloadTooLargeError extends Error {
  constructor(limit: number) {
    super(`request body exceeds ${limit} bytes`);
  }
}

/** Writes a JSON response. */
export function sendJson(res: ServerResponse, status: number, body: unknown): void {
  const json = JSON.stringify(body);
  res
    .writeHead(status, {
      'content-type': 'application/json',
      'content-length': Buffer.byteLength(json),
    })
    .end(json);
}

function jsonRpcError(res: ServerResponse, status: number, code: number, message: string): void {
  sendJson(res, status, { jsonrpc: '2.0', error: { code, message }, id: null });
}

/** The bearer token of a request, if any. */
export function bearerToken(req: IncomingMessage): string | undefined {
  const header = req.headers.authorization;
  if (!header) return undefined;
  const match = /^Bearer\s+(.+)$/i.exec(header.trim());
  return match?.[1]?.trim() || undefined;
}

function sameSecret(a: string | undefined, b: string | undefined): boolean {
  if (a === undefined || b === undefined) return a === b;
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}

/** Serves MCP over Streamable HTTP; mount it on a path of a `node:http` server. */
export class McpHttpEndpoint {
  readonly #options: McpHttpEndpointOptions;
  readonly #sessions = new Map<string, HttpSession>();
  readonly #idleMs: number;
  #sweeper: NodeJS.Timeout | undefined;
  #closed = false;

  constructor(options: McpHttpEndpointOptions) {
    this.#options = options;
    this.#idleMs = options.idleTimeoutMs ?? DEFAULT_SESSION_IDLE_TIMEOUT_MS;
    if (!Number.isFinite(this.#idleMs) || this.#idleMs < 0) {
      throw new ConfigError('idleTimeoutMs', 'must be a number ≥ 0 (0: never)');
    }
  }

  /** Closes sessions idle for longer than the timeout (runs on a timer; callable directly). */
  sweepIdle(now = Date.now()): void {
    if (this.#idleMs === 0) return;
    for (const e of this.#sessions.values()) {
      // Time spent answering (a call parked for approval) or streaming counts as activity.
      if (e.transport.busy) e.lastSeen = now;
      else if (now - e.lastSeen > this.#idleMs) void e.session.close().catch(() => undefined);
    }
  }

  #startSweeper(): void {
    if (this.#sweeper !== undefined || this.#idleMs === 0) return;
    this.#sweeper = setInterval(() => this.sweepIdle(), Math.min(this.#idleMs / 2, 60_000));
    this.#sweeper.unref();
  }

  /** Number of open sessions. */
  get sessionCount(): number {
    return this.#sessions.size;
  }

  async #identify(
    req: IncomingMessage,
  ): Promise<{ identity: AgentIdentity; credential: string | undefined }> {
    const token = bearerToken(req);
    if (token === undefined) {
      if (this.#options.anonymous)
        return { identity: this.#options.anonymous, credential: undefined };
      throw new UnauthenticatedError(
        'missing bearer token: send Authorization: Bearer <agent credential>',
      );
    }
    const identity = await this.#options.authenticate(token);
    if (identity.kind !== 'agent') {
      throw new PermissionDeniedError(
        'the admin credential cannot open an agent session; use an agent credential',
      );
    }
    return { identity, credential: token };
  }

  /** Handles one HTTP request to the MCP path. */
  async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    try {
      await this.#handle(req, res);
    } catch (error) {
      if (res.headersSent) {
        res.end();
        return;
      }
      if (error instanceof PayloadTooLargeError) {
        jsonRpcError(res, 413, -32600, error.message);
        return;
      }
      const status = error instanceof FabricError ? httpStatusOf(error) : 500;
      if (status === 401) res.setHeader('www-authenticate', 'Bearer');
      sendJson(res, status, httpErrorBody(error));
    }
  }

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    if (this.#closed) {
      jsonRpcError(res, 503, -32000, 'the gateway is shutting down');
      return;
    }
    const { identity, credential } = await this.#identify(req);
    const sid = req.headers['mcp-session-id'];
    const sessionId = Array.isArray(sid) ? sid[0] : sid;
    let entry: HttpSession | undefined;
    if (sessionId !== undefined) {
      entry = this.#sessions.get(sessionId);
      if (!entry) {
        jsonRpcError(res, 404, -32001, 'Session not found');
        return;
      }
      if (
        entry.session.identity.agentId !== identity.agentId ||
        !sameSecret(entry.credential, credential)
      ) {
        throw new PermissionDeniedError('this session belongs to another agent');
      }
    }
    // Activity: the request's arrival and the end of its answer (a call may take long).
    const touch = (): void => {
      if (entry) entry.lastSeen = Date.now();
    };
    touch();
    res.once('close', touch);
    switch (req.method) {
      case 'POST': {
        const text = await readBody(req, this.#options.maxBodyBytes ?? DEFAULT_MAX_BODY_BYTES);
        let body: unknown;
        try {
          body = JSON.parse(text);
        } catch {
          jsonRpcError(res, 400, -32700, 'Parse error: the body is not JSON');
          return;
        }
        if (!entry) {
          const first = (Array.isArray(body) ? body[0] : body) as { method?: unknown } | undefined;
          if (first?.method !== 'initialize') {
            jsonRpcError(res, 400, -32000, 'Bad Request: no mcp-session-id; send initialize first');
            return;
          }
          entry = await this.#open(identity, credential);
        }
        entry.transport.handlePost(res, body, req.headers);
        return;
      }
      case 'GET':
        if (!entry) {
          jsonRpcError(res, 400, -32000, 'Bad Request: mcp-session-id header is required');
          return;
        }
        entry.transport.handleGet(res);
        return;
      case 'DELETE':
        if (!entry) {
          jsonRpcError(res, 400, -32000, 'Bad Request: mcp-session-id header is required');
          return;
        }
        await entry.session.close();
        res.writeHead(200).end();
        return;
      default:
        res.writeHead(405, { allow: 'GET, POST, DELETE' }).end();
    }
  }

  async #open(identity: AgentIdentity, credential: string | undefined): Promise<HttpSession> {
    const transport = new HttpSessionTransport(randomUUID(), {
      ...(this.#options.keepAliveMs === undefined
        ? {}
        : { keepAliveMs: this.#options.keepAliveMs }),
    });
    const session = this.#options.gateway.createSession(identity);
    const entry: HttpSession = { transport, session, credential, lastSeen: Date.now() };
    this.#sessions.set(transport.sessionId, entry);
    this.#startSweeper();
    await session.connect(transport);
    const previous = transport.onclose;
    transport.onclose = () => {
      this.#sessions.delete(transport.sessionId);
      previous?.();
    };
    return entry;
  }

  /** Closes every session and refuses new requests. */
  async close(): Promise<void> {
    this.#closed = true;
    if (this.#sweeper !== undefined) clearInterval(this.#sweeper);
    this.#sweeper = undefined;
    await Promise.all([...this.#sessions.values()].map((e) => e.session.close()));
    this.#sessions.clear();
  }
}

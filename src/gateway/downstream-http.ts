/**
 * The `/mcp` endpoint: Streamable HTTP sessions, one agent each, authenticated by bearer token.
 *
 * What one agent can hold is bounded: open sessions (`maxSessionsPerAgent`), requests in
 * flight across all its sessions (`maxInflightPerAgent`; a request stays in flight until its
 * answer has left the process, so answers the agent does not read count, and a call the gateway
 * gave up on after it was sent upstream — cancelled, timed out — until the upstream is done with
 * it or its late window ended: {@link McpHttpEndpoint.holdInflight}), messages in one batch
 * (`maxBatchMessages`), body size and body read time, and what a stream it does not read may
 * hold (`maxStreamBacklogBytes`, then notifications are dropped). Past a bound the request is
 * refused at once with a JSON-RPC error naming the limit (HTTP 429, 413, 408 or 400), never
 * queued.
 *
 * @module
 */
import { randomUUID, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import {
  ErrorCode,
  SUPPORTED_PROTOCOL_VERSIONS,
  type Request as McpRequest,
  type RequestId,
} from '@modelcontextprotocol/sdk/types.js';
import {
  ConfigError,
  FabricError,
  InflightLimitError,
  PayloadTooLargeError,
  PermissionDeniedError,
  SessionLimitError,
  UnauthenticatedError,
} from '../errors.js';
import type { AgentIdentity, GatewayIdentity } from './backend.js';
import {
  DEFAULT_MAX_STREAM_BACKLOG_BYTES,
  HttpSessionTransport,
  type UndeliveredMessage,
  type UndeliveredReason,
} from './downstream-http-transport.js';
import { plainToolCallRequest } from './fast-path.js';
import type { ToolGateway } from './gateway.js';
import {
  arrivedBody,
  closesConnection,
  DEFAULT_BODY_TIMEOUT_MS,
  readBody,
  sendJson,
  sendJsonRpcRefusal,
} from './http-body.js';
import {
  classifyMessage,
  invalidMessageResponse,
  jsonRpcError,
  type MessageKind,
} from './jsonrpc-message.js';
import { RefusalLines } from './line-budget.js';
import { httpErrorBody, httpStatusOf } from './map-error.js';
import type { GatewayLogEntry } from './tool-call-pipeline.js';
import { malformedInitialize, type GatewaySession } from './session.js';

export { readBody, sendJson } from './http-body.js';

/** Default of {@link McpHttpEndpointOptions.maxBodyBytes}: 4 MiB. */
export const DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024;
/** Default of {@link McpHttpEndpointOptions.maxSessionsPerAgent}. */
export const DEFAULT_MAX_SESSIONS_PER_AGENT = 32;
/** Default of {@link McpHttpEndpointOptions.maxInflightPerAgent}. */
export const DEFAULT_MAX_INFLIGHT_PER_AGENT = 256;
/** Default of {@link McpHttpEndpointOptions.maxBatchMessages}. */
export const DEFAULT_MAX_BATCH_MESSAGES = 100;
/** Default of {@link McpHttpEndpointOptions.idleTimeoutMs}: 30 minutes. */
export const DEFAULT_SESSION_IDLE_TIMEOUT_MS = 30 * 60_000;
/** The window of the `warn` lines of undelivered messages: one per agent and reason in it. */
const UNDELIVERED_LOG_WINDOW_MS = 60_000;

/** Options of an {@link McpHttpEndpoint}. */
export interface McpHttpEndpointOptions {
  gateway: ToolGateway;
  /** Maps a bearer token to an identity; throws UnauthenticatedError when unknown. */
  authenticate(credential: string): GatewayIdentity | Promise<GatewayIdentity>;
  /**
   * A number that changes whenever a credential `authenticate` accepted may stop mapping to the
   * same identity (see `GatewayBackend.credentialEpoch`). With it, a request of an open
   * session that presents the session's own credential (compared in constant time) is not
   * authenticated again while the number is unchanged since the session's last authentication;
   * without it every request is.
   */
  credentialEpoch?: () => number;
  /**
   * The credential that requests without a token act with (the dev agent of `allowAnonymous`);
   * without it they get 401. It is authenticated like a bearer token on each such request, so
   * once its agent is terminated they get 401 as that agent's token would, and the sessions
   * they opened are closed with the agent's others.
   */
  anonymousCredential?: string | undefined;
  /** Keep-alive interval of SSE streams. @default 15000 */
  keepAliveMs?: number;
  /** Largest accepted request body (413 beyond). @default 4194304 */
  maxBodyBytes?: number;
  /** Time allowed to receive a request body (408 beyond); `0` for none. @default 30000 */
  bodyTimeoutMs?: number;
  /**
   * A session with no request in flight, no open SSE stream and no request for this long is
   * closed (clients that vanish without `DELETE` would otherwise hold it forever); its id then
   * gets 404 and the client starts a new session. `0` never expires sessions.
   * @default 1800000 (30 minutes)
   */
  idleTimeoutMs?: number;
  /**
   * Open sessions one agent may hold; an `initialize` beyond gets 429 (`SessionLimitError`).
   * `DELETE` or idle expiry frees a slot. @default 32
   */
  maxSessionsPerAgent?: number;
  /**
   * Requests one agent may have in flight across all its sessions (a batch counts each
   * request); a POST that would go beyond gets 429 (`InflightLimitError`) and none of its
   * messages is delivered. @default 256
   */
  maxInflightPerAgent?: number;
  /** Messages in one JSON-RPC batch; a longer batch gets 400. @default 100 */
  maxBatchMessages?: number;
  /**
   * Bytes a response stream may hold that its client has not read (beyond the OS socket
   * buffers) and still take a notification; further notifications to it are dropped until the
   * client reads. Responses are never dropped. @default 262144
   */
  maxStreamBacklogBytes?: number;
  /**
   * Structured log sink. A message for an agent that reached no stream (see
   * `UndeliveredMessage`) is told here, at `warn`: the first of each reason an agent has a
   * minute, whatever its session (what it was, never what it held), and how many more in a
   * summary line when the minute ends; all are counted ({@link McpHttpEndpoint.undeliveredMessages}).
   */
  logger?: (entry: GatewayLogEntry) => void;
}

/** One agent's share of the endpoint. */
interface AgentLoad {
  sessions: number;
  inflight: number;
}

interface HttpSession {
  readonly transport: HttpSessionTransport;
  readonly session: GatewaySession;
  /**
   * The credential that opened the session (UTF-8): the bearer token, or the anonymous one for a
   * request without a token; undefined only for a backend without credentials.
   */
  readonly credential: Buffer | undefined;
  /** `credentialEpoch()` when `credential` last authenticated as this session's agent. */
  epoch: number;
  readonly load: AgentLoad;
  /**
   * `performance.now()` of the last activity: idleness is elapsed time, so a step of the wall
   * clock (NTP, an operator setting the date) neither closes every session nor keeps idle ones.
   */
  lastSeen: number;
}

/** The bearer token of a request, if any. */
export function bearerToken(req: IncomingMessage): string | undefined {
  const header = req.headers.authorization;
  if (!header) return undefined;
  const match = /^Bearer\s+(.+)$/i.exec(header.trim());
  return match?.[1]?.trim() || undefined;
}

/** True when `candidate` is `secret` (compared in constant time), or both are absent. */
function sameSecret(secret: Buffer | undefined, candidate: string | undefined): boolean {
  if (secret === undefined || candidate === undefined) return secret === candidate;
  const bytes = Buffer.from(candidate);
  return bytes.length === secret.length && timingSafeEqual(bytes, secret);
}

/** MCP protocol versions a request may name in `MCP-Protocol-Version`. */
const PROTOCOL_VERSIONS = new Set(SUPPORTED_PROTOCOL_VERSIONS);

/** True when `accept` (an `Accept` header) lists `type` (or a wildcard that covers it). */
function accepts(accept: string | undefined, type: string): boolean {
  if (accept === undefined) return false;
  const major = `${type.slice(0, type.indexOf('/'))}/*`;
  return accept.split(',').some((part) => {
    const range = part.split(';', 1)[0]!.trim().toLowerCase();
    return range === type || range === major || range === '*/*';
  });
}

/** True when `contentType` (a `Content-Type` header) names JSON, whatever its parameters. */
function isJsonType(contentType: string | undefined): boolean {
  return contentType?.split(';', 1)[0]!.trim().toLowerCase() === 'application/json';
}

/**
 * The last `Content-Type` and `Accept` headers of a POST that {@link transportRefusal} looked at,
 * with its answers: a client sends the same ones on every request, so they are parsed once, not
 * split and lower-cased per request (a string comparison is what each request costs).
 */
let lastContentType: string | undefined;
let lastIsJson = false;
let lastPostAccept: string | undefined;
let lastPostAccepted = false;

/**
 * What the Streamable HTTP transport refuses before a request is looked at, as the SDK's own
 * server transport does: a POST that is not JSON (415) or whose client does not take both JSON
 * and SSE answers (406), a GET whose client does not take SSE (406), and a protocol version
 * this gateway does not speak on a session's request (400).
 */
function transportRefusal(req: IncomingMessage, inSession: boolean): [number, string] | undefined {
  const accept = req.headers.accept;
  if (req.method === 'POST') {
    const type = req.headers['content-type'];
    if (type !== lastContentType) {
      lastIsJson = isJsonType(type);
      lastContentType = type;
    }
    if (!lastIsJson) {
      return [415, 'Unsupported Media Type: Content-Type must be application/json'];
    }
    if (accept !== lastPostAccept) {
      lastPostAccepted =
        accepts(accept, 'application/json') && accepts(accept, 'text/event-stream');
      lastPostAccept = accept;
    }
    if (!lastPostAccepted) {
      return [406, 'Not Acceptable: Accept must list application/json and text/event-stream'];
    }
  } else if (req.method === 'GET' && !accepts(accept, 'text/event-stream')) {
    return [406, 'Not Acceptable: Accept must list text/event-stream'];
  }
  const version = req.headers['mcp-protocol-version'];
  if (inSession && version !== undefined && !PROTOCOL_VERSIONS.has(String(version))) {
    return [
      400,
      `Bad Request: unsupported MCP-Protocol-Version ${JSON.stringify(String(version).slice(0, 64))} (supported: ${SUPPORTED_PROTOCOL_VERSIONS.join(', ')})`,
    ];
  }
  return undefined;
}

/**
 * The MCP version that removed JSON-RPC batching ("the body of the POST request MUST be a single
 * JSON-RPC request, notification, or response", MCP 2025-06-18, Streamable HTTP). Versions are
 * dates, so they compare as strings.
 */
const BATCHES_REMOVED_IN = '2025-06-18';

/**
 * True when a session of `version` may POST a batch: one that negotiated 2025-03-26 (which added
 * batching) or earlier. The SDK's own server transport takes batches whatever the version.
 * Undefined (the SDK's initialize handler was not found to wrap, see session.ts) keeps the
 * behaviour from before versions were told apart: batches are taken.
 */
function batchesAllowed(version: string | undefined): boolean {
  return version === undefined || version < BATCHES_REMOVED_IN;
}

function isInitialize(m: unknown): boolean {
  return (m as { method?: unknown }).method === 'initialize';
}

function badRequest(res: ServerResponse, code: number, message: string): void {
  sendJson(res, 400, jsonRpcError(code, message));
}

function limit(name: string, value: number | undefined, fallback: number, min: number): number {
  const v = value ?? fallback;
  if (!Number.isSafeInteger(v) || v < min) {
    throw new ConfigError(name, `must be an integer ≥ ${min}`);
  }
  return v;
}

/** Serves MCP over Streamable HTTP; mount it on a path of a `node:http` server. */
export class McpHttpEndpoint {
  readonly #options: McpHttpEndpointOptions;
  readonly #sessions = new Map<string, HttpSession>();
  readonly #loads = new Map<string, AgentLoad>();
  readonly #idleMs: number;
  readonly #maxBody: number;
  readonly #bodyTimeoutMs: number;
  readonly #maxSessions: number;
  readonly #maxInflight: number;
  readonly #maxBatch: number;
  readonly #maxBacklog: number;
  #droppedNotifications = 0;
  readonly #undelivered: Record<UndeliveredReason, number> = { 'request-gone': 0, 'no-stream': 0 };
  /**
   * The `warn` lines of undelivered messages: one per agent and reason a minute, whatever
   * session they came through (a line per session let an agent that cycles sessions write one
   * a cycle, without bound); how many more were dropped is told in a summary line when the
   * minute ends, or when the endpoint closes.
   */
  readonly #undeliveredLines = new RefusalLines<UndeliveredReason>(
    (agentId, reason, suppressed) =>
      this.#options.logger?.({
        level: 'warn',
        msg: `mcp: ${suppressed} more message(s) for an agent were dropped within a minute of the one logged (${reason}); only counted (agent_fabric_mcp_http_messages_undelivered_total)`,
        agentId,
        reason,
        suppressed,
      }),
    1,
    UNDELIVERED_LOG_WINDOW_MS,
  );
  #sweeper: NodeJS.Timeout | undefined;
  #closed = false;

  constructor(options: McpHttpEndpointOptions) {
    this.#options = options;
    this.#idleMs = options.idleTimeoutMs ?? DEFAULT_SESSION_IDLE_TIMEOUT_MS;
    if (!Number.isFinite(this.#idleMs) || this.#idleMs < 0) {
      throw new ConfigError('idleTimeoutMs', 'must be a number ≥ 0 (0: never)');
    }
    this.#bodyTimeoutMs = options.bodyTimeoutMs ?? DEFAULT_BODY_TIMEOUT_MS;
    if (!Number.isFinite(this.#bodyTimeoutMs) || this.#bodyTimeoutMs < 0) {
      throw new ConfigError('bodyTimeoutMs', 'must be a number ≥ 0 (0: none)');
    }
    this.#maxBody = limit('maxBodyBytes', options.maxBodyBytes, DEFAULT_MAX_BODY_BYTES, 1);
    this.#maxSessions = limit(
      'maxSessionsPerAgent',
      options.maxSessionsPerAgent,
      DEFAULT_MAX_SESSIONS_PER_AGENT,
      1,
    );
    this.#maxInflight = limit(
      'maxInflightPerAgent',
      options.maxInflightPerAgent,
      DEFAULT_MAX_INFLIGHT_PER_AGENT,
      1,
    );
    this.#maxBatch = limit(
      'maxBatchMessages',
      options.maxBatchMessages,
      DEFAULT_MAX_BATCH_MESSAGES,
      1,
    );
    this.#maxBacklog = limit(
      'maxStreamBacklogBytes',
      options.maxStreamBacklogBytes,
      DEFAULT_MAX_STREAM_BACKLOG_BYTES,
      0,
    );
  }

  /**
   * Closes at once every open session (of `agentId`, when given) whose credential no longer authenticates as the session's
   * agent (a credential replaced or revoked): its SSE streams end and its calls in flight are
   * cancelled, instead of lasting until the session's next request is refused. Each credential
   * is checked as a request's would be (`authenticate`). Sessions of a credential that still
   * authenticates — the agent's new one — are kept (and count as authenticated at this epoch).
   */
  async closeRevokedSessions(agentId?: string): Promise<void> {
    // Read before any credential is checked, as a request does (see #handle).
    const epoch = this.#options.credentialEpoch?.();
    const closing: Promise<void>[] = [];
    for (const e of [...this.#sessions.values()]) {
      if (e.credential === undefined) continue; // no credential to revoke
      if (agentId !== undefined && e.session.identity.agentId !== agentId) continue;
      let same = false;
      try {
        const identity = await this.#options.authenticate(e.credential.toString('utf8'));
        same = identity.kind === 'agent' && identity.agentId === e.session.identity.agentId;
      } catch {
        same = false;
      }
      if (!same) closing.push(e.session.close().catch(() => undefined));
      // Checked now: the session's next request need not check it again.
      else if (epoch !== undefined) e.epoch = epoch;
    }
    await Promise.all(closing);
  }

  /** Closes sessions idle for longer than the timeout (runs on a timer; callable directly). */
  sweepIdle(now = performance.now()): void {
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

  /**
   * Bytes written to open MCP responses that have not left the process yet (clients that do
   * not read), all sessions together. Walks every session: for metrics, not for a hot path.
   */
  get unsentBytes(): number {
    let n = 0;
    for (const e of this.#sessions.values()) n += e.transport.unsentBytes;
    return n;
  }

  /** Notifications dropped because their stream's client was not reading, since start. */
  get droppedNotifications(): number {
    return this.#droppedNotifications;
  }

  /** Messages for agents that reached no stream and were dropped, by reason, since start. */
  get undeliveredMessages(): Readonly<Record<UndeliveredReason, number>> {
    return this.#undelivered;
  }

  /**
   * Counts a message of `agentId`'s that reached no stream; logs the first of its reason the
   * agent has a minute (see {@link #undeliveredLines}).
   */
  #undeliveredMessage(agentId: string, m: UndeliveredMessage): void {
    this.#undelivered[m.reason]++;
    if (!this.#undeliveredLines.take(agentId, m.reason)) return;
    const what =
      m.reason === 'request-gone'
        ? `belongs to a call whose POST was answered as JSON and whose connection has closed`
        : `belongs to no call and the session has no standalone SSE stream (GET) open`;
    this.#options.logger?.({
      level: 'warn',
      msg: `mcp: a ${m.kind} for an agent was dropped: it ${what}${m.kind === 'request' ? ' (its sender was failed at once)' : ''}; the agent's later ones of this reason within a minute are only counted (agent_fabric_mcp_http_messages_undelivered_total)`,
      agentId,
      reason: m.reason,
      kind: m.kind,
      method: m.method,
    });
  }

  /**
   * Requests received over HTTP whose answer has not left the process yet (nor were they
   * cancelled), all agents together.
   */
  get inflightRequests(): number {
    let n = 0;
    for (const load of this.#loads.values()) n += load.inflight;
    return n;
  }

  async #identify(
    req: IncomingMessage,
  ): Promise<{ identity: AgentIdentity; credential: string | undefined }> {
    const token = bearerToken(req);
    const anonymous = this.#options.anonymousCredential;
    if (token === undefined && anonymous === undefined) {
      throw new UnauthenticatedError(
        'missing bearer token: send Authorization: Bearer <agent credential>',
      );
    }
    let identity: GatewayIdentity;
    try {
      identity = await this.#options.authenticate(token ?? anonymous!);
    } catch (error) {
      if (token !== undefined || !(error instanceof UnauthenticatedError)) throw error;
      throw new UnauthenticatedError(
        'requests without a token act as the anonymous dev agent, which no longer ' +
          'authenticates (terminated): send Authorization: Bearer <agent credential>',
      );
    }
    if (identity.kind !== 'agent') {
      throw new PermissionDeniedError(
        'the admin credential cannot open an agent session; use an agent credential',
      );
    }
    return { identity, credential: token ?? anonymous };
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
      const status = error instanceof FabricError ? httpStatusOf(error) : 500;
      const headers: Record<string, string> = {};
      if (status === 401) headers['www-authenticate'] = 'Bearer';
      // An unread body is not worth reading for a refusal: close instead of draining it.
      if (!req.complete) headers.connection = 'close';
      sendJson(res, status, httpErrorBody(error), headers);
    }
  }

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    if (this.#closed) {
      sendJson(res, 503, jsonRpcError(-32000, 'the gateway is shutting down'));
      return;
    }
    const sid = req.headers['mcp-session-id'];
    const sessionId = Array.isArray(sid) ? sid[0] : sid;
    let entry = sessionId === undefined ? undefined : this.#sessions.get(sessionId);
    let identity: AgentIdentity;
    let credential: string | undefined;
    const epoch = this.#options.credentialEpoch?.();
    if (
      entry !== undefined &&
      epoch !== undefined &&
      entry.epoch === epoch &&
      entry.credential !== undefined &&
      sameSecret(entry.credential, (credential = bearerToken(req)))
    ) {
      // The session's own credential, and no credential was revoked since it last authenticated
      // as the session's agent: it still does (no hash of it, no lookup per request).
      identity = entry.session.identity;
    } else {
      ({ identity, credential } = await this.#identify(req));
      if (sessionId !== undefined) {
        // Looked up again: the session may have closed while a backend authenticated.
        entry = this.#sessions.get(sessionId);
        if (!entry) {
          sendJson(res, 404, jsonRpcError(-32001, 'Session not found'));
          return;
        }
        if (
          entry.session.identity.agentId !== identity.agentId ||
          !sameSecret(entry.credential, credential)
        ) {
          throw new PermissionDeniedError('this session belongs to another agent');
        }
        if (epoch !== undefined) entry.epoch = epoch;
      }
    }
    // Activity: the request's arrival, and the end of each answer of the session (a call may
    // take long): the transport reports those (`onActivity`), no listener per request here.
    if (entry) entry.lastSeen = performance.now();
    const refused = transportRefusal(req, entry !== undefined);
    if (refused !== undefined) {
      const [status, message] = refused;
      // An unread body is not worth reading for a refusal: close instead of draining it.
      sendJson(
        res,
        status,
        jsonRpcError(-32000, message),
        req.complete ? {} : { connection: 'close' },
      );
      return;
    }
    switch (req.method) {
      case 'POST':
        await this.#post(req, res, identity, credential, entry, epoch);
        return;
      case 'GET':
        if (!entry) {
          badRequest(res, -32000, 'Bad Request: mcp-session-id header is required');
          return;
        }
        entry.transport.handleGet(res, req.headers['last-event-id']?.toString());
        return;
      case 'DELETE':
        if (!entry) {
          badRequest(res, -32000, 'Bad Request: mcp-session-id header is required');
          return;
        }
        await entry.session.close();
        res.writeHead(200).end();
        return;
      default:
        res.writeHead(405, { allow: 'GET, POST, DELETE' }).end();
    }
  }

  async #post(
    req: IncomingMessage,
    res: ServerResponse,
    identity: AgentIdentity,
    credential: string | undefined,
    entry: HttpSession | undefined,
    epoch: number | undefined,
  ): Promise<void> {
    // The request event comes when the headers are parsed, and microtasks run before the parser
    // goes on with the body that came in the same read: after awaits (as this handler did
    // before) the body is not complete yet, and reading it took listeners and a timer. The
    // check phase of this loop iteration comes after the whole read was parsed: a body that
    // came with its headers is complete there, and is taken without either.
    if (!req.complete) await new Promise<void>((resolve) => setImmediate(resolve));
    // Taken at once when it has arrived, else read within the bounds.
    let text = arrivedBody(req, this.#maxBody);
    if (text === undefined) {
      try {
        text = await readBody(req, { limit: this.#maxBody, timeoutMs: this.#bodyTimeoutMs });
      } catch (error) {
        if (!closesConnection(error)) throw error;
        const tooLarge = error instanceof PayloadTooLargeError;
        sendJsonRpcRefusal(req, res, error as FabricError, tooLarge ? -32600 : -32000);
        return;
      }
    }
    // A plain `tools/call` (nearly every POST) is read with a parse of its arguments alone, as
    // over stdio: the same message `JSON.parse` of the whole body gives (see fast-path.ts).
    let body: unknown = plainToolCallRequest(text);
    if (body === undefined) {
      try {
        body = JSON.parse(text);
      } catch {
        badRequest(res, ErrorCode.ParseError, 'Parse error: the body is not JSON');
        return;
      }
    }
    const batch = Array.isArray(body);
    if (batch && entry !== undefined && !batchesAllowed(entry.session.protocolVersion)) {
      badRequest(
        res,
        ErrorCode.InvalidRequest,
        `Invalid Request: JSON-RPC batches were removed in MCP ${BATCHES_REMOVED_IN} and this session speaks ${entry.session.protocolVersion}; send one message per POST`,
      );
      return;
    }
    const messages = batch ? (body as unknown[]) : [body];
    if (messages.length === 0) {
      badRequest(res, ErrorCode.InvalidRequest, 'Invalid Request: the batch is empty');
      return;
    }
    if (messages.length > this.#maxBatch) {
      badRequest(
        res,
        ErrorCode.InvalidRequest,
        `Invalid Request: a batch may hold at most ${this.#maxBatch} messages (http.maxBatchMessages)`,
      );
      return;
    }
    const kinds: MessageKind[] = new Array<MessageKind>(messages.length);
    let requests = 0;
    for (let i = 0; i < messages.length; i++) {
      const kind = classifyMessage(messages[i]);
      kinds[i] = kind;
      if (kind === 'request') requests++;
    }
    const initializes = messages.some((m, i) => kinds[i] === 'request' && isInitialize(m));
    if (entry && initializes) {
      badRequest(
        res,
        ErrorCode.InvalidRequest,
        'Invalid Request: the session is initialized already',
      );
      return;
    }
    if (initializes && messages.length > 1) {
      // As the SDK's transport: an initialize batched with anything else (a second initialize,
      // calls run before the client saw the server's capabilities) opens no session.
      badRequest(
        res,
        ErrorCode.InvalidRequest,
        'Invalid Request: only one initialization request is allowed, and alone in its POST',
      );
      return;
    }
    if (!entry) {
      const first = messages[0] as { method?: unknown };
      if (kinds[0] === 'invalid') {
        sendJson(res, 400, invalidMessageResponse(first));
        return;
      }
      if (kinds[0] !== 'request' || first.method !== 'initialize') {
        badRequest(res, -32000, 'Bad Request: no mcp-session-id; send initialize first');
        return;
      }
      // Refused before a session is opened: one opened for it would hold a slot until it idled.
      const malformed = malformedInitialize(first);
      if (malformed !== undefined) {
        const { id } = first as { id: RequestId };
        sendJson(res, 400, jsonRpcError(malformed.code, malformed.message, id, malformed.data));
        return;
      }
    }
    if (entry?.transport.closed) {
      // Closed (DELETE, idle expiry, the agent's termination) while the body was arriving.
      sendJson(res, 404, jsonRpcError(-32001, 'Session not found'));
      return;
    }
    if (!entry && credential !== undefined && epoch !== undefined) {
      const current = this.#options.credentialEpoch?.();
      if (current !== epoch) {
        // A credential was revoked while the body arrived (an agent terminated, a credential
        // replaced): the initialize's credential is checked again before a session is opened
        // for it, which its agent's termination would no longer find to close.
        const again = await this.#identify(req);
        if (again.identity.agentId !== identity.agentId) {
          throw new PermissionDeniedError('the credential now belongs to another agent');
        }
        ({ identity } = again);
        epoch = current; // read before the check, as #handle does
      }
    }
    const agentId = identity.agentId;
    const load = entry?.load ?? this.#loadOf(agentId);
    if (load.inflight + requests > this.#maxInflight) {
      // Checked before a session is opened: an initialize over the limit leaves nothing behind.
      this.#forgetIfIdle(agentId, load);
      const error = new InflightLimitError(this.#maxInflight, agentId, load.inflight);
      sendJsonRpcRefusal(req, res, error, -32000, { 'retry-after': '1' });
      return;
    }
    // Counted before any await, so parallel POSTs cannot all pass the check.
    load.inflight += requests;
    if (!entry) {
      try {
        entry = await this.#open(identity, credential, load, epoch);
      } catch (error) {
        load.inflight -= requests;
        this.#forgetIfIdle(agentId, load);
        if (!(error instanceof SessionLimitError)) throw error;
        sendJsonRpcRefusal(req, res, error, -32000);
        return;
      }
    }
    entry.transport.handlePost(res, messages, kinds, batch, req.headers);
  }

  /**
   * Counts one request of `agentId` in flight that arrived by another door (the `/api/` door's
   * agent calls), against the same `maxInflightPerAgent` as its MCP requests; returns the
   * function that ends it (call it once, when the answer has left the process or the call is
   * abandoned).
   * @throws InflightLimitError when the agent already has `maxInflightPerAgent` in flight.
   */
  acquireInflight(agentId: string): () => void {
    const load = this.#loadOf(agentId);
    if (load.inflight + 1 > this.#maxInflight) {
      this.#forgetIfIdle(agentId, load);
      throw new InflightLimitError(this.#maxInflight, agentId, load.inflight);
    }
    return this.holdInflight(agentId);
  }

  /**
   * Takes one slot of `agentId` past `maxInflightPerAgent`, for a call the gateway gave up on
   * (the agent cancelled it or its request was abandoned) whose work may go on upstream: its
   * slot stays taken until the upstream answered it or its late window ended. Returns the
   * function that frees it (call it once).
   */
  holdInflight(agentId: string): () => void {
    const load = this.#loadOf(agentId);
    load.inflight++;
    let done = false;
    return () => {
      if (done) return;
      done = true;
      load.inflight--;
      this.#forgetIfIdle(agentId, load);
    };
  }

  /** The load record of an agent (created empty; dropped again by {@link #forgetIfIdle}). */
  #loadOf(agentId: string): AgentLoad {
    let load = this.#loads.get(agentId);
    if (load === undefined) {
      load = { sessions: 0, inflight: 0 };
      this.#loads.set(agentId, load);
    }
    return load;
  }

  #forgetIfIdle(agentId: string, load: AgentLoad): void {
    if (load.sessions === 0 && load.inflight === 0 && this.#loads.get(agentId) === load) {
      this.#loads.delete(agentId);
    }
  }

  /** @param epoch `credentialEpoch()` as it was before `credential` was authenticated. */
  async #open(
    identity: AgentIdentity,
    credential: string | undefined,
    load: AgentLoad,
    epoch: number | undefined,
  ): Promise<HttpSession> {
    const agentId = identity.agentId;
    if (load.sessions >= this.#maxSessions) throw new SessionLimitError(this.#maxSessions, agentId);
    // Counted before the first await: parallel initializes cannot all pass the check.
    load.sessions++;
    const agentLoad = load;
    const transport = new HttpSessionTransport(randomUUID(), {
      ...(this.#options.keepAliveMs === undefined
        ? {}
        : { keepAliveMs: this.#options.keepAliveMs }),
      maxStreamBacklogBytes: this.#maxBacklog,
      onRequestsDone: (n) => {
        agentLoad.inflight -= n;
        // An answer can leave the process after its session closed.
        this.#forgetIfIdle(agentId, agentLoad);
      },
      onNotificationDropped: () => {
        this.#droppedNotifications++;
      },
      onMessageUndelivered: (m) => this.#undeliveredMessage(agentId, m),
      onActivity: () => {
        entry.lastSeen = performance.now();
      },
      // Only after connect (below): the session exists by then.
      onDuplicate: (request) => session.refusedDuplicate(request as McpRequest),
    });
    const session = this.#options.gateway.createSession(identity);
    session.holdSlot = () => this.holdInflight(agentId);
    const entry: HttpSession = {
      transport,
      session,
      credential: credential === undefined ? undefined : Buffer.from(credential),
      // -1 (never current) without an epoch: every request is authenticated.
      epoch: epoch ?? -1,
      load,
      lastSeen: performance.now(),
    };
    this.#sessions.set(transport.sessionId, entry);
    this.#startSweeper();
    let released = false;
    const release = (): void => {
      if (released) return;
      released = true;
      this.#sessions.delete(transport.sessionId);
      agentLoad.sessions--;
      this.#forgetIfIdle(agentId, agentLoad);
    };
    try {
      await session.connect(transport);
    } catch (error) {
      release();
      throw error;
    }
    const previous = transport.onclose;
    transport.onclose = () => {
      release();
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
    this.#undeliveredLines.close(); // the summaries pending
    this.#sessions.clear();
  }
}

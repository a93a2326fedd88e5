/**
 * One agent's MCP session: a low-level SDK `Server` bound to exactly one agent identity, whose
 * handlers hand every request to the {@link ToolGateway}.
 *
 * @module
 */
import { Server } from '@modelcontextprotocol/sdk/server/index.js';
import type { RequestHandlerExtra } from '@modelcontextprotocol/sdk/shared/protocol.js';
import type { Transport } from '@modelcontextprotocol/sdk/shared/transport.js';
import {
  CallToolRequestSchema,
  CompleteRequestSchema,
  ErrorCode,
  McpError,
  GetPromptRequestSchema,
  InitializeRequestSchema,
  ListPromptsRequestSchema,
  ListResourcesRequestSchema,
  ListResourceTemplatesRequestSchema,
  ListToolsRequestSchema,
  ReadResourceRequestSchema,
  SetLevelRequestSchema,
  SubscribeRequestSchema,
  UnsubscribeRequestSchema,
  type LoggingLevel,
  type LoggingMessageNotification,
  type Notification,
  type Progress,
  type ProgressToken,
  type Request,
  type RequestId,
  type Result,
  type ServerCapabilities,
  type ServerNotification,
  type ServerRequest,
  type Tool,
} from '@modelcontextprotocol/sdk/types.js';
import { z } from 'zod';
import { InvalidArgumentError } from '../errors.js';
import type { TraceCarrier } from '../telemetry/tracing.js';
import type { CatalogChanges } from './catalog-changes.js';
import type { AgentIdentity } from './backend.js';
import { FastToolCalls, type CancelHook } from './fast-path.js';
import type { ToolCallOutcome } from './tool-call-pipeline.js';
import type { ListHints } from './list-hints.js';
import { exceededBound, MAX_ARGUMENT_DEPTH_LIMIT } from './input-bounds.js';
import { RelayedMcpError, relayedMcpError, toMcpError } from './map-error.js';
import { LOOSE_RESULT } from './upstream.js';

/** The request-handler context of a downstream request. */
export type DownstreamExtra = RequestHandlerExtra<ServerRequest, ServerNotification>;

/**
 * What a `tools/call` handler uses of its context (the fast path provides only this). With
 * `defer`, the handler may hand over work to run right after its response was written
 * (usage settlement, the audit record), so it stays off the call's latency.
 */
export type CallExtra = Pick<DownstreamExtra, 'signal' | 'requestId' | '_meta' | 'requestInfo'> & {
  defer?: ((work: () => void) => void) | undefined;
  /** The fast path's cancellation: use it instead of `signal` where it is enough. */
  cancel?: CancelHook | undefined;
  /** The caller's W3C trace context from outside MCP (gRPC metadata). */
  traceContext?: TraceCarrier | undefined;
  /**
   * The caller's door's slot hold when the call has no session that carries one (a gRPC or
   * `/api/` call: `ToolCallRequest.holdSlot`); see {@link GatewaySession.holdSlot}.
   */
  holdSlot?: SlotHold | undefined;
  /**
   * The calling agent when the call has no session that names it (a gRPC or `/api/` call, a
   * task's): an upstream holding another agent's roots refuses it (`Upstream.rootsHolder`).
   */
  agentId?: string | undefined;
};

/**
 * Takes one in-flight slot of an agent at its door, past the door's bound (it continues a slot
 * the agent held: a call the gateway gave up on whose work may go on upstream); returns the
 * function that frees it (called once).
 */
export type SlotHold = () => () => void;

/** What a session needs from the gateway (implemented by ToolGateway). */
export interface SessionHost {
  readonly serverInfo: { name: string; version: string };
  capabilities(): ServerCapabilities;
  instructions(): string | undefined;
  listTools(session: GatewaySession): Tool[];
  /** Moves on whenever policy may have changed what {@link listTools} gives any session. */
  visibilityGeneration(): number;
  /** False when `tools/list` hides the tool `name` from the session's agent (policy). */
  toolVisible(session: GatewaySession, name: string): boolean;
  /** The list-level hints (`ttlMs`, `cacheScope`, `_meta` …) sent with `tools/list`. */
  toolListHints(session: GatewaySession): ListHints;
  callTool(session: GatewaySession, request: Request, extra: CallExtra): Promise<Result>;
  /** `callTool` of a request without `task`, in two steps: the pipeline's outcome… */
  sessionToolCall(
    session: GatewaySession,
    request: Request,
    extra: CallExtra,
  ): Promise<ToolCallOutcome>;
  /** …and its MCP answer (throws what `callTool` would reject with). */
  toolAnswer(outcome: ToolCallOutcome, request: Request, session: GatewaySession): Result;
  /**
   * A `tools/call` whose params do not fit MCP's schema, which the SDK refuses (InvalidParams)
   * before `callTool`: its audit line.
   */
  invalidToolCall(session: GatewaySession, request: Request): void;
  /**
   * A `resources/read`, `prompts/get` or `completion/complete` whose params do not fit MCP's
   * schema, refused (InvalidParams) before `forward`: its audit line.
   */
  invalidRequest(session: GatewaySession, request: Request): void;
  /**
   * A request refused (`-32600`) because a request still in flight in the session holds its
   * id: its audit line, when its method gets one.
   */
  duplicateRequest(session: GatewaySession, request: Request): void;
  /** `tasks/get`, `tasks/result`, `tasks/list`, `tasks/cancel` (only with the `tasks` capability). */
  taskRequest(session: GatewaySession, request: Request, extra: DownstreamExtra): Promise<Result>;
  forward(session: GatewaySession, request: Request, extra: DownstreamExtra): Promise<Result>;
  subscribe(session: GatewaySession, uri: string, extra: DownstreamExtra): Promise<void>;
  unsubscribe(session: GatewaySession, uri: string): Promise<void>;
  sessionClosed(session: GatewaySession): void;
  /** The session set its log level; resolves once upstreams were told (never rejects). */
  logLevelChanged(session: GatewaySession): Promise<void>;
}

let nextSessionNumber = 0;

const TASK_METHODS = ['tasks/get', 'tasks/result', 'tasks/list', 'tasks/cancel'] as const;

/** A request schema for `method` that takes any params object. */
function looseRequest<M extends string>(method: M) {
  return z.object({ method: z.literal(method), params: z.looseObject({}).optional() });
}

/**
 * Registers `handler` for the method of `schema`, its params checked here rather than by the
 * SDK: the SDK's Protocol answers a request its schema refuses with InternalError (-32603) and
 * the whole issue list as the message, where a malformed request is the client's error —
 * InvalidParams (-32602, `FABRIC_ERR_INVALID_ARGUMENT`) naming its first problem. (`tools/call`
 * is checked again by the SDK's Server first, which answers InvalidParams with its own text.)
 */
function checked<S extends z.ZodType<Request> & { shape: { method: { value: string } } }>(
  server: Server,
  schema: S,
  handler: (request: z.infer<S>, extra: DownstreamExtra) => Result | Promise<Result>,
  oninvalid?: (request: Request) => void,
): void {
  const method = schema.shape.method.value;
  server.setRequestHandler(looseRequest(method), (request, extra) => {
    const parsed = schema.safeParse(request);
    if (!parsed.success) {
      oninvalid?.(request);
      throw toMcpError(invalidParams(method, parsed.error.issues));
    }
    return handler(parsed.data, extra);
  });
}

/** The first problem of a request's params, as an InvalidArgumentError. */
function invalidParams(
  method: string,
  issues: readonly { path: readonly PropertyKey[]; message: string }[],
): InvalidArgumentError {
  const first = issues[0];
  const path = (first?.path ?? []).map((k) => String(k).slice(0, 64)).join('.');
  const more = issues.length > 1 ? ` (and ${issues.length - 1} more)` : '';
  return new InvalidArgumentError(
    `${method} ${path || 'request'}`,
    `is invalid: ${first?.message ?? 'malformed'}${more}`,
  );
}

/**
 * Why an `initialize` request is malformed (as InvalidParams naming its first problem), or
 * `undefined` when the SDK's schema takes it. The SDK's `Server` answers a malformed one
 * InternalError with its whole issue list; and a door that opens a session per `initialize`
 * (Streamable HTTP) checks it first, so a malformed one opens none.
 */
export function malformedInitialize(request: unknown): McpError | undefined {
  const parsed = InitializeRequestSchema.safeParse(request);
  return parsed.success ? undefined : toMcpError(invalidParams('initialize', parsed.error.issues));
}

/** The SDK `Server`'s own `initialize` handler (a method of its class; undefined if renamed). */
type SdkInitialize = ((request: unknown) => Promise<Result>) | undefined;

/**
 * Nesting of an agent's answer to an upstream's request from which it is refused: `JSON.stringify`
 * runs out of stack a few thousand levels down, and an answer it cannot serialize never reached
 * an HTTP or SSE upstream (the SDK only reports the failed send), which waited for it — and the
 * agent's call with it — until a timeout. (A stdio upstream got an InternalError for it, from the
 * line writer.)
 */
const MAX_ANSWER_DEPTH = MAX_ARGUMENT_DEPTH_LIMIT;
const ANSWER_BOUNDS = Object.freeze({
  maxDepth: MAX_ANSWER_DEPTH,
  maxNodes: Number.MAX_SAFE_INTEGER,
});

/** True when an agent's answer (a result, an error's data) nests too deep to be relayed. */
function tooDeepToRelay(value: unknown): boolean {
  return exceededBound(value, ANSWER_BOUNDS) !== undefined;
}

/** What the upstream gets instead of an agent's answer it could not be sent. */
function unrelayableAnswer(method: string): RelayedMcpError {
  return new RelayedMcpError(
    ErrorCode.InternalError,
    `the agent's answer to ${method} nests deeper than ${MAX_ANSWER_DEPTH} levels and cannot be relayed`,
    { code: 'FABRIC_ERR_INVALID_ARGUMENT' },
  );
}

/** MCP log levels, most verbose first. */
export const LOG_LEVELS: readonly LoggingLevel[] = [
  'debug',
  'info',
  'notice',
  'warning',
  'error',
  'critical',
  'alert',
  'emergency',
];

/** A downstream MCP session bound to one agent. */
export class GatewaySession {
  /** Process-unique id (also used in logs). */
  readonly id: string;
  readonly identity: AgentIdentity;
  readonly server: Server;
  /** Resource URIs this session subscribed to. */
  readonly subscriptions = new Set<string>();
  /**
   * Resource URIs of this session's `resources/subscribe` requests still being decided (policy,
   * approval, budget) or sent upstream, with how many such requests each has: they count
   * against the session's subscription limit from the moment they arrive.
   */
  readonly subscribing = new Map<string, number>();
  /**
   * Set by a door that bounds an agent's requests in flight (the Streamable HTTP endpoint): a
   * call of this session the gateway gave up on holds a slot through it until its upstream
   * answered it or its late window ended, so cancelling each call cannot keep more than the
   * bound running upstream. The doors without sessions pass theirs with each call
   * (`ToolCallRequest.holdSlot`).
   */
  holdSlot: SlotHold | undefined = undefined;

  #host: SessionHost;
  #caps: ServerCapabilities;
  #toolsCache: Tool[] | undefined;
  /** The host's visibility generation `#toolsCache` was computed at (stale at any other). */
  #toolsAt = 0;
  /**
   * The tools list the client was last given and still holds as current: undefined before its
   * first `tools/list` and once it was told the list changed (it lists again).
   */
  #toolsGiven: Tool[] | undefined;
  #closed = false;
  /** Lowest severity index forwarded (set by logging/setLevel); everything by default. */
  #minLevel = 0;
  #logLevel: LoggingLevel | undefined;
  #protocolVersion: string | undefined;

  constructor(host: SessionHost, identity: AgentIdentity) {
    this.id = `s${++nextSessionNumber}`;
    this.identity = identity;
    this.#host = host;
    const capabilities = host.capabilities();
    this.#caps = capabilities;
    const instructions = host.instructions();
    this.server = new Server(host.serverInfo, {
      capabilities,
      ...(instructions === undefined ? {} : { instructions }),
    });
    const s = this.server;
    // The SDK numbers a server's requests from 0, and an SDK client's `Protocol` ignores a
    // `notifications/cancelled` whose requestId is falsy: the first server→client request of a
    // session (often a sampling) could never be cancelled at such a client — its handler ran on
    // after the gateway gave up on it. This session's requests are numbered from 1.
    const ids = s as unknown as { _requestMessageId?: unknown };
    if (ids._requestMessageId === 0) ids._requestMessageId = 1;
    const sdkInitialize = (s as unknown as { _oninitialize?: SdkInitialize })._oninitialize;
    if (typeof sdkInitialize === 'function') {
      // The SDK's own handling, once the params are checked here (see malformedInitialize).
      checked(s, InitializeRequestSchema, async (req) => {
        const result = await sdkInitialize.call(s, req);
        const version = (result as { protocolVersion?: unknown }).protocolVersion;
        if (typeof version === 'string') this.#protocolVersion = version;
        return result;
      });
    }
    checked(s, ListToolsRequestSchema, () => ({
      ...host.toolListHints(this),
      tools: this.tools(),
    }));
    checked(s, CallToolRequestSchema, (req, extra) => host.callTool(this, req, extra));
    if (capabilities.tasks) {
      const task = (req: Request, extra: DownstreamExtra): Promise<Result> =>
        host.taskRequest(this, req, extra);
      // Params are checked by the host: a malformed `taskId` gets the not-found answer every
      // unknown id gets (InvalidParams), not the SDK's schema dump as an InternalError.
      for (const method of TASK_METHODS) s.setRequestHandler(looseRequest(method), task);
    }
    // The requests that pass policy as pseudo-tools get an audit line when malformed too.
    const invalid = (req: Request): void => host.invalidRequest(this, req);
    if (capabilities.prompts) {
      checked(s, ListPromptsRequestSchema, (req, extra) => host.forward(this, req, extra));
      checked(s, GetPromptRequestSchema, (req, extra) => host.forward(this, req, extra), invalid);
    }
    if (capabilities.resources) {
      checked(s, ListResourcesRequestSchema, (req, extra) => host.forward(this, req, extra));
      checked(s, ListResourceTemplatesRequestSchema, (req, extra) =>
        host.forward(this, req, extra),
      );
      checked(
        s,
        ReadResourceRequestSchema,
        (req, extra) => host.forward(this, req, extra),
        invalid,
      );
      if (capabilities.resources.subscribe) {
        checked(s, SubscribeRequestSchema, async (req, extra) => {
          await host.subscribe(this, req.params.uri, extra);
          return {};
        });
        checked(s, UnsubscribeRequestSchema, async (req) => {
          await host.unsubscribe(this, req.params.uri);
          return {};
        });
      }
    }
    if (capabilities.completions) {
      checked(s, CompleteRequestSchema, (req, extra) => host.forward(this, req, extra), invalid);
    }
    checked(s, SetLevelRequestSchema, async (req) => {
      this.#minLevel = Math.max(0, LOG_LEVELS.indexOf(req.params.level));
      this.#logLevel = req.params.level;
      await host.logLevelChanged(this);
      return {};
    });
    s.onclose = () => this.#onclose();
  }

  /**
   * Connects the session's server to a downstream transport. Plain `tools/call` requests are
   * then served beside the server's Protocol (see fast-path.ts); everything else goes through it.
   */
  async connect(transport: Transport): Promise<void> {
    await this.server.connect(transport);
    // The fast path takes no task-augmented call: the two halves of callTool, one await.
    new FastToolCalls(
      transport,
      (request, extra) => this.#host.sessionToolCall(this, request, extra),
      (error) => this.server.onerror?.(error),
      (outcome, request) => this.#host.toolAnswer(outcome as ToolCallOutcome, request, this),
      (request) => this.#host.invalidToolCall(this, request),
      this.server,
      (request) => this.refusedDuplicate(request),
    );
  }

  /**
   * A request refused because a request in flight in this session holds its id (the fast path
   * refuses it, or the Streamable HTTP transport before it): audited as other refusals are.
   */
  refusedDuplicate(request: Request): void {
    this.#host.duplicateRequest(this, request);
  }

  /** The tools this agent may see (cached until the catalog changes). */
  tools(): Tool[] {
    const at = this.#host.visibilityGeneration();
    if (this.#toolsCache === undefined || this.#toolsAt !== at) {
      this.#toolsCache = this.#host.listTools(this);
      this.#toolsAt = at;
    }
    this.#toolsGiven = this.#toolsCache;
    return this.#toolsCache;
  }

  /** Tells the client its tools list changed (it no longer holds a current one). */
  #toolListChanged(): void {
    this.#toolsGiven = undefined;
    this.server.sendToolListChanged().catch(() => undefined);
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** The level this client set with `logging/setLevel`, if it did. */
  get logLevel(): LoggingLevel | undefined {
    return this.#logLevel;
  }

  /** The MCP protocol version the session's `initialize` agreed on (undefined before it). */
  get protocolVersion(): string | undefined {
    return this.#protocolVersion;
  }

  /**
   * Drops cached lists and tells the client which lists changed. A tools change that only
   * touches tools hidden from this agent is not told (its list is the same; before, every
   * agent heard of every change to tools policy hides from it).
   */
  catalogChanged(what: CatalogChanges): void {
    if (this.#closed) return;
    const caps = this.#caps;
    if (what.tools) {
      this.#toolsCache = undefined;
      const names = what.toolNames;
      let seen = names === undefined;
      if (names !== undefined) {
        for (const name of names) {
          if (this.#host.toolVisible(this, name)) {
            seen = true;
            break;
          }
        }
      }
      // Not seen: the list the client holds is still this agent's list.
      if (seen) this.#toolListChanged();
    }
    if (what.prompts && caps.prompts) this.server.sendPromptListChanged().catch(() => undefined);
    if (what.resources && caps.resources)
      this.server.sendResourceListChanged().catch(() => undefined);
  }

  /**
   * Policy changed what the gateway hides (see `GatewayBackend.onToolVisibilityChange`): when the
   * tools this agent may see now differ from the list the client holds, the cached list is
   * dropped and the client told (`notifications/tools/list_changed`). A client that holds none
   * (it never listed its tools, or was told already and has not listed them again) is told
   * nothing: its next `tools/list` is fresh.
   */
  toolVisibilityChanged(generation: number): void {
    const given = this.#toolsGiven;
    if (this.#closed || given === undefined) return;
    // Listed since the change: the client holds the current list.
    if (this.#toolsAt === generation && this.#toolsCache === given) return;
    const now = this.#host.listTools(this);
    this.#toolsAt = generation;
    if (now.length === given.length && now.every((t, i) => t.name === given[i]!.name)) {
      this.#toolsCache = given;
      return;
    }
    this.#toolsCache = now;
    this.#toolListChanged();
  }

  /**
   * Forwards a progress update of a call to the client, under the client's own token. The
   * promise settles once the notification was handed to the transport (never rejects).
   */
  progress(token: ProgressToken, progress: Progress, relatedRequestId?: RequestId): Promise<void> {
    if (this.#closed) return Promise.resolve();
    return this.server
      .notification(
        { method: 'notifications/progress', params: { ...progress, progressToken: token } },
        relatedRequestId === undefined ? undefined : { relatedRequestId },
      )
      .catch(() => undefined);
  }

  /**
   * Forwards an upstream log message, filtered by the level this client set. With
   * `relatedRequestId` it travels on the stream of that call (HTTP).
   */
  log(params: LoggingMessageNotification['params'], relatedRequestId?: RequestId): void {
    if (this.#closed || LOG_LEVELS.indexOf(params.level) < this.#minLevel) return;
    this.server
      .notification(
        { method: 'notifications/message', params },
        relatedRequestId === undefined ? undefined : { relatedRequestId },
      )
      .catch(() => undefined);
  }

  /** Sends an arbitrary notification (resources/updated …). */
  notify(notification: Notification): void {
    if (this.#closed) return;
    this.server.notification(notification as ServerNotification).catch(() => undefined);
  }

  /**
   * Whether {@link request} sends a server→client request of `method` to the client: false for
   * sampling, elicitation and roots when the client did not declare the capability ({@link
   * request} answers those itself, the client never sees them).
   */
  takes(method: string): boolean {
    const caps = this.server.getClientCapabilities() ?? {};
    if (method === 'roots/list') return caps.roots !== undefined;
    if (method === 'sampling/createMessage') return caps.sampling !== undefined;
    if (method === 'elicitation/create') return caps.elicitation !== undefined;
    return true;
  }

  /**
   * Forwards a server→client request (sampling, elicitation, roots) to this agent's client.
   * @param relatedRequestId the agent's call that caused it (its HTTP stream carries it).
   */
  request(request: Request, signal: AbortSignal, relatedRequestId?: RequestId): Promise<Result> {
    // Answer for clients that did not declare the capability instead of sending them a request
    // they cannot handle.
    if (request.method === 'roots/list' && !this.takes(request.method)) {
      return Promise.resolve({ roots: [] });
    }
    if (!this.takes(request.method)) {
      return Promise.reject(
        new McpError(
          ErrorCode.MethodNotFound,
          `the agent's client does not support ${request.method}`,
        ),
      );
    }
    return this.server
      .request(request as ServerRequest, LOOSE_RESULT, {
        signal,
        // Server→client requests may wait for a human (elicitation); no gateway-side timeout
        // beyond the upstream's own, which cancels through `signal`.
        timeout: 24 * 60 * 60 * 1000,
        ...(relatedRequestId === undefined ? {} : { relatedRequestId }),
      })
      .then(
        (result) => {
          if (tooDeepToRelay(result)) throw unrelayableAnswer(request.method);
          return result;
        },
        (error: unknown) => {
          if (!(error instanceof McpError)) throw error;
          if (tooDeepToRelay(error.data)) throw unrelayableAnswer(request.method);
          // The client's error goes back upstream with its own message, not the SDK's prefix.
          throw relayedMcpError(error);
        },
      );
  }

  /** Closes the session's server and transport. */
  async close(): Promise<void> {
    await this.server.close().catch(() => undefined);
    this.#onclose();
  }

  #onclose(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#host.sessionClosed(this);
  }
}

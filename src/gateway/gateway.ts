/**
 * ToolGateway: the pipeline every tool call goes through, and the router between agent
 * sessions (downstream) and upstream tool servers.
 *
 * ```
 * identify → policy [→ approval wait] → budget reserve → forward → settle usage → audit
 * ```
 *
 * Upstream connections are shared by every agent session. Server→client requests from an
 * upstream (sampling, elicitation, roots/list) carry no reference to the call that caused them
 * over stdio, so they are routed to the one session that has calls in flight on that upstream;
 * when several sessions do, the request is refused with a routing error (see README).
 *
 * @module
 */
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import {
  ErrorCode,
  McpError,
  type CallToolResult,
  type LoggingLevel,
  type LoggingMessageNotification,
  type Notification,
  type Request,
  type RequestId,
  type Result,
  type ServerCapabilities,
  type Tool,
} from '@modelcontextprotocol/sdk/types.js';
import {
  ClosedError,
  ConfigError,
  FabricError,
  RoutingError,
  ToolNotFoundError,
} from '../errors.js';
import { AuditLog, type AuditLogOptions, type AuditOutcome } from './audit-log.js';
import type {
  AgentIdentity,
  GatewayBackend,
  ToolCallAllowed,
  ToolCallAuthorization,
} from './backend.js';
import { buildCatalog, resourceOwner, type Catalog, type CatalogProblem } from './catalog.js';
import { FABRIC_TOOLS, type FabricTool } from './fabric-tools.js';
import { perCaller, type ListHints } from './list-hints.js';
import { GatewayMetrics } from './metrics.js';
import {
  messageOf,
  refusalError,
  refusalResult,
  toMcpError,
  toolErrorResult,
} from './map-error.js';
import {
  GatewaySession,
  LOG_LEVELS,
  type CallExtra,
  type DownstreamExtra,
  type SessionHost,
} from './session.js';
import { estimateTokens, ToolCosts } from './tool-costs.js';
import { Upstream } from './upstream.js';
import {
  upstreamSpecSchema,
  type UpstreamSpec,
  type UpstreamSpecInput,
} from './upstream-config.js';

/** Default of {@link ToolGatewayOptions.approvalProgressIntervalMs}. */
export const DEFAULT_APPROVAL_PROGRESS_INTERVAL_MS = 1000;
/** Default of {@link ToolGatewayOptions.shutdownGraceMs}. */
export const DEFAULT_SHUTDOWN_GRACE_MS = 5000;

/** A structured log line from the gateway (the CLI prints them; the library drops them). */
export interface GatewayLogEntry {
  level: 'debug' | 'info' | 'warn' | 'error';
  msg: string;
  [key: string]: unknown;
}

/** Options of a {@link ToolGateway}. */
export interface ToolGatewayOptions {
  /** Identity, policy, budget and fabric operations. */
  backend: GatewayBackend;
  /** Upstream tool servers by name. */
  upstreams?: Readonly<Record<string, UpstreamSpecInput | UpstreamSpec>>;
  /** Tool-name glob → cost per call (first match wins). @default {} */
  toolCosts?: Readonly<Record<string, number>>;
  /** Audit log file and rotation; `false` disables it. @default false */
  audit?: AuditLogOptions | false;
  /**
   * Hide from `tools/list` the tools policy denies to the agent outright (needs
   * `backend.isToolVisible`).
   * @default true
   */
  hideDeniedTools?: boolean;
  /** How long a call may wait for a human approval; passed to the backend. */
  approvalTimeoutSeconds?: number;
  /** Interval of progress notifications while a call waits for approval. @default 1000 */
  approvalProgressIntervalMs?: number;
  /** Expose the `fabric__*` tools. @default true */
  fabricTools?: boolean;
  /** How long `close()` lets in-flight calls finish before cutting them off. @default 5000 */
  shutdownGraceMs?: number;
  /** Structured log sink. @default no-op */
  logger?: (entry: GatewayLogEntry) => void;
  /** What the gateway calls itself downstream. */
  serverInfo?: { name: string; version: string };
}

interface InFlight {
  session: GatewaySession;
  requestId: RequestId;
}

/** Who may use an `exclusive` upstream now, and who waits (FIFO). */
interface SessionGate {
  owner: GatewaySession | undefined;
  active: number;
  waiting: { session: GatewaySession; go: () => void }[];
}

const EMPTY_CATALOG: Catalog = buildCatalog([], new Set(), false);
/** The metrics label of a tool name that is not in the catalog (agents must not grow labels). */
const UNKNOWN_TOOL = '(unknown)';

/**
 * The tool gateway. Create sessions with {@link createSession} and connect each to a transport.
 *
 * @example
 * const gateway = new ToolGateway({ backend, upstreams: { fs: { command: 'node', args: [bin, dir] } } });
 * await gateway.start();
 * const session = gateway.createSession({ kind: 'agent', agentId, labels: {} });
 * await session.connect(transport);
 */
export class ToolGateway implements SessionHost {
  readonly serverInfo: { name: string; version: string };

  readonly #backend: GatewayBackend;
  readonly #upstreams = new Map<string, Upstream>();
  readonly #costs: ToolCosts;
  readonly #audit: AuditLog | undefined;
  readonly #hideDenied: boolean;
  readonly #approvalTimeoutSeconds: number | undefined;
  readonly #approvalProgressMs: number;
  readonly #fabricTools: ReadonlyMap<string, FabricTool>;
  readonly #graceMs: number;
  readonly #log: (entry: GatewayLogEntry) => void;
  readonly #sessions = new Set<GatewaySession>();
  /** Counts of every request's decision, outcome and duration (rendered at `GET /metrics`). */
  readonly metrics = new GatewayMetrics();
  readonly #inflight = new Map<Upstream, Set<InFlight>>();
  readonly #gates = new Map<Upstream, SessionGate>();
  readonly #subscribers = new Map<string, Set<GatewaySession>>();
  /** The log level each upstream was last told (see #syncLogLevel). */
  readonly #logLevels = new Map<Upstream, LoggingLevel>();
  /** Last result size per tool, used as the token estimate of the next reservation. */
  readonly #lastTokens = new Map<string, number>();
  #catalog: Catalog = EMPTY_CATALOG;
  #calls = 0;
  #drained: (() => void) | undefined;
  #state: 'new' | 'started' | 'closing' | 'closed' = 'new';

  constructor(options: ToolGatewayOptions) {
    this.#backend = options.backend;
    this.serverInfo = options.serverInfo ?? { name: 'agent-fabric', version: '0.1.0' };
    this.#costs = new ToolCosts(options.toolCosts);
    this.#audit = options.audit ? openAuditLog(options.audit) : undefined;
    this.#hideDenied = options.hideDeniedTools ?? true;
    this.#approvalTimeoutSeconds = options.approvalTimeoutSeconds;
    this.#approvalProgressMs =
      options.approvalProgressIntervalMs ?? DEFAULT_APPROVAL_PROGRESS_INTERVAL_MS;
    this.#fabricTools = options.fabricTools === false ? new Map() : FABRIC_TOOLS;
    this.#graceMs = options.shutdownGraceMs ?? DEFAULT_SHUTDOWN_GRACE_MS;
    this.#log = options.logger ?? (() => undefined);
    for (const [name, input] of Object.entries(options.upstreams ?? {})) {
      if (!/^[A-Za-z0-9_.-]+$/.test(name)) {
        throw new ConfigError(`upstreams.${name}`, 'must be named with letters, digits, _ . -');
      }
      const parsed = upstreamSpecSchema.safeParse(input);
      if (!parsed.success) {
        const issue = parsed.error.issues[0];
        throw new ConfigError(
          `upstreams.${name}${issue?.path.length ? '.' + issue.path.join('.') : ''}`,
          issue?.message ?? 'is invalid',
        );
      }
      this.#upstreams.set(name, new Upstream(name, parsed.data, this.#hooks));
    }
  }

  /** The upstreams by name. */
  get upstreams(): ReadonlyMap<string, Upstream> {
    return this.#upstreams;
  }

  /** The current aggregated catalog. */
  get catalog(): Catalog {
    return this.#catalog;
  }

  /** Live agent sessions. */
  get sessions(): ReadonlySet<GatewaySession> {
    return this.#sessions;
  }

  /**
   * Connects every upstream and builds the catalog.
   * @throws UpstreamUnavailableError when a required upstream cannot start.
   * @throws ToolNameError on a name clash or an over-long downstream name.
   */
  async start(): Promise<void> {
    if (this.#state !== 'new') throw new ClosedError('ToolGateway');
    const ups = [...this.#upstreams.values()];
    const results = await Promise.allSettled(ups.map((u) => u.start()));
    const failures: unknown[] = [];
    results.forEach((r, i) => {
      const u = ups[i]!;
      if (r.status === 'rejected') {
        if (u.spec.required) failures.push(r.reason);
        else {
          this.#log({
            level: 'warn',
            msg: 'optional upstream failed to start',
            upstream: u.name,
            error: messageOf(r.reason),
          });
          u.retryInBackground();
        }
      }
    });
    try {
      if (failures.length > 0) throw failures[0];
      this.#catalog = buildCatalog(ups, new Set(this.#fabricTools.keys()), true);
    } catch (error) {
      await Promise.all(ups.map((u) => u.close()));
      this.#state = 'closed';
      throw error;
    }
    this.#state = 'started';
  }

  /** Opens a session for one agent; connect it to a transport next. */
  createSession(identity: AgentIdentity): GatewaySession {
    if (this.#state === 'closing' || this.#state === 'closed') throw new ClosedError('ToolGateway');
    const session = new GatewaySession(this, identity);
    this.#sessions.add(session);
    return session;
  }

  // -------------------------------------------------------------------------------------------
  // SessionHost

  /** Union of the upstreams' capabilities, plus tools and logging of the gateway itself. */
  capabilities(): ServerCapabilities {
    const caps: ServerCapabilities = { tools: { listChanged: true }, logging: {} };
    for (const u of this.#upstreams.values()) {
      const c = u.capabilities;
      if (c.prompts) caps.prompts = { listChanged: true };
      if (c.resources) {
        caps.resources = {
          listChanged: true,
          subscribe: Boolean(caps.resources?.subscribe) || Boolean(c.resources.subscribe),
        };
      }
      if (c.completions) caps.completions = {};
    }
    return caps;
  }

  instructions(): string | undefined {
    const parts = [...this.#upstreams.values()]
      .filter((u) => u.instructions)
      .map((u) => `[${u.name}] ${u.instructions ?? ''}`);
    return parts.length > 0 ? parts.join('\n\n') : undefined;
  }

  /**
   * The list-level hints of `tools/list`. A list filtered by policy differs by agent, so a
   * `public` cache scope becomes `private`.
   */
  toolListHints(): ListHints {
    const hints = this.#catalog.hints.tools;
    return this.#hideDenied && this.#backend.isToolVisible ? perCaller(hints) : hints;
  }

  listTools(session: GatewaySession): Tool[] {
    const { agentId, poolId, labels } = session.identity;
    const probe = this.#hideDenied ? this.#backend.isToolVisible?.bind(this.#backend) : undefined;
    const tools: Tool[] = [];
    const add = (name: string, tool: Tool): void => {
      if (!probe || probe({ agentId, poolId, tool: name, labels })) tools.push(tool);
    };
    for (const [name, t] of this.#fabricTools) add(name, t.tool);
    for (const [name, route] of this.#catalog.tools) add(name, route.item);
    return tools;
  }

  async callTool(session: GatewaySession, request: Request, extra: CallExtra): Promise<Result> {
    const started = performance.now();
    const params = (request.params ?? {}) as { name?: unknown; arguments?: unknown };
    const name = String(params.name);
    const args = (params.arguments ?? {}) as Record<string, unknown>;
    const { agentId } = session.identity;
    const fabricTool = this.#fabricTools.get(name);
    const route = fabricTool ? undefined : this.#catalog.tools.get(name);
    const known = fabricTool !== undefined || route !== undefined;
    const audit = this.#auditor(agentId, name, args, started, known ? name : UNKNOWN_TOOL);
    if (!known) {
      audit({ decision: 'none', outcome: 'error', code: ToolNotFoundError.code });
      throw new McpError(ErrorCode.InvalidParams, `Unknown tool: ${name}`);
    }
    if (this.#state !== 'started') {
      audit({ decision: 'none', outcome: 'error', code: ClosedError.code });
      return toolErrorResult(new ClosedError('the gateway'));
    }
    this.#beginCall();
    let endLater = false;
    try {
      const cost = this.#costs.costOf(name);
      let auth: ToolCallAuthorization;
      let waited: boolean;
      try {
        let a = this.#authorize(session, name, args, extra, {
          tokens: this.#lastTokens.get(name) ?? 0,
          cost,
        });
        if (a instanceof Promise) a = await a; // only approval waits
        ({ auth, waited } = a);
      } catch (error) {
        audit({ decision: 'error', outcome: 'error', code: codeOf(error) });
        return toolErrorResult(error);
      }
      if (!auth.allowed) {
        const d = describeDecision(auth.decision);
        audit({ decision: d.action ?? 'deny', rule: d.rule, outcome: 'denied', code: auth.code });
        return refusalResult(auth);
      }
      const d = describeDecision(auth.decision);
      const decision = waited ? 'approved' : (d.action ?? 'allow');
      let result: Result;
      try {
        result = fabricTool
          ? await fabricTool.call(this.#backend, { agentId, args, signal: extra.signal })
          : await this.#upstreamRequest(
              session,
              route!.upstream,
              {
                method: 'tools/call',
                // `arguments` as received: absent stays absent (policy and audit saw `{}`).
                params:
                  params.arguments === undefined
                    ? { name: route!.upstreamName }
                    : { name: route!.upstreamName, arguments: params.arguments },
              },
              extra,
            );
      } catch (error) {
        this.#settle(auth, { tokens: 0, cost: 0 });
        const cancelled = (extra.cancel ?? extra.signal).aborted;
        audit({
          decision,
          rule: d.rule,
          outcome: cancelled ? 'cancelled' : 'error',
          code: codeOf(error),
        });
        if (error instanceof McpError && !(error.code === ErrorCode.ConnectionClosed)) throw error;
        return toolErrorResult(error);
      }
      const done = result;
      const finish = (): void => {
        const tokens = estimateTokens(done);
        this.#lastTokens.set(name, tokens);
        this.#settle(auth, { tokens, cost });
        audit({
          decision,
          rule: d.rule,
          outcome: (done as CallToolResult).isError ? 'tool_error' : 'ok',
          tokens,
          cost,
        });
      };
      if (extra.defer) {
        // Settle and audit right after the response is written; the call ends then.
        endLater = true;
        extra.defer(() => {
          try {
            finish();
          } finally {
            this.#endCall();
          }
        });
      } else {
        finish();
      }
      return result;
    } finally {
      if (!endLater) this.#endCall();
    }
  }

  /**
   * Policy [→ approval wait, with progress notifications] → budget reservation for one request
   * of `session`. Calls no human has to decide are authorized without a promise.
   */
  #authorize(
    session: GatewaySession,
    tool: string,
    params: Record<string, unknown>,
    extra: Pick<CallExtra, 'signal' | 'requestId' | '_meta'>,
    estimate: { tokens: number; cost: number },
  ):
    | { auth: ToolCallAuthorization; waited: boolean }
    | Promise<{
        auth: ToolCallAuthorization;
        waited: boolean;
      }> {
    const { agentId, poolId, labels } = session.identity;
    const ctx = { agentId, poolId, tool, params, labels, estimate };
    const now = this.#backend.tryAuthorizeToolCall?.(ctx);
    if (now !== undefined) return { auth: now, waited: false };
    const progressToken = extra._meta?.progressToken;
    let waitTimer: NodeJS.Timeout | undefined;
    let waited = false;
    return this.#backend
      .authorizeToolCall({
        ...ctx,
        signal: extra.signal,
        approvalTimeoutSeconds: this.#approvalTimeoutSeconds,
        onWaiting: (approval) => {
          waited = true;
          if (progressToken === undefined || waitTimer) return;
          const id = describeApproval(approval);
          let tick = 0;
          const send = (): void =>
            void session.progress(
              progressToken,
              { progress: tick++, message: `waiting for human approval${id ? ` ${id}` : ''}` },
              extra.requestId,
            );
          send();
          waitTimer = setInterval(send, this.#approvalProgressMs);
          waitTimer.unref();
        },
      })
      .then((auth) => ({ auth, waited }))
      .finally(() => {
        if (waitTimer) clearInterval(waitTimer);
      });
  }

  /**
   * Counts one request that arrived at `started` (performance.now) in {@link metrics} — under
   * `metricTool`, `(unknown)` for a name not in the catalog — and writes its audit line; the
   * line's digest, time and JSON are made when the log flushes, after the response.
   */
  #auditor(
    agentId: string,
    tool: string,
    args: unknown,
    started: number,
    metricTool = tool,
  ): (fields: AuditOutcome) => void {
    const log = this.#audit;
    const metrics = this.metrics;
    return (fields) => {
      const now = performance.now();
      const durationMs = now - started;
      metrics.recordCall(metricTool, fields.decision, fields.outcome, durationMs);
      if (!log) return;
      log.writeCall(
        agentId,
        tool,
        args,
        Date.now() - durationMs,
        Math.round(durationMs * 1000) / 1000,
        fields,
      );
    };
  }

  #settle(auth: ToolCallAllowed, usage: { tokens: number; cost: number }): void {
    try {
      const settled = this.#backend.settleToolCall(auth, usage);
      if (settled instanceof Promise) {
        settled.catch((error: unknown) =>
          this.#log({ level: 'error', msg: 'settling usage failed', error: messageOf(error) }),
        );
      }
    } catch (error) {
      this.#log({ level: 'error', msg: 'settling usage failed', error: messageOf(error) });
    }
  }

  async forward(
    session: GatewaySession,
    request: Request,
    extra: DownstreamExtra,
  ): Promise<Result> {
    const catalog = this.#catalog;
    const params = (request.params ?? {}) as Record<string, unknown>;
    switch (request.method) {
      // The upstreams' list-level hints (ttlMs, cacheScope, _meta …) travel with the lists.
      case 'prompts/list':
        return {
          ...catalog.hints.prompts,
          prompts: [...catalog.prompts.values()].map((r) => r.item),
        };
      case 'resources/list':
        return { ...catalog.hints.resources, resources: catalog.resources };
      case 'resources/templates/list':
        return { ...catalog.hints.resourceTemplates, resourceTemplates: catalog.resourceTemplates };
      case 'prompts/get': {
        const name = String(params.name);
        const route = catalog.prompts.get(name);
        if (!route) throw toMcpError(new ToolNotFoundError(name, 'prompt'));
        const args = (params.arguments ?? {}) as Record<string, unknown>;
        return this.#guarded(session, 'prompts/get', { name, arguments: args }, extra, () =>
          this.#upstreamRequest(
            session,
            route.upstream,
            { method: request.method, params: { ...params, name: route.upstreamName } },
            extra,
          ),
        );
      }
      case 'resources/read': {
        const uri = String(params.uri);
        const owner = resourceOwner(catalog, uri);
        if (!owner) throw toMcpError(new ToolNotFoundError(uri, 'resource'));
        return this.#guarded(session, 'resources/read', resourceParams(uri), extra, () =>
          this.#upstreamRequest(session, owner, request, extra),
        );
      }
      case 'completion/complete': {
        // Completions can reveal data (file names, records), so they pass policy too.
        const ref = (params.ref ?? {}) as { type?: string; name?: string; uri?: string };
        const argument = params.argument;
        if (ref.type === 'ref/prompt') {
          const name = String(ref.name);
          const route = catalog.prompts.get(name);
          if (!route) throw toMcpError(new ToolNotFoundError(name, 'prompt'));
          return this.#guarded(session, 'completion/complete', { name, argument }, extra, () =>
            this.#upstreamRequest(
              session,
              route.upstream,
              {
                method: request.method,
                params: { ...params, ref: { ...ref, name: route.upstreamName } },
              },
              extra,
            ),
          );
        }
        const uri = String(ref.uri);
        const owner =
          catalog.templateOwners.find((t) => t.template.toString() === uri)?.upstream ??
          resourceOwner(catalog, uri);
        if (!owner) throw toMcpError(new ToolNotFoundError(uri, 'resource template'));
        return this.#guarded(
          session,
          'completion/complete',
          { ...resourceParams(uri), argument },
          extra,
          () => this.#upstreamRequest(session, owner, request, extra),
        );
      }
      default:
        throw new McpError(ErrorCode.MethodNotFound, `Method not found: ${request.method}`);
    }
  }

  /**
   * A resource read, prompt get or completion carries data to the model as a tool call does,
   * and a resource subscription asks to watch a resource, so each passes the same policy (and
   * approval) check first — as the pseudo-tool `resources/read` / `resources/subscribe` with
   * `{ uri }` (plus the decoded `path` of a `file:` URI), `prompts/get` with
   * `{ name, arguments }`, or `completion/complete` with the prompt's `name` or the template's
   * `uri` (and `path`) plus `argument` — and gets an audit line. Its budget is checked as a
   * call's (an exhausted budget refuses it); the reservation estimates the tokens of the last
   * such request and is settled with the tokens of what came back (the same estimator as tool
   * results; none for a subscription) and the `toolCosts` entry matching the pseudo-tool's
   * name, if any. Refusals are JSON-RPC errors.
   */
  async #guarded(
    session: GatewaySession,
    tool: 'resources/read' | 'resources/subscribe' | 'prompts/get' | 'completion/complete',
    params: Record<string, unknown>,
    extra: DownstreamExtra,
    read: () => Promise<Result>,
  ): Promise<Result> {
    const started = performance.now();
    const audit = this.#auditor(session.identity.agentId, tool, params, started);
    let auth: ToolCallAuthorization;
    let waited: boolean;
    const cost = this.#costs.costOf(tool);
    try {
      let a = this.#authorize(session, tool, params, extra, {
        tokens: this.#lastTokens.get(tool) ?? 0,
        cost,
      });
      if (a instanceof Promise) a = await a;
      ({ auth, waited } = a);
    } catch (error) {
      audit({ decision: 'error', outcome: 'error', code: codeOf(error) });
      throw toMcpError(error);
    }
    const d = describeDecision(auth.decision);
    if (!auth.allowed) {
      audit({ decision: d.action ?? 'deny', rule: d.rule, outcome: 'denied', code: auth.code });
      throw refusalError(auth);
    }
    const decision = waited ? 'approved' : (d.action ?? 'allow');
    let result: Result;
    try {
      result = await read();
    } catch (error) {
      this.#settle(auth, { tokens: 0, cost: 0 });
      audit({ decision, rule: d.rule, outcome: 'error', code: codeOf(error) });
      throw error;
    }
    const tokens = tool === 'resources/subscribe' ? 0 : estimateTokens(result);
    this.#lastTokens.set(tool, tokens);
    this.#settle(auth, { tokens, cost });
    audit({ decision, rule: d.rule, outcome: 'ok', tokens, cost });
    return result;
  }

  /** Sends a request upstream on behalf of a session, tracking it for routing and progress. */
  #upstreamRequest(
    session: GatewaySession,
    upstream: Upstream,
    request: Request,
    extra: CallExtra,
  ): Promise<Result> {
    return upstream.spec.exclusive
      ? this.#exclusiveRequest(session, upstream, request, extra)
      : this.#forward(session, upstream, request, extra);
  }

  /** {@link #upstreamRequest} on an `exclusive` upstream: one session's calls at a time. */
  async #exclusiveRequest(
    session: GatewaySession,
    upstream: Upstream,
    request: Request,
    extra: CallExtra,
  ): Promise<Result> {
    await this.#enter(upstream, session, extra.signal);
    try {
      return await this.#forward(session, upstream, request, extra);
    } finally {
      this.#leave(upstream);
    }
  }

  /** Waits until `session` may use the exclusive `upstream` (its own calls share the turn). */
  async #enter(upstream: Upstream, session: GatewaySession, signal: AbortSignal): Promise<void> {
    let gate = this.#gates.get(upstream);
    if (gate === undefined)
      this.#gates.set(upstream, (gate = { owner: undefined, active: 0, waiting: [] }));
    if (gate.owner === undefined || (gate.owner === session && gate.waiting.length === 0)) {
      gate.owner = session;
      gate.active++;
      return;
    }
    const g = gate;
    await new Promise<void>((resolve, reject) => {
      const waiter = {
        session,
        go: () => {
          signal.removeEventListener('abort', onAbort);
          resolve();
        },
      };
      const onAbort = (): void => {
        const i = g.waiting.indexOf(waiter);
        if (i >= 0) g.waiting.splice(i, 1);
        reject(signal.reason instanceof Error ? signal.reason : new Error('cancelled'));
      };
      signal.addEventListener('abort', onAbort, { once: true });
      g.waiting.push(waiter);
    });
  }

  /** Ends one call on an exclusive upstream; the next waiting session takes over when it is free. */
  #leave(upstream: Upstream): void {
    const gate = this.#gates.get(upstream)!;
    if (--gate.active > 0) return;
    gate.owner = undefined;
    const next = gate.waiting[0]?.session;
    if (next === undefined) return;
    // Admit every waiting call of the next session together.
    gate.owner = next;
    for (const w of gate.waiting.filter((x) => x.session === next)) {
      gate.active++;
      w.go();
    }
    gate.waiting = gate.waiting.filter((x) => x.session !== next);
  }

  async #forward(
    session: GatewaySession,
    upstream: Upstream,
    request: Request,
    extra: CallExtra,
  ): Promise<Result> {
    const progressToken = extra._meta?.progressToken;
    const entry: InFlight = { session, requestId: extra.requestId };
    let set = this.#inflight.get(upstream);
    if (!set) this.#inflight.set(upstream, (set = new Set()));
    set.add(entry);
    // The response must not overtake the last progress notification on the client's stream.
    let lastProgress: Promise<void> | undefined;
    try {
      const cancel = extra.cancel;
      const result = await upstream.request(request, {
        // `signal` only without a cancel hook: reading it creates an AbortController.
        cancel,
        signal: cancel === undefined ? extra.signal : undefined,
        onprogress:
          progressToken === undefined
            ? undefined
            : (p) => {
                lastProgress = session.progress(progressToken, p, extra.requestId);
              },
      });
      if (lastProgress) await lastProgress;
      return result;
    } catch (error) {
      if (error instanceof McpError) throw error;
      // Gateway-side failures of non-tool requests surface as JSON-RPC errors.
      if (request.method !== 'tools/call') throw toMcpError(error);
      throw error;
    } finally {
      set.delete(entry);
    }
  }

  async subscribe(session: GatewaySession, uri: string, extra: DownstreamExtra): Promise<void> {
    const owner = resourceOwner(this.#catalog, uri);
    if (!owner) throw toMcpError(new ToolNotFoundError(uri, 'resource'));
    await this.#guarded(session, 'resources/subscribe', resourceParams(uri), extra, async () => {
      await this.#subscribe(session, owner, uri, extra);
      return {};
    });
  }

  async #subscribe(
    session: GatewaySession,
    owner: Upstream,
    uri: string,
    extra: DownstreamExtra,
  ): Promise<void> {
    let subs = this.#subscribers.get(uri);
    if (!subs) this.#subscribers.set(uri, (subs = new Set()));
    const first = subs.size === 0;
    subs.add(session);
    session.subscriptions.add(uri);
    if (first) {
      try {
        await this.#upstreamRequest(
          session,
          owner,
          { method: 'resources/subscribe', params: { uri } },
          extra,
        );
      } catch (error) {
        subs.delete(session);
        session.subscriptions.delete(uri);
        throw error;
      }
    }
  }

  async unsubscribe(session: GatewaySession, uri: string): Promise<void> {
    session.subscriptions.delete(uri);
    const subs = this.#subscribers.get(uri);
    if (!subs?.delete(session) || subs.size > 0) return;
    this.#subscribers.delete(uri);
    const owner = resourceOwner(this.#catalog, uri);
    await owner
      ?.request({ method: 'resources/unsubscribe', params: { uri } })
      .catch(() => undefined);
  }

  /**
   * Closes every open session of `agentId` (its streams end; HTTP clients get 404 for the old
   * session id and, with a revoked credential, 401 for a new one). The sidecar calls this when
   * an agent is terminated.
   */
  async closeAgentSessions(agentId: string): Promise<void> {
    const mine = [...this.#sessions].filter((s) => s.identity.agentId === agentId);
    await Promise.all(mine.map((s) => s.close().catch(() => undefined)));
  }

  sessionClosed(session: GatewaySession): void {
    this.#sessions.delete(session);
    for (const uri of [...session.subscriptions]) void this.unsubscribe(session, uri);
    if (session.logLevel !== undefined) void this.#syncLogLevel();
  }

  logLevelChanged(): Promise<void> {
    return this.#syncLogLevel();
  }

  /**
   * Upstreams are shared, so they get the most verbose level any live session asked for; each
   * session still drops what is below its own level. With no session asking, an upstream keeps
   * the level it has (MCP has no way to unset one).
   */
  async #syncLogLevel(only?: Upstream): Promise<void> {
    let wanted = LOG_LEVELS.length;
    for (const s of this.#sessions) {
      const level = s.logLevel;
      if (level !== undefined) wanted = Math.min(wanted, LOG_LEVELS.indexOf(level));
    }
    const level = LOG_LEVELS[wanted];
    if (level === undefined) return;
    const targets = only ? [only] : [...this.#upstreams.values()];
    await Promise.all(
      targets.map(async (u) => {
        if (!u.capabilities.logging || u.state !== 'ready' || this.#logLevels.get(u) === level) {
          return;
        }
        this.#logLevels.set(u, level);
        try {
          await u.request({ method: 'logging/setLevel', params: { level } });
        } catch (error) {
          if (this.#logLevels.get(u) === level) this.#logLevels.delete(u);
          this.#log({
            level: 'warn',
            msg: 'could not set the upstream log level',
            upstream: u.name,
            error: messageOf(error),
          });
        }
      }),
    );
  }

  // -------------------------------------------------------------------------------------------
  // Upstream events

  readonly #hooks = {
    onCatalog: (upstream: Upstream): void => {
      this.#rebuildCatalog(upstream);
      void this.#syncLogLevel(upstream); // a restarted upstream starts at its own default
    },
    onNotification: (upstream: Upstream, n: Notification): void =>
      this.#routeNotification(upstream, n),
    onRequest: (upstream: Upstream, request: Request, extra: { signal: AbortSignal }) =>
      this.#routeRequest(upstream, request, extra.signal),
    onDisconnect: (upstream: Upstream): void => {
      this.#logLevels.delete(upstream);
      this.#log({
        level: 'warn',
        msg: 'upstream disconnected; restarting',
        upstream: upstream.name,
      });
      this.#rebuildCatalog(undefined);
    },
    onError: (upstream: Upstream, error: Error): void =>
      this.#log({
        level: 'warn',
        msg: 'upstream error',
        upstream: upstream.name,
        error: error.message,
      }),
  };

  #rebuildCatalog(reconnected: Upstream | undefined): void {
    if (this.#state !== 'started') return;
    const problems: CatalogProblem[] = [];
    const before = this.#catalog;
    this.#catalog = buildCatalog(
      [...this.#upstreams.values()],
      new Set(this.#fabricTools.keys()),
      false,
      problems,
    );
    for (const p of problems) this.#log({ level: 'error', msg: p.message, code: p.code });
    const changed = {
      tools: !sameKeys(before.tools, this.#catalog.tools) || reconnected !== undefined,
      prompts: !sameKeys(before.prompts, this.#catalog.prompts) || reconnected !== undefined,
      resources:
        before.resources.length !== this.#catalog.resources.length || reconnected !== undefined,
    };
    for (const s of this.#sessions) s.catalogChanged(changed);
    if (reconnected && reconnected.connectCount > 1) {
      this.#log({ level: 'info', msg: 'upstream restarted', upstream: reconnected.name });
      for (const uri of this.#subscribers.keys()) {
        if (resourceOwner(this.#catalog, uri) === reconnected) {
          reconnected
            .request({ method: 'resources/subscribe', params: { uri } })
            .catch(() => undefined);
        }
      }
    }
  }

  #routeNotification(upstream: Upstream, n: Notification): void {
    if (n.method === 'notifications/message') {
      const params = n.params as LoggingMessageNotification['params'];
      // Prefixed upstreams say whose message it is, as their tool names do; with `namespace:
      // none` the gateway is transparent and the upstream's own words pass unchanged.
      const logged =
        upstream.spec.namespace === 'none'
          ? params
          : {
              ...params,
              logger: params.logger ? `${upstream.name}/${params.logger}` : upstream.name,
            };
      const entries = this.#inflight.get(upstream);
      if (entries && entries.size > 0) {
        // Sessions with calls in flight get it on the stream of one of their calls.
        const seen = new Set<GatewaySession>();
        for (const e of entries) {
          if (seen.has(e.session)) continue;
          seen.add(e.session);
          e.session.log(logged, e.requestId);
        }
      } else {
        for (const s of this.#sessions) s.log(logged);
      }
      return;
    }
    if (n.method === 'notifications/resources/updated') {
      const uri = String((n.params as { uri?: unknown } | undefined)?.uri);
      for (const s of this.#subscribers.get(uri) ?? []) s.notify(n);
    }
  }

  async #routeRequest(upstream: Upstream, request: Request, signal: AbortSignal): Promise<Result> {
    const entries = [...(this.#inflight.get(upstream) ?? [])];
    const sessions = new Set(entries.map((e) => e.session));
    if (sessions.size === 1) {
      const entry = entries[0]!;
      return entry.session.request(request, signal, entry.requestId);
    }
    if (request.method === 'roots/list' && sessions.size === 0) return { roots: [] };
    const why =
      sessions.size === 0
        ? 'no agent session has a call in flight on this upstream'
        : `${sessions.size} agent sessions have calls in flight on this upstream, so the originating one is ambiguous`;
    const error = new RoutingError(upstream.name, request.method, why);
    this.#log({ level: 'warn', msg: error.message });
    throw toMcpError(error);
  }

  // -------------------------------------------------------------------------------------------
  // Shutdown

  #beginCall(): void {
    this.#calls++;
  }

  #endCall(): void {
    if (--this.#calls === 0) this.#drained?.();
  }

  /**
   * Stops taking calls, lets in-flight calls finish (bounded by `shutdownGraceMs`), then closes
   * sessions and upstreams (terminating stdio children and their process trees).
   */
  async close(): Promise<void> {
    if (this.#state === 'closing' || this.#state === 'closed') return;
    this.#state = 'closing';
    if (this.#calls > 0) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, this.#graceMs);
        timer.unref();
        this.#drained = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
    await Promise.all([...this.#upstreams.values()].map((u) => u.close()));
    await Promise.all([...this.#sessions].map((s) => s.close()));
    this.#audit?.close();
    this.#state = 'closed';
  }
}

/** Opens the audit log; a file that cannot be opened is a configuration error naming it. */
function openAuditLog(options: AuditLogOptions): AuditLog {
  try {
    return new AuditLog(options);
  } catch (error) {
    if (error instanceof FabricError) throw error;
    throw new ConfigError('audit.path', `cannot be opened: ${messageOf(error)}`, { cause: error });
  }
}

function sameKeys(a: ReadonlyMap<string, unknown>, b: ReadonlyMap<string, unknown>): boolean {
  if (a.size !== b.size) return false;
  for (const k of a.keys()) if (!b.has(k)) return false;
  return true;
}

function codeOf(error: unknown): string {
  if (error && typeof error === 'object' && 'code' in error) return String(error.code);
  return 'FABRIC_ERR_INTERNAL';
}

/** Reads `action` and the deciding rule's name from a policy decision of unknown shape. */
export function describeDecision(decision: unknown): { action?: string; rule?: string } {
  if (!decision || typeof decision !== 'object') return {};
  const d = decision as Record<string, unknown>;
  const out: { action?: string; rule?: string } = {};
  if (typeof d.action === 'string') out.action = d.action;
  const rule = d.rule ?? d.ruleName ?? d.matchedRule;
  if (typeof rule === 'string') out.rule = rule;
  else if (typeof rule === 'number' && typeof d.policy === 'string')
    out.rule = `${d.policy}#${rule}`;
  else if (rule && typeof rule === 'object') {
    const r = rule as Record<string, unknown>;
    const name = r.name ?? r.id ?? r.tool;
    if (typeof name === 'string') out.rule = name;
  }
  if (out.rule === undefined && typeof d.policy === 'string') out.rule = d.policy;
  return out;
}

function describeApproval(approval: unknown): string | undefined {
  if (approval && typeof approval === 'object') {
    const id =
      (approval as Record<string, unknown>).id ?? (approval as Record<string, unknown>).approvalId;
    if (typeof id === 'string') return id;
  }
  return undefined;
}

/**
 * Policy parameters of a resource read: the URI, and for a `file:` URI its decoded path too, so
 * path rules (normalized like tool paths) cover `file:///etc/%2e%2e/etc/passwd` as well.
 */
export function resourceParams(uri: string): Record<string, unknown> {
  if (!uri.startsWith('file:')) return { uri };
  try {
    return { uri, path: fileURLToPath(uri) };
  } catch {
    return { uri };
  }
}

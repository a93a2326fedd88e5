/**
 * ToolGateway: the router between agent sessions (downstream) and upstream tool servers, and
 * the doors into the one tool-call pipeline every call goes through (tool-call-pipeline.ts):
 *
 * ```
 * identify → input bounds → policy [→ approval wait] → budget reserve [→ wait] → forward
 *   → settle usage (a result whose tokens do not fit is withheld) → response → audit
 * ```
 *
 * MCP sessions enter by `callTool` (and resource reads, prompt gets, completions and
 * subscriptions, as pseudo-tools); doors without sessions (the gRPC ToolService) by
 * `callToolAs`. Both reach the same pipeline; each maps its typed outcome to its own wire.
 * The pieces live beside it: the pipeline, the exclusive-upstream gate (upstream-gate.ts), the
 * routing of upstreams' requests and log messages to the sessions with calls in flight
 * (upstream-routing.ts), the policy check of agents' answers to those requests
 * (callback-answers.ts), resource subscriptions (resource-subscriptions.ts) and what policy
 * sees of a resource URI (resource-params.ts).
 *
 * @module
 */
import { performance } from 'node:perf_hooks';
import {
  ErrorCode,
  McpError,
  type CreateTaskResult,
  type LoggingLevel,
  type LoggingMessageNotification,
  type Notification,
  type Request,
  type Result,
  type ServerCapabilities,
  type Tool,
} from '@modelcontextprotocol/sdk/types.js';
import { TypedEmitter } from '../events.js';
import { setLongTimeout } from '../scheduler/task-waiters.js';
import type { Collection } from '../store/store.js';
import type { TraceCarrier, Tracing } from '../telemetry/tracing.js';
import {
  AgentUnavailableError,
  BudgetExceededError,
  CallbackTimeoutError,
  ClosedError,
  ConfigError,
  FabricError,
  InvalidArgumentError,
  PolicyDeniedError,
  PolicyUnavailableError,
  SubscriptionLimitError,
  ToolNotFoundError,
} from '../errors.js';
import {
  AuditLog,
  AuditWriteError,
  type AuditLogOptions,
  type AuditLogStats,
  type AuditOutcome,
} from './audit-log.js';
import { RefusalLines, type RefusalKind } from './line-budget.js';
import { CallbackAnswers } from './callback-answers.js';
import type { UnsharedUsage } from '../budget/budget-manager.js';
import type { AgentIdentity, GatewayBackend, SamplingAdmission } from './backend.js';
import {
  buildCatalog,
  resourceOwner,
  type Catalog,
  type CatalogProblem,
  type Route,
} from './catalog.js';
import { catalogChanges } from './catalog-changes.js';
import { FABRIC_TOOLS, SCHEDULE_TOOL, type FabricTool } from './fabric-tools.js';
import { checkInputBounds, parseInputBounds, type InputBounds } from './input-bounds.js';
import { perCaller, type ListHints } from './list-hints.js';
import { GatewayMetrics } from './metrics.js';
import {
  messageOf,
  RelayedMcpError,
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
  type SlotHold,
} from './session.js';
import { TokenEstimates } from './token-estimates.js';
import { estimateTokens, ToolCosts } from './tool-costs.js';
import {
  MAX_UPSTREAM_TASK_ID,
  RELATED_TASK_META_KEY,
  ToolTasks,
  type ToolTaskCommits,
  type ToolTaskRecord,
  type ToolTaskRun,
  type UpstreamTaskLink,
  sameUpstreamTask,
  type ToolTasksOptions,
} from './tool-tasks.js';
import {
  markReachedUpstream,
  ToolCallPipeline,
  type ToolCallEvents,
  type GatewayLogEntry,
  type ProgressSink,
  type ToolCallOutcome,
  type ToolCallRequest,
  type TurnRecheck,
  type TakeLock,
} from './tool-call-pipeline.js';
import { resourceParams } from './resource-params.js';
import { ResourceSubscriptions } from './resource-subscriptions.js';
import { Upstream, wasNeverSent } from './upstream.js';
import { forgetLongerRawResult } from './raw-results.js';
import { InflightRoutes, type InFlight } from './upstream-routing.js';
import { UpstreamGate } from './upstream-gate.js';
import {
  upstreamSpecSchema,
  type UpstreamSpec,
  type UpstreamSpecInput,
} from './upstream-config.js';

export type { GatewayLogEntry };
export { resourceParams };

/** Default of {@link ToolGatewayOptions.approvalProgressIntervalMs}. */
export const DEFAULT_APPROVAL_PROGRESS_INTERVAL_MS = 1000;
/** Default of {@link ToolGatewayOptions.shutdownGraceMs}. */
export const DEFAULT_SHUTDOWN_GRACE_MS = 5000;
/** Default of {@link ToolGatewayOptions.maxSubscriptionsPerSession}. */
export const DEFAULT_MAX_SUBSCRIPTIONS_PER_SESSION = 256;
/** Default of {@link ToolGatewayOptions.maxSubscriptionUriLength}. */
export const DEFAULT_MAX_SUBSCRIPTION_URI_LENGTH = 8192;
/** Default of {@link ToolGatewayOptions.budgetWaitMs}. */
export const DEFAULT_BUDGET_WAIT_MS = 5000;

/** Options of a {@link ToolGateway}. */
export interface ToolGatewayOptions {
  /** Identity, policy, budget and fabric operations. */
  backend: GatewayBackend;
  /** Upstream tool servers by name. */
  upstreams?: Readonly<Record<string, UpstreamSpecInput | UpstreamSpec>>;
  /** Tool-name glob → cost per call (first match wins). @default {} */
  toolCosts?: Readonly<Record<string, number>>;
  /**
   * Tool-name glob → tokens reserved for an agent's first call of a matching tool, before its
   * results teach the estimate (first match wins; unmatched tools use `DEFAULT_TOKEN_ESTIMATE`).
   * @default {}
   */
  tokenEstimates?: Readonly<Record<string, number>>;
  /**
   * Longest wait, in ms, of a call that in-flight calls' reservations keep out of a budget, or
   * that waits for the first result of a tool it has not used yet (single flight); then it
   * proceeds or is refused with `FABRIC_ERR_BUDGET_EXCEEDED` and a `retryAt`. 0: no waiting
   * (refuse at once, no single flight).
   * @default 5000
   */
  budgetWaitMs?: number;
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
  /**
   * Also expose `fabric__schedule_task`: an agent in a pool queues work to its own pool (policy
   * still decides each call). Scheduling is otherwise an admin operation. @default false
   */
  poolScheduling?: boolean;
  /** How long `close()` lets in-flight calls finish before cutting them off. @default 5000 */
  shutdownGraceMs?: number;
  /** Structured log sink. @default no-op */
  logger?: (entry: GatewayLogEntry) => void;
  /** What the gateway calls itself downstream. */
  serverInfo?: { name: string; version: string };
  /**
   * Deepest nesting of a call's `arguments` (and of the params of `resources/read`,
   * `prompts/get`, `completion/complete`); deeper requests are refused before policy.
   * @default 64
   */
  maxArgumentDepth?: number;
  /** Most values (elements and members, all levels) in one call's `arguments`. @default 100000 */
  maxArgumentNodes?: number;
  /**
   * Resources one session may be subscribed to at once; `resources/subscribe` beyond it is
   * refused with `FABRIC_ERR_SUBSCRIPTION_LIMIT` (each subscription is state the gateway holds
   * and an upstream watch). @default 256
   */
  maxSubscriptionsPerSession?: number;
  /**
   * Longest URI (in characters) a session may subscribe to; a longer one is refused with
   * `FABRIC_ERR_SUBSCRIPTION_LIMIT` before policy or an upstream sees it. A subscription is held
   * (by the gateway and its upstream) until it ends, and a template URI matches up to a million
   * characters: without it one agent held `maxSubscriptionsPerSession` megabyte URIs per session.
   * @default 8192
   */
  maxSubscriptionUriLength?: number;
  /**
   * Task-augmented `tools/call` (MCP Tasks, experimental): the gateway answers at once with a
   * task and serves `tasks/get`, `tasks/result`, `tasks/list` and `tasks/cancel` from its own
   * task store; `false` turns it off (the `tasks` capability is then not advertised).
   * @default {} (on, with the defaults of {@link ToolTasksOptions})
   */
  tasks?:
    | (ToolTasksOptions & {
        store?: Collection<ToolTaskRecord> | undefined;
        /** The durable store's commit wait (see {@link ToolTaskCommits}). */
        commits?: ToolTaskCommits | undefined;
      })
    | false;
  /** Spans of every tool call (see telemetry/tracing.ts); absent: no tracing, no overhead. */
  tracing?: Tracing | undefined;
}

const EMPTY_CATALOG: Catalog = buildCatalog([], new Set(), false);
/** The metrics label of a tool name that is not in the catalog (agents must not grow labels). */
const UNKNOWN_TOOL = '(unknown)';
/** The audit log's tool of a `tools/call` whose `name` is not a string. */
const INVALID_TOOL = '(invalid)';
/** Longest unknown tool name written to the audit log (a made-up name could be megabytes). */
const AUDIT_UNKNOWN_NAME_MAX = 256;

/**
 * The kinds of refusals that ran nothing whose lines are bounded (see line-budget.ts), each with
 * its own bound and summary line (`tool`: the kind): requests reusing an in-flight id; requests
 * refused as malformed or past the input limits; calls of unknown tools; subscriptions refused
 * for the session's limit or a URI past its limit; calls refused because the gateway is closing
 * (`FABRIC_ERR_CLOSED`: an agent calling on through the shutdown grace wrote one line each).
 */
const REUSED_IDS: RefusalKind = {
  tool: '(reused request ids)',
  decision: 'invalid',
  code: InvalidArgumentError.code,
};
const INVALID_REQUESTS: RefusalKind = {
  tool: '(invalid requests)',
  decision: 'invalid',
  code: InvalidArgumentError.code,
};
const UNKNOWN_TOOLS: RefusalKind = {
  tool: '(unknown tools)',
  decision: 'none',
  code: ToolNotFoundError.code,
};
const SUBSCRIPTIONS_PAST_LIMIT: RefusalKind = {
  tool: '(subscriptions past the limit)',
  decision: 'none',
  code: SubscriptionLimitError.code,
};
const SUBSCRIPTION_URIS_PAST_LIMIT: RefusalKind = {
  tool: '(subscription URIs past the limit)',
  decision: 'invalid',
  code: SubscriptionLimitError.code,
};
const CALLS_WHILE_CLOSING: RefusalKind = {
  tool: '(calls refused while closing)',
  decision: 'none',
  code: ClosedError.code,
};

/** Requests other than `tools/call` that pass policy as pseudo-tools: each gets an audit line. */
const AUDITED_METHODS: ReadonlySet<string> = new Set([
  'resources/read',
  'resources/subscribe',
  'prompts/get',
  'completion/complete',
]);

/** The longest one turn of the event loop compares sessions' tool lists after a policy change. */
const VISIBILITY_SLICE_MS = 5;
/** How much of an upstream's error message the log keeps. */
const LOGGED_ERROR_CHARS = 300;

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
  readonly #audit: AuditLog | undefined;
  /** The bounds on the audit lines of refusals that ran nothing (see line-budget.ts). */
  readonly #refusalLines = new RefusalLines((agent, kind, suppressed) =>
    this.#audit?.writeCall(agent, kind.tool, undefined, Date.now(), 0, {
      decision: kind.decision,
      outcome: 'error',
      code: kind.code,
      suppressed,
    }),
  );
  readonly #hideDenied: boolean;
  /** Stops listening for changes of what policy hides (see {@link #toolVisibilityChanged}). */
  #stopVisibilityWatch: (() => void) | undefined;
  readonly #fabricTools: ReadonlyMap<string, FabricTool>;
  readonly #graceMs: number;
  readonly #bounds: InputBounds;
  readonly #maxSubscriptions: number;
  readonly #maxSubscriptionUri: number;
  readonly #log: (entry: GatewayLogEntry) => void;
  readonly #sessions = new Set<GatewaySession>();
  /** See {@link visibilityGeneration}. */
  #visibility = 0;
  /** A sweep of the sessions after a visibility change is under way. */
  #sweeping = false;
  /** Counts of every request's decision, outcome and duration (rendered at `GET /metrics`). */
  readonly metrics = new GatewayMetrics();
  /** Every tool call as it ends (`call.ended`), from any door; EventService's `TOOL_CALLS`. */
  readonly toolCalls = new TypedEmitter<ToolCallEvents>();
  /** Requests in flight per upstream: where an upstream's requests and log messages go. */
  readonly #routes: InflightRoutes;
  readonly #gates = new Map<Upstream, UpstreamGate>();
  /**
   * Calls in flight per agent that no MCP session of the agent carries (gRPC and /api
   * `CallTool`): {@link endAgent} aborts them, as closing a session aborts the session's.
   */
  readonly #sessionless = new Map<string, Set<AbortController>>();
  readonly #subscribers = new ResourceSubscriptions();
  /** Upstream `resources/subscribe` requests in flight, by URI (see {@link #subscribe}). */
  readonly #subscribing = new Map<string, Promise<unknown>>();
  /** The log level each upstream was last told (see #syncLogLevel). */
  readonly #logLevels = new Map<Upstream, LoggingLevel>();
  /** Learned token estimates per (agent, tool): what a call reserves. */
  readonly #estimates: TokenEstimates;
  /** Bounds → policy [→ approval] → budget → forward → settle → audit, for every door. */
  readonly #pipeline: ToolCallPipeline;
  /** Task-augmented tool calls and their records (absent: tasks are off). */
  readonly #tasks: ToolTasks | undefined;
  readonly #tracing: Tracing | undefined;
  #catalog: Catalog = EMPTY_CATALOG;
  #calls = 0;
  #drained: (() => void) | undefined;
  #state: 'new' | 'started' | 'closing' | 'closed' = 'new';
  #closeStep: string | undefined;

  constructor(options: ToolGatewayOptions) {
    this.#backend = options.backend;
    this.serverInfo = options.serverInfo ?? { name: 'agent-fabric', version: '0.1.0' };
    this.#bounds = parseInputBounds(options);
    this.#maxSubscriptions =
      options.maxSubscriptionsPerSession ?? DEFAULT_MAX_SUBSCRIPTIONS_PER_SESSION;
    if (!Number.isSafeInteger(this.#maxSubscriptions) || this.#maxSubscriptions < 1) {
      throw new ConfigError('maxSubscriptionsPerSession', 'must be a positive integer');
    }
    this.#maxSubscriptionUri =
      options.maxSubscriptionUriLength ?? DEFAULT_MAX_SUBSCRIPTION_URI_LENGTH;
    if (!Number.isSafeInteger(this.#maxSubscriptionUri) || this.#maxSubscriptionUri < 1) {
      throw new ConfigError('maxSubscriptionUriLength', 'must be a positive integer');
    }
    this.#log = options.logger ?? (() => undefined);
    this.#audit = options.audit
      ? openAuditLog({
          ...options.audit,
          onError: (error) => this.#auditFailed(error),
          onReopen: (reason) =>
            this.#log({
              level: 'warn',
              msg: 'audit log reopened',
              path: options.audit ? options.audit.path : undefined,
              reason,
            }),
        })
      : undefined;
    const answers = new CallbackAnswers(this.#backend, this.#audit, this.#log, this.metrics);
    this.#routes = new InflightRoutes(this.#log, (upstream, session, request, signal, send) => {
      // A sampling request the client cannot take is answered without it (no model reads it):
      // neither admitted against the budget nor charged.
      if (request.method !== 'sampling/createMessage' || !session.takes(request.method)) {
        return answers.relay(upstream, session, request, signal, send());
      }
      // The agent's model reads the request: not sent when its budget has no room for it.
      const asked = estimateTokens(request.params ?? {});
      const admitted = this.#backend.admitSampling?.(session.identity.agentId, asked);
      if (admitted instanceof FabricError) {
        // Over budget is a denial; a store that could not cover the hold is an error.
        const outcome = admitted instanceof BudgetExceededError ? 'denied' : 'error';
        this.metrics.recordRefusal(outcome, admitted.code);
        return Promise.reject(answers.refuse(upstream, session, request, admitted));
      }
      // A client that never answers would keep the hold (and the upstream waiting) until its
      // session closed (the session's 24 h bound): the request is bounded by the upstream's
      // callTimeoutSeconds, which bounds the call it serves too, then cancelled at the client,
      // charged as a refused one is (its request alone) and refused to the upstream.
      const timeoutMs = upstream.spec.callTimeoutSeconds * 1000;
      const deadline = new AbortController();
      const timedOut = (): CallbackTimeoutError =>
        new CallbackTimeoutError(upstream.name, request.method, timeoutMs);
      // An McpError: the SDK wraps any other abort reason in one, whose text is all it keeps.
      const stop = setLongTimeout(() => deadline.abort(toMcpError(timedOut())), timeoutMs, {
        unref: true,
      });
      let answer: Promise<Result>;
      try {
        answer = send(AbortSignal.any([signal, deadline.signal]));
      } catch (error) {
        answer = Promise.reject(error);
      }
      answer.then(stop, stop);
      this.#chargeSampling(session, asked, answer, admitted);
      // Not the agent's answer: past the answer check, unchecked, as the session's end is.
      const late = timedOut();
      const unanswered = answer.catch((error: unknown) => {
        throw error === deadline.signal.reason ? late : error;
      });
      return answers
        .relay(upstream, session, request, signal, unanswered)
        .catch((error: unknown) => {
          if (error !== late) throw error;
          this.#log({ level: 'warn', msg: late.message, agentId: session.identity.agentId });
          this.metrics.recordRefusal('error', late.code);
          throw toMcpError(late);
        });
    });
    this.#estimates = new TokenEstimates({ priors: options.tokenEstimates });
    const waitMs = options.budgetWaitMs ?? DEFAULT_BUDGET_WAIT_MS;
    if (typeof waitMs !== 'number' || !Number.isFinite(waitMs) || waitMs < 0) {
      throw new ConfigError('budgetWaitMs', 'must be a finite number >= 0');
    }
    this.#pipeline = new ToolCallPipeline({
      backend: this.#backend,
      costs: new ToolCosts(options.toolCosts),
      estimates: this.#estimates,
      budgetWaitMs: waitMs,
      approvalTimeoutSeconds: options.approvalTimeoutSeconds,
      approvalProgressIntervalMs:
        options.approvalProgressIntervalMs ?? DEFAULT_APPROVAL_PROGRESS_INTERVAL_MS,
      audit: this.#audit,
      metrics: this.metrics,
      log: this.#log,
      calls: this.toolCalls,
    });
    if (options.tasks !== false) {
      const { store, commits, ...taskOptions } = options.tasks ?? {};
      this.#tasks = new ToolTasks(
        taskOptions,
        store,
        {
          // Every live session of the owning agent hears of it (the one that made the task may be
          // gone; the agent's new session polls the same task).
          onStatus: (agentId, task) => {
            for (const s of this.#sessions) {
              if (s.identity.agentId === agentId) {
                s.notify({ method: 'notifications/tasks/status', params: task });
              }
            }
          },
        },
        commits,
      );
    }
    this.#tracing = options.tracing;
    this.#hideDenied = options.hideDeniedTools ?? true;
    this.#fabricTools =
      options.fabricTools === false
        ? new Map()
        : options.poolScheduling === true
          ? new Map([...FABRIC_TOOLS, [SCHEDULE_TOOL.tool.name, SCHEDULE_TOOL]])
          : FABRIC_TOOLS;
    this.#graceMs = options.shutdownGraceMs ?? DEFAULT_SHUTDOWN_GRACE_MS;
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
   * What `close()` is waiting for, in words (a shutdown that does not finish logs it); undefined
   * when it is not closing.
   */
  get closing(): string | undefined {
    return this.#closeStep;
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
      // Tool and prompt clashes throw; a resource URI or template listed by several upstreams
      // goes to the first in config order (resources are not namespaced), the others' logged.
      const problems: CatalogProblem[] = [];
      this.#catalog = buildCatalog(ups, new Set(this.#fabricTools.keys()), true, problems);
      for (const p of problems) this.#log({ level: 'warn', msg: p.message, code: p.code });
    } catch (error) {
      await Promise.all(ups.map((u) => u.close()));
      this.#state = 'closed';
      // close() does nothing once closed: the audit log opened by the constructor ends here.
      this.#audit?.close();
      throw error;
    }
    this.#state = 'started';
    if (this.#hideDenied && this.#backend.isToolVisible !== undefined) {
      this.#stopVisibilityWatch = this.#backend.onToolVisibilityChange?.(() =>
        this.#toolVisibilityChanged(),
      );
    }
    // Tasks restored waiting for an approval run again, as their agent (the fabric takes pool
    // and labels from its agent record; an agent that is gone is refused like any call of it).
    this.#tasks?.resume((record, run) =>
      this.#runTask(
        {
          kind: 'agent',
          agentId: record.agentId,
          poolId: record.poolId,
          labels: record.labels ?? {},
        },
        record.tool,
        record.arguments,
        run,
      ),
    );
  }

  /** The learned token estimates: what each (agent, tool)'s next call reserves. */
  get tokenEstimates(): TokenEstimates {
    return this.#estimates;
  }

  /**
   * Drops what the gateway learned about an agent (its token estimates). The sidecar calls it
   * when the fabric forgets an agent.
   */
  forgetAgent(agentId: string): void {
    this.#estimates.forgetAgent(agentId);
  }

  /**
   * Policy changed what it hides: each session whose agent's tool list differs now from what it
   * was last given is told (`notifications/tools/list_changed`), as for an upstream's list change.
   * Before, a session kept listing what it first listed until the catalog changed: a tool denied
   * since stayed listed, and one allowed since stayed unknown to the agent.
   *
   * The change itself only moves {@link visibilityGeneration} on, so a session's next `tools/list`
   * is computed afresh; the sessions are then compared in slices of at most
   * {@link VISIBILITY_SLICE_MS}, one per turn of the event loop. Done at once, 500 sessions of a
   * 300-tool catalog held every call of every agent for a quarter of a second or more. A change
   * during a sweep starts it again (a session already told is not told twice).
   */
  #toolVisibilityChanged(): void {
    this.#visibility++;
    if (this.#sweeping) return;
    this.#sweeping = true;
    let gen = Number.NaN;
    let sessions: GatewaySession[] = [];
    let next = 0;
    const slice = (): void => {
      if (this.#state !== 'started') {
        this.#sweeping = false;
        return;
      }
      if (gen !== this.#visibility) {
        gen = this.#visibility;
        sessions = [...this.#sessions];
        next = 0;
      }
      const end = performance.now() + VISIBILITY_SLICE_MS;
      while (next < sessions.length) {
        sessions[next++]!.toolVisibilityChanged(gen);
        if (performance.now() >= end) break;
      }
      if (next < sessions.length || gen !== this.#visibility) setImmediate(slice);
      else this.#sweeping = false;
    };
    setImmediate(slice);
  }

  /** Moves on at each change of what policy hides; see {@link #toolVisibilityChanged}. */
  visibilityGeneration(): number {
    return this.#visibility;
  }

  /** Opens a session for one agent; connect it to a transport next. */
  createSession(identity: AgentIdentity): GatewaySession {
    if (this.#state === 'closing' || this.#state === 'closed') throw new ClosedError('ToolGateway');
    const session = new GatewaySession(this, identity);
    this.#sessions.add(session);
    // A session that set no level wants all an upstream sends (see #syncLogLevel).
    void this.#syncLogLevel();
    return session;
  }

  // -------------------------------------------------------------------------------------------
  // SessionHost

  /** Union of the upstreams' capabilities, plus tools and logging of the gateway itself. */
  capabilities(): ServerCapabilities {
    const caps: ServerCapabilities = { tools: { listChanged: true }, logging: {} };
    // Only what is served: task-augmented tools/call, and the four tasks/* methods.
    if (this.#tasks) caps.tasks = { list: {}, cancel: {}, requests: { tools: { call: {} } } };
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

  /**
   * With gateway tasks on, every tool carries `execution.taskSupport`: `"optional"` (the gateway
   * is the receiver, or passes the task through to an upstream that takes it optionally), or
   * `"required"` where the upstream itself requires a task. With tasks off, an upstream's own
   * `taskSupport` is removed: this gateway advertises no `tasks` capability and would not
   * forward the `task` field, so a client must not be told it can send one.
   */
  listTools(session: GatewaySession): Tool[] {
    const tools = this.listToolsFor(session.identity);
    if (this.#tasks === undefined) return tools.map(withoutTaskSupport);
    return tools.map((tool) => {
      const route = this.#catalog.tools.get(tool.name);
      const taskSupport =
        route !== undefined &&
        upstreamTakesTasks(route.upstream) &&
        route.item.execution?.taskSupport === 'required'
          ? 'required'
          : 'optional';
      return { ...tool, execution: { ...tool.execution, taskSupport } };
    });
  }

  /**
   * `tools/call` from an MCP session: the session's call run by {@link callToolAs}'s pipeline,
   * mapped to MCP — a refusal or a gateway-side failure is an `isError` result the model can
   * read; an unknown tool and an upstream's own protocol error are JSON-RPC errors. Sent with
   * `task`, it is answered at once with a task (see {@link taskRequest}).
   */
  async callTool(session: GatewaySession, request: Request, extra: CallExtra): Promise<Result> {
    const params = (request.params ?? {}) as {
      name?: unknown;
      arguments?: unknown;
      task?: unknown;
    };
    const name = String(params.name);
    // A tool policy hides from this agent is not started as a task: it is answered as an
    // unknown tool is (see toolAnswer), after its call went through policy and the audit.
    if (
      params.task !== undefined &&
      this.#isKnownTool(name) &&
      this.#visibleTo(session.identity, name)
    ) {
      return this.#startTask(session.identity, name, params.arguments, params.task);
    }
    // Answered through the SDK, which writes the result anew (the fast path sends the
    // upstream's text): measured as that JSON.
    return this.toolAnswer(
      await this.sessionToolCall(session, request, extra, true),
      request,
      session,
    );
  }

  /**
   * The first half of {@link callTool} for a `tools/call` without `task`: the call through the
   * pipeline, to its outcome. {@link toolAnswer} is the second. The fast path runs the two with
   * one await between them (its own), instead of one more in `callTool`. `rewritten`: the
   * answer is not sent as the upstream's text but as JSON written anew (see
   * `forgetLongerRawResult`), and its tokens are measured on that.
   */
  sessionToolCall(
    session: GatewaySession,
    request: Request,
    extra: CallExtra,
    rewritten = false,
  ): Promise<ToolCallOutcome> {
    const params = (request.params ?? {}) as { name?: unknown; arguments?: unknown };
    return this.#runToolCall(
      session.identity,
      String(params.name),
      params.arguments,
      extra,
      progressSink(session, extra),
      session,
      undefined,
      rewritten,
    );
  }

  /**
   * The audit line of a `tools/call` the SDK refuses for params that do not fit MCP's schema
   * (a number `name`, string `arguments` …): `decision: "invalid"`, as a call past the input
   * limits. A name that is not a string is written as `(invalid)`; the arguments are digested
   * as they came. Bounded per agent as other refusals that ran nothing (see
   * `REFUSAL_LINES` in line-budget.ts).
   */
  invalidToolCall(session: GatewaySession, request: Request): void {
    this.#invalidCallLine(session, request, INVALID_REQUESTS);
  }

  /**
   * The audit line of a tool call a door refused for malformed input before the pipeline (the
   * gRPC `ToolService`'s `arguments_json` that is not JSON of an object …), as
   * {@link invalidToolCall} writes it for MCP: `decision: "invalid"`,
   * `FABRIC_ERR_INVALID_ARGUMENT`, `name` as sent (`(invalid)` when not a string, cut to 256
   * characters when not a known tool), `args` digested as given. Bounded per agent as other
   * refusals that ran nothing (see `REFUSAL_LINES` in line-budget.ts).
   */
  invalidToolCallAs(identity: AgentIdentity, name: unknown, args: unknown): void {
    this.#invalidToolCallLine(identity, name, args, INVALID_REQUESTS);
  }

  /** The line of a malformed `tools/call` of `session` (`request`), as a refusal of `kind`. */
  #invalidCallLine(session: GatewaySession, request: Request, kind: RefusalKind): void {
    const params = request.params as { name?: unknown; arguments?: unknown } | undefined;
    const raw = params !== null && typeof params === 'object' ? params : {};
    this.#invalidToolCallLine(session.identity, raw.name, raw.arguments, kind);
  }

  /** Counts a malformed call and writes its line, unless `kind`'s bound is spent. */
  #invalidToolCallLine(
    identity: AgentIdentity,
    name: unknown,
    args: unknown,
    kind: RefusalKind,
  ): void {
    const tool = typeof name === 'string' ? name : INVALID_TOOL;
    const known = this.#fabricTools.has(tool) || this.#catalog.tools.has(tool);
    const audit = known
      ? this.#pipeline.auditor(identity.agentId, tool, args, performance.now())
      : this.#pipeline.auditor(
          identity.agentId,
          truncated(tool),
          args,
          performance.now(),
          UNKNOWN_TOOL,
        );
    audit(
      { decision: 'invalid', outcome: 'error', code: InvalidArgumentError.code },
      this.#refusalLines.take(identity.agentId, kind),
    );
  }

  /**
   * The audit line of a `resources/read`, `prompts/get` or `completion/complete` refused for
   * params that do not fit MCP's schema (a number `uri` …): `decision: "invalid"`, its `tool`
   * the method, as one past the input limits gets (see {@link forward}); the params are digested
   * as they came.
   */
  invalidRequest(session: GatewaySession, request: Request): void {
    this.#auditRefused(session, request.method, request.params, INVALID_REQUESTS);
  }

  /**
   * The audit line of a request refused (`-32600`) because a request in flight in its session
   * holds its id: a `tools/call` as a malformed one ({@link invalidToolCall}), a request that
   * passes policy as a pseudo-tool with its method as `tool`; both `decision: "invalid"`,
   * `FABRIC_ERR_INVALID_ARGUMENT`. Other methods (`ping`, lists, `tasks/*`) get no line, as
   * they get none when served. An agent writes at most `REFUSAL_LINES` in line-budget.ts such lines a
   * minute; the rest are counted in one summary line (`tool` `(reused request ids)`,
   * `suppressed`: how many) at the minute's end or when the session closes.
   */
  duplicateRequest(session: GatewaySession, request: Request): void {
    if (request.method === 'tools/call') this.#invalidCallLine(session, request, REUSED_IDS);
    else if (AUDITED_METHODS.has(request.method)) {
      this.#auditRefused(session, request.method, request.params, REUSED_IDS);
    }
  }

  /**
   * The audit line of a `method` other than `tools/call` refused before policy (its `tool` is
   * the method; `params` digested as they came), with the `decision` and `code` of its `kind`
   * — unless the agent's bound on lines of that kind is spent (see `REFUSAL_LINES` in line-budget.ts).
   */
  #auditRefused(session: GatewaySession, method: string, params: unknown, kind: RefusalKind): void {
    const audit = this.#pipeline.auditor(
      session.identity.agentId,
      method,
      params,
      performance.now(),
    );
    audit(
      { decision: kind.decision, outcome: 'error', code: kind.code },
      this.#refusalLines.take(session.identity.agentId, kind),
    );
  }

  /**
   * A `tools/call`'s MCP answer from its outcome (see {@link sessionToolCall}); may throw. A
   * refusal of a tool policy hides from the session's agent (`hideDeniedTools`: a deny rule
   * without conditions) is answered exactly as an unknown tool is — `Unknown tool: <name>`,
   * InvalidParams — so an agent cannot tell a hidden tool from none, nor learn the policy that
   * hides it; the audit line (written by the pipeline) keeps the real decision and rule. Only
   * refusals look at visibility: an answered call costs nothing more.
   */
  toolAnswer(outcome: ToolCallOutcome, request: Request, session: GatewaySession): Result {
    const name = String((request.params as { name?: unknown } | undefined)?.name);
    return mcpToolAnswer(this.outcomeFor(session.identity, name, outcome), name);
  }

  /**
   * The outcome of a call of `name` as its agent is told of it: policy's refusal of a tool it
   * hides from the agent (see {@link listToolsFor}) is the unknown tool's admission error, so
   * every door answers it exactly as a tool that does not exist. A call the rules let in first
   * and refused when they changed while it waited (`details.rulesChanged`: a deny added while a
   * human approved it, say) keeps its refusal: the agent was shown the tool. A policy that could
   * not be asked (`FABRIC_ERR_POLICY_UNAVAILABLE`: a policy service outranking the rules is down
   * or too slow) fails closed as ever, but for a tool the rules hide it is answered as unknown
   * too: the tool is not run, and the agent learns nothing a `tools/list` did not tell it (the
   * service might have let the call in: the answer is the one the rules give without it). Only
   * policy refusals look at visibility: an answered call costs nothing more.
   */
  outcomeFor(identity: AgentIdentity, name: string, outcome: ToolCallOutcome): ToolCallOutcome {
    if (
      outcome.kind !== 'refused' ||
      !HIDDEN_REFUSALS.has(outcome.refusal.code) ||
      outcome.refusal.details?.rulesChanged === true ||
      this.#visibleTo(identity, name)
    ) {
      return outcome;
    }
    return { kind: 'error', error: new ToolNotFoundError(truncated(name)), stage: 'admission' };
  }

  /**
   * A task-augmented `tools/call`: answered at once with the task; the call runs through the
   * same pipeline as a plain one, with no session to route an upstream's requests back to (the
   * agent may be gone while it runs). Its MCP answer is kept for `tasks/result`.
   */
  #startTask(identity: AgentIdentity, name: string, rawArgs: unknown, task: unknown): Result {
    const tasks = this.#tasks;
    if (tasks === undefined) {
      throw new RelayedMcpError(
        ErrorCode.InvalidRequest,
        'this gateway does not accept task-augmented tool calls (gateway tasks are off)',
      );
    }
    const ttl = (task as { ttl?: unknown } | null)?.ttl;
    // The record keeps the arguments to resume the call after a restart, so the state store
    // serializes them: only arguments within the input bounds (the call refuses the others, and
    // a refused call is never resumed). JSON.stringify overflows on data nested thousands deep.
    const kept =
      checkInputBounds(rawArgs ?? {}, this.#bounds, 'arguments') === undefined
        ? rawArgs
        : undefined;
    return tasks.create(
      identity,
      name,
      { ttl: typeof ttl === 'number' ? ttl : undefined, arguments: kept },
      (run) => this.#runTask(identity, name, rawArgs, run),
    );
  }

  async #runTask(
    identity: AgentIdentity,
    name: string,
    rawArgs: unknown,
    run: ToolTaskRun,
  ): Promise<Result> {
    // A request given up after it was sent upstream keeps counting against the agent's
    // maxPerAgent until the upstream is done with it, as a plain call keeps its in-flight slot:
    // else creating and cancelling tasks ran any number of calls on an upstream that ignores
    // cancellation.
    const extra: CallExtra = {
      signal: run.signal,
      requestId: -1,
      agentId: identity.agentId,
      holdSlot: run.holdSlot,
    };
    const outcome = await this.#runToolCall(
      identity,
      name,
      rawArgs,
      extra,
      undefined,
      undefined,
      run,
    );
    return mcpToolAnswer(outcome, name);
  }

  /**
   * A `tasks/*` request of a session's agent (`tasks/get`, `tasks/result`, `tasks/list`,
   * `tasks/cancel`), answered from the gateway's task store; only the agent's own tasks exist
   * for it.
   */
  async taskRequest(
    session: GatewaySession,
    request: Request,
    extra: DownstreamExtra,
  ): Promise<Result> {
    const tasks = this.#tasks;
    if (tasks === undefined) throw new McpError(ErrorCode.MethodNotFound, 'Method not found');
    const { agentId } = session.identity;
    const params = (request.params ?? {}) as { taskId?: unknown; cursor?: unknown };
    switch (request.method) {
      case 'tasks/get': {
        // A passed-through task shows its upstream task's current status (asked only after the
        // ownership check; what the upstream says never names its own id).
        const link = tasks.linkOf(agentId, params.taskId);
        if (link?.upstream !== undefined) {
          // Not one a stdio child that has ended made (see #forwardAsTask): its id may name
          // another agent's task in the new process.
          const ended =
            tasks.isRestoredLink(link.taskId) &&
            this.#upstreams.get(link.upstream.name)?.spec.transport === 'stdio';
          if (!ended) await this.#relayTaskStatus(tasks, link.upstream, extra.signal);
        } else if (link?.fabricTaskId !== undefined) {
          await this.#relayFabricStatus(tasks, link.taskId, link.fabricTaskId);
        }
        return tasks.get(agentId, params.taskId);
      }
      case 'tasks/result':
        return tasks.result(agentId, params.taskId, extra.signal);
      case 'tasks/list':
        return tasks.list(agentId, params.cursor);
      case 'tasks/cancel':
        return tasks.cancel(agentId, params.taskId);
      default:
        throw new McpError(ErrorCode.MethodNotFound, 'Method not found');
    }
  }

  /** Asks the upstream for its task's status and takes it (best effort: a failure keeps ours). */
  async #relayTaskStatus(
    tasks: ToolTasks,
    upstreamTask: UpstreamTaskLink,
    signal: AbortSignal,
  ): Promise<void> {
    const upstream = this.#upstreams.get(upstreamTask.name);
    if (upstream === undefined || upstream.state !== 'ready') return;
    try {
      const task = (await upstream.request(
        { method: 'tasks/get', params: { taskId: upstreamTask.taskId } },
        { signal, timeoutMs: RELAY_GET_TIMEOUT_MS },
      )) as { status?: unknown; statusMessage?: unknown; createdAt?: unknown };
      tasks.relayStatus(
        upstream.name,
        upstreamTask.taskId,
        task.status,
        task.statusMessage,
        task.createdAt,
      );
    } catch (error) {
      this.#log({
        level: 'warn',
        msg: 'could not get the status of an upstream task',
        upstream: upstream.name,
        error: messageOf(error),
      });
    }
  }

  /** Asks the fabric for the status of the fabric task behind a task (best effort). */
  async #relayFabricStatus(tasks: ToolTasks, taskId: string, fabricTaskId: string): Promise<void> {
    try {
      const fabricTask = await this.#backend.fabricTask?.(fabricTaskId);
      if (fabricTask !== undefined) tasks.relayFabricStatus(taskId, fabricTask.status);
    } catch (error) {
      this.#log({ level: 'warn', msg: 'could not get a fabric task', error: messageOf(error) });
    }
  }

  /**
   * A task's call passed through to an upstream that is itself a task receiver for the tool:
   * `tools/call` with `task` (the ttl the gateway granted), the upstream's task id recorded
   * (after a restart, `run.upstreamTask` is that id and the tool is not called again), then the
   * upstream's `tasks/result`, waited for until the task's lifetime ends. When the call is
   * aborted (the agent cancelled the task, or it expired) the upstream task is cancelled too.
   * The result reaches the agent without the upstream's related-task `_meta` (its task id).
   * `recheck` (an approved call's paths) runs once the call's turn on an exclusive upstream comes.
   */
  async #forwardAsTask(
    session: GatewaySession | undefined,
    upstream: Upstream,
    upstreamName: string,
    rawArgs: unknown,
    extra: CallExtra,
    run: ToolTaskRun,
    recheck?: TurnRecheck,
    lock?: TakeLock,
  ): Promise<Result> {
    if (run.upstreamTask !== undefined && run.upstreamTask.name !== upstream.name) {
      throw new RelayedMcpError(
        ErrorCode.InternalError,
        `the task's upstream task was on upstream ${run.upstreamTask.name}, which no longer serves this tool`,
      );
    }
    if (run.upstreamTask !== undefined && upstream.spec.transport === 'stdio') {
      // Restored from the store: the upstream task was made by a child process of the gateway
      // that ended, and task ids are the upstream's own — the new process may have given this
      // one to another agent's task (a counter restarting at 1). It is not asked: asking would
      // show this agent another's result, and its cancel would cancel another's task.
      throw new RelayedMcpError(
        ErrorCode.InternalError,
        `the gateway restarted before the call finished, and the task it was passed through to was held by a process of stdio upstream ${upstream.name} that has ended; whether the tool ran is unknown`,
      );
    }
    let upstreamTaskId = run.upstreamTask?.taskId ?? '';
    if (run.upstreamTask !== undefined) {
      // Restored from the store: the upstream may have restarted meanwhile and given the id to
      // another client's task (ids numbered afresh). Its result, status and cancel are taken
      // only once the upstream says the id still names a task made when this one was.
      await this.#checkUpstreamTask(upstream, run.upstreamTask, extra.signal);
    }
    if (upstreamTaskId === '') {
      const params: Record<string, unknown> = { name: upstreamName, task: { ttl: run.ttl } };
      if (rawArgs !== undefined) params.arguments = rawArgs;
      // Once sent, the task-augmented call is not abandoned when the task is cancelled or
      // expires: the upstream may have made its task already, and only its answer names it. Its
      // answer is awaited (an upstream answers at once; the upstream's call timeout bounds it)
      // and the task it names is cancelled below. A turn on an exclusive upstream is still given
      // up on cancellation: nothing was sent yet.
      if (extra.signal.aborted) throw extra.signal.reason;
      const created = (await this.#upstreamRequest(
        session,
        upstream,
        { method: 'tools/call', params },
        { requestId: extra.requestId, signal: NEVER_ABORTED, agentId: extra.agentId },
        extra.signal,
        recheck,
        lock,
      )) as Partial<CreateTaskResult>;
      const id = created.task?.taskId;
      if (typeof id !== 'string' || id === '' || id.length > MAX_UPSTREAM_TASK_ID) {
        const error = new RelayedMcpError(
          ErrorCode.InternalError,
          `upstream ${upstream.name} answered a task-augmented tools/call without a valid task id`,
        );
        markReachedUpstream(error); // it got the call: it may have run the tool
        throw error;
      }
      upstreamTaskId = id;
      // Kept to tell this task from another under the same id (see UpstreamTaskLink).
      const createdAt: unknown = created.task?.createdAt;
      run.relayed(
        upstream.name,
        id,
        typeof createdAt === 'string' && createdAt.length <= MAX_CREATED_AT ? createdAt : undefined,
      );
    }
    // The upstream answered the call that made its task: this call's path lock goes (the task
    // may run for hours; what it resolves later is not covered, see the README).
    lock?.()?.();
    // The task's server→client requests come during this wait: tracked like the call, so none
    // is handed to another agent with a call in flight there (see upstream-routing.ts).
    const waiting = this.#routes.enter(upstream, session, extra.requestId);
    const madeOn = upstream.connectCount;
    let failure: unknown;
    try {
      // The wait is bounded by the task's lifetime (its expiry also aborts `extra.signal`).
      const result = await upstream.request(
        { method: 'tasks/result', params: { taskId: upstreamTaskId } },
        { signal: extra.signal, timeoutMs: run.ttl },
      );
      const meta = result._meta;
      if (meta === undefined || !(RELATED_TASK_META_KEY in meta)) return result;
      const { [RELATED_TASK_META_KEY]: _upstreamTask, ...rest } = meta;
      const { _meta: _dropped, ...plain } = result;
      return Object.keys(rest).length === 0 ? plain : { ...plain, _meta: rest };
    } catch (error) {
      // The upstream made its task and may have done the work: charged as a plain call that
      // reached its upstream (a cancel or the ttl only asks it to stop), else an agent could
      // cancel every task once made and spend nothing of its cost budget.
      failure = error;
      markReachedUpstream(error);
      // Not on another connection than the one the task was made or checked on: the upstream
      // may have restarted and given the id to another task meanwhile.
      if (extra.signal.aborted && upstream.state === 'ready' && upstream.connectCount === madeOn) {
        await upstream
          .request(
            { method: 'tasks/cancel', params: { taskId: upstreamTaskId } },
            { timeoutMs: RELAY_GET_TIMEOUT_MS },
          )
          .catch(() => undefined);
      }
      throw error;
    } finally {
      this.#leave(upstream, waiting, failure, undefined);
    }
  }

  /**
   * Checks that the upstream task `link` names is still the one the gateway's task was passed
   * through to: the upstream's `tasks/get` of the id answers the `createdAt` it gave that task.
   * @throws RelayedMcpError when it does not (or `createdAt` was never known): whether the
   *   tool ran is unknown, and the id is not asked about again; the upstream's own error when
   *   it knows no such task (as `tasks/result` would have failed).
   */
  async #checkUpstreamTask(
    upstream: Upstream,
    link: UpstreamTaskLink,
    signal: AbortSignal,
  ): Promise<void> {
    const task = (await upstream.request(
      { method: 'tasks/get', params: { taskId: link.taskId } },
      { signal, timeoutMs: RELAY_GET_TIMEOUT_MS },
    )) as { createdAt?: unknown };
    if (sameUpstreamTask(link, task.createdAt)) return;
    throw new RelayedMcpError(
      ErrorCode.InternalError,
      link.createdAt === undefined
        ? `the gateway restarted before the call finished, and the task it was passed through to on upstream ${upstream.name} cannot be told from another task under the same id (its creation time is not known); whether the tool ran is unknown`
        : `the gateway restarted before the call finished, and the task upstream ${upstream.name} now holds under that id is not the task it was passed through to (the upstream restarted and gave the id to another task); whether the tool ran is unknown`,
    );
  }

  #isKnownTool(name: string): boolean {
    return this.#fabricTools.has(name) || this.#catalog.tools.has(name);
  }

  /**
   * Calls a tool as `request.identity` through the same pipeline as an MCP session's
   * `tools/call` — input bounds → policy [→ approval wait] → budget reservation → forward →
   * settle → audit — for a door without MCP sessions (the gRPC `ToolService`): the same
   * decision, reservation and audit line as the same call over MCP. Never rejects: refusals and
   * errors are outcomes. Server→client requests an upstream sends while such a call is in
   * flight (sampling, elicitation) are refused with a routing error: nobody can answer them.
   */
  callToolAs(request: ToolCallRequest): Promise<ToolCallOutcome> {
    // Ended with its agent (see endAgent): no session carries it whose close would abort it.
    const { agentId } = request.identity;
    const ended = new AbortController();
    let calls = this.#sessionless.get(agentId);
    if (calls === undefined) this.#sessionless.set(agentId, (calls = new Set()));
    calls.add(ended);
    // The door's signal aborts `ended` with its reason: the call's signal aborts on either, as
    // `AbortSignal.any` would, without a composite signal and its weak references (they cost
    // the sidecar 8–12 % of its CPU per gRPC CallTool: bench/RESULTS.md, gRPC agent protocol).
    const door = request.signal;
    const onDoorAbort = (): void => ended.abort(door.reason);
    if (door.aborted) ended.abort(door.reason);
    else door.addEventListener('abort', onDoorAbort, { once: true });
    const extra: CallExtra = {
      signal: ended.signal,
      requestId: -1,
      traceContext: request.traceContext,
      holdSlot: request.holdSlot,
      agentId,
    };
    const done = (): void => {
      door.removeEventListener('abort', onDoorAbort);
      calls.delete(ended);
      if (calls.size === 0 && this.#sessionless.get(agentId) === calls) {
        this.#sessionless.delete(agentId);
      }
    };
    const run = this.#runToolCall(
      request.identity,
      request.name,
      request.arguments,
      extra,
      request.progress,
      undefined,
    );
    void run.then(done, done);
    return run;
  }

  /** Whether tool calls are traced (a door then reads the caller's trace context). */
  get traced(): boolean {
    return this.#tracing !== undefined;
  }

  /**
   * The tools `identity` may see, as `tools/list` lists them (policy hides those it denies
   * outright, see `hideDeniedTools`).
   */
  listToolsFor(identity: AgentIdentity): Tool[] {
    const tools: Tool[] = [];
    for (const [name, t] of this.#fabricTools) {
      if (this.#visibleTo(identity, name)) tools.push(t.tool);
    }
    for (const [name, route] of this.#catalog.tools) {
      if (this.#visibleTo(identity, name)) tools.push(route.item);
    }
    return tools;
  }

  toolVisible(session: GatewaySession, name: string): boolean {
    return this.#visibleTo(session.identity, name);
  }

  /** False when `tools/list` hides the tool `name` from `identity` (`hideDeniedTools`). */
  #visibleTo(identity: AgentIdentity, name: string): boolean {
    if (!this.#hides()) return true;
    const { agentId, poolId, labels } = identity;
    return this.#backend.isToolVisible!({ agentId, poolId, tool: name, labels });
  }

  /** True when policy may hide tools from agents (`hideDeniedTools` and a backend that can). */
  #hides(): boolean {
    return this.#hideDenied && this.#backend.isToolVisible !== undefined;
  }

  /**
   * One tool call from any door: input bounds, the tool's route, then the pipeline. `rawArgs`
   * is forwarded as received (absent stays absent; policy and audit see `{}`). `session` is the
   * MCP session the call came from, for routing an upstream's requests back (none over gRPC).
   */
  #runToolCall(
    identity: AgentIdentity,
    name: string,
    rawArgs: unknown,
    extra: CallExtra,
    progress: ProgressSink | undefined,
    session: GatewaySession | undefined,
    task?: ToolTaskRun,
    rewritten = false,
  ): Promise<ToolCallOutcome> {
    // Not async: the pipeline's own promise is returned, without an await of ours after it.
    try {
      return this.#startToolCall(
        identity,
        name,
        rawArgs,
        extra,
        progress,
        session,
        task,
        rewritten,
      );
    } catch (error) {
      return Promise.reject(error as Error);
    }
  }

  #startToolCall(
    identity: AgentIdentity,
    name: string,
    rawArgs: unknown,
    extra: CallExtra,
    progress: ProgressSink | undefined,
    session: GatewaySession | undefined,
    task: ToolTaskRun | undefined,
    rewritten: boolean,
  ): Promise<ToolCallOutcome> {
    const started = performance.now();
    const args = (rawArgs ?? {}) as Record<string, unknown>;
    const { agentId } = identity;
    const fabricTool = this.#fabricTools.get(name);
    const route = fabricTool ? undefined : this.#catalog.tools.get(name);
    const known = fabricTool !== undefined || route !== undefined;
    const audited = known
      ? this.#pipeline.auditor(agentId, name, args, started)
      : this.#pipeline.auditor(agentId, truncated(name), args, started, UNKNOWN_TOOL);
    // `_meta` (SEP-414) wins over the HTTP headers; gRPC metadata comes as `traceContext`.
    const trace = this.#tracing?.toolCall(
      agentId,
      known ? name : UNKNOWN_TOOL,
      extra._meta as TraceCarrier | undefined,
      extra.requestInfo?.headers,
      extra.traceContext,
    );
    const audit =
      trace === undefined
        ? audited
        : (fields: AuditOutcome, line?: boolean): void => {
            audited(fields, line);
            trace.end(fields);
          };
    // Before anything looks inside the arguments: policy, plugins, the audit digest and the
    // upstream all recurse into them (see input-bounds.ts).
    const tooBig = checkInputBounds(args, this.#bounds, 'arguments');
    if (tooBig !== undefined) {
      // Refusals that ran nothing: their lines are bounded per agent; the metrics
      // and the trace count each.
      audit(
        { decision: 'invalid', outcome: 'error', code: tooBig.code },
        this.#refusalLines.take(agentId, INVALID_REQUESTS),
      );
      return Promise.resolve({ kind: 'error', error: tooBig, stage: 'admission' });
    }
    if (!known) {
      audit(
        { decision: 'none', outcome: 'error', code: ToolNotFoundError.code },
        this.#refusalLines.take(agentId, UNKNOWN_TOOLS),
      );
      const notFound: ToolCallOutcome = {
        kind: 'error',
        error: new ToolNotFoundError(truncated(name)),
        stage: 'admission',
      };
      // A tool policy hides is answered as unknown once the policy services that outrank the
      // rule hiding it answered: an unknown tool waits for them too, or its quicker answer
      // would tell the two apart (see `decideUnknownTool`).
      const { poolId, labels } = identity;
      const wait = this.#hides()
        ? this.#backend.decideUnknownTool?.(
            { agentId, poolId, labels, tool: truncated(name), params: args },
            extra.signal,
          )
        : undefined;
      return wait === undefined ? Promise.resolve(notFound) : wait.then(() => notFound);
    }
    if (this.#state !== 'started') {
      audit(
        { decision: 'none', outcome: 'error', code: ClosedError.code },
        this.#refusalLines.take(agentId, CALLS_WHILE_CLOSING),
      );
      return Promise.resolve({
        kind: 'error',
        error: new ClosedError('the gateway'),
        stage: 'admission',
      });
    }
    this.#beginCall();
    let run: Promise<ToolCallOutcome>;
    try {
      run = this.#pipeline.run(
        {
          identity,
          tool: name,
          params: args,
          paths: route?.upstream.paths,
          pathLock: route?.upstream.pathLock,
          keepsNames: route?.upstream.keepsNames(route.upstreamName),
          pathLockWaitMs:
            route === undefined ? undefined : route.upstream.spec.callTimeoutSeconds * 1000,
          exclusive: fabricTool === undefined && route?.upstream.spec.exclusive === true,
          abort: extra,
          progress,
          onApproval: task?.waiting,
          resumeApproval: task?.approvalId,
          audit,
          alwaysDelivered: fabricTool?.alwaysDelivered,
          trace,
          // Audit right after the response is written; the call ends then.
          defer: extra.defer === undefined ? undefined : (work) => extra.defer!(work),
          onEnd: this.#endCall,
        },
        (_auth, recheck, lock) => {
          const written = task?.working();
          const send = (): Promise<Result> => {
            // A task restored with an upstream task behind it never calls the tool again.
            if (
              task !== undefined &&
              route !== undefined &&
              (task.upstreamTask !== undefined || passesThrough(route))
            ) {
              return this.#forwardAsTask(
                session,
                route.upstream,
                route.upstreamName,
                rawArgs,
                extra,
                task,
                recheck,
                lock,
              );
            }
            return fabricTool
              ? fabricTool.call(this.#backend, {
                  agentId,
                  poolId: identity.poolId,
                  args,
                  signal: extra.signal,
                  task:
                    task === undefined
                      ? undefined
                      : { fabricTaskId: task.fabricTaskId, scheduled: task.scheduled },
                })
              : this.#upstreamRequest(
                  session,
                  route!.upstream,
                  {
                    method: 'tools/call',
                    // `arguments` as received: absent stays absent (policy and audit saw `{}`).
                    params:
                      rawArgs === undefined
                        ? { name: route!.upstreamName }
                        : { name: route!.upstreamName, arguments: rawArgs },
                  },
                  extra,
                  undefined,
                  recheck,
                  lock,
                );
          };
          const go = (): Promise<Result> =>
            trace === undefined
              ? send()
              : trace.upstream(fabricTool ? 'fabric' : route!.upstream.name, send);
          // An approved task's call goes out once its task says so on disk (ToolTaskCommits).
          const sent = written === undefined ? go() : written.then(go);
          // A task's result is kept and sent by `tasks/result` as JSON written anew, not as the
          // upstream's text (a number written `1e20` comes out 21 characters long), and so is a
          // result the SDK answers: its tokens are measured on what is sent.
          return task === undefined && !rewritten ? sent : sent.then(servedAsJson);
        },
      );
    } catch (error) {
      this.#endCall(); // run is async: it cannot get here; if it did, the call ends now
      throw error;
    }
    return run;
  }

  async forward(
    session: GatewaySession,
    request: Request,
    extra: DownstreamExtra,
  ): Promise<Result> {
    const catalog = this.#catalog;
    // What the upstream gets: the agent's params, but no related-task `_meta` (see agentParams).
    const params = agentParams(request.params);
    const method = request.method;
    if (
      method === 'prompts/get' ||
      method === 'resources/read' ||
      method === 'completion/complete'
    ) {
      // The whole params are forwarded upstream (and parts of them reach policy): bound them all.
      const tooBig = checkInputBounds(params, this.#bounds, 'params');
      if (tooBig !== undefined) {
        this.#auditRefused(session, method, params, INVALID_REQUESTS);
        throw toMcpError(tooBig);
      }
    }
    switch (method) {
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
        const args = (params.arguments ?? {}) as Record<string, unknown>;
        const forwarded = route === undefined ? params : { ...params, name: route.upstreamName };
        return this.#guarded(
          session,
          route?.upstream,
          'prompts/get',
          { name, arguments: args },
          forwarded,
          extra,
          this.#forwardOrUnserved(
            session,
            route?.upstream,
            { method, params: forwarded },
            extra,
            name,
            'prompt',
          ),
        );
      }
      case 'resources/read': {
        const uri = String(params.uri);
        const owner = resourceOwner(catalog, uri);
        return this.#guarded(
          session,
          owner,
          'resources/read',
          resourceParams(uri),
          params,
          extra,
          this.#forwardOrUnserved(session, owner, { method, params }, extra, uri, 'resource'),
        );
      }
      case 'completion/complete': {
        // Completions can reveal data (file names, records), so they pass policy too.
        const ref = (params.ref ?? {}) as { type?: string; name?: string; uri?: string };
        const argument = params.argument;
        // The values of the prompt's other arguments, which the upstream's completer reads too.
        const context = params.context === undefined ? undefined : { context: params.context };
        if (ref.type === 'ref/prompt') {
          const name = String(ref.name);
          const route = catalog.prompts.get(name);
          const forwarded =
            route === undefined ? params : { ...params, ref: { ...ref, name: route.upstreamName } };
          return this.#guarded(
            session,
            route?.upstream,
            'completion/complete',
            { name, argument, ...context },
            forwarded,
            extra,
            this.#forwardOrUnserved(
              session,
              route?.upstream,
              { method, params: forwarded },
              extra,
              name,
              'prompt',
            ),
          );
        }
        const uri = String(ref.uri);
        const owner =
          catalog.templateOwners.find((t) => t.template.toString() === uri)?.upstream ??
          resourceOwner(catalog, uri);
        return this.#guarded(
          session,
          owner,
          'completion/complete',
          // A template is compared as written (the SDK matches `ref.uri` exactly), not as a URL.
          { ...resourceParams(uri), uri, argument, ...context },
          params,
          extra,
          this.#forwardOrUnserved(
            session,
            owner,
            { method, params },
            extra,
            uri,
            'resource template',
          ),
        );
      }
      default:
        throw new RelayedMcpError(ErrorCode.MethodNotFound, `Method not found: ${request.method}`);
    }
  }

  /**
   * The `read` of {@link #guarded} for `request`: sent to `upstream` once policy let it through,
   * or, when no upstream serves the prompt, resource or template (`what`) named `name`, the
   * unknown target's error (see {@link unserved}).
   */
  #forwardOrUnserved(
    session: GatewaySession,
    upstream: Upstream | undefined,
    request: Request,
    extra: DownstreamExtra,
    name: string,
    what: string,
  ): (auth: unknown, recheck?: TurnRecheck, lock?: TakeLock) => Promise<Result> {
    if (upstream === undefined) return unserved(name, what);
    return (_auth, recheck, lock) =>
      this.#upstreamRequest(session, upstream, request, extra, undefined, recheck, lock);
  }

  /**
   * A resource read, prompt get or completion carries data to the model as a tool call does,
   * and a resource subscription asks to watch a resource, so each passes the same policy (and
   * approval) check first — as the pseudo-tool `resources/read` / `resources/subscribe` with
   * `{ uri }` (plus the `path` of a `file:` URI, see {@link resourceParams}), `prompts/get` with
   * `{ name, arguments }`, or `completion/complete` with the prompt's `name` or the template's
   * `uri` (and `path`) plus `argument` — and gets an audit line. Path-like values are resolved
   * by the owning `upstream`'s resolver for the policy, as a tool call's are. Its budget is
   * handled as a call's: the reservation is the agent's learned estimate for the pseudo-tool,
   * settled with the tokens of what came back (the same estimator as tool results; none for a
   * subscription) and the `toolCosts` entry matching the pseudo-tool's name, if any; what does
   * not fit is withheld. Refusals are JSON-RPC errors. `forwarded` is the request's params as
   * the upstream gets them (`_meta`, a completion's `context` and all): policy plugins get them
   * as `rawParams`, so secret-guard scans everything that leaves, not only what rules match on.
   *
   * A request naming a prompt, resource or template no upstream serves (`upstream` undefined,
   * `read` from {@link unserved}) is decided the same way, and is told it names nothing only once
   * policy (an approval, the budget) let it through: answered at once, it told an agent which of
   * the names a deny rule covers exist (a served one refused with `FABRIC_ERR_POLICY_DENIED`,
   * the other `FABRIC_ERR_TOOL_NOT_FOUND`), and by its speed which ones a policy service was
   * asked about. Its audit line has the decision and `FABRIC_ERR_TOOL_NOT_FOUND`. Policy sees
   * its `file:` path as written (`.` and `..` resolved): no upstream resolves it.
   */
  async #guarded(
    session: GatewaySession,
    upstream: Upstream | undefined,
    tool: 'resources/read' | 'resources/subscribe' | 'prompts/get' | 'completion/complete',
    params: Record<string, unknown>,
    forwarded: Readonly<Record<string, unknown>>,
    extra: DownstreamExtra,
    read: (auth: unknown, recheck?: TurnRecheck, lock?: TakeLock) => Promise<Result>,
  ): Promise<Result> {
    const { identity } = session;
    const outcome = await this.#pipeline.run(
      {
        identity,
        tool,
        params,
        forwarded,
        paths: upstream?.paths,
        pathLock: upstream?.pathLock,
        keepsNames: upstream?.keepsNames(tool),
        pathLockWaitMs:
          upstream === undefined ? undefined : upstream.spec.callTimeoutSeconds * 1000,
        exclusive: upstream?.spec.exclusive === true,
        abort: extra,
        progress: progressSink(session, extra),
        audit: this.#pipeline.auditor(identity.agentId, tool, params, performance.now()),
        countTokens: tool !== 'resources/subscribe',
      },
      // Sent by the SDK as JSON written anew: measured on that (see forgetLongerRawResult).
      (auth, recheck) => read(auth, recheck).then(servedAsJson),
    );
    switch (outcome.kind) {
      case 'result':
        return outcome.result;
      case 'refused':
        throw refusalError(outcome.refusal);
      case 'error':
        // Gateway-side failures are JSON-RPC errors; what the upstream said passes as it is.
        throw outcome.stage === 'admission' || outcome.error instanceof ToolNotFoundError
          ? toMcpError(outcome.error)
          : outcome.error;
    }
  }

  /**
   * Sends a request upstream on behalf of a session (none for a gRPC call), tracking it for
   * routing and progress. `turnSignal` gives up the wait for an exclusive upstream's turn
   * (default: the request's own signal, which also cancels it once sent; read only then: on the
   * fast path reading `extra.signal` makes an AbortController per call).
   */
  #upstreamRequest(
    session: GatewaySession | undefined,
    upstream: Upstream,
    request: Request,
    extra: CallExtra,
    turnSignal?: AbortSignal,
    recheck?: TurnRecheck,
    lock?: TakeLock,
  ): Promise<Result> {
    return upstream.spec.exclusive
      ? this.#exclusiveRequest(
          session,
          upstream,
          request,
          extra,
          turnSignal ?? extra.signal,
          recheck,
          lock,
        )
      : this.#forward(session, upstream, request, extra, lock);
  }

  /**
   * {@link #upstreamRequest} on an `exclusive` upstream: one session's calls at a time; a call
   * without a session takes its turn alone. `recheck` (the rules, when they changed, and an
   * approved call's paths, see `ToolCallPipeline.run`) runs once the turn is the call's: the wait
   * for it may be as long as another session's calls, and what policy let through (and the
   * human approved) must still be what the rules say and what the upstream will touch.
   */
  async #exclusiveRequest(
    session: GatewaySession | undefined,
    upstream: Upstream,
    request: Request,
    extra: CallExtra,
    turnSignal: AbortSignal,
    recheck?: TurnRecheck,
    lock?: TakeLock,
  ): Promise<Result> {
    let gate = this.#gates.get(upstream);
    if (gate === undefined) this.#gates.set(upstream, (gate = new UpstreamGate()));
    await gate.enter(session ?? {}, turnSignal);
    try {
      const again = recheck?.();
      if (again !== undefined) await again;
      return await this.#forward(session, upstream, request, extra, lock);
    } finally {
      gate.leave();
    }
  }

  /**
   * Sends `request` on. `lock`: the call's path lock, which a request given up on (cancelled,
   * timed out) keeps until the upstream is done with it (see {@link #leave}).
   */
  #forward(
    session: GatewaySession | undefined,
    upstream: Upstream,
    request: Request,
    extra: CallExtra,
    lock?: TakeLock,
  ): Promise<Result> {
    // An upstream that was given an agent's roots serves that agent alone (forwardRoots).
    const holder = upstream.rootsHolder;
    if (holder !== undefined && holder !== (session?.identity.agentId ?? extra.agentId)) {
      return Promise.reject(forwardError(upstream.heldByAnother(), request, false) as Error);
    }
    if (extra._meta?.progressToken !== undefined) {
      return this.#forwardWithProgress(session, upstream, request, extra, lock);
    }
    // Without progress to relay: one reaction on the upstream's promise, not an async frame
    // (the largest allocation of a call was async functions' frames).
    const entry = this.#routes.enter(upstream, session, extra.requestId);
    const reached = upstream.state === 'ready';
    const cancel = extra.cancel;
    let sent: Promise<Result>;
    try {
      // `signal` only without a cancel hook: reading it creates an AbortController.
      sent = upstream.request(
        request,
        cancel === undefined ? { signal: extra.signal } : { cancel },
      );
    } catch (error) {
      sent = Promise.reject(error as Error);
    }
    return sent.then(
      (result) => {
        this.#routes.leave(upstream, entry);
        return result;
      },
      (error: unknown) => {
        this.#leave(upstream, entry, error, extra.holdSlot ?? session?.holdSlot, lock);
        throw forwardError(error, request, reached);
      },
    );
  }

  /**
   * Ends the routing of a request `entry` ({@link InflightRoutes.leave}). One the gateway gave
   * up on (cancelled, timed out) while its work may go on upstream stays its session's for
   * routing, and keeps the caller's in-flight slot (`hold`: its session's door's,
   * `GatewaySession.holdSlot`, or the one a door without sessions passed with the call,
   * `ToolCallRequest.holdSlot`): until the upstream answers it (the answer is dropped), its
   * connection closes, or the request's late window (`callTimeoutSeconds`) ends. Else an agent
   * that cancels each call it makes frees its slot at once and can keep any number of calls
   * running on an upstream that ignores cancellation, and what such a call logs or asks later
   * reaches the one other session with a call there. Called before the request's own failure
   * settles, so the door still holds the call's slot when this one is taken. The call's path
   * lock (`lock`, see `PipelineCall.pathLock`) is kept as long: the upstream may still resolve
   * its paths, so no call that may rename them runs before it is done.
   */
  #leave(
    upstream: Upstream,
    entry: InFlight,
    error: unknown,
    hold: SlotHold | undefined,
    lock?: TakeLock,
  ): void {
    if (!this.#routes.leave(upstream, entry, error)) return;
    const release = hold?.();
    // The upstream may still resolve the call's paths: no rename runs before it is done.
    const unlock = lock?.();
    let done = false;
    let stopWatch: (() => void) | undefined;
    const end = (): void => {
      if (done) return;
      done = true;
      stopTimer();
      stopWatch?.();
      this.#routes.settle(upstream, entry);
      release?.();
      unlock?.();
    };
    const stopTimer = setLongTimeout(end, upstream.spec.callTimeoutSeconds * 1000, {
      unref: true,
    });
    // Its late answer, when the upstream's fast path carried it and still remembers it; the
    // connection closing in any case (the only sign for a call with progress, which the SDK's
    // client carries).
    upstream.whenAnswered(error, end);
    if (!done) stopWatch = upstream.whenDisconnected(end);
  }

  /** {@link #forward} of a request whose caller asked for progress notifications. */
  async #forwardWithProgress(
    session: GatewaySession | undefined,
    upstream: Upstream,
    request: Request,
    extra: CallExtra,
    lock?: TakeLock,
  ): Promise<Result> {
    const progressToken = extra._meta?.progressToken;
    const entry = this.#routes.enter(upstream, session, extra.requestId);
    // The response must not overtake the last progress notification on the client's stream.
    let lastProgress: Promise<void> | undefined;
    // Unless ready, Upstream.request throws before anything is sent.
    const reached = upstream.state === 'ready';
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
                lastProgress = session?.progress(progressToken, p, extra.requestId);
              },
      });
      if (lastProgress) await lastProgress;
      this.#routes.leave(upstream, entry);
      return result;
    } catch (error) {
      this.#leave(upstream, entry, error, extra.holdSlot ?? session?.holdSlot, lock);
      throw forwardError(error, request, reached);
    }
  }

  async subscribe(session: GatewaySession, uri: string, extra: DownstreamExtra): Promise<void> {
    if (uri.length > this.#maxSubscriptionUri) {
      throw this.#refusedSubscribe(
        session,
        uri,
        SUBSCRIPTION_URIS_PAST_LIMIT,
        new SubscriptionLimitError(this.#maxSubscriptionUri, uri.length),
      );
    }
    // A URI no upstream serves is decided by policy as a served one is, and counts against the
    // limit while it is (see #guarded): an agent cannot tell it from one a rule refuses.
    const owner = resourceOwner(this.#catalog, uri);
    // A subscription counts from its request's arrival, not from when policy (an approval, a
    // budget wait) let it through: counted then, any number of subscribes sent at once (a
    // batch, parallel POSTs) each passed the check before the first was added.
    const mine = session.subscriptions;
    const pending = session.subscribing;
    if (!mine.has(uri) && !pending.has(uri)) {
      let held = mine.size;
      for (const u of pending.keys()) if (!mine.has(u)) held++;
      if (held >= this.#maxSubscriptions) {
        throw this.#refusedSubscribe(
          session,
          uri,
          SUBSCRIPTIONS_PAST_LIMIT,
          new SubscriptionLimitError(this.#maxSubscriptions),
        );
      }
    }
    pending.set(uri, (pending.get(uri) ?? 0) + 1);
    try {
      await this.#guarded(
        session,
        owner,
        'resources/subscribe',
        resourceParams(uri),
        { uri },
        extra,
        owner === undefined
          ? unserved(uri, 'resource')
          : async (_auth, recheck) => {
              await this.#subscribe(session, owner, uri, extra, recheck);
              return {};
            },
      );
    } finally {
      const left = pending.get(uri)! - 1;
      if (left === 0) pending.delete(uri);
      else pending.set(uri, left);
    }
  }

  /**
   * The error of a `resources/subscribe` refused with FABRIC_ERR_SUBSCRIPTION_LIMIT before policy
   * sees it, after its audit line (its method as `tool`, the digest of `{ uri }`), with
   * `decision` `"invalid"` for a URI past the length limit (an input limit) and `"none"` for one
   * subscription too many. Else an agent hammering the limit left no trace.
   */
  #refusedSubscribe(
    session: GatewaySession,
    uri: string,
    kind: RefusalKind,
    error: SubscriptionLimitError,
  ): McpError {
    this.#auditRefused(session, 'resources/subscribe', { uri }, kind);
    return toMcpError(error);
  }

  /**
   * Subscribes upstream for the URI's first subscriber. A later one waits for that subscribe
   * while it is in flight: answered at once, it was told it was subscribed even when the first
   * one's subscribe then failed (an agent could make it fail: cancel it, or hold an exclusive
   * upstream's turn) and left the upstream unsubscribed — no update ever came. When it fails,
   * a waiting subscriber still subscribed sends its own (one at a time). `recheck` runs when
   * its own subscribe's turn comes on an exclusive upstream, as a read's does (see
   * {@link #exclusiveRequest}), or once the subscribe of another it waited for succeeded there:
   * a symlink moved or rules changed while it waited are seen.
   */
  async #subscribe(
    session: GatewaySession,
    owner: Upstream,
    uri: string,
    extra: DownstreamExtra,
    recheck: TurnRecheck | undefined,
  ): Promise<void> {
    // Run once policy let it through, which may have awaited what a close cannot cut short (a
    // `file:` path looked up on disk): a session closed meanwhile was unsubscribed from all it
    // held, so adding it now would keep it subscribed for good, and the URI upstream with it.
    if (session.closed) throw toMcpError(new ClosedError('session'));
    let mine = this.#subscribers.add(session, uri);
    for (;;) {
      if (!mine) {
        const pending = this.#subscribing.get(uri);
        if (pending === undefined) return;
        if (
          await pending.then(
            () => true,
            () => false,
          )
        ) {
          // Subscribed by the other's: what let this one through is checked now that its wait
          // is over, as at a turn of its own (the rules may have changed for its agent alone).
          const again = owner.spec.exclusive ? recheck?.() : undefined;
          if (again !== undefined) {
            try {
              await again;
            } catch (error) {
              if (this.#subscribers.remove(session, uri)) this.#unsubscribeUpstream(owner, uri);
              throw error;
            }
          }
          return;
        }
        // Unsubscribed meanwhile (its session closed), or another waiter took over.
        if (!session.subscriptions.has(uri)) return;
        if (this.#subscribing.has(uri)) continue;
        mine = true;
      }
      const request = this.#upstreamRequest(
        session,
        owner,
        { method: 'resources/subscribe', params: { uri } },
        extra,
        undefined,
        recheck,
      );
      this.#subscribing.set(uri, request);
      try {
        await request;
        return;
      } catch (error) {
        this.#subscribers.remove(session, uri);
        throw error;
      } finally {
        if (this.#subscribing.get(uri) === request) this.#subscribing.delete(uri);
      }
    }
  }

  async unsubscribe(session: GatewaySession, uri: string): Promise<void> {
    if (!this.#subscribers.remove(session, uri)) return;
    const owner = resourceOwner(this.#catalog, uri);
    if (owner !== undefined) await this.#unsubscribeUpstream(owner, uri);
  }

  /** Unsubscribes `owner` from `uri` (its last subscriber left); never rejects. */
  #unsubscribeUpstream(owner: Upstream, uri: string): Promise<unknown> {
    return owner
      .request({ method: 'resources/unsubscribe', params: { uri } })
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

  /**
   * Ends everything the agent `agentId` has running or waiting in the gateway, through any door:
   * its MCP sessions are closed (their calls aborted), its calls from doors without sessions
   * (gRPC and /api `CallTool`) are aborted, and its MCP tasks still running are cancelled. A
   * call waiting for its turn (an exclusive upstream, an approval, the budget) never runs; one
   * already sent is cancelled upstream. The sidecar calls this when an agent is terminated: its
   * credential no longer authenticates, so nothing it started before may go on for it.
   */
  async endAgent(agentId: string, status = 'TERMINATED'): Promise<void> {
    const reason = new AgentUnavailableError(agentId, status);
    const calls = this.#sessionless.get(agentId);
    this.#sessionless.delete(agentId);
    for (const c of calls ?? []) c.abort(reason);
    this.#tasks?.endAgent(agentId, reason);
    await this.closeAgentSessions(agentId);
  }

  sessionClosed(session: GatewaySession): void {
    this.#sessions.delete(session);
    this.#refusalLines.closeSession(session.identity.agentId);
    for (const uri of [...session.subscriptions]) void this.unsubscribe(session, uri);
    // Whether it set a level or none (which holds the upstreams at `debug`), what the others
    // want may differ now.
    void this.#syncLogLevel();
  }

  logLevelChanged(): Promise<void> {
    return this.#syncLogLevel();
  }

  /**
   * Charges the agent of `session` the tokens of a `sampling/createMessage` an upstream sent it
   * (`asked`, its params') and of its client's answer (the agent's model reads the one and
   * writes the other), once the answer came, whatever becomes of it (a policy provider may
   * refuse to pass it on: the model ran). Settles `admission` (what the budget held for the
   * request) with them, or without one records them as `fabric__record_usage` is; never refused
   * either way — the work is done before it can be measured — and in full on the agent (shared
   * budgets take at most what its own limit had left: the answer is its client's; a sampling so
   * capped is logged at `warn`), so a budget it
   * exhausts refuses the agent's next call, and its next sampling request
   * (`GatewayBackend.admitSampling`, asked before the request is sent).
   */
  #chargeSampling(
    session: GatewaySession,
    asked: number,
    answer: Promise<Result>,
    admission: SamplingAdmission | undefined,
  ): void {
    const agentId = session.identity.agentId;
    const record = (tokens: number): void => {
      try {
        const done =
          admission === undefined
            ? this.#backend.recordUsage(agentId, { tokens, cost: 0 })
            : admission.settle(tokens);
        if (done instanceof Promise) {
          done.then(
            (unshared: unknown) => {
              if (unshared != null) this.#samplingCapped(agentId, unshared as UnsharedUsage);
            },
            (error: unknown) => this.#samplingNotCharged(agentId, error),
          );
        } else if (done != null && admission !== undefined) {
          this.#samplingCapped(agentId, done as UnsharedUsage);
        }
      } catch (error) {
        this.#samplingNotCharged(agentId, error);
      }
    };
    answer.then(
      (result) => record(asked + estimateTokens(result)),
      () => record(asked),
    );
  }

  #samplingNotCharged(agentId: string, error: unknown): void {
    // A report past the agent's own limit's remainder is answered so (`usageBeyondLimit`): it
    // was counted, only capped on the shared budgets.
    if (error instanceof BudgetExceededError && error.details.shared !== undefined) {
      this.#samplingCapped(agentId, error.details as unknown as UnsharedUsage);
      return;
    }
    this.#log({
      level: 'warn',
      msg: 'charging a sampling request failed',
      error: messageOf(error),
    });
  }

  /**
   * Tells the operator a sampling answer went past what the agent's own budget had left:
   * counted in full on the agent, its pool and the fabric charged only that remainder (how
   * much was recorded and shared; never what the sampling held).
   */
  #samplingCapped(agentId: string, unshared: UnsharedUsage): void {
    const { scope, limit, used, max, recorded, shared } = unshared;
    this.#log({
      level: 'warn',
      msg:
        `a sampling request was counted in full on ${scope} (${limit} ${used}/${max}), but past ` +
        `what its limit had left: its pool and the fabric were charged ${limit} ${shared[limit]} of ${recorded[limit]}`,
      agentId,
      scope,
      limit,
      used,
      max,
      recorded: { tokens: recorded.tokens, cost: recorded.cost },
      shared: { tokens: shared.tokens, cost: shared.cost },
    });
  }

  /**
   * Upstreams are shared, so they get the most verbose level any live session wants; each
   * session still drops what is below its own level. A session that set no level wants all the
   * upstream sends unasked, so while one is open the upstream is told `debug` (counting only the
   * sessions that set one, an agent setting `emergency` silenced the upstream for every agent
   * whose client never sets a level). With no session asking, an upstream keeps the level it
   * has (MCP has no way to unset one).
   */
  async #syncLogLevel(only?: Upstream): Promise<void> {
    let wanted = LOG_LEVELS.length;
    let unset = false;
    for (const s of this.#sessions) {
      const level = s.logLevel;
      if (level !== undefined) wanted = Math.min(wanted, LOG_LEVELS.indexOf(level));
      else unset = true;
    }
    if (wanted === LOG_LEVELS.length) return; // nobody asked for a level
    const level = LOG_LEVELS[unset ? 0 : wanted];
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
    onCatalog: (upstream: Upstream, connected: boolean): void => {
      // Only a new connection is a restart; a list change is not (it re-subscribed every
      // resource and logged "upstream restarted" each time once the upstream had restarted).
      this.#rebuildCatalog(connected ? upstream : undefined);
      // A restarted upstream starts at its own default log level.
      if (connected) void this.#syncLogLevel(upstream);
    },
    onNotification: (upstream: Upstream, n: Notification): void =>
      this.#routeNotification(upstream, n),
    onRequest: (upstream: Upstream, request: Request, extra: { signal: AbortSignal }) =>
      this.#routes.request(upstream, request, extra.signal),
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
        // The SDK puts whole messages in some of these (an answer to an unknown request id):
        // tool output does not belong in the log, nor an upstream's megabytes in one line.
        error: loggedError(error.message),
      }),
    onStderr: (upstream: Upstream, line: string): void =>
      this.#log({ level: 'info', msg: line, upstream: upstream.name, stream: 'stderr' }),
  };

  #rebuildCatalog(reconnected: Upstream | undefined): void {
    if (this.#state !== 'started') return;
    const problems: CatalogProblem[] = [];
    const before = this.#catalog;
    try {
      // What an upstream held before it keeps: a newcomer's clashing item is dropped.
      this.#catalog = buildCatalog(
        [...this.#upstreams.values()],
        new Set(this.#fabricTools.keys()),
        false,
        problems,
        before,
      );
    } catch (error) {
      // Not expected (items are checked at load): the catalog stays as it was, for everyone.
      this.#log({ level: 'error', msg: 'catalog rebuild failed', error: messageOf(error) });
      return;
    }
    for (const p of problems) this.#log({ level: 'error', msg: p.message, code: p.code });
    // Agents hear of the lists whose content changed, not of every reload or restart.
    const changed = catalogChanges(before, this.#catalog);
    if (changed.tools || changed.prompts || changed.resources) {
      for (const s of this.#sessions) s.catalogChanged(changed);
    }
    if (reconnected && reconnected.connectCount > 1) {
      this.#log({ level: 'info', msg: 'upstream restarted', upstream: reconnected.name });
      for (const uri of this.#subscribers.uris()) {
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
      this.#routes.log(upstream, logged, this.#sessions);
      return;
    }
    if (n.method === 'notifications/tasks/status') {
      // An upstream task behind one of the gateway's tasks: its owner hears of it under the
      // gateway's id (see ToolTasks.relayStatus); any other upstream task is nobody's business.
      const params = (n.params ?? {}) as {
        taskId?: unknown;
        status?: unknown;
        statusMessage?: unknown;
        createdAt?: unknown;
      };
      this.#tasks?.relayStatus(
        upstream.name,
        params.taskId,
        params.status,
        params.statusMessage,
        params.createdAt,
      );
      return;
    }
    if (n.method === 'notifications/resources/updated') {
      const uri = String((n.params as { uri?: unknown } | undefined)?.uri);
      // Nobody subscribed: nothing to deliver, and nothing to look up for an upstream's text.
      if (!this.#subscribers.has(uri)) return;
      // Only the upstream that serves a URI (the one its subscription went to) speaks for it.
      if (resourceOwner(this.#catalog, uri) === upstream) this.#subscribers.notify(uri, n);
      else {
        this.#log({
          level: 'warn',
          msg: 'dropped a resources/updated notification for a URI this upstream does not serve',
          upstream: upstream.name,
        });
      }
    }
  }

  // -------------------------------------------------------------------------------------------
  // Shutdown

  #beginCall(): void {
    this.#calls++;
  }

  readonly #endCall = (): void => {
    if (--this.#calls === 0) this.#drained?.();
  };

  /**
   * Stops taking calls, lets in-flight calls finish (bounded by `shutdownGraceMs`), then closes
   * sessions and upstreams (terminating stdio children and their process trees).
   */
  async close(): Promise<void> {
    if (this.#state === 'closing' || this.#state === 'closed') return;
    this.#state = 'closing';
    this.#stopVisibilityWatch?.();
    this.#stopVisibilityWatch = undefined;
    if (this.#calls > 0) {
      this.#closeStep = `${this.#calls} calls in flight (gateway.shutdownGraceSeconds)`;
      await new Promise<void>((resolve) => {
        // Waited out whole however long (a plain timer past its limit fires after 1 ms).
        const cancel = setLongTimeout(resolve, this.#graceMs, { unref: true });
        this.#drained = () => {
          cancel();
          resolve();
        };
      });
    }
    // What ends after this (cut off below) is not recorded: a restart on the same store
    // restores those tasks as failed (or, parked on an approval, waiting for it again).
    this.#tasks?.close();
    if (this.#calls > 0) {
      // Calls still waiting for a human's approval or the budget are answered now, with
      // FABRIC_ERR_CLOSED, while their sessions can still carry the answer (each ends within
      // microtasks: the answer is written before the next turn). The approval stays pending.
      this.#pipeline.endWaits(new ClosedError('the gateway'));
      await new Promise((resolve) => setImmediate(resolve));
    }
    this.#closeStep = 'closing upstreams (their processes)';
    await Promise.all([...this.#upstreams.values()].map((u) => u.close()));
    this.#closeStep = 'closing sessions';
    await Promise.all([...this.#sessions].map((s) => s.close()));
    this.#refusalLines.close();
    try {
      this.#audit?.close();
    } catch (error) {
      // The last records could not be written: said and counted, the shutdown goes on.
      this.#auditFailed(error);
    }
    this.#closeStep = undefined;
    this.#state = 'closed';
  }

  /**
   * The `argsDigest` the audit log writes for `args` (its keyed HMAC, see `ArgsDigester`), for
   * an operator's tools that look a call up in the log.
   * @throws ConfigError when the gateway has no audit log.
   */
  auditDigest(args: unknown): string {
    if (this.#audit === undefined) throw new ConfigError('audit', 'the gateway has no audit log');
    return this.#audit.digest(args);
  }

  /**
   * What the audit log could not do (write failures, lost records, reopens), and the lines of
   * refusals that ran nothing not written one a line (`linesSuppressed`, each counted in a
   * summary line; see line-budget.ts), for the metrics.
   */
  get auditStats(): Readonly<AuditLogStats & { linesSuppressed: number }> | undefined {
    const stats = this.#audit?.stats;
    return stats && { ...stats, linesSuppressed: this.#refusalLines.suppressed };
  }

  #auditFailed(error: unknown): void {
    this.#log({
      level: 'error',
      msg: 'audit log write failed',
      path: this.#audit?.path,
      lost: error instanceof AuditWriteError ? error.lost : undefined,
      error: messageOf(error instanceof AuditWriteError ? error.cause : error),
    });
  }
}

/** `result`, measured as the JSON it is sent as, not as its upstream's text (see forgetLongerRawResult). */
function servedAsJson(result: Result): Result {
  forgetLongerRawResult(result);
  return result;
}

/**
 * What a forwarded request that failed rejects with: gateway-side failures of non-tool requests
 * as JSON-RPC errors; marked as having reached the upstream (see `markReachedUpstream`) when it
 * was ready and the request was handed to it — not when it was refused before any of it was
 * written (a stdio upstream not reading its input), which cost the upstream nothing.
 */
function forwardError(error: unknown, request: Request, reached: boolean): unknown {
  const e =
    error instanceof McpError || request.method === 'tools/call' ? error : toMcpError(error);
  if (reached && !wasNeverSent(error)) markReachedUpstream(e);
  return e;
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

/**
 * The params of an agent's request as they are forwarded upstream: as the agent sent them, but
 * without a related-task entry in `_meta` (`io.modelcontextprotocol/related-task`, which says
 * the request belongs to an upstream task). An agent knows no upstream task — it only sees the
 * gateway's `tt_` ids — so such an entry can only be made up, and an SDK server with a task
 * message queue queues the answer of a request naming a task for that task instead of sending
 * it: the request was never answered (its caller waited the call timeout) and the answer stayed
 * in the memory of an upstream every agent shares, under a task nobody fetches.
 */
function agentParams(raw: Request['params']): Record<string, unknown> {
  const params = (raw ?? {}) as Record<string, unknown>;
  const meta = params._meta;
  if (meta === null || typeof meta !== 'object' || !Object.hasOwn(meta, RELATED_TASK_META_KEY)) {
    return params;
  }
  const { [RELATED_TASK_META_KEY]: _madeUp, ...rest } = meta as Record<string, unknown>;
  const { _meta: _dropped, ...others } = params;
  return Object.keys(rest).length === 0 ? others : { ...others, _meta: rest };
}

/** The signal of a request that is not cancelled once sent (see `#forwardAsTask`). */
const NEVER_ABORTED = new AbortController().signal;

/** Bound on the gateway's own `tasks/get` / `tasks/cancel` to an upstream for a relayed task. */
const RELAY_GET_TIMEOUT_MS = 10_000;

/** Longest upstream task `createdAt` kept (an ISO 8601 time is 24 characters; longer: none). */
const MAX_CREATED_AT = 64;

/** A tool as listed with tasks off: its `execution.taskSupport`, if any, dropped. */
function withoutTaskSupport(tool: Tool): Tool {
  if (tool.execution?.taskSupport === undefined) return tool;
  const { execution, ...rest } = tool;
  const { taskSupport: _dropped, ...others } = execution;
  return Object.keys(others).length === 0 ? rest : { ...rest, execution: others };
}

/** The upstream is a task receiver for `tools/call`. */
function upstreamTakesTasks(upstream: Upstream): boolean {
  return upstream.capabilities.tasks?.requests?.tools?.call !== undefined;
}

/** A task-augmented call of this tool is passed through to its upstream's own task. */
function passesThrough(route: Route<Tool>): boolean {
  const support = route.item.execution?.taskSupport;
  return upstreamTakesTasks(route.upstream) && (support === 'optional' || support === 'required');
}

/** `name`, cut to {@link AUDIT_UNKNOWN_NAME_MAX} characters. */
function truncated(name: string): string {
  let cut = name;
  if (name.length > AUDIT_UNKNOWN_NAME_MAX) {
    // Not inside a surrogate pair: the cut would leave half of it.
    const end = isHighSurrogate(name.charCodeAt(AUDIT_UNKNOWN_NAME_MAX - 1))
      ? AUDIT_UNKNOWN_NAME_MAX - 1
      : AUDIT_UNKNOWN_NAME_MAX;
    cut = `${name.slice(0, end)}…`;
  }
  // A surrogate without its pair is escaped by JSON.stringify as `\udXXX`, which strict JSON
  // parsers (serde_json, so log shippers such as Vector) refuse: the agent would make its own
  // audit line unreadable. It becomes U+FFFD.
  return cut.replace(LONE_SURROGATE, '\uFFFD');
}

const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g;

function isHighSurrogate(code: number): boolean {
  return code >= 0xd800 && code <= 0xdbff;
}

/** An upstream's error message as the log keeps it (see the gateway's `onError`). */
function loggedError(message: string): string {
  // The SDK's report of a response it has no request for carries the whole response.
  const unknown = /^(Received a response for an unknown message ID)\b/.exec(message);
  if (unknown !== null) return `${unknown[1]} (the response is not logged)`;
  return message.length > LOGGED_ERROR_CHARS
    ? `${message.slice(0, LOGGED_ERROR_CHARS)}… (${message.length - LOGGED_ERROR_CHARS} more characters)`
    : message;
}

/** Approval-wait progress for a request of `session` that asked for progress (else none). */
function progressSink(
  session: GatewaySession,
  extra: Pick<CallExtra, 'requestId' | '_meta'>,
): ProgressSink | undefined {
  const token = extra._meta?.progressToken;
  if (token === undefined) return undefined;
  return (p) => void session.progress(token, p, extra.requestId);
}

/**
 * The `forward` of a request policy let through that names a prompt, resource or template
 * (`what`) no upstream serves: it fails with the unknown target's error, sent nowhere (nothing
 * is charged). See `ToolGateway.#guarded`.
 */
function unserved(name: string, what: string): () => Promise<never> {
  return () => Promise.reject(new ToolNotFoundError(name, what));
}

/** Refusals of a tool policy hides that are answered as an unknown tool (see `outcomeFor`). */
const HIDDEN_REFUSALS: ReadonlySet<string> = new Set([
  PolicyDeniedError.code,
  PolicyUnavailableError.code,
]);

/**
 * A call's outcome as MCP answers it: a refusal or a gateway-side failure is an `isError`
 * result the model can read; an unknown tool and an upstream's own protocol error are thrown
 * as JSON-RPC errors.
 */
function mcpToolAnswer(outcome: ToolCallOutcome, name: string): Result {
  switch (outcome.kind) {
    case 'result':
      return outcome.result;
    case 'refused':
      return refusalResult(outcome.refusal);
    case 'error': {
      const { error, stage } = outcome;
      if (stage === 'admission' && error instanceof ToolNotFoundError) {
        throw new RelayedMcpError(ErrorCode.InvalidParams, `Unknown tool: ${name}`);
      }
      if (stage === 'forward' && error instanceof McpError) {
        if (error.code !== ErrorCode.ConnectionClosed) throw error;
      }
      return toolErrorResult(error);
    }
  }
}

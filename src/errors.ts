/**
 * The error catalog: one coded class per failure the fabric can report.
 *
 * Every error the fabric throws on purpose is a {@link FabricError} with a stable `code`
 * (`FABRIC_ERR_*`). Codes are the contract: messages may be reworded, codes may not. Errors that
 * cross a wire (MCP, gRPC) are mapped from `code` to the protocol's status in one place
 * (see {@link FabricError.kind} and {@link GRPC_STATUS_BY_KIND}). `test/unit/errors.test.ts` keeps
 * this catalog and the README's table in sync.
 *
 * @module
 */

/** Broad classes of failure; each ingress maps these to its own status codes. */
export type ErrorKind =
  | 'invalid_argument'
  | 'not_found'
  | 'already_exists'
  | 'failed_precondition'
  | 'resource_exhausted'
  | 'permission_denied'
  | 'unauthenticated'
  | 'deadline_exceeded'
  | 'unavailable'
  | 'internal';

/** Base class of every error in the catalog. */
export class FabricError extends Error {
  /** Stable machine-readable code, e.g. `FABRIC_ERR_QUEUE_FULL`. */
  readonly code: string;
  /** Broad class of failure, used to map to wire status codes. */
  readonly kind: ErrorKind;
  /** Structured facts about the failure (ids, limits). Never holds secrets. */
  readonly details: Readonly<Record<string, unknown>>;

  constructor(
    code: string,
    kind: ErrorKind,
    message: string,
    details: Record<string, unknown> = {},
    options?: ErrorOptions,
  ) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
    this.kind = kind;
    this.details = Object.freeze({ ...details });
  }

  /**
   * A plain object safe to serialise onto a wire, the one form every door sends (HTTP bodies,
   * MCP error data and tool-result meta, gRPC trailers): the message and every detail string cut
   * to {@link MAX_WIRE_ERROR_TEXT} characters, detail members named like secrets left out (see
   * {@link wireErrorDetails}). An error that echoes what a caller sent (`task <id> does not
   * exist`) answers with at most that much of it, whatever the caller sent.
   */
  toJSON(): { code: string; kind: ErrorKind; message: string; details: Record<string, unknown> } {
    return {
      code: this.code,
      kind: this.kind,
      message: cutWireText(this.message),
      details: wireErrorDetails(this.details),
    };
  }
}

/** Longest message, and longest detail string, of an error on a wire (UTF-16 units). */
export const MAX_WIRE_ERROR_TEXT = 1024;
/** Detail members never put on a wire, whatever an error carries (credentials and the like). */
export const SECRET_DETAIL_KEY =
  /credential|secret|passw(or)?d|authorization|cookie|token$|api[-_]?key|private[-_]?key/i;
/** Deepest detail value kept on a wire; deeper ones read `…`. */
const MAX_WIRE_DETAIL_DEPTH = 4;
/** Most array items or object members kept per detail value on a wire. */
const MAX_WIRE_DETAIL_ITEMS = 32;

/** `text` cut to {@link MAX_WIRE_ERROR_TEXT} UTF-16 units, not inside a surrogate pair, marked `…`. */
export function cutWireText(text: string): string {
  if (text.length <= MAX_WIRE_ERROR_TEXT) return text;
  let end = MAX_WIRE_ERROR_TEXT - 1;
  const last = text.charCodeAt(end - 1);
  if (last >= 0xd800 && last <= 0xdbff) end--; // a pair's first half stays with its second
  return `${text.slice(0, end)}…`;
}

/**
 * `details` as a wire carries them: members named like secrets left out at every level, strings
 * cut to {@link MAX_WIRE_ERROR_TEXT}, at most {@link MAX_WIRE_DETAIL_ITEMS} items or members per
 * array or object and {@link MAX_WIRE_DETAIL_DEPTH} levels (deeper values read `…`), a `bigint`
 * as its decimal text and any other object that is not plain JSON as its `toJSON()` or its text.
 * Always JSON-serialisable (no cycle survives the depth bound).
 */
export function wireErrorDetails(
  details: Readonly<Record<string, unknown>>,
): Record<string, unknown> {
  const out = wireDetailValue(details, 0);
  return typeof out === 'object' && out !== null && !Array.isArray(out)
    ? (out as Record<string, unknown>)
    : {};
}

function wireDetailValue(value: unknown, depth: number): unknown {
  switch (typeof value) {
    case 'string':
      return cutWireText(value);
    case 'number':
    case 'boolean':
      return value;
    case 'bigint':
      return value.toString();
    case 'object':
      break;
    default:
      return undefined; // a function, a symbol, undefined: not a wire fact
  }
  if (value === null) return null;
  if (depth >= MAX_WIRE_DETAIL_DEPTH) return '…';
  if (Array.isArray(value)) {
    return value
      .slice(0, MAX_WIRE_DETAIL_ITEMS)
      .map((item) => wireDetailValue(item, depth + 1) ?? null);
  }
  const proto = Object.getPrototypeOf(value) as unknown;
  if (proto !== Object.prototype && proto !== null) {
    const toJSON = (value as { toJSON?: unknown }).toJSON;
    if (typeof toJSON === 'function') {
      try {
        return wireDetailValue(toJSON.call(value), depth + 1);
      } catch {
        return undefined;
      }
    }
    return cutWireText(String(value));
  }
  const out: Record<string, unknown> = {};
  let kept = 0;
  for (const key of Object.keys(value)) {
    if (SECRET_DETAIL_KEY.test(key)) continue;
    if (kept === MAX_WIRE_DETAIL_ITEMS) break;
    const item = wireDetailValue((value as Record<string, unknown>)[key], depth + 1);
    if (item === undefined) continue;
    out[cutWireText(key)] = item;
    kept++;
  }
  return out;
}

/** Maps an {@link ErrorKind} to the numeric gRPC status code of the same meaning. */
export const GRPC_STATUS_BY_KIND: Readonly<Record<ErrorKind, number>> = Object.freeze({
  invalid_argument: 3,
  deadline_exceeded: 4,
  not_found: 5,
  already_exists: 6,
  permission_denied: 7,
  resource_exhausted: 8,
  failed_precondition: 9,
  internal: 13,
  unavailable: 14,
  unauthenticated: 16,
});

/** True when `err` is a catalog error, optionally with the given code. */
export function isFabricError(err: unknown, code?: string): err is FabricError {
  return err instanceof FabricError && (code === undefined || err.code === code);
}

// ---------------------------------------------------------------------------------------------
// Configuration and arguments

/** A configuration value is missing, of the wrong type, or out of range. */
export class ConfigError extends FabricError {
  static readonly code = 'FABRIC_ERR_CONFIG';
  constructor(field: string, message: string, options?: ErrorOptions) {
    super(ConfigError.code, 'invalid_argument', `${field} ${message}`, { field }, options);
  }
}

/** An argument to an API call is malformed. */
export class InvalidArgumentError extends FabricError {
  static readonly code = 'FABRIC_ERR_INVALID_ARGUMENT';
  constructor(field: string, message: string, options?: ErrorOptions) {
    super(InvalidArgumentError.code, 'invalid_argument', `${field} ${message}`, { field }, options);
  }
}

/** The component was used after `close()` (or before `start()` where that matters). */
export class ClosedError extends FabricError {
  static readonly code = 'FABRIC_ERR_CLOSED';
  constructor(component: string) {
    super(ClosedError.code, 'unavailable', `${component} is closed`, { component });
  }
}

// ---------------------------------------------------------------------------------------------
// Agents

/** No agent with this id exists (or it was terminated and forgotten). */
export class AgentNotFoundError extends FabricError {
  static readonly code = 'FABRIC_ERR_AGENT_NOT_FOUND';
  constructor(agentId: string) {
    super(AgentNotFoundError.code, 'not_found', `agent ${agentId} does not exist`, { agentId });
  }
}

/** Spawning would exceed `maxConcurrentAgents`. */
export class AgentLimitError extends FabricError {
  static readonly code = 'FABRIC_ERR_AGENT_LIMIT';
  /** `wanted` and `free`: a pool's `minAgents` that do not fit in the `free` room left. */
  constructor(limit: number, wanted?: number, free?: number) {
    super(
      AgentLimitError.code,
      'resource_exhausted',
      wanted === undefined
        ? `cannot spawn: maxConcurrentAgents (${limit}) agents are already active`
        : `cannot spawn ${wanted} agents: maxConcurrentAgents (${limit}) leaves room for ${free ?? 0}`,
      wanted === undefined ? { limit } : { limit, wanted, free: free ?? 0 },
    );
  }
}

/** The agent exists but cannot take this request (draining, terminated, unhealthy). */
export class AgentUnavailableError extends FabricError {
  static readonly code = 'FABRIC_ERR_AGENT_UNAVAILABLE';
  constructor(agentId: string, status: string, reason?: string) {
    super(
      AgentUnavailableError.code,
      'failed_precondition',
      `agent ${agentId} is ${status}${reason ? `: ${reason}` : ''}`,
      { agentId, status },
    );
  }
}

/** No healthy agent with free capacity could be found. */
export class NoAvailableAgentError extends FabricError {
  static readonly code = 'FABRIC_ERR_NO_AVAILABLE_AGENT';
  constructor(poolId?: string) {
    super(
      NoAvailableAgentError.code,
      'unavailable',
      poolId
        ? `no healthy agent with free capacity in pool ${poolId}`
        : 'no healthy agent with free capacity',
      poolId ? { poolId } : {},
    );
  }
}

// ---------------------------------------------------------------------------------------------
// Tasks and scheduling

/** No task with this id is known (never existed, or evicted after retention). */
export class TaskNotFoundError extends FabricError {
  static readonly code = 'FABRIC_ERR_TASK_NOT_FOUND';
  constructor(taskId: string) {
    super(TaskNotFoundError.code, 'not_found', `task ${taskId} does not exist`, { taskId });
  }
}

/**
 * `maxQueueDepth` tasks are already pending, or the caller's share of them (`details.tenant`
 * names the tenant over `maxQueueDepthPerTenant`): backpressure.
 */
export class QueueFullError extends FabricError {
  static readonly code = 'FABRIC_ERR_QUEUE_FULL';
  constructor(
    limit: number,
    message = `queue is full: maxQueueDepth (${limit}) tasks are already pending`,
    tenant?: string,
  ) {
    super(
      QueueFullError.code,
      'resource_exhausted',
      message,
      tenant === undefined ? { limit } : { limit, tenant },
    );
  }
}

/**
 * A task operation does not fit the task's current state: a completion from an agent that
 * does not hold the task, for a stale attempt, or for a task that already ended otherwise.
 */
export class TaskStateError extends FabricError {
  static readonly code = 'FABRIC_ERR_TASK_STATE';
  constructor(taskId: string, message: string, details: Record<string, unknown> = {}) {
    super(TaskStateError.code, 'failed_precondition', `task ${taskId}: ${message}`, {
      taskId,
      ...details,
    });
  }
}

/** `waitForTask` (or another bounded wait) ran out of time; the task itself is unaffected. */
export class WaitTimeoutError extends FabricError {
  static readonly code = 'FABRIC_ERR_WAIT_TIMEOUT';
  constructor(what: string, timeoutSeconds: number) {
    super(
      WaitTimeoutError.code,
      'deadline_exceeded',
      `timed out after ${timeoutSeconds}s waiting for ${what}`,
      { what, timeoutSeconds },
    );
  }
}

/** A local agent was given a task type no handler is registered for. */
export class HandlerNotFoundError extends FabricError {
  static readonly code = 'FABRIC_ERR_HANDLER_NOT_FOUND';
  constructor(taskType: string) {
    super(
      HandlerNotFoundError.code,
      'failed_precondition',
      `no handler is registered for task type ${JSON.stringify(taskType)}`,
      { taskType },
    );
  }
}

/** A task's handler threw, or its worker crashed. `cause` carries the original error. */
export class TaskExecutionError extends FabricError {
  static readonly code = 'FABRIC_ERR_TASK_EXECUTION';
  constructor(taskId: string, message: string, options?: ErrorOptions) {
    super(
      TaskExecutionError.code,
      'internal',
      `task ${taskId} failed: ${message}`,
      { taskId },
      options,
    );
  }
}

/** No executor is registered under the name an agent asked for. */
export class ExecutorNotFoundError extends FabricError {
  static readonly code = 'FABRIC_ERR_EXECUTOR_NOT_FOUND';
  constructor(name: string) {
    super(
      ExecutorNotFoundError.code,
      'invalid_argument',
      `no executor named ${JSON.stringify(name)}`,
      {
        executor: name,
      },
    );
  }
}

/** The agent already holds `maxConcurrentTasksPerAgent` tasks (or claims). */
export class AgentBusyError extends FabricError {
  static readonly code = 'FABRIC_ERR_AGENT_BUSY';
  constructor(agentId: string, limit: number) {
    super(
      AgentBusyError.code,
      'resource_exhausted',
      `agent ${agentId} already holds ${limit} tasks or claims (maxConcurrentTasksPerAgent); finish one first`,
      { agentId, limit },
    );
  }
}

// ---------------------------------------------------------------------------------------------
// Pools

/** No pool with this id exists. */
export class PoolNotFoundError extends FabricError {
  static readonly code = 'FABRIC_ERR_POOL_NOT_FOUND';
  constructor(poolId: string) {
    super(PoolNotFoundError.code, 'not_found', `pool ${poolId} does not exist`, { poolId });
  }
}

/** A pool with this id already exists. */
export class PoolExistsError extends FabricError {
  static readonly code = 'FABRIC_ERR_POOL_EXISTS';
  constructor(poolId: string) {
    super(PoolExistsError.code, 'already_exists', `pool ${poolId} already exists`, { poolId });
  }
}

/** The pool is being deleted and takes no new tasks or agents. */
export class PoolDrainingError extends FabricError {
  static readonly code = 'FABRIC_ERR_POOL_DRAINING';
  constructor(poolId: string) {
    super(PoolDrainingError.code, 'failed_precondition', `pool ${poolId} is draining`, { poolId });
  }
}

/** The pool already has `maxAgents` agents; an agent cannot join it. */
export class PoolFullError extends FabricError {
  static readonly code = 'FABRIC_ERR_POOL_FULL';
  constructor(poolId: string, maxAgents: number) {
    super(
      PoolFullError.code,
      'resource_exhausted',
      `pool ${poolId} already has maxAgents (${maxAgents}) agents, all of them joined ones; scale it down or raise its maxAgents first`,
      { poolId, maxAgents },
    );
  }
}

// ---------------------------------------------------------------------------------------------
// Identity

/** A credential is missing or unknown. */
export class UnauthenticatedError extends FabricError {
  static readonly code = 'FABRIC_ERR_UNAUTHENTICATED';
  constructor(message = 'a valid agent credential is required') {
    super(UnauthenticatedError.code, 'unauthenticated', message);
  }
}

/** The caller is known but may not do this (acting as another agent, admin-only operation). */
export class PermissionDeniedError extends FabricError {
  static readonly code = 'FABRIC_ERR_PERMISSION_DENIED';
  constructor(message: string, details: Record<string, unknown> = {}) {
    super(PermissionDeniedError.code, 'permission_denied', message, details);
  }
}

// ---------------------------------------------------------------------------------------------
// HTTP ingress (see src/gateway/downstream-http.ts, src/server/http-server.ts)

/**
 * A request's `Host` or `Origin` header is not on the allow-list (`http.allowedHosts`,
 * `http.allowedOrigins`): DNS rebinding protection. `details.header` names the header.
 */
export class HostNotAllowedError extends FabricError {
  static readonly code = 'FABRIC_ERR_HOST_NOT_ALLOWED';
  constructor(header: 'host' | 'origin', message: string, details: Record<string, unknown> = {}) {
    super(HostNotAllowedError.code, 'permission_denied', message, { header, ...details });
  }
}

/** An agent already holds `http.maxSessionsPerAgent` open MCP sessions. */
export class SessionLimitError extends FabricError {
  static readonly code = 'FABRIC_ERR_SESSION_LIMIT';
  constructor(limit: number, agentId: string) {
    super(
      SessionLimitError.code,
      'resource_exhausted',
      `agent ${agentId} already has ${limit} open MCP sessions (http.maxSessionsPerAgent): ` +
        'end one with DELETE, or wait until an idle one expires (http.sessionIdleSeconds)',
      { limit, agentId },
    );
  }
}

/**
 * An agent's requests in flight would exceed its door's bound: `http.maxInflightPerAgent` (MCP
 * and `/api/` over HTTP) or `grpc.maxInflightPerAgent` (unary gRPC calls), as `setting` says.
 */
export class InflightLimitError extends FabricError {
  static readonly code = 'FABRIC_ERR_INFLIGHT_LIMIT';
  constructor(
    limit: number,
    agentId: string,
    inflight: number,
    setting = 'http.maxInflightPerAgent',
  ) {
    super(
      InflightLimitError.code,
      'resource_exhausted',
      `agent ${agentId} has ${inflight} requests in flight; at most ${limit} are allowed ` +
        `(${setting}): retry once some are answered`,
      { limit, agentId, inflight, setting },
    );
  }
}

/**
 * A client address failed too many dashboard logins (a wrong admin token at `/ui/login`) in the
 * current window: its logins are not checked until the window is over (HTTP 429 with
 * `Retry-After`; server/auth-throttle.ts).
 */
export class AuthThrottledError extends FabricError {
  static readonly code = 'FABRIC_ERR_AUTH_THROTTLED';
  /** Seconds until the window is over. */
  readonly retryAfterSeconds: number;
  constructor(limit: number, windowSeconds: number, retryAfterSeconds: number) {
    super(
      AuthThrottledError.code,
      'resource_exhausted',
      `too many failed logins from this address (at most ${limit} in ${windowSeconds} s): ` +
        `retry in ${retryAfterSeconds} s`,
      { limit, windowSeconds, retryAfterSeconds },
    );
    this.retryAfterSeconds = retryAfterSeconds;
  }
}

/**
 * A session's `resources/subscribe` would exceed `gateway.maxSubscriptionsPerSession` — or, with
 * `uriLength`, its URI is longer than `gateway.maxSubscriptionUriLength` characters.
 */
export class SubscriptionLimitError extends FabricError {
  static readonly code = 'FABRIC_ERR_SUBSCRIPTION_LIMIT';
  constructor(limit: number, uriLength?: number) {
    super(
      SubscriptionLimitError.code,
      'resource_exhausted',
      uriLength === undefined
        ? `this session already has ${limit} resource subscriptions ` +
            '(gateway.maxSubscriptionsPerSession): unsubscribe from one first'
        : `the URI to subscribe to is ${uriLength} characters long; a subscription's URI may ` +
            `have at most ${limit} (gateway.maxSubscriptionUriLength)`,
      uriLength === undefined ? { limit } : { limit, uriLength },
    );
  }
}

/**
 * An agent already holds `gateway.tasks.maxPerAgent` unfinished task-augmented tool calls:
 * each is state the gateway keeps (and stores) until it ends.
 */
export class ToolTaskLimitError extends FabricError {
  static readonly code = 'FABRIC_ERR_TOOL_TASK_LIMIT';
  constructor(agentId: string, limit: number) {
    super(
      ToolTaskLimitError.code,
      'resource_exhausted',
      `agent ${agentId} already has ${limit} unfinished tool-call tasks ` +
        '(gateway.tasks.maxPerAgent): wait for one to end or cancel it',
      { agentId, limit },
    );
  }
}

/**
 * A server stream's client read too slowly: `limit` messages (or, with `unit` `bytes`, `limit`
 * bytes of them) were waiting to be written, so the stream ends (after the messages already
 * queued) rather than grow or drop events silently.
 */
export class StreamOverflowError extends FabricError {
  static readonly code = 'FABRIC_ERR_STREAM_OVERFLOW';
  /**
   * @param limit the bound that was passed: `maxBufferedMessages` messages, or with `unit`
   *   `'bytes'` the `maxBufferedBytes` the waiting messages would have gone past.
   */
  constructor(limit: number, unit: 'messages' | 'bytes' = 'messages') {
    super(
      StreamOverflowError.code,
      'resource_exhausted',
      unit === 'messages'
        ? `the client read too slowly: ${limit} messages were waiting to be sent; the stream ends ` +
            'here (watch again to resynchronize)'
        : `the client read too slowly: the messages waiting to be sent would pass ${limit} ` +
            'bytes; the stream ends here (watch again to resynchronize)',
      unit === 'messages' ? { limit } : { limit, unit },
    );
  }
}

/** A door's server streams in progress would exceed its cap (`http.apiMaxStreams`, `grpc.maxStreams`). */
export class StreamLimitError extends FabricError {
  static readonly code = 'FABRIC_ERR_STREAM_LIMIT';
  constructor(limit: number) {
    super(
      StreamLimitError.code,
      'resource_exhausted',
      `${limit} streams are open on this door, the most it serves at once: retry once one ends`,
      { limit },
    );
  }
}

/** The call's own deadline (e.g. the HTTP door's `connect-timeout-ms`) passed before its answer. */
export class CallDeadlineError extends FabricError {
  static readonly code = 'FABRIC_ERR_CALL_DEADLINE';
  constructor(timeoutMs: number) {
    super(
      CallDeadlineError.code,
      'deadline_exceeded',
      `the call's deadline (${timeoutMs} ms after it arrived) passed`,
      { timeoutMs },
    );
  }
}

/** A request body is larger than the endpoint accepts (HTTP 413). */
export class PayloadTooLargeError extends FabricError {
  static readonly code = 'FABRIC_ERR_PAYLOAD_TOO_LARGE';
  /**
   * @param limit the bound the body went past (bytes); undefined where it is not known
   * @param message what was refused, where the bound is not this process's (an upstream's)
   * @param details the details of such a refusal
   */
  constructor(
    limit: number | undefined,
    message = `the request body exceeds ${limit} bytes`,
    details: Record<string, unknown> = { limit },
  ) {
    super(PayloadTooLargeError.code, 'resource_exhausted', message, details);
  }
}

/**
 * A request body did not arrive in full within the body timeout (HTTP 408); with `message`, a
 * request that did not arrive within the server's headers or request timeout.
 */
export class BodyTimeoutError extends FabricError {
  static readonly code = 'FABRIC_ERR_BODY_TIMEOUT';
  constructor(timeoutMs: number, message?: string) {
    super(
      BodyTimeoutError.code,
      'deadline_exceeded',
      message ?? `the request body did not arrive within ${timeoutMs} ms (http.bodyTimeoutSeconds)`,
      { timeoutMs },
    );
  }
}

// ---------------------------------------------------------------------------------------------
// Policy, approvals, budgets (see src/policy, src/budget)

/** A policy (or one of its rules) is malformed; `details` name the policy, rule index and field. */
export class PolicyValidationError extends FabricError {
  static readonly code = 'FABRIC_ERR_POLICY_INVALID';
  constructor(policy: string, field: string, message: string, rule?: number) {
    super(
      PolicyValidationError.code,
      'invalid_argument',
      `policy ${JSON.stringify(policy)}${rule === undefined ? '' : ` rule ${rule}`}: ${field} ${message}`,
      rule === undefined ? { policy, field } : { policy, rule, field },
    );
  }
}

/** A policy (or policy provider) with this name is already registered. */
export class PolicyExistsError extends FabricError {
  static readonly code = 'FABRIC_ERR_POLICY_EXISTS';
  /** @param provider the name is a policy provider's (a plugin's), not a policy's */
  constructor(policy: string, provider = false) {
    super(
      PolicyExistsError.code,
      'already_exists',
      `policy ${JSON.stringify(policy)} already exists${provider ? ' (a policy provider of that name is loaded)' : ''}`,
      {
        policy,
      },
    );
  }
}

/** No policy with this name is registered. */
export class PolicyNotFoundError extends FabricError {
  static readonly code = 'FABRIC_ERR_POLICY_NOT_FOUND';
  constructor(policy: string) {
    super(
      PolicyNotFoundError.code,
      'not_found',
      `policy ${JSON.stringify(policy)} does not exist`,
      {
        policy,
      },
    );
  }
}

/** A policy rule (or the default action) denied a tool call. */
export class PolicyDeniedError extends FabricError {
  static readonly code = 'FABRIC_ERR_POLICY_DENIED';
  constructor(tool: string, reason: string, details: Record<string, unknown> = {}) {
    super(PolicyDeniedError.code, 'permission_denied', `tool ${tool} denied: ${reason}`, {
      tool,
      ...details,
    });
  }
}

/**
 * A tool call was refused because a policy that must be asked could not be: an external policy
 * service (the `policy-grpc` plugin) failed, missed its deadline, was unreachable or answered
 * something unusable, or a policy plugin's `decide` threw or answered no verdict. Policy fails
 * closed.
 */
export class PolicyUnavailableError extends FabricError {
  static readonly code = 'FABRIC_ERR_POLICY_UNAVAILABLE';
  constructor(tool: string, reason: string, details: Record<string, unknown> = {}) {
    super(PolicyUnavailableError.code, 'unavailable', `tool ${tool} denied: ${reason}`, {
      tool,
      ...details,
    });
  }
}

/**
 * An agent's answer to an upstream's callback (a sampling result, elicitation content, a roots
 * list, or its error answer) was refused by a policy provider's `checkCallbackAnswer` (or the
 * check failed: it fails closed). The upstream that asked gets this error instead of the answer.
 */
export class CallbackAnswerDeniedError extends FabricError {
  static readonly code = 'FABRIC_ERR_CALLBACK_ANSWER_DENIED';
  constructor(upstream: string, method: string, policy: string, reason: string) {
    super(
      CallbackAnswerDeniedError.code,
      'permission_denied',
      `the agent's answer to ${method} of upstream ${upstream} was refused: ${reason}`,
      { upstream, method, policy },
    );
  }
}

/** No approval with this id is known (never created, or evicted after retention). */
export class ApprovalNotFoundError extends FabricError {
  static readonly code = 'FABRIC_ERR_APPROVAL_NOT_FOUND';
  constructor(approvalId: string) {
    super(ApprovalNotFoundError.code, 'not_found', `approval ${approvalId} does not exist`, {
      approvalId,
    });
  }
}

/** The approval was already approved, denied or expired; a decision is final. */
export class ApprovalDecidedError extends FabricError {
  static readonly code = 'FABRIC_ERR_APPROVAL_DECIDED';
  constructor(approvalId: string, status: string) {
    super(
      ApprovalDecidedError.code,
      'failed_precondition',
      `approval ${approvalId} is already ${status}`,
      { approvalId, status },
    );
  }
}

/** A human denied the approval a tool call needed. */
export class ApprovalDeniedError extends FabricError {
  static readonly code = 'FABRIC_ERR_APPROVAL_DENIED';
  constructor(approvalId: string, approver?: string, reason?: string) {
    super(
      ApprovalDeniedError.code,
      'permission_denied',
      `approval ${approvalId} was denied${approver ? ` by ${approver}` : ''}${reason ? `: ${reason}` : ''}`,
      approver ? { approvalId, approver } : { approvalId },
    );
  }
}

/** Nobody decided the approval before it expired; expiry counts as a denial. */
export class ApprovalExpiredError extends FabricError {
  static readonly code = 'FABRIC_ERR_APPROVAL_EXPIRED';
  constructor(approvalId: string) {
    super(
      ApprovalExpiredError.code,
      'permission_denied',
      `approval ${approvalId} expired before anyone decided it`,
      { approvalId },
    );
  }
}

/**
 * A human approved a call whose paths resolve elsewhere now than when it was approved (a symlink
 * on the way was changed while it waited): it does not run, and the agent must call again.
 */
export class ApprovalStaleError extends FabricError {
  static readonly code = 'FABRIC_ERR_APPROVAL_STALE';
  constructor(approvalId: string) {
    super(
      ApprovalStaleError.code,
      'failed_precondition',
      `approval ${approvalId} was given for other paths than the call resolves to now; make the call again to ask for a new approval`,
      { approvalId },
    );
  }
}

/**
 * The agent already has `maxPendingPerAgent` approvals waiting for a human — or, with
 * `paramsBytes`, the call's parameters are more JSON than an approval keeps (`maxParamsBytes`).
 */
export class ApprovalLimitError extends FabricError {
  static readonly code = 'FABRIC_ERR_APPROVAL_LIMIT';
  constructor(agentId: string, limit: number, paramsBytes?: number) {
    super(
      ApprovalLimitError.code,
      'resource_exhausted',
      paramsBytes === undefined
        ? `agent ${agentId} already has ${limit} approvals waiting for a human; wait for a decision before asking for more`
        : `the call's arguments are ${Number.isFinite(paramsBytes) ? `${paramsBytes} bytes of JSON` : 'not JSON'}; ` +
            `at most ${limit} bytes may wait for a human (approvals.maxParamsBytes): send smaller arguments`,
      paramsBytes === undefined
        ? { agentId, limit }
        : { agentId, limit, ...(Number.isFinite(paramsBytes) ? { paramsBytes } : {}) },
    );
  }
}

/**
 * A call does not fit a budget (agent, pool or fabric-wide); `details.retryAt` says when it may.
 * Also the answer to an agent's usage report (`fabric__record_usage`, `RecordUsage`) that went
 * past what its own limit had left ({@link BudgetExceededError.usageBeyondLimit}): counted in
 * full on the agent, on its pool and the fabric only that remainder; `details.recorded` is what
 * was reported, `details.shared` what the shared budgets were charged, `retryAt` null.
 */
export class BudgetExceededError extends FabricError {
  static readonly code = 'FABRIC_ERR_BUDGET_EXCEEDED';
  constructor(
    details: {
      scope: string;
      limit: 'tokens' | 'cost';
      used: number;
      max: number;
      retryAt: number | null;
      recorded?: { tokens: number; cost: number };
      shared?: { tokens: number; cost: number };
    },
    message?: string,
  ) {
    super(
      BudgetExceededError.code,
      'resource_exhausted',
      message ??
        `budget of ${details.scope} exceeded: ${details.limit} ${details.used}/${details.max}` +
          (details.retryAt === null ? '' : `, retry at ${new Date(details.retryAt).toISOString()}`),
      details,
    );
  }

  /**
   * The answer to a usage report that went past what its agent's own limit had left: it is
   * recorded in full on the agent's budget (now exhausted), but its pool's and the fabric's were
   * charged only that remainder — an agent's reports cannot spend shared budgets beyond what
   * the agent itself is allowed. The usage is counted: it must not be reported again.
   */
  static usageBeyondLimit(details: {
    scope: string;
    limit: 'tokens' | 'cost';
    used: number;
    max: number;
    recorded: { tokens: number; cost: number };
    shared: { tokens: number; cost: number };
  }): BudgetExceededError {
    const { limit, recorded, shared } = details;
    return new BudgetExceededError(
      { ...details, retryAt: null },
      `usage recorded on ${details.scope} in full (${limit} ${details.used}/${details.max}), ` +
        `but its pool and the fabric were charged ${limit} ${shared[limit]} of ${recorded[limit]}: ` +
        `a report counts on shared budgets up to what the agent's own limit had left; ` +
        `it is counted, do not report it again`,
    );
  }
}

/** A usage amount or estimate is negative, NaN, infinite or not a number. */
export class InvalidUsageError extends FabricError {
  static readonly code = 'FABRIC_ERR_INVALID_USAGE';
  /** `max`: the largest amount accepted (`BudgetManager`'s `MAX_USAGE_AMOUNT`). */
  constructor(field: string, value: unknown, max: number) {
    super(
      InvalidUsageError.code,
      'invalid_argument',
      `${field} must be a non-negative number of at most ${max}, got ${typeof value === 'number' ? String(value) : typeof value}`,
      { field },
    );
  }
}

// ---------------------------------------------------------------------------------------------
// Plugins (see src/plugins)

/** A plugin is malformed, incompatible, misses a dependency, or failed to start. */
export class PluginError extends FabricError {
  static readonly code = 'FABRIC_ERR_PLUGIN';
  constructor(plugin: string, message: string, options?: ErrorOptions) {
    super(
      PluginError.code,
      'invalid_argument',
      `plugin ${plugin}: ${message}`,
      { plugin },
      options,
    );
  }
}

/** A plugin's start-up did not finish within its time limit. */
export class PluginTimeoutError extends FabricError {
  static readonly code = 'FABRIC_ERR_PLUGIN_TIMEOUT';
  constructor(plugin: string, timeoutMs: number) {
    super(
      PluginTimeoutError.code,
      'deadline_exceeded',
      `plugin ${plugin}: start-up did not finish within ${timeoutMs} ms`,
      { plugin, timeoutMs },
    );
  }
}

// ---------------------------------------------------------------------------------------------
// Hooks (see src/hooks)
/** No hook with this id exists in the hook store. */
export class HookNotFoundError extends FabricError {
  static readonly code = 'FABRIC_ERR_HOOK_NOT_FOUND';
  constructor(hookId: string) {
    super(HookNotFoundError.code, 'not_found', `hook ${hookId} does not exist`, { hookId });
  }
}

/**
 * A hook operation does not fit the hook's state: an illegal transition (`details.from` and
 * `details.to` name it), or an agent acting on a hook assigned to another agent.
 */
export class HookStateError extends FabricError {
  static readonly code = 'FABRIC_ERR_HOOK_STATE';
  constructor(hookId: string, message: string, details: Record<string, unknown> = {}) {
    super(HookStateError.code, 'failed_precondition', `hook ${hookId}: ${message}`, {
      hookId,
      ...details,
    });
  }
}

/** Reassigning the hook would exceed `maxReassignments`. */
export class HookRetryLimitError extends FabricError {
  static readonly code = 'FABRIC_ERR_HOOK_RETRY_LIMIT';
  constructor(hookId: string, reassignments: number, limit: number) {
    super(
      HookRetryLimitError.code,
      'resource_exhausted',
      `hook ${hookId} was already reassigned ${reassignments} times (maxReassignments ${limit})`,
      { hookId, reassignments, limit },
    );
  }
}

/** A task result, progress report or error an agent handed in is larger than `maxTaskResultBytes`. */
export class TaskResultTooLargeError extends FabricError {
  static readonly code = 'FABRIC_ERR_TASK_RESULT_TOO_LARGE';
  constructor(field: string, bytes: number, limit: number) {
    super(
      TaskResultTooLargeError.code,
      'resource_exhausted',
      `${field} is ${bytes} bytes of JSON, more than maxTaskResultBytes (${limit}); the task is still yours: send a smaller ${field} or fail the task`,
      { field, bytes, limit },
    );
  }
}

/** A work item (or result) serialises to more JSON than `maxWorkItemBytes` allows. */
export class HookWorkItemTooLargeError extends FabricError {
  static readonly code = 'FABRIC_ERR_HOOK_WORK_ITEM_TOO_LARGE';
  constructor(field: string, bytes: number, limit: number) {
    super(
      HookWorkItemTooLargeError.code,
      'resource_exhausted',
      `${field} is ${bytes} bytes of JSON, more than maxWorkItemBytes (${limit})`,
      { field, bytes, limit },
    );
  }
}

/**
 * Another HookManager (this process or another, on this host or another) holds the hook store's
 * lock file. `details` name the lock file and its holder (pid, hostname, start time).
 */
export class HookStoreLockedError extends FabricError {
  static readonly code = 'FABRIC_ERR_HOOK_STORE_LOCKED';
  constructor(lockPath: string, holder: Record<string, unknown>, message: string) {
    super(HookStoreLockedError.code, 'unavailable', message, { lockPath, ...holder });
  }
}

/** The hook store's git repository could not be read or written; `cause` has git's error. */
export class HookStoreError extends FabricError {
  static readonly code = 'FABRIC_ERR_HOOK_STORE';
  constructor(
    storagePath: string,
    message: string,
    details: Record<string, unknown> = {},
    options?: ErrorOptions,
  ) {
    super(
      HookStoreError.code,
      'internal',
      `hook store ${storagePath}: ${message}`,
      { storagePath, ...details },
      options,
    );
  }
}

/**
 * The hook state ref points at a state older than the one the state file records as current (a
 * genuine commit from before, or the ref deleted: moved back while no sidecar ran), and the
 * recorded commit cannot be put back — its objects are gone from the repository, or it does not
 * verify with the state file's key. Nothing is moved; `details` name both commits.
 */
export class HookStateRollbackError extends FabricError {
  static readonly code = 'FABRIC_ERR_HOOK_STATE_ROLLBACK';
  constructor(
    storagePath: string,
    found: string | null,
    recorded: string,
    message: string,
    options?: ErrorOptions,
  ) {
    super(
      HookStateRollbackError.code,
      'failed_precondition',
      `hook store ${storagePath}: ${message}`,
      { storagePath, found, recorded },
      options,
    );
  }
}

/**
 * A hook store whose state is signed — its head, or a commit below an unsigned head (see
 * `SIGNED_ANCESTOR_LOOKBACK`) — was opened without the signing key (`state: memory`, or a
 * `HookManager` built without `stateSigning`): its commits would be unsigned, and the next start
 * with the key would quarantine them with the hook changes they hold. Nothing is written.
 */
export class HookStoreSignedError extends FabricError {
  static readonly code = 'FABRIC_ERR_HOOK_STORE_SIGNED';
  /**
   * @param signed - the newest signed commit below an unsigned `head`, and how many commits
   *   before it (absent when `head` itself is signed)
   */
  constructor(storagePath: string, head: string, signed?: { oid: string; depth: number }) {
    super(
      HookStoreSignedError.code,
      'failed_precondition',
      signed === undefined
        ? `hook store ${storagePath}: its state is signed (the head ${head} carries a Fabric-State-MAC trailer) and this store has no key to sign with: its commits would be quarantined by the next start with the state file that holds the key, with the hook changes in them. Start with that state file (state: its path), or use another hook store`
        : `hook store ${storagePath}: its state is signed (${signed.oid}, ${signed.depth} commit${signed.depth === 1 ? '' : 's'} before the head ${head}, carries a Fabric-State-MAC trailer) and this store has no key to sign with. The commits after it are not signed — written without the key, by a sidecar with state: memory of an earlier version or by hand — and the next start with the state file that holds the key will quarantine them (keeping them under refs/fabric/quarantine/, the state going back to ${signed.oid}), with this store's commits and the hook changes in them. Start with that state file (state: its path) now, so nothing more is built on them, or use another hook store`,
      signed === undefined ? { storagePath, head } : { storagePath, head, signed: signed.oid },
    );
  }
}

/** A hook's git worktree could not be created, inspected or removed; `cause` has git's error. */
export class HookWorktreeError extends FabricError {
  static readonly code = 'FABRIC_ERR_HOOK_WORKTREE';
  constructor(message: string, details: Record<string, unknown> = {}, options?: ErrorOptions) {
    super(HookWorktreeError.code, 'failed_precondition', message, details, options);
  }
}

// ---------------------------------------------------------------------------------------------
// Durable state (see src/store)

/** The state file could not be opened, read or written (corrupt, not a database, unreadable). */
export class StateStoreError extends FabricError {
  static readonly code = 'FABRIC_ERR_STATE_STORE';
  constructor(path: string, message: string, options?: ErrorOptions) {
    super(StateStoreError.code, 'internal', `state store ${path}: ${message}`, { path }, options);
  }
}

/** The state file was written by a newer schema than this code knows; it is left untouched. */
export class StateVersionError extends FabricError {
  static readonly code = 'FABRIC_ERR_STATE_VERSION';
  constructor(path: string, fileVersion: number, knownVersion: number) {
    super(
      StateVersionError.code,
      'failed_precondition',
      `state store ${path} has schema version ${fileVersion}, newer than the ${knownVersion} this version of Agent Fabric knows; upgrade Agent Fabric or point state.path elsewhere (the file was not changed)`,
      { path, fileVersion, knownVersion },
    );
  }
}

/** Another sidecar (or store) holds the state file's lock. `details` name the lock and holder. */
export class StateLockedError extends FabricError {
  static readonly code = 'FABRIC_ERR_STATE_LOCKED';
  constructor(
    lockPath: string,
    holder: Record<string, unknown>,
    message: string,
    options?: ErrorOptions,
  ) {
    super(StateLockedError.code, 'unavailable', message, { lockPath, ...holder }, options);
  }
}

// ---------------------------------------------------------------------------------------------
// Gateway (see src/gateway)

/** Two upstream tools (or prompts) map to the same downstream name, or a name is too long. */
export class ToolNameError extends FabricError {
  static readonly code = 'FABRIC_ERR_TOOL_NAME';
  constructor(
    upstream: string,
    name: string,
    message: string,
    details: Record<string, unknown> = {},
  ) {
    super(
      ToolNameError.code,
      'invalid_argument',
      `upstream ${upstream}: ${JSON.stringify(name)} ${message}`,
      { upstream, name, ...details },
    );
  }
}

/** No tool, prompt or resource of this name is exposed by the gateway. */
export class ToolNotFoundError extends FabricError {
  static readonly code = 'FABRIC_ERR_TOOL_NOT_FOUND';
  constructor(name: string, what = 'tool') {
    super(ToolNotFoundError.code, 'not_found', `no ${what} named ${JSON.stringify(name)}`, {
      name,
      what,
    });
  }
}

/** An upstream tool server is down, restarting or failed to start. */
export class UpstreamUnavailableError extends FabricError {
  static readonly code = 'FABRIC_ERR_UPSTREAM_UNAVAILABLE';
  constructor(
    upstream: string,
    message: string,
    details: Record<string, unknown> = {},
    options?: ErrorOptions,
  ) {
    super(
      UpstreamUnavailableError.code,
      'unavailable',
      `upstream ${upstream} ${message}`,
      { upstream, ...details },
      options,
    );
  }
}

/** An upstream call ran past the gateway's call timeout. */
export class UpstreamTimeoutError extends FabricError {
  static readonly code = 'FABRIC_ERR_UPSTREAM_TIMEOUT';
  constructor(upstream: string, method: string, timeoutMs: number, options?: ErrorOptions) {
    super(
      UpstreamTimeoutError.code,
      'deadline_exceeded',
      `upstream ${upstream} did not answer ${method} within ${timeoutMs} ms`,
      { upstream, method, timeoutMs },
      options,
    );
  }
}

/**
 * The sidecar could not listen on its HTTP or gRPC address (in use, not available on this host,
 * not permitted); `details` name the listener and the address.
 */
export class ListenError extends FabricError {
  static readonly code = 'FABRIC_ERR_LISTEN';
  constructor(listener: string, address: string, message: string, options?: ErrorOptions) {
    super(
      ListenError.code,
      'unavailable',
      `${listener} cannot listen on ${address}: ${message}`,
      { listener, address },
      options,
    );
  }
}

/**
 * The NATS server configured in `nats.url` could not be reached or refused the login at start;
 * `details.url` names the server(s). Credentials are never part of the message.
 */
export class NatsUnavailableError extends FabricError {
  static readonly code = 'FABRIC_ERR_NATS_UNAVAILABLE';
  constructor(url: string, message: string, options?: ErrorOptions) {
    super(
      NatsUnavailableError.code,
      'unavailable',
      `NATS at ${url} is unavailable: ${message}`,
      { url },
      options,
    );
  }
}

/**
 * A listener would serve beyond loopback without TLS: start-up is refused unless the listener
 * has `tls` or is explicitly `allowInsecure`. `details` name the listener and the host.
 */
export class InsecureListenerError extends FabricError {
  static readonly code = 'FABRIC_ERR_INSECURE_LISTENER';
  constructor(listener: string, host: string) {
    super(
      InsecureListenerError.code,
      'failed_precondition',
      `${listener} would listen on ${host}, beyond loopback, without TLS: configure tls (cert and key) for it, or set allowInsecure: true to accept plaintext`,
      { listener, host },
    );
  }
}

/**
 * Start-up failed in a step no more specific error covers (an unexpected exception, or a step
 * that never settled); `details.step` names the step. Start-up is refused, never half-done.
 */
export class StartupError extends FabricError {
  static readonly code = 'FABRIC_ERR_STARTUP';
  constructor(step: string, message: string, options?: ErrorOptions) {
    super(
      StartupError.code,
      'internal',
      `start-up failed (${step}): ${message}`,
      { step },
      options,
    );
  }
}

/** A server→client request from an upstream could not be matched to exactly one agent session. */
export class RoutingError extends FabricError {
  static readonly code = 'FABRIC_ERR_ROUTING';
  constructor(upstream: string, method: string, message: string) {
    super(RoutingError.code, 'failed_precondition', `upstream ${upstream} ${method}: ${message}`, {
      upstream,
      method,
    });
  }
}

/**
 * An agent's client did not answer an upstream's `sampling/createMessage` within the upstream's
 * `callTimeoutSeconds`: the gateway cancelled the request at the client and answered the
 * upstream with this (what the budget held for the request is settled with the request's tokens).
 */
export class CallbackTimeoutError extends FabricError {
  static readonly code = 'FABRIC_ERR_CALLBACK_TIMEOUT';
  constructor(upstream: string, method: string, timeoutMs: number) {
    super(
      CallbackTimeoutError.code,
      'deadline_exceeded',
      `upstream ${upstream} ${method}: the agent's client did not answer within ${timeoutMs} ms (the upstream's callTimeoutSeconds); the request was cancelled`,
      { upstream, method, timeoutMs },
    );
  }
}

/** A tool call came through a door (the gRPC `ToolService`) of a process that runs no tool gateway. */
export class GatewayUnavailableError extends FabricError {
  static readonly code = 'FABRIC_ERR_GATEWAY_UNAVAILABLE';
  constructor(door: string) {
    super(
      GatewayUnavailableError.code,
      'unavailable',
      `${door} needs the tool gateway, which this process does not run (start the sidecar, or pass the gateway to startGrpcServer)`,
      { door },
    );
  }
}

/** The sidecar's configuration file is unreadable or invalid; names the key path and line. */
export class ConfigFileError extends FabricError {
  static readonly code = 'FABRIC_ERR_CONFIG_FILE';
  /** `problems`: all of them when there are several (see {@link ConfigFileError.of}). */
  constructor(
    file: string,
    path: string,
    message: string,
    line?: number,
    options?: ErrorOptions,
    problems?: readonly ConfigFileProblem[],
  ) {
    const one: ConfigFileProblem = { path, message, ...(line === undefined ? {} : { line }) };
    const all = problems ?? [one];
    super(
      ConfigFileError.code,
      'invalid_argument',
      all.length === 1
        ? configProblemText(file, all[0]!)
        : `${file}: ${all.length} problems\n${all.map((p) => `  ${configProblemText(file, p)}`).join('\n')}`,
      { file, path, ...(line === undefined ? {} : { line }), problems: all },
      options,
    );
  }

  /**
   * Every problem of `file` in one error (at least one). `details.path` and `details.line` are
   * the first problem's; `details.problems` lists them all.
   */
  static of(file: string, problems: readonly ConfigFileProblem[]): ConfigFileError {
    const first = problems[0] ?? { path: '', message: 'is invalid' };
    return new ConfigFileError(file, first.path, first.message, first.line, undefined, [
      ...(problems.length > 0 ? problems : [first]),
    ]);
  }
}

/** One problem of a config file: where (line, or the env variable/flag that set it) and what. */
export interface ConfigFileProblem {
  /** Key path, dot-separated; empty for the whole file. */
  readonly path: string;
  readonly message: string;
  /** Line in the file, when the value is written there. */
  readonly line?: number;
  /** Where a value set outside the file came from: `env FABRIC_HTTP_PORT`, `--port`. */
  readonly source?: string;
}

/** `file:line: path: message`, or `file: path (from env X): message` for an override. */
function configProblemText(file: string, p: ConfigFileProblem): string {
  const where = p.source === undefined && p.line !== undefined ? `${file}:${p.line}` : file;
  const path = p.path ? `${p.path}${p.source === undefined ? '' : ` (from ${p.source})`}: ` : '';
  return `${where}: ${path}${p.message}`;
}

/** An HTTP request names no route: no such service or method, or not `POST` for an RPC. */
export class RouteNotFoundError extends FabricError {
  static readonly code = 'FABRIC_ERR_ROUTE_NOT_FOUND';
  constructor(method: string, path: string, reason = 'no such route') {
    super(RouteNotFoundError.code, 'not_found', `${method} ${path}: ${reason}`, { method, path });
  }
}

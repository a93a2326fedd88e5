/**
 * The seam between the tool gateway and the fabric. The gateway is written against these small
 * interfaces; `AgentFabric` satisfies them structurally, and tests can pass a plain object.
 *
 * @module
 */
import type { FabricError } from '../errors.js';
import type { CallPhases } from '../telemetry/tracing.js';
import type { Reservation, UnsharedUsage } from '../budget/budget-manager.js';
import type { Approval, ApprovalResult } from '../policy/approval-manager.js';
import type { PolicyDecision } from '../policy/policy-engine.js';
import type {
  CallbackAnswerContext,
  CallbackAnswerDecision,
} from '../policy/callback-answer-check.js';
import type { EndedTask } from '../scheduler/remote-executor.js';
import type { Task, TaskAssignment } from '../task.js';

/** A policy decision as the pipeline gets it: the action and the deciding policy and rule. */
export type Decision = PolicyDecision;

/** An agent's answer to an upstream's callback, and the policy's decision on it. */
export type { CallbackAnswerContext, CallbackAnswerDecision };

/** An allowed call's budget reservation: settle it with the actual usage (or release it). */
export type { Reservation };

/** Who is on the other end of a credential. */
export type GatewayIdentity =
  | {
      readonly kind: 'agent';
      readonly agentId: string;
      readonly poolId?: string | undefined;
      readonly labels: Readonly<Record<string, string>>;
    }
  | { readonly kind: 'admin' };

/** An agent identity (what every MCP session is bound to). */
export type AgentIdentity = Extract<GatewayIdentity, { kind: 'agent' }>;

/** A sampling request the budget admitted (see {@link GatewayBackend.admitSampling}). */
export interface SamplingAdmission {
  /**
   * Swaps what was held for `tokens`, the sampling's actual usage (request and answer),
   * recorded in full and never refused. Called once.
   * @returns (or resolves with) what the agent's pool and the fabric were charged short of
   *   `tokens` when the agent's own limit capped them (`UnsharedUsage`: the gateway logs it),
   *   else nothing or null.
   * @throws (or rejects with) an error when it cannot be charged or committed.
   */
  settle(tokens: number): void | UnsharedUsage | null | Promise<void | UnsharedUsage | null>;
}

/** Estimated and actual usage of one call. */
export interface ToolUsage {
  tokens: number;
  cost: number;
}

/** What the gateway asks the policy + budget pipeline about one tool call. */
export interface ToolCallContext {
  agentId: string;
  poolId?: string | undefined;
  /** The downstream (namespaced) tool name, e.g. `fs__write_file`. */
  tool: string;
  /**
   * What the policy decides on: the call's parameters with path-like values resolved the way
   * the upstream resolves them (a value that cannot be resolved is an `UnresolvedPath` marker).
   */
  params: Readonly<Record<string, unknown>>;
  /**
   * The parameters exactly as the agent sent them and the upstream receives them, when they
   * differ from `params` (scan these for what is forwarded, e.g. secrets). For a resource read,
   * subscription, prompt get or completion: the request's params as forwarded (`_meta`, a
   * completion's `context` and all).
   */
  rawParams?: Readonly<Record<string, unknown>> | undefined;
  labels?: Readonly<Record<string, string>> | undefined;
  /** Aborts an approval wait (the agent cancelled the call or disconnected). */
  signal?: AbortSignal | undefined;
  /** Called once when the call is parked waiting for a human approval. */
  onWaiting?: ((approval: Approval) => void) | undefined;
  /** The approval this same call asked for before a restart (a durable gateway task). */
  resumeApproval?: string | undefined;
  approvalTimeoutSeconds?: number | undefined;
  /**
   * Reservation estimate: cost from `toolCosts`, tokens learned from this agent's recent results
   * of this tool (a prior before the first one; see `TokenEstimates`).
   */
  estimate?: ToolUsage | undefined;
  /**
   * How the budget admits the call: it may wait up to `waitMs` while only other calls'
   * in-flight reservations keep it out, and its token estimate is a guess to clamp to the
   * smallest limit (`clampTokens`; the gateway settles with `requireFit`).
   */
  budget?: { readonly waitMs?: number; readonly clampTokens?: boolean } | undefined;
  /** Spans of the call's phases (policy, approval wait, budget); absent: not traced. */
  trace?: CallPhases | undefined;
}

/** Options of {@link GatewayBackend.settleToolCall}. */
export interface SettleToolCallOptions {
  /**
   * Charge the result's tokens only if they fit every budget on top of the usage already
   * counted; otherwise charge the cost alone and return the refusal, so the gateway withholds
   * the result.
   */
  requireFit?: boolean;
}

/** A call the pipeline let through; pass it back to `settleToolCall`. */
export interface ToolCallAllowed {
  readonly allowed: true;
  readonly decision: Decision;
  readonly reservation: Reservation;
  /** The human decision, when the call waited for one (its approval's id and approver). */
  readonly approval?: ApprovalResult | undefined;
}

/** A call the pipeline refused (policy deny, approval denied/expired, budget exhausted). */
export interface ToolCallRefused {
  readonly allowed: false;
  /** A catalog code, e.g. `FABRIC_ERR_POLICY_DENIED`, `FABRIC_ERR_BUDGET_EXCEEDED`. */
  readonly code: string;
  /** Human (and model) readable reason: which rule or limit. */
  readonly reason: string;
  /** The policy decision, when policy got to decide (absent e.g. for a draining agent). */
  readonly decision?: Decision | undefined;
  /** When retrying may succeed (budget window reset), epoch ms; null when unknown. */
  readonly retryAt?: number | null | undefined;
  /** Structured facts of the refusal (rule, policy, limit, retryAt …); never secrets. */
  readonly details?: Readonly<Record<string, unknown>> | undefined;
  /**
   * The human's yes, for a call approved and then refused (rules changed while it waited, the
   * budget, its agent leaving): its approval's id and approver.
   */
  readonly approval?: ApprovalResult | undefined;
  /** The same refusal as a catalog error, for doors that report errors rather than results. */
  readonly error?: Error | undefined;
}

/** Outcome of {@link GatewayBackend.authorizeToolCall}. */
export type ToolCallAuthorization = ToolCallAllowed | ToolCallRefused;

/** Probe of whether a tool is visible to an agent (used to filter `tools/list`). */
export interface ToolVisibilityContext {
  agentId: string;
  poolId?: string | undefined;
  tool: string;
  labels?: Readonly<Record<string, string>> | undefined;
}

/** A call of a tool that does not exist, as {@link GatewayBackend.decideUnknownTool} gets it. */
export interface UnknownToolContext extends ToolVisibilityContext {
  params: Readonly<Record<string, unknown>>;
}

/** Everything the gateway needs from the fabric. `AgentFabric` satisfies it structurally. */
export interface GatewayBackend {
  /**
   * Maps a bearer credential to an identity.
   * @throws UnauthenticatedError for a missing or unknown credential.
   */
  authenticate(credential: string): GatewayIdentity | Promise<GatewayIdentity>;
  /**
   * Optional: a number that changes whenever a credential that {@link authenticate} accepted
   * may no longer map to the same identity (revoked, replaced, or an admin credential added).
   * With it the HTTP endpoint authenticates a session's requests by the session's own
   * credential while the number is unchanged, instead of hashing the credential per request.
   */
  credentialEpoch?(): number;
  /** Policy (with approval wait) then budget reservation for one call. */
  authorizeToolCall(ctx: ToolCallContext): Promise<ToolCallAuthorization>;
  /**
   * Optional synchronous {@link authorizeToolCall} for calls no human has to decide: the same
   * outcome, or `undefined` when policy requires approval (the gateway then calls
   * `authorizeToolCall`). Spares the hot path its promises.
   */
  tryAuthorizeToolCall?(ctx: ToolCallContext): ToolCallAuthorization | undefined;
  /**
   * Optional: decides again a call {@link authorizeToolCall} let through that waited for its
   * turn on an `exclusive` upstream, when the rules changed since it was decided; the refusal
   * is sent instead of the call (the gateway settles its reservation with no usage). Answers
   * `undefined` synchronously when the rules did not change. Without it the call runs as it was
   * authorized.
   */
  recheckToolCall?(
    ctx: ToolCallContext,
    authorization: ToolCallAllowed,
  ): ToolCallRefused | undefined | Promise<ToolCallRefused | undefined>;
  /**
   * Settles a reservation with the actual usage of the call, synchronously: with `requireFit`,
   * a `FABRIC_ERR_BUDGET_EXCEEDED` refusal means the tokens were not charged and the gateway
   * withholds the result; nothing (`undefined`) means everything was charged. A promise (a
   * backend that settles remotely) cannot withhold anything: it is only watched for failure.
   */
  settleToolCall(
    authorization: ToolCallAllowed,
    usage: ToolUsage,
    options?: SettleToolCallOptions,
  ): ToolCallRefused | void | Promise<unknown>;
  /**
   * Optional: the policy check of an agent's answer to an upstream's callback (sampling,
   * elicitation, roots), before the gateway sends it to the upstream (see
   * `PolicyProvider.checkCallbackAnswer`). A refusal is sent upstream instead of the answer.
   * Without this method answers pass unchecked. Rejects only with `signal`'s reason.
   */
  checkCallbackAnswer?(
    ctx: CallbackAnswerContext,
    signal: AbortSignal,
  ): Promise<CallbackAnswerDecision> | CallbackAnswerDecision;
  /**
   * Optional: whether a `sampling/createMessage` an upstream sends the agent's client, whose
   * params come to `tokens`, may reach the agent's model: the refusal (a `FabricError`, coded
   * `FABRIC_ERR_BUDGET_EXCEEDED` when a budget scope of the agent has no room for them beside the
   * samplings already in flight), else the admission that holds them, which the gateway settles
   * with what the sampling used once it ran. Synchronous. `undefined` admits it unreserved (the
   * gateway records the sampling with {@link recordUsage}). Without it sampling is never refused.
   */
  admitSampling?(agentId: string, tokens: number): FabricError | SamplingAdmission | undefined;
  /**
   * Optional side-effect-free probe: `false` when policy denies `tool` to the agent outright
   * (a rule without conditions). Rules with conditions must answer `true`. Without this
   * method every tool is listed.
   */
  isToolVisible?(ctx: ToolVisibilityContext): boolean;
  /**
   * Optional, with {@link isToolVisible}: asks policy about a call of a tool that does not
   * exist what it would ask about a tool the agent may not see — the policy services that
   * outrank the rules for that name — and resolves (never rejects) once they answered, failed
   * or `signal` aborted; the answer is not used. `undefined` when nothing would be awaited. The
   * gateway waits for it before it answers an unknown tool, so that an unknown tool takes as
   * long to refuse as a hidden one, whose refusal waits for those services.
   */
  decideUnknownTool?(ctx: UnknownToolContext, signal: AbortSignal): Promise<void> | undefined;
  /**
   * Optional, with {@link isToolVisible}: calls `listener` whenever what `isToolVisible` answers
   * may have changed (policies added, replaced or removed; policy providers added or removed), so the gateway tells each MCP session
   * whose tool list changed (`notifications/tools/list_changed`) instead of listing it stale.
   * Returns the function that stops it.
   */
  onToolVisibilityChange?(listener: () => void): () => void;

  // Fabric tools for agents connected only over MCP.
  heartbeat(agentId: string): unknown;
  claimTask(
    agentId: string,
    options?: { waitSeconds?: number; signal?: AbortSignal; ackSeconds?: number },
  ): Promise<TaskAssignment | undefined>;
  completeTask(agentId: string, taskId: string, attempt: number, result: unknown): unknown;
  failTask(
    agentId: string,
    taskId: string,
    attempt: number,
    error: { code?: string; message: string },
  ): unknown;
  reportProgress(agentId: string, taskId: string, attempt: number, progress: unknown): unknown;
  /**
   * Gives back a task the agent claimed but will not run (it is stopping): queued again, the
   * attempt not counted. False when the task has moved on.
   */
  releaseTask(agentId: string, taskId: string, attempt: number): boolean;
  /** Hands out (once) the agent's notices of tasks the fabric ended while it held them. */
  takeEndedTasks(agentId: string): readonly EndedTask[];
  /**
   * Records usage the agent reports (`fabric__record_usage`): may throw or reject with a
   * fabric error (the tool's error result), `BudgetExceededError` (`details.shared`) for usage counted past
   * what the agent's own limit had left.
   */
  recordUsage(agentId: string, usage: ToolUsage): unknown;

  // Fabric work an agent schedules to its own pool (`fabric__schedule_task`); absent: not served.
  /**
   * Queues `taskType` to the pool `poolId` of the agent `agentId`, with the agent as its tenant.
   */
  scheduleToOwnPool?(
    agentId: string,
    poolId: string,
    request: { taskType: string; payload?: unknown; timeoutSeconds?: number },
  ): Promise<Task>;
  /** The fabric task once it has ended (rejects when `signal` aborts). */
  waitForFabricTask?(taskId: string, signal: AbortSignal): Promise<Task>;
  /** A snapshot of the fabric task. */
  fabricTask?(taskId: string): Promise<Task>;
  /** Cancels the fabric task (a no-op error when it has ended is the caller's to ignore). */
  cancelFabricTask?(taskId: string, reason: string): Promise<unknown>;

  // GUPP hooks ("if there is work on your hook, you run it"); absent when hooks are not configured.
  hookFor?(agentId: string): Promise<unknown>;
  activateHook?(agentId: string, hookId: string): Promise<unknown>;
  completeHook?(agentId: string, hookId: string, result?: unknown): Promise<unknown>;
  failHook?(
    agentId: string,
    hookId: string,
    error: { code?: string; message: string },
  ): Promise<unknown>;
  recordHookProgress?(agentId: string, hookId: string, note?: string): Promise<unknown>;
}

/** What the sidecar needs of a backend beyond the gateway's: spawning its start-up agents. */
export interface AdminBackend {
  spawn(config: {
    name: string;
    model: string;
    poolId?: string;
    executor?: string;
    labels?: Record<string, string>;
    capabilities?: string[];
  }): Promise<{ readonly id: string; readonly credential: string }>;
}

/**
 * The seam between the gateway and the policy/approval/budget components: one call that says
 * whether a tool call may run, and one that settles its usage afterwards.
 *
 * @module
 */
import type {
  BudgetManager,
  Reservation,
  ReserveOptions,
  SettleOptions,
  UsageAmount,
} from '../budget/budget-manager.js';
import type { BudgetShortfall } from '../budget/scope-usage.js';
import {
  ApprovalDeniedError,
  ApprovalExpiredError,
  ApprovalLimitError,
  BudgetExceededError,
  ConfigError,
  PolicyDeniedError,
  PolicyUnavailableError,
  WaitTimeoutError,
  isFabricError,
} from '../errors.js';
import type { CallPhases, TracePhase } from '../telemetry/tracing.js';
import type { Approval, ApprovalManager, ApprovalResult } from './approval-manager.js';
import {
  approvalRequest,
  type AskedVerdicts,
  type PolicyDecision,
  type PolicyEngine,
} from './policy-engine.js';

/** Estimated usage of a call, reserved against budgets before it runs. */
export type CostEstimator = (
  tool: string,
  params: Readonly<Record<string, unknown>>,
) => UsageAmount;

/** Collaborators of a {@link ToolCallAuthorizer}. */
export interface ToolCallAuthorizerOptions {
  policies: PolicyEngine;
  approvals: ApprovalManager;
  budgets: BudgetManager;
  /**
   * Usage reserved for a call before it runs (settled with the actual usage afterwards).
   * @default () => ({ tokens: 0, cost: 0 }) — budgets then only refuse exhausted scopes
   */
  estimateCost?: CostEstimator;
}

/** How the budget admits one call (see {@link ToolCallContext.budget}). */
export interface ToolCallBudgetOptions {
  /**
   * Longest wait, in ms, while only other calls' in-flight reservations keep this one out
   * (bounded, ended by `signal`); then it is reserved or refused with a `retryAt`.
   * @default 0 — refuse at once
   */
  readonly waitMs?: number | undefined;
  /**
   * The token estimate is a guess: reserve at most the smallest token limit, so a conservative
   * prior cannot make a call impossible. Pair it with `settle(…, { requireFit: true })`.
   * @default false
   */
  readonly clampTokens?: boolean | undefined;
  /**
   * Reserve nothing and never refuse for budget (see `ReserveOptions.unmetered`): for a call
   * that reports usage, which is counted even past a limit. Policy still decides it.
   * @default false
   */
  readonly unmetered?: boolean | undefined;
}

/** The tool call to authorize. */
export interface ToolCallContext {
  agentId: string;
  poolId?: string;
  tool: string;
  /** What the policy decides on (see `PolicyContext.params`). */
  params: Readonly<Record<string, unknown>>;
  /** The parameters as forwarded, when `params` is a resolved view (see `PolicyContext.rawParams`). */
  rawParams?: Readonly<Record<string, unknown>> | undefined;
  labels?: Readonly<Record<string, string>>;
  attributes?: Readonly<Record<string, unknown>>;
  /** Aborts a wait for approval: `authorize` then rejects with `signal.reason`. */
  signal?: AbortSignal;
  /** Called when the call starts waiting for a human (show the approval id to someone). */
  onWaiting?: (approval: Approval) => void;
  /**
   * The approval this same call asked for before a restart (a durable gateway task): used
   * instead of a new one when it still matches the call (see `ApprovalManager.resume`).
   */
  resumeApproval?: string | undefined;
  /**
   * Longest wait for a human decision; when it elapses the call is refused with
   * `FABRIC_ERR_WAIT_TIMEOUT` (the approval itself stays pending until it expires).
   * @default until the approval is decided or expires
   */
  approvalTimeoutSeconds?: number;
  /** Overrides `estimateCost` for this call. */
  estimate?: UsageAmount | undefined;
  /** Waiting and clamping of the budget reservation. @default refuse at once, no clamping */
  budget?: ToolCallBudgetOptions | undefined;
  /** Spans of the call's phases (policy, approval wait, budget); absent: not traced. */
  trace?: CallPhases | undefined;
}

/** A call that may run. Pass it to {@link ToolCallAuthorizer.settle} when it finishes. */
export interface ToolCallAllowed {
  readonly allowed: true;
  readonly decision: PolicyDecision;
  readonly reservation: Reservation;
  /** The human decision, when the policy required one. */
  readonly approval?: ApprovalResult;
  /**
   * The `PolicyEngine.rulesVersion` the call was (last) decided under: {@link
   * ToolCallAuthorizer.recheck} decides it again when the rules changed since (absent: an
   * authorization made elsewhere, always decided again).
   */
  readonly rulesVersion?: number;
}

/** A call that may not run: a value, not a throw, so a gateway can map it to an MCP error result. */
export interface ToolCallDenied {
  readonly allowed: false;
  /** Catalog code: `FABRIC_ERR_POLICY_DENIED`, `…_POLICY_UNAVAILABLE`, `…_APPROVAL_DENIED`, `…_APPROVAL_EXPIRED`, `…_APPROVAL_LIMIT`, `…_WAIT_TIMEOUT` or `…_BUDGET_EXCEEDED`. */
  readonly code: string;
  readonly reason: string;
  readonly decision?: PolicyDecision;
  /** For budget refusals: when the call would fit (epoch ms), if known. */
  readonly retryAt?: number | null;
  readonly details: Readonly<Record<string, unknown>>;
  /** The same refusal as a catalog error (for callers that prefer to throw). */
  readonly error: Error;
  /**
   * The human's yes, for a call approved and then refused (the rules changed while it waited,
   * or the budget no longer holds it): its approval's id and approver, for the audit line.
   */
  readonly approval?: ApprovalResult;
}

/** Outcome of {@link ToolCallAuthorizer.authorize}. */
export type ToolCallAuthorization = ToolCallAllowed | ToolCallDenied;

/** See `ToolCallAuthorizer.#handedOver`. */
interface HandOver {
  readonly decision: PolicyDecision;
  readonly budget: TracePhase | undefined;
}

const ZERO: UsageAmount = Object.freeze({ tokens: 0, cost: 0 });
const REQUIRE_FIT: SettleOptions = Object.freeze({ requireFit: true });

/**
 * Authorizes tool calls: policy → (if required) human approval → budget reservation.
 *
 * Before asking a human, the budget is checked (not reserved) so nobody is asked to approve a
 * call that would be refused anyway; after approval the estimate is reserved. With
 * `ctx.budget.waitMs`, a call that only other calls' in-flight reservations keep out waits for
 * them to settle (bounded). Refusals are returned as {@link ToolCallDenied}; only an aborted
 * wait (`signal`) and programming errors throw.
 *
 * @example
 * const auth = new ToolCallAuthorizer({ policies, approvals, budgets });
 * const a = await auth.authorize({ agentId: 'a1', tool: 'file_read', params: { path: '/tmp/x' } });
 * if (a.allowed) {
 *   // … run the tool …
 *   auth.settle(a, { tokens: 120, cost: 0.001 });
 * }
 */
export class ToolCallAuthorizer {
  readonly #policies: PolicyEngine;
  readonly #approvals: ApprovalManager;
  readonly #budgets: BudgetManager;
  readonly #estimate: CostEstimator;
  /**
   * What {@link tryAuthorize} did before it left a traced call to {@link authorize}: its policy
   * decision, and the open `budget` span of a refusal that may wait. `authorize` continues from
   * there, so each phase is evaluated and recorded once. Keyed by the call's trace (the one
   * object both calls share; the fabric copies the context between them).
   */
  readonly #handedOver = new WeakMap<CallPhases, HandOver>();
  /**
   * What the asynchronous policy providers (a policy service) said about a call being
   * authorized, by its context, and about an allowed call, by its authorization: a call decided
   * again after a wait (the rules changed) reuses it instead of asking the service again — its
   * answer is about the call, not the rules (see `PolicyEngine.evaluateAgain`). Only calls
   * whose decision was awaited have one.
   */
  readonly #asked = new WeakMap<object, AskedVerdicts>();

  constructor(options: ToolCallAuthorizerOptions) {
    if (options === null || typeof options !== 'object') {
      throw new ConfigError('options', 'must be an object');
    }
    for (const key of ['policies', 'approvals', 'budgets'] as const) {
      if (options[key] === null || typeof options[key] !== 'object') {
        throw new ConfigError(`options.${key}`, 'is required');
      }
    }
    if (options.estimateCost !== undefined && typeof options.estimateCost !== 'function') {
      throw new ConfigError('options.estimateCost', 'must be a function');
    }
    this.#policies = options.policies;
    this.#approvals = options.approvals;
    this.#budgets = options.budgets;
    this.#estimate = options.estimateCost ?? (() => ZERO);
  }

  /**
   * Decides whether the call may run, waiting for a human when a policy requires one.
   *
   * An admitted call is counted (`PolicyEngine.admitted`) in the same synchronous step as its
   * budget reservation and its last policy check: a decision that was awaited (an asynchronous
   * policy provider) or handed over by {@link tryAuthorize} is checked again by the counting
   * providers first (`PolicyEngine.recheckAdmission`), so calls sent at once cannot all pass a
   * rate limit or loop guard that has not counted any of them yet; a call that waited for budget
   * is checked again when the budget lets it in. A call a human approved is counted without that
   * second check (see `PolicyProvider`).
   */
  async authorize(ctx: ToolCallContext): Promise<ToolCallAuthorization> {
    const a = await this.#authorize(ctx);
    // The verdicts go with the allowed call, for its recheck at its turn (see `recheck`).
    const asked = a.allowed ? this.#asked.get(ctx) : undefined;
    if (asked !== undefined) this.#asked.set(a, asked);
    return a;
  }

  async #authorize(ctx: ToolCallContext): Promise<ToolCallAuthorization> {
    // The rules the decision is made by (a handed-over one was made in this same step).
    let rulesVersion = this.#policies.rulesVersion;
    const handed = ctx.trace === undefined ? undefined : this.#handedOver.get(ctx.trace);
    if (handed !== undefined) this.#handedOver.delete(ctx.trace!);
    let decision: PolicyDecision;
    let recheck = true;
    if (handed !== undefined) decision = handed.decision;
    else if (this.#policies.hasAsyncProviders) decision = await this.#decideAsync(ctx);
    else {
      decision = this.#decide(ctx);
      recheck = false; // decided in this very step
    }
    if (decision.action !== 'require_approval') {
      // A decision awaited from a policy service: the rules may have changed meanwhile.
      if (recheck && this.#policies.rulesVersion !== rulesVersion) {
        const version = this.#policies.rulesVersion;
        const now = await this.#decideAgain(ctx, false);
        if (now !== undefined) {
          handed?.budget?.end(NOT_RESERVED);
          // Sent to a human now: the call asks for an approval as one sent now would.
          if (now.action === 'require_approval') return this.#approve(ctx, now, version);
          return this.#admit(ctx, now, undefined, undefined, true);
        }
        rulesVersion = version;
      }
      return this.#admitWaiting(ctx, decision, undefined, handed?.budget, recheck, rulesVersion);
    }
    return this.#approve(ctx, decision, rulesVersion);
  }

  /**
   * The approval path of {@link authorize} for a call the rules (as of `rulesVersion`) send to a
   * human: the budget is checked first, then the call parks for approval, and once approved it is
   * reserved and counted (see {@link #admitWaiting}).
   */
  async #approve(
    ctx: ToolCallContext,
    decision: PolicyDecision,
    rulesVersion: number,
  ): Promise<ToolCallAuthorization> {
    const estimate = ctx.estimate ?? this.#estimate(ctx.tool, ctx.params);
    const pre = this.#budgets.check(ctx.agentId, estimate, reserveOptions(ctx));
    // A call only in-flight reservations keep out may fit by the time a human decides.
    if (!pre.allowed && !(waitMsOf(ctx) > 0 && inFlightOnly(pre))) {
      const { allowed: _allowed, ...shortfall } = pre;
      return denied(new BudgetExceededError(shortfall), decision, pre.retryAt);
    }

    // A call cancelled before it got here (while its paths were looked up on disk) asks no
    // human: no approval of a call nobody waits for goes into the operators' queue.
    ctx.signal?.throwIfAborted();
    const request = approvalRequest(ctx, decision);
    let pending =
      ctx.resumeApproval === undefined
        ? undefined
        : this.#approvals.resume(ctx.resumeApproval, request);
    try {
      pending ??= this.#approvals.create(request);
    } catch (err) {
      if (err instanceof ApprovalLimitError) return denied(err, decision);
      throw err;
    }
    const final = Object.freeze({ ...decision, approvalId: pending.id });
    const waiting = ctx.trace?.phase('approval.wait');
    ctx.onWaiting?.(pending);
    let approval: ApprovalResult;
    try {
      approval = await this.#approvals.waitForApproval(pending.id, {
        ...(ctx.approvalTimeoutSeconds === undefined
          ? {}
          : { timeoutSeconds: ctx.approvalTimeoutSeconds }),
        ...(ctx.signal === undefined ? {} : { signal: ctx.signal }),
      });
    } catch (err) {
      waiting?.end({ 'fabric.approval.id': pending.id }, codeOf(err));
      // Nobody will run this call now: a later decision is recorded but applies to nothing.
      this.#approvals.orphan(pending.id);
      if (isFabricError(err, WaitTimeoutError.code)) return denied(err, final);
      throw err;
    }
    waiting?.end({ 'fabric.approval.id': pending.id, 'fabric.approval.status': approval.status });
    if (approval.status === 'denied') {
      return denied(new ApprovalDeniedError(pending.id, approval.approver, approval.reason), final);
    }
    if (approval.status === 'expired') {
      return denied(new ApprovalExpiredError(pending.id), final);
    }
    // The human approved the call the rules asked about. When an operator changed the rules
    // while the call waited (a deny added, the approval rule removed), they decide it again: a
    // deny of a rule or of the default action refuses it, as it would refuse the call sent now.
    if (this.#policies.rulesVersion !== rulesVersion) {
      const version = this.#policies.rulesVersion;
      const now = await this.#decideAgain(ctx, true);
      if (now !== undefined) {
        return refusedAfter(this.#admit(ctx, now, undefined, undefined, true), approval);
      }
      rulesVersion = version;
    }
    // A human said yes: counted as it is, not asked again (see `PolicyProvider`).
    return refusedAfter(
      await this.#admitWaiting(ctx, final, approval, undefined, false, rulesVersion),
      approval,
    );
  }

  /**
   * {@link authorize} without waiting: the same outcome when no human has to decide, and
   * `undefined` when policy requires approval, or when the budget refuses a call with
   * `ctx.budget` (it may wait, and its refusal gets the best `retryAt` known) — nothing is
   * reserved or created then; call `authorize`. Also `undefined` whenever a policy provider
   * decides asynchronously (a policy service must be asked). `ctx.signal` and `ctx.onWaiting`
   * are not used.
   */
  tryAuthorize(ctx: ToolCallContext): ToolCallAuthorization | undefined {
    if (this.#policies.hasAsyncProviders) return undefined;
    const version = this.#policies.rulesVersion;
    const decision = this.#decide(ctx);
    if (decision.action === 'require_approval') return this.#handOver(ctx, decision, undefined);
    if (decision.action === 'deny') return this.#admit(ctx, decision);
    const budget = ctx.trace?.phase('budget');
    // Budget refusals are rare; the waiting path decides them (with the better retryAt).
    const a = this.#reserve(ctx, decision, undefined, budget, ctx.budget !== undefined, version);
    if (a === undefined) return this.#handOver(ctx, decision, budget);
    if (a.allowed) this.#policies.admitted(ctx);
    return a;
  }

  /** {@link tryAuthorize} leaves the call to `authorize`, which continues a traced one. */
  #handOver(
    ctx: ToolCallContext,
    decision: PolicyDecision,
    budget: TracePhase | undefined,
  ): undefined {
    if (ctx.trace !== undefined) this.#handedOver.set(ctx.trace, { decision, budget });
    return undefined;
  }

  /**
   * {@link #admit} and count the call, in one synchronous step; with `recheck` (the decision was
   * made before an await), the counting providers are asked again first. With `ctx.budget`, a
   * call the budget refuses goes through `reserveWhenFree`: waiting up to `waitMs` for in-flight
   * reservations to settle (then, unless a human approved it, the counting providers are asked
   * again before it is counted, and a deny releases what was reserved), and refusing with a
   * `retryAt` whenever one can be given. When the rules changed since `rulesVersion` (the
   * decision's) by the end of that wait, they decide the call again first (see {@link #decideAgain}).
   */
  async #admitWaiting(
    ctx: ToolCallContext,
    decision: PolicyDecision,
    approval: ApprovalResult | undefined,
    budgetSpan: TracePhase | undefined,
    recheck: boolean,
    rulesVersion: number,
  ): Promise<ToolCallAuthorization> {
    if (decision.action === 'deny') return this.#admit(ctx, decision, approval);
    if (recheck) {
      const refusal = this.#policies.recheckAdmission(ctx, decision);
      if (refusal !== undefined) {
        budgetSpan?.end(NOT_RESERVED);
        return this.#admit(ctx, refusal);
      }
    }
    if (ctx.budget === undefined) {
      return this.#counted(ctx, this.#admit(ctx, decision, approval, rulesVersion));
    }
    const span = budgetSpan ?? ctx.trace?.phase('budget');
    // Reserved at once when it fits (an aborted call goes on to reject as it always did).
    const now = ctx.signal?.aborted
      ? undefined
      : this.#reserve(ctx, decision, approval, span, true, rulesVersion);
    if (now !== undefined) return this.#counted(ctx, now);
    const estimate = ctx.estimate ?? this.#estimate(ctx.tool, ctx.params);
    try {
      const reservation = await this.#budgets.reserveWhenFree(ctx.agentId, estimate, {
        poolId: ctx.poolId,
        clampTokens: ctx.budget?.clampTokens === true,
        unmetered: ctx.budget?.unmetered === true,
        waitMs: waitMsOf(ctx),
        signal: ctx.signal,
      });
      span?.end(RESERVED);
      // The rules may have changed during the wait (a deny added): they decide it again. A call
      // they now send to a human gives its reservation back while it waits for one (a human may
      // take long; the budget is checked again before it parks and reserved after the yes).
      let version = rulesVersion;
      if (this.#policies.rulesVersion !== rulesVersion) {
        version = this.#policies.rulesVersion;
        let now: PolicyDecision | undefined;
        try {
          now = await this.#decideAgain(ctx, approval !== undefined);
        } catch (err) {
          this.#budgets.release(reservation);
          throw err;
        }
        if (now !== undefined) {
          this.#budgets.release(reservation);
          if (now.action === 'require_approval') return this.#approve(ctx, now, version);
          return this.#admit(ctx, now, undefined, undefined, true);
        }
      }
      // The wait let other calls of the agent be admitted and counted meanwhile: unless a human
      // approved this call, the counting providers are asked again, in the same step as the
      // count, so calls parked behind the agent's own in-flight reservations cannot all pass.
      if (approval === undefined) {
        const refusal = this.#policies.recheckAdmission(ctx, decision);
        if (refusal !== undefined) {
          this.#budgets.release(reservation);
          return this.#admit(ctx, refusal);
        }
      }
      return this.#counted(ctx, allowed(decision, reservation, approval, version));
    } catch (err) {
      if (err instanceof BudgetExceededError) {
        span?.end(REFUSED);
        return denied(err, decision, err.details.retryAt as number | null);
      }
      span?.end(undefined, codeOf(err));
      throw err;
    }
  }

  /** Tells the counting policy providers that an allowed call goes through. */
  #counted(ctx: ToolCallContext, a: ToolCallAuthorization): ToolCallAuthorization {
    if (a.allowed) this.#policies.admitted(ctx);
    return a;
  }

  /**
   * What decides the call under the rules as they are now, for a call decided before the rules
   * changed (untraced: the call's `policy` span ended with its first decision): a deny of a rule
   * or of the default action, or — unless a human already `approved` it — a `require_approval`
   * (the caller parks it for one). A policy service is not asked again: what it said about the
   * call (its first decision's verdicts) stands, only a provider not asked yet is. A provider's deny (a
   * rate limit) is no opinion here (`PolicyEngine.evaluateAgain`), so it neither refuses the call
   * nor hides a rule's deny below it: counting providers are asked at admission, and not at all
   * for a call a human approved (see `PolicyProvider`).
   * @returns undefined when the call may still go through as it was decided.
   */
  async #decideAgain(ctx: ToolCallContext, approved: boolean): Promise<PolicyDecision | undefined> {
    const now = await this.#policies.evaluateAgain(ctx, ctx.signal, this.#asked.get(ctx));
    if (now.action === 'deny') return now;
    return now.action === 'require_approval' && !approved ? now : undefined;
  }

  /** The policy decision of the call (a `policy` span when traced). */
  #decide(ctx: ToolCallContext): PolicyDecision {
    const span = ctx.trace?.phase('policy');
    if (span === undefined) return this.#policies.evaluateSync(ctx);
    try {
      return endPolicySpan(span, this.#policies.evaluateSync(ctx));
    } catch (err) {
      span.end(undefined, codeOf(err));
      throw err;
    }
  }

  /** {@link #decide} asking the asynchronous policy providers (e.g. a policy service) too. */
  async #decideAsync(ctx: ToolCallContext): Promise<PolicyDecision> {
    const span = ctx.trace?.phase('policy');
    // Kept for the decisions made again after this call's waits (see `#asked`).
    const asked: AskedVerdicts = new Map();
    this.#asked.set(ctx, asked);
    try {
      const decision = await this.#policies.evaluateAsync(ctx, ctx.signal, asked);
      return span === undefined ? decision : endPolicySpan(span, decision);
    } catch (err) {
      span?.end(undefined, codeOf(err));
      throw err;
    }
  }

  /** Refuses a `deny` decision, or reserves the estimate of an allowed (or approved) call. */
  #admit(
    ctx: ToolCallContext,
    decision: PolicyDecision,
    approval?: ApprovalResult,
    rulesVersion = this.#policies.rulesVersion,
    rulesChanged = false,
  ): ToolCallAuthorization {
    if (decision.action === 'deny') {
      // `rulesChanged`: decided again after a wait (see #decideAgain), the call was admitted
      // by the rules first — the gateway tells the agent of this refusal even when the new
      // rules hide the tool (a first refusal of a hidden tool answers as an unknown tool).
      const details = {
        policy: decision.policy,
        rule: decision.rule,
        ...(decision.retryAt === undefined ? {} : { retryAt: decision.retryAt }),
        ...(rulesChanged ? { rulesChanged: true } : {}),
      };
      const error =
        decision.code === PolicyUnavailableError.code
          ? new PolicyUnavailableError(ctx.tool, decision.reason, details)
          : new PolicyDeniedError(ctx.tool, decision.reason, details);
      return denied(error, decision, decision.retryAt);
    }
    return this.#reserve(ctx, decision, approval, ctx.trace?.phase('budget'), false, rulesVersion);
  }

  /**
   * Reserves the estimate of an allowed (or approved) call, as phase `span`. With `mayWait`, a
   * budget refusal is `undefined` and `span` stays open: the waiting path takes both over.
   */
  #reserve(
    ctx: ToolCallContext,
    decision: PolicyDecision,
    approval: ApprovalResult | undefined,
    span: TracePhase | undefined,
    mayWait: false,
    rulesVersion: number,
  ): ToolCallAuthorization;
  #reserve(
    ctx: ToolCallContext,
    decision: PolicyDecision,
    approval: ApprovalResult | undefined,
    span: TracePhase | undefined,
    mayWait: boolean,
    rulesVersion: number,
  ): ToolCallAuthorization | undefined;
  #reserve(
    ctx: ToolCallContext,
    decision: PolicyDecision,
    approval: ApprovalResult | undefined,
    span: TracePhase | undefined,
    mayWait: boolean,
    rulesVersion: number,
  ): ToolCallAuthorization | undefined {
    const estimate = ctx.estimate ?? this.#estimate(ctx.tool, ctx.params);
    try {
      const reservation = this.#budgets.reserve(ctx.agentId, estimate, reserveOptions(ctx));
      span?.end(RESERVED);
      return allowed(decision, reservation, approval, rulesVersion);
    } catch (err) {
      if (err instanceof BudgetExceededError) {
        if (mayWait) return undefined;
        span?.end(REFUSED);
        return denied(err, decision, err.details.retryAt as number | null);
      }
      span?.end(undefined, codeOf(err));
      throw err;
    }
  }

  /**
   * Records the call's actual usage against its reservation (fields left out keep the
   * estimate). Idempotent; does nothing for a denied authorization.
   *
   * With `requireFit`, the tokens are charged only when they fit every budget on top of the
   * usage already counted; otherwise only the cost is, and the result is a
   * `FABRIC_ERR_BUDGET_EXCEEDED` refusal (details `withheld: true`, `requested` = the tokens,
   * `max`, `used`, `retryAt`): the caller must withhold the call's result from the agent.
   * @returns undefined when everything was charged.
   */
  settle(
    authorization: ToolCallAuthorization,
    actual?: UsageAmount,
    options?: SettleOptions,
  ): ToolCallDenied | undefined {
    if (!authorization.allowed) return undefined;
    const short = this.#budgets.settle(
      authorization.reservation,
      actual,
      options?.requireFit === true ? REQUIRE_FIT : undefined,
    );
    return short === null ? undefined : withheld(short, authorization.decision);
  }

  /**
   * Decides again a call {@link authorize} let through, for a caller that made it wait once more
   * before it runs (the gateway: its turn on an `exclusive` upstream, as long as another
   * session's calls): when the rules changed since it was decided (`authorization.rulesVersion`),
   * a deny of a rule or of the default action refuses it (`FABRIC_ERR_POLICY_DENIED`), as in
   * {@link authorize}'s own waits; a provider's deny does not (see `PolicyEngine.evaluateAgain`),
   * and a policy service's answer given at authorization stands (it is not asked again).
   * A call no human approved that the rules now send to one is refused too, with a reason
   * saying so (it is not parked again: the agent calls again and asks for an approval); an
   * approved call is not asked again. Reserves, releases and counts nothing: the caller gives
   * the reservation back.
   * @returns undefined when the call may still run — synchronously, after one comparison, when
   *   the rules did not change; else the refusal.
   */
  recheck(
    ctx: ToolCallContext,
    authorization: ToolCallAllowed,
  ): ToolCallDenied | undefined | Promise<ToolCallDenied | undefined> {
    if (authorization.rulesVersion === this.#policies.rulesVersion) return undefined;
    return this.#recheck(ctx, authorization);
  }

  async #recheck(
    ctx: ToolCallContext,
    authorization: ToolCallAllowed,
  ): Promise<ToolCallDenied | undefined> {
    const asked = this.#asked.get(authorization);
    const now = await this.#policies.evaluateAgain(ctx, ctx.signal, asked);
    if (now.action === 'deny')
      return this.#admit(ctx, now, undefined, undefined, true) as ToolCallDenied;
    if (now.action !== 'require_approval' || authorization.approval !== undefined) return undefined;
    const where = now.policy === null ? 'the default action' : `policy ${now.policy}`;
    const error = new PolicyDeniedError(
      ctx.tool,
      `the rules changed while the call waited to run, and now require approval (${where}: ` +
        `${now.reason}); call it again to ask for one`,
      { policy: now.policy, rule: now.rule, rulesChanged: true },
    );
    return denied(error, now);
  }

  /** Gives back the reservation of a call that did not run. Idempotent. */
  release(authorization: ToolCallAuthorization): void {
    if (authorization.allowed) this.#budgets.release(authorization.reservation);
  }
}

/**
 * `auth`, when it refuses a call a human approved, with that approval (who said yes, for the
 * audit line); an allowed one carries it already.
 */
function refusedAfter(
  auth: ToolCallAuthorization,
  approval: ApprovalResult,
): ToolCallAuthorization {
  return auth.allowed ? auth : Object.freeze({ ...auth, approval });
}

function allowed(
  decision: PolicyDecision,
  reservation: Reservation,
  approval: ApprovalResult | undefined,
  rulesVersion: number,
): ToolCallAllowed {
  return Object.freeze(
    approval === undefined
      ? { allowed: true as const, decision, reservation, rulesVersion }
      : { allowed: true as const, decision, reservation, approval, rulesVersion },
  );
}

/** Reservation options of a call: its pool, whether its token estimate is clamped or not held. */
function reserveOptions(ctx: ToolCallContext): ReserveOptions | undefined {
  const clampTokens = ctx.budget?.clampTokens === true;
  if (ctx.budget?.unmetered === true) return { poolId: ctx.poolId, unmetered: true };
  if (ctx.poolId === undefined) return clampTokens ? CLAMP : undefined;
  return { poolId: ctx.poolId, clampTokens };
}

const CLAMP: ReserveOptions = Object.freeze({ clampTokens: true });

/** Attributes of a `budget` span. */
const RESERVED = Object.freeze({ 'fabric.budget.reserved': true });
const REFUSED = Object.freeze({
  'fabric.budget.reserved': false,
  'fabric.error.code': BudgetExceededError.code,
});
/** A `budget` span handed over, ended because policy refused the call after all. */
const NOT_RESERVED = Object.freeze({ 'fabric.budget.reserved': false });

/** The catalog code of a thrown value, for a span's status. */
function codeOf(err: unknown): string {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : 'FABRIC_ERR_INTERNAL';
}

function waitMsOf(ctx: ToolCallContext): number {
  const w = ctx.budget?.waitMs;
  return typeof w === 'number' && w > 0 && Number.isFinite(w) ? w : 0;
}

/** A check refused only because of in-flight reservations (the window has room for it). */
function inFlightOnly(s: BudgetShortfall): boolean {
  return s.reserved > 0 && s.used + s.requested <= s.max && s.requested <= s.max;
}

/** The refusal of a call that ran but whose result's tokens do not fit a budget. */
function withheld(short: BudgetShortfall, decision: PolicyDecision): ToolCallDenied {
  const details = Object.freeze({ ...short, withheld: true });
  const error = new BudgetExceededError(details);
  const reason =
    `the call ran, but its result (${short.requested} tokens) was withheld: it does not fit ` +
    `the token budget of ${short.scope} (${short.used} of ${short.max} used in the window)`;
  return Object.freeze({
    allowed: false as const,
    code: error.code,
    reason,
    decision,
    retryAt: short.retryAt,
    details,
    error,
  });
}

function denied(
  error: Error & { code: string; details: Readonly<Record<string, unknown>> },
  decision: PolicyDecision,
  retryAt?: number | null,
): ToolCallDenied {
  return Object.freeze({
    allowed: false as const,
    code: error.code,
    reason: error.message,
    decision,
    ...(retryAt === undefined ? {} : { retryAt }),
    details: error.details,
    error,
  });
}

/** Ends a `policy` span with the decision, the deciding policy and rule; returns the decision. */
function endPolicySpan(span: TracePhase, decision: PolicyDecision): PolicyDecision {
  const { policy, rule } = decision;
  span.end({
    'fabric.decision': decision.action,
    ...(policy === null ? {} : { 'fabric.policy': policy }),
    ...(policy === null || rule === null ? {} : { 'fabric.rule': `${policy}#${rule}` }),
  });
  return decision;
}

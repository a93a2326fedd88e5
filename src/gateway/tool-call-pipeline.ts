/**
 * The tool-call pipeline: the admission sequence every tool call — and every resource read,
 * prompt get, completion and subscription, as a pseudo-tool — goes through, whichever door it
 * came in by (an MCP session, the gRPC `ToolService`):
 *
 * ```
 * [single flight of a cold estimate] → path view → policy [→ approval wait] → budget reserve
 *   → forward → settle usage (a result whose tokens do not fit is withheld) → audit + metrics
 * ```
 *
 * It knows no transport: a door hands it a {@link PipelineCall} (who, which tool, the arguments,
 * how the caller cancels, where approval progress goes) and a `forward` function, and gets a
 * typed {@link ToolCallOutcome} back — a result, a refusal (with the policy decision, the rule
 * and a `retryAt`), or an error and the stage it happened at. Each door maps the outcome to its
 * wire (map-error.ts for MCP, rpc-call.ts for gRPC), so a decision and its audit line are the
 * same whichever door the call came through.
 *
 * Calls no human has to decide are authorized without a promise (`tryAuthorizeToolCall`), and
 * nothing but the forward is awaited on the hot path (path views looked up on disk, approval,
 * budget and cold-estimate waits only when they happen).
 *
 * @module
 */
import { setMaxListeners } from 'node:events';
import { performance } from 'node:perf_hooks';
import {
  ErrorCode,
  McpError,
  type CallToolResult,
  type Result,
} from '@modelcontextprotocol/sdk/types.js';
import type { AuditLog, AuditOutcome } from './audit-log.js';
import type {
  AgentIdentity,
  Decision,
  GatewayBackend,
  SettleToolCallOptions,
  ToolCallAllowed,
  ToolCallAuthorization,
  ToolCallContext,
  ToolCallRefused,
} from './backend.js';
import type { Approval } from '../policy/approval-manager.js';
import { ApprovalStaleError, WaitTimeoutError } from '../errors.js';
import { messageOf } from './map-error.js';
import type { CallPhases, TraceCarrier } from '../telemetry/tracing.js';
import type { GatewayMetrics } from './metrics.js';
import type { TypedEmitter } from '../events.js';
import type { PathLock, PathLockRelease } from './path-lock.js';
import { unresolvedPathsIn, type PathResolver } from './path-resolver.js';
import type { TokenEstimates, ToolEstimate } from './token-estimates.js';
import { estimateTokens, type ToolCosts } from './tool-costs.js';
import type { SlotHold } from './session.js';

/** A structured log line from the gateway (the CLI prints them; the library drops them). */
export interface GatewayLogEntry {
  level: 'debug' | 'info' | 'warn' | 'error';
  msg: string;
  [key: string]: unknown;
}

/** How the caller ends a call: `cancel` (when given) is read instead of `signal` where it is enough. */
export interface CallAbort {
  /** Aborts on cancellation; read lazily (on the MCP fast path reading it allocates). */
  readonly signal: AbortSignal;
  /** A cheaper cancellation flag (the MCP fast path's cancel hook). */
  readonly cancel?: { readonly aborted: boolean } | undefined;
}

/** Where a call parked for a human approval reports that it waits. */
export type ProgressSink = (progress: { progress: number; message: string }) => void;

/** A tool call from a door without MCP sessions (see `ToolGateway.callToolAs`). */
export interface ToolCallRequest {
  /** The calling agent, from the caller's credential (never from the request). */
  readonly identity: AgentIdentity;
  /** The downstream tool name, as `tools/list` lists it. */
  readonly name: string;
  /** The tool's arguments; `undefined`: none (forwarded as none, policy and audit see `{}`). */
  readonly arguments?: unknown;
  /** Cancels the call: ends an approval or budget wait, or the upstream request. */
  readonly signal: AbortSignal;
  /** Approval-wait progress (absent: none is reported). */
  readonly progress?: ProgressSink | undefined;
  /** The caller's W3C trace context (gRPC metadata `traceparent`, `tracestate`). */
  readonly traceContext?: TraceCarrier | undefined;
  /**
   * Takes one in-flight slot of the calling agent at its door, past the door's bound: a call the
   * gateway gives up on after it was sent upstream (cancelled, its deadline passed) holds it
   * until the upstream is done with it, as a session's call holds one through
   * `GatewaySession.holdSlot`. Absent: the door bounds nothing the call leaves running.
   */
  readonly holdSlot?: SlotHold | undefined;
}

/** One call as the pipeline takes it, from any door. */
export interface PipelineCall {
  /** The calling agent (every ingress maps a request to exactly one agent first). */
  readonly identity: AgentIdentity;
  /** The downstream tool name (`fs__read_file`), or a pseudo-tool (`resources/read` …). */
  readonly tool: string;
  /** What policy decides on and the audit digests, before paths are resolved. */
  readonly params: Readonly<Record<string, unknown>>;
  /** The parameters exactly as forwarded, when they are another object than `params`. */
  readonly forwarded?: Readonly<Record<string, unknown>> | undefined;
  /** The owning upstream's path resolver; absent: policy sees `params` as they are. */
  readonly paths?: PathResolver | undefined;
  /**
   * The owning upstream's path lock (with `paths`): a call that carries paths takes it before
   * they are resolved and holds it until `forward` settles (or tells it is answered), except
   * while it waits for a human approval (see path-lock.ts). Absent: no lock.
   */
  readonly pathLock?: PathLock | undefined;
  /** The tool keeps names (`paths.keepNames`): the call shares the path lock. @default false */
  readonly keepsNames?: boolean | undefined;
  /** Longest wait for the path lock in ms (the upstream's call timeout). */
  readonly pathLockWaitMs?: number | undefined;
  /**
   * The call goes to an `exclusive` upstream, where it may wait for its turn: `forward` gets a
   * recheck that decides it again then if the rules changed meanwhile. @default false
   */
  readonly exclusive?: boolean | undefined;
  readonly abort: CallAbort;
  /** Approval-wait progress (absent: none is sent). */
  readonly progress?: ProgressSink | undefined;
  /** Told once when the call parks waiting for a human approval (a task's status). */
  readonly onApproval?: ((approval: Approval) => void) | undefined;
  /** The approval this same call asked for before a restart (a durable gateway task). */
  readonly resumeApproval?: string | undefined;
  /** Writes the call's audit line and metrics ({@link ToolCallPipeline.auditor}). */
  readonly audit: (fields: AuditOutcome) => void;
  /**
   * A usage report: admitted whatever the budgets say (it reserves nothing; policy still
   * decides), and its result is delivered even when its tokens do not fit (not charged).
   * @default false
   */
  readonly alwaysDelivered?: boolean | undefined;
  /** Charge the result's tokens (a subscription's `{}` has none). @default true */
  readonly countTokens?: boolean | undefined;
  /** Runs the audit right after the response is written instead of before. */
  readonly defer?: ((work: () => void) => void) | undefined;
  /**
   * Told once when the call has ended: as {@link ToolCallPipeline.run} settles, or after the
   * deferred audit when the audit was deferred (`defer`).
   */
  readonly onEnd?: (() => void) | undefined;
  /** The call's spans (policy, approval wait and budget phases); absent: not traced. */
  readonly trace?: CallPhases | undefined;
}

/** Where a call that ended in an error failed. */
export type ToolCallStage = 'admission' | 'forward';

/** What became of one call. */
export type ToolCallOutcome =
  | {
      readonly kind: 'result';
      readonly result: Result;
      /** The policy decision that let it through. */
      readonly decision: Decision;
      /** A human approved it (it waited for one). */
      readonly approved: boolean;
    }
  | {
      readonly kind: 'refused';
      /** Code, reason, decision (and its rule), `retryAt`, details. */
      readonly refusal: ToolCallRefused;
      /** The call ran, but its result's tokens did not fit a budget: the result is withheld. */
      readonly withheld: boolean;
    }
  | {
      readonly kind: 'error';
      readonly error: unknown;
      /** `admission`: before anything was forwarded; `forward`: the upstream or fabric tool. */
      readonly stage: ToolCallStage;
    };

/** Collaborators and settings of a {@link ToolCallPipeline}. */
export interface ToolCallPipelineOptions {
  readonly backend: GatewayBackend;
  readonly costs: ToolCosts;
  readonly estimates: TokenEstimates;
  /** Longest budget (and cold-estimate) wait in ms; 0: refuse at once. */
  readonly budgetWaitMs: number;
  readonly approvalTimeoutSeconds?: number | undefined;
  readonly approvalProgressIntervalMs: number;
  readonly audit: AuditLog | undefined;
  readonly metrics: GatewayMetrics;
  readonly log: (entry: GatewayLogEntry) => void;
  /** Told of every call as it ends (EventService's `TOOL_CALLS` topic). @default none */
  readonly calls?: TypedEmitter<ToolCallEvents> | undefined;
}

/** A tool call that ended: what its audit line records, without the arguments' digest. */
export interface EndedToolCall extends AuditOutcome {
  readonly agentId: string;
  readonly tool: string;
  /** Milliseconds from arrival to the end. */
  readonly durationMs: number;
}

/** Events of {@link ToolCallPipelineOptions.calls}. */
export type ToolCallEvents = { 'call.ended': [EndedToolCall] };

/** How the backend admits a call's budget reservation (see `ToolCallContext.budget`). */
interface BudgetAdmission {
  readonly waitMs: number;
  readonly clampTokens: true;
  readonly unmetered?: true;
}

/** The admission of an `alwaysDelivered` call (a usage report): never refused for budget. */
const UNMETERED: BudgetAdmission = Object.freeze({
  waitMs: 0,
  clampTokens: true,
  unmetered: true,
});

interface Authorized {
  readonly auth: ToolCallAuthorization;
  readonly waited: boolean;
}

const REQUIRE_FIT: SettleToolCallOptions = Object.freeze({ requireFit: true });

/**
 * Errors of requests that were sent to their upstream (a cancellation, a timeout, a dropped
 * connection or the upstream's own error after it got the request), and of fabric tools that
 * failed after their effect happened (`fabric__schedule_task` once it queued the work). Kept only
 * on the error path, so a successful call pays nothing for it.
 */
const reachedUpstream = new WeakSet<object>();

/**
 * Runs once a call's turn on an exclusive upstream comes, before it is sent (see
 * {@link ToolCallPipeline.run}); throws the error of the call's refusal. `undefined`: nothing to
 * wait for, the call goes on.
 */
export type TurnRecheck = () => Promise<void> | undefined;

/**
 * Takes the path lock a call holds from it (`undefined` when it holds none now): to give it back
 * early (a task passed through, once its upstream answered the call that made it) or to hand it
 * on (a call the gateway gave up on while the upstream may still be working on it keeps it until
 * the upstream is done, see `ToolGateway.#leave`). The caller then must release it.
 */
export type TakeLock = () => PathLockRelease | undefined;

/**
 * The refusals of calls found stale or refused by changed rules after their turn wait in
 * `forward`, by their error, with what their audit line records.
 */
const turnRefusals = new WeakMap<
  object,
  { readonly refusal: ToolCallRefused; readonly decision: string; readonly rule?: string }
>();

/**
 * Marks `error` as thrown by a request that reached its upstream, or by a fabric tool after its
 * effect (see {@link chargedCost}). Only an object can be marked.
 */
export function markReachedUpstream(error: unknown): void {
  if (typeof error === 'object' && error !== null) reachedUpstream.add(error);
}

/**
 * The cost to charge for a call that failed with `error`: all of it once the request reached
 * its upstream — the upstream may have done the work (a cancellation only asks it to stop, a
 * timeout does not stop it), so an agent cannot spend past its cost budget by cancelling every
 * call once it started — else nothing.
 */
function chargedCost(error: unknown, cost: number): number {
  return typeof error === 'object' && error !== null && reachedUpstream.has(error) ? cost : 0;
}

/**
 * What the agent is sent of a call that failed with `error`, when that is the upstream's own
 * JSON-RPC error (relayed with its message and `data`, which an upstream may fill with a whole
 * document): `{ code, message, data }`, whose tokens are charged as a result's are. `undefined`
 * for a failure the gateway words itself (short, cut) and for one that never reached the
 * upstream.
 */
function upstreamErrorBody(error: unknown): object | undefined {
  if (!(error instanceof McpError) || error.code === ErrorCode.ConnectionClosed) return undefined;
  if (!reachedUpstream.has(error)) return undefined;
  const { code, message, data } = error;
  return data === undefined ? { code, message } : { code, message, data };
}

/** `controller`, its signal without node's warning past ten listeners. */
function unlimitedListeners(controller: AbortController): AbortController {
  setMaxListeners(0, controller.signal);
  return controller;
}

/**
 * The pipeline. One per gateway; every door runs its calls through {@link run}.
 *
 * @example
 * const outcome = await pipeline.run(
 *   { identity, tool: 'fs__read_file', params: args, abort: { signal }, audit: pipeline.auditor(identity.agentId, 'fs__read_file', args, performance.now()) },
 *   () => upstream.request({ method: 'tools/call', params: { name: 'read_file', arguments: args } }),
 * );
 */
export class ToolCallPipeline {
  readonly #backend: GatewayBackend;
  readonly #costs: ToolCosts;
  readonly #estimates: TokenEstimates;
  readonly #budgetWaitMs: number;
  /** How the backend admits calls (one frozen object: no allocation per call). */
  readonly #budgetOptions: BudgetAdmission;
  readonly #approvalTimeoutSeconds: number | undefined;
  readonly #approvalProgressMs: number;
  readonly #audit: AuditLog | undefined;
  readonly #metrics: GatewayMetrics;
  readonly #log: (entry: GatewayLogEntry) => void;
  readonly #calls: TypedEmitter<ToolCallEvents> | undefined;
  /**
   * Aborted by {@link endWaits}: the gateway is closing. Every call waiting in admission
   * listens to it (each removes its listener when its wait ends), so it has as many listeners as
   * calls wait: no limit, else past ten node warns of an EventTarget leak there is not.
   */
  readonly #closing = unlimitedListeners(new AbortController());

  constructor(options: ToolCallPipelineOptions) {
    this.#backend = options.backend;
    this.#costs = options.costs;
    this.#estimates = options.estimates;
    this.#budgetWaitMs = options.budgetWaitMs;
    // Estimates are guesses (clamped to the limit); what is charged is bounded at settle.
    this.#budgetOptions = Object.freeze({ waitMs: options.budgetWaitMs, clampTokens: true });
    this.#approvalTimeoutSeconds = options.approvalTimeoutSeconds;
    this.#approvalProgressMs = options.approvalProgressIntervalMs;
    this.#audit = options.audit;
    this.#metrics = options.metrics;
    this.#log = options.log;
    this.#calls = options.calls;
  }

  /**
   * Runs one call through the pipeline; `forward` sends it on once it is authorized. Never
   * rejects for what happens to the call: refusals and errors are outcomes.
   */
  async run(
    call: PipelineCall,
    forward: (auth: ToolCallAllowed, recheck?: TurnRecheck, lock?: TakeLock) => Promise<Result>,
  ): Promise<ToolCallOutcome> {
    const { audit, abort } = call;
    const estimate = this.#estimates.get(call.identity.agentId, call.tool);
    let flight = false;
    let deferred = false;
    // The upstream's path lock, while this call holds it (see PipelineCall.pathLock), and what
    // takes it from the call (to give it back early, or to hand it on: see TakeLock).
    let release: PathLockRelease | undefined;
    let take: TakeLock | undefined;
    try {
      const cost = this.#costs.costOf(call.tool);
      let budget = this.#budgetOptions;
      if (call.alwaysDelivered === true) budget = UNMETERED;
      else if (!estimate.observed) {
        try {
          ({ flight, budget } = await this.#coldFlight(estimate, abort.signal));
        } catch (error) {
          audit({ decision: 'none', outcome: 'cancelled', code: endedCode(error, true) });
          return { kind: 'error', error, stage: 'admission' };
        }
      }
      let authorized: Authorized;
      let view = call.params;
      const parked: { approval?: Approval; take?: TakeLock } = {};
      let locks = false;
      try {
        // The policy sees paths as the upstream will resolve them; the upstream gets `params`.
        if (call.paths !== undefined) {
          const slots = call.paths.pathsIn(call.params);
          if (slots !== undefined && call.pathLock !== undefined) {
            // Before the check, until the answer: no call that may rename what the paths go
            // through runs in between (only calls carrying paths pay for it).
            locks = true;
            release = call.pathLock.tryAcquire(call.keepsNames !== true);
            if (release === undefined) release = await this.#waitPathLock(call, call.pathLock);
            // A human may take minutes: the lock is given back while the call is parked, and
            // taken again before its paths are resolved again (below).
            take = () => {
              const r = release;
              release = undefined;
              return r;
            };
            parked.take = take;
          }
          const v = call.paths.view(call.params, slots);
          view = v instanceof Promise ? await v : v; // only for paths looked up on disk
        }
        const a = this.#authorize(call, view, { tokens: estimate.tokens, cost }, budget, parked);
        authorized = a instanceof Promise ? await a : a; // only approval, budget and disk waits
      } catch (error) {
        // A wait (approval, budget) ends by throwing when the client cancels the call.
        const cancelled = (abort.cancel ?? abort.signal).aborted;
        // Ended while parked on an approval: the line says which rule parked it.
        const approval = parked.approval;
        audit({
          decision: approval === undefined ? 'error' : 'require_approval',
          rule: approval === undefined ? undefined : approvalRule(approval),
          outcome: cancelled ? 'cancelled' : 'error',
          code: endedCode(error, cancelled),
          ...(approval === undefined ? {} : { approval: approval.id }),
        });
        return { kind: 'error', error, stage: 'admission' };
      }
      const { auth, waited } = authorized;
      const d = describeDecision(auth.decision);
      // A call a human decided names the approval (and who decided) on its audit line.
      const human = waited ? humanDecision(parked.approval, auth) : undefined;
      if (!auth.allowed) {
        audit({
          decision: d.action ?? 'deny',
          rule: d.rule,
          outcome: 'denied',
          code: auth.code,
          ...human,
        });
        return { kind: 'refused', refusal: explainUnresolved(auth, view), withheld: false };
      }
      const decision = waited ? 'approved' : (d.action ?? 'allow');
      if (waited && call.paths !== undefined) {
        // The upstream resolves the paths again when it runs the call, minutes after the human
        // saw them resolved: a symlink changed meanwhile must not make it touch another file.
        let stale: ToolCallRefused | undefined;
        try {
          if (locks && release === undefined) {
            // Taken again before the paths are resolved again, as before the first check.
            release = call.pathLock!.tryAcquire(call.keepsNames !== true);
            if (release === undefined) release = await this.#waitPathLock(call, call.pathLock!);
          }
          stale = await this.#staleApproval(call.paths, call.params, view, auth);
        } catch (error) {
          this.#settle(auth, { tokens: 0, cost: 0 });
          const cancelled = (abort.cancel ?? abort.signal).aborted;
          audit({
            decision: cancelled ? decision : 'error',
            rule: d.rule,
            outcome: cancelled ? 'cancelled' : 'error',
            code: endedCode(error, cancelled),
            ...human,
          });
          return { kind: 'error', error, stage: 'admission' };
        }
        if (stale !== undefined) {
          this.#settle(auth, { tokens: 0, cost: 0 });
          audit({ decision, rule: d.rule, outcome: 'denied', code: stale.code, ...human });
          return { kind: 'refused', refusal: stale, withheld: false };
        }
      }
      // A call that waits again before it is sent (its turn on an exclusive upstream, as long as
      // another session's calls) is decided again when the wait ends if the rules changed
      // meanwhile, and an approved one has its paths checked again: throws its refusal's error.
      let recheck: TurnRecheck | undefined;
      const pathsAgain = waited ? call.paths : undefined;
      if (call.exclusive === true || pathsAgain !== undefined) {
        const rulesAgain = call.exclusive === true ? this.#backend.recheckToolCall : undefined;
        recheck = () => {
          // An exclusive call's signal exists by now (its turn was waited for with it).
          const refused = rulesAgain?.call(this.#backend, this.#context(call, view), auth);
          if (refused === undefined && pathsAgain === undefined) return undefined;
          return (async () => {
            const now = await refused;
            if (now !== undefined) {
              const r = describeDecision(now.decision);
              const error = now.error ?? new Error(now.reason);
              turnRefusals.set(error, { refusal: now, decision: r.action ?? 'deny', rule: r.rule });
              throw error;
            }
            if (pathsAgain === undefined) return;
            const stale = await this.#staleApproval(pathsAgain, call.params, view, auth);
            if (stale === undefined) return;
            const error = stale.error ?? new ApprovalStaleError(auth.decision?.approvalId ?? '');
            turnRefusals.set(error, { refusal: stale, decision, rule: d.rule });
            throw error;
          })();
        };
      }
      let result: Result;
      try {
        // A task passed through to its upstream: the lock is given back once the upstream has
        // answered the call that made the task (see PipelineCall.pathLock).
        result = await forward(auth, recheck, take);
      } catch (error) {
        const turn =
          typeof error === 'object' && error !== null ? turnRefusals.get(error) : undefined;
        if (turn !== undefined) {
          const { refusal } = turn;
          this.#settle(auth, { tokens: 0, cost: 0 });
          audit({
            decision: turn.decision,
            rule: turn.rule,
            outcome: 'denied',
            code: refusal.code,
            ...human,
          });
          return { kind: 'refused', refusal, withheld: false };
        }
        const charged = chargedCost(error, cost);
        const cancelled = (abort.cancel ?? abort.signal).aborted;
        // An upstream's JSON-RPC error reaches the agent as a result does: its tokens are
        // charged, and withheld when they do not fit (a cancelled call is sent nothing).
        const body = cancelled || call.countTokens === false ? undefined : upstreamErrorBody(error);
        if (body !== undefined) {
          const tokens = estimateTokens(body);
          estimate.observe(tokens);
          let withheld = this.#settle(auth, { tokens, cost: charged }, true);
          if (call.alwaysDelivered === true) withheld = undefined;
          audit({
            decision,
            rule: d.rule,
            outcome: withheld === undefined ? 'error' : 'withheld',
            code: withheld === undefined ? endedCode(error, false) : withheld.code,
            tokens,
            cost: charged,
            ...human,
          });
          return withheld === undefined
            ? { kind: 'error', error, stage: 'forward' }
            : { kind: 'refused', refusal: withheld, withheld: true };
        }
        this.#settle(auth, { tokens: 0, cost: charged });
        audit({
          decision,
          rule: d.rule,
          outcome: cancelled ? 'cancelled' : 'error',
          code: endedCode(error, cancelled),
          cost: charged,
          ...human,
        });
        return { kind: 'error', error, stage: 'forward' };
      }
      // Settled before the response is written: the agent never sees tokens its budget cannot
      // hold. The audit line may wait until after the write (`defer`).
      const tokens = call.countTokens === false ? 0 : estimateTokens(result);
      estimate.observe(tokens);
      let withheld = this.#settle(auth, { tokens, cost }, true);
      if (call.alwaysDelivered === true) withheld = undefined; // not charged, delivered
      const outcome =
        withheld !== undefined
          ? 'withheld'
          : (result as CallToolResult).isError
            ? 'tool_error'
            : 'ok';
      const code = withheld?.code;
      // Only a call that waited for a human gets the approval's fields (no cost on the others).
      const finish =
        human === undefined
          ? (): void => audit({ decision, rule: d.rule, outcome, code, tokens, cost })
          : (): void => audit({ decision, rule: d.rule, outcome, code, tokens, cost, ...human });
      const onEnd = call.onEnd;
      if (call.defer) {
        call.defer(
          onEnd === undefined
            ? finish
            : () => {
                try {
                  finish();
                } finally {
                  onEnd();
                }
              },
        );
        deferred = true;
      } else finish();
      return withheld === undefined
        ? { kind: 'result', result, decision: auth.decision, approved: waited }
        : { kind: 'refused', refusal: withheld, withheld: true };
    } finally {
      release?.();
      if (flight) estimate.land();
      if (!deferred) call.onEnd?.();
    }
  }

  /**
   * Waits for `lock` as {@link PipelineCall.pathLock} says, ended by the call's cancellation,
   * the gateway closing, or `pathLockWaitMs` ({@link WaitTimeoutError}); nothing is held then.
   */
  async #waitPathLock(call: PipelineCall, lock: PathLock): Promise<PathLockRelease> {
    const own = call.abort.signal;
    const closing = this.#closing.signal;
    const wait = new AbortController();
    const onOwnAbort = (): void => wait.abort(own.reason);
    const onClosing = (): void => wait.abort(closing.reason);
    const seconds = (call.pathLockWaitMs ?? 60_000) / 1000;
    const timer = setTimeout(
      () =>
        wait.abort(
          new WaitTimeoutError(
            `the path lock of ${call.tool} (another call of its upstream that may rename what its paths go through is in flight)`,
            seconds,
          ),
        ),
      call.pathLockWaitMs ?? 60_000,
    );
    timer.unref();
    if (own.aborted) wait.abort(own.reason);
    else if (closing.aborted) wait.abort(closing.reason);
    else {
      own.addEventListener('abort', onOwnAbort, { once: true });
      closing.addEventListener('abort', onClosing, { once: true });
    }
    try {
      return await lock.wait(call.keepsNames !== true, wait.signal);
    } finally {
      clearTimeout(timer);
      own.removeEventListener('abort', onOwnAbort);
      closing.removeEventListener('abort', onClosing);
    }
  }

  /**
   * Counts one request that arrived at `started` (performance.now) in the metrics — under
   * `metricTool`, e.g. `(unknown)` for a name not in the catalog — and writes its audit line;
   * the line's digest, time and JSON are made when the log flushes, after the response. Called
   * with `line` false, it counts the request and tells `call.ended` but writes no line (a refusal
   * past its bound, counted in a summary line instead: see line-budget.ts).
   */
  auditor(
    agentId: string,
    tool: string,
    args: unknown,
    started: number,
    metricTool = tool,
  ): (fields: AuditOutcome, line?: boolean) => void {
    const log = this.#audit;
    const metrics = this.#metrics;
    const calls = this.#calls;
    return (fields, line = true) => {
      const now = performance.now();
      const durationMs = now - started;
      metrics.recordCall(metricTool, fields.decision, fields.outcome, durationMs, fields.code);
      if (calls?.listens('call.ended')) {
        calls.emit('call.ended', { ...fields, agentId, tool, durationMs });
      }
      if (!log || !line) return;
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

  /**
   * The single flight of a pair with no result yet (rare: an agent's first calls of a tool).
   * Waits, bounded by `budgetWaitMs` and ended by the call's cancellation, while another call
   * holds it. `flight`: this call now holds it; `budget`: the admission options with what is
   * left of the wait, so a call waits at most `budgetWaitMs` in all.
   */
  async #coldFlight(
    estimate: ToolEstimate,
    signal: AbortSignal,
  ): Promise<{ flight: boolean; budget: BudgetAdmission }> {
    const started = performance.now();
    const f = estimate.flight(this.#budgetWaitMs, signal);
    if (typeof f === 'boolean') return { flight: f, budget: this.#budgetOptions };
    const flight = await f;
    const waitMs = Math.max(0, this.#budgetWaitMs - (performance.now() - started));
    return { flight, budget: { waitMs, clampTokens: true } };
  }

  /**
   * Ends every call waiting in admission (a human's approval, the budget, a policy service),
   * now and from now on, with `reason` as its error: the gateway is closing, and such a call
   * would otherwise end with its session, unanswered. Calls already forwarded go on.
   */
  endWaits(reason: Error): void {
    this.#closing.abort(reason);
  }

  /**
   * Policy [→ approval wait, with progress] → budget reservation. Calls no human has to decide
   * are authorized without a promise. `view` is what the policy decides on (paths resolved);
   * the forwarded params go to the backend as `rawParams` when they are another object.
   */
  #authorize(
    call: PipelineCall,
    view: Readonly<Record<string, unknown>>,
    estimate: { tokens: number; cost: number },
    budget: BudgetAdmission,
    parked: { approval?: Approval; take?: TakeLock },
  ): Authorized | Promise<Authorized> {
    const { agentId, poolId, labels } = call.identity;
    const raw = call.forwarded ?? call.params;
    const rawParams = raw === view ? undefined : raw;
    const ctx = {
      agentId,
      poolId,
      tool: call.tool,
      params: view,
      rawParams,
      labels,
      estimate,
      budget,
      trace: call.trace,
    };
    const now = this.#backend.tryAuthorizeToolCall?.(ctx);
    if (now !== undefined) return { auth: now, waited: false };
    const progress = call.progress;
    let waitTimer: NodeJS.Timeout | undefined;
    let waited = false;
    // Only here, off the hot path: a call that may wait also ends when the gateway closes. Not
    // `AbortSignal.any`: on Node 20 each composite signal leaves ~60 bytes for good in its
    // long-lived source (the gateway's closing signal), so every call that went through here
    // grew the heap — with policy-grpc, every call. The listeners go when the wait ends.
    const own = call.abort.signal;
    const closing = this.#closing.signal;
    const wait = new AbortController();
    const onOwnAbort = (): void => wait.abort(own.reason);
    const onClosing = (): void => wait.abort(closing.reason);
    if (own.aborted) wait.abort(own.reason);
    else if (closing.aborted) wait.abort(closing.reason);
    else {
      own.addEventListener('abort', onOwnAbort, { once: true });
      closing.addEventListener('abort', onClosing, { once: true });
    }
    return this.#backend
      .authorizeToolCall({
        ...ctx,
        signal: wait.signal,
        approvalTimeoutSeconds: this.#approvalTimeoutSeconds,
        resumeApproval: call.resumeApproval,
        onWaiting: (approval) => {
          waited = true;
          parked.approval = approval;
          parked.take?.()?.();
          call.onApproval?.(approval);
          if (progress === undefined || waitTimer) return;
          let tick = 0;
          const send = (): void =>
            progress({ progress: tick++, message: `waiting for human approval ${approval.id}` });
          send();
          waitTimer = setInterval(send, this.#approvalProgressMs);
          waitTimer.unref();
        },
      })
      .then((auth) => ({ auth, waited }))
      .finally(() => {
        own.removeEventListener('abort', onOwnAbort);
        closing.removeEventListener('abort', onClosing);
        if (waitTimer) clearInterval(waitTimer);
      });
  }

  /** What the backend decides `call` again on (see `GatewayBackend.recheckToolCall`). */
  #context(call: PipelineCall, view: Readonly<Record<string, unknown>>): ToolCallContext {
    const { agentId, poolId, labels } = call.identity;
    const raw = call.forwarded ?? call.params;
    return {
      agentId,
      poolId,
      tool: call.tool,
      params: view,
      rawParams: raw === view ? undefined : raw,
      labels,
      signal: call.abort.signal,
    };
  }

  /**
   * The refusal of an approved call whose paths resolve elsewhere now than in `approved`, the
   * view the human decided on (`undefined` when they resolve the same).
   */
  async #staleApproval(
    paths: PathResolver,
    params: Readonly<Record<string, unknown>>,
    approved: Readonly<Record<string, unknown>>,
    auth: ToolCallAllowed,
  ): Promise<ToolCallRefused | undefined> {
    const now = await paths.view(params);
    if (now === approved || JSON.stringify(now) === JSON.stringify(approved)) return undefined;
    const error = new ApprovalStaleError(auth.decision?.approvalId ?? '(unknown)');
    return Object.freeze({
      allowed: false as const,
      code: error.code,
      reason: error.message,
      decision: auth.decision,
      details: error.details,
      error,
    });
  }

  /**
   * Settles a call's usage, synchronously. With `requireFit` (a result about to be delivered),
   * returns the backend's refusal when the result's tokens do not fit a budget: they were not
   * charged, and the caller withholds the result.
   */
  #settle(
    auth: ToolCallAllowed,
    usage: { tokens: number; cost: number },
    requireFit = false,
  ): ToolCallRefused | undefined {
    try {
      const settled = this.#backend.settleToolCall(
        auth,
        usage,
        requireFit ? REQUIRE_FIT : undefined,
      );
      if (settled instanceof Promise) {
        settled.catch((error: unknown) =>
          this.#log({ level: 'error', msg: 'settling usage failed', error: messageOf(error) }),
        );
        return undefined;
      }
      return isRefusal(settled) ? settled : undefined;
    } catch (error) {
      this.#log({ level: 'error', msg: 'settling usage failed', error: messageOf(error) });
      return undefined;
    }
  }
}

function isRefusal(value: unknown): value is ToolCallRefused {
  return (
    typeof value === 'object' && value !== null && (value as ToolCallRefused).allowed === false
  );
}

/** The catalog code of a thrown value (`FABRIC_ERR_INTERNAL` when it has none). */
export function codeOf(error: unknown): string {
  if (error && typeof error === 'object' && 'code' in error) return String(error.code);
  return 'FABRIC_ERR_INTERNAL';
}

/**
 * The code a call that ended by `error` is audited (and counted) with. A cancelled call's error
 * is its client's abort reason — an AbortError, a string, the SDK's cancel — which named no
 * fabric code, so a call cancelled while it waited for an approval was counted as
 * `FABRIC_ERR_INTERNAL`: it is `FABRIC_ERR_CANCELLED` unless a fabric error says more.
 */
function endedCode(error: unknown, cancelled: boolean): string {
  const code = codeOf(error);
  if (!cancelled) return code;
  return code.startsWith('FABRIC_ERR_') && code !== 'FABRIC_ERR_INTERNAL'
    ? code
    : 'FABRIC_ERR_CANCELLED';
}

/**
 * The audit fields of a call that waited for a human: the approval it parked on, and who decided
 * it — from the authorization of an approved call (also one refused after it by rules changed
 * while it waited or by the budget), or from the details of a human's denial (absent for an
 * expiry).
 */
function humanDecision(
  approval: Approval | undefined,
  auth: ToolCallAuthorization,
): { approval: string; approver?: string } | undefined {
  if (approval === undefined) return undefined;
  const approver = auth.approval?.approver ?? (auth.allowed ? undefined : auth.details?.approver);
  return typeof approver === 'string'
    ? { approval: approval.id, approver }
    : { approval: approval.id };
}

/** The rule that parked a call on `approval`, as {@link describeDecision} names it. */
function approvalRule(approval: Approval): string | undefined {
  const { policy, rule } = approval;
  if (policy === null) return undefined;
  return rule === null ? policy : `${policy}#${rule}`;
}

/**
 * The action and the deciding rule of a policy decision, as the audit log names them: the rule
 * as `policy#index`, the policy alone for a provider's verdict, nothing for the default action.
 */
export function describeDecision(decision: Decision | undefined): {
  action?: string;
  rule?: string;
} {
  if (decision === undefined) return {};
  const { action, policy, rule } = decision;
  if (policy === null) return { action };
  return { action, rule: rule === null ? policy : `${policy}#${rule}` };
}

/** A refusal's reason, plus which paths could not be resolved when the view had any. */
function explainUnresolved(
  auth: ToolCallRefused,
  view: Readonly<Record<string, unknown>>,
): ToolCallRefused {
  const markers = unresolvedPathsIn(view);
  if (markers.length === 0) return auth;
  const listed = markers
    .slice(0, 3)
    .map((m) => `${JSON.stringify(m.value)} ${m.reason}`)
    .join('; ');
  const more = markers.length > 3 ? ` (and ${markers.length - 3} more)` : '';
  return { ...auth, reason: `${auth.reason} [unresolved path: ${listed}${more}]` };
}

/**
 * The policy check of an agent's answers to an upstream's callbacks. An upstream's server→client
 * request (sampling, elicitation, roots/list) is routed to the agent session whose call it is
 * serving (upstream-routing.ts), and the agent's answer — a result, or a JSON-RPC error whose
 * message and data are relayed as they are — goes back to that upstream. That answer is written
 * by the agent, so it can carry a secret the agent holds; it passes no tool-call rule (those
 * would change what default-deny configurations allow), but the backend's
 * `checkCallbackAnswer` (policy providers that opt in, e.g. secret-guard) sees it first.
 *
 * Allowed: the answer is relayed unchanged. Refused: the upstream gets a
 * `FABRIC_ERR_CALLBACK_ANSWER_DENIED` error instead (the provider's reason, never the answer),
 * the answer is dropped, and the refusal is logged (`warn`) and written to the audit log (the
 * answer only as a digest). Checked answers are counted by method and decision (`/metrics`). Every door whose sessions can answer callbacks goes through here:
 * an MCP session over Streamable HTTP, over stdio (`agent-fabric mcp --in-process`), and the
 * stdio bridge (`agent-fabric mcp --agent-token`, a Streamable HTTP session of the sidecar). A
 * check that throws refuses the answer (fail closed); only the upstream giving up its request
 * (`signal`) ends it without an answer, as it would have ended the agent's.
 *
 * A request the gateway refuses before it reaches the agent's session (a sampling request the
 * budget has no room for, see `GatewayBackend.admitSampling`) is logged and audited here the
 * same way ({@link CallbackAnswers.refuse}).
 *
 * @module
 */
import type { McpError, Request, Result } from '@modelcontextprotocol/sdk/types.js';
import { CallbackAnswerDeniedError, FabricError } from '../errors.js';
import { CALLBACK_ANSWER_UNCHECKED } from '../policy/callback-answer-check.js';
import type { AuditLog } from './audit-log.js';
import type { CallbackAnswerContext, CallbackAnswerDecision, GatewayBackend } from './backend.js';
import { RelayedMcpError, messageOf, toMcpError } from './map-error.js';
import type { GatewayMetrics } from './metrics.js';
import type { GatewaySession } from './session.js';
import type { GatewayLogEntry } from './tool-call-pipeline.js';
import type { Upstream } from './upstream.js';

/** Longest reason quoted in the sidecar's log line (a plugin's reason could be anything). */
const LOGGED_REASON_CHARS = 500;

/** Relays agents' answers to upstream callbacks through the backend's check. */
export class CallbackAnswers {
  readonly #backend: GatewayBackend;
  readonly #audit: AuditLog | undefined;
  readonly #log: (entry: GatewayLogEntry) => void;
  readonly #metrics: GatewayMetrics;

  constructor(
    backend: GatewayBackend,
    audit: AuditLog | undefined,
    log: (entry: GatewayLogEntry) => void,
    metrics: GatewayMetrics,
  ) {
    this.#backend = backend;
    this.#audit = audit;
    this.#log = log;
    this.#metrics = metrics;
  }

  /**
   * The agent's `answer` to `request` of `upstream`, or the refusal to send instead.
   * @throws the agent's error answer when allowed; a refusal (McpError of
   *   CallbackAnswerDeniedError) when denied; whatever `answer` rejects with that is not the
   *   agent's answer (no client capability, the session closed), unchecked.
   */
  async relay(
    upstream: Upstream,
    session: GatewaySession,
    request: Request,
    signal: AbortSignal,
    answer: Promise<Result>,
  ): Promise<Result> {
    if (this.#backend.checkCallbackAnswer === undefined) return answer;
    const startedAt = Date.now();
    const started = performance.now();
    let result: Result | undefined;
    let error: RelayedMcpError | undefined;
    try {
      result = await answer;
    } catch (e) {
      // Only an error the agent's client sent is the agent's answer (it is relayed as sent).
      if (!(e instanceof RelayedMcpError)) throw e;
      error = e;
    }
    const { identity } = session;
    const ctx: CallbackAnswerContext = {
      agentId: identity.agentId,
      poolId: identity.poolId,
      labels: identity.labels,
      upstream: upstream.name,
      method: request.method,
      params: request.params,
      ...(error === undefined
        ? { result }
        : {
            error: {
              code: error.code,
              message: error.message,
              ...(error.data === undefined ? {} : { data: error.data }),
            },
          }),
    };
    let decision: CallbackAnswerDecision;
    try {
      decision = await this.#backend.checkCallbackAnswer(ctx, signal);
    } catch (e) {
      if (signal.aborted) throw e;
      decision = {
        allowed: false,
        policy: 'gateway',
        reason: `the answer could not be checked: ${messageOf(e)}`,
      };
    }
    // Counted only when a provider checked it (no checker: every answer would count as allowed).
    if (decision !== CALLBACK_ANSWER_UNCHECKED) {
      this.#metrics.recordCallbackAnswer(request.method, decision.allowed);
    }
    if (decision.allowed) {
      if (error !== undefined) throw error;
      return result!;
    }
    const refusal = new CallbackAnswerDeniedError(
      upstream.name,
      request.method,
      decision.policy,
      decision.reason,
    );
    throw this.#refused(
      "an agent's answer to an upstream's callback was refused by policy; the upstream gets an error instead",
      { upstream, session, request, startedAt, started },
      { decision: 'deny', rule: decision.policy, reason: decision.reason },
      ctx.result ?? ctx.error,
      refusal,
    );
  }

  /**
   * Refuses `request` of `upstream` before it reaches the agent's session (the budget refused a
   * sampling request: `refusal`, coded `FABRIC_ERR_BUDGET_EXCEEDED`), logged and audited as a
   * refused answer is (decision `none`: no policy decided; the request's params as digest).
   * @returns the McpError to send the upstream.
   */
  refuse(
    upstream: Upstream,
    session: GatewaySession,
    request: Request,
    refusal: FabricError,
  ): McpError {
    const at = { upstream, session, request, startedAt: Date.now(), started: performance.now() };
    return this.#refused(
      "an upstream's callback was refused before it reached the agent's client; the upstream gets an error instead",
      at,
      { decision: 'none', reason: refusal.message },
      request.params ?? {},
      new FabricError(
        refusal.code,
        refusal.kind,
        `${request.method} of upstream ${upstream.name} was not sent to the agent's client: ${refusal.message}`,
        { ...refusal.details, upstream: upstream.name, method: request.method },
      ),
    );
  }

  /** Logs (`warn`) and audits a refusal sent upstream instead of a request or its answer. */
  #refused(
    msg: string,
    at: {
      upstream: Upstream;
      session: GatewaySession;
      request: Request;
      startedAt: number;
      started: number;
    },
    why: { decision: string; rule?: string; reason: string },
    digested: unknown,
    refusal: FabricError,
  ): McpError {
    const { upstream, session, request } = at;
    const agentId = session.identity.agentId;
    this.#log({
      level: 'warn',
      msg,
      agentId,
      session: session.id,
      upstream: upstream.name,
      method: request.method,
      ...(why.rule === undefined ? {} : { policy: why.rule }),
      code: refusal.code,
      reason: why.reason.slice(0, LOGGED_REASON_CHARS),
    });
    this.#audit?.write({
      time: new Date(at.startedAt).toISOString(),
      agent: agentId,
      tool: request.method,
      upstream: upstream.name,
      decision: why.decision,
      ...(why.rule === undefined ? {} : { rule: why.rule }),
      durationMs: Math.round((performance.now() - at.started) * 1000) / 1000,
      outcome: 'denied',
      ...answerDigest(this.#audit, digested),
      code: refusal.code,
    });
    return toMcpError(refusal);
  }
}

/** The refused answer's digest for the audit line (never the answer itself). */
function answerDigest(
  audit: AuditLog | undefined,
  answer: unknown,
): { argsDigest: string | null; argsError?: string } {
  if (audit === undefined) return { argsDigest: null };
  try {
    return { argsDigest: audit.digest(answer) };
  } catch (error) {
    return { argsDigest: null, argsError: `answer could not be serialized: ${messageOf(error)}` };
  }
}

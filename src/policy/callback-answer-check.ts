/**
 * Policy over an agent's answers to an upstream's callbacks. An upstream MCP server may send
 * requests back to the agent whose call it is serving — `sampling/createMessage`,
 * `elicitation/create`, `roots/list` — and the agent's answer goes back to that upstream. Those
 * answers carry what the agent writes, so they can carry a secret to the upstream as a tool
 * call's arguments can; but they are not tool calls, and passing them through the ordinary
 * allow/deny rules would change what every default-deny configuration allows. So they have a
 * check of their own, opt-in per policy provider: `checkCallbackAnswer`, which only providers
 * that define it are asked.
 *
 * The check is a veto: the answer goes to the upstream unless a provider denies it. Providers
 * are asked one after the other, highest priority first, and the first deny decides (its
 * provider and reason are reported). An `allow` is no more than no objection: it does not stop
 * the providers after it (no rule allows answers, so there is nothing for it to outrank). It
 * fails closed: a provider that throws, rejects, answers something that is not a verdict, or
 * does not answer within the engine's `callbackCheckTimeoutMs` denies the answer, and so does
 * `require_approval` — no human can approve an answer while the upstream waits for it, and the
 * gateway has nowhere to park one.
 *
 * @module
 */
import { cutWireText } from '../errors.js';
import type { PolicyAction } from './policy.js';

/** An agent's answer to an upstream's server→client request, as a provider inspects it. */
export interface CallbackAnswerContext {
  /** The agent whose client answered. */
  readonly agentId: string;
  readonly poolId?: string | undefined;
  readonly labels?: Readonly<Record<string, string>> | undefined;
  /** The upstream that asked and receives the answer (its configured name). */
  readonly upstream: string;
  /** What it asked: `sampling/createMessage`, `elicitation/create`, `roots/list`, … */
  readonly method: string;
  /** The upstream's request params, as it sent them (what it asked, not what it gets). */
  readonly params?: Readonly<Record<string, unknown>> | undefined;
  /**
   * The agent's result, exactly as the upstream receives it when allowed; absent when the agent
   * answered with an error (then {@link error}).
   */
  readonly result?: Readonly<Record<string, unknown>> | undefined;
  /** The agent's JSON-RPC error answer, relayed as it is when allowed (message and data too). */
  readonly error?:
    { readonly code: number; readonly message: string; readonly data?: unknown } | undefined;
}

/**
 * What a provider's `checkCallbackAnswer` answers: `undefined` (no opinion) or a verdict. Only
 * `deny` refuses the answer; `require_approval` is taken as a deny (see the module).
 */
export interface CallbackAnswerVerdict {
  readonly action: PolicyAction;
  /** Why: reported to the upstream, the sidecar's log and the audit log; never the secret. */
  readonly reason?: string;
}

/** The engine's decision on one answer. Frozen. */
export type CallbackAnswerDecision =
  | { readonly allowed: true }
  | {
      readonly allowed: false;
      /** The provider that refused the answer. */
      readonly policy: string;
      readonly reason: string;
      /** True when the provider could not decide (threw, timed out, answered nonsense). */
      readonly failed?: true;
    };

/** A provider as {@link checkCallbackAnswer} asks it. */
export interface CallbackAnswerChecker {
  readonly name: string;
  checkCallbackAnswer?(
    ctx: CallbackAnswerContext,
    signal: AbortSignal,
  ): CallbackAnswerVerdict | undefined | Promise<CallbackAnswerVerdict | undefined>;
}

/** Default of `PolicyEngineOptions.callbackCheckTimeoutMs`: how long one provider may take. */
export const DEFAULT_CALLBACK_CHECK_TIMEOUT_MS = 5_000;

/** The decision when no provider objects (shared: it holds nothing per answer). */
export const CALLBACK_ANSWER_ALLOWED: CallbackAnswerDecision = Object.freeze({ allowed: true });

/**
 * The decision when no provider checks answers at all: allowed, and told apart from
 * {@link CALLBACK_ANSWER_ALLOWED} by identity only (an answer nobody checked is not counted in
 * `agent_fabric_callback_answers_total`).
 */
export const CALLBACK_ANSWER_UNCHECKED: CallbackAnswerDecision = Object.freeze({ allowed: true });

/**
 * Asks `checkers` (highest priority first) about one answer; see the module for the rules.
 * @param signal aborts the wait (the upstream cancelled its request, the session closed): then
 *   it rejects with the signal's reason, and the answer is not sent anywhere.
 * @throws the reason of `signal` when it aborts.
 */
export async function checkCallbackAnswer(
  checkers: readonly CallbackAnswerChecker[],
  ctx: CallbackAnswerContext,
  options: { readonly signal: AbortSignal; readonly timeoutMs: number },
): Promise<CallbackAnswerDecision> {
  const { signal, timeoutMs } = options;
  for (const checker of checkers) {
    signal.throwIfAborted();
    const decision = await askOne(checker, ctx, signal, timeoutMs);
    if (decision !== undefined) return decision;
  }
  signal.throwIfAborted();
  return CALLBACK_ANSWER_ALLOWED;
}

/** One provider's deny as a decision; undefined when it lets the answer through. */
async function askOne(
  checker: CallbackAnswerChecker,
  ctx: CallbackAnswerContext,
  signal: AbortSignal,
  timeoutMs: number,
): Promise<CallbackAnswerDecision | undefined> {
  const name = checker.name;
  // The provider's own signal also ends when it runs out of time, so it can stop its work.
  const own = new AbortController();
  const onAbort = (): void => own.abort(signal.reason);
  signal.addEventListener('abort', onAbort, { once: true });
  let timer: NodeJS.Timeout | undefined;
  try {
    const answer = checker.checkCallbackAnswer!(ctx, own.signal);
    const raw = isThenable(answer)
      ? await new Promise<unknown>((resolve, reject) => {
          timer = setTimeout(() => {
            const error = new Error(`did not answer within ${timeoutMs} ms`);
            own.abort(error);
            reject(error);
          }, timeoutMs);
          timer.unref?.();
          own.signal.addEventListener('abort', () => reject(own.signal.reason), { once: true });
          answer.then(resolve, reject);
        })
      : answer;
    return readVerdict(name, raw);
  } catch (error) {
    // The wait was given up from outside: no decision, the caller sends nothing.
    if (signal.aborted) throw signal.reason;
    return failed(name, `policy provider ${name} failed: ${messageOf(error)}`);
  } finally {
    if (timer !== undefined) clearTimeout(timer);
    signal.removeEventListener('abort', onAbort);
  }
}

/** A verdict as the check takes it (see {@link checkCallbackAnswer}). */
function readVerdict(name: string, raw: unknown): CallbackAnswerDecision | undefined {
  if (raw === undefined) return undefined;
  if (raw === null || typeof raw !== 'object') {
    return failed(
      name,
      `policy provider ${name} returned an invalid verdict (${raw === null ? 'null' : typeof raw})`,
    );
  }
  const { action, reason } = raw as Record<string, unknown>;
  const text = typeof reason === 'string' ? cutWireText(reason) : undefined;
  switch (action) {
    case 'allow':
      return undefined;
    case 'deny':
      return Object.freeze({
        allowed: false,
        policy: name,
        reason: text ?? `deny by policy provider ${name}`,
      });
    case 'require_approval':
      return Object.freeze({
        allowed: false,
        policy: name,
        reason: `${text ?? `policy provider ${name} requires approval`} (an answer to a callback cannot wait for an approval: refused)`,
      });
    default:
      return failed(name, `policy provider ${name} returned an invalid action`);
  }
}

function failed(policy: string, reason: string): CallbackAnswerDecision {
  return Object.freeze({ allowed: false, policy, reason, failed: true });
}

function isThenable(value: unknown): value is PromiseLike<unknown> {
  return (
    value !== null &&
    (typeof value === 'object' || typeof value === 'function') &&
    typeof (value as { then?: unknown }).then === 'function'
  );
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

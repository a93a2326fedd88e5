/**
 * The PolicyEngine: decides whether an agent may call a tool with given parameters.
 *
 * @module
 */
import { createHash } from 'node:crypto';
import { LRUCache } from 'lru-cache';
import {
  ConfigError,
  cutWireText,
  PolicyExistsError,
  PolicyUnavailableError,
  PolicyValidationError,
  StateStoreError,
} from '../errors.js';
import type { Collection } from '../store/store.js';
import { ApprovalManager, type ApprovalRequest } from './approval-manager.js';
import {
  CALLBACK_ANSWER_UNCHECKED,
  checkCallbackAnswer,
  DEFAULT_CALLBACK_CHECK_TIMEOUT_MS,
  type CallbackAnswerContext,
  type CallbackAnswerDecision,
  type CallbackAnswerVerdict,
} from './callback-answer-check.js';
import { compileConditions, type ParamsPredicate } from './conditions.js';
import { compileGlob, GlobSyntaxError, type GlobMatcher } from './glob.js';
import { compileJsonLogic, JsonLogicCompileError, truthy } from './json-logic.js';
import { parsePolicy, type NormalizedPolicy, type PolicyAction } from './policy.js';
import { frozenCopy } from './provider-view.js';
import { approvalParams } from './unresolved-path.js';

/**
 * A run-time change of one policy as a durable store keeps it, under the policy's name: only
 * the latest change of each name is kept. Written by {@link PolicyEngine.persistTo}'s engine
 * before the change takes effect; applied on top of the start-up (config) policies by the next
 * start's `persistTo`.
 */
export interface PolicyChangeRecord {
  /** The policy's name (the record's id). */
  readonly name: string;
  /**
   * Order of the change among the stored changes (start-up applies them in this order). A
   * policy added at run time keeps the number of its addition when it is replaced later, so the
   * policies added at run time keep their order among equal priorities.
   */
  readonly seq: number;
  /**
   * `added`: the policy was added at run time (placed after the others of its priority; one of
   * that name registered at start is replaced by it). `replaced`: a policy registered at start
   * was replaced (in its place). `removed`: a policy registered at start was removed (a
   * tombstone: that policy is removed again at every start).
   */
  readonly change: 'added' | 'replaced' | 'removed';
  /** The policy (not for `removed`). */
  readonly policy?: NormalizedPolicy;
  /** When the change was made (ISO 8601). */
  readonly at: string;
  /**
   * The policy of this name registered at start (the config's) when the change was made, as a
   * digest of its normalized form; `null`: none had the name. At a later start whose start-up
   * policy of the name differs, the config was edited since the change: the config wins and the
   * record is forgotten. Absent (records written before it existed): the change applies.
   */
  readonly basis?: string | null;
}

/** The digest a {@link PolicyChangeRecord.basis} holds of a normalized policy. */
function policyDigest(policy: NormalizedPolicy): string {
  return createHash('sha256').update(JSON.stringify(policy)).digest('hex');
}

/** A stored change {@link PolicyEngine.persistTo} applied at start. */
export interface AppliedPolicyChange {
  readonly name: string;
  /**
   * What it did to the policies registered at start: `added` (none had the name), `replaced`
   * (the stored policy took the place of the start-up one), `removed` (a tombstone removed it),
   * `dropped` (a tombstone whose policy is no longer registered at start: forgotten, nothing
   * changed), `superseded` (the start-up policy of its name was edited, added or dropped since
   * the change was made: the start-up one stands and the record is forgotten).
   */
  readonly effect: 'added' | 'replaced' | 'removed' | 'dropped' | 'superseded';
  /** When the change was made (the record's `at`). */
  readonly at: string;
}

/** Default for {@link PolicyEngineOptions.defaultAction}. */
export const DEFAULT_POLICY_ACTION: PolicyAction = 'deny';
/** Default for {@link PolicyEngineOptions.toolCacheSize}. */
export const DEFAULT_TOOL_CACHE_SIZE = 1024;

/** Options of a {@link PolicyEngine}. */
export interface PolicyEngineOptions {
  /**
   * The action when no enabled enforce-mode rule matches.
   * @default 'deny'
   */
  defaultAction?: PolicyAction;
  /**
   * How many tool names keep their pre-filtered candidate rule list (an LRU). `0` disables the
   * index: every evaluation then tests every rule's tool glob.
   * @default 1024
   */
  toolCacheSize?: number;
  /**
   * Where {@link PolicyEngine.evaluate} creates approvals.
   * @default a new ApprovalManager owned (and closed) by the engine
   */
  approvals?: ApprovalManager;
  /**
   * How long one provider's `checkCallbackAnswer` may take before the answer it was asked about
   * is refused (fail closed), in milliseconds.
   * @default 5000
   */
  callbackCheckTimeoutMs?: number;
}

/** The tool call being decided. */
export interface PolicyContext {
  agentId: string;
  tool: string;
  /**
   * What rules match and `when` reads. The gateway passes a resolved view: path-like values
   * resolved the way the tool's upstream resolves them, and an `UnresolvedPath` marker where
   * that is not possible with certainty. Called directly, the engine matches paths lexically
   * (see `normalizePath`).
   */
  params: Readonly<Record<string, unknown>>;
  /**
   * The parameters exactly as sent to the tool, when `params` is a resolved view of them
   * (absent when they are the same); for the gateway's pseudo-tools (`resources/read`,
   * `prompts/get`, `completion/complete`…) the request's params as forwarded upstream, `_meta`
   * included. Policy plugins that look at what is forwarded — secrets, sizes — read
   * `rawParams ?? params`.
   */
  rawParams?: Readonly<Record<string, unknown>> | undefined;
  poolId?: string;
  /** The agent's labels (visible to `when` as `agent.labels`). */
  labels?: Readonly<Record<string, string>>;
  /** Anything else `when` expressions may read (as `attributes`). */
  attributes?: Readonly<Record<string, unknown>>;
}

/** The approval a `require_approval` decision asks for. */
export function approvalRequest(
  ctx: PolicyContext,
  decision: PolicyDecision,
  ttlSeconds?: number,
): ApprovalRequest {
  return {
    agentId: ctx.agentId,
    ...(ctx.poolId === undefined ? {} : { poolId: ctx.poolId }),
    tool: ctx.tool,
    // What the human sees: the view, its markers showing what the call forwards in their place.
    params: approvalParams(ctx.params, ctx.rawParams),
    policy: decision.policy,
    rule: decision.rule,
    reason: decision.reason,
    ...(ttlSeconds === undefined ? {} : { ttlSeconds }),
  };
}

/** What a {@link PolicyProvider} decides for one call. */
export interface PolicyVerdict {
  readonly action: PolicyAction;
  /** Shown to the agent's model and recorded in the audit log. */
  readonly reason?: string;
  /**
   * For a `deny` that lifts by itself (a rate limit): when the call may succeed (epoch ms). One
   * no `Date` can hold (past ±8.64e15) is dropped: the deny stands, without a retry time.
   */
  readonly retryAt?: number;
  /**
   * For a `deny` that is no judgement on the call: the catalog code the refusal carries instead
   * of `FABRIC_ERR_POLICY_DENIED`. Only `FABRIC_ERR_POLICY_UNAVAILABLE` (the policy could not be
   * asked: a policy service failed, timed out or answered nonsense) is recognised.
   */
  readonly code?: string;
}

/**
 * Code that takes part in policy decisions beside the JSON-logic rules — the `policy` plugin
 * kind. A provider answers `undefined` for calls it has no opinion on. Its verdicts compete with
 * rules by the same precedence: higher `priority` first; at equal priority deny beats
 * require_approval beats allow. `decide` must be synchronous and side-effect free: it also
 * answers `tools/list` visibility probes with empty params, and may be asked more than once about
 * one call (below, and again after a human's approval). A `decide` that throws, or answers
 * anything but `undefined` or a verdict, fails closed: a deny with `FABRIC_ERR_POLICY_UNAVAILABLE`
 * (the same refusal and audit line as a policy service that is down). Every method is handed a
 * frozen copy of the call's context (see `provider-view.ts`): a write to it throws, and changes
 * nothing that is forwarded, decided on by rules or seen by another provider.
 *
 * **Counting calls** (rate limits, loop guards): look in `decide`, count in `admitted`, which the
 * tool-call pipeline calls once per call it lets through. The pipeline keeps check and count one
 * step: `admitted` runs in the same synchronous step as a `decide` of the call, so no other call
 * is decided in between. When the call's decision was awaited (an asynchronous provider was
 * asked), every provider with `admitted` is asked `decide` again at admission (see
 * {@link PolicyEngine.recheckAdmission}); a `deny` that outranks the call's decision refuses it
 * exactly like a deny at decision time (a `require_approval` then is not acted upon). So calls
 * sent at once cannot all pass on the same unchanged count; a call that waited for budget (other
 * calls' in-flight reservations) is asked again when the budget lets it in. The exception: a call
 * a human approved is counted when it is admitted without being asked again, so calls waiting for
 * approval at once can overdraw a count by their number.
 */
export interface PolicyProvider {
  /** Unique among providers and policies; reported as the deciding `policy`. */
  readonly name: string;
  /** @default 0 */
  readonly priority?: number;
  decide(ctx: PolicyContext): PolicyVerdict | undefined;
  /**
   * For a provider that has to ask something outside the process (a policy service): decides a
   * tool call asynchronously. When a provider has it, the engine decides tool calls with
   * {@link PolicyEngine.evaluateAsync} and awaits it (only when its priority lets it matter);
   * `decide` then answers only what is known without waiting (e.g. a cached verdict), for
   * `tools/list` probes and dry runs. A rejection fails closed: a deny with
   * `FABRIC_ERR_POLICY_UNAVAILABLE`, as a `decide` that throws or an invalid verdict does.
   * `signal` aborts when the call is given up; the engine stops waiting then, whether or not the
   * provider does (a later answer is dropped). Side-effect free like `decide`.
   */
  decideAsync?(ctx: PolicyContext, signal?: AbortSignal): Promise<PolicyVerdict | undefined>;
  /**
   * The call was allowed (policy, approval and budget) and is about to be forwarded. Called for
   * every admitted call, whichever policy decided it, once (see above for when it runs). Must not
   * throw (a throw is ignored).
   */
  admitted?(ctx: PolicyContext): void;
  /**
   * Opt-in: inspects an agent's answer to an upstream's callback (a `sampling/createMessage`
   * result, `elicitation/create` content, a `roots/list` result, or the agent's error answer)
   * before the gateway sends it to the upstream that asked. Answers pass no rule (rules decide
   * tool calls); only providers with this method are asked, highest priority first, and the
   * first `deny` refuses the answer: the upstream gets a `FABRIC_ERR_CALLBACK_ANSWER_DENIED`
   * error instead, and the answer is dropped. `allow` and `undefined` are no objection. Fails
   * closed: a throw, a rejection, an invalid verdict, `require_approval` (no human can approve an
   * answer in flight) or no answer within `callbackCheckTimeoutMs` refuses the answer. `signal`
   * aborts when the upstream gives up its request, or the check runs out of time. May be
   * synchronous or return a promise.
   */
  checkCallbackAnswer?(
    ctx: CallbackAnswerContext,
    signal: AbortSignal,
  ): CallbackAnswerVerdict | undefined | Promise<CallbackAnswerVerdict | undefined>;
}

/**
 * The verdicts asynchronous providers gave on one call, by provider (see
 * {@link PolicyEngine.evaluateAgain}).
 */
export type AskedVerdicts = Map<PolicyProvider, PolicyVerdict | undefined>;

/** An audit-mode policy's verdict: what it would have decided. */
export interface PolicyAuditEntry {
  readonly policy: string;
  readonly rule: number;
  readonly action: PolicyAction;
  readonly reason: string;
}

/** The outcome of an evaluation. Frozen. */
export interface PolicyDecision {
  readonly action: PolicyAction;
  /** `action === 'allow'`. */
  readonly allowed: boolean;
  /** The deciding policy, or null when the default action applied. */
  readonly policy: string | null;
  /** Index of the deciding rule in its policy's `rules`, or null for the default action. */
  readonly rule: number | null;
  readonly reason: string;
  /** Set by {@link PolicyEngine.evaluate} when `action` is `require_approval`. */
  readonly approvalId?: string;
  /** Verdicts of matching audit-mode policies (absent when none matched). */
  readonly audit?: readonly PolicyAuditEntry[];
  /** From a provider's `deny` that lifts by itself: when to retry (epoch ms). */
  readonly retryAt?: number;
  /** From a provider's `deny` that is no judgement on the call (see {@link PolicyVerdict.code}). */
  readonly code?: string;
}

/** The data a rule's `when` expression sees. */
export interface PolicyWhenData {
  agent: { id: string; labels: Readonly<Record<string, string>> };
  tool: string;
  params: Readonly<Record<string, unknown>>;
  pool: string | null;
  /** Epoch milliseconds at evaluation. */
  now: number;
  attributes: Readonly<Record<string, unknown>>;
}

const RANK: Readonly<Record<PolicyAction, number>> = { allow: 1, require_approval: 2, deny: 3 };
const DENY_RANK = 3;
const ACTIONS: readonly PolicyAction[] = ['allow', 'deny', 'require_approval'];
const EMPTY: Readonly<Record<string, never>> = Object.freeze({});

/**
 * A provider's answer as the engine takes it. `undefined` is no opinion. Anything else that is
 * not an object with a known `action` — `null`, a string, `{ action: 'block' }` — is an invalid
 * verdict and fails closed like a provider that throws: a deny naming the provider, with
 * `FABRIC_ERR_POLICY_UNAVAILABLE` (see {@link providerFailed}). The fields are read once and only kept
 * with their documented types (a non-string `reason` gives way to the default one).
 */
function readVerdict(provider: string, raw: unknown): PolicyVerdict | undefined {
  if (raw === undefined) return undefined;
  if (raw === null || typeof raw !== 'object') {
    return unavailable(
      `policy provider ${provider} returned an invalid verdict (${raw === null ? 'null' : typeof raw})`,
    );
  }
  const { action, reason, retryAt, code } = raw as Record<string, unknown>;
  if (typeof action !== 'string' || !Object.hasOwn(RANK, action)) {
    return unavailable(`policy provider ${provider} returned an invalid action`);
  }
  return {
    action: action as PolicyAction,
    // Cut as a wire cuts it: the reason is kept in approval records, logs and the audit.
    ...(typeof reason === 'string' ? { reason: cutWireText(reason) } : {}),
    // Only a time a date can hold (a Date ends at ±8.64e15 ms): what the refusal says.
    ...(typeof retryAt === 'number' && Math.abs(retryAt) <= MAX_DATE_MS ? { retryAt } : {}),
    ...(typeof code === 'string' ? { code } : {}),
  };
}

/** The largest epoch time in milliseconds a `Date` holds. */
const MAX_DATE_MS = 8.64e15;

/**
 * The verdict of a provider that could not decide: its `decide` threw, its `decideAsync`
 * rejected, or it answered something that is no verdict. However it failed, it fails closed the
 * same way — a deny with `FABRIC_ERR_POLICY_UNAVAILABLE` (the policy could not be asked; it
 * judged nothing), so the agent's answer and the audit line do not depend on whether the
 * provider happened to be synchronous.
 */
function providerFailed(provider: string, error: unknown): PolicyVerdict {
  const message = error instanceof Error ? error.message : String(error);
  return unavailable(`policy provider ${provider} failed: ${message}`);
}

function unavailable(reason: string): PolicyVerdict {
  return { action: 'deny', code: PolicyUnavailableError.code, reason };
}

interface CompiledRule {
  readonly policy: string;
  readonly index: number;
  readonly priority: number;
  readonly seq: number;
  readonly action: PolicyAction;
  readonly rank: number;
  readonly tool: GlobMatcher;
  readonly conditions: ParamsPredicate | null;
  readonly when: ((data: PolicyWhenData) => boolean) | null;
  /** The decision this rule produces, built once. */
  readonly decision: PolicyDecision;
}

interface CompiledPolicy {
  readonly policy: NormalizedPolicy;
  readonly seq: number;
  readonly rules: readonly CompiledRule[];
}

interface Candidates {
  readonly enforce: readonly CompiledRule[];
  readonly audit: readonly CompiledRule[];
}

/**
 * Validates `options`, fills in defaults and freezes the result (without `approvals`).
 * @throws ConfigError naming the field at fault.
 */
export function parsePolicyEngineOptions(options: PolicyEngineOptions = {}): Readonly<{
  defaultAction: PolicyAction;
  toolCacheSize: number;
  callbackCheckTimeoutMs: number;
}> {
  if (options === null || typeof options !== 'object') {
    throw new ConfigError('options', 'must be an object');
  }
  for (const key of Object.keys(options)) {
    if (!['defaultAction', 'toolCacheSize', 'approvals', 'callbackCheckTimeoutMs'].includes(key)) {
      throw new ConfigError(`options.${key}`, 'is not a known option');
    }
  }
  const defaultAction = options.defaultAction ?? DEFAULT_POLICY_ACTION;
  if (!ACTIONS.includes(defaultAction)) {
    throw new ConfigError('options.defaultAction', `must be one of ${ACTIONS.join(', ')}`);
  }
  const toolCacheSize = options.toolCacheSize ?? DEFAULT_TOOL_CACHE_SIZE;
  if (!Number.isSafeInteger(toolCacheSize) || toolCacheSize < 0) {
    throw new ConfigError('options.toolCacheSize', 'must be a non-negative integer');
  }
  if (options.approvals !== undefined && !(options.approvals instanceof ApprovalManager)) {
    throw new ConfigError('options.approvals', 'must be an ApprovalManager');
  }
  const callbackCheckTimeoutMs =
    options.callbackCheckTimeoutMs ?? DEFAULT_CALLBACK_CHECK_TIMEOUT_MS;
  // A timer's longest delay (Node fires a longer one at once).
  if (
    !Number.isSafeInteger(callbackCheckTimeoutMs) ||
    callbackCheckTimeoutMs < 1 ||
    callbackCheckTimeoutMs > 2_147_483_647
  ) {
    throw new ConfigError(
      'options.callbackCheckTimeoutMs',
      'must be an integer from 1 to 2147483647 (milliseconds)',
    );
  }
  return Object.freeze({ defaultAction, toolCacheSize, callbackCheckTimeoutMs });
}

/**
 * Evaluates tool calls against prioritized policies.
 *
 * **Precedence.** Policies are evaluated by `priority`, highest number first. The first priority
 * level that has a matching rule decides; within that level `deny` beats `require_approval`
 * beats `allow` (ties: the policy added first, then the rule listed first). Disabled policies
 * and audit-mode policies never decide. When nothing matches, `defaultAction` applies
 * (`deny` unless configured).
 *
 * Policies are validated and compiled when added (tool globs into matchers, conditions and
 * `when` into closures), so evaluation never meets a malformed rule. {@link evaluateSync} is the
 * allocation-free hot path; {@link evaluate} also creates the approval a `require_approval`
 * decision asks for.
 *
 * @example
 * const engine = new PolicyEngine();
 * engine.addPolicy({
 *   name: 'files',
 *   rules: [
 *     { tool: 'file_write', action: 'deny', conditions: { path: '/etc/*' } },
 *     { tool: 'file_*', action: 'allow' },
 *   ],
 * });
 * engine.evaluateSync({ agentId: 'a1', tool: 'file_write', params: { path: '/etc/passwd' } }).action; // 'deny'
 */
export class PolicyEngine {
  readonly #options: Readonly<{
    defaultAction: PolicyAction;
    toolCacheSize: number;
    callbackCheckTimeoutMs: number;
  }>;
  readonly #approvals: ApprovalManager;
  readonly #ownsApprovals: boolean;
  readonly #policies = new Map<string, CompiledPolicy>();
  /** True while {@link persistTo} applies the changes an earlier run stored. */
  #restoring = false;
  readonly #defaultDecision: PolicyDecision;
  readonly #cache: LRUCache<string, Candidates> | undefined;
  #seq = 0;
  /** Providers, highest priority first. */
  #providers: {
    readonly provider: PolicyProvider;
    readonly priority: number;
    /** Its name when it was added (what it answers as and is removed by, whatever it says later). */
    readonly name: string;
  }[] = [];
  /** What providers were handed about a context (see {@link #seen}), by context. */
  #views = new WeakMap<
    PolicyContext,
    { params: PolicyContext['params']; rawParams: PolicyContext['rawParams']; view: PolicyContext }
  >();
  /** The providers with `admitted` (most have none: the hot path skips an empty list). */
  #admitting: {
    readonly provider: PolicyProvider;
    readonly priority: number;
    /** Its name when it was added (what it answers as and is removed by, whatever it says later). */
    readonly name: string;
  }[] = [];
  /** How many providers have `decideAsync`. */
  #async = 0;
  /** The providers with `checkCallbackAnswer`, highest priority first. */
  #answerCheckers: PolicyProvider[] = [];
  /** Enabled rules, in evaluation order, split by mode. */
  #all: Candidates = { enforce: [], audit: [] };
  /** The lowest priority of a rule that hides tools (see {@link askAsLikeHidden}). */
  #hidingFloor: number | undefined;
  /** Told after each change of the rules (see {@link onRulesChanged}). */
  readonly #ruleListeners = new Set<() => void>();
  /** Counts the changes of the rules (see {@link rulesVersion}). */
  #rulesVersion = 0;
  /** Where policy changes are written once {@link persistTo} ran, and the next change's `seq`. */
  #persist:
    | {
        store: Collection<PolicyChangeRecord>;
        seq: number;
        /** The policies registered at start (see `PolicyChangeRecord.basis`), by name. */
        base: Map<string, string>;
      }
    | undefined;

  constructor(options: PolicyEngineOptions = {}) {
    this.#options = parsePolicyEngineOptions(options);
    this.#ownsApprovals = options.approvals === undefined;
    this.#approvals = options.approvals ?? new ApprovalManager();
    this.#cache =
      this.#options.toolCacheSize > 0
        ? new LRUCache<string, Candidates>({ max: this.#options.toolCacheSize })
        : undefined;
    const action = this.#options.defaultAction;
    this.#defaultDecision = Object.freeze({
      action,
      allowed: action === 'allow',
      policy: null,
      rule: null,
      reason: `no policy rule matched; default action is ${action}`,
    });
  }

  /** The approval manager {@link evaluate} creates approvals in. */
  get approvals(): ApprovalManager {
    return this.#approvals;
  }

  /** The configured default action. */
  get defaultAction(): PolicyAction {
    return this.#options.defaultAction;
  }

  /**
   * Validates, compiles and registers a policy. With `{ replace: true }` an existing policy of
   * the same name is replaced atomically (it keeps its place among equal priorities).
   *
   * @returns the stored policy (defaults filled in, frozen).
   * @throws PolicyValidationError naming the policy, rule index and field: bad structure or
   *   action, malformed tool or condition glob, unknown JSON-logic operator.
   * @throws PolicyExistsError when the name is taken and `replace` is not set.
   */
  addPolicy(policy: unknown, options: { replace?: boolean } = {}): NormalizedPolicy {
    const normalized = parsePolicy(policy);
    const existing = this.#policies.get(normalized.name);
    if (existing !== undefined && options.replace !== true) {
      throw new PolicyExistsError(normalized.name);
    }
    // Policies and providers share one namespace (addProvider refuses a policy's name): a
    // policy named as a provider made decisions and audit lines name either. A change stored
    // by an earlier run is still applied (persistTo), so such a state file keeps starting.
    if (
      existing === undefined &&
      !this.#restoring &&
      this.#providers.some((p) => p.name === normalized.name)
    ) {
      throw new PolicyExistsError(normalized.name, true);
    }
    const seq = existing?.seq ?? this.#seq;
    const compiled: CompiledPolicy = {
      policy: normalized,
      seq,
      rules: normalized.rules.map((_, i) => compileRule(normalized, i, seq)),
    };
    // Valid: stored (committed) before it takes effect, so what the caller is told took effect
    // is on disk, and a change the store refuses takes no effect.
    if (this.#persist !== undefined)
      this.#store(normalized.name, normalized, existing !== undefined);
    if (existing === undefined) this.#seq++;
    this.#policies.set(normalized.name, compiled);
    this.#rebuild();
    return normalized;
  }

  /**
   * Writes the change of policy `name` to the store of {@link persistTo} (committed when the
   * store is durable). `policy` undefined: removed; `replacing`: a registered policy is
   * replaced. On a failed write the store's record is put back as it was and the error thrown.
   */
  #store(name: string, policy: NormalizedPolicy | undefined, replacing: boolean): void {
    const persist = this.#persist!;
    const previous = persist.store.get(name);
    const at = new Date().toISOString();
    let record: PolicyChangeRecord | undefined;
    const basis = persist.base.get(name) ?? null;
    if (policy === undefined) {
      // A policy that was not registered at start leaves nothing to remove at the next start:
      // its record goes; one that was gets a tombstone.
      record =
        basis !== null ? { name, seq: persist.seq, change: 'removed', at, basis } : undefined;
    } else if (replacing && previous?.change === 'added') {
      record = { name, seq: previous.seq, change: 'added', policy, at, basis }; // keeps its place
    } else {
      const change = replacing ? 'replaced' : 'added';
      record = { name, seq: persist.seq, change, policy, at, basis };
    }
    try {
      if (record === undefined) persist.store.delete(name);
      else persist.store.put(name, record);
    } catch (error) {
      try {
        if (previous === undefined) persist.store.delete(name);
        else persist.store.put(name, previous);
      } catch {
        // The store is failing: the error below says so.
      }
      throw error;
    }
    if (record !== undefined && record.seq === persist.seq) persist.seq++;
  }

  /**
   * Makes the policy changes from now on durable: applies the changes `store` holds (written by
   * an earlier run) on top of the policies registered now — the start-up ones, such as a config
   * file's — in the order they were made, then writes every later {@link addPolicy} (replace
   * included) and {@link removePolicy} to `store` before it takes effect. A stored policy
   * replaces a registered one of the same name; a stored removal (tombstone) removes it; a
   * tombstone whose policy is no longer registered is forgotten; a change made against another
   * registered policy of its name (or none) than the one registered now is forgotten too: the
   * start-up one was edited since, and stands (`superseded`). Policies registered now and never
   * changed later are not stored. Call it once, after the start-up policies are added.
   *
   * @returns the stored changes it applied, in order (for the start-up log).
   * @throws StateStoreError naming the policy when a stored one no longer validates (written by
   *   another version, or edited): nothing is applied then, and nothing is written.
   */
  persistTo(store: Collection<PolicyChangeRecord>, where = 'state'): AppliedPolicyChange[] {
    if (this.#persist !== undefined) {
      throw new ConfigError('persistTo', 'policy changes are already persisted');
    }
    const records = [...store.values()];
    // Every stored record is checked before anything is applied.
    for (const r of records) {
      const name = typeof r?.name === 'string' ? r.name : '<unnamed>';
      const bad = (why: string, cause?: unknown): StateStoreError =>
        new StateStoreError(
          where,
          `policy ${JSON.stringify(name)} (changed at run time${typeof r?.at === 'string' ? ` at ${r.at}` : ''}) no longer validates: ${why}; the fabric does not start without it (start the version that wrote it and remove or replace the policy, or delete its record: kind 'policy', id ${JSON.stringify(name)})`,
          cause === undefined ? undefined : { cause },
        );
      if (
        r === null ||
        typeof r !== 'object' ||
        !Number.isSafeInteger(r.seq) ||
        typeof r.name !== 'string' ||
        store.get(r.name) !== r
      ) {
        throw bad('the record is malformed');
      }
      if (r.change === 'removed') continue;
      if (r.change !== 'added' && r.change !== 'replaced') throw bad('unknown kind of change');
      let parsed: NormalizedPolicy;
      try {
        parsed = parsePolicy(r.policy);
        parsed.rules.forEach((_, i) => compileRule(parsed, i, 0));
      } catch (error) {
        throw bad(error instanceof Error ? error.message : String(error), error);
      }
      if (parsed.name !== name) throw bad(`it names itself ${JSON.stringify(parsed.name)}`);
    }
    records.sort((a, b) => a.seq - b.seq);
    const base = new Map<string, string>();
    for (const [name, c] of this.#policies) base.set(name, policyDigest(c.policy));
    const applied: AppliedPolicyChange[] = [];
    let seq = 0;
    this.#restoring = true;
    try {
      seq = this.#applyStored(records, base, applied, store);
    } finally {
      this.#restoring = false;
    }
    this.#persist = { store, seq, base };
    return applied;
  }

  /** Applies `records` (sorted, checked) for {@link persistTo}; returns the next sequence. */
  #applyStored(
    records: readonly PolicyChangeRecord[],
    base: ReadonlyMap<string, string>,
    applied: AppliedPolicyChange[],
    store: Collection<PolicyChangeRecord>,
  ): number {
    let seq = 0;
    for (const r of records) {
      const name = r.name;
      seq = Math.max(seq, r.seq + 1);
      // Made against another start-up policy of its name (or none): the config changed since,
      // and its later edit wins.
      // (A removal of a policy the config dropped since is `dropped` below: the same outcome.)
      const now = base.get(name) ?? null;
      if (r.basis !== undefined && r.basis !== now && !(r.change === 'removed' && now === null)) {
        store.delete(name);
        applied.push({ name, effect: 'superseded', at: r.at });
        continue;
      }
      if (r.change === 'removed') {
        if (this.removePolicy(name)) applied.push({ name, effect: 'removed', at: r.at });
        else {
          store.delete(name);
          applied.push({ name, effect: 'dropped', at: r.at });
        }
        continue;
      }
      const registered = this.#policies.has(name);
      // An addition goes after the others, as it did when it was made (a start-up policy of
      // its name was removed first, then); a replacement takes the start-up policy's place.
      if (registered && r.change === 'added') this.removePolicy(name);
      this.addPolicy(r.policy, { replace: true });
      applied.push({ name, effect: registered ? 'replaced' : 'added', at: r.at });
    }
    return seq;
  }

  /**
   * What providers are asked about `ctx`: a frozen copy of its policy fields (see
   * `provider-view.ts`), made once per context — a provider that writes over it changes neither
   * the call that is forwarded, nor the rules' view, nor what the next provider sees.
   */
  #seen(ctx: PolicyContext): PolicyContext {
    const known = this.#views.get(ctx);
    if (known !== undefined && known.params === ctx.params && known.rawParams === ctx.rawParams) {
      return known.view;
    }
    const view: PolicyContext = Object.freeze({
      agentId: ctx.agentId,
      tool: ctx.tool,
      params: frozenCopy(ctx.params),
      ...(ctx.rawParams === undefined ? {} : { rawParams: frozenCopy(ctx.rawParams) }),
      ...(ctx.poolId === undefined ? {} : { poolId: ctx.poolId }),
      ...(ctx.labels === undefined ? {} : { labels: frozenCopy(ctx.labels) }),
      ...(ctx.attributes === undefined ? {} : { attributes: frozenCopy(ctx.attributes) }),
    });
    this.#views.set(ctx, { params: ctx.params, rawParams: ctx.rawParams, view });
    return view;
  }

  /**
   * Adds a {@link PolicyProvider} (a policy plugin).
   * @throws PolicyExistsError when a policy or provider already has its name.
   * @throws PolicyValidationError for a malformed provider.
   */
  addProvider(provider: PolicyProvider): void {
    if (
      provider === null ||
      typeof provider !== 'object' ||
      typeof provider.decide !== 'function'
    ) {
      throw new PolicyValidationError('provider', 'decide', 'must be a function');
    }
    // Read once: what it answers as and is removed by, whatever its `name` says later.
    const name: unknown = provider.name;
    if (typeof name !== 'string' || name.length === 0) {
      throw new PolicyValidationError('provider', 'name', 'must be a non-empty string');
    }
    const priority = provider.priority ?? 0;
    if (!Number.isFinite(priority)) {
      throw new PolicyValidationError(name, 'priority', 'must be a finite number');
    }
    if (this.#policies.has(name) || this.#providers.some((p) => p.name === name)) {
      throw new PolicyExistsError(name);
    }
    if (provider.admitted !== undefined && typeof provider.admitted !== 'function') {
      throw new PolicyValidationError(name, 'admitted', 'must be a function');
    }
    if (provider.decideAsync !== undefined && typeof provider.decideAsync !== 'function') {
      throw new PolicyValidationError(name, 'decideAsync', 'must be a function');
    }
    if (
      provider.checkCallbackAnswer !== undefined &&
      typeof provider.checkCallbackAnswer !== 'function'
    ) {
      throw new PolicyValidationError(name, 'checkCallbackAnswer', 'must be a function');
    }
    this.#providers = [...this.#providers, { provider, priority, name }].sort(
      (a, b) => b.priority - a.priority,
    );
    this.#indexProviders();
    this.#changed();
  }

  #indexProviders(): void {
    this.#admitting = this.#providers.filter((p) => p.provider.admitted !== undefined);
    this.#async = this.#providers.filter((p) => p.provider.decideAsync !== undefined).length;
    this.#answerCheckers = this.#providers
      .filter((p) => p.provider.checkCallbackAnswer !== undefined)
      .map((p) => p.provider);
  }

  /** True when a provider checks agents' answers to upstream callbacks (`checkCallbackAnswer`). */
  get hasCallbackAnswerChecks(): boolean {
    return this.#answerCheckers.length > 0;
  }

  /**
   * Asks the providers with `checkCallbackAnswer` about an agent's answer to an upstream's
   * callback (see {@link PolicyProvider.checkCallbackAnswer}): allowed unless one denies it;
   * fails closed. Rules take no part.
   * @throws the reason of `signal` when it aborts first (the answer then goes nowhere).
   */
  checkCallbackAnswer(
    ctx: CallbackAnswerContext,
    signal: AbortSignal,
  ): Promise<CallbackAnswerDecision> {
    const checkers = this.#answerCheckers;
    if (checkers.length === 0) return Promise.resolve(CALLBACK_ANSWER_UNCHECKED);
    // A frozen copy, as for tool calls (see #seen): the upstream gets the answer as it came.
    return checkCallbackAnswer(checkers, frozenCopy(ctx), {
      signal,
      timeoutMs: this.#options.callbackCheckTimeoutMs,
    });
  }

  /**
   * True when a provider decides asynchronously (`decideAsync`): tool calls must then be decided
   * with {@link evaluateAsync} (or {@link evaluate}); {@link evaluateSync} answers for such a
   * provider only what it knows without waiting.
   */
  get hasAsyncProviders(): boolean {
    return this.#async > 0;
  }

  /** Removes a provider. Returns false when none has that name. */
  removeProvider(name: string): boolean {
    const before = this.#providers.length;
    this.#providers = this.#providers.filter((p) => p.name !== name);
    this.#indexProviders();
    const removed = this.#providers.length !== before;
    if (removed) this.#changed();
    return removed;
  }

  /** Removes a policy. Returns false when no policy has that name. */
  removePolicy(name: string): boolean {
    if (!this.#policies.has(name)) return false;
    if (this.#persist !== undefined) this.#store(name, undefined, true);
    this.#policies.delete(name);
    this.#rebuild();
    return true;
  }

  /**
   * Calls `listener` after every change of the rules — a policy added, replaced or removed, or a
   * provider (which may outrank a rule) added or removed — once the change is in effect (what depends on the rules, such as the tools the gateway
   * lists to an agent, is then recomputed). A listener that throws is ignored. Returns the
   * function that stops it.
   */
  onRulesChanged(listener: () => void): () => void {
    const own = (): void => listener();
    this.#ruleListeners.add(own);
    return () => {
      this.#ruleListeners.delete(own);
    };
  }

  /**
   * A number that changes with every change of the rules (a policy added, replaced or removed, a
   * provider added or removed): a decision made at one version may be stale at another. The
   * authorizer compares it across a human's approval wait.
   */
  get rulesVersion(): number {
    return this.#rulesVersion;
  }

  /** The policy with this name, if any. */
  getPolicy(name: string): NormalizedPolicy | undefined {
    return this.#policies.get(name)?.policy;
  }

  /** Every policy (including disabled ones), in evaluation order. */
  listPolicies(): NormalizedPolicy[] {
    return [...this.#policies.values()].sort(byOrder).map((c) => c.policy);
  }

  /**
   * Decides a tool call. Synchronous, and allocation-free unless audit policies match.
   * A `require_approval` decision carries no approval id: use {@link evaluate} (or
   * `approvals.create`) to open one. A provider with `decideAsync` is not awaited: its `decide`
   * answers (see {@link hasAsyncProviders}).
   */
  evaluateSync(ctx: PolicyContext): PolicyDecision {
    const candidates = this.#candidates(ctx.tool);
    const best = this.#bestRule(ctx, candidates);
    let decision = best === undefined ? this.#defaultDecision : best.decision;
    if (this.#providers.length > 0) decision = this.#consultProviders(ctx, best, decision);
    return this.#withAudit(ctx, candidates, decision);
  }

  /**
   * {@link evaluateSync} with every provider's `deny` taken as no opinion (as
   * {@link evaluateAgain} takes them), without audit-mode verdicts: what the rules decide unless
   * a provider outranks them with an `allow` or a `require_approval`. `AgentFabric.isToolVisible`
   * judges `tools/list` visibility by it, so a provider that fails (a `decide` that throws, a
   * cached failure) or denies does not change which tools the rules hide from an agent — a
   * failing provider above a rule that hides a tool made the tool visible.
   */
  evaluateWithoutProviderDenies(ctx: PolicyContext): PolicyDecision {
    return this.#withoutProviderDenies(ctx, this.#candidates(ctx.tool));
  }

  #withoutProviderDenies(ctx: PolicyContext, candidates: Candidates): PolicyDecision {
    const best = this.#bestRule(ctx, candidates);
    const decision = best === undefined ? this.#defaultDecision : best.decision;
    if (this.#providers.length === 0) return decision;
    return this.#consultProviders(ctx, best, decision, undefined, true);
  }

  /**
   * {@link evaluateSync}, awaiting the providers that decide asynchronously (`decideAsync`) —
   * those whose priority can still change the outcome, all at once. A provider that rejects
   * fails closed (deny, `FABRIC_ERR_POLICY_UNAVAILABLE`). With `asked`, the verdicts are kept
   * there (see {@link evaluateAgain}).
   * @throws `signal.reason` when `signal` aborts while a provider is asked.
   */
  evaluateAsync(
    ctx: PolicyContext,
    signal?: AbortSignal,
    asked?: AskedVerdicts,
  ): Promise<PolicyDecision> {
    return this.#evaluateAsync(ctx, signal, false, asked);
  }

  /**
   * The decision of a call that was let through before the rules changed — decided again by the
   * rules as they are now ({@link evaluateAsync}), with every provider's `deny` taken as no
   * opinion: a provider's deny (a rate limit, a policy service that failed) does not refuse an
   * approved call (see {@link PolicyProvider}), and must not hide the deny of a rule below it
   * either. A provider's `allow` or `require_approval` still outranks lower rules. `asked`: the
   * verdicts the asynchronous providers (a policy service) already gave on this same call
   * ({@link evaluateAsync}'s): what they said is about the call, not about the rules, so they
   * are not asked again — only a provider not in it is (added since, or one whose priority did
   * not matter before), and its verdict is added.
   * @throws `signal.reason` when `signal` aborts while a provider is asked.
   */
  evaluateAgain(
    ctx: PolicyContext,
    signal?: AbortSignal,
    asked?: AskedVerdicts,
  ): Promise<PolicyDecision> {
    return this.#evaluateAsync(ctx, signal, true, asked);
  }

  async #evaluateAsync(
    ctx: PolicyContext,
    signal: AbortSignal | undefined,
    noProviderDenies: boolean,
    asked: AskedVerdicts | undefined,
  ): Promise<PolicyDecision> {
    if (this.#async === 0) {
      if (!noProviderDenies) return this.evaluateSync(ctx);
      const candidates = this.#candidates(ctx.tool);
      return this.#withAudit(ctx, candidates, this.#withoutProviderDenies(ctx, candidates));
    }
    // A call given up already asks no provider (a remote one would work on it for nothing).
    signal?.throwIfAborted();
    const candidates = this.#candidates(ctx.tool);
    const best = this.#bestRule(ctx, candidates);
    const ruleDecision = best === undefined ? this.#defaultDecision : best.decision;
    const priority = best?.priority ?? Number.NEGATIVE_INFINITY;
    const rank = best?.rank ?? 0;
    const verdicts: AskedVerdicts = asked ?? new Map();
    const seen = this.#seen(ctx);
    const answered = Promise.all(
      this.#providers
        .filter(
          ({ provider, priority: p }) =>
            provider.decideAsync !== undefined &&
            !verdicts.has(provider) &&
            (p > priority || (p === priority && rank !== DENY_RANK)),
        )
        .map(async ({ provider, name }) => {
          let verdict: PolicyVerdict | undefined;
          try {
            verdict = await provider.decideAsync!(seen, signal);
          } catch (err) {
            verdict = providerFailed(name, err);
          }
          verdicts.set(provider, verdict);
        }),
    );
    // Not bound by the slowest provider: one that ignores `signal` (or never answers) would
    // hold a call its caller gave up — and what the call holds — for as long as it takes.
    await untilAborted(answered, signal);
    signal?.throwIfAborted();
    const decision = this.#consultProviders(ctx, best, ruleDecision, verdicts, noProviderDenies);
    return this.#withAudit(ctx, candidates, decision);
  }

  /**
   * For a tool call that cannot be made (the tool does not exist): asks what would be asked had
   * a rule hidden the tool, and resolves once every answer is in or `signal` aborts (a late
   * answer is dropped too); the answers are dropped, and it never rejects. The asynchronous providers that outrank the lowest rule that hides tools
   * (an enforced `deny` without conditions or `when`) are asked about `ctx`, all at once — those
   * a call of a hidden tool waits for (all of them when the providers sit above every such rule,
   * the common setup; none when below). `undefined`, at no cost, when none would be asked or
   * `signal` has aborted already.
   */
  askAsLikeHidden(ctx: PolicyContext, signal?: AbortSignal): Promise<void> | undefined {
    const floor = this.#hidingFloor;
    if (this.#async === 0 || floor === undefined || signal?.aborted === true) return undefined;
    const asked: Promise<unknown>[] = [];
    for (const { provider, priority } of this.#providers) {
      if (priority <= floor) break;
      if (provider.decideAsync === undefined) continue;
      try {
        asked.push(provider.decideAsync(this.#seen(ctx), signal).catch(() => undefined));
      } catch {
        // A provider that throws instead of rejecting answered at once.
      }
    }
    if (asked.length === 0) return undefined;
    // Not bound by a provider that ignores `signal` either (see #evaluateAsync): a given-up
    // call of an unknown tool held its caller's slot forever where a hidden tool's did not.
    return untilAborted(Promise.all(asked), signal).then(
      () => undefined,
      () => undefined,
    );
  }

  #candidates(tool: string): Candidates {
    const cached = this.#cache?.get(tool);
    return cached ?? (this.#cache ? this.#index(tool) : this.#all);
  }

  /** The deciding enforce-mode rule, by precedence (undefined: the default action applies). */
  #bestRule(ctx: PolicyContext, candidates: Candidates): CompiledRule | undefined {
    const tool = ctx.tool;
    const filtered = this.#cache !== undefined;
    const params = ctx.params ?? EMPTY;
    let data: PolicyWhenData | undefined;
    let best: CompiledRule | undefined;
    const enforce = candidates.enforce;
    for (let i = 0; i < enforce.length; i++) {
      const r = enforce[i]!;
      if (best !== undefined) {
        if (r.priority < best.priority) break;
        if (r.rank <= best.rank) continue;
      }
      if (!filtered && !r.tool.test(tool)) continue;
      if (r.conditions !== null && !r.conditions(params, ctx.rawParams)) continue;
      if (r.when !== null && !r.when((data ??= whenData(ctx)))) continue;
      best = r;
      if (r.rank === DENY_RANK) break;
    }
    return best;
  }

  #withAudit(ctx: PolicyContext, candidates: Candidates, decision: PolicyDecision): PolicyDecision {
    if (candidates.audit.length === 0) return decision;
    const audit = this.#audit(
      candidates.audit,
      ctx,
      ctx.params ?? EMPTY,
      this.#cache !== undefined,
      undefined,
    );
    return audit === undefined ? decision : Object.freeze({ ...decision, audit });
  }

  /**
   * Decides a tool call; for `require_approval` also creates a pending approval in
   * {@link approvals} and returns its id as `decision.approvalId`.
   */
  async evaluate(
    ctx: PolicyContext,
    options: { ttlSeconds?: number } = {},
  ): Promise<PolicyDecision> {
    const decision = await this.evaluateAsync(ctx);
    if (decision.action !== 'require_approval') return decision;
    const approval = this.#approvals.create(approvalRequest(ctx, decision, options.ttlSeconds));
    return Object.freeze({ ...decision, approvalId: approval.id });
  }

  /**
   * Lets providers outrank or join the rule decision, by the same precedence as rules. A
   * provider's verdict is taken from `verdicts` when it is there (asked asynchronously), else
   * from its `decide`. With `noDenies`, a provider's `deny` is no opinion (see
   * {@link evaluateAgain}).
   */
  #consultProviders(
    ctx: PolicyContext,
    best: CompiledRule | undefined,
    ruleDecision: PolicyDecision,
    verdicts?: ReadonlyMap<PolicyProvider, PolicyVerdict | undefined>,
    noDenies = false,
  ): PolicyDecision {
    let decision = ruleDecision;
    let priority = best?.priority ?? Number.NEGATIVE_INFINITY;
    let rank = best?.rank ?? 0;
    for (const { provider, priority: p, name } of this.#providers) {
      if (p < priority || (p === priority && rank === DENY_RANK)) break;
      let verdict: PolicyVerdict | undefined;
      try {
        verdict = readVerdict(
          name,
          verdicts !== undefined && verdicts.has(provider)
            ? verdicts.get(provider)
            : provider.decide(this.#seen(ctx)),
        );
      } catch (err) {
        verdict = providerFailed(name, err);
      }
      if (verdict === undefined || (noDenies && verdict.action === 'deny')) continue;
      const vr = RANK[verdict.action];
      if (p > priority || vr > rank) {
        priority = p;
        rank = vr;
        decision = Object.freeze({
          action: verdict.action,
          allowed: verdict.action === 'allow',
          policy: name,
          rule: null,
          reason: verdict.reason ?? `${verdict.action} by policy provider ${name}`,
          ...(verdict.action === 'deny' && Number.isFinite(verdict.retryAt)
            ? { retryAt: verdict.retryAt! }
            : {}),
          ...(verdict.action === 'deny' && verdict.code === PolicyUnavailableError.code
            ? { code: verdict.code }
            : {}),
        });
      }
    }
    return decision;
  }

  /** Tells every provider with `admitted` that the call is going through. */
  admitted(ctx: PolicyContext): void {
    const list = this.#admitting;
    if (list.length === 0) return;
    const seen = this.#seen(ctx);
    for (const { provider } of list) {
      try {
        provider.admitted!(seen);
      } catch {
        // A counter that fails must not fail a call policy already let through.
      }
    }
  }

  /**
   * Asks the providers that count calls (those with `admitted`) again about a call that
   * `decision` (an allow) let through before something was awaited — {@link evaluateAsync}
   * asked a policy service — so that, called in the same synchronous step as {@link admitted},
   * their check and their count are one step with respect to every other call. Only providers
   * whose priority lets a deny outrank `decision` are asked; a throw or an invalid verdict fails
   * closed, as in {@link evaluateSync}; any verdict but a deny leaves the call to `decision`.
   * @returns the deny that now decides the call, shaped as {@link evaluateSync} shapes a
   *   provider's deny; undefined when the call may go through.
   */
  recheckAdmission(ctx: PolicyContext, decision: PolicyDecision): PolicyDecision | undefined {
    const list = this.#admitting;
    if (list.length === 0) return undefined;
    const floor = this.#priorityOf(decision);
    for (const { provider, priority, name } of list) {
      if (priority < floor) break;
      let verdict: PolicyVerdict | undefined;
      try {
        verdict = readVerdict(name, provider.decide(this.#seen(ctx)));
      } catch (err) {
        verdict = providerFailed(name, err);
      }
      // Any verdict but a deny leaves the call to `decision` (no human is asked at admission).
      if (verdict?.action === 'deny') return providerDeny(name, verdict);
    }
    return undefined;
  }

  /** The priority `decision` was made at: its policy's or provider's (-Infinity: the default). */
  #priorityOf(decision: PolicyDecision): number {
    const name = decision.policy;
    if (name === null) return Number.NEGATIVE_INFINITY;
    for (const p of this.#providers) if (p.name === name) return p.priority;
    // A policy removed since the decision: every counting provider is asked.
    return this.#policies.get(name)?.policy.priority ?? Number.NEGATIVE_INFINITY;
  }

  /** Closes the approval manager if the engine created it. */
  close(): void {
    if (this.#ownsApprovals) this.#approvals.close();
  }

  #audit(
    rules: readonly CompiledRule[],
    ctx: PolicyContext,
    params: Readonly<Record<string, unknown>>,
    filtered: boolean,
    data: PolicyWhenData | undefined,
  ): PolicyAuditEntry[] | undefined {
    let out: PolicyAuditEntry[] | undefined;
    // Rules arrive grouped by policy; report each audit policy's own verdict.
    let current: string | undefined;
    let best: CompiledRule | undefined;
    const flush = (): void => {
      if (best === undefined) return;
      (out ??= []).push(
        Object.freeze({
          policy: best.policy,
          rule: best.index,
          action: best.action,
          reason: best.decision.reason,
        }),
      );
      best = undefined;
    };
    for (const r of rules) {
      if (r.policy !== current) {
        flush();
        current = r.policy;
      }
      if (best !== undefined && r.rank <= best.rank) continue;
      if (!filtered && !r.tool.test(ctx.tool)) continue;
      if (r.conditions !== null && !r.conditions(params, ctx.rawParams)) continue;
      if (r.when !== null && !r.when((data ??= whenData(ctx)))) continue;
      best = r;
    }
    flush();
    return out === undefined ? undefined : (Object.freeze(out) as PolicyAuditEntry[]);
  }

  #index(tool: string): Candidates {
    const enforce = this.#all.enforce.filter((r) => r.tool.test(tool));
    const audit = this.#all.audit.filter((r) => r.tool.test(tool));
    const c: Candidates = { enforce, audit };
    this.#cache!.set(tool, c);
    return c;
  }

  #rebuild(): void {
    const enforce: CompiledRule[] = [];
    const audit: CompiledRule[] = [];
    for (const c of [...this.#policies.values()].sort(byOrder)) {
      if (!c.policy.enabled) continue;
      (c.policy.mode === 'audit' ? audit : enforce).push(...c.rules);
    }
    this.#all = { enforce, audit };
    this.#hidingFloor = undefined;
    for (const r of enforce) {
      if (r.action === 'deny' && r.conditions === null && r.when === null) {
        this.#hidingFloor = Math.min(r.priority, this.#hidingFloor ?? Infinity);
      }
    }
    this.#cache?.clear();
    this.#changed();
  }

  /** Tells the {@link onRulesChanged} listeners. */
  #changed(): void {
    this.#rulesVersion++;
    for (const listener of this.#ruleListeners) {
      try {
        listener();
      } catch {
        // A listener's failure is its own: the rules changed all the same.
      }
    }
  }
}

/**
 * Checks a policy as {@link PolicyEngine.addPolicy} does — parsed, every rule compiled — without
 * registering it anywhere: for a caller that must refuse a bad policy before it makes anything
 * (the sidecar, before it creates its state file).
 * @returns the policy with its defaults filled in, as `addPolicy` would store it.
 * @throws PolicyValidationError naming the policy, rule index and field.
 */
export function validatePolicy(policy: unknown): NormalizedPolicy {
  const normalized = parsePolicy(policy);
  for (let i = 0; i < normalized.rules.length; i++) compileRule(normalized, i, 0);
  return normalized;
}

/** A provider's deny as a decision (the shape {@link PolicyEngine.evaluateSync} gives it). */
function providerDeny(name: string, verdict: PolicyVerdict): PolicyDecision {
  return Object.freeze({
    action: 'deny',
    allowed: false,
    policy: name,
    rule: null,
    reason: verdict.reason ?? `deny by policy provider ${name}`,
    ...(Number.isFinite(verdict.retryAt) ? { retryAt: verdict.retryAt! } : {}),
    ...(verdict.code === PolicyUnavailableError.code ? { code: verdict.code } : {}),
  });
}

function byOrder(a: CompiledPolicy, b: CompiledPolicy): number {
  return b.policy.priority - a.policy.priority || a.seq - b.seq;
}

function whenData(ctx: PolicyContext): PolicyWhenData {
  return {
    agent: { id: ctx.agentId, labels: ctx.labels ?? EMPTY },
    tool: ctx.tool,
    params: ctx.params ?? EMPTY,
    pool: ctx.poolId ?? null,
    now: Date.now(),
    attributes: ctx.attributes ?? EMPTY,
  };
}

function compileRule(policy: NormalizedPolicy, index: number, seq: number): CompiledRule {
  const rule = policy.rules[index]!;
  const restrictive = rule.action !== 'allow';
  let tool: GlobMatcher;
  let conditions: ParamsPredicate | null = null;
  let when: ((data: PolicyWhenData) => boolean) | null = null;
  try {
    tool = compileGlob(rule.tool);
  } catch (err) {
    throw invalid(policy.name, index, 'tool', err);
  }
  if (rule.conditions !== undefined) {
    try {
      conditions = compileConditions(rule.conditions, restrictive);
    } catch (err) {
      throw invalid(policy.name, index, 'conditions', err);
    }
  }
  if (rule.when !== undefined) {
    let f: (data: unknown) => unknown;
    try {
      f = compileJsonLogic(rule.when);
    } catch (err) {
      const path = err instanceof JsonLogicCompileError && err.path ? `when.${err.path}` : 'when';
      throw invalid(policy.name, index, path, err);
    }
    // An expression that throws at run time fails closed: it matches a deny or
    // require_approval rule and does not match an allow rule.
    when = (data) => {
      try {
        return truthy(f(data));
      } catch {
        return restrictive;
      }
    };
  }
  const reason =
    rule.reason ??
    `${rule.action} by policy ${JSON.stringify(policy.name)} rule ${index} (tool ${JSON.stringify(rule.tool)})`;
  return Object.freeze({
    policy: policy.name,
    index,
    priority: policy.priority,
    seq,
    action: rule.action,
    rank: RANK[rule.action],
    tool,
    conditions,
    when,
    decision: Object.freeze({
      action: rule.action,
      allowed: rule.action === 'allow',
      policy: policy.name,
      rule: index,
      reason,
    }),
  });
}

function invalid(policy: string, rule: number, field: string, err: unknown): PolicyValidationError {
  const message =
    err instanceof JsonLogicCompileError
      ? err.reason
      : err instanceof GlobSyntaxError
        ? err.message
        : String((err as Error)?.message ?? err);
  return new PolicyValidationError(policy, `rules[${rule}].${field}`, message, rule);
}

/**
 * `work`, or a rejection with `signal.reason` as soon as `signal` aborts (`work` then goes on,
 * its result dropped). One listener while it waits, removed when it settles.
 */
function untilAborted<T>(work: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (signal === undefined) return work;
  if (signal.aborted) return Promise.reject(signal.reason as Error);
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => reject(signal.reason as Error);
    signal.addEventListener('abort', onAbort, { once: true });
    work.then(
      (value) => {
        signal.removeEventListener('abort', onAbort);
        resolve(value);
      },
      (err: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(err as Error);
      },
    );
  });
}

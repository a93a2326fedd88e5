/**
 * Human approvals: a `require_approval` decision becomes a pending approval that a person
 * approves or denies before it expires.
 *
 * Approvals are plain records in a {@link Collection} (the fabric's store), so a durable store
 * keeps them across a restart: a manager built on a store that holds approvals re-arms the expiry
 * of the pending ones (expiring at once those whose time passed while nobody ran), counts them
 * against `maxPendingPerAgent`, and keeps the decided ones within `maxResolved`. Waiters, timers
 * and counters are runtime state, rebuilt from the records.
 *
 * A decision belongs to the one call that asked for it. When nobody waits for a pending approval
 * any more (the call's connection closed, its wait ended, or the process restarted), the approval
 * is marked `orphaned`: it can still be decided — the decision is recorded with its approver —
 * but nothing runs because of it; the agent must make the call again, which asks for a new
 * approval. No decision is ever carried over to another call.
 *
 * @module
 */
import { randomUUID } from 'node:crypto';
import {
  ApprovalDecidedError,
  ApprovalLimitError,
  ApprovalNotFoundError,
  ClosedError,
  ConfigError,
  InvalidArgumentError,
  WaitTimeoutError,
} from '../errors.js';
import { TypedEmitter } from '../events.js';
import { jsonByteLength } from '../validate.js';
import { MemoryCollection } from '../store/memory-store.js';
import type { Collection } from '../store/store.js';
import { MAX_TIMER_SECONDS, timerLimitMessage } from '../scheduler/task-waiters.js';

/** Default for {@link ApprovalManagerOptions.defaultTtlSeconds}. */
export const DEFAULT_APPROVAL_TTL_SECONDS = 300;
/** Default for {@link ApprovalManagerOptions.maxResolved}. */
export const DEFAULT_MAX_RESOLVED_APPROVALS = 1000;
/** Default for {@link ApprovalManagerOptions.maxPendingPerAgent}. */
export const DEFAULT_MAX_PENDING_APPROVALS_PER_AGENT = 32;
/** Longest TTL or wait accepted: the largest delay `setTimeout` honours (about 24.8 days). */
export const MAX_APPROVAL_SECONDS = MAX_TIMER_SECONDS;

/** Where an approval is in its life. `expired` means nobody decided in time: not approved. */
export type ApprovalStatus = 'pending' | 'approved' | 'denied' | 'expired';

/** A request for a human decision, as stored. Snapshots are frozen; re-read for updates. */
export interface Approval {
  /** Unique id, `apr_<uuid>`. */
  readonly id: string;
  readonly agentId: string;
  readonly poolId?: string;
  readonly tool: string;
  /** A shallow copy of the tool call's parameters, taken when the approval was created. */
  readonly params: Readonly<Record<string, unknown>>;
  /** The policy and rule index that required the approval (null when created directly). */
  readonly policy: string | null;
  readonly rule: number | null;
  /** Why approval is needed (the rule's reason). */
  readonly reason?: string;
  readonly status: ApprovalStatus;
  /** Epoch milliseconds. */
  readonly createdAt: number;
  /** Epoch milliseconds after which a pending approval becomes `expired`. */
  readonly expiresAt: number;
  /** When it was approved, denied or expired (epoch ms). */
  readonly decidedAt?: number;
  /** Who approved or denied it (absent for `expired`). */
  readonly approver?: string;
  /** The approver's reason. */
  readonly decisionReason?: string;
  /**
   * True once no call waits for this approval any more (its connection closed, its wait ended,
   * or the process restarted while it was pending). Deciding it records the decision and runs
   * nothing: the agent must call again (a new call asks for a new approval).
   */
  readonly orphaned?: boolean;
}

const STATUSES: ReadonlySet<string> = new Set(['pending', 'approved', 'denied', 'expired']);

/** The outcome {@link ApprovalManager.waitForApproval} resolves with. */
export interface ApprovalResult {
  readonly id: string;
  readonly status: 'approved' | 'denied' | 'expired';
  /** True only for `approved`. */
  readonly approved: boolean;
  readonly approver?: string;
  readonly reason?: string;
  readonly decidedAt: number;
}

/** What {@link ApprovalManager.create} needs. */
export interface ApprovalRequest {
  agentId: string;
  poolId?: string;
  tool: string;
  params?: Readonly<Record<string, unknown>>;
  policy?: string | null;
  rule?: number | null;
  reason?: string;
  /**
   * Seconds until the approval expires.
   * @default options.defaultTtlSeconds
   */
  ttlSeconds?: number;
}

/** A human decision. */
export interface ApprovalDecision {
  /** Who decides: required, non-empty; recorded on the approval. */
  approver: string;
  reason?: string;
}

/** Options of {@link ApprovalManager.waitForApproval}. */
export interface WaitForApprovalOptions {
  /**
   * Stop waiting after this many seconds with a `WaitTimeoutError`; the approval itself stays
   * pending (it still expires at `expiresAt`). Without it the wait lasts until a decision or expiry.
   */
  timeoutSeconds?: number;
  /** Stops waiting (rejects with `signal.reason`); the approval stays pending. */
  signal?: AbortSignal;
}

/** Options of an {@link ApprovalManager}. */
export interface ApprovalManagerOptions {
  /**
   * Seconds a pending approval lives before it expires (expiry counts as a denial).
   * @default 300
   */
  defaultTtlSeconds?: number;
  /**
   * Decided approvals kept for `getApproval`/`listApprovals`/late `waitForApproval` before the
   * oldest (by decision time) of the agent that has the most are forgotten — and deleted from
   * the store — so one agent's flood of requests cannot push another's decisions out. Pending
   * approvals are never evicted.
   * @default 1000
   */
  maxResolved?: number;
  /**
   * Pending approvals one agent may have at once; `create` beyond it throws
   * `ApprovalLimitError`. Pending approvals are never evicted and each holds a copy of its call's
   * params, so without a cap an agent that fires and abandons `require_approval` calls could
   * grow memory (and the operators' queue) without bound.
   * @default 32
   */
  maxPendingPerAgent?: number;
  /**
   * Largest call parameters an approval keeps, in bytes of their JSON; `create` beyond it throws
   * `ApprovalLimitError` (the call is refused). An approval keeps its call's parameters for the
   * human who decides it, in memory and in the store, also once decided (within
   * `maxResolved`): without a bound one agent's megabyte-sized calls, each abandoned or expired,
   * would fill the history and the state file with `maxResolved` × its request size.
   * @default 262144 (256 KiB)
   */
  maxParamsBytes?: number;
}

/** Default for {@link ApprovalManagerOptions.maxParamsBytes}: 256 KiB. */
export const DEFAULT_MAX_APPROVAL_PARAMS_BYTES = 256 * 1024;

/** Events of an {@link ApprovalManager}. */
export type ApprovalEvents = {
  /** A pending approval was created. */
  created: [approval: Approval];
  /** An approval was approved, denied or expired. */
  resolved: [approval: Approval];
};

/**
 * Validates `options`, fills in defaults and freezes the result.
 * @throws ConfigError naming the field at fault.
 */
export function parseApprovalManagerOptions(
  options: ApprovalManagerOptions = {},
): Readonly<Required<ApprovalManagerOptions>> {
  if (options === null || typeof options !== 'object') {
    throw new ConfigError('options', 'must be an object');
  }
  for (const key of Object.keys(options)) {
    if (
      key !== 'defaultTtlSeconds' &&
      key !== 'maxResolved' &&
      key !== 'maxPendingPerAgent' &&
      key !== 'maxParamsBytes'
    ) {
      throw new ConfigError(`options.${key}`, 'is not a known option');
    }
  }
  const ttl = checkSeconds(
    'options.defaultTtlSeconds',
    options.defaultTtlSeconds ?? DEFAULT_APPROVAL_TTL_SECONDS,
    ConfigError,
  );
  const maxResolved = options.maxResolved ?? DEFAULT_MAX_RESOLVED_APPROVALS;
  if (!Number.isSafeInteger(maxResolved) || maxResolved < 0) {
    throw new ConfigError(
      'options.maxResolved',
      `must be a non-negative integer, got ${String(maxResolved)}`,
    );
  }
  const maxPendingPerAgent = options.maxPendingPerAgent ?? DEFAULT_MAX_PENDING_APPROVALS_PER_AGENT;
  if (!Number.isSafeInteger(maxPendingPerAgent) || maxPendingPerAgent < 1) {
    throw new ConfigError(
      'options.maxPendingPerAgent',
      `must be a positive integer, got ${String(maxPendingPerAgent)}`,
    );
  }
  const maxParamsBytes = options.maxParamsBytes ?? DEFAULT_MAX_APPROVAL_PARAMS_BYTES;
  if (!Number.isSafeInteger(maxParamsBytes) || maxParamsBytes < 2) {
    throw new ConfigError(
      'options.maxParamsBytes',
      `must be an integer of at least 2 (an empty object), got ${String(maxParamsBytes)}`,
    );
  }
  return Object.freeze({ defaultTtlSeconds: ttl, maxResolved, maxPendingPerAgent, maxParamsBytes });
}

function checkSeconds(
  field: string,
  value: unknown,
  ErrorClass: typeof ConfigError | typeof InvalidArgumentError,
): number {
  if (typeof value !== 'number' || !Number.isFinite(value) || value <= 0) {
    throw new ErrorClass(
      field,
      `must be a positive finite number of seconds, got ${String(value)}`,
    );
  }
  if (value > MAX_APPROVAL_SECONDS) {
    throw new ErrorClass(field, `${timerLimitMessage('seconds')}, got ${value}`);
  }
  return value;
}

interface Waiter {
  resolve(result: ApprovalResult): void;
  reject(err: unknown): void;
}

interface Entry {
  snapshot: Approval;
  timer: NodeJS.Timeout | undefined;
  waiters: Set<Waiter>;
}

/**
 * Holds pending approvals, records human decisions and expires what nobody decided.
 *
 * A decision is final: approving or denying an approval that is no longer pending throws
 * `ApprovalDecidedError`. Expiry timers are `unref`'d (they never keep the process alive) and
 * cleared by {@link ApprovalManager.close}.
 *
 * @example
 * const approvals = new ApprovalManager({ defaultTtlSeconds: 60 });
 * const a = approvals.create({ agentId: 'agent-1', tool: 'execute_code', params: {} });
 * setTimeout(() => approvals.approve(a.id, { approver: 'alice' }), 10);
 * const result = await approvals.waitForApproval(a.id); // { status: 'approved', approver: 'alice', … }
 */
export class ApprovalManager extends TypedEmitter<ApprovalEvents> {
  readonly #options: Readonly<Required<ApprovalManagerOptions>>;
  readonly #entries = new Map<string, Entry>();
  readonly #store: Collection<Approval>;
  /** Ids of decided approvals per agent, oldest first, for retention. */
  readonly #resolved = new Map<string, Set<string>>();
  /** How many decided approvals are kept, over all agents. */
  #resolvedCount = 0;
  /** Pending approvals per agent (entries only while > 0). */
  readonly #pendingByAgent = new Map<string, number>();
  #closed = false;

  /**
   * @param store - where approval records live (the fabric passes its store's `approvals`). The
   *   approvals already in it are restored: pending ones are marked `orphaned`, their expiry
   *   re-armed (or applied at once when it passed); decided ones are kept within `maxResolved`.
   * @throws InvalidArgumentError naming a stored record that is not an approval.
   */
  constructor(
    options: ApprovalManagerOptions = {},
    store: Collection<Approval> = new MemoryCollection<Approval>(),
  ) {
    super();
    this.#options = parseApprovalManagerOptions(options);
    this.#store = store;
    this.#restore();
  }

  #restore(): void {
    const records = [...this.#store.values()];
    for (const r of records) checkRecord(r);
    for (const r of records) {
      Object.freeze(r.params);
      Object.freeze(r);
    }
    const decided = records
      .filter((r) => r.status !== 'pending')
      .sort((a, b) => (a.decidedAt ?? a.createdAt) - (b.decidedAt ?? b.createdAt));
    for (const snapshot of decided) {
      this.#entries.set(snapshot.id, { snapshot, timer: undefined, waiters: new Set() });
      this.#keepResolved(snapshot);
    }
    this.#evict();
    const now = Date.now();
    const pending = records
      .filter((r) => r.status === 'pending')
      .sort((a, b) => a.createdAt - b.createdAt);
    for (const r of pending) {
      // The call that asked for it died with the previous process.
      const snapshot: Approval = r.orphaned === true ? r : Object.freeze({ ...r, orphaned: true });
      if (snapshot !== r) this.#store.put(snapshot.id, snapshot);
      const entry: Entry = { snapshot, timer: undefined, waiters: new Set() };
      this.#entries.set(snapshot.id, entry);
      this.#pendingByAgent.set(
        snapshot.agentId,
        (this.#pendingByAgent.get(snapshot.agentId) ?? 0) + 1,
      );
      if (snapshot.expiresAt <= now) this.#resolve(entry, 'expired');
      else this.#arm(entry, snapshot.expiresAt - now);
    }
  }

  #arm(entry: Entry, ms: number): void {
    entry.timer = setTimeout(() => this.#resolve(entry, 'expired'), ms);
    entry.timer.unref();
  }

  /** The validated, frozen options. */
  get options(): Readonly<Required<ApprovalManagerOptions>> {
    return this.#options;
  }

  /**
   * Creates a pending approval and starts its expiry timer.
   * @throws InvalidArgumentError for a missing agentId/tool or a bad ttlSeconds.
   * @throws ApprovalLimitError when the agent already has `maxPendingPerAgent` pending.
   * @throws ClosedError after {@link close}.
   */
  create(request: ApprovalRequest): Approval {
    if (this.#closed) throw new ClosedError('ApprovalManager');
    if (typeof request.agentId !== 'string' || request.agentId === '') {
      throw new InvalidArgumentError('request.agentId', 'must be a non-empty string');
    }
    if (typeof request.tool !== 'string' || request.tool === '') {
      throw new InvalidArgumentError('request.tool', 'must be a non-empty string');
    }
    const ttl =
      request.ttlSeconds === undefined
        ? this.#options.defaultTtlSeconds
        : checkSeconds('request.ttlSeconds', request.ttlSeconds, InvalidArgumentError);
    const pending = this.#pendingByAgent.get(request.agentId) ?? 0;
    if (pending >= this.#options.maxPendingPerAgent) {
      throw new ApprovalLimitError(request.agentId, this.#options.maxPendingPerAgent);
    }
    let paramsBytes: number;
    try {
      paramsBytes = jsonByteLength('params', request.params ?? {});
    } catch {
      paramsBytes = Infinity; // a cycle, or deeper than the store keeps: not JSON it can hold
    }
    if (paramsBytes > this.#options.maxParamsBytes) {
      throw new ApprovalLimitError(request.agentId, this.#options.maxParamsBytes, paramsBytes);
    }
    const now = Date.now();
    const approval: Approval = Object.freeze({
      id: `apr_${randomUUID()}`,
      agentId: request.agentId,
      ...(request.poolId === undefined ? {} : { poolId: request.poolId }),
      tool: request.tool,
      params: Object.freeze({ ...request.params }),
      policy: request.policy ?? null,
      rule: request.rule ?? null,
      ...(request.reason === undefined ? {} : { reason: request.reason }),
      status: 'pending' as const,
      createdAt: now,
      expiresAt: now + Math.round(ttl * 1000),
    });
    // Stored first: a write that fails leaves no approval behind (and no call parked on it).
    try {
      this.#store.put(approval.id, approval);
    } catch (error) {
      try {
        this.#store.delete(approval.id);
      } catch {
        // the deletion stays pending in the store like the put did
      }
      throw error;
    }
    const entry: Entry = { snapshot: approval, timer: undefined, waiters: new Set() };
    this.#arm(entry, approval.expiresAt - now);
    this.#entries.set(approval.id, entry);
    this.#pendingByAgent.set(approval.agentId, pending + 1);
    this.emit('created', approval);
    return approval;
  }

  /**
   * Marks a pending approval `orphaned`: the call that asked for it no longer waits (its
   * connection closed or its wait ended). It stays pending and can still be decided; the decision
   * is recorded and runs nothing. A no-op for an unknown or decided approval, and while another
   * `waitForApproval` still waits on it.
   */
  orphan(id: string): void {
    const entry = this.#entries.get(id);
    if (entry === undefined || entry.snapshot.status !== 'pending') return;
    if (entry.snapshot.orphaned === true || entry.waiters.size > 0 || this.#closed) return;
    entry.snapshot = Object.freeze({ ...entry.snapshot, orphaned: true });
    this.#store.put(id, entry.snapshot);
  }

  /**
   * Hands an existing approval back to the same call, made again after a restart by a durable
   * gateway task that recorded the approval's id: the approval is returned when it is still
   * known and was asked for the same agent, tool, policy rule and parameters (else `undefined`,
   * and the call asks for a new one). A pending one is no longer `orphaned`: its decision runs
   * the call again. The id never comes from an agent: only the task's own record holds it.
   */
  resume(id: string, request: ApprovalRequest): Approval | undefined {
    const entry = this.#entries.get(id);
    if (entry === undefined || this.#closed) return undefined;
    const a = entry.snapshot;
    const same =
      a.agentId === request.agentId &&
      a.tool === request.tool &&
      a.policy === (request.policy ?? null) &&
      a.rule === (request.rule ?? null) &&
      JSON.stringify(a.params) === JSON.stringify({ ...request.params });
    if (!same) return undefined;
    if (a.status === 'pending' && a.orphaned === true) {
      const { orphaned: _orphaned, ...rest } = a;
      entry.snapshot = Object.freeze(rest);
      this.#store.put(id, entry.snapshot);
    }
    return entry.snapshot;
  }

  /**
   * Approves a pending approval.
   * @throws ApprovalNotFoundError, ApprovalDecidedError (already decided or expired),
   *   InvalidArgumentError (empty approver).
   */
  approve(id: string, decision: ApprovalDecision): Approval {
    return this.#decide(id, 'approved', decision);
  }

  /**
   * Denies a pending approval.
   * @throws ApprovalNotFoundError, ApprovalDecidedError, InvalidArgumentError (empty approver).
   */
  deny(id: string, decision: ApprovalDecision): Approval {
    return this.#decide(id, 'denied', decision);
  }

  /** The approval with this id, or `undefined` when unknown (or evicted after retention). */
  getApproval(id: string): Approval | undefined {
    return this.#entries.get(id)?.snapshot;
  }

  /** Approvals, oldest first, optionally filtered by status and/or agent. */
  listApprovals(filter: { status?: ApprovalStatus; agentId?: string } = {}): Approval[] {
    const out: Approval[] = [];
    for (const { snapshot } of this.#entries.values()) {
      if (filter.status !== undefined && snapshot.status !== filter.status) continue;
      if (filter.agentId !== undefined && snapshot.agentId !== filter.agentId) continue;
      out.push(snapshot);
    }
    return out;
  }

  /**
   * Waits until the approval is decided or expires. Resolves at once if it already was.
   *
   * Resolves with status `approved`, `denied` or `expired` (check `result.approved`). Rejects
   * with `ApprovalNotFoundError` for an unknown id, `WaitTimeoutError` when `timeoutSeconds`
   * elapse first (the approval stays pending and may still be decided), `signal.reason` when
   * aborted, and `ClosedError` when the manager closes.
   */
  waitForApproval(id: string, options: WaitForApprovalOptions = {}): Promise<ApprovalResult> {
    const entry = this.#entries.get(id);
    if (entry === undefined) return Promise.reject(new ApprovalNotFoundError(id));
    if (entry.snapshot.status !== 'pending') return Promise.resolve(toResult(entry.snapshot));
    if (this.#closed) return Promise.reject(new ClosedError('ApprovalManager'));
    let timeout: number | undefined;
    try {
      timeout =
        options.timeoutSeconds === undefined
          ? undefined
          : checkSeconds('options.timeoutSeconds', options.timeoutSeconds, InvalidArgumentError);
    } catch (err) {
      return Promise.reject(err);
    }
    const { signal } = options;
    if (signal?.aborted) return Promise.reject(signal.reason);

    return new Promise<ApprovalResult>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const cleanup = (): void => {
        entry.waiters.delete(waiter);
        if (timer !== undefined) clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
      };
      const waiter: Waiter = {
        resolve: (r) => {
          cleanup();
          resolve(r);
        },
        reject: (e) => {
          cleanup();
          reject(e);
        },
      };
      const onAbort = (): void => waiter.reject(signal?.reason);
      entry.waiters.add(waiter);
      signal?.addEventListener('abort', onAbort, { once: true });
      if (timeout !== undefined) {
        timer = setTimeout(
          () => waiter.reject(new WaitTimeoutError(`approval ${id}`, timeout)),
          Math.round(timeout * 1000),
        );
        timer.unref();
      }
    });
  }

  /**
   * Stops every expiry timer and rejects pending waits with `ClosedError`. Approvals keep their
   * current status; `create`, `approve` and `deny` throw `ClosedError` afterwards. Idempotent.
   */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    const err = new ClosedError('ApprovalManager');
    for (const entry of this.#entries.values()) {
      if (entry.timer !== undefined) clearTimeout(entry.timer);
      entry.timer = undefined;
      for (const w of [...entry.waiters]) w.reject(err);
    }
  }

  #decide(id: string, status: 'approved' | 'denied', decision: ApprovalDecision): Approval {
    if (this.#closed) throw new ClosedError('ApprovalManager');
    const approver: unknown = decision?.approver;
    if (typeof approver !== 'string' || approver.trim() === '') {
      throw new InvalidArgumentError('decision.approver', 'must be a non-empty string');
    }
    if (decision.reason !== undefined && typeof decision.reason !== 'string') {
      throw new InvalidArgumentError('decision.reason', 'must be a string');
    }
    const entry = this.#entries.get(id);
    if (entry === undefined) throw new ApprovalNotFoundError(id);
    if (entry.snapshot.status !== 'pending') {
      throw new ApprovalDecidedError(id, entry.snapshot.status);
    }
    // Its expiry timer counts elapsed time, which stands still while the machine is suspended:
    // a decision the wall clock places at or past `expiresAt` finds it expired, not decided.
    if (Date.now() >= entry.snapshot.expiresAt) {
      this.#resolve(entry, 'expired');
      throw new ApprovalDecidedError(id, 'expired');
    }
    return this.#resolve(entry, status, approver, decision.reason);
  }

  #resolve(
    entry: Entry,
    status: 'approved' | 'denied' | 'expired',
    approver?: string,
    reason?: string,
  ): Approval {
    if (entry.timer !== undefined) clearTimeout(entry.timer);
    entry.timer = undefined;
    const snapshot: Approval = Object.freeze({
      ...entry.snapshot,
      status,
      // An approval expires at its expiry, also when that passed while the process was down.
      decidedAt: status === 'expired' ? entry.snapshot.expiresAt : Date.now(),
      ...(approver === undefined ? {} : { approver }),
      ...(reason === undefined ? {} : { decisionReason: reason }),
    });
    entry.snapshot = snapshot;
    // A durable store commits here; if that write fails the decision still stands (and is
    // retried with the next commit), and the caller is told after the waiters are answered.
    let failure: unknown;
    try {
      this.#store.put(snapshot.id, snapshot);
    } catch (error) {
      failure = error;
    }
    const left = (this.#pendingByAgent.get(snapshot.agentId) ?? 1) - 1;
    if (left > 0) this.#pendingByAgent.set(snapshot.agentId, left);
    else this.#pendingByAgent.delete(snapshot.agentId);
    this.#keepResolved(snapshot);
    this.#evict();
    const result = toResult(snapshot);
    for (const w of [...entry.waiters]) w.resolve(result);
    this.emit('resolved', snapshot);
    if (failure !== undefined) throw failure;
    return snapshot;
  }

  #keepResolved(snapshot: Approval): void {
    let ids = this.#resolved.get(snapshot.agentId);
    if (ids === undefined) this.#resolved.set(snapshot.agentId, (ids = new Set()));
    if (ids.has(snapshot.id)) return;
    ids.add(snapshot.id);
    this.#resolvedCount++;
  }

  /**
   * Keeps the decided approvals within `maxResolved`: the oldest decision of the agent that has
   * the most goes first, so one agent asking for approval after approval forgets only its own
   * history, never another agent's decisions.
   */
  #evict(): void {
    while (this.#resolvedCount > this.#options.maxResolved) {
      let most: Set<string> | undefined;
      let agent = '';
      for (const [a, ids] of this.#resolved) {
        if (most === undefined || ids.size > most.size) {
          most = ids;
          agent = a;
        }
      }
      const oldest = most!.values().next().value as string;
      most!.delete(oldest);
      if (most!.size === 0) this.#resolved.delete(agent);
      this.#resolvedCount--;
      this.#entries.delete(oldest);
      this.#store.delete(oldest);
    }
  }
}

/** A record read back from a store must at least have an approval's identity and times. */
function checkRecord(r: Approval): void {
  const ok =
    r !== null &&
    typeof r === 'object' &&
    typeof r.id === 'string' &&
    typeof r.agentId === 'string' &&
    typeof r.tool === 'string' &&
    STATUSES.has(r.status) &&
    Number.isFinite(r.createdAt) &&
    Number.isFinite(r.expiresAt);
  if (!ok) {
    throw new InvalidArgumentError(
      `store.approvals[${JSON.stringify((r as { id?: unknown } | null)?.id)}]`,
      'is not an approval record',
    );
  }
}

function toResult(a: Approval): ApprovalResult {
  return Object.freeze({
    id: a.id,
    status: a.status as ApprovalResult['status'],
    approved: a.status === 'approved',
    ...(a.approver === undefined ? {} : { approver: a.approver }),
    ...(a.decisionReason === undefined ? {} : { reason: a.decisionReason }),
    decidedAt: a.decidedAt ?? Date.now(),
  });
}

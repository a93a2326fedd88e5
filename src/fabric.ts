/**
 * AgentFabric: the facade that composes the lifecycle manager, the scheduler and the pool
 * manager, and owns their start and close.
 *
 * @module
 */
import type { AgentConfig, AgentInfo, SpawnedAgent } from './agent.js';
import { AgentStatus } from './agent.js';
import type { FabricConfig } from './config.js';
import { parseFabricConfig } from './config.js';
import { randomBytes } from 'node:crypto';
import {
  AgentNotFoundError,
  AgentUnavailableError,
  BudgetExceededError,
  ClosedError,
  ConfigError,
  InvalidArgumentError,
  NoAvailableAgentError,
  HookNotFoundError,
  PermissionDeniedError,
  QueueFullError,
  StateStoreError,
  TaskExecutionError,
  TaskResultTooLargeError,
  UnauthenticatedError,
} from './errors.js';
import { CredentialCalls } from './lifecycle/credential-calls.js';
import type { AgentRecord } from './lifecycle/lifecycle-manager.js';
import { LifecycleManager, hashCredential } from './lifecycle/lifecycle-manager.js';
import type {
  PoolChange,
  PoolConfig,
  PoolInfo,
  PoolManagerOptions,
  PoolRecord,
} from './pools/pool-manager.js';
import { PoolManager } from './pools/pool-manager.js';
import type { PoolProvider } from './pools/pool-provider.js';
import { THREADS_POOL_PROVIDER, ThreadPoolProvider } from './pools/thread-pool-provider.js';
import type { SchedulerStats, PoolLoad } from './scheduler/agent-scheduler.js';
import { AgentScheduler } from './scheduler/agent-scheduler.js';
import { setLongTimeout } from './scheduler/task-waiters.js';
import { ClaimLeases, MAX_CLAIM_ACK_SECONDS } from './scheduler/claim-leases.js';
import type { TaskExecutor, TaskHandler } from './scheduler/executor.js';
import { InProcessExecutor } from './scheduler/inprocess-executor.js';
import type { PiscinaExecutorOptions } from './scheduler/piscina-executor.js';
import { LOCAL_EXECUTOR, PiscinaExecutor } from './scheduler/piscina-executor.js';
import type { TaskRecord } from './scheduler/task-record.js';
import { MemoryStore } from './store/memory-store.js';
import type { FabricStore } from './store/store.js';
import type { ScheduleOptions, ScheduleRequest, Task, TaskAssignment, TaskError } from './task.js';
import { ApprovalManager } from './policy/approval-manager.js';
import type { ApprovalManagerOptions } from './policy/approval-manager.js';
import { PolicyEngine, type PolicyContext } from './policy/policy-engine.js';
import {
  CALLBACK_ANSWER_UNCHECKED,
  type CallbackAnswerContext,
  type CallbackAnswerDecision,
} from './policy/callback-answer-check.js';
import type { AppliedPolicyChange, PolicyEngineOptions } from './policy/policy-engine.js';
import { ToolCallAuthorizer } from './policy/tool-call-authorizer.js';
import type {
  CostEstimator,
  ToolCallAllowed,
  ToolCallAuthorization,
  ToolCallContext,
  ToolCallDenied,
} from './policy/tool-call-authorizer.js';
import { BudgetManager } from './budget/budget-manager.js';
import type {
  Reservation,
  SettleOptions,
  UnsharedUsage,
  UsageAmount,
} from './budget/budget-manager.js';
import type { BudgetStore } from './budget/budget-store.js';
import type { BootClock } from './budget/budget-clock.js';
import { parseBudgetConfig } from './budget/budget-config.js';
import { abandonedError, HookManager } from './hooks/hook-manager.js';
import type { HookManagerOptions } from './hooks/hook-manager-options.js';
import { stateSigningFrom } from './hooks/state-signing.js';
import type { HookStore } from './hooks/hook-store.js';
import { EMPTY_FAILURE_MESSAGE, type Hook } from './hooks/hook.js';
import type { CreateHookRequest, ListHooksFilter } from './hooks/hook-manager.js';
import { pageOf, type Page, type PageRequest } from './paging.js';
import type { TaskFilter } from './scheduler/agent-scheduler.js';
import { HookStatus } from './hooks/hook-status.js';
import { TypedEmitter } from './events.js';
import { checkNumber, checkString, jsonByteLength } from './validate.js';
import type { NatsConnection } from '@nats-io/transport-node';
import type { NatsOptions, NatsOptionsInput } from './transport/nats/nats-options.js';
import { parseNatsOptions } from './transport/nats/nats-options.js';
import { NatsExecutor } from './transport/nats/nats-executor.js';
import { HeartbeatListener } from './transport/nats/heartbeat-listener.js';
import { connectNats, drainNats } from './transport/nats/nats-connection.js';
import { isFinished, TaskStatus } from './task.js';
import { nestsDeeper, recordJson } from './json-bytes.js';

const NO_USAGE = Object.freeze({ tokens: 0, cost: 0 });

/** Tenant of the tasks an agent schedules itself: `agent:<agentId>`. */
const AGENT_TENANT = 'agent:';

/**
 * Refuses a tenant a caller names under {@link AGENT_TENANT}: those tenants are the agents' own
 * (`scheduleFromAgent`), counted against `maxScheduledTasksPerAgent` (after a restart too) and
 * evicting that agent's finished tasks, so an admin's task named so would take an agent's room.
 */
function checkTenant(tenant: unknown): void {
  if (typeof tenant === 'string' && tenant.startsWith(AGENT_TENANT)) {
    throw new InvalidArgumentError(
      'tenant',
      `must not start with "${AGENT_TENANT}": tenants so named are the tasks agents schedule themselves`,
    );
  }
}

/**
 * Deepest payload an agent may schedule ({@link AgentFabric.scheduleFromAgent}): a JSON level is
 * two protobuf levels in a `google.protobuf.Value`, and a claim's answer wraps the payload in
 * two more, so this is what a gRPC worker decodes under protobuf's default recursion limit
 * (100), in grpc-js and Python alike.
 */
export const MAX_AGENT_PAYLOAD_DEPTH = 48;

/** Options beyond the Fabric Guide's config: plumbing for embedders and tests. */
export interface FabricOptions {
  /**
   * Where records live. A durable store (`await SqliteStore.open(path)`) keeps agents, their
   * credential hashes, pools, tasks, approvals, — unless `budgetStore` is given — budget usage
   * and, once {@link AgentFabric.restorePolicies} ran, the policy changes made at run time
   * across restarts.
   * @default a new in-memory store
   */
  store?: FabricStore<TaskRecord, AgentRecord, PoolRecord>;
  /** Options of the `local` (piscina) executor. */
  local?: PiscinaExecutorOptions;
  /** Further executors, registered under their names. */
  executors?: readonly TaskExecutor[];
  /** Executor of agents that name none. @default 'local' */
  defaultExecutor?: string;
  /** How pools are reconciled (interval, start backoff). */
  pools?: PoolManagerOptions;
  /**
   * Fairness weight per tenant: tasks per round-robin turn, rounded down. A weight that is not a
   * number of at least 1 (`undefined` for a tenant the function does not know, NaN), or a throw,
   * counts as 1. @default 1
   */
  tenantWeight?: (tenant: string) => number;
  /**
   * Credentials that authenticate as the administrator (approve, set budgets, scale, spawn).
   * Kept only as hashes. More can be issued with {@link AgentFabric.issueAdminCredential}.
   */
  adminCredentials?: readonly string[];
  /** SHA-256 (hex) of further admin credentials, for credentials only kept as hashes. */
  adminCredentialHashes?: readonly string[];
  /** Options of the policy engine (default action when nothing matches: deny). */
  policy?: Omit<PolicyEngineOptions, 'approvals'>;
  /** Options of the approval manager (approval TTL). */
  approvals?: ApprovalManagerOptions;
  /** Where budget state is kept. @default the store's `budgets`, else in memory */
  budgetStore?: BudgetStore;
  /**
   * The boot-time clock and boot id the budget clock tells time that passed from a step of the
   * wall clock by (see `BudgetManagerOptions.bootClock`); for tests whose clocks are fake.
   * @default `/proc/uptime` and `/proc/sys/kernel/random/boot_id` where they exist
   */
  budgetBoot?: { clock?: BootClock; id?: string | undefined };
  /** Usage reserved for a tool call before it runs, unless the ingress passes an estimate. */
  estimateCost?: CostEstimator;
  /**
   * What `schedule`/`scheduleToPool` do when the agent's, pool's or fabric's budget is exhausted:
   * `refuse` throws `BudgetExceededError`; `queue` holds the task back until the window frees.
   * @default 'refuse'
   */
  onBudgetExhausted?: 'refuse' | 'queue';
  /**
   * GUPP work hooks persisted in git. With them, an agent that becomes UNHEALTHY or is
   * terminated has its ACTIVE (and PENDING) hooks marked ABANDONED, and with `autoReassign` they
   * move to an available agent of the same pool, keeping their worktree — at once when one is
   * free, else on the first patrol run after one is (or after their own agent is HEALTHY again),
   * at most `maxReassignments` times.
   */
  hooks?: HookManagerOptions & {
    /** @default true */
    autoReassign?: boolean;
  };
  /**
   * A NATS server with JetStream: agents heartbeat on `fabric.<ns>.hb.<agentId>` and agents
   * spawned with `executor: 'nats'` get their tasks through a JetStream work queue (see the
   * README, "NATS"). {@link AgentFabric.start} connects and fails with `NatsUnavailableError`
   * naming the URL when the server cannot be reached. Without it nothing uses NATS.
   */
  nats?: NatsOptionsInput;
}

/** Options of {@link AgentFabric.spawn}. */
export interface SpawnOptions {
  /**
   * Makes the agent's credential from its id (at least 32 characters) instead of random bytes;
   * the sidecar derives its start-up agents' credentials so it can show them after a restart.
   */
  credentialFor?: (agentId: string) => string;
}

/** Events of the fabric itself (the managers have their own `events`). */
export type FabricEvents = {
  /** Hooks of a lost agent were abandoned (and reassigned where an agent was available). */
  'hooks.recovered': [report: { agentId: string; abandoned: string[]; reassigned: string[] }];
  /** A background step failed (hook recovery); the fabric keeps running. */
  error: [error: Error];
};

/** Who a credential belongs to: one agent, or the administrator. */
export type Identity =
  | {
      readonly kind: 'agent';
      readonly agentId: string;
      readonly poolId: string | undefined;
      readonly labels: Readonly<Record<string, string>>;
      readonly agent: AgentInfo;
    }
  | { readonly kind: 'admin'; readonly name: string };

/** Figures of one pool in {@link FabricStats}. */
export interface PoolStats extends PoolLoad {
  healthyAgents: number;
}

/** What {@link AgentFabric.getFabricStats} returns. */
export interface FabricStats extends Omit<SchedulerStats, 'pools'> {
  /** Agents not terminated. */
  activeAgents: number;
  agentsByStatus: Record<AgentStatus, number>;
  pools: Record<string, PoolStats>;
}

/** Options of {@link AgentFabric.claimTask}. */
export interface ClaimOptions {
  /** How long to wait for a task when none is queued. @default 0 */
  waitSeconds?: number;
  signal?: AbortSignal;
  /**
   * Delivery lease in seconds (at most 3600; 0 for none): the task handed out goes back to its
   * queue, the attempt not counted, unless the agent acknowledges it within that time with a
   * report naming its attempt (progress — an empty one will do —, completion or failure).
   * For doors whose answer can be lost after it was written. @default 0
   */
  ackSeconds?: number;
}

/** How a change refused by a failed commit goes on (see `AgentFabric.#onDisk`). */
const KEPT =
  'and is written with the next commit that succeeds (retried every second) — do not send it again';

/**
 * How an agent or pool change that cannot be undone goes on when its commit failed (see
 * `AgentFabric.#onDisk`).
 */
const HELD =
  'in this process and is written with the next commit that succeeds (retried every second); a stop before then loses it: after the restart the agent or pool is as the file last held it';

/**
 * The commit mark of a change made after an await (see `AgentFabric#marker`): `take` is called
 * right after each change; `changed` stays false for a call that changed nothing.
 */
interface Marked {
  changed: boolean;
  mark: number | undefined;
  readonly take: () => void;
}

/**
 * The central orchestration facade.
 *
 * @example
 * const fabric = new AgentFabric({ maxConcurrentTasksPerAgent: 5 });
 * fabric.registerHandler('code_review', new URL('./handlers/review.js', import.meta.url));
 * const agent = await fabric.spawn({ model: 'claude-3-opus', name: 'code-review-agent' });
 * const task = await fabric.schedule({ agentId: agent.id, taskType: 'code_review', payload: {} });
 * const done = await fabric.waitForTask(task.id);
 * await fabric.close();
 */
export class AgentFabric {
  /** The validated, frozen configuration. */
  readonly config: Readonly<FabricConfig>;
  readonly lifecycle: LifecycleManager;
  readonly scheduler: AgentScheduler;
  readonly pools: PoolManager;
  /** Tool access policies; `evaluate` opens approvals in {@link approvals}. */
  readonly policies: PolicyEngine;
  /** Human approvals of `require_approval` decisions. */
  readonly approvals: ApprovalManager;
  /** Token and cost budgets per agent, pool and fabric. */
  readonly budgets: BudgetManager;
  /** Fabric-level events. */
  readonly events = new TypedEmitter<FabricEvents>();
  /**
   * The agent calls in flight through the doors without sessions (gRPC, `/api`), each with the
   * credential that authorized it: those of a replaced credential end with it.
   */
  readonly credentialCalls = new CredentialCalls((agentId, credential) => {
    try {
      const identity = this.authenticate(credential);
      return identity.kind === 'agent' && identity.agentId === agentId;
    } catch {
      return false;
    }
  });
  #hookStore: HookStore | undefined;
  #hookUnsubscribe: (() => void) | undefined;
  #autoReassign = false;
  #recovery: Promise<void> = Promise.resolve();
  readonly #authorizer: ToolCallAuthorizer;
  readonly #onBudgetExhausted: 'refuse' | 'queue';
  readonly #store: FabricStore<TaskRecord, AgentRecord, PoolRecord>;
  readonly #local: PiscinaExecutor;
  /** Delivery leases of claims that took one ({@link ClaimOptions.ackSeconds}). */
  readonly #leases: ClaimLeases;
  /**
   * The tasks each agent scheduled itself ({@link scheduleFromAgent}) that may be unfinished,
   * for `maxScheduledTasksPerAgent`; finished ones are dropped when the agent schedules again.
   */
  readonly #scheduledBy = new Map<string, Set<string>>();
  readonly #inprocess: InProcessExecutor;
  /**
   * The built-in default pool provider (`threads`): pools that name no provider and run on
   * `local` use it, unless a plugin registered its own `threads` provider (then that one).
   */
  readonly #threads = new ThreadPoolProvider();
  #threadsBuiltIn = true;
  readonly #defaultExecutor: string;
  /** SHA-256 of admin credential → admin name. */
  readonly #admins = new Map<string, string>();
  #adminsIssued = 0;
  #closed = false;
  #closing: Promise<void> | undefined;
  #closeStep: string | undefined;
  readonly #nats: NatsOptions | undefined;
  /** The `nats` executor, when `FabricOptions.nats` is set. */
  readonly natsExecutor: NatsExecutor | undefined;
  /** The heartbeat consumer, when `FabricOptions.nats` is set. */
  readonly natsHeartbeats: HeartbeatListener | undefined;
  #nc: NatsConnection | undefined;
  /** Whether {@link #nc} is connected: false from a `disconnect` status to the `reconnect`. */
  #natsConnected = false;

  constructor(config: Partial<FabricConfig> = {}, options: FabricOptions = {}) {
    this.config = parseFabricConfig(config);
    const c = this.config;
    this.#store = options.store ?? new MemoryStore<TaskRecord, AgentRecord, PoolRecord>();
    for (const [i, cred] of (options.adminCredentials ?? []).entries()) {
      if (typeof cred !== 'string' || cred.length < 16) {
        throw new ConfigError(
          `options.adminCredentials[${i}]`,
          'must be a string of at least 16 characters',
        );
      }
      this.#admins.set(hashCredential(cred), 'admin');
    }
    for (const [i, hash] of (options.adminCredentialHashes ?? []).entries()) {
      if (typeof hash !== 'string' || !/^[0-9a-f]{64}$/.test(hash)) {
        throw new ConfigError(`options.adminCredentialHashes[${i}]`, 'must be a SHA-256 in hex');
      }
      this.#admins.set(hash, 'admin');
    }
    this.scheduler = new AgentScheduler({
      maxQueueDepth: c.maxQueueDepth,
      maxQueueDepthPerTenant: c.maxQueueDepthPerTenant,
      defaultTimeoutSeconds: c.defaultTimeoutSeconds,
      maxConcurrentTasksPerAgent: c.maxConcurrentTasksPerAgent,
      defaultMaxAttempts: c.defaultMaxAttempts,
      finishedTaskRetention: c.finishedTaskRetention,
      // An agent's own tasks (fabric__schedule_task) evict its own older ones, not others'.
      finishedGroups: {
        limit: c.finishedTaskRetentionPerAgent,
        group: (tenant) => (tenant.startsWith(AGENT_TENANT) ? tenant : undefined),
      },
      tasks: this.#store.tasks,
      ...(this.#store.owedAborts
        ? {
            owedAborts: this.#store.owedAborts,
            owedAbortsComplete: this.#store.owedAbortsComplete === true,
          }
        : {}),
      ...(options.tenantWeight ? { tenantWeight: options.tenantWeight } : {}),
    });
    this.#leases = new ClaimLeases(this.scheduler);
    this.#local = new PiscinaExecutor(options.local);
    this.#inprocess = new InProcessExecutor();
    this.scheduler.registerExecutor(this.#local);
    this.scheduler.registerExecutor(this.#inprocess);
    const auto = ['local', 'inprocess'];
    this.#nats = options.nats === undefined ? undefined : parseNatsOptions(options.nats);
    if (this.#nats !== undefined) {
      const store = this.#store;
      const exec = new NatsExecutor(this.#nats, {
        ackWaitMs: Math.min(this.#nats.ackWaitSeconds, c.defaultTimeoutSeconds) * 1000,
        // A durable store keeps the lease key and the sidecar's name on the bus, so attempts in
        // JetStream (and their workers' reports) outlive a restart of this sidecar.
        ...(store.secret === undefined
          ? {}
          : {
              durable: {
                leaseKey: store.secret('nats.leaseKey'),
                sidecarId: store.secret('nats.sidecarId').slice(0, 16),
              },
            }),
      });
      exec.setHost({
        task: (id) => {
          const t = this.scheduler.peekTask(id);
          return t === undefined
            ? undefined
            : {
                attempt: t.attempt,
                dispatched: t.status === TaskStatus.SCHEDULED || t.status === TaskStatus.RUNNING,
                started: t.status === TaskStatus.RUNNING,
                ended:
                  t.status === TaskStatus.COMPLETED
                    ? 'complete'
                    : t.status === TaskStatus.FAILED
                      ? 'fail'
                      : undefined,
                dispatchedAt: t.startedAt,
                // Routed to the agent's own consumer while it runs on the agent it was
                // addressed to; a task that moved to its pool goes to the pool's consumer.
                agentId:
                  t.agentId !== undefined && t.agentId === t.assignedAgentId
                    ? t.agentId
                    : undefined,
                poolId: t.poolId,
                maxAttempts: t.maxAttempts,
                reportMark: t.reportMark,
              };
        },
        credentialHash: (id) => {
          const rec = this.lifecycle.peek(id);
          return rec === undefined || rec.status === AgentStatus.TERMINATED
            ? undefined
            : rec.credentialHash;
        },
        agentPool: (id) => this.lifecycle.peek(id)?.poolId,
        // As #endOnDisk: one property read while the store commits.
        onDisk: (id) =>
          this.#store.commitFailure?.() === undefined || this.#store.tasks.isOnDisk?.(id) !== false,
      });
      this.natsExecutor = exec;
      this.scheduler.registerExecutor(exec);
    } else this.natsExecutor = undefined;
    for (const e of options.executors ?? []) {
      this.scheduler.registerExecutor(e);
      if (e.autoHeartbeat) auto.push(e.name);
    }
    this.lifecycle = new LifecycleManager({
      heartbeatIntervalSeconds: c.heartbeatIntervalSeconds,
      maxConcurrentAgents: c.maxConcurrentAgents,
      drainTimeoutSeconds: c.drainTimeoutSeconds,
      defaultExecutor: (this.#defaultExecutor = options.defaultExecutor ?? LOCAL_EXECUTOR),
      autoHeartbeatExecutors: auto,
      terminatedRetention: c.terminatedAgentRetention,
      agents: this.#store.agents,
    });
    this.approvals = new ApprovalManager(options.approvals, this.#store.approvals);
    this.policies = new PolicyEngine({ ...options.policy, approvals: this.approvals });
    const budgetStore = options.budgetStore ?? this.#store.budgets;
    this.budgets = new BudgetManager({
      ...(budgetStore ? { store: budgetStore } : {}),
      ...(options.budgetBoot?.clock === undefined ? {} : { bootClock: options.budgetBoot.clock }),
      ...(options.budgetBoot !== undefined && 'id' in options.budgetBoot
        ? { bootId: options.budgetBoot.id }
        : {}),
    });
    this.#authorizer = new ToolCallAuthorizer({
      policies: this.policies,
      approvals: this.approvals,
      budgets: this.budgets,
      ...(options.estimateCost ? { estimateCost: options.estimateCost } : {}),
    });
    const mode = options.onBudgetExhausted ?? 'refuse';
    if (mode !== 'refuse' && mode !== 'queue') {
      throw new ConfigError('options.onBudgetExhausted', "must be 'refuse' or 'queue'");
    }
    this.#onBudgetExhausted = mode;
    if (options.hooks !== undefined) {
      const { autoReassign, ...hookOptions } = options.hooks;
      const signing = hookOptions.stateSigning ?? stateSigningFrom(this.#store);
      this.#attachHooks(
        new HookManager(
          signing === undefined ? hookOptions : { ...hookOptions, stateSigning: signing },
        ),
        autoReassign ?? true,
      );
    }
    this.natsHeartbeats =
      this.#nats === undefined
        ? undefined
        : new HeartbeatListener(this.lifecycle, this.natsExecutor!.names);
    this.lifecycle.setWorkloadSource((id) => this.scheduler.agentLoad(id));
    this.lifecycle.setDrainer((id, ms) => this.scheduler.drainAgent(id, ms));
    this.lifecycle.events.on('agent.status', (agent, previous) => this.#onStatus(agent, previous));
    // What a replaced credential authorized (a tool call waiting for its turn, a claim waiting
    // for the agent's next task) ends with it; the new credential's calls go on.
    this.lifecycle.events.on('agent.credentialReplaced', (agent) =>
      this.credentialCalls.endRevoked(agent.id),
    );
    // An agent gone from the records takes its budget state along (it can make no more calls).
    this.lifecycle.events.on('agent.forgotten', (id) => this.budgets.forgetAgent(id));
    const drainTimeoutMs = c.drainTimeoutSeconds * 1000;
    this.pools = new PoolManager(
      {
        spawnAgent: (cfg) => this.#spawn(cfg),
        terminateAgent: (id, ms, onChanged) =>
          this.lifecycle.terminate(id, {
            drainTimeoutSeconds: ms / 1000,
            ...(onChanged === undefined ? {} : { onChanged }),
          }),
        agentInfo: (id) =>
          this.lifecycle.peek(id) === undefined ? undefined : this.lifecycle.agentInfo(id),
        agentRoom: () => this.lifecycle.room,
        openPoolQueue: (id) => this.scheduler.addPool(id),
        drainPoolQueue: (id, ms) => this.scheduler.drainPool(id, ms),
        closePoolQueue: (id) => this.scheduler.removePool(id),
        // A pool made again under a deleted one's id starts with its own limits and no usage.
        poolDeleted: (id) => this.budgets.forgetPool(id),
        drainTimeoutMs,
      },
      this.#store.pools,
      options.pools,
    );
    this.pools.registerProvider(this.#threads);
    // Pools keep their size: a pool agent that ends or turns UNHEALTHY is replaced.
    this.lifecycle.events.on('agent.status', (agent) => this.pools.onAgentStatus(agent));
    this.#restore();
  }

  /**
   * Gives the scheduler the pools, live agents and tasks a durable store kept across a restart
   * (their records are already loaded; queues, timers and accepting flags are runtime state;
   * see {@link AgentScheduler.restore} for what becomes of each task). A pool whose
   * deletion the restart interrupted (DRAINING) is deleted now: the work it drained is gone.
   */
  #restore(): void {
    const draining: string[] = [];
    for (const pool of this.#store.pools.values()) {
      this.scheduler.addPool(pool.poolId, { restored: true });
      if (pool.status === 'DRAINING') draining.push(pool.poolId);
    }
    for (const agent of this.#store.agents.values()) {
      if (agent.status === AgentStatus.TERMINATED) continue;
      // Its executor may be a plugin's, registered later: it waits for it, taking no work.
      this.scheduler.addAgent(
        {
          agentId: agent.id,
          executor: agent.executor,
          ...(agent.poolId === undefined ? {} : { poolId: agent.poolId }),
        },
        { restored: true },
      );
      if (agent.status === AgentStatus.HEALTHY) this.scheduler.setAccepting(agent.id, true);
    }
    // Agents that joined a pool before joined agents were members (older state) become members.
    this.pools.adoptRestored(
      [...this.#store.agents.values()].filter((a) => a.status !== AgentStatus.TERMINATED),
    );
    // Tasks last: they go back to the queues of the agents and pools just made known.
    this.scheduler.restore();
    for (const t of this.scheduler.listTasks()) {
      if (!t.tenant.startsWith(AGENT_TENANT) || isFinished(t.status)) continue;
      const agentId = t.tenant.slice(AGENT_TENANT.length);
      let mine = this.#scheduledBy.get(agentId);
      if (mine === undefined) this.#scheduledBy.set(agentId, (mine = new Set()));
      mine.add(t.id);
    }
    for (const poolId of draining) {
      this.pools.deletePool(poolId, { drainTimeoutSeconds: 0 }).catch((err: unknown) => {
        if (this.events.listens('error')) {
          this.events.emit('error', err instanceof Error ? err : new Error(String(err)));
        }
      });
    }
  }

  /** The work hook store: git-backed by default (`FabricOptions.hooks`), or a `hook` plugin's. */
  get hooks(): HookStore | undefined {
    return this.#hookStore;
  }

  /**
   * Makes `store` the fabric's hook store (a `hook` plugin): opens it and wires recovery as
   * `FabricOptions.hooks` does.
   * @throws InvalidArgumentError when the fabric already has a hook store.
   */
  async useHookStore(store: HookStore, options: { autoReassign?: boolean } = {}): Promise<void> {
    this.#open();
    if (this.#hookStore !== undefined) {
      throw new InvalidArgumentError('hooks', 'a hook store is already in use');
    }
    await store.open();
    this.#attachHooks(store, options.autoReassign ?? true);
  }

  /**
   * Stops using `store` (its plugin is unloading): its patrol stops and the fabric stops
   * listening to it. It is not closed. Returns false when it is not the store in use.
   */
  detachHookStore(store: HookStore): boolean {
    if (this.#hookStore !== store) return false;
    store.stopPatrol();
    store.setAgentPicker(undefined);
    store.setLiveness(undefined);
    this.#hookUnsubscribe?.();
    this.#hookUnsubscribe = undefined;
    this.#hookStore = undefined;
    this.#autoReassign = false;
    return true;
  }

  #attachHooks(store: HookStore, autoReassign: boolean): void {
    this.#hookStore = store;
    store.setLiveness({ isAlive: (id) => this.#isAlive(id) });
    this.#autoReassign = autoReassign;
    // The patrol catches what no status event reports (agents unknown after a restart).
    store.startPatrol();
    if (autoReassign) {
      this.#hookUnsubscribe = store.on('hook.abandoned', (e) => this.#recoverHooks(e.hook.agentId));
      // A hook abandoned while no agent was free is retried on every patrol run.
      store.setAgentPicker((hook) => this.#pickHookAgent(hook));
    }
  }

  /**
   * Makes run-time policy changes durable when the store is (a {@link SqliteStore}; with an
   * in-memory store it does nothing and returns `[]`): applies the changes an earlier run stored
   * on top of the policies registered now, in the order they were made — a stored policy
   * replaces a registered one of its name, a stored removal removes it — and from then on writes
   * every `policies.addPolicy` (replace included) and `policies.removePolicy` to the store before
   * it takes effect (see {@link PolicyEngine.persistTo}). Call it once, after adding the start-up
   * policies (the sidecar: after the config file's); those are not stored.
   * @returns the stored changes it applied, for the start-up log.
   * @throws StateStoreError naming a stored policy that no longer validates (nothing applied).
   */
  restorePolicies(): AppliedPolicyChange[] {
    const changes = this.#store.policies;
    if (changes === undefined) return [];
    const path = (this.#store as { path?: unknown }).path;
    return this.policies.persistTo(changes, typeof path === 'string' ? path : 'state');
  }

  /**
   * Starts the fabric. Optional: every method starts what it needs on first use; this exists so
   * a daemon can fail fast on a bad setup — including a hook store that cannot be opened or is
   * locked by another process (which would otherwise only show on the first hook operation).
   * @throws HookStoreLockedError / HookStoreError when hooks are configured and unusable.
   */
  async start(): Promise<void> {
    this.#open();
    await this.hooks?.open();
    if (this.#nats !== undefined && this.#nc === undefined) {
      const nc = await connectNats(this.#nats, `agent-fabric ${this.natsExecutor!.sidecarId}`);
      this.#nc = nc;
      this.#natsConnected = true;
      this.#followNatsStatus(nc);
      try {
        this.natsHeartbeats!.start(nc);
        await this.natsExecutor!.start(nc);
      } catch (err) {
        this.#nc = undefined;
        await nc.close();
        throw err;
      }
    }
  }

  /**
   * Stops timers, answers open waits and claims, terminates worker threads and closes the store.
   * Afterwards the process can exit. Idempotent.
   */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      const step = (name: string): void => {
        this.#closeStep = name;
      };
      this.#closed = true;
      this.pools.close();
      this.#threads.close();
      step('lifecycle');
      await this.lifecycle.close();
      step("recovering a lost agent's hooks");
      await this.#recovery;
      step('hook store (operations in progress, progress not yet committed, its lock)');
      await this.hooks?.close();
      this.policies.close();
      this.approvals.close();
      this.#leases.clear();
      step('scheduler (its executors)');
      await this.scheduler.close();
      step('NATS heartbeats');
      await this.natsHeartbeats?.close();
      step('NATS drain');
      if (this.#nc !== undefined) await drainNats(this.#nc);
      step('state store');
      await this.#store.close();
      this.#closeStep = undefined;
    })();
    return this.#closing;
  }

  /**
   * What `close()` is waiting for, in words (a shutdown that does not finish logs it); undefined
   * when it is not closing or is done.
   */
  get closing(): string | undefined {
    return this.#closeStep;
  }

  // -------------------------------------------------------------------------------------------
  // Handlers and executors

  /**
   * Registers the handler module of `taskType` for `local` agents: an ES module (path or
   * `file:` URL) whose default export (or `handler` export) is `(payload, context) => result`.
   * It runs on a worker thread.
   */
  registerHandler(taskType: string, module: string | URL): void {
    this.#local.registerHandler(taskType, module);
  }

  /** Registers a handler function of `taskType` for `inprocess` agents (main thread). */
  registerInProcessHandler(taskType: string, handler: TaskHandler): void {
    this.#inprocess.registerHandler(taskType, handler);
  }

  /**
   * Adds an executor agents can name in `AgentConfig.executor`. Agents restored from the store
   * that name it and waited for it (see {@link awaitedExecutors}) take work on it from now on.
   */
  registerExecutor(executor: TaskExecutor): void {
    this.scheduler.registerExecutor(executor);
    // Pools that could not spawn on it meanwhile reach their size now, not after their backoff.
    this.pools.executorRegistered(executor.name);
  }

  /**
   * The executors that agents restored from the store name but that no one registered yet (a
   * plugin that did not load), each with those agents' ids: they take no work until it is
   * registered; the tasks queued for them wait, their pools' tasks go to the pools' other agents.
   */
  awaitedExecutors(): { executor: string; agentIds: string[] }[] {
    return this.scheduler.awaitedExecutors();
  }

  /**
   * Removes an executor (its plugin is unloading); its agents' work is taken back and they take
   * no more. The executor is returned, not closed.
   */
  unregisterExecutor(name: string): TaskExecutor | undefined {
    return this.scheduler.unregisterExecutor(name);
  }

  /**
   * Adds a pool provider pools can name in `PoolConfig.provider`. A provider named `threads`
   * (e.g. the `pool-threads` plugin) takes the built-in default's place: agents it started keep
   * running, new ones start with the new provider.
   */
  registerPoolProvider(provider: PoolProvider): void {
    const replacesBuiltIn =
      this.#threadsBuiltIn &&
      provider !== null &&
      typeof provider === 'object' &&
      provider.name === THREADS_POOL_PROVIDER;
    if (replacesBuiltIn) this.pools.unregisterProvider(THREADS_POOL_PROVIDER);
    try {
      this.pools.registerProvider(provider);
    } catch (err) {
      if (replacesBuiltIn) this.pools.registerProvider(this.#threads);
      throw err;
    }
    if (replacesBuiltIn) this.#threadsBuiltIn = false;
  }

  /**
   * Removes a pool provider; its pools start no agents until one of that name returns. Removing
   * a plugin's `threads` provider brings the built-in default back.
   */
  unregisterPoolProvider(name: string): boolean {
    if (name === THREADS_POOL_PROVIDER && this.#threadsBuiltIn) return false;
    const removed = this.pools.unregisterProvider(name);
    if (removed && name === THREADS_POOL_PROVIDER) {
      this.pools.registerProvider(this.#threads);
      this.#threadsBuiltIn = true;
    }
    return removed;
  }

  // -------------------------------------------------------------------------------------------
  // Agents

  /**
   * Spawns an agent; the result carries its credential (shown once).
   * @throws AgentLimitError; InvalidArgumentError; ExecutorNotFoundError; PoolNotFoundError,
   *   PoolDrainingError or PoolFullError for a bad `poolId`.
   */
  async spawn(config: AgentConfig, options: SpawnOptions = {}): Promise<SpawnedAgent> {
    // An agent spawned with a `poolId` is a member of that pool like the ones it spawns itself
    // (listed, counted, scaled, drained): checked first (a full pool refuses it), joined after.
    if (config?.poolId !== undefined) {
      this.#open();
      this.pools.assertJoinable(config.poolId);
    }
    const agent = this.#spawn(config, options.credentialFor);
    const poolId = agent.poolId;
    const desired = poolId === undefined ? undefined : this.pools.desiredSize(poolId);
    // Into a full pool, one of the pool's own agents gives way only once the spawn is on disk:
    // a refused spawn must leave the pool exactly as it was (a terminated agent cannot come back).
    if (poolId !== undefined) this.pools.join(poolId, agent.id, { held: true });
    await this.#undoneUnlessOnDisk(`agent ${agent.id} was not spawned`, () => {
      this.#withdrawAgent(agent.id);
      if (poolId !== undefined) this.pools.withdraw(poolId, [agent.id], desired);
    });
    if (poolId !== undefined) this.pools.confirmJoin(poolId, agent.id);
    return agent;
  }

  /**
   * Takes back an agent whose spawn was refused (see {@link #undoneUnlessOnDisk}): what the
   * scheduler gave it goes back (to its pool, if any), its credential stops authenticating,
   * its runtime stops and its record and budget are forgotten.
   */
  #withdrawAgent(agentId: string): void {
    this.scheduler.evictAgent(
      agentId,
      {
        code: StateStoreError.code,
        message: `agent ${agentId} was withdrawn: its spawn could not be committed`,
      },
      { remove: true },
    );
    this.lifecycle.withdraw(agentId);
  }

  #spawn(config: AgentConfig, credentialFor?: (agentId: string) => string): SpawnedAgent {
    this.#open();
    if (config?.poolId !== undefined) this.pools.assertActive(config.poolId);
    const executor = config?.executor ?? 'local';
    const exec = this.scheduler.getExecutor(executor);
    if (exec === undefined) {
      throw new InvalidArgumentError(
        'config.executor',
        `names no registered executor: ${JSON.stringify(executor)}${
          this.scheduler.awaits(executor)
            ? ' (agents restored from the store wait for it: it is registered when its plugin loads)'
            : ''
        }`,
      );
    }
    // Validate the budget before anything is created, so a bad one leaves no half-spawned agent.
    if (config?.budget !== undefined) parseBudgetConfig(config.budget, 'config.budget');
    // The executor knows whether the fabric heartbeats for its agents (in-process runtimes).
    const agent = this.lifecycle.spawnSync(
      config.heartbeat === undefined
        ? { ...config, heartbeat: exec.autoHeartbeat ? 'auto' : 'manual' }
        : config,
      credentialFor,
    );
    if (config.budget !== undefined) this.budgets.setBudget(agent.id, config.budget);
    this.scheduler.addAgent({
      agentId: agent.id,
      executor: agent.executor,
      ...(agent.poolId === undefined ? {} : { poolId: agent.poolId }),
    });
    if (agent.status === AgentStatus.HEALTHY) this.scheduler.setAccepting(agent.id, true);
    return agent;
  }

  /** Records a heartbeat of the agent. */
  async heartbeat(agentId: string): Promise<AgentInfo> {
    return this.lifecycle.heartbeatSync(agentId);
  }

  /** A snapshot of the agent with its task counts. */
  async getAgentInfo(agentId: string): Promise<AgentInfo> {
    return this.lifecycle.agentInfo(agentId);
  }

  /** Agents, optionally filtered by status or pool. */
  async listAgents(filter: { status?: AgentStatus; poolId?: string } = {}): Promise<AgentInfo[]> {
    return this.lifecycle.listAgents(filter);
  }

  /**
   * Maps a credential to its agent or to the administrator. Every ingress calls this first.
   * @throws UnauthenticatedError for a missing, unknown or revoked credential.
   */
  authenticate(credential: string): Identity {
    if (typeof credential !== 'string' || credential.length === 0) throw new UnauthenticatedError();
    // One hash per request (it is a measurable part of an HTTP call): admins, then agents.
    const hash = hashCredential(credential);
    const admin = this.#admins.get(hash);
    if (admin !== undefined) return { kind: 'admin', name: admin };
    const agent = this.lifecycle.authenticateHash(hash);
    return { kind: 'agent', agentId: agent.id, poolId: agent.poolId, labels: agent.labels, agent };
  }

  /**
   * Issues a new admin credential (shown once; only its hash is kept).
   * @param name - recorded as the approver of what this credential approves.
   */
  issueAdminCredential(name = 'admin'): string {
    checkString('name', name);
    const credential = `afa_${randomBytes(32).toString('base64url')}`;
    this.#admins.set(hashCredential(credential), name);
    this.#adminsIssued++;
    return credential;
  }

  /**
   * Changes whenever a credential's {@link authenticate} result may have changed: an agent
   * credential revoked (replaced, or its agent terminated) or an admin credential issued. While
   * it is unchanged, a credential that authenticated still authenticates as the same identity.
   */
  credentialEpoch(): number {
    return this.lifecycle.credentialRevocations + this.#adminsIssued;
  }

  /** @throws PermissionDeniedError unless `identity` is the administrator. */
  requireAdmin(identity: Identity, operation: string): void {
    if (identity.kind !== 'admin') {
      throw new PermissionDeniedError(`${operation} needs an admin credential`, { operation });
    }
  }

  /** Terminates gracefully (see {@link LifecycleManager.terminate}). */
  async terminate(
    agentId: string,
    options: { drainTimeoutSeconds?: number } = {},
  ): Promise<AgentInfo> {
    const marked = this.#marker();
    const info = await this.lifecycle.terminate(agentId, { ...options, onChanged: marked.take });
    // Never undone: a revoked credential must not authenticate again.
    await this.#markedOnDisk(
      `the termination holds (its credential no longer authenticates) ${HELD}`,
      marked,
      () => this.#store.agents.isOnDisk?.(agentId),
    );
    return info;
  }

  #onStatus(agent: AgentInfo, previous: AgentStatus): void {
    switch (agent.status) {
      case AgentStatus.HEALTHY:
        this.scheduler.setAccepting(agent.id, true);
        break;
      case AgentStatus.UNHEALTHY:
        this.scheduler.evictAgent(
          agent.id,
          {
            code: 'FABRIC_ERR_AGENT_UNAVAILABLE',
            message: `agent ${agent.id} became unhealthy (no heartbeat since ${new Date(agent.lastHeartbeat).toISOString()})`,
          },
          { remove: false },
        );
        this.#recoverHooks(agent.id);
        break;
      case AgentStatus.TERMINATED:
        this.#recoverHooks(agent.id);
        break;
      default:
        if (previous !== agent.status) this.scheduler.setAccepting(agent.id, false);
    }
  }

  // -------------------------------------------------------------------------------------------
  // Tasks

  /**
   * Queues a task for one agent.
   * @throws AgentNotFoundError; AgentUnavailableError when it is unhealthy, draining or
   *   terminated; QueueFullError; InvalidArgumentError for bad options.
   */
  async schedule(request: ScheduleRequest): Promise<Task> {
    this.#open();
    if (request === null || typeof request !== 'object')
      throw new InvalidArgumentError('request', 'must be an object');
    const rec = this.lifecycle.peek(request.agentId);
    if (rec === undefined) throw new AgentNotFoundError(String(request.agentId));
    if (
      rec.status === AgentStatus.UNHEALTHY ||
      rec.status === AgentStatus.DRAINING ||
      rec.status === AgentStatus.TERMINATED
    ) {
      throw new AgentUnavailableError(rec.id, rec.status);
    }
    const { agentId, taskType, payload, ...options } = request;
    checkTenant(options.tenant);
    const held = this.#budgetHold(agentId, rec.poolId);
    return this.#committed(
      this.scheduler.schedule(
        { agentId },
        taskType,
        payload,
        held ? { ...options, notBefore: held } : options,
      ),
    );
  }

  /**
   * `task` once its schedule is committed. With a durable store the commit runs on a microtask
   * the schedule queued, before this resumes; when it failed (disk full, I/O error) the
   * scheduler withdrew the task at once (CANCELLED with `FABRIC_ERR_STATE_STORE`, before the
   * dispatch pass the schedule queued: see `AgentScheduler.#unwritten`), and the caller gets
   * that error instead of a task that is not on disk. With the in-memory store there is nothing
   * to wait for.
   * @throws StateStoreError when the commit failed.
   */
  #committed(task: Task): Task | Promise<Task> {
    // No promise of its own in the async caller's return without a durable store.
    return this.#store.tasks.unwritten === undefined ? task : this.#afterCommit(task);
  }

  async #afterCommit(task: Task): Promise<Task> {
    await undefined;
    const t = this.scheduler.peekTask(task.id);
    if (
      t !== undefined &&
      t.status === TaskStatus.CANCELLED &&
      t.error?.code === StateStoreError.code
    ) {
      const path = (this.#store as { path?: unknown }).path;
      throw new StateStoreError(
        typeof path === 'string' ? path : 'state',
        `task ${task.id} was not scheduled: ${t.error.message}`,
      );
    }
    return task;
  }

  /**
   * When the budget of the agent, its pool or the fabric is exhausted: throws (mode `refuse`)
   * or returns when the task may start (mode `queue`).
   */
  #budgetHold(agentId: string | undefined, poolId: string | undefined): number | undefined {
    const check = this.budgets.check(agentId, NO_USAGE, poolId === undefined ? {} : { poolId });
    if (check.allowed) return undefined;
    if (this.#onBudgetExhausted === 'refuse' || check.retryAt === null) {
      throw new BudgetExceededError(check);
    }
    return check.retryAt;
  }

  /**
   * Queues a task to a pool, served by its least-loaded healthy agent.
   * @throws PoolNotFoundError; PoolDrainingError; QueueFullError; InvalidArgumentError (a tenant
   *   named `agent:…`, kept for the tasks agents schedule themselves, included).
   */
  async scheduleToPool(
    poolId: string,
    taskType: string,
    payload?: unknown,
    options: ScheduleOptions = {},
  ): Promise<Task> {
    checkTenant(options?.tenant);
    return this.#scheduleToPool(poolId, taskType, payload, options);
  }

  async #scheduleToPool(
    poolId: string,
    taskType: string,
    payload: unknown,
    options: ScheduleOptions,
  ): Promise<Task> {
    return this.#committed(this.#queueToPool(poolId, taskType, payload, options));
  }

  /** The synchronous part of {@link #scheduleToPool}: the task queued, its commit not awaited. */
  #queueToPool(poolId: string, taskType: string, payload: unknown, options: ScheduleOptions): Task {
    this.#open();
    this.pools.assertActive(poolId);
    const held = this.#budgetHold(undefined, poolId);
    return this.scheduler.schedule(
      { poolId },
      taskType,
      payload,
      held ? { ...options, notBefore: held } : options,
    );
  }

  /**
   * Schedules a task `agentId` asks for in its own pool `poolId` (`fabric__schedule_task`): as
   * {@link scheduleToPool} with tenant `agent:<agentId>`, and bounded like what agents hand in —
   * the payload at most `maxTaskResultBytes` of JSON and nested at most
   * {@link MAX_AGENT_PAYLOAD_DEPTH} levels (so any gRPC worker of the pool can decode it), and at
   * most `maxScheduledTasksPerAgent` of the agent's own tasks unfinished.
   * @throws TaskResultTooLargeError; InvalidArgumentError (too deep); QueueFullError (too many,
   *   or the queue is full); what {@link scheduleToPool} throws.
   */
  async scheduleFromAgent(
    agentId: string,
    poolId: string,
    taskType: string,
    payload: unknown,
    options: { timeoutSeconds?: number } = {},
  ): Promise<Task> {
    this.#open();
    this.#checkSize('payload', payload);
    if (nestsDeeper(recordJson(payload, 'payload') ?? 'null', MAX_AGENT_PAYLOAD_DEPTH)) {
      throw new InvalidArgumentError(
        'payload',
        `nests deeper than ${MAX_AGENT_PAYLOAD_DEPTH} levels (what a gRPC worker can decode)`,
      );
    }
    let mine = this.#scheduledBy.get(agentId);
    if (mine !== undefined) {
      for (const id of mine) {
        const t = this.scheduler.peekTask(id);
        if (t === undefined || isFinished(t.status)) mine.delete(id);
      }
      if (mine.size === 0) {
        this.#scheduledBy.delete(agentId);
        mine = undefined;
      }
    }
    const limit = this.config.maxScheduledTasksPerAgent;
    if (mine !== undefined && mine.size >= limit) {
      throw new QueueFullError(
        limit,
        `agent ${agentId} has ${mine.size} tasks it scheduled unfinished (maxScheduledTasksPerAgent ${limit}); wait for one to finish`,
      );
    }
    const task = this.#queueToPool(poolId, taskType, payload, {
      tenant: `${AGENT_TENANT}${agentId}`,
      ...(options.timeoutSeconds === undefined ? {} : { timeoutSeconds: options.timeoutSeconds }),
    });
    // Counted before the commit is awaited: calls made meanwhile see it (a task whose commit
    // fails ends CANCELLED, and is dropped from the count by the agent's next call).
    if (mine === undefined) this.#scheduledBy.set(agentId, (mine = new Set()));
    mine.add(task.id);
    return this.#committed(task);
  }

  /**
   * Waits until the task has finished and its end is committed, and returns it (at once if it
   * already has). With a durable store whose commits fail (disk full), a task that ended is
   * returned only once a commit succeeds (the store retries every second), so a caller never
   * acts on an end that a restart would undo.
   * @param options.timeoutSeconds - bound on the wait; by default it waits as long as it takes.
   * @throws TaskNotFoundError; WaitTimeoutError; StateStoreError when the task ended but the
   *   timeout ran out, or the fabric closed, before its end could be committed.
   */
  async waitForTask(
    taskId: string,
    options: { timeoutSeconds?: number; signal?: AbortSignal } = {},
  ): Promise<Task> {
    const ms =
      options.timeoutSeconds === undefined
        ? undefined
        : checkNumber('timeoutSeconds', options.timeoutSeconds, 'positiveNumber') * 1000;
    // The in-memory store has nothing to wait for: the scheduler's promise as it is.
    if (this.#store.whenCommitted === undefined) {
      return this.scheduler.waitForTask(taskId, ms, options.signal);
    }
    const started = performance.now();
    const task = await this.scheduler.waitForTask(taskId, ms, options.signal);
    const left = ms === undefined ? undefined : ms - (performance.now() - started);
    await this.#endOnDisk(task, left, options.signal);
    return task;
  }

  /**
   * Resolves once `task`'s end is on disk (at once when it is): after a failed commit, when a
   * commit succeeds again. Rejects with the signal's reason when it aborts, and with
   * StateStoreError when `timeoutMs` runs out or the store closes first.
   */
  async #endOnDisk(task: Task, timeoutMs: number | undefined, signal?: AbortSignal): Promise<void> {
    const store = this.#store;
    const failure = store.commitFailure?.();
    if (failure === undefined || store.tasks.isOnDisk?.(task.id) !== false) return;
    const path = (store as { path?: unknown }).path;
    const notCommitted = (why: string): StateStoreError =>
      new StateStoreError(
        typeof path === 'string' ? path : 'state',
        `task ${task.id} ended (${task.status}) but its end is not committed: ${why}; it is written with the next commit that succeeds (retried every second) — wait for the task again`,
      );
    // One signal for the caller's and the timeout's: the store forgets the wait when it fires
    // (a wait that ran out must not stay in its list until a commit succeeds).
    const stop = new AbortController();
    const onAbort = (): void => stop.abort(signal!.reason);
    let cancelTimer: (() => void) | undefined;
    if (signal?.aborted === true) onAbort();
    else signal?.addEventListener('abort', onAbort, { once: true });
    if (timeoutMs !== undefined && timeoutMs !== Number.POSITIVE_INFINITY) {
      cancelTimer = setLongTimeout(
        () => stop.abort(notCommitted(`the wait ran out (${failure.message})`)),
        Math.max(0, timeoutMs),
      );
    }
    try {
      await store.whenCommitted!(stop.signal).catch((error: unknown) => {
        if (stop.signal.aborted && error === stop.signal.reason) throw error;
        throw notCommitted(error instanceof Error ? error.message : String(error));
      });
    } finally {
      cancelTimer?.();
      signal?.removeEventListener('abort', onAbort);
    }
  }

  /**
   * A page of the tasks the fabric keeps (queued, running, and finished ones up to
   * `finishedTaskRetention`), oldest first, filtered by status, pool and agent (addressed to
   * it or run by it).
   * @throws InvalidArgumentError for a bad page size or token.
   */
  async listTasks(filter: TaskFilter & PageRequest = {}): Promise<Page<Task>> {
    const { pageSize, pageToken, ...match } = filter;
    return pageOf('tasks', this.scheduler.listTasks(match), (t) => [t.createdAt, t.id], {
      ...(pageSize === undefined ? {} : { pageSize }),
      ...(pageToken === undefined ? {} : { pageToken }),
    });
  }

  /** A snapshot of the task. @throws TaskNotFoundError */
  async getTask(taskId: string): Promise<Task> {
    return this.scheduler.getTask(taskId);
  }

  /** Cancels a queued or running task; a finished one is returned as it is (nothing to commit). */
  async cancelTask(taskId: string, reason?: string): Promise<Task> {
    const marked = this.#marker();
    const task = this.scheduler.cancel(taskId, reason, marked.take);
    await this.#markedOnDisk(`the cancel holds ${KEPT}`, marked, () =>
      this.#store.tasks.isOnDisk?.(taskId),
    );
    return task;
  }

  /**
   * The next task for an agent that pulls its work (executor `remote`); counts as a heartbeat.
   * Resolves `undefined` when none arrived within `waitSeconds`.
   */
  async claimTask(
    agentId: string,
    options: ClaimOptions = {},
  ): Promise<TaskAssignment | undefined> {
    this.#open();
    const ackSeconds =
      options.ackSeconds === undefined
        ? 0
        : checkNumber('ackSeconds', options.ackSeconds, 'nonNegativeNumber');
    if (ackSeconds > MAX_CLAIM_ACK_SECONDS) {
      throw new InvalidArgumentError(
        'ackSeconds',
        `must be at most ${MAX_CLAIM_ACK_SECONDS} (got ${ackSeconds})`,
      );
    }
    this.lifecycle.heartbeatSync(agentId);
    const waitMs =
      options.waitSeconds === undefined
        ? 0
        : checkNumber('waitSeconds', options.waitSeconds, 'nonNegativeNumber') * 1000;
    const marked = this.#marker();
    const a = await this.scheduler.claim(agentId, {
      waitMs,
      ...(options.signal ? { signal: options.signal } : {}),
      onChanged: marked.take,
    });
    if (a !== undefined) {
      try {
        await this.#onDisk(
          'the task was given back and is queued again (this attempt does not count): claim again later',
          marked.mark,
        );
      } catch (error) {
        // The attempt is the fencing token: one not on disk must not leave. Given back as a
        // claim whose answer never arrived (the attempt does not count).
        this.unclaimTask(agentId, a.taskId, a.attempt);
        throw error;
      }
    }
    if (a !== undefined && ackSeconds > 0) {
      this.#leases.start(agentId, a.taskId, a.attempt, ackSeconds * 1000);
    }
    if (a === undefined) {
      // A claim that waited while its agent was drained or terminated says so, as its next
      // heartbeat would: "no task" would tell the worker to ask again.
      const { status } = this.lifecycle.agentInfo(agentId);
      if (status === AgentStatus.DRAINING || status === AgentStatus.TERMINATED) {
        throw new AgentUnavailableError(agentId, status);
      }
    }
    return a;
  }

  /**
   * Gives back a task {@link claimTask} handed to `agentId` whose answer never reached the agent
   * (the call carrying it ended first): it is queued again and the attempt does not count.
   * Returns false when the task has moved on. See {@link AgentScheduler.unclaim}.
   */
  unclaimTask(agentId: string, taskId: string, attempt: number): boolean {
    const back = this.scheduler.unclaim(taskId, attempt, agentId);
    if (back) this.#leases.end(taskId, attempt);
    return back;
  }

  /**
   * Completes a task the agent holds; repeating it is a no-op, answered by whether the task's
   * end is on disk. Counts as a heartbeat.
   */
  async completeTask(
    agentId: string,
    taskId: string,
    attempt: number,
    result?: unknown,
  ): Promise<void> {
    this.#touch(agentId);
    this.#checkSize('result', result);
    // A repeat (a worker retrying a report whose answer it lost) changes nothing: judged by
    // whether the task's end is on disk (see #markedOnDisk).
    const marked = this.#marker();
    this.scheduler.complete(taskId, attempt, result, agentId, marked.take);
    this.#leases.end(taskId, attempt);
    await this.#markedOnDisk(`the completion holds ${KEPT}`, marked, () =>
      this.#store.tasks.isOnDisk?.(taskId),
    );
  }

  /** Fails a task the agent holds; with `retry` it is queued again while attempts remain. */
  async failTask(
    agentId: string,
    taskId: string,
    attempt: number,
    error: TaskError | string,
    options: { retry?: boolean } = {},
  ): Promise<void> {
    this.#touch(agentId);
    // The same failure through every door: an empty code or message (what proto3 sends for one
    // not set) is the default, not stored empty.
    const given: TaskError = typeof error === 'string' ? { code: '', message: error } : error;
    const e: TaskError = {
      ...given,
      code: blank(given.code) ? TaskExecutionError.code : given.code,
      message: blank(given.message) ? EMPTY_FAILURE_MESSAGE : given.message,
    };
    this.#checkSize('error', e);
    const marked = this.#marker();
    this.scheduler.fail(taskId, attempt, e, { ...options, agentId, onChanged: marked.take });
    this.#leases.end(taskId, attempt);
    await this.#markedOnDisk(`the failure holds ${KEPT}`, marked, () =>
      this.#store.tasks.isOnDisk?.(taskId),
    );
  }

  /** Records progress of a task the agent holds. */
  async reportProgress(
    agentId: string,
    taskId: string,
    attempt: number,
    progress: unknown,
  ): Promise<void> {
    this.#touch(agentId);
    this.#checkSize('progress', progress);
    this.scheduler.reportProgress(taskId, attempt, progress, agentId);
    await this.#onDisk(`the progress holds ${KEPT}`);
  }

  /** What an agent hands in is kept with the task: bounded by `maxTaskResultBytes`. */
  #checkSize(field: string, value: unknown): void {
    const bytes = jsonByteLength(field, value);
    const limit = this.config.maxTaskResultBytes;
    if (bytes > limit) throw new TaskResultTooLargeError(field, bytes, limit);
  }

  /** Activity from an agent counts as a heartbeat, except while it drains. */
  #touch(agentId: string): void {
    const rec = this.lifecycle.peek(agentId);
    if (rec === undefined) throw new AgentNotFoundError(String(agentId));
    if (rec.status !== AgentStatus.DRAINING && rec.status !== AgentStatus.TERMINATED) {
      this.lifecycle.heartbeatStatus(agentId);
    }
  }

  // -------------------------------------------------------------------------------------------
  // The tool-call pipeline (every ingress calls these for every tool call)

  /**
   * Policy → approval wait → budget reservation for one tool call of `ctx.agentId`. The agent's
   * pool and labels come from its record, never from the caller. Refusals are values
   * (`{ allowed: false, code, reason, retryAt }`) so an ingress can hand them to the model; the
   * call counts as a heartbeat of the agent.
   * @throws AgentNotFoundError for an unknown agent.
   */
  async authorizeToolCall(ctx: ToolCallContext): Promise<ToolCallAuthorization> {
    const agent = this.#toolCallAgent(ctx);
    if ('allowed' in agent) return agent;
    let auth: ToolCallAuthorization;
    try {
      auth = await this.#authorizer.authorize({
        ...ctx,
        poolId: agent.poolId,
        labels: agent.labels,
      });
    } catch (error) {
      // The commit that covers its reservation on disk failed: refused as while commits fail.
      if (error instanceof StateStoreError) return this.#notWritableRefusal(error);
      throw error;
    }
    if (!auth.allowed) return auth;
    // The wait (a human's approval, a budget) may have outlasted the agent: a call of an agent
    // terminated or draining meanwhile does not run, whichever door it came through.
    const refused = leavingAgentRefusal(ctx.agentId, this.lifecycle.peek(ctx.agentId));
    if (refused !== undefined) {
      this.#authorizer.release(auth);
      return withApproval(refused, auth);
    }
    // And the store may have stopped committing meanwhile (an approval decided on a full disk
    // stands): fail-closed as at the start, or the call's usage were held in memory only.
    const failure = this.#store.commitFailure?.();
    if (failure !== undefined) {
      this.#authorizer.release(auth);
      return withApproval(this.#notWritableRefusal(failure), auth);
    }
    return auth;
  }

  /**
   * {@link authorizeToolCall} without waiting: the same outcome when no human has to decide,
   * `undefined` when policy requires approval (then call `authorizeToolCall`).
   * @throws AgentNotFoundError for an unknown agent.
   */
  tryAuthorizeToolCall(ctx: ToolCallContext): ToolCallAuthorization | undefined {
    const agent = this.#toolCallAgent(ctx);
    if ('allowed' in agent) return agent;
    try {
      // Spelled out (no spread): this runs on every tool call.
      return this.#authorizer.tryAuthorize({
        agentId: ctx.agentId,
        tool: ctx.tool,
        params: ctx.params,
        rawParams: ctx.rawParams,
        poolId: agent.poolId,
        labels: agent.labels,
        attributes: ctx.attributes,
        estimate: ctx.estimate,
        budget: ctx.budget,
        trace: ctx.trace,
      });
    } catch (error) {
      // The commit that covers its reservation on disk failed (see `BudgetManager.reserve`).
      if (error instanceof StateStoreError) return this.#notWritableRefusal(error);
      throw error;
    }
  }

  /**
   * Decides again a call {@link authorizeToolCall} let through that waited once more before it
   * runs (its turn on an `exclusive` upstream): an agent terminated or draining meanwhile does
   * not run it (`FABRIC_ERR_AGENT_UNAVAILABLE`, as after {@link authorizeToolCall}'s own waits),
   * and when the rules changed since, they decide it again (see `ToolCallAuthorizer.recheck`).
   * The agent's pool and labels come from its record. Releases nothing: give the reservation
   * back (settle with no usage) when it is refused.
   * @returns undefined — synchronously when the agent is still active and the rules did not
   *   change — or the refusal.
   */
  recheckToolCall(
    ctx: ToolCallContext,
    authorization: ToolCallAllowed,
  ): ToolCallDenied | undefined | Promise<ToolCallDenied | undefined> {
    // One map lookup, at an exclusive call's turn only.
    const agent = this.lifecycle.peek(ctx.agentId);
    const refused = leavingAgentRefusal(ctx.agentId, agent);
    if (refused !== undefined || agent === undefined) return refused;
    if (authorization.rulesVersion === this.policies.rulesVersion) return undefined;
    return this.#authorizer.recheck(
      { ...ctx, poolId: agent.poolId, labels: agent.labels },
      authorization,
    );
  }

  /** The calling agent (heartbeat recorded), or the refusal of an agent that is leaving. */
  #toolCallAgent(ctx: ToolCallContext): Readonly<AgentRecord> | ToolCallDenied {
    const rec = this.lifecycle.peek(ctx.agentId);
    if (rec === undefined) throw new AgentNotFoundError(String(ctx.agentId));
    const refused = leavingAgentRefusal(rec.id, rec);
    if (refused !== undefined) return refused;
    // Fail-closed while a durable store cannot commit: a call's usage would be in memory only
    // (lost by a stop, so the agent could spend it again). One property read without one.
    const failure = this.#store.commitFailure?.();
    if (failure !== undefined) return this.#notWritableRefusal(failure);
    this.lifecycle.heartbeatStatus(rec.id);
    return rec;
  }

  /** The refusal of a tool call while the store's commits fail (see {@link #toolCallAgent}). */
  #notWritableRefusal(failure: Error): ToolCallDenied {
    const path = (this.#store as { path?: unknown }).path;
    const error = new StateStoreError(
      typeof path === 'string' ? path : 'state',
      `cannot be written (${failure.message.replace(/^state store .*?: /, '')}): tool calls are refused until it can, so that no call's usage is kept in memory only — call again once /readyz is ready (the store retries every second)`,
    );
    return {
      allowed: false,
      code: error.code,
      reason: error.message,
      details: error.details,
      error,
    };
  }

  /**
   * Settles an allowed call's reservation with what it actually used. Idempotent. With
   * `requireFit`, tokens that do not fit a budget are not charged and the refusal is returned:
   * the ingress must withhold the call's result (see `ToolCallAuthorizer.settle`).
   * @returns undefined when everything was charged.
   */
  settleToolCall(
    authorization: ToolCallAuthorization,
    usage?: UsageAmount,
    options?: SettleOptions,
  ): ToolCallDenied | undefined {
    return this.#authorizer.settle(authorization, usage, options);
  }

  /** Gives an allowed call's reservation back (the call never ran). Idempotent. */
  releaseToolCall(authorization: ToolCallAuthorization): void {
    this.#authorizer.release(authorization);
  }

  /**
   * Asks the policy providers that check agents' answers to upstream callbacks
   * (`checkCallbackAnswer`, e.g. secret-guard) about one answer: allowed unless one denies it;
   * a provider that fails refuses it. The agent's pool and labels come from its record, never
   * from the caller (an agent no longer known is checked without them). Rules take no part.
   * @throws the reason of `signal` when it aborts first.
   */
  checkCallbackAnswer(
    ctx: CallbackAnswerContext,
    signal: AbortSignal,
  ): Promise<CallbackAnswerDecision> {
    if (!this.policies.hasCallbackAnswerChecks) return Promise.resolve(CALLBACK_ANSWER_UNCHECKED);
    const rec = this.lifecycle.peek(ctx.agentId);
    const { poolId: _poolId, labels: _labels, ...rest } = ctx;
    return this.policies.checkCallbackAnswer(
      {
        ...rest,
        ...(rec?.poolId === undefined ? {} : { poolId: rec.poolId }),
        ...(rec === undefined ? {} : { labels: rec.labels }),
      },
      signal,
    );
  }

  /**
   * False when policy denies `tool` to the agent outright (a deny rule without conditions wins
   * for any parameters). Side-effect free; used to filter `tools/list`. A policy provider's deny
   * is no opinion here (`evaluateWithoutProviderDenies`): a provider that fails — throws, or is a
   * policy service that is down — neither shows a tool the rules hide nor hides one they show,
   * and the gateway answers a call of a hidden tool that a provider refused as an unknown tool.
   */
  isToolVisible(ctx: { agentId: string; tool: string }): boolean {
    const rec = this.lifecycle.peek(ctx.agentId);
    const d = this.policies.evaluateWithoutProviderDenies({
      agentId: ctx.agentId,
      tool: ctx.tool,
      params: {},
      ...(rec?.poolId === undefined ? {} : { poolId: rec.poolId }),
      ...(rec === undefined ? {} : { labels: rec.labels }),
    });
    if (d.action !== 'deny' || d.policy === null || d.rule === null) return true;
    const rule = this.policies.getPolicy(d.policy)?.rules[d.rule];
    return rule === undefined || rule.conditions !== undefined || rule.when !== undefined;
  }

  /**
   * Asks the policy services (providers with `decideAsync`) about a call of a tool that does not
   * exist what they would be asked about a tool the rules hide from the agent, and resolves once
   * they answered (or failed, or `signal` aborted); what they said is dropped. `undefined`, at no
   * cost, when none would be asked. The gateway waits for it before it answers an unknown tool:
   * the refusal of a hidden tool waits for the services that outrank the rule hiding it, and an
   * unknown tool answered at once would tell a hidden one apart by the time its answer took. A
   * name the rules would hide were it a tool is asked about exactly as a hidden tool is; any
   * other name as if hidden by the lowest rule that hides tools (see
   * `PolicyEngine.askAsLikeHidden`).
   */
  decideUnknownTool(
    ctx: { agentId: string; tool: string; params: Readonly<Record<string, unknown>> },
    signal: AbortSignal,
  ): Promise<void> | undefined {
    if (!this.policies.hasAsyncProviders) return undefined;
    const rec = this.lifecycle.peek(ctx.agentId);
    const policyCtx: PolicyContext = {
      agentId: ctx.agentId,
      tool: ctx.tool,
      params: ctx.params,
      ...(rec?.poolId === undefined ? {} : { poolId: rec.poolId }),
      ...(rec === undefined ? {} : { labels: rec.labels }),
    };
    if (this.isToolVisible(ctx)) return this.policies.askAsLikeHidden(policyCtx, signal);
    return this.policies.evaluateAsync(policyCtx, signal).then(
      () => undefined,
      () => undefined,
    );
  }

  /**
   * Whether an upstream's sampling request of `tokens` may reach the agent's model: the refusal
   * when the agent's budget, its pool's or the fabric's has no room for those tokens beside the
   * usage counted and the samplings already in flight (other in-flight reservations aside — the
   * call that caused the request holds one, which may fill a small limit), else the admission
   * that holds them (a reservation, covered on disk as a call's is). Settle it with the tokens
   * the sampling used, request and answer: never refused, committed as {@link recordUsage} is,
   * and counted as it is — in full on the agent, on its pool's and the fabric's at most what the
   * agent's own limit had left (the answer is what the agent's client wrote); the settle
   * resolves with what the shared budgets were charged short (`UnsharedUsage`) when they were
   * capped so. An agent no longer known is not refused here (`undefined`: nothing held).
   * @returns a {@link StateStoreError} refusal when the commit that covers the hold fails.
   */
  admitSampling(
    agentId: string,
    tokens: number,
  ):
    | BudgetExceededError
    | StateStoreError
    | { settle(tokens: number): Promise<UnsharedUsage | null | void> }
    | undefined {
    const rec = this.lifecycle.peek(agentId);
    if (rec === undefined) return undefined;
    let held: Reservation;
    try {
      held = this.budgets.reserve(
        agentId,
        { tokens, cost: 0 },
        { reservationsAside: true, ...(rec.poolId === undefined ? {} : { poolId: rec.poolId }) },
      );
    } catch (error) {
      if (error instanceof BudgetExceededError || error instanceof StateStoreError) return error;
      throw error;
    }
    return {
      settle: (used: number): Promise<UnsharedUsage | null | void> => {
        let unshared: UnsharedUsage | null;
        try {
          // The answer's tokens are measured from what the agent's own client wrote: on the
          // shared budgets they count at most what the agent's limit had left (as a report).
          unshared = this.budgets.settle(
            held,
            { tokens: used, cost: 0 },
            { shareUpToAgentLimit: true },
          );
        } catch (error) {
          this.budgets.release(held); // a bad amount: nothing stays held
          return Promise.reject(error);
        }
        const done = this.#onDisk(`the sampling is counted (the budgets hold it) ${KEPT}`);
        return unshared === null ? done : done.then(() => unshared);
      },
    };
  }

  /**
   * Records usage an agent reports (model tokens, spend) against its budgets: in full on its
   * own, and on its pool's and the fabric's at most what its own limit had left (see
   * `BudgetManager.recordUsage`).
   * @returns null, or what the shared budgets were charged short of the report (counted all the
   *   same; the doors answer it as a `BudgetExceededError`: see {@link recordReportedUsage}).
   * @throws StateStoreError when the store cannot commit (disk full): the usage is counted all
   *   the same and written with the next commit that succeeds — do not report it again.
   */
  async recordUsage(agentId: string, usage: UsageAmount): Promise<UnsharedUsage | null> {
    const rec = this.lifecycle.peek(agentId);
    if (rec === undefined) throw new AgentNotFoundError(String(agentId));
    const unshared = this.budgets.recordUsage(
      agentId,
      usage,
      rec.poolId === undefined ? {} : { poolId: rec.poolId },
    );
    await this.#onDisk(`the usage is counted (the budgets hold it) ${KEPT}`);
    return unshared;
  }

  /**
   * {@link recordUsage} for an agent's own report over a door (`fabric__record_usage`,
   * `RecordUsage`): the same, committed, and then a report past what the agent's own limit had
   * left is answered with a typed error, so the agent learns it (and the MCP call's audit line
   * carries its code).
   * @throws BudgetExceededError (`BudgetExceededError.usageBeyondLimit`, `details.recorded` and
   *   `details.shared`) when it went past: counted all the same — do not report it again.
   */
  async recordReportedUsage(agentId: string, usage: UsageAmount): Promise<void> {
    const unshared = await this.recordUsage(agentId, usage);
    if (unshared !== null) throw BudgetExceededError.usageBeyondLimit(unshared);
  }

  /**
   * Resolves once what the caller changed in this synchronous run is committed; with a durable
   * store whose commit failed (disk full, I/O error) runs `undo`, which takes the change back
   * in memory (what it writes is committed with the next commit that succeeds), and throws: a
   * change the caller is told was refused must not take effect, nor come back after a restart.
   * With the in-memory store there is nothing to wait for. Costs a durable store's caller one
   * microtask turn. Judged by the commit that carried the change (`mark`, taken right after it:
   * see {@link #commitMark}), not by the store's last one — an unrelated commit that failed
   * meanwhile must not undo a change that is on disk.
   * @throws StateStoreError `<what>: … not committed …`
   */
  async #undoneUnlessOnDisk(
    what: string,
    undo: () => void,
    mark = this.#commitMark(),
  ): Promise<void> {
    const store = this.#store;
    if (store.commitFailure === undefined && store.commitOutcome === undefined) return;
    await undefined;
    const failure = this.#commitOutcome(mark);
    if (failure === undefined) return;
    undo();
    const path = (store as { path?: unknown }).path;
    throw new StateStoreError(
      typeof path === 'string' ? path : 'state',
      `${what}: not committed: ${failure.message.replace(/^state store .*?: /, '')}; it was undone, nothing of it remains (send it again once /readyz is ready)`,
    );
  }

  /**
   * A durable store's mark of the changes made so far (undefined without one): taken in the
   * synchronous run of a change, after it, it names the commit that carries the change.
   */
  #commitMark(): number | undefined {
    return this.#store.commitMark?.();
  }

  /**
   * The mark of an operation whose change is made after an await (a termination ends after
   * its drain, a claim when a task arrives): the manager calls `take` in the synchronous run of
   * each change it makes, right after it, so `mark` names the commit that carries the last one
   * (see {@link #commitMark}) — not a later commit that ran before the caller resumed.
   * `changed` stays false when the call changed nothing (an agent already terminated, a task
   * already finished): see {@link #markedOnDisk}.
   */
  #marker(): Marked {
    // Plain fields, not a getter: an object literal with an accessor is built on V8's slow
    // path (~1 µs here against ~30 ns, measured), and a claim makes one per call.
    const marked: Marked = {
      changed: false,
      mark: undefined,
      take: () => {
        marked.changed = true;
        marked.mark = this.#commitMark();
      },
    };
    return marked;
  }

  /**
   * {@link #onDisk} for the change `marked` names. A call that changed nothing (terminating an
   * agent already terminated, cancelling a task already finished) has no commit of its own: it
   * answers what the record already holds, so it is judged by whether that record is on disk
   * (`recordOnDisk`, the collection's `isOnDisk`) — at once when it is, whatever
   * an unrelated commit does; by the commit that carries it (as a change's own) when it is not:
   * its change still waits for a commit, or one failed (the disk full), so a caller repeating a
   * call answered "not committed" is told so again until the record is written. A store that
   * cannot tell (`undefined`) judges it by the commits since the call.
   */
  #markedOnDisk(
    outcome: string,
    marked: Marked,
    recordOnDisk: () => boolean | undefined,
  ): Promise<void> {
    if (marked.changed) return this.#onDisk(outcome, marked.mark);
    return recordOnDisk() === true ? Promise.resolve() : this.#onDisk(outcome);
  }

  /**
   * The outcome of the commit `mark` names (see {@link #commitMark}); a store without marks
   * gives its last commit's.
   */
  #commitOutcome(mark: number | undefined): Error | undefined {
    const store = this.#store;
    if (mark !== undefined && store.commitOutcome !== undefined) return store.commitOutcome(mark);
    return store.commitFailure?.();
  }

  /**
   * Resolves once what the caller changed is committed; with a durable store whose last commit
   * failed (disk full, I/O error) throws instead, saying the `outcome`: the change is kept in
   * memory and written with the next commit that succeeds (the store retries every second), but
   * is not on disk, so the call must not answer as if it were. The commit runs on a microtask
   * the change queued, before this resumes. With the in-memory store there is nothing to wait
   * for. Costs a durable store's caller one microtask turn. Judged by the commit that carried
   * the change (`mark`: by default taken at the call, which must then be in the change's
   * synchronous run; a change made after an await passes the mark {@link #marker} took), not
   * by the store's last one (see {@link #undoneUnlessOnDisk}).
   * @throws StateStoreError
   */
  async #onDisk(outcome: string, mark = this.#commitMark()): Promise<void> {
    const store = this.#store;
    if (store.commitFailure === undefined && store.commitOutcome === undefined) return;
    await undefined;
    const failure = this.#commitOutcome(mark);
    if (failure === undefined) return;
    const path = (store as { path?: unknown }).path;
    throw new StateStoreError(
      typeof path === 'string' ? path : 'state',
      `not committed: ${failure.message.replace(/^state store .*?: /, '')}; ${outcome}`,
    );
  }

  // -------------------------------------------------------------------------------------------
  // Pools

  /**
   * Creates a pool and spawns its `minAgents`. A pool that names no provider and whose agents
   * run on `local` (its `executor`, else the fabric's default) gets the default provider,
   * `threads`.
   */
  async createPool(config: PoolConfig): Promise<PoolInfo & { spawned: SpawnedAgent[] }> {
    this.#open();
    if (config?.budget !== undefined) parseBudgetConfig(config.budget, 'config.budget');
    const threads =
      config !== null &&
      typeof config === 'object' &&
      config.provider === undefined &&
      (config.executor ?? this.#defaultExecutor) === LOCAL_EXECUTOR;
    const change = this.pools.createPool(
      threads ? { ...config, provider: THREADS_POOL_PROVIDER } : config,
    );
    const { poolId } = change.pool;
    // Undone, the pool's budget is as it was: none, or the limits set for its id beforehand
    // (`budgets.setPoolBudget` before the pool existed).
    const restoreBudget =
      config.budget === undefined ? undefined : this.budgets.poolBudgetRestorer(poolId);
    if (config.budget !== undefined) this.budgets.setPoolBudget(poolId, config.budget);
    await this.#undoneUnlessOnDisk(`pool ${poolId} was not created`, () => {
      this.#withdrawPoolChange(poolId, change.spawned, undefined);
      restoreBudget?.();
    });
    return { ...change.pool, spawned: change.spawned };
  }

  /** The agents a refused pool change spawned go, and the pool's size (or the pool) with them. */
  #withdrawPoolChange(poolId: string, spawned: SpawnedAgent[], desired: number | undefined): void {
    for (const a of spawned) this.#withdrawAgent(a.id);
    this.pools.withdraw(
      poolId,
      spawned.map((a) => a.id),
      desired,
    );
  }

  /**
   * Scales a pool to `targetSize`, clamped to [minAgents, maxAgents].
   * @throws StateStoreError when the change cannot be committed: a growth is undone (its agents
   *   withdrawn, their credentials never work); a shrink holds (its agents were drained and
   *   terminated) and is written with the next commit that succeeds.
   */
  async scalePool(poolId: string, targetSize: number): Promise<PoolChange> {
    this.#open();
    const desired = this.pools.desiredSize(poolId);
    const marked = this.#marker();
    const change = await this.pools.scalePool(poolId, targetSize, { onChanged: marked.take });
    if (change.spawned.length > 0) {
      await this.#undoneUnlessOnDisk(
        `pool ${poolId} was not scaled`,
        () => this.#withdrawPoolChange(poolId, change.spawned, desired),
        marked.mark,
      );
    } else {
      await this.#markedOnDisk(`the pool's new size holds ${HELD}`, marked, () =>
        this.#store.pools.isOnDisk?.(poolId),
      );
    }
    return change;
  }

  /**
   * Drains and deletes a pool.
   * @throws StateStoreError when the deletion cannot be committed: it holds (the pool's work
   *   was drained and its agents terminated) and is written with the next commit that succeeds.
   */
  async deletePool(poolId: string, options: { drainTimeoutSeconds?: number } = {}): Promise<void> {
    const marked = this.#marker();
    await this.pools.deletePool(poolId, { ...options, onChanged: marked.take });
    await this.#markedOnDisk(`the deletion holds ${HELD}`, marked, () =>
      this.#store.pools.isOnDisk?.(poolId),
    );
  }

  async getPool(poolId: string): Promise<PoolInfo> {
    return this.pools.getPool(poolId);
  }

  async listPools(): Promise<PoolInfo[]> {
    return this.pools.listPools();
  }

  /**
   * The least-loaded healthy agent with a free task slot, in `poolId` or anywhere.
   * @throws NoAvailableAgentError; PoolNotFoundError.
   */
  async getAvailableAgent(options: { poolId?: string } = {}): Promise<AgentInfo> {
    const candidates =
      options.poolId === undefined
        ? this.lifecycle.listAgents({ status: AgentStatus.HEALTHY })
        : this.pools
            .getPool(options.poolId)
            .currentAgents.map((id) => this.lifecycle.agentInfo(id))
            .filter((a) => a.status === AgentStatus.HEALTHY);
    let best: AgentInfo | undefined;
    let bestFree = 0;
    for (const a of candidates) {
      const free = this.scheduler.freeSlots(a.id);
      if (free > bestFree) {
        best = a;
        bestFree = free;
      }
    }
    if (best === undefined) throw new NoAvailableAgentError(options.poolId);
    return best;
  }

  // -------------------------------------------------------------------------------------------
  // Figures

  /** Agent, task and pool figures. */
  async getFabricStats(): Promise<FabricStats> {
    const s = this.scheduler.stats();
    const byStatus = Object.fromEntries(Object.values(AgentStatus).map((st) => [st, 0])) as Record<
      AgentStatus,
      number
    >;
    for (const a of this.lifecycle.listAgents()) byStatus[a.status]++;
    // Entries, not assignments, and own keys only: a pool id may be `__proto__` or `constructor`.
    const pools: [string, PoolStats][] = [];
    for (const p of this.pools.listPools()) {
      const load = (Object.hasOwn(s.pools, p.poolId) ? s.pools[p.poolId] : undefined) ?? {
        agents: 0,
        acceptingAgents: 0,
        queuedTasks: 0,
        runningTasks: 0,
        completedTasks: 0,
        failedTasks: 0,
      };
      const healthy = p.currentAgents.filter(
        (id) => this.lifecycle.peek(id)?.status === AgentStatus.HEALTHY,
      ).length;
      pools.push([p.poolId, { ...load, healthyAgents: healthy }]);
    }
    return {
      ...s,
      activeAgents: this.lifecycle.activeAgents,
      agentsByStatus: byStatus,
      pools: Object.fromEntries(pools),
    };
  }

  /**
   * The NATS connection's state: `undefined` without `FabricOptions.nats` or before
   * {@link start} connected; `connected`; `reconnecting` after the server went away (the client
   * retries forever); `closed` once closed (the fabric closing).
   */
  get natsState(): 'connected' | 'reconnecting' | 'closed' | undefined {
    const nc = this.#nc;
    if (nc === undefined) return undefined;
    if (nc.isClosed()) return 'closed';
    return this.#natsConnected ? 'connected' : 'reconnecting';
  }

  /** Follows `nc`'s status events (the iterator ends when the connection closes). */
  #followNatsStatus(nc: NatsConnection): void {
    void (async () => {
      for await (const s of nc.status()) {
        if (s.type === 'disconnect') this.#natsConnected = false;
        else if (s.type === 'reconnect') this.#natsConnected = true;
      }
    })().catch(() => {
      // the status iterator does not fail; nothing to report if it ever did
    });
  }

  /** Whether {@link close} was called. */
  get isClosed(): boolean {
    return this.#closed;
  }

  #open(): void {
    if (this.#closed) throw new ClosedError('fabric');
  }

  // -------------------------------------------------------------------------------------------
  // Hooks

  /**
   * The hook an agent must run when it starts or reconnects ("if there is work on your hook, you
   * run it"): its ACTIVE hook, else its oldest PENDING one.
   * @throws InvalidArgumentError when the fabric has no hooks configured.
   */
  async hookFor(agentId: string): Promise<Hook | undefined> {
    return this.#hooks().hookFor(agentId);
  }

  /** Picks up the agent's own hook (PENDING → ACTIVE). @throws HookNotFoundError for another agent's hook */
  async activateHook(agentId: string, hookId: string): Promise<Hook> {
    await this.#ownHook(agentId, hookId, HookStatus.ACTIVE);
    return this.#hooks().activateHook(hookId, { agentId });
  }

  /** Completes the agent's own ACTIVE hook with its result. */
  async completeHook(agentId: string, hookId: string, result?: unknown): Promise<Hook> {
    await this.#ownHook(agentId, hookId, HookStatus.COMPLETED);
    return this.#hooks().completeHook(hookId, result ?? null, { agentId });
  }

  /**
   * Fails the agent's own PENDING or ACTIVE hook. Not an ABANDONED one: the agent no longer holds
   * it (the operator may still fail it through the hook store). An empty (or all-whitespace)
   * message is recorded as "failed", an empty code as none — the same through every door.
   */
  async failHook(
    agentId: string,
    hookId: string,
    error: { code?: string; message?: string },
  ): Promise<Hook> {
    await this.#ownHook(agentId, hookId, HookStatus.FAILED);
    const failure = {
      ...(blank(error?.code) ? {} : { code: error.code }),
      message: blank(error?.message) ? EMPTY_FAILURE_MESSAGE : error.message,
    };
    return this.#hooks().failHook(hookId, failure, { agentId });
  }

  /**
   * Records progress on the agent's own ACTIVE hook (the patrol flags hooks without any). An empty
   * (or all-whitespace) note is no note: `progressNote` becomes `null`.
   */
  async recordHookProgress(agentId: string, hookId: string, note?: string): Promise<Hook> {
    await this.#ownHook(agentId, hookId, HookStatus.ACTIVE);
    return this.#hooks().recordProgress(hookId, blank(note) ? undefined : note, { agentId });
  }

  /**
   * Puts work on an agent's hook (an operator's call: the agent must exist and not be
   * terminated).
   * @throws AgentNotFoundError; AgentUnavailableError; InvalidArgumentError without hooks.
   */
  async createHook(request: CreateHookRequest): Promise<Hook> {
    const hooks = this.#hooks();
    this.#hookAgent(request?.agentId);
    return hooks.createHook(request);
  }

  /** The hook with this id. @throws HookNotFoundError */
  async getHook(hookId: string): Promise<Hook> {
    return this.#hooks().getHook(hookId);
  }

  /** Hooks matching `filter`, oldest first. */
  async listHooks(filter: ListHooksFilter = {}): Promise<Hook[]> {
    return this.#hooks().listHooks(filter);
  }

  /**
   * Gives a FAILED or ABANDONED hook to `agentId` (an operator's call: the agent must exist and
   * not be terminated); it is PENDING there and keeps its worktree.
   * @throws AgentNotFoundError; AgentUnavailableError; HookStateError; HookRetryLimitError.
   */
  async reassignHook(hookId: string, agentId: string): Promise<Hook> {
    const hooks = this.#hooks();
    this.#hookAgent(agentId);
    return hooks.reassignHook(hookId, agentId);
  }

  #hookAgent(agentId: string): void {
    const rec = this.lifecycle.peek(agentId);
    if (rec === undefined) throw new AgentNotFoundError(String(agentId));
    if (rec.status === AgentStatus.TERMINATED) throw new AgentUnavailableError(rec.id, rec.status);
  }

  /**
   * No agent acts on another's hook, nor on its own once it was abandoned (it no longer holds
   * it). Checked here for every hook store; HookManager checks it again with the transition.
   * @throws HookNotFoundError for an unknown or foreign hook; HookStateError for an ABANDONED one
   */
  async #ownHook(agentId: string, hookId: string, to: HookStatus): Promise<void> {
    const hook = await this.#hooks().getHook(hookId);
    // Answered exactly like an unknown hook: an agent must not learn which hooks exist.
    if (hook.agentId !== agentId) throw new HookNotFoundError(hookId);
    if (hook.status === HookStatus.ABANDONED) throw abandonedError(hook, agentId, to);
  }

  /**
   * Abandons the lost agent's unfinished hooks and, with `autoReassign`, gives them to the
   * least-loaded healthy agent of the same pool. Runs in the background, one recovery at a time.
   */
  #recoverHooks(agentId: string): void {
    const hooks = this.hooks;
    if (hooks === undefined || this.#closed) return;
    const poolId = this.lifecycle.peek(agentId)?.poolId;
    this.#recovery = this.#recovery.then(async () => {
      try {
        const abandoned: string[] = [];
        if (!this.#isAlive(agentId)) {
          // Only its open hooks, one status per call (what every hook store plugin answers):
          // the store need not read its finished ones (up to `finishedRetention`) to find them.
          // PENDING first: one activated between the two reads is in the second (a hook never
          // goes from ACTIVE back to PENDING), and is kept once.
          const open = new Map<string, Hook>();
          for (const status of [HookStatus.PENDING, HookStatus.ACTIVE]) {
            for (const h of await hooks.listHooks({ agentId, status })) open.set(h.hookId, h);
          }
          const ordered = [...open.values()].sort((a, b) => a.createdAt - b.createdAt);
          for (const h of ordered) {
            if (h.status === HookStatus.ACTIVE || h.status === HookStatus.PENDING) {
              const status = this.lifecycle.peek(agentId)?.status ?? 'gone';
              await hooks.abandonHook(h.hookId, `agent ${agentId} is ${status}`);
              abandoned.push(h.hookId);
            }
          }
        }
        const reassigned: string[] = [];
        if (this.#autoReassign) {
          const report = await hooks.recoverAbandoned({
            patrol: false,
            pickAgent: (hook) =>
              hook.agentId === agentId ? this.#pickHookAgent(hook, poolId) : undefined,
          });
          for (const r of report.reassigned) reassigned.push(r.hookId);
        }
        if (abandoned.length > 0 || reassigned.length > 0) {
          this.events.emit('hooks.recovered', { agentId, abandoned, reassigned });
        }
      } catch (err) {
        if (this.events.listens('error')) {
          this.events.emit('error', err instanceof Error ? err : new Error(String(err)));
        }
      }
    });
  }

  /**
   * The next owner of an ABANDONED hook. Its own agent, when it is HEALTHY again (it heartbeated
   * before another agent took the hook), gets it back: it has the context, and the hook's
   * worktree is its own work. Otherwise the least-loaded healthy agent with a free slot of the
   * pool the agent was in (`poolId` as known when it was lost; any healthy agent when the agent
   * had no pool or is no longer known); none: `undefined`, and the patrol asks again.
   */
  async #pickHookAgent(
    hook: Hook,
    poolId = this.lifecycle.peek(hook.agentId)?.poolId,
  ): Promise<string | undefined> {
    if (this.lifecycle.peek(hook.agentId)?.status === AgentStatus.HEALTHY) return hook.agentId;
    try {
      return (await this.getAvailableAgent(poolId === undefined ? {} : { poolId })).id;
    } catch {
      return undefined;
    }
  }

  /** Settles once every hook recovery started so far has finished (for tests and shutdown). */
  async hookRecoveryIdle(): Promise<void> {
    // A recovery can queue another (its abandonments announce `hook.abandoned`): wait for all.
    let seen: Promise<void>;
    do {
      seen = this.#recovery;
      await seen;
    } while (seen !== this.#recovery);
  }

  #hooks(): HookStore {
    if (this.#hookStore === undefined) {
      throw new InvalidArgumentError(
        'hooks',
        'are not configured (FabricOptions.hooks or a hook plugin)',
      );
    }
    return this.#hookStore;
  }

  #isAlive(agentId: string): boolean {
    const st = this.lifecycle.peek(agentId)?.status;
    return st !== undefined && st !== AgentStatus.UNHEALTHY && st !== AgentStatus.TERMINATED;
  }
}

export { EMPTY_FAILURE_MESSAGE };

/** An agent's optional text that says nothing: absent, empty or only whitespace. */
function blank(text: string | undefined): text is undefined | '' {
  return typeof text !== 'string' || text.trim() === '';
}

/**
 * The refusal of a tool call whose agent is gone, draining or terminated (`FABRIC_ERR_AGENT_NOT_FOUND`,
 * `FABRIC_ERR_AGENT_UNAVAILABLE`); undefined while the agent may call.
 */
function leavingAgentRefusal(
  agentId: string,
  rec: Readonly<AgentRecord> | undefined,
): ToolCallDenied | undefined {
  if (
    rec !== undefined &&
    rec.status !== AgentStatus.DRAINING &&
    rec.status !== AgentStatus.TERMINATED
  )
    return undefined;
  const error =
    rec === undefined
      ? new AgentNotFoundError(String(agentId))
      : new AgentUnavailableError(rec.id, rec.status);
  return { allowed: false, code: error.code, reason: error.message, details: error.details, error };
}

/** `refused`, for a call `auth` let through after a human's yes, with that approval (audit). */
function withApproval(refused: ToolCallDenied, auth: ToolCallAllowed): ToolCallDenied {
  return auth.approval === undefined ? refused : { ...refused, approval: auth.approval };
}

/**
 * AgentScheduler: priority and fair queues, deadlines, timeouts, retries, dispatch to executors,
 * and the claim API of agents that pull their work.
 *
 * Order of service (see {@link FairQueue}): strict priority across levels; within a level,
 * weighted round robin across tenants; within a tenant, earliest deadline first, then FIFO.
 * Each agent has its own queue (tasks addressed to it) and serves its pool's queue too; its
 * {@link TenantMix} runs the round robin across the tenants of both, so fairness holds for what
 * the agent runs, not per queue. Pool tasks go to the least-loaded accepting agent of the pool.
 *
 * Costs: schedule, dispatch, cancel, complete and every timer are O(log n) in the queued or
 * running tasks; one timer (the earliest due task) is armed at a time; dispatch runs in batches
 * once per microtask turn, handing each executor one array per turn.
 *
 * Its runtime pieces live beside it: the agents' and pools' slots (`slots.ts`), the timer heap
 * (`task-timers.ts`), waiters (`task-waiters.ts`), the finished-task retention
 * (`finished-retention.ts`) and the rebuilding of tasks from a durable store (`task-recovery.ts`,
 * used by {@link AgentScheduler.restore}). A task's stored form is `TaskData` (`task-record.ts`).
 *
 * @module
 */
import { randomBytes } from 'node:crypto';
import {
  AgentBusyError,
  AgentNotFoundError,
  ClosedError,
  ExecutorNotFoundError,
  InvalidArgumentError,
  PoolDrainingError,
  PoolNotFoundError,
  QueueFullError,
  TaskNotFoundError,
  TaskStateError,
} from '../errors.js';
import { defaultQueueDepthPerTenant } from '../config.js';
import { TypedEmitter } from '../events.js';
import type { Collection, OwedAborts } from '../store/store.js';
import { MemoryCollection, SequentialCollection } from '../store/memory-store.js';
import type { ScheduleOptions, Task, TaskAssignment, TaskError } from '../task.js';
import { Priority, TaskStatus, isFinished } from '../task.js';
import { checkNumber, checkString, jsonByteLength } from '../validate.js';
import type { ExecutorSink, TaskExecutor } from './executor.js';
import type { FairQueue, TenantWeights } from './fair-queue.js';
import { MAX_ENDED_NOTICES, RemoteExecutor, type EndedTask } from './remote-executor.js';
import { AwaitedExecutor } from './awaited-executor.js';
import type { ExecutorEntry } from './slots.js';
import { AgentSlot, PoolSlot } from './slots.js';
import { FinishedRetention } from './finished-retention.js';
import { clockMs, MAX_TASK_ATTEMPTS, TaskRecord } from './task-record.js';
import { TaskTimers } from './task-timers.js';
import {
  MAX_TIMER_MS,
  setLongTimeout,
  hasWaiters,
  rejectWaiters,
  settleWaiters,
  waitForEnd,
} from './task-waiters.js';
import {
  agentGone,
  deadlinePassed,
  interruptedAttempt,
  owesAbort,
  recoverTasks,
  wasRunning,
} from './task-recovery.js';

/** Where a task held back until its `notBefore` goes when released. */
interface Held {
  queue: FairQueue;
  agent: AgentSlot | undefined;
  pool: PoolSlot | undefined;
}

/** The options of a task scheduled without any (shared: a default `{}` is an object per call). */
const NO_OPTIONS: ScheduleOptions = Object.freeze({});

/**
 * Most evicted records kept for reuse. Steady churn reuses a record within a few tasks, so a few
 * thousand serve it; keeping every record a burst leaves behind (up to `maxQueueDepth`) would
 * hold ~0.5 KB of old generation per record for good — 100 MB after a burst of 200k tasks — which
 * every later full collection has to mark.
 */
const MAX_SPARE_RECORDS = 4096;

/** Options of an {@link AgentScheduler}. */
export interface SchedulerOptions {
  /** @default 1000 */
  maxQueueDepth?: number;
  /**
   * Most of the `maxQueueDepth` waiting tasks one tenant may hold: past it that tenant's
   * `schedule` throws `QueueFullError` while the rest of the queue stays open to other tenants.
   * At most `maxQueueDepth` (equal: no per-tenant bound).
   * @default three quarters of `maxQueueDepth` (at least 1)
   */
  maxQueueDepthPerTenant?: number;
  /** @default 300 */
  defaultTimeoutSeconds?: number;
  /** @default 5 */
  maxConcurrentTasksPerAgent?: number;
  /** @default 3 */
  defaultMaxAttempts?: number;
  /** @default 10000 */
  finishedTaskRetention?: number;
  /**
   * Finished tasks kept apart by tenant: `group(tenant)` names the group of a task of `tenant`
   * (`undefined`: none), and a group keeps only its newest `limit` finished tasks, evicting its
   * own oldest rather than other tasks (they count in `finishedTaskRetention` too). The fabric
   * groups the tasks an agent scheduled itself by agent (`finishedTaskRetentionPerAgent`).
   * @default no groups
   */
  finishedGroups?: { limit: number; group: (tenant: string) => string | undefined };
  /**
   * Where task records live. A collection that is not {@link Collection.holdsReferences} (a
   * durable store) is told of every change, and payloads, results and progress must then be
   * JSON-serializable. @default an in-memory collection
   */
  tasks?: Collection<TaskRecord>;
  /**
   * Where the aborts owed to agents whose executor tells them later are kept until they are
   * told (see `AgentScheduler.takeEndedTasks`): a durable collection carries them over a
   * restart. @default an in-memory collection
   */
  owedAborts?: Collection<OwedAborts>;
  /**
   * True when `owedAborts` holds every abort owed when the process that wrote it stopped (see
   * `FabricStore.owedAbortsComplete`): then {@link AgentScheduler.restore} tells only those, not
   * again the interrupted attempts of queued tasks (which their agents may have taken already).
   * @default false
   */
  owedAbortsComplete?: boolean;
  /** Fairness weight of a tenant (tasks per round-robin turn). @default 1 for every tenant */
  tenantWeight?: TenantWeights;
}

/** Events of the scheduler. Payloads are snapshots. */
export type SchedulerEvents = {
  'task.scheduled': [task: Task];
  'task.started': [task: Task];
  'task.progress': [task: Task];
  'task.retried': [task: Task, reason: TaskError];
  'task.finished': [task: Task];
};

/** Counters and gauges of the scheduler. */
export interface SchedulerStats {
  pendingTasks: number;
  runningTasks: number;
  completedTasks: number;
  failedTasks: number;
  timedOutTasks: number;
  cancelledTasks: number;
  /** Tasks waiting in queues; what `maxQueueDepth` bounds. */
  queueDepth: number;
  /** Tasks scheduled by this scheduler since it was created (recovered ones not included). */
  scheduledTasks: number;
  /** Attempts that failed and were queued again, since the scheduler was created. */
  retriedTasks: number;
  pools: Record<string, PoolLoad>;
}

/** Load figures of one pool. */
export interface PoolLoad {
  agents: number;
  acceptingAgents: number;
  queuedTasks: number;
  runningTasks: number;
  completedTasks: number;
  failedTasks: number;
}

/** Load figures of one agent. */
export interface AgentLoad {
  runningTasks: number;
  queuedTasks: number;
  completedTasks: number;
  failedTasks: number;
}

/** Filter of {@link AgentScheduler.listTasks}; unset fields match every task. */
export interface TaskFilter {
  status?: TaskStatus;
  poolId?: string;
  /** Tasks addressed to this agent or assigned to it. */
  agentId?: string;
}

/** How an agent is known to the scheduler. */
export interface SchedulerAgent {
  agentId: string;
  poolId?: string;
  /** Executor name. */
  executor: string;
  /** Most tasks it holds at once. @default maxConcurrentTasksPerAgent */
  capacity?: number;
}

/** Where a task goes: one agent's queue, or a pool's. */
export type ScheduleTarget =
  { agentId: string; poolId?: undefined } | { poolId: string; agentId?: undefined };

/** The scheduler. Usable on its own; {@link AgentFabric} wires it to agents and pools. */
export class AgentScheduler {
  readonly events = new TypedEmitter<SchedulerEvents>();
  readonly #tasks: Collection<TaskRecord>;
  readonly #owed: Collection<OwedAborts>;
  readonly #owedComplete: boolean;
  /** The store keeps the records themselves, so changes need no `put`. */
  readonly #byReference: boolean;
  readonly #maxQueueDepth: number;
  /** `maxQueueDepthPerTenant`; `#queuedByTenant` is kept only while it is below `#maxQueueDepth`. */
  readonly #maxPerTenant: number;
  /** Waiting tasks (what `#pending` counts) of each tenant that has any. */
  readonly #queuedByTenant: Map<string, number> | undefined;
  readonly #maxSpare: number;
  readonly #defaultTimeoutMs: number;
  readonly #perAgent: number;
  readonly #defaultMaxAttempts: number;
  readonly #weights: TenantWeights;

  readonly #executors = new Map<string, ExecutorEntry>();
  /** Entries of executors restored agents name that are not registered yet (placeholders). */
  readonly #awaited = new Map<string, ExecutorEntry>();
  readonly #agents = new Map<string, AgentSlot>();
  readonly #pools = new Map<string, PoolSlot>();
  readonly #remote = new RemoteExecutor();

  readonly #timers = new TaskTimers((t, now) => this.#due(t, now));

  /**
   * Records of evicted tasks, for new tasks to reuse (see {@link TaskRecord.reuse}): at most
   * {@link MAX_SPARE_RECORDS} (and `maxQueueDepth`) of them, and only with a store that holds the records themselves (a durable
   * store may still hold an evicted record for its next commit). A record enters when its task
   * leaves the store, which is the last thing done with it (see {@link #finish}).
   */
  readonly #spare: TaskRecord[] = [];

  /** Tasks held back until their `notBefore`, with where they go then. */
  readonly #delayed = new Map<TaskRecord, Held>();
  readonly #finished: FinishedRetention;
  /** The group of a finished task of a tenant (`SchedulerOptions.finishedGroups`). */
  readonly #finishedGroup: ((tenant: string) => string | undefined) | undefined;

  readonly #dirtyAgents = new Set<AgentSlot>();
  readonly #dirtyPools = new Set<PoolSlot>();
  readonly #flush: ExecutorEntry[] = [];
  /** Agents whose fill stopped at a pool task in this pass (see {@link #fillAgent}). */
  readonly #deferred: AgentSlot[] = [];
  #passQueued = false;
  #dispatching = false;
  /**
   * The clocks read once per dispatch pass, at its first start (NaN until then): every task the
   * pass starts shares the reading. The executors get the pass's tasks when it ends, so a
   * reading per task was no closer to when each began, and cost two clock calls per task.
   */
  #passMono = Number.NaN;
  #passWall = Number.NaN;

  #seq = 0;
  /**
   * Task ids are a random per-scheduler prefix plus a counter: unique across restarts and
   * replicas, and ~50x cheaper than a UUID per task. Ids are not secrets: every operation on a
   * task checks who holds it.
   */
  readonly #idPrefix = `t_${randomBytes(6).toString('base64url')}_`;
  /** Char codes of the id prefix, then room for the counter's digits: one array per digit count. */
  readonly #idCodes: number[][] = [];
  #pending = 0;
  #running = 0;
  #completed = 0;
  #failed = 0;
  #timedOut = 0;
  #cancelled = 0;
  #scheduled = 0;
  #retried = 0;
  #closed = false;
  #restored = false;

  readonly #sink: ExecutorSink = {
    complete: (id, attempt, result) => {
      const t = this.#reported(id, attempt);
      if (t === undefined) return;
      const unstorable = this.#unstorable('result', result);
      // A result the store cannot keep fails the task visibly rather than vanishing on restart.
      if (unstorable === undefined) {
        this.#complete(t, result);
        return undefined;
      }
      this.#retryOrFail(t, unstorable, false);
      return unstorable;
    },
    fail: (id, attempt, error, options) => {
      const t = this.#reported(id, attempt);
      // An error the store cannot keep is kept without its details, not lost on restart.
      if (t !== undefined)
        this.#retryOrFail(t, this.#storableError(error), options?.retry === true);
    },
    started: (id, attempt) => {
      const t = this.#reported(id, attempt);
      if (t !== undefined && t.status === TaskStatus.SCHEDULED) {
        t.status = TaskStatus.RUNNING;
        this.#saveStart(t, this.#agentOf(t));
      }
    },
    progress: (id, attempt, progress, mark) => {
      const t = this.#reported(id, attempt);
      // Progress is advisory: a report the store cannot keep is not applied (the task goes on).
      if (t !== undefined && this.#unstorable('progress', progress) === undefined) {
        if (mark !== undefined) t.reportMark = mark; // written with the progress
        this.#progress(t, progress);
      }
    },
  };

  constructor(options: SchedulerOptions = {}) {
    this.#maxQueueDepth = checkNumber(
      'options.maxQueueDepth',
      options.maxQueueDepth ?? 1000,
      'positiveInt',
    );
    this.#maxPerTenant =
      options.maxQueueDepthPerTenant === undefined
        ? defaultQueueDepthPerTenant(this.#maxQueueDepth)
        : checkNumber(
            'options.maxQueueDepthPerTenant',
            options.maxQueueDepthPerTenant,
            'positiveInt',
          );
    if (this.#maxPerTenant > this.#maxQueueDepth) {
      throw new InvalidArgumentError(
        'options.maxQueueDepthPerTenant',
        `must be at most maxQueueDepth (${this.#maxQueueDepth})`,
      );
    }
    this.#queuedByTenant = this.#maxPerTenant < this.#maxQueueDepth ? new Map() : undefined;
    this.#maxSpare = Math.min(this.#maxQueueDepth, MAX_SPARE_RECORDS);
    this.#defaultTimeoutMs = timeoutMs(
      'options.defaultTimeoutSeconds',
      options.defaultTimeoutSeconds ?? 300,
    );
    this.#perAgent = checkNumber(
      'options.maxConcurrentTasksPerAgent',
      options.maxConcurrentTasksPerAgent ?? 5,
      'positiveInt',
    );
    this.#defaultMaxAttempts = attempts(
      'options.defaultMaxAttempts',
      options.defaultMaxAttempts ?? 3,
    );
    this.#tasks = options.tasks ?? new SequentialCollection<TaskRecord>();
    this.#owed = options.owedAborts ?? new MemoryCollection<OwedAborts>();
    this.#owedComplete = options.owedAbortsComplete === true;
    this.#finished = new FinishedRetention(
      checkNumber(
        'options.finishedTaskRetention',
        options.finishedTaskRetention ?? 10_000,
        'nonNegativeInt',
      ),
      (id) => this.#evict(id),
      options.finishedGroups === undefined
        ? undefined
        : checkNumber('options.finishedGroups.limit', options.finishedGroups.limit, 'positiveInt'),
    );
    this.#finishedGroup = options.finishedGroups?.group;
    this.#byReference = this.#tasks.holdsReferences === true;
    if ('unwritten' in this.#tasks)
      this.#tasks.unwritten = (records, error) => this.#unwritten(records, error);
    this.#weights = options.tenantWeight ?? (() => 1);
    this.registerExecutor(this.#remote);
  }

  // -------------------------------------------------------------------------------------------
  // Executors, agents, pools

  /**
   * Adds an executor under its name; agents name it in `SchedulerAgent.executor`. Restored agents
   * that were waiting for an executor of that name (see {@link addAgent}) start taking work on
   * it, and it is told of the attempts the restart ended on them.
   */
  registerExecutor(executor: TaskExecutor): void {
    if (this.#executors.has(executor.name)) {
      throw new InvalidArgumentError(
        'executor.name',
        `${JSON.stringify(executor.name)} is already registered`,
      );
    }
    executor.bind(this.#sink);
    const awaited = this.#awaited.get(executor.name);
    if (awaited === undefined) {
      this.#executors.set(executor.name, { executor, pending: [], slots: [] });
      return;
    }
    this.#awaited.delete(executor.name);
    const placeholder = awaited.executor as AwaitedExecutor;
    awaited.executor = executor;
    this.#executors.set(executor.name, awaited);
    const slots = [...this.#agents.values()].filter((slot) => slot.exec === awaited);
    for (const slot of slots) executor.attachAgent?.(slot.id);
    for (const a of placeholder.aborts) {
      if (this.#agents.get(a.agentId)?.exec === awaited) {
        executor.abort(a.taskId, a.attempt, a.reason, a.agentId);
      }
    }
    // Told: the registered executor takes them from here.
    for (const slot of slots) this.#owed.delete(slot.id);
    for (const slot of slots) this.#markAgent(slot);
  }

  /**
   * The executors that restored agents name but that are not registered yet, each with those
   * agents' ids (they take no work until it is registered).
   */
  awaitedExecutors(): { executor: string; agentIds: string[] }[] {
    return [...this.#awaited].map(([executor, entry]) => ({
      executor,
      agentIds: [...this.#agents.values()].filter((s) => s.exec === entry).map((s) => s.id),
    }));
  }

  /** Whether restored agents wait for an executor named `name` (see {@link awaitedExecutors}). */
  awaits(name: string): boolean {
    return this.#awaited.has(name);
  }

  /**
   * Removes the executor registered under `name` (its plugin is unloading): the work of the
   * agents using it is taken back as {@link evictAgent} does and they are forgotten here (they
   * take no more work). The executor is not closed: whoever registered it closes it.
   * @returns the executor, or undefined when none has that name.
   */
  unregisterExecutor(name: string): TaskExecutor | undefined {
    const entry = this.#executors.get(name);
    if (entry === undefined) return undefined;
    for (const slot of [...this.#agents.values()]) {
      if (slot.exec !== entry) continue;
      this.evictAgent(
        slot.id,
        { code: 'FABRIC_ERR_AGENT_UNAVAILABLE', message: `executor ${name} was removed` },
        { remove: true },
      );
    }
    this.#executors.delete(name);
    return entry.executor;
  }

  /** The executor registered under `name`. */
  getExecutor(name: string): TaskExecutor | undefined {
    return this.#executors.get(name)?.executor;
  }

  /**
   * Makes a pool queue. `restored`: the id of a pool a durable store kept, taken as stored — one
   * written before control characters were refused must still load (and be deleted), not stop
   * the restart.
   */
  addPool(poolId: string, options: { restored?: boolean } = {}): void {
    if (options.restored !== true) checkString('poolId', poolId);
    if (!this.#pools.has(poolId)) this.#pools.set(poolId, new PoolSlot(poolId, this.#weights));
  }

  /**
   * Makes an agent known. It takes no work until {@link setAccepting} opens it. `restored`: an
   * agent a durable store kept, whose executor may not be registered yet (a plugin's loads after
   * the state is restored): it then waits for it, taking no work until an executor of that name
   * is registered (see {@link awaitedExecutors}).
   * @throws ExecutorNotFoundError when the executor is not registered and the agent not restored.
   */
  addAgent(agent: SchedulerAgent, options: { restored?: boolean } = {}): void {
    this.#open();
    let exec = this.#executors.get(agent.executor);
    if (exec === undefined) {
      if (options.restored !== true) throw new ExecutorNotFoundError(agent.executor);
      exec = this.#awaited.get(agent.executor);
      if (exec === undefined) {
        exec = { executor: new AwaitedExecutor(agent.executor), pending: [], slots: [] };
        this.#awaited.set(agent.executor, exec);
      }
    }
    let pool: PoolSlot | undefined;
    if (agent.poolId !== undefined) {
      pool = this.#pools.get(agent.poolId);
      if (pool === undefined) throw new PoolNotFoundError(agent.poolId);
    }
    const capacity = checkNumber('capacity', agent.capacity ?? this.#perAgent, 'positiveInt');
    const slot = new AgentSlot(agent.agentId, pool, exec, capacity, this.#weights);
    this.#agents.set(agent.agentId, slot);
    if (pool !== undefined) {
      pool.agents.push(slot);
      for (const flow of pool.queue.flows()) slot.mix!.update(flow, true);
    }
    exec.executor.attachAgent?.(agent.agentId);
  }

  /** Opens or closes an agent for new work (health changes). Draining agents stay closed. */
  setAccepting(agentId: string, accepting: boolean): void {
    const slot = this.#agents.get(agentId);
    if (slot === undefined || slot.draining || slot.accepting === accepting) return;
    slot.accepting = accepting;
    if (accepting) {
      slot.evicted = false;
      this.#markAgent(slot);
    }
  }

  /**
   * Stops giving `agentId` work, waits up to `timeoutMs` for its running tasks to finish, then
   * takes back what is left (see {@link evictAgent}) and forgets the agent.
   */
  async drainAgent(agentId: string, timeoutMs: number): Promise<void> {
    const slot = this.#agents.get(agentId);
    if (slot === undefined) return;
    slot.accepting = false;
    slot.draining = true;
    if (slot.running.size > 0) await this.#whenIdle(slot.idle, timeoutMs);
    this.evictAgent(
      agentId,
      { code: 'FABRIC_ERR_AGENT_UNAVAILABLE', message: `agent ${agentId} terminated` },
      {
        remove: true,
        finalStatus: TaskStatus.CANCELLED,
      },
    );
  }

  /**
   * Takes an agent's work back. Its queued tasks move to its pool, or fail when pinned or when it
   * has no pool; so do the tasks held back for it until their `notBefore`, still held, except
   * that only `remove` fails them (else they wait for it). Its running tasks are aborted and retried in the pool while attempts remain,
   * else end with `finalStatus` (FAILED, or CANCELLED for a terminate's drain timeout).
   */
  evictAgent(
    agentId: string,
    reason: TaskError,
    options: { remove: boolean; finalStatus?: TaskStatus.FAILED | TaskStatus.CANCELLED },
  ): void {
    const slot = this.#agents.get(agentId);
    if (slot === undefined) return;
    slot.accepting = false;
    // Before its running tasks are retried: none of them goes back to this agent's own queue.
    slot.evicted = true;
    const pool = slot.pool;
    for (const t of slot.queue.drain()) {
      if (!t.pinned && pool !== undefined) {
        t.poolId = pool.id;
        pool.queue.push(t);
        this.#save(t);
      } else {
        this.#finish(t, TaskStatus.FAILED, undefined, reason);
      }
    }
    // Its tasks held back until their notBefore (or a budget) follow the same rule, still held —
    // except that an agent only evicted (UNHEALTHY) keeps its pinned ones for when it is back
    // (a budget-held pinned task must not fail on a missed heartbeat); its unpinned ones go to
    // its pool as its queued ones do (released into its queue, they would wait for it there).
    for (const [t] of this.#heldFor(slot)) {
      if (!t.pinned && pool !== undefined) {
        t.poolId = pool.id;
        this.#delayed.set(t, { queue: pool.queue, agent: undefined, pool });
        this.#save(t);
      } else if (options.remove) {
        this.#finish(t, TaskStatus.FAILED, undefined, reason);
      }
    }
    for (const t of slot.running.toArray()) {
      this.#tell(t.id, t.attempt, slot, reason);
      this.#retryOrFail(t, reason, true, options.finalStatus ?? TaskStatus.FAILED);
    }
    if (options.remove) {
      this.#agents.delete(agentId);
      if (pool !== undefined) {
        const i = pool.agents.indexOf(slot);
        if (i >= 0) pool.agents.splice(i, 1);
      }
      slot.exec.executor.detachAgent?.(agentId);
      // Its notices went with it: nothing would ever take them.
      this.#owed.delete(agentId);
      for (const resolve of slot.idle.splice(0)) resolve();
    }
    if (pool !== undefined) this.#markPool(pool);
  }

  /**
   * Closes a pool to new tasks, lets its queued and running tasks finish for up to `timeoutMs`,
   * then cancels what is still queued in it. The pool's agents are not touched.
   */
  async drainPool(poolId: string, timeoutMs: number): Promise<void> {
    const pool = this.#pools.get(poolId);
    if (pool === undefined) throw new PoolNotFoundError(poolId);
    pool.accepting = false;
    if (pool.queue.size > 0 || pool.running > 0) await this.#whenIdle(pool.idle, timeoutMs);
    const reason = { code: 'FABRIC_ERR_POOL_DRAINING', message: `pool ${poolId} was deleted` };
    for (const t of pool.queue.drain()) this.#finish(t, TaskStatus.CANCELLED, undefined, reason);
    for (const [t] of this.#heldFor(pool)) this.#finish(t, TaskStatus.CANCELLED, undefined, reason);
  }

  /** Forgets a pool (after its agents are gone). */
  removePool(poolId: string): void {
    const pool = this.#pools.get(poolId);
    if (pool === undefined) return;
    const reason = { code: 'FABRIC_ERR_POOL_NOT_FOUND', message: `pool ${poolId} was removed` };
    for (const t of pool.queue.drain()) this.#finish(t, TaskStatus.CANCELLED, undefined, reason);
    for (const [t] of this.#heldFor(pool)) this.#finish(t, TaskStatus.CANCELLED, undefined, reason);
    this.#pools.delete(poolId);
  }

  /**
   * The tasks held back until their `notBefore` that go to `slot`'s own queue when released (a
   * copy: the caller moves or ends them). A scan of the held tasks: for evictions and pool
   * removals, which are rare, so that holding a task costs no index.
   */
  #heldFor(slot: AgentSlot | PoolSlot): [TaskRecord, Held][] {
    const out: [TaskRecord, Held][] = [];
    if (this.#delayed.size === 0) return out;
    const isAgent = slot instanceof AgentSlot;
    for (const entry of this.#delayed) {
      const held = entry[1];
      if (isAgent ? held.agent === slot : held.agent === undefined && held.pool === slot)
        out.push(entry);
    }
    return out;
  }

  /**
   * Resolves when `list`'s idle callbacks run, or after `timeoutMs` — however long: a drain
   * timeout past setTimeout's limit (~24.8 days) is waited out in steps, not fired at once.
   */
  #whenIdle(list: (() => void)[], timeoutMs: number): Promise<void> {
    return new Promise<void>((resolve) => {
      const cancel = setLongTimeout(done, timeoutMs);
      function done(): void {
        cancel();
        const i = list.indexOf(done);
        if (i >= 0) list.splice(i, 1);
        resolve();
      }
      list.push(done);
    });
  }

  // -------------------------------------------------------------------------------------------
  // Scheduling

  /**
   * Queues a task for an agent (`target.agentId`) or a pool (`target.poolId`).
   * @throws QueueFullError past `maxQueueDepth`; InvalidArgumentError for bad options;
   *   AgentNotFoundError / PoolNotFoundError / PoolDrainingError for a bad target.
   */
  schedule(
    target: ScheduleTarget,
    taskType: string,
    payload: unknown,
    options: ScheduleOptions = NO_OPTIONS,
  ): Task {
    const t = this.#submit(target, taskType, payload, options);
    const snap = t.snapshot();
    if (this.events.listens('task.scheduled')) this.events.emit('task.scheduled', snap);
    return snap;
  }

  /** {@link schedule} returning only the new task's id: the cheapest way in. */
  submit(
    target: ScheduleTarget,
    taskType: string,
    payload: unknown,
    options: ScheduleOptions = NO_OPTIONS,
  ): string {
    const t = this.#submit(target, taskType, payload, options);
    if (this.events.listens('task.scheduled')) this.events.emit('task.scheduled', t.snapshot());
    return t.id;
  }

  #submit(
    target: ScheduleTarget,
    taskType: string,
    payload: unknown,
    options: ScheduleOptions,
  ): TaskRecord {
    this.#open();
    checkString('taskType', taskType);
    const priority = options.priority ?? Priority.NORMAL;
    if (priority !== 0 && priority !== 1 && priority !== 2 && priority !== 3) {
      throw new InvalidArgumentError(
        'priority',
        `must be one of Priority.CRITICAL..LOW (0-3), got ${String(priority)}`,
      );
    }
    let deadline: number | undefined;
    if (options.deadline !== undefined) {
      deadline = options.deadline instanceof Date ? options.deadline.getTime() : options.deadline;
      checkNumber('deadline', deadline, 'positiveNumber');
      if (deadline > MAX_TASK_DEADLINE_MS) {
        throw new InvalidArgumentError(
          'deadline',
          `must be at most ${new Date(MAX_TASK_DEADLINE_MS).toISOString()} (what a protobuf Timestamp holds), got ${String(deadline)}`,
        );
      }
      if (deadline <= Date.now())
        throw new InvalidArgumentError('deadline', 'is already in the past');
    }
    const taskTimeoutMs =
      options.timeoutSeconds === undefined
        ? this.#defaultTimeoutMs
        : timeoutMs('timeoutSeconds', options.timeoutSeconds);
    const maxAttempts =
      options.maxAttempts === undefined
        ? this.#defaultMaxAttempts
        : attempts('maxAttempts', options.maxAttempts);
    const tenant = options.tenant === undefined ? 'default' : checkString('tenant', options.tenant);
    let notBefore: number | undefined;
    if (options.notBefore !== undefined) {
      notBefore =
        options.notBefore instanceof Date ? options.notBefore.getTime() : options.notBefore;
      checkNumber('notBefore', notBefore, 'positiveNumber');
      if (notBefore <= Date.now()) notBefore = undefined;
    }

    let queue: FairQueue;
    let agent: AgentSlot | undefined;
    let pool: PoolSlot | undefined;
    if (target.agentId !== undefined) {
      agent = this.#agents.get(target.agentId);
      if (agent === undefined) throw new AgentNotFoundError(target.agentId);
      queue = agent.queue;
      pool = agent.pool;
    } else {
      pool = this.#pools.get(target.poolId);
      if (pool === undefined) throw new PoolNotFoundError(target.poolId);
      if (!pool.accepting) throw new PoolDrainingError(target.poolId);
      queue = pool.queue;
    }
    if (this.#pending >= this.#maxQueueDepth) throw new QueueFullError(this.#maxQueueDepth);
    const byTenant = this.#queuedByTenant;
    if (byTenant !== undefined) {
      const mine = byTenant.get(tenant) ?? 0;
      if (mine >= this.#maxPerTenant) {
        throw new QueueFullError(
          this.#maxPerTenant,
          `tenant ${JSON.stringify(tenant)} has ${mine} tasks waiting (maxQueueDepthPerTenant ${this.#maxPerTenant}); the rest of the queue is kept for other tenants`,
          tenant,
        );
      }
    }
    // Refused before it is acknowledged, not dropped by the store after.
    if (!this.#byReference) jsonByteLength('payload', payload);

    const now = clockMs();
    const id = this.#newId(this.#seq + 1);
    const pinned = options.pinned === true || (agent !== undefined && pool === undefined);
    // A record out of the retention serves the new task when there is one (see TaskRecord.reuse).
    const spare = this.#spare.pop();
    const task =
      spare === undefined
        ? new TaskRecord(
            id,
            taskType,
            payload,
            priority,
            target.agentId,
            pool?.id,
            pinned,
            tenant,
            deadline,
            taskTimeoutMs,
            maxAttempts,
            this.#seq,
            now,
          )
        : spare.reuse(
            id,
            taskType,
            payload,
            priority,
            target.agentId,
            pool?.id,
            pinned,
            tenant,
            deadline,
            taskTimeoutMs,
            maxAttempts,
            this.#seq,
            now,
          );
    this.#seq++;
    task.notBefore = notBefore;
    this.#tasks.put(task.id, task);
    this.#pending++;
    this.#queued(tenant, 1);
    this.#scheduled++;
    this.#place(task, queue, agent, pool);
    return task;
  }

  /**
   * The id of counter `n`: the prefix, then `n` in base 36 — made as one flat string. A template
   * string makes a rope of the prefix and a digit string, which the first lookup flattens into a
   * third string: ~90 B per task where this takes ~30, and at depth the rope and its flat copy
   * both live as long as the task.
   */
  #newId(n: number): string {
    let digits = 1;
    for (let x = n; x >= 36; x = Math.floor(x / 36)) digits++;
    const prefix = this.#idPrefix;
    let codes = this.#idCodes[digits];
    if (codes === undefined) {
      codes = [];
      for (let i = 0; i < prefix.length; i++) codes.push(prefix.charCodeAt(i));
      for (let i = 0; i < digits; i++) codes.push(48);
      this.#idCodes[digits] = codes;
    }
    for (let i = codes.length - 1, c = n; i >= prefix.length; i--) {
      const r = c % 36;
      codes[i] = r < 10 ? 48 + r : 87 + r; // 0-9, a-z
      c = (c - r) / 36;
    }
    return String.fromCharCode(...codes);
  }

  /**
   * Puts a PENDING task (already counted in `#pending`) in `queue` — or holds it back until its
   * `notBefore` — and arms its deadline.
   */
  #place(
    task: TaskRecord,
    queue: FairQueue,
    agent: AgentSlot | undefined,
    pool: PoolSlot | undefined,
  ): void {
    const notBefore = task.notBefore;
    if (notBefore !== undefined && notBefore > Date.now()) {
      this.#delay(task, notBefore, queue, agent, pool);
      return;
    }
    this.#enqueue(task, queue, agent, pool);
    if (task.deadline !== undefined) this.#timers.set(task, task.deadline);
  }

  /**
   * Holds a task back until `notBefore` (or its deadline, whichever comes first). Apart from
   * {@link #place} so that placing a task that runs at once allocates no closure.
   */
  #delay(
    task: TaskRecord,
    notBefore: number,
    queue: FairQueue,
    agent: AgentSlot | undefined,
    pool: PoolSlot | undefined,
  ): void {
    const deadline = task.deadline;
    this.#delayed.set(task, { queue, agent, pool });
    this.#timers.set(task, deadline === undefined ? notBefore : Math.min(deadline, notBefore));
  }

  /** A held task's `notBefore` came: into its queue (its agent and pool still exist: see evictAgent). */
  #releaseHeld(task: TaskRecord, held: Held): void {
    const { queue, agent, pool } = held;
    if (agent !== undefined && this.#agents.get(agent.id) !== agent) {
      this.#finish(task, TaskStatus.FAILED, undefined, agentGone(agent.id));
      return;
    }
    if (agent === undefined && pool !== undefined && this.#pools.get(pool.id) !== pool) {
      this.#finish(task, TaskStatus.CANCELLED, undefined, {
        code: 'FABRIC_ERR_POOL_NOT_FOUND',
        message: `pool ${pool.id} was removed`,
      });
      return;
    }
    this.#enqueue(task, queue, agent, pool);
    if (task.deadline !== undefined) this.#timers.set(task, task.deadline);
  }

  #enqueue(
    task: TaskRecord,
    queue: FairQueue,
    agent: AgentSlot | undefined,
    pool: PoolSlot | undefined,
  ): void {
    queue.push(task);
    if (agent !== undefined) this.#markAgent(agent);
    else this.#markPool(pool!);
  }

  /**
   * Rebuilds the runtime state of the tasks a durable store kept from an earlier process. Call it
   * once, after the agents and pools the store kept are added (the fabric does). Queued tasks go
   * back to their queues in arrival order (the queues order them by priority, tenant and
   * deadline as before); a task that was running is retried with that attempt counted — so a
   * late report for it is refused — or fails when it has used `maxAttempts`, except that an
   * attempt the executor held but never started (SCHEDULED) is not counted, and a RUNNING or
   * SCHEDULED attempt of a `resumable` executor's agent goes on as it was; a queued task whose
   * deadline passed times out; a task for an agent that is gone follows the rule of
   * {@link evictAgent} (to its pool unless pinned, else FAILED), one for a pool that is gone is
   * CANCELLED. Finished tasks stay readable, oldest first out of the retention. Counters in
   * {@link stats} count from this start; restored finished tasks are not in them.
   * @throws InvalidArgumentError naming a stored record that is not a task record.
   */
  restore(): void {
    this.#open();
    if (this.#restored) return;
    this.#restored = true;
    this.#tellOwed();
    if (this.#tasks.size === 0) return;
    const { finished, open, nextSeq } = recoverTasks(this.#tasks);
    if (nextSeq > this.#seq) this.#seq = nextSeq;
    const groupOf = this.#finishedGroup;
    const tenants =
      groupOf === undefined ? undefined : new Map(finished.map((t) => [t.id, t.tenant]));
    this.#finished.load(
      finished.map((t) => t.id),
      groupOf === undefined ? undefined : (id) => groupOf(tenants!.get(id)!),
    );
    this.#finished.trim();
    const now = Date.now();
    for (const t of open) {
      const holder =
        t.assignedAgentId === undefined ? undefined : this.#agents.get(t.assignedAgentId);
      if (wasRunning(t) && holder !== undefined && holder.exec.executor.resumable === true) {
        // Its worker is elsewhere and outlived this process: the attempt goes on as it was. A
        // SCHEDULED one too: it may have reached a worker that began it before its start was
        // answered (that start was lost with the old process and is sent again), so a new
        // attempt could run beside it.
        this.#resume(t, holder, now);
        continue;
      }
      // Counted as queued from here; #finish and the queues take it on from this state.
      this.#pending++;
      this.#queued(t.tenant, 1);
      if (
        !this.#owedComplete &&
        holder !== undefined &&
        !wasRunning(t) &&
        owesAbort(t) &&
        !this.#owes(holder.id, t)
      ) {
        // An earlier restart ended this attempt while its agent's executor was not registered
        // (a plugin's), and the process stopped before it was, in a store without owed aborts
        // (written by an older build): it is held again (told once more at worst). Not with a
        // store that kept them: what it does not owe was taken, and telling it again would
        // owe it anew at every start until the task is handed out.
        this.#tell(t.id, t.attempt, holder, t.error!);
      }
      if (wasRunning(t)) {
        const reason = interruptedAttempt(t);
        // Its agent may have outlived this process (a remote worker still running it): told the
        // attempt ended, as for one ended while the process ran, so it does not run on beside
        // the retry.
        if (holder !== undefined) this.#tell(t.id, t.attempt, holder, reason);
        // Dispatched but never started (its executor acknowledges starts): it reached no
        // worker, so like an unclaimed attempt it does not count against maxAttempts.
        if (t.status === TaskStatus.SCHEDULED) t.undelivered++;
        t.status = TaskStatus.PENDING;
        t.error = reason;
        if (!t.attemptsLeft()) {
          this.#finish(t, TaskStatus.FAILED, undefined, reason);
          continue;
        }
        this.#save(t);
      }
      if (t.deadline !== undefined && t.deadline <= now) {
        this.#finish(t, TaskStatus.TIMEOUT, undefined, deadlinePassed(t, now));
        continue;
      }
      const agent = t.agentId === undefined ? undefined : this.#agents.get(t.agentId);
      if (agent !== undefined) {
        this.#place(t, agent.queue, agent, agent.pool);
        continue;
      }
      const pool = t.poolId === undefined ? undefined : this.#pools.get(t.poolId);
      if (t.agentId !== undefined && (t.pinned || pool === undefined)) {
        this.#finish(t, TaskStatus.FAILED, undefined, agentGone(t.agentId));
      } else if (pool === undefined) {
        this.#finish(t, TaskStatus.CANCELLED, undefined, {
          code: 'FABRIC_ERR_POOL_NOT_FOUND',
          message: `pool ${t.poolId ?? '(none)'} is gone`,
        });
      } else {
        this.#place(t, pool.queue, undefined, pool);
      }
    }
  }

  /**
   * Puts a restored RUNNING or SCHEDULED attempt back on its agent as it was (see
   * `TaskExecutor.resumable`): same attempt, its timeout counted from when it was dispatched. A
   * RUNNING one is not dispatched again — the executor still holds it; a SCHEDULED one is, the
   * same attempt (the old process may have died before it left), and the executor sees to it
   * that it reaches a worker once at most.
   */
  #resume(t: TaskRecord, slot: AgentSlot, now: number): void {
    this.#running++;
    slot.running.add(t);
    if (slot.pool !== undefined) slot.pool.running++;
    // Across the restart the wall clock spans the gap (a durable store moved `startedAt` by
    // each step of it, made while no process ran or seen by the one that ran: see
    // `store/store-clock.ts`); from here on the monotonic one.
    this.#timers.setIn(t, (t.startedAt ?? now) + t.timeoutMs - now);
    if (t.status === TaskStatus.SCHEDULED) {
      const entry = slot.exec;
      if (entry.pending.length === 0) this.#flush.push(entry);
      entry.pending.push(t.assignment());
      if (slot.unflushed++ === 0) entry.slots.push(slot);
      this.#queuePass();
    }
  }

  /** A snapshot of the task. @throws TaskNotFoundError */
  getTask(taskId: string): Task {
    return this.#get(taskId).snapshot();
  }

  /**
   * The live record of a task, or undefined (no snapshot: for executors on their hot path). Read
   * it at once and do not keep it: once its task is evicted, the record may serve a new task.
   */
  peekTask(taskId: string): Readonly<TaskRecord> | undefined {
    return this.#tasks.get(taskId);
  }

  /**
   * Cancels a task: a queued one leaves its queue, a running one is aborted. Cancelling a
   * finished task changes nothing and returns its snapshot.
   * @param onChanged - called synchronously right after the cancel, when it changed the task (not
   *   for a finished one): `AgentFabric.cancelTask` judges by the store's commit only a call that
   *   has a change to commit.
   */
  cancel(taskId: string, reason = 'cancelled', onChanged?: () => void): Task {
    const t = this.#get(taskId);
    if (!isFinished(t.status)) {
      const error = { code: 'FABRIC_ERR_CANCELLED', message: reason };
      if (t.status !== TaskStatus.PENDING) this.#abort(t, error);
      this.#finish(t, TaskStatus.CANCELLED, undefined, error);
      onChanged?.();
    }
    return t.snapshot();
  }

  /**
   * Snapshots of the tasks the scheduler keeps (queued, running, and finished ones up to
   * `finishedTaskRetention`) that match `filter`, in no particular order. A scan of every kept
   * task: for operator listings, not for the hot path.
   * @param filter.agentId - tasks addressed to this agent or assigned to it.
   */
  listTasks(filter: TaskFilter = {}): Task[] {
    const out: Task[] = [];
    for (const t of this.#tasks.values()) {
      if (filter.status !== undefined && t.status !== filter.status) continue;
      if (filter.poolId !== undefined && t.poolId !== filter.poolId) continue;
      if (
        filter.agentId !== undefined &&
        t.agentId !== filter.agentId &&
        t.assignedAgentId !== filter.agentId
      )
        continue;
      out.push(t.snapshot());
    }
    return out;
  }

  /** How many callers wait for the task's end (0 for an unknown task). */
  waiterCount(taskId: string): number {
    const t = this.#tasks.get(taskId);
    return t === undefined ? 0 : (t.resolve === undefined ? 0 : 1) + (t.waiters?.length ?? 0);
  }

  /**
   * Resolves with the task once it has finished (at once if it already has).
   * @param timeoutMs - how long to wait; `undefined` waits as long as it takes.
   * @param signal - ends the wait (rejecting with the signal's reason) and removes the waiter.
   * @throws TaskNotFoundError; WaitTimeoutError when the wait runs out (the task goes on).
   */
  waitForTask(taskId: string, timeoutMs?: number, signal?: AbortSignal): Promise<Task> {
    let t: TaskRecord;
    try {
      t = this.#get(taskId);
    } catch (err) {
      return Promise.reject(err);
    }
    if (isFinished(t.status)) return Promise.resolve(t.snapshot());
    if (this.#closed) return Promise.reject(new ClosedError('scheduler'));
    return waitForEnd(t, timeoutMs, signal);
  }

  // -------------------------------------------------------------------------------------------
  // The claim API of agents that pull their work

  /**
   * Gives the agent its next task: the first of its own queue and its pool's queue. With
   * `waitMs`, waits that long for one to arrive; resolves `undefined` when none did.
   * @param options.onChanged - called synchronously when the claim is handed its task, right
   *   after the task's record was changed and before the store commits it: a caller that must
   *   know which commit carries the claim marks it there (`AgentFabric.claimTask`).
   * @throws AgentNotFoundError; InvalidArgumentError when the agent does not claim (its executor
   *   pushes); AgentBusyError when it already holds its limit of tasks and claims.
   */
  claim(
    agentId: string,
    options: { waitMs?: number; signal?: AbortSignal; onChanged?: () => void } = {},
  ): Promise<TaskAssignment | undefined> {
    this.#open();
    const slot = this.#agents.get(agentId);
    if (slot === undefined) return Promise.reject(new AgentNotFoundError(agentId));
    if (slot.exec.executor !== this.#remote) {
      return Promise.reject(
        new InvalidArgumentError(
          'agentId',
          `agent ${agentId} runs on the ${slot.exec.executor.name} executor and does not claim tasks`,
        ),
      );
    }
    if (slot.running.size + this.#remote.capacity(agentId) >= slot.capacity) {
      return Promise.reject(new AgentBusyError(agentId, slot.capacity));
    }
    const waitMs = options.waitMs ?? 0;
    return new Promise<TaskAssignment | undefined>((resolve) => {
      let settled = false;
      let timer: NodeJS.Timeout | undefined = undefined;
      const onAbort = (): void => void withdraw();
      const withdraw = this.#remote.addClaim(agentId, (a) => {
        if (a !== undefined) options.onChanged?.();
        settled = true;
        if (timer !== undefined) clearTimeout(timer);
        options.signal?.removeEventListener('abort', onAbort);
        resolve(a);
      });
      this.#markAgent(slot);
      this.#runPassNow();
      if (settled) return;
      if (waitMs <= 0 || options.signal?.aborted) {
        withdraw();
        return;
      }
      timer = setTimeout(withdraw, Math.min(waitMs, MAX_TIMER_MS));
      options.signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  /**
   * Gives back a task a claim handed to `agentId` that never reached it: the call carrying it
   * ended (cancelled, past its deadline) before the answer was written. The task is queued
   * again as though that attempt never started — it does not count against `maxAttempts` — but
   * its attempt number stays used, so a report naming it is stale. Returns whether the task
   * went back; false when it has moved on (finished, another attempt, another agent).
   */
  unclaim(taskId: string, attempt: number, agentId: string): boolean {
    const t = this.#tasks.get(taskId);
    if (t === undefined || t.attempt !== attempt || t.assignedAgentId !== agentId) return false;
    if (t.status !== TaskStatus.RUNNING && t.status !== TaskStatus.SCHEDULED) return false;
    t.undelivered++;
    this.#retryOrFail(
      t,
      {
        code: 'FABRIC_ERR_CANCELLED',
        message: `the claim of agent ${agentId} ended before attempt ${attempt} reached it`,
      },
      true,
    );
    return true;
  }

  /**
   * Completes a task held by `agentId` (omit it for trusted in-process callers). Repeating the
   * same completion is a no-op.
   * @param onChanged - called synchronously right after the completion, when it changed the task
   *   (not for a repeat): `AgentFabric.completeTask` judges a repeat by whether the task's record
   *   is on disk, not by the store's commits since.
   * @throws TaskNotFoundError for an unknown task and for one `agentId` does not hold;
   *   TaskStateError for a stale attempt or a task that already ended otherwise.
   */
  complete(
    taskId: string,
    attempt: number,
    result: unknown,
    agentId?: string,
    onChanged?: () => void,
  ): void {
    if (!this.#byReference) jsonByteLength('result', result);
    const t = this.#checkHolder(taskId, attempt, agentId, TaskStatus.COMPLETED);
    if (t === undefined) return;
    this.#complete(t, result);
    onChanged?.();
  }

  /**
   * Fails a task held by `agentId`. With `retry`, the task is queued again while it has attempts
   * left. Repeating the same failure is a no-op; `onChanged` is called as for {@link complete}.
   */
  fail(
    taskId: string,
    attempt: number,
    error: TaskError,
    options: { retry?: boolean; agentId?: string; onChanged?: () => void } = {},
  ): void {
    if (!this.#byReference) jsonByteLength('error', error);
    const t = this.#checkHolder(taskId, attempt, options.agentId, TaskStatus.FAILED);
    if (t === undefined) return;
    this.#retryOrFail(t, error, options.retry === true);
    options.onChanged?.();
  }

  /** Records progress of a running task held by `agentId`. */
  reportProgress(taskId: string, attempt: number, progress: unknown, agentId?: string): void {
    if (!this.#byReference) jsonByteLength('progress', progress);
    const t = this.#checkHolder(taskId, attempt, agentId, undefined);
    if (t !== undefined) this.#progress(t, progress);
  }

  #checkHolder(
    taskId: string,
    attempt: number,
    agentId: string | undefined,
    repeatStatus: TaskStatus | undefined,
  ): TaskRecord | undefined {
    const t = this.#get(taskId);
    // A task the agent does not hold is answered exactly like an unknown one: task ids are
    // sequential, and an agent must not learn which of them exist.
    if (agentId !== undefined && t.assignedAgentId !== agentId) throw new TaskNotFoundError(taskId);
    if (attempt !== t.attempt) {
      throw new TaskStateError(
        taskId,
        `attempt ${attempt} is stale; the current attempt is ${t.attempt}`,
        {
          attempt,
          currentAttempt: t.attempt,
        },
      );
    }
    if (t.status === TaskStatus.RUNNING || t.status === TaskStatus.SCHEDULED) return t;
    if (repeatStatus !== undefined && t.status === repeatStatus) return undefined;
    throw new TaskStateError(taskId, `is ${t.status}, not running`, { status: t.status });
  }

  /**
   * The task an executor reports on, or undefined when the report is stale (another attempt, a
   * finished task, a closed scheduler): the scheduler has moved on and ignores it.
   */
  #reported(taskId: string, attempt: number): TaskRecord | undefined {
    if (this.#closed) return undefined;
    const t = this.#tasks.get(taskId);
    if (t === undefined || t.attempt !== attempt) return undefined;
    if (t.status !== TaskStatus.RUNNING && t.status !== TaskStatus.SCHEDULED) return undefined;
    return t;
  }

  // -------------------------------------------------------------------------------------------
  // Figures

  /** Load figures of one agent (zeros when unknown to the scheduler). */
  agentLoad(agentId: string): AgentLoad {
    const s = this.#agents.get(agentId);
    if (s === undefined)
      return { runningTasks: 0, queuedTasks: 0, completedTasks: 0, failedTasks: 0 };
    return {
      runningTasks: s.running.size,
      queuedTasks: s.queue.size,
      completedTasks: s.completed,
      failedTasks: s.failed,
    };
  }

  /** Free task slots of an agent that is accepting work (0 otherwise). */
  freeSlots(agentId: string): number {
    const s = this.#agents.get(agentId);
    if (s === undefined || !s.accepting) return 0;
    return Math.max(0, s.capacity - s.running.size - s.queue.size);
  }

  stats(): SchedulerStats {
    // Entries, not assignments: a pool id is the operator's choice, and `pools['__proto__'] = …`
    // would set the prototype instead of adding the pool.
    const pools: [string, PoolLoad][] = [];
    for (const p of this.#pools.values()) {
      let queued = p.queue.size;
      let accepting = 0;
      for (const a of p.agents) {
        queued += a.queue.size;
        if (a.accepting) accepting++;
      }
      pools.push([
        p.id,
        {
          agents: p.agents.length,
          acceptingAgents: accepting,
          queuedTasks: queued,
          runningTasks: p.running,
          completedTasks: p.completed,
          failedTasks: p.failed,
        },
      ]);
    }
    return {
      pendingTasks: this.#pending,
      runningTasks: this.#running,
      completedTasks: this.#completed,
      failedTasks: this.#failed,
      timedOutTasks: this.#timedOut,
      cancelledTasks: this.#cancelled,
      queueDepth: this.#pending,
      scheduledTasks: this.#scheduled,
      retriedTasks: this.#retried,
      pools: Object.fromEntries(pools),
    };
  }

  /**
   * Tasks waiting by priority (index: `Priority`): those in the agents' and pools' queues plus
   * those held back until their `notBefore`. Walks the queues (not the tasks): for `/metrics`.
   */
  queuedByPriority(): number[] {
    const counts = [0, 0, 0, 0];
    const add = (queue: FairQueue): void => {
      if (queue.size === 0) return;
      for (let p = 0; p < counts.length; p++) counts[p]! += queue.sizeAt(p);
    };
    for (const a of this.#agents.values()) add(a.queue);
    for (const p of this.#pools.values()) add(p.queue);
    for (const t of this.#delayed.keys()) counts[t.priority]!++;
    return counts;
  }

  /** Stops timers, answers open claims and waits, and closes every executor. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#timers.close();
    const closed = new ClosedError('scheduler');
    // Waiters hang on their records; close is rare enough to look through every task.
    for (const t of this.#tasks.values()) rejectWaiters(t, closed);
    for (const slot of this.#agents.values()) for (const r of slot.idle.splice(0)) r();
    for (const pool of this.#pools.values()) for (const r of pool.idle.splice(0)) r();
    await Promise.allSettled([...this.#executors.values()].map((e) => e.executor.close()));
  }

  // -------------------------------------------------------------------------------------------
  // Internals

  #open(): void {
    if (this.#closed) throw new ClosedError('scheduler');
  }

  /**
   * Why `value` cannot go into a durable store (not JSON-serializable), as a task error; undefined
   * when it can, and always for stores that hold the records themselves.
   */
  #unstorable(field: string, value: unknown): TaskError | undefined {
    if (this.#byReference) return undefined;
    try {
      jsonByteLength(field, value);
      return undefined;
    } catch (error) {
      return { code: InvalidArgumentError.code, message: (error as Error).message };
    }
  }

  /**
   * `error` when a durable store can keep it; else the same code and message with `details`
   * replaced by why they were not kept (an executor's failure is a failure all the same).
   */
  #storableError(error: TaskError): TaskError {
    const unstorable = this.#unstorable('error', error);
    if (unstorable === undefined) return error;
    const stored: TaskError = {
      code: String(error.code),
      message: String(error.message),
      details: { notKept: `error.details were not kept: ${unstorable.message}` },
    };
    return this.#unstorable('error', stored) === undefined ? stored : unstorable;
  }

  /** Tells the store a record changed (a no-op for stores that hold the records themselves). */
  #save(t: TaskRecord): void {
    if (!this.#byReference) this.#tasks.put(t.id, t);
  }

  /**
   * {@link #save} of an attempt's start: lazily when the agent's executor runs it in this
   * process (see `TaskExecutor.inProcess`), so a start and an end in one turn are one write.
   */
  #saveStart(t: TaskRecord, slot: AgentSlot | undefined): void {
    if (this.#byReference) return;
    if (slot?.exec.executor.inProcess === true && this.#tasks.putLazily !== undefined)
      this.#tasks.putLazily(t.id, t);
    else this.#tasks.put(t.id, t);
  }

  #get(taskId: string): TaskRecord {
    const t = typeof taskId === 'string' ? this.#tasks.get(taskId) : undefined;
    if (t === undefined) throw new TaskNotFoundError(String(taskId));
    return t;
  }

  #agentOf(t: TaskRecord): AgentSlot | undefined {
    return t.assignedAgentId === undefined ? undefined : this.#agents.get(t.assignedAgentId);
  }

  #markAgent(slot: AgentSlot): void {
    this.#dirtyAgents.add(slot);
    this.#queuePass();
  }

  #markPool(pool: PoolSlot): void {
    this.#dirtyPools.add(pool);
    this.#queuePass();
  }

  #queuePass(): void {
    if (this.#passQueued || this.#dispatching) return;
    this.#passQueued = true;
    queueMicrotask(this.#pass);
  }

  #runPassNow(): void {
    if (!this.#dispatching) this.#pass();
  }

  readonly #pass = (): void => {
    this.#passQueued = false;
    if (this.#closed) return;
    this.#dispatching = true;
    this.#passMono = Number.NaN;
    try {
      for (const slot of this.#dirtyAgents) this.#fillAgent(slot, Number.POSITIVE_INFINITY, false);
      this.#dirtyAgents.clear();
      for (const pool of this.#dirtyPools) this.#fillPool(pool);
      this.#dirtyPools.clear();
      // The pools have their agents now; an agent that stopped at a pool task may take the rest.
      const deferred = this.#deferred;
      for (let i = 0; i < deferred.length; i++)
        this.#fillAgent(deferred[i]!, Number.POSITIVE_INFINITY, true);
      deferred.length = 0;
    } finally {
      this.#dispatching = false;
    }
    const flush = this.#flush;
    for (let i = 0; i < flush.length; i++) {
      const entry = flush[i]!;
      const batch = entry.pending;
      const slots = entry.slots;
      for (let k = 0; k < slots.length; k++) slots[k]!.unflushed = 0;
      slots.length = 0;
      entry.pending = [];
      entry.executor.dispatch(batch);
    }
    flush.length = 0;
    // Executors may have reported synchronously (claims resolved, handler missing): run again.
    if (this.#dirtyAgents.size > 0 || this.#dirtyPools.size > 0) this.#queuePass();
  };

  #room(slot: AgentSlot): number {
    if (!slot.accepting) return 0;
    const free = slot.capacity - slot.running.size;
    if (free <= 0) return 0;
    return Math.min(free, slot.exec.executor.capacity(slot.id) - slot.unflushed);
  }

  /**
   * Gives the agent up to `max` tasks from its own queue and, with `fromPool`, its pool's. Without
   * it, a pool task that should run first stops the fill and leaves the choice of agent to
   * {@link #fillPool}, so pool work always goes to the least-loaded agent.
   */
  #fillAgent(slot: AgentSlot, max: number, fromPool: boolean): number {
    let room = Math.min(max, this.#room(slot));
    let given = 0;
    const mix = slot.mix;
    while (room > 0) {
      let task: TaskRecord | undefined;
      if (mix === undefined) task = slot.queue.pop();
      else {
        if (!fromPool) {
          const flow = mix.peek();
          if (flow === undefined) break;
          if (flow.queue !== slot.queue) {
            // Its own tasks behind this pool task still need it once the pool is served.
            this.#dirtyPools.add(slot.pool!);
            this.#deferred.push(slot);
            break;
          }
        }
        task = mix.pop();
      }
      if (task === undefined) break;
      this.#start(task, slot);
      room--;
      given++;
    }
    return given;
  }

  #fillPool(pool: PoolSlot): void {
    const agents = pool.agents;
    while (pool.queue.size > 0 && agents.length > 0) {
      // Least-loaded accepting agent with room; ties rotate so idle agents share the work.
      let best: AgentSlot | undefined;
      const n = agents.length;
      const start = pool.rr++ % n;
      for (let k = 0; k < n; k++) {
        const a = agents[(start + k) % n]!;
        if (this.#room(a) <= 0) continue;
        if (best === undefined || a.running.size < best.running.size) best = a;
      }
      if (best === undefined || this.#fillAgent(best, 1, true) === 0) break;
    }
  }

  /** Counts `delta` waiting tasks of `tenant` (when tenants are bounded: `#queuedByTenant`). */
  #queued(tenant: string, delta: 1 | -1): void {
    const byTenant = this.#queuedByTenant;
    if (byTenant === undefined) return;
    const n = (byTenant.get(tenant) ?? 0) + delta;
    if (n === 0) byTenant.delete(tenant);
    else byTenant.set(tenant, n);
  }

  #start(task: TaskRecord, slot: AgentSlot): void {
    let mono = this.#passMono;
    if (mono !== mono) {
      mono = this.#passMono = performance.now();
      this.#passWall = clockMs();
    }
    const now = this.#passWall;
    this.#pending--;
    this.#queued(task.tenant, -1);
    this.#running++;
    task.attempt++;
    task.assignedAgentId = slot.id;
    task.status = slot.exec.executor.acknowledges ? TaskStatus.SCHEDULED : TaskStatus.RUNNING;
    task.startedAt = now;
    this.#timers.setIn(task, task.timeoutMs, mono);
    slot.running.add(task);
    if (slot.pool !== undefined) slot.pool.running++;
    const entry = slot.exec;
    if (entry.pending.length === 0) this.#flush.push(entry);
    entry.pending.push(task.assignment());
    if (slot.unflushed++ === 0) entry.slots.push(slot);
    this.#saveStart(task, slot);
    if (this.events.listens('task.started')) this.events.emit('task.started', task.snapshot());
  }

  /**
   * The store could not commit these tasks' first write (disk full, I/O error): their schedule
   * was never acknowledged as committed — an awaited `schedule` throws `FABRIC_ERR_STATE_STORE`
   * (see `AgentFabric.schedule`) — so none may run. Each one not finished yet is withdrawn:
   * CANCELLED with that code (an attempt already started is aborted), kept in memory and written
   * as such with the next commit that succeeds. Called synchronously by the failed commit, which
   * runs before the dispatch pass the schedule queued (a pass queued earlier in the same turn
   * may have started the task first: that attempt is aborted).
   */
  #unwritten(records: readonly TaskRecord[], failure: Error): void {
    if (this.#closed) return; // the fabric's last commit, at close: nothing runs any more
    for (const t of records) {
      if (isFinished(t.status) || this.#tasks.get(t.id) !== t) continue;
      const error = {
        code: 'FABRIC_ERR_STATE_STORE',
        message: `the task could not be committed, so it was withdrawn and never runs (${failure.message})`,
      };
      if (t.status !== TaskStatus.PENDING) this.#abort(t, error);
      this.#finish(t, TaskStatus.CANCELLED, undefined, error);
    }
  }

  /** Tells the executor of the agent running `t` that the scheduler ended the attempt. */
  #abort(t: TaskRecord, error: TaskError): void {
    const slot = this.#agentOf(t);
    if (slot !== undefined) this.#tell(t.id, t.attempt, slot, error);
  }

  /**
   * Tells the executor of `slot` that the scheduler ended attempt `attempt` of task `taskId`
   * there. When that executor tells the agent later — the remote one hands out a notice when
   * the agent next reports, a placeholder holds it until its executor is registered — the abort
   * is also kept in the owed aborts until then, committed with the task's change: a process
   * that stops before does not lose it (the next start tells it again, see {@link restore}).
   */
  #tell(taskId: string, attempt: number, slot: AgentSlot, error: TaskError): void {
    const executor = slot.exec.executor;
    executor.abort(taskId, attempt, error, slot.id);
    if (!this.#tellsLater(executor)) return;
    const owed = { taskId, attempt, code: error.code, message: error.message };
    this.#setOwed(slot.id, [...(this.#owed.get(slot.id)?.aborts ?? []), owed]);
  }

  /**
   * Whether `executor` tells its agents of an abort later (the remote one when the agent next
   * reports, a placeholder once its executor is registered): until then it is owed.
   */
  #tellsLater(executor: TaskExecutor): boolean {
    return executor === this.#remote || executor instanceof AwaitedExecutor;
  }

  /** Whether an abort of `t`'s current attempt is owed to agent `agentId`. */
  #owes(agentId: string, t: TaskRecord): boolean {
    const owed = this.#owed.get(agentId)?.aborts ?? [];
    return owed.some((o) => o.taskId === t.id && o.attempt === t.attempt);
  }

  /** Keeps `aborts` (the newest {@link MAX_ENDED_NOTICES}) as owed to `agentId`; none: forgets. */
  #setOwed(agentId: string, aborts: OwedAborts['aborts']): void {
    if (aborts.length === 0) {
      this.#owed.delete(agentId);
      return;
    }
    const kept = aborts.length > MAX_ENDED_NOTICES ? aborts.slice(-MAX_ENDED_NOTICES) : aborts;
    this.#owed.put(agentId, { agentId, aborts: kept });
  }

  /**
   * At start: tells the executors the aborts an earlier process owed their agents and had not
   * told when it stopped, whatever became of the tasks since (cancelled, finished on another
   * agent). Those of agents that are gone are forgotten (their notices went with them).
   */
  #tellOwed(): void {
    for (const { agentId, aborts } of [...this.#owed.values()]) {
      const slot = this.#agents.get(agentId);
      if (slot === undefined) {
        this.#owed.delete(agentId);
        continue;
      }
      for (const o of aborts) {
        slot.exec.executor.abort(
          o.taskId,
          o.attempt,
          { code: o.code, message: o.message },
          agentId,
        );
      }
      // Registered already (given to the fabric at construction): told, it takes them from here.
      if (!this.#tellsLater(slot.exec.executor)) this.#owed.delete(agentId);
    }
  }

  /**
   * Tasks of `agentId` (a remote agent) the fabric ended while the agent held them — cancelled,
   * timed out — that it has not been told about yet; telling is up to the caller (they are no
   * longer owed from here: see {@link restoreEndedTasks}). Oldest first.
   */
  takeEndedTasks(agentId: string): EndedTask[] {
    const notices = this.#remote.takeEnded(agentId);
    if (notices.length > 0 && this.#owed.get(agentId) !== undefined) {
      const told = new Set(notices.map((n) => `${n.attempt}:${n.taskId}`));
      const owed = this.#owed.get(agentId)!.aborts;
      this.#setOwed(
        agentId,
        owed.filter((o) => !told.has(`${o.attempt}:${o.taskId}`)),
      );
    }
    return notices;
  }

  /**
   * Puts back notices {@link takeEndedTasks} gave out that did not reach the agent — unless the
   * agent was removed meanwhile (terminated while the answer was written): its notices were
   * dropped with it, and nothing would ever take these. They are owed again.
   */
  restoreEndedTasks(agentId: string, notices: readonly EndedTask[]): void {
    if (!this.#agents.has(agentId) || notices.length === 0) return;
    this.#remote.restoreEnded(agentId, notices);
    const owed = notices.map(({ taskId, attempt, code, message }) => ({
      taskId,
      attempt,
      code,
      message,
    }));
    this.#setOwed(agentId, [...owed, ...(this.#owed.get(agentId)?.aborts ?? [])]);
  }

  /** Takes a task off its agent (it is no longer running there). */
  #release(task: TaskRecord): void {
    const slot = this.#agentOf(task);
    this.#running--;
    if (slot === undefined) return;
    if (slot.running.delete(task)) {
      if (slot.pool !== undefined) {
        slot.pool.running--;
        if (slot.pool.running === 0 && slot.pool.queue.size === 0)
          for (const r of slot.pool.idle.slice()) r();
      }
      if (slot.running.size === 0) for (const r of slot.idle.slice()) r();
      this.#markAgent(slot);
    }
  }

  #complete(t: TaskRecord, result: unknown): void {
    const slot = this.#agentOf(t);
    if (slot !== undefined) slot.completed++;
    if (slot?.pool !== undefined) slot.pool.completed++;
    this.#finish(t, TaskStatus.COMPLETED, result, undefined);
  }

  #progress(t: TaskRecord, progress: unknown): void {
    t.progress = progress;
    this.#save(t);
    if (this.events.listens('task.progress')) this.events.emit('task.progress', t.snapshot());
  }

  /** Queues a running task again while it has attempts and somewhere to go, else ends it. */
  #retryOrFail(
    t: TaskRecord,
    error: TaskError,
    retry: boolean,
    finalStatus: TaskStatus.FAILED | TaskStatus.CANCELLED = TaskStatus.FAILED,
  ): void {
    const queue = retry && t.attemptsLeft() ? this.#requeueTarget(t) : undefined;
    if (queue === undefined) {
      const slot = this.#agentOf(t);
      if (slot !== undefined && finalStatus === TaskStatus.FAILED) {
        slot.failed++;
        if (slot.pool !== undefined) slot.pool.failed++;
      }
      this.#finish(t, finalStatus, undefined, error);
      return;
    }
    this.#release(t);
    this.#pending++;
    this.#queued(t.tenant, 1);
    this.#retried++;
    t.status = TaskStatus.PENDING;
    t.error = error;
    if (t.deadline !== undefined) this.#timers.set(t, t.deadline);
    else this.#timers.remove(t);
    queue.push(t);
    this.#save(t);
    if (this.events.listens('task.retried')) this.events.emit('task.retried', t.snapshot(), error);
  }

  /**
   * Where a task that goes back to a queue goes: the agent it was addressed to while that agent
   * accepts work, else its pool. A pinned task (or one of an agent without a pool) has no other
   * place: it waits in its agent's own queue while that agent only stopped accepting (DEGRADED
   * keeps what it holds, and gets it when it is HEALTHY again) — none once the agent drains
   * (terminate), was evicted (UNHEALTHY) or is gone.
   */
  #requeueTarget(t: TaskRecord): FairQueue | undefined {
    if (t.agentId !== undefined) {
      const a = this.#agents.get(t.agentId);
      if (a !== undefined && a.accepting) {
        this.#markAgent(a);
        return a.queue;
      }
      if (t.pinned) {
        return a !== undefined && !a.draining && !a.evicted ? a.queue : undefined;
      }
    }
    const pool = t.poolId === undefined ? undefined : this.#pools.get(t.poolId);
    if (pool === undefined) return undefined;
    this.#markPool(pool);
    return pool.queue;
  }

  #finish(t: TaskRecord, status: TaskStatus, result: unknown, error: TaskError | undefined): void {
    if (t.status === TaskStatus.PENDING) {
      this.#pending--;
      this.#queued(t.tenant, -1);
      this.#delayed.delete(t);
      if (t.flow !== undefined) {
        const owner = t.agentId !== undefined ? this.#agents.get(t.agentId)?.queue : undefined;
        if (!(owner?.remove(t) ?? false)) {
          const pool = t.poolId === undefined ? undefined : this.#pools.get(t.poolId);
          pool?.queue.remove(t);
        }
      }
      const pool = t.poolId === undefined ? undefined : this.#pools.get(t.poolId);
      if (pool !== undefined && pool.running === 0 && pool.queue.size === 0)
        for (const r of pool.idle.slice()) r();
    } else {
      this.#release(t);
    }
    this.#timers.remove(t);
    t.status = status;
    t.finishedAt = clockMs();
    t.result = result;
    t.error = error;
    switch (status) {
      case TaskStatus.COMPLETED:
        this.#completed++;
        break;
      case TaskStatus.FAILED:
        this.#failed++;
        break;
      case TaskStatus.TIMEOUT:
        this.#timedOut++;
        break;
      default:
        this.#cancelled++;
    }
    this.#save(t);
    const listens = this.events.listens('task.finished');
    try {
      if (listens || hasWaiters(t)) {
        const snap = t.snapshot();
        settleWaiters(t, snap);
        if (listens) this.events.emit('task.finished', snap);
      }
    } finally {
      // Last: with no retention this evicts `t` itself, after which its record may be reused.
      // Callers only read it (a snapshot) before any code of another party can run.
      this.#finished.add(t.id, this.#finishedGroup?.(t.tenant));
    }
  }

  /** Drops a finished task out of the retention; its record may serve a new task. */
  #evict(id: string): void {
    const t = this.#byReference ? this.#tasks.get(id) : undefined;
    this.#tasks.delete(id);
    if (t !== undefined && this.#spare.length < this.#maxSpare) this.#spare.push(t);
  }

  /** A task's timer came: release it into its queue, or end it (deadline, timeout). */
  #due(t: TaskRecord, now: number): void {
    const held = this.#delayed.get(t);
    if (held !== undefined && (t.deadline === undefined || t.deadline > now)) {
      this.#delayed.delete(t);
      this.#releaseHeld(t, held);
    } else if (t.status === TaskStatus.PENDING) {
      this.#finish(t, TaskStatus.TIMEOUT, undefined, deadlinePassed(t, now));
    } else if (t.status === TaskStatus.RUNNING || t.status === TaskStatus.SCHEDULED) {
      const error = {
        code: 'FABRIC_ERR_TASK_TIMEOUT',
        message: `task ran past its timeout of ${t.timeoutMs / 1000}s`,
      };
      this.#abort(t, error);
      this.#finish(t, TaskStatus.TIMEOUT, undefined, error);
    }
  }
}

/**
 * Longest task timeout: the range of a `google.protobuf.Duration` (10,000 years), so every door
 * can answer with the task it took. A longer one (gRPC's binary carries any int64 of seconds)
 * was queued, then its `TaskInfo` could not be written as JSON: the `ScheduleTask` over `/api`
 * answered 500 with the task queued, and every `ListTasks` over `/api` showing it failed.
 */
export const MAX_TASK_TIMEOUT_SECONDS = 315_576_000_000;
/**
 * Latest task deadline (epoch ms): 9999-12-31T23:59:59.999Z, the end of a
 * `google.protobuf.Timestamp`'s range (see {@link MAX_TASK_TIMEOUT_SECONDS}).
 */
export const MAX_TASK_DEADLINE_MS = 253_402_300_799_999;

export { MAX_TASK_ATTEMPTS };

/** A task's (or the default) `maxAttempts`: a positive integer of at most {@link MAX_TASK_ATTEMPTS}. */
function attempts(field: string, value: unknown): number {
  const n = checkNumber(field, value, 'positiveInt');
  if (n > MAX_TASK_ATTEMPTS) {
    throw new InvalidArgumentError(
      field,
      `must be at most ${MAX_TASK_ATTEMPTS} (what a protobuf uint32 holds), got ${n}`,
    );
  }
  return n;
}

/**
 * A task timeout in seconds as milliseconds, at most {@link MAX_TASK_TIMEOUT_SECONDS}. (A number
 * of seconds whose milliseconds were not finite — 1e306 — was stored as NULL, and the next start
 * refused the whole state file on it.)
 */
function timeoutMs(field: string, seconds: unknown): number {
  const s = checkNumber(field, seconds, 'positiveNumber');
  if (s > MAX_TASK_TIMEOUT_SECONDS) {
    throw new InvalidArgumentError(
      field,
      `must be at most ${MAX_TASK_TIMEOUT_SECONDS} seconds (10,000 years, what a protobuf Duration holds), got ${String(seconds)}`,
    );
  }
  return s * 1000;
}

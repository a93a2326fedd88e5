/**
 * PoolManager: groups of agents with a shared configuration and a shared queue.
 *
 * A pool keeps between `minAgents` and `maxAgents` agents; its queue is served by the
 * least-loaded healthy agent. Deleting a pool drains it: no new tasks, queued and running ones
 * get the drain timeout to finish, then its agents terminate.
 *
 * **Reconcile.** Each pool has a desired size (`minAgents` at creation, then what `scalePool`
 * asked for). The manager compares it with the pool's live agents — not TERMINATED, not
 * UNHEALTHY, not failing their provider's health check — whenever a pool agent's status
 * changes and on a timer, and starts replacements for what is missing. An UNHEALTHY agent is
 * terminated and replaced (its work was already taken back by the scheduler). Starts that fail
 * — the spawn throws, the provider's `start` rejects, or the agent is lost before it was ever
 * HEALTHY — back off exponentially per pool; every step is an event.
 *
 * **Joined agents.** An agent spawned with a `poolId` outside the manager (`fabric.spawn`, a
 * config agent, the operator API's `SpawnAgent`) joins the pool ({@link PoolManager.join}): it is
 * a member like the agents the pool spawned — listed, counted, scaled down (after the pool's own
 * agents on a load tie), terminated when the pool is deleted — and the pool's desired size grows
 * by one; into a full pool, one of the pool's own agents gives way to it — once its join is
 * confirmed, for a held one (`fabric.spawn`: once the spawn is committed) — (only a pool full of
 * joined agents refuses one). The pool did not start it, so it does not replace it: a joined agent that is
 * UNHEALTHY stays a live member, and one that ends leaves the pool, whose desired size shrinks
 * by one again (not below `minAgents`).
 *
 * @module
 */
import type { AgentConfig, AgentInfo, SpawnedAgent } from '../agent.js';
import { AgentStatus } from '../agent.js';
import {
  ConfigError,
  PoolDrainingError,
  PoolExistsError,
  PoolFullError,
  PoolNotFoundError,
} from '../errors.js';
import { TypedEmitter } from '../events.js';
import { MemoryCollection } from '../store/memory-store.js';
import type { Collection } from '../store/store.js';
import { AgentLimitError, InvalidArgumentError } from '../errors.js';
import { checkCapabilities, checkLabels, checkNumber, checkString } from '../validate.js';
import type { PoolProvider, PoolStopReason } from './pool-provider.js';

/** What {@link PoolManager.createPool} takes. */
export interface PoolConfig {
  poolId: string;
  /** @default poolId */
  name?: string;
  model: string;
  /** @default 1 */
  minAgents?: number;
  /** @default max(minAgents, 10) */
  maxAgents?: number;
  /** Executor of the pool's agents. @default the provider's, else the fabric's default ('local') */
  executor?: string;
  /**
   * The registered {@link PoolProvider} that starts, checks and stops the pool's agents'
   * runtimes (e.g. `process` from `plugins/pool-process`).
   * @default none: the agents are records only, run by their executor
   */
  provider?: string;
  capabilities?: readonly string[];
  labels?: Readonly<Record<string, string>>;
  /** Budget shared by the whole pool (applied by the fabric). */
  budget?: AgentConfig['budget'];
  /** Budget of each agent the pool spawns. */
  agentBudget?: AgentConfig['budget'];
}

/** Pool lifecycle state. */
export type PoolStatus = 'ACTIVE' | 'DRAINING';

/** The stored state of a pool. */
export interface PoolRecord {
  poolId: string;
  name: string;
  model: string;
  minAgents: number;
  maxAgents: number;
  executor: string | undefined;
  /** Name of the pool's provider (absent in records written before providers existed). */
  provider?: string | undefined;
  /** The size reconcile keeps (absent in older records: then the agents it has, at least min). */
  desired?: number;
  capabilities: readonly string[];
  labels: Readonly<Record<string, string>>;
  agentBudget: AgentConfig['budget'];
  status: PoolStatus;
  /** Agents of the pool, oldest first. */
  agentIds: string[];
  /**
   * The members of `agentIds` that joined by `poolId` rather than being spawned by the pool
   * (absent in records written before joining existed).
   */
  joinedIds?: string[];
  createdAt: number;
}

/** A point-in-time view of a pool. */
export interface PoolInfo {
  readonly poolId: string;
  readonly name: string;
  readonly model: string;
  readonly minAgents: number;
  readonly maxAgents: number;
  readonly executor: string | undefined;
  readonly provider: string | undefined;
  /** The size reconcile keeps the pool at. */
  readonly desiredAgents: number;
  readonly status: PoolStatus;
  /** Ids of its live agents. */
  readonly currentAgents: readonly string[];
  readonly createdAt: number;
}

/** What a pool change returns: the pool plus the agents it spawned, with their credentials. */
export interface PoolChange {
  pool: PoolInfo;
  /** Agents spawned by this call; remote workers authenticate with their credentials. */
  spawned: SpawnedAgent[];
}

/** What the pool manager needs from the fabric. */
export interface PoolHost {
  spawnAgent(config: AgentConfig): SpawnedAgent;
  /** `onChanged`: see `LifecycleManager.terminate`. */
  terminateAgent(
    agentId: string,
    drainTimeoutMs: number,
    onChanged?: () => void,
  ): Promise<AgentInfo>;
  agentInfo(agentId: string): AgentInfo | undefined;
  /** `maxConcurrentAgents`, and how many more agents may be spawned now under it. */
  agentRoom(): { readonly free: number; readonly limit: number };
  openPoolQueue(poolId: string): void;
  drainPoolQueue(poolId: string, timeoutMs: number): Promise<void>;
  closePoolQueue(poolId: string): void;
  /**
   * A deletion ended (after its drain): called in the synchronous run that deletes the pool's
   * record, so what the host keeps for the pool (the fabric: its budget) goes in the same commit.
   */
  poolDeleted(poolId: string): void;
  drainTimeoutMs: number;
}

function toInfo(rec: PoolRecord): PoolInfo {
  return {
    poolId: rec.poolId,
    name: rec.name,
    model: rec.model,
    minAgents: rec.minAgents,
    maxAgents: rec.maxAgents,
    executor: rec.executor,
    provider: rec.provider,
    desiredAgents: desiredOf(rec),
    status: rec.status,
    currentAgents: Object.freeze([...rec.agentIds]),
    createdAt: rec.createdAt,
  };
}

function desiredOf(rec: PoolRecord): number {
  const d = rec.desired ?? Math.max(rec.minAgents, rec.agentIds.length);
  return Math.min(rec.maxAgents, Math.max(rec.minAgents, d));
}

/** Default of {@link PoolManagerOptions.reconcileIntervalMs}. */
export const DEFAULT_RECONCILE_INTERVAL_MS = 5_000;
/** Default of {@link PoolManagerOptions.startBackoffMs}. */
export const DEFAULT_START_BACKOFF_MS = 1_000;
/** Default of {@link PoolManagerOptions.maxStartBackoffMs}. */
export const DEFAULT_MAX_START_BACKOFF_MS = 60_000;

/** Options of a {@link PoolManager}. */
export interface PoolManagerOptions {
  /** How often every pool is reconciled and providers' health checks run. @default 5000 */
  reconcileIntervalMs?: number;
  /** Delay before the first retry after a failed start; doubles per failure in a row. @default 1000 */
  startBackoffMs?: number;
  /** Longest delay between retries. @default 60000 */
  maxStartBackoffMs?: number;
}

/** Validates and freezes {@link PoolManagerOptions}. @throws ConfigError naming the field */
export function parsePoolManagerOptions(
  options: PoolManagerOptions = {},
): Readonly<Required<PoolManagerOptions>> {
  const out = {
    reconcileIntervalMs: options.reconcileIntervalMs ?? DEFAULT_RECONCILE_INTERVAL_MS,
    startBackoffMs: options.startBackoffMs ?? DEFAULT_START_BACKOFF_MS,
    maxStartBackoffMs: options.maxStartBackoffMs ?? DEFAULT_MAX_START_BACKOFF_MS,
  };
  for (const [key, v] of Object.entries(out)) {
    if (!Number.isInteger(v) || v <= 0 || v > 2 ** 31 - 1) {
      throw new ConfigError(`options.pools.${key}`, 'must be a positive integer (ms)');
    }
  }
  if (out.maxStartBackoffMs < out.startBackoffMs) {
    throw new ConfigError('options.pools.maxStartBackoffMs', 'must be at least startBackoffMs');
  }
  return Object.freeze(out);
}

/** Why a pool spawned an agent. */
export type PoolSpawnReason = 'create' | 'scale' | 'replace';

/** Events of the {@link PoolManager}. */
export type PoolEvents = {
  /** The pool spawned an agent (and asked its provider, if any, to start it). */
  'pool.agent.spawned': [e: { poolId: string; agentId: string; reason: PoolSpawnReason }];
  /** The provider reports the agent's runtime started. */
  'pool.agent.started': [e: { poolId: string; agentId: string }];
  /** An agent spawned outside the pool with its `poolId` became a member. */
  'pool.agent.joined': [e: { poolId: string; agentId: string }];
  /** A joined agent ended outside the pool; it is not replaced. */
  'pool.agent.left': [e: { poolId: string; agentId: string }];
  /** An agent left the pool without being scaled away; reconcile replaces it. */
  'pool.agent.lost': [e: { poolId: string; agentId: string; reason: PoolStopReason }];
  /** A start failed; the next attempt is not before `retryAt` (epoch ms). */
  'pool.start.failed': [
    e: {
      poolId: string;
      agentId: string | undefined;
      error: Error;
      failures: number;
      retryAt: number;
    },
  ];
  /** A background step failed (a provider's stop or health check threw). */
  error: [error: Error];
};

interface Runtime {
  readonly poolId: string;
  readonly provider: PoolProvider;
  readonly controller: AbortController;
  /** `start` resolved: health checks apply. */
  started: boolean;
}

interface Backoff {
  failures: number;
  /** When the next start may be tried (epoch ms), as `pool.start.failed` tells it. */
  retryAt: number;
  /**
   * The same on the monotonic clock (`performance.now()`), which decides: a wall clock set back
   * must not hold the pool below its size for as long as it went back.
   */
  dueAt: number;
  timer: NodeJS.Timeout | undefined;
}

function asError(err: unknown): Error {
  return err instanceof Error ? err : new Error(String(err));
}

/** Creates, scales and deletes pools through a {@link PoolHost}, and keeps them at size. */
export class PoolManager {
  /** Pool events: spawned, started, lost, start failures. */
  readonly events = new TypedEmitter<PoolEvents>();
  readonly #pools: Collection<PoolRecord>;
  readonly #host: PoolHost;
  readonly #options: Readonly<Required<PoolManagerOptions>>;
  /** Deletions under way, with the `onChanged` callbacks of every caller sharing each. */
  readonly #deleting = new Map<string, { done: Promise<void>; onChanged: Array<() => void> }>();
  readonly #providers = new Map<string, PoolProvider>();
  /** Agents whose runtime a provider started (or is starting). */
  readonly #runtimes = new Map<string, Runtime>();
  /** Agents that were HEALTHY at least once (losing one is not a failed start). */
  readonly #everHealthy = new Set<string>();
  /**
   * By pool, the agents joined with `held` whose join is neither confirmed nor withdrawn yet:
   * until then no agent of the pool gives way (see {@link join}).
   */
  readonly #heldJoins = new Map<string, Set<string>>();
  readonly #backoff = new Map<string, Backoff>();
  readonly #timer: NodeJS.Timeout;
  #checking = false;
  #closed = false;

  constructor(
    host: PoolHost,
    pools: Collection<PoolRecord> = new MemoryCollection<PoolRecord>(),
    options: PoolManagerOptions = {},
  ) {
    this.#host = host;
    this.#pools = pools;
    this.#options = parsePoolManagerOptions(options);
    this.#timer = setInterval(() => void this.#tick(), this.#options.reconcileIntervalMs);
    this.#timer.unref();
  }

  /**
   * Adds a pool provider pools can name in `PoolConfig.provider`.
   * @throws InvalidArgumentError for a malformed provider or a taken name.
   */
  registerProvider(provider: PoolProvider): void {
    if (
      provider === null ||
      typeof provider !== 'object' ||
      typeof provider.name !== 'string' ||
      provider.name.length === 0 ||
      typeof provider.executor !== 'string' ||
      typeof provider.start !== 'function' ||
      typeof provider.stop !== 'function'
    ) {
      throw new InvalidArgumentError(
        'provider',
        'must have a name, an executor, start() and stop()',
      );
    }
    if (this.#providers.has(provider.name)) {
      throw new InvalidArgumentError(
        'provider.name',
        `${JSON.stringify(provider.name)} is already registered`,
      );
    }
    this.#providers.set(provider.name, provider);
    this.#arrived((rec) => rec.provider === provider.name);
  }

  /**
   * Tells the manager an executor was registered (a plugin's, loaded after the pools were
   * restored): the pools that spawn on it and were backing off after failed starts grow now.
   */
  executorRegistered(name: string): void {
    this.#arrived((rec) => this.#executorOf(rec) === name);
  }

  /** Ends the start backoff of the active pools `waited` picks and reconciles them. */
  #arrived(waited: (rec: PoolRecord) => boolean): void {
    if (this.#closed) return;
    for (const rec of [...this.#pools.values()]) {
      if (rec.status !== 'ACTIVE' || !this.#backoff.has(rec.poolId) || !waited(rec)) continue;
      this.#clearBackoff(rec.poolId);
      this.#reconcile(rec);
    }
  }

  /** The executor a pool's agents are spawned on, when the pool or its provider names one. */
  #executorOf(rec: PoolRecord): string | undefined {
    if (rec.executor !== undefined) return rec.executor;
    return rec.provider === undefined ? undefined : this.#providers.get(rec.provider)?.executor;
  }

  /**
   * Removes a provider. Its pools keep their agents' records but start no new ones until a
   * provider of that name is registered again. The provider's runtimes are its own to stop
   * (its `close`).
   */
  unregisterProvider(name: string): boolean {
    const p = this.#providers.get(name);
    if (p === undefined) return false;
    this.#providers.delete(name);
    for (const [id, r] of this.#runtimes) {
      if (r.provider === p) {
        r.controller.abort(new Error(`pool provider ${name} was unregistered`));
        this.#runtimes.delete(id);
      }
    }
    return true;
  }

  /** The registered provider names. */
  providers(): string[] {
    return [...this.#providers.keys()];
  }

  /**
   * Tells the manager a pool agent changed status (the fabric forwards lifecycle events):
   * HEALTHY ends a pool's start backoff; TERMINATED and UNHEALTHY trigger a reconcile.
   */
  onAgentStatus(agent: AgentInfo): void {
    if (this.#closed) return;
    if (agent.status === AgentStatus.HEALTHY) {
      this.#everHealthy.add(agent.id);
      if (agent.poolId === undefined) return;
      const poolId = agent.poolId;
      this.#clearBackoff(poolId);
      // An agent back from UNHEALTHY may leave the pool above its size.
      void Promise.resolve().then(() => this.reconcile(poolId));
      return;
    }
    if (agent.status === AgentStatus.TERMINATED) {
      this.#stopRuntime(agent.id, 'terminated');
    }
    if (
      agent.poolId !== undefined &&
      (agent.status === AgentStatus.TERMINATED || agent.status === AgentStatus.UNHEALTHY)
    ) {
      const poolId = agent.poolId;
      // Deferred: the lifecycle manager is still emitting; spawning from inside it re-enters.
      void Promise.resolve().then(() => this.reconcile(poolId));
    }
  }

  /**
   * Brings a pool (or every pool) to its desired size now: drops lost agents, terminates
   * UNHEALTHY ones, and spawns what is missing unless the pool is backing off.
   */
  reconcile(poolId?: string): void {
    if (this.#closed) return;
    if (poolId !== undefined) {
      const rec = this.#pools.get(poolId);
      if (rec !== undefined) this.#reconcile(rec);
      return;
    }
    for (const rec of [...this.#pools.values()]) this.#reconcile(rec);
  }

  /** Stops the reconcile timer and retry timers; pools and agents are left as they are. */
  close(): void {
    this.#closed = true;
    clearInterval(this.#timer);
    for (const b of this.#backoff.values()) clearTimeout(b.timer);
    this.#backoff.clear();
  }

  /**
   * Creates a pool and spawns its `minAgents` agents.
   * @throws PoolExistsError; InvalidArgumentError for bad sizes; AgentLimitError when the agents
   *   would exceed `maxConcurrentAgents` (the pool is then not created).
   */
  createPool(config: PoolConfig): PoolChange {
    if (config === null || typeof config !== 'object')
      throw new InvalidArgumentError('config', 'must be an object');
    const poolId = checkString('config.poolId', config.poolId);
    if (this.#pools.get(poolId) !== undefined) throw new PoolExistsError(poolId);
    const model = checkString('config.model', config.model);
    const minAgents = checkNumber('config.minAgents', config.minAgents ?? 1, 'nonNegativeInt');
    const maxAgents = checkNumber(
      'config.maxAgents',
      config.maxAgents ?? Math.max(minAgents, 10),
      'positiveInt',
    );
    if (maxAgents < minAgents) {
      throw new InvalidArgumentError(
        'config.maxAgents',
        `must be at least minAgents (${minAgents}), got ${maxAgents}`,
      );
    }
    const provider =
      config.provider === undefined ? undefined : checkString('config.provider', config.provider);
    if (provider !== undefined && !this.#providers.has(provider)) {
      throw new InvalidArgumentError(
        'config.provider',
        `names no registered pool provider: ${JSON.stringify(provider)}`,
      );
    }
    // Refused before any agent is spawned: growing to the limit and terminating them all again
    // would fill the terminated agents' retention with agents that never served.
    const room = this.#host.agentRoom();
    if (minAgents > room.free) throw new AgentLimitError(room.limit, minAgents, room.free);
    const rec: PoolRecord = {
      poolId,
      name: config.name === undefined ? poolId : checkString('config.name', config.name),
      model,
      minAgents,
      maxAgents,
      desired: minAgents,
      provider,
      executor:
        config.executor === undefined ? undefined : checkString('config.executor', config.executor),
      capabilities: Object.freeze([...checkCapabilities(config.capabilities ?? [])]),
      labels: Object.freeze({ ...checkLabels(config.labels ?? {}) }),
      agentBudget: config.agentBudget,
      status: 'ACTIVE',
      agentIds: [],
      createdAt: Date.now(),
    };
    this.#pools.put(poolId, rec);
    this.#host.openPoolQueue(poolId);
    let spawned: SpawnedAgent[];
    try {
      spawned = this.#grow(rec, minAgents, 'create');
    } catch (err) {
      for (const id of rec.agentIds) void this.#host.terminateAgent(id, 0);
      this.#host.closePoolQueue(poolId);
      this.#pools.delete(poolId);
      throw err;
    }
    return { pool: toInfo(rec), spawned };
  }

  /**
   * Grows or shrinks a pool to `targetSize`, clamped to [minAgents, maxAgents]. Shrinking drains
   * the least-loaded agents.
   * @param options.onChanged - called synchronously right after each change the scaling makes
   *   (the pool's record with its growth, before the first await; then each termination's, see
   *   `LifecycleManager.terminate`), before the store commits it: the last call follows the
   *   last change (`AgentFabric.scalePool` marks the commit that carries it there).
   * @throws AgentLimitError when the agents it would add do not fit under `maxConcurrentAgents`
   *   and the size grows (nothing changes; a size no larger than the pool's spawns what fits and
   *   leaves the rest to reconcile); what a spawn throws (a missing executor or provider: the
   *   size is kept).
   */
  async scalePool(
    poolId: string,
    targetSize: number,
    options: { onChanged?: () => void } = {},
  ): Promise<PoolChange> {
    const { onChanged } = options;
    const rec = this.#active(poolId);
    checkNumber('targetSize', targetSize, 'nonNegativeInt');
    this.#prune(rec);
    const target = Math.min(rec.maxAgents, Math.max(rec.minAgents, targetSize));
    // Refused whole, as createPool is: growing part of the way would leave agents spawned that
    // the caller, answered with the error, never hears of. Not a size no larger than the one
    // the pool had (a pool short for want of room, scaled down): it asks for no agent the pool
    // was not owed already, so it is kept, and what does not fit now is left to reconcile.
    const room = this.#host.agentRoom();
    const wanted = target - rec.agentIds.length;
    if (wanted > room.free && target > desiredOf(rec)) {
      throw new AgentLimitError(room.limit, wanted, room.free);
    }
    const before = rec.desired;
    rec.desired = target;
    this.#pools.put(poolId, rec);
    const current = rec.agentIds.length;
    if (target > current) {
      let spawned: SpawnedAgent[] = [];
      try {
        const fits = Math.min(target - current, Math.max(0, room.free));
        if (fits > 0) spawned = this.#grow(rec, fits, 'scale');
      } catch (err) {
        // Refused before any agent was spawned (a missing executor or provider): the
        // pool keeps the size it had — reconcile must not carry out a scale its caller saw fail.
        if (rec.agentIds.length === current) {
          rec.desired = before;
          this.#pools.put(poolId, rec);
        }
        throw err;
      }
      onChanged?.();
      return { pool: toInfo(rec), spawned };
    }
    if (target < current) {
      // Least loaded first; on a tie the pool's own agents before joined ones, newest first (a
      // joined agent, such as a config agent whose token an operator holds, goes last).
      const joined = new Set(rec.joinedIds ?? []);
      const byLoad = rec.agentIds
        .map((id, i) => ({
          id,
          i,
          joined: joined.has(id) ? 1 : 0,
          load: this.#host.agentInfo(id)?.runningTasks ?? 0,
        }))
        .sort((a, b) => a.load - b.load || a.joined - b.joined || b.i - a.i)
        .slice(0, current - target)
        .map((a) => a.id);
      rec.agentIds = rec.agentIds.filter((id) => !byLoad.includes(id));
      this.#forgetJoined(rec, byLoad);
      this.#pools.put(poolId, rec);
      onChanged?.();
      await Promise.all(
        byLoad.map((id) => this.#host.terminateAgent(id, this.#host.drainTimeoutMs, onChanged)),
      );
    } else onChanged?.();
    return { pool: toInfo(rec), spawned: [] };
  }

  /**
   * Drains and deletes a pool: it takes no new tasks, its queued and running tasks get the drain
   * timeout to finish (what is left is cancelled), then its agents terminate.
   * @param options.onChanged - called synchronously right after each change the deletion makes
   *   (the pool DRAINING, each termination's, the pool deleted), before the store commits it: the
   *   last call follows the last change. A call that joins a deletion under way is called from
   *   then on.
   */
  async deletePool(
    poolId: string,
    options: { drainTimeoutSeconds?: number; onChanged?: () => void } = {},
  ): Promise<void> {
    const { onChanged } = options;
    const pending = this.#deleting.get(poolId);
    if (pending !== undefined) {
      if (onChanged !== undefined) pending.onChanged.push(onChanged);
      return pending.done;
    }
    const rec = this.#pools.get(poolId);
    if (rec === undefined) throw new PoolNotFoundError(poolId);
    const drainMs =
      options.drainTimeoutSeconds === undefined
        ? this.#host.drainTimeoutMs
        : checkNumber('drainTimeoutSeconds', options.drainTimeoutSeconds, 'nonNegativeNumber') *
          1000;
    rec.status = 'DRAINING';
    this.#pools.put(poolId, rec);
    const callbacks = onChanged === undefined ? [] : [onChanged];
    const changed = (): void => {
      for (const f of callbacks) f();
    };
    changed();
    const p = (async () => {
      try {
        // Elapsed time: a wall clock set back must not lengthen the drain by as much.
        const started = performance.now();
        await this.#host.drainPoolQueue(poolId, drainMs);
        const left = Math.max(0, drainMs - (performance.now() - started));
        await Promise.all(rec.agentIds.map((id) => this.#host.terminateAgent(id, left, changed)));
        this.#host.closePoolQueue(poolId);
        this.#pools.delete(poolId);
        this.#host.poolDeleted(poolId);
        changed();
      } finally {
        this.#deleting.delete(poolId);
      }
    })();
    this.#deleting.set(poolId, { done: p, onChanged: callbacks });
    return p;
  }

  /** A snapshot of the pool. @throws PoolNotFoundError */
  getPool(poolId: string): PoolInfo {
    const rec = this.#pools.get(poolId);
    if (rec === undefined) throw new PoolNotFoundError(poolId);
    this.#prune(rec);
    return toInfo(rec);
  }

  /** Every pool. */
  listPools(): PoolInfo[] {
    return [...this.#pools.values()].map((rec) => {
      this.#prune(rec);
      return toInfo(rec);
    });
  }

  /**
   * Sets the budget each agent the pool spawns from now on gets (`undefined`: none) and returns
   * the pool's current agents, whose own budgets are the caller's to update.
   * @throws PoolNotFoundError for an unknown pool.
   */
  setAgentBudget(poolId: string, budget: AgentConfig['budget']): readonly string[] {
    const rec = this.#pools.get(poolId);
    if (rec === undefined) throw new PoolNotFoundError(poolId);
    rec.agentBudget = budget;
    this.#pools.put(poolId, rec);
    // Joined agents got their budget from whoever spawned them.
    const joined = new Set(rec.joinedIds ?? []);
    return rec.agentIds.filter((id) => !joined.has(id));
  }

  /**
   * Checks that an agent spawned outside the manager can join the pool: it exists, is ACTIVE, and
   * has fewer than `maxAgents` agents or one of its own among them — which then gives way to
   * the joining agent ({@link join}). A config agent in a pool whose `minAgents` already filled
   * it (`minAgents: 1, maxAgents: 1`) takes the place of the agent the pool started.
   * @throws PoolNotFoundError, PoolDrainingError, PoolFullError (only joined agents in it)
   */
  assertJoinable(poolId: string): void {
    const rec = this.#active(poolId);
    this.#prune(rec);
    if (rec.agentIds.length < rec.maxAgents) return;
    const joined = new Set(rec.joinedIds ?? []);
    if (rec.agentIds.some((id) => !joined.has(id))) return;
    throw new PoolFullError(poolId, rec.maxAgents);
  }

  /**
   * Makes an agent spawned outside the manager with this `poolId` a member of the pool (see
   * **Joined agents** in the module comment); the pool's desired size grows by one. A no-op for
   * a member. With `held` (a join its caller may still take back, see `AgentFabric.spawn`), an
   * agent of a full pool gives way only once {@link confirmJoin} says so — a join that is
   * {@link withdraw}n displaced no one; until then the pool is not trimmed.
   * @throws PoolNotFoundError
   */
  join(poolId: string, agentId: string, options: { held?: boolean } = {}): void {
    const rec = this.#pools.get(poolId);
    if (rec === undefined) throw new PoolNotFoundError(poolId);
    if (rec.agentIds.includes(agentId)) return;
    rec.desired = Math.min(rec.maxAgents, desiredOf(rec) + 1);
    rec.agentIds.push(agentId);
    rec.joinedIds = [...(rec.joinedIds ?? []), agentId];
    this.#pools.put(poolId, rec);
    this.events.emit('pool.agent.joined', { poolId, agentId });
    if (options.held === true) {
      const held = this.#heldJoins.get(poolId) ?? new Set<string>();
      held.add(agentId);
      this.#heldJoins.set(poolId, held);
      return;
    }
    // Joined into a full pool: one of the pool's own agents gives way (reconcile's trim takes
    // them before joined ones: not yet started first, then the least loaded).
    if (rec.agentIds.length > rec.maxAgents)
      void Promise.resolve().then(() => this.reconcile(poolId));
  }

  /**
   * The `held` join of `agentId` stands (its spawn is committed): into a full pool, one of the
   * pool's own agents gives way now, as {@link join} without `held` does.
   */
  confirmJoin(poolId: string, agentId: string): void {
    if (!this.#release(poolId, [agentId])) return;
    const rec = this.#pools.get(poolId);
    if (rec !== undefined && rec.agentIds.length > rec.maxAgents) this.reconcile(poolId);
  }

  /** Ends the hold of `agentIds`' joins; whether one was held. */
  #release(poolId: string, agentIds: readonly string[]): boolean {
    const held = this.#heldJoins.get(poolId);
    if (held === undefined) return false;
    let released = false;
    for (const id of agentIds) released = held.delete(id) || released;
    if (held.size === 0) this.#heldJoins.delete(poolId);
    return released;
  }

  /**
   * After a restart: makes the live agents that name a pool but are not in its record (state
   * written before joined agents were members) members of it, as {@link join} does, unless that
   * would take an ACTIVE pool past `maxAgents` (reconcile would then terminate one).
   */
  adoptRestored(agents: Iterable<{ id: string; poolId: string | undefined }>): void {
    for (const a of agents) {
      if (a.poolId === undefined) continue;
      const rec = this.#pools.get(a.poolId);
      if (rec === undefined || rec.agentIds.includes(a.id)) continue;
      if (rec.status === 'ACTIVE' && rec.agentIds.length >= rec.maxAgents) continue;
      this.join(a.poolId, a.id);
    }
  }

  /** The size reconcile keeps the pool at, if it exists. */
  desiredSize(poolId: string): number | undefined {
    const rec = this.#pools.get(poolId);
    return rec === undefined ? undefined : desiredOf(rec);
  }

  /**
   * Takes back a pool change its caller may not acknowledge (its commit failed: see
   * `AgentFabric.createPool`): `agentIds`, the agents it spawned or joined, leave the pool (the
   * caller withdraws them) and its size is `desired` again; with `desired` undefined the change
   * made the pool, which goes too. Nothing is drained: no task reached the withdrawn agents.
   */
  withdraw(poolId: string, agentIds: readonly string[], desired: number | undefined): void {
    this.#release(poolId, agentIds);
    const rec = this.#pools.get(poolId);
    if (rec === undefined) return;
    for (const id of agentIds) this.#everHealthy.delete(id);
    if (desired === undefined) {
      this.#clearBackoff(poolId);
      this.#host.closePoolQueue(poolId);
      this.#pools.delete(poolId);
      return;
    }
    rec.agentIds = rec.agentIds.filter((id) => !agentIds.includes(id));
    this.#forgetJoined(rec, agentIds);
    rec.desired = desired;
    this.#pools.put(poolId, rec);
  }

  /** The pool's record, if it exists. */
  peek(poolId: string): Readonly<PoolRecord> | undefined {
    return this.#pools.get(poolId);
  }

  /** Checks that a pool exists and takes new agents and tasks. */
  assertActive(poolId: string): void {
    this.#active(poolId);
  }

  #active(poolId: string): PoolRecord {
    const rec = this.#pools.get(poolId);
    if (rec === undefined) throw new PoolNotFoundError(poolId);
    if (rec.status !== 'ACTIVE') throw new PoolDrainingError(poolId);
    return rec;
  }

  #grow(rec: PoolRecord, count: number, reason: PoolSpawnReason): SpawnedAgent[] {
    const provider = rec.provider === undefined ? undefined : this.#providers.get(rec.provider);
    if (rec.provider !== undefined && provider === undefined) {
      throw new InvalidArgumentError(
        'pool.provider',
        `pool ${rec.poolId} names pool provider ${JSON.stringify(rec.provider)}, which is not registered`,
      );
    }
    const executor = this.#executorOf(rec);
    const spawned: SpawnedAgent[] = [];
    try {
      for (let i = 0; i < count; i++) {
        const agent = this.#host.spawnAgent({
          model: rec.model,
          name: `${rec.name}-${rec.agentIds.length + 1}`,
          poolId: rec.poolId,
          capabilities: rec.capabilities,
          labels: rec.labels,
          ...(executor === undefined ? {} : { executor }),
          ...(rec.agentBudget === undefined ? {} : { budget: rec.agentBudget }),
        });
        rec.agentIds.push(agent.id);
        spawned.push(agent);
        if (agent.status === AgentStatus.HEALTHY) this.#everHealthy.add(agent.id);
      }
    } finally {
      this.#pools.put(rec.poolId, rec);
    }
    for (const agent of spawned) {
      if (this.events.listens('pool.agent.spawned')) {
        this.events.emit('pool.agent.spawned', { poolId: rec.poolId, agentId: agent.id, reason });
      }
      if (provider !== undefined) this.#startRuntime(rec, provider, agent);
    }
    return spawned;
  }

  #startRuntime(rec: PoolRecord, provider: PoolProvider, agent: SpawnedAgent): void {
    const runtime: Runtime = {
      poolId: rec.poolId,
      provider,
      controller: new AbortController(),
      started: false,
    };
    this.#runtimes.set(agent.id, runtime);
    Promise.resolve()
      .then(() =>
        provider.start({
          agentId: agent.id,
          credential: agent.credential,
          poolId: rec.poolId,
          model: rec.model,
          name: agent.name,
          labels: rec.labels,
          signal: runtime.controller.signal,
        }),
      )
      .then(
        () => {
          if (this.#runtimes.get(agent.id) !== runtime) return;
          runtime.started = true;
          this.events.emit('pool.agent.started', { poolId: rec.poolId, agentId: agent.id });
        },
        (err: unknown) => {
          if (this.#runtimes.get(agent.id) !== runtime) return;
          this.#failed(rec.poolId, agent.id, asError(err));
          this.#retire(rec.poolId, agent.id, 'start-failed');
        },
      );
  }

  /** Ends an agent's runtime once (the provider's `stop`), whatever ended the agent. */
  #stopRuntime(agentId: string, reason: PoolStopReason): void {
    const r = this.#runtimes.get(agentId);
    if (r === undefined) return;
    this.#runtimes.delete(agentId);
    r.controller.abort(new Error(`agent ${agentId} stopped: ${reason}`));
    Promise.resolve()
      .then(() => r.provider.stop(agentId, reason))
      .catch((err: unknown) => this.#error(err));
  }

  /**
   * Takes a lost agent out of its pool: stops its runtime and terminates its record (a no-op
   * for one already terminated). Reconcile replaces it.
   */
  #retire(poolId: string, agentId: string, reason: PoolStopReason): void {
    const rec = this.#pools.get(poolId);
    if (rec !== undefined && rec.agentIds.includes(agentId)) {
      rec.agentIds = rec.agentIds.filter((id) => id !== agentId);
      this.#pools.put(poolId, rec);
      this.events.emit('pool.agent.lost', { poolId, agentId, reason });
      // Lost before it was ever healthy: the start did not work.
      if (reason !== 'terminated' && reason !== 'start-failed' && !this.#everHealthy.has(agentId)) {
        this.#failed(
          poolId,
          agentId,
          new Error(`agent ${agentId} was lost (${reason}) before it became healthy`),
        );
      }
    }
    this.#everHealthy.delete(agentId);
    this.#stopRuntime(agentId, reason);
    const info = this.#host.agentInfo(agentId);
    if (info !== undefined && info.status !== AgentStatus.TERMINATED) {
      this.#host.terminateAgent(agentId, 0).catch((err: unknown) => this.#error(err));
    }
    void Promise.resolve().then(() => this.reconcile(poolId));
  }

  #reconcile(rec: PoolRecord): void {
    if (rec.status !== 'ACTIVE') return;
    let unhealthy = 0;
    const joined = new Set(rec.joinedIds ?? []);
    for (const id of [...rec.agentIds]) {
      const info = this.#host.agentInfo(id);
      if (info === undefined || info.status === AgentStatus.TERMINATED) {
        this.#lost(rec.poolId, id);
      } else if (joined.has(id)) {
        // Not the pool's to start, judge or replace: it stays a live member.
        continue;
      } else if (info.status === AgentStatus.UNHEALTHY) {
        // Never healthy: a start that did not work. Once healthy: it may come back (and keep
        // its hooks), so it stays, uncounted, while a replacement covers for it.
        if (!this.#everHealthy.has(id)) this.#retire(rec.poolId, id, 'unhealthy');
        else unhealthy++;
      }
    }
    const current = this.#pools.get(rec.poolId);
    if (current === undefined || current.status !== 'ACTIVE') return;
    const live = current.agentIds.length - unhealthy;
    const desired = desiredOf(current);
    if (live > desired) {
      // A held join (not yet committed) displaces no one until it is confirmed.
      if (!this.#heldJoins.has(current.poolId)) this.#trim(current, live - desired);
      return;
    }
    // UNHEALTHY agents still count against maxAgents: a pool never holds more than that.
    const missing = Math.min(desired - live, current.maxAgents - current.agentIds.length);
    if (missing <= 0) return;
    const backoff = this.#backoff.get(current.poolId);
    if (backoff !== undefined && performance.now() < backoff.dueAt) return;
    try {
      this.#grow(current, missing, 'replace');
    } catch (err) {
      this.#failed(current.poolId, undefined, asError(err));
    }
  }

  /**
   * An agent came back and the pool has more live agents than it wants: retires the surplus,
   * agents not yet started first, then the least loaded, newest first (the returning agent
   * keeps its context and hooks). They drain like a scale-down.
   */
  #trim(rec: PoolRecord, count: number): void {
    const order = (status: AgentStatus | undefined): number =>
      status === AgentStatus.STARTING ? 0 : 1;
    const joined = new Set(rec.joinedIds ?? []);
    const surplus = rec.agentIds
      .map((id, i) => ({ id, i, info: this.#host.agentInfo(id), joined: joined.has(id) ? 1 : 0 }))
      .filter((a) => a.info !== undefined && a.info.status !== AgentStatus.UNHEALTHY)
      .sort(
        (a, b) =>
          a.joined - b.joined ||
          order(a.info?.status) - order(b.info?.status) ||
          (a.info?.runningTasks ?? 0) - (b.info?.runningTasks ?? 0) ||
          b.i - a.i,
      )
      .slice(0, count)
      .map((a) => a.id);
    rec.agentIds = rec.agentIds.filter((id) => !surplus.includes(id));
    this.#forgetJoined(rec, surplus);
    this.#pools.put(rec.poolId, rec);
    for (const id of surplus) {
      this.#host
        .terminateAgent(id, this.#host.drainTimeoutMs)
        .catch((err: unknown) => this.#error(err));
    }
  }

  /** Records a failed start and schedules the retry. */
  #failed(poolId: string, agentId: string | undefined, error: Error): void {
    const b = this.#backoff.get(poolId) ?? {
      failures: 0,
      retryAt: 0,
      dueAt: 0,
      timer: undefined,
    };
    b.failures++;
    const { startBackoffMs, maxStartBackoffMs } = this.#options;
    const delay = Math.min(maxStartBackoffMs, startBackoffMs * 2 ** Math.min(b.failures - 1, 30));
    b.retryAt = Date.now() + delay;
    b.dueAt = performance.now() + delay;
    clearTimeout(b.timer);
    if (!this.#closed) {
      b.timer = setTimeout(() => this.reconcile(poolId), delay);
      b.timer.unref();
    }
    this.#backoff.set(poolId, b);
    this.events.emit('pool.start.failed', {
      poolId,
      agentId,
      error,
      failures: b.failures,
      retryAt: b.retryAt,
    });
  }

  #clearBackoff(poolId: string): void {
    const b = this.#backoff.get(poolId);
    if (b === undefined) return;
    clearTimeout(b.timer);
    this.#backoff.delete(poolId);
  }

  /** Reconciles every pool, then asks providers about the agents they started. */
  async #tick(): Promise<void> {
    this.reconcile();
    if (this.#checking || this.#closed) return;
    this.#checking = true;
    try {
      const checks = [...this.#runtimes]
        .filter(([, r]) => r.started && r.provider.healthCheck !== undefined)
        .map(async ([id, r]) => {
          let ok: boolean;
          try {
            ok = (await r.provider.healthCheck!(id)) === true;
          } catch {
            ok = false;
          }
          if (!ok && this.#runtimes.get(id) === r) this.#retire(r.poolId, id, 'health-check');
        });
      await Promise.all(checks);
    } finally {
      this.#checking = false;
    }
  }

  #error(err: unknown): void {
    if (this.events.listens('error')) this.events.emit('error', asError(err));
  }

  /**
   * Drops agents that were terminated by other means (reconcile then replaces the pool's own).
   */
  #prune(rec: PoolRecord): void {
    for (const id of [...rec.agentIds]) {
      const info = this.#host.agentInfo(id);
      if (info === undefined || info.status === AgentStatus.TERMINATED) this.#lost(rec.poolId, id);
    }
  }

  /** A member ended outside the pool: a joined one leaves, the pool's own is retired. */
  #lost(poolId: string, agentId: string): void {
    const rec = this.#pools.get(poolId);
    if (rec === undefined || !(rec.joinedIds ?? []).includes(agentId)) {
      this.#retire(poolId, agentId, 'terminated');
      return;
    }
    rec.agentIds = rec.agentIds.filter((id) => id !== agentId);
    this.#forgetJoined(rec, [agentId]);
    rec.desired = Math.max(rec.minAgents, desiredOf(rec) - 1);
    this.#pools.put(poolId, rec);
    this.#everHealthy.delete(agentId);
    this.events.emit('pool.agent.left', { poolId, agentId });
  }

  /** Takes agents out of the record's joined list (the caller stores the record). */
  #forgetJoined(rec: PoolRecord, agentIds: readonly string[]): void {
    if (rec.joinedIds === undefined) return;
    rec.joinedIds = rec.joinedIds.filter((id) => !agentIds.includes(id));
  }
}

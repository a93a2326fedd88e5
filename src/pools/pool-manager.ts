/**
 * PoolManager: groups of agents with a shared configuration and a shared queue.
 *
 * A pool keeps between `minAgents` and `maxAgents` agents; its queue is served by the
 * least-loaded healthy agent. Deleting a pool drains it: no new tasks, queued and running ones
 * get the drain timeout to finish, then its agents terminate.
 *
 * @module
 */
import type { AgentConfig, AgentInfo, SpawnedAgent } from '../agent.js';
import { PoolDrainingError, PoolExistsError, PoolNotFoundError } from '../errors.js';
import { MemoryCollection } from '../store/memory-store.js';
import type { Collection } from '../store/store.js';
import { InvalidArgumentError } from '../errors.js';
import { checkNumber, checkString } from '../validate.js';

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
  /** Executor of the pool's agents. @default the fabric's default ('local') */
  executor?: string;
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
  capabilities: readonly string[];
  labels: Readonly<Record<string, string>>;
  agentBudget: AgentConfig['budget'];
  status: PoolStatus;
  /** Agents of the pool, oldest first. */
  agentIds: string[];
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
  terminateAgent(agentId: string, drainTimeoutMs: number): Promise<AgentInfo>;
  agentInfo(agentId: string): AgentInfo | undefined;
  openPoolQueue(poolId: string): void;
  drainPoolQueue(poolId: string, timeoutMs: number): Promise<void>;
  closePoolQueue(poolId: string): void;
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
    status: rec.status,
    currentAgents: Object.freeze([...rec.agentIds]),
    createdAt: rec.createdAt,
  };
}

/** Creates, scales and deletes pools through a {@link PoolHost}. */
export class PoolManager {
  readonly #pools: Collection<PoolRecord>;
  readonly #host: PoolHost;
  readonly #deleting = new Map<string, Promise<void>>();

  constructor(host: PoolHost, pools: Collection<PoolRecord> = new MemoryCollection<PoolRecord>()) {
    this.#host = host;
    this.#pools = pools;
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
    const rec: PoolRecord = {
      poolId,
      name: config.name === undefined ? poolId : checkString('config.name', config.name),
      model,
      minAgents,
      maxAgents,
      executor:
        config.executor === undefined ? undefined : checkString('config.executor', config.executor),
      capabilities: Object.freeze([...(config.capabilities ?? [])]),
      labels: Object.freeze({ ...(config.labels ?? {}) }),
      agentBudget: config.agentBudget,
      status: 'ACTIVE',
      agentIds: [],
      createdAt: Date.now(),
    };
    this.#pools.put(poolId, rec);
    this.#host.openPoolQueue(poolId);
    let spawned: SpawnedAgent[];
    try {
      spawned = this.#grow(rec, minAgents);
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
   */
  async scalePool(poolId: string, targetSize: number): Promise<PoolChange> {
    const rec = this.#active(poolId);
    checkNumber('targetSize', targetSize, 'nonNegativeInt');
    this.#prune(rec);
    const target = Math.min(rec.maxAgents, Math.max(rec.minAgents, targetSize));
    const current = rec.agentIds.length;
    if (target > current) {
      const spawned = this.#grow(rec, target - current);
      return { pool: toInfo(rec), spawned };
    }
    if (target < current) {
      const byLoad = rec.agentIds
        .map((id) => ({ id, load: this.#host.agentInfo(id)?.runningTasks ?? 0 }))
        .sort((a, b) => a.load - b.load)
        .slice(0, current - target)
        .map((a) => a.id);
      rec.agentIds = rec.agentIds.filter((id) => !byLoad.includes(id));
      this.#pools.put(poolId, rec);
      await Promise.all(
        byLoad.map((id) => this.#host.terminateAgent(id, this.#host.drainTimeoutMs)),
      );
    }
    return { pool: toInfo(rec), spawned: [] };
  }

  /**
   * Drains and deletes a pool: it takes no new tasks, its queued and running tasks get the drain
   * timeout to finish (what is left is cancelled), then its agents terminate.
   */
  async deletePool(poolId: string, options: { drainTimeoutSeconds?: number } = {}): Promise<void> {
    const pending = this.#deleting.get(poolId);
    if (pending !== undefined) return pending;
    const rec = this.#pools.get(poolId);
    if (rec === undefined) throw new PoolNotFoundError(poolId);
    const drainMs =
      options.drainTimeoutSeconds === undefined
        ? this.#host.drainTimeoutMs
        : checkNumber('drainTimeoutSeconds', options.drainTimeoutSeconds, 'nonNegativeNumber') *
          1000;
    rec.status = 'DRAINING';
    this.#pools.put(poolId, rec);
    const p = (async () => {
      try {
        const started = Date.now();
        await this.#host.drainPoolQueue(poolId, drainMs);
        const left = Math.max(0, drainMs - (Date.now() - started));
        await Promise.all(rec.agentIds.map((id) => this.#host.terminateAgent(id, left)));
        this.#host.closePoolQueue(poolId);
        this.#pools.delete(poolId);
      } finally {
        this.#deleting.delete(poolId);
      }
    })();
    this.#deleting.set(poolId, p);
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

  #grow(rec: PoolRecord, count: number): SpawnedAgent[] {
    const spawned: SpawnedAgent[] = [];
    for (let i = 0; i < count; i++) {
      const agent = this.#host.spawnAgent({
        model: rec.model,
        name: `${rec.name}-${rec.agentIds.length + 1}`,
        poolId: rec.poolId,
        capabilities: rec.capabilities,
        labels: rec.labels,
        ...(rec.executor === undefined ? {} : { executor: rec.executor }),
        ...(rec.agentBudget === undefined ? {} : { budget: rec.agentBudget }),
      });
      rec.agentIds.push(agent.id);
      spawned.push(agent);
    }
    this.#pools.put(rec.poolId, rec);
    return spawned;
  }

  /** Drops agents that were terminated by other means. */
  #prune(rec: PoolRecord): void {
    const alive = rec.agentIds.filter((id) => {
      const info = this.#host.agentInfo(id);
      return info !== undefined && info.status !== 'TERMINATED';
    });
    if (alive.length !== rec.agentIds.length) {
      rec.agentIds = alive;
      this.#pools.put(rec.poolId, rec);
    }
  }
}

/**
 * LifecycleManager: spawn, credentials, heartbeats and health, graceful termination.
 *
 * Health is judged from the last heartbeat: an agent silent for two heartbeat intervals is
 * DEGRADED (it keeps what it holds but gets no new work), for three UNHEALTHY (its work is taken
 * back); any heartbeat makes it HEALTHY again. Agents whose executor runs in this process are
 * heartbeated for by the fabric (`heartbeat: 'auto'`); remote agents must heartbeat themselves.
 *
 * The health sweep does not look at every agent: agents that heartbeat themselves sit in a map
 * ordered by their last heartbeat (a heartbeat moves its agent to the end), so a sweep reads
 * only the agents silent long enough to change status and stops at the first one that is not.
 * Its cost follows the heartbeats received and the status changes, not agents × sweeps.
 *
 * @module
 */
import { hash, randomBytes, randomUUID } from 'node:crypto';
import type { AgentConfig, AgentInfo, HeartbeatMode, SpawnedAgent } from '../agent.js';
import { AgentStatus } from '../agent.js';
import {
  AgentLimitError,
  AgentNotFoundError,
  AgentUnavailableError,
  ClosedError,
  InvalidArgumentError,
  UnauthenticatedError,
} from '../errors.js';
import { TypedEmitter } from '../events.js';
import { MemoryCollection } from '../store/memory-store.js';
import type { Collection } from '../store/store.js';
import { MAX_TIMER_MS } from '../scheduler/task-waiters.js';
import { checkCapabilities, checkLabels, checkNumber, checkString } from '../validate.js';

/** The stored state of an agent. The credential is kept only as its SHA-256. */
export interface AgentRecord {
  id: string;
  name: string;
  model: string;
  capabilities: readonly string[];
  isolation: Readonly<Record<string, unknown>>;
  budget: AgentConfig['budget'];
  poolId: string | undefined;
  executor: string;
  heartbeatMode: HeartbeatMode;
  labels: Readonly<Record<string, string>>;
  status: AgentStatus;
  createdAt: number;
  lastHeartbeat: number;
  terminatedAt: number | undefined;
  credentialHash: string;
}

/** Work figures of an agent, supplied by the scheduler when one is wired in. */
export interface AgentWorkload {
  runningTasks: number;
  queuedTasks: number;
  completedTasks: number;
  failedTasks: number;
}

/** Options of a {@link LifecycleManager}. */
export interface LifecycleOptions {
  /** @default 30 */
  heartbeatIntervalSeconds?: number;
  /** @default 100 */
  maxConcurrentAgents?: number;
  /** @default 30 */
  drainTimeoutSeconds?: number;
  /** Executor of agents that name none. @default 'local' */
  defaultExecutor?: string;
  /** Executors whose agents the fabric heartbeats for. @default ['local', 'inprocess'] */
  autoHeartbeatExecutors?: readonly string[];
  /** How many terminated agents stay visible to `getAgentInfo`. @default 1000 */
  terminatedRetention?: number;
  /** Where agent records live. @default in memory */
  agents?: Collection<AgentRecord>;
}

/** Events of the lifecycle manager. */
export type LifecycleEvents = {
  'agent.spawned': [agent: AgentInfo];
  'agent.status': [agent: AgentInfo, previous: AgentStatus];
  'agent.terminated': [agent: AgentInfo];
  /** The agent's credential was replaced ({@link LifecycleManager.replaceCredential}): the old one no longer authenticates. */
  'agent.credentialReplaced': [agent: AgentInfo];
  /** A terminated agent's record aged out of `terminatedRetention`: it is unknown from now on. */
  'agent.forgotten': [agentId: string];
};

/** How the manager lets an agent's running work finish before it is gone. */
export type Drainer = (agentId: string, timeoutMs: number) => Promise<void>;

const NO_WORK: AgentWorkload = {
  runningTasks: 0,
  queuedTasks: 0,
  completedTasks: 0,
  failedTasks: 0,
};

/**
 * Hashes a credential for storage and lookup: hex SHA-256 of its UTF-8. One-shot (no `Hash`
 * object, whose native half every young-generation collection would visit until collected).
 */
export function hashCredential(credential: string): string {
  return hash('sha256', credential, 'hex');
}

function checkCredential(credential: unknown): string {
  if (typeof credential !== 'string' || credential.length < 32) {
    throw new InvalidArgumentError('credential', 'must be a string of at least 32 characters');
  }
  return credential;
}

/** A watched agent and the monotonic time (ms) of its last heartbeat. */
interface Watched {
  readonly rec: AgentRecord;
  at: number;
}

/** Spawns agents, tracks their health, terminates them. Usable on its own. */
export class LifecycleManager {
  readonly events = new TypedEmitter<LifecycleEvents>();
  readonly #agents: Collection<AgentRecord>;
  readonly #intervalMs: number;
  readonly #maxAgents: number;
  readonly #drainMs: number;
  readonly #defaultExecutor: string;
  readonly #autoExecutors: ReadonlySet<string>;
  readonly #retention: number;
  readonly #byCredential = new Map<string, string>();
  /** Counts credentials that stopped authenticating (see {@link credentialRevocations}). */
  #revocations = 0;
  /** Terminations under way, with the `onChanged` callbacks of every caller sharing each. */
  readonly #terminating = new Map<
    string,
    { done: Promise<AgentInfo>; onChanged: Array<() => void> }
  >();
  readonly #terminated: string[] = [];
  /**
   * Live agents with `heartbeat: 'manual'`, not UNHEALTHY, oldest heartbeat first, each with the
   * monotonic time (`performance.now()`) of its last heartbeat: silence is a duration, so a step
   * of the wall clock (NTP, an operator setting the date) neither makes every agent look silent
   * for hours nor hides a dead one for as long as the clock went back. `lastHeartbeat` (epoch
   * ms) is what the agent's info shows.
   */
  readonly #watched = new Map<string, Watched>();
  /**
   * The entry {@link #beat} last moved to the end of {@link #watched}, while it is known to be
   * there still; every other change of `#watched` forgets it. An agent heartbeating again with
   * nobody else in between (every tool call is a heartbeat) is then left where it is, instead of
   * a Map delete and set per call.
   */
  #watchedLast: Watched | undefined;
  #live = 0;
  #monitor: NodeJS.Timeout | undefined;
  #workload: (agentId: string) => AgentWorkload = () => NO_WORK;
  #drainer: Drainer = async () => {};
  #closed = false;

  constructor(options: LifecycleOptions = {}) {
    this.#intervalMs =
      checkNumber(
        'options.heartbeatIntervalSeconds',
        options.heartbeatIntervalSeconds ?? 30,
        'positiveNumber',
      ) * 1000;
    this.#maxAgents = checkNumber(
      'options.maxConcurrentAgents',
      options.maxConcurrentAgents ?? 100,
      'positiveInt',
    );
    this.#drainMs =
      checkNumber(
        'options.drainTimeoutSeconds',
        options.drainTimeoutSeconds ?? 30,
        'positiveNumber',
      ) * 1000;
    this.#defaultExecutor = options.defaultExecutor ?? 'local';
    this.#autoExecutors = new Set(options.autoHeartbeatExecutors ?? ['local', 'inprocess']);
    this.#retention = checkNumber(
      'options.terminatedRetention',
      options.terminatedRetention ?? 1000,
      'nonNegativeInt',
    );
    this.#agents = options.agents ?? new MemoryCollection<AgentRecord>();
    this.#restore();
  }

  /**
   * Rebuilds the indexes from records a durable store kept across a restart. A termination the
   * restart interrupted (DRAINING) is finished: the work it waited for died with the process.
   * Agents that heartbeat themselves get a fresh heartbeat, so they have the usual intervals to
   * reconnect before their health is judged.
   */
  #restore(): void {
    const now = Date.now();
    const terminated: AgentRecord[] = [];
    for (const rec of this.#agents.values()) {
      if (rec.status === AgentStatus.DRAINING) {
        rec.status = AgentStatus.TERMINATED;
        rec.terminatedAt = now;
        this.#agents.put(rec.id, rec);
      }
      if (rec.status === AgentStatus.TERMINATED) {
        terminated.push(rec);
        continue;
      }
      this.#live++;
      this.#byCredential.set(rec.credentialHash, rec.id);
      if (rec.heartbeatMode === 'manual') {
        rec.lastHeartbeat = now;
        this.#agents.put(rec.id, rec);
        if (rec.status !== AgentStatus.UNHEALTHY) this.#watch(rec);
      } else if (rec.status !== AgentStatus.HEALTHY) {
        rec.status = AgentStatus.HEALTHY;
        this.#agents.put(rec.id, rec);
      }
    }
    terminated.sort((a, b) => (a.terminatedAt ?? 0) - (b.terminatedAt ?? 0));
    for (const rec of terminated) this.#terminated.push(rec.id);
    if (this.#live > 0) this.#ensureMonitor();
  }

  /** Lets the scheduler supply real task counts for {@link getAgentInfo}. */
  setWorkloadSource(source: (agentId: string) => AgentWorkload): void {
    this.#workload = source;
  }

  /** Lets the fabric wait for an agent's running tasks during {@link terminate}. */
  setDrainer(drainer: Drainer): void {
    this.#drainer = drainer;
  }

  /** Heartbeat interval in milliseconds. */
  get heartbeatIntervalMs(): number {
    return this.#intervalMs;
  }

  /**
   * Spawns an agent and issues its credential.
   * @throws AgentLimitError at `maxConcurrentAgents`; InvalidArgumentError for a bad config.
   */
  async spawn(config: AgentConfig): Promise<SpawnedAgent> {
    return this.spawnSync(config);
  }

  /** `maxConcurrentAgents`, and how many more agents may be spawned now under it. */
  get room(): { readonly free: number; readonly limit: number } {
    return { free: Math.max(0, this.#maxAgents - this.#live), limit: this.#maxAgents };
  }

  /**
   * {@link spawn} without the promise (for the fabric's own wiring).
   * @param credentialFor - makes the credential from the new agent's id instead of random bytes
   *   (the sidecar derives its start-up agents' credentials, so it can show them again after a
   *   restart). It must return at least 32 characters no other agent uses.
   */
  spawnSync(config: AgentConfig, credentialFor?: (agentId: string) => string): SpawnedAgent {
    this.#open();
    const rec = this.#validate(config);
    if (this.#live >= this.#maxAgents) throw new AgentLimitError(this.#maxAgents);
    const credential =
      credentialFor === undefined
        ? `afk_${randomBytes(32).toString('base64url')}`
        : checkCredential(credentialFor(rec.id));
    if (this.#byCredential.has(hashCredential(credential))) {
      throw new InvalidArgumentError('credential', 'is already used by another agent');
    }
    rec.credentialHash = hashCredential(credential);
    this.#agents.put(rec.id, rec);
    this.#byCredential.set(rec.credentialHash, rec.id);
    this.#live++;
    if (rec.heartbeatMode === 'manual') this.#watch(rec);
    this.#ensureMonitor();
    const info = this.#info(rec);
    this.events.emit('agent.spawned', info);
    return { ...info, credential };
  }

  /**
   * Makes `credential` the agent's only credential (the one it had stops authenticating). Used
   * for a credential pinned in the sidecar's config that changed since the agent was made.
   * @throws AgentNotFoundError; UnauthenticatedError for a terminated agent;
   *   InvalidArgumentError when the credential is shorter than 32 characters or another agent
   *   uses it.
   */
  replaceCredential(agentId: string, credential: string): void {
    this.#open();
    const rec = this.#get(agentId);
    if (rec.status === AgentStatus.TERMINATED) {
      throw new UnauthenticatedError('unknown or revoked agent credential');
    }
    const hash = hashCredential(checkCredential(credential));
    if (hash === rec.credentialHash) return;
    if (this.#byCredential.has(hash)) {
      throw new InvalidArgumentError('credential', 'is already used by another agent');
    }
    this.#byCredential.delete(rec.credentialHash);
    this.#revocations++;
    rec.credentialHash = hash;
    this.#byCredential.set(hash, rec.id);
    this.#agents.put(rec.id, rec);
    this.events.emit('agent.credentialReplaced', this.#info(rec));
  }

  /**
   * How many times an agent credential stopped authenticating (replaced, or its agent
   * terminated) since this manager was made. A caller that authenticated a credential may rely
   * on that result while this number is unchanged.
   */
  get credentialRevocations(): number {
    return this.#revocations;
  }

  #validate(config: AgentConfig): AgentRecord {
    if (config === null || typeof config !== 'object')
      throw new InvalidArgumentError('config', 'must be an object');
    const model = checkString('config.model', config.model);
    const name = checkString('config.name', config.name);
    const capabilities = checkCapabilities(config.capabilities ?? []);
    const poolId =
      config.poolId === undefined ? undefined : checkString('config.poolId', config.poolId);
    const executor =
      config.executor === undefined
        ? this.#defaultExecutor
        : checkString('config.executor', config.executor);
    const heartbeatMode =
      config.heartbeat ?? (this.#autoExecutors.has(executor) ? 'auto' : 'manual');
    if (heartbeatMode !== 'auto' && heartbeatMode !== 'manual') {
      throw new InvalidArgumentError('config.heartbeat', "must be 'auto' or 'manual'");
    }
    const labels = checkLabels(config.labels ?? {});
    if (
      config.isolation !== undefined &&
      (config.isolation === null || typeof config.isolation !== 'object')
    ) {
      throw new InvalidArgumentError('config.isolation', 'must be an object');
    }
    const now = Date.now();
    return {
      id: randomUUID(),
      name,
      model,
      capabilities: Object.freeze([...capabilities]),
      isolation: Object.freeze({ ...(config.isolation ?? {}) }),
      budget: config.budget,
      poolId,
      executor,
      heartbeatMode,
      labels: Object.freeze({ ...labels }),
      status: heartbeatMode === 'auto' ? AgentStatus.HEALTHY : AgentStatus.STARTING,
      createdAt: now,
      lastHeartbeat: now,
      terminatedAt: undefined,
      credentialHash: '',
    };
  }

  /**
   * Records a heartbeat; a DEGRADED, UNHEALTHY or STARTING agent becomes HEALTHY.
   * @throws AgentNotFoundError; AgentUnavailableError when it is draining or terminated (so the
   *   agent learns to stop).
   */
  async heartbeat(agentId: string): Promise<AgentInfo> {
    return this.heartbeatSync(agentId);
  }

  /** {@link heartbeat} without the promise. */
  heartbeatSync(agentId: string): AgentInfo {
    return this.#info(this.#beat(agentId));
  }

  /**
   * {@link heartbeatSync} returning only the agent's status after it. No snapshot is built:
   * every tool call is a heartbeat, and the NATS heartbeat listener takes thousands a second.
   */
  heartbeatStatus(agentId: string): AgentStatus {
    return this.#beat(agentId).status;
  }

  #beat(agentId: string): AgentRecord {
    const rec = this.#get(agentId);
    if (rec.status === AgentStatus.DRAINING || rec.status === AgentStatus.TERMINATED) {
      throw new AgentUnavailableError(agentId, rec.status);
    }
    rec.lastHeartbeat = Date.now();
    if (rec.heartbeatMode === 'manual') {
      const last = this.#watchedLast;
      if (last !== undefined && last.rec === rec) last.at = performance.now();
      else {
        // To the end of the sweep order (delete + set: a Map keeps insertion order).
        this.#watched.delete(rec.id);
        const entry: Watched = { rec, at: performance.now() };
        this.#watched.set(rec.id, entry);
        this.#watchedLast = entry;
      }
    }
    // A status change is stored; the time alone is not: every tool call is a heartbeat, so
    // storing it would put a durable commit on the hot path, and a restored agent gets a fresh
    // heartbeat (one interval of grace) anyway.
    if (rec.status !== AgentStatus.HEALTHY) this.#setStatus(rec, AgentStatus.HEALTHY);
    return rec;
  }

  /** A snapshot of the agent, with its current task counts. @throws AgentNotFoundError */
  async getAgentInfo(agentId: string): Promise<AgentInfo> {
    return this.#info(this.#get(agentId));
  }

  /** {@link getAgentInfo} without the promise. */
  agentInfo(agentId: string): AgentInfo {
    return this.#info(this.#get(agentId));
  }

  /** The agent's record, if known (terminated ones until they age out). */
  peek(agentId: string): Readonly<AgentRecord> | undefined {
    return this.#agents.get(agentId);
  }

  /** Every known agent, optionally filtered. */
  listAgents(filter: { status?: AgentStatus; poolId?: string } = {}): AgentInfo[] {
    const out: AgentInfo[] = [];
    for (const rec of this.#agents.values()) {
      if (filter.status !== undefined && rec.status !== filter.status) continue;
      if (filter.poolId !== undefined && rec.poolId !== filter.poolId) continue;
      out.push(this.#info(rec));
    }
    return out;
  }

  /** Agents alive now (not terminated). */
  get activeAgents(): number {
    return this.#live;
  }

  /**
   * Maps a credential to its agent.
   * @throws UnauthenticatedError for a missing, unknown or terminated agent's credential.
   */
  authenticate(credential: string): AgentInfo {
    if (typeof credential !== 'string' || credential.length === 0) throw new UnauthenticatedError();
    return this.authenticateHash(hashCredential(credential));
  }

  /**
   * {@link authenticate} by the credential's {@link hashCredential} (for a caller that already
   * hashed it: the fabric checks the admin credentials with the same hash).
   * @throws UnauthenticatedError for an unknown or terminated agent's credential.
   */
  authenticateHash(hash: string): AgentInfo {
    const id = this.#byCredential.get(hash);
    const rec = id === undefined ? undefined : this.#agents.get(id);
    if (rec === undefined || rec.status === AgentStatus.TERMINATED) {
      throw new UnauthenticatedError('unknown or revoked agent credential');
    }
    return this.#info(rec);
  }

  /** Switches who heartbeats for the agent (e.g. to simulate or take over a local agent). */
  setHeartbeatMode(agentId: string, mode: HeartbeatMode): void {
    if (mode !== 'auto' && mode !== 'manual')
      throw new InvalidArgumentError('mode', "must be 'auto' or 'manual'");
    const rec = this.#get(agentId);
    rec.heartbeatMode = mode;
    rec.lastHeartbeat = Date.now();
    this.#agents.put(rec.id, rec);
    this.#unwatch(rec.id);
    if (rec.status === AgentStatus.DRAINING || rec.status === AgentStatus.TERMINATED) return;
    if (mode === 'manual') this.#watch(rec);
    else if (rec.status !== AgentStatus.HEALTHY) this.#setStatus(rec, AgentStatus.HEALTHY);
  }

  /**
   * Terminates gracefully: the agent takes no new work, its running tasks get up to
   * `drainTimeoutSeconds` to finish, then what remains is taken back. Terminating a terminated
   * agent returns its info; concurrent calls share one termination.
   * @param options.onChanged - called synchronously right after each change the termination
   *   makes to the agent's record (DRAINING, then TERMINATED), before its events are emitted and
   *   before the store commits it: a caller that must know which commit carries the termination
   *   marks it there (`AgentFabric.terminate`). Not called for an agent already terminated; a
   *   call that joins a termination under way is called from then on.
   */
  async terminate(
    agentId: string,
    options: { drainTimeoutSeconds?: number; onChanged?: () => void } = {},
  ): Promise<AgentInfo> {
    const rec = this.#get(agentId);
    if (rec.status === AgentStatus.TERMINATED) return this.#info(rec);
    const onChanged = options.onChanged;
    const running = this.#terminating.get(agentId);
    if (running !== undefined) {
      if (onChanged !== undefined) running.onChanged.push(onChanged);
      return running.done;
    }
    const drainMs =
      options.drainTimeoutSeconds === undefined
        ? this.#drainMs
        : checkNumber('drainTimeoutSeconds', options.drainTimeoutSeconds, 'nonNegativeNumber') *
          1000;
    const callbacks = onChanged === undefined ? [] : [onChanged];
    const changed = (): void => {
      for (const f of callbacks) f();
    };
    const p = (async () => {
      this.#unwatch(rec.id);
      this.#setStatus(rec, AgentStatus.DRAINING, changed);
      try {
        await this.#drainer(agentId, drainMs);
      } finally {
        rec.terminatedAt = Date.now();
        this.#byCredential.delete(rec.credentialHash);
        this.#revocations++;
        this.#live--;
        this.#setStatus(rec, AgentStatus.TERMINATED, changed);
        this.#terminating.delete(agentId);
        this.#forgetOld(agentId);
      }
      const info = this.#info(rec);
      this.events.emit('agent.terminated', info);
      return info;
    })();
    this.#terminating.set(agentId, { done: p, onChanged: callbacks });
    return p;
  }

  /**
   * Takes back a spawn the caller may not acknowledge (its commit failed: `AgentFabric.spawn`):
   * the agent ends at once — its credential stops authenticating, `agent.status` (TERMINATED)
   * and `agent.terminated` are emitted so what it holds ends — and its record is deleted
   * (`agent.forgotten`), so nothing of it is left to store. A no-op for an unknown agent.
   */
  withdraw(agentId: string): void {
    const rec = this.#agents.get(agentId);
    if (rec === undefined) return;
    if (rec.status !== AgentStatus.TERMINATED) {
      this.#unwatch(rec.id);
      rec.terminatedAt = Date.now();
      this.#byCredential.delete(rec.credentialHash);
      this.#revocations++;
      this.#live--;
      this.#setStatus(rec, AgentStatus.TERMINATED);
      this.events.emit('agent.terminated', this.#info(rec));
    }
    const i = this.#terminated.indexOf(agentId);
    if (i >= 0) this.#terminated.splice(i, 1);
    this.#agents.delete(agentId);
    this.events.emit('agent.forgotten', agentId);
  }

  /**
   * Runs one health sweep now (the monitor runs it every half interval): agents silent for two
   * intervals become DEGRADED, for three UNHEALTHY. Reads only those (see the module comment).
   */
  checkHealth(): void {
    const now = performance.now();
    for (const { rec, at } of this.#watched.values()) {
      const silent = now - at;
      if (silent < 2 * this.#intervalMs) break; // the rest heartbeated later
      if (rec.status === AgentStatus.DRAINING || rec.status === AgentStatus.TERMINATED) {
        this.#unwatch(rec.id);
        continue;
      }
      const next = silent >= 3 * this.#intervalMs ? AgentStatus.UNHEALTHY : AgentStatus.DEGRADED;
      // An UNHEALTHY agent changes nothing more until it heartbeats (which puts it back).
      if (next === AgentStatus.UNHEALTHY) this.#unwatch(rec.id);
      if (next !== rec.status) this.#setStatus(rec, next);
    }
  }

  /** Adds `rec` to the sweep order (at its end when it was not in it). */
  #watch(rec: AgentRecord): void {
    this.#watched.delete(rec.id);
    this.#watched.set(rec.id, { rec, at: performance.now() });
    this.#watchedLast = undefined;
  }

  /** Takes an agent out of the sweep order. */
  #unwatch(agentId: string): void {
    this.#watched.delete(agentId);
    this.#watchedLast = undefined;
  }

  /** Stops the health monitor. Agents are left as they are. */
  async close(): Promise<void> {
    this.#closed = true;
    if (this.#monitor !== undefined) clearInterval(this.#monitor);
    this.#monitor = undefined;
  }

  #ensureMonitor(): void {
    if (this.#monitor !== undefined || this.#closed) return;
    // A sweep reads how long each agent has been silent, so a capped period stays correct; an
    // uncapped one past setTimeout's limit would fire every millisecond.
    this.#monitor = setInterval(
      () => this.checkHealth(),
      Math.min(this.#intervalMs / 2, MAX_TIMER_MS),
    );
    this.#monitor.unref();
  }

  /** `changed`: called right after the record is put, before the event (see `terminate`). */
  #setStatus(rec: AgentRecord, status: AgentStatus, changed?: () => void): void {
    const previous = rec.status;
    rec.status = status;
    this.#agents.put(rec.id, rec);
    changed?.();
    this.events.emit('agent.status', this.#info(rec), previous);
  }

  #forgetOld(agentId: string): void {
    this.#terminated.push(agentId);
    while (this.#terminated.length > this.#retention) {
      const old = this.#terminated.shift()!;
      this.#agents.delete(old);
      this.events.emit('agent.forgotten', old);
    }
  }

  #get(agentId: string): AgentRecord {
    const rec = typeof agentId === 'string' ? this.#agents.get(agentId) : undefined;
    if (rec === undefined) throw new AgentNotFoundError(String(agentId));
    return rec;
  }

  #open(): void {
    if (this.#closed) throw new ClosedError('lifecycle manager');
  }

  #info(rec: AgentRecord): AgentInfo {
    const w = rec.status === AgentStatus.TERMINATED ? NO_WORK : this.#workload(rec.id);
    return {
      id: rec.id,
      name: rec.name,
      model: rec.model,
      capabilities: rec.capabilities,
      poolId: rec.poolId,
      executor: rec.executor,
      heartbeatMode: rec.heartbeatMode,
      status: rec.status,
      labels: rec.labels,
      createdAt: rec.createdAt,
      // The fabric heartbeats for an `auto` agent all the time it lives.
      lastHeartbeat:
        rec.heartbeatMode === 'auto' && rec.status === AgentStatus.HEALTHY
          ? Date.now()
          : rec.lastHeartbeat,
      runningTasks: w.runningTasks,
      queuedTasks: w.queuedTasks,
      completedTasks: w.completedTasks,
      failedTasks: w.failedTasks,
      terminatedAt: rec.terminatedAt,
    };
  }
}

/**
 * Agents: configuration, status and the public shape of an agent.
 *
 * @module
 */

/** Health and life of an agent. */
export enum AgentStatus {
  /** Spawned, not yet heard from (remote agents) or starting its runtime. */
  STARTING = 'STARTING',
  /** Heartbeating on time. */
  HEALTHY = 'HEALTHY',
  /** Missed two heartbeat intervals; still given work it already holds, no new work. */
  DEGRADED = 'DEGRADED',
  /** Missed three intervals; its work is taken back and given to others. */
  UNHEALTHY = 'UNHEALTHY',
  /** Being terminated: takes no new work, running tasks may finish. */
  DRAINING = 'DRAINING',
  /** Gone. */
  TERMINATED = 'TERMINATED',
}

/** Isolation settings of an agent (advisory to executors; recorded for policies). */
export interface IsolationConfig {
  /** e.g. 'none', 'thread', 'process', 'container'. */
  level?: string;
  /** Working directory the agent is confined to, if any. */
  workdir?: string;
  [key: string]: unknown;
}

/** Budget limits of an agent, applied at spawn (see the BudgetManager). */
export interface AgentBudgetConfig {
  maxTokensPerHour?: number;
  maxCostPerDay?: number;
  warnAtPercent?: number;
}

/** How an agent gets its work. */
export type HeartbeatMode = 'auto' | 'manual';

/** What {@link AgentFabric.spawn} takes. */
export interface AgentConfig {
  /** Model identifier, e.g. `claude-3-opus`. */
  model: string;
  /** Display name. */
  name: string;
  capabilities?: readonly string[];
  isolation?: IsolationConfig;
  budget?: AgentBudgetConfig;
  /** Pool the agent belongs to; it serves that pool's queue as well as its own. */
  poolId?: string;
  /**
   * Name of the executor that runs its tasks: `local` (handlers on a piscina worker pool),
   * `inprocess` (handlers on the main thread), or `remote` (the agent claims its tasks over MCP or
   * gRPC). Further executors are registered with `registerExecutor`.
   * @default 'local'
   */
  executor?: string;
  /**
   * `auto`: the fabric heartbeats for the agent while its runtime is alive (local executors).
   * `manual`: the agent must call `heartbeat` itself (remote agents).
   * @default 'auto' for in-process executors, 'manual' for 'remote'
   */
  heartbeat?: HeartbeatMode;
  /** Free-form labels (team, tenant …), visible to policies. */
  labels?: Readonly<Record<string, string>>;
}

/** A point-in-time view of an agent. */
export interface AgentInfo {
  readonly id: string;
  readonly name: string;
  readonly model: string;
  readonly capabilities: readonly string[];
  readonly poolId: string | undefined;
  readonly executor: string;
  readonly heartbeatMode: HeartbeatMode;
  readonly status: AgentStatus;
  readonly labels: Readonly<Record<string, string>>;
  readonly createdAt: number;
  /** Epoch ms of the last heartbeat (spawn counts as one). */
  readonly lastHeartbeat: number;
  /** Tasks it holds now (SCHEDULED or RUNNING). */
  readonly runningTasks: number;
  /** Tasks pinned to it and waiting in its queue. */
  readonly queuedTasks: number;
  readonly completedTasks: number;
  readonly failedTasks: number;
  readonly terminatedAt: number | undefined;
}

/** A spawned agent: its view plus the credential it authenticates with. */
export interface SpawnedAgent extends AgentInfo {
  /**
   * Bearer credential of this agent for every ingress (MCP, gRPC). Shown once; the
   * fabric keeps only its hash.
   */
  readonly credential: string;
}

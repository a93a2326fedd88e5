/**
 * The pool provider contract (the `pool` plugin kind): how a pool's agents come to life, are
 * health-checked, stop and are replaced.
 *
 * Why this is not folded into executors: an executor is how *tasks* reach an agent (worker
 * threads, the main thread, a remote worker claiming over gRPC/MCP/NATS); a pool provider is
 * how the *agent itself* is kept alive (a child process, a container, nothing at all for
 * thread agents). The two are orthogonal — `pool-process` starts child processes that connect
 * back and claim work through the `remote` executor — so a provider names the executor its
 * agents use instead of replacing it.
 *
 * The fabric creates each agent's record (and credential) first and then calls `start`; the
 * pool manager's reconcile loop keeps a pool at its desired size whatever happens to the
 * agents, calls `healthCheck` on every tick, and `stop` once for every agent that ends.
 * Replacing a lost agent is `stop(old)` and `start(new)`: the new agent has a new id and a new
 * credential, so a runtime that was only slow cannot come back as the agent that replaced it.
 *
 * @module
 */

/** What a provider is told about an agent it must start. */
export interface PoolAgentStart {
  readonly agentId: string;
  /** The agent's credential: the runtime authenticates with it. Never log it. */
  readonly credential: string;
  readonly poolId: string;
  readonly model: string;
  readonly name: string;
  readonly labels: Readonly<Record<string, string>>;
  /** Aborted when the pool manager gives up on this start (the agent was stopped meanwhile). */
  readonly signal: AbortSignal;
}

/** Why an agent is stopped. */
export type PoolStopReason = 'terminated' | 'unhealthy' | 'health-check' | 'start-failed';

/** How a pool's agents start, are checked, stop and are replaced. */
export interface PoolProvider {
  /** Registry name; pools name it in `PoolConfig.provider`. */
  readonly name: string;
  /** The executor the provider's agents run their tasks on (e.g. `remote`, `local`). */
  readonly executor: string;
  /**
   * Brings the agent's runtime to life. Rejecting counts as a failed start: the agent is
   * terminated and the pool retries with backoff.
   */
  start(agent: PoolAgentStart): Promise<void>;
  /**
   * Whether the agent's runtime is still alive (e.g. its process has not exited). `false` or a
   * throw makes the pool replace the agent. Without it, heartbeats alone decide.
   */
  healthCheck?(agentId: string): boolean | Promise<boolean>;
  /** Stops the agent's runtime and everything it started. Called once per started agent. */
  stop(agentId: string, reason: PoolStopReason): Promise<void>;
  /** Stops every runtime the provider started and releases its resources. */
  close?(): Promise<void> | void;
}

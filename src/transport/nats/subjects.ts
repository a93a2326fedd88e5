/**
 * The names of everything the fabric puts on NATS, in one place (the README's "NATS subjects"
 * table documents the same names for workers in other languages).
 *
 * Every name carries the namespace, so fabrics sharing a server never see each other's traffic.
 *
 * @module
 */

/** Subjects and JetStream names of one namespace. */
export interface NatsNames {
  readonly namespace: string;
  /** JetStream work-queue stream holding dispatched tasks. */
  readonly stream: string;
  /** Core subject of an agent's heartbeat. */
  heartbeat(agentId: string): string;
  /** Wildcard the sidecars subscribe heartbeats on. */
  readonly heartbeats: string;
  /** Stream subject of a task pinned to an agent. */
  agentTasks(agentId: string): string;
  /** Stream subject of a task queued to a pool (any of its workers may run it). */
  poolTasks(poolId: string): string;
  /** Durable consumer of an agent's pinned tasks. */
  agentConsumer(agentId: string): string;
  /** Durable consumer of a pool's tasks, shared by every worker of the pool. */
  poolConsumer(poolId: string): string;
  /** Core subject where workers report on tasks a sidecar scheduled (request/reply). */
  results(sidecarId: string): string;
  /** Core subject where a sidecar announces that it ended an attempt (cancel, timeout). */
  ended(taskId: string): string;
  /** Wildcard workers subscribe {@link ended} on. */
  readonly allEnded: string;
  /**
   * Core subject where a sidecar asks the others to check a report's proof for an agent it does
   * not know (request/reply; only the agent's own sidecar answers).
   */
  readonly vouch: string;
}

/**
 * A consumer name from an id: NATS consumer names may not hold `.`, `*`, `>` or whitespace, so
 * other characters are hex-escaped (`_xx`); distinct ids give distinct names.
 */
function consumerToken(id: string): string {
  return id.replace(/[^A-Za-z0-9-]/g, (c) => `_${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
}

/** A subject token from an id (agent ids are UUIDs; pool ids are user-chosen). */
function subjectToken(id: string): string {
  return consumerToken(id);
}

/** The names of `namespace`. */
export function natsNames(namespace: string): NatsNames {
  const p = `fabric.${namespace}`;
  return {
    namespace,
    stream: `FABRIC_${namespace}_TASKS`,
    heartbeat: (agentId) => `${p}.hb.${subjectToken(agentId)}`,
    heartbeats: `${p}.hb.*`,
    agentTasks: (agentId) => `${p}.task.agent.${subjectToken(agentId)}`,
    poolTasks: (poolId) => `${p}.task.pool.${subjectToken(poolId)}`,
    agentConsumer: (agentId) => `agent-${consumerToken(agentId)}`,
    poolConsumer: (poolId) => `pool-${consumerToken(poolId)}`,
    results: (sidecarId) => `${p}.res.${sidecarId}`,
    ended: (taskId) => `${p}.ended.${subjectToken(taskId)}`,
    allEnded: `${p}.ended.*`,
    vouch: `${p}.vouch`,
  };
}

/** Recovers an id from a subject token made by {@link natsNames}. */
export function idFromToken(token: string): string {
  return token.replace(/_([0-9a-f]{2})/g, (_, h: string) => String.fromCharCode(parseInt(h, 16)));
}

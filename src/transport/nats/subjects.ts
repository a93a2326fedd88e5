/**
 * The names of everything the fabric puts on NATS, in one place (the README's "NATS subjects"
 * table documents the same names for workers in other languages).
 *
 * Every name carries the namespace, so fabrics sharing a server never see each other's traffic.
 *
 * @module
 */
import { hash } from 'node:crypto';

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
 * Longest consumer name nats-server takes (a durable consumer is a directory of its file store);
 * a longer `agent-…`/`pool-…` name is made from a digest instead ({@link consumerName}).
 */
export const MAX_CONSUMER_NAME = 255;

/**
 * A subject token from an id, usable in consumer names too (NATS names may not hold `.`, `*`,
 * `>` or whitespace): every UTF-16 code unit outside `[A-Za-z0-9-]` is written `_xx` (two hex
 * digits) below 0x100 and `__xxxx` (four) from 0x100 on. The two forms cannot be confused — a
 * `_` is always followed by a hex digit or by the second `_` — so distinct ids give distinct
 * tokens, and {@link idFromToken} reads the id back. (One escape width for every unit, as
 * before, made `Ӣd` and `中` the same token `_4e2d`: two pools shared a subject and a consumer.)
 */
export function subjectToken(id: string): string {
  return id.replace(/[^A-Za-z0-9-]/g, (c) => {
    const unit = c.charCodeAt(0);
    return unit < 0x100
      ? `_${unit.toString(16).padStart(2, '0')}`
      : `__${unit.toString(16).padStart(4, '0')}`;
  });
}

/**
 * The durable consumer of an agent's or a pool's tasks: `<kind>-<token>`, or — when that is
 * longer than {@link MAX_CONSUMER_NAME} (a pool id of up to 256 units can escape to 1,536
 * characters) — `<kind>-_h<hex SHA-256 of the token>`. A token never holds `_h` (see
 * {@link subjectToken}), so the two forms never meet.
 */
function consumerName(kind: 'agent' | 'pool', id: string): string {
  const token = subjectToken(id);
  const name = `${kind}-${token}`;
  return name.length <= MAX_CONSUMER_NAME ? name : `${kind}-_h${hash('sha256', token, 'hex')}`;
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
    agentConsumer: (agentId) => consumerName('agent', agentId),
    poolConsumer: (poolId) => consumerName('pool', poolId),
    results: (sidecarId) => `${p}.res.${sidecarId}`,
    ended: (taskId) => `${p}.ended.${subjectToken(taskId)}`,
    allEnded: `${p}.ended.*`,
    vouch: `${p}.vouch`,
  };
}

/**
 * Whether the sidecar answers a request onto its reply subject `reply`. The reply subject is the
 * requester's choice and the answer goes out under the sidecar's own NATS permissions, so a
 * subject of the server's APIs (`$JS.API.STREAM.PURGE.<stream>`, `$JS.ACK.…`, `$SYS.…`: every
 * `$` subject) or of the fabric (`fabric.…`: a task stream subject would store the answer as a
 * task message) is never one: a client allowed to publish a report or a heartbeat, and nothing
 * else, would make the sidecar purge or delete the task stream or its consumers. Workers'
 * reply subjects are inboxes (`_INBOX.…` of nats.js and nats.go), which neither is.
 */
export function answerable(reply: string | undefined): reply is string {
  return (
    reply !== undefined && reply !== '' && !reply.startsWith('$') && !reply.startsWith('fabric.')
  );
}

/** Recovers an id from its {@link subjectToken}. */
export function idFromToken(token: string): string {
  return token.replace(/__([0-9a-f]{4})|_([0-9a-f]{2})/g, (_, wide?: string, narrow?: string) =>
    String.fromCharCode(parseInt(wide ?? narrow!, 16)),
  );
}

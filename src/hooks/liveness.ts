/**
 * Where the patrol learns whether an agent is still alive.
 *
 * @module
 */

/**
 * Tells the patrol whether an agent is alive. The fabric wires its lifecycle to it: an agent is
 * dead when it is UNHEALTHY or TERMINATED, or unknown to the fabric. A liveness source that
 * throws is treated as "don't know", and the agent's hooks are left alone.
 *
 * @example
 * const liveness: AgentLiveness = { isAlive: (id) => fabric.getAgent(id)?.status === 'HEALTHY' };
 */
export interface AgentLiveness {
  isAlive(agentId: string): boolean | Promise<boolean>;
}

/** True when `value` looks like an {@link AgentLiveness}. */
export function isAgentLiveness(value: unknown): value is AgentLiveness {
  return (
    typeof value === 'object' &&
    value !== null &&
    typeof (value as { isAlive?: unknown }).isAlive === 'function'
  );
}

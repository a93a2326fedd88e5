/**
 * The executor of agents that run elsewhere and pull their work: over MCP or gRPC an agent
 * calls `claimTask`, which parks a claim here until the scheduler dispatches a task to it.
 *
 * @module
 */
import type { TaskAssignment } from '../task.js';
import type { ExecutorSink, TaskExecutor } from './executor.js';

/** Executor name of {@link RemoteExecutor}. */
export const REMOTE_EXECUTOR = 'remote';

interface Claim {
  resolve(a: TaskAssignment | undefined): void;
}

/** Holds the open claims of remote agents; a dispatch answers the oldest claim of the agent. */
export class RemoteExecutor implements TaskExecutor {
  readonly name = REMOTE_EXECUTOR;
  readonly acknowledges = false;
  readonly autoHeartbeat = false;
  readonly #claims = new Map<string, Claim[]>();

  bind(_sink: ExecutorSink): void {}

  capacity(agentId: string): number {
    return this.#claims.get(agentId)?.length ?? 0;
  }

  /** Parks a claim for `agentId`; returns a function that withdraws it (answering `undefined`). */
  addClaim(agentId: string, resolve: (a: TaskAssignment | undefined) => void): () => boolean {
    const claim: Claim = { resolve };
    let list = this.#claims.get(agentId);
    if (list === undefined) this.#claims.set(agentId, (list = []));
    list.push(claim);
    return () => {
      const l = this.#claims.get(agentId);
      const i = l === undefined ? -1 : l.indexOf(claim);
      if (i < 0) return false;
      l!.splice(i, 1);
      if (l!.length === 0) this.#claims.delete(agentId);
      resolve(undefined);
      return true;
    };
  }

  dispatch(batch: readonly TaskAssignment[]): void {
    for (const a of batch) {
      const list = this.#claims.get(a.agentId);
      const claim = list?.shift();
      if (list !== undefined && list.length === 0) this.#claims.delete(a.agentId);
      // capacity() bounded the batch by the open claims, so a claim is always there.
      claim?.resolve(a);
    }
  }

  abort(): void {
    // The remote agent learns on its next call: completions of the aborted attempt are rejected.
  }

  detachAgent(agentId: string): void {
    const list = this.#claims.get(agentId);
    this.#claims.delete(agentId);
    for (const c of list ?? []) c.resolve(undefined);
  }

  async close(): Promise<void> {
    for (const id of [...this.#claims.keys()]) this.detachAgent(id);
  }
}

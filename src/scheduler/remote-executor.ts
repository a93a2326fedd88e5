/**
 * The executor of agents that run elsewhere and pull their work: over MCP or gRPC an agent
 * calls `claimTask`, which parks a claim here until the scheduler dispatches a task to it.
 *
 * It cannot stop a remote agent's work, so when the scheduler ends an attempt the agent holds
 * (cancelled, timed out) it keeps a notice for the agent, which an ingress hands out (gRPC:
 * the `ended_tasks` of `Heartbeat` and `ReportProgress` answers).
 *
 * @module
 */
import type { TaskAssignment, TaskError } from '../task.js';
import type { ExecutorSink, TaskExecutor } from './executor.js';

/** Executor name of {@link RemoteExecutor}. */
export const REMOTE_EXECUTOR = 'remote';

/** Most notices kept per agent; older ones are dropped (the agent still learns on its next report). */
export const MAX_ENDED_NOTICES = 256;

/** A notice for a remote agent: the fabric ended an attempt it holds. */
export interface EndedTask {
  readonly taskId: string;
  readonly attempt: number;
  /** Why: `FABRIC_ERR_CANCELLED`, `FABRIC_ERR_TASK_TIMEOUT`, … */
  readonly code: string;
  readonly message: string;
}

interface Claim {
  resolve(a: TaskAssignment | undefined): void;
}

/** Holds the open claims of remote agents; a dispatch answers the oldest claim of the agent. */
export class RemoteExecutor implements TaskExecutor {
  readonly name = REMOTE_EXECUTOR;
  readonly acknowledges = false;
  readonly autoHeartbeat = false;
  readonly #claims = new Map<string, Claim[]>();
  readonly #ended = new Map<string, EndedTask[]>();

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

  abort(taskId: string, attempt: number, reason: TaskError, agentId: string): void {
    // Reports of the aborted attempt are rejected too; the notice tells an agent that is silent.
    const list = this.#ended.get(agentId) ?? [];
    list.push({ taskId, attempt, code: reason.code, message: reason.message });
    if (list.length > MAX_ENDED_NOTICES) list.splice(0, list.length - MAX_ENDED_NOTICES);
    this.#ended.set(agentId, list);
  }

  /** Hands out (and forgets) the agent's notices, oldest first. */
  takeEnded(agentId: string): EndedTask[] {
    const list = this.#ended.get(agentId) ?? [];
    this.#ended.delete(agentId);
    return list;
  }

  /** Puts back notices {@link takeEnded} handed out that did not reach the agent. */
  restoreEnded(agentId: string, notices: readonly EndedTask[]): void {
    if (notices.length === 0) return;
    const list = [...notices, ...(this.#ended.get(agentId) ?? [])];
    if (list.length > MAX_ENDED_NOTICES) list.splice(0, list.length - MAX_ENDED_NOTICES);
    this.#ended.set(agentId, list);
  }

  detachAgent(agentId: string): void {
    const list = this.#claims.get(agentId);
    this.#claims.delete(agentId);
    this.#ended.delete(agentId);
    for (const c of list ?? []) c.resolve(undefined);
  }

  async close(): Promise<void> {
    for (const id of [...this.#claims.keys()]) this.detachAgent(id);
  }
}

/**
 * The seam between {@link FabricWorker} and the wire: the operations a worker needs from the
 * fabric, as the calling agent. `FabricWorker` holds the run loop (hooks, claims, per-task abort,
 * stop); a transport only carries calls. The MCP transport (`mcp-worker-transport.ts`) calls the
 * sidecar's `fabric__*` tools; another transport (NATS) implements the same interface and the
 * worker's public API stays the same.
 *
 * Contract every transport keeps:
 * - each call acts as the agent whose credential the transport was opened with, and a refusal
 *   rejects with a {@link RemoteFabricError} (`code` from the catalog, e.g.
 *   `FABRIC_ERR_TASK_STATE` for a stale attempt);
 * - `heartbeat` and `reportProgress` resolve with the notices of tasks the fabric ended while
 *   this agent held them (cancelled, timed out), each handed out once; a transport that learns of
 *   them by push returns those that arrived since its last answer;
 * - `release` gives back a claimed task the worker will not run (queued again, the attempt not
 *   counted) and resolves false when the task has moved on.
 *
 * @module
 */
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import { FabricError } from '../errors.js';
import type { TaskAssignment } from '../task.js';

/** The fabric ended an attempt the worker holds: stop working on it. */
export interface WorkerEndedTask {
  readonly taskId: string;
  readonly attempt: number;
  /** Why: `FABRIC_ERR_CANCELLED`, `FABRIC_ERR_TASK_TIMEOUT`, … */
  readonly code: string;
  readonly message: string;
}

/** The answer of a heartbeat or a progress report. */
export interface WorkerReportAnswer {
  /** Tasks of this agent the fabric ended since the last answer that carried notices. */
  readonly endedTasks: readonly WorkerEndedTask[];
  readonly [key: string]: unknown;
}

/** A hook as the worker sees it. */
export interface WorkerHook {
  readonly hookId: string;
  readonly status: string;
  readonly workItem: unknown;
  readonly branch: string | null;
  readonly worktreePath: string | null;
  readonly [key: string]: unknown;
}

/** A failure a worker reports for a task or hook. */
export interface WorkerFailure {
  code?: string;
  message: string;
}

/** A task the worker holds: the fields that name it (the attempt is the fencing token). */
export type HeldTask = Pick<TaskAssignment, 'taskId' | 'attempt'>;

/** What a worker needs from the fabric; see the module comment for the contract. */
export interface WorkerTransport {
  /**
   * The transport's `claim` takes a delivery lease when given `ackSeconds` (its answers can be
   * lost after the sidecar wrote them), so `FabricWorker.run` acknowledges each claimed task.
   * Absent: `ackSeconds` is ignored (the transport redelivers by other means, e.g. JetStream).
   */
  readonly leasesClaims?: boolean;
  /**
   * True when `err` (thrown by one of this transport's calls) means the sidecar could not be
   * reached rather than that it answered: `FabricWorker.run` then waits and tries again instead
   * of ending. Over MCP: nothing listening, the connection reset, a proxy's 502/503/504. Over
   * NATS: no sidecar answered (see `NatsWorkerTransport.unreachable`). Absent: every error ends
   * `run()`.
   */
  unreachable?(err: unknown): boolean;
  heartbeat(): Promise<WorkerReportAnswer>;
  /**
   * The next task of this agent or its pool, or `null` when none arrived within `waitSeconds`.
   * With `ackSeconds` > 0 (and {@link leasesClaims}) the claim takes a delivery lease: the task
   * goes back to its queue unless a report naming its attempt (`reportProgress`, `complete`,
   * `fail`) follows in time.
   */
  claim(waitSeconds: number, ackSeconds?: number): Promise<TaskAssignment | null>;
  complete(task: HeldTask, result: unknown): Promise<unknown>;
  fail(task: HeldTask, error: WorkerFailure): Promise<unknown>;
  release(task: HeldTask): Promise<boolean>;
  reportProgress(task: HeldTask, progress: unknown): Promise<WorkerReportAnswer>;
  recordUsage(usage: { tokens: number; cost: number }): Promise<unknown>;
  /** The work on this agent's hook (ACTIVE, else oldest PENDING), or `null`. */
  hookFor(): Promise<WorkerHook | null>;
  activateHook(hookId: string): Promise<unknown>;
  hookProgress(hookId: string, note?: string): Promise<unknown>;
  completeHook(hookId: string, result: unknown): Promise<unknown>;
  failHook(hookId: string, error: WorkerFailure): Promise<unknown>;
  /**
   * Calls an upstream tool through the gateway (policy and budget apply). Only transports that
   * reach the gateway have it.
   */
  callTool?(name: string, args: Record<string, unknown>): Promise<CallToolResult>;
  close(): Promise<void>;
}

/** An error the fabric returned to a worker, with its catalog code. */
export class RemoteFabricError extends FabricError {}

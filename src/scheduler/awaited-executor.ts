/**
 * Stands in for an executor that agents restored from a durable store name but that is not
 * registered yet — typically a plugin's, which loads after the fabric restored its state. Its
 * agents take no work (no capacity) until the executor of that name is registered; the abort
 * notices of the attempts the restart ended are kept for it.
 *
 * @module
 */
import type { TaskError } from '../task.js';
import type { TaskExecutor } from './executor.js';

/** An abort the scheduler sent before the executor was registered, passed on once it is. */
export interface HeldAbort {
  taskId: string;
  attempt: number;
  reason: TaskError;
  agentId: string;
}

/** The placeholder of a not-yet-registered executor (see the module). */
export class AwaitedExecutor implements TaskExecutor {
  readonly acknowledges = false;
  readonly autoHeartbeat = false;
  /** Aborts to pass on to the executor once it is registered. */
  readonly aborts: HeldAbort[] = [];

  constructor(readonly name: string) {}

  bind(): void {}

  capacity(): number {
    return 0;
  }

  /** Never called: it has no capacity. */
  dispatch(): void {}

  abort(taskId: string, attempt: number, reason: TaskError, agentId: string): void {
    this.aborts.push({ taskId, attempt, reason, agentId });
  }

  async close(): Promise<void> {}
}

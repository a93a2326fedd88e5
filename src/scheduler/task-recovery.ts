/**
 * Recovery of tasks from a durable store: what the scheduler finds in its task collection when
 * it starts on records an earlier process left, sorted into what it has to do with them.
 *
 * The store gives back the plain {@link TaskData} the scheduler stored; live {@link TaskRecord}s
 * (queue and timer positions, waiters) are rebuilt here. What happens to each task is decided by
 * {@link AgentScheduler.restore}, which owns the queues.
 *
 * @module
 */
import type { Collection } from '../store/store.js';
import type { TaskError } from '../task.js';
import { TaskStatus, isFinished } from '../task.js';
import { TaskRecord } from './task-record.js';

/** The tasks found in a store at start, rebuilt and sorted. */
export interface RecoveredTasks {
  /** Finished tasks, oldest `finishedAt` first: the retention order. */
  finished: TaskRecord[];
  /** Unfinished tasks (PENDING, SCHEDULED, RUNNING), in arrival (`seq`) order. */
  open: TaskRecord[];
  /** One above the highest `seq` found (0 when none): where arrival numbering continues. */
  nextSeq: number;
}

/**
 * Rebuilds the live records of every task in `tasks` and puts them in place of the loaded data
 * (`adopt`: no write, they store as the same data).
 * @throws InvalidArgumentError naming the task when a stored record is not a task record.
 */
export function recoverTasks(tasks: Collection<TaskRecord>): RecoveredTasks {
  const finished: TaskRecord[] = [];
  const open: TaskRecord[] = [];
  let nextSeq = 0;
  for (const loaded of [...tasks.values()]) {
    let t: TaskRecord;
    if (loaded instanceof TaskRecord) t = loaded;
    else {
      t = TaskRecord.fromData(loaded);
      if (tasks.adopt !== undefined) tasks.adopt(t.id, t);
      else tasks.put(t.id, t);
    }
    if (t.seq >= nextSeq) nextSeq = t.seq + 1;
    (isFinished(t.status) ? finished : open).push(t);
  }
  finished.sort((a, b) => (a.finishedAt ?? 0) - (b.finishedAt ?? 0) || a.seq - b.seq);
  open.sort((a, b) => a.seq - b.seq);
  return { finished, open, nextSeq };
}

/** True when the task was handed to an agent when the earlier process stopped. */
export function wasRunning(t: TaskRecord): boolean {
  return t.status === TaskStatus.RUNNING || t.status === TaskStatus.SCHEDULED;
}

/** Why an attempt that was running when the process stopped is over. */
export function interruptedAttempt(t: TaskRecord): TaskError {
  return {
    code: 'FABRIC_ERR_AGENT_UNAVAILABLE',
    message: `the fabric stopped while attempt ${t.attempt} ran on agent ${t.assignedAgentId ?? '(none)'}`,
  };
}

/** Why a queued task whose deadline passed ends. */
export function deadlinePassed(t: TaskRecord, now: number): TaskError {
  return {
    code: 'FABRIC_ERR_DEADLINE_EXCEEDED',
    message: `deadline ${new Date(t.deadline ?? now).toISOString()} passed before the task started`,
  };
}

/** Why a task addressed to an agent that no longer exists ends. */
export function agentGone(agentId: string): TaskError {
  return { code: 'FABRIC_ERR_AGENT_UNAVAILABLE', message: `agent ${agentId} is gone` };
}

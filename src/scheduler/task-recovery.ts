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
import { Priority, TaskStatus, isFinished } from '../task.js';
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
 * (`adopt`: no write, they store as the same data). A stored record that is not a task record
 * (written by an older build, or changed by hand) does not stop the start: that task alone is
 * held as FAILED, its error `FABRIC_ERR_INTERNAL` naming what was wrong, and a process warning
 * (`FABRIC_TASK_UNREADABLE`) says so; the stored record itself is left as it was (not written).
 * A `maxAttempts` past `MAX_TASK_ATTEMPTS` (4,294,967,295; an older build queued any safe integer) is
 * lowered to it, with a process warning (`FABRIC_TASK_MAX_ATTEMPTS_LOWERED`), and written lowered
 * with the store's next commit (`Collection.rewrite`: a task's later writes leave `maxAttempts`
 * as first written), so the warning comes once.
 * @throws InvalidArgumentError when a stored record has no id to keep it under.
 */
export function recoverTasks(tasks: Collection<TaskRecord>): RecoveredTasks {
  const finished: TaskRecord[] = [];
  const open: TaskRecord[] = [];
  let nextSeq = 0;
  for (const loaded of [...tasks.values()]) {
    let t: TaskRecord;
    if (loaded instanceof TaskRecord) t = loaded;
    else {
      try {
        t = TaskRecord.fromData(loaded);
      } catch (err) {
        t = unreadableTask(loaded, err);
        // Held, not written: the stored record stays as it was, for an operator to look at.
        if (tasks.adopt !== undefined) tasks.adopt(t.id, t);
        else tasks.put(t.id, t);
        process.emitWarning(`${t.error!.message}; it was ended FAILED`, {
          code: 'FABRIC_TASK_UNREADABLE',
        });
        finished.push(t);
        if (t.seq >= nextSeq) nextSeq = t.seq + 1;
        continue;
      }
      const stored = (loaded as { maxAttempts?: unknown }).maxAttempts;
      if (typeof stored !== 'number' || stored <= t.maxAttempts) {
        if (tasks.adopt !== undefined) tasks.adopt(t.id, t);
        else tasks.put(t.id, t);
      } else {
        // Written with the next commit, so the next start finds it lowered and warns no more.
        if (tasks.rewrite !== undefined) tasks.rewrite(t.id, t);
        else tasks.put(t.id, t);
        process.emitWarning(
          `task ${t.id}: its stored maxAttempts ${stored} (written by an older build) is past what a protobuf uint32 holds, so no door could show the task; lowered to ${t.maxAttempts}`,
          { code: 'FABRIC_TASK_MAX_ATTEMPTS_LOWERED' },
        );
      }
    }
    if (t.seq >= nextSeq) nextSeq = t.seq + 1;
    (isFinished(t.status) ? finished : open).push(t);
  }
  finished.sort((a, b) => (a.finishedAt ?? 0) - (b.finishedAt ?? 0) || a.seq - b.seq);
  open.sort((a, b) => a.seq - b.seq);
  return { finished, open, nextSeq };
}

/**
 * The FAILED task that takes the place of a stored record {@link TaskRecord.fromData} refused:
 * what of it can be read (type, addressee, payload, arrival order) is kept; the rest defaults.
 * @throws what `fromData` threw when the record has no string id.
 */
function unreadableTask(data: unknown, err: unknown): TaskRecord {
  const d = (data !== null && typeof data === 'object' ? data : {}) as Record<string, unknown>;
  if (typeof d.id !== 'string') throw err;
  const str = (v: unknown, fallback: string): string => (typeof v === 'string' ? v : fallback);
  const opt = (v: unknown): string | undefined => (typeof v === 'string' ? v : undefined);
  const num = (v: unknown, fallback: number): number =>
    typeof v === 'number' && Number.isFinite(v) ? v : fallback;
  const priority = d.priority === 0 || d.priority === 1 || d.priority === 2 || d.priority === 3;
  const now = Date.now();
  const t = new TaskRecord(
    d.id,
    str(d.type, '(unreadable)'),
    d.payload,
    priority ? (d.priority as Priority) : Priority.NORMAL,
    opt(d.agentId),
    opt(d.poolId),
    typeof d.pinned === 'boolean' ? d.pinned : false,
    str(d.tenant, 'default'),
    undefined,
    Math.max(1, num(d.timeoutMs, 1)),
    Math.max(1, num(d.maxAttempts, 1)),
    Math.max(0, Math.trunc(num(d.seq, 0))),
    num(d.createdAt, now),
  );
  t.status = TaskStatus.FAILED;
  t.attempt = Math.max(0, Math.trunc(num(d.attempt, 0)));
  t.assignedAgentId = opt(d.assignedAgentId);
  t.startedAt =
    typeof d.startedAt === 'number' && Number.isFinite(d.startedAt) ? d.startedAt : undefined;
  t.finishedAt = now;
  const why = err instanceof Error ? err.message : String(err);
  t.error = { code: 'FABRIC_ERR_INTERNAL', message: `unreadable at start: ${why}` };
  return t;
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

/**
 * True when `t` is queued again after a restart ended its attempt ({@link interruptedAttempt}
 * is its error, for this attempt and agent) and it has not been handed out since: the agent's
 * executor may not have been told of that end yet (it was not registered before the process
 * stopped again). For stores written by builds that kept no owed aborts (the scheduler keeps
 * them in `owedAborts` now, and tells them at start whatever became of the task).
 */
export function owesAbort(t: TaskRecord): boolean {
  const e = t.error;
  return (
    t.status === TaskStatus.PENDING &&
    e !== undefined &&
    e.code === 'FABRIC_ERR_AGENT_UNAVAILABLE' &&
    e.message === interruptedAttempt(t).message
  );
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

/**
 * The scheduler over a collection that does not hold its records (as a durable store): every
 * state change of a task is `put` — and what is put is the plain stored form, matching the task
 * — retention eviction deletes, reads write nothing. The collection here is a fake that keeps
 * the JSON of each put (the SqliteStore's own behaviour is covered by the store contract and
 * test/integration/task-recovery.test.ts).
 */
import { afterEach, describe, expect, it } from 'vitest';
import { AgentScheduler } from '../../src/scheduler/agent-scheduler.js';
import { InProcessExecutor } from '../../src/scheduler/inprocess-executor.js';
import type { TaskRecord } from '../../src/scheduler/task-record.js';
import type { Collection } from '../../src/store/store.js';
import type { Task } from '../../src/task.js';
import { TaskStatus } from '../../src/task.js';

/** Keeps live records in a Map and, per put, the JSON a store would write. */
class JsonCollection implements Collection<TaskRecord> {
  readonly live = new Map<string, TaskRecord>();
  readonly stored = new Map<string, string>();
  puts = 0;
  get(id: string): TaskRecord | undefined {
    return this.live.get(id);
  }
  put(id: string, record: TaskRecord): void {
    this.puts++;
    this.live.set(id, record);
    this.stored.set(id, JSON.stringify(record));
  }
  delete(id: string): boolean {
    this.stored.delete(id);
    return this.live.delete(id);
  }
  values(): IterableIterator<TaskRecord> {
    return this.live.values();
  }
  get size(): number {
    return this.live.size;
  }
}

let s: AgentScheduler;
afterEach(async () => s.close());

function setup(options: ConstructorParameters<typeof AgentScheduler>[0] = {}): JsonCollection {
  const tasks = new JsonCollection();
  s = new AgentScheduler({ ...options, tasks });
  s.addPool('p');
  s.addAgent({ agentId: 'a', poolId: 'p', executor: 'remote' });
  s.addAgent({ agentId: 'b', poolId: 'p', executor: 'remote' });
  s.setAccepting('a', true);
  return tasks;
}

/** The stored form must say what the task says. */
function expectStored(tasks: JsonCollection, task: Task): void {
  const stored = JSON.parse(tasks.stored.get(task.id)!) as Record<string, unknown>;
  const want = {
    id: task.id,
    type: task.taskType,
    payload: task.payload,
    priority: task.priority,
    agentId: task.agentId,
    poolId: task.poolId,
    tenant: task.tenant,
    deadline: task.deadline,
    timeoutMs: task.timeoutSeconds * 1000,
    maxAttempts: task.maxAttempts,
    createdAt: task.createdAt,
    status: task.status,
    attempt: task.attempt,
    assignedAgentId: task.assignedAgentId,
    startedAt: task.startedAt,
    finishedAt: task.finishedAt,
    result: task.result,
    error: task.error,
    progress: task.progress,
  };
  expect(stored).toMatchObject(JSON.parse(JSON.stringify(want)) as object);
  // Nothing of the runtime.
  for (const key of ['qIndex', 'tIndex', 'flow', 'timerAt', 'inFifo', 'waiters', 'resolve'])
    expect(stored).not.toHaveProperty(key);
}

describe('AgentScheduler over a durable collection', () => {
  it('puts every state change: schedule, claim, progress, retry, complete', async () => {
    const tasks = setup();
    const id = s.submit({ poolId: 'p' }, 'work', { n: 1 }, { tenant: 't', maxAttempts: 2 });
    expectStored(tasks, s.getTask(id));
    expect(tasks.stored.has(id)).toBe(true);
    const first = (await s.claim('a'))!;
    expect(JSON.parse(tasks.stored.get(id)!)).toMatchObject({ status: 'RUNNING', attempt: 1 });
    s.reportProgress(id, first.attempt, { pct: 10 }, 'a');
    expectStored(tasks, s.getTask(id));
    s.fail(id, 1, { code: 'E', message: 'flaky' }, { retry: true, agentId: 'a' });
    expect(JSON.parse(tasks.stored.get(id)!)).toMatchObject({
      status: 'PENDING',
      attempt: 1,
      error: { code: 'E' },
    });
    const second = (await s.claim('a'))!;
    expectStored(tasks, s.getTask(id));
    s.complete(id, second.attempt, { done: true }, 'a');
    expectStored(tasks, s.getTask(id));
    expect(JSON.parse(tasks.stored.get(id)!)).toMatchObject({
      status: 'COMPLETED',
      attempt: 2,
      result: { done: true },
    });
    // Reads and repeats write nothing.
    const puts = tasks.puts;
    s.getTask(id);
    await s.waitForTask(id);
    s.stats();
    s.complete(id, 2, { done: true }, 'a');
    s.cancel(id);
    expect(tasks.puts).toBe(puts);
  });

  it('puts cancels, timeouts, failures at maxAttempts and moves to the pool', async () => {
    const tasks = setup();
    const queued = s.submit({ agentId: 'b' }, 'work', {});
    s.cancel(queued, 'not needed');
    expectStored(tasks, s.getTask(queued));
    expect(s.getTask(queued).status).toBe(TaskStatus.CANCELLED);

    const once = s.submit({ poolId: 'p' }, 'work', {}, { maxAttempts: 1 });
    const a = (await s.claim('a'))!;
    s.fail(once, a.attempt, { code: 'E', message: 'no' }, { retry: true, agentId: 'a' });
    expectStored(tasks, s.getTask(once));
    expect(s.getTask(once).status).toBe(TaskStatus.FAILED);

    // Queued to an agent that is lost: moved to its pool, and the move is stored.
    const moved = s.submit({ agentId: 'b' }, 'work', {});
    s.evictAgent('b', { code: 'GONE', message: 'gone' }, { remove: true });
    expect(JSON.parse(tasks.stored.get(moved)!)).toMatchObject({
      status: 'PENDING',
      poolId: 'p',
    });

    const slow = s.submit({ poolId: 'p' }, 'work', {}, { timeoutSeconds: 0.05 });
    await s.claim('a'); // takes `moved` (earlier)
    await s.claim('a'); // takes `slow`
    const ended = await s.waitForTask(slow);
    expect(ended.status).toBe(TaskStatus.TIMEOUT);
    expectStored(tasks, ended);
  });

  it('deletes what retention evicts', async () => {
    const tasks = setup({ finishedTaskRetention: 1 });
    const first = s.submit({ poolId: 'p' }, 'work', {});
    const second = s.submit({ poolId: 'p' }, 'work', {});
    s.cancel(first);
    expect(tasks.stored.has(first)).toBe(true);
    s.cancel(second);
    expect(tasks.stored.has(first)).toBe(false);
    expect(tasks.stored.has(second)).toBe(true);
  });

  it('refuses a payload, result or progress it could not store, changing nothing', async () => {
    const tasks = setup();
    const cyclic: Record<string, unknown> = {};
    cyclic.self = cyclic;
    expect(() => s.submit({ poolId: 'p' }, 'work', cyclic)).toThrow(/payload/);
    expect(tasks.size).toBe(0);
    const id = s.submit({ poolId: 'p' }, 'work', {});
    const a = (await s.claim('a'))!;
    const puts = tasks.puts;
    expect(() => s.complete(id, a.attempt, cyclic, 'a')).toThrow(/result/);
    expect(() => s.reportProgress(id, a.attempt, cyclic, 'a')).toThrow(/progress/);
    expect(tasks.puts).toBe(puts);
    expect(s.getTask(id).status).toBe(TaskStatus.RUNNING);
  });
});

/** A JsonCollection that also takes lazy puts, and logs which kind each put of a task was. */
class LazyJsonCollection extends JsonCollection {
  readonly log: string[] = [];
  override put(id: string, record: TaskRecord): void {
    this.log.push(`put ${record.status}`);
    super.put(id, record);
  }
  putLazily(id: string, record: TaskRecord): void {
    this.log.push(`lazy ${record.status}`);
    super.put(id, record);
  }
}

describe('AgentScheduler: when the start of an attempt may be written lazily', () => {
  it('lazily for an in-process agent (the task ends with the process), at once for a remote one', async () => {
    const tasks = new LazyJsonCollection();
    s = new AgentScheduler({ tasks });
    const inproc = new InProcessExecutor();
    inproc.registerHandler('work', (p) => p);
    s.registerExecutor(inproc);
    s.addAgent({ agentId: 'here', executor: 'inprocess' });
    s.addAgent({ agentId: 'far', executor: 'remote' });
    s.setAccepting('here', true);
    s.setAccepting('far', true);

    const local = s.submit({ agentId: 'here' }, 'work', 1);
    expect((await s.waitForTask(local)).status).toBe(TaskStatus.COMPLETED);
    expect(tasks.log).toEqual(['put PENDING', 'lazy RUNNING', 'put COMPLETED']);

    tasks.log.length = 0;
    const remote = s.submit({ agentId: 'far' }, 'work', 2);
    const a = (await s.claim('far'))!;
    // The attempt is the fencing token of an assignment that leaves the process: written at once.
    expect(tasks.log).toEqual(['put PENDING', 'put RUNNING']);
    s.complete(remote, a.attempt, 2, 'far');
    expect(tasks.log).toEqual(['put PENDING', 'put RUNNING', 'put COMPLETED']);
  });
});

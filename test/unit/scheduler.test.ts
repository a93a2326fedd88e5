import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { AgentScheduler } from '../../src/scheduler/agent-scheduler.js';
import { InProcessExecutor } from '../../src/scheduler/inprocess-executor.js';
import { Priority, TaskStatus } from '../../src/task.js';
import {
  AgentBusyError,
  InvalidArgumentError,
  PoolDrainingError,
  QueueFullError,
  TaskNotFoundError,
  TaskStateError,
  WaitTimeoutError,
} from '../../src/errors.js';

/** A scheduler with one remote (claiming) agent `a` — claims reveal the queue order. */
function remoteScheduler(opts: ConstructorParameters<typeof AgentScheduler>[0] = {}) {
  const s = new AgentScheduler({ maxConcurrentTasksPerAgent: 100, ...opts });
  s.addAgent({ agentId: 'a', executor: 'remote' });
  s.setAccepting('a', true);
  return s;
}

async function drainOrder(s: AgentScheduler, agentId = 'a'): Promise<unknown[]> {
  const out: unknown[] = [];
  for (;;) {
    const a = await s.claim(agentId);
    if (a === undefined) return out;
    out.push(a.payload);
    s.complete(a.taskId, a.attempt, null, agentId);
  }
}

describe('AgentScheduler ordering', () => {
  let s: AgentScheduler;
  afterEach(async () => s.close());

  it('runs strict priority across levels, EDF within a level, FIFO among equal deadlines', async () => {
    s = remoteScheduler();
    const now = Date.now();
    s.schedule({ agentId: 'a' }, 't', 'low', { priority: Priority.LOW });
    s.schedule({ agentId: 'a' }, 't', 'normal-1');
    s.schedule({ agentId: 'a' }, 't', 'normal-late', { deadline: now + 60_000 });
    s.schedule({ agentId: 'a' }, 't', 'normal-early', { deadline: new Date(now + 10_000) });
    s.schedule({ agentId: 'a' }, 't', 'normal-2');
    s.schedule({ agentId: 'a' }, 't', 'critical', { priority: Priority.CRITICAL });
    s.schedule({ agentId: 'a' }, 't', 'high', { priority: Priority.HIGH });
    expect(await drainOrder(s)).toEqual([
      'critical',
      'high',
      'normal-early',
      'normal-late',
      'normal-1',
      'normal-2',
      'low',
    ]);
  });

  it('serves tenants at the same priority round robin, so a flood cannot starve another tenant', async () => {
    s = remoteScheduler();
    for (let i = 0; i < 50; i++) s.schedule({ agentId: 'a' }, 't', `flood-${i}`, { tenant: 'big' });
    s.schedule({ agentId: 'a' }, 't', 'small-0', { tenant: 'small' });
    s.schedule({ agentId: 'a' }, 't', 'small-1', { tenant: 'small' });
    const order = await drainOrder(s);
    expect(order.indexOf('small-0')).toBeLessThanOrEqual(2);
    expect(order.indexOf('small-1')).toBeLessThanOrEqual(4);
    expect(order).toHaveLength(52);
  });

  it('honours tenant weights', async () => {
    s = remoteScheduler({ tenantWeight: (t) => (t === 'gold' ? 3 : 1) });
    for (let i = 0; i < 6; i++) s.schedule({ agentId: 'a' }, 't', `b${i}`, { tenant: 'bronze' });
    for (let i = 0; i < 6; i++) s.schedule({ agentId: 'a' }, 't', `g${i}`, { tenant: 'gold' });
    const order = (await drainOrder(s)).slice(0, 8);
    expect(order).toEqual(['b0', 'g0', 'g1', 'g2', 'b1', 'g3', 'g4', 'g5']);
  });

  it('serves pools fairly: each pool queue is drained by its own agents independently', async () => {
    s = new AgentScheduler({ maxConcurrentTasksPerAgent: 1 });
    s.addPool('p1');
    s.addPool('p2');
    s.addAgent({ agentId: 'a1', executor: 'remote', poolId: 'p1' });
    s.addAgent({ agentId: 'a2', executor: 'remote', poolId: 'p2' });
    s.setAccepting('a1', true);
    s.setAccepting('a2', true);
    for (let i = 0; i < 100; i++) s.schedule({ poolId: 'p1' }, 't', i);
    s.schedule({ poolId: 'p2' }, 't', 'p2-task');
    const c = await s.claim('a2');
    expect(c?.payload).toBe('p2-task');
  });

  it('takes the better head of the agent queue and its pool queue', async () => {
    s = new AgentScheduler();
    s.addPool('p');
    s.addAgent({ agentId: 'a', executor: 'remote', poolId: 'p' });
    s.setAccepting('a', true);
    s.schedule({ poolId: 'p' }, 't', 'pool-normal');
    s.schedule({ agentId: 'a' }, 't', 'own-low', { priority: Priority.LOW });
    s.schedule({ poolId: 'p' }, 't', 'pool-high', { priority: Priority.HIGH });
    expect(await drainOrder(s)).toEqual(['pool-high', 'pool-normal', 'own-low']);
  });

  it('spreads pool tasks over the least-loaded agents', async () => {
    s = new AgentScheduler({ maxConcurrentTasksPerAgent: 10 });
    const exec = new InProcessExecutor();
    const seen = new Map<string, number>();
    const release: (() => void)[] = [];
    exec.registerHandler('hold', (_p, ctx) => {
      seen.set(ctx.agentId, (seen.get(ctx.agentId) ?? 0) + 1);
      return new Promise<void>((r) => release.push(r));
    });
    s.registerExecutor(exec);
    s.addPool('p');
    for (const id of ['x', 'y', 'z']) {
      s.addAgent({ agentId: id, executor: 'inprocess', poolId: 'p' });
      s.setAccepting(id, true);
    }
    for (let i = 0; i < 9; i++) s.schedule({ poolId: 'p' }, 'hold', i);
    await vi.waitFor(() => expect(release).toHaveLength(9));
    expect([...seen.values()]).toEqual([3, 3, 3]);
    for (const r of release) r();
  });
});

describe('AgentScheduler limits and errors', () => {
  let s: AgentScheduler;
  afterEach(async () => s.close());

  it('throws QueueFullError past maxQueueDepth and accepts again once a task leaves', async () => {
    s = remoteScheduler({ maxQueueDepth: 3, maxQueueDepthPerTenant: 3 });
    for (let i = 0; i < 3; i++) s.schedule({ agentId: 'a' }, 't', i);
    expect(() => s.schedule({ agentId: 'a' }, 't', 'x')).toThrow(QueueFullError);
    const a = await s.claim('a');
    expect(a).toBeDefined();
    expect(() => s.schedule({ agentId: 'a' }, 't', 'y')).not.toThrow();
    expect(s.stats().queueDepth).toBe(3);
  });

  it('bounds each tenant to maxQueueDepthPerTenant of the waiting tasks, retries included', async () => {
    s = remoteScheduler({ maxQueueDepth: 20, maxQueueDepthPerTenant: 3 });
    const ids = [0, 1, 2].map((i) => s.schedule({ agentId: 'a' }, 't', i, { tenant: 'x' }).id);
    let refused: unknown;
    try {
      s.schedule({ agentId: 'a' }, 't', 'over', { tenant: 'x' });
    } catch (e) {
      refused = e;
    }
    expect(refused).toBeInstanceOf(QueueFullError);
    expect(refused).toMatchObject({ details: { limit: 3, tenant: 'x' } });
    expect(String(refused)).toContain('maxQueueDepthPerTenant 3');
    // Another tenant still gets in; the default tenant is a tenant like any other.
    for (let i = 0; i < 3; i++) s.schedule({ agentId: 'a' }, 't', i);
    expect(() => s.schedule({ agentId: 'a' }, 't', 'd')).toThrow(QueueFullError);
    // A claimed task leaves its tenant's share; its retry comes back into it, past the share
    // (it was acknowledged: it is not refused).
    const a = (await s.claim('a'))!;
    const tenant = s.getTask(a.taskId).tenant;
    expect(tenant).toBe('x');
    ids.splice(ids.indexOf(a.taskId), 1);
    ids.push(s.schedule({ agentId: 'a' }, 't', 'in again', { tenant }).id);
    expect(() => s.schedule({ agentId: 'a' }, 't', 'over', { tenant })).toThrow(QueueFullError);
    s.fail(a.taskId, a.attempt, { code: 'E', message: 'retry me' }, { retry: true, agentId: 'a' });
    expect(s.getTask(a.taskId).status).toBe(TaskStatus.PENDING);
    expect(s.stats().queueDepth).toBe(7);
    // x holds 4 now: two of them must leave before one more is taken.
    s.cancel(ids[0]!);
    expect(() => s.schedule({ agentId: 'a' }, 't', 'over', { tenant })).toThrow(QueueFullError);
    s.cancel(ids[1]!);
    expect(() => s.schedule({ agentId: 'a' }, 't', 'fits', { tenant })).not.toThrow();
  });

  it('never exceeds maxConcurrentTasksPerAgent', async () => {
    s = new AgentScheduler({ maxConcurrentTasksPerAgent: 2 });
    const exec = new InProcessExecutor();
    let running = 0;
    let peak = 0;
    exec.registerHandler('w', async () => {
      running++;
      peak = Math.max(peak, running);
      await new Promise((r) => setImmediate(r));
      running--;
    });
    s.registerExecutor(exec);
    s.addAgent({ agentId: 'a', executor: 'inprocess' });
    s.setAccepting('a', true);
    const ids = Array.from({ length: 20 }, (_, i) => s.schedule({ agentId: 'a' }, 'w', i).id);
    const done = await Promise.all(ids.map((id) => s.waitForTask(id)));
    expect(done.every((t) => t.status === TaskStatus.COMPLETED)).toBe(true);
    expect(peak).toBe(2);
  });

  it('rejects claims beyond the agent limit with AgentBusyError', async () => {
    s = new AgentScheduler({ maxConcurrentTasksPerAgent: 1 });
    s.addAgent({ agentId: 'a', executor: 'remote' });
    s.setAccepting('a', true);
    s.schedule({ agentId: 'a' }, 't', 1);
    s.schedule({ agentId: 'a' }, 't', 2);
    await s.claim('a');
    await expect(s.claim('a')).rejects.toBeInstanceOf(AgentBusyError);
  });

  it('rejects bad options with typed errors naming the field', () => {
    s = remoteScheduler();
    expect(() => s.schedule({ agentId: 'a' }, '', 1)).toThrow(/taskType/);
    expect(() => s.schedule({ agentId: 'a' }, 't', 1, { priority: 7 as Priority })).toThrow(
      InvalidArgumentError,
    );
    expect(() => s.schedule({ agentId: 'a' }, 't', 1, { timeoutSeconds: -1 })).toThrow(
      /timeoutSeconds/,
    );
    expect(() => s.schedule({ agentId: 'a' }, 't', 1, { maxAttempts: 0 })).toThrow(/maxAttempts/);
    expect(() => s.schedule({ agentId: 'a' }, 't', 1, { deadline: Date.now() - 1 })).toThrow(
      /deadline/,
    );
    expect(() => s.schedule({ agentId: 'a' }, 't', 1, { deadline: Number.NaN })).toThrow(
      /deadline/,
    );
    expect(() => s.getTask('nope')).toThrow(TaskNotFoundError);
    expect(s.stats().queueDepth).toBe(0);
  });

  it('checks completions against the holder and attempt; a repeat is a no-op', async () => {
    s = new AgentScheduler();
    s.addAgent({ agentId: 'a', executor: 'remote' });
    s.addAgent({ agentId: 'b', executor: 'remote' });
    s.setAccepting('a', true);
    s.setAccepting('b', true);
    const task = s.schedule({ agentId: 'a' }, 't', 1);
    const claim = (await s.claim('a'))!;
    expect(() => s.complete(task.id, claim.attempt, 'x', 'b')).toThrow(TaskNotFoundError);
    expect(() => s.complete(task.id, claim.attempt + 1, 'x', 'a')).toThrow(TaskStateError);
    s.complete(task.id, claim.attempt, 'ok', 'a');
    s.complete(task.id, claim.attempt, 'again', 'a');
    expect(s.getTask(task.id)).toMatchObject({ status: TaskStatus.COMPLETED, result: 'ok' });
    expect(s.stats().completedTasks).toBe(1);
    expect(() =>
      s.fail(task.id, claim.attempt, { code: 'X', message: 'late' }, { agentId: 'a' }),
    ).toThrow(TaskStateError);
  });

  it('unclaim gives back an undelivered attempt without counting it; reports on it are stale', async () => {
    s = remoteScheduler({ maxConcurrentTasksPerAgent: 1 });
    s.addAgent({ agentId: 'b', executor: 'remote' });
    s.setAccepting('b', true);
    const task = s.schedule({ agentId: 'a' }, 't', 1, { maxAttempts: 1 });
    const c1 = (await s.claim('a'))!;
    // Only the holder, with the current attempt, can give it back; once.
    expect(s.unclaim(task.id, c1.attempt, 'b')).toBe(false);
    expect(s.unclaim(task.id, c1.attempt + 1, 'a')).toBe(false);
    expect(s.unclaim(task.id, c1.attempt, 'a')).toBe(true);
    expect(s.unclaim(task.id, c1.attempt, 'a')).toBe(false);
    expect(s.getTask(task.id)).toMatchObject({ status: TaskStatus.PENDING, attempt: 1 });
    expect(s.agentLoad('a').runningTasks).toBe(0);
    // maxAttempts is 1, yet it runs again: the undelivered attempt did not count.
    const c2 = (await s.claim('a'))!;
    expect(c2).toMatchObject({ taskId: task.id, attempt: 2 });
    expect(() => s.complete(task.id, c1.attempt, 'late', 'a')).toThrow(TaskStateError);
    // A delivered attempt that fails uses up the only attempt.
    s.fail(task.id, c2.attempt, { code: 'E', message: 'x' }, { retry: true, agentId: 'a' });
    expect(s.getTask(task.id).status).toBe(TaskStatus.FAILED);
  });

  it('keeps notices of attempts it ended for their remote agent, each handed out once', async () => {
    s = remoteScheduler({ maxConcurrentTasksPerAgent: 2 });
    const t1 = s.schedule({ agentId: 'a' }, 't', 1);
    const t2 = s.schedule({ agentId: 'a' }, 't', 2, { timeoutSeconds: 0.01 });
    await s.claim('a');
    await s.claim('a');
    s.cancel(t1.id, 'stop');
    await vi.waitFor(() => expect(s.getTask(t2.id).status).toBe(TaskStatus.TIMEOUT));
    const notices = s.takeEndedTasks('a');
    expect(notices.map((n) => [n.taskId, n.code])).toEqual([
      [t1.id, 'FABRIC_ERR_CANCELLED'],
      [t2.id, 'FABRIC_ERR_TASK_TIMEOUT'],
    ]);
    expect(s.takeEndedTasks('a')).toEqual([]);
    s.restoreEndedTasks('a', notices);
    expect(s.takeEndedTasks('a')).toEqual(notices);
    // A task cancelled while still queued was never held: no notice.
    const t3 = s.schedule({ agentId: 'a' }, 't', 3);
    s.cancel(t3.id);
    expect(s.takeEndedTasks('a')).toEqual([]);
  });

  it('failTask with retry requeues while attempts remain, then fails for good', async () => {
    s = remoteScheduler();
    const task = s.schedule({ agentId: 'a' }, 't', 1, { maxAttempts: 2 });
    const c1 = (await s.claim('a'))!;
    s.fail(task.id, c1.attempt, { code: 'E', message: 'flaky' }, { retry: true, agentId: 'a' });
    expect(s.getTask(task.id).status).toBe(TaskStatus.PENDING);
    const c2 = (await s.claim('a'))!;
    expect(c2.attempt).toBe(2);
    s.fail(task.id, c2.attempt, { code: 'E', message: 'flaky' }, { retry: true, agentId: 'a' });
    expect(s.getTask(task.id)).toMatchObject({ status: TaskStatus.FAILED, error: { code: 'E' } });
  });

  it('resolves waitForTask for a task that finished before the call, and times out otherwise', async () => {
    s = remoteScheduler();
    const t1 = s.schedule({ agentId: 'a' }, 't', 1);
    const c = (await s.claim('a'))!;
    s.complete(t1.id, c.attempt, 42, 'a');
    await expect(s.waitForTask(t1.id)).resolves.toMatchObject({
      status: TaskStatus.COMPLETED,
      result: 42,
    });
    const t2 = s.schedule({ agentId: 'a' }, 't', 2);
    await expect(s.waitForTask(t2.id, 10)).rejects.toBeInstanceOf(WaitTimeoutError);
    expect(s.getTask(t2.id).status).toBe(TaskStatus.PENDING);
    await expect(s.waitForTask('missing')).rejects.toBeInstanceOf(TaskNotFoundError);
  });

  it('answers every wait of a task with its final snapshot, and each wait of several tasks with its own', async () => {
    s = remoteScheduler();
    const t1 = s.schedule({ agentId: 'a' }, 't', 1);
    const t2 = s.schedule({ agentId: 'a' }, 't', 2);
    // Unbounded waits (the first hangs on the record, the next in its list) between bounded ones
    // and waits with a signal, on two tasks in turn.
    const waits = [
      s.waitForTask(t1.id),
      s.waitForTask(t2.id),
      s.waitForTask(t1.id),
      s.waitForTask(t1.id, 60_000),
      s.waitForTask(t2.id, undefined, new AbortController().signal),
      s.waitForTask(t1.id),
      s.waitForTask(t2.id),
    ];
    expect(s.waiterCount(t1.id)).toBe(4);
    expect(s.waiterCount(t2.id)).toBe(3);
    for (let a = await s.claim('a'); a !== undefined; a = await s.claim('a'))
      s.complete(a.taskId, a.attempt, (a.payload as number) * 10, 'a');
    const ends = await Promise.all(waits);
    expect(ends.map((t) => [t.id, t.result])).toEqual([
      [t1.id, 10],
      [t2.id, 20],
      [t1.id, 10],
      [t1.id, 10],
      [t2.id, 20],
      [t1.id, 10],
      [t2.id, 20],
    ]);
    expect(ends.every((t) => t.status === TaskStatus.COMPLETED)).toBe(true);
    expect(s.waiterCount(t1.id) + s.waiterCount(t2.id)).toBe(0);
  });

  it('forgets the oldest finished tasks beyond finishedTaskRetention', async () => {
    s = remoteScheduler({ finishedTaskRetention: 2 });
    const ids = [1, 2, 3].map((i) => s.schedule({ agentId: 'a' }, 't', i).id);
    await drainOrder(s);
    expect(() => s.getTask(ids[0]!)).toThrow(TaskNotFoundError);
    expect(s.getTask(ids[2]!).status).toBe(TaskStatus.COMPLETED);
  });

  it('rejects new pool tasks while the pool drains and cancels what is left at the drain timeout', async () => {
    vi.useFakeTimers();
    s = new AgentScheduler();
    s.addPool('p');
    const t = s.schedule({ poolId: 'p' }, 't', 1);
    const drained = s.drainPool('p', 1000);
    expect(() => s.schedule({ poolId: 'p' }, 't', 2)).toThrow(PoolDrainingError);
    await vi.advanceTimersByTimeAsync(1000);
    await drained;
    expect(s.getTask(t.id)).toMatchObject({
      status: TaskStatus.CANCELLED,
      error: { code: 'FABRIC_ERR_POOL_DRAINING' },
    });
    vi.useRealTimers();
  });
});

describe('AgentScheduler deadlines, timeouts and cancel (fake timers)', () => {
  let s: AgentScheduler;
  beforeEach(() => {
    vi.useFakeTimers();
  });
  afterEach(async () => {
    await s.close();
    vi.useRealTimers();
  });

  it('ends a task TIMEOUT when its deadline passes while queued', async () => {
    s = new AgentScheduler();
    s.addAgent({ agentId: 'a', executor: 'remote' });
    const t = s.schedule({ agentId: 'a' }, 't', 1, { deadline: Date.now() + 5_000 });
    const wait = s.waitForTask(t.id);
    await vi.advanceTimersByTimeAsync(4_999);
    expect(s.getTask(t.id).status).toBe(TaskStatus.PENDING);
    await vi.advanceTimersByTimeAsync(1);
    await expect(wait).resolves.toMatchObject({
      status: TaskStatus.TIMEOUT,
      error: { code: 'FABRIC_ERR_DEADLINE_EXCEEDED' },
    });
    expect(s.stats()).toMatchObject({ timedOutTasks: 1, queueDepth: 0 });
  });

  it('ends a running task TIMEOUT past its timeout and aborts its handler', async () => {
    s = new AgentScheduler();
    const exec = new InProcessExecutor();
    let aborted = false;
    exec.registerHandler('slow', (_p, ctx) => {
      return new Promise((_r, reject) => {
        ctx.signal.addEventListener('abort', () => {
          aborted = true;
          reject(new Error('aborted'));
        });
      });
    });
    s.registerExecutor(exec);
    s.addAgent({ agentId: 'a', executor: 'inprocess' });
    s.setAccepting('a', true);
    const t = s.schedule({ agentId: 'a' }, 'slow', 1, { timeoutSeconds: 2 });
    await vi.advanceTimersByTimeAsync(1_999);
    expect(s.getTask(t.id).status).toBe(TaskStatus.RUNNING);
    await vi.advanceTimersByTimeAsync(1);
    expect(s.getTask(t.id)).toMatchObject({
      status: TaskStatus.TIMEOUT,
      error: { code: 'FABRIC_ERR_TASK_TIMEOUT' },
    });
    expect(aborted).toBe(true);
  });

  it('counts a running task’s timeout as elapsed time: a wall-clock step neither ends nor extends it', async () => {
    s = new AgentScheduler({ maxConcurrentTasksPerAgent: 2 });
    const exec = new InProcessExecutor();
    const signals = new Map<unknown, AbortSignal>();
    exec.registerHandler('slow', (p, ctx) => {
      signals.set(p, ctx.signal);
      return new Promise(() => {});
    });
    s.registerExecutor(exec);
    s.addAgent({ agentId: 'a', executor: 'inprocess' });
    s.setAccepting('a', true);
    const short = s.schedule({ agentId: 'a' }, 'slow', 'short', { timeoutSeconds: 10 });
    const long = s.schedule({ agentId: 'a' }, 'slow', 'long', { timeoutSeconds: 3_600 });
    await vi.advanceTimersByTimeAsync(0);
    expect(s.getTask(long.id).status).toBe(TaskStatus.RUNNING);
    // The wall clock jumps two hours ahead (no time passes); 10 s later the short one times out.
    vi.setSystemTime(Date.now() + 7_200_000);
    await vi.advanceTimersByTimeAsync(10_000);
    expect(s.getTask(short.id).status).toBe(TaskStatus.TIMEOUT);
    expect(s.getTask(long.id).status).toBe(TaskStatus.RUNNING);
    expect(signals.get('long')!.aborted).toBe(false);
    // Then four hours back: the long one still ends an hour after its start, not hours later.
    vi.setSystemTime(Date.now() - 4 * 3_600_000);
    await vi.advanceTimersByTimeAsync(3_590_000);
    expect(s.getTask(long.id)).toMatchObject({
      status: TaskStatus.TIMEOUT,
      error: { code: 'FABRIC_ERR_TASK_TIMEOUT' },
    });
    expect(signals.get('long')!.aborted).toBe(true);
  });

  it('cancels a queued task out of its queue and aborts a running one', async () => {
    s = new AgentScheduler({ maxConcurrentTasksPerAgent: 1 });
    const exec = new InProcessExecutor();
    const signals: AbortSignal[] = [];
    exec.registerHandler('hold', (_p, ctx) => {
      signals.push(ctx.signal);
      return new Promise(() => {});
    });
    s.registerExecutor(exec);
    s.addAgent({ agentId: 'a', executor: 'inprocess' });
    s.setAccepting('a', true);
    const running = s.schedule({ agentId: 'a' }, 'hold', 1);
    const queued = s.schedule({ agentId: 'a' }, 'hold', 2);
    await vi.advanceTimersByTimeAsync(0);
    expect(s.getTask(running.id).status).toBe(TaskStatus.RUNNING);
    expect(s.cancel(queued.id).status).toBe(TaskStatus.CANCELLED);
    expect(s.stats().queueDepth).toBe(0);
    expect(s.cancel(running.id).status).toBe(TaskStatus.CANCELLED);
    expect(signals[0]!.aborted).toBe(true);
    expect(s.cancel(running.id).status).toBe(TaskStatus.CANCELLED);
    expect(s.stats().cancelledTasks).toBe(2);
  });

  it('lets a claim wait for work and answers undefined when none comes', async () => {
    s = remoteScheduler();
    const waiting = s.claim('a', { waitMs: 1_000 });
    s.schedule({ agentId: 'a' }, 't', 'late');
    await expect(waiting).resolves.toMatchObject({ payload: 'late', attempt: 1 });
    const empty = s.claim('a', { waitMs: 1_000 });
    await vi.advanceTimersByTimeAsync(1_000);
    await expect(empty).resolves.toBeUndefined();
  });
});

describe('AgentScheduler notBefore (fake timers)', () => {
  let s: AgentScheduler;
  beforeEach(() => {
    vi.useFakeTimers();
    s = remoteScheduler();
  });
  afterEach(async () => {
    await s.close();
    vi.useRealTimers();
  });

  it('holds a task back until notBefore, counting it as queued', async () => {
    const later = s.schedule({ agentId: 'a' }, 't', 'later', { notBefore: Date.now() + 1_000 });
    s.schedule({ agentId: 'a' }, 't', 'now');
    expect(s.stats().queueDepth).toBe(2);
    expect(await drainOrder(s)).toEqual(['now']);
    await vi.advanceTimersByTimeAsync(1_000);
    expect(await drainOrder(s)).toEqual(['later']);
    expect(s.getTask(later.id).status).toBe(TaskStatus.COMPLETED);
  });

  it('times out a held task whose deadline comes first, and cancels one cleanly', async () => {
    const late = s.schedule({ agentId: 'a' }, 't', 1, {
      notBefore: Date.now() + 5_000,
      deadline: Date.now() + 1_000,
    });
    const cancelled = s.schedule({ agentId: 'a' }, 't', 2, { notBefore: Date.now() + 5_000 });
    s.cancel(cancelled.id);
    await vi.advanceTimersByTimeAsync(5_000);
    expect(s.getTask(late.id).status).toBe(TaskStatus.TIMEOUT);
    expect(s.getTask(cancelled.id).status).toBe(TaskStatus.CANCELLED);
    expect(s.stats().queueDepth).toBe(0);
    expect(await drainOrder(s)).toEqual([]);
  });
});

describe('AgentScheduler close', () => {
  it('rejects every open wait with ClosedError and answers open claims with undefined', async () => {
    const s = remoteScheduler();
    const t = s.schedule({ agentId: 'a' }, 't', 1);
    const first = s.waitForTask(t.id);
    const second = s.waitForTask(t.id);
    const bounded = s.waitForTask(t.id, 60_000);
    await s.claim('a');
    const claim = s.claim('a', { waitMs: 60_000 });
    await s.close();
    for (const w of [first, second, bounded])
      await expect(w).rejects.toMatchObject({ code: 'FABRIC_ERR_CLOSED' });
    await expect(claim).resolves.toBeUndefined();
  });
});

describe('AgentScheduler records of evicted tasks', () => {
  it('keeps a task readable while task.finished is emitted, even with no retention', async () => {
    const s = remoteScheduler({ finishedTaskRetention: 0 });
    const t = s.schedule({ agentId: 'a' }, 't', 1);
    const seen: (TaskStatus | string)[] = [];
    s.events.on('task.finished', (task) => {
      try {
        seen.push(s.getTask(task.id).status);
      } catch (err) {
        seen.push((err as Error).name);
      }
    });
    s.cancel(t.id);
    expect(seen).toEqual([TaskStatus.CANCELLED]);
    expect(() => s.getTask(t.id)).toThrow(TaskNotFoundError);
    await s.close();
  });

  it('gives a new task none of the state of the evicted task whose record it takes', async () => {
    const s = remoteScheduler({ finishedTaskRetention: 0 });
    const old = s.schedule({ agentId: 'a' }, 'old', 'old-payload', {
      priority: Priority.HIGH,
      tenant: 'x',
      maxAttempts: 2,
      timeoutSeconds: 30,
    });
    const oldEnd = s.waitForTask(old.id);
    let a = (await s.claim('a'))!;
    s.reportProgress(a.taskId, a.attempt, { pct: 50 });
    s.fail(a.taskId, a.attempt, { code: 'E', message: 'again' }, { retry: true });
    a = (await s.claim('a'))!;
    s.complete(a.taskId, a.attempt, 'old-result');
    expect(await oldEnd).toMatchObject({ id: old.id, result: 'old-result', attempt: 2 });

    // A task.finished listener that schedules while the old task's end is being reported.
    let fromListener: string | undefined;
    s.events.on('task.finished', () => {
      fromListener ??= s.submit({ agentId: 'a' }, 'listener', 0);
    });
    const cancelled = s.schedule({ agentId: 'a' }, 'cancelled', 'c');
    // It took the old task's record: nothing of the old task shows.
    expect(s.cancel(cancelled.id)).toMatchObject({
      id: cancelled.id,
      taskType: 'cancelled',
      payload: 'c',
      status: TaskStatus.CANCELLED,
      priority: Priority.NORMAL,
      tenant: 'default',
      timeoutSeconds: 300,
      attempt: 0,
      maxAttempts: 3,
      assignedAgentId: undefined,
      startedAt: undefined,
      result: undefined,
      progress: undefined,
      error: { code: 'FABRIC_ERR_CANCELLED' },
    });
    expect(s.getTask(fromListener!)).toMatchObject({ taskType: 'listener', payload: 0 });

    const fresh = s.schedule({ agentId: 'a' }, 'new', 'new-payload');
    expect(fresh).toEqual({
      id: fresh.id,
      taskType: 'new',
      payload: 'new-payload',
      priority: Priority.NORMAL,
      status: TaskStatus.PENDING,
      agentId: 'a',
      poolId: undefined,
      assignedAgentId: undefined,
      tenant: 'default',
      deadline: undefined,
      timeoutSeconds: 300,
      attempt: 0,
      maxAttempts: 3,
      createdAt: fresh.createdAt,
      startedAt: undefined,
      finishedAt: undefined,
      result: undefined,
      error: undefined,
      progress: undefined,
    });
    expect(s.waiterCount(fresh.id)).toBe(0);
    const freshEnd = s.waitForTask(fresh.id);
    s.cancel(fromListener!);
    a = (await s.claim('a'))!;
    expect(a).toMatchObject({ taskId: fresh.id, attempt: 1, payload: 'new-payload' });
    s.complete(a.taskId, a.attempt, 'new-result');
    expect(await freshEnd).toMatchObject({ id: fresh.id, result: 'new-result', attempt: 1 });
    await s.close();
  });
});

/**
 * Regression (review finding): caller-controlled delays past setTimeout's limit (2^31-1 ms,
 * ~24.8 days). Node fires such a timer after 1 ms, so the "longest" drain was no drain at all:
 * `terminate(id, { drainTimeoutSeconds: 30 days })` cancelled the running task at once, as did a
 * pool's drain. The same held for the `local` executor's `abortGraceMs` (a hard abort at once)
 * and a `waitForTask` past the limit (capped: it timed out early). Those delays are now waited
 * out in steps (`setLongTimeout`); the health sweep's period is capped (it reads elapsed time).
 */
import { afterEach, describe, expect, it, vi } from 'vitest';
import { AgentFabric } from '../../src/fabric.js';
import { MAX_TIMER_MS, setLongTimeout } from '../../src/scheduler/task-waiters.js';
import { TaskStatus } from '../../src/task.js';

const THIRTY_DAYS_S = 30 * 86_400;

describe('setLongTimeout', () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  it('fires once the whole delay passed, not after 1 ms, and can be cancelled', () => {
    vi.useFakeTimers();
    const fired = vi.fn();
    setLongTimeout(fired, 2 * MAX_TIMER_MS + 5);
    vi.advanceTimersByTime(10);
    expect(fired).not.toHaveBeenCalled();
    vi.advanceTimersByTime(2 * MAX_TIMER_MS - 10);
    expect(fired).not.toHaveBeenCalled();
    vi.advanceTimersByTime(5);
    expect(fired).toHaveBeenCalledTimes(1);

    const cancelled = vi.fn();
    const cancel = setLongTimeout(cancelled, MAX_TIMER_MS + 1);
    vi.advanceTimersByTime(MAX_TIMER_MS);
    cancel();
    vi.advanceTimersByTime(MAX_TIMER_MS);
    expect(cancelled).not.toHaveBeenCalled();
  });
});

describe('drain timeouts past setTimeout’s limit', () => {
  let fabric: AgentFabric | undefined;
  afterEach(async () => {
    await fabric?.close();
    fabric = undefined;
  });

  /** An inprocess handler that finishes once `release` is called. */
  function gated(f: AgentFabric): { release: () => void; started: Promise<void> } {
    let release!: () => void;
    let began!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const started = new Promise<void>((r) => (began = r));
    f.registerInProcessHandler('gated', async () => {
      began();
      await gate;
      return 'done';
    });
    return { release, started };
  }

  /** Well past the 1 ms an overflowing timer fires after, the task still runs; released, it ends. */
  async function runsUntilReleased(
    f: AgentFabric,
    taskId: string,
    release: () => void,
  ): Promise<void> {
    await new Promise((r) => setTimeout(r, 200));
    expect((await f.getTask(taskId)).status).toBe(TaskStatus.RUNNING);
    release();
    expect((await f.waitForTask(taskId, { timeoutSeconds: 10 })).status).toBe(TaskStatus.COMPLETED);
  }

  it('terminate waits for the running task instead of cancelling it at once', async () => {
    fabric = new AgentFabric();
    const { release, started } = gated(fabric);
    const agent = await fabric.spawn({ model: 'm', name: 'a', executor: 'inprocess' });
    const task = await fabric.schedule({ agentId: agent.id, taskType: 'gated' });
    await started;
    const terminated = fabric.terminate(agent.id, { drainTimeoutSeconds: THIRTY_DAYS_S });
    await runsUntilReleased(fabric, task.id, release);
    await terminated;
  });

  it("a pool's drain waits for its running task", async () => {
    fabric = new AgentFabric();
    const { release, started } = gated(fabric);
    const pool = await fabric.createPool({
      poolId: 'p',
      model: 'm',
      executor: 'inprocess',
      minAgents: 1,
    });
    const task = await fabric.scheduleToPool(pool.poolId, 'gated', {});
    await started;
    const deleted = fabric.deletePool(pool.poolId, { drainTimeoutSeconds: THIRTY_DAYS_S });
    await runsUntilReleased(fabric, task.id, release);
    await deleted;
  });
});

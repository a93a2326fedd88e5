/**
 * A `local` (piscina) handler's stray callback — here a timer that throws after its own task
 * completed — fires in whatever batch its thread runs next (an idle worker thread waits
 * synchronously and runs no callbacks). Before, it crashed the thread in the middle of that
 * NEXT batch, possibly another agent's, whose task failed FABRIC_ERR_WORKER_CRASHED like a crash
 * of its own (alone in its batch it spent an attempt: with maxAttempts 1 it ended FAILED). Now
 * the worker tells the callback's batch (AsyncLocalStorage follows the timers, listeners and
 * promises a handler makes): a throw of a batch that has ended is reported on stderr and
 * dropped, and the batch running then is untouched; a throw of the running batch still crashes
 * it. Real AgentFabric, real piscina worker threads, real handler modules.
 */
import { afterEach, describe, expect, it, vi } from 'vitest';
import { AgentFabric } from '../../src/fabric.js';
import { TaskStatus } from '../../src/task.js';

const fixture = (name: string) => new URL(`../fixtures/handlers/${name}.mjs`, import.meta.url);

describe('local agents: a stray throw after a task ended', () => {
  let fabric: AgentFabric | undefined;
  afterEach(async () => {
    await fabric?.close();
    vi.restoreAllMocks();
  });

  it("leaves the next batch, another agent's, untouched and reports the stray", async () => {
    const stderr: string[] = [];
    const write = process.stderr.write.bind(process.stderr);
    vi.spyOn(process.stderr, 'write').mockImplementation((chunk, ...rest) => {
      stderr.push(String(chunk));
      return write(chunk as string, ...(rest as []));
    });
    fabric = new AgentFabric({}, { local: { maxThreads: 1, minThreads: 1 } });
    fabric.registerHandler('late', fixture('late-throw'));
    fabric.registerHandler('slow', fixture('slow-echo'));
    const hostile = await fabric.spawn({ model: 'm', name: 'hostile' });
    const victim = await fabric.spawn({ model: 'm', name: 'victim' });
    const bad = await fabric.schedule({
      agentId: hostile.id,
      taskType: 'late',
      payload: { delayMs: 100 },
    });
    // The task at fault ends as its handler returned.
    expect((await fabric.waitForTask(bad.id, { timeoutSeconds: 20 })).status).toBe(
      TaskStatus.COMPLETED,
    );
    // The thread is idle (its stray timer not run yet): it fires in the victim's batch, which
    // awaits for 300 ms. Before: FAILED, FABRIC_ERR_WORKER_CRASHED "late throw from a stray timer".
    const innocent = await fabric.schedule({
      agentId: victim.id,
      taskType: 'slow',
      payload: 'mine',
      maxAttempts: 1,
    });
    const done = await fabric.waitForTask(innocent.id, { timeoutSeconds: 20 });
    expect(done.error).toBeUndefined();
    expect(done.status).toBe(TaskStatus.COMPLETED);
    expect(done.result).toEqual({ echoed: 'mine' });
    expect(done.attempt).toBe(1);
    await vi.waitFor(() =>
      expect(stderr.join('')).toMatch(
        new RegExp(
          `threw after its batch ended \\(task types: late \\(agent ${hostile.id}\\)\\); dropped: Error: late throw from a stray timer`,
        ),
      ),
    );
  });

  it('a throw of the running batch still fails its own task', async () => {
    fabric = new AgentFabric({}, { local: { maxThreads: 1, minThreads: 1 } });
    fabric.registerHandler('late', fixture('late-throw'));
    const agent = await fabric.spawn({ model: 'm', name: 'a' });
    // Its stray timer fires while its own batch still runs (its handler awaits longer).
    const task = await fabric.schedule({
      agentId: agent.id,
      taskType: 'late',
      payload: { delayMs: 10, holdMs: 2000 },
      maxAttempts: 1,
    });
    const done = await fabric.waitForTask(task.id, { timeoutSeconds: 20 });
    expect(done.status).toBe(TaskStatus.FAILED);
    expect(done.error?.code).toBe('FABRIC_ERR_WORKER_CRASHED');
    expect(done.error?.message).toMatch(/late throw from a stray timer/);
  });
});

import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { AgentFabric } from '../../src/fabric.js';
import type { ExecutorSink } from '../../src/scheduler/executor.js';
import { PiscinaExecutor } from '../../src/scheduler/piscina-executor.js';
import type { TaskAssignment } from '../../src/task.js';
import { TaskStatus } from '../../src/task.js';

const handler = (name: string) => new URL(`../fixtures/handlers/${name}.mjs`, import.meta.url);

describe('local agents on piscina worker threads', () => {
  let fabric: AgentFabric;
  afterEach(async () => fabric?.close());

  it('runs real handler modules and reports results and handler errors', async () => {
    fabric = new AgentFabric({}, { local: { maxThreads: 2, abortGraceMs: 200 } });
    fabric.registerHandler('echo', handler('echo'));
    fabric.registerHandler('fail', fileURLToPath(handler('fail')));
    const agent = await fabric.spawn({ model: 'm', name: 'local' });
    const ok = await fabric.schedule({ agentId: agent.id, taskType: 'echo', payload: { x: 1 } });
    const bad = await fabric.schedule({
      agentId: agent.id,
      taskType: 'fail',
      payload: { what: 'it' },
    });
    const missing = await fabric.schedule({ agentId: agent.id, taskType: 'nobody-handles-this' });
    expect(await fabric.waitForTask(ok.id)).toMatchObject({
      status: TaskStatus.COMPLETED,
      result: { echoed: { x: 1 }, taskId: ok.id, attempt: 1 },
    });
    expect(await fabric.waitForTask(bad.id)).toMatchObject({
      status: TaskStatus.FAILED,
      error: { code: 'E_REFUSED', message: 'refused it' },
    });
    expect(await fabric.waitForTask(missing.id)).toMatchObject({
      status: TaskStatus.FAILED,
      error: { code: 'FABRIC_ERR_HANDLER_NOT_FOUND' },
    });
  });

  it('keeps a task SCHEDULED until a worker thread begins it: in the backlog, and behind a busy thread', async () => {
    // One thread that takes two batches at once: the second batch is handed to the thread while
    // the first blocks it; a third task waits in the executor's backlog.
    fabric = new AgentFabric(
      { maxConcurrentTasksPerAgent: 10 },
      { local: { maxThreads: 1, minThreads: 1, concurrentTasksPerWorker: 2 } },
    );
    fabric.registerHandler('block', handler('block'));
    fabric.registerHandler('echo', handler('echo'));
    const agent = await fabric.spawn({ model: 'm', name: 'local' });
    const gate = new SharedArrayBuffer(4);
    const blocker = await fabric.schedule({
      agentId: agent.id,
      taskType: 'block',
      payload: { gate },
    });
    // The first batch waits for the worker thread to start (seconds on a loaded machine).
    await vi.waitFor(
      async () => expect((await fabric.getTask(blocker.id)).status).toBe(TaskStatus.RUNNING),
      { timeout: 15_000 },
    );
    const handed = await fabric.schedule({ agentId: agent.id, taskType: 'echo', payload: 1 });
    await vi.waitFor(async () => expect((await fabric.getTask(handed.id)).attempt).toBe(1));
    const backlog = await fabric.schedule({ agentId: agent.id, taskType: 'echo', payload: 2 });
    await vi.waitFor(async () => expect((await fabric.getTask(backlog.id)).attempt).toBe(1));
    // Assigned to the agent and handed over, not begun: the thread is blocked.
    expect(await fabric.getTask(handed.id)).toMatchObject({
      status: TaskStatus.SCHEDULED,
      assignedAgentId: agent.id,
    });
    expect((await fabric.getTask(backlog.id)).status).toBe(TaskStatus.SCHEDULED);
    expect((await fabric.getTask(blocker.id)).status).toBe(TaskStatus.RUNNING);
    Atomics.store(new Int32Array(gate), 0, 1);
    Atomics.notify(new Int32Array(gate), 0);
    expect(await fabric.waitForTask(blocker.id)).toMatchObject({
      status: TaskStatus.COMPLETED,
      result: 'released',
    });
    expect(await fabric.waitForTask(handed.id)).toMatchObject({ status: TaskStatus.COMPLETED });
    expect(await fabric.waitForTask(backlog.id)).toMatchObject({ status: TaskStatus.COMPLETED });
  });

  it('cancels a task while it is SCHEDULED, in the backlog or handed to a busy thread: it never runs', async () => {
    fabric = new AgentFabric(
      { maxConcurrentTasksPerAgent: 10 },
      { local: { maxThreads: 1, minThreads: 1, concurrentTasksPerWorker: 2 } },
    );
    fabric.registerHandler('block', handler('block'));
    fabric.registerHandler('touch', handler('touch'));
    const agent = await fabric.spawn({ model: 'm', name: 'local' });
    const dir = mkdtempSync(join(tmpdir(), 'fabric-scheduled-'));
    const file = (name: string) => join(dir, name);
    try {
      const gate = new SharedArrayBuffer(4);
      const blocker = await fabric.schedule({
        agentId: agent.id,
        taskType: 'block',
        payload: { gate },
      });
      const status = async (id: string) => (await fabric.getTask(id)).status;
      await vi.waitFor(async () => expect(await status(blocker.id)).toBe(TaskStatus.RUNNING), {
        timeout: 15_000,
      });
      // Handed to the blocked thread (second batch slot), then one in the backlog.
      const handed = await fabric.schedule({
        agentId: agent.id,
        taskType: 'touch',
        payload: { path: file('handed') },
      });
      await vi.waitFor(async () => expect(await status(handed.id)).toBe(TaskStatus.SCHEDULED));
      const backlog = await fabric.schedule({
        agentId: agent.id,
        taskType: 'touch',
        payload: { path: file('backlog') },
      });
      await vi.waitFor(async () => expect(await status(backlog.id)).toBe(TaskStatus.SCHEDULED));
      await fabric.cancelTask(handed.id);
      await fabric.cancelTask(backlog.id);
      const after = await fabric.schedule({
        agentId: agent.id,
        taskType: 'touch',
        payload: { path: file('after') },
      });
      Atomics.store(new Int32Array(gate), 0, 1);
      Atomics.notify(new Int32Array(gate), 0);
      await fabric.waitForTask(blocker.id);
      // The thread took the handed batch before this one: by now it has begun and passed it.
      expect(await fabric.waitForTask(after.id)).toMatchObject({ status: TaskStatus.COMPLETED });
      expect(existsSync(file('after'))).toBe(true);
      expect(existsSync(file('handed'))).toBe(false);
      expect(existsSync(file('backlog'))).toBe(false);
      expect(await fabric.getTask(handed.id)).toMatchObject({ status: TaskStatus.CANCELLED });
      expect(await fabric.getTask(backlog.id)).toMatchObject({ status: TaskStatus.CANCELLED });

      // The flags region of the cancelled batch serves a later batch (one goes out behind a
      // busy thread again): the abort flag it held must not stop that batch's task.
      const gate2 = new SharedArrayBuffer(4);
      const blocker2 = await fabric.schedule({
        agentId: agent.id,
        taskType: 'block',
        payload: { gate: gate2 },
      });
      await vi.waitFor(async () => expect(await status(blocker2.id)).toBe(TaskStatus.RUNNING), {
        timeout: 15_000,
      });
      const reused = await fabric.schedule({
        agentId: agent.id,
        taskType: 'touch',
        payload: { path: file('reused') },
      });
      await vi.waitFor(async () => expect(await status(reused.id)).toBe(TaskStatus.SCHEDULED));
      Atomics.store(new Int32Array(gate2), 0, 1);
      Atomics.notify(new Int32Array(gate2), 0);
      expect(await fabric.waitForTask(reused.id)).toMatchObject({ status: TaskStatus.COMPLETED });
      expect(existsSync(file('reused'))).toBe(true);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('fails only the tasks of a crashing worker; its batch-mates complete', async () => {
    fabric = new AgentFabric({ maxConcurrentTasksPerAgent: 50 }, { local: { maxThreads: 1 } });
    fabric.registerHandler('crash', handler('crash'));
    const agent = await fabric.spawn({ model: 'm', name: 'local' });
    const tasks = await Promise.all(
      Array.from({ length: 20 }, (_, n) =>
        fabric.schedule({
          agentId: agent.id,
          taskType: 'crash',
          payload: { n, crash: n === 7 },
          maxAttempts: 1,
        }),
      ),
    );
    const done = await Promise.all(
      tasks.map((t) => fabric.waitForTask(t.id, { timeoutSeconds: 30 })),
    );
    expect(done[7]).toMatchObject({
      status: TaskStatus.FAILED,
      error: { code: 'FABRIC_ERR_WORKER_CRASHED' },
    });
    const others = done.filter((_, i) => i !== 7);
    expect(others.every((t) => t.status === TaskStatus.COMPLETED)).toBe(true);
    expect(others.every((t) => t.attempt === 1)).toBe(true);
  });

  it('fails a task whose result cannot leave its worker thread at once, with a typed error; its batch-mates complete', async () => {
    // A function or symbol in a result cannot be cloned back to the main thread. That used to
    // crash the thread (piscina throws the clone error there), spend every attempt as a "worker
    // crash" and fail with `FABRIC_ERR_WORKER_CRASHED: worker failed: [object Object]`.
    fabric = new AgentFabric({ maxConcurrentTasksPerAgent: 50 }, { local: { maxThreads: 1 } });
    fabric.registerHandler('unclonable', handler('unclonable'));
    const agent = await fabric.spawn({ model: 'm', name: 'local' });
    const kinds = ['ok', 'function', 'ok', 'symbol', 'ok', 'nested', 'ok'];
    const tasks = await Promise.all(
      kinds.map((kind, n) =>
        fabric.schedule({
          agentId: agent.id,
          taskType: 'unclonable',
          payload: { kind, n },
          maxAttempts: 3,
        }),
      ),
    );
    const done = await Promise.all(
      tasks.map((t) => fabric.waitForTask(t.id, { timeoutSeconds: 30 })),
    );
    done.forEach((t, n) => {
      if (kinds[n] === 'ok') {
        expect(t).toMatchObject({ status: TaskStatus.COMPLETED, attempt: 1, result: { ok: n } });
      } else {
        expect(t).toMatchObject({
          status: TaskStatus.FAILED,
          attempt: 1,
          error: { code: 'FABRIC_ERR_INVALID_ARGUMENT' },
        });
        expect(t.error!.message).toMatch(/result could not be sent from its worker thread/);
      }
    });
    expect(fabric.scheduler.stats().retriedTasks).toBe(0);
  });

  it('aborts a handler at its timeout, and terminates a worker whose handler ignores the abort', async () => {
    fabric = new AgentFabric({}, { local: { maxThreads: 1, abortGraceMs: 100 } });
    fabric.registerHandler('wait-abort', handler('wait-abort'));
    fabric.registerHandler('spin', handler('spin'));
    fabric.registerHandler('echo', handler('echo'));
    const agent = await fabric.spawn({ model: 'm', name: 'local' });
    const polite = await fabric.schedule({
      agentId: agent.id,
      taskType: 'wait-abort',
      timeoutSeconds: 0.2,
    });
    expect(await fabric.waitForTask(polite.id)).toMatchObject({ status: TaskStatus.TIMEOUT });
    const rude = await fabric.schedule({
      agentId: agent.id,
      taskType: 'spin',
      timeoutSeconds: 0.2,
    });
    expect(await fabric.waitForTask(rude.id)).toMatchObject({ status: TaskStatus.TIMEOUT });
    // The only worker thread was stuck; a fresh one serves the next task.
    const after = await fabric.schedule({ agentId: agent.id, taskType: 'echo', payload: 1 });
    expect(await fabric.waitForTask(after.id, { timeoutSeconds: 30 })).toMatchObject({
      status: TaskStatus.COMPLETED,
    });
  });

  it('aborts an older attempt still running beside a newer attempt of the same task', async () => {
    // Two threads, one batch each: attempt 1 of `x` waits for its abort on one, attempt 2 blocks
    // the other, and `y` waits in the backlog until a thread is free.
    const executor = new PiscinaExecutor({
      maxThreads: 2,
      minThreads: 2,
      concurrentTasksPerWorker: 1,
    });
    executor.registerHandler('wait', handler('wait-abort'));
    executor.registerHandler('block', handler('block'));
    executor.registerHandler('echo', handler('echo-payload'));
    const reports: string[] = [];
    const sink: ExecutorSink = {
      complete: (id, attempt, result) => {
        reports.push(`complete ${id}#${attempt} ${String(result)}`);
      },
      fail: (id, attempt, error) => reports.push(`fail ${id}#${attempt} ${error.code}`),
      started: (id, attempt) => reports.push(`started ${id}#${attempt}`),
      progress: () => undefined,
    };
    executor.bind(sink);
    const task = (taskId: string, attempt: number, taskType: string, payload: unknown) =>
      ({
        taskId,
        attempt,
        agentId: 'a',
        taskType,
        payload,
        deadline: undefined,
        timeoutSeconds: 60,
      }) satisfies TaskAssignment;
    const gate = new SharedArrayBuffer(4);
    try {
      executor.dispatch([task('x', 1, 'wait', null)]);
      await vi.waitFor(() => expect(reports).toContain('started x#1'), { timeout: 15_000 });
      executor.dispatch([task('x', 2, 'block', { gate })]);
      await vi.waitFor(() => expect(reports).toContain('started x#2'), { timeout: 15_000 });
      executor.dispatch([task('y', 1, 'echo', 'y')]);
      executor.abort('x', 1, { code: 'FABRIC_ERR_TIMEOUT', message: 'timed out' });
      // Attempt 1 ends at its abort and frees its thread for `y`; attempt 2 still blocks.
      await vi.waitFor(() => expect(reports).toContain('complete y#1 y'), { timeout: 15_000 });
      Atomics.store(new Int32Array(gate), 0, 1);
      Atomics.notify(new Int32Array(gate), 0);
      await vi.waitFor(() => expect(reports).toContain('complete x#2 released'), {
        timeout: 15_000,
      });
      // The aborted attempt is not reported: the scheduler already ended it.
      expect(reports.filter((r) => !r.startsWith('started'))).toEqual([
        'complete y#1 y',
        'complete x#2 released',
      ]);
    } finally {
      Atomics.store(new Int32Array(gate), 0, 1);
      Atomics.notify(new Int32Array(gate), 0);
      await executor.close();
    }
  });

  it('lets the process exit after close(): no dangling timers, threads or claims', async () => {
    const child = spawn(
      process.execPath,
      ['--import', 'tsx', fileURLToPath(new URL('../fixtures/close-exits.ts', import.meta.url))],
      {
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    const guard = setTimeout(() => child.kill('SIGKILL'), 20_000);
    const code = await new Promise<number | null>((r) => child.on('exit', (c) => r(c)));
    clearTimeout(guard);
    expect(out).toContain('closed');
    expect(code).toBe(0);
  });
});

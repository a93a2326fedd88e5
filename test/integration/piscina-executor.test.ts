import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { AgentFabric } from '../../src/fabric.js';
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

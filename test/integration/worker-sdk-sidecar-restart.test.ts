/**
 * A FabricWorker over MCP whose sidecar restarts while a handler runs: the real `agent-fabric
 * serve` with its SQLite state file, SIGKILLed and started again on the same port. The new
 * process does not know the worker's MCP session (404), and it retried the attempt the worker
 * held, telling the agent with the `endedTasks` of its next heartbeat. Before, the worker's
 * heartbeats failed silently on the unknown session, so the old attempt's handler ran on beside
 * the retry, and `run()` rejected at its next call. Now the worker opens a new session with the
 * same credential (as the stdio bridge does), its heartbeat learns that the attempt ended and
 * aborts that handler, and it goes on serving: the retried attempt and a new task each end once
 * in the store, COMPLETED.
 *
 * And an ended attempt's notice outlives the sidecar: a task the worker holds is cancelled and the
 * sidecar stops before the worker's next heartbeat. Before, the notice lived only in the stopped
 * process: the one started again found the task CANCELLED and owed the worker nothing, so the
 * handler ran on. Now the owed abort is in the state file (kind `owed_abort`), the worker's first
 * heartbeat to the new process aborts the handler, and the record is gone once told.
 */
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, describe, expect, it } from 'vitest';
import { callApi } from '../fixtures/api.js';
import { ADMIN_TOKEN, until } from '../fixtures/gateway/harness.js';
import { cleanUp, serve, stop, type Running } from '../fixtures/state/serve.js';
import { agentIdOf, ENV, oneWorkerDir } from '../fixtures/state/one-worker.js';
import { runUntilAborted } from '../fixtures/worker-until-aborted.js';
import { FabricWorker, RemoteFabricError } from '../../src/worker/fabric-worker.js';

afterAll(cleanUp);

interface Task {
  taskId: string;
  status: string;
  attempt?: number;
  result?: unknown;
  error?: { code: string };
}

/** Schedules a task `taskType` with payload `{ n }` on `agentId` that may be tried 3 times. */
async function schedule(r: Running, agentId: string, n: number, taskType = 't'): Promise<string> {
  const res = await callApi(
    r.url,
    'FabricService/ScheduleTask',
    { agentId, taskType, payload: { n }, options: { maxAttempts: 3, timeout: '600s' } },
    ADMIN_TOKEN,
  );
  expect(res.status).toBe(200);
  return ((await res.json()) as { task: Task }).task.taskId;
}

/** The owed-abort records of the state file in `dir` (read while no `serve` runs on it). */
function owedOnDisk(dir: string): unknown[] {
  const db = new Database(join(dir, '.fabric', 'state.db'), { readonly: true });
  try {
    return db
      .prepare<[], { data: string }>("SELECT data FROM records WHERE kind = 'owed_abort'")
      .all()
      .map((r) => JSON.parse(r.data) as unknown);
  } finally {
    db.close();
  }
}

/** Schedules a `job` task on `agentId`; its id. */
async function taskOf(r: Running, taskId: string): Promise<Task> {
  const res = await callApi(r.url, 'FabricService/GetTask', { taskId }, ADMIN_TOKEN);
  expect(res.status).toBe(200);
  return ((await res.json()) as { task: Task }).task;
}

describe('FabricWorker over MCP when its sidecar restarts', () => {
  it('opens a new session, aborts the attempt the restarted sidecar ended, and serves on', async () => {
    const dir = await oneWorkerDir('worker-restart');
    const first = await serve(dir, ENV);
    const agentId = agentIdOf(first);
    const worker = await FabricWorker.connect({
      url: first.url,
      credential: first.token,
      heartbeatSeconds: 0.2,
      claimWaitSeconds: 1,
    });
    /** Every run of a handler, with how it ended. */
    const runs: { n: unknown; aborted?: unknown }[] = [];
    let firstRun = true;
    const stopRun = new AbortController();
    let runEnded: unknown = 'running';
    const running = worker
      .run(
        {
          t: (payload, ctx) => {
            const run: (typeof runs)[number] = { n: (payload as { n: unknown }).n };
            runs.push(run);
            if (!firstRun) return { n: run.n };
            firstRun = false;
            // The first attempt runs until something aborts it.
            return new Promise((_resolve, reject) =>
              ctx.signal.addEventListener('abort', () => {
                run.aborted = ctx.signal.reason;
                reject(ctx.signal.reason as Error);
              }),
            );
          },
        },
        { signal: stopRun.signal },
      )
      .then(
        () => (runEnded = 'resolved'),
        (err: unknown) => (runEnded = err),
      );
    try {
      const held = await schedule(first, agentId, 1);
      await until(() => runs.length === 1, 30_000);
      expect(await stop(first, 'SIGKILL')).toBe(null);
      const second = await serve(dir, ENV);
      expect(second.url).toBe(first.url);
      expect(second.token).toBe(first.token);

      // The restarted sidecar retried the attempt the worker held and told it so: its handler
      // was aborted with the fabric's notice, not left running beside the retry.
      await until(() => runs[0]!.aborted !== undefined, 30_000);
      expect(runs[0]!.aborted).toBeInstanceOf(RemoteFabricError);
      expect(runs[0]!.aborted).toMatchObject({
        code: 'FABRIC_ERR_AGENT_UNAVAILABLE',
        details: { taskId: held, attempt: 1 },
      });
      // The retry came to this worker (on its new session) and completed.
      await until(async () => (await taskOf(second, held)).status === 'TASK_STATUS_COMPLETED');
      expect(await taskOf(second, held)).toMatchObject({ attempt: 2, result: { n: 1 } });

      // And it serves new work.
      const fresh = await schedule(second, agentId, 2);
      await until(async () => (await taskOf(second, fresh)).status === 'TASK_STATUS_COMPLETED');
      expect(await taskOf(second, fresh)).toMatchObject({ attempt: 1, result: { n: 2 } });
      expect(runEnded).toBe('running');
      // Each attempt ran once: the aborted one, its retry, the new task.
      expect(runs.map((r) => r.n)).toEqual([1, 1, 2]);
    } finally {
      stopRun.abort();
      await running;
      await worker.close();
    }
    expect(runEnded).toBe('resolved');
  }, 120_000);

  it('tells the worker of an attempt the sidecar ended and stopped before telling it', async () => {
    const dir = await oneWorkerDir('worker-ended-restart');
    const first = await serve(dir, ENV);
    const agentId = agentIdOf(first);
    // Heartbeats far apart: the cancel and the stop fall between two of them.
    const worker = await FabricWorker.connect({
      url: first.url,
      credential: first.token,
      heartbeatSeconds: 4,
      claimWaitSeconds: 1,
    });
    const run = runUntilAborted(worker);
    let second: Running | undefined;
    try {
      const held = await schedule(first, agentId, 1, 'job');
      await until(run.started, 30_000);
      const cancelled = await callApi(
        first.url,
        'FabricService/CancelTask',
        { taskId: held, reason: 'not wanted' },
        ADMIN_TOKEN,
      );
      expect(cancelled.status).toBe(200);
      expect(await stop(first, 'SIGTERM')).toBe(0);
      expect(run.reason()).toBeUndefined(); // no heartbeat reached the first process since the cancel
      // The abort it owed the agent is on disk, committed with the cancel.
      expect(owedOnDisk(dir)).toEqual([
        {
          agentId,
          aborts: [
            { taskId: held, attempt: 1, code: 'FABRIC_ERR_CANCELLED', message: 'not wanted' },
          ],
        },
      ]);
      second = await serve(dir, ENV);

      // The worker's heartbeat to the new process carries the notice the old one owed.
      await until(() => run.reason() !== undefined, 30_000);
      expect(run.reason()).toBeInstanceOf(RemoteFabricError);
      expect(run.reason()).toMatchObject({
        code: 'FABRIC_ERR_CANCELLED',
        details: { taskId: held, attempt: 1 },
      });
      // A late result of the ended attempt is refused; the store keeps the one end.
      await expect(
        worker.completeTask({ taskId: held, attempt: 1 }, { late: true }),
      ).rejects.toMatchObject({ code: 'FABRIC_ERR_TASK_STATE' });
      expect(await taskOf(second, held)).toMatchObject({
        status: 'TASK_STATUS_CANCELLED',
        attempt: 1,
        error: { code: 'FABRIC_ERR_CANCELLED' },
      });
      expect(await stop(second, 'SIGTERM')).toBe(0);
      second = undefined;
      // Told: no longer owed, on disk either.
      expect(owedOnDisk(dir)).toEqual([]);
    } finally {
      run.stop.abort();
      await run.running;
      await worker.close();
      if (second !== undefined) await stop(second, 'SIGTERM');
    }
  }, 120_000);
});

/**
 * MCP tasks across a restart after a step of the wall clock the running sidecar saw. A task's
 * ttl counts on the monotonic clock while the sidecar runs, but from its stored `createdAt`
 * (wall clock) across a restart; the state file's clock mark follows a step the running sidecar
 * sees, so the next open moves nothing. Before, a step two hours ahead while a task with an
 * hour's ttl was kept, then a restart on the same boot, forgot the task at once (its result,
 * or its parked call, lost); a step back kept it two hours past its ttl. Now the store moves
 * every MCP task's `createdAt` and `updatedAt` by the step it sees, in memory at once and in
 * the file with the mark that follows (as it moves the running attempts' starts).
 *
 * A real sidecar over a real SQLite state file, a real server-everything upstream, the official
 * SDK client; `Date` and `performance.now` are the test's (the running sidecar's clocks, keeping
 * pace with real time), timers real; the state file's boot-time clock is the machine's.
 */
import { copyFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { CallToolResultSchema, ErrorCode } from '@modelcontextprotocol/sdk/types.js';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import { CLOCK_MARK_KEY } from '../../src/store/store-clock.js';
import {
  agentToken,
  closeSidecar,
  DEFAULT_ALLOW,
  EVERYTHING_BIN,
  httpClient,
  startTestSidecar,
  tempDir,
  text,
  until,
} from '../fixtures/gateway/harness.js';
import { callAsTask, rpcError } from '../fixtures/gateway/tasks.js';
import { toolTasksOnDisk } from '../fixtures/state/tool-task-rows.js';

const HOUR = 3_600_000;
const T0 = Date.UTC(2026, 2, 2, 10, 0, 0);

/** The wall clock of the clock mark in the state file at `path`. */
function markWallOnDisk(path: string): number {
  const db = new Database(path, { readonly: true, fileMustExist: true });
  try {
    const row = db
      .prepare<[string], { value: string }>('SELECT value FROM meta WHERE key = ?')
      .get(CLOCK_MARK_KEY);
    return (JSON.parse(row!.value) as { wall: number }).wall;
  } finally {
    db.close();
  }
}

describe('MCP tasks across a restart after a wall-clock step the sidecar saw', () => {
  let sidecar: Sidecar | undefined;
  let client: Client | undefined;
  let dir: string;

  const start = async (statePath: string): Promise<Client> => {
    sidecar = await startTestSidecar({
      state: { path: statePath },
      upstreams: {
        ev: { command: process.execPath, args: [EVERYTHING_BIN, 'stdio'], stderr: 'ignore' },
      },
      policies: [
        {
          name: 'approvals',
          priority: 100,
          rules: [
            { tool: 'ev__echo', action: 'require_approval', conditions: { message: 'park' } },
          ],
        },
        DEFAULT_ALLOW,
      ],
      approvals: { timeoutSeconds: 86_400 },
      agents: [{ name: 'worker' }],
      gateway: { shutdownGraceSeconds: 0 },
    });
    client = await httpClient(sidecar.url!, agentToken(sidecar, 'worker'));
    return client;
  };
  const stop = async (): Promise<void> => {
    await client?.close();
    await closeSidecar(sidecar);
    client = sidecar = undefined;
  };
  const restart = async (path: string): Promise<Client> => {
    await stop();
    return start(path);
  };
  /**
   * Steps the wall clock by `ms`; a second passes (the clock's next check) and the store's tick
   * writes the mark of the stepped clock (no commit needed).
   */
  const step = async (path: string, ms: number): Promise<void> => {
    vi.setSystemTime(Date.now() + ms);
    vi.advanceTimersByTime(1000);
    const stepped = Date.now();
    // (Within a minute of it: the mark from before a step two hours back is past it too.)
    await until(() => Math.abs(markWallOnDisk(path) - stepped) < 60_000);
  };
  /** A task with an hour's ttl that completed (its result kept for `tasks/result`). */
  const completed = async (c: Client): Promise<string> => {
    const { task } = await callAsTask(c, 'ev__echo', { message: 'kept' }, HOUR);
    const r = await c.experimental.tasks.getTaskResult(task.taskId, CallToolResultSchema);
    expect(text(r)).toBe('Echo: kept');
    return task.taskId;
  };

  beforeEach(() => {
    // The test's clocks keep pace with real time (the boot-time clock the store reads is the
    // machine's: a fake clock standing still would look to it like a suspend).
    vi.useFakeTimers({ toFake: ['Date', 'performance'], shouldAdvanceTime: true });
    vi.setSystemTime(T0);
    dir = tempDir('tool-tasks-clock');
  });
  afterEach(async () => {
    await stop();
    vi.useRealTimers();
  });

  it('set ahead two hours, then a clean restart: a finished task keeps its result and the hour its ttl had left', async () => {
    const path = join(dir, 'state.db');
    const id = await completed(await start(path));
    const createdAt = toolTasksOnDisk(path)[0]!.createdAt;
    await step(path, 2 * HOUR);
    expect((await client!.experimental.tasks.getTask(id)).status).toBe('completed');
    const c = await restart(path);
    // Before: createdAt + ttl was two hours past on the stepped clock; the task was forgotten.
    const r = await c.experimental.tasks.getTaskResult(id, CallToolResultSchema);
    expect(text(r)).toBe('Echo: kept');
    expect(toolTasksOnDisk(path)[0]!.createdAt - createdAt).toBeCloseTo(2 * HOUR, -3);
    // It still ends when its hour does.
    vi.advanceTimersByTime(HOUR);
    expect((await rpcError(c.experimental.tasks.getTask(id))).code).toBe(ErrorCode.InvalidParams);
  });

  it('set ahead two hours while parked on an approval, then a restart: it resumes, still waiting', async () => {
    const path = join(dir, 'state.db');
    const c0 = await start(path);
    const { task } = await callAsTask(c0, 'ev__echo', { message: 'park' }, HOUR);
    await until(
      async () => (await c0.experimental.tasks.getTask(task.taskId)).status === 'input_required',
    );
    await step(path, 2 * HOUR);
    const c = await restart(path);
    expect((await c.experimental.tasks.getTask(task.taskId)).status).toBe('input_required');
    expect(toolTasksOnDisk(path)).toMatchObject([
      { taskId: task.taskId, status: 'input_required' },
    ]);
  });

  it('set back two hours, then a clean restart: the task still ends an hour after it was made', async () => {
    const path = join(dir, 'state.db');
    const id = await completed(await start(path));
    const createdAt = toolTasksOnDisk(path)[0]!.createdAt;
    await step(path, -2 * HOUR);
    const c = await restart(path);
    expect((await c.experimental.tasks.getTask(id)).status).toBe('completed');
    expect(toolTasksOnDisk(path)[0]!.createdAt - createdAt).toBeCloseTo(-2 * HOUR, -3);
    // Before: it lived until three hours on.
    vi.advanceTimersByTime(HOUR);
    expect((await rpcError(c.experimental.tasks.getTask(id))).code).toBe(ErrorCode.InvalidParams);
  });

  it('set ahead two hours, then a crash: the file as the crash left it keeps the task', async () => {
    const path = join(dir, 'state.db');
    const id = await completed(await start(path));
    await step(path, 2 * HOUR);
    // The store's tick wrote the mark of the stepped clock; the crash image is the file and its
    // WAL as they are now, the sidecar still running.
    const image = join(dir, 'crash.db');
    copyFileSync(path, image);
    if (existsSync(`${path}-wal`)) copyFileSync(`${path}-wal`, `${image}-wal`);
    const c = await restart(image);
    const r = await c.experimental.tasks.getTaskResult(id, CallToolResultSchema);
    expect(text(r)).toBe('Echo: kept');
  });
});

/**
 * Regression (review finding): `timeoutSeconds` was checked as a finite positive number, then
 * multiplied by 1000: 1e306 passed and became timeoutMs = Infinity. The task was accepted live,
 * the SQLite store wrote the non-finite number as NULL, and `TaskRecord.fromData` refused a NULL
 * timeoutMs — so the next AgentFabric on that state file could not start at all. Now a timeout
 * (a task's, or the configured default) whose milliseconds are not finite is refused with
 * InvalidArgumentError, and a stored task record that cannot be read (a file written before the
 * fix) no longer stops the start: that task alone is held FAILED, with the reason in its error
 * and a process warning; the stored record is left untouched.
 */
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '../../src/errors.js';
import { AgentFabric } from '../../src/fabric.js';
import { MAX_TASK_TIMEOUT_SECONDS } from '../../src/scheduler/agent-scheduler.js';
import { SqliteStore } from '../../src/store/sqlite-store.js';
import { TaskStatus } from '../../src/task.js';
import { tempDir } from '../fixtures/gateway/harness.js';

const fabrics: AgentFabric[] = [];
afterEach(async () => {
  for (const f of fabrics.splice(0)) await f.close().catch(() => undefined);
});

async function open(path: string): Promise<AgentFabric> {
  const store = await SqliteStore.open(path);
  let fabric: AgentFabric;
  try {
    fabric = new AgentFabric({}, { store: store as never });
  } catch (error) {
    await store.close().catch(() => undefined);
    throw error;
  }
  fabrics.push(fabric);
  return fabric;
}

async function close(fabric: AgentFabric): Promise<void> {
  fabrics.splice(fabrics.indexOf(fabric), 1);
  await fabric.close();
}

describe('task timeouts whose milliseconds are not finite', () => {
  it('are refused at schedule time, for pools and agents; the state file stays readable', async () => {
    const path = join(tempDir('timeout-overflow'), 'state.db');
    const first = await open(path);
    const pool = await first.createPool({
      poolId: 'p',
      model: 'm',
      executor: 'inprocess',
      minAgents: 1,
    });
    const agent = await first.spawn({ model: 'm', name: 'r', executor: 'remote' });
    await expect(
      first.scheduleToPool(pool.poolId, 't', {}, { timeoutSeconds: 1e306 }),
    ).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(
      first.schedule({ agentId: agent.id, taskType: 't', timeoutSeconds: Number.MAX_VALUE }),
    ).rejects.toThrow(/timeoutSeconds must be at most/);
    // The largest a protobuf Duration holds is accepted and stored as it is; one more is not
    // (test/security/operator-input.test.ts has why).
    await expect(
      first.schedule({
        agentId: agent.id,
        taskType: 't',
        timeoutSeconds: MAX_TASK_TIMEOUT_SECONDS + 1,
      }),
    ).rejects.toThrow(/timeoutSeconds must be at most 315576000000 seconds/);
    const ok = await first.schedule({
      agentId: agent.id,
      taskType: 't',
      timeoutSeconds: MAX_TASK_TIMEOUT_SECONDS,
    });
    await close(first);

    const second = await open(path);
    expect((await second.getTask(ok.id)).status).toBe(TaskStatus.PENDING);
  });

  it('a configured defaultTimeoutSeconds is refused the same way', () => {
    expect(() => new AgentFabric({ defaultTimeoutSeconds: 1e306 })).toThrow(
      /defaultTimeoutSeconds must be at most/,
    );
  });
});

describe('a stored task record that cannot be read', () => {
  it('fails that task alone, with the reason; the fabric starts and the others are kept', async () => {
    const path = join(tempDir('timeout-overflow'), 'state.db');
    const first = await open(path);
    const agent = await first.spawn({ model: 'm', name: 'r', executor: 'remote' });
    const bad = await first.schedule({ agentId: agent.id, taskType: 'bad', payload: { n: 1 } });
    const good = await first.schedule({ agentId: agent.id, taskType: 'good' });
    await close(first);
    // What the old build wrote for timeoutSeconds: 1e306.
    const db = new Database(path);
    db.prepare('UPDATE tasks SET timeout_ms = NULL WHERE id = ?').run(bad.id);
    db.close();

    const warnings: Error[] = [];
    const onWarning = (w: Error) => warnings.push(w);
    process.on('warning', onWarning);
    let second: AgentFabric;
    try {
      second = await open(path);
      // Warnings are emitted on the next tick.
      await new Promise((r) => setImmediate(r));
    } finally {
      process.off('warning', onWarning);
    }
    const failed = await second.getTask(bad.id);
    expect(failed.status).toBe(TaskStatus.FAILED);
    expect(failed.taskType).toBe('bad');
    expect(failed.error?.code).toBe('FABRIC_ERR_INTERNAL');
    expect(failed.error?.message).toMatch(/timeoutMs must be a finite number/);
    expect(warnings.map((w) => (w as Error & { code?: string }).code)).toContain(
      'FABRIC_TASK_UNREADABLE',
    );
    expect((await second.getTask(good.id)).status).toBe(TaskStatus.PENDING);
    const claimed = await second.claimTask(agent.id);
    expect(claimed?.taskId).toBe(good.id);
    await close(second);

    // The stored record is left as it was (for an operator to look at), and read the same way.
    const check = new Database(path, { readonly: true });
    const row = check.prepare('SELECT timeout_ms FROM tasks WHERE id = ?').get(bad.id) as {
      timeout_ms: number | null;
    };
    check.close();
    expect(row.timeout_ms).toBeNull();
    const third = await open(path);
    expect((await third.getTask(bad.id)).status).toBe(TaskStatus.FAILED);
  });
});

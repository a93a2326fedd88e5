/**
 * A task whose schedule could not be committed never runs, even on an in-process agent that
 * would start it in the same turn: the failed commit withdraws it before the dispatch pass.
 * Real SqliteStore file; the disk is "full" for this test process alone (its file size limit set
 * to 0 with `prlimit --pid`, lifted in `finally`; vitest's forks talk over pipes, which the
 * limit does not touch).
 */
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, expect, it } from 'vitest';
import { AgentFabric } from '../../src/fabric.js';
import type { AgentRecord } from '../../src/lifecycle/lifecycle-manager.js';
import type { PoolRecord } from '../../src/pools/pool-manager.js';
import type { TaskRecord } from '../../src/scheduler/task-record.js';
import { SqliteStore } from '../../src/store/sqlite-store.js';
import { TaskStatus } from '../../src/task.js';
import { tempDir, until } from '../fixtures/gateway/harness.js';

const fabrics: AgentFabric[] = [];
afterEach(async () => {
  for (const f of fabrics.splice(0)) await f.close();
});

function diskFull(full: boolean): void {
  execFileSync('prlimit', [`--pid=${process.pid}`, `--fsize=${full ? 0 : 'unlimited'}:`]);
}

it('a task whose first commit failed is withdrawn before an in-process agent can run it', async () => {
  const path = join(tempDir('state-commit-failed-inprocess'), 'state.db');
  const store = await SqliteStore.open<TaskRecord, AgentRecord, PoolRecord>(path);
  const fabric = new AgentFabric({}, { store });
  fabrics.push(fabric);
  let runs = 0;
  fabric.registerInProcessHandler('count', () => ++runs);
  const agent = await fabric.spawn({ name: 'w', model: 'm', executor: 'inprocess' });

  let submitted: string;
  let refused: unknown;
  try {
    diskFull(true);
    // The synchronous way in returns the id before the commit; the awaited one waits for it.
    submitted = fabric.scheduler.submit({ agentId: agent.id }, 'count', { n: 1 });
    refused = await fabric
      .schedule({ agentId: agent.id, taskType: 'count', payload: { n: 2 } })
      .catch((error: unknown) => error);
    for (let i = 0; i < 5; i++) await new Promise((resolve) => setImmediate(resolve));
  } finally {
    diskFull(false);
  }
  expect(refused).toMatchObject({ code: 'FABRIC_ERR_STATE_STORE' });
  expect((refused as Error).message).toContain('was not scheduled');
  expect(runs).toBe(0);
  const listed = (await fabric.listTasks()).items;
  expect(listed).toHaveLength(2);
  for (const t of listed) {
    expect(t.status).toBe(TaskStatus.CANCELLED);
    expect(t.error?.code).toBe('FABRIC_ERR_STATE_STORE');
  }
  expect(listed.map((t) => t.id)).toContain(submitted);

  // Space is back: the store writes the withdrawn tasks (as cancelled) by itself.
  await until(() => store.lastError === undefined, 20_000);
  const db = new Database(path, { readonly: true });
  try {
    const rows = db.prepare<[], { id: string; status: string }>('SELECT * FROM tasks').all();
    expect(rows.map((r) => r.id).sort()).toEqual(listed.map((t) => t.id).sort());
  } finally {
    db.close();
  }
  expect(runs).toBe(0);
});

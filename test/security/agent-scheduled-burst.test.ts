/**
 * `maxScheduledTasksPerAgent` against concurrent calls of `AgentFabric.scheduleFromAgent`: each
 * call was checked against the agent's count before any was added to it (the add came after the
 * schedule's commit was awaited), so calls made together queued as many tasks as there were
 * calls, in memory and with a SQLite store alike.
 */
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { AgentFabric } from '../../src/fabric.js';
import type { AgentRecord } from '../../src/lifecycle/lifecycle-manager.js';
import type { PoolRecord } from '../../src/pools/pool-manager.js';
import type { TaskRecord } from '../../src/scheduler/task-record.js';
import { SqliteStore } from '../../src/store/sqlite-store.js';
import { tempDir } from '../fixtures/gateway/harness.js';

describe('maxScheduledTasksPerAgent under a burst of concurrent calls', () => {
  it('holds through the library, in memory and with a SQLite store', async () => {
    const path = join(tempDir('agent-scheduled-burst'), 'state.db');
    for (const durable of [false, true]) {
      const store = durable
        ? await SqliteStore.open<TaskRecord, AgentRecord, PoolRecord>(path)
        : undefined;
      const fabric = new AgentFabric(
        { maxScheduledTasksPerAgent: 2 },
        store === undefined ? {} : { store },
      );
      await fabric.start();
      try {
        await fabric.createPool({ poolId: 'crew', model: 'm', executor: 'remote' });
        const settled = await Promise.allSettled(
          Array.from({ length: 6 }, (_, i) => fabric.scheduleFromAgent('a1', 'crew', 't', i)),
        );
        expect(settled.filter((r) => r.status === 'fulfilled')).toHaveLength(2);
        for (const r of settled.filter((s) => s.status === 'rejected')) {
          expect(String((r as PromiseRejectedResult).reason)).toMatch(/maxScheduledTasksPerAgent/);
        }
        expect(fabric.scheduler.listTasks().filter((t) => t.tenant === 'agent:a1')).toHaveLength(2);
      } finally {
        await fabric.close();
      }
    }
    // The state file holds the two, no more.
    const store = await SqliteStore.open<TaskRecord, AgentRecord, PoolRecord>(path);
    try {
      expect([...store.tasks.values()].filter((t) => t.tenant === 'agent:a1')).toHaveLength(2);
    } finally {
      await store.close();
    }
  });
});

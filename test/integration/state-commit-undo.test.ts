/**
 * How the fabric takes back (or holds) a change whose commit failed, against a real SqliteStore
 * file; the disk is "full" for this test process alone (its file size limit set to 0 with
 * `prlimit --pid`, lifted in `finally`; vitest's forks talk over pipes, which the limit does
 * not touch). What the file holds is read beside the store and after reopening it.
 */
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
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
  diskFull(false);
  for (const f of fabrics.splice(0)) await f.close().catch(() => undefined);
});

function diskFull(full: boolean): void {
  execFileSync('prlimit', [`--pid=${process.pid}`, `--fsize=${full ? 0 : 'unlimited'}:`]);
}

type Store = SqliteStore<TaskRecord, AgentRecord, PoolRecord>;

async function open(name: string): Promise<{ path: string; store: Store; fabric: AgentFabric }> {
  const path = join(tempDir(name), 'state.db');
  const store = await SqliteStore.open<TaskRecord, AgentRecord, PoolRecord>(path);
  const fabric = new AgentFabric({}, { store });
  fabrics.push(fabric);
  return { path, store, fabric };
}

it('a wait for a task end that runs out or is aborted while the disk is full leaves no waiter behind', async () => {
  const { store, fabric } = await open('state-undo-wait');
  let finish: () => void = () => undefined;
  fabric.registerInProcessHandler(
    'hold',
    () => new Promise<string>((r) => (finish = () => r('ok'))),
  );
  const agent = await fabric.spawn({ name: 'w', model: 'm', executor: 'inprocess' });
  const task = await fabric.schedule({ agentId: agent.id, taskType: 'hold', payload: {} });
  await until(() => fabric.scheduler.getTask(task.id)?.status === TaskStatus.RUNNING);
  try {
    diskFull(true);
    finish();
    await until(() => fabric.scheduler.getTask(task.id)?.status === TaskStatus.COMPLETED);
    expect(store.commitFailure()).toBeDefined();
    for (let i = 0; i < 20; i++) {
      const ran = await fabric
        .waitForTask(task.id, { timeoutSeconds: 0.01 })
        .catch((error: unknown) => error);
      expect(ran).toMatchObject({ code: 'FABRIC_ERR_STATE_STORE' });
      expect((ran as Error).message).toContain('the wait ran out');
    }
    const controller = new AbortController();
    const aborted = fabric
      .waitForTask(task.id, { signal: controller.signal })
      .catch((error: unknown) => error);
    await until(() => store.commitWaiters === 1);
    controller.abort(new Error('caller gone'));
    expect(await aborted).toMatchObject({ message: 'caller gone' });
    // Nothing waits any more: the list of commit waiters does not grow with every wait.
    expect(store.commitWaiters).toBe(0);
    // One that still waits is answered once the disk takes writes again.
    const waiting = fabric.waitForTask(task.id);
    await until(() => store.commitWaiters === 1);
    diskFull(false);
    expect((await waiting).status).toBe(TaskStatus.COMPLETED);
    expect(store.commitWaiters).toBe(0);
  } finally {
    diskFull(false);
  }
}, 60_000);

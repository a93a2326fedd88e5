/**
 * `FabricWorker.run()` across a sidecar that goes down and comes back: a claim (or a heartbeat,
 * a hook lookup, a report) that found the sidecar unreachable used to end `run()` with the
 * connection error, so a worker fleet died with one sidecar restart. It now waits and tries
 * again (backoff, at most 5 s between tries) and goes on once the sidecar answers. Real
 * `agent-fabric serve` processes on one port and one SQLite state file (the first SIGKILLed), the
 * worker SDK over MCP, the operator API; the task's end is checked in the state file.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import type { TaskRecord } from '../../src/scheduler/task-record.js';
import { SqliteStore } from '../../src/store/sqlite-store.js';
import { FabricWorker } from '../../src/worker/fabric-worker.js';
import { callApi } from '../fixtures/api.js';
import { tempDir, until } from '../fixtures/gateway/harness.js';
import { cleanUp, freePort, serve, type Running } from '../fixtures/state/serve.js';

const ADMIN = 'admin-token-of-the-worker-restart-test-0123';

afterAll(cleanUp);

/** Schedules a `job` for agent `w` and waits until it completed: its task id. */
async function jobDone(url: string, n: number): Promise<string> {
  const agents = (await (await callApi(url, 'FabricService/ListAgents', {}, ADMIN)).json()) as {
    agents: { agentId: string; name: string }[];
  };
  const agentId = agents.agents.find((a) => a.name === 'w')!.agentId;
  const res = await callApi(
    url,
    'FabricService/ScheduleTask',
    { agentId, taskType: 'job', payload: { n } },
    ADMIN,
  );
  expect(res.status).toBe(200);
  const { task } = (await res.json()) as { task: { taskId: string } };
  await until(async () => {
    const got = (await (
      await callApi(url, 'FabricService/GetTask', { taskId: task.taskId }, ADMIN)
    ).json()) as { task: { status: string } };
    return got.task.status === 'TASK_STATUS_COMPLETED';
  }, 30_000);
  return task.taskId;
}

async function killed(r: Running): Promise<void> {
  r.child.kill('SIGKILL');
  await until(() => r.child.exitCode !== null || r.child.signalCode !== null, 30_000);
}

describe('FabricWorker.run() when its sidecar restarts', () => {
  it(
    'keeps running through the down time and takes the task once the sidecar is back',
    { timeout: 120_000 },
    async () => {
      const dir = tempDir('worker-restart');
      const port = await freePort();
      writeFileSync(
        join(dir, 'fabric.json'),
        JSON.stringify({
          http: { host: '127.0.0.1', port },
          adminToken: ADMIN,
          state: { path: join(dir, 'state.db') },
          agents: [{ name: 'w' }],
          policies: [{ name: 'allow', rules: [{ tool: '*', action: 'allow' }] }],
        }),
      );
      const first = await serve(dir);
      const worker = await FabricWorker.connect({
        url: first.url,
        credential: first.token,
        heartbeatSeconds: 1,
        claimWaitSeconds: 1,
      });
      const ran: unknown[] = [];
      const stop = new AbortController();
      let ended: string | undefined;
      const running = worker
        .run({ job: (payload) => (ran.push(payload), { done: payload }) }, { signal: stop.signal })
        .then(
          () => (ended = 'resolved'),
          (err: unknown) => (ended = `rejected: ${String(err)}`),
        );
      try {
        // Running: it takes a task.
        await jobDone(first.url, 0);
        // Down: the worker's claims (one a second at most) find nothing listening.
        await killed(first);
        const downSince = Date.now();
        await until(() => Date.now() - downSince > 3000 || ended !== undefined, 10_000);
        expect(ended).toBeUndefined();

        // Back, same port and state: the same agent and credential.
        const second = await serve(dir);
        expect(second.token).toBe(first.token);
        const taskId = await jobDone(second.url, 1);
        expect(ran).toEqual([{ n: 0 }, { n: 1 }]);
        expect(ended).toBeUndefined();

        stop.abort();
        await running;
        expect(ended).toBe('resolved');
        await worker.close();
        second.child.kill('SIGTERM');
        await until(() => second.child.exitCode !== null, 30_000);

        const store = await SqliteStore.open(join(dir, 'state.db'));
        try {
          expect(store.tasks.get(taskId) as unknown as TaskRecord).toMatchObject({
            status: 'COMPLETED',
            attempt: 1,
            result: { done: { n: 1 } },
          });
        } finally {
          await store.close();
        }
      } finally {
        stop.abort();
        await running;
        await worker.close().catch(() => undefined);
      }
    },
  );
});

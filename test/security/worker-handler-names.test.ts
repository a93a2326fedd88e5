/**
 * The worker SDK picks a handler by a name it does not choose: a task's `taskType` (an agent's
 * `fabric__schedule_task` picks it) and a hook's `workItem.taskType`. Names of what every plain
 * object inherits (`constructor`, `toString`, `valueOf`, `hasOwnProperty`, `__proto__`) are no
 * handler of a worker that registered none by them. Real sidecar, real git hook store, the
 * worker over MCP; outcomes are checked in the fabric and the hook store.
 */
import { execFileSync } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AgentFabric } from '../../src/fabric.js';
import { HookStatus } from '../../src/hooks/hook-status.js';
import { HOOKS_REF } from '../../src/hooks/state-store.js';
import type { Sidecar } from '../../src/server/sidecar.js';
import { TaskStatus } from '../../src/task.js';
import { FabricWorker } from '../../src/worker/fabric-worker.js';
import {
  agentId,
  agentToken,
  closeSidecar,
  DEFAULT_ALLOW,
  startTestSidecar,
} from '../fixtures/gateway/harness.js';

const INHERITED = ['constructor', 'toString', 'valueOf', 'hasOwnProperty', '__proto__'];

let dir: string;
let storagePath: string;
let sidecar: Sidecar;
let fabric: AgentFabric;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'worker-handler-names-'));
  storagePath = join(dir, 'hooks');
  sidecar = await startTestSidecar({
    policies: [DEFAULT_ALLOW],
    agents: [{ name: 'worker' }],
    hooks: { storagePath, useGitWorktree: false },
  });
  fabric = sidecar.fabric!;
});

afterAll(async () => {
  await closeSidecar(sidecar);
  await rm(dir, { recursive: true, force: true });
});

describe('worker handler names from tasks and hooks', () => {
  it('runs no inherited Object member as a handler: such tasks fail HANDLER_NOT_FOUND, such hooks stay PENDING', async () => {
    const id = agentId(sidecar, 'worker');
    const hooks = await Promise.all(
      INHERITED.map((taskType) =>
        fabric.hooks!.createHook({ agentId: id, workItem: { taskType, secret: 'op-only' } }),
      ),
    );
    const tasks = [];
    for (const taskType of INHERITED) {
      tasks.push(await fabric.schedule({ agentId: id, taskType, payload: { echo: taskType } }));
    }
    // The last task is one the worker handles: once it is done, every task before it and the
    // start-up hook check have been dealt with.
    const last = await fabric.schedule({ agentId: id, taskType: 'real', payload: 1 });

    const worker = await FabricWorker.connect({
      url: sidecar.url!,
      credential: agentToken(sidecar, 'worker'),
      hookCheckSeconds: 600,
    });
    const stop = new AbortController();
    const ran: string[] = [];
    const running = worker.run(
      {
        hook: () => (ran.push('hook'), 'ran'),
        real: () => (ran.push('real'), 'ran'),
      },
      { signal: stop.signal },
    );
    const done = await Promise.all(
      [...tasks, last].map((t) => fabric.waitForTask(t.id, { timeoutSeconds: 20 })),
    );
    stop.abort();
    await running;
    await worker.close();

    expect(ran).toEqual(['real']);
    for (const [i, taskType] of INHERITED.entries()) {
      expect(done[i], taskType).toMatchObject({
        status: TaskStatus.FAILED,
        error: { code: 'FABRIC_ERR_HANDLER_NOT_FOUND' },
      });
    }
    expect(done.at(-1)).toMatchObject({ status: TaskStatus.COMPLETED, result: 'ran' });
    // Not ours to run: left on the hook, untouched, for a worker that has such a handler.
    for (const h of hooks) {
      expect(await fabric.hooks!.getHook(h.hookId), JSON.stringify(h.workItem)).toMatchObject({
        status: HookStatus.PENDING,
        result: null,
        version: 1,
      });
    }
    const trail = execFileSync('git', ['log', '--format=%s', HOOKS_REF], {
      cwd: storagePath,
      encoding: 'utf8',
    });
    expect(trail).not.toMatch(/-> (ACTIVE|COMPLETED|FAILED)/);
  });
});

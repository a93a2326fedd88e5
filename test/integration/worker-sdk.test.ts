import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AgentFabric } from '../../src/fabric.js';
import { HookStatus } from '../../src/hooks/hook-status.js';
import type { Sidecar } from '../../src/server/sidecar.js';
import { TaskStatus } from '../../src/task.js';
import { FabricWorker, RemoteFabricError } from '../../src/worker/fabric-worker.js';
import {
  agentId,
  agentToken,
  closeSidecar,
  DEFAULT_ALLOW,
  startTestSidecar,
} from '../fixtures/gateway/harness.js';

/** The worker SDK against a real sidecar: hook first, then claimed tasks, over MCP. */
describe('FabricWorker (worker SDK over MCP)', () => {
  let dir: string;
  let sidecar: Sidecar;
  let fabric: AgentFabric;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'fabric-worker-'));
    sidecar = await startTestSidecar({
      policies: [DEFAULT_ALLOW],
      agents: [{ name: 'worker' }],
      hooks: { storagePath: join(dir, 'hooks'), useGitWorktree: false },
    });
    fabric = sidecar.fabric!;
  });

  afterAll(async () => {
    await closeSidecar(sidecar);
    await rm(dir, { recursive: true, force: true });
  });

  it('runs the work on its hook first, then its tasks; handler errors fail only their task', async () => {
    const id = agentId(sidecar, 'worker');
    const hook = await fabric.hooks!.createHook({
      agentId: id,
      workItem: { taskType: 'refactor', file: 'api.py' },
    });
    const review = await fabric.schedule({ agentId: id, taskType: 'review', payload: { pr: 7 } });
    const boom = await fabric.schedule({ agentId: id, taskType: 'boom' });
    const stray = await fabric.schedule({ agentId: id, taskType: 'nobody-handles-this' });

    const order: string[] = [];
    const worker = await FabricWorker.connect({
      url: sidecar.url!,
      credential: agentToken(sidecar, 'worker'),
    });
    const stop = new AbortController();
    const running = worker.run(
      {
        refactor: async (item, ctx) => {
          order.push('hook');
          await ctx.progress('renamed handler');
          return { changed: [(item as { file: string }).file] };
        },
        review: async (payload, ctx) => {
          order.push('review');
          await ctx.progress({ step: 1 });
          return { approved: (payload as { pr: number }).pr };
        },
        boom: () => {
          order.push('boom');
          throw Object.assign(new Error('exploded'), { code: 'E_BOOM' });
        },
      },
      { signal: stop.signal },
    );
    const done = await Promise.all(
      [review, boom, stray].map((t) => fabric.waitForTask(t.id, { timeoutSeconds: 20 })),
    );
    stop.abort();
    await running;
    await worker.close();

    expect(order[0]).toBe('hook');
    expect(await fabric.hooks!.getHook(hook.hookId)).toMatchObject({
      status: HookStatus.COMPLETED,
      result: { changed: ['api.py'] },
    });
    expect(done[0]).toMatchObject({
      status: TaskStatus.COMPLETED,
      result: { approved: 7 },
      progress: { step: 1 },
    });
    expect(done[1]).toMatchObject({
      status: TaskStatus.FAILED,
      error: { code: 'E_BOOM', message: 'exploded' },
    });
    expect(done[2]).toMatchObject({
      status: TaskStatus.FAILED,
      error: { code: 'FABRIC_ERR_HANDLER_NOT_FOUND' },
    });
  });

  it('surfaces the sidecar’s refusals as coded errors', async () => {
    const id = agentId(sidecar, 'worker');
    const worker = await FabricWorker.connect({
      url: sidecar.url!,
      credential: agentToken(sidecar, 'worker'),
    });
    try {
      const t = await fabric.schedule({ agentId: id, taskType: 'x' });
      const claimed = (await worker.claimTask({ waitSeconds: 5 }))!;
      expect(claimed.taskId).toBe(t.id);
      await worker.completeTask(claimed, 1);
      const err = await worker
        .completeTask({ ...claimed, attempt: claimed.attempt + 1 }, 2)
        .catch((e: unknown) => e);
      expect(err).toBeInstanceOf(RemoteFabricError);
      expect(err).toMatchObject({ code: 'FABRIC_ERR_TASK_STATE' });
    } finally {
      await worker.close();
    }
  });

  it('refuses to connect with an unknown credential', async () => {
    await expect(
      FabricWorker.connect({ url: sidecar.url!, credential: 'afk_not-a-real-credential' }),
    ).rejects.toThrow();
  });
});

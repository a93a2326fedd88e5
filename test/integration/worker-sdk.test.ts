import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import type { AgentFabric } from '../../src/fabric.js';
import { HookStatus } from '../../src/hooks/hook-status.js';
import type { Sidecar } from '../../src/server/sidecar.js';
import { TaskStatus, type TaskAssignment } from '../../src/task.js';
import {
  FabricWorker,
  RemoteFabricError,
  type FabricWorkerRunOptions,
} from '../../src/worker/fabric-worker.js';
import { McpWorkerTransport } from '../../src/worker/mcp-worker-transport.js';
import type { WorkerReportAnswer, WorkerTransport } from '../../src/worker/worker-transport.js';
import {
  agentId,
  agentToken,
  closeSidecar,
  DEFAULT_ALLOW,
  startTestSidecar,
} from '../fixtures/gateway/harness.js';

/** One real sidecar for the file; each test works as its own agent, so none sees another's tasks. */
let dir: string;
let sidecar: Sidecar;
let fabric: AgentFabric;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'fabric-worker-'));
  sidecar = await startTestSidecar({
    policies: [DEFAULT_ALLOW],
    agents: [
      'worker',
      'hooked',
      'cancelled',
      'timed',
      'stopper',
      'quitter',
      'stale',
      'intruder',
      'lossy',
      'hooked-clock',
    ].map((name) => ({ name })),
    hooks: { storagePath: join(dir, 'hooks'), useGitWorktree: false },
  });
  fabric = sidecar.fabric!;
});

afterAll(async () => {
  await closeSidecar(sidecar);
  await rm(dir, { recursive: true, force: true });
});

/** A worker over MCP as the sidecar's start-up agent `name`. */
function connectAs(name: string, options: FabricWorkerRunOptions = {}): Promise<FabricWorker> {
  return FabricWorker.connect({
    url: sidecar.url!,
    credential: agentToken(sidecar, name),
    ...options,
  });
}

/** The worker SDK against a real sidecar: hook first, then claimed tasks, over MCP. */
describe('FabricWorker (worker SDK over MCP)', () => {
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
    const worker = await connectAs('worker');
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
    const worker = await connectAs('worker');
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

/** A promise with its resolve, to wait for one step of a worker. */
function signalled<T = void>(): { promise: Promise<T>; resolve: (v: T) => void } {
  let resolve!: (v: T) => void;
  const promise = new Promise<T>((r) => (resolve = r));
  return { promise, resolve };
}

/** The real MCP transport, with hooks to see (and, for hostile cases, add to) what it carries. */
class WatchedTransport implements WorkerTransport {
  claims = 0;
  onClaim: (() => void) | undefined;
  /** Claims whose task is thrown away unseen, as a claim answer lost on the way would be. */
  dropClaims = 0;
  readonly droppedTasks: TaskAssignment[] = [];
  /** Notices added to the next heartbeat answer, as a confused or late sidecar might send. */
  extraNotices: WorkerReportAnswer['endedTasks'] = [];
  constructor(readonly inner: McpWorkerTransport) {}
  static async open(sidecar: Sidecar, name: string): Promise<WatchedTransport> {
    return new WatchedTransport(
      await McpWorkerTransport.connect(new URL(sidecar.url!), agentToken(sidecar, name)),
    );
  }
  async heartbeat(): Promise<WorkerReportAnswer> {
    const a = await this.inner.heartbeat();
    const extra = this.extraNotices;
    this.extraNotices = [];
    return { ...a, endedTasks: [...a.endedTasks, ...extra] };
  }
  get leasesClaims() {
    return this.inner.leasesClaims;
  }
  claim(waitSeconds: number, ackSeconds?: number) {
    this.claims++;
    this.onClaim?.();
    return this.inner.claim(waitSeconds, ackSeconds).then((task) => {
      if (task === null || this.dropClaims === 0) return task;
      this.dropClaims--;
      this.droppedTasks.push(task);
      return null;
    });
  }
  complete: WorkerTransport['complete'] = (t, r) => this.inner.complete(t, r);
  fail: WorkerTransport['fail'] = (t, e) => this.inner.fail(t, e);
  release: WorkerTransport['release'] = (t) => this.inner.release(t);
  reportProgress: WorkerTransport['reportProgress'] = (t, p) => this.inner.reportProgress(t, p);
  recordUsage: WorkerTransport['recordUsage'] = (u) => this.inner.recordUsage(u);
  hookFor: WorkerTransport['hookFor'] = () => this.inner.hookFor();
  activateHook: WorkerTransport['activateHook'] = (h) => this.inner.activateHook(h);
  hookProgress: WorkerTransport['hookProgress'] = (h, n) => this.inner.hookProgress(h, n);
  completeHook: WorkerTransport['completeHook'] = (h, r) => this.inner.completeHook(h, r);
  failHook: WorkerTransport['failHook'] = (h, e) => this.inner.failHook(h, e);
  close: WorkerTransport['close'] = () => this.inner.close();
}

describe('FabricWorker run loop: hooks during run, per-task abort, stop', () => {
  const fast = { heartbeatSeconds: 0.1, hookCheckSeconds: 0.1, claimWaitSeconds: 1 };

  it('picks up a hook created after run() started', async () => {
    const transport = await WatchedTransport.open(sidecar, 'hooked');
    const worker = FabricWorker.withTransport(transport, fast);
    const firstClaim = signalled();
    transport.onClaim = () => firstClaim.resolve();
    const ran = signalled<unknown>();
    const stop = new AbortController();
    const running = worker.run(
      { hook: (item) => (ran.resolve(item), { done: true }) },
      {
        signal: stop.signal,
      },
    );
    await firstClaim.promise; // the start-up hook check found nothing
    const hook = await fabric.hooks!.createHook({
      agentId: agentId(sidecar, 'hooked'),
      workItem: { note: 'late' },
    });
    expect(await ran.promise).toEqual({ note: 'late' });
    stop.abort();
    await running;
    await worker.close();
    expect(await fabric.hooks!.getHook(hook.hookId)).toMatchObject({
      status: HookStatus.COMPLETED,
      result: { done: true },
    });
  });

  it('checks for hooks every hookCheckSeconds even when the wall clock was set back a day', async () => {
    const transport = await WatchedTransport.open(sidecar, 'hooked-clock');
    const worker = FabricWorker.withTransport(transport, fast);
    const firstClaim = signalled();
    transport.onClaim = () => firstClaim.resolve();
    const ran = signalled<unknown>();
    const stop = new AbortController();
    vi.useFakeTimers({ toFake: ['Date'] });
    try {
      const running = worker.run(
        { hook: (item) => (ran.resolve(item), { done: true }) },
        { signal: stop.signal },
      );
      await firstClaim.promise; // the start-up hook check found nothing
      vi.setSystemTime(Date.now() - 86_400_000);
      await fabric.hooks!.createHook({
        agentId: agentId(sidecar, 'hooked-clock'),
        workItem: { note: 'after the step' },
      });
      expect(await ran.promise).toEqual({ note: 'after the step' });
      stop.abort();
      await running;
    } finally {
      vi.useRealTimers();
      await worker.close();
    }
  });

  it('aborts a handler when the fabric cancels its task, and keeps working', async () => {
    const id = agentId(sidecar, 'cancelled');
    const worker = await connectAs('cancelled', fast);
    const started = signalled();
    const reasons: unknown[] = [];
    const stop = new AbortController();
    const running = worker.run(
      {
        slow: (_p, ctx) =>
          new Promise((_resolve, reject) => {
            started.resolve();
            ctx.signal.addEventListener('abort', () => {
              reasons.push(ctx.signal.reason);
              reject(ctx.signal.reason as Error);
            });
          }),
        quick: (p) => p,
      },
      { signal: stop.signal },
    );
    const slow = await fabric.schedule({ agentId: id, taskType: 'slow', timeoutSeconds: 600 });
    await started.promise;
    await fabric.cancelTask(slow.id, 'changed my mind');
    const quick = await fabric.schedule({ agentId: id, taskType: 'quick', payload: 5 });
    const done = await fabric.waitForTask(quick.id, { timeoutSeconds: 20 });
    stop.abort();
    await running;
    await worker.close();

    expect(reasons).toHaveLength(1);
    expect(reasons[0]).toBeInstanceOf(RemoteFabricError);
    expect(reasons[0]).toMatchObject({
      code: 'FABRIC_ERR_CANCELLED',
      details: { taskId: slow.id },
    });
    expect(done).toMatchObject({ status: TaskStatus.COMPLETED, result: 5 });
    // The handler's rejection after the cancel reported nothing: the task stays CANCELLED.
    expect(await fabric.getTask(slow.id)).toMatchObject({ status: TaskStatus.CANCELLED });
  });

  it('aborts a handler when its task times out; a result after that changes nothing', async () => {
    const id = agentId(sidecar, 'timed');
    const worker = await connectAs('timed', fast);
    const aborted = signalled<unknown>();
    const stop = new AbortController();
    const running = worker.run(
      {
        // Ignores the abort and returns late: the completion is stale and dropped.
        stubborn: (_p, ctx) =>
          new Promise((resolve) =>
            ctx.signal.addEventListener('abort', () => {
              aborted.resolve(ctx.signal.reason);
              setTimeout(() => resolve('too late'), 300);
            }),
          ),
      },
      { signal: stop.signal },
    );
    const t = await fabric.schedule({ agentId: id, taskType: 'stubborn', timeoutSeconds: 1 });
    const reason = (await aborted.promise) as { name?: string; code?: string };
    // Whichever came first: this machine's timer or the fabric's notice.
    expect(reason.name === 'TimeoutError' || reason.code === 'FABRIC_ERR_TASK_TIMEOUT').toBe(true);
    const end = await fabric.waitForTask(t.id, { timeoutSeconds: 20 });
    const next = await fabric.schedule({ agentId: id, taskType: 'missing' });
    await fabric.waitForTask(next.id, { timeoutSeconds: 20 }); // run() survived the stale report
    stop.abort();
    await running;
    await worker.close();
    expect(end.status).toBe(TaskStatus.TIMEOUT);
    expect((await fabric.getTask(t.id)).result).toBeUndefined();
  });

  it('gives back a task a claim hands over after stop; nothing stays RUNNING', async () => {
    const id = agentId(sidecar, 'stopper');
    const transport = await WatchedTransport.open(sidecar, 'stopper');
    const worker = FabricWorker.withTransport(transport, { ...fast, hookCheckSeconds: 600 });
    const claimed = signalled();
    transport.onClaim = () => claimed.resolve();
    const ran: string[] = [];
    const stop = new AbortController();
    const running = worker.run({ job: () => void ran.push('job') }, { signal: stop.signal });
    await claimed.promise;
    // Stop while the claim is out, then give the claim a task to answer with.
    stop.abort();
    const t = await fabric.schedule({ agentId: id, taskType: 'job', maxAttempts: 1 });
    await running;
    expect(transport.claims).toBe(1);
    expect(ran).toEqual([]);
    const back = await fabric.getTask(t.id);
    expect(back.status).toBe(TaskStatus.PENDING);

    // A later worker runs it; the given-back attempt did not use up maxAttempts: 1.
    const again = await connectAs('stopper');
    const a = (await again.claimTask({ waitSeconds: 5 }))!;
    expect(a.taskId).toBe(t.id);
    expect(a.attempt).toBeGreaterThan(back.attempt);
    // The given-back attempt is stale.
    await expect(
      again.completeTask({ taskId: t.id, attempt: back.attempt }, 'x'),
    ).rejects.toMatchObject({ code: 'FABRIC_ERR_TASK_STATE' });
    await again.completeTask(a, 'ok');
    expect(await fabric.getTask(t.id)).toMatchObject({
      status: TaskStatus.COMPLETED,
      result: 'ok',
    });
    await again.close();
    await worker.close();
  });

  it('stop aborts the running handler: a handler that gives up hands its task back, one that finishes completes', async () => {
    const id = agentId(sidecar, 'quitter');
    const worker = await connectAs('quitter', fast);
    const started = signalled();
    const stop = new AbortController();
    const running = worker.run(
      {
        quits: (_p, ctx) =>
          new Promise((_resolve, reject) => {
            started.resolve();
            ctx.signal.addEventListener('abort', () => reject(ctx.signal.reason as Error));
          }),
      },
      { signal: stop.signal },
    );
    const t = await fabric.schedule({ agentId: id, taskType: 'quits', maxAttempts: 1 });
    await started.promise;
    stop.abort();
    await running;
    expect(await fabric.getTask(t.id)).toMatchObject({ status: TaskStatus.PENDING });

    const stop2 = new AbortController();
    const finished = signalled();
    const running2 = worker.run(
      {
        quits: (_p, ctx) =>
          new Promise((resolve) => {
            finished.resolve();
            ctx.signal.addEventListener('abort', () => resolve('finished anyway'));
          }),
      },
      { signal: stop2.signal },
    );
    await finished.promise;
    stop2.abort();
    await running2;
    await worker.close();
    expect(await fabric.getTask(t.id)).toMatchObject({
      status: TaskStatus.COMPLETED,
      result: 'finished anyway',
    });
  });

  it('ignores notices for another attempt or a task it does not run', async () => {
    const id = agentId(sidecar, 'stale');
    const transport = await WatchedTransport.open(sidecar, 'stale');
    const worker = FabricWorker.withTransport(transport, fast);
    const started = signalled();
    const release = signalled();
    let abortedBy: unknown;
    const stop = new AbortController();
    const running = worker.run(
      {
        job: async (_p, ctx) => {
          ctx.signal.addEventListener('abort', () => (abortedBy = ctx.signal.reason));
          started.resolve();
          await release.promise;
          return 'done';
        },
      },
      { signal: stop.signal },
    );
    const t = await fabric.schedule({ agentId: id, taskType: 'job' });
    await started.promise;
    const attempt = (await fabric.getTask(t.id)).attempt;
    transport.extraNotices = [
      { taskId: t.id, attempt: attempt + 1, code: 'FABRIC_ERR_CANCELLED', message: 'stale' },
      { taskId: 'task-unknown', attempt: 1, code: 'FABRIC_ERR_CANCELLED', message: 'stray' },
    ];
    await worker.heartbeat();
    release.resolve();
    const done = await fabric.waitForTask(t.id, { timeoutSeconds: 20 });
    stop.abort();
    await running;
    await worker.close();
    expect(abortedBy).toBeUndefined();
    expect(done).toMatchObject({ status: TaskStatus.COMPLETED, result: 'done' });
  });

  it('a claim answer lost on the way: the task goes back after the lease, uncounted, and runs; an acknowledged one stays past it', async () => {
    const id = agentId(sidecar, 'lossy');
    const transport = await WatchedTransport.open(sidecar, 'lossy');
    transport.dropClaims = 1;
    for (const claimAckSeconds of [3601, -1, Number.NaN]) {
      expect(() => FabricWorker.withTransport(transport, { claimAckSeconds })).toThrow(
        /options\.claimAckSeconds/,
      );
    }
    const worker = FabricWorker.withTransport(transport, {
      ...fast,
      hookCheckSeconds: 600,
      claimAckSeconds: 1,
    });
    const t = await fabric.schedule({ agentId: id, taskType: 'job', maxAttempts: 1 });
    const ran: number[] = [];
    const done = signalled();
    const stop = new AbortController();
    const running = worker.run(
      {
        job: async (_payload, ctx) => {
          ran.push((await fabric.getTask(t.id)).attempt);
          // Held past the 1 s lease: the run loop acknowledged the task before this started.
          await new Promise((r) => setTimeout(r, 1_500));
          expect(ctx.signal.aborted).toBe(false);
          done.resolve();
          return 'ran';
        },
      },
      { signal: stop.signal },
    );
    await done.promise;
    stop.abort();
    await running;
    expect(transport.droppedTasks.map((d) => d.taskId)).toEqual([t.id]);
    const lost = transport.droppedTasks[0]!.attempt;
    // Run once, by the attempt after the lost one; maxAttempts 1 was not used up by the loss.
    expect(ran).toHaveLength(1);
    expect(ran[0]).toBeGreaterThan(lost);
    expect(await fabric.getTask(t.id)).toMatchObject({
      status: TaskStatus.COMPLETED,
      attempt: ran[0],
      result: 'ran',
    });
    expect(fabric.scheduler.agentLoad(id).runningTasks).toBe(0);
    await worker.close();
  });

  it('an agent cannot release, or learn the ended tasks of, another agent', async () => {
    const owner = await connectAs('stale');
    const intruder = await connectAs('intruder');
    try {
      const t = await fabric.schedule({ agentId: agentId(sidecar, 'stale'), taskType: 'x' });
      const a = (await owner.claimTask({ waitSeconds: 5 }))!;
      expect(await intruder.releaseTask(a)).toBe(false);
      expect(await fabric.getTask(t.id)).toMatchObject({
        status: TaskStatus.RUNNING,
        attempt: a.attempt,
        assignedAgentId: agentId(sidecar, 'stale'),
      });
      await fabric.cancelTask(t.id);
      expect((await intruder.heartbeat()).endedTasks).toEqual([]);
      expect((await owner.heartbeat()).endedTasks).toEqual([
        expect.objectContaining({ taskId: t.id, attempt: a.attempt, code: 'FABRIC_ERR_CANCELLED' }),
      ]);
      // Told once.
      expect((await owner.heartbeat()).endedTasks).toEqual([]);
    } finally {
      await owner.close();
      await intruder.close();
    }
  });
});

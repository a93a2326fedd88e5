/**
 * Regressions (review findings) of the worker SDK's run loop against a real sidecar:
 * - `FabricWorker.run()` on a sidecar without hooks (the default config) rejected at once: it
 *   looked for hook work before claiming and took the sidecar's "hooks are not configured"
 *   refusal (`FABRIC_ERR_INVALID_ARGUMENT` on the `hooks` field) as fatal; the agent's tasks
 *   stayed PENDING. That refusal now means "no hook work", remembered for the run.
 * - One task's outcome ended `run()`: `#report` dropped only stale-task refusals, so a handler
 *   throwing `new Error()` (fail_task needs a message of ≥ 1 character), an error message or a
 *   result over `maxTaskResultBytes` made `run()` reject and left the task RUNNING. Now an empty
 *   message reports the error's name, and a refused outcome fails the task with the refusal's
 *   code; `run()` goes on with the next task.
 * - A result that is not JSON (a cycle, a bigint) made the SDK client's JSON.stringify throw a
 *   TypeError, which ended `run()` and left the task RUNNING; it now fails the task with
 *   `FABRIC_ERR_INVALID_ARGUMENT`.
 * - A result (or error message) over the sidecar's HTTP body limit (4 MiB) was refused by the
 *   transport, not the fabric: the SDK client threw `StreamableHTTPError` (`code` 413), which
 *   `run()` did not take as a refusal, so it ended and the task stayed RUNNING. The MCP
 *   transport now throws it as `RemoteFabricError` `FABRIC_ERR_PAYLOAD_TOO_LARGE`.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import { TaskStatus, type Task } from '../../src/task.js';
import {
  FabricWorker,
  RemoteFabricError,
  type WorkerHandler,
} from '../../src/worker/fabric-worker.js';
import {
  agentId,
  agentToken,
  closeSidecar,
  DEFAULT_ALLOW,
  startTestSidecar,
} from '../fixtures/gateway/harness.js';

let dir: string;
/** The default: no hooks. */
let plain: Sidecar;
/** Hooks on, and a small maxTaskResultBytes. */
let small: Sidecar;
/** maxTaskResultBytes above the HTTP body limit (4 MiB): the body limit refuses first. */
let large: Sidecar;
/** More than the sidecar's HTTP body limit (DEFAULT_MAX_BODY_BYTES, 4 MiB). */
const OVER_BODY_LIMIT = 5 * 1024 * 1024;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'worker-sdk-outcomes-'));
  [plain, small, large] = await Promise.all([
    startTestSidecar({ policies: [DEFAULT_ALLOW], agents: [{ name: 'w' }] }),
    startTestSidecar({
      hooks: { storagePath: join(dir, 'hooks'), useGitWorktree: false },
      policies: [DEFAULT_ALLOW],
      fabric: { maxTaskResultBytes: 1024 },
      agents: ['empty', 'bigError', 'bigResult', 'cycle', 'bigint'].map((name) => ({ name })),
    }),
    startTestSidecar({
      policies: [DEFAULT_ALLOW],
      fabric: { maxTaskResultBytes: 16 * 1024 * 1024 },
      agents: ['hugeResult', 'hugeError', 'hugeProgress'].map((name) => ({ name })),
    }),
  ]);
});

afterAll(async () => {
  await Promise.all([closeSidecar(plain), closeSidecar(small), closeSidecar(large)]);
  await rm(dir, { recursive: true, force: true });
});

/**
 * Schedules `job` then `ok` for agent `name`, runs a worker until `ok` completed (or `run()`
 * ended on its own), and returns both tasks as they ended and how `run()` ended.
 */
async function runTwo(
  sidecar: Sidecar,
  name: string,
  job: WorkerHandler,
): Promise<{ first: Task; second: Task; runError: unknown; endedEarly: boolean }> {
  const fabric = sidecar.fabric!;
  const id = agentId(sidecar, name);
  const first = await fabric.schedule({ agentId: id, taskType: 'job', timeoutSeconds: 600 });
  const second = await fabric.schedule({ agentId: id, taskType: 'ok', timeoutSeconds: 600 });
  const worker = await FabricWorker.connect({
    url: sidecar.url!,
    credential: agentToken(sidecar, name),
    claimWaitSeconds: 1,
  });
  const stop = new AbortController();
  let runError: unknown;
  let ended = false;
  const running = worker
    .run({ job, ok: () => 'fine' }, { signal: stop.signal })
    .catch((err: unknown) => {
      runError = err;
    })
    .finally(() => {
      ended = true;
    });
  const deadline = Date.now() + 20_000;
  while (Date.now() < deadline && !ended) {
    if ((await fabric.getTask(second.id)).status === TaskStatus.COMPLETED) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  const endedEarly = ended;
  stop.abort();
  await running;
  await worker.close();
  return {
    first: await fabric.getTask(first.id),
    second: await fabric.getTask(second.id),
    runError,
    endedEarly,
  };
}

describe('FabricWorker.run on a sidecar without hooks', () => {
  it('claims and runs its tasks', async () => {
    const r = await runTwo(plain, 'w', (p) => ({ echoed: p }));
    expect(r.runError).toBeUndefined();
    expect(r.endedEarly).toBe(false);
    expect(r.first.status).toBe(TaskStatus.COMPLETED);
    expect(r.second.status).toBe(TaskStatus.COMPLETED);
  });
});

describe('FabricWorker.run and outcomes the sidecar refuses', () => {
  it('a handler throwing new Error() (empty message) fails its task with the name', async () => {
    const r = await runTwo(small, 'empty', () => {
      throw new Error();
    });
    expect(r.runError).toBeUndefined();
    expect(r.endedEarly).toBe(false);
    expect(r.first.status).toBe(TaskStatus.FAILED);
    expect(r.first.error).toMatchObject({ code: 'FABRIC_ERR_TASK_EXECUTION', message: 'Error' });
    expect(r.second.status).toBe(TaskStatus.COMPLETED);
  });

  it('an error over maxTaskResultBytes fails its task with the refusal code', async () => {
    const r = await runTwo(small, 'bigError', () => {
      throw new Error('x'.repeat(4096));
    });
    expect(r.runError).toBeUndefined();
    expect(r.endedEarly).toBe(false);
    expect(r.first.status).toBe(TaskStatus.FAILED);
    expect(r.first.error?.code).toBe('FABRIC_ERR_TASK_RESULT_TOO_LARGE');
    expect(r.second.status).toBe(TaskStatus.COMPLETED);
  });

  it('a result over maxTaskResultBytes fails its task with the refusal code', async () => {
    const r = await runTwo(small, 'bigResult', () => ({ blob: 'x'.repeat(4096) }));
    expect(r.runError).toBeUndefined();
    expect(r.endedEarly).toBe(false);
    expect(r.first.status).toBe(TaskStatus.FAILED);
    expect(r.first.error?.code).toBe('FABRIC_ERR_TASK_RESULT_TOO_LARGE');
    expect(r.first.error?.message).toMatch(/maxTaskResultBytes/);
    expect(r.second.status).toBe(TaskStatus.COMPLETED);
  });
});

describe('FabricWorker.run and outcomes that are not JSON', () => {
  // JSON.stringify of the call's arguments threw in the SDK client (a TypeError, not a refusal):
  // run() rejected with it and the task stayed RUNNING on the agent until its timeout.
  it('a result with a cycle fails its task with FABRIC_ERR_INVALID_ARGUMENT; run() goes on', async () => {
    const r = await runTwo(small, 'cycle', () => {
      const a: Record<string, unknown> = {};
      a.self = a;
      return a;
    });
    expect(r.runError).toBeUndefined();
    expect(r.endedEarly).toBe(false);
    expect(r.first.status).toBe(TaskStatus.FAILED);
    expect(r.first.error?.code).toBe('FABRIC_ERR_INVALID_ARGUMENT');
    expect(r.first.error?.message).toMatch(/result/);
    expect(r.second.status).toBe(TaskStatus.COMPLETED);
  });

  it('a result holding a bigint fails its task the same way', async () => {
    const r = await runTwo(small, 'bigint', () => ({ n: 10n }));
    expect(r.runError).toBeUndefined();
    expect(r.endedEarly).toBe(false);
    expect(r.first.status).toBe(TaskStatus.FAILED);
    expect(r.first.error?.code).toBe('FABRIC_ERR_INVALID_ARGUMENT');
    expect(r.second.status).toBe(TaskStatus.COMPLETED);
  });
});

describe('FabricWorker.run and outcomes over the HTTP body limit', () => {
  it('a result the sidecar refuses with 413 fails its task; run() goes on', async () => {
    const r = await runTwo(large, 'hugeResult', () => ({ blob: 'x'.repeat(OVER_BODY_LIMIT) }));
    expect(r.runError).toBeUndefined();
    expect(r.endedEarly).toBe(false);
    expect(r.first.status).toBe(TaskStatus.FAILED);
    expect(r.first.error?.code).toBe('FABRIC_ERR_PAYLOAD_TOO_LARGE');
    expect(r.second.status).toBe(TaskStatus.COMPLETED);
  });

  it('an error message the sidecar refuses with 413 fails its task with the code', async () => {
    const r = await runTwo(large, 'hugeError', () => {
      throw new Error('x'.repeat(OVER_BODY_LIMIT));
    });
    expect(r.runError).toBeUndefined();
    expect(r.endedEarly).toBe(false);
    expect(r.first.status).toBe(TaskStatus.FAILED);
    expect(r.first.error?.code).toBe('FABRIC_ERR_PAYLOAD_TOO_LARGE');
    expect(r.second.status).toBe(TaskStatus.COMPLETED);
  });

  it('progress the sidecar refuses with 413 rejects as a RemoteFabricError', async () => {
    let refusal: unknown;
    const r = await runTwo(large, 'hugeProgress', async (_p, ctx) => {
      try {
        await ctx.progress('x'.repeat(OVER_BODY_LIMIT));
      } catch (err) {
        refusal = err;
        throw err;
      }
    });
    expect(refusal).toBeInstanceOf(RemoteFabricError);
    expect((refusal as RemoteFabricError).code).toBe('FABRIC_ERR_PAYLOAD_TOO_LARGE');
    expect(r.runError).toBeUndefined();
    expect(r.first.status).toBe(TaskStatus.FAILED);
    expect(r.first.error?.code).toBe('FABRIC_ERR_PAYLOAD_TOO_LARGE');
    expect(r.second.status).toBe(TaskStatus.COMPLETED);
  });
});

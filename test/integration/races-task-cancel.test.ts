/**
 * An MCP task cancelled while its call is still on the way to its policy decision (a real
 * sidecar over HTTP, a real server-filesystem upstream whose path parameters the gateway
 * resolves on disk before policy sees them, the official SDK client): the cancel is final. The
 * call asks no human (no approval appears in the operators' queue for it), runs nothing, and
 * the task stays `cancelled` — it is not turned back into `input_required` or `working` and then
 * `failed` by the call it ended.
 *
 * The window is made deterministic by holding every thread of libuv's pool (which the
 * gateway's `realpath` lookups run on) in the `open` of a FIFO nobody writes yet, cancelling
 * the task meanwhile, then letting the lookups go.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, openSync, closeSync } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { listApprovals } from '../fixtures/api.js';
import {
  ADMIN_TOKEN,
  DEFAULT_ALLOW,
  agentToken,
  auditLines,
  filesystemUpstream,
  httpClient,
  tempDir,
  until,
} from '../fixtures/gateway/harness.js';
import { APPROVE_WRITES, closeRaceSidecarAfterEach, startRaceSidecar } from '../fixtures/races.js';
import { callAsTask } from '../fixtures/gateway/tasks.js';

closeRaceSidecarAfterEach();

/** Holds every libuv pool thread in an `open` of a FIFO; `release` lets them all go. */
async function holdThreadPool(dir: string): Promise<{ release: () => Promise<void> }> {
  const size = Number(process.env.UV_THREADPOOL_SIZE ?? 4);
  const fifos = Array.from({ length: size }, (_, i) => join(dir, `fifo-${i}`));
  for (const f of fifos) execFileSync('mkfifo', [f]);
  const opening: Promise<FileHandle>[] = fifos.map((f) => open(f, 'r'));
  // Give the pool time to pick the opens up (each blocks until a writer comes).
  await new Promise((resolve) => setTimeout(resolve, 200));
  return {
    release: async () => {
      // Opening the write end (synchronously, off the pool) completes each blocked open.
      const writers = fifos.map((f) => openSync(f, 'w'));
      for (const h of await Promise.all(opening)) await h.close();
      for (const w of writers) closeSync(w);
    },
  };
}

describe('an MCP task cancelled before its call is decided', () => {
  it('asks no human, runs nothing and stays cancelled', async () => {
    const root = tempDir('races-task-cancel');
    const auditPath = join(tempDir('races-task-audit'), 'audit.jsonl');
    const sidecar = await startRaceSidecar({
      upstreams: { fs: filesystemUpstream(root) },
      policies: [APPROVE_WRITES, DEFAULT_ALLOW],
      agents: [{ name: 'worker' }],
      gateway: { tasks: { maxTtlSeconds: 120 } },
      audit: { path: auditPath },
    });
    const client = await httpClient(sidecar.url!, agentToken(sidecar, 'worker'));
    try {
      const target = join(root, 'cancelled.txt');
      const pool = await holdThreadPool(tempDir('races-fifo'));
      let released = false;
      try {
        const { task } = await callAsTask(client, 'fs__write_file', {
          path: target,
          content: 'must not be written',
        });
        const cancelled = await client.experimental.tasks.cancelTask(task.taskId);
        expect(cancelled.status).toBe('cancelled');
        await pool.release();
        released = true;
        // The call went on once the lookups were let go, and ended (its audit line).
        await until(() => auditLines(sidecar, auditPath, 'worker', 'fs__write_file').length > 0);
        expect(auditLines(sidecar, auditPath, 'worker', 'fs__write_file')).toMatchObject([
          { outcome: 'cancelled' },
        ]);
        const after = await client.experimental.tasks.getTask(task.taskId);
        expect(after.status).toBe('cancelled');
        expect(await listApprovals(sidecar.url!, ADMIN_TOKEN)).toEqual([]);
        expect(existsSync(target)).toBe(false);
      } finally {
        if (!released) await pool.release();
      }
    } finally {
      await client.close();
    }
  }, 60_000);
});

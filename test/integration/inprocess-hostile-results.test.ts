/**
 * Regression (review finding): an `inprocess` handler that returned a broken thenable (its
 * `then()` throws) crashed the sidecar. InProcessExecutor read and called `result.then` outside
 * its try, inside the microtask that runs the whole batch: the throw escaped as an uncaught
 * exception, the process ended and the batch-mates after it never ran. The same held for a
 * `then` getter that throws and for a thrown value `toTaskError` could not turn into a string.
 * Whatever a handler hands back fails its own task only; the process lives and the batch-mate
 * completes. Runs in a child process, so an uncaught exception shows as its exit.
 */
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const child = fileURLToPath(
  new URL('../fixtures/inprocess/broken-results-child.ts', import.meta.url),
);

describe('inprocess executor and hostile handler results', () => {
  it('fails only the task at fault; the process survives and the batch-mate completes', () => {
    const r = spawnSync(process.execPath, ['--import', 'tsx', child], {
      encoding: 'utf8',
      timeout: 60_000,
    });
    expect(r.stderr).not.toMatch(/broken|TypeError/);
    expect(r.status).toBe(0);
    expect(JSON.parse(r.stdout.trim().split('\n').pop()!)).toEqual({
      thenThrows: 'FAILED Error',
      thenGetterThrows: 'FAILED Error',
      throwsUnprintable: 'FAILED FABRIC_ERR_TASK_EXECUTION',
      echo: 'COMPLETED',
    });
  });
});

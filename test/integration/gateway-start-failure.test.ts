import { readdirSync, readlinkSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { startTestSidecar, tempDir } from '../fixtures/gateway/harness.js';

/** This process's open file descriptors on `path`. */
function openOn(path: string): number {
  let n = 0;
  for (const fd of readdirSync('/proc/self/fd')) {
    try {
      if (readlinkSync(`/proc/self/fd/${fd}`) === path) n++;
    } catch {
      // closed meanwhile
    }
  }
  return n;
}

describe('a gateway whose start fails', () => {
  it('closes its audit log (no file descriptor left open, none per attempt)', async () => {
    // A library user retrying while a required upstream cannot start: each failed attempt
    // left the audit log's file open (and, since aa7892c, its flush hooked on process exit).
    const dir = tempDir('gateway-start-failure');
    const path = join(dir, 'audit.log');
    for (let attempt = 0; attempt < 3; attempt++) {
      await expect(
        startTestSidecar({
          audit: { path },
          upstreams: { gone: { command: join(dir, 'no-such-server') } },
        }),
      ).rejects.toThrow();
    }
    expect(openOn(path)).toBe(0);
  });
});

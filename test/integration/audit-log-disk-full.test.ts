/**
 * The audit log when the disk fills up mid-batch. A write(2) to a file that reaches its limit
 * writes what fits and returns a short count; the code before counted those bytes and dropped
 * the rest of the batch without a word, leaving a cut line that the next batch went on from.
 * Now the rest is written too, so the write that fails throws and the batch is reported lost
 * (`onError` / `flush()`), and the next batch starts on a line of its own.
 *
 * Real process, real file: the writer runs under a soft file size limit (`ulimit -S -f`),
 * which makes write(2) short at the limit and then fail with EFBIG (Node ignores SIGXFSZ); the
 * limit is lifted with `prlimit` before its second batch.
 */
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { expect, it } from 'vitest';

const WRITER = fileURLToPath(new URL('../fixtures/audit/fsize-writer.ts', import.meta.url));

it('reports a batch cut by a full disk, and starts the next batch on a new line', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'fabric-audit-full-'));
  try {
    const path = join(dir, 'audit.log');
    const child = spawn(
      'bash',
      ['-c', 'ulimit -S -f 4 && exec "$0" "$@"', process.execPath, '--import', 'tsx', WRITER, path],
      { stdio: ['pipe', 'pipe', 'inherit'] },
    );
    const out: string[] = [];
    for await (const line of createInterface({ input: child.stdout })) {
      out.push(line);
      if (out.length === 1) {
        expect(statSync(path).size).toBe(4096); // the limit: the batch was cut there
        execFileSync('prlimit', ['--pid', String(child.pid), '--fsize=unlimited:']);
        child.stdin.end('go\n');
      }
    }
    expect(out).toEqual(['["EFBIG"]', '[]', 'done']);

    const lines = readFileSync(path, 'utf8').split('\n');
    expect(lines.pop()).toBe(''); // ends with a whole line
    const parsed = lines.map((l) => {
      try {
        return JSON.parse(l) as { agent: string; argsDigest: string };
      } catch {
        return undefined;
      }
    });
    // The first batch's whole lines, then its cut line (reported lost), then the second batch
    // on lines of their own.
    const cut = parsed.findIndex((p) => p === undefined);
    expect(cut).toBeGreaterThan(5);
    expect(parsed.filter((p) => p === undefined)).toHaveLength(1);
    expect(parsed.slice(cut + 1)).toHaveLength(5);
    for (const p of [...parsed.slice(0, cut), ...parsed.slice(cut + 1)]) {
      expect(p).toMatchObject({ agent: 'agent-é', tool: 'fs__read', outcome: 'ok' });
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const CLI_SOURCE = fileURLToPath(new URL('../../src/cli/main.ts', import.meta.url));
const PACKAGE = JSON.parse(
  readFileSync(new URL('../../package.json', import.meta.url), 'utf8'),
) as { scripts: Record<string, string> };

/** Allocates short-lived objects until V8 has grown the young generation; prints its peak size. */
const PEAK_NEW_SPACE = `
const v8 = require('node:v8');
let keep = [], peak = 0;
for (let i = 0; i < 3e6; i++) {
  keep.push({ i });
  if (keep.length > 100000) keep = [];
  if (i % 50000 === 0) {
    const s = v8.getHeapSpaceStatistics().find((x) => x.space_name === 'new_space');
    peak = Math.max(peak, s.space_size);
  }
}
console.log(peak);`;

describe('the node options agent-fabric runs with', () => {
  const firstLine = readFileSync(CLI_SOURCE, 'utf8').split('\n', 1)[0]!;

  it('the CLI file starts node with 8 MB semi-spaces through env -S (what npm bin links run)', () => {
    expect(firstLine).toBe('#!/usr/bin/env -S node --max-semi-space-size=8');
  });

  it.runIf(existsSync('/usr/bin/env'))(
    'env runs that line as one argument, as the kernel passes it, and V8 applies the size',
    () => {
      // The kernel hands everything after the interpreter path to it as a single argument.
      const lineArgument = firstLine.slice('#!/usr/bin/env '.length);
      const peak = (args: string[]): number => {
        const run = spawnSync('/usr/bin/env', args, { encoding: 'utf8' });
        expect(run.status, run.stderr).toBe(0);
        return Number(run.stdout.trim());
      };
      // new_space counts both semi-spaces: 2 × 8 MB with the option, 2 × 16 MB without it.
      expect(peak([lineArgument, '-e', PEAK_NEW_SPACE])).toBe(16 * 2 ** 20);
      expect(peak(['node', '-e', PEAK_NEW_SPACE])).toBeGreaterThan(16 * 2 ** 20);
    },
    120_000,
  );

  it('`npm start` passes the same option (node given a file path ignores its first line)', () => {
    // `exec`: npm signals only its child; the shell it runs scripts in must not stand between.
    expect(PACKAGE.scripts.start).toBe('exec node --max-semi-space-size=8 dist/cli/main.js serve');
  });
});

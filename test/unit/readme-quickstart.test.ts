import { readFileSync } from 'node:fs';
import { describe, expect, it, vi } from 'vitest';
import { TaskStatus } from '../../src/task.js';

const root = new URL('../../', import.meta.url);

/** The first ```ts block after `heading` in the README. */
export function readmeBlock(heading: string): string {
  const readme = readFileSync(new URL('README.md', root), 'utf8');
  const at = readme.indexOf(`\n${heading}\n`);
  if (at < 0) throw new Error(`README has no heading ${heading}`);
  const m = /```ts\n([\s\S]*?)```/.exec(readme.slice(at));
  if (m === null) throw new Error(`README section ${heading} has no ts block`);
  return m[1]!;
}

describe('README quick start', () => {
  it('is the shipped example, verbatim', () => {
    const example = readFileSync(new URL('examples/quickstart/quickstart.ts', root), 'utf8');
    expect(readmeBlock('## Quick start').trim()).toBe(
      example.replace(/\nexport \{ done \};\n$/, '\n').trim(),
    );
  });

  it('runs: spawns, schedules on a worker thread, waits, terminates', async () => {
    const log = vi.spyOn(console, 'log').mockImplementation(() => {});
    const mod = (await import('../../examples/quickstart/quickstart.js')) as {
      done: { status: TaskStatus; result: unknown };
    };
    expect(mod.done.status).toBe(TaskStatus.COMPLETED);
    expect(mod.done.result).toMatchObject({
      verdict: 'approve',
      reviewed: 'https://github.com/org/repo/pull/123',
    });
    expect(log).toHaveBeenCalledWith(expect.stringContaining('Result: {"reviewed"'));
  });
});

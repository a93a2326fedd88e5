import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { REPO_ROOT, git, tempDir } from '../fixtures/hooks/temp-store.js';

const FIXTURE = join(REPO_ROOT, 'test/fixtures/hooks/readme-example.ts');

/** The first ```ts block of the README's "## Hooks (GUPP)" section. */
async function readmeExample(): Promise<string> {
  const readme = await readFile(join(REPO_ROOT, 'README.md'), 'utf8');
  const start = readme.indexOf('## Hooks (GUPP)');
  expect(start).toBeGreaterThanOrEqual(0);
  const end = readme.indexOf('\n## ', start + 1);
  const section = readme.slice(start, end < 0 ? undefined : end);
  const m = /```ts\n([\s\S]*?)```/.exec(section);
  expect(m).not.toBeNull();
  return m![1]!;
}

describe('README Hooks (GUPP) example', () => {
  it('is the tested fixture, word for word (bar the import path)', async () => {
    const fixture = (await readFile(FIXTURE, 'utf8')).replace(
      "from '../../../src/hooks/index.js'",
      "from 'agent-fabric'",
    );
    expect(await readmeExample()).toBe(fixture);
  });

  it('runs', async () => {
    const dir = await tempDir();
    try {
      const { stdout } = await promisify(execFile)(process.execPath, ['--import', 'tsx', FIXTURE], {
        cwd: REPO_ROOT,
        env: { ...process.env, HOOKS_PATH: dir.path },
      });
      expect(stdout).toMatch(/^worktree: .*\.worktrees\/hk-/m);
      expect(stdout).toMatch(/^Pending: hk-\S+ - \{"task":"refactor","file":"api.py"\}$/m);
      expect(stdout).toMatch(/^status: COMPLETED$/m);
      expect(git(dir.path, 'log', '--format=%s', 'refs/fabric/hooks').split('\n')).toHaveLength(6);
    } finally {
      await dir.cleanup();
    }
  });
});

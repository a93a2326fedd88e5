/**
 * `npm start` as the README's quick start runs it: the package's own start script, started by
 * npm, prints where it listens and the credentials, and a SIGTERM sent to npm (what a process
 * manager or `kill <pid>` does) closes the sidecar and its upstreams, npm exiting 0. npm signals
 * only its direct child; when that child is the `sh -c` npm runs scripts in, the sidecar behind
 * it never hears of it and lives on, orphaned, with its upstreams.
 */
import { spawn } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { describe, expect, it } from 'vitest';
import { alive, CLI_MAIN, descendants, tempDir, TSX, until } from '../fixtures/gateway/harness.js';

const PACKAGE = JSON.parse(
  readFileSync(new URL('../../package.json', import.meta.url), 'utf8'),
) as { scripts: Record<string, string> };

describe('npm start', () => {
  it('prints the URL and tokens; SIGTERM to npm ends the sidecar and its upstreams, exit 0', async () => {
    // A project folder whose start script is the package's, and whose dist/cli/main.js runs the
    // CLI from source (through tsx in NODE_OPTIONS), so no build is needed.
    const dir = tempDir('npm-start');
    mkdirSync(join(dir, 'dist', 'cli'), { recursive: true });
    writeFileSync(
      join(dir, 'package.json'),
      JSON.stringify({ name: 'npm-start-test', private: true, scripts: PACKAGE.scripts }),
    );
    writeFileSync(
      join(dir, 'dist', 'cli', 'main.js'),
      `import ${JSON.stringify(pathToFileURL(CLI_MAIN).href)};\n`,
    );
    const env: NodeJS.ProcessEnv = { ...process.env };
    for (const key of Object.keys(env)) if (key.startsWith('FABRIC_')) delete env[key];
    // --ignore-scripts: the start script alone, without prestart's build.
    const npm = spawn('npm', ['start', '--ignore-scripts'], {
      cwd: dir,
      env: { ...env, FABRIC_HTTP_PORT: '0', NODE_OPTIONS: `--import ${TSX}` },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    npm.stdout.on('data', (c: Buffer) => (out += c.toString()));
    npm.stderr.resume();
    const exited = new Promise<number | null>((resolve) =>
      npm.once('exit', (code) => resolve(code)),
    );
    let pids: number[] = [];
    try {
      await until(() => out.includes('Add it to Claude Code'), 90_000);
      expect(out).toMatch(/MCP URL: +http:\/\/127\.0\.0\.1:\d+\/mcp/);
      expect(out).toMatch(/agent token: +afk_/);
      expect(out).toMatch(/admin token: +fab_admin_/);
      expect(out).toContain('claude mcp add --transport http agent-fabric');
      pids = descendants(npm.pid!);
      // The sidecar and the filesystem upstream it started, at least.
      expect(pids.length).toBeGreaterThanOrEqual(2);
      npm.kill('SIGTERM');
      const code = await exited;
      await until(() => pids.every((p) => !alive(p)), 30_000);
      expect(code).toBe(0);
    } finally {
      for (const p of [npm.pid!, ...pids]) {
        try {
          process.kill(p, 'SIGKILL');
        } catch {
          // gone already
        }
      }
    }
  }, 180_000);
});

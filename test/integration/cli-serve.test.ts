import { spawn, type ChildProcess } from 'node:child_process';
import { execFileSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { alive, httpClient, tempDir, until } from '../fixtures/gateway/harness.js';

const require = createRequire(import.meta.url);
const TSX = pathToFileURL(require.resolve('tsx')).href;
const MAIN = fileURLToPath(new URL('../../src/cli/main.ts', import.meta.url));

/** Pids of every descendant of `pid`. */
function descendants(pid: number): number[] {
  let out = '';
  try {
    out = execFileSync('ps', ['-e', '-o', 'pid=,ppid='], { encoding: 'utf8' });
  } catch {
    return [];
  }
  const children = new Map<number, number[]>();
  for (const line of out.trim().split('\n')) {
    const [p, pp] = line.trim().split(/\s+/).map(Number);
    if (p === undefined || pp === undefined) continue;
    children.set(pp, [...(children.get(pp) ?? []), p]);
  }
  const all: number[] = [];
  const walk = (p: number): void => {
    for (const c of children.get(p) ?? []) {
      all.push(c);
      walk(c);
    }
  };
  walk(pid);
  return all;
}

describe('agent-fabric serve', () => {
  let child: ChildProcess | undefined;
  afterAll(() => {
    if (child?.exitCode === null) child.kill('SIGKILL');
  });

  it('starts with no config, prints URL and token, serves a client, and exits cleanly on SIGTERM', async () => {
    const cwd = tempDir('cli');
    child = spawn(process.execPath, ['--import', TSX, MAIN, 'serve'], {
      cwd,
      env: { ...process.env, FABRIC_HTTP_PORT: '0' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout!.on('data', (c: Buffer) => (out += c.toString()));
    child.stderr!.on('data', () => undefined);
    await until(() => out.includes('"mcpServers"'), 25_000);
    const url = /MCP URL:\s+(\S+)/.exec(out)?.[1];
    const token = /agent token:\s+(\S+)/.exec(out)?.[1];
    expect(url).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/mcp$/);
    expect(token).toBeTruthy();
    expect(out).toContain(
      `claude mcp add --transport http agent-fabric ${url} --header "Authorization: Bearer ${token}"`,
    );

    const client = await httpClient(url!, token);
    const { tools } = await client.listTools();
    expect(tools.map((t) => t.name)).toContain('fs__read_text_file');
    await client.close();

    const kids = descendants(child.pid!);
    expect(kids.length).toBeGreaterThan(0); // the filesystem upstream
    const exited = new Promise<number | null>((resolve) =>
      child!.once('exit', (code) => resolve(code)),
    );
    child.kill('SIGTERM');
    expect(await exited).toBe(0);
    await until(() => kids.every((pid) => !alive(pid)));
  });
});

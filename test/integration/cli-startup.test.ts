/**
 * `agent-fabric serve` start-up failures, each run as a real CLI child process: the process must
 * exit non-zero (a supervisor takes 0 for success) with one last line `agent-fabric: <code>:
 * <message>` that names what failed, print no secret from the config, and leave no upstream
 * process behind.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { CLI_MAIN, HANGING_SERVER, tempDir, TSX, until } from '../fixtures/gateway/harness.js';

const STARTUP_SERVER = fileURLToPath(
  new URL('../fixtures/gateway/startup-server.mjs', import.meta.url),
);
const HOLD_LOCK = fileURLToPath(new URL('../fixtures/hooks/hold-lock.ts', import.meta.url));

/** A value that must never appear in the CLI's output. */
const SECRET = `sk-live-${randomBytes(12).toString('hex')}`;

interface Run {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** The last non-empty stderr line. */
  last: string;
}

/** Every process a test started, killed at the end in case a test failed before it ended. */
const spawned = new Set<ChildProcess>();
afterAll(() => {
  for (const child of spawned) if (child.exitCode === null) child.kill('SIGKILL');
});

/** Pids of live processes one of whose arguments contains `marker`. */
function pidsWithArg(marker: string): number[] {
  const pids: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    try {
      if (readFileSync(`/proc/${entry}/cmdline`, 'utf8').includes(marker)) pids.push(Number(entry));
    } catch {
      // gone already
    }
  }
  return pids;
}

/**
 * Runs `agent-fabric serve --config <file>` to its end. A run that does not end on its own is
 * killed (its code is then null, which no assertion accepts).
 */
function serve(
  dir: string,
  config: unknown,
  options: { onStdout?: (out: string, child: ChildProcess) => void } = {},
): Promise<Run> {
  const file = join(dir, 'fabric.yaml');
  writeFileSync(file, typeof config === 'string' ? config : JSON.stringify(config, null, 2));
  const child = spawn(process.execPath, ['--import', TSX, CLI_MAIN, 'serve', '--config', file], {
    cwd: dir,
    env: process.env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  spawned.add(child);
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (c: Buffer) => {
    stdout += c.toString();
    options.onStdout?.(stdout, child);
  });
  child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
  const guard = setTimeout(() => child.kill('SIGKILL'), 45_000);
  return new Promise((resolve) =>
    child.once('close', (code, signal) => {
      clearTimeout(guard);
      const lines = stderr.split('\n').filter((l) => l.trim() !== '');
      resolve({ code, signal, stdout, stderr, last: lines.at(-1) ?? '' });
    }),
  );
}

/** Asserts a failed start: exit 1, never listening, one coded last line, no secret anywhere. */
function expectFailure(run: Run, code: string): void {
  expect(run.signal).toBeNull();
  expect(run.code).toBe(1);
  expect(run.stdout).not.toContain('listening');
  expect(run.last).toMatch(new RegExp(`^agent-fabric: ${code}: \\S`));
  expect(run.stdout + run.stderr).not.toContain(SECRET);
}

const base = { http: { host: '127.0.0.1', port: 0 } };

/** A stdio upstream that carries the secret in an argument and in its environment. */
function upstream(command: string, args: string[], extra: Record<string, unknown> = {}) {
  // After `--`, so that `node -e` takes it as the script's argument, not its own option.
  return {
    command,
    args: [...args, '--', `--api-key=${SECRET}`],
    env: { API_KEY: SECRET },
    ...extra,
  };
}

describe.concurrent(
  'agent-fabric serve: start-up failures exit non-zero with one clear line',
  () => {
    it('an upstream whose command does not exist', async () => {
      const run = await serve(tempDir('start'), {
        ...base,
        upstreams: { tools: upstream('/nonexistent/bin/mcp-tools', []) },
      });
      expectFailure(run, 'FABRIC_ERR_UPSTREAM_UNAVAILABLE');
      expect(run.last).toContain('upstream tools failed to start');
      expect(run.last).toContain('"/nonexistent/bin/mcp-tools": not found (ENOENT)');
      // The failure is reported once, not also as an "upstream error" warning.
      expect(run.stderr.trim().split('\n')).toHaveLength(1);
    });

    it('a NATS server that is not reachable (named by its URL, its token never printed)', async () => {
      const port = await new Promise<number>((resolve) => {
        const srv = createServer().listen(0, '127.0.0.1', () => {
          const a = srv.address();
          srv.close(() => resolve(typeof a === 'object' && a !== null ? a.port : 0));
        });
      });
      const url = `nats://127.0.0.1:${port}`;
      const run = await serve(tempDir('start'), {
        ...base,
        nats: { url, token: SECRET, connectTimeoutMs: 1000 },
      });
      expectFailure(run, 'FABRIC_ERR_NATS_UNAVAILABLE');
      expect(run.last).toContain(`NATS at ${url} is unavailable`);
    });

    it('an upstream whose working directory does not exist', async () => {
      const run = await serve(tempDir('start'), {
        ...base,
        upstreams: {
          tools: upstream(process.execPath, [STARTUP_SERVER], { cwd: '/nonexistent/wd' }),
        },
      });
      expectFailure(run, 'FABRIC_ERR_UPSTREAM_UNAVAILABLE');
      expect(run.last).toContain(`working directory "/nonexistent/wd" does not exist`);
    });

    it('an upstream whose command is not executable', async () => {
      const dir = tempDir('start');
      const script = join(dir, 'not-executable.sh');
      writeFileSync(script, '#!/bin/sh\nexit 0\n');
      chmodSync(script, 0o644);
      const run = await serve(dir, { ...base, upstreams: { tools: upstream(script, []) } });
      expectFailure(run, 'FABRIC_ERR_UPSTREAM_UNAVAILABLE');
      expect(run.last).toContain(`${JSON.stringify(script)}: permission denied (EACCES)`);
    });

    it('an upstream that exits before answering initialize', async () => {
      const run = await serve(tempDir('start'), {
        ...base,
        upstreams: { tools: upstream(process.execPath, ['-e', 'process.exit(3)']) },
      });
      expectFailure(run, 'FABRIC_ERR_UPSTREAM_UNAVAILABLE');
      expect(run.last).toContain(
        `upstream tools failed to start: command ${JSON.stringify(process.execPath)} exited with code 3 before it answered initialize`,
      );
    });

    it('an upstream that exits while its catalog is listed', async () => {
      const run = await serve(tempDir('start'), {
        ...base,
        upstreams: { tools: upstream(process.execPath, [STARTUP_SERVER, 'exit-on-list']) },
      });
      expectFailure(run, 'FABRIC_ERR_UPSTREAM_UNAVAILABLE');
      expect(run.last).toContain('exited with code 7 while its tools, prompts and resources');
    });

    it('an upstream that never answers initialize (handshake timeout), and its process is gone', async () => {
      const marker = `never-answers-${randomBytes(6).toString('hex')}`;
      const run = await serve(tempDir('start'), {
        ...base,
        upstreams: {
          tools: upstream(process.execPath, ['-e', 'setInterval(() => {}, 1000)', marker], {
            startTimeoutSeconds: 1,
          }),
        },
      });
      expectFailure(run, 'FABRIC_ERR_UPSTREAM_UNAVAILABLE');
      expect(run.last).toContain('did not answer initialize within 1000 ms (startTimeoutSeconds)');
      await until(() => pidsWithArg(marker).length === 0);
    });

    it('an upstream that answers initialize but never its lists (the start bound covers them)', async () => {
      const run = await serve(tempDir('start'), {
        ...base,
        upstreams: {
          tools: upstream(process.execPath, [STARTUP_SERVER, 'silent-lists'], {
            startTimeoutSeconds: 1,
          }),
        },
      });
      expectFailure(run, 'FABRIC_ERR_UPSTREAM_UNAVAILABLE');
      expect(run.last).toContain('did not answer its tools, prompts and resources lists within');
    });

    it('an HTTP upstream nobody listens on (query and header secrets never printed)', async () => {
      const port = await closedPort();
      const run = await serve(tempDir('start'), {
        ...base,
        upstreams: {
          remote: {
            url: `http://127.0.0.1:${port}/mcp?token=${SECRET}`,
            headers: { authorization: `Bearer ${SECRET}` },
          },
        },
      });
      expectFailure(run, 'FABRIC_ERR_UPSTREAM_UNAVAILABLE');
      expect(run.last).toContain(`url "http://127.0.0.1:${port}/mcp" failed before it answered`);
      expect(run.last).toContain('ECONNREFUSED');
    });

    it('an HTTP upstream URL with credentials (fetch quotes the URL whole; it is redacted)', async () => {
      const run = await serve(tempDir('start'), {
        ...base,
        upstreams: { remote: { url: `http://agent:${SECRET}@127.0.0.1:9/mcp` } },
      });
      expectFailure(run, 'FABRIC_ERR_UPSTREAM_UNAVAILABLE');
      expect(run.last).toContain('url "http://127.0.0.1:9/mcp"');
      expect(run.stderr.trim().split('\n')).toHaveLength(1);
    });

    it('an optional upstream that cannot start does not stop start-up', async () => {
      let served = false;
      const run = await serve(
        tempDir('start'),
        {
          ...base,
          upstreams: { extra: upstream('/nonexistent/optional', [], { required: false }) },
        },
        {
          onStdout: (out, child) => {
            if (served || !out.includes('MCP URL')) return;
            served = true;
            child.kill('SIGTERM'); // started and serving: stop it as a supervisor would
          },
        },
      );
      expect(served).toBe(true);
      expect(run.code).toBe(0);
      expect(run.stderr).toContain('optional upstream failed to start');
      expect(run.stdout + run.stderr).not.toContain(SECRET);
    });

    it('a config file that is not valid YAML', async () => {
      const run = await serve(tempDir('start'), 'http: { port: 0\nupstreams: [\n');
      expectFailure(run, 'FABRIC_ERR_CONFIG_FILE');
      expect(run.last).toMatch(/fabric\.yaml:\d+: /);
    });

    it('a config file with an unknown key', async () => {
      const run = await serve(tempDir('start'), { ...base, upstream: {} });
      expectFailure(run, 'FABRIC_ERR_CONFIG_FILE');
      expect(run.last).toContain('upstream: is not a known key');
    });

    it('a config file that does not exist', async () => {
      const missing = join(tempDir('start'), 'nope.yaml');
      const child = spawn(process.execPath, ['--import', TSX, CLI_MAIN, 'serve', '-c', missing], {
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      spawned.add(child);
      let stderr = '';
      child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
      const code = await new Promise<number | null>((resolve) => child.once('close', resolve));
      expect(code).toBe(1);
      expect(stderr.trim()).toMatch(
        /^agent-fabric: FABRIC_ERR_CONFIG_FILE: .*nope\.yaml: cannot be read/,
      );
    });

    it('a secret in an invalid config value is not echoed', async () => {
      const run = await serve(tempDir('start'), { ...base, adminToken: SECRET.slice(0, 12) });
      expectFailure(run, 'FABRIC_ERR_CONFIG_FILE');
      expect(run.last).toContain('adminToken');
      expect(run.stderr).not.toContain(SECRET.slice(0, 12));
    });

    it('an HTTP port already in use, and the upstream it started is gone', async () => {
      const server = await listening();
      const marker = `port-test-${randomBytes(6).toString('hex')}`;
      try {
        const { port } = server.address() as { port: number };
        const run = await serve(tempDir('start'), {
          http: { host: '127.0.0.1', port },
          upstreams: { tools: upstream(process.execPath, [STARTUP_SERVER, 'ok', marker]) },
        });
        expectFailure(run, 'FABRIC_ERR_LISTEN');
        expect(run.last).toBe(
          `agent-fabric: FABRIC_ERR_LISTEN: HTTP cannot listen on 127.0.0.1:${port}: the address is already in use (EADDRINUSE)`,
        );
        await until(() => pidsWithArg(marker).length === 0);
      } finally {
        server.close();
      }
    });

    it('a gRPC port already in use', async () => {
      const server = await listening();
      try {
        const { port } = server.address() as { port: number };
        const run = await serve(tempDir('start'), { ...base, grpc: { host: '127.0.0.1', port } });
        expectFailure(run, 'FABRIC_ERR_LISTEN');
        expect(run.last).toContain(`gRPC cannot listen on 127.0.0.1:${port}`);
      } finally {
        server.close();
      }
    });

    it('a plugin whose create() throws a multi-line error', async () => {
      const dir = tempDir('start');
      writeFileSync(
        join(dir, 'thrower.mjs'),
        `export default { name: 'thrower', version: '1.0.0', kind: 'policy',
         create() { throw new Error('first line\\nsecond line'); } };`,
      );
      const run = await serve(dir, { ...base, plugins: [{ module: join(dir, 'thrower.mjs') }] });
      expectFailure(run, 'FABRIC_ERR_PLUGIN');
      expect(run.last).toBe(
        'agent-fabric: FABRIC_ERR_PLUGIN: plugin thrower: create() failed: first line second line',
      );
    });

    it('a plugin whose module never finishes loading (top-level await)', async () => {
      const dir = tempDir('start');
      writeFileSync(join(dir, 'never.mjs'), 'await new Promise(() => {});\nexport default {};\n');
      const run = await serve(dir, { ...base, plugins: [{ module: join(dir, 'never.mjs') }] });
      // This one used to exit 0: nothing else kept the process alive.
      expect(run.code).not.toBe(0);
      expectFailure(run, 'FABRIC_ERR_PLUGIN_TIMEOUT');
    });

    it('a hook store locked by another process', async () => {
      const dir = tempDir('start');
      const storagePath = join(dir, 'hooks');
      mkdirSync(storagePath);
      const holder = spawn(process.execPath, ['--import', TSX, HOLD_LOCK, storagePath], {
        stdio: ['ignore', 'pipe', 'inherit'],
      });
      spawned.add(holder);
      try {
        let out = '';
        holder.stdout.on('data', (c: Buffer) => (out += c.toString()));
        await until(() => out.includes('ready'), 20_000);
        const run = await serve(dir, { ...base, hooks: { storagePath, useGitWorktree: false } });
        expectFailure(run, 'FABRIC_ERR_HOOK_STORE_LOCKED');
        expect(run.last).toContain(`locked by pid ${holder.pid}`);
      } finally {
        holder.kill('SIGTERM');
      }
    });

    it('a sandbox that cannot be created', async () => {
      const dir = tempDir('start');
      writeFileSync(join(dir, 'a-file'), '');
      const run = await serve(dir, { ...base, sandbox: join(dir, 'a-file', 'sandbox') });
      expectFailure(run, 'FABRIC_ERR_CONFIG');
      expect(run.last).toContain('sandbox cannot be created: ENOTDIR');
    });

    it('an audit log that cannot be opened', async () => {
      const dir = tempDir('start');
      writeFileSync(join(dir, 'a-file'), '');
      const run = await serve(dir, { ...base, audit: { path: join(dir, 'a-file', 'audit.log') } });
      expectFailure(run, 'FABRIC_ERR_CONFIG');
      expect(run.last).toContain('audit.path cannot be opened');
    });
  },
);

describe('agent-fabric serve: SIGTERM during start-up', () => {
  it('closes what start-up started (the slow upstream too) and exits 0', async () => {
    const marker = `slow-start-${randomBytes(6).toString('hex')}`;
    const dir = tempDir('start-signal');
    const file = join(dir, 'fabric.yaml');
    writeFileSync(
      file,
      JSON.stringify({
        ...base,
        upstreams: {
          slow: {
            command: process.execPath,
            args: [HANGING_SERVER, marker],
            env: { STARTUP_DELAY_MS: '1500' },
          },
        },
      }),
    );
    // Its own folder: the default state file (.fabric/state.db) must not be the repository's.
    const child = spawn(process.execPath, ['--import', TSX, CLI_MAIN, 'serve', '--config', file], {
      cwd: dir,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    spawned.add(child);
    let stderr = '';
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    const closed = new Promise<number | null>((resolve) => child.once('close', (c) => resolve(c)));
    // The upstream is running but has not answered yet: start-up is in progress.
    await until(() => pidsWithArg(marker).length > 0, 20_000);
    child.kill('SIGTERM');
    expect(await closed).toBe(0);
    expect(stderr).toContain('SIGTERM received, shutting down');
    await until(() => pidsWithArg(marker).length === 0);
  }, 60_000);
});

/** A port nobody listens on (bound, then released). */
async function closedPort(): Promise<number> {
  const server = await listening();
  const { port } = server.address() as { port: number };
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** A TCP server holding a port on 127.0.0.1. */
async function listening(): Promise<Server> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return server;
}

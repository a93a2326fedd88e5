/**
 * Shutdown of the real `agent-fabric serve` (child processes, a real SQLite state file, stdio
 * upstreams, the official SDK client over Streamable HTTP and grpc-js) with calls in flight:
 *
 * - a call in flight at SIGTERM that finishes within `gateway.shutdownGraceSeconds` is answered
 *   over both doors (the doors used to cut their connections after 1 s / 2 s while the gateway
 *   still let the call run: it ran and was charged, and the agent got a dropped connection or
 *   no answer at all);
 * - a second signal during the shutdown (an impatient Ctrl-C) exits 1 at once, saying so, and
 *   leaves no upstream process behind, grandchildren included (the signal's default action used
 *   to end the sidecar and leave the upstream's detached process group orphaned), and the audit
 *   records still queued in memory are written;
 * - SIGHUP (the terminal or session went away) shuts down as SIGTERM does: before, Node's default
 *   action ended the process at once, with no cleanup, and left the upstream's detached process
 *   group (grandchildren included) running;
 * - a shutdown that cannot finish — a start-up waiting for an upstream that never answers
 *   (`startTimeoutSeconds: 3600`), a git command of the hook store that never returns — ends at
 *   `shutdownTimeoutSeconds`, naming what it still waited for, with exit 1 and no upstream left
 *   (before, the process waited as long as the hung part did: an hour, or for ever);
 * - `agent-fabric mcp --in-process` whose client closes stdin shuts down under the same bound,
 *   also while its start-up waits (before, stdin's end was not looked at until the session
 *   read it, and the close that followed had no bound);
 * - a SIGKILL of the sidecar leaves no upstream process behind either, grandchildren that never
 *   read their stdin included: a watchdog (`sh`, reading a pipe from the sidecar) kills the
 *   process groups it was told of when the pipe ends (before, they lived on, orphaned);
 * - after a SIGKILL, a restart starts even when the dead sidecar's pid now belongs to another
 *   process (a reboot, or a crash long ago): the state lock names the holder's boot and start
 *   time, so a reused pid is told apart (before, serve refused with FABRIC_ERR_STATE_LOCKED
 *   until an operator removed the lock).
 */
import { execFileSync, spawn } from 'node:child_process';
import { chmodSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { create } from '@bufbuild/protobuf';
import { afterAll, describe, expect, it } from 'vitest';
import { CallToolRequestSchema, type CallToolResponse } from '../../src/gen/fabric/v1/tool_pb.js';
import { TOOL_SERVICE_DEFINITION } from '../../src/rpc/tool-service.js';
import {
  alive,
  CLI_MAIN,
  descendants,
  tempDir,
  text,
  TSX,
  until,
} from '../fixtures/gateway/harness.js';
import { grpcClient, unary } from '../fixtures/grpc-client.js';
import { callApi } from '../fixtures/api.js';
import { cleanUp, connect, freePort, serve, spawnServe, stop } from '../fixtures/state/serve.js';

afterAll(cleanUp);

const SLOW_SERVER = new URL('../fixtures/gateway/slow-server.mjs', import.meta.url).pathname;
const STARTUP_SERVER = new URL('../fixtures/gateway/startup-server.mjs', import.meta.url).pathname;

/** Writes `<dir>/fabric.json`: the slow upstream (run by `wrapper` when given) and one agent. */
async function writeConfig(dir: string, count: string, extra: object = {}, wrapper?: string) {
  const node = `${process.execPath} ${SLOW_SERVER}`;
  writeFileSync(
    join(dir, 'fabric.json'),
    JSON.stringify({
      http: { host: '127.0.0.1', port: await freePort() },
      upstreams: {
        slow: {
          ...(wrapper === undefined
            ? { command: process.execPath, args: [SLOW_SERVER] }
            : { command: 'sh', args: ['-c', `${wrapper} exec ${node}`] }),
          env: { COUNT_FILE: count },
          stderr: 'ignore',
        },
      },
      policies: [{ name: 'default-allow', rules: [{ tool: '*', action: 'allow' }] }],
      audit: { path: join(dir, 'audit.log') },
      agents: [{ name: 'worker' }],
      ...extra,
    }),
  );
}

/** The lines the slow upstream wrote to its COUNT_FILE. */
function ran(file: string): string[] {
  try {
    return readFileSync(file, 'utf8').split('\n').filter(Boolean);
  } catch {
    return [];
  }
}

describe('agent-fabric serve: SIGTERM with calls in flight', () => {
  it('answers the calls that finish within the grace, over HTTP and gRPC, and exits 0', async () => {
    const dir = tempDir('cli-shutdown');
    const count = join(dir, 'ran.txt');
    await writeConfig(dir, count, { grpc: { port: 0 }, gateway: { shutdownGraceSeconds: 60 } });
    const r = await serve(dir);
    const grpcAddress = /gRPC:\s+(\S+)/.exec(r.out)![1]!;
    const client = await connect(r.url, r.token);
    // A first call teaches the gateway the tool's cost estimate: until then a second call of
    // the tool waits for the first one's result (README, budgets).
    const first = await client.callTool({ name: 'slow__slow', arguments: { label: 'w', ms: 0 } });
    expect(text(first)).toBe('slept w');
    // Each call outlives the doors' old cut (1 s HTTP, 2 s gRPC) by far, the grace by far less.
    const overHttp = client.callTool(
      { name: 'slow__slow', arguments: { label: 'h', ms: 3000 } },
      undefined,
      { timeout: 20_000 },
    );
    const tools = grpcClient(TOOL_SERVICE_DEFINITION, grpcAddress);
    const overGrpc = unary<CallToolResponse>(
      tools,
      'callTool',
      create(CallToolRequestSchema, {
        name: 'slow__slow',
        args: { case: 'arguments', value: { label: 'g', ms: 3000 } },
      }),
      r.token,
    );
    try {
      await until(() => ran(count).length === 4, 30_000); // both reached the upstream
      const exited = stop(r, 'SIGTERM');

      // Each settles (an unanswered one fails within its timeout, not the test's).
      const [http, grpc] = await Promise.all([
        overHttp.then(
          (result) => text(result),
          (error: unknown) => `failed: ${String(error)}`,
        ),
        overGrpc.then(
          (res) => (res.isError ? 'isError' : JSON.stringify(res.result)),
          (error: unknown) => `failed: ${String(error)}`,
        ),
      ]);
      expect(http).toBe('slept h');
      expect(grpc).toContain('slept g');
      expect(await exited).toBe(0);
    } finally {
      tools.close();
    }
    expect(ran(count).slice(2).sort()).toEqual(['end g', 'end h', 'start g', 'start h']);
  });

  it('exits 1 at once on a second signal, and leaves no upstream process behind', async () => {
    const dir = tempDir('cli-shutdown-twice');
    const count = join(dir, 'ran.txt');
    // The upstream leaves a grandchild in its process group, as servers started by npx do.
    // Audit records wait up to a minute in memory: the exit must write them.
    const audit = join(dir, 'audit.log');
    await writeConfig(
      dir,
      count,
      { audit: { path: audit, flushIntervalMs: 60_000 } },
      'sleep 600 &',
    );
    const r = await serve(dir);
    const kids = descendants(r.child.pid!);
    try {
      expect(kids.length).toBeGreaterThan(1); // the server and its grandchild
      const client = await connect(r.url, r.token);
      const done = await client.callTool({
        name: 'slow__slow',
        arguments: { label: 'done', ms: 0 },
      });
      expect(text(done)).toBe('slept done');
      const call = client
        .callTool({ name: 'slow__slow', arguments: { label: 'x', ms: 600_000 } }, undefined, {
          timeout: 600_000,
        })
        .catch((error: unknown) => error);
      await until(() => ran(count).length === 3, 30_000);

      const exited = new Promise<number | null>((resolve) =>
        r.child.once('exit', (code) => resolve(code)),
      );
      r.child.kill('SIGINT');
      await until(() => r.err().includes('SIGINT received, shutting down'));
      r.child.kill('SIGINT'); // the call holds the shutdown for its 60 s grace: Ctrl-C again
      expect(await exited).toBe(1);
      expect(r.err()).toContain(
        'SIGINT received again: exiting now without finishing the shutdown',
      );
      await until(() => kids.every((pid) => !alive(pid)));
      expect(await call).toBeInstanceOf(Error);
      // The finished call's record was still queued: written at the exit.
      const lines = readFileSync(audit, 'utf8').split('\n').filter(Boolean);
      expect(lines.map((l) => JSON.parse(l) as Record<string, unknown>)).toEqual([
        expect.objectContaining({ tool: 'slow__slow', outcome: 'ok' }),
      ]);
    } finally {
      for (const pid of kids) if (alive(pid)) process.kill(pid, 'SIGKILL');
    }
  });

  it('shuts down on SIGHUP as on SIGTERM, and leaves no upstream process behind', async () => {
    const dir = tempDir('cli-shutdown-hup');
    const count = join(dir, 'ran.txt');
    await writeConfig(dir, count, {}, 'sleep 600 &');
    const r = await serve(dir);
    const kids = descendants(r.child.pid!);
    try {
      expect(kids.length).toBeGreaterThan(1); // the server and its grandchild
      expect(await stop(r, 'SIGHUP')).toBe(0);
      expect(r.err()).toContain('SIGHUP received, shutting down');
      await until(() => kids.every((pid) => !alive(pid)));
    } finally {
      for (const pid of kids) if (alive(pid)) process.kill(pid, 'SIGKILL');
    }
  });

  it(
    'leaves no upstream process behind after a SIGKILL, grandchildren that ignore stdin included',
    { timeout: 60_000 },
    async () => {
      const dir = tempDir('cli-shutdown-kill');
      const count = join(dir, 'ran.txt');
      // The grandchild (`sleep`) never reads its stdin: the pipe's end does not stop it.
      await writeConfig(dir, count, {}, 'sleep 600 &');
      const r = await serve(dir);
      const kids = descendants(r.child.pid!);
      const sleeper = kids.find((pid) => {
        try {
          return readFileSync(`/proc/${pid}/cmdline`, 'utf8').startsWith('sleep');
        } catch {
          return false;
        }
      });
      try {
        expect(sleeper).toBeDefined(); // the server and its grandchild
        expect(await stop(r, 'SIGKILL')).toBeNull();
        // Before: the upstream's detached process group lived on, orphaned (the server ended on
        // its stdin's end; `sleep 600` ran its 10 minutes).
        await until(() => kids.every((pid) => !alive(pid)), 20_000);
      } finally {
        for (const pid of kids) if (alive(pid)) process.kill(pid, 'SIGKILL');
      }
    },
  );

  it('starts after a SIGKILL when the dead sidecar’s pid was reused by another process', async () => {
    const dir = tempDir('cli-shutdown-pid-reuse');
    await writeConfig(dir, join(dir, 'ran.txt'), { state: { path: join(dir, 'state.db') } });
    const first = await serve(dir);
    expect(await stop(first, 'SIGKILL')).toBeNull();
    const lockPath = join(dir, 'state.db.lock');
    const lock = JSON.parse(readFileSync(lockPath, 'utf8')) as { pid: number };
    expect(lock.pid).toBe(first.child.pid);
    // Another process now has that pid (simulated: the lock is rewritten to name a live one).
    const other = spawn('sleep', ['600'], { stdio: 'ignore' });
    try {
      writeFileSync(lockPath, JSON.stringify({ ...lock, pid: other.pid }));
      const again = await serve(dir);
      expect(again.token).toBe(first.token); // the same state
      expect(await stop(again, 'SIGTERM')).toBe(0);
    } finally {
      other.kill('SIGKILL');
    }
  });
});

describe('agent-fabric serve: a shutdown that cannot finish', () => {
  it('ends a start-up that waits for a silent upstream at shutdownTimeoutSeconds, naming it', async () => {
    const dir = tempDir('cli-shutdown-startup');
    writeFileSync(
      join(dir, 'fabric.json'),
      JSON.stringify({
        http: { host: '127.0.0.1', port: await freePort() },
        upstreams: {
          // Answers initialize, never tools/list: the start-up waits its whole hour for it.
          silent: {
            command: process.execPath,
            args: [STARTUP_SERVER, 'silent-lists'],
            stderr: 'ignore',
            startTimeoutSeconds: 3600,
          },
        },
        gateway: { shutdownGraceSeconds: 1 },
        shutdownTimeoutSeconds: 3,
        agents: [{ name: 'worker' }],
      }),
    );
    const r = spawnServe(dir);
    const exited = new Promise<number | null>((resolve) =>
      r.child.once('exit', (code) => resolve(code)),
    );
    let kids: number[] = [];
    try {
      // The upstream runs: start-up is at its step `gateway`, waiting for the catalog.
      await until(() => {
        kids = descendants(r.child.pid!);
        return kids.length > 0;
      }, 30_000);
      r.child.kill('SIGTERM');
      expect(await exited).toBe(1);
      expect(r.err()).toContain('SIGTERM received during start-up (step gateway)');
      expect(r.err()).toContain(
        'the shutdown did not finish within 3 s (shutdownTimeoutSeconds); still waiting for: start-up (step gateway)',
      );
      await until(() => kids.every((pid) => !alive(pid)));
    } finally {
      for (const pid of kids) if (alive(pid)) process.kill(pid, 'SIGKILL');
    }
  });

  it('ends a shutdown held by a hung git command of the hook store, naming it', async () => {
    const dir = tempDir('cli-shutdown-git');
    // A `git` first on PATH that runs the real one, except while `hang` exists: then it waits
    // (as a git command on a hung network file system does), and goes on once it is removed.
    const realGit = execFileSync('sh', ['-c', 'command -v git'], { encoding: 'utf8' }).trim();
    const bin = join(dir, 'bin');
    const hang = join(dir, 'hang');
    mkdirSync(bin);
    writeFileSync(
      join(bin, 'git'),
      `#!/bin/sh\nwhile [ -e '${hang}' ]; do sleep 0.1; done\nexec '${realGit}' "$@"\n`,
    );
    chmodSync(join(bin, 'git'), 0o755);
    const admin = 'admin-token-for-shutdown-tests-0123';
    writeFileSync(
      join(dir, 'fabric.json'),
      JSON.stringify({
        http: { host: '127.0.0.1', port: await freePort() },
        adminToken: admin,
        upstreams: {},
        hooks: { storagePath: join(dir, 'hooks'), useGitWorktree: false },
        gateway: { shutdownGraceSeconds: 1 },
        shutdownTimeoutSeconds: 3,
        agents: [{ name: 'worker' }],
      }),
    );
    const r = await serve(dir, { PATH: `${bin}:${process.env.PATH ?? ''}` });
    const agentId = /\(worker, (\S+)\)/.exec(r.out)![1]!;
    try {
      writeFileSync(hang, '');
      const created = callApi(r.url, 'FabricService/CreateHook', { agentId, workItem: {} }, admin)
        .then((res) => res.status)
        .catch((error: unknown) => error);
      // The hook store's git command waits (one of the wrapper's `sleep`s runs).
      await until(() =>
        descendants(r.child.pid!).some((pid) => {
          try {
            return readFileSync(`/proc/${pid}/cmdline`, 'utf8').startsWith('sleep');
          } catch {
            return false;
          }
        }),
      );
      expect(await stop(r, 'SIGTERM')).toBe(1);
      expect(r.err()).toContain(
        'the shutdown did not finish within 3 s (shutdownTimeoutSeconds); still waiting for: the fabric (hook store',
      );
      expect(await created).toBeInstanceOf(Error); // its connection went with the process
    } finally {
      rmSync(hang, { force: true }); // the orphaned wrapper goes on, and ends
    }
  });
});

describe('agent-fabric mcp --in-process: the client closes stdin', () => {
  /** The processes below `pid` running the start-up test server. */
  function upstreamsOf(pid: number): number[] {
    return descendants(pid).filter((kid) => {
      try {
        return readFileSync(`/proc/${kid}/cmdline`, 'utf8').includes('startup-server.mjs');
      } catch {
        return false;
      }
    });
  }

  /** Starts the in-process gateway with `config` in a temp folder; stdin stays a pipe. */
  function inProcess(config: object) {
    const dir = tempDir('cli-shutdown-inproc');
    writeFileSync(join(dir, 'fabric.json'), JSON.stringify({ state: 'memory', ...config }));
    const child = spawn(
      process.execPath,
      ['--import', TSX, CLI_MAIN, 'mcp', '--in-process', '--config', join(dir, 'fabric.json')],
      { cwd: dir, stdio: ['pipe', 'pipe', 'pipe'] },
    );
    let err = '';
    child.stderr.on('data', (c: Buffer) => (err += c.toString()));
    child.stdout.resume();
    const exited = new Promise<number | null>((resolve) => child.once('exit', (c) => resolve(c)));
    return { child, exited, err: () => err };
  }

  it('ends a start-up waiting for a silent upstream at shutdownTimeoutSeconds, naming it', async () => {
    const run = inProcess({
      upstreams: {
        silent: {
          command: process.execPath,
          args: [STARTUP_SERVER, 'silent-lists'],
          stderr: 'ignore',
          startTimeoutSeconds: 3600,
        },
      },
      gateway: { shutdownGraceSeconds: 1 },
      shutdownTimeoutSeconds: 3,
      policies: [{ name: 'default-allow', rules: [{ tool: '*', action: 'allow' }] }],
      agents: [{ name: 'worker' }],
    });
    let kids: number[] = [];
    try {
      // The upstream runs (not only tsx's own helper process): start-up waits at `gateway`.
      await until(() => {
        kids = upstreamsOf(run.child.pid!);
        return kids.length > 0;
      }, 30_000);
      run.child.stdin.end();
      expect(await run.exited).toBe(1);
      expect(run.err()).toContain('stdin ended during start-up (step gateway)');
      expect(run.err()).toContain(
        'the shutdown did not finish within 3 s (shutdownTimeoutSeconds); still waiting for: start-up (step gateway)',
      );
      await until(() => kids.every((pid) => !alive(pid)));
    } finally {
      for (const pid of kids) if (alive(pid)) process.kill(pid, 'SIGKILL');
    }
  });

  it('shuts down and exits 0 when stdin ends after start-up, its upstream gone', async () => {
    const run = inProcess({
      upstreams: {
        ok: { command: process.execPath, args: [STARTUP_SERVER, 'ok'], stderr: 'ignore' },
      },
      policies: [{ name: 'default-allow', rules: [{ tool: '*', action: 'allow' }] }],
      agents: [{ name: 'worker' }],
    });
    let kids: number[] = [];
    await until(() => {
      kids = upstreamsOf(run.child.pid!);
      return kids.length > 0;
    }, 30_000);
    // Serving: an initialize is answered.
    run.child.stdin.write(
      `${JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'initialize', params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 't', version: '1' } } })}\n`,
    );
    run.child.stdin.end();
    expect(await run.exited).toBe(0);
    expect(run.err()).toContain('stdin ended, shutting down');
    await until(() => kids.every((pid) => !alive(pid)));
  });
});

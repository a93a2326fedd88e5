/**
 * An agent process's output cannot exhaust the sidecar. A hostile review found pool-process read
 * each child's stdout/stderr with readline and cut lines at `maxLogLineChars` only after
 * buffering the whole line: a child (which holds the agent's credential — the attacker's, in our
 * threat model — or a buggy worker dumping a blob) writing 700 MiB without a newline made the
 * sidecar buffer it all, and past V8's string limit readline's `+=` threw a RangeError from a
 * stream 'data' handler, uncaught: the sidecar exited. Now lines are split as chunks arrive: at
 * most maxLogLineChars (plus the credential's length, for masking) of a line are kept, a longer
 * line is logged at once marked cut, and the rest up to the next newline is dropped unread.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, describe, expect, it, vi } from 'vitest';
import { AgentFabric } from '../../src/fabric.js';
import { PluginHost, type PluginLogEntry } from '../../src/plugins/plugin-host.js';
import { alive, CLI_MAIN, tempDir, TSX, until } from '../fixtures/gateway/harness.js';

const POOL_PROCESS = fileURLToPath(new URL('../../plugins/pool-process/index.js', import.meta.url));
const ENDLESS_LINE = fileURLToPath(new URL('../fixtures/pool/endless-line.mjs', import.meta.url));

describe('pool-process and an agent process that never ends its output line (real sidecar)', () => {
  const spawned: ChildProcess[] = [];
  const pidFiles: string[] = [];
  afterAll(() => {
    for (const c of spawned) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    for (const f of pidFiles) {
      if (!existsSync(f)) continue;
      const pid = Number(readFileSync(f, 'utf8'));
      if (alive(pid)) process.kill(pid, 'SIGKILL');
    }
  });

  it('reads all 700 MiB with bounded memory, logs the line cut, and keeps serving', async () => {
    const dir = tempDir('pool-process-output');
    const pidFile = join(dir, 'agent.pid');
    const doneFile = join(dir, 'agent.done');
    pidFiles.push(pidFile);
    const file = join(dir, 'fabric.json');
    writeFileSync(
      file,
      JSON.stringify({
        http: { host: '127.0.0.1', port: 0 },
        state: 'memory',
        adminToken: 'admin-token-for-pool-process-output-0123',
        plugins: [
          {
            module: POOL_PROCESS,
            options: {
              command: process.execPath,
              args: [ENDLESS_LINE, pidFile, doneFile],
              maxLogLineChars: 100,
            },
          },
        ],
        pools: [{ id: 'workers', minAgents: 1, maxAgents: 1, provider: 'process' }],
      }),
    );
    const child = spawn(process.execPath, ['--import', TSX, CLI_MAIN, 'serve', '--config', file], {
      cwd: dir,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    spawned.push(child);
    let out = '';
    let err = '';
    child.stdout!.on('data', (c: Buffer) => (out += c.toString()));
    child.stderr!.on('data', (c: Buffer) => (err += c.toString()));
    let exit: { code: number | null; signal: NodeJS.Signals | null } | undefined;
    child.once('exit', (code, signal) => (exit = { code, signal }));
    await until(() => /MCP URL:\s+\S+/.test(out) || exit !== undefined, 30_000);
    expect(exit, `did not start: ${err}`).toBeUndefined();
    const url = /MCP URL:\s+(\S+)/.exec(out)![1]!;

    // The agent's writes wait for the sidecar to read them: `done` means all 700 MiB were read.
    await until(() => existsSync(doneFile) || exit !== undefined, 80_000);
    expect(exit, `sidecar died: ${err.split('\n').slice(-12).join('\n')}`).toBeUndefined();
    expect(out + err).toContain(`${'x'.repeat(100)}… [cut: longer than 100 characters]`);
    const res = await fetch(new URL('/healthz', url));
    expect(res.status).toBe(200);
  }, 120_000);
});

describe('pool-process log lines', () => {
  let fabric: AgentFabric | undefined;
  let host: PluginHost | undefined;
  afterEach(async () => {
    await host?.close();
    await fabric?.close();
    host = fabric = undefined;
  });

  it('a long line is logged cut as soon as it passes the bound; the credential is masked across the cut; the next line is whole', async () => {
    const dir = tempDir('pool-process-lines');
    const script = join(dir, 'agent.cjs');
    const go = join(dir, 'go');
    // 90 'a', the credential (straddling the 100-character bound), 5 MiB more, no newline yet;
    // the newline and an ordinary line only once the test says so (the cut line was logged).
    writeFileSync(
      script,
      `const fs = require('node:fs');
       process.stdout.write('a'.repeat(90) + process.env.FABRIC_CREDENTIAL + 'b'.repeat(5 << 20));
       const t = setInterval(() => {
         if (!fs.existsSync(${JSON.stringify(go)})) return;
         clearInterval(t);
         process.stdout.write('b'.repeat(1000) + '\\nnext line\\r\\n');
         setInterval(() => {}, 60000);
       }, 20);`,
    );
    fabric = new AgentFabric({}, { pools: { reconcileIntervalMs: 60_000 } });
    const logs: PluginLogEntry[] = [];
    host = new PluginHost(fabric, { log: (e) => logs.push(e) });
    await host.load(POOL_PROCESS, {
      command: process.execPath,
      args: [script],
      url: 'http://127.0.0.1:9/mcp',
      maxLogLineChars: 100,
      stopTimeoutMs: 500,
    });
    const pool = await fabric.createPool({
      poolId: 'p',
      model: 'm',
      minAgents: 1,
      provider: 'process',
    });
    const agentId = pool.spawned[0]!.id;
    const lines = (): PluginLogEntry[] =>
      logs.filter((l) => l.agentId === agentId && l.stream === 'stdout');

    // Logged with no newline written yet: the line is not buffered whole.
    await vi.waitFor(() => expect(lines()).toHaveLength(1), { timeout: 15_000 });
    const [cut] = lines();
    expect(cut).toMatchObject({ level: 'info', cut: true });
    expect(cut!.msg).toBe(
      `${'a'.repeat(90)}[credential]`.slice(0, 100) + '… [cut: longer than 100 characters]',
    );
    const credential = (pool.spawned[0] as { credential: string }).credential;
    expect(JSON.stringify(logs)).not.toContain(credential.slice(0, 10));

    // The rest of the long line is dropped; the line after it is logged whole (CR removed).
    writeFileSync(go, '');
    await vi.waitFor(() => expect(lines()).toHaveLength(2), { timeout: 15_000 });
    expect(lines()[1]).toMatchObject({ level: 'info', msg: 'next line' });
    expect(lines()[1]!.cut).toBeUndefined();
  });

  it('a process flooding its output gets maxLogLinesPerSecond lines a second into the log; every other line is counted as dropped', async () => {
    const dir = tempDir('pool-process-flood');
    const script = join(dir, 'agent.cjs');
    const written = join(dir, 'written');
    const go = join(dir, 'go');
    // 20 000 short lines on stdout and stderr at once; one more line and exit once told to.
    writeFileSync(
      script,
      `const fs = require('node:fs');
       let out = '';
       for (let i = 0; i < 10000; i++) out += 'line ' + i + '\\n';
       process.stderr.write(out);
       process.stdout.write(out, () => fs.writeFileSync(${JSON.stringify(written)}, ''));
       const t = setInterval(() => {
         if (!fs.existsSync(${JSON.stringify(go)})) return;
         clearInterval(t);
         process.stdout.write('last\\n', () => process.exit(0));
       }, 20);`,
    );
    fabric = new AgentFabric({}, { pools: { reconcileIntervalMs: 60_000 } });
    const logs: PluginLogEntry[] = [];
    host = new PluginHost(fabric, { log: (e) => logs.push(e) });
    const started = performance.now();
    await host.load(POOL_PROCESS, {
      command: process.execPath,
      args: [script],
      url: 'http://127.0.0.1:9/mcp',
      maxLogLinesPerSecond: 50,
      stopTimeoutMs: 500,
    });
    const pool = await fabric.createPool({
      poolId: 'p',
      model: 'm',
      minAgents: 1,
      provider: 'process',
    });
    const agentId = pool.spawned[0]!.id;
    const mine = () => logs.filter((l) => l.agentId === agentId);
    const logged = () => mine().filter((l) => l.stream !== undefined).length;
    const dropped = () =>
      mine().reduce((n, l) => n + (typeof l.dropped === 'number' ? l.dropped : 0), 0);

    await vi.waitFor(() => expect(existsSync(written)).toBe(true), { timeout: 15_000 });
    writeFileSync(go, '');
    // Once the output has ended, each of the 20 001 lines was either logged or counted.
    await vi.waitFor(() => expect(logged() + dropped()).toBe(20_001), { timeout: 15_000 });
    const seconds = (performance.now() - started) / 1000;
    expect(logged()).toBeLessThanOrEqual(50 + Math.ceil(50 * seconds));
    const counts = mine().filter((l) => l.dropped !== undefined);
    expect(counts.length).toBeGreaterThan(0);
    expect(counts.length).toBeLessThanOrEqual(2 + Math.ceil(seconds)); // one a second, and at the ends
    expect(counts[0]).toMatchObject({
      level: 'warn',
      msg: expect.stringMatching(/^\d+ log lines dropped: over maxLogLinesPerSecond \(50\)$/),
    });
  });
});

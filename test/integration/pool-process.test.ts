/**
 * plugins/pool-process with real child processes: each agent is a process tree started with its
 * credential; stopping, replacing, closing and the embedding process exiting leave no process
 * behind; and a worker started this way connects back to a real sidecar and does the work.
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { fileURLToPath } from 'node:url';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { AgentStatus } from '../../src/agent.js';
import { AgentFabric } from '../../src/fabric.js';
import type { PluginLogEntry } from '../../src/plugins/plugin-host.js';
import { PluginHost } from '../../src/plugins/plugin-host.js';
import { TaskStatus } from '../../src/task.js';
import {
  closeSidecar,
  DEFAULT_ALLOW,
  startTestSidecar,
  tempDir,
} from '../fixtures/gateway/harness.js';

const TREE_CHILD = fileURLToPath(new URL('../fixtures/pool/tree-child.mjs', import.meta.url));
const SDK_WORKER = fileURLToPath(new URL('../fixtures/pool/sdk-worker.ts', import.meta.url));
const EXIT_FIXTURE = fileURLToPath(
  new URL('../fixtures/pool/exit-without-close.ts', import.meta.url),
);

interface PidFile {
  pid: number;
  grandchild: number;
  envKeys: string[];
  credential: string;
  url: string | null;
  pool: string;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

function pidFiles(dir: string): Map<string, PidFile> {
  const out = new Map<string, PidFile>();
  for (const f of readdirSync(dir)) {
    try {
      out.set(f.replace(/\.json$/, ''), JSON.parse(readFileSync(join(dir, f), 'utf8')) as PidFile);
    } catch {
      // being written
    }
  }
  return out;
}

describe('pool-process (real processes)', () => {
  let dir: string;
  let fabric: AgentFabric;
  let host: PluginHost;
  let logs: PluginLogEntry[];

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'pool-process-'));
    logs = [];
    fabric = new AgentFabric(
      {},
      { pools: { reconcileIntervalMs: 100, startBackoffMs: 20, maxStartBackoffMs: 100 } },
    );
    host = new PluginHost(fabric, { log: (e) => logs.push(e) });
  });
  afterEach(async () => {
    await host.close();
    await fabric.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('starts each agent as a process tree with its credential and a minimal environment', async () => {
    process.env.PARENT_ONLY_SECRET = 'do-not-pass';
    try {
      await host.load('pool-process', {
        command: process.execPath,
        args: [TREE_CHILD],
        env: { PIDS_DIR: dir },
      });
      const pool = await fabric.createPool({
        poolId: 'p',
        model: 'm',
        minAgents: 2,
        provider: 'process',
      });
      await vi.waitFor(() => expect(pidFiles(dir).size).toBe(2), { timeout: 10_000 });
      const files = pidFiles(dir);
      for (const spawned of pool.spawned) {
        const f = files.get(spawned.id)!;
        expect(f.credential).toBe(spawned.credential);
        expect(f.pool).toBe('p');
        expect(f.envKeys).not.toContain('PARENT_ONLY_SECRET');
        expect(f.envKeys).toContain('FABRIC_AGENT_ID');
        expect((await fabric.getAgentInfo(spawned.id)).executor).toBe('remote');
      }
      await vi.waitFor(() => expect(logs.filter((l) => /^hello from/.test(l.msg))).toHaveLength(2));
      const hello = logs.find((l) => /^hello from/.test(l.msg))!;
      expect(hello).toMatchObject({ plugin: 'pool-process', stream: 'stdout', level: 'info' });
      expect(hello.msg).toContain(String(hello.agentId));
      expect(hello.msg).toContain('credential [credential]');
      for (const s of pool.spawned) {
        expect(logs.some((l) => l.msg.includes(s.credential))).toBe(false);
      }
      expect(logs.some((l) => l.stream === 'stderr' && l.level === 'warn')).toBe(true);
    } finally {
      delete process.env.PARENT_ONLY_SECRET;
    }
  });

  it('replaces dead processes again and again, and leaves no process behind', async () => {
    await host.load('pool-process', {
      command: process.execPath,
      args: [TREE_CHILD],
      env: { PIDS_DIR: dir, STUBBORN: '1' },
      stopTimeoutMs: 200,
    });
    await fabric.createPool({ poolId: 'p', model: 'm', minAgents: 2, provider: 'process' });
    await vi.waitFor(() => expect(pidFiles(dir).size).toBe(2), { timeout: 10_000 });
    // Kill one agent's leader process 6 times, and terminate an agent through the fabric 2
    // times: each one is replaced by a new agent with a new process tree.
    for (let round = 0; round < 8; round++) {
      const before = pidFiles(dir).size;
      const [victimId] = (await fabric.getPool('p')).currentAgents;
      const victim = pidFiles(dir).get(victimId!);
      if (victim === undefined) {
        await vi.waitFor(() => expect(pidFiles(dir).has(victimId!)).toBe(true));
        round--;
        continue;
      }
      if (round % 4 === 3) await fabric.terminate(victimId!);
      else process.kill(victim.pid, 'SIGKILL');
      await vi.waitFor(() => expect(pidFiles(dir).size).toBe(before + 1), { timeout: 10_000 });
      // The old agent is gone, its grandchild too.
      await vi.waitFor(() => expect(alive(victim.grandchild)).toBe(false), { timeout: 10_000 });
      expect((await fabric.getAgentInfo(victimId!)).status).toBe(AgentStatus.TERMINATED);
    }
    await vi.waitFor(async () => expect((await fabric.getPool('p')).currentAgents).toHaveLength(2));
    const all = [...pidFiles(dir).values()];
    expect(all.length).toBe(10);
    await host.close();
    for (const f of all) {
      expect(alive(f.pid)).toBe(false);
      expect(alive(f.grandchild)).toBe(false);
    }
  });

  it('fails a start whose command does not exist, with backoff, and the pool keeps trying', async () => {
    const failures: number[] = [];
    fabric.pools.events.on('pool.start.failed', (e) => failures.push(e.failures));
    await host.load('pool-process', { command: join(dir, 'no-such-program') });
    await fabric.createPool({ poolId: 'p', model: 'm', minAgents: 1, provider: 'process' });
    await vi.waitFor(() => expect(failures.length).toBeGreaterThanOrEqual(3), { timeout: 10_000 });
    expect(failures.slice(0, 3)).toEqual([1, 2, 3]);
    expect(await fabric.listAgents({ status: AgentStatus.STARTING })).toHaveLength(
      (await fabric.getPool('p')).currentAgents.length,
    );
  });

  it('takes every process tree down when the embedding process exits without closing', async () => {
    await promisify(execFile)(process.execPath, ['--import', 'tsx', EXIT_FIXTURE], {
      env: { ...process.env, PIDS_DIR: dir },
      timeout: 30_000,
    });
    const files = [...pidFiles(dir).values()];
    expect(files).toHaveLength(3);
    await vi.waitFor(
      () => {
        for (const f of files) {
          expect(alive(f.pid)).toBe(false);
          expect(alive(f.grandchild)).toBe(false);
        }
      },
      { timeout: 5000 },
    );
  });
});

describe('pool-process in the sidecar, with a real worker', () => {
  it('starts workers that connect back with their credential and run the pool’s tasks', async () => {
    const hooksDir = tempDir('pool-process-hooks');
    const sidecar = await startTestSidecar({
      // The workers' fabric tools (heartbeat, claim, complete) go through policy like any call.
      policies: [DEFAULT_ALLOW],
      plugins: [
        {
          module: 'pool-process',
          options: { command: process.execPath, args: ['--import', 'tsx', SDK_WORKER] },
        },
      ],
      pools: [{ id: 'workers', minAgents: 2, provider: 'process' }],
      // The worker SDK runs an agent's hook before it claims tasks.
      hooks: { storagePath: join(hooksDir, 'hooks') },
    });
    try {
      const fabric = sidecar.fabric!;
      const task = await fabric.scheduleToPool('workers', 'echo', { n: 42 });
      const done = await fabric.waitForTask(task.id, { timeoutSeconds: 60 });
      expect(done.status).toBe(TaskStatus.COMPLETED);
      const pool = await fabric.getPool('workers');
      expect(done.result).toEqual({ echoed: { n: 42 }, by: done.assignedAgentId });
      expect(pool.currentAgents).toContain(done.assignedAgentId);
      expect((await fabric.getAgentInfo(done.assignedAgentId!)).status).toBe(AgentStatus.HEALTHY);
    } finally {
      await closeSidecar(sidecar);
      rmSync(hooksDir, { recursive: true, force: true });
    }
  }, 90_000);
});

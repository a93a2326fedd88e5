/**
 * pool-process: an agent stopped while its process is being spawned. A hostile review found
 * `start` recorded the child only after its 'spawn' event and never looked at the agent's
 * signal after it: a stop in between (an operator's terminate right after the pool made the
 * agent, a scale-down, deletePool) found no child and returned, and the child was then recorded
 * and left running — with the credential of a TERMINATED agent, no health check and no stop to
 * come. Now the child is recorded as soon as it is spawned (a stop finds and reaps it), and a
 * start that finds itself stopped reaps what it started. Real processes (a tree: leader and
 * grandchild).
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { AgentStatus } from '../../src/agent.js';
import { AgentFabric } from '../../src/fabric.js';
import { PluginHost, type PluginLogEntry } from '../../src/plugins/plugin-host.js';
import { alive } from '../fixtures/gateway/harness.js';

const TREE_CHILD = fileURLToPath(new URL('../fixtures/pool/tree-child.mjs', import.meta.url));

interface ProcessPool {
  pids(): Record<string, number>;
}

describe('pool-process: stop while the process is starting', () => {
  let dir: string;
  let fabric: AgentFabric;
  let host: PluginHost;
  let logs: PluginLogEntry[];

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'pool-process-stop-'));
    fabric = new AgentFabric(
      {},
      { pools: { reconcileIntervalMs: 60_000, startBackoffMs: 60_000, maxStartBackoffMs: 60_000 } },
    );
    logs = [];
    host = new PluginHost(fabric, { log: (e) => logs.push(e) });
  });
  afterEach(async () => {
    await host.close();
    await fabric.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('leaves no process running for an agent terminated right after the pool made it', async () => {
    await host.load('pool-process', {
      command: process.execPath,
      args: [TREE_CHILD],
      env: { PIDS_DIR: dir },
      url: 'http://127.0.0.1:9/mcp',
      stopTimeoutMs: 500,
    });
    const provider = host.instanceOf('pool-process') as unknown as ProcessPool;
    const pool = await fabric.createPool({
      poolId: 'p',
      model: 'm',
      minAgents: 1,
      provider: 'process',
    });
    const agentId = pool.spawned[0]!.id;
    // Terminated at once (drain 0), in the window before the child's 'spawn' event.
    await fabric.terminate(agentId, { drainTimeoutSeconds: 0 });
    expect((await fabric.getAgentInfo(agentId)).status).toBe(AgentStatus.TERMINATED);

    // Either its process was reaped (the plugin logs its exit) or it got to run and record its
    // pids; without the fix the second happens and the processes live on.
    const recorded = (): number[] =>
      readdirSync(dir)
        .filter((n) => n.startsWith(agentId))
        .flatMap((n) => {
          const r = JSON.parse(readFileSync(join(dir, n), 'utf8')) as {
            pid: number;
            grandchild: number;
          };
          return [r.pid, r.grandchild];
        });
    const exited = (): boolean =>
      logs.some((l) => l.agentId === agentId && /^process \d+ exited/.test(l.msg));
    await vi.waitFor(() => expect(exited() || recorded().length > 0).toBe(true), {
      timeout: 10_000,
    });
    // Every process it started (the leader and its grandchild) is gone, and the pool holds none
    // for it (its replacement has its own).
    await vi.waitFor(
      () => {
        expect(recorded().filter(alive)).toEqual([]);
        expect(exited()).toBe(true);
      },
      { timeout: 10_000 },
    );
    expect(provider.pids()[agentId]).toBeUndefined();
  });
});

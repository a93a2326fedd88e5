/**
 * What one agent's finished MCP tasks hold. `gateway.tasks.maxPerAgent` (64) bounds how many
 * tasks an agent keeps, but not their size: a finished task keeps its result (up to the
 * upstream's `maxMessageBytes`, 64 MiB) until its ttl (up to a day) or until the agent's 65th
 * task, in memory and in the state file — 64 × 64 MiB for one agent that asks a tool for large
 * answers as tasks and never fetches them. Now the finished tasks of one agent keep at most
 * `gateway.tasks.maxResultBytesPerAgent` of results (its oldest finished ones are forgotten, as
 * at the count cap; the newest is always kept). The official SDK client over Streamable HTTP,
 * a real stdio upstream, a real SQLite state file.
 */
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { afterEach, describe, expect, it } from 'vitest';
import type { ToolTaskRecord } from '../../src/gateway/tool-tasks.js';
import type { AgentRecord } from '../../src/lifecycle/lifecycle-manager.js';
import type { PoolRecord } from '../../src/pools/pool-manager.js';
import type { TaskRecord } from '../../src/scheduler/task-record.js';
import type { Sidecar } from '../../src/server/sidecar.js';
import { SqliteStore } from '../../src/store/sqlite-store.js';
import {
  agentToken,
  closeSidecar,
  DEFAULT_ALLOW,
  httpClient,
  startTestSidecar,
  tempDir,
  until,
} from '../fixtures/gateway/harness.js';
import { callAsTask, rpcError } from '../fixtures/gateway/tasks.js';

const OVERSIZE = fileURLToPath(new URL('../fixtures/gateway/oversize-server.mjs', import.meta.url));
const MIB = 1024 * 1024;

let sidecar: Sidecar | undefined;
const clients: Client[] = [];

afterEach(async () => {
  for (const c of clients.splice(0)) await c.close().catch(() => undefined);
  await closeSidecar(sidecar);
  sidecar = undefined;
});

async function client(name: string): Promise<Client> {
  const c = await httpClient(sidecar!.url!, agentToken(sidecar!, name));
  clients.push(c);
  return c;
}

/** `c` asks for a result of `kib` KiB as a task and waits until the task has ended. */
async function bigTask(c: Client, kib: number): Promise<string> {
  const { task } = await callAsTask(c, 'big__bigresult', { kib });
  await until(
    async () => (await c.experimental.tasks.getTask(task.taskId)).status === 'completed',
    30_000,
  );
  return task.taskId;
}

/** The finished tool tasks in the state file, per agent: their count and result bytes. */
async function stored(path: string): Promise<Map<string, { count: number; bytes: number }>> {
  const store = await SqliteStore.open<TaskRecord, AgentRecord, PoolRecord>(path);
  try {
    const byAgent = new Map<string, { count: number; bytes: number }>();
    for (const t of store.toolTasks.values() as Iterable<ToolTaskRecord>) {
      if (t.result === undefined) continue;
      const seen = byAgent.get(t.agentId) ?? { count: 0, bytes: 0 };
      seen.count++;
      seen.bytes += JSON.stringify(t.result).length;
      byAgent.set(t.agentId, seen);
    }
    return byAgent;
  } finally {
    await store.close();
  }
}

describe("an agent's finished MCP tasks", () => {
  it('keep at most maxResultBytesPerAgent of results, the oldest forgotten first', async () => {
    const path = join(tempDir('tool-task-bytes'), 'state.db');
    sidecar = await startTestSidecar({
      upstreams: { big: { command: process.execPath, args: [OVERSIZE], stderr: 'ignore' } },
      policies: [DEFAULT_ALLOW],
      agents: [{ name: 'hoarder' }, { name: 'peer' }],
      state: { path },
      gateway: {
        tasks: { maxTtlSeconds: 3600, maxResultBytesPerAgent: 3 * MIB },
        shutdownGraceSeconds: 0,
      },
    } as never);
    const peer = await client('peer');
    const peerTask = await bigTask(peer, 512);
    const hoarder = await client('hoarder');
    const ids: string[] = [];
    for (let i = 0; i < 12; i++) ids.push(await bigTask(hoarder, 1024));
    // Its newest two fit (with their JSON around them, three 1 MiB texts do not); the older
    // ones are gone as tasks past the count cap are.
    for (const id of ids.slice(-2)) {
      expect((await hoarder.experimental.tasks.getTask(id)).status).toBe('completed');
    }
    for (const id of [ids[0]!, ids.at(-3)!]) {
      const gone = await rpcError(hoarder.experimental.tasks.getTask(id));
      expect(gone.message).toContain('does not exist');
    }
    // The peer's task is its own budget's.
    expect((await peer.experimental.tasks.getTask(peerTask)).status).toBe('completed');
    // A result larger than the whole budget is kept, alone.
    const huge = await bigTask(hoarder, 4096);
    expect((await hoarder.experimental.tasks.getTask(huge)).status).toBe('completed');
    await closeSidecar(sidecar);
    sidecar = undefined;
    const held = await stored(path);
    const hoarderId = [...held.keys()].find((a) => held.get(a)!.bytes > MIB)!;
    expect(held.get(hoarderId)!.count).toBe(1);
    expect(held.get(hoarderId)!.bytes).toBeGreaterThan(4 * MIB);
    expect([...held.values()].map((h) => h.count).sort()).toEqual([1, 1]);
  });

  it('keep what fits the default; a smaller budget at a restart applies to what the state file kept', async () => {
    const path = join(tempDir('tool-task-bytes-restart'), 'state.db');
    const config = (bytes?: number) =>
      ({
        upstreams: { big: { command: process.execPath, args: [OVERSIZE], stderr: 'ignore' } },
        policies: [DEFAULT_ALLOW],
        agents: [{ name: 'hoarder' }],
        state: { path },
        gateway: {
          tasks: {
            maxTtlSeconds: 3600,
            ...(bytes === undefined ? {} : { maxResultBytesPerAgent: bytes }),
          },
          shutdownGraceSeconds: 0,
        },
      }) as never;
    sidecar = await startTestSidecar(config());
    const hoarder = await client('hoarder');
    for (let i = 0; i < 5; i++) await bigTask(hoarder, 1024);
    await closeSidecar(sidecar);
    sidecar = undefined;
    expect([...(await stored(path)).values()]).toEqual([
      { count: 5, bytes: expect.any(Number) as number },
    ]);
    // A smaller budget at the next start applies to what the state file kept.
    sidecar = await startTestSidecar(config(2 * MIB));
    await closeSidecar(sidecar);
    sidecar = undefined;
    expect([...(await stored(path)).values()].map((h) => h.count)).toEqual([1]);
  });
});

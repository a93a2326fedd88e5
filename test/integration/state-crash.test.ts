/**
 * Crash loop over a real SQLite state file: a child process (an AgentFabric over the file)
 * spawns an agent and records budget usage as fast as it can, and is killed with SIGKILL at a
 * varying moment, several rounds. After each kill: every agent whose spawn had returned still
 * authenticates with its credential, and every unit of usage acknowledged before the kill is
 * still counted (the next round starts from at least that much) — nothing resets. A scope without
 * a limit does not persist its reservations (nothing to overspend; one with a limit does, see
 * budget-reservation-crash.test.ts): the large reservation each round holds in flight at the kill
 * is released by the crash, so the usage after it is the settled usage (the acknowledged units, plus at most
 * the one whose commit landed before its acknowledgement could be printed), plus at most the
 * budget lease the file held: 1 % of the usage, for this scope without a limit (see
 * budget-lease-crash.test.ts for the lease itself).
 */
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { AgentFabric } from '../../src/fabric.js';
import type { AgentRecord } from '../../src/lifecycle/lifecycle-manager.js';
import type { PoolRecord } from '../../src/pools/pool-manager.js';
import type { TaskRecord } from '../../src/scheduler/task-record.js';
import { SqliteStore } from '../../src/store/sqlite-store.js';
import { tempDir, TSX, until } from '../fixtures/gateway/harness.js';

/** The default budget lease of a scope without a limit: 1 % of its usage. */
const LEASE = 1.01;
const WRITER = fileURLToPath(new URL('../fixtures/state/usage-writer.ts', import.meta.url));
const children = new Set<ReturnType<typeof spawn>>();
afterAll(() => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
});

interface Round {
  start: number;
  acked: number;
  reserved: number;
  agent: { id: string; credential: string };
}

/** Runs the writer until it acknowledged at least `atLeast` (past its start), then SIGKILLs it. */
async function round(path: string, atLeast: number): Promise<Round> {
  const child = spawn(process.execPath, ['--import', TSX, WRITER, path], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.add(child);
  let out = '';
  let err = '';
  child.stdout.on('data', (c: Buffer) => (out += c.toString()));
  child.stderr.on('data', (c: Buffer) => (err += c.toString()));
  const value = (key: string): number | undefined => {
    const all = [...out.matchAll(new RegExp(`^${key} ([\\d.]+)$`, 'gm'))];
    return all.length === 0 ? undefined : Number(all.at(-1)![1]);
  };
  await until(() => {
    if (child.exitCode !== null) throw new Error(`writer exited ${child.exitCode}: ${err}`);
    const start = value('start');
    const acked = value('acked');
    return start !== undefined && acked !== undefined && acked - start >= atLeast;
  }, 30_000);
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGKILL');
  await exited;
  const [, id, credential] = /^agent (\S+) (\S+)$/m.exec(out)!;
  return {
    start: value('start')!,
    acked: value('acked')!,
    reserved: value('reserved')!,
    agent: { id: id!, credential: credential! },
  };
}

describe('state across SIGKILL', () => {
  it('keeps every spawned agent and all acknowledged usage, round after round', async () => {
    const path = join(tempDir('state-crash'), 'state.db');
    const rounds: Round[] = [];
    for (const atLeast of [50, 500, 20, 2000, 200]) {
      const r = await round(path, atLeast);
      const previous = rounds.at(-1);
      // Usage acknowledged before the last kill is all there.
      if (previous !== undefined) {
        expect(r.start).toBeGreaterThanOrEqual(previous.acked);
        // …and nothing else but the lease: not the reservation in flight at the kill.
        expect(r.start).toBeLessThanOrEqual((previous.acked + 1) * LEASE);
        expect(previous.reserved).toBe(1000);
      }
      rounds.push(r);
    }
    const store = await SqliteStore.open<TaskRecord, AgentRecord, PoolRecord>(path);
    const fabric = new AgentFabric({ maxConcurrentAgents: 1000 }, { store });
    try {
      for (const r of rounds) {
        const id = fabric.authenticate(r.agent.credential);
        expect(id.kind === 'agent' && id.agentId).toBe(r.agent.id);
      }
      const meter = [...store.agents.values()].find((a) => a.name === 'meter')!;
      const used = fabric.budgets.getStatus(meter.id).costUsed;
      expect(used).toBeGreaterThanOrEqual(rounds.at(-1)!.acked);
      expect(used).toBeLessThanOrEqual((rounds.at(-1)!.acked + 1) * LEASE);
      expect(store.agents.size).toBe(rounds.length + 1);
    } finally {
      await fabric.close();
    }
  }, 120_000);
});

/**
 * Crash loop for tasks over a real SQLite state file: a child process (test/fixtures/state/
 * task-writer.ts, an AgentFabric whose in-process pool runs the tasks) schedules tasks under
 * load and is killed with SIGKILL at a random moment, several rounds, each new round picking up
 * the file the last one left. Afterwards: every task whose `scheduleToPool` had resolved exists
 * and completed with its own result; every end a process acknowledged (`waitForTask` resolved)
 * is the one on disk — no task ended twice, no completed result was lost.
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

const WRITER = fileURLToPath(new URL('../fixtures/state/task-writer.ts', import.meta.url));
const children = new Set<ReturnType<typeof spawn>>();
afterAll(() => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
});

interface Ended {
  status: string;
  finishedAt: number;
}

/** What the rounds acknowledged, by task id. */
const acked = new Map<string, number>();
const ended = new Map<string, Ended>();

/** Runs the writer until it acknowledged `atLeast` tasks, lets it go on a random moment, kills it. */
async function round(path: string, from: number, atLeast: number): Promise<void> {
  const child = spawn(process.execPath, ['--import', TSX, WRITER, path, String(from)], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.add(child);
  let out = '';
  let err = '';
  let count = 0;
  child.stdout.on('data', (c: Buffer) => {
    const text = c.toString();
    out += text;
    count += text.split('\nacked ').length - 1;
  });
  child.stderr.on('data', (c: Buffer) => (err += c.toString()));
  await until(() => {
    if (child.exitCode !== null) throw new Error(`writer exited ${child.exitCode}: ${err}`);
    return count >= atLeast;
  }, 60_000);
  // A random moment: mid-schedule, mid-run, mid-commit.
  await new Promise((resolve) => setTimeout(resolve, Math.random() * 30));
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGKILL');
  await exited;
  expect(err).toBe('');
  // Only whole lines: the kill may cut the last one.
  const lines = out.slice(0, out.lastIndexOf('\n')).split('\n');
  expect(lines[0]).toBe('ready');
  for (const line of lines.slice(1)) {
    const [kind, id, a, b] = line.split(' ') as [string, string, string, string];
    if (kind === 'acked') {
      expect(acked.has(id)).toBe(false);
      acked.set(id, Number(a));
    } else {
      expect(kind).toBe('finished');
      // An end acknowledged once is never reached again by a later process.
      expect(ended.has(id), `task ${id} ended twice`).toBe(false);
      ended.set(id, { status: a, finishedAt: Number(b) });
    }
  }
}

describe('tasks across SIGKILL', () => {
  it('every acknowledged task reaches its end exactly once, no result lost', async () => {
    const path = join(tempDir('task-crash'), 'state.db');
    let from = 0;
    for (const atLeast of [30, 400, 5, 1500, 120, 60]) {
      await round(path, from, atLeast);
      from += 1_000_000;
    }
    expect(acked.size).toBeGreaterThan(2000);
    expect(ended.size).toBeGreaterThan(0);

    const store = await SqliteStore.open<TaskRecord, AgentRecord, PoolRecord>(path);
    const fabric = new AgentFabric(
      { maxQueueDepth: 100_000, finishedTaskRetention: 100_000, defaultMaxAttempts: 1_000 },
      { store },
    );
    fabric.registerInProcessHandler('double', (payload) => ({
      n: (payload as { n: number }).n * 2,
    }));
    try {
      let retried = 0;
      for (const [id, n] of acked) {
        const t = await fabric.waitForTask(id, { timeoutSeconds: 60 });
        if (t.attempt > 1) retried++;
        expect(t).toMatchObject({ status: 'COMPLETED', result: { n: n * 2 }, payload: { n } });
        const seen = ended.get(id);
        if (seen !== undefined)
          expect({ status: t.status, finishedAt: t.finishedAt }).toEqual(seen);
      }
      // The kills did catch tasks mid-run (each round has up to 15 running at any moment).
      expect(retried).toBeGreaterThan(0);
      for (const [id, seen] of ended) {
        // Ends acknowledged for tasks whose ack line the kill cut are on disk all the same.
        const t = await fabric.getTask(id);
        expect({ status: t.status, finishedAt: t.finishedAt }).toEqual(seen);
      }
    } finally {
      await fabric.close();
    }
  }, 240_000);
});

/**
 * Budget leases across SIGKILL, on a real SQLite state file: a child process (a BudgetManager
 * over the file, test/fixtures/state/lease-writer.ts) records usage as fast as it can and is
 * killed with SIGKILL at a varying moment, several rounds; then stopped with SIGTERM. After
 * each kill, read from the file itself: every unit acknowledged before the kill is counted
 * (never less — the file holds a ceiling written ahead of use), and at most one lease more
 * (1 % of the limit for the limited agent, 1 % of the usage for the one without a limit) plus
 * the one record whose commit landed before its acknowledgement could be printed. The next
 * round resumes from exactly what the file held. The clean stop writes the exact usage. And the
 * lease did its job: far fewer commits than records.
 */
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { tempDir, TSX, until } from '../fixtures/gateway/harness.js';
import { costOnDisk } from '../fixtures/state/budget-rows.js';

const WRITER = fileURLToPath(new URL('../fixtures/state/lease-writer.ts', import.meta.url));
const LEASE = 1000; // 1 % of meter's maxCostPerDay
const children = new Set<ReturnType<typeof spawn>>();
afterAll(() => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
});

interface Round {
  start: number;
  startTracked: number;
  acked: number;
  commits: number;
  closed: number | undefined;
}

/** Runs the writer until it acknowledged `atLeast` records, then sends it `signal`. */
async function round(path: string, atLeast: number, signal: NodeJS.Signals): Promise<Round> {
  const child = spawn(process.execPath, ['--import', TSX, WRITER, path], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.add(child);
  // The last line of each kind, parsed as it arrives (the output grows to megabytes).
  const seen = new Map<string, number[]>();
  let partial = '';
  let err = '';
  child.stdout.on('data', (c: Buffer) => {
    const lines = (partial + c.toString()).split('\n');
    partial = lines.pop()!;
    for (const line of lines) {
      const [key, ...values] = line.split(' ');
      seen.set(key!, values.map(Number));
    }
  });
  child.stderr.on('data', (c: Buffer) => (err += c.toString()));
  const last = (key: string): number[] | undefined => seen.get(key);
  await until(() => {
    if (child.exitCode !== null) throw new Error(`writer exited ${child.exitCode}: ${err}`);
    const start = last('start');
    const acked = last('acked');
    return start !== undefined && acked !== undefined && acked[0]! - start[0]! >= atLeast;
  }, 30_000);
  // 'close': the child exited and all it printed was read.
  const closed = new Promise((resolve) => child.once('close', resolve));
  child.kill(signal);
  await closed;
  const [start, startTracked] = last('start')!;
  const [acked, commits] = last('acked')!;
  return {
    start: start!,
    startTracked: startTracked!,
    acked: acked!,
    commits: commits!,
    closed: last('closed')?.[0],
  };
}

describe('budget leases across SIGKILL', () => {
  it('never loses acknowledged usage, over-counts by at most a lease, and closes exact', async () => {
    const path = join(tempDir('lease-crash'), 'state.db');
    let previous: Round | undefined;
    let onDisk = { meter: 0, tracked: 0 };
    for (const atLeast of [3000, 50, 1500, 400]) {
      const r = await round(path, atLeast, 'SIGKILL');
      // The round resumed from what the file held, lease included.
      expect(r.start).toBe(onDisk.meter);
      expect(r.startTracked).toBe(onDisk.tracked);
      onDisk = {
        meter: costOnDisk(path, 'agent:meter'),
        tracked: costOnDisk(path, 'agent:tracked'),
      };
      // Every acknowledged unit is on disk: never under-counted…
      expect(onDisk.meter).toBeGreaterThanOrEqual(r.acked);
      // …and over by at most one lease (+ the record committed but not yet acknowledged).
      expect(onDisk.meter).toBeLessThanOrEqual(r.acked + 1 + LEASE);
      const tracked = r.acked - r.start + r.startTracked; // same units, one per record
      expect(onDisk.tracked).toBeGreaterThanOrEqual(tracked);
      expect(onDisk.tracked).toBeLessThanOrEqual((tracked + 1) * 1.01 + 1e-9);
      previous = r;
    }
    // The lease did its job: far fewer commits than the records of the round.
    expect(previous!.commits).toBeLessThan((previous!.acked - previous!.start) / 2);
    // A clean stop writes the exact usage: nothing lost, no lease left in the file.
    const last = await round(path, 200, 'SIGTERM');
    expect(last.start).toBe(onDisk.meter);
    expect(last.closed).toBe(last.acked);
    expect(costOnDisk(path, 'agent:meter')).toBe(last.acked);
    expect(costOnDisk(path, 'agent:tracked')).toBe(last.acked - last.start + last.startTracked);
  }, 120_000);
});

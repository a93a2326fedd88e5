/**
 * bench/lib.ts `cpuMeter`: a process's CPU read per thread in ns (the CPU cases of
 * `bench/gateway` divided 10 ms clock ticks by 1,000 calls before), and an interval in which a
 * thread exited taken from the ticks instead (its last stretch is in no thread's schedstat).
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { existsSync } from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import { cpuMeter } from '../../bench/lib.js';

/**
 * A node child that, per line on stdin, burns CPU (`burn`) or runs a CPU-burning worker thread
 * to its end (`thread`).
 */
const CHILD = `
const { Worker } = require('node:worker_threads');
const burn = (n) => \`let x = 0; for (let i = 0; i < \${n}; i++) x += Math.sqrt(i); x\`;
require('node:readline').createInterface({ input: process.stdin }).on('line', (cmd) => {
  if (cmd === 'burn') { eval(burn(3e6)); console.log('done'); }
  // Far more than the 20 ms of truncation the meter allows for.
  else new Worker(burn(1e8), { eval: true }).once('exit', () => console.log('done'));
});
console.log('ready');
`;

const children: ChildProcessWithoutNullStreams[] = [];
afterEach(() => {
  for (const c of children.splice(0)) c.kill('SIGKILL');
});

async function child(): Promise<{ pid: number; run(cmd: string): Promise<void> }> {
  const c = spawn(process.execPath, ['-e', CHILD]);
  children.push(c);
  c.stdout.setEncoding('utf8');
  const lines: string[] = [];
  let wake: (() => void) | undefined;
  let pending = '';
  c.stdout.on('data', (d: string) => {
    pending += d;
    const parts = pending.split('\n');
    pending = parts.pop()!;
    lines.push(...parts);
    wake?.();
  });
  const next = async (): Promise<string> => {
    while (lines.length === 0) await new Promise<void>((r) => (wake = r));
    return lines.shift()!;
  };
  expect(await next()).toBe('ready');
  return {
    pid: c.pid!,
    async run(cmd) {
      c.stdin.write(`${cmd}\n`);
      expect(await next()).toBe('done');
    },
  };
}

describe.skipIf(!existsSync('/proc/self/task'))('bench cpuMeter', () => {
  it('reads CPU finer than 10 ms ticks', async () => {
    const c = await child();
    const meter = cpuMeter(c.pid);
    await c.run('burn');
    const used = meter();
    expect(used).toBeGreaterThan(0);
    // A clock-tick reading is a multiple of 10,000 µs; a ns one practically never is.
    expect(used % 10_000).not.toBe(0);
    expect(meter.fallbacks).toBe(0);
  });

  it('takes an interval in which a thread exited from the ticks, and the next one in ns again', async () => {
    const c = await child();
    const meter = cpuMeter(c.pid);
    await c.run('thread');
    const afterThread = meter();
    expect(meter.fallbacks).toBe(1);
    expect(afterThread % 10_000).toBe(0);
    await c.run('burn');
    expect(meter()).toBeGreaterThan(afterThread);
    expect(meter.fallbacks).toBe(1);
  });
});

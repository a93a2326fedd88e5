/**
 * Shared benchmark harness: every suite measures the project and its baseline in the same run
 * and reports the ratio (see ../shared/BENCHMARKS.md for the conventions).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { createHistogram, performance, type RecordableHistogram } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';

/** The repository's root. */
export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
/** The built CLI, what `agent-fabric` runs (`npm run bench` builds first). */
export const CLI = join(ROOT, 'dist', 'cli', 'main.js');

/** One result line, in the JSON shape BENCHMARKS.md specifies. */
export interface BenchResult {
  suite: string;
  case: string;
  unit: string;
  value: number;
  baseline: string;
  baselineValue: number;
  ratio: number;
  higherIsBetter: boolean;
  p50Us?: number;
  p99Us?: number;
  baselineP50Us?: number;
  baselineP99Us?: number;
  /** The goal the issue set for this case, for the table; not an assertion. */
  goal?: string;
  /**
   * Why the case was not measured (a peer's server unreachable); `value`, `baselineValue` and
   * `ratio` are then 0 and mean nothing.
   */
  skipped?: string;
}

/** What a suite gets from the runner. */
export interface BenchContext {
  /** Fewer iterations, same cases (CI smoke runs). */
  quick: boolean;
  /** Report one finished case. */
  report(result: Omit<BenchResult, 'ratio'> & { ratio?: number }): void;
}

/** A suite: one file per hot path, default-exporting this shape. */
export interface BenchSuite {
  name: string;
  run(ctx: BenchContext): Promise<void>;
}

/** A latency histogram in nanoseconds with microsecond percentiles. */
export class Latency {
  readonly #h: RecordableHistogram = createHistogram();

  /** Records one sample given in milliseconds (as `performance.now()` differences are). */
  recordMs(ms: number): void {
    this.#h.record(Math.max(1, Math.round(ms * 1e6)));
  }

  /** Records one sample given in nanoseconds. */
  recordNs(ns: number | bigint): void {
    const v = typeof ns === 'bigint' ? Number(ns) : ns;
    this.#h.record(Math.max(1, Math.round(v)));
  }

  /** Percentile `p` (0–100) in microseconds, rounded to 0.01 µs. */
  percentileUs(p: number): number {
    return Math.round(this.#h.percentile(p) / 10) / 100;
  }

  get count(): number {
    return this.#h.count;
  }
}

/** Runs `fn` `iterations` times and returns operations per second. */
export async function opsPerSecond(
  iterations: number,
  fn: () => Promise<void> | void,
): Promise<number> {
  const start = performance.now();
  for (let i = 0; i < iterations; i++) await fn();
  return iterations / ((performance.now() - start) / 1000);
}

/** Measures a batch operation: `fn` processes `n` items; returns items per second. */
export async function throughput(n: number, fn: () => Promise<void> | void): Promise<number> {
  const start = performance.now();
  await fn();
  return n / ((performance.now() - start) / 1000);
}

/** Median of several measurements (used to steady noisy ratios). */
export function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

/**
 * `total` calls of `op`, `concurrency` at a time; each call's latency into `lat`; returns
 * calls/s.
 */
export async function inFlight(
  total: number,
  concurrency: number,
  op: (i: number) => Promise<unknown>,
  lat: Latency | undefined,
): Promise<number> {
  let next = 0;
  const start = performance.now();
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < total) {
        const i = next++;
        const t0 = performance.now();
        await op(i);
        lat?.recordMs(performance.now() - t0);
      }
    }),
  );
  return total / ((performance.now() - start) / 1000);
}

/**
 * The node options the built CLI's first line gives node (`#!/usr/bin/env -S node …`): what
 * `agent-fabric …` runs with when started as users start it (the bin link, `npx`).
 */
export function shebangNodeOptions(): string[] {
  const first = readFileSync(CLI, 'utf8').split('\n', 1)[0]!;
  const m = /^#!\/usr\/bin\/env\s+(?:-S\s+)?node((?:\s+\S+)*)\s*$/.exec(first);
  if (!m) throw new Error(`${CLI}: unexpected first line ${first}`);
  return m[1]!.split(/\s+/).filter(Boolean);
}

/** `node <the CLI's shebang options> [--cpu-prof into profileDir] dist/cli/main.js …args` */
export function cliArgs(args: string[], profileDir?: string): string[] {
  const prof = profileDir ? ['--cpu-prof', `--cpu-prof-dir=${profileDir}`] : [];
  return [...shebangNodeOptions(), ...prof, CLI, ...args];
}

/** What `agent-fabric serve` prints on stdout once it listens, by what {@link startServe} reads. */
const SERVE_LINES = {
  grpc: /gRPC:\s+(\S+)/,
  url: /MCP URL:\s+(\S+)/,
  token: /agent token:\s+(\S+)/,
} as const;

/**
 * Starts `agent-fabric serve --config <config>` as the bin link starts it (its CPU profiled into
 * `profileDir` when given) and resolves once its stdout has named each of `read`: its gRPC
 * address, MCP URL, agent token.
 */
export async function startServe<K extends keyof typeof SERVE_LINES>(
  config: string,
  read: readonly K[],
  profileDir?: string,
): Promise<{ child: ChildProcess } & Record<K, string>> {
  const child = spawn(process.execPath, cliArgs(['serve', '--config', config], profileDir), {
    cwd: ROOT,
    stdio: ['ignore', 'pipe', 'ignore'],
  });
  let out = '';
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`serve did not start: ${out}`)), 30_000);
    child.once('exit', (code) => reject(new Error(`serve exited (${code}): ${out}`)));
    child.stdout!.setEncoding('utf8');
    child.stdout!.on('data', (chunk: string) => {
      out += chunk;
      const found = read.map((key) => [key, SERVE_LINES[key].exec(out)?.[1]] as const);
      if (found.every(([, value]) => value)) {
        clearTimeout(timer);
        resolve({ child, ...(Object.fromEntries(found) as Record<K, string>) });
      }
    });
  });
}

/** Ends a child with SIGTERM (graceful: flushes the audit log, writes a profile) and waits. */
export async function stopChild(child: ChildProcess | undefined): Promise<void> {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
  await exited;
  clearTimeout(timer);
}

/**
 * User + system CPU time of a process so far, in µs, from `/proc/<pid>/stat`: counted in clock
 * ticks of 10 ms, so a window of 10 ms of CPU reads ±100 %. Includes threads that have exited.
 */
export function processCpuTicksUs(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  // utime and stime (fields 14 and 15 of the line) are in clock ticks of 10 ms.
  return (Number(fields[11]) + Number(fields[12])) * 10_000;
}

/** Each live thread's time on a CPU (user + system) in ns: the first field of its schedstat. */
function threadRuntimesNs(pid: number): Map<number, number> | undefined {
  const out = new Map<number, number>();
  let tids: string[];
  try {
    tids = readdirSync(`/proc/${pid}/task`);
  } catch {
    return undefined;
  }
  for (const tid of tids) {
    try {
      out.set(
        Number(tid),
        Number(readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').split(' ', 1)[0]),
      );
    } catch {
      // the thread exited between the listing and the read: seen as gone below
    }
  }
  return out.size ? out : undefined;
}

/** A process's CPU time, read by {@link cpuMeter}. */
export interface CpuMeter {
  /** User + system CPU time of the process (all its threads) since the meter was made, in µs. */
  (): number;
  /**
   * How many reads fell back to the 10 ms ticks of `/proc/<pid>/stat` for their interval: a
   * thread exited in it (its time since the last read is in no schedstat any more), or the
   * kernel has no schedstat.
   */
  readonly fallbacks: number;
}

/**
 * The CPU time of process `pid` read with ns precision (Linux): the sum over its threads of
 * `/proc/<pid>/task/<tid>/schedstat`'s first field (time on a CPU, user + system, what the tick
 * counts of `/proc/<pid>/stat` are scaled to). Each read adds the live threads' runtime since the
 * previous read (a thread new since then counts from 0); when a thread went away in between, its
 * last stretch is unknown and that interval is taken from the tick counts instead (`fallbacks`):
 * seen by its tid missing, or, for a thread started and ended within the interval, by the ticks
 * running more than 20 ms (two truncations) ahead of the live threads' sum — a thread that came
 * and went with less CPU than that goes uncounted (node's own threads live as long as it does).
 */
export function cpuMeter(pid: number): CpuMeter {
  let last = threadRuntimesNs(pid);
  let lastTicksUs = processCpuTicksUs(pid);
  let totalUs = 0;
  let fallbacks = 0;
  const read = (): number => {
    const now = threadRuntimesNs(pid);
    const ticksUs = processCpuTicksUs(pid);
    let exact = now !== undefined && last !== undefined;
    let deltaNs = 0;
    if (exact) {
      for (const tid of last!.keys()) if (!now!.has(tid)) exact = false;
      for (const [tid, ns] of now!) deltaNs += ns - (last!.get(tid) ?? 0);
      // A thread born and gone within the interval is in neither listing; the ticks (each of
      // utime and stime truncated: at most 20 ms below the true total) still count it.
      if (ticksUs - lastTicksUs - deltaNs / 1000 > 20_000) exact = false;
    }
    if (exact) totalUs += deltaNs / 1000;
    else {
      totalUs += ticksUs - lastTicksUs;
      fallbacks++;
    }
    last = now;
    lastTicksUs = ticksUs;
    return totalUs;
  };
  return Object.defineProperty(read, 'fallbacks', { get: () => fallbacks }) as CpuMeter;
}

/**
 * Shared benchmark harness: every suite measures the project and its baseline in the same run
 * and reports the ratio (see ../shared/BENCHMARKS.md for the conventions).
 */
import { createHistogram, performance, type RecordableHistogram } from 'node:perf_hooks';

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

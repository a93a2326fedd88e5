/**
 * Benchmark runner. `npm run bench` runs every suite; `npm run bench -- <suite> [--quick] [--json]`
 * runs one. Suites are the other `.ts` files in this folder, each default-exporting a BenchSuite.
 */
import { readdirSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import type { BenchResult, BenchSuite } from './lib.js';

const here = dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const quick = args.includes('--quick');
const json = args.includes('--json');
const wanted = args.filter((a) => !a.startsWith('--'));

const available = readdirSync(here)
  .filter((f) => f.endsWith('.ts') && f !== 'run.ts' && f !== 'lib.ts')
  .map((f) => basename(f, '.ts'))
  .sort();

const unknown = wanted.filter((w) => !available.includes(w));
if (unknown.length > 0) {
  console.error(`unknown suite(s): ${unknown.join(', ')}; available: ${available.join(', ')}`);
  process.exit(2);
}

const results: BenchResult[] = [];
for (const name of wanted.length > 0 ? wanted : available) {
  const mod = (await import(pathToFileURL(join(here, `${name}.ts`)).href)) as {
    default?: Partial<BenchSuite>;
  };
  const suite = mod.default;
  // Every .ts file at this level is a suite; shared helpers belong in fixtures/ or tools/.
  if (typeof suite?.run !== 'function' || suite.name !== name) {
    console.error(
      `bench/${name}.ts is not a suite: it must default-export { name: '${name}', run(ctx) }` +
        ' (helpers belong in bench/fixtures/ or bench/tools/)',
    );
    process.exit(2);
  }
  const started = Date.now();
  await suite.run({
    quick,
    report(r) {
      const result: BenchResult = {
        ...r,
        ratio: r.ratio ?? Math.round((r.value / r.baselineValue) * 100) / 100,
      };
      results.push(result);
      if (json) console.log(JSON.stringify(result));
    },
  });
  if (!json)
    console.error(`suite ${suite.name} finished in ${((Date.now() - started) / 1000).toFixed(1)}s`);
}

if (!json) {
  const rows = results.map((r) => ({
    suite: r.suite,
    case: r.case,
    value: r.skipped === undefined ? `${fmt(r.value)} ${r.unit}` : `skipped: ${r.skipped}`,
    baseline: r.skipped === undefined ? `${fmt(r.baselineValue)} (${r.baseline})` : r.baseline,
    ratio: r.skipped === undefined ? fmtRatio(r.ratio) + (r.higherIsBetter ? ' ↑' : ' ↓') : '',
    p50Us: r.p50Us ?? '',
    p99Us: r.p99Us ?? '',
    goal: r.goal ?? '',
  }));
  console.table(rows);
}

function fmt(n: number): string {
  return n >= 100 ? Math.round(n).toLocaleString('en-US') : n.toFixed(2);
}

/** Two decimals; two significant digits below 0.01, which two decimals would show as 0.00. */
function fmtRatio(ratio: number): string {
  return ratio !== 0 && Math.abs(ratio) < 0.01 ? ratio.toPrecision(2) : ratio.toFixed(2);
}

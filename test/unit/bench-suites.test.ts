/**
 * `npm run bench` imports every `.ts` file directly in bench/ as a suite; a helper module left
 * there stopped the whole run after the first suite (CI, stop 44). Each one must default-export
 * a suite named after its file.
 */
import { readdirSync } from 'node:fs';
import { basename, join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { describe, expect, it } from 'vitest';

const BENCH = join(import.meta.dirname, '..', '..', 'bench');
const suites = readdirSync(BENCH)
  .filter((f) => f.endsWith('.ts') && f !== 'run.ts' && f !== 'lib.ts')
  .map((f) => basename(f, '.ts'));

describe('bench/ suites', () => {
  it('finds the suites', () => {
    expect(suites).toEqual(
      expect.arrayContaining(['gateway', 'grpc', 'hooks', 'nats', 'policy', 'scheduler']),
    );
  });

  it.each(suites)('bench/%s.ts default-exports a suite of that name', async (name) => {
    const mod = (await import(pathToFileURL(join(BENCH, `${name}.ts`)).href)) as {
      default?: { name?: unknown; run?: unknown };
    };
    expect(mod.default?.name).toBe(name);
    expect(typeof mod.default?.run).toBe('function');
  });
});

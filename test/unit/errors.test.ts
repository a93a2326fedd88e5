import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import * as errors from '../../src/errors.js';
import * as api from '../../src/index.js';
import { FabricError, GRPC_STATUS_BY_KIND } from '../../src/errors.js';

const readme = readFileSync(new URL('../../README.md', import.meta.url), 'utf8');
const section = readme.slice(readme.indexOf('\n## Errors\n'));

/** Every coded class of the catalog. */
const catalog = Object.values(errors).filter(
  (v): v is typeof FabricError & { code: string } =>
    typeof v === 'function' &&
    v.prototype instanceof FabricError &&
    typeof (v as { code?: unknown }).code === 'string',
);

describe('error catalog', () => {
  it('has unique FABRIC_ERR_* codes', () => {
    const codes = catalog.map((c) => c.code);
    expect(codes.length).toBeGreaterThan(30);
    expect(new Set(codes).size).toBe(codes.length);
    for (const code of codes) expect(code).toMatch(/^FABRIC_ERR_[A-Z_]+$/);
  });

  it('is exported from the package, class for class', () => {
    const exported = api as Record<string, unknown>;
    const missing = catalog.filter((c) => exported[c.name] !== c).map((c) => c.name);
    expect(missing).toEqual([]);
  });

  it('is documented in the README, row for row', () => {
    const documented = [
      ...section.matchAll(/^\| `(FABRIC_ERR_[A-Z_]+)`\s*\| `(\w+)`\s*\| (\w+)\s*\|/gm),
    ].map((m) => ({
      code: m[1],
      name: m[2],
      kind: m[3],
    }));
    // The kind each class passes to `super`, read from the catalog's source.
    const source = readFileSync(new URL('../../src/errors.ts', import.meta.url), 'utf8');
    const actual = catalog.map((c) => {
      const body = source.slice(source.indexOf(`export class ${c.name} extends`));
      const kind = /super\(\s*\w+\.code,\s*'(\w+)'/.exec(body)?.[1];
      return { code: c.code, name: c.name, kind };
    });
    expect(documented.sort((a, b) => a.code!.localeCompare(b.code!))).toEqual(
      actual.sort((a, b) => a.code.localeCompare(b.code)),
    );
  });

  it('maps every kind to a gRPC status and serialises without losing the code', () => {
    const e = new errors.QueueFullError(5);
    expect(GRPC_STATUS_BY_KIND[e.kind]).toBe(8);
    expect(JSON.parse(JSON.stringify(e))).toEqual({
      code: 'FABRIC_ERR_QUEUE_FULL',
      kind: 'resource_exhausted',
      message: e.message,
      details: { limit: 5 },
    });
    expect(e).toBeInstanceOf(Error);
    expect(errors.isFabricError(e, 'FABRIC_ERR_QUEUE_FULL')).toBe(true);
  });
});

/**
 * The config reference (schema/fabric-config.schema.json and the README table) is what
 * scripts/config-reference.ts makes from the zod schema now: a key added, renamed or given a new
 * default without regenerating (`npm run gen:config-reference`) fails here, and so does a key
 * without a description.
 */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import {
  README_END,
  README_START,
  readmeTable,
  schemaText,
  SCHEMA_FILE,
  undocumented,
} from '../../scripts/config-reference.js';

describe('config reference', () => {
  it('documents every key of the schema, and no key it lacks', () => {
    expect(undocumented()).toEqual({ missing: [], stale: [] });
  });

  it('the JSON Schema file is up to date', async () => {
    expect(readFileSync(SCHEMA_FILE, 'utf8')).toBe(await schemaText());
  });

  it('the README table is up to date', async () => {
    const readme = readFileSync('README.md', 'utf8');
    const start = readme.indexOf(README_START);
    const end = readme.indexOf(README_END);
    expect(start).toBeGreaterThan(0);
    expect(readme.slice(start, end + README_END.length)).toBe(await readmeTable());
  });
});

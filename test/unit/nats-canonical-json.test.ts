/**
 * The sidecar's canonical JSON (RFC 8785) against the vectors shared with the Go worker
 * (test/fixtures/nats/canonical-json.json; `examples/nats-go/canonical_test.go` checks the Go
 * side, run from `test/integration/nats-go-worker.test.ts`): a report's proof covers the digest
 * of its content's canonical JSON, so the two must agree byte for byte.
 */
import { readFileSync } from 'node:fs';
import { expect, it } from 'vitest';
import { canonicalJson } from '../../src/transport/nats/wire.js';

interface Vector {
  name: string;
  input: string;
  output: string;
}
const { vectors } = JSON.parse(
  readFileSync(new URL('../fixtures/nats/canonical-json.json', import.meta.url), 'utf8'),
) as { vectors: Vector[] };

it('has vectors of every kind the README names', () => {
  const names = vectors.map((v) => v.name).join('\n');
  for (const kind of [
    'exponent',
    'negative zero',
    'unicode escapes',
    'UTF-16',
    'nested',
    'RFC 8785',
  ]) {
    expect(names).toContain(kind);
  }
});

it.each(vectors.map((v) => [v.name, v] as const))('%s', (_name, v) => {
  expect(canonicalJson(JSON.parse(v.input))).toBe(v.output);
  // Canonical JSON is a fixed point: read back and written again, it does not change.
  expect(canonicalJson(JSON.parse(v.output))).toBe(v.output);
});

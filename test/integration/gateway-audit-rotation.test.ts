import { existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  agentToken,
  closeSidecar,
  DEFAULT_ALLOW,
  httpClient,
  startTestSidecar,
  tempDir,
  until,
} from '../fixtures/gateway/harness.js';

const MAX_BYTES = 1024;
const MAX_FILES = 2;

describe('audit log rotation by size (real fabric)', () => {
  const path = join(tempDir('audit-rotation'), 'audit.log');
  const generations = [`${path}.2`, `${path}.1`, path]; // oldest first
  let sidecar: Sidecar;
  let client: Client;

  beforeAll(async () => {
    sidecar = await startTestSidecar({
      policies: [DEFAULT_ALLOW],
      agents: [{ name: 'auditor' }],
      audit: { path, maxBytes: MAX_BYTES, maxFiles: MAX_FILES },
    });
    client = await httpClient(sidecar.url!, agentToken(sidecar, 'auditor'));
  });

  afterAll(async () => {
    await client?.close();
    await closeSidecar(sidecar);
  });

  const record = (i: number) =>
    client.callTool({ name: 'fabric__record_usage', arguments: { tokens: i, cost: 0 } });

  /** Call numbers of the audit lines of each kept file, oldest file first. */
  function callsPerFile(digests: Map<string, number>): number[][] {
    return generations.map((file) =>
      readFileSync(file, 'utf8')
        .trim()
        .split('\n')
        .map((line) => {
          const parsed = JSON.parse(line) as { tool: string; argsDigest: string };
          expect(parsed.tool).toBe('fabric__record_usage');
          const i = digests.get(parsed.argsDigest);
          expect(i).toBeDefined();
          return i!;
        }),
    );
  }

  it('rotates at maxBytes, keeps maxFiles generations, and loses no line between kept files', async () => {
    const digests = new Map<string, number>();
    for (let i = 0; i < 30; i++) {
      digests.set(sidecar.gateway.auditDigest({ tokens: i, cost: 0 }), i);
      expect((await record(i)).isError).toBeFalsy();
    }
    await until(() =>
      readFileSync(path, 'utf8').includes(sidecar.gateway.auditDigest({ tokens: 29, cost: 0 })),
    );
    expect(existsSync(`${path}.${MAX_FILES + 1}`)).toBe(false);
    for (const file of generations) expect(statSync(file).size).toBeLessThanOrEqual(MAX_BYTES);
    const kept = callsPerFile(digests).flat();
    // The newest calls survive, in order and without gaps; the oldest were rotated away.
    expect(kept.at(-1)).toBe(29);
    expect(kept).toEqual(Array.from({ length: kept.length }, (_, k) => 30 - kept.length + k));
    expect(kept.length).toBeLessThan(30);
  });

  it('keeps every file within maxBytes and every line whole under concurrent calls', async () => {
    const digests = oldDigests(sidecar);
    const calls = Array.from({ length: 20 }, (_, k) => {
      digests.set(sidecar.gateway.auditDigest({ tokens: 100 + k, cost: 0 }), 100 + k);
      return record(100 + k);
    });
    for (const r of await Promise.all(calls)) expect(r.isError).toBeFalsy();
    // Records are written in batches (audit.flushIntervalMs): wait for the last call's line.
    await until(() =>
      generations.some(
        (f) =>
          existsSync(f) &&
          readFileSync(f, 'utf8').includes(sidecar.gateway.auditDigest({ tokens: 119, cost: 0 })),
      ),
    );
    expect(existsSync(`${path}.${MAX_FILES + 1}`)).toBe(false);
    for (const file of generations) expect(statSync(file).size).toBeLessThanOrEqual(MAX_BYTES);
    const kept = callsPerFile(digests).flat();
    expect(kept.filter((i) => i >= 100).length).toBeGreaterThanOrEqual(3);
    expect(new Set(kept).size).toBe(kept.length);
  });
});

/** Digests of the first test's calls (the oldest kept file may still hold some). */
function oldDigests(sidecar: Sidecar): Map<string, number> {
  return new Map(
    Array.from({ length: 30 }, (_, i) => [sidecar.gateway.auditDigest({ tokens: i, cost: 0 }), i]),
  );
}

/**
 * The audit log when its file is moved, removed or cannot be rotated while the sidecar runs
 * (logrotate's rename, an operator's `rm -r`, an obstacle where a generation goes): the lines
 * go on reaching the configured path, and what cannot be written is logged and counted — never
 * written into another file, never a crash.
 */
import {
  closeSync,
  existsSync,
  mkdirSync,
  openSync,
  readFileSync,
  renameSync,
  rmSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { join } from 'node:path';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { afterEach, describe, expect, it } from 'vitest';
import type { GatewayLogEntry } from '../../src/gateway/index.js';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  agentToken,
  closeSidecar,
  DEFAULT_ALLOW,
  httpClient,
  metricValue,
  startTestSidecar,
  tempDir,
  until,
} from '../fixtures/gateway/harness.js';

describe('audit log file moved or removed under a running sidecar (real fabric)', () => {
  let sidecar: Sidecar | undefined;
  let client: Client | undefined;
  const logs: GatewayLogEntry[] = [];

  afterEach(async () => {
    await client?.close();
    await closeSidecar(sidecar);
    client = undefined;
    sidecar = undefined;
    logs.length = 0;
  });

  async function start(dir: string, audit: Record<string, unknown> = {}): Promise<string> {
    const path = join(dir, 'audit.log');
    sidecar = await startTestSidecar(
      {
        policies: [DEFAULT_ALLOW],
        agents: [{ name: 'auditor' }],
        audit: { path, flushIntervalMs: 0, ...audit },
      },
      { logger: (e) => logs.push(e) },
    );
    client = await httpClient(sidecar.url!, agentToken(sidecar, 'auditor'));
    return path;
  }

  const record = async (i: number): Promise<string> => {
    const args = { tokens: i, cost: 0 };
    const r = await client!.callTool({ name: 'fabric__record_usage', arguments: args });
    expect(r.isError).toBeFalsy();
    return sidecar!.gateway.auditDigest(args);
  };

  const has = (file: string, digest: string): boolean =>
    existsSync(file) && readFileSync(file, 'utf8').includes(digest);

  it('after a logrotate-style rename, the next lines go to a new file at the path', async () => {
    const path = await start(tempDir('audit-moved'));
    const first = await record(1);
    await until(() => has(path, first));
    renameSync(path, `${path}-20261205`); // logrotate without copytruncate
    const second = await record(2);
    await until(() => has(path, second));
    expect(has(`${path}-20261205`, second)).toBe(false);
    for (const line of readFileSync(path, 'utf8').trim().split('\n')) JSON.parse(line);
  });

  it('after its directory is removed, the directory and file are made again', async () => {
    const dir = join(tempDir('audit-removed'), 'logs');
    const path = await start(dir);
    const first = await record(1);
    await until(() => has(path, first));
    rmSync(dir, { recursive: true });
    const second = await record(2);
    await until(() => has(path, second));
    expect(logs.some((e) => e.msg === 'audit log reopened' && e.level === 'warn')).toBe(true);
    expect(await metricValue(sidecar!, 'agent_fabric_audit_reopens_total')).toBeGreaterThan(0);
  });

  it('a path it cannot write is logged and counted, and lines resume when it can', async () => {
    const dir = join(tempDir('audit-blocked'), 'logs');
    const path = await start(dir);
    rmSync(dir, { recursive: true });
    writeFileSync(dir, 'not a directory'); // the directory cannot be made again
    const lost = await record(1);
    await until(() => logs.some((e) => e.msg === 'audit log write failed'));
    const failed = logs.find((e) => e.msg === 'audit log write failed')!;
    expect(failed.level).toBe('error');
    expect(failed.lost).toBeGreaterThanOrEqual(1);
    await until(
      async () => (await metricValue(sidecar!, 'agent_fabric_audit_records_lost_total')) >= 1,
    );
    expect(await metricValue(sidecar!, 'agent_fabric_audit_write_failures_total')).toBeGreaterThan(
      0,
    );
    rmSync(dir);
    const back = await record(2);
    await until(() => has(path, back));
    expect(has(path, lost)).toBe(false);
  });

  it('a rotation that fails leaves no descriptor behind: no line lands in another file', async () => {
    const path = await start(tempDir('audit-rotate-fails'), { maxBytes: 300, maxFiles: 1 });
    mkdirSync(`${path}.1`); // the generation to drop is a directory: the rotation fails
    writeFileSync(join(`${path}.1`, 'keep'), '');
    for (let i = 0; i < 4; i++) await record(i);
    await until(() => logs.some((e) => e.msg === 'audit log write failed'));
    // A file opened now gets the lowest free descriptor: the one the failed rotation closed.
    const victim = join(tempDir('audit-victim'), 'victim');
    const fd = openSync(victim, 'w');
    try {
      rmSync(`${path}.1`, { recursive: true });
      const later = await record(10);
      await until(() => has(path, later) || has(`${path}.1`, later));
      // The audit log neither wrote into that file nor closed its descriptor (the old code
      // closed it on the next rotation and then opened the log under the same number).
      expect(readFileSync(victim, 'utf8')).toBe('');
      writeSync(fd, 'mine\n');
      expect(readFileSync(victim, 'utf8')).toBe('mine\n');
    } finally {
      closeSync(fd);
    }
  });
});

import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import {
  AUDIT_MAX_BUFFERED_RECORDS,
  AuditLog,
  DEFAULT_AUDIT_FLUSH_INTERVAL_MS,
  digestArgs,
} from '../../src/gateway/audit-log.js';
import { ConfigError } from '../../src/errors.js';

describe('AuditLog batching', () => {
  let dir: string;
  let path: string;
  const logs: AuditLog[] = [];

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'fabric-audit-'));
    path = join(dir, 'audit.log');
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'setImmediate', 'clearImmediate'] });
  });

  afterEach(() => {
    for (const log of logs.splice(0)) log.close();
    vi.useRealTimers();
    rmSync(dir, { recursive: true, force: true });
  });

  function open(options: { flushIntervalMs?: number } = {}): AuditLog {
    const log = new AuditLog({ path, ...options });
    logs.push(log);
    return log;
  }

  const lines = (): Record<string, unknown>[] =>
    readFileSync(path, 'utf8')
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as Record<string, unknown>);

  function call(log: AuditLog, i: number): void {
    log.writeCall('agent-1', 'fs__read', { i }, Date.UTC(2026, 0, 1), 1.5, {
      decision: 'allow',
      outcome: 'ok',
    });
  }

  it('holds records for flushIntervalMs, then writes them in one batch', () => {
    const log = open();
    call(log, 1);
    call(log, 2);
    vi.advanceTimersByTime(DEFAULT_AUDIT_FLUSH_INTERVAL_MS - 1);
    expect(lines()).toEqual([]);
    vi.advanceTimersByTime(1);
    expect(lines().map((l) => l.argsDigest)).toEqual([digestArgs({ i: 1 }), digestArgs({ i: 2 })]);
    expect(lines()[0]).toMatchObject({
      time: '2026-01-01T00:00:00.000Z',
      agent: 'agent-1',
      tool: 'fs__read',
      decision: 'allow',
      outcome: 'ok',
      durationMs: 1.5,
    });
  });

  it('starts a new interval for records queued after a flush', () => {
    const log = open({ flushIntervalMs: 50 });
    call(log, 1);
    vi.advanceTimersByTime(50);
    call(log, 2);
    vi.advanceTimersByTime(49);
    expect(lines()).toHaveLength(1);
    vi.advanceTimersByTime(1);
    expect(lines()).toHaveLength(2);
  });

  it('writes at the end of the loop turn with flushIntervalMs 0', () => {
    const log = open({ flushIntervalMs: 0 });
    call(log, 1);
    expect(lines()).toEqual([]);
    vi.advanceTimersToNextTimer();
    expect(lines()).toHaveLength(1);
  });

  it('does not wait for the interval once the buffer is full', () => {
    const log = open({ flushIntervalMs: 60_000 });
    for (let i = 0; i < AUDIT_MAX_BUFFERED_RECORDS; i++) call(log, i);
    vi.advanceTimersByTime(0); // the end of this turn
    expect(lines()).toHaveLength(AUDIT_MAX_BUFFERED_RECORDS);
  });

  it('flush() and close() write what is buffered at once, and nothing is written twice', () => {
    const log = open();
    call(log, 1);
    log.flush();
    expect(lines()).toHaveLength(1);
    call(log, 2);
    log.close();
    expect(lines()).toHaveLength(2);
    vi.runAllTimers();
    expect(lines()).toHaveLength(2);
  });

  it('rejects a negative or fractional interval naming the key', () => {
    for (const flushIntervalMs of [-1, 1.5, Number.NaN]) {
      expect(() => new AuditLog({ path, flushIntervalMs })).toThrow(ConfigError);
    }
    expect(() => new AuditLog({ path, flushIntervalMs: -1 })).toThrow(/audit\.flushIntervalMs/);
  });
});

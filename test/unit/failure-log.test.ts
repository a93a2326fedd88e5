import { afterEach, describe, expect, it, vi } from 'vitest';
import type { GatewayLogEntry } from '../../src/gateway/tool-call-pipeline.js';
import { FailureLog } from '../../src/server/failure-log.js';

describe('FailureLog', () => {
  it('logs the first failure, then one line per window with how many it stands for', () => {
    let now = 0;
    const lines: GatewayLogEntry[] = [];
    const log = new FailureLog({ log: (e) => lines.push(e), windowMs: 1000, now: () => now });
    log.report('patrol failed', new Error('a'));
    for (let i = 0; i < 5; i++) {
      now += 100;
      log.report('patrol failed', new Error(`b${i}`));
    }
    expect(lines).toEqual([{ level: 'error', msg: 'patrol failed: a' }]);
    now = 1000;
    log.report('patrol failed', 'c');
    expect(lines[1]).toEqual({
      level: 'error',
      msg: 'patrol failed: c (5 more failures since the last line, not logged one by one)',
    });
    // After a quiet window the next failure is logged at once, with nothing left unlogged.
    now = 5000;
    log.report('patrol failed', new Error('d'));
    expect(lines[2]).toEqual({ level: 'error', msg: 'patrol failed: d' });
    expect(lines).toHaveLength(3);
  });

  it('counts its window in elapsed time: a wall clock set back a day does not silence failures', () => {
    vi.useFakeTimers({ toFake: ['Date', 'performance'] });
    const lines: GatewayLogEntry[] = [];
    const log = new FailureLog({ log: (e) => lines.push(e), windowMs: 1000 });
    log.report('patrol failed', new Error('a'));
    vi.setSystemTime(Date.now() - 86_400_000);
    vi.advanceTimersByTime(1000);
    log.report('patrol failed', new Error('b'));
    expect(lines.map((l) => l.msg)).toEqual(['patrol failed: a', 'patrol failed: b']);
  });

  afterEach(() => {
    vi.useRealTimers();
  });
});

import { spawnSync } from 'node:child_process';
import { createHash, createHmac } from 'node:crypto';
import {
  existsSync,
  mkdtempSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  truncateSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import {
  ArgsDigester,
  AUDIT_MAX_BUFFERED_RECORDS,
  AuditLog,
  AuditWriteError,
  DEFAULT_AUDIT_FLUSH_INTERVAL_MS,
  digestArgs,
  formatCall,
  jsonMs,
  randomDigestKey,
  type AuditOutcome,
  type AuditRecord,
} from '../../src/gateway/audit-log.js';
import { lineSafeJson } from '../../src/json-lines.js';
import { ConfigError } from '../../src/errors.js';

/** The digest key of the logs these tests make (a log given none draws a random one). */
const KEY = 'test-digest-key-0123456789abcdef';
const DIGESTER = new ArgsDigester(KEY);
import { REPO_ROOT } from '../fixtures/hooks/temp-store.js';

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
    const log = new AuditLog({ digestKey: KEY, path, ...options });
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

  it('counts the bytes of batches written far from the size limit, and rotates on time', () => {
    // Batches far below maxBytes are written as strings (no byte count beforehand); what they
    // took must still count, or a later batch would overflow the file instead of rotating.
    const maxBytes = 8_000;
    const log = new AuditLog({ digestKey: KEY, path, maxBytes, maxFiles: 3 });
    logs.push(log);
    let i = 0;
    for (let batch = 0; batch < 40; batch++) {
      for (let k = 0; k < 3; k++) {
        log.writeCall(
          'agent-ü',
          'fs__read',
          { i: i++, s: 'naïve “x”' },
          Date.UTC(2026, 0, 1),
          1.5,
          {
            decision: 'allow',
            outcome: 'ok',
          },
        );
      }
      log.flush();
    }
    const sizes = [path, `${path}.1`, `${path}.2`].map((p) => readFileSync(p).length);
    for (const size of sizes) expect(size).toBeLessThanOrEqual(maxBytes);
    // The rotated file was filled until the next line no longer fit: nothing rotated early.
    const lineBytes = Buffer.byteLength(readFileSync(path, 'utf8').split('\n')[0]! + '\n');
    expect(sizes[1]! + lineBytes).toBeGreaterThan(maxBytes);
    const all = [`${path}.2`, `${path}.1`, path].flatMap((p) =>
      readFileSync(p, 'utf8').split('\n').filter(Boolean),
    );
    expect(all.map((l) => (JSON.parse(l) as { argsDigest: string }).argsDigest).slice(-3)).toEqual(
      [i - 3, i - 2, i - 1].map((n) => digestArgs({ i: n, s: 'naïve “x”' }, KEY)),
    );
  });

  it('holds records for flushIntervalMs, then writes them in one batch', () => {
    const log = open();
    call(log, 1);
    call(log, 2);
    vi.advanceTimersByTime(DEFAULT_AUDIT_FLUSH_INTERVAL_MS - 1);
    expect(lines()).toEqual([]);
    vi.advanceTimersByTime(1);
    expect(lines().map((l) => l.argsDigest)).toEqual([
      digestArgs({ i: 1 }, KEY),
      digestArgs({ i: 2 }, KEY),
    ]);
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

  it('writes batches larger and smaller than its encode buffer whole, in order', () => {
    const log = open({ flushIntervalMs: 0 });
    const fields = { decision: 'allow', outcome: 'ok' };
    const at = Date.UTC(2026, 0, 1);
    const big = 'ü🚀'.repeat(12_000); // over the 64 KiB buffer's third: encoded on its own
    log.writeCall('agent-ü-long', 'fs__read', { i: 0 }, at, 1.5, fields);
    log.flush();
    log.writeCall(big, 'fs__read', { i: 1 }, at, 1.5, fields);
    log.flush();
    log.writeCall('a', 'fs__read', { i: 2 }, at, 1.5, fields); // shorter than the first batch
    log.flush();
    expect(lines().map((l) => l.agent)).toEqual(['agent-ü-long', big, 'a']);
    expect(lines().map((l) => l.argsDigest)).toEqual([0, 1, 2].map((i) => digestArgs({ i }, KEY)));
  });

  it('rejects a negative or fractional interval naming the key', () => {
    for (const flushIntervalMs of [-1, 1.5, Number.NaN]) {
      expect(() => new AuditLog({ digestKey: KEY, path, flushIntervalMs })).toThrow(ConfigError);
    }
    expect(() => new AuditLog({ digestKey: KEY, path, flushIntervalMs: -1 })).toThrow(
      /audit\.flushIntervalMs/,
    );
  });
});

describe('ArgsDigester', () => {
  it('is HMAC-SHA256 as createHmac makes it, for any text and key length', () => {
    const texts = [{}, { a: 'naïve “x” 🚀' }, 'plain', 42, [1, { b: null }]];
    for (const key of [KEY, 'k'.repeat(64), randomDigestKey()]) {
      const d = new ArgsDigester(key);
      for (const t of texts) {
        const expected = createHmac('sha256', key).update(JSON.stringify(t)).digest('hex');
        expect(d.digest(t)).toBe(expected);
        expect(d.digest(t)).toBe(expected); // the kept buffer is reused
      }
    }
    expect(new ArgsDigester(KEY).digest({ a: 1 })).not.toBe(
      new ArgsDigester(`${KEY}x`).digest({ a: 1 }),
    );
  });

  it('matches createHmac over many random texts: every byte value of the inner digest is carried', () => {
    // 2,000 inner digests hold every byte value (0x00, 0x80–0xff …) many times over: a copy of
    // the inner digest that re-encoded or dropped any of them would differ from createHmac.
    let seed = 7;
    const rand = (n: number): number => {
      seed = (seed * 1103515245 + 12345) % 2147483648;
      return seed % n;
    };
    const pieces = ['a', 'é', '€', '😀', '\ud800', '\udfff', '"', '\\', '\n', '\u0000', 'ÿ'];
    const seen = new Set<number>();
    for (const key of [KEY, 'k'.repeat(64), '~'.repeat(16)]) {
      const d = new ArgsDigester(key);
      for (let i = 0; i < 700; i++) {
        let s = '';
        for (let n = rand(90); n > 0; n--) s += pieces[rand(pieces.length)];
        const args = { s, n: rand(1_000_000) };
        const json = JSON.stringify(args);
        const ipad = Buffer.alloc(64);
        ipad.write(key, 'latin1');
        for (let j = 0; j < 64; j++) ipad[j]! ^= 0x36;
        for (const b of createHash('sha256').update(ipad).update(json).digest()) seen.add(b);
        expect(d.digest(args)).toBe(createHmac('sha256', key).update(json).digest('hex'));
      }
    }
    expect(seen.size).toBe(256);
  });

  it('refuses keys that are too short, too long or not printable ASCII', () => {
    for (const key of ['short', 'k'.repeat(65), `${'k'.repeat(20)}é`, `${'k'.repeat(20)}\n`]) {
      expect(() => new ArgsDigester(key)).toThrow(/audit\.digestKey/);
    }
  });
});

describe('formatCall', () => {
  /** The line as JSON.stringify makes it of the record (the definition formatCall must match). */
  function reference(c: Parameters<typeof formatCall>[0]): string {
    const record: AuditRecord = {
      time: new Date(c.startedAt).toISOString(),
      agent: c.agent,
      tool: c.tool,
      rule: undefined,
      argsDigest: digestArgs(c.args, KEY),
      durationMs: c.durationMs,
      ...c.fields,
    };
    // U+2028 and U+2029 escaped: JSON.stringify leaves them raw, and they split a line.
    return lineSafeJson(JSON.stringify(record)) + '\n';
  }

  const outcomes: AuditOutcome[] = [
    { decision: 'allow', outcome: 'ok' },
    { decision: 'allow', rule: 'allow-ev#0', outcome: 'ok', tokens: 7, cost: 0.001 },
    {
      decision: 'deny',
      rule: 'guard "x"\\#1',
      outcome: 'denied',
      code: 'FABRIC_ERR_POLICY_DENIED',
    },
    { decision: 'budget', rule: undefined, outcome: 'denied', code: 'E', tokens: 0, cost: 0 },
    { decision: 'allow', outcome: 'ok', tokens: Number.NaN, cost: Infinity },
    { decision: 'allow', outcome: 'ok', tokens: 1e21, cost: -0 },
  ];
  const times = [
    Date.UTC(2026, 10, 26, 10, 5, 12, 7),
    Date.UTC(2026, 10, 26, 10, 5, 12, 7) + 0.9, // fractional: truncated like Date does
    Date.UTC(2026, 10, 26, 10, 5, 12, 45),
    Date.UTC(2026, 10, 26, 10, 5, 12, 999),
    Date.UTC(2026, 10, 26, 10, 5, 13, 0), // next second: a new prefix
    Date.UTC(2026, 10, 26, 10, 5, 12, 100), // back again
    0,
    253402300799999, // the last millisecond of year 9999
    253402300800000, // year +010000
    -1, // 1969
  ];

  it('writes exactly the JSON.stringify text of the record (line separators escaped)', () => {
    const agents = ['3f0c7a2e-1234-4abc-9def-0123456789ab', 'naïve “agent”\n\u2028'];
    const tools = ['ev__echo', 'resources/read', 'tab\there'];
    for (const startedAt of times) {
      for (const fields of outcomes) {
        for (const agent of agents) {
          for (const tool of tools) {
            const c = {
              agent,
              tool,
              args: { tool, startedAt },
              startedAt,
              durationMs: 1.25,
              fields,
            };
            expect(formatCall(c, DIGESTER)).toBe(reference(c));
          }
        }
      }
    }
    const odd = {
      agent: 'a',
      tool: 't',
      args: undefined,
      startedAt: times[0]!,
      durationMs: Infinity,
    };
    expect(formatCall({ ...odd, fields: outcomes[0]! }, DIGESTER)).toBe(
      reference({ ...odd, fields: outcomes[0]! }),
    );
  });
  it('writes the same text when records repeat, or change one field at a time', () => {
    // formatCall keeps the fragments of the last record (who called what, what became of it):
    // repeats, and changes of any one field in either, must each still give the exact line.
    const base = {
      agent: 'a1',
      tool: 'ev__echo',
      args: { message: 'm' },
      startedAt: times[0]!,
      durationMs: 0.25,
    };
    const sequence = [
      { ...base, fields: outcomes[1]! },
      { ...base, fields: outcomes[1]! },
      { ...base, fields: { ...outcomes[1]!, rule: undefined } },
      { ...base, fields: { ...outcomes[1]!, rule: undefined } },
      { ...base, fields: outcomes[1]! },
      { ...base, agent: 'a2', fields: outcomes[1]! },
      { ...base, agent: 'a2', tool: 'ev__add', fields: outcomes[1]! },
      { ...base, agent: 'a2', tool: 'ev__add', fields: outcomes[2]! },
      { ...base, agent: 'a2', tool: 'ev__add', fields: { ...outcomes[2]!, code: undefined } },
      { ...base, agent: 'a2', tool: 'ev__add', fields: { ...outcomes[2]!, outcome: 'error' } },
      { ...base, agent: 'a2', tool: 'ev__add', fields: { ...outcomes[2]!, decision: 'approved' } },
      { ...base, agent: 'a2', tool: 'ev__add', fields: outcomes[2]! },
      { ...base, fields: outcomes[0]! },
      { ...base, args: 1n, fields: outcomes[0]! }, // no digest: marked, fragments unchanged
      { ...base, fields: outcomes[0]! },
    ];
    for (const c of sequence) {
      if (typeof c.args === 'bigint') {
        expect(formatCall(c, DIGESTER)).toMatch(
          /"argsDigest":null,"argsError":"arguments could not/,
        );
        expect(JSON.parse(formatCall(c, DIGESTER))).toMatchObject({
          agent: 'a1',
          decision: 'allow',
        });
      } else expect(formatCall(c, DIGESTER)).toBe(reference(c));
    }
  });
});

describe('jsonMs (durations written from integers)', () => {
  /** The definition it must match: JSON.stringify of the number. */
  const reference = (ms: number): string => JSON.stringify(ms);

  it('writes every whole-µs duration under 3,000 ms as JSON.stringify does', () => {
    for (let us = 0; us <= 3_000_000; us++) {
      const ms = Math.round((us / 1000) * 1000) / 1000; // as the gateway rounds them
      if (jsonMs(ms) !== reference(ms)) expect(jsonMs(ms)).toBe(reference(ms));
    }
  });

  it('agrees on large, odd and unrounded durations', () => {
    let seed = 7;
    const random = (): number => {
      seed = (seed * 16807) % 2147483647;
      return seed / 2147483647;
    };
    const values = [
      -0,
      -1.5,
      1e-7,
      0.0001,
      0.0005,
      0.001,
      999_999_999.999,
      1e9,
      1e9 + 0.001,
      1e21,
      1e-300,
      Number.NaN,
      Infinity,
      -Infinity,
      Number.MAX_VALUE,
      Number.MIN_VALUE,
      0.1 + 0.2,
      1.0049999,
    ];
    for (let i = 0; i < 200_000; i++) {
      const us = Math.floor(random() * 1e12); // up to 10⁹ ms
      values.push(us / 1000, Math.round((us / 1000) * 1000) / 1000, random() * 1e9);
      values.push(random() * 10, (us + 0.5) / 1000, Math.floor(random() * 1e16) / 1000);
    }
    for (const ms of values) {
      if (jsonMs(ms) !== reference(ms)) expect([ms, jsonMs(ms)]).toEqual([ms, reference(ms)]);
    }
  });
});

describe('AuditLog robustness (records an agent made hostile)', () => {
  let dir: string;
  let path: string;

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'fabric-audit-'));
    path = join(dir, 'audit.log');
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'setImmediate', 'clearImmediate'] });
  });

  afterEach(() => {
    vi.useRealTimers();
    rmSync(dir, { recursive: true, force: true });
  });

  const lines = (): Record<string, unknown>[] =>
    readFileSync(path, 'utf8')
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as Record<string, unknown>);

  const outcome: AuditOutcome = { decision: 'invalid', outcome: 'error', code: 'E' };

  it('writes arguments JSON.stringify cannot serialize with a marker, and keeps the batch', () => {
    const log = new AuditLog({ digestKey: KEY, path });
    let deep: unknown = 1;
    for (let i = 0; i < 100_000; i++) deep = { a: deep };
    const cyclic: Record<string, unknown> = {};
    cyclic.self = cyclic;
    log.writeCall('agent-1', 'before', { i: 1 }, Date.UTC(2026, 0, 1), 1, outcome);
    log.writeCall('agent-1', 'deep', deep, Date.UTC(2026, 0, 1), 1, outcome);
    log.writeCall('agent-1', 'cyclic', cyclic, Date.UTC(2026, 0, 1), 1, outcome);
    log.writeCall('agent-1', 'bigint', { n: 1n }, Date.UTC(2026, 0, 1), 1, outcome);
    log.writeCall('agent-1', 'after', { i: 2 }, Date.UTC(2026, 0, 1), 1, outcome);
    // The timed flush is where an exception would have ended the process.
    expect(() => vi.advanceTimersByTime(DEFAULT_AUDIT_FLUSH_INTERVAL_MS)).not.toThrow();
    const written = lines();
    expect(written.map((l) => l.tool)).toEqual(['before', 'deep', 'cyclic', 'bigint', 'after']);
    expect(written[0]!.argsDigest).toBe(digestArgs({ i: 1 }, KEY));
    expect(written[4]!.argsDigest).toBe(digestArgs({ i: 2 }, KEY));
    for (const marked of written.slice(1, 4)) {
      expect(marked).toMatchObject({
        agent: 'agent-1',
        argsDigest: null,
        decision: 'invalid',
        outcome: 'error',
        code: 'E',
      });
      expect(marked.argsError).toMatch(/^arguments could not be serialized: \w*Error: /);
    }
    log.close();
  });

  it('writes a marker line for a record of the wrong types instead of losing the batch', () => {
    const log = new AuditLog({ digestKey: KEY, path });
    log.write({
      time: 'now',
      agent: 'a',
      tool: 't',
      decision: 'allow',
      durationMs: 1,
      outcome: 'ok',
      argsDigest: 'd',
      tokens: 1n as unknown as number,
    });
    log.writeCall(7n as unknown as string, 'odd', {}, 0, 1, outcome);
    log.writeCall('agent-1', 'after', {}, 0, 1, outcome);
    vi.advanceTimersByTime(DEFAULT_AUDIT_FLUSH_INTERVAL_MS);
    const written = lines();
    expect(written).toHaveLength(3);
    expect(written[0]).toMatchObject({ agent: 'a', tool: 't', decision: 'allow', outcome: 'ok' });
    expect(written[0]!.recordError).toMatch(/could not be serialized/);
    expect(written[1]).toMatchObject({ agent: 'bigint', tool: 'odd', decision: 'invalid' });
    expect(written[1]!.recordError).toMatch(/could not be serialized/);
    expect(written[2]).toMatchObject({ agent: 'agent-1', tool: 'after' });
    log.close();
  });

  it('reports a failed write of a timed flush to onError instead of throwing from the timer', () => {
    const errors: unknown[] = [];
    const log = new AuditLog({
      digestKey: KEY,
      path,
      maxBytes: 10,
      onError: (e) => errors.push(e),
    });
    // The file's folder disappears and a file takes its name: it cannot be made again.
    rmSync(dir, { recursive: true, force: true });
    writeFileSync(dir, '');
    log.writeCall('agent-1', 'fs__read', { i: 1 }, 0, 1, outcome);
    log.writeCall('agent-1', 'fs__read', { i: 2 }, 0, 1, outcome);
    expect(() => vi.advanceTimersByTime(DEFAULT_AUDIT_FLUSH_INTERVAL_MS)).not.toThrow();
    expect(errors).toHaveLength(1);
    expect(errors[0]).toBeInstanceOf(AuditWriteError);
    expect(errors[0]).toMatchObject({ lost: 2 });
    expect(log.stats).toEqual({ writeFailures: 1, recordsLost: 2, reopens: 0 });
    // An explicit flush still throws to its caller.
    log.writeCall('agent-1', 'fs__read', { i: 3 }, 0, 1, outcome);
    expect(() => log.flush()).toThrow();
  });
});

describe('AuditLog when the file changes under it', () => {
  const outcome: AuditOutcome = { decision: 'allow', outcome: 'ok' };
  let dir: string;
  let path: string;

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'fabric-audit-moved-'));
    path = join(dir, 'audit.log');
  });

  afterEach(() => {
    rmSync(dir, { recursive: true, force: true });
  });

  it('counts from the file as it is now after a copytruncate: no early rotation', () => {
    const log = new AuditLog({ digestKey: KEY, path, maxBytes: 2_000, maxFiles: 2 });
    for (let i = 0; i < 8; i++) log.writeCall('agent-1', 'fs__read', { i }, 0, 1, outcome);
    log.flush();
    expect(statSync(path).size).toBeGreaterThan(1_000);
    truncateSync(path, 0); // logrotate's copytruncate, after it copied the file away
    for (let i = 0; i < 8; i++) log.writeCall('agent-1', 'fs__read', { i }, 0, 1, outcome);
    log.flush();
    log.close();
    expect(existsSync(`${path}.1`)).toBe(false);
    expect(readFileSync(path, 'utf8').trim().split('\n')).toHaveLength(8);
  });

  it('opens the path again after a rename, and counts it', () => {
    const reasons: string[] = [];
    const log = new AuditLog({ digestKey: KEY, path, onReopen: (r) => reasons.push(r) });
    log.writeCall('agent-1', 'fs__read', { i: 1 }, 0, 1, outcome);
    log.flush();
    renameSync(path, `${path}.old`);
    log.writeCall('agent-1', 'fs__read', { i: 2 }, 0, 1, outcome);
    log.close();
    expect(readFileSync(path, 'utf8')).toContain(digestArgs({ i: 2 }, KEY));
    expect(readFileSync(`${path}.old`, 'utf8')).not.toContain(digestArgs({ i: 2 }, KEY));
    expect(reasons).toHaveLength(1);
    expect(log.stats).toEqual({ writeFailures: 0, recordsLost: 0, reopens: 1 });
  });
});

describe('AuditLog rotation inside one batch', () => {
  it('splits a flushed batch at maxBytes: no file over it, no line lost or cut, in order', () => {
    const dir = mkdtempSync(join(tmpdir(), 'fabric-audit-rot-'));
    const path = join(dir, 'audit.log');
    try {
      const log = new AuditLog({
        digestKey: KEY,
        path,
        maxBytes: 1000,
        maxFiles: 50,
        flushIntervalMs: 60_000,
      });
      const fields: AuditOutcome = { decision: 'allow', outcome: 'ok', tokens: 1, cost: 0.001 };
      // One flush of a batch several files long (and non-ASCII, so bytes ≠ characters).
      for (let i = 0; i < 40; i++) log.writeCall('agent-ü', 'ev__echo', { i }, 0, 1.5, fields);
      log.flush();
      // Then a batch that fits the current file.
      log.writeCall('agent-ü', 'ev__echo', { i: 40 }, 0, 1.5, fields);
      log.close();
      const files: string[] = [];
      for (let n = 50; n >= 1; n--) {
        try {
          files.push(readFileSync(`${path}.${n}`, 'utf8'));
        } catch {
          // not that many generations
        }
      }
      files.push(readFileSync(path, 'utf8'));
      expect(files.length).toBeGreaterThan(3);
      const digests: unknown[] = [];
      for (const text of files) {
        expect(Buffer.byteLength(text)).toBeLessThanOrEqual(1000);
        expect(text.endsWith('\n')).toBe(true);
        for (const line of text.trimEnd().split('\n'))
          digests.push((JSON.parse(line) as { argsDigest: string }).argsDigest);
      }
      expect(digests).toEqual(Array.from({ length: 41 }, (_, i) => digestArgs({ i }, KEY)));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('AuditLog at process exit', () => {
  it('writes the queued records of many open logs, with no listener warning per log', () => {
    // A library user with more than ten gateways (or audit logs) open at once: one exit
    // listener per log warned MaxListenersExceededWarning (a leak, as far as node can tell).
    const dir = mkdtempSync(join(tmpdir(), 'fabric-audit-exit-'));
    try {
      const module = pathToFileURL(join(REPO_ROOT, 'src/gateway/audit-log.ts')).href;
      const script = `
        import { AuditLog } from ${JSON.stringify(module)};
        for (let i = 0; i < 12; i++) {
          const log = new AuditLog({ path: ${JSON.stringify(dir)} + '/' + i + '.log', flushIntervalMs: 60000 });
          log.writeCall('agent-' + i, 'fs__read', { i }, Date.now(), 1, { decision: 'allow', outcome: 'ok' });
        }
        // Exits after the turn, as a process that never closes its logs (warnings are emitted then).
        setImmediate(() => process.exit(0));
      `;
      const r = spawnSync(
        process.execPath,
        ['--import', 'tsx', '--input-type=module', '-e', script],
        { cwd: REPO_ROOT, encoding: 'utf8' },
      );
      expect(r.status).toBe(0);
      expect(r.stderr).not.toContain('MaxListenersExceededWarning');
      for (let i = 0; i < 12; i++) {
        expect(JSON.parse(readFileSync(join(dir, `${i}.log`), 'utf8'))).toMatchObject({
          agent: `agent-${i}`,
        });
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import {
  MAX_CONSUMER_NAME,
  idFromToken,
  natsNames,
  subjectToken,
} from '../../src/transport/nats/subjects.js';

/** A random id of UTF-16 code units drawn from `units` (lone surrogates included). */
function randomId(units: readonly number[], length: number): string {
  let id = '';
  for (let i = 0; i < length; i++) {
    id += String.fromCharCode(units[Math.floor(Math.random() * units.length)]!);
  }
  return id;
}

describe('NATS names', () => {
  it('keeps the names of ids of code units below 0x100 as they were', () => {
    expect(subjectToken('build-7')).toBe('build-7');
    expect(subjectToken('a_b.c d*>é')).toBe('a_5fb_2ec_20d_2a_3e_e9');
    const names = natsNames('prod');
    expect(names.poolConsumer('my.pool')).toBe('pool-my_2epool');
    expect(names.poolTasks('my.pool')).toBe('fabric.prod.task.pool.my_2epool');
    expect(names.agentConsumer('0b6d-11')).toBe('agent-0b6d-11');
    expect(names.heartbeat('a b')).toBe('fabric.prod.hb.a_20b');
  });

  it('gives ids that differ in code units from 0x100 on different names', () => {
    // One escape width for every unit wrote U+04E2 then "d" and U+4E2D alike, as `_4e2d`.
    const names = natsNames('ns');
    expect(subjectToken('Ӣd')).toBe('__04e2d');
    expect(subjectToken('中')).toBe('__4e2d');
    expect(names.poolTasks('Ӣd')).not.toBe(names.poolTasks('中'));
    expect(names.poolConsumer('Ӣd')).not.toBe(names.poolConsumer('中'));
    expect(subjectToken('\u0100')).not.toBe(subjectToken('_00'));
  });

  it('reads every id back from its token, and never makes a name NATS refuses', () => {
    // ASCII, Latin-1, the escape characters themselves, CJK, emoji halves and lone surrogates.
    const units = [
      ...'aZ09-_.*> \t'.split('').map((c) => c.charCodeAt(0)),
      0xe9,
      0xff,
      0x100,
      0x4e2,
      0x4e2d,
      0xd83d,
      0xde80,
      0xdc00,
      0xfffe,
      0xffff,
    ];
    const seen = new Map<string, string>();
    for (let i = 0; i < 5000; i++) {
      const id = randomId(units, 1 + Math.floor(Math.random() * 12));
      const token = subjectToken(id);
      expect(token).toMatch(/^[A-Za-z0-9_-]+$/);
      expect(idFromToken(token)).toBe(id);
      const other = seen.get(token);
      if (other !== undefined) expect(other).toBe(id);
      seen.set(token, id);
    }
  });

  it('keeps consumer names within what nats-server takes, distinct for distinct ids', () => {
    const names = natsNames('ns');
    // The longest pool id (256 units) of the widest escapes.
    const wide = '中'.repeat(256);
    const wideOther = `${'中'.repeat(255)}国`;
    for (const id of [wide, wideOther, 'a'.repeat(256), '.'.repeat(84), '.'.repeat(83)]) {
      expect(names.poolConsumer(id).length).toBeLessThanOrEqual(MAX_CONSUMER_NAME);
      expect(names.agentConsumer(id).length).toBeLessThanOrEqual(MAX_CONSUMER_NAME);
      expect(names.poolConsumer(id)).toMatch(/^pool-[A-Za-z0-9_-]+$/);
    }
    expect(names.poolConsumer(wide)).not.toBe(names.poolConsumer(wideOther));
    // A name that fits is the token; one that does not is the digest of the token.
    expect(names.poolConsumer('.'.repeat(83))).toBe(`pool-${'_2e'.repeat(83)}`);
    expect(names.poolConsumer('.'.repeat(84))).toBe(
      `pool-_h${createHash('sha256').update('_2e'.repeat(84)).digest('hex')}`,
    );
    // The digest form cannot be the token of any id: a token never holds `_h`.
    expect(names.poolConsumer('_h')).toBe('pool-_5fh');
  });
});

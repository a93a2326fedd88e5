/**
 * The bounded send side every door's server streams share (src/rpc/rpc-call.ts
 * `StreamOutbox`), with a connection that flushes only when told: the message and byte bounds
 * (review: a stalled watcher held 103 MiB under a bound counted in messages only), and a paced
 * snapshot that a client keeping up gets whole, with the events sent meanwhile behind it
 * (review: a snapshot larger than the bound overflowed every watch at once).
 */
import { describe, expect, it } from 'vitest';
import { StreamOverflowError } from '../../src/errors.js';
import { sequencedSender, StreamOutbox } from '../../src/rpc/rpc-call.js';

function outbox(maxMessages: number, maxBytes: number) {
  const written: string[] = [];
  const pending: (() => void)[] = [];
  const failures: unknown[] = [];
  const box = new StreamOutbox<string, string>({
    maxMessages,
    maxBytes,
    encode: (m) => ({ chunk: m, bytes: m.length }),
    write: (chunk, done) => {
      written.push(chunk);
      pending.push(done);
    },
    fail: (err) => void failures.push(err),
  });
  /** The client reads everything written so far. */
  const flush = (): void => {
    while (pending.length > 0) pending.shift()!();
  };
  return { box, written, failures, flush };
}

describe('StreamOutbox', () => {
  it('ends the stream when a message would pass the byte bound; one big message alone goes out', () => {
    const o = outbox(100, 10);
    o.box.send('x'.repeat(25)); // nothing waits: sent
    o.box.send('y');
    expect(o.failures).toHaveLength(1);
    expect(o.failures[0]).toBeInstanceOf(StreamOverflowError);
    expect((o.failures[0] as StreamOverflowError).details).toMatchObject({ unit: 'bytes' });
    expect(o.failures[0]).toMatchObject({
      code: 'FABRIC_ERR_STREAM_OVERFLOW',
      details: { limit: 10, unit: 'bytes' },
    });
    expect(o.written).toEqual(['x'.repeat(25)]);
    o.box.send('z'); // after the end: nothing
    expect(o.written).toHaveLength(1);
  });

  it('ends the stream at the message bound', () => {
    const o = outbox(2, 1000);
    o.box.send('a');
    o.box.send('b');
    o.box.send('c');
    expect(o.failures[0]).toBeInstanceOf(StreamOverflowError);
    expect((o.failures[0] as StreamOverflowError).details).not.toHaveProperty('unit');
    expect(o.written).toEqual(['a', 'b']);
  });

  it('writes a paced batch larger than both bounds to a client that reads; live messages follow it', () => {
    const o = outbox(4, 40);
    const items = Array.from({ length: 50 }, (_, i) => i);
    o.box.paced(items, (i) => `s${String(i).padStart(4, '0')}`); // 5 bytes each: 250 in all
    expect(o.written.length).toBeLessThanOrEqual(2); // half the message bound in flight
    o.box.send('live1');
    for (let i = 0; i < 100 && o.written.length < 51; i++) o.flush();
    o.box.send('live2');
    o.flush();
    expect(o.failures).toEqual([]);
    expect(o.written).toEqual([
      ...items.map((i) => `s${String(i).padStart(4, '0')}`),
      'live1',
      'live2',
    ]);
  });

  it('a client that stops reading during a paced batch overflows on the live messages behind it', () => {
    const o = outbox(4, 1000);
    o.box.paced([1, 2, 3, 4, 5, 6], (i) => `s${i}`);
    for (const m of ['l1', 'l2', 'l3']) o.box.send(m);
    expect(o.failures).toHaveLength(1);
    expect(o.failures[0]).toBeInstanceOf(StreamOverflowError);
  });

  it('what making a batch message throws ends the stream with that error', () => {
    const o = outbox(4, 1000);
    const boom = new Error('boom');
    o.box.paced([1, 2], (i) => {
      if (i === 2) throw boom;
      return 'ok';
    });
    o.flush();
    expect(o.failures).toEqual([boom]);
  });

  it('sequencedSender numbers a paced batch before the events sent while it waits', () => {
    const o = outbox(2, 1000);
    const send = sequencedSender(o.box.sender(), (e: string, n) => `${n}:${e}`);
    send.paced(['a', 'b', 'c'], (x) => x);
    send('live');
    for (let i = 0; i < 10; i++) o.flush();
    expect(o.written).toEqual(['1:a', '2:b', '3:c', '4:live']);
  });
});

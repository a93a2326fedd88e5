import { describe, expect, it } from 'vitest';
import { FairQueue } from '../../src/scheduler/fair-queue.js';
import { IndexedHeap } from '../../src/scheduler/indexed-heap.js';
import { TaskRecord } from '../../src/scheduler/task-record.js';
import { Priority } from '../../src/task.js';

/** A deterministic PRNG so failures reproduce. */
function rng(seed: number): () => number {
  let x = seed;
  return () => {
    x = (x * 1103515245 + 12345) % 2 ** 31;
    return x / 2 ** 31;
  };
}

function task(
  seq: number,
  o: { priority?: Priority; deadline?: number; tenant?: string; attempt?: number } = {},
) {
  const t = new TaskRecord(
    `t${seq}`,
    'x',
    seq,
    o.priority ?? Priority.NORMAL,
    undefined,
    undefined,
    false,
    o.tenant ?? 'default',
    o.deadline,
    1000,
    3,
    seq,
    0,
  );
  t.attempt = o.attempt ?? 0;
  return t;
}

const byDeadlineThenSeq = (a: TaskRecord, b: TaskRecord) =>
  (a.deadline ?? Infinity) - (b.deadline ?? Infinity) || a.seq - b.seq;

describe('FairQueue (one tenant)', () => {
  it.each([1, 2, 3, 4, 5])(
    'pops in (priority, deadline, arrival) order with random removals, seed %i',
    (seed) => {
      const r = rng(seed);
      const q = new FairQueue('q');
      const live = new Set<TaskRecord>();
      for (let i = 0; i < 3000; i++) {
        const t = task(i, {
          priority: Math.floor(r() * 4) as Priority,
          ...(r() < 0.3 ? { deadline: Math.floor(r() * 1000) } : {}),
          ...(r() < 0.1 ? { attempt: 1 } : {}),
        });
        q.push(t);
        live.add(t);
        if (r() < 0.2) {
          const victim = [...live][Math.floor(r() * live.size)]!;
          expect(q.remove(victim)).toBe(true);
          expect(q.remove(victim)).toBe(false);
          live.delete(victim);
        }
      }
      expect(q.size).toBe(live.size);
      const expected = [...live].sort((a, b) => a.priority - b.priority || byDeadlineThenSeq(a, b));
      const got: TaskRecord[] = [];
      for (let t = q.pop(); t !== undefined; t = q.pop()) got.push(t);
      expect(got.map((t) => t.seq)).toEqual(expected.map((t) => t.seq));
      expect(q.size).toBe(0);
    },
  );

  it('puts a retried task back in its original place, ahead of later arrivals', () => {
    const q = new FairQueue('q');
    const first = task(0);
    q.push(first);
    q.push(task(1));
    expect(q.pop()).toBe(first);
    first.attempt = 1;
    q.push(task(2));
    q.push(first);
    expect([q.pop(), q.pop(), q.pop()].map((t) => t?.seq)).toEqual([0, 1, 2]);
  });

  it('drains everything, and drained tasks can be queued again', () => {
    const q = new FairQueue('q');
    const ts = [task(0), task(1, { deadline: 5 }), task(2, { tenant: 'b' })];
    for (const t of ts) q.push(t);
    expect(
      q
        .drain()
        .map((t) => t.seq)
        .sort(),
    ).toEqual([0, 1, 2]);
    expect(q.size).toBe(0);
    expect(q.pop()).toBeUndefined();
    q.push(ts[0]!);
    expect(q.pop()).toBe(ts[0]);
  });

  it.each([
    ['the oldest after the stuck one', (_live: TaskRecord[]) => 1],
    ['one in the middle', (live: TaskRecord[]) => live.length >> 1],
    ['the second newest', (live: TaskRecord[]) => live.length - 2],
  ])(
    'keeps its memory bounded when queued tasks are cancelled (%s), never popped, and stays in order',
    (_, pick) => {
      // A task that never leaves keeps the flow alive (a pool no agent takes from); 200 queued
      // tasks churn: each step queues one and removes one, 60k times.
      const q = new FairQueue('q');
      const stuck = task(0);
      q.push(stuck);
      let live: TaskRecord[] = [stuck];
      let seq = 1;
      for (; seq <= 200; seq++) {
        const t = task(seq);
        q.push(t);
        live.push(t);
      }
      const flow = [...q.flows()][0]!;
      let maxSlots = 0;
      for (let i = 0; i < 60_000; i++) {
        const t = task(seq++);
        q.push(t);
        live.push(t);
        const k = pick(live);
        const victim = live[k]!;
        expect(q.remove(victim)).toBe(true);
        expect(q.remove(victim)).toBe(false);
        live.splice(k, 1);
        maxSlots = Math.max(maxSlots, flow.fifoSlots);
      }
      // Before compaction on removal the array kept a slot per task ever queued (60k+).
      expect(maxSlots).toBeLessThanOrEqual(2 * live.length + 1100);
      expect(q.size).toBe(live.length);
      // Renumbered tasks can still be removed individually, and the rest pop in arrival order.
      const mid = live[100]!;
      expect(q.remove(mid)).toBe(true);
      live = live.filter((t) => t !== mid);
      const got: number[] = [];
      for (let t = q.pop(); t !== undefined; t = q.pop()) got.push(t.seq);
      expect(got).toEqual(live.map((t) => t.seq));
    },
  );
});

describe('IndexedHeap', () => {
  it('keeps heap order under random push/remove/update', () => {
    const r = rng(42);
    type Item = { key: number; i: number };
    const heap = new IndexedHeap<Item>((a, b) => a.key < b.key, {
      get: (x) => x.i,
      set: (x, i) => {
        x.i = i;
      },
    });
    const live: Item[] = [];
    for (let n = 0; n < 2000; n++) {
      const item = { key: Math.floor(r() * 500), i: -1 };
      heap.push(item);
      live.push(item);
      if (r() < 0.3) {
        const k = Math.floor(r() * live.length);
        heap.remove(live[k]!);
        live.splice(k, 1);
      }
      if (r() < 0.2 && live.length > 0) {
        const it = live[Math.floor(r() * live.length)]!;
        it.key = Math.floor(r() * 500);
        heap.update(it);
      }
    }
    const out: number[] = [];
    for (let x = heap.pop(); x !== undefined; x = heap.pop()) out.push(x.key);
    expect(out).toEqual(live.map((x) => x.key).sort((a, b) => a - b));
  });
});

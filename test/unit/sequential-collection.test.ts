/**
 * SequentialCollection (the in-memory task collection): the same answers as a Map for any keys,
 * in any order, and a window that stays within about twice the records it holds.
 */
import { describe, expect, it } from 'vitest';
import { SequentialCollection } from '../../src/store/memory-store.js';

const P = 't_Ab-_x9_';
const key = (n: number): string => `${P}${n.toString(36)}`;

/** Checks `c` against `model` in every way a caller can look. */
function same(c: SequentialCollection<number>, model: Map<string, number>, probes: string[]): void {
  expect(c.size).toBe(model.size);
  expect([...c.values()].sort((a, b) => a - b)).toEqual([...model.values()].sort((a, b) => a - b));
  for (const k of probes) expect(c.get(k)).toBe(model.get(k));
}

/** A small deterministic PRNG (mulberry32). */
function rng(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

describe('SequentialCollection', () => {
  it('keeps keys of another shape, prefix or non-canonical counter apart from the window', () => {
    const c = new SequentialCollection<number>();
    const model = new Map<string, number>();
    const keys = [
      key(1),
      key(2),
      `${P}02`, // leading zero: not the key of counter 2
      `${P}A`, // upper case: not counter 10
      't_other_3',
      'no-separator',
      `${P}`,
      `${P}zzzzzzzzzzz`, // more digits than indexed
      key(3),
      'x_',
    ];
    keys.forEach((k, i) => {
      c.put(k, i);
      model.set(k, i);
    });
    same(c, model, [...keys, key(4), key(0), 't_other_4']);
    for (const k of [`${P}02`, key(2), 't_other_3', key(9)]) {
      expect(c.delete(k)).toBe(model.delete(k));
      same(c, model, keys);
    }
    c.put(key(1), 100);
    model.set(key(1), 100);
    same(c, model, keys);
  });

  it('answers as a Map does under random puts, replaces and deletes', () => {
    const rand = rng(16);
    const c = new SequentialCollection<number>();
    const model = new Map<string, number>();
    let next = 1;
    const live: string[] = [];
    for (let step = 0; step < 20_000; step++) {
      const r = rand();
      if (r < 0.45 || live.length === 0) {
        // Mostly the next counter; now and then a jump ahead or a key below the window.
        const k =
          r < 0.01 ? key((next += 5000)) : r < 0.02 ? key(Math.floor(rand() * next)) : key(next++);
        c.put(k, step);
        model.set(k, step);
        live.push(k);
      } else if (r < 0.5) {
        const k = live[Math.floor(rand() * live.length)]!;
        c.put(k, -step);
        model.set(k, -step);
      } else {
        // Mostly the oldest (FIFO-like), sometimes any.
        const i = r < 0.9 ? 0 : Math.floor(rand() * live.length);
        const [k] = live.splice(i, 1);
        expect(c.delete(k!)).toBe(model.delete(k!));
        expect(c.delete(k!)).toBe(false);
      }
      if (step % 997 === 0) same(c, model, [...live.slice(0, 50), key(next), key(next + 1)]);
    }
    same(c, model, live);
  });

  it('keeps its window within about twice its records when a few outlive the rest', () => {
    const c = new SequentialCollection<number>();
    let n = 1;
    // Every 5000th record stays; the others are deleted in order, as finished tasks are.
    const kept: string[] = [];
    for (let round = 0; round < 100; round++) {
      for (let i = 0; i < 5000; i++) {
        const k = key(n++);
        c.put(k, n);
        if (i === 0) kept.push(k);
      }
      for (let i = 1; i < 5000; i++) c.delete(key(n - 5000 + i));
    }
    expect(c.size).toBe(100);
    // Bounded by the live records, the slack and one round, not by the 500k keys that passed.
    expect(c.windowSlots).toBeLessThan(2 * (100 + 1024 + 5000));
    for (const k of kept) expect(c.get(k)).toBeDefined();
    for (const k of kept) expect(c.delete(k)).toBe(true);
    expect(c.size).toBe(0);
    expect(c.windowSlots).toBe(0);
  });

  it('lists every record once while records are deleted during the walk', () => {
    const c = new SequentialCollection<number>();
    for (let i = 1; i <= 5000; i++) c.put(key(i), i);
    const seen: number[] = [];
    for (const v of c.values()) {
      seen.push(v);
      c.delete(key(v));
    }
    expect(seen).toHaveLength(5000);
    expect(new Set(seen).size).toBe(5000);
    expect(c.size).toBe(0);
  });
});

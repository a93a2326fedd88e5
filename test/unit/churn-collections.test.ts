/**
 * ChurnMap and SlotSet behave as the Map and Set they replace on the gateway's per-call paths:
 * checked against a real Map / Set under random operations, with the keys an agent can send as
 * JSON-RPC ids (numbers and strings that look alike, `__proto__`, `constructor`, empty, -0, NaN).
 */
import { describe, expect, it } from 'vitest';
import { ChurnMap, SlotSet, type Slotted } from '../../src/gateway/churn-collections.js';

/** A small deterministic generator (xorshift32). */
function rng(seed: number): () => number {
  let x = seed;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 2 ** 32;
  };
}

const KEYS: (string | number)[] = [
  0,
  -0,
  1,
  '1',
  'n1',
  's1',
  1.5,
  -7,
  Number.NaN,
  2 ** 53,
  '',
  '__proto__',
  'constructor',
  'toString',
  'hasOwnProperty',
  'a',
  'b',
  'x'.repeat(300),
  'ü',
];

describe('ChurnMap', () => {
  it('agrees with Map under random sets, deletes, gets and clears', () => {
    const next = rng(7);
    const ours = new ChurnMap<string | number, number>();
    const ref = new Map<string | number, number>();
    for (let i = 0; i < 20_000; i++) {
      const k = KEYS[Math.floor(next() * KEYS.length)]!;
      const op = next();
      if (op < 0.45) {
        expect(ours.set(k, i)).toBe(ours);
        ref.set(k, i);
      } else if (op < 0.85) {
        expect(ours.delete(k)).toBe(ref.delete(k));
      } else if (op < 0.999) {
        expect([ours.get(k), ours.has(k)]).toEqual([ref.get(k), ref.has(k)]);
      } else {
        ours.clear();
        ref.clear();
      }
      expect(ours.size).toBe(ref.size);
    }
    const sortKey = (a: unknown[], b: unknown[]): number =>
      String(a[0]).localeCompare(String(b[0])) || String(typeof a[0]).localeCompare(typeof b[0]);
    const entries = ours.keys().map((k, i) => [k, ours.values()[i]]);
    expect(entries.sort(sortKey)).toEqual([...ref.entries()].sort(sortKey));
  });

  it('agrees with Map for integer keys through growth, shrinking and crowded probe runs', () => {
    const next = rng(23);
    const ours = new ChurnMap<number | string, number>();
    const ref = new Map<number | string, number>();
    // Key families that crowd a table: runs of consecutive ids, multiples of powers of two (the
    // same low bits), negatives, the ends of the safe range, and strings of the same digits.
    const family = (r: number, j: number): number | string => {
      switch (Math.floor(r * 6)) {
        case 0:
          return j;
        case 1:
          return j * 2 ** 20;
        case 2:
          return -j * 4096;
        case 3:
          return Number.MAX_SAFE_INTEGER - j;
        case 4:
          return (j % 64) * 2 ** 32 + 7;
        default:
          return String(j);
      }
    };
    for (let phase = 0; phase < 6; phase++) {
      // Fill to a few thousand entries, then drain to nearly none, each with random probes.
      const target = phase % 2 === 0 ? 3000 : 20;
      for (let i = 0; i < 12_000 && ref.size !== target; i++) {
        const k = family(next(), Math.floor(next() * 4000));
        if (ref.size < target ? next() < 0.8 : next() < 0.2) {
          ours.set(k, i);
          ref.set(k, i);
        } else {
          const victim = next() < 0.7 && ref.size > 0 ? [...ref.keys()][0]! : k;
          expect(ours.delete(victim)).toBe(ref.delete(victim));
        }
        if (i % 97 === 0) {
          for (const probe of [k, family(next(), Math.floor(next() * 4000))]) {
            expect([ours.get(probe), ours.has(probe)]).toEqual([ref.get(probe), ref.has(probe)]);
          }
        }
        expect(ours.size).toBe(ref.size);
      }
      for (const [k, v] of ref) expect(ours.get(k)).toBe(v);
      expect(ours.keys().length).toBe(ref.size);
    }
  });

  it('agrees with Map while a small table stays near half full (runs wrap past its end)', () => {
    const next = rng(31);
    const ours = new ChurnMap<number, number>();
    const ref = new Map<number, number>();
    // 30–32 live keys in the first table's 64 slots: long runs, many of them wrapping around, and
    // every delete shifting entries back across the end of the table.
    for (let i = 0; i < 40_000; i++) {
      if (ref.size < 32 && (ref.size < 30 || next() < 0.5)) {
        const k = Math.floor(next() * 1_000_000);
        ours.set(k, i);
        ref.set(k, i);
      } else {
        const keys = [...ref.keys()];
        const victim = keys[Math.floor(next() * keys.length)]!;
        expect(ours.delete(victim)).toBe(ref.delete(victim));
      }
      if (i % 50 === 0) for (const [k, v] of ref) expect(ours.get(k)).toBe(v);
      expect(ours.size).toBe(ref.size);
    }
  });

  it('keeps 0 and -0 one key, "1" and 1 two keys, and a __proto__ key as data', () => {
    const m = new ChurnMap<string | number, string>();
    m.set(0, 'zero').set(-0, 'minus zero').set('1', 'string').set(1, 'number');
    m.set('__proto__', 'proto');
    expect([m.size, m.get(0), m.get('1'), m.get(1), m.get('__proto__')]).toEqual([
      4,
      'minus zero',
      'string',
      'number',
      'proto',
    ]);
    expect(m.has('constructor')).toBe(false);
    expect(m.get('toString')).toBeUndefined();
    expect(Object.getPrototypeOf({})).toBe(Object.prototype); // nothing leaked into prototypes
  });

  it('gives snapshots of its keys and values: changing it while going through them is safe', () => {
    const m = new ChurnMap<number, number>();
    for (let i = 0; i < 100; i++) m.set(i, i * 2);
    for (const k of m.keys()) m.delete(k);
    expect(m.size).toBe(0);
    expect(m.values()).toEqual([]);
  });
});

describe('SlotSet', () => {
  interface Item extends Slotted {
    readonly id: number;
  }

  it('agrees with Set under random adds and deletes, an entry added twice counting once', () => {
    const next = rng(11);
    const items: Item[] = Array.from({ length: 50 }, (_, id) => ({ id, slot: -1 }));
    const ours = new SlotSet<Item>();
    const ref = new Set<Item>();
    for (let i = 0; i < 20_000; i++) {
      const item = items[Math.floor(next() * items.length)]!;
      if (next() < 0.5) {
        ours.add(item);
        ref.add(item);
      } else {
        expect(ours.delete(item)).toBe(ref.delete(item));
      }
      expect(ours.size).toBe(ref.size);
      if (i % 1000 === 0) expect([...ours]).toEqual([...ref]); // the same order: insertion
    }
    expect([...ours]).toEqual([...ref]);
    // Through compactions: 200 entries in, every other one out, the rest in order.
    const many: Item[] = Array.from({ length: 200 }, (_, id) => ({ id, slot: -1 }));
    const big = new SlotSet<Item>();
    for (const x of many) big.add(x);
    for (const x of many) if (x.id % 2 === 0) big.delete(x);
    expect([...big].map((x) => x.id)).toEqual(many.filter((x) => x.id % 2 === 1).map((x) => x.id));
    for (const x of many) big.delete(x);
    expect([big.size, [...big]]).toEqual([0, []]);
  });

  it('refuses to delete an entry it does not hold, even one whose slot number it uses', () => {
    const s = new SlotSet<Item>();
    const a: Item = { id: 1, slot: -1 };
    const b: Item = { id: 2, slot: -1 };
    s.add(a);
    const other = new SlotSet<Item>();
    other.add(b); // b.slot = 0, the slot a holds in s
    expect(s.delete(b)).toBe(false);
    expect([...s]).toEqual([a]);
    expect(s.delete(a)).toBe(true);
    expect(s.delete(a)).toBe(false);
    expect(s.size).toBe(0);
  });
});

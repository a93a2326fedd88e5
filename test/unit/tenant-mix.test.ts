import { describe, expect, it } from 'vitest';
import { FairQueue } from '../../src/scheduler/fair-queue.js';
import type { Flow } from '../../src/scheduler/fair-queue.js';
import { TaskRecord } from '../../src/scheduler/task-record.js';
import { TenantMix } from '../../src/scheduler/tenant-mix.js';
import { Priority } from '../../src/task.js';

/** A deterministic PRNG so failures reproduce. */
function rng(seed: number): () => number {
  let x = seed;
  return () => {
    x = (x * 1103515245 + 12345) % 2 ** 31;
    return x / 2 ** 31;
  };
}

function task(seq: number, tenant: string, priority = Priority.NORMAL, deadline?: number) {
  return new TaskRecord(
    `t${seq}`,
    'x',
    seq,
    priority,
    undefined,
    undefined,
    false,
    tenant,
    deadline,
    1000,
    3,
    seq,
    0,
  );
}

/** An agent's queue and a pool queue wired to one mix, as the scheduler wires them. */
function wired(weight?: (t: string) => number) {
  const ref: { mix?: TenantMix } = {};
  const relay = (f: Flow, active: boolean) => ref.mix!.update(f, active);
  const own = new FairQueue('agent:a', weight, relay);
  const pool = new FairQueue('pool:p', weight, relay);
  const mix = (ref.mix = new TenantMix(own));
  return { own, pool, mix };
}

describe('TenantMix', () => {
  it('alternates tenants whose work is in different queues', () => {
    const { own, pool, mix } = wired();
    for (let i = 0; i < 5; i++) own.push(task(i, 'A'));
    pool.push(task(5, 'B'));
    const out = [mix.pop(), mix.pop(), mix.pop()].map((t) => t?.tenant);
    expect(out).toEqual(['A', 'B', 'A']);
    expect(own.size + pool.size).toBe(3);
  });

  it('peek names the flow pop takes from, and is empty when both queues are', () => {
    const { own, pool, mix } = wired();
    expect(mix.peek()).toBeUndefined();
    pool.push(task(1, 'B', Priority.HIGH));
    own.push(task(2, 'A'));
    expect(mix.peek()?.queue).toBe(pool);
    expect(mix.pop()?.seq).toBe(1);
    expect(mix.peek()?.queue).toBe(own);
    expect(mix.pop()?.seq).toBe(2);
    expect(mix.pop()).toBeUndefined();
  });

  it('forgets drained flows', () => {
    const { own, pool, mix } = wired();
    own.push(task(1, 'A'));
    pool.push(task(2, 'A'));
    pool.push(task(3, 'B'));
    expect(pool.drain()).toHaveLength(2);
    expect(mix.pop()?.seq).toBe(1);
    expect(mix.pop()).toBeUndefined();
  });

  it('under random pushes, pops and removals: every task once, strict priority, EDF per tenant', () => {
    const rand = rng(7);
    const weights: Record<string, number> = { t0: 1, t1: 2, t2: 1, t3: 3, t4: 1 };
    const { own, pool, mix } = wired((t) => weights[t] ?? 1);
    const queued = new Set<TaskRecord>();
    const out = new Set<TaskRecord>();
    let seq = 0;
    for (let step = 0; step < 4000; step++) {
      const r = rand();
      if (r < 0.45) {
        const tenant = `t${Math.floor(rand() * 5)}`;
        const priority = Math.floor(rand() * 4) as Priority;
        const deadline = rand() < 0.3 ? 1000 + Math.floor(rand() * 1000) : undefined;
        const t = task(seq++, tenant, priority, deadline);
        (rand() < 0.5 ? own : pool).push(t);
        queued.add(t);
      } else if (r < 0.55 && queued.size > 0) {
        const victim = [...queued][Math.floor(rand() * queued.size)]!;
        const q = victim.flow!.queue;
        expect(q.remove(victim)).toBe(true);
        queued.delete(victim);
      } else {
        const t = mix.pop();
        if (t === undefined) {
          expect(queued.size).toBe(0);
          continue;
        }
        expect(queued.has(t)).toBe(true);
        for (const q of queued) {
          // Nothing of a better level was waiting, and nothing of the same tenant due earlier.
          expect(q.priority).toBeGreaterThanOrEqual(t.priority);
          if (q.priority === t.priority && q.tenant === t.tenant && q !== t) {
            const dq = q.deadline ?? Infinity;
            const dt = t.deadline ?? Infinity;
            expect(dq > dt || (dq === dt && q.seq > t.seq)).toBe(true);
          }
        }
        queued.delete(t);
        out.add(t);
      }
      expect(own.size + pool.size).toBe(queued.size);
    }
    for (let t = mix.pop(); t !== undefined; t = mix.pop()) {
      queued.delete(t);
      out.add(t);
    }
    expect(queued.size).toBe(0);
    expect(own.size + pool.size).toBe(0);
  });

  it('gives each tenant its weight per turn when all stay busy', () => {
    const { own, pool, mix } = wired((t) => (t === 'gold' ? 3 : 1));
    let seq = 0;
    for (let i = 0; i < 400; i++) {
      own.push(task(seq++, 'gold'));
      pool.push(task(seq++, 'gold'));
      pool.push(task(seq++, 'bronze'));
      own.push(task(seq++, 'iron'));
    }
    const counts = new Map<string, number>();
    for (let i = 0; i < 500; i++) {
      const t = mix.pop()!;
      counts.set(t.tenant, (counts.get(t.tenant) ?? 0) + 1);
    }
    expect(counts.get('gold')).toBe(300);
    expect(counts.get('bronze')).toBe(100);
    expect(counts.get('iron')).toBe(100);
  });
});

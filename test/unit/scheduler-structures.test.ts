import { describe, expect, it } from 'vitest';
import { AgentScheduler } from '../../src/scheduler/agent-scheduler.js';
import { FairQueue } from '../../src/scheduler/fair-queue.js';
import { FinishedRetention } from '../../src/scheduler/finished-retention.js';
import { RunningTasks } from '../../src/scheduler/slots.js';
import { TaskRecord } from '../../src/scheduler/task-record.js';
import { Priority } from '../../src/task.js';

function task(seq: number, tenant = 'default') {
  return new TaskRecord(
    `t${seq}`,
    'x',
    seq,
    Priority.NORMAL,
    undefined,
    undefined,
    false,
    tenant,
    undefined,
    1000,
    3,
    seq,
    0,
  );
}

describe('FinishedRetention', () => {
  it('keeps the newest `limit` ids and evicts the others oldest first, across wrap-arounds', () => {
    for (const limit of [1, 3, 17, 40]) {
      const evicted: string[] = [];
      const r = new FinishedRetention(limit, (id) => evicted.push(id));
      for (let i = 0; i < 200; i++) r.add(`t${i}`);
      expect(evicted).toEqual(Array.from({ length: 200 - limit }, (_, i) => `t${i}`));
      // What it still holds leaves in order once the limit drops to nothing.
      const rest = new FinishedRetention(limit, (id) => evicted.push(id));
      evicted.length = 0;
      rest.load(Array.from({ length: 2 * limit + 5 }, (_, i) => `r${i}`));
      rest.trim();
      expect(evicted).toEqual(Array.from({ length: limit + 5 }, (_, i) => `r${i}`));
      evicted.length = 0;
      for (let i = 0; i < limit; i++) rest.add(`n${i}`);
      expect(evicted).toEqual(Array.from({ length: limit }, (_, i) => `r${limit + 5 + i}`));
    }
  });

  it('evicts at once with a limit of 0, also after a load', () => {
    const evicted: string[] = [];
    const r = new FinishedRetention(0, (id) => evicted.push(id));
    r.load(['a', 'b']);
    r.add('c');
    expect(evicted).toEqual(['a', 'b', 'c']);
    r.add('d');
    expect(evicted).toEqual(['a', 'b', 'c', 'd']);
  });
});

describe('FinishedRetention groups', () => {
  it("evict their own oldest past groupLimit, never another's, and count in the limit", () => {
    const evicted: string[] = [];
    const r = new FinishedRetention(10, (id) => evicted.push(id), 2);
    r.add('op1');
    r.add('peer1', 'peer');
    for (let i = 0; i < 1000; i++) r.add(`a${i}`, 'a');
    expect(evicted).toEqual(Array.from({ length: 998 }, (_, i) => `a${i}`));
    expect(r.size).toBe(4);
    // The global FIFO still evicts oldest first, grouped or not, each id once.
    evicted.length = 0;
    for (let i = 0; i < 8; i++) r.add(`op${i + 2}`);
    expect(evicted).toEqual(['op1', 'peer1']);
    for (let i = 0; i < 2; i++) r.add(`op${i + 10}`);
    expect(evicted).toEqual(['op1', 'peer1', 'a998', 'a999']);
    expect(r.size).toBe(10);
  });

  it('are rebuilt by load and trimmed once', () => {
    const evicted: string[] = [];
    const r = new FinishedRetention(100, (id) => evicted.push(id), 3);
    const ids = Array.from({ length: 20 }, (_, i) => `t${i}`);
    r.load(ids, (id) => (Number(id.slice(1)) % 2 === 0 ? 'even' : undefined));
    r.trim();
    expect(evicted).toEqual(['t0', 't2', 't4', 't6', 't8', 't10', 't12']);
    expect(r.size).toBe(13);
  });
});

describe('RunningTasks', () => {
  it('adds and removes in any order, each task once, and lists exactly what it holds', () => {
    const running = new RunningTasks();
    const tasks = Array.from({ length: 50 }, (_, i) => task(i));
    const held = new Set<TaskRecord>();
    let x = 7;
    for (let step = 0; step < 2000; step++) {
      x = (x * 1103515245 + 12345) % 2 ** 31;
      const t = tasks[x % tasks.length]!;
      if ((x >> 8) % 2 === 0) {
        running.add(t);
        held.add(t);
      } else {
        expect(running.delete(t)).toBe(held.delete(t));
      }
      expect(running.size).toBe(held.size);
    }
    expect(new Set(running.toArray())).toEqual(held);
    for (const t of held) expect(running.delete(t)).toBe(true);
    expect(running.size).toBe(0);
    expect(running.toArray()).toEqual([]);
  });

  it('does not remove a task another list holds', () => {
    const a = new RunningTasks();
    const b = new RunningTasks();
    const t = task(1);
    const u = task(2);
    a.add(t);
    b.add(u);
    expect(b.delete(t)).toBe(false);
    expect(a.toArray()).toEqual([t]);
    expect(b.toArray()).toEqual([u]);
  });
});

describe('FairQueue flow reuse', () => {
  it("takes the tenant's weight anew when its emptied flow regains tasks", () => {
    let weight = 1;
    const q = new FairQueue('q', (tenant) => (tenant === 'a' ? weight : 1));
    let seq = 0;
    const order = (): string[] => {
      const out: string[] = [];
      for (let t = q.pop(); t !== undefined; t = q.pop()) out.push(t.tenant);
      return out;
    };
    // 'a' empties last: its flow is the one kept for reuse.
    for (let i = 0; i < 3; i++) q.push(task(seq++, 'b'));
    for (let i = 0; i < 3; i++) q.push(task(seq++, 'a'));
    expect(order()).toEqual(['b', 'a', 'b', 'a', 'b', 'a']);
    weight = 2;
    for (let i = 0; i < 4; i++) q.push(task(seq++, 'a'));
    for (let i = 0; i < 2; i++) q.push(task(seq++, 'b'));
    expect(order()).toEqual(['a', 'a', 'b', 'a', 'a', 'b']);
  });
});

describe('task ids', () => {
  it('are the prefix and the counter in base 36, across changes in the number of digits', async () => {
    const s = new AgentScheduler({ maxQueueDepth: 2000 });
    s.addPool('p');
    const ids = Array.from({ length: 1400 }, () => s.submit({ poolId: 'p' }, 'x', 0));
    const prefix = /^t_[A-Za-z0-9_-]{8}_/.exec(ids[0]!)![0];
    ids.forEach((id, i) => expect(id).toBe(`${prefix}${(i + 1).toString(36)}`));
    expect(s.getTask(ids[1295]!).id).toBe(`${prefix}100`);
    await s.close();
  });
});

/**
 * One queue of the scheduler (an agent's own, or a pool's): strict priority across levels,
 * weighted round robin across tenants at the same level, earliest-deadline-first then FIFO
 * within a tenant.
 *
 * Round robin with unit task cost is deficit round robin with quantum = weight: the tenant at the
 * head of a level's ring is served up to `weight` tasks, then moves to the back. A tenant that
 * floods a queue therefore delays another tenant at the same priority by at most one turn of the
 * ring, never indefinitely. Every operation is O(log n) in the tenant's tasks (plus O(1) ring
 * work); nothing scans the queue.
 *
 * @module
 */
import { IndexedHeap, NOT_IN_HEAP } from './indexed-heap.js';
import type { TaskRecord } from './task-record.js';
import { QUEUE_SLOT } from './task-record.js';

const LEVELS = 4;

function withinFlow(a: TaskRecord, b: TaskRecord): boolean {
  const da = a.deadline ?? Number.POSITIVE_INFINITY;
  const db = b.deadline ?? Number.POSITIVE_INFINITY;
  if (da !== db) return da < db;
  return a.seq < b.seq;
}

/**
 * One tenant's tasks at one priority level of one queue.
 *
 * Most tasks have no deadline and have never run; among them arrival order is the whole order, so
 * they sit in a FIFO (O(1), and cache-friendly: a heap of 100k records costs a cache miss per
 * level). Tasks with a deadline, and retried tasks (which keep their original place), sit in a
 * heap ordered by (deadline, arrival). The head of the flow is the better of the two heads.
 */
export class Flow {
  readonly #heap = new IndexedHeap<TaskRecord>(withinFlow, QUEUE_SLOT);
  /** FIFO slots; `undefined` marks a removed task. `qIndex` of a FIFO task is `#base + slot`. */
  #fifo: (TaskRecord | undefined)[] = [];
  #head = 0;
  #base = 0;
  #fifoSize = 0;
  /** Tasks left in this flow's current turn. */
  remaining: number;
  prev: Flow = this;
  next: Flow = this;
  inRing = false;

  constructor(
    readonly tenant: string,
    readonly level: number,
    readonly weight: number,
  ) {
    this.remaining = weight;
  }

  get size(): number {
    return this.#heap.size + this.#fifoSize;
  }

  push(t: TaskRecord): void {
    if (t.deadline === undefined && t.attempt === 0) {
      t.inFifo = true;
      t.qIndex = this.#base + this.#fifo.length;
      this.#fifo.push(t);
      this.#fifoSize++;
    } else {
      t.inFifo = false;
      this.#heap.push(t);
    }
  }

  peek(): TaskRecord | undefined {
    const h = this.#heap.peek();
    const f = this.#fifoHead();
    if (h === undefined) return f;
    if (f === undefined) return h;
    return withinFlow(h, f) ? h : f;
  }

  pop(): TaskRecord | undefined {
    const t = this.peek();
    if (t === undefined) return undefined;
    if (t.inFifo) {
      this.#fifo[this.#head++] = undefined;
      this.#fifoSize--;
      t.qIndex = NOT_IN_HEAP;
      this.#compact();
    } else {
      this.#heap.pop();
    }
    return t;
  }

  remove(t: TaskRecord): boolean {
    if (!t.inFifo) return this.#heap.remove(t);
    const slot = t.qIndex - this.#base;
    if (slot < 0 || this.#fifo[slot] !== t) return false;
    this.#fifo[slot] = undefined;
    this.#fifoSize--;
    t.qIndex = NOT_IN_HEAP;
    return true;
  }

  drain(): TaskRecord[] {
    const out = this.#heap.drain();
    for (let i = this.#head; i < this.#fifo.length; i++) {
      const t = this.#fifo[i];
      if (t !== undefined) {
        t.qIndex = NOT_IN_HEAP;
        out.push(t);
      }
    }
    this.#base += this.#fifo.length;
    this.#fifo = [];
    this.#head = 0;
    this.#fifoSize = 0;
    return out;
  }

  #fifoHead(): TaskRecord | undefined {
    if (this.#fifoSize === 0) return undefined;
    const fifo = this.#fifo;
    while (fifo[this.#head] === undefined) this.#head++;
    return fifo[this.#head];
  }

  #compact(): void {
    if (this.#head > 1024 && this.#head * 2 > this.#fifo.length) {
      this.#fifo.splice(0, this.#head);
      this.#base += this.#head;
      this.#head = 0;
    }
  }
}

class Level {
  readonly flows = new Map<string, Flow>();
  head: Flow | undefined = undefined;
  size = 0;

  link(flow: Flow): void {
    flow.inRing = true;
    flow.remaining = flow.weight;
    const head = this.head;
    if (head === undefined) {
      flow.prev = flow;
      flow.next = flow;
      this.head = flow;
      return;
    }
    // Append at the tail (just before head): a newly active tenant waits its turn.
    const tail = head.prev;
    flow.prev = tail;
    flow.next = head;
    tail.next = flow;
    head.prev = flow;
  }

  unlink(flow: Flow): void {
    flow.inRing = false;
    if (flow.next === flow) {
      this.head = undefined;
    } else {
      flow.prev.next = flow.next;
      flow.next.prev = flow.prev;
      if (this.head === flow) this.head = flow.next;
    }
    flow.prev = flow;
    flow.next = flow;
  }
}

/** Fairness weights per tenant (default 1). */
export type TenantWeights = (tenant: string) => number;

/** A multi-level, multi-tenant fair queue of tasks. */
export class FairQueue {
  readonly #levels: Level[] = Array.from({ length: LEVELS }, () => new Level());
  readonly #weight: TenantWeights;
  #size = 0;

  constructor(
    readonly key: string,
    weight: TenantWeights = () => 1,
  ) {
    this.#weight = weight;
  }

  get size(): number {
    return this.#size;
  }

  push(task: TaskRecord): void {
    const level = this.#levels[task.priority]!;
    let flow = level.flows.get(task.tenant);
    if (flow === undefined) {
      flow = new Flow(
        task.tenant,
        task.priority,
        Math.max(1, Math.floor(this.#weight(task.tenant))),
      );
      level.flows.set(task.tenant, flow);
    }
    flow.push(task);
    task.flow = flow;
    if (!flow.inRing) level.link(flow);
    level.size++;
    this.#size++;
  }

  /** The task `pop` would return. */
  peek(): TaskRecord | undefined {
    if (this.#size === 0) return undefined;
    for (const level of this.#levels) {
      if (level.size > 0) return level.head!.peek();
    }
    return undefined;
  }

  pop(): TaskRecord | undefined {
    if (this.#size === 0) return undefined;
    for (const level of this.#levels) {
      if (level.size === 0) continue;
      const flow = level.head!;
      const task = flow.pop()!;
      // A flow that emptied has left the ring; one that used up its turn moves to the back.
      if (!this.#left(task, level, flow) && --flow.remaining <= 0) {
        flow.remaining = flow.weight;
        level.head = flow.next;
      }
      return task;
    }
    return undefined;
  }

  /** Removes a queued task (cancel, deadline). Returns whether it was here. */
  remove(task: TaskRecord): boolean {
    const flow = task.flow;
    if (flow === undefined) return false;
    const level = this.#levels[flow.level]!;
    if (level.flows.get(flow.tenant) !== flow || !flow.remove(task)) return false;
    this.#left(task, level, flow);
    return true;
  }

  /** Bookkeeping after `task` left `flow`; returns whether the flow emptied (and was dropped). */
  #left(task: TaskRecord, level: Level, flow: Flow): boolean {
    task.flow = undefined;
    level.size--;
    this.#size--;
    if (flow.size > 0) return false;
    level.unlink(flow);
    level.flows.delete(flow.tenant);
    return true;
  }

  /** Removes and returns every task. */
  drain(): TaskRecord[] {
    const out: TaskRecord[] = [];
    for (const level of this.#levels) {
      for (const flow of level.flows.values()) {
        for (const t of flow.drain()) {
          t.flow = undefined;
          out.push(t);
        }
        flow.inRing = false;
      }
      level.flows.clear();
      level.head = undefined;
      level.size = 0;
    }
    this.#size = 0;
    return out;
  }
}

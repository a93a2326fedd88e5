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
 * An agent of a pool serves two queues; its `TenantMix` runs the round robin across both,
 * so it takes flows from here with {@link FairQueue.popFlow} and learns which flows hold tasks
 * through the queue's {@link FlowListener}.
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
export class Flow implements RingNode<Flow> {
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
    /** The queue it belongs to. */
    readonly queue: FairQueue,
    readonly tenant: string,
    readonly level: number,
    /** Tasks per turn: the tenant's weight when the flow (re)gained its first task. */
    public weight: number,
  ) {
    this.remaining = weight;
  }

  get size(): number {
    return this.#heap.size + this.#fifoSize;
  }

  /** Slots the FIFO array holds, live or hole (memory it keeps; for tests and diagnostics). */
  get fifoSlots(): number {
    return this.#fifo.length;
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
    // A flow whose tasks are cancelled rather than popped would otherwise keep a hole per task
    // it ever held: skip holes at the front (the usual case: the oldest is cancelled), compact.
    if (slot === this.#head) this.#fifoHead();
    this.#compact();
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
    if (this.#fifoSize === 0) {
      // Nothing live: drop the holes (slots stay absolute through `#base`).
      this.#base += this.#fifo.length;
      this.#fifo.length = 0;
      this.#head = 0;
      return undefined;
    }
    const fifo = this.#fifo;
    while (fifo[this.#head] === undefined) this.#head++;
    return fifo[this.#head];
  }

  /**
   * Keeps the FIFO array within about twice its live tasks: drops a long run of holes at the
   * front (no task moves its absolute slot), or, when removals left holes in between, copies the
   * live tasks into a fresh array and renumbers them. Either costs O(live) after at least as
   * many removals, so O(1) amortized.
   */
  #compact(): void {
    const fifo = this.#fifo;
    if (this.#head > 1024 && this.#head * 2 > fifo.length) {
      fifo.splice(0, this.#head);
      this.#base += this.#head;
      this.#head = 0;
      return;
    }
    const span = fifo.length - this.#head;
    if (span - this.#fifoSize > 1024 && span > 2 * this.#fifoSize) {
      const base = this.#base + fifo.length;
      const live: TaskRecord[] = [];
      for (let i = this.#head; i < fifo.length; i++) {
        const t = fifo[i];
        if (t === undefined) continue;
        t.qIndex = base + live.length;
        live.push(t);
      }
      this.#fifo = live;
      this.#base = base;
      this.#head = 0;
    }
  }
}

/** A member of a {@link Ring}: a tenant's turn, `weight` tasks long. */
export interface RingNode<N> {
  readonly weight: number;
  /** Tasks left in its current turn. */
  remaining: number;
  prev: N;
  next: N;
  inRing: boolean;
}

/** Deficit round robin with unit cost: a circular list whose head is the member being served. */
export class Ring<N extends RingNode<N>> {
  head: N | undefined = undefined;

  /** Adds `node` at the tail: a newly active tenant waits its turn. */
  link(node: N): void {
    node.inRing = true;
    node.remaining = node.weight;
    const head = this.head;
    if (head === undefined) {
      node.prev = node;
      node.next = node;
      this.head = node;
      return;
    }
    const tail = head.prev;
    node.prev = tail;
    node.next = head;
    tail.next = node;
    head.prev = node;
  }

  unlink(node: N): void {
    node.inRing = false;
    if (node.next === node) {
      this.head = undefined;
    } else {
      node.prev.next = node.next;
      node.next.prev = node.prev;
      if (this.head === node) this.head = node.next;
    }
    node.prev = node;
    node.next = node;
  }

  /** Counts one task served from the head; a head that used up its turn moves to the back. */
  served(node: N): void {
    if (node.inRing && --node.remaining <= 0) {
      node.remaining = node.weight;
      if (this.head === node) this.head = node.next;
    }
  }
}

class Level extends Ring<Flow> {
  readonly flows = new Map<string, Flow>();
  size = 0;
  /**
   * The flow that emptied last, kept for its tenant's next task: a queue that a tenant keeps
   * emptying and refilling (one tenant, steady load) would otherwise make a flow per refill.
   */
  spare: Flow | undefined = undefined;
}

/**
 * Fairness weights per tenant (default 1). A weight is a whole number of tasks per turn: anything
 * else counts as 1 (see {@link turnLength}).
 */
export type TenantWeights = (tenant: string) => number;

/**
 * The tasks per turn of `tenant`: its weight rounded down, at least 1 and at most 2^53 − 1; 1 when
 * the weight is not a number (`undefined` from a function that answers only for the tenants it
 * knows, NaN) or the function throws. Before, NaN went through (`Math.max(1, NaN)` is NaN): that
 * tenant's turn never ended (`--NaN <= 0` is false) and it starved every other tenant at its
 * priority; a throw left the task it was asked for stored as PENDING but in no queue.
 */
function turnLength(weights: TenantWeights, tenant: string): number {
  let w: unknown;
  try {
    w = weights(tenant);
  } catch {
    return 1;
  }
  if (typeof w !== 'number' || !(w >= 1)) return 1;
  return Math.min(Math.floor(w), Number.MAX_SAFE_INTEGER);
}

/**
 * Told when a flow of the queue gains its first task (`active`) and when it loses its last one
 * (emptied, removed or drained). Called once per change, never per task.
 */
export type FlowListener = (flow: Flow, active: boolean) => void;

/** A multi-level, multi-tenant fair queue of tasks. */
export class FairQueue {
  readonly #levels: Level[] = Array.from({ length: LEVELS }, () => new Level());
  readonly #weight: TenantWeights;
  readonly #listener: FlowListener | undefined;
  #size = 0;

  constructor(
    readonly key: string,
    weight: TenantWeights = () => 1,
    listener?: FlowListener,
  ) {
    this.#weight = weight;
    this.#listener = listener;
  }

  get size(): number {
    return this.#size;
  }

  /** Tasks queued at priority `level` (0 = CRITICAL … 3 = LOW). */
  sizeAt(level: number): number {
    return this.#levels[level]?.size ?? 0;
  }

  push(task: TaskRecord): void {
    const level = this.#levels[task.priority]!;
    let flow = level.flows.get(task.tenant);
    if (flow === undefined) {
      const weight = turnLength(this.#weight, task.tenant);
      flow = level.spare;
      if (flow !== undefined && flow.tenant === task.tenant) {
        level.spare = undefined;
        flow.weight = weight;
      } else {
        flow = new Flow(this, task.tenant, task.priority, weight);
      }
      level.flows.set(task.tenant, flow);
    }
    flow.push(task);
    task.flow = flow;
    level.size++;
    this.#size++;
    if (!flow.inRing) {
      level.link(flow);
      this.#listener?.(flow, true);
    }
  }

  /** Every flow that holds tasks (an agent joining a pool learns the pool's flows from it). */
  *flows(): IterableIterator<Flow> {
    for (const level of this.#levels) yield* level.flows.values();
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
      this.#left(task, level, flow);
      level.served(flow);
      return task;
    }
    return undefined;
  }

  /**
   * Removes and returns the head of `flow`, a flow of this queue with tasks, whatever this
   * queue's own ring says: the caller (a `TenantMix`) runs the round robin.
   */
  popFlow(flow: Flow): TaskRecord {
    const task = flow.pop()!;
    this.#left(task, this.#levels[flow.level]!, flow);
    return task;
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
    level.spare = flow;
    this.#listener?.(flow, false);
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
      const gone = this.#listener === undefined ? [] : [...level.flows.values()];
      level.flows.clear();
      level.head = undefined;
      level.size = 0;
      for (const flow of gone) this.#listener!(flow, false);
    }
    this.#size = 0;
    return out;
  }
}

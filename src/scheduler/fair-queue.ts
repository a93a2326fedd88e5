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
import { IndexedHeap } from './indexed-heap.js';
import type { TaskRecord } from './task-record.js';
import { QUEUE_SLOT } from './task-record.js';

const LEVELS = 4;

function withinFlow(a: TaskRecord, b: TaskRecord): boolean {
  const da = a.deadline ?? Number.POSITIVE_INFINITY;
  const db = b.deadline ?? Number.POSITIVE_INFINITY;
  if (da !== db) return da < db;
  return a.seq < b.seq;
}

/** One tenant's tasks at one priority level of one queue. */
export class Flow {
  readonly heap = new IndexedHeap<TaskRecord>(withinFlow, QUEUE_SLOT);
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
    flow.heap.push(task);
    task.flow = flow;
    if (!flow.inRing) level.link(flow);
    level.size++;
    this.#size++;
  }

  /** The task `pop` would return. */
  peek(): TaskRecord | undefined {
    if (this.#size === 0) return undefined;
    for (const level of this.#levels) {
      if (level.size > 0) return level.head!.heap.peek();
    }
    return undefined;
  }

  pop(): TaskRecord | undefined {
    if (this.#size === 0) return undefined;
    for (const level of this.#levels) {
      if (level.size === 0) continue;
      const flow = level.head!;
      const task = flow.heap.pop()!;
      task.flow = undefined;
      level.size--;
      this.#size--;
      if (flow.heap.size === 0) {
        level.unlink(flow);
        level.flows.delete(flow.tenant);
      } else if (--flow.remaining <= 0) {
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
    if (level.flows.get(flow.tenant) !== flow || !flow.heap.remove(task)) return false;
    task.flow = undefined;
    level.size--;
    this.#size--;
    if (flow.heap.size === 0) {
      level.unlink(flow);
      level.flows.delete(flow.tenant);
    }
    return true;
  }

  /** Removes and returns every task. */
  drain(): TaskRecord[] {
    const out: TaskRecord[] = [];
    for (const level of this.#levels) {
      for (const flow of level.flows.values()) {
        for (const t of flow.heap.drain()) {
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

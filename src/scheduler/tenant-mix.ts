/**
 * What an agent of a pool runs next, across the two queues it serves: its own (tasks addressed
 * to it) and its pool's (tasks any agent of the pool may run).
 *
 * Each {@link FairQueue} runs weighted round robin across the tenants queued in it, but an agent
 * that merely picked the better of the two queue heads would serve each queue's ring on its own:
 * a tenant flooding the agent's queue and a tenant with one task in the pool would both be "next
 * in turn", and the tie went to the older task — 200 tasks later. So the mix keeps one ring per
 * priority level over the *tenants* that have work for this agent in either queue, with the same
 * deficit round robin (quantum = weight) as a queue: the tenant at the head runs up to `weight`
 * tasks, then moves to the back; a tenant that gains work joins at the back. Within the tenant,
 * the earlier of its two queue heads (deadline, then arrival) runs, so EDF holds across both
 * queues; strict priority across levels holds as before.
 *
 * Costs: picking and popping are O(1) ring work plus the queue's O(log n) pop. The queues tell
 * the mix when a tenant's flow gains its first task or loses its last ({@link FlowListener}), so
 * nothing scans a queue; a pool flow's change is told to each agent of the pool (O(agents), as
 * choosing the least-loaded agent already is), once per change, never per task.
 *
 * @module
 */
import type { Flow, FairQueue, RingNode } from './fair-queue.js';
import { Ring } from './fair-queue.js';
import type { TaskRecord } from './task-record.js';
import { runsBefore } from './task-record.js';

const LEVELS = 4;

/** One tenant at one priority level: its flow in the agent's queue and in the pool's. */
class MixEntry implements RingNode<MixEntry> {
  remaining: number;
  prev: MixEntry = this;
  next: MixEntry = this;
  inRing = false;
  own: Flow | undefined = undefined;
  pool: Flow | undefined = undefined;

  constructor(
    readonly tenant: string,
    public weight: number,
  ) {
    this.remaining = weight;
  }

  /** The flow whose head this tenant runs next: the earlier of the two heads. */
  pick(): Flow | undefined {
    const own = this.own;
    const pool = this.pool;
    if (own === undefined) return pool;
    if (pool === undefined) return own;
    return runsBefore(pool.peek()!, own.peek()!) ? pool : own;
  }
}

class MixLevel extends Ring<MixEntry> {
  readonly entries = new Map<string, MixEntry>();
  /** The entry that left last, kept for its tenant's return (as `FairQueue` keeps a flow). */
  spare: MixEntry | undefined = undefined;
}

/** Weighted round robin across tenants over an agent's own queue and its pool's queue. */
export class TenantMix {
  readonly #levels: MixLevel[] = Array.from({ length: LEVELS }, () => new MixLevel());
  readonly #own: FairQueue;

  /** @param own - the agent's own queue; flows of any other queue count as the pool's. */
  constructor(own: FairQueue) {
    this.#own = own;
  }

  /** A flow of either queue gained its first task (`active`) or lost its last. */
  update(flow: Flow, active: boolean): void {
    const level = this.#levels[flow.level]!;
    let entry = level.entries.get(flow.tenant);
    const own = flow.queue === this.#own;
    if (active) {
      if (entry === undefined) {
        // A tenant's weight is the same in every queue; the first flow sets it.
        entry = level.spare;
        if (entry !== undefined && entry.tenant === flow.tenant) {
          level.spare = undefined;
          entry.weight = flow.weight;
        } else {
          entry = new MixEntry(flow.tenant, flow.weight);
        }
        level.entries.set(flow.tenant, entry);
      }
      if (own) entry.own = flow;
      else entry.pool = flow;
      if (!entry.inRing) level.link(entry);
      return;
    }
    if (entry === undefined) return;
    if (own) {
      if (entry.own === flow) entry.own = undefined;
    } else if (entry.pool === flow) entry.pool = undefined;
    if (entry.own === undefined && entry.pool === undefined) {
      level.unlink(entry);
      level.entries.delete(flow.tenant);
      level.spare = entry;
    }
  }

  /** The flow whose head `pop` would take. */
  peek(): Flow | undefined {
    for (const level of this.#levels) {
      const head = level.head;
      if (head !== undefined) return head.pick();
    }
    return undefined;
  }

  /** Removes and returns the task the agent runs next. */
  pop(): TaskRecord | undefined {
    for (const level of this.#levels) {
      const entry = level.head;
      if (entry === undefined) continue;
      const flow = entry.pick()!;
      // May empty the flow, and through the listener take the tenant out of the ring.
      const task = flow.queue.popFlow(flow);
      level.served(entry);
      return task;
    }
    return undefined;
  }
}

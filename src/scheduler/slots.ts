/**
 * The scheduler's runtime view of the agents, pools and executors it serves: each agent's and
 * pool's queue, what runs where, and the executor an agent's work goes through. Rebuilt on start
 * (agents and pools from their records, queues from the task records); never stored.
 *
 * @module
 */
import type { TaskAssignment } from '../task.js';
import type { TaskExecutor } from './executor.js';
import type { TenantWeights } from './fair-queue.js';
import { FairQueue } from './fair-queue.js';
import type { TaskRecord } from './task-record.js';
import { TenantMix } from './tenant-mix.js';

/** A registered executor and the assignments of the current dispatch pass. */
export interface ExecutorEntry {
  /**
   * An `AwaitedExecutor` while the executor its restored agents name is not registered; the
   * executor from its registration on (the agents keep the entry).
   */
  executor: TaskExecutor;
  /** Assignments of this dispatch pass, handed over together when the pass ends. */
  pending: TaskAssignment[];
  /** The agents of the pending assignments, each once (their `unflushed` counts them). */
  readonly slots: AgentSlot[];
}

/**
 * The tasks an agent runs: an array in which each record keeps its own position
 * (`TaskRecord.rIndex`; a task runs on one agent at a time), so adding and removing are O(1)
 * and, once the array has grown to the agent's peak, allocate nothing. A `Set` rehashes its
 * table as the agent fills and empties, which on a busy agent is every few tasks.
 */
export class RunningTasks {
  readonly #items: (TaskRecord | undefined)[] = [];
  #size = 0;

  get size(): number {
    return this.#size;
  }

  add(t: TaskRecord): void {
    if (t.rIndex >= 0) return;
    const i = this.#size++;
    // Slots past `size` hold `undefined` (the array never shrinks, so regrowing costs nothing).
    if (i < this.#items.length) this.#items[i] = t;
    else this.#items.push(t);
    t.rIndex = i;
  }

  /** Removes `t`; false when it is not here. */
  delete(t: TaskRecord): boolean {
    const i = t.rIndex;
    const items = this.#items;
    if (i < 0 || i >= this.#size || items[i] !== t) return false;
    const last = --this.#size;
    const moved = items[last]!;
    items[i] = moved;
    moved.rIndex = i;
    items[last] = undefined;
    t.rIndex = -1;
    return true;
  }

  /** A copy of the running tasks, in no particular order. */
  toArray(): TaskRecord[] {
    return this.#items.slice(0, this.#size) as TaskRecord[];
  }
}

/** An agent as the scheduler knows it. */
export class AgentSlot {
  readonly queue: FairQueue;
  /** Round robin across its own queue and its pool's; undefined without a pool. */
  readonly mix: TenantMix | undefined;
  readonly running = new RunningTasks();
  accepting = false;
  draining = false;
  /**
   * Its work was taken back (it became unhealthy): nothing is queued on it again until it
   * accepts work again. An agent that only stopped accepting (DEGRADED) keeps its queue.
   */
  evicted = false;
  /** Tasks given to it in this pass, not yet handed to its executor. */
  unflushed = 0;
  completed = 0;
  failed = 0;
  idle: (() => void)[] = [];

  constructor(
    readonly id: string,
    readonly pool: PoolSlot | undefined,
    readonly exec: ExecutorEntry,
    readonly capacity: number,
    weights: TenantWeights,
  ) {
    let mix: TenantMix | undefined;
    this.queue = new FairQueue(
      `agent:${id}`,
      weights,
      pool === undefined ? undefined : (flow, active) => mix!.update(flow, active),
    );
    this.mix = mix = pool === undefined ? undefined : new TenantMix(this.queue);
  }
}

/** A pool's queue and load. */
export class PoolSlot {
  readonly queue: FairQueue;
  readonly agents: AgentSlot[] = [];
  accepting = true;
  running = 0;
  completed = 0;
  failed = 0;
  rr = 0;
  idle: (() => void)[] = [];

  constructor(
    readonly id: string,
    weights: TenantWeights,
  ) {
    // Every agent of the pool runs the pool's tenants in its own round robin.
    this.queue = new FairQueue(`pool:${id}`, weights, (flow, active) => {
      for (const a of this.agents) a.mix!.update(flow, active);
    });
  }
}

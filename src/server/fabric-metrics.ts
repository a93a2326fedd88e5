/**
 * The fabric's part of `GET /metrics`: scheduler and queues, task outcomes, budgets, work hooks
 * and the state store. Everything but the hook counters is read from the components when the
 * endpoint is scraped (their own counters and gauges), so nothing is added to the task or call
 * paths; hook events are counted as they are announced.
 *
 * @module
 */
import type { AgentFabric } from '../fabric.js';
import type { MetricFamily } from '../gateway/metrics.js';
import type { HookEventName } from '../hooks/hook-events.js';
import { Priority } from '../task.js';

/** The state store's figures (see `SqliteStore.stats`). */
export interface StoreFigures {
  readonly stats: Readonly<{
    commits: number;
    failedCommits: number;
    recordsWritten: number;
    commitSeconds: number;
  }>;
  readonly lastError: unknown;
  /** Calls waiting for a commit to succeed after a failed one (see `SqliteStore.commitWaiters`). */
  readonly commitWaiters: number;
}

/** Hook events counted, by event name. */
const HOOK_EVENTS: readonly HookEventName[] = [
  'hook.created',
  'hook.activated',
  'hook.completed',
  'hook.failed',
  'hook.abandoned',
  'hook.reassigned',
  'hook.progress',
  'hook.stale',
  'patrol.error',
  'store.ref_moved',
  'store.ref_lock_removed',
  'store.lock_restored',
  'store.lock_lost',
  'store.maintained',
  'store.maintenance_error',
];

const PRIORITY_NAMES = [Priority.CRITICAL, Priority.HIGH, Priority.NORMAL, Priority.LOW].map(
  (p) => Priority[p],
);

/** A family of one unlabelled sample. */
function one(name: string, type: 'counter' | 'gauge', help: string, value: number): MetricFamily {
  return { name, help, type, samples: [{ value }] };
}

/** Collects the fabric's metric families; one per sidecar. */
export class FabricMetrics {
  readonly #fabric: AgentFabric;
  readonly #store: StoreFigures | undefined;
  readonly #hookEvents = new Map<string, number>();

  /** Counts the fabric's hook events from now on (its hook store must be set by then). */
  constructor(fabric: AgentFabric, store: StoreFigures | undefined) {
    this.#fabric = fabric;
    this.#store = store;
    const hooks = fabric.hooks;
    if (hooks !== undefined) {
      for (const event of HOOK_EVENTS) {
        this.#hookEvents.set(event, 0);
        hooks.on(event, () => this.#hookEvents.set(event, (this.#hookEvents.get(event) ?? 0) + 1));
      }
    }
  }

  families(): MetricFamily[] {
    const fabric = this.#fabric;
    const s = fabric.scheduler.stats();
    const queued = fabric.scheduler.queuedByPriority();
    const families: MetricFamily[] = [
      {
        name: 'agent_fabric_tasks_queued',
        help: 'Tasks waiting to run, by priority (in queues or held back until their notBefore).',
        type: 'gauge',
        samples: PRIORITY_NAMES.map((priority, i) => ({
          labels: { priority: priority! },
          value: queued[i] ?? 0,
        })),
      },
      one(
        'agent_fabric_tasks_running',
        'gauge',
        'Tasks handed to an agent and not finished.',
        s.runningTasks,
      ),
      one(
        'agent_fabric_tasks_scheduled_total',
        'counter',
        'Tasks scheduled since the sidecar started.',
        s.scheduledTasks,
      ),
      one(
        'agent_fabric_task_retries_total',
        'counter',
        'Failed attempts that were queued again since the sidecar started.',
        s.retriedTasks,
      ),
      {
        name: 'agent_fabric_tasks_finished_total',
        help: 'Tasks that reached a final status, by status.',
        type: 'counter',
        samples: [
          { labels: { status: 'COMPLETED' }, value: s.completedTasks },
          { labels: { status: 'FAILED' }, value: s.failedTasks },
          { labels: { status: 'TIMED_OUT' }, value: s.timedOutTasks },
          { labels: { status: 'CANCELLED' }, value: s.cancelledTasks },
        ],
      },
      {
        name: 'agent_fabric_pool_tasks_queued',
        help: 'Tasks waiting in a pool (its queue and its agents’ queues).',
        type: 'gauge',
        samples: Object.entries(s.pools).map(([pool, load]) => ({
          labels: { pool },
          value: load.queuedTasks,
        })),
      },
      ...this.#budgetFamilies(),
    ];
    if (this.#hookEvents.size > 0) {
      families.push({
        name: 'agent_fabric_hook_events_total',
        help: 'Work-hook changes and patrol findings announced, by event.',
        type: 'counter',
        samples: [...this.#hookEvents].map(([event, value]) => ({ labels: { event }, value })),
      });
    }
    const hooks = fabric.hooks;
    if (hooks !== undefined) {
      families.push(
        one(
          'agent_fabric_hook_store_up',
          'gauge',
          'Whether the hook store opened and its last commit succeeded (1) or not (0).',
          hooks.lastError === undefined ? 1 : 0,
        ),
      );
      const hs = hooks.stats;
      if (hs !== undefined) {
        families.push(
          one(
            'agent_fabric_hook_store_commits_total',
            'counter',
            'Commits of hook state (one ref update each, carrying one or more transitions).',
            hs.commits,
          ),
          one(
            'agent_fabric_hook_store_commit_failures_total',
            'counter',
            'Commits of hook state that failed (their transitions were refused, nothing changed).',
            hs.failedCommits,
          ),
        );
        if (hs.quarantinedHeads !== undefined) {
          families.push(
            one(
              'agent_fabric_hook_store_quarantined_heads_total',
              'counter',
              'State ref heads that did not verify when the hook store opened (written without the key while the sidecar was down): kept under refs/fabric/quarantine/, the state loaded from the newest commit that verifies.',
              hs.quarantinedHeads,
            ),
          );
        }
      }
    }
    const store = this.#store;
    if (store !== undefined) {
      const st = store.stats;
      families.push(
        one(
          'agent_fabric_store_up',
          'gauge',
          'Whether the last commit to the state store succeeded (1) or failed (0).',
          store.lastError === undefined ? 1 : 0,
        ),
        one(
          'agent_fabric_store_commits_total',
          'counter',
          'Transactions committed to the state store.',
          st.commits,
        ),
        one(
          'agent_fabric_store_commit_failures_total',
          'counter',
          'Commits to the state store that failed (their changes stay pending and are retried).',
          st.failedCommits,
        ),
        one(
          'agent_fabric_store_records_written_total',
          'counter',
          'Records (tasks, agents, pools, approvals, budget scopes …) written or deleted.',
          st.recordsWritten,
        ),
        one(
          'agent_fabric_store_commit_seconds_total',
          'counter',
          'Time spent writing commits to the state store.',
          st.commitSeconds,
        ),
        one(
          'agent_fabric_store_waiting_calls',
          'gauge',
          'Calls waiting for a commit to the state store to succeed after a failed one (waits for a task end that is not on disk yet).',
          store.commitWaiters,
        ),
      );
    }
    return families;
  }

  /** Usage and limits of the fabric-wide and pool budgets (agents are too many to label). */
  #budgetFamilies(): MetricFamily[] {
    const budgets = this.#fabric.budgets;
    const statuses = [budgets.getFabricStatus()];
    for (const p of this.#fabric.pools.listPools()) statuses.push(budgets.getPoolStatus(p.poolId));
    const scoped = (
      name: string,
      help: string,
      pick: (b: (typeof statuses)[number]) => number,
    ): MetricFamily => ({
      name: `agent_fabric_budget_${name}`,
      help,
      type: 'gauge',
      samples: statuses.map((b) => ({ labels: { scope: b.scope }, value: pick(b) })),
    });
    return [
      scoped(
        'tokens_used',
        'Tokens used in the sliding hour, by budget scope (fabric, pool:<id>).',
        (b) => b.tokensUsed,
      ),
      scoped(
        'tokens_reserved',
        'Tokens held by calls in flight, by budget scope.',
        (b) => b.tokensReserved,
      ),
      scoped(
        'tokens_limit',
        'Tokens per hour allowed, by budget scope (+Inf: no limit).',
        (b) => b.tokensLimit,
      ),
      scoped('cost_used', 'Cost in the day window, by budget scope.', (b) => b.costUsed),
      scoped(
        'cost_limit',
        'Cost per day allowed, by budget scope (+Inf: no limit).',
        (b) => b.costLimit,
      ),
      one(
        'agent_fabric_budget_waiting_calls',
        'gauge',
        'Calls waiting for in-flight reservations to settle before their budget admits them.',
        budgets.waiting,
      ),
      one(
        'agent_fabric_budget_clock_steps_total',
        'counter',
        'Wall-clock steps the budget windows did not follow (their usage kept its elapsed time).',
        budgets.clockSteps,
      ),
    ];
  }
}

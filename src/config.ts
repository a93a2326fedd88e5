/**
 * FabricConfig: defaults, validation, frozen result.
 *
 * @module
 */
import { ConfigError } from './errors.js';
import type { NumberKind } from './validate.js';
import { checkNumber } from './validate.js';

/** Default for {@link FabricConfig.maxQueueDepth}. */
export const DEFAULT_MAX_QUEUE_DEPTH = 1000;
/** Default for {@link FabricConfig.defaultTimeoutSeconds}. */
export const DEFAULT_TIMEOUT_SECONDS = 300;
/** Default for {@link FabricConfig.heartbeatIntervalSeconds}. */
export const DEFAULT_HEARTBEAT_INTERVAL_SECONDS = 30;
/** Default for {@link FabricConfig.maxConcurrentAgents}. */
export const DEFAULT_MAX_CONCURRENT_AGENTS = 100;
/** Default for {@link FabricConfig.maxConcurrentTasksPerAgent}. */
export const DEFAULT_MAX_CONCURRENT_TASKS_PER_AGENT = 5;
/** Default for {@link FabricConfig.defaultMaxAttempts}. */
export const DEFAULT_MAX_ATTEMPTS = 3;
/** Default for {@link FabricConfig.drainTimeoutSeconds}. */
export const DEFAULT_DRAIN_TIMEOUT_SECONDS = 30;
/** Default for {@link FabricConfig.finishedTaskRetention}. */
export const DEFAULT_FINISHED_TASK_RETENTION = 10_000;
/** Default for {@link FabricConfig.finishedTaskRetentionPerAgent}. */
export const DEFAULT_FINISHED_TASK_RETENTION_PER_AGENT = 64;
/** Default for {@link FabricConfig.terminatedAgentRetention}. */
export const DEFAULT_TERMINATED_AGENT_RETENTION = 1000;
/** Default for {@link FabricConfig.maxScheduledTasksPerAgent}. */
export const DEFAULT_MAX_SCHEDULED_TASKS_PER_AGENT = 64;
/** Default for {@link FabricConfig.maxTaskResultBytes}: 1 MiB. */
export const DEFAULT_MAX_TASK_RESULT_BYTES = 1024 * 1024;

/**
 * The default of `maxQueueDepthPerTenant`: three quarters of `maxQueueDepth` (at least 1), so a
 * tenant that floods the queue leaves a quarter of it to the others.
 */
export function defaultQueueDepthPerTenant(maxQueueDepth: number): number {
  return Math.max(1, Math.floor((maxQueueDepth * 3) / 4));
}

/** Options of an {@link AgentFabric}. Every field is optional; see the `DEFAULT_*` constants. */
export interface FabricConfig {
  /**
   * Most tasks that may wait in queues at once (all queues together); `schedule` beyond it
   * throws `QueueFullError`.
   * @default 1000
   */
  maxQueueDepth: number;
  /**
   * Most of the `maxQueueDepth` waiting tasks one tenant (`schedule({ tenant })`; `default` when
   * unset) may hold; more of that tenant's are refused with `QueueFullError` (`details.tenant`)
   * while the rest of the queue stays open to other tenants, so one flooding tenant cannot lock
   * the others out. At most `maxQueueDepth`; equal to it turns the bound off.
   * @default three quarters of `maxQueueDepth` (at least 1)
   */
  maxQueueDepthPerTenant: number;
  /**
   * Running-time limit of a task that sets no `timeoutSeconds` of its own.
   * @default 300
   */
  defaultTimeoutSeconds: number;
  /**
   * How often agents are expected to heartbeat. An agent that misses two intervals is
   * DEGRADED, three UNHEALTHY.
   * @default 30
   */
  heartbeatIntervalSeconds: number;
  /**
   * Most agents alive at once (terminated agents do not count).
   * @default 100
   */
  maxConcurrentAgents: number;
  /**
   * Most tasks one agent runs at once.
   * @default 5
   */
  maxConcurrentTasksPerAgent: number;
  /**
   * Attempts a task gets when its agent dies or its worker crashes, unless the task sets its own.
   * At most 4,294,967,295 (what a protobuf `uint32` holds), as a task's own `maxAttempts`.
   * @default 3
   */
  defaultMaxAttempts: number;
  /**
   * How long `terminate` and `deletePool` let running tasks finish before aborting them.
   * @default 30
   */
  drainTimeoutSeconds: number;
  /**
   * How many finished tasks are kept for `getTask`/`waitForTask` before the oldest are forgotten.
   * @default 10000
   */
  finishedTaskRetention: number;
  /**
   * How many finished tasks one agent scheduled itself (`fabric__schedule_task`) are kept before
   * its oldest are forgotten. They count in `finishedTaskRetention` too, but evict only one
   * another: else an agent finishing its own tasks in a loop pushed everyone else's out and held
   * the whole retention (each with up to `maxTaskResultBytes` of payload and of result). Less
   * than `finishedTaskRetention`.
   * @default a tenth of `finishedTaskRetention`, at most 64
   */
  finishedTaskRetentionPerAgent: number;
  /**
   * How many terminated agents stay known (to `getAgentInfo`, budget status) before the oldest
   * are forgotten — their records and budget state both.
   * @default 1000
   */
  terminatedAgentRetention: number;
  /**
   * Largest result, progress report or error (as JSON) an agent may hand in with
   * `completeTask`, `reportProgress` or `failTask`; beyond it the call throws
   * `TaskResultTooLargeError` and the task stays with the agent. Finished tasks are retained
   * (`finishedTaskRetention`), so without a bound one agent could pin gigabytes.
   * @default 1048576
   */
  maxTaskResultBytes: number;
  /**
   * Most unfinished tasks one agent may have scheduled itself (`fabric__schedule_task`, in its
   * own pool); more are refused with `QueueFullError` until some finish, so one agent cannot
   * take the whole `maxQueueDepth`. Its payloads are bounded by `maxTaskResultBytes` too.
   * @default 64
   */
  maxScheduledTasksPerAgent: number;
}

/** The built-in defaults, as in the Fabric Guide's table. */
export const DEFAULT_FABRIC_CONFIG: Readonly<FabricConfig> = Object.freeze({
  maxQueueDepth: DEFAULT_MAX_QUEUE_DEPTH,
  maxQueueDepthPerTenant: defaultQueueDepthPerTenant(DEFAULT_MAX_QUEUE_DEPTH),
  defaultTimeoutSeconds: DEFAULT_TIMEOUT_SECONDS,
  heartbeatIntervalSeconds: DEFAULT_HEARTBEAT_INTERVAL_SECONDS,
  maxConcurrentAgents: DEFAULT_MAX_CONCURRENT_AGENTS,
  maxConcurrentTasksPerAgent: DEFAULT_MAX_CONCURRENT_TASKS_PER_AGENT,
  defaultMaxAttempts: DEFAULT_MAX_ATTEMPTS,
  drainTimeoutSeconds: DEFAULT_DRAIN_TIMEOUT_SECONDS,
  finishedTaskRetention: DEFAULT_FINISHED_TASK_RETENTION,
  finishedTaskRetentionPerAgent: DEFAULT_FINISHED_TASK_RETENTION_PER_AGENT,
  terminatedAgentRetention: DEFAULT_TERMINATED_AGENT_RETENTION,
  maxTaskResultBytes: DEFAULT_MAX_TASK_RESULT_BYTES,
  maxScheduledTasksPerAgent: DEFAULT_MAX_SCHEDULED_TASKS_PER_AGENT,
});

const FIELDS: Readonly<Record<keyof FabricConfig, NumberKind>> = {
  maxQueueDepth: 'positiveInt',
  maxQueueDepthPerTenant: 'positiveInt',
  defaultTimeoutSeconds: 'positiveNumber',
  heartbeatIntervalSeconds: 'positiveNumber',
  maxConcurrentAgents: 'positiveInt',
  maxConcurrentTasksPerAgent: 'positiveInt',
  defaultMaxAttempts: 'positiveInt',
  drainTimeoutSeconds: 'positiveNumber',
  finishedTaskRetention: 'nonNegativeInt',
  finishedTaskRetentionPerAgent: 'positiveInt',
  terminatedAgentRetention: 'nonNegativeInt',
  maxTaskResultBytes: 'positiveInt',
  maxScheduledTasksPerAgent: 'positiveInt',
};

const configError = (field: string, message: string) => new ConfigError(field, message);

/**
 * Merges `options` over the defaults, validates every field and freezes the result.
 * Unknown keys are rejected so that a typo does not silently fall back to a default.
 *
 * @example
 * const config = parseFabricConfig({ maxQueueDepth: 5000 });
 * config.maxConcurrentTasksPerAgent; // 5
 * @throws ConfigError naming the field at fault.
 */
export function parseFabricConfig(options: Partial<FabricConfig> = {}): Readonly<FabricConfig> {
  if (options === null || typeof options !== 'object' || Array.isArray(options)) {
    throw new ConfigError('options', 'must be an object');
  }
  for (const key of Object.keys(options)) {
    if (!(key in FIELDS)) throw new ConfigError(`options.${key}`, 'is not a known option');
  }
  const merged: FabricConfig = { ...DEFAULT_FABRIC_CONFIG };
  for (const [key, kind] of Object.entries(FIELDS) as [keyof FabricConfig, NumberKind][]) {
    const value = options[key];
    if (value !== undefined) merged[key] = checkNumber(`options.${key}`, value, kind, configError);
  }
  // One agent's share of the finished tasks must leave room for everyone else's: by default a
  // tenth of the retention (at most 64); a fixed 64 was the whole of a retention of 64 or less.
  const retention = merged.finishedTaskRetention;
  if (options.finishedTaskRetentionPerAgent === undefined) {
    merged.finishedTaskRetentionPerAgent = Math.min(
      DEFAULT_FINISHED_TASK_RETENTION_PER_AGENT,
      Math.max(1, Math.floor(retention / 10)),
    );
  } else if (retention >= 2 && merged.finishedTaskRetentionPerAgent >= retention) {
    throw configError(
      'options.finishedTaskRetentionPerAgent',
      `must be less than finishedTaskRetention (${retention}): one agent holding the whole retention pushes everyone else's finished tasks out`,
    );
  }
  // One tenant's share of the queue leaves room for the others' (see maxQueueDepthPerTenant).
  if (options.maxQueueDepthPerTenant === undefined) {
    merged.maxQueueDepthPerTenant = defaultQueueDepthPerTenant(merged.maxQueueDepth);
  } else if (merged.maxQueueDepthPerTenant > merged.maxQueueDepth) {
    throw configError(
      'options.maxQueueDepthPerTenant',
      `must be at most maxQueueDepth (${merged.maxQueueDepth})`,
    );
  }
  return Object.freeze(merged);
}

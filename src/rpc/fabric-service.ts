/**
 * `fabric.v1.FabricService` (proto/fabric/v1/fabric.proto): the operator API over the
 * {@link AgentFabric} facade, for the administrator only. Implemented once as a
 * {@link ServiceImplementation}; the gRPC server and the HTTP door both serve it (see
 * services.ts).
 *
 * This file only translates: wire messages to facade arguments and facade records to wire
 * messages. Enum values outside the proto's are INVALID_ARGUMENT; `..._json` bytes are parsed
 * keeping large integers exact (json-bytes.ts), and a `Value` and its `..._json` twin may not
 * both be set.
 *
 * @module
 */
import { create, type JsonObject } from '@bufbuild/protobuf';
import {
  durationFromMs,
  durationMs,
  timestampFromMs,
  type Duration,
  type Timestamp,
  type Value,
} from '@bufbuild/protobuf/wkt';
import type { AgentStatus, AgentBudgetConfig, AgentInfo, SpawnedAgent } from '../agent.js';
import { cutWireText, InvalidArgumentError } from '../errors.js';
import type { AgentFabric } from '../fabric.js';
import { CostWindow, type BudgetLimits } from '../gen/fabric/v1/budget_pb.js';
import * as rpc from '../gen/fabric/v1/fabric_pb.js';
import * as pb from '../gen/fabric/v1/fabric_types_pb.js';
import type { Hook } from '../hooks/hook.js';
import type { HookStatus } from '../hooks/hook-status.js';
import { pageOf } from '../paging.js';
import type { PoolInfo } from '../pools/pool-manager.js';
import type { Priority, ScheduleOptions, Task, TaskStatus } from '../task.js';
import { withScheduleTraceContext } from '../telemetry/trace-context.js';
import { bigintAsNumber } from '../validate.js';
import { jsonBytes, parseJsonBytes } from '../json-bytes.js';
import { fromValue, toValue, type ServiceImplementation } from './rpc-call.js';

/** Options of {@link fabricService}. */
export interface FabricServiceOptions {
  /** Longest `WaitTask` wait, whatever the request asks. @default 300 */
  maxWaitTaskSeconds?: number;
}

/** Default of {@link FabricServiceOptions.maxWaitTaskSeconds}. */
export const DEFAULT_MAX_WAIT_TASK_SECONDS = 300;

// ---------------------------------------------------------------------------------------------
// Records → wire

function time(ms: number | undefined): ReturnType<typeof timestampFromMs> | undefined {
  return ms === undefined ? undefined : timestampFromMs(ms);
}

/** A JSON-safe copy (a `bigint` as the nearest double), for `Struct` fields. */
function jsonObject(v: Readonly<Record<string, unknown>>): JsonObject {
  return JSON.parse(JSON.stringify(v, bigintAsNumber)) as JsonObject;
}

function agentInfo(a: AgentInfo): pb.AgentInfo {
  return create(pb.AgentInfoSchema, {
    agentId: a.id,
    name: a.name,
    model: a.model,
    capabilities: [...a.capabilities],
    poolId: a.poolId ?? '',
    executor: a.executor,
    heartbeatMode: a.heartbeatMode === 'auto' ? pb.HeartbeatMode.AUTO : pb.HeartbeatMode.MANUAL,
    status: pb.AgentStatus[a.status],
    labels: { ...a.labels },
    createdAt: timestampFromMs(a.createdAt),
    lastHeartbeatAt: timestampFromMs(a.lastHeartbeat),
    runningTasks: a.runningTasks,
    queuedTasks: a.queuedTasks,
    completedTasks: BigInt(a.completedTasks),
    failedTasks: BigInt(a.failedTasks),
    terminatedAt: time(a.terminatedAt),
  });
}

function spawned(a: SpawnedAgent): rpc.SpawnedAgent {
  return create(rpc.SpawnedAgentSchema, { agent: agentInfo(a), credential: a.credential });
}

/**
 * A task as the wire carries it. `summary` (ListTasks' `summary`): without its payload, result
 * and progress, its error's code and message cut as on every wire.
 */
function taskInfo(t: Task, summary = false): pb.TaskInfo {
  return create(pb.TaskInfoSchema, {
    taskId: t.id,
    taskType: t.taskType,
    ...(summary
      ? {}
      : { payload: toValue(t.payload), payloadJson: jsonBytes(t.payload ?? null, 'payload') }),
    priority: t.priority + 1,
    status: pb.TaskStatus[t.status],
    agentId: t.agentId ?? '',
    poolId: t.poolId ?? '',
    assignedAgentId: t.assignedAgentId ?? '',
    tenant: t.tenant,
    deadline: time(t.deadline),
    timeout: durationFromMs(t.timeoutSeconds * 1000),
    attempt: t.attempt,
    maxAttempts: t.maxAttempts,
    createdAt: timestampFromMs(t.createdAt),
    startedAt: time(t.startedAt),
    finishedAt: time(t.finishedAt),
    ...(summary
      ? {}
      : {
          result: t.result === undefined ? undefined : toValue(t.result),
          resultJson: jsonBytes(t.result, 'result'),
        }),
    error:
      t.error === undefined
        ? undefined
        : create(pb.TaskErrorSchema, {
            code: summary ? cutWireText(t.error.code) : t.error.code,
            message: summary ? cutWireText(t.error.message) : t.error.message,
            details: t.error.details === undefined ? undefined : jsonObject(t.error.details),
          }),
    progress: summary || t.progress === undefined ? undefined : toValue(t.progress),
  });
}

function poolInfo(p: PoolInfo): pb.PoolInfo {
  return create(pb.PoolInfoSchema, {
    poolId: p.poolId,
    name: p.name,
    model: p.model,
    minAgents: p.minAgents,
    maxAgents: p.maxAgents,
    executor: p.executor ?? '',
    status: pb.PoolStatus[p.status],
    agentIds: [...p.currentAgents],
    createdAt: timestampFromMs(p.createdAt),
    provider: p.provider ?? '',
  });
}

/** A hook as the wire carries it. `summary` (ListHooks' `summary`): without its work item and result. */
function hookInfo(h: Hook, summary = false): pb.HookInfo {
  return create(pb.HookInfoSchema, {
    hookId: h.hookId,
    agentId: h.agentId,
    status: pb.HookStatus[h.status],
    workItem: summary ? undefined : toValue(h.workItem),
    branch: h.branch ?? '',
    worktreePath: h.worktreePath ?? '',
    baseCommit: h.baseCommit ?? '',
    createdAt: timestampFromMs(h.createdAt),
    updatedAt: timestampFromMs(h.updatedAt),
    lastProgressAt: timestampFromMs(h.lastProgressAt),
    progressNote: h.progressNote ?? '',
    attempts: h.attempts,
    reassignments: h.reassignments,
    previousAgents: [...h.previousAgents],
    result: summary ? undefined : toValue(h.result),
    error:
      h.error === null
        ? undefined
        : create(pb.HookErrorInfoSchema, {
            message: h.error.message,
            code: h.error.code ?? '',
            name: h.error.name ?? '',
          }),
    abandonReason: h.abandonReason ?? '',
    version: h.version,
  });
}

// ---------------------------------------------------------------------------------------------
// Wire → facade arguments

/**
 * The name of a proto enum value, or `undefined` for UNSPECIFIED.
 * @throws InvalidArgumentError for a number the enum does not define.
 */
function enumName(e: Record<number, string>, value: number, field: string): string | undefined {
  if (value === 0) return undefined;
  const name = e[value];
  if (name === undefined) throw new InvalidArgumentError(field, `has no value ${value}`);
  return name;
}

function optional(s: string): string | undefined {
  return s === '' ? undefined : s;
}

function seconds(d: Duration | undefined): number | undefined {
  return d === undefined ? undefined : durationMs(d) / 1000;
}

/** Seconds of 0001-01-01T00:00:00Z and of 9999-12-31T23:59:59Z: a `Timestamp`'s range. */
const TIMESTAMP_MIN_SECONDS = -62_135_596_800n;
const TIMESTAMP_MAX_SECONDS = 253_402_300_799n;

/**
 * A task's deadline from a `Timestamp`, in epoch ms: its nanoseconds cut to the millisecond, not
 * rounded (a deadline less than 1 ms earlier). protobuf-es's `timestampMs` rounds, so the largest
 * valid Timestamp, 9999-12-31T23:59:59.999999999Z, became year 10000 and was refused as past
 * the latest deadline.
 * @throws InvalidArgumentError for a Timestamp outside its range (0001-01-01T00:00:00Z to
 *   9999-12-31T23:59:59.999999999Z, nanos 0 to 999,999,999), naming both ends.
 */
function deadlineMs(t: Timestamp): number {
  if (
    t.seconds < TIMESTAMP_MIN_SECONDS ||
    t.seconds > TIMESTAMP_MAX_SECONDS ||
    !(t.nanos >= 0 && t.nanos <= 999_999_999)
  ) {
    throw new InvalidArgumentError(
      'options.deadline',
      `must be a valid Timestamp, from 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z (nanos 0 to 999999999), got seconds ${t.seconds} nanos ${t.nanos}`,
    );
  }
  return Number(t.seconds) * 1000 + Math.floor(t.nanos / 1_000_000);
}

function budget(b: BudgetLimits | undefined): AgentBudgetConfig | undefined {
  if (b === undefined) return undefined;
  if (b.costWindow !== CostWindow.UNSPECIFIED) {
    throw new InvalidArgumentError(
      'budget.cost_window',
      'cannot be chosen at spawn; set it with BudgetService.SetBudgetLimits',
    );
  }
  return {
    ...(b.maxTokensPerHour === undefined ? {} : { maxTokensPerHour: b.maxTokensPerHour }),
    ...(b.maxCostPerDay === undefined ? {} : { maxCostPerDay: b.maxCostPerDay }),
    ...(b.warnAtPercent === undefined ? {} : { warnAtPercent: b.warnAtPercent }),
  };
}

/** A payload given as a `Value` or as JSON bytes (not both). */
function payloadOf(value: Value | undefined, json: Uint8Array, field: string): unknown {
  if (json.length > 0) {
    if (value !== undefined) {
      throw new InvalidArgumentError(`${field}_json`, `and ${field} are both set; set one`);
    }
    return parseJsonBytes(json, `${field}_json`);
  }
  return value === undefined ? undefined : fromValue(value, field);
}

function scheduleOptions(o: rpc.TaskOptions | undefined): ScheduleOptions {
  if (o === undefined) return {};
  const priority = enumName(pb.TaskPriority, o.priority, 'options.priority');
  const timeout = seconds(o.timeout);
  return {
    ...(priority === undefined ? {} : { priority: (o.priority - 1) as Priority }),
    ...(o.deadline === undefined ? {} : { deadline: deadlineMs(o.deadline) }),
    ...(timeout === undefined ? {} : { timeoutSeconds: timeout }),
    ...(o.maxAttempts === 0 ? {} : { maxAttempts: o.maxAttempts }),
    ...(o.tenant === '' ? {} : { tenant: o.tenant }),
  };
}

function drainOptions(d: Duration | undefined): { drainTimeoutSeconds?: number } {
  const s = seconds(d);
  return s === undefined ? {} : { drainTimeoutSeconds: s };
}

/** `fabric.v1.FabricService` over `fabric`: every method needs the admin credential. */
export function fabricService(
  fabric: AgentFabric,
  options: FabricServiceOptions = {},
): ServiceImplementation<typeof rpc.FabricService> {
  const maxWaitSeconds = options.maxWaitTaskSeconds ?? DEFAULT_MAX_WAIT_TASK_SECONDS;
  if (!(maxWaitSeconds > 0) || !Number.isFinite(maxWaitSeconds)) {
    throw new InvalidArgumentError('options.maxWaitTaskSeconds', 'must be a number > 0');
  }
  return {
    service: rpc.FabricService,
    caller: 'admin',
    unary: {
      spawnAgent: async (_caller, req) => {
        const heartbeat = enumName(pb.HeartbeatMode, req.heartbeatMode, 'heartbeat_mode');
        const limits = budget(req.budget);
        const a = await fabric.spawn({
          name: req.name,
          model: req.model,
          capabilities: req.capabilities,
          labels: req.labels,
          ...(req.poolId === '' ? {} : { poolId: req.poolId }),
          ...(req.executor === '' ? {} : { executor: req.executor }),
          ...(heartbeat === undefined
            ? {}
            : { heartbeat: heartbeat === 'AUTO' ? ('auto' as const) : ('manual' as const) }),
          ...(limits === undefined ? {} : { budget: limits }),
          ...(req.isolation === undefined ? {} : { isolation: req.isolation }),
        });
        return create(rpc.SpawnAgentResponseSchema, { spawned: spawned(a) });
      },
      terminateAgent: async (_caller, req) =>
        create(rpc.TerminateAgentResponseSchema, {
          agent: agentInfo(await fabric.terminate(req.agentId, drainOptions(req.drainTimeout))),
        }),
      getAgent: async (_caller, req) =>
        create(rpc.GetAgentResponseSchema, {
          agent: agentInfo(await fabric.getAgentInfo(req.agentId)),
        }),
      listAgents: async (_caller, req) => {
        const status = enumName(pb.AgentStatus, req.status, 'status') as AgentStatus | undefined;
        const poolId = optional(req.poolId);
        const agents = await fabric.listAgents({
          ...(status === undefined ? {} : { status }),
          ...(poolId === undefined ? {} : { poolId }),
        });
        const page = pageOf('agents', agents, (a) => [a.createdAt, a.id], {
          pageSize: req.pageSize,
          pageToken: req.pageToken,
        });
        return create(rpc.ListAgentsResponseSchema, {
          agents: page.items.map(agentInfo),
          nextPageToken: page.nextPageToken,
        });
      },
      scheduleTask: async (_caller, req, _signal, context) => {
        const payload = payloadOf(req.payload, req.payloadJson, 'payload');
        // The caller's trace context: the `task` span continues it (when tracing is on).
        const task = await withScheduleTraceContext(context?.traceContext, () =>
          fabric.schedule({
            agentId: req.agentId,
            taskType: req.taskType,
            payload,
            ...scheduleOptions(req.options),
            ...(req.pinned ? { pinned: true } : {}),
          }),
        );
        return create(rpc.ScheduleTaskResponseSchema, { task: taskInfo(task) });
      },
      scheduleTaskToPool: async (_caller, req, _signal, context) => {
        const payload = payloadOf(req.payload, req.payloadJson, 'payload');
        const task = await withScheduleTraceContext(context?.traceContext, () =>
          fabric.scheduleToPool(req.poolId, req.taskType, payload, scheduleOptions(req.options)),
        );
        return create(rpc.ScheduleTaskToPoolResponseSchema, { task: taskInfo(task) });
      },
      getTask: async (_caller, req) =>
        create(rpc.GetTaskResponseSchema, { task: taskInfo(await fabric.getTask(req.taskId)) }),
      listTasks: async (_caller, req) => {
        const status = enumName(pb.TaskStatus, req.status, 'status') as TaskStatus | undefined;
        const poolId = optional(req.poolId);
        const agentId = optional(req.agentId);
        const page = await fabric.listTasks({
          ...(status === undefined ? {} : { status }),
          ...(poolId === undefined ? {} : { poolId }),
          ...(agentId === undefined ? {} : { agentId }),
          pageSize: req.pageSize,
          pageToken: req.pageToken,
        });
        return create(rpc.ListTasksResponseSchema, {
          tasks: page.items.map((t) => taskInfo(t, req.summary)),
          nextPageToken: page.nextPageToken,
        });
      },
      waitTask: async (_caller, req, signal) => {
        const asked = seconds(req.timeout);
        if (asked !== undefined && !(asked > 0)) {
          throw new InvalidArgumentError('timeout', 'must be positive (unset for the maximum)');
        }
        const task = await fabric.waitForTask(req.taskId, {
          timeoutSeconds: Math.min(asked ?? maxWaitSeconds, maxWaitSeconds),
          signal,
        });
        return create(rpc.WaitTaskResponseSchema, { task: taskInfo(task) });
      },
      cancelTask: async (_caller, req) =>
        create(rpc.CancelTaskResponseSchema, {
          task: taskInfo(await fabric.cancelTask(req.taskId, optional(req.reason))),
        }),
      getStats: async () => {
        const s = await fabric.getFabricStats();
        // Entries, not assignments: a pool may be called `__proto__`.
        const pools = Object.fromEntries(
          Object.entries(s.pools).map(([id, p]) => [
            id,
            create(pb.PoolStatsSchema, {
              agents: p.agents,
              acceptingAgents: p.acceptingAgents,
              healthyAgents: p.healthyAgents,
              queuedTasks: p.queuedTasks,
              runningTasks: p.runningTasks,
              completedTasks: BigInt(p.completedTasks),
              failedTasks: BigInt(p.failedTasks),
            }),
          ]),
        );
        return create(rpc.GetStatsResponseSchema, {
          activeAgents: s.activeAgents,
          agentsByStatus: { ...s.agentsByStatus },
          pendingTasks: s.pendingTasks,
          runningTasks: s.runningTasks,
          completedTasks: BigInt(s.completedTasks),
          failedTasks: BigInt(s.failedTasks),
          timedOutTasks: BigInt(s.timedOutTasks),
          cancelledTasks: BigInt(s.cancelledTasks),
          pools,
        });
      },
      createPool: async (_caller, req) => {
        const poolBudget = budget(req.budget);
        const agentBudget = budget(req.agentBudget);
        const p = await fabric.createPool({
          poolId: req.poolId,
          model: req.model,
          capabilities: req.capabilities,
          labels: req.labels,
          ...(req.name === '' ? {} : { name: req.name }),
          ...(req.minAgents === undefined ? {} : { minAgents: req.minAgents }),
          ...(req.maxAgents === undefined ? {} : { maxAgents: req.maxAgents }),
          ...(req.executor === '' ? {} : { executor: req.executor }),
          ...(req.provider === '' ? {} : { provider: req.provider }),
          ...(poolBudget === undefined ? {} : { budget: poolBudget }),
          ...(agentBudget === undefined ? {} : { agentBudget }),
        });
        return create(rpc.CreatePoolResponseSchema, {
          pool: poolInfo(p),
          spawned: p.spawned.map(spawned),
        });
      },
      scalePool: async (_caller, req) => {
        const change = await fabric.scalePool(req.poolId, req.targetSize);
        return create(rpc.ScalePoolResponseSchema, {
          pool: poolInfo(change.pool),
          spawned: change.spawned.map(spawned),
        });
      },
      deletePool: async (_caller, req) => {
        await fabric.deletePool(req.poolId, drainOptions(req.drainTimeout));
        return create(rpc.DeletePoolResponseSchema);
      },
      getPool: async (_caller, req) =>
        create(rpc.GetPoolResponseSchema, { pool: poolInfo(await fabric.getPool(req.poolId)) }),
      listPools: async () =>
        create(rpc.ListPoolsResponseSchema, { pools: (await fabric.listPools()).map(poolInfo) }),
      createHook: async (_caller, req) => {
        const hook = await fabric.createHook({
          agentId: req.agentId,
          workItem: fromValue(req.workItem, 'work_item'),
          ...(req.branch === '' ? {} : { branch: req.branch }),
        });
        return create(rpc.CreateHookResponseSchema, { hook: hookInfo(hook) });
      },
      getHook: async (_caller, req) =>
        create(rpc.FabricServiceGetHookResponseSchema, {
          hook: hookInfo(await fabric.getHook(req.hookId)),
        }),
      listHooks: async (_caller, req) => {
        const status = enumName(pb.HookStatus, req.status, 'status') as HookStatus | undefined;
        const agentId = optional(req.agentId);
        const hooks = await fabric.listHooks({
          ...(status === undefined ? {} : { status }),
          ...(agentId === undefined ? {} : { agentId }),
        });
        const page = pageOf('hooks', hooks, (h) => [h.createdAt, h.hookId], {
          pageSize: req.pageSize,
          pageToken: req.pageToken,
        });
        return create(rpc.ListHooksResponseSchema, {
          hooks: page.items.map((h) => hookInfo(h, req.summary)),
          nextPageToken: page.nextPageToken,
        });
      },
      reassignHook: async (_caller, req) =>
        create(rpc.ReassignHookResponseSchema, {
          hook: hookInfo(await fabric.reassignHook(req.hookId, req.agentId)),
        }),
    },
  };
}

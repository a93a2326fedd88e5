/**
 * The gRPC ingress of the agent protocol (proto/fabric/v1/agent.proto): heartbeat, claim and
 * finish tasks, and run the work on the agent's hook, for agents in any language. Each call is
 * authenticated from its `authorization: Bearer <credential>` metadata and acts as exactly that
 * agent (see rpc-call.ts for authentication, decoding and error mapping).
 *
 * The credential is checked before the request is read (see auth-interceptor.ts) and again
 * before it is decoded (grpc-definition.ts): without a valid one the answer is UNAUTHENTICATED
 * whatever the bytes; with one, bytes that are not a valid message (or nest deeper than the
 * decoder's recursion limit) and `Value`s that are not JSON (NaN, Infinity) are
 * INVALID_ARGUMENT with `FABRIC_ERR_INVALID_ARGUMENT`.
 *
 * @module
 */
import { create } from '@bufbuild/protobuf';
import { InvalidArgumentError } from '../errors.js';
import type { AgentFabric } from '../fabric.js';
import type { Hook as FabricHook } from '../hooks/hook.js';
import type { EndedTask as FabricEndedTask } from '../scheduler/remote-executor.js';
import {
  ActivateHookResponseSchema,
  AgentService,
  ClaimTaskResponseSchema,
  CompleteHookResponseSchema,
  CompleteTaskResponseSchema,
  EndedTaskSchema,
  FailHookResponseSchema,
  FailTaskResponseSchema,
  GetHookResponseSchema,
  HeartbeatResponseSchema,
  HookErrorSchema,
  HookSchema,
  RecordHookProgressResponseSchema,
  RecordUsageResponseSchema,
  ReportProgressResponseSchema,
  TaskSchema,
  type EndedTask,
  type Hook,
} from '../gen/fabric/v1/agent_pb.js';
import { grpcDefinition } from './grpc-definition.js';
import { fromValue, toValue, type CallContext, type ServiceImplementation } from './rpc-call.js';

/** Options of {@link agentService}. */
export interface AgentServiceOptions {
  /** Longest `ClaimTask` wait. @default 300 */
  maxClaimWaitSeconds?: number;
}

/** The grpc-js definition of `fabric.v1.AgentService` (for clients in this process too). */
export const AGENT_SERVICE_DEFINITION = grpcDefinition(AgentService);

function hookMessage(h: FabricHook): Hook {
  return create(HookSchema, {
    hookId: h.hookId,
    agentId: h.agentId,
    status: h.status,
    workItem: toValue(h.workItem),
    branch: h.branch ?? '',
    path: h.worktreePath ?? '',
    result: toValue(h.result ?? null),
    ...(h.error === null
      ? {}
      : {
          error: create(HookErrorSchema, {
            code: h.error.code ?? '',
            message: h.error.message,
            name: h.error.name ?? '',
          }),
        }),
  });
}

/**
 * The agent's not-yet-told notices of tasks the fabric ended while it held them; they are put
 * back when the answer carrying them is not written.
 */
function endedTasks(fabric: AgentFabric, agentId: string, context?: CallContext): EndedTask[] {
  const notices = fabric.scheduler.takeEndedTasks(agentId);
  if (notices.length === 0) return [];
  context?.onUndelivered(() => fabric.scheduler.restoreEndedTasks(agentId, notices));
  return notices.map((n: FabricEndedTask) => create(EndedTaskSchema, n));
}

/**
 * Longest margin a `ClaimTask` keeps before the call's deadline: the wait ends that much
 * earlier, so a task handed out at its very end still has time to travel before the client
 * gives up on the call.
 */
export const CLAIM_DEADLINE_MARGIN_MS = 250;

/**
 * How long a claim waits: what the agent asked, at most `maxWait`, and ending before the call's
 * deadline by a fifth of the time left (at most {@link CLAIM_DEADLINE_MARGIN_MS}).
 */
export function claimWaitSeconds(
  requested: number,
  maxWait: number,
  deadline = Number.POSITIVE_INFINITY,
): number {
  const wait = Math.min(maxWait, Math.max(0, Number.isNaN(requested) ? 0 : requested));
  const left = deadline - Date.now();
  if (left === Number.POSITIVE_INFINITY) return wait;
  const usable = left - Math.min(CLAIM_DEADLINE_MARGIN_MS, left / 5);
  return Math.max(0, Math.min(wait, usable / 1000));
}

/** Longest `RecordHookProgress` note, as over MCP (`hook_progress`). */
export const MAX_HOOK_NOTE_CHARS = 4096;

/** `fabric.v1.AgentService` over `fabric`: every method acts as the calling agent. */
export function agentService(
  fabric: AgentFabric,
  options: AgentServiceOptions = {},
): ServiceImplementation<typeof AgentService> {
  const maxWait = options.maxClaimWaitSeconds ?? 300;
  return {
    service: AgentService,
    caller: 'agent',
    unary: {
      heartbeat: async ({ id: agentId }, _req, _signal, context) => {
        const info = await fabric.heartbeat(agentId);
        return create(HeartbeatResponseSchema, {
          agentId: info.id,
          status: info.status,
          lastHeartbeatMs: BigInt(info.lastHeartbeat),
          endedTasks: endedTasks(fabric, agentId, context),
        });
      },
      claimTask: async ({ id: agentId }, req, signal, context) => {
        // With ack_seconds, the fabric gives the task back unless the agent acknowledges it in
        // time (its answer may have been dropped by the client after it was written).
        const a = await fabric.claimTask(agentId, {
          waitSeconds: claimWaitSeconds(req.waitSeconds, maxWait, context?.deadline),
          signal,
          ackSeconds: req.ackSeconds,
        });
        // A task whose answer is not written (the call ended first) goes back at once.
        if (a !== undefined) {
          context?.onUndelivered(() => void fabric.unclaimTask(agentId, a.taskId, a.attempt));
        }
        return create(ClaimTaskResponseSchema, {
          ...(a === undefined
            ? {}
            : {
                task: create(TaskSchema, {
                  taskId: a.taskId,
                  attempt: a.attempt,
                  taskType: a.taskType,
                  payload: toValue(a.payload),
                  timeoutSeconds: a.timeoutSeconds,
                  deadlineMs: BigInt(a.deadline ?? 0),
                }),
              }),
        });
      },
      completeTask: async ({ id: agentId }, req) => {
        const result = fromValue(req.result, 'result');
        await fabric.completeTask(agentId, req.taskId, req.attempt, result);
        return create(CompleteTaskResponseSchema);
      },
      failTask: async ({ id: agentId }, req) => {
        await fabric.failTask(
          agentId,
          req.taskId,
          req.attempt,
          // Empty code or message (unset in proto3): the fabric's defaults, as over MCP.
          { code: req.code, message: req.message },
          { retry: req.retry },
        );
        return create(FailTaskResponseSchema);
      },
      reportProgress: async ({ id: agentId }, req, _signal, context) => {
        const progress = fromValue(req.progress, 'progress');
        await fabric.reportProgress(agentId, req.taskId, req.attempt, progress);
        return create(ReportProgressResponseSchema, {
          endedTasks: endedTasks(fabric, agentId, context),
        });
      },
      recordUsage: async ({ id: agentId }, req) => {
        if (req.tokens > BigInt(Number.MAX_SAFE_INTEGER) || req.tokens < 0n) {
          throw new InvalidArgumentError(
            'tokens',
            `must be a non-negative safe integer, got ${req.tokens.toString()}`,
          );
        }
        await fabric.recordReportedUsage(agentId, { tokens: Number(req.tokens), cost: req.cost });
        return create(RecordUsageResponseSchema);
      },
      getHook: async ({ id: agentId }) => {
        const h = await fabric.hookFor(agentId);
        return create(GetHookResponseSchema, h === undefined ? {} : { hook: hookMessage(h) });
      },
      activateHook: async ({ id: agentId }, req) =>
        create(ActivateHookResponseSchema, {
          hook: hookMessage(await fabric.activateHook(agentId, req.hookId)),
        }),
      recordHookProgress: async ({ id: agentId }, req) => {
        if (req.note.length > MAX_HOOK_NOTE_CHARS) {
          throw new InvalidArgumentError(
            'note',
            `is ${req.note.length} characters, more than ${MAX_HOOK_NOTE_CHARS}`,
          );
        }
        const hook = await fabric.recordHookProgress(agentId, req.hookId, req.note);
        return create(RecordHookProgressResponseSchema, { hook: hookMessage(hook) });
      },
      completeHook: async ({ id: agentId }, req) => {
        const result = fromValue(req.result, 'result');
        return create(CompleteHookResponseSchema, {
          hook: hookMessage(await fabric.completeHook(agentId, req.hookId, result)),
        });
      },
      failHook: async ({ id: agentId }, req) =>
        create(FailHookResponseSchema, {
          hook: hookMessage(
            await fabric.failHook(agentId, req.hookId, { code: req.code, message: req.message }),
          ),
        }),
    },
  };
}

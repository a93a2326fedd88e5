/**
 * `fabric.v1.EventService` (proto/fabric/v1/events.proto): one server stream of what happens in
 * the fabric, for dashboards — agents (lifecycle events), tasks (scheduler events), approvals
 * (the approval manager's, starting with the ones pending), budget alerts (the budget
 * manager's `warning`/`exhausted`) and wall-clock steps (its `clockStep`), and tool calls as they end (the gateway's `call.ended`, with
 * the decision and deciding rule of their audit line; only when the service is given the
 * gateway), from the typed emitters of src/events.ts.
 *
 * Listeners run synchronously inside the emitting call (spawn, schedule, approve, record
 * usage…), so they only build a message and hand it to the stream's bounded `send`; a slow
 * client never slows the fabric, it ends its own stream with RESOURCE_EXHAUSTED (see
 * rpc-call.ts). Every listener is removed when the stream ends, however it ends.
 *
 * A task event's `errorCode` and `errorMessage` are what the failing agent sent, up to
 * `maxTaskResultBytes` each: they are cut to 1,024 characters (marked `…`) here, as errors are on
 * every wire (`cutWireText`); the whole error stays on the task (`GetTask`, `ListTasks`).
 *
 * @module
 */
import { create } from '@bufbuild/protobuf';
import { timestampFromMs, timestampNow } from '@bufbuild/protobuf/wkt';
import type { AgentInfo } from '../agent.js';
import type { BudgetClockStep } from '../budget/budget-clock.js';
import type { BudgetAlert } from '../budget/scope-usage.js';
import { cutWireText, InvalidArgumentError } from '../errors.js';
import type { AgentFabric } from '../fabric.js';
import type { ApprovalEvent } from '../gen/fabric/v1/approval_pb.js';
import {
  AgentEventKind,
  AgentEventSchema,
  BudgetAlertEventSchema,
  BudgetAlertKind,
  BudgetClockStepEventSchema,
  BudgetLimitKind,
  EventService,
  EventServiceWatchResponseSchema,
  EventTopic,
  TaskEventKind,
  TaskEventSchema,
  ToolCallEventSchema,
  type EventServiceWatchResponse,
} from '../gen/fabric/v1/events_pb.js';
import type { ToolGateway } from '../gateway/gateway.js';
import type { EndedToolCall } from '../gateway/tool-call-pipeline.js';
import type { Task, TaskError } from '../task.js';
import { subscribeApprovals } from './approval-service.js';
import { grpcDefinition } from './grpc-definition.js';
import {
  forwardEvents,
  mappedSender,
  sequencedSender,
  type ServiceImplementation,
} from './rpc-call.js';

/** The grpc-js definition of `fabric.v1.EventService` (for clients). */
export const EVENT_SERVICE_DEFINITION = grpcDefinition(EventService);

const ALL_TOPICS: readonly EventTopic[] = [
  EventTopic.AGENTS,
  EventTopic.TASKS,
  EventTopic.APPROVALS,
  EventTopic.BUDGETS,
  EventTopic.TOOL_CALLS,
];

/** The topics of a request: every one when none is named. */
function topicsOf(requested: readonly EventTopic[]): ReadonlySet<EventTopic> {
  for (const t of requested) {
    if (!ALL_TOPICS.includes(t)) {
      throw new InvalidArgumentError('topics', `holds ${t}, which is not an EventTopic`);
    }
  }
  return new Set(requested.length === 0 ? ALL_TOPICS : requested);
}

type Event = EventServiceWatchResponse['event'];

function agentEvent(kind: AgentEventKind, a: AgentInfo, previous?: string): Event {
  return {
    case: 'agent',
    value: create(AgentEventSchema, {
      kind,
      agentId: a.id,
      name: a.name,
      status: a.status,
      previousStatus: previous ?? '',
      poolId: a.poolId ?? '',
    }),
  };
}

function taskEvent(kind: TaskEventKind, t: Task, reason?: TaskError): Event {
  const error = reason ?? t.error;
  return {
    case: 'task',
    value: create(TaskEventSchema, {
      kind,
      taskId: t.id,
      taskType: t.taskType,
      status: t.status,
      agentId: t.agentId ?? '',
      poolId: t.poolId ?? '',
      assignedAgentId: t.assignedAgentId ?? '',
      attempt: t.attempt,
      errorCode: cutWireText(error?.code ?? ''),
      errorMessage: cutWireText(error?.message ?? ''),
    }),
  };
}

function budgetEvent(kind: BudgetAlertKind, a: BudgetAlert): Event {
  return {
    case: 'budgetAlert',
    value: create(BudgetAlertEventSchema, {
      kind,
      scope: a.scope,
      limit: a.limit === 'tokens' ? BudgetLimitKind.TOKENS : BudgetLimitKind.COST,
      used: a.used,
      max: a.max,
      percentUsed: a.percentUsed,
    }),
  };
}

function clockStepEvent(step: BudgetClockStep): Event {
  return {
    case: 'clockStep',
    value: create(BudgetClockStepEventSchema, {
      stepMs: step.stepMs,
      at: timestampFromMs(step.at),
    }),
  };
}

function toolCallEvent(c: EndedToolCall): Event {
  return {
    case: 'toolCall',
    value: create(ToolCallEventSchema, {
      agentId: c.agentId,
      tool: c.tool,
      decision: c.decision,
      rule: c.rule ?? '',
      outcome: c.outcome,
      errorCode: c.code ?? '',
      durationMs: Math.round(c.durationMs * 1000) / 1000,
      tokens: c.tokens ?? 0,
      cost: c.cost ?? 0,
    }),
  };
}

/**
 * Makes room on every emitter a watch stream listens to (EventService and ApprovalService
 * `Watch`: one listener per event each) for `streams` more watches, the stream cap of the door
 * that calls it, so a sidecar within its configured caps prints no
 * MaxListenersExceededWarning (two doors at their default 64 streams each are past Node's
 * threshold of 100); a leak beyond the caps still does. Returns what takes the room back.
 */
export function reserveWatchListeners(
  fabric: AgentFabric,
  gateway: ToolGateway | undefined,
  streams: number,
): () => void {
  const undo = [
    fabric.lifecycle.events.raiseMaxListeners(streams),
    fabric.scheduler.events.raiseMaxListeners(streams),
    fabric.budgets.raiseMaxListeners(streams),
    fabric.approvals.raiseMaxListeners(streams),
    ...(gateway === undefined ? [] : [gateway.toolCalls.raiseMaxListeners(streams)]),
  ];
  return () => {
    for (const u of undo) u();
  };
}

/**
 * `fabric.v1.EventService` over `fabric`, for the administrator; tool calls come from `gateway`
 * (without one, the `TOOL_CALLS` topic is accepted and stays quiet).
 */
export function eventService(
  fabric: AgentFabric,
  gateway?: ToolGateway,
): ServiceImplementation<typeof EventService> {
  return {
    service: EventService,
    caller: 'admin',
    unary: {},
    serverStream: {
      watch: async (_caller, req, signal, send) => {
        const topics = topicsOf(req.topics);
        const emit = sequencedSender(send, (event: Event, sequence) =>
          create(EventServiceWatchResponseSchema, { sequence, time: timestampNow(), event }),
        );
        await forwardEvents(signal, (guard) => {
          const undo: (() => void)[] = [];
          if (topics.has(EventTopic.AGENTS)) {
            const lifecycle = fabric.lifecycle.events;
            const spawned = guard((a: AgentInfo) => emit(agentEvent(AgentEventKind.SPAWNED, a)));
            const changed = guard((a: AgentInfo, previous: string) =>
              emit(agentEvent(AgentEventKind.STATUS_CHANGED, a, previous)),
            );
            const terminated = guard((a: AgentInfo) =>
              emit(agentEvent(AgentEventKind.TERMINATED, a)),
            );
            lifecycle.on('agent.spawned', spawned);
            lifecycle.on('agent.status', changed);
            lifecycle.on('agent.terminated', terminated);
            undo.push(() => {
              lifecycle.off('agent.spawned', spawned);
              lifecycle.off('agent.status', changed);
              lifecycle.off('agent.terminated', terminated);
            });
          }
          if (topics.has(EventTopic.TASKS)) {
            const scheduler = fabric.scheduler.events;
            const on = (
              name: 'task.scheduled' | 'task.started' | 'task.retried' | 'task.finished',
              kind: TaskEventKind,
            ): void => {
              const listener = guard((t: Task, reason?: TaskError) =>
                emit(taskEvent(kind, t, reason)),
              );
              scheduler.on(name, listener);
              undo.push(() => scheduler.off(name, listener));
            };
            on('task.scheduled', TaskEventKind.SCHEDULED);
            on('task.started', TaskEventKind.STARTED);
            on('task.retried', TaskEventKind.RETRIED);
            on('task.finished', TaskEventKind.FINISHED);
          }
          if (topics.has(EventTopic.BUDGETS)) {
            const budgets = fabric.budgets;
            const warning = guard((a: BudgetAlert) =>
              emit(budgetEvent(BudgetAlertKind.WARNING, a)),
            );
            const exhausted = guard((a: BudgetAlert) =>
              emit(budgetEvent(BudgetAlertKind.EXHAUSTED, a)),
            );
            const stepped = guard((step: BudgetClockStep) => emit(clockStepEvent(step)));
            budgets.on('warning', warning);
            budgets.on('exhausted', exhausted);
            budgets.on('clockStep', stepped);
            undo.push(() => {
              budgets.off('warning', warning);
              budgets.off('exhausted', exhausted);
              budgets.off('clockStep', stepped);
            });
          }
          if (topics.has(EventTopic.APPROVALS)) {
            undo.push(
              subscribeApprovals(
                fabric.approvals,
                guard,
                mappedSender(emit, (value: ApprovalEvent): Event => ({ case: 'approval', value })),
              ),
            );
          }
          if (topics.has(EventTopic.TOOL_CALLS) && gateway !== undefined) {
            const calls = gateway.toolCalls;
            const ended = guard((c: EndedToolCall) => emit(toolCallEvent(c)));
            calls.on('call.ended', ended);
            undo.push(() => calls.off('call.ended', ended));
          }
          return () => {
            for (const u of undo) u();
          };
        });
      },
    },
  };
}

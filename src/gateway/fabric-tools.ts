/**
 * The fabric's own tools, so an agent connected only over MCP can take part: heartbeat, claim a
 * task, report progress, complete or fail it, record model usage, and run the work on its hook. They run through the same
 * policy pipeline as upstream tools.
 *
 * @module
 */
import type { CallToolResult, Tool } from '@modelcontextprotocol/sdk/types.js';
import { z } from 'zod';
import { MAX_USAGE_AMOUNT } from '../budget/budget-manager.js';
import { InvalidArgumentError } from '../errors.js';
import { MAX_CLAIM_ACK_SECONDS } from '../scheduler/claim-leases.js';
import { bigintAsNumber } from '../validate.js';
import type { GatewayBackend } from './backend.js';
import { markReachedUpstream } from './tool-call-pipeline.js';

/** Prefix of the fabric's own tool names. */
export const FABRIC_TOOL_PREFIX = 'fabric__';

/** What a fabric tool handler gets. */
export interface FabricToolCall {
  agentId: string;
  /** The caller's pool, if it is in one. */
  poolId?: string | undefined;
  args: Record<string, unknown>;
  signal: AbortSignal;
  /** Set when the call runs as an MCP task: where a fabric task it schedules is recorded. */
  task?: FabricTaskLink | undefined;
}

/** The MCP task a `fabric__schedule_task` call runs as. */
export interface FabricTaskLink {
  /** The fabric task the call scheduled before a restart: wait for it, schedule nothing. */
  readonly fabricTaskId?: string | undefined;
  /** The call scheduled the fabric task `id` (now in `status`). */
  scheduled(id: string, status: string): void;
}

/** One fabric tool: its listing and its handler. */
export interface FabricTool {
  readonly tool: Tool;
  /**
   * A usage report: never refused for budget (usage that happened is counted even past a limit,
   * as `recordUsage` does), and its answer reaches the agent even when its tokens do not fit
   * (they are then not charged): `record_usage` confirms usage it already recorded, and an agent
   * that never saw the confirmation would report the same usage again.
   */
  readonly alwaysDelivered?: boolean;
  call(backend: GatewayBackend, call: FabricToolCall): Promise<CallToolResult>;
}

const attemptArgs = {
  taskId: z.string().min(1),
  attempt: z.number().int().positive(),
};

/** A tool result holding `value`; a `bigint` in it (see `bigintAsNumber`) as the nearest number. */
function json(value: unknown): CallToolResult {
  let big = false;
  const text = JSON.stringify(value ?? null, (key, v: unknown) => {
    if (typeof v !== 'bigint') return v;
    big = true;
    return bigintAsNumber(key, v);
  });
  return {
    content: [{ type: 'text', text }],
    structuredContent: { result: big ? (JSON.parse(text) as unknown) : (value ?? null) },
  };
}

function parse<T extends z.ZodType>(tool: string, schema: T, args: unknown): z.output<T> {
  const result = schema.safeParse(args);
  if (!result.success) {
    const issue = result.error.issues[0];
    throw new InvalidArgumentError(
      `${tool}.${issue?.path.join('.') ?? ''}`,
      issue?.message ?? 'is invalid',
    );
  }
  return result.data;
}

function define<T extends z.ZodObject>(
  name: string,
  description: string,
  schema: T,
  run: (
    backend: GatewayBackend,
    agentId: string,
    args: z.output<T>,
    signal: AbortSignal,
  ) => unknown,
): FabricTool {
  const full = FABRIC_TOOL_PREFIX + name;
  const inputSchema = z.toJSONSchema(schema, { io: 'input' }) as Tool['inputSchema'];
  delete (inputSchema as Record<string, unknown>).$schema;
  return {
    tool: {
      name: full,
      description,
      inputSchema,
      outputSchema: { type: 'object', properties: { result: {} } },
    },
    async call(backend, { agentId, args, signal }) {
      return json(await run(backend, agentId, parse(full, schema, args), signal));
    },
  };
}

/** The fabric tools, keyed by downstream name. */
export const FABRIC_TOOLS: ReadonlyMap<string, FabricTool> = new Map(
  [
    define(
      'heartbeat',
      "Tell the fabric this agent is alive. Call it at least every heartbeat interval. The answer's endedTasks lists the tasks you hold that the fabric ended (cancelled, timed out): stop working on them.",
      z.object({}).strict(),
      async (b, agentId) => ({
        ...(((await b.heartbeat(agentId)) ?? { ok: true }) as object),
        endedTasks: b.takeEndedTasks(agentId),
      }),
    ),
    define(
      'claim_task',
      'Claim the next task queued for this agent (or its pool). Waits up to waitSeconds for one; returns null when none arrived. Complete or fail it with the returned taskId and attempt. With ackSeconds (a delivery lease, at most 3600), the task goes back to its queue, the attempt not counted, unless you acknowledge it within that time with report_progress (empty progress will do), complete_task or fail_task naming its attempt: use it when an answer can be lost (your client gives up on the call, the connection drops).',
      z
        .object({
          waitSeconds: z.number().min(0).max(300).optional(),
          ackSeconds: z.number().min(0).max(MAX_CLAIM_ACK_SECONDS).optional(),
        })
        .strict(),
      (b, agentId, args, signal) =>
        b.claimTask(agentId, {
          ...(args.waitSeconds === undefined ? {} : { waitSeconds: args.waitSeconds }),
          ...(args.ackSeconds === undefined ? {} : { ackSeconds: args.ackSeconds }),
          signal,
        }),
    ),
    define(
      'complete_task',
      'Report a claimed task as done, with its result.',
      z.object({ ...attemptArgs, result: z.unknown().optional() }).strict(),
      (b, agentId, a) => b.completeTask(agentId, a.taskId, a.attempt, a.result) ?? { ok: true },
    ),
    define(
      'fail_task',
      'Report a claimed task as failed. Without a message (or with an empty one) it is "failed"; without a code, FABRIC_ERR_TASK_EXECUTION.',
      z
        .object({ ...attemptArgs, code: z.string().optional(), message: z.string().optional() })
        .strict(),
      (b, agentId, a) =>
        b.failTask(agentId, a.taskId, a.attempt, {
          ...(a.code === undefined ? {} : { code: a.code }),
          message: a.message ?? '',
        }) ?? { ok: true },
    ),
    define(
      'report_progress',
      "Report progress of a claimed task (any JSON; without progress it only acknowledges a task claimed with ackSeconds). The answer's endedTasks lists the tasks you hold that the fabric ended (cancelled, timed out): stop working on them.",
      z.object({ ...attemptArgs, progress: z.unknown().optional() }).strict(),
      async (b, agentId, a) => {
        await b.reportProgress(agentId, a.taskId, a.attempt, a.progress);
        return { ok: true, endedTasks: b.takeEndedTasks(agentId) };
      },
    ),
    define(
      'release_task',
      'Give back a claimed task you will not run (you are stopping): it is queued again and this attempt does not count. released is false when the task has moved on.',
      z.object(attemptArgs).strict(),
      (b, agentId, a) => ({ released: b.releaseTask(agentId, a.taskId, a.attempt) }),
    ),
    {
      ...define(
        'record_usage',
        'Record model usage (tokens, cost) this agent spent outside tool calls, against its budget.',
        z
          .object({
            tokens: z.number().int().min(0).max(MAX_USAGE_AMOUNT),
            cost: z.number().min(0).max(MAX_USAGE_AMOUNT),
          })
          .strict(),
        (b, agentId, a) =>
          b.recordUsage(agentId, { tokens: a.tokens, cost: a.cost }) ?? { ok: true },
      ),
      alwaysDelivered: true,
    },
    define(
      'get_hook',
      "The work on this agent's hook: its ACTIVE hook, else its oldest PENDING one, or null. If there is work on your hook, you run it: activate it, work in its worktree, then complete or fail it.",
      z.object({}).strict(),
      (b, agentId) => hooks(b).hookFor!(agentId),
    ),
    define(
      'activate_hook',
      'Pick up the PENDING hook returned by get_hook (it becomes ACTIVE).',
      z.object({ hookId: z.string().min(1) }).strict(),
      (b, agentId, a) => hooks(b).activateHook!(agentId, a.hookId),
    ),
    define(
      'hook_progress',
      'Record progress on your ACTIVE hook, with an optional note (an empty one is no note); hooks without progress are flagged stale.',
      z.object({ hookId: z.string().min(1), note: z.string().max(4096).optional() }).strict(),
      (b, agentId, a) => hooks(b).recordHookProgress!(agentId, a.hookId, a.note),
    ),
    define(
      'complete_hook',
      'Complete your ACTIVE hook with its result.',
      z.object({ hookId: z.string().min(1), result: z.unknown().optional() }).strict(),
      (b, agentId, a) => hooks(b).completeHook!(agentId, a.hookId, a.result),
    ),
    define(
      'fail_hook',
      'Fail your hook; it may be reassigned within its retry limit. Without a message (or with an empty one) it is "failed".',
      z
        .object({
          hookId: z.string().min(1),
          code: z.string().optional(),
          message: z.string().optional(),
        })
        .strict(),
      (b, agentId, a) =>
        hooks(b).failHook!(agentId, a.hookId, {
          ...(a.code === undefined ? {} : { code: a.code }),
          message: a.message ?? '',
        }),
    ),
  ].map((t) => [t.tool.name, t]),
);

const SCHEDULE_NAME = `${FABRIC_TOOL_PREFIX}schedule_task`;
const scheduleArgs = z
  .object({
    taskType: z.string().min(1).max(256),
    payload: z.unknown().optional(),
    timeoutSeconds: z.number().positive().max(86_400).optional(),
  })
  .strict();
const scheduleSchema = z.toJSONSchema(scheduleArgs, { io: 'input' }) as Tool['inputSchema'];
delete (scheduleSchema as Record<string, unknown>).$schema;

/**
 * `fabric__schedule_task` (served with `gateway.poolScheduling`): queues fabric work to the
 * caller's own pool and waits for it to end; its answer is the fabric task (`taskId`, `status`,
 * `result`, `error`), an `isError` result unless it `COMPLETED`. Aborting the call (a cancelled
 * request or MCP task) cancels the fabric task; once the fabric task is scheduled, the call is
 * charged its whole cost however it ends (see `markReachedUpstream`). Sent as an MCP task, the
 * agent polls it with `tasks/*` instead of holding the request open.
 */
export const SCHEDULE_TOOL: FabricTool = {
  tool: {
    name: SCHEDULE_NAME,
    description:
      'Schedule work to your own pool and wait for its result (send it as an MCP task to poll with tasks/get and fetch with tasks/result instead). The answer is the fabric task: taskId, status, result, error. Cancelling the call or task cancels the work.',
    inputSchema: scheduleSchema,
    outputSchema: { type: 'object', properties: { result: {} } },
  },
  async call(backend, { agentId, poolId, args, signal, task }) {
    const a = parse(SCHEDULE_NAME, scheduleArgs, args);
    const b = scheduling(backend);
    let id = task?.fabricTaskId;
    if (id === undefined) {
      if (poolId === undefined) {
        throw new InvalidArgumentError(
          SCHEDULE_NAME,
          'this agent is in no pool: it can schedule work only to its own pool',
        );
      }
      // A call cancelled before now queues nothing (and, having had no effect, costs nothing).
      if (signal.aborted) throw signal.reason;
      const scheduled = await b.scheduleToOwnPool(agentId, poolId, {
        taskType: a.taskType,
        ...(a.payload === undefined ? {} : { payload: a.payload }),
        ...(a.timeoutSeconds === undefined ? {} : { timeoutSeconds: a.timeoutSeconds }),
      });
      id = scheduled.id;
      task?.scheduled(id, scheduled.status);
    }
    let done;
    try {
      done = await b.waitForFabricTask(id, signal);
    } catch (error) {
      if (signal.aborted) {
        const reason = 'the MCP call or task that scheduled it was cancelled';
        await b.cancelFabricTask(id, reason).catch(() => undefined);
      }
      // The work was queued (a worker of the pool may have claimed and run it; a cancel only
      // stops it from here on): the call had its effect, so it is charged as a plain call that
      // reached its upstream — else an agent could cancel every call once its work was queued
      // and spend nothing of its cost budget. An abort reason may be a string: made an object
      // that can be marked.
      const thrown = typeof error === 'object' && error !== null ? error : new Error(String(error));
      markReachedUpstream(thrown);
      throw thrown;
    }
    const answer = json({
      taskId: done.id,
      status: done.status,
      result: done.result ?? null,
      error: done.error ?? null,
    });
    return done.status === 'COMPLETED' ? answer : { ...answer, isError: true };
  },
};

/** The backend's scheduling methods, or an error saying they are not served. */
function scheduling(
  b: GatewayBackend,
): Required<
  Pick<
    GatewayBackend,
    'scheduleToOwnPool' | 'waitForFabricTask' | 'fabricTask' | 'cancelFabricTask'
  >
> {
  if (
    b.scheduleToOwnPool === undefined ||
    b.waitForFabricTask === undefined ||
    b.fabricTask === undefined ||
    b.cancelFabricTask === undefined
  ) {
    throw new InvalidArgumentError(SCHEDULE_NAME, 'is not served by this backend');
  }
  return b as never;
}

/** The backend, if it serves hooks. */
function hooks(
  b: GatewayBackend,
): Required<
  Pick<
    GatewayBackend,
    'hookFor' | 'activateHook' | 'completeHook' | 'failHook' | 'recordHookProgress'
  >
> {
  if (
    b.hookFor === undefined ||
    b.activateHook === undefined ||
    b.completeHook === undefined ||
    b.failHook === undefined ||
    b.recordHookProgress === undefined
  ) {
    throw new InvalidArgumentError('hooks', 'are not configured on this sidecar');
  }
  return b as never;
}

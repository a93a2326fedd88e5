/**
 * Task-augmented tool calls (MCP 2025-11-25 "Tasks", experimental): the gateway is the
 * receiver. A `tools/call` sent with `task` is answered at once with a task handle; the call
 * runs through the same pipeline as a plain call (policy, approval wait, budget, audit), and
 * the agent polls `tasks/get`, fetches `tasks/result`, lists with `tasks/list` and cancels with
 * `tasks/cancel`.
 *
 * Every task belongs to the one agent that created it: any other agent asking for its id gets
 * the same answer as for an id that never existed. A task lives `ttl` ms from its creation
 * (the client's request, bounded by `maxTtlMs`); then it is forgotten (a call still running is
 * cancelled). Records are plain snapshots in a {@link Collection}, so a durable store keeps
 * them across a restart: a finished task's result survives; a task that waited for a human
 * approval when the process ended resumes (see {@link ToolTasks.resume}) — its call asks the
 * policy again and, when that still requires the same approval, waits for (or takes) that
 * approval's decision instead of asking for a new one; a task whose call had already been
 * forwarded is restored as `failed` (whether the tool ran is unknown) — unless it was passed
 * through to an upstream's own task: its record keeps the upstream task's id, and the resumed
 * call fetches that task's result instead of calling the tool again. Likewise a task that
 * scheduled fabric work (`fabric__schedule_task`) keeps the fabric task's id and, resumed, waits
 * for that fabric task instead of scheduling again.
 *
 * Pass-through: when the upstream itself is a task receiver for the tool, the call's run forwards
 * the task-augmented call and reports the upstream's task id ({@link ToolTaskRun.relayed}); the
 * agent only ever sees the gateway's `tt_` id, and the upstream's status changes
 * ({@link ToolTasks.relayStatus}) show through it.
 *
 * @module
 */
import { randomUUID } from 'node:crypto';
import { MAX_TIMER_MS, timerLimitMessage } from '../scheduler/task-waiters.js';
import {
  ErrorCode,
  type CallToolResult,
  type CreateTaskResult,
  type ListTasksResult,
  type Result,
  type Task,
  type TaskStatus,
} from '@modelcontextprotocol/sdk/types.js';
import {
  ConfigError,
  InvalidArgumentError,
  TaskNotFoundError,
  TaskStateError,
  ToolTaskLimitError,
} from '../errors.js';
import { MemoryCollection } from '../store/memory-store.js';
import type { Collection } from '../store/store.js';
import { RelayedMcpError, toMcpError } from './map-error.js';

/** Default of {@link ToolTasksOptions.defaultTtlMs}: one hour. */
export const DEFAULT_TOOL_TASK_TTL_MS = 60 * 60 * 1000;
/** Default of {@link ToolTasksOptions.maxTtlMs}: one day. */
export const DEFAULT_TOOL_TASK_MAX_TTL_MS = 24 * 60 * 60 * 1000;
/** Default of {@link ToolTasksOptions.maxPerAgent}. */
export const DEFAULT_TOOL_TASKS_PER_AGENT = 64;
/** Default of {@link ToolTasksOptions.maxResultBytesPerAgent}: 64 MiB. */
export const DEFAULT_TOOL_TASK_RESULT_BYTES_PER_AGENT = 64 * 1024 * 1024;
/** Default of {@link ToolTasksOptions.pollIntervalMs}. */
export const DEFAULT_TOOL_TASK_POLL_INTERVAL_MS = 1000;
/** Tasks per `tasks/list` page. */
const PAGE_SIZE = 100;
/** How often expired tasks are swept (they are also dropped when looked up). */
const SWEEP_INTERVAL_MS = 60_000;
/** Longest status message taken from a tool's error text. */
const STATUS_MESSAGE_MAX = 500;
/** `_meta` key that ties a `tasks/result` answer to its task (spec). */
export const RELATED_TASK_META_KEY = 'io.modelcontextprotocol/related-task';

/** Options of {@link ToolTasks} (the sidecar's `gateway.tasks`). */
export interface ToolTasksOptions {
  /** A task's lifetime when the client asks for none. @default 3600000 */
  defaultTtlMs?: number;
  /**
   * Longest lifetime a client may ask for (a longer `ttl` is cut to it); restored tasks' ttls are
   * cut to it too. @default 86400000
   */
  maxTtlMs?: number;
  /**
   * Tasks one agent may hold; at the limit the agent's oldest finished task is forgotten, and
   * when none is finished, a new task is refused with `FABRIC_ERR_TOOL_TASK_LIMIT`. Also the
   * calls one agent's tasks may have running: a call that outlives its task (a passed-through
   * call awaits the upstream's answer naming its task, to cancel that task; a request given up
   * after it was sent upstream, until the upstream is done with it) still counts.
   * @default 64
   */
  maxPerAgent?: number;
  /**
   * Bytes (of their JSON) the results and errors of one agent's finished tasks may hold together:
   * past it the agent's oldest finished tasks are forgotten, as at `maxPerAgent`; its newest
   * finished task is always kept, however large. Without it an agent asking for large answers as
   * tasks and never fetching them held `maxPerAgent` × the upstream's `maxMessageBytes`.
   * @default 67108864
   */
  maxResultBytesPerAgent?: number;
  /** The `pollInterval` suggested to clients. @default 1000 */
  pollIntervalMs?: number;
}

/**
 * Validates `options`, fills in defaults and freezes the result.
 * @throws ConfigError naming the field at fault.
 */
export function parseToolTasksOptions(
  options: ToolTasksOptions = {},
): Readonly<Required<ToolTasksOptions>> {
  const int = (field: keyof ToolTasksOptions, value: number): number => {
    if (!Number.isSafeInteger(value) || value < 1) {
      throw new ConfigError(`tasks.${field}`, `must be a positive integer, got ${String(value)}`);
    }
    return value;
  };
  // A ttl bounds timers (the task's expiry, the wait for an upstream's tasks/result): past
  // setTimeout's limit they would fire after 1 ms.
  const ms = (field: keyof ToolTasksOptions, value: number): number => {
    if (int(field, value) > MAX_TIMER_MS) {
      throw new ConfigError(`tasks.${field}`, `${timerLimitMessage('ms')}, got ${value}`);
    }
    return value;
  };
  const maxTtlMs = ms('maxTtlMs', options.maxTtlMs ?? DEFAULT_TOOL_TASK_MAX_TTL_MS);
  const defaultTtlMs = ms(
    'defaultTtlMs',
    options.defaultTtlMs ?? Math.min(DEFAULT_TOOL_TASK_TTL_MS, maxTtlMs),
  );
  if (defaultTtlMs > maxTtlMs) {
    throw new ConfigError('tasks.defaultTtlMs', `must be at most tasks.maxTtlMs (${maxTtlMs})`);
  }
  return Object.freeze({
    defaultTtlMs,
    maxTtlMs,
    maxPerAgent: int('maxPerAgent', options.maxPerAgent ?? DEFAULT_TOOL_TASKS_PER_AGENT),
    maxResultBytesPerAgent: int(
      'maxResultBytesPerAgent',
      options.maxResultBytesPerAgent ?? DEFAULT_TOOL_TASK_RESULT_BYTES_PER_AGENT,
    ),
    pollIntervalMs: ms(
      'pollIntervalMs',
      options.pollIntervalMs ?? DEFAULT_TOOL_TASK_POLL_INTERVAL_MS,
    ),
  });
}

/** A task as stored: a plain, frozen snapshot (a change is a new object `put` under its id). */
export interface ToolTaskRecord {
  /** `tt_<uuid>`: unguessable, and never the only thing that guards a task (see `agentId`). */
  readonly taskId: string;
  /** The agent that created it; nobody else can see it. */
  readonly agentId: string;
  /** The agent's pool and labels when it made the call (a resumed call runs with them). */
  readonly poolId?: string;
  readonly labels?: Readonly<Record<string, string>>;
  readonly tool: string;
  /** The call's arguments as received (absent: none), kept to resume the call after a restart. */
  readonly arguments?: unknown;
  readonly status: TaskStatus;
  readonly statusMessage?: string;
  /** Epoch ms. */
  readonly createdAt: number;
  /**
   * Where `tasks/list` sorts the task (then by id): its `createdAt`, raised past the last task
   * made before it on this store, so a task made after the wall clock stepped back still comes
   * after every cursor given before. Never moved by a step. Absent (stored before it was kept):
   * `createdAt`.
   */
  readonly listedAt?: number;
  readonly updatedAt: number;
  /** Lifetime from creation, ms (as granted, after the bound). */
  readonly ttl: number;
  /** The approval the call waits (or waited) for. */
  readonly approvalId?: string;
  /** A finished call's result: what `tasks/result` answers. */
  readonly result?: Result;
  /** A finished call's JSON-RPC error: what `tasks/result` answers instead of a result. */
  readonly error?: { readonly code: number; readonly message: string; readonly data?: unknown };
  /**
   * The upstream task the call was passed through to (upstream name, the upstream's task id,
   * and the `createdAt` it gave the task): never shown to the agent.
   */
  readonly upstream?: UpstreamTaskLink;
  /** The fabric task the call scheduled (`fabric__schedule_task`). */
  readonly fabricTaskId?: string;
}

/**
 * An upstream task behind a gateway task. An id alone does not name one task for good: an
 * upstream that restarts may number its tasks afresh and give the id to another client's task,
 * so the task's `createdAt` (as the upstream answered the call) is kept with it and compared
 * with what the upstream says of the id before the gateway takes its status, result or cancels
 * it (absent in records of older versions, or from an upstream that gave none: such a task
 * cannot be told from another).
 */
export interface UpstreamTaskLink {
  readonly name: string;
  readonly taskId: string;
  readonly createdAt?: string | undefined;
}

/** Longest upstream task id the gateway keeps (a longer one is refused as malformed). */
export const MAX_UPSTREAM_TASK_ID = 512;

/** What a running task's call reports (the gateway calls these from the pipeline). */
export interface ToolTaskRun {
  /** Aborts when the task is cancelled or expires: ends an approval wait or the forward. */
  readonly signal: AbortSignal;
  /** The approval this call asked for before a restart (when it resumes), to wait for again. */
  readonly approvalId?: string | undefined;
  /** The task's lifetime as granted, ms (a pass-through asks the upstream for the same). */
  readonly ttl: number;
  /** The upstream task this call was passed through to before a restart (when it resumes). */
  readonly upstreamTask?: UpstreamTaskLink | undefined;
  /** The fabric task this call scheduled before a restart (when it resumes). */
  readonly fabricTaskId?: string | undefined;
  /**
   * Counts one more call of the task's agent against `maxPerAgent` until the returned release:
   * the gateway takes it for a request given up (the task cancelled or expired) after it was
   * sent upstream, until the upstream is done with it (its `SlotHold`).
   */
  readonly holdSlot: () => () => void;
  /** The call waits for a human approval. */
  waiting(approval: { id: string; policy: string | null; rule: number | null }): void;
  /**
   * The call was authorized and is about to be forwarded. Returns, for a call that waited for an
   * approval, a promise to await before forwarding it: it resolves once the task's `working`
   * record is on disk (see {@link ToolTaskCommits}), and rejects when `signal` aborts first.
   */
  working(): Promise<void> | undefined;
  /**
   * The call was passed through to the upstream `name`, which made its task `taskId` at
   * `createdAt` (as it said).
   */
  relayed(name: string, taskId: string, createdAt: string | undefined): void;
  /** The call scheduled the fabric task `id`, now `status`. */
  scheduled(id: string, status: string): void;
}

/** What {@link ToolTasks} reports to its owner. */
export interface ToolTaskEvents {
  /** A task's status or status message changed (not called for its creation). */
  onStatus?: (agentId: string, task: Task) => void;
}

/**
 * What {@link ToolTasks} needs of a durable store beyond its records: to wait until what it put is
 * on disk.
 *
 * Why: a task restored `input_required` with its approval runs its call again after a restart
 * (the approval then decides it at once), and only its `working` record says the call was
 * already forwarded. That record is committed on a microtask, and a commit may fail (a full
 * disk; the store keeps the change in memory and retries): a call forwarded before it was on
 * disk, then a crash, ran the approved call a second time after the restart. So a call that
 * waited for an approval is forwarded only once its `working` record is committed — while the
 * store cannot commit, it waits (fail-closed), as long as its task lives.
 */
export interface ToolTaskCommits {
  /**
   * Resolves once every change made before the call is on disk (at once when the last commit
   * succeeded); rejects with `signal`'s reason when it aborts first, or when the store closes
   * without committing them.
   */
  whenCommitted(signal: AbortSignal): Promise<void>;
}

const TERMINAL: ReadonlySet<TaskStatus> = new Set(['completed', 'failed', 'cancelled']);

/** True for `completed`, `failed` and `cancelled`. */
export function isTerminalStatus(status: TaskStatus): boolean {
  return TERMINAL.has(status);
}

/**
 * The gateway's task store and runner.
 *
 * @example
 * const tasks = new ToolTasks({ maxTtlMs: 60_000 });
 * const { task } = tasks.create({ agentId: 'agent-1' }, 'fs__read_file', { ttl: 30_000 }, async (run) => {
 *   return await callTheTool(run.signal);
 * });
 * const result = await tasks.result('agent-1', task.taskId, AbortSignal.timeout(60_000));
 */
export class ToolTasks {
  readonly #options: Readonly<Required<ToolTasksOptions>>;
  readonly #store: Collection<ToolTaskRecord>;
  /** Calls in flight by task id. */
  readonly #running = new Map<string, AbortController>();
  /**
   * Calls not yet ended per agent, also those of tasks already cancelled or expired: a
   * passed-through call, once sent, is awaited after its task ended (gateway.ts,
   * `#forwardAsTask`), and without this bound creating and cancelling tasks ran any number.
   */
  readonly #calls = new Map<string, number>();
  /** `tasks/result` requests waiting for a task to end. */
  readonly #waiters = new Map<string, Set<() => void>>();
  /** Task ids per agent, oldest first (rebuilt from the store). */
  readonly #byAgent = new Map<string, Set<string>>();
  /** The highest `listedAt` (see {@link ToolTaskRecord.listedAt}) of a task made or stored. */
  #lastListed = 0;
  /**
   * When each task expires, on the monotonic clock (`performance.now()`): a ttl is a duration, so
   * a step of the wall clock (NTP, an operator setting the date) neither forgets every task (and
   * aborts its call) at the next sweep nor keeps tasks, and their calls, past their ttl. Set
   * from `createdAt + ttl` on the wall clock when a task is made or restored: a durable store
   * moves `createdAt` by each step of the wall clock (seen running or made while down), so a
   * restored task has its ttl minus the time that really passed (`store/store-clock.ts`).
   */
  readonly #expiresAt = new Map<string, number>();
  /** Bytes of the result or error of each finished task kept (see `maxResultBytesPerAgent`). */
  readonly #resultBytes = new Map<string, number>();
  /** The sum of {@link #resultBytes} per agent. */
  readonly #agentBytes = new Map<string, number>();
  /** Gateway task id by upstream task (see {@link upstreamKey}). */
  readonly #byUpstream = new Map<string, string>();
  readonly #events: ToolTaskEvents;
  readonly #commits: ToolTaskCommits | undefined;
  readonly #sweep: NodeJS.Timeout;
  /** Tasks restored waiting for an approval, until {@link resume} runs them. */
  #resumable: ToolTaskRecord[] = [];
  /** Tasks restored passed through to an upstream task (made by the process that ended). */
  readonly #restoredLinks = new Set<string>();
  #closed = false;

  /**
   * @param store - where task records live (the sidecar passes its durable store's
   *   `toolTasks`); records already in it are restored (unfinished ones as `failed`).
   */
  constructor(
    options: ToolTasksOptions = {},
    store: Collection<ToolTaskRecord> = new MemoryCollection<ToolTaskRecord>(),
    events: ToolTaskEvents = {},
    commits?: ToolTaskCommits,
  ) {
    this.#options = parseToolTasksOptions(options);
    this.#store = store;
    this.#events = events;
    this.#commits = commits;
    this.#restore();
    this.#sweep = setInterval(() => this.#expireAll(), SWEEP_INTERVAL_MS);
    this.#sweep.unref();
  }

  /** The validated, frozen options. */
  get options(): Readonly<Required<ToolTasksOptions>> {
    return this.#options;
  }

  #restore(): void {
    const now = Date.now();
    const records = [...this.#store.values()]
      .filter(isRecord)
      .sort((a, b) => a.createdAt - b.createdAt);
    const maxTtl = this.#options.maxTtlMs;
    for (const stored of records) {
      // Forgotten ones too: a cursor given before may name one.
      this.#lastListed = Math.max(this.#lastListed, keyOf(stored).at);
      // A bound lowered since the task was made applies to it: its end is counted from its
      // createdAt with the cut ttl, and the store keeps the cut ttl.
      const r = stored.ttl > maxTtl ? Object.freeze({ ...stored, ttl: maxTtl }) : stored;
      if (r.createdAt + r.ttl <= now) {
        this.#store.delete(r.taskId);
        continue;
      }
      if (r !== stored) this.#store.put(r.taskId, r);
      this.#index(r);
      if (isTerminalStatus(r.status)) {
        this.#account(r);
        continue;
      }
      if (
        (r.status === 'input_required' && r.approvalId !== undefined) ||
        r.upstream !== undefined ||
        r.fabricTaskId !== undefined
      ) {
        this.#resumable.push(r);
        if (r.upstream !== undefined) this.#restoredLinks.add(r.taskId);
        continue;
      }
      // The call may have reached its tool in the process that ended: never run it twice.
      const message =
        'the gateway restarted before the call finished; whether the tool ran is unknown';
      this.#put(
        settled({
          ...r,
          status: 'failed',
          statusMessage: message,
          updatedAt: now,
          error: { code: ErrorCode.InternalError, message },
        }),
      );
    }
    // A smaller budget than the last process had applies to what the store kept.
    for (const agentId of [...this.#agentBytes.keys()]) this.#trimBytes(agentId);
  }

  /**
   * Runs again the calls of the tasks restored waiting for an approval or passed through to an
   * upstream task (the gateway calls it once its tools are known). `run` gets the record (tool,
   * arguments, owner) and the handle, whose `approvalId` names the approval to wait for again and
   * `upstreamTask` the upstream task to fetch the result of.
   */
  resume(run: (record: ToolTaskRecord, task: ToolTaskRun) => Promise<Result>): void {
    const records = this.#resumable;
    this.#resumable = [];
    for (const r of records) {
      if (this.#live(r.taskId) !== undefined) this.#start(r, (task) => run(r, task));
    }
  }

  /**
   * Creates a task owned by `identity.agentId` and starts `run`. `run` resolves with the call's MCP answer
   * (a result) or rejects with its JSON-RPC error; both are kept for `tasks/result`.
   * @throws McpError (`FABRIC_ERR_TOOL_TASK_LIMIT` in `data`) when the agent holds
   *   `maxPerAgent` unfinished tasks, or has that many calls still running (see `#calls`).
   */
  create(
    identity: {
      agentId: string;
      poolId?: string | undefined;
      labels?: Readonly<Record<string, string>>;
    },
    tool: string,
    params: { ttl?: number | undefined; arguments?: unknown },
    run: (task: ToolTaskRun) => Promise<Result>,
  ): CreateTaskResult {
    if (this.#closed) throw toMcpError(new TaskStateError('(new)', 'the gateway is closing'));
    const { agentId, poolId, labels } = identity;
    this.#makeRoom(agentId);
    const now = Date.now();
    const listedAt = Math.max(now, this.#lastListed + 1);
    this.#lastListed = listedAt;
    const asked = params.ttl;
    const ttl =
      typeof asked === 'number' && Number.isFinite(asked) && asked > 0
        ? Math.min(Math.ceil(asked), this.#options.maxTtlMs)
        : this.#options.defaultTtlMs;
    const record: ToolTaskRecord = {
      taskId: `tt_${randomUUID()}`,
      agentId,
      ...(poolId === undefined ? {} : { poolId }),
      ...(labels === undefined ? {} : { labels }),
      tool,
      ...(params.arguments === undefined ? {} : { arguments: params.arguments }),
      status: 'working',
      createdAt: now,
      listedAt,
      updatedAt: now,
      ttl,
    };
    this.#put(record);
    this.#index(record);
    this.#start(record, run);
    return { task: this.#toTask(record) };
  }

  #start(record: ToolTaskRecord, run: (task: ToolTaskRun) => Promise<Result>): void {
    const controller = new AbortController();
    this.#running.set(record.taskId, controller);
    const id = record.taskId;
    // The call may report a step after its task ended (cancelled while the call was between two
    // awaits): a cancelled task stays cancelled, and no status goes out after a terminal one.
    const ended = (): boolean => {
      const r = this.#store.get(id);
      return r === undefined || isTerminalStatus(r.status);
    };
    const agentId = record.agentId;
    const hold = (): (() => void) => {
      this.#calls.set(agentId, (this.#calls.get(agentId) ?? 0) + 1);
      let held = true;
      return () => {
        if (!held) return;
        held = false;
        const left = (this.#calls.get(agentId) ?? 1) - 1;
        if (left > 0) this.#calls.set(agentId, left);
        else this.#calls.delete(agentId);
      };
    };
    const handle: ToolTaskRun = {
      signal: controller.signal,
      holdSlot: hold,
      approvalId: record.approvalId,
      ttl: record.ttl,
      upstreamTask: record.upstream,
      fabricTaskId: record.fabricTaskId,
      waiting: (approval) => {
        if (ended()) return;
        const rule = approval.rule === null ? '' : `#${approval.rule}`;
        const policy = approval.policy === null ? '' : ` (policy ${approval.policy}${rule})`;
        this.#update(id, {
          status: 'input_required',
          statusMessage: `waiting for human approval ${approval.id}${policy}`,
          approvalId: approval.id,
        });
      },
      working: () => {
        if (ended()) return undefined;
        const record = this.#update(id, { status: 'working', statusMessage: 'running' });
        const commits = this.#commits;
        // Only a call that waited for an approval would run again after a restart.
        if (commits === undefined || record?.approvalId === undefined) return undefined;
        // After the commit the update queued (a microtask, queued first), its outcome known.
        return Promise.resolve().then(() => commits.whenCommitted(controller.signal));
      },
      relayed: (name, taskId, createdAt) => {
        if (ended()) return;
        const upstream: UpstreamTaskLink =
          createdAt === undefined ? { name, taskId } : { name, taskId, createdAt };
        if (this.#update(id, { upstream }) !== undefined) {
          this.#byUpstream.set(upstreamKey(upstream), id);
        }
      },
      scheduled: (fabricTaskId, status) => {
        if (ended()) return;
        this.#update(id, {
          fabricTaskId,
          statusMessage: fabricStatusMessage(fabricTaskId, status),
        });
      },
    };
    // A running call ends with its task's ttl, on time: a call parked on an approval must not
    // run when approved after its task expired (the sweep alone comes up to a minute late).
    const expiry = setTimeout(
      () => this.#live(id),
      Math.min(Math.max(0, (this.#expiresAt.get(id) ?? 0) - performance.now()) + 1, MAX_TIMER_MS),
    );
    expiry.unref();
    const release = hold();
    const done = (): void => {
      clearTimeout(expiry);
      release();
    };
    // The task's answer goes out first; the call starts on the next turn.
    queueMicrotask(() => {
      let running: Promise<Result>;
      try {
        running = run(handle);
      } catch (error) {
        running = Promise.reject(error as Error);
      }
      running
        .then(
          (result) => this.#finish(id, { result }),
          (error: unknown) => this.#finish(id, { error }),
        )
        .finally(done);
    });
  }

  /**
   * The task `taskId` of `agentId`.
   * @throws McpError InvalidParams (`FABRIC_ERR_TASK_NOT_FOUND`) for an unknown, expired or
   *   another agent's task — the same answer for each.
   */
  get(agentId: string, taskId: unknown): Task {
    return this.#toTask(this.#own(agentId, taskId));
  }

  /**
   * What `agentId`'s running task `taskId` waits on, if anything: the upstream task it was
   * passed through to, or the fabric task it scheduled (the gateway asks either for its status
   * on `tasks/get`). Nothing for a finished task.
   * @throws McpError InvalidParams (`FABRIC_ERR_TASK_NOT_FOUND`) as {@link get}.
   */
  linkOf(
    agentId: string,
    taskId: unknown,
  ): Pick<ToolTaskRecord, 'taskId' | 'upstream' | 'fabricTaskId'> | undefined {
    const record = this.#own(agentId, taskId);
    return isTerminalStatus(record.status) ? undefined : record;
  }

  /**
   * True when task `taskId` was restored from the store passed through to an upstream task: that
   * upstream task id was given by the upstream as it was before this process started.
   */
  isRestoredLink(taskId: string): boolean {
    return this.#restoredLinks.has(taskId);
  }

  /** The fabric task behind the running task `taskId` is now `status`: its status message. */
  relayFabricStatus(taskId: string, status: string): void {
    const record = this.#live(taskId);
    if (record?.fabricTaskId === undefined || isTerminalStatus(record.status)) return;
    const statusMessage = fabricStatusMessage(record.fabricTaskId, status);
    if (record.statusMessage !== statusMessage) this.#update(taskId, { statusMessage });
  }

  /**
   * An upstream's word on its task (a `notifications/tasks/status`, or its `tasks/get` answer):
   * a running pass-through task takes the upstream's `working` / `input_required` and status
   * message. A terminal status is not taken from here — the task ends when its call gets the
   * upstream's result. Unknown upstream tasks are ignored, and so is a task under the same id
   * made at another time (`createdAt`, see {@link UpstreamTaskLink}): a restarted upstream's.
   */
  relayStatus(
    upstream: string,
    upstreamTaskId: unknown,
    status: unknown,
    message: unknown,
    createdAt: unknown,
  ): void {
    if (typeof upstreamTaskId !== 'string') return;
    const id = this.#byUpstream.get(upstreamKey({ name: upstream, taskId: upstreamTaskId }));
    const record = id === undefined ? undefined : this.#live(id);
    if (record === undefined || isTerminalStatus(record.status)) return;
    if (!sameUpstreamTask(record.upstream, createdAt)) return;
    if (status !== 'working' && status !== 'input_required') return;
    const statusMessage =
      typeof message === 'string' ? message.slice(0, STATUS_MESSAGE_MAX) : undefined;
    if (record.status === status && record.statusMessage === statusMessage) return;
    this.#update(record.taskId, {
      status,
      ...(statusMessage === undefined
        ? { statusMessage: `upstream task ${status}` }
        : { statusMessage }),
    });
  }

  /**
   * The finished task's answer: its result (with the related-task `_meta`), or its JSON-RPC
   * error thrown. Waits while the task runs, until it ends or `signal` aborts.
   */
  async result(agentId: string, taskId: unknown, signal: AbortSignal): Promise<Result> {
    let record = this.#own(agentId, taskId);
    while (!isTerminalStatus(record.status)) {
      await this.#changed(record.taskId, signal);
      record = this.#own(agentId, taskId);
    }
    if (record.error !== undefined) {
      const { code, message, data } = record.error;
      throw new RelayedMcpError(code, message, data);
    }
    const result = record.result ?? {};
    return {
      ...result,
      _meta: { ...result._meta, [RELATED_TASK_META_KEY]: { taskId: record.taskId } },
    };
  }

  /**
   * The agent's tasks, oldest first (by `listedAt`, then id: see {@link ToolTaskRecord.listedAt}),
   * {@link PAGE_SIZE} a page. A `nextCursor` names the page's last task by that sort key, so the
   * next page starts after it whatever was forgotten or made meanwhile (after it, also when the
   * wall clock stepped back), also across a restart (a position in the list was numbered afresh
   * at each start: tasks forgotten across it made a cursor skip as many).
   * @throws McpError InvalidParams (`FABRIC_ERR_INVALID_ARGUMENT`) for a cursor not of the form
   *   tasks/list gives (not a string, or not one encoded key): the same answer for every agent.
   *   A well-formed cursor only says where in the caller's own list to start.
   */
  list(agentId: string, cursor?: unknown): ListTasksResult {
    const after = cursor === undefined ? undefined : this.#cursorKey(agentId, cursor);
    const records: ToolTaskRecord[] = [];
    for (const id of [...(this.#byAgent.get(agentId) ?? [])]) {
      const record = this.#live(id);
      if (record !== undefined && (after === undefined || compareKeys(keyOf(record), after) > 0)) {
        records.push(record);
      }
    }
    records.sort((a, b) => compareKeys(keyOf(a), keyOf(b)));
    const page = records.slice(0, PAGE_SIZE);
    const tasks = page.map((r) => this.#toTask(r));
    return records.length > PAGE_SIZE
      ? { tasks, nextCursor: encodeCursor(keyOf(page.at(-1)!)) }
      : { tasks };
  }

  /**
   * The sort key a `tasks/list` cursor names (see {@link list}): the current key of the task it
   * names when that is still the agent's (a step of the wall clock moved the `createdAt` of one
   * stored without `listedAt` across a restart), else the key as written in it.
   */
  #cursorKey(agentId: string, cursor: unknown): ListKey {
    const key = decodeCursor(cursor);
    if (key === undefined) {
      throw toMcpError(new InvalidArgumentError('tasks/list cursor', 'is not one tasks/list gave'));
    }
    const named = this.#store.get(key.taskId);
    return named !== undefined && named.agentId === agentId ? keyOf(named) : key;
  }

  /**
   * Cancels a running task: its call is aborted (an approval wait ends, the upstream request is
   * cancelled; the pipeline releases the reservation and writes the audit line).
   * @throws McpError InvalidParams for an unknown task or one that already ended.
   */
  cancel(agentId: string, taskId: unknown): Task {
    const record = this.#own(agentId, taskId);
    if (isTerminalStatus(record.status)) {
      const error = new TaskStateError(
        record.taskId,
        `cannot cancel a task that is ${record.status}`,
      );
      const wire = error.toJSON();
      throw new RelayedMcpError(ErrorCode.InvalidParams, wire.message, wire);
    }
    const cancelled = this.#update(record.taskId, {
      status: 'cancelled',
      statusMessage: 'cancelled by the agent',
      error: { code: ErrorCode.InvalidRequest, message: `task ${record.taskId} was cancelled` },
    });
    this.#running.get(record.taskId)?.abort(new Error('the task was cancelled'));
    return this.#toTask(cancelled ?? record);
  }

  /**
   * Cancels every task of `agentId` still running (its agent is gone: terminated, its
   * credential revoked): each call is aborted with `reason` — one waiting for its turn or an
   * approval never runs — and the task records `cancelled` with `reason`'s message.
   */
  endAgent(agentId: string, reason: Error): void {
    for (const id of [...(this.#byAgent.get(agentId) ?? [])]) {
      const record = this.#store.get(id);
      if (record === undefined || isTerminalStatus(record.status)) continue;
      const wire = toMcpError(reason);
      this.#update(id, {
        status: 'cancelled',
        statusMessage: reason.message.slice(0, STATUS_MESSAGE_MAX),
        error: {
          code: wire.code,
          message: wire.message,
          ...(wire.data === undefined ? {} : { data: wire.data }),
        },
      });
      this.#running.get(id)?.abort(reason);
    }
  }

  /**
   * Stops the sweep and records nothing more: calls still running end without changing their
   * records (a restart on the same store restores them as `failed`). Waiting `tasks/result`
   * requests are released by their own request's end. Idempotent.
   */
  close(): void {
    this.#closed = true;
    clearInterval(this.#sweep);
  }

  // -------------------------------------------------------------------------------------------

  #finish(id: string, end: { result?: Result; error?: unknown }): void {
    this.#running.delete(id);
    const record = this.#store.get(id);
    if (this.#closed || record === undefined || isTerminalStatus(record.status)) return;
    if (end.result !== undefined) {
      const failed = (end.result as CallToolResult).isError === true;
      this.#update(id, {
        status: failed ? 'failed' : 'completed',
        statusMessage: failed ? firstText(end.result) : 'completed',
        result: end.result,
      });
      return;
    }
    const error = toMcpError(end.error);
    this.#update(id, {
      status: 'failed',
      statusMessage: error.message.slice(0, STATUS_MESSAGE_MAX),
      error: {
        code: error.code,
        message: error.message,
        ...(error.data === undefined ? {} : { data: error.data }),
      },
    });
  }

  #update(id: string, change: Partial<ToolTaskRecord>): ToolTaskRecord | undefined {
    if (this.#closed) return undefined;
    const record = this.#store.get(id);
    if (record === undefined) return undefined;
    const next = settled({ ...record, ...change, updatedAt: Date.now() });
    this.#put(next);
    const waiters = this.#waiters.get(id);
    if (waiters !== undefined) for (const wake of [...waiters]) wake();
    if (next.status !== record.status || next.statusMessage !== record.statusMessage) {
      this.#events.onStatus?.(next.agentId, this.#toTask(next));
    }
    return next;
  }

  #put(record: ToolTaskRecord): void {
    this.#store.put(record.taskId, Object.freeze(record));
    if (this.#account(record)) this.#trimBytes(record.agentId, record.taskId);
  }

  /**
   * Counts a finished record's result or error against its agent's bytes, once; true when it
   * was counted now.
   */
  #account(record: ToolTaskRecord): boolean {
    if (!isTerminalStatus(record.status) || this.#resultBytes.has(record.taskId)) return false;
    const bytes = resultBytes(record);
    this.#resultBytes.set(record.taskId, bytes);
    this.#agentBytes.set(record.agentId, (this.#agentBytes.get(record.agentId) ?? 0) + bytes);
    return true;
  }

  /**
   * Forgets the agent's oldest finished tasks while their results hold more than
   * `maxResultBytesPerAgent`, never `keep` (the task that just finished) — without `keep`, never
   * the newest finished one.
   */
  #trimBytes(agentId: string, keep?: string): void {
    const max = this.#options.maxResultBytesPerAgent;
    if ((this.#agentBytes.get(agentId) ?? 0) <= max) return;
    const finished = [...(this.#byAgent.get(agentId) ?? [])].filter((id) =>
      this.#resultBytes.has(id),
    );
    const last = keep ?? finished.at(-1);
    for (const id of finished) {
      if ((this.#agentBytes.get(agentId) ?? 0) <= max) return;
      if (id === last) continue;
      const record = this.#store.get(id);
      if (record !== undefined) this.#forget(record);
    }
  }

  #index(record: ToolTaskRecord): void {
    this.#expiresAt.set(
      record.taskId,
      performance.now() + (record.createdAt + record.ttl - Date.now()),
    );
    let ids = this.#byAgent.get(record.agentId);
    if (ids === undefined) this.#byAgent.set(record.agentId, (ids = new Set()));
    ids.add(record.taskId);
    if (record.upstream) this.#byUpstream.set(upstreamKey(record.upstream), record.taskId);
  }

  /**
   * The record if it is `agentId`'s and alive; else the not-found error every stranger gets. Only
   * a string is an id: anything else is not coerced (`String(["tt_…"])` is the id inside, and
   * `String` of an array nested thousands of levels deep overflows the stack).
   */
  #own(agentId: string, taskId: unknown): ToolTaskRecord {
    const record = typeof taskId === 'string' ? this.#live(taskId) : undefined;
    if (record === undefined || record.agentId !== agentId) {
      const shown = typeof taskId === 'string' ? taskId.slice(0, 128) : '(not a string)';
      throw toMcpError(new TaskNotFoundError(shown));
    }
    return record;
  }

  /** The record, unless it expired (then it is forgotten, its call cancelled). */
  #live(id: string): ToolTaskRecord | undefined {
    const record = this.#store.get(id);
    if (record === undefined) return undefined;
    if ((this.#expiresAt.get(id) ?? -Infinity) > performance.now()) return record;
    this.#forget(record);
    return undefined;
  }

  #forget(record: ToolTaskRecord): void {
    this.#running.get(record.taskId)?.abort(new Error('the task expired'));
    this.#running.delete(record.taskId);
    this.#store.delete(record.taskId);
    this.#expiresAt.delete(record.taskId);
    const bytes = this.#resultBytes.get(record.taskId);
    if (bytes !== undefined) {
      this.#resultBytes.delete(record.taskId);
      const left = (this.#agentBytes.get(record.agentId) ?? bytes) - bytes;
      if (left > 0) this.#agentBytes.set(record.agentId, left);
      else this.#agentBytes.delete(record.agentId);
    }
    // Only its own: a newer task may have the same upstream id (a restarted upstream's).
    const key = record.upstream === undefined ? undefined : upstreamKey(record.upstream);
    if (key !== undefined && this.#byUpstream.get(key) === record.taskId) {
      this.#byUpstream.delete(key);
    }
    const ids = this.#byAgent.get(record.agentId);
    ids?.delete(record.taskId);
    if (ids?.size === 0) this.#byAgent.delete(record.agentId);
    const waiters = this.#waiters.get(record.taskId);
    if (waiters !== undefined) for (const wake of [...waiters]) wake();
  }

  #expireAll(): void {
    for (const record of [...this.#store.values()]) this.#live(record.taskId);
  }

  /**
   * Keeps the agent under `maxPerAgent`: forgets its oldest finished tasks, or refuses — also
   * when that many of its calls still run (tasks ended while their call is awaited count).
   */
  #makeRoom(agentId: string): void {
    if ((this.#calls.get(agentId) ?? 0) >= this.#options.maxPerAgent) {
      throw toMcpError(new ToolTaskLimitError(agentId, this.#options.maxPerAgent));
    }
    const ids = this.#byAgent.get(agentId);
    if (ids === undefined) return;
    for (const id of [...ids]) this.#live(id);
    // Down to one under the cap, not just one fewer: a restart with a lower cap restored more.
    for (const id of [...ids]) {
      if (ids.size < this.#options.maxPerAgent) return;
      const record = this.#store.get(id);
      if (record !== undefined && isTerminalStatus(record.status)) this.#forget(record);
    }
    if (ids.size < this.#options.maxPerAgent) return;
    throw toMcpError(new ToolTaskLimitError(agentId, this.#options.maxPerAgent));
  }

  /** Resolves on the task's next change (or its end), rejects when `signal` aborts. */
  #changed(id: string, signal: AbortSignal): Promise<void> {
    if (signal.aborted) return Promise.reject(signal.reason);
    return new Promise<void>((resolve, reject) => {
      let set = this.#waiters.get(id);
      if (set === undefined) this.#waiters.set(id, (set = new Set()));
      const waiters = set;
      const done = (): void => {
        waiters.delete(wake);
        if (waiters.size === 0) this.#waiters.delete(id);
        signal.removeEventListener('abort', onAbort);
      };
      const wake = (): void => {
        done();
        resolve();
      };
      const onAbort = (): void => {
        done();
        reject(signal.reason);
      };
      waiters.add(wake);
      signal.addEventListener('abort', onAbort, { once: true });
    });
  }

  #toTask(r: ToolTaskRecord): Task {
    return {
      taskId: r.taskId,
      status: r.status,
      ttl: r.ttl,
      createdAt: new Date(r.createdAt).toISOString(),
      lastUpdatedAt: new Date(r.updatedAt).toISOString(),
      pollInterval: this.#options.pollIntervalMs,
      ...(r.statusMessage === undefined ? {} : { statusMessage: r.statusMessage }),
    };
  }
}

/** What orders `tasks/list`: a task's `listedAt` (`at`), then its id. */
interface ListKey {
  readonly at: number;
  readonly taskId: string;
}

/** A record's {@link ListKey}. */
function keyOf(r: ToolTaskRecord): ListKey {
  const at = r.listedAt;
  return { at: typeof at === 'number' && Number.isFinite(at) ? at : r.createdAt, taskId: r.taskId };
}

/** `tasks/list`'s order (see {@link ListKey}). */
function compareKeys(a: ListKey, b: ListKey): number {
  return a.at - b.at || (a.taskId < b.taskId ? -1 : a.taskId > b.taskId ? 1 : 0);
}

/** A `tasks/list` cursor: the key of a page's last task, as base64url (opaque to clients). */
function encodeCursor(key: ListKey): string {
  return Buffer.from(`${Math.floor(key.at)}:${key.taskId}`).toString('base64url');
}

/** What a cursor names as {@link encodeCursor} wrote it. */
const CURSOR_TEXT =
  /^(\d{1,16}):(tt_[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$/;

/**
 * The key a cursor names; undefined unless it is exactly what {@link encodeCursor} writes for a
 * key (a string of at most 128 characters whose canonical base64url decodes to one).
 */
function decodeCursor(cursor: unknown): ListKey | undefined {
  if (typeof cursor !== 'string' || cursor.length > 128) return undefined;
  const text = Buffer.from(cursor, 'base64url').toString('latin1');
  const match = CURSOR_TEXT.exec(text);
  if (match === null || Buffer.from(text).toString('base64url') !== cursor) return undefined;
  const at = Number(match[1]);
  return Number.isSafeInteger(at) ? { at, taskId: match[2]! } : undefined;
}

/** Bytes of a finished record's result or error as JSON (what it holds for `tasks/result`). */
function resultBytes(record: ToolTaskRecord): number {
  const kept = record.result ?? record.error;
  if (kept === undefined) return 0;
  try {
    return Buffer.byteLength(JSON.stringify(kept) ?? '');
  } catch {
    // Not JSON (a cycle, a bigint): the store could not keep it either; count what it shows.
    return Buffer.byteLength(String(kept));
  }
}

/**
 * `record` without its call's arguments once it is finished: they are kept only to run the call
 * again after a restart, which a finished task never is, and they may be up to the request body
 * limit and hold what the agent would not want kept (a state file held them for the task's whole
 * ttl, up to a day).
 */
function settled(record: ToolTaskRecord): ToolTaskRecord {
  if (!isTerminalStatus(record.status) || record.arguments === undefined) return record;
  const { arguments: _dropped, ...rest } = record;
  return rest;
}

/** What `tasks/get` says of a task waiting on fabric task `id`. */
function fabricStatusMessage(id: string, status: string): string {
  return `fabric task ${id} is ${status}`;
}

/**
 * Whether the upstream's word on a task made at `createdAt` is about `link`'s task: the same
 * `createdAt`. False when either is unknown — the id cannot be told from another task's.
 */
export function sameUpstreamTask(link: UpstreamTaskLink | undefined, createdAt: unknown): boolean {
  return link?.createdAt !== undefined && createdAt === link.createdAt;
}

/** The key of an upstream task in {@link ToolTasks}'s index. */
function upstreamKey(upstream: { name: string; taskId: string }): string {
  return `${upstream.name}\u0000${upstream.taskId}`;
}

function firstText(result: Result): string {
  const content = (result as CallToolResult).content;
  const text = Array.isArray(content)
    ? content.find((c): c is { type: 'text'; text: string } => c.type === 'text')?.text
    : undefined;
  return (text ?? 'the tool call ended in an error').slice(0, STATUS_MESSAGE_MAX);
}

/** A stored record must at least carry a task's identity, owner, status and times. */
function isRecord(r: ToolTaskRecord): boolean {
  return (
    r !== null &&
    typeof r === 'object' &&
    typeof r.taskId === 'string' &&
    typeof r.agentId === 'string' &&
    typeof r.status === 'string' &&
    Number.isFinite(r.createdAt) &&
    Number.isFinite(r.ttl)
  );
}

/**
 * The commands that read and steer a running sidecar through the operator API: `status`,
 * `agents`, `tasks`, `pools`, `approvals list|show|approve|deny|watch`, `budgets`, `hooks`.
 *
 * `approvals watch` reads the `ApprovalService.Watch` server stream as the HTTP door serves it
 * (NDJSON; `ApiClient.stream` reads it).
 *
 * @module
 */
import { toJson, type JsonValue } from '@bufbuild/protobuf';
import { ValueSchema, type Value } from '@bufbuild/protobuf/wkt';
import {
  ApprovalEventKind,
  ApprovalService,
  ApprovalStatus,
  type Approval,
} from '../gen/fabric/v1/approval_pb.js';
import { BudgetService, type BudgetStatus } from '../gen/fabric/v1/budget_pb.js';
import { FabricService } from '../gen/fabric/v1/fabric_pb.js';
import {
  AgentStatus,
  HookStatus,
  PoolStatus,
  TaskPriority,
  TaskStatus,
} from '../gen/fabric/v1/fabric_types_pb.js';
import { CliError } from './api-client.js';
import { intOption, usageError, type Command, type CommandContext } from './command.js';
import { EXIT } from './exit-codes.js';
import {
  brief,
  clip,
  enumName,
  num,
  orDash,
  printable,
  printableJson,
  table,
  when,
} from './format.js';

/** Largest page the API serves. */
const MAX_PAGE = 1000;
/** Default of `--limit` for the list commands. */
const DEFAULT_LIMIT = 100;
/** Queued tasks `status` counts at most (10 pages). */
const STATUS_QUEUE_SCAN = 10 * MAX_PAGE;

/** The enum value named `raw` (any case, with or without the enum's prefix). */
function enumOption(
  command: Command,
  option: string,
  e: Record<string, string | number>,
  raw: unknown,
): number {
  if (raw === undefined || typeof raw !== 'string') return 0;
  const names = Object.keys(e).filter((k) => Number.isNaN(Number(k)) && k !== 'UNSPECIFIED');
  const key = raw.toUpperCase().replace(/-/g, '_');
  const found = names.find((n) => n === key || key.endsWith(`_${n}`));
  if (found === undefined) {
    throw usageError(command, `--${option}: one of ${names.join(', ').toLowerCase()}, not ${raw}`);
  }
  return e[found] as number;
}

/** One page of a list answer: its items, the next page token and the JSON as sent. */
interface Page<T> {
  items: T[];
  next: string;
  json: JsonValue;
}

/**
 * Fetches pages of a list until `limit` items; tells on stderr when more were left. Returns the
 * items and their JSON (the answers' `key` arrays, for `--json`).
 */
async function paged<T>(
  limit: number,
  key: string,
  fetchPage: (pageSize: number, pageToken: string) => Promise<Page<T>>,
): Promise<{ items: T[]; json: JsonValue[] }> {
  const items: T[] = [];
  const json: JsonValue[] = [];
  let token = '';
  for (;;) {
    const page = await fetchPage(Math.min(MAX_PAGE, limit - items.length), token);
    items.push(...page.items);
    json.push(...((page.json as Record<string, JsonValue[] | undefined>)[key] ?? []));
    token = page.next;
    if (token === '') return { items, json };
    if (items.length >= limit) {
      process.stderr.write(`agent-fabric: more ${key} than --limit ${limit}; not all shown\n`);
      return { items, json };
    }
  }
}

/** A `google.protobuf.Value` (or its `*_json` bytes twin) as plain JSON. */
function valueJson(value: Value | undefined, bytes?: Uint8Array): unknown {
  if (bytes !== undefined && bytes.length > 0) {
    try {
      return JSON.parse(Buffer.from(bytes).toString('utf8')) as unknown;
    } catch {
      return Buffer.from(bytes).toString('utf8');
    }
  }
  return value === undefined ? undefined : toJson(ValueSchema, value);
}

function printJson(ctx: CommandContext, json: unknown): void {
  ctx.print(printableJson(JSON.stringify(json, null, 2)));
}

const LIMIT_OPTION = {
  type: 'string',
  value: 'n',
  description: `show at most n (default ${DEFAULT_LIMIT})`,
} as const;

const statusCommand: Command = {
  name: 'status',
  summary:
    'The sidecar at a glance: agents by health, queued tasks by priority, the fabric budget, pending approvals, upstreams and pools.',
  description: `Queued tasks are counted from the PENDING tasks (at most ${STATUS_QUEUE_SCAN}); upstreams come from GET /metrics (agent_fabric_upstream_up).`,
  online: true,
  json: true,
  async run(ctx) {
    const api = ctx.api();
    const stats = await api.call(FabricService.method.getStats, {});
    const { items: queued } = await paged(
      STATUS_QUEUE_SCAN,
      'tasks',
      async (pageSize, pageToken) => {
        // Only the priority is counted: without payloads (up to maxTaskResultBytes each).
        const a = await api.call(FabricService.method.listTasks, {
          status: TaskStatus.PENDING,
          pageSize,
          pageToken,
          summary: true,
        });
        return { items: a.message.tasks, next: a.message.nextPageToken, json: a.json };
      },
    );
    const byPriority: Record<string, number> = { CRITICAL: 0, HIGH: 0, NORMAL: 0, LOW: 0 };
    for (const t of queued) {
      const p = enumName(TaskPriority, t.priority === 0 ? TaskPriority.NORMAL : t.priority);
      byPriority[p] = (byPriority[p] ?? 0) + 1;
    }
    const budget = await api.call(BudgetService.method.getBudgetStatus, {
      scope: { scope: { case: 'fabric', value: true } },
    });
    // Only counted: each call's arguments once, not also as base64.
    const approvals = await api.call(ApprovalService.method.listApprovals, {
      status: ApprovalStatus.PENDING,
      omitParamsJson: true,
    });
    const upstreams = upstreamsOf(await api.metrics());
    if (ctx.json) {
      printJson(ctx, {
        stats: stats.json,
        queuedByPriority: byPriority,
        budget: (budget.json as { status?: JsonValue }).status ?? null,
        pendingApprovals: approvals.message.approvals.length,
        upstreams,
      });
      return EXIT.ok;
    }
    const s = stats.message;
    const agents = Object.entries(s.agentsByStatus)
      .filter(([, n]) => n > 0)
      .map(([k, n]) => `${n} ${k}`)
      .join(', ');
    ctx.print(`agents:     ${s.activeAgents} active${agents ? ` (${agents})` : ''}`);
    ctx.print(
      `tasks:      ${s.pendingTasks} queued, ${s.runningTasks} running, ${s.completedTasks} completed, ${s.failedTasks} failed, ${s.timedOutTasks} timed out, ${s.cancelledTasks} cancelled`,
    );
    ctx.print(
      `queued:     ${Object.entries(byPriority)
        .map(([k, n]) => `${k} ${n}`)
        .join(', ')}`,
    );
    ctx.print(`approvals:  ${approvals.message.approvals.length} pending`);
    ctx.print(`budget:     ${budgetLine(budget.message.status)}`);
    ctx.print(
      `upstreams:  ${printable(
        upstreams.length === 0
          ? '(none)'
          : upstreams
              .map(
                (u) =>
                  `${u.name} ${u.up ? 'up' : 'DOWN'}${u.restarts > 0 ? ` (${u.restarts} restarts)` : ''}`,
              )
              .join(', '),
      )}`,
    );
    const pools = Object.entries(s.pools);
    ctx.print('pools:');
    ctx.print(
      indent(
        table(
          ['POOL', 'AGENTS', 'HEALTHY', 'ACCEPTING', 'QUEUED', 'RUNNING', 'DONE', 'FAILED'],
          pools.map(([id, p]) => [
            id,
            String(p.agents),
            String(p.healthyAgents),
            String(p.acceptingAgents),
            String(p.queuedTasks),
            String(p.runningTasks),
            String(p.completedTasks),
            String(p.failedTasks),
          ]),
        ),
      ),
    );
    return EXIT.ok;
  },
};

function indent(text: string): string {
  return text
    .split('\n')
    .map((l) => `  ${l}`)
    .join('\n');
}

/** Upstream figures from the Prometheus text of `GET /metrics`. */
export function upstreamsOf(metrics: string): { name: string; up: boolean; restarts: number }[] {
  const found = new Map<string, { name: string; up: boolean; restarts: number }>();
  const sample =
    /^agent_fabric_upstream_(up|restarts_total)\{upstream="((?:[^"\\]|\\.)*)"\} (\S+)$/;
  for (const line of metrics.split('\n')) {
    const m = sample.exec(line);
    if (!m) continue;
    const name = m[2]!.replace(/\\(.)/g, (_x, c: string) => (c === 'n' ? '\n' : c));
    const u = found.get(name) ?? { name, up: false, restarts: 0 };
    if (m[1] === 'up') u.up = Number(m[3]) === 1;
    else u.restarts = Number(m[3]);
    found.set(name, u);
  }
  return [...found.values()];
}

function budgetLine(b: BudgetStatus | undefined): string {
  if (b === undefined) return '-';
  const part = (what: string, u: BudgetStatus['tokens']): string =>
    u === undefined
      ? ''
      : `${what} ${num(u.used)}${u.limit === undefined ? '' : `/${num(u.limit)}`}${u.reserved > 0 ? ` (+${num(u.reserved)} reserved)` : ''}`;
  const parts = [part('tokens/h', b.tokens), part('cost/day', b.cost)].filter(Boolean);
  const flags = [b.exhausted ? 'EXHAUSTED' : '', b.warning ? 'WARNING' : ''].filter(Boolean);
  return `${parts.join(', ') || 'no usage'}${flags.length ? ` ${flags.join(' ')}` : ''}`;
}

const agentsCommand: Command = {
  name: 'agents',
  summary: 'Agents with their status, pool, model, tasks and last heartbeat.',
  options: {
    status: {
      type: 'string',
      value: 'status',
      description:
        'only agents in this status (starting, healthy, degraded, unhealthy, draining, terminated)',
    },
    pool: { type: 'string', value: 'id', description: 'only agents of this pool' },
    limit: LIMIT_OPTION,
  },
  online: true,
  json: true,
  async run(ctx) {
    const status = enumOption(agentsCommand, 'status', AgentStatus, ctx.values.status);
    const limit = intOption(agentsCommand, ctx.values, 'limit', DEFAULT_LIMIT);
    const { items: agents, json } = await paged(limit, 'agents', async (pageSize, pageToken) => {
      const a = await ctx.api().call(FabricService.method.listAgents, {
        status,
        poolId: (ctx.values.pool as string | undefined) ?? '',
        pageSize,
        pageToken,
      });
      return { items: a.message.agents, next: a.message.nextPageToken, json: a.json };
    });
    if (ctx.json) {
      printJson(ctx, { agents: json });
      return EXIT.ok;
    }
    ctx.print(
      table(
        [
          'ID',
          'NAME',
          'STATUS',
          'POOL',
          'MODEL',
          'RUNNING',
          'QUEUED',
          'DONE',
          'FAILED',
          'HEARTBEAT',
        ],
        agents.map((a) => [
          a.agentId,
          a.name,
          enumName(AgentStatus, a.status),
          orDash(a.poolId),
          a.model,
          String(a.runningTasks),
          String(a.queuedTasks),
          String(a.completedTasks),
          String(a.failedTasks),
          when(a.lastHeartbeatAt),
        ]),
      ),
    );
    return EXIT.ok;
  },
};

const tasksCommand: Command = {
  name: 'tasks',
  summary: 'Tasks with their status, priority, agent or pool, attempt and times.',
  options: {
    status: {
      type: 'string',
      value: 'status',
      description:
        'only tasks in this status (pending, scheduled, running, completed, failed, timeout, cancelled)',
    },
    pool: { type: 'string', value: 'id', description: 'only tasks of this pool' },
    agent: {
      type: 'string',
      value: 'id',
      description: 'only tasks addressed to or run by this agent',
    },
    limit: LIMIT_OPTION,
  },
  online: true,
  json: true,
  async run(ctx) {
    const status = enumOption(tasksCommand, 'status', TaskStatus, ctx.values.status);
    const limit = intOption(tasksCommand, ctx.values, 'limit', DEFAULT_LIMIT);
    const { items: tasks, json } = await paged(limit, 'tasks', async (pageSize, pageToken) => {
      const a = await ctx.api().call(FabricService.method.listTasks, {
        status,
        poolId: (ctx.values.pool as string | undefined) ?? '',
        agentId: (ctx.values.agent as string | undefined) ?? '',
        pageSize,
        pageToken,
        // The table shows no payload, result or progress: pages of a few hundred bytes a task
        // rather than up to maxTaskResultBytes several times over (--json: the whole tasks).
        summary: !ctx.json,
      });
      return { items: a.message.tasks, next: a.message.nextPageToken, json: a.json };
    });
    if (ctx.json) {
      printJson(ctx, { tasks: json });
      return EXIT.ok;
    }
    ctx.print(
      table(
        ['ID', 'TYPE', 'STATUS', 'PRIORITY', 'AGENT', 'POOL', 'ATTEMPT', 'CREATED', 'ERROR'],
        tasks.map((t) => [
          t.taskId,
          t.taskType,
          enumName(TaskStatus, t.status),
          enumName(TaskPriority, t.priority),
          orDash(t.assignedAgentId || t.agentId),
          orDash(t.poolId),
          `${t.attempt}/${t.maxAttempts}`,
          when(t.createdAt),
          t.error ? `${t.error.code}: ${brief(t.error.message, 40)}` : '',
        ]),
      ),
    );
    return EXIT.ok;
  },
};

const poolsCommand: Command = {
  name: 'pools',
  summary: 'Pools with their size bounds, status and agents.',
  online: true,
  json: true,
  async run(ctx) {
    const { message, json } = await ctx.api().call(FabricService.method.listPools, {});
    if (ctx.json) {
      printJson(ctx, json);
      return EXIT.ok;
    }
    ctx.print(
      table(
        ['ID', 'NAME', 'MODEL', 'STATUS', 'MIN', 'MAX', 'AGENTS', 'CREATED'],
        message.pools.map((p) => [
          p.poolId,
          p.name,
          p.model,
          enumName(PoolStatus, p.status),
          String(p.minAgents),
          String(p.maxAgents),
          String(p.agentIds.length),
          when(p.createdAt),
        ]),
      ),
    );
    return EXIT.ok;
  },
};

/**
 * An approval's status as the tables show it: a pending one that no call waits for any more
 * (`orphaned`: its caller left, or the sidecar restarted) says so — approving it runs nothing,
 * and the operator must not take it for the call the agent is waiting on.
 */
function approvalStatus(a: Approval): string {
  const status = enumName(ApprovalStatus, a.status);
  return a.orphaned && a.status === ApprovalStatus.PENDING ? `${status} (NO CALL WAITS)` : status;
}

/** What `approvals approve|deny` adds for an approval no call waited for: nothing ran. */
const NOTHING_RAN =
  ' — no call was waiting for it (its caller left or the sidecar restarted): nothing runs; the agent must call again';

/** How much of an approval's arguments (as one-line JSON) the tables show. */
const PARAMS_SHOWN = 50;

/** An approval's policy and rule index, `policy#rule`. */
function approvalRule(a: Approval): string {
  return `${a.policy}${a.rule === undefined ? '' : `#${a.rule}`}`;
}

function approvalRows(list: readonly Approval[]): string[][] {
  return list.map((a) => [
    a.id,
    approvalStatus(a),
    a.agentId,
    a.tool,
    brief(valueJson(a.params, a.paramsJson), PARAMS_SHOWN),
    approvalRule(a),
    when(a.expiresAt),
  ]);
}

/** True when the tables cut `a`'s arguments (see {@link PARAMS_SHOWN}). */
function paramsCut(a: Approval): boolean {
  return (JSON.stringify(valueJson(a.params, a.paramsJson)) ?? '').length > PARAMS_SHOWN;
}

/** What the tables add (on stderr) when they cut an approval's arguments. */
const PARAMS_CUT_HINT = `agent-fabric: PARAMS shows the first ${PARAMS_SHOWN} characters of the arguments; \`agent-fabric approvals show <id>\` prints them in full — read them before deciding`;

const APPROVAL_HEADER = ['ID', 'STATUS', 'AGENT', 'TOOL', 'PARAMS', 'POLICY#RULE', 'EXPIRES'];
/** Columns of `approvals watch`: the event, then the approval as after it. */
const WATCH_HEADER = ['EVENT', ...APPROVAL_HEADER];

const approvalsListCommand: Command = {
  name: 'approvals list',
  summary: 'Approvals: the tool calls parked by a require_approval rule, and what became of them.',
  description: `PARAMS shows the first ${PARAMS_SHOWN} characters of each call's arguments (a line on stderr says when one was cut); \`approvals show <id>\` prints one approval's in full, --json all of them.`,
  options: {
    status: {
      type: 'string',
      value: 'status',
      description: 'pending (default), approved, denied, expired or all',
    },
    agent: { type: 'string', value: 'id', description: "only this agent's approvals" },
  },
  online: true,
  json: true,
  async run(ctx) {
    const raw = (ctx.values.status as string | undefined) ?? 'pending';
    const status =
      raw === 'all' ? 0 : enumOption(approvalsListCommand, 'status', ApprovalStatus, raw);
    const { message, json } = await ctx.api().call(ApprovalService.method.listApprovals, {
      status,
      agentId: (ctx.values.agent as string | undefined) ?? '',
    });
    if (ctx.json) {
      printJson(ctx, json);
      return EXIT.ok;
    }
    ctx.print(table(APPROVAL_HEADER, approvalRows(message.approvals)));
    if (message.approvals.some(paramsCut)) process.stderr.write(`${PARAMS_CUT_HINT}\n`);
    return EXIT.ok;
  },
};

const approvalsShowCommand: Command = {
  name: 'approvals show',
  args: '<id>',
  positionals: [1, 1],
  summary: 'One approval in full: its agent, tool, rule, status and the whole arguments.',
  description:
    'The arguments are the copy the approval holds (what the policy decided on; what is approved runs with them), as indented JSON: every character an agent could hide or act on the terminal with (controls, escape sequences, bidirectional controls, the characters a terminal draws as nothing) comes out as a JSON \\u escape, so the block is the same JSON value. Look-alike letters of other scripts are shown as they are. Fails (exit 1) when the approval does not exist (or was forgotten).',
  online: true,
  json: true,
  async run(ctx) {
    const { message, json } = await ctx
      .api()
      .call(ApprovalService.method.getApproval, { id: ctx.positionals[0]! });
    if (ctx.json) {
      printJson(ctx, json);
      return EXIT.ok;
    }
    const a = message.approval;
    if (a === undefined)
      throw new CliError('the sidecar answered without an approval', EXIT.failure);
    const orphaned = a.orphaned && a.status === ApprovalStatus.PENDING;
    const field = (name: string, value: string): void =>
      ctx.print(`${`${name}:`.padEnd(17)}${printable(value)}`);
    field('id', a.id);
    field(
      'status',
      `${approvalStatus(a)}${orphaned ? ' — no call waits for it (its caller left or the sidecar restarted): approving it runs nothing' : ''}`,
    );
    field('agent', a.agentId);
    field('pool', orDash(a.poolId));
    field('tool', a.tool);
    field('rule', orDash(approvalRule(a)));
    field('reason', orDash(a.reason));
    field('created', when(a.createdAt));
    field('expires', when(a.expiresAt));
    field('decided', when(a.decidedAt));
    field('approver', orDash(a.approver));
    field('decision reason', orDash(a.decisionReason));
    ctx.print('arguments:');
    const args = JSON.stringify(valueJson(a.params, a.paramsJson), null, 2) ?? 'null';
    ctx.print(indent(printableJson(args)));
    return EXIT.ok;
  },
};

function decideCommand(verb: 'approve' | 'deny'): Command {
  const command: Command = {
    name: `approvals ${verb}`,
    args: '<id>',
    positionals: [1, 1],
    summary:
      verb === 'approve'
        ? 'Approves a pending approval: the parked call goes on.'
        : 'Denies a pending approval: the parked call is refused.',
    description:
      'Fails (exit 1) when the approval does not exist or was already decided or expired.',
    options: {
      reason: { type: 'string', value: 'text', description: 'recorded with the decision' },
    },
    online: true,
    json: true,
    async run(ctx) {
      const request = {
        id: ctx.positionals[0]!,
        reason: (ctx.values.reason as string | undefined) ?? '',
      };
      const { message, json } =
        verb === 'approve'
          ? await ctx.api().call(ApprovalService.method.approve, request)
          : await ctx.api().call(ApprovalService.method.deny, request);
      if (ctx.json) {
        printJson(ctx, json);
        return EXIT.ok;
      }
      const a = message.approval;
      ctx.print(
        printable(
          `${a?.id ?? ctx.positionals[0]} ${enumName(ApprovalStatus, a?.status ?? 0)} (${a?.tool ?? '?'} by ${a?.agentId ?? '?'})${a?.orphaned ? NOTHING_RAN : ''}`,
        ),
      );
      return EXIT.ok;
    },
  };
  return command;
}

const approvalsWatchCommand: Command = {
  name: 'approvals watch',
  summary: 'Prints approvals as they are requested, decided or expire, until interrupted.',
  description: `Reads the ApprovalService.Watch stream: first the approvals pending at start (EXISTING), then each one requested, decided or expired, one line each as it happens (the header line shows once the stream is open). PARAMS shows the first ${PARAMS_SHOWN} characters of a call's arguments (the first time one is cut, a line on stderr says so): \`approvals show <id>\` prints them in full. With --json, the stream's events, one JSON object per line. Ctrl-C ends it (exit 0); the stream ended by the sidecar with an error (it stopped, or this reader fell behind) exits 1, the connection lost exits 3.`,
  online: true,
  json: true,
  async run(ctx) {
    const stop = new AbortController();
    const stopNow = (): void => stop.abort();
    let hinted = false;
    process.once('SIGINT', stopNow);
    process.once('SIGTERM', stopNow);
    try {
      const stream = ctx.api().stream(
        ApprovalService.method.watch,
        {},
        {
          signal: stop.signal,
          onOpen: () => {
            if (!ctx.json) ctx.print(WATCH_HEADER.join('  '));
          },
        },
      );
      for await (const { message, json } of stream) {
        const e = message.event;
        if (e?.approval === undefined) continue;
        if (ctx.json) {
          ctx.print(printableJson(JSON.stringify((json as { event?: JsonValue }).event ?? null)));
          continue;
        }
        const kind = e.existing ? 'EXISTING' : enumName(ApprovalEventKind, e.kind);
        ctx.print(table(WATCH_HEADER, [[kind, ...approvalRows([e.approval])[0]!]]).split('\n')[1]!);
        if (!hinted && paramsCut(e.approval)) {
          hinted = true;
          process.stderr.write(`${PARAMS_CUT_HINT}\n`);
        }
      }
    } finally {
      process.removeListener('SIGINT', stopNow);
      process.removeListener('SIGTERM', stopNow);
    }
    return EXIT.ok;
  },
};

const budgetsCommand: Command = {
  name: 'budgets',
  summary: 'Budget usage and limits of the fabric, every pool and every agent not terminated.',
  options: {
    agent: { type: 'string', value: 'id', description: 'only this agent' },
    pool: { type: 'string', value: 'id', description: 'only this pool' },
  },
  online: true,
  json: true,
  async run(ctx) {
    const api = ctx.api();
    type Scope = { case: 'agentId' | 'poolId'; value: string } | { case: 'fabric'; value: true };
    const scopes: Scope[] = [];
    if (ctx.values.agent !== undefined && ctx.values.pool !== undefined) {
      throw usageError(budgetsCommand, '--agent and --pool exclude each other');
    }
    if (typeof ctx.values.agent === 'string')
      scopes.push({ case: 'agentId', value: ctx.values.agent });
    else if (typeof ctx.values.pool === 'string')
      scopes.push({ case: 'poolId', value: ctx.values.pool });
    else {
      scopes.push({ case: 'fabric', value: true });
      const pools = await api.call(FabricService.method.listPools, {});
      for (const p of pools.message.pools) scopes.push({ case: 'poolId', value: p.poolId });
      const { items: agents } = await paged(
        10 * MAX_PAGE,
        'agents',
        async (pageSize, pageToken) => {
          const a = await api.call(FabricService.method.listAgents, { pageSize, pageToken });
          return { items: a.message.agents, next: a.message.nextPageToken, json: a.json };
        },
      );
      for (const a of agents) {
        if (a.status !== AgentStatus.TERMINATED) scopes.push({ case: 'agentId', value: a.agentId });
      }
    }
    const statuses: BudgetStatus[] = [];
    const json: JsonValue[] = [];
    for (const scope of scopes) {
      const s = await api.call(BudgetService.method.getBudgetStatus, { scope: { scope } });
      if (s.message.status) statuses.push(s.message.status);
      json.push((s.json as { status?: JsonValue }).status ?? null);
    }
    if (ctx.json) {
      printJson(ctx, { budgets: json });
      return EXIT.ok;
    }
    const usage = (u: BudgetStatus['tokens']): string =>
      u === undefined
        ? '-'
        : `${num(u.used)}${u.reserved > 0 ? `+${num(u.reserved)}` : ''}/${u.limit === undefined ? '-' : num(u.limit)}`;
    ctx.print(
      table(
        ['SCOPE', 'TOKENS/H', 'COST/DAY', 'USED%', 'STATE', 'RESETS'],
        statuses.map((b) => [
          b.scope,
          usage(b.tokens),
          usage(b.cost),
          num(b.percentUsed),
          b.exhausted ? 'EXHAUSTED' : b.warning ? 'WARNING' : 'ok',
          when(b.resetsAt),
        ]),
      ),
    );
    return EXIT.ok;
  },
};

const hooksCommand: Command = {
  name: 'hooks',
  summary: 'Work hooks (GUPP) with their agent, status, branch and progress.',
  options: {
    status: {
      type: 'string',
      value: 'status',
      description: 'only hooks in this status (pending, active, completed, failed, abandoned)',
    },
    agent: { type: 'string', value: 'id', description: "only this agent's hooks" },
    limit: LIMIT_OPTION,
  },
  online: true,
  json: true,
  async run(ctx) {
    const status = enumOption(hooksCommand, 'status', HookStatus, ctx.values.status);
    const limit = intOption(hooksCommand, ctx.values, 'limit', DEFAULT_LIMIT);
    const { items: hooks, json } = await paged(limit, 'hooks', async (pageSize, pageToken) => {
      const a = await ctx.api().call(FabricService.method.listHooks, {
        status,
        agentId: (ctx.values.agent as string | undefined) ?? '',
        pageSize,
        pageToken,
        // The table shows no work item or result (--json: the whole hooks).
        summary: !ctx.json,
      });
      return { items: a.message.hooks, next: a.message.nextPageToken, json: a.json };
    });
    if (ctx.json) {
      printJson(ctx, { hooks: json });
      return EXIT.ok;
    }
    ctx.print(
      table(
        ['ID', 'AGENT', 'STATUS', 'BRANCH', 'ATTEMPTS', 'UPDATED', 'PROGRESS'],
        hooks.map((h) => [
          h.hookId,
          h.agentId,
          enumName(HookStatus, h.status),
          orDash(h.branch),
          String(h.attempts),
          when(h.updatedAt),
          clip(h.progressNote, 40),
        ]),
      ),
    );
    return EXIT.ok;
  },
};

/** The commands that talk to a running sidecar. */
export const operatorCommands: readonly Command[] = [
  statusCommand,
  agentsCommand,
  tasksCommand,
  poolsCommand,
  approvalsListCommand,
  approvalsShowCommand,
  decideCommand('approve'),
  decideCommand('deny'),
  approvalsWatchCommand,
  budgetsCommand,
  hooksCommand,
];

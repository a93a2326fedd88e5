/**
 * The long operator commands — `pools scale`, `pools drain`, `agents drain` — with progress:
 * the command prints what it sees before it asks (an unknown pool or agent fails there), then,
 * while the sidecar works on the request (a drain waits for running tasks; scaling down drains
 * the agents it removes), polls the sidecar once a second and prints a line each time what it
 * sees changes, then a final line. With `--json` every line is one JSON object
 * (NDJSON): `{"step":"progress",…}` lines, then `{"step":"done",…}` with the sidecar's answer.
 *
 * What the API offers: `FabricService.ScalePool`, `TerminateAgent` (drains the agent: it takes
 * no new work, its running tasks get the drain timeout, then it terminates) and `DeletePool`
 * (drains the pool's queue and agents, then deletes it) — `pools drain` is that deletion.
 *
 * @module
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { JsonValue } from '@bufbuild/protobuf';
import { FabricService } from '../gen/fabric/v1/fabric_pb.js';
import { AgentStatus, PoolStatus } from '../gen/fabric/v1/fabric_types_pb.js';
import { CliError } from './api-client.js';
import { usageError, type Command, type CommandContext } from './command.js';
import { EXIT } from './exit-codes.js';
import { enumName, printable, printableJson } from './format.js';

/** How often a long command looks at the sidecar while it waits. */
const POLL_MS = 1000;

/** One look at the sidecar: the line to print and its JSON twin. */
interface Snapshot {
  line: string;
  json: Record<string, JsonValue>;
}

function emit(ctx: CommandContext, step: 'progress' | 'done', s: Snapshot): void {
  ctx.print(ctx.json ? printableJson(JSON.stringify({ step, ...s.json })) : printable(s.line));
}

/**
 * Prints what `look` sees (its failure — an unknown pool or agent — is the command's), then
 * sends `request` and, until it settles, prints what `look` sees whenever it changed. A failed
 * look while waiting prints nothing (the thing may be gone already): the answer decides — unless
 * the sidecar did not answer the look in time or could not be reached (`EXIT.unreachable`): then
 * that is the command's failure. The request itself waits for its answer as long as the sidecar
 * works on it (`unboundedWait`): these looks are what tell a sidecar that stopped answering.
 */
async function follow<T>(
  ctx: CommandContext,
  look: () => Promise<Snapshot>,
  request: () => Promise<T>,
): Promise<T> {
  const first = await look();
  emit(ctx, 'progress', first);
  const stop = new AbortController();
  let last = first.line;
  const pending = request();
  const watching = (async (): Promise<never> => {
    for (;;) {
      await sleep(POLL_MS, undefined, { signal: stop.signal }).catch(() => undefined);
      if (stop.signal.aborted) return new Promise<never>(() => undefined);
      try {
        const s = await look();
        if (!stop.signal.aborted && s.line !== last) {
          last = s.line;
          emit(ctx, 'progress', s);
        }
      } catch (error) {
        if (error instanceof CliError && error.exitCode === EXIT.unreachable) throw error;
        // Otherwise the request's answer says what happened.
      }
    }
  })();
  try {
    return await Promise.race([pending, watching]);
  } finally {
    stop.abort();
  }
}

/** `--timeout <seconds>` as a Duration (absent: the sidecar's drain timeout). */
function drainTimeout(
  command: Command,
  ctx: CommandContext,
): { seconds: bigint; nanos: number } | undefined {
  const raw = ctx.values.timeout;
  if (raw === undefined) return undefined;
  const n = Number(raw);
  if (typeof raw !== 'string' || !/^\d+(\.\d+)?$/.test(raw) || !Number.isFinite(n) || n > 1e9) {
    throw usageError(command, `--timeout: must be a number of seconds >= 0, not ${String(raw)}`);
  }
  const seconds = Math.floor(n);
  return { seconds: BigInt(seconds), nanos: Math.round((n - seconds) * 1e9) };
}

const TIMEOUT_OPTION = {
  type: 'string',
  value: 'seconds',
  description:
    "how long running and queued tasks may take to finish (default: the sidecar's drain timeout); what is left then is cancelled",
} as const;

const PROGRESS =
  'Prints a progress line whenever what it sees changes (polled once a second) and a final line; with --json one JSON object per line: {"step":"progress",...} then {"step":"done",...}. The request waits for its answer as long as the sidecar works on it; --request-timeout bounds each look (one not answered in time ends the command, exit 3).';

/** A pool's agents by status and its tasks, as `pools scale` and `pools drain` show them. */
async function lookAtPool(ctx: CommandContext, poolId: string): Promise<Snapshot> {
  const api = ctx.api();
  const [agents, stats, pool] = await Promise.all([
    api.call(FabricService.method.listAgents, { poolId, pageSize: 1000 }),
    api.call(FabricService.method.getStats, {}),
    api.call(FabricService.method.getPool, { poolId }),
  ]);
  const byStatus: Record<string, number> = {};
  for (const a of agents.message.agents) {
    if (a.status === AgentStatus.TERMINATED) continue;
    const s = enumName(AgentStatus, a.status);
    byStatus[s] = (byStatus[s] ?? 0) + 1;
  }
  const load = stats.message.pools[poolId];
  const running = load?.runningTasks ?? 0;
  const queued = load?.queuedTasks ?? 0;
  const status = enumName(PoolStatus, pool.message.pool?.status ?? 0);
  const live = pool.message.pool?.agentIds.length ?? 0;
  const counts = Object.entries(byStatus)
    .map(([s, n]) => `${n} ${s.toLowerCase()}`)
    .join(', ');
  return {
    line: `pool ${poolId}: ${status}, ${live} agents${counts ? ` (${counts})` : ''}, ${running} tasks running, ${queued} queued`,
    json: { poolId, status, agents: live, agentsByStatus: byStatus, running, queued },
  };
}

const poolsScaleCommand: Command = {
  name: 'pools scale',
  args: '<pool> <n>',
  positionals: [2, 2],
  summary: 'Scales a pool to n agents (clamped to its min and max agents).',
  description: `Growing spawns agents at once; shrinking drains the least-loaded agents (no new work, running tasks get the drain timeout) and returns when they terminated. ${PROGRESS} The spawned agents' credentials are shown this once, in the --json "done" line only (text output names the agents without them).`,
  online: true,
  json: true,
  async run(ctx) {
    const [poolId, rawN] = ctx.positionals as [string, string];
    const n = Number(rawN);
    if (!/^\d+$/.test(rawN) || !Number.isSafeInteger(n) || n > 0xffffffff) {
      throw usageError(poolsScaleCommand, `<n>: must be a whole number >= 0, not ${rawN}`);
    }
    const answer = await follow(
      ctx,
      () => lookAtPool(ctx, poolId),
      () =>
        ctx
          .api()
          .call(FabricService.method.scalePool, { poolId, targetSize: n }, { unboundedWait: true }),
    );
    const pool = answer.message.pool;
    const size = pool?.agentIds.length ?? 0;
    const spawned = answer.message.spawned.map((s) => s.agent?.agentId ?? '');
    emit(ctx, 'done', {
      line:
        `pool ${poolId} scaled to ${size} agents` +
        (size !== n ? ` (asked for ${n}; bounds ${pool?.minAgents}..${pool?.maxAgents})` : '') +
        (spawned.length > 0 ? `; spawned ${spawned.join(', ')}` : ''),
      json: answer.json as Record<string, JsonValue>,
    });
    return EXIT.ok;
  },
};

const poolsDrainCommand: Command = {
  name: 'pools drain',
  args: '<pool>',
  positionals: [1, 1],
  summary: 'Drains a pool and deletes it: no new tasks, then its agents terminate.',
  description: `The pool takes no new tasks at once; its queued and running tasks get --timeout to finish (what is left is cancelled), then its agents terminate and the pool is deleted (FabricService.DeletePool). ${PROGRESS}`,
  options: { timeout: TIMEOUT_OPTION },
  online: true,
  json: true,
  async run(ctx) {
    const poolId = ctx.positionals[0]!;
    const timeout = drainTimeout(poolsDrainCommand, ctx);
    const api = ctx.api();
    // The first look found the pool (an unknown pool fails there). If it is gone by the time the
    // deletion is asked for — another drain of it finished first, as when two operators drain
    // one pool at once — the pool was drained and deleted all the same: what this command is for.
    let byAnother = false;
    await follow(
      ctx,
      () => lookAtPool(ctx, poolId),
      () =>
        api
          .call(
            FabricService.method.deletePool,
            { poolId, ...(timeout === undefined ? {} : { drainTimeout: timeout }) },
            { unboundedWait: true },
          )
          .catch((error: unknown) => {
            if (!(error instanceof CliError) || error.fabricCode !== 'FABRIC_ERR_POOL_NOT_FOUND') {
              throw error;
            }
            byAnother = true;
          }),
    );
    emit(ctx, 'done', {
      line: `pool ${poolId} drained and deleted${byAnother ? ' (by another request that finished first)' : ''}`,
      json: { poolId, deleted: true, ...(byAnother ? { byAnotherRequest: true } : {}) },
    });
    return EXIT.ok;
  },
};

const agentsDrainCommand: Command = {
  name: 'agents drain',
  args: '<agent>',
  positionals: [1, 1],
  summary: 'Drains an agent and terminates it: no new work, running tasks may finish.',
  description: `The agent takes no new work at once; its running tasks get --timeout to finish (FabricService.TerminateAgent), then it terminates and its sessions close. ${PROGRESS}`,
  options: { timeout: TIMEOUT_OPTION },
  online: true,
  json: true,
  async run(ctx) {
    const agentId = ctx.positionals[0]!;
    const timeout = drainTimeout(agentsDrainCommand, ctx);
    const api = ctx.api();
    const look = async (): Promise<Snapshot> => {
      const a = (await api.call(FabricService.method.getAgent, { agentId })).message.agent;
      if (a === undefined) throw new CliError(`agent ${agentId}: no answer`, EXIT.failure);
      const status = enumName(AgentStatus, a.status);
      return {
        line: `agent ${agentId}: ${status}, ${a.runningTasks} tasks running, ${a.queuedTasks} queued`,
        json: { agentId, status, running: a.runningTasks, queued: a.queuedTasks },
      };
    };
    const answer = await follow(ctx, look, () =>
      api.call(
        FabricService.method.terminateAgent,
        { agentId, ...(timeout === undefined ? {} : { drainTimeout: timeout }) },
        { unboundedWait: true },
      ),
    );
    const status = enumName(AgentStatus, answer.message.agent?.status ?? 0);
    emit(ctx, 'done', {
      line: `agent ${agentId} drained: ${status}`,
      json: answer.json as Record<string, JsonValue>,
    });
    return EXIT.ok;
  },
};

/** The commands that scale and drain, with progress. */
export const scaleCommands: readonly Command[] = [
  poolsScaleCommand,
  poolsDrainCommand,
  agentsDrainCommand,
];

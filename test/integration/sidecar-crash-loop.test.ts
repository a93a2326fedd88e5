/**
 * The crash loop of issue #11 against the real `agent-fabric serve` (a child process, a real
 * server-everything upstream, the official SDK client over Streamable HTTP, a real SQLite state
 * file in a temp dir). While the test process loads it at the same time — tasks scheduled through
 * the HTTP door (`FabricService/ScheduleTaskToPool`, admin token), two start-up agents claiming
 * and completing them over MCP (`fabric__claim_task` / `fabric__complete_task`) with a result
 * derived from the payload, and tool calls (`ev__echo`, cost 1) settling the agent's budget — the
 * child is SIGKILLed at a random moment, several rounds, and restarted on the same state file;
 * the clients reconnect with the tokens of the first start. A last round drains every task and
 * stops the sidecar with SIGTERM. Then, read through the API and from the state file:
 *
 * - every task whose schedule was answered exists and ended COMPLETED with the result its worker
 *   sent for the attempt that ended it; a completion that was answered is that end (no task ended
 *   twice, none lost);
 * - a call parked for approval before the first kill left an approval that is still pending
 *   with the same expiry (its TTL is an hour; it cannot expire during the test), via the Operator
 *   API and on disk;
 * - a claim held across each kill (never completed) was retried: a later attempt ended the task,
 *   and the old attempt's completion after the restart is refused with FABRIC_ERR_TASK_STATE;
 * - the cost used on disk equals the settles that were answered, plus at most the calls that were
 *   in flight at each kill (committed before their answer could be sent), never less.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import Database from 'better-sqlite3';
import { afterAll, describe, expect, it } from 'vitest';
import { taskFromRow, type TaskRow } from '../../src/store/sqlite-tasks.js';
import { listApprovals, type ApiApproval } from '../fixtures/api.js';
import { DEFAULT_ALLOW, EVERYTHING_BIN, tempDir, until } from '../fixtures/gateway/harness.js';
import { cleanUp, connect, freePort, serve, stop, type Running } from '../fixtures/state/serve.js';

afterAll(cleanUp);

const ADMIN = `fab_admin_${'Zq7m'.repeat(8)}`;
const NAMES = ['w1', 'w2'];

function writeConfig(dir: string, port: number): void {
  writeFileSync(
    join(dir, 'fabric.json'),
    JSON.stringify({
      http: { host: '127.0.0.1', port },
      adminToken: ADMIN,
      // Every settle committed exactly (no budget lease: a crash would over-count by up to 1 %
      // of the limit, and this test counts settles to the unit; the lease's own crash test is
      // budget-lease-crash.test.ts).
      state: { path: join(dir, 'state', 'state.db'), budgetLeasePercent: 0 },
      upstreams: {
        ev: { command: process.execPath, args: [EVERYTHING_BIN, 'stdio'], stderr: 'ignore' },
      },
      policies: [
        {
          name: 'approvals',
          priority: 100,
          rules: [{ tool: 'ev__get-sum', action: 'require_approval', reason: 'a human adds' }],
        },
        DEFAULT_ALLOW,
      ],
      approvals: { timeoutSeconds: 3600 },
      toolCosts: { ev__echo: 1 },
      pools: [{ id: 'crunch' }],
      agents: NAMES.map((name) => ({
        name,
        poolId: 'crunch',
        budget: { maxCostPerDay: 1_000_000 },
      })),
    }),
  );
}

/** The start-up agents' tokens and ids, as the banner printed them. */
function agentsOf(r: Running): Map<string, { token: string; id: string }> {
  const found = new Map<string, { token: string; id: string }>();
  for (const m of r.out.matchAll(/agent token:\s+(\S+)\s+\((\w+), ([0-9a-f-]+)\)/g))
    found.set(m[2]!, { token: m[1]!, id: m[3]! });
  return found;
}

/** A POST to the HTTP door as the admin. */
async function door<T>(r: Running, method: string, body: unknown): Promise<T> {
  const res = await fetch(new URL(`/api/fabric.v1.FabricService/${method}`, r.url), {
    method: 'POST',
    headers: { authorization: `Bearer ${ADMIN}`, 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  const json = (await res.json()) as T;
  if (res.status !== 200) throw new Error(`${method}: ${res.status} ${JSON.stringify(json)}`);
  return json;
}

/** Pending approvals, through the HTTP door (`ApprovalService/ListApprovals`). */
function pending(r: Running): Promise<ApiApproval[]> {
  return listApprovals(r.url, ADMIN, 'pending');
}

interface TaskInfo {
  taskId: string;
  status: string;
  attempt?: number;
  payload?: { n: number };
  result?: unknown;
}

/** What a worker sends for attempt `attempt` of the task with payload `n`. */
const resultFor = (n: number, attempt: number) => ({ doubled: n * 2, attempt });

/** Everything the test saw answered, over all rounds. */
const scheduled = new Map<string, number>();
const completed = new Map<string, number>(); // task id → the attempt whose completion was answered
let settled = 0;
let inFlightAtKills = 0;

function structured(result: unknown): unknown {
  return (result as { structuredContent?: { result?: unknown } }).structuredContent?.result;
}

/** One round of load on `r` until `stopped()`; resolves when every loop has ended. */
function load(r: Running, clients: Client[], stopped: () => boolean, schedulers = 3) {
  let echoesInFlight = 0;
  const loops: Promise<void>[] = [];
  // Schedulers in parallel; each answered schedule counts.
  for (let s = 0; s < schedulers; s++) {
    loops.push(
      (async () => {
        while (!stopped()) {
          const n = Math.floor(Math.random() * 1_000_000);
          let answer: { task: TaskInfo };
          try {
            answer = await door<{ task: TaskInfo }>(r, 'ScheduleTaskToPool', {
              poolId: 'crunch',
              taskType: 'double',
              payload: { n },
              options: { maxAttempts: 1000 },
            });
          } catch {
            return;
          }
          expect(scheduled.has(answer.task.taskId)).toBe(false);
          scheduled.set(answer.task.taskId, n);
        }
      })(),
    );
  }
  for (const client of clients) {
    // A worker: claim, complete with a result derived from the payload.
    loops.push(
      (async () => {
        while (!stopped()) {
          let task: { taskId: string; attempt: number; payload: { n: number } } | null;
          try {
            const claim = await client.callTool({
              name: 'fabric__claim_task',
              arguments: { waitSeconds: 0.2 },
            });
            if (claim.isError) throw new Error(JSON.stringify(claim.content));
            task = structured(claim) as typeof task;
            if (task === null) continue;
            const done = await client.callTool({
              name: 'fabric__complete_task',
              arguments: {
                taskId: task.taskId,
                attempt: task.attempt,
                result: resultFor(task.payload.n, task.attempt),
              },
            });
            if (done.isError) throw new Error(JSON.stringify(done.content));
          } catch {
            return;
          }
          // An end is reached once: no second answered completion of the same task.
          expect(completed.has(task.taskId), `task ${task.taskId} completed twice`).toBe(false);
          completed.set(task.taskId, task.attempt);
        }
      })(),
    );
    // Tool calls settling the agent's budget (cost 1 each).
    loops.push(
      (async () => {
        while (!stopped()) {
          echoesInFlight++;
          try {
            const res = await client.callTool({ name: 'ev__echo', arguments: { message: 'x' } });
            if (res.isError) throw new Error(JSON.stringify(res.content));
          } catch {
            return;
          } finally {
            echoesInFlight--;
          }
          settled++;
        }
      })(),
    );
  }
  return { done: Promise.all(loops), inFlight: () => echoesInFlight };
}

async function clientsFor(r: Running, tokens: string[]): Promise<Client[]> {
  return Promise.all(tokens.map((t) => connect(r.url, t)));
}

/** The tasks and the cost used by `scopes` in the state file (read-only; the sidecar stopped). */
function onDisk(path: string, scopes: string[]) {
  const db = new Database(path, { readonly: true, fileMustExist: true });
  try {
    const tasks = new Map(
      db
        .prepare<[], TaskRow>('SELECT * FROM tasks')
        .all()
        .map((row) => [row.id, taskFromRow(row) as unknown as TaskInfo & { attempt: number }]),
    );
    const cost = (scope: string): number => {
      const row = db
        .prepare<[string], { data: string }>('SELECT data FROM budgets WHERE scope = ?')
        .get(scope);
      if (row === undefined) return 0;
      const c = (JSON.parse(row.data) as { cost: { used?: number; buckets?: number[] } }).cost;
      return c.used ?? (c.buckets ?? []).reduce((a, b) => a + b, 0);
    };
    const approvals = db
      .prepare<[], { data: string }>("SELECT data FROM records WHERE kind = 'approval'")
      .all()
      .map((row) => JSON.parse(row.data) as ApiApproval);
    return { tasks, approvals, cost: scopes.reduce((sum, scope) => sum + cost(scope), 0) };
  } finally {
    db.close();
  }
}

describe('agent-fabric serve under load, SIGKILLed at random moments', () => {
  it('ends every acknowledged task exactly once with its result; budget == acknowledged settles', async () => {
    const dir = tempDir('sidecar-crash');
    const port = await freePort();
    writeConfig(dir, port);
    const statePath = join(dir, 'state', 'state.db');

    const first = await serve(dir);
    const agents = agentsOf(first);
    expect([...agents.keys()].sort()).toEqual(NAMES);
    const tokens = NAMES.map((n) => agents.get(n)!.token);
    let current = first;
    const held: { taskId: string; attempt: number }[] = [];
    // One call parked for approval before the first kill: it must stay pending, same expiry.
    const parker = await connect(first.url, tokens[0]!);
    const parkedCall = parker
      .callTool({ name: 'ev__get-sum', arguments: { a: 1, b: 2 } }, undefined, {
        timeout: 600_000,
      })
      .catch((error: unknown) => ({ error }));
    await until(async () => (await pending(first)).length === 1, 30_000);
    const [parked] = await pending(first);

    for (let round = 0; round < 3; round++) {
      const clients = await clientsFor(current, tokens); // old tokens must still authenticate
      let killed = false;
      const run = load(current, clients, () => killed);
      const before = { scheduled: scheduled.size, completed: completed.size, settled };
      // Let the round make progress, then kill at a random moment in its stride.
      await until(
        () =>
          scheduled.size > before.scheduled + 20 &&
          completed.size > before.completed + 5 &&
          settled > before.settled + 5,
        30_000,
      );
      // A claim held across the kill (its worker never completes it): it must be retried.
      const claim = await clients[1]!.callTool({
        name: 'fabric__claim_task',
        arguments: { waitSeconds: 10 },
      });
      const hold = structured(claim) as { taskId: string; attempt: number } | null;
      expect(hold).not.toBeNull();
      held.push(hold!);
      await new Promise((resolve) => setTimeout(resolve, Math.random() * 400));
      const inFlight = run.inFlight();
      killed = true;
      await stop(current, 'SIGKILL');
      inFlightAtKills += inFlight;
      await run.done;
      if (round === 0) expect(await parkedCall).toHaveProperty('error'); // died with the sidecar
      for (const c of clients) await c.close().catch(() => undefined);
      current = await serve(dir);
      // Same tokens printed after every restart.
      for (const n of NAMES) expect(agentsOf(current).get(n)?.token).toBe(agents.get(n)!.token);
      // Hostile: the held attempt's late completion is refused; nothing it sent is stored.
      const late = await (
        await connect(current.url, tokens[1]!)
      ).callTool({
        name: 'fabric__complete_task',
        arguments: { taskId: hold!.taskId, attempt: hold!.attempt, result: 'stale' },
      });
      expect(late.isError).toBe(true);
      expect(JSON.stringify(late.content)).toContain('FABRIC_ERR_TASK_STATE');
    }

    // Last round: no kill, no new schedules; the workers drain every acknowledged task.
    const clients = await clientsFor(current, tokens);
    let drained = false;
    const workers = load(current, clients, () => drained, 0);
    await until(async () => {
      for (const id of scheduled.keys()) {
        const { task } = await door<{ task: TaskInfo }>(current, 'GetTask', { taskId: id });
        if (task.status !== 'TASK_STATUS_COMPLETED') return false;
      }
      return true;
    }, 40_000);
    drained = true;
    await workers.done;
    // Through the API: every acknowledged task COMPLETED with the result sent for its attempt.
    for (const [id, n] of scheduled) {
      const { task } = await door<{ task: TaskInfo }>(current, 'GetTask', { taskId: id });
      expect(task.status).toBe('TASK_STATUS_COMPLETED');
      expect(task.result).toEqual(resultFor(n, task.attempt ?? 0));
    }
    // The approval parked before the first kill: still pending, same expiry, via the API…
    expect(await pending(current)).toEqual([
      expect.objectContaining({
        id: parked!.id,
        createdAt: parked!.createdAt,
        expiresAt: parked!.expiresAt,
      }),
    ]);
    expect(await stop(current, 'SIGTERM')).toBe(0);

    // On disk, after the sidecar stopped.
    const disk = onDisk(
      statePath,
      NAMES.map((n) => `agent:${agents.get(n)!.id}`),
    );
    let retried = 0;
    for (const [id, n] of scheduled) {
      const t = disk.tasks.get(id);
      expect(t, `acknowledged task ${id} on disk`).toBeDefined();
      expect(t!.status).toBe('COMPLETED');
      expect(t!.payload).toEqual({ n });
      expect(t!.result).toEqual(resultFor(n, t!.attempt));
      if (t!.attempt > 1) retried++;
    }
    for (const [id, attempt] of completed) {
      // An answered completion is the task's one end.
      const t = disk.tasks.get(id)!;
      expect({ id, status: t.status, attempt: t.attempt }).toEqual({
        id,
        status: 'COMPLETED',
        attempt,
      });
    }
    // …and on disk.
    expect(disk.approvals).toEqual([
      expect.objectContaining({ id: parked!.id, status: 'pending', expiresAt: parked!.expiresAt }),
    ]);
    // The claims held across the kills were retried: a later attempt ended them.
    for (const h of held) expect(disk.tasks.get(h.taskId)!.attempt).toBeGreaterThan(h.attempt);
    expect(retried).toBeGreaterThanOrEqual(held.length);
    const used = disk.cost;
    expect(used).toBeGreaterThanOrEqual(settled);
    expect(used).toBeLessThanOrEqual(settled + inFlightAtKills);
  }, 120_000);
});

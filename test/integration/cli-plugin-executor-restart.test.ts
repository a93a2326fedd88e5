/**
 * A durable `agent-fabric serve` whose pool agents run on an executor a plugin brings restarts
 * (the real CLI as a child process, plugin files loaded by path, a real SQLite state file): the
 * fabric restores its agents before the plugins load, so they wait for the plugin's executor
 * instead of stopping the start with FABRIC_ERR_EXECUTOR_NOT_FOUND.
 *
 * - a pool created at run time on the plugin's executor, stopped by SIGTERM with one task
 *   running and two queued (unloading the plugin takes the running attempt back): after the
 *   restart they all run, the interrupted one as attempt 2;
 * - a config pool whose pool plugin names the executor plugin's executor, SIGKILLed with a task
 *   running and one queued, restarted without the executor plugin: it starts, logs the executor
 *   its agents wait for, and the tasks stay queued on disk (the interrupted attempt counted);
 *   restarted with the plugin again, they run, and the plugin is told of the attempt the kill
 *   ended (the abort the second run held is not lost with it);
 * - a pool whose agent ends while the executor plugin is missing: the pool cannot replace it,
 *   and the log says why (not a silent stall); two such pools each get their line (one pool's
 *   failures do not hide another's behind the log's window).
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { tempDir, until } from '../fixtures/gateway/harness.js';
import { ADMIN, api, onDisk } from '../fixtures/nats/state-sidecar.js';
import { cleanUp, freePort, serve, stop } from '../fixtures/state/serve.js';

afterAll(cleanUp);

const EXECUTOR_PLUGIN = fileURLToPath(
  new URL('../fixtures/plugins/gated-executor.mjs', import.meta.url),
);
const POOL_PLUGIN = fileURLToPath(new URL('../fixtures/plugins/gated-pool.mjs', import.meta.url));

interface Plugin {
  module: string;
  options?: Record<string, unknown>;
}

function writeConfig(
  dir: string,
  port: number,
  plugins: Plugin[],
  extra: Record<string, unknown> = {},
): void {
  writeFileSync(
    join(dir, 'fabric.json'),
    // An agent for the banner the test waits for (its MCP client config).
    JSON.stringify({
      http: { host: '127.0.0.1', port },
      adminToken: ADMIN,
      agents: [{ name: 'client' }],
      plugins,
      ...extra,
    }),
  );
}

async function scheduleToPool(url: string, poolId: string, n: number): Promise<string> {
  const { task } = await api<{ task: { taskId: string } }>(
    url,
    'FabricService/ScheduleTaskToPool',
    { poolId, taskType: 'echo', payload: { n } },
  );
  return task.taskId;
}

function statusesOnDisk(statePath: string, ids: string[]): [string, number][] {
  const rows = onDisk(statePath);
  return ids.map((id) => [rows.get(id)!.status, rows.get(id)!.attempt]);
}

/** Waits until the tasks `ids` have the `[status, attempt]`s `expected` in the state file. */
function untilOnDisk(
  statePath: string,
  ids: string[],
  expected: [string, number][],
): Promise<void> {
  const want = JSON.stringify(expected);
  return until(() => JSON.stringify(statusesOnDisk(statePath, ids)) === want, 20_000);
}

describe('agent-fabric serve: pool agents on a plugin executor, across restarts', () => {
  it('SIGTERM with tasks running and queued: the restart runs them on the plugin executor', async () => {
    const dir = tempDir('plugin-exec-term');
    const port = await freePort();
    const statePath = join(dir, '.fabric', 'state.db');
    // One task at a time per agent, never completed: one RUNNING, the rest queued.
    writeConfig(dir, port, [
      { module: EXECUTOR_PLUGIN, options: { capacity: 1, complete: false } },
    ]);
    const first = await serve(dir);
    await api(first.url, 'FabricService/CreatePool', {
      poolId: 'gp',
      model: 'm',
      minAgents: 1,
      executor: 'gated',
    });
    const ids: string[] = [];
    for (let n = 0; n < 3; n++) ids.push(await scheduleToPool(first.url, 'gp', n));
    await untilOnDisk(statePath, ids, [
      ['RUNNING', 1],
      ['PENDING', 0],
      ['PENDING', 0],
    ]);
    expect(await stop(first, 'SIGTERM')).toBe(0);
    // Unloading the plugin at the shutdown took its agents' running attempt back (counted).
    expect(first.err()).toContain(`aborted ${ids[0]}#1`);
    expect(statusesOnDisk(statePath, ids)).toEqual([
      ['PENDING', 1],
      ['PENDING', 0],
      ['PENDING', 0],
    ]);

    writeConfig(dir, port, [{ module: EXECUTOR_PLUGIN }]);
    const second = await serve(dir);
    for (const taskId of ids) {
      await api(second.url, 'FabricService/WaitTask', { taskId, timeout: '30s' });
    }
    const end = onDisk(statePath);
    expect(ids.map((id) => end.get(id))).toEqual([
      { status: 'COMPLETED', attempt: 2, result: { echo: { n: 0 }, attempt: 2 } },
      { status: 'COMPLETED', attempt: 1, result: { echo: { n: 1 }, attempt: 1 } },
      { status: 'COMPLETED', attempt: 1, result: { echo: { n: 2 }, attempt: 1 } },
    ]);
    // New work for the pool runs too.
    const later = await scheduleToPool(second.url, 'gp', 3);
    await api(second.url, 'FabricService/WaitTask', { taskId: later, timeout: '30s' });
    expect(onDisk(statePath).get(later)).toMatchObject({ status: 'COMPLETED', attempt: 1 });
    expect(await stop(second, 'SIGTERM')).toBe(0);
  }, 120_000);

  it('SIGKILL with tasks running and queued for a config pool: they wait while the executor is missing, then run', async () => {
    const dir = tempDir('plugin-exec-kill');
    const port = await freePort();
    const statePath = join(dir, '.fabric', 'state.db');
    const pools = { pools: [{ id: 'cp', provider: 'gated', minAgents: 1 }] };
    // One task at a time, never completed: one RUNNING, the other queued.
    writeConfig(
      dir,
      port,
      [
        { module: EXECUTOR_PLUGIN, options: { capacity: 1, complete: false } },
        { module: POOL_PLUGIN },
      ],
      pools,
    );
    const first = await serve(dir);
    const ids: string[] = [];
    for (let n = 0; n < 2; n++) ids.push(await scheduleToPool(first.url, 'cp', n));
    await untilOnDisk(statePath, ids, [
      ['RUNNING', 1],
      ['PENDING', 0],
    ]);
    const { pool } = await api<{ pool: { agentIds: string[] } }>(
      first.url,
      'FabricService/GetPool',
      { poolId: 'cp' },
    );
    expect(pool.agentIds).toHaveLength(1);
    expect(await stop(first, 'SIGKILL')).toBeNull();

    // Without the executor plugin: the sidecar starts, says which executor its agents wait for.
    writeConfig(dir, port, [{ module: POOL_PLUGIN }], pools);
    const second = await serve(dir);
    const warning = second
      .err()
      .split('\n')
      .find((l) => l.includes('no plugin registered it'));
    expect(warning).toBeDefined();
    expect(JSON.parse(warning!)).toMatchObject({ executor: 'gated', agentIds: pool.agentIds });
    const more = await scheduleToPool(second.url, 'cp', 2);
    ids.push(more);
    await until(() => onDisk(statePath).get(more)?.status === 'PENDING', 20_000);
    // The attempt the kill interrupted is counted; nothing ran since.
    expect(statusesOnDisk(statePath, ids)).toEqual([
      ['PENDING', 1],
      ['PENDING', 0],
      ['PENDING', 0],
    ]);
    expect(await stop(second, 'SIGTERM')).toBe(0);

    writeConfig(dir, port, [{ module: EXECUTOR_PLUGIN }, { module: POOL_PLUGIN }], pools);
    const third = await serve(dir);
    expect(third.err()).not.toContain('no plugin registered it');
    // The attempt the kill ended: the second run's placeholder held its abort and stopped before
    // the plugin returned; this run tells the plugin, once.
    await until(() => third.err().includes(`aborted ${ids[0]}#1`), 20_000);
    expect(third.err().split(`aborted ${ids[0]}#1`)).toHaveLength(2);
    for (const taskId of ids) {
      await api(third.url, 'FabricService/WaitTask', { taskId, timeout: '30s' });
    }
    const end = onDisk(statePath);
    expect(ids.map((id) => end.get(id))).toEqual(
      [2, 1, 1].map((attempt, n) => ({
        status: 'COMPLETED',
        attempt,
        result: { echo: { n }, attempt },
      })),
    );
    // The pool's agent from before the kill ran them: it was restored, not replaced.
    const assigned = await api<{ task: { assignedAgentId: string } }>(
      third.url,
      'FabricService/GetTask',
      { taskId: ids[0] },
    );
    expect(pool.agentIds).toContain(assigned.task.assignedAgentId);
    expect(await stop(third, 'SIGTERM')).toBe(0);
  }, 120_000);

  it('a pool agent ended while the executor is missing: the log says why it is not replaced', async () => {
    const dir = tempDir('plugin-exec-replace');
    const port = await freePort();
    writeConfig(dir, port, [{ module: EXECUTOR_PLUGIN }]);
    const first = await serve(dir);
    const { pool } = await api<{ pool: { agentIds: string[] } }>(
      first.url,
      'FabricService/CreatePool',
      { poolId: 'gp', model: 'm', minAgents: 1, executor: 'gated' },
    );
    expect(await stop(first, 'SIGTERM')).toBe(0);

    writeConfig(dir, port, []);
    const second = await serve(dir);
    await api(second.url, 'FabricService/TerminateAgent', {
      agentId: pool.agentIds[0],
      drainTimeout: '0s',
    });
    const said = (): string | undefined =>
      second
        .err()
        .split('\n')
        .find((l) => l.includes('an agent could not be started'));
    await until(() => said() !== undefined, 20_000);
    const { level, msg } = JSON.parse(said()!) as { level: number; msg: string };
    expect(level).toBe(40); // warn
    expect(msg).toMatch(
      /^pool "gp": an agent could not be started .*names no registered executor: "gated" \(agents restored from the store wait for it/,
    );
    expect(await stop(second, 'SIGTERM')).toBe(0);
  }, 60_000);

  it('two pools short at once: each says so, the second not hidden behind the first one’s window', async () => {
    const dir = tempDir('plugin-exec-replace-two');
    const port = await freePort();
    writeConfig(dir, port, [{ module: EXECUTOR_PLUGIN }]);
    const first = await serve(dir);
    const agentOf = async (poolId: string): Promise<string> => {
      const { pool } = await api<{ pool: { agentIds: string[] } }>(
        first.url,
        'FabricService/CreatePool',
        { poolId, model: 'm', minAgents: 1, executor: 'gated' },
      );
      return pool.agentIds[0]!;
    };
    const a = await agentOf('ga');
    const b = await agentOf('gb');
    expect(await stop(first, 'SIGTERM')).toBe(0);

    writeConfig(dir, port, []);
    const second = await serve(dir);
    const said = (poolId: string): string[] =>
      second
        .err()
        .split('\n')
        .filter((l) => l.includes(`pool \\"${poolId}\\": an agent could not be started`));
    await api(second.url, 'FabricService/TerminateAgent', { agentId: a, drainTimeout: '0s' });
    await until(() => said('ga').length > 0, 20_000);
    // Pool ga goes on failing (its backoff retries) while gb starts to: gb is logged too.
    await api(second.url, 'FabricService/TerminateAgent', { agentId: b, drainTimeout: '0s' });
    await until(() => said('gb').length > 0, 20_000);
    expect(said('ga')).toHaveLength(1);
    expect(said('gb')).toHaveLength(1);
    expect(await stop(second, 'SIGTERM')).toBe(0);
  }, 60_000);
});

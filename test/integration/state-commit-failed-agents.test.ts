/**
 * Agent and pool changes, and waits for a task's end, while the state store's commits fail
 * (disk full: the real `agent-fabric serve`'s file size limit set to 0 with `prlimit`, see
 * test/fixtures/state/disk-full.ts), checked in its answers, with real credentials and in the
 * state file after the disk takes writes again and after a restart.
 *
 * Before, `SpawnAgent`, `CreatePool`, `ScalePool` and `TerminateAgent` answered as if their
 * change were on disk: a spawn handed out a working credential of an agent a stop would lose,
 * and `WaitTask` answered a task's end that a restart could undo. Now a spawn or a pool growth
 * whose commit failed is refused and undone (no agent, no working credential, nothing written
 * once the disk takes writes); a termination is refused but holds (a revoked credential never
 * works again); `WaitTask` answers only once the end is on disk.
 */
import { once } from 'node:events';
import { createServer, type Server } from 'node:http';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, expect, it } from 'vitest';
import { callApi, postJson } from '../fixtures/api.js';
import { ADMIN_TOKEN, INIT, metricValue, until } from '../fixtures/gateway/harness.js';
import { diskFull, recordsIn, tasksIn } from '../fixtures/state/disk-full.js';
import {
  agentIdOf,
  ENV,
  oneWorkerDir,
  schedule,
  stateReady,
} from '../fixtures/state/one-worker.js';
import { cleanUp, connect, serve, stop, type Running } from '../fixtures/state/serve.js';

const CREDENTIAL_POOL = fileURLToPath(
  new URL('../fixtures/plugins/credential-pool.mjs', import.meta.url),
);

const servers: Server[] = [];
afterAll(async () => {
  for (const s of servers) s.close();
  await cleanUp();
});

/** A real MCP `initialize` with `credential`: whether the sidecar lets it in (not 401). */
async function authenticates(r: Running, credential: string): Promise<boolean> {
  const res = await postJson(new URL(r.url), INIT, credential, {
    headers: {
      'content-type': 'application/json',
      accept: 'application/json, text/event-stream',
      authorization: `Bearer ${credential}`,
    },
  });
  await res.body?.cancel();
  return res.status !== 401;
}

interface Failed {
  code: string;
  message: string;
}

/** An Operator API call that must fail: its status is not 200; resolves its body. */
async function refused(r: Running, method: string, body: unknown): Promise<Failed> {
  const res = await callApi(r.url, method, body, ADMIN_TOKEN);
  const answer = (await res.json()) as Failed;
  expect(res.status, JSON.stringify(answer)).not.toBe(200);
  return answer;
}

async function ok<T>(r: Running, method: string, body: unknown): Promise<T> {
  const res = await callApi(r.url, method, body, ADMIN_TOKEN);
  const answer = (await res.json()) as T;
  expect(res.status, JSON.stringify(answer)).toBe(200);
  return answer;
}

/** The credentials the `report` pool provider was given, by agent id (see credential-pool.mjs). */
async function credentialSink(): Promise<{ url: string; got: Map<string, string> }> {
  const got = new Map<string, string>();
  const server = createServer((req, res) => {
    let body = '';
    req.on('data', (c: Buffer) => (body += c.toString()));
    req.on('end', () => {
      const { agentId, credential } = JSON.parse(body) as { agentId: string; credential: string };
      got.set(agentId, credential);
      res.end();
    });
  });
  servers.push(server);
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as { port: number };
  return { url: `http://127.0.0.1:${port}/`, got };
}

interface Listed {
  agents: { agentId: string; status: string }[];
}

async function agentIds(r: Running): Promise<string[]> {
  return (await ok<Listed>(r, 'FabricService/ListAgents', {})).agents.map((a) => a.agentId).sort();
}

it('a spawn or pool growth whose commit failed is refused and undone: no agent, no working credential, nothing on disk', async () => {
  const sink = await credentialSink();
  const dir = await oneWorkerDir('state-commit-failed-agents', {
    plugins: [{ module: CREDENTIAL_POOL, options: { report: sink.url } }],
  });
  const statePath = join(dir, '.fabric', 'state.db');
  const first = await serve(dir, ENV);
  const worker = agentIdOf(first);
  // A pool made while the disk takes writes: one agent, its credential works.
  await ok(first, 'FabricService/CreatePool', {
    poolId: 'crew',
    model: 'm',
    minAgents: 1,
    provider: 'report',
  });
  await until(() => sink.got.size === 1);
  const [member] = [...sink.got.keys()];
  expect(await authenticates(first, sink.got.get(member!)!)).toBe(true);

  diskFull(first, true);
  const spawn = await refused(first, 'FabricService/SpawnAgent', {
    name: 'extra',
    model: 'm',
    executor: 'remote',
  });
  expect(spawn.code).toBe('FABRIC_ERR_STATE_STORE');
  expect(spawn.message).toContain('was not spawned');
  expect(spawn.message).toContain('undone');
  const create = await refused(first, 'FabricService/CreatePool', {
    poolId: 'late',
    model: 'm',
    minAgents: 2,
    provider: 'report',
  });
  expect(create.code).toBe('FABRIC_ERR_STATE_STORE');
  expect(create.message).toContain('pool late was not created');
  const scale = await refused(first, 'FabricService/ScalePool', { poolId: 'crew', targetSize: 3 });
  expect(scale.code).toBe('FABRIC_ERR_STATE_STORE');
  expect(scale.message).toContain('pool crew was not scaled');

  // The provider was given the credentials of the 2 + 2 agents the refused pool changes made:
  // none of them works, and none of those agents is listed.
  await until(() => sink.got.size === 5);
  const withdrawn = [...sink.got].filter(([id]) => id !== member);
  for (const [, credential] of withdrawn)
    expect(await authenticates(first, credential)).toBe(false);
  expect(await agentIds(first)).toEqual([worker, member].sort());
  const pools = await ok<{ pools: { poolId: string; agentIds: string[] }[] }>(
    first,
    'FabricService/ListPools',
    {},
  );
  expect(pools.pools.map((p) => [p.poolId, p.agentIds])).toEqual([['crew', [member]]]);

  // The disk takes writes again: what the file holds is what was acknowledged.
  diskFull(first, false);
  await until(() => stateReady(first), 20_000);
  expect([...recordsIn(statePath, 'agent').keys()].sort()).toEqual([worker, member].sort());
  const onDisk = recordsIn(statePath, 'pool');
  expect([...onDisk.keys()]).toEqual(['crew']);
  expect(onDisk.get('crew')).toMatchObject({ desired: 1, agentIds: [member] });
  expect(await stop(first, 'SIGTERM')).toBe(0);

  const second = await serve(dir, ENV);
  expect(await agentIds(second)).toEqual([worker, member].sort());
  for (const [, credential] of withdrawn) {
    expect(await authenticates(second, credential)).toBe(false);
  }
  expect(await stop(second, 'SIGTERM')).toBe(0);
}, 120_000);

it('a termination whose commit failed is refused but holds: the credential never works again', async () => {
  const dir = await oneWorkerDir('state-commit-failed-terminate');
  const statePath = join(dir, '.fabric', 'state.db');
  const first = await serve(dir, ENV);
  const { spawned } = await ok<{ spawned: { agent: { agentId: string }; credential: string } }>(
    first,
    'FabricService/SpawnAgent',
    { name: 'doomed', model: 'm', executor: 'remote' },
  );
  const id = spawned.agent.agentId;
  expect(await authenticates(first, spawned.credential)).toBe(true);

  diskFull(first, true);
  const answer = await refused(first, 'FabricService/TerminateAgent', { agentId: id });
  expect(answer.code).toBe('FABRIC_ERR_STATE_STORE');
  expect(answer.message).toContain('the termination holds');
  expect(await authenticates(first, spawned.credential)).toBe(false);
  expect(recordsIn(statePath, 'agent').get(id)?.status).not.toBe('TERMINATED');

  diskFull(first, false);
  await until(() => stateReady(first), 20_000);
  expect(recordsIn(statePath, 'agent').get(id)?.status).toBe('TERMINATED');
  expect(await stop(first, 'SIGTERM')).toBe(0);
  const second = await serve(dir, ENV);
  expect(await authenticates(second, spawned.credential)).toBe(false);
  expect(await stop(second, 'SIGTERM')).toBe(0);
}, 120_000);

it('WaitTask answers a task end only once it is on disk, and FABRIC_ERR_STATE_STORE when its wait runs out first', async () => {
  const dir = await oneWorkerDir('state-commit-failed-wait');
  const statePath = join(dir, '.fabric', 'state.db');
  const first = await serve(dir, ENV);
  const agentId = agentIdOf(first);
  const client = await connect(first.url, first.token);
  const taskId = await schedule(first, agentId, 1);
  const claimed = await client.callTool({
    name: 'fabric__claim_task',
    arguments: { waitSeconds: 0 },
  });
  const work = (claimed.structuredContent as { result: { taskId: string; attempt: number } })
    .result;
  expect(work.taskId).toBe(taskId);

  diskFull(first, true);
  const done = await client.callTool({
    name: 'fabric__complete_task',
    arguments: { taskId, attempt: work.attempt, result: 'done' },
  });
  expect(done.isError).toBe(true);
  // Ended in memory, not on disk: a bounded wait runs out saying so instead of answering it.
  const bounded = await refused(first, 'FabricService/WaitTask', { taskId, timeout: '1s' });
  expect(bounded.code).toBe('FABRIC_ERR_STATE_STORE');
  expect(bounded.message).toContain(
    `task ${taskId} ended (COMPLETED) but its end is not committed`,
  );
  const tasksOnDisk = (): string | undefined =>
    tasksIn(statePath).find((t) => t.id === taskId)?.status;
  expect(tasksOnDisk()).not.toBe('COMPLETED');

  // An unbounded wait answers once the disk takes writes again: the end is then in the file.
  // Meanwhile `/metrics` counts it among the calls waiting for a commit (and the bounded one,
  // gone, no more).
  const waiters = (): Promise<number> => metricValue(first, 'agent_fabric_store_waiting_calls ');
  expect(await waiters()).toBe(0);
  const waiting = callApi(first.url, 'FabricService/WaitTask', { taskId }, ADMIN_TOKEN);
  await until(async () => (await waiters()) === 1);
  diskFull(first, false);
  const res = await waiting;
  expect(res.status).toBe(200);
  expect(((await res.json()) as { task: { status: string } }).task.status).toBe(
    'TASK_STATUS_COMPLETED',
  );
  expect(tasksOnDisk()).toBe('COMPLETED');
  expect(await waiters()).toBe(0);
  expect(await stop(first, 'SIGTERM')).toBe(0);
}, 120_000);

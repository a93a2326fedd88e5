/**
 * `pools scale`, `pools drain` and `agents drain` of the real `agent-fabric` CLI (child
 * processes, run from source) against a real sidecar: the pool's and the agent's state in the
 * fabric afterwards, progress lines while a drain waits for a running task (and the task's
 * result kept), NDJSON with --json, and the documented exit codes for a wrong command line (2),
 * an unknown pool or agent (1), an unreachable sidecar (3) and a refused token (4); a drain
 * that outlasts --request-timeout is not cut (the request waits for the drain's end).
 */
import { execFile, spawn } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentStatus } from '../../src/agent.js';
import type { Sidecar } from '../../src/server/sidecar.js';
import { TaskStatus } from '../../src/task.js';
import {
  ADMIN_TOKEN,
  agentId,
  agentToken,
  CLI_MAIN,
  closeSidecar,
  DEFAULT_ALLOW,
  startTestSidecar,
  TSX,
  until,
} from '../fixtures/gateway/harness.js';
import { freePort } from '../fixtures/state/serve.js';

interface Ran {
  code: number | null;
  out: string;
  err: string;
}

function cliEnv(token: string | undefined): NodeJS.ProcessEnv {
  const env = { ...process.env };
  for (const key of ['FABRIC_ADMIN_TOKEN', 'FABRIC_URL']) delete env[key];
  return token === undefined ? env : { ...env, FABRIC_ADMIN_TOKEN: token };
}

/** Runs `agent-fabric <args>` to its end. */
function cli(args: readonly string[], token: string | undefined = ADMIN_TOKEN): Promise<Ran> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      ['--import', TSX, CLI_MAIN, ...args],
      { env: cliEnv(token), timeout: 60_000 },
      (error, out, err) => {
        const code = error ? (typeof error.code === 'number' ? error.code : null) : 0;
        resolve({ code, out, err });
      },
    );
  });
}

/** Starts `agent-fabric <args>`; its output so far and its exit are readable while it runs. */
function start(args: readonly string[]): { out: () => string; exited: Promise<Ran> } {
  const child = spawn(process.execPath, ['--import', TSX, CLI_MAIN, ...args], {
    env: cliEnv(ADMIN_TOKEN),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  child.stdout.on('data', (c: Buffer) => (out += c.toString()));
  child.stderr.on('data', (c: Buffer) => (err += c.toString()));
  const exited = new Promise<Ran>((resolve) =>
    child.once('exit', (code) => resolve({ code, out, err })),
  );
  return { out: () => out, exited };
}

describe('pools scale / pools drain / agents drain (real CLI, real sidecar)', () => {
  let sidecar: Sidecar;
  let url: string;

  beforeAll(async () => {
    sidecar = await startTestSidecar({
      policies: [DEFAULT_ALLOW],
      pools: [
        { id: 'builders', minAgents: 0, maxAgents: 4 },
        { id: 'scratch', minAgents: 1, maxAgents: 2 },
        { id: 'idle', minAgents: 0, maxAgents: 3 },
      ],
      agents: [{ name: 'solo' }, { name: 'patient' }],
    });
    url = sidecar.url!;
  });

  afterAll(async () => {
    await closeSidecar(sidecar);
  });

  it('scales a pool up and down and prints a progress line then the final one', async () => {
    const fabric = sidecar.fabric!;
    const up = await cli(['pools', 'scale', 'builders', '3', '--url', url]);
    expect(up.code, up.err).toBe(0);
    expect((await fabric.getPool('builders')).currentAgents).toHaveLength(3);
    const lines = up.out.trim().split('\n');
    // What it saw before it asked, then the answer.
    expect(lines[0]).toBe('pool builders: ACTIVE, 0 agents, 0 tasks running, 0 queued');
    expect(lines.at(-1)).toMatch(/^pool builders scaled to 3 agents; spawned \S+, \S+, \S+$/);

    const clamped = await cli(['pools', 'scale', 'builders', '99', '--url', url]);
    expect(clamped.code, clamped.err).toBe(0);
    expect(clamped.out).toContain('scaled to 4 agents (asked for 99; bounds 0..4)');

    const down = await cli(['pools', 'scale', 'builders', '1', '--url', url, '--json']);
    expect(down.code, down.err).toBe(0);
    const events = down.out
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { step: string; pool?: { agentIds: string[] } });
    expect(events[0]).toMatchObject({ step: 'progress', poolId: 'builders', agents: 4 });
    expect(events.at(-1)!.step).toBe('done');
    expect(events.at(-1)!.pool!.agentIds).toHaveLength(1);
    const pool = await fabric.getPool('builders');
    expect(pool.currentAgents).toHaveLength(1);
    // The removed agents were drained and terminated, not left running.
    const gone = fabric.lifecycle.listAgents().filter((a) => a.poolId === 'builders');
    expect(gone.filter((a) => a.status !== AgentStatus.TERMINATED)).toHaveLength(1);
  }, 120_000);

  it('agents drain waits for the running task, showing it, and keeps its result', async () => {
    const fabric = sidecar.fabric!;
    const id = agentId(sidecar, 'solo');
    const task = await fabric.schedule({ agentId: id, taskType: 'long-job' });
    const held = await fabric.claimTask(id);
    expect(held?.taskId).toBe(task.id);
    const drain = start(['agents', 'drain', id, '--timeout', '60', '--url', url]);
    await until(() => drain.out().includes('DRAINING, 1 tasks running'), 30_000);
    expect(fabric.lifecycle.peek(id)?.status).toBe(AgentStatus.DRAINING);
    await fabric.completeTask(id, task.id, held!.attempt, { built: true });
    const ran = await drain.exited;
    expect(ran.code, ran.err).toBe(0);
    expect(ran.out.trim().split('\n').at(-1)).toBe(`agent ${id} drained: TERMINATED`);
    expect(fabric.lifecycle.peek(id)?.status).toBe(AgentStatus.TERMINATED);
    const done = await fabric.getTask(task.id);
    expect(done.status).toBe(TaskStatus.COMPLETED);
    expect(done.result).toEqual({ built: true });
    // The admin token never shows in the output.
    expect(ran.out + ran.err).not.toContain(ADMIN_TOKEN);
  }, 120_000);

  it('a drain that outlasts --request-timeout is not cut: its answer comes when the drain ends', async () => {
    const fabric = sidecar.fabric!;
    const id = agentId(sidecar, 'patient');
    const task = await fabric.schedule({ agentId: id, taskType: 'long-job' });
    const held = await fabric.claimTask(id);
    expect(held?.taskId).toBe(task.id);
    const drain = start([
      'agents',
      'drain',
      id,
      '--timeout',
      '60',
      '--request-timeout',
      '3',
      '--url',
      url,
    ]);
    await until(() => drain.out().includes('DRAINING, 1 tasks running'), 30_000);
    // Longer than --request-timeout: the drain's request waits for its answer all this time
    // (the looks once a second answer within it).
    await sleep(5000);
    expect(fabric.lifecycle.peek(id)?.status).toBe(AgentStatus.DRAINING);
    await fabric.completeTask(id, task.id, held!.attempt, { done: true });
    const ran = await drain.exited;
    expect(ran.code, ran.err).toBe(0);
    expect(ran.out.trim().split('\n').at(-1)).toBe(`agent ${id} drained: TERMINATED`);
    expect(fabric.lifecycle.peek(id)?.status).toBe(AgentStatus.TERMINATED);
  }, 120_000);

  it('pools drain: two at once both wait for the pool’s running task, then it is gone', async () => {
    const fabric = sidecar.fabric!;
    const [member] = (await fabric.getPool('scratch')).currentAgents;
    const task = await fabric.scheduleToPool('scratch', 'pool-job');
    const held = await fabric.claimTask(member!);
    expect(held?.taskId).toBe(task.id);
    const a = start(['pools', 'drain', 'scratch', '--timeout', '60', '--url', url, '--json']);
    const b = start(['pools', 'drain', 'scratch', '--timeout', '60', '--url', url]);
    await until(
      () => a.out().includes('"running":1') && b.out().includes('DRAINING, 1 agents'),
      30_000,
    );
    await fabric.completeTask(member!, task.id, held!.attempt, 'ok');
    const [ra, rb] = await Promise.all([a.exited, b.exited]);
    expect(ra.code, ra.err).toBe(0);
    expect(rb.code, rb.err).toBe(0);
    // Either one's deletion may reach the sidecar after the other's finished (see the next test).
    const last = JSON.parse(ra.out.trim().split('\n').at(-1)!) as Record<string, unknown>;
    expect(last).toMatchObject({ step: 'done', poolId: 'scratch', deleted: true });
    expect(rb.out.trim().split('\n').at(-1)).toMatch(/^pool scratch drained and deleted/);
    await expect(fabric.getPool('scratch')).rejects.toMatchObject({
      code: 'FABRIC_ERR_POOL_NOT_FOUND',
    });
    expect((await fabric.getTask(task.id)).status).toBe(TaskStatus.COMPLETED);
    expect(fabric.lifecycle.peek(member!)?.status).toBe(AgentStatus.TERMINATED);
  }, 120_000);

  it('pools drain: a pool another request deleted first is drained and deleted all the same (exit 0)', async () => {
    const fabric = sidecar.fabric!;
    await fabric.createPool({ poolId: 'twice', model: 'm', minAgents: 0 });
    // The other request wins the race: its deletion finishes just before this drain's arrives.
    const own = fabric.deletePool.bind(fabric);
    let calls = 0;
    fabric.deletePool = async (...args: Parameters<typeof own>) => {
      calls++;
      fabric.deletePool = own;
      await own('twice');
      return own(...args);
    };
    try {
      const text = await cli(['pools', 'drain', 'twice', '--url', url]);
      expect(text.code, text.err).toBe(0);
      expect(text.out.trim().split('\n').at(-1)).toBe(
        'pool twice drained and deleted (by another request that finished first)',
      );
      expect(calls).toBe(1);
      await expect(fabric.getPool('twice')).rejects.toMatchObject({
        code: 'FABRIC_ERR_POOL_NOT_FOUND',
      });
    } finally {
      fabric.deletePool = own;
    }
    // An unknown pool is still an error: the first look fails, nothing is deleted.
    const unknown = await cli(['pools', 'drain', 'twice', '--url', url, '--json']);
    expect(unknown.code).toBe(1);
    expect(unknown.err).toContain('FABRIC_ERR_POOL_NOT_FOUND');
    expect(unknown.err).not.toContain('older than the CLI');
  }, 60_000);

  it('exits 2 for a wrong command line, 1 for an unknown pool or agent, 3 unreachable, 4 refused', async () => {
    const help = await cli(['pools', 'scale', '--help']);
    expect(help.code).toBe(0);
    expect(help.out).toMatch(/usage: agent-fabric pools scale <pool> <n>/);
    expect(help.out).toContain('--json');
    for (const args of [
      ['pools', 'scale', 'idle'],
      ['pools', 'scale', 'idle', '-1'],
      ['pools', 'scale', 'idle', 'three'],
      ['pools', 'scale', 'idle', '1e3'],
      ['pools', 'scale', 'idle', '2', 'extra'],
      ['pools', 'drain', 'idle', '--timeout', 'soon'],
      ['pools', 'drain', 'idle', '--timeout', '-3'],
      ['agents', 'drain'],
    ]) {
      const r = await cli([...args, '--url', url]);
      expect(r.code, args.join(' ')).toBe(2);
    }
    expect((await fabric().getPool('idle')).currentAgents).toHaveLength(0);

    const unknownPool = await cli(['pools', 'scale', 'nope', '2', '--url', url]);
    expect(unknownPool.code).toBe(1);
    expect(unknownPool.err).toContain('FABRIC_ERR_POOL_NOT_FOUND');
    const unknownDrain = await cli(['pools', 'drain', 'nope', '--url', url]);
    expect(unknownDrain.code).toBe(1);
    const unknownAgent = await cli(['agents', 'drain', 'no-such-agent', '--url', url]);
    expect(unknownAgent.code).toBe(1);
    expect(unknownAgent.err).toContain('FABRIC_ERR_AGENT_NOT_FOUND');

    const port = await freePort();
    const unreachable = await cli([
      'pools',
      'scale',
      'builders',
      '2',
      '--url',
      `http://127.0.0.1:${port}`,
    ]);
    expect(unreachable.code).toBe(3);
    const refused = await cli(['pools', 'scale', 'idle', '2', '--url', url], 'x'.repeat(40));
    expect(refused.code).toBe(4);
    // An agent's own credential is not an admin's.
    const asAgent = await cli(
      ['agents', 'drain', agentId(sidecar, 'solo'), '--url', url],
      agentToken(sidecar, 'solo'),
    );
    expect(asAgent.code).toBe(4);
    expect((await fabric().getPool('idle')).currentAgents).toHaveLength(0);
  }, 180_000);

  const fabric = () => sidecar.fabric!;
});

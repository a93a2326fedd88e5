import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { AgentFabric } from '../../src/fabric.js';
import { AgentStatus } from '../../src/agent.js';
import { TaskStatus } from '../../src/task.js';
import {
  AgentNotFoundError,
  AgentUnavailableError,
  ConfigError,
  NoAvailableAgentError,
  PoolDrainingError,
  PoolExistsError,
  PoolNotFoundError,
  InvalidArgumentError,
  TaskNotFoundError,
  TaskResultTooLargeError,
} from '../../src/errors.js';

describe('AgentFabric', () => {
  let fabric: AgentFabric;
  beforeEach(() => {
    vi.useFakeTimers();
    fabric = new AgentFabric({ heartbeatIntervalSeconds: 10, drainTimeoutSeconds: 5 });
  });
  afterEach(async () => {
    await fabric.close();
    vi.useRealTimers();
  });

  it('throws a typed config error naming the field', () => {
    expect(() => new AgentFabric({ maxConcurrentAgents: -1 })).toThrow(ConfigError);
    expect(() => new AgentFabric({ maxConcurrentAgents: -1 })).toThrow(/maxConcurrentAgents/);
  });

  it('refuses results, progress and errors over maxTaskResultBytes; the task stays held', async () => {
    const small = new AgentFabric({ maxTaskResultBytes: 1024 });
    const agent = await small.spawn({ model: 'm', name: 'remote', executor: 'remote' });
    const task = await small.schedule({ agentId: agent.id, taskType: 't', payload: {} });
    const claimed = (await small.claimTask(agent.id))!;
    const big = { blob: 'x'.repeat(2000) };
    await expect(small.completeTask(agent.id, task.id, claimed.attempt, big)).rejects.toThrow(
      TaskResultTooLargeError,
    );
    await expect(small.reportProgress(agent.id, task.id, claimed.attempt, big)).rejects.toThrow(
      /progress is \d+ bytes of JSON, more than maxTaskResultBytes \(1024\)/,
    );
    await expect(
      small.failTask(agent.id, task.id, claimed.attempt, 'y'.repeat(2000)),
    ).rejects.toThrow(TaskResultTooLargeError);
    // Nesting too deep to serialize is a typed error, not a RangeError.
    let deep: unknown = 1;
    for (let i = 0; i < 20_000; i++) deep = [deep];
    await expect(small.completeTask(agent.id, task.id, claimed.attempt, deep)).rejects.toThrow(
      InvalidArgumentError,
    );
    expect(await small.getTask(task.id)).toMatchObject({ status: TaskStatus.RUNNING });
    expect((await small.getTask(task.id)).progress).toBeUndefined();
    await small.completeTask(agent.id, task.id, claimed.attempt, { ok: true });
    expect(await small.getTask(task.id)).toMatchObject({
      status: TaskStatus.COMPLETED,
      result: { ok: true },
    });
    await small.close();
  });

  it('runs the remote-agent protocol: claim, progress, complete', async () => {
    const agent = await fabric.spawn({ model: 'm', name: 'remote', executor: 'remote' });
    expect(agent.status).toBe(AgentStatus.STARTING);
    const task = await fabric.schedule({
      agentId: agent.id,
      taskType: 'review',
      payload: { pr: 1 },
    });
    const claimed = await fabric.claimTask(agent.id);
    expect(claimed).toMatchObject({ taskId: task.id, attempt: 1, payload: { pr: 1 } });
    expect((await fabric.getAgentInfo(agent.id)).status).toBe(AgentStatus.HEALTHY);
    await fabric.reportProgress(agent.id, task.id, 1, { pct: 50 });
    expect((await fabric.getTask(task.id)).progress).toEqual({ pct: 50 });
    expect((await fabric.getAgentInfo(agent.id)).runningTasks).toBe(1);
    await fabric.completeTask(agent.id, task.id, 1, { ok: true });
    await expect(fabric.waitForTask(task.id)).resolves.toMatchObject({
      status: TaskStatus.COMPLETED,
      result: { ok: true },
    });
    expect((await fabric.getAgentInfo(agent.id)).completedTasks).toBe(1);
  });

  it('refuses work for unknown and unavailable agents', async () => {
    await expect(fabric.schedule({ agentId: 'ghost', taskType: 't' })).rejects.toBeInstanceOf(
      AgentNotFoundError,
    );
    const a = await fabric.spawn({ model: 'm', name: 'a', executor: 'remote' });
    await fabric.terminate(a.id);
    await expect(fabric.schedule({ agentId: a.id, taskType: 't' })).rejects.toBeInstanceOf(
      AgentUnavailableError,
    );
    await expect(fabric.claimTask(a.id)).rejects.toBeInstanceOf(AgentUnavailableError);
  });

  it('moves an unhealthy agent’s pool work to a healthy agent and retries its running task there', async () => {
    await fabric.createPool({ poolId: 'p', model: 'm', minAgents: 2, executor: 'remote' });
    const [a, b] = (await fabric.getPool('p')).currentAgents;
    await fabric.heartbeat(a!);
    await fabric.heartbeat(b!);
    const running = await fabric.scheduleToPool('p', 'job', 'r');
    const claimed = (await fabric.claimTask(a!))!;
    expect(claimed.taskId).toBe(running.id);
    // `a` goes silent; `b` keeps heartbeating.
    for (let i = 0; i < 4; i++) {
      await vi.advanceTimersByTimeAsync(10_000);
      await fabric.heartbeat(b!);
    }
    // `a` stays in the pool (it may come back); a third agent covers for it meanwhile.
    expect((await fabric.getAgentInfo(a!)).status).toBe(AgentStatus.UNHEALTHY);
    const during = (await fabric.getPool('p')).currentAgents;
    expect(during).toHaveLength(3);
    const cover = during.find((id) => id !== a && id !== b)!;
    expect((await fabric.getTask(running.id)).status).toBe(TaskStatus.PENDING);
    const retry = (await fabric.claimTask(b!))!;
    expect(retry).toMatchObject({ taskId: running.id, attempt: 2 });
    // The first agent comes back and tries to finish its stale attempt: rejected, as if the task
    // did not exist (it no longer holds it). The pool is above its size again: the cover goes.
    await fabric.heartbeat(a!);
    await vi.advanceTimersByTimeAsync(0);
    expect((await fabric.getPool('p')).currentAgents).toEqual([a, b]);
    expect((await fabric.getAgentInfo(cover)).status).toBe(AgentStatus.TERMINATED);
    await expect(fabric.completeTask(a!, running.id, 1, 'stale')).rejects.toBeInstanceOf(
      TaskNotFoundError,
    );
    await fabric.completeTask(b!, running.id, 2, 'fresh');
    expect((await fabric.getTask(running.id)).result).toBe('fresh');
  });

  it('fails tasks pinned to an agent that becomes unhealthy, with a clear reason', async () => {
    const a = await fabric.spawn({ model: 'm', name: 'a', executor: 'remote' });
    await fabric.heartbeat(a.id);
    const t = await fabric.schedule({ agentId: a.id, taskType: 'x' });
    await vi.advanceTimersByTimeAsync(31_000);
    await expect(fabric.waitForTask(t.id)).resolves.toMatchObject({
      status: TaskStatus.FAILED,
      error: { code: 'FABRIC_ERR_AGENT_UNAVAILABLE' },
    });
  });

  it('terminates gracefully: running tasks may finish within the drain timeout', async () => {
    const a = await fabric.spawn({ model: 'm', name: 'a', executor: 'remote' });
    const t = await fabric.schedule({ agentId: a.id, taskType: 'x' });
    const queued = await fabric.schedule({ agentId: a.id, taskType: 'y' });
    const c = (await fabric.claimTask(a.id))!;
    const terminating = fabric.terminate(a.id);
    expect((await fabric.getAgentInfo(a.id)).status).toBe(AgentStatus.DRAINING);
    await vi.advanceTimersByTimeAsync(1_000);
    await fabric.completeTask(a.id, t.id, c.attempt, 'done in time');
    const info = await terminating;
    expect(info.status).toBe(AgentStatus.TERMINATED);
    expect((await fabric.getTask(t.id)).status).toBe(TaskStatus.COMPLETED);
    expect((await fabric.getTask(queued.id)).status).toBe(TaskStatus.FAILED);
  });

  it('cancels running tasks left at the end of the drain timeout', async () => {
    const a = await fabric.spawn({ model: 'm', name: 'a', executor: 'remote' });
    const t = await fabric.schedule({ agentId: a.id, taskType: 'x' });
    await fabric.claimTask(a.id);
    const terminating = fabric.terminate(a.id);
    await vi.advanceTimersByTimeAsync(5_000);
    await terminating;
    expect((await fabric.getTask(t.id)).status).toBe(TaskStatus.CANCELLED);
  });

  it('creates, scales (clamped), and deletes pools like the Fabric Guide', async () => {
    const pool = await fabric.createPool({
      poolId: 'pool-frontend',
      name: 'Frontend Agents',
      model: 'claude-3-opus',
      minAgents: 2,
      maxAgents: 10,
      executor: 'remote',
    });
    expect(pool.currentAgents).toHaveLength(2);
    expect(pool.spawned.every((s) => s.credential.startsWith('afk_'))).toBe(true);
    expect((await fabric.scalePool('pool-frontend', 5)).pool.currentAgents).toHaveLength(5);
    expect((await fabric.scalePool('pool-frontend', 50)).pool.currentAgents).toHaveLength(10);
    expect((await fabric.scalePool('pool-frontend', 0)).pool.currentAgents).toHaveLength(2);
    expect((await fabric.getFabricStats()).activeAgents).toBe(2);
    await expect(fabric.createPool({ poolId: 'pool-frontend', model: 'm' })).rejects.toBeInstanceOf(
      PoolExistsError,
    );
    await expect(
      fabric.createPool({ poolId: 'bad', model: 'm', minAgents: 3, maxAgents: 2 }),
    ).rejects.toThrow(/maxAgents/);

    const task = await fabric.scheduleToPool('pool-frontend', 'ui_review', {
      component: 'Dashboard',
    });
    const deleting = fabric.deletePool('pool-frontend');
    await expect(fabric.scheduleToPool('pool-frontend', 'ui_review', {})).rejects.toBeInstanceOf(
      PoolDrainingError,
    );
    const agentId = (await fabric.getPool('pool-frontend')).currentAgents[0]!;
    const c = (await fabric.claimTask(agentId))!;
    await fabric.completeTask(agentId, c.taskId, c.attempt, 'ok');
    await deleting;
    expect((await fabric.getTask(task.id)).status).toBe(TaskStatus.COMPLETED);
    await expect(fabric.getPool('pool-frontend')).rejects.toBeInstanceOf(PoolNotFoundError);
    expect((await fabric.getFabricStats()).activeAgents).toBe(0);
  });

  it('finds the least-loaded healthy agent, or a typed error when none is free', async () => {
    await fabric.createPool({ poolId: 'p', model: 'm', minAgents: 2, executor: 'remote' });
    const [a, b] = (await fabric.getPool('p')).currentAgents;
    await expect(fabric.getAvailableAgent({ poolId: 'p' })).rejects.toBeInstanceOf(
      NoAvailableAgentError,
    );
    await fabric.heartbeat(a!);
    await fabric.heartbeat(b!);
    await fabric.schedule({ agentId: a!, taskType: 't' });
    expect((await fabric.getAvailableAgent({ poolId: 'p' })).id).toBe(b);
    expect((await fabric.getAvailableAgent()).id).toBe(b);
    await expect(fabric.getAvailableAgent({ poolId: 'nope' })).rejects.toBeInstanceOf(
      PoolNotFoundError,
    );
  });

  it('reports stats per pool and in total', async () => {
    await fabric.createPool({ poolId: 'p', model: 'm', minAgents: 1, executor: 'remote' });
    const [a] = (await fabric.getPool('p')).currentAgents;
    await fabric.heartbeat(a!);
    await fabric.scheduleToPool('p', 't', 1);
    await fabric.scheduleToPool('p', 't', 2);
    const c = (await fabric.claimTask(a!))!;
    await fabric.failTask(a!, c.taskId, c.attempt, 'boom');
    const stats = await fabric.getFabricStats();
    expect(stats).toMatchObject({
      activeAgents: 1,
      pendingTasks: 1,
      failedTasks: 1,
      queueDepth: 1,
    });
    expect(stats.pools['p']).toMatchObject({
      agents: 1,
      healthyAgents: 1,
      queuedTasks: 1,
      failedTasks: 1,
    });
  });
});

describe('AgentFabric identity', () => {
  it('maps credentials to exactly one agent or the admin, and revokes on terminate', async () => {
    const fabric = new AgentFabric({}, { adminCredentials: ['a-very-long-admin-secret'] });
    try {
      const a = await fabric.spawn({
        model: 'm',
        name: 'a',
        executor: 'remote',
        labels: { team: 'x' },
      });
      const b = await fabric.spawn({ model: 'm', name: 'b', executor: 'remote' });
      expect(fabric.authenticate(a.credential)).toMatchObject({
        kind: 'agent',
        agentId: a.id,
        labels: { team: 'x' },
      });
      expect(fabric.authenticate(b.credential)).toMatchObject({ kind: 'agent', agentId: b.id });
      expect(fabric.authenticate('a-very-long-admin-secret')).toEqual({
        kind: 'admin',
        name: 'admin',
      });
      const ops = fabric.issueAdminCredential('ops');
      expect(fabric.authenticate(ops)).toEqual({ kind: 'admin', name: 'ops' });
      expect(() => fabric.authenticate('')).toThrow(/credential/);
      expect(() => fabric.authenticate(`${a.credential}x`)).toThrow(/unknown/);
      expect(() => fabric.requireAdmin(fabric.authenticate(a.credential), 'approve')).toThrow(
        /admin/,
      );
      await fabric.terminate(a.id);
      expect(() => fabric.authenticate(a.credential)).toThrow(/revoked/);
    } finally {
      await fabric.close();
    }
  });

  it('rejects short admin credentials', () => {
    expect(() => new AgentFabric({}, { adminCredentials: ['short'] })).toThrow(
      /adminCredentials\[0\]/,
    );
  });
});

import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { AgentStatus } from '../../src/agent.js';
import { AgentLimitError, ConfigError, InvalidArgumentError } from '../../src/errors.js';
import { AgentFabric } from '../../src/fabric.js';
import type { PoolEvents } from '../../src/pools/pool-manager.js';
import type {
  PoolAgentStart,
  PoolProvider,
  PoolStopReason,
} from '../../src/pools/pool-provider.js';

type Ev = {
  [K in keyof PoolEvents]: { type: K; e: PoolEvents[K][0]; at: number };
}[keyof PoolEvents];

function record(fabric: AgentFabric): Ev[] {
  const seen: Ev[] = [];
  for (const type of [
    'pool.agent.spawned',
    'pool.agent.started',
    'pool.agent.lost',
    'pool.start.failed',
  ] as const) {
    fabric.pools.events.on(type, (e: unknown) => void seen.push({ type, e, at: Date.now() } as Ev));
  }
  return seen;
}

/** A provider whose starts fail while `failing` is set and whose health answers `alive`. */
class ScriptedProvider implements PoolProvider {
  readonly name = 'scripted';
  readonly executor = 'inprocess';
  failing = 0;
  readonly alive = new Set<string>();
  readonly started: PoolAgentStart[] = [];
  readonly stopped: [string, PoolStopReason][] = [];
  hang = false;
  async start(agent: PoolAgentStart): Promise<void> {
    this.started.push(agent);
    if (this.hang) return new Promise(() => undefined);
    if (this.failing > 0) {
      this.failing--;
      throw new Error('could not start');
    }
    this.alive.add(agent.agentId);
  }
  healthCheck(agentId: string): boolean {
    return this.alive.has(agentId);
  }
  async stop(agentId: string, reason: PoolStopReason): Promise<void> {
    this.alive.delete(agentId);
    this.stopped.push([agentId, reason]);
  }
}

describe('pools reconcile', () => {
  let fabric: AgentFabric;
  beforeEach(() => {
    vi.useFakeTimers();
    fabric = new AgentFabric(
      { heartbeatIntervalSeconds: 10, drainTimeoutSeconds: 1, maxConcurrentAgents: 6 },
      { pools: { reconcileIntervalMs: 1000, startBackoffMs: 1000, maxStartBackoffMs: 8000 } },
    );
  });
  afterEach(async () => {
    await fabric.close();
    vi.useRealTimers();
  });

  it('keeps minAgents through terminations, and reports each loss and replacement', async () => {
    const seen = record(fabric);
    await fabric.createPool({ poolId: 'p', model: 'm', minAgents: 2, executor: 'inprocess' });
    const [a, b] = (await fabric.getPool('p')).currentAgents;
    await fabric.terminate(a!);
    await vi.advanceTimersByTimeAsync(0);
    const pool = await fabric.getPool('p');
    expect(pool.currentAgents).toHaveLength(2);
    expect(pool.currentAgents).toContain(b);
    expect(pool.currentAgents).not.toContain(a);
    const replacement = pool.currentAgents.find((id) => id !== b)!;
    expect((await fabric.getAgentInfo(replacement)).status).toBe(AgentStatus.HEALTHY);
    expect(seen.filter((s) => s.type === 'pool.agent.lost').map((s) => s.e)).toEqual([
      { poolId: 'p', agentId: a, reason: 'terminated' },
    ]);
    expect(seen.filter((s) => s.type === 'pool.agent.spawned').map((s) => s.e)).toEqual([
      { poolId: 'p', agentId: a, reason: 'create' },
      { poolId: 'p', agentId: b, reason: 'create' },
      { poolId: 'p', agentId: replacement, reason: 'replace' },
    ]);
  });

  it('a scale past maxConcurrentAgents is refused whole: no agent spawned, the pool keeps its size', async () => {
    const seen = record(fabric);
    await fabric.createPool({ poolId: 'p', model: 'm', minAgents: 2, executor: 'inprocess' });
    const before = (await fabric.getPool('p')).currentAgents;
    const err = await fabric.scalePool('p', 7).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(AgentLimitError);
    expect(err).toMatchObject({ details: { limit: 6, wanted: 5, free: 4 } });
    const pool = await fabric.getPool('p');
    expect([pool.currentAgents, pool.desiredAgents]).toEqual([before, 2]);
    expect(await fabric.listAgents()).toHaveLength(2);
    // Reconcile does not carry out the refused scale later either.
    await vi.advanceTimersByTimeAsync(3000);
    expect((await fabric.getPool('p')).currentAgents).toEqual(before);
    expect(seen.filter((s) => s.type === 'pool.agent.spawned')).toHaveLength(2);
  });

  it('a pool short of its size for want of room is scaled down to a size still above what it has: not refused, and reconcile aims at the new size', async () => {
    const seen = record(fabric);
    const loners = [];
    for (let i = 0; i < 2; i++) loners.push(await fabric.spawn({ model: 'm', name: `x${i}` }));
    await fabric.createPool({
      poolId: 'p',
      model: 'm',
      minAgents: 1,
      maxAgents: 5,
      executor: 'inprocess',
    });
    await fabric.scalePool('p', 4);
    const [a, b, c, d] = (await fabric.getPool('p')).currentAgents;
    // Others take the slots two lost pool agents free (maxConcurrentAgents is 6): the pool
    // wants 4 and has 2, with no room.
    fabric.pools.events.on(
      'pool.agent.lost',
      () => void fabric.spawn({ model: 'm', name: 'taker' }),
    );
    await fabric.terminate(a!);
    await fabric.terminate(b!);
    await vi.advanceTimersByTimeAsync(0);
    expect((await fabric.getPool('p')).currentAgents).toEqual([c, d]);
    const live = async () =>
      (await fabric.listAgents()).filter((x) => x.status !== AgentStatus.TERMINATED).length;
    expect(await live()).toBe(6);
    // Lowering the size asks for no agent the limit does not already cover: it is not refused.
    const change = await fabric.scalePool('p', 3);
    expect(change.spawned).toEqual([]);
    const pool = await fabric.getPool('p');
    expect([pool.currentAgents, pool.desiredAgents]).toEqual([[c, d], 3]);
    // A slot frees: the retry takes the pool to 3, not to the 4 it had.
    await fabric.terminate(loners[0]!.id);
    await vi.advanceTimersByTimeAsync(10_000);
    expect((await fabric.getPool('p')).currentAgents).toHaveLength(3);
    await fabric.terminate(loners[1]!.id);
    await vi.advanceTimersByTimeAsync(10_000);
    expect((await fabric.getPool('p')).currentAgents).toHaveLength(3);
    expect(seen.filter((s) => s.type === 'pool.agent.spawned')).toHaveLength(5);
  });

  it('a pool whose minAgents do not fit under maxConcurrentAgents is refused before any agent is spawned', async () => {
    await fabric.spawn({ model: 'm', name: 'solo', executor: 'inprocess' });
    const err = await fabric
      .createPool({ poolId: 'big', model: 'm', minAgents: 6, executor: 'inprocess' })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(AgentLimitError);
    expect(err).toMatchObject({
      code: 'FABRIC_ERR_AGENT_LIMIT',
      message: 'cannot spawn 6 agents: maxConcurrentAgents (6) leaves room for 5',
      details: { limit: 6, wanted: 6, free: 5 },
    });
    // No agent was spawned and withdrawn (before: five, each left as a terminated record).
    expect((await fabric.listAgents()).map((a) => a.name)).toEqual(['solo']);
    await expect(fabric.getPool('big')).rejects.toThrow();
    // One that fits is made.
    const ok = await fabric.createPool({
      poolId: 'p',
      model: 'm',
      minAgents: 5,
      executor: 'inprocess',
    });
    expect(ok.spawned).toHaveLength(5);
  });

  it('keeps the scaled size, but does not bring back agents scaled away', async () => {
    await fabric.createPool({ poolId: 'p', model: 'm', minAgents: 1, executor: 'inprocess' });
    await fabric.scalePool('p', 3);
    const [first] = (await fabric.getPool('p')).currentAgents;
    await fabric.terminate(first!);
    await vi.advanceTimersByTimeAsync(0);
    expect((await fabric.getPool('p')).currentAgents).toHaveLength(3);
    await fabric.scalePool('p', 1);
    await vi.advanceTimersByTimeAsync(5000);
    const pool = await fabric.getPool('p');
    expect(pool.currentAgents).toHaveLength(1);
    expect(pool.desiredAgents).toBe(1);
    expect(await fabric.listAgents({ status: AgentStatus.HEALTHY })).toHaveLength(1);
  });

  it('terminates and replaces an agent that went UNHEALTHY without ever being healthy', async () => {
    await fabric.createPool({ poolId: 'p', model: 'm', minAgents: 2, executor: 'remote' });
    const [a, b] = (await fabric.getPool('p')).currentAgents;
    await fabric.heartbeat(a!);
    for (let i = 0; i < 4; i++) {
      await vi.advanceTimersByTimeAsync(10_000);
      await fabric.heartbeat(a!);
    }
    expect((await fabric.getAgentInfo(b!)).status).toBe(AgentStatus.TERMINATED);
    const pool = await fabric.getPool('p');
    expect(pool.currentAgents).toHaveLength(2);
    expect(pool.currentAgents).toContain(a);
    expect(pool.currentAgents).not.toContain(b);
  });

  it('backs off exponentially while agents die before ever becoming healthy', async () => {
    const seen = record(fabric);
    // Remote agents nobody runs: each one goes UNHEALTHY without a heartbeat.
    await fabric.createPool({ poolId: 'p', model: 'm', minAgents: 1, executor: 'remote' });
    await vi.advanceTimersByTimeAsync(200_000);
    const events = seen.filter((s) => s.type === 'pool.start.failed');
    const failed = events.map((s) => s.e as PoolEvents['pool.start.failed'][0]);
    expect(failed.length).toBeGreaterThanOrEqual(4);
    expect(failed.map((f) => f.failures)).toEqual(failed.map((_, i) => i + 1));
    const delays = events.map((s, i) => failed[i]!.retryAt - s.at);
    expect(delays.slice(0, 4)).toEqual([1000, 2000, 4000, 8000]);
    expect(Math.max(...delays)).toBe(8000);
    // Each agent lives ~30 s before it counts as lost; with the backoff no more are spawned
    // than one per failure, plus the first.
    const spawned = seen.filter((s) => s.type === 'pool.agent.spawned').length;
    expect(spawned).toBe(failed.length + 1);
    // A heartbeat from the current agent ends the backoff: the next loss is retried at once.
    const [current] = (await fabric.getPool('p')).currentAgents;
    await fabric.heartbeat(current!);
    await fabric.terminate(current!);
    await vi.advanceTimersByTimeAsync(0);
    expect((await fabric.getPool('p')).currentAgents).toHaveLength(1);
  });

  it('retries a spawn the agent limit refuses, with backoff, and fills in once there is room', async () => {
    const seen = record(fabric);
    const loners = [];
    for (let i = 0; i < 4; i++) loners.push(await fabric.spawn({ model: 'm', name: `x${i}` }));
    await fabric.createPool({ poolId: 'p', model: 'm', minAgents: 2, executor: 'inprocess' });
    const [a, b] = (await fabric.getPool('p')).currentAgents;
    // Someone else takes the slot `a` frees before the pool can (maxConcurrentAgents is 6).
    fabric.pools.events.on(
      'pool.agent.lost',
      () => void fabric.spawn({ model: 'm', name: 'taker' }),
    );
    await fabric.terminate(a!);
    await vi.advanceTimersByTimeAsync(0);
    expect((await fabric.getPool('p')).currentAgents).toEqual([b]);
    const failed = seen.flatMap((s) => (s.type === 'pool.start.failed' ? [s.e] : []));
    expect(failed).toHaveLength(1);
    expect(failed[0]!.error.name).toBe('AgentLimitError');
    expect(failed[0]!.agentId).toBeUndefined();
    // A slot frees; the retry after the backoff takes it.
    await fabric.terminate(loners[0]!.id);
    await vi.advanceTimersByTimeAsync(999);
    expect((await fabric.getPool('p')).currentAgents).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(1);
    expect((await fabric.getPool('p')).currentAgents).toHaveLength(2);
  });

  describe('with a pool provider', () => {
    let provider: ScriptedProvider;
    beforeEach(() => {
      provider = new ScriptedProvider();
      fabric.registerPoolProvider(provider);
    });

    it('starts each agent through the provider with its credential, on the provider executor', async () => {
      const seen = record(fabric);
      const pool = await fabric.createPool({
        poolId: 'p',
        model: 'm',
        minAgents: 2,
        provider: 'scripted',
      });
      await vi.advanceTimersByTimeAsync(0);
      expect(pool.provider).toBe('scripted');
      expect(provider.started.map((s) => s.agentId)).toEqual(pool.currentAgents);
      expect(provider.started.map((s) => s.credential)).toEqual(
        pool.spawned.map((s) => s.credential),
      );
      for (const id of pool.currentAgents) {
        expect((await fabric.getAgentInfo(id)).executor).toBe('inprocess');
      }
      expect(seen.filter((s) => s.type === 'pool.agent.started')).toHaveLength(2);
    });

    it('a pool whose provider is gone backs off; registered again, it replaces its agent at once', async () => {
      const seen = record(fabric);
      await fabric.createPool({ poolId: 'p', model: 'm', minAgents: 1, provider: 'scripted' });
      await vi.advanceTimersByTimeAsync(0);
      const [first] = (await fabric.getPool('p')).currentAgents;
      fabric.unregisterPoolProvider('scripted');
      await fabric.terminate(first!);
      // Failed starts back off 1 s, 2 s, 4 s, then 8 s (the test's maxStartBackoffMs).
      await vi.advanceTimersByTimeAsync(7_500);
      const failures = seen.filter((s) => s.type === 'pool.start.failed').length;
      expect(failures).toBeGreaterThanOrEqual(3);
      expect((await fabric.getPool('p')).currentAgents).toEqual([]);
      fabric.registerPoolProvider(provider);
      await vi.advanceTimersByTimeAsync(0);
      const [replacement] = (await fabric.getPool('p')).currentAgents;
      expect(replacement).toBeDefined();
      expect(provider.started.map((s) => s.agentId)).toEqual([first, replacement]);
      expect(seen.filter((s) => s.type === 'pool.start.failed')).toHaveLength(failures);
    });

    it('refuses an unknown provider and a malformed one', async () => {
      await expect(
        fabric.createPool({ poolId: 'p', model: 'm', provider: 'nope' }),
      ).rejects.toBeInstanceOf(InvalidArgumentError);
      expect(() => fabric.registerPoolProvider({ name: 'x' } as never)).toThrow(
        InvalidArgumentError,
      );
      expect(() => fabric.registerPoolProvider(new ScriptedProvider())).toThrow(/already/);
      expect((await fabric.listPools()).length).toBe(0);
    });

    it('backs off on failed starts (1 s, 2 s, 4 s) and stops what a failed start left', async () => {
      const seen = record(fabric);
      provider.failing = 3;
      await fabric.createPool({ poolId: 'p', model: 'm', minAgents: 1, provider: 'scripted' });
      await vi.advanceTimersByTimeAsync(0);
      const failures = () => seen.flatMap((s) => (s.type === 'pool.start.failed' ? [s.e] : []));
      expect(failures()).toHaveLength(1);
      const t0 = Date.now();
      expect(failures()[0]!.retryAt - t0).toBe(1000);
      await vi.advanceTimersByTimeAsync(999);
      expect(provider.started).toHaveLength(1);
      await vi.advanceTimersByTimeAsync(1);
      expect(provider.started).toHaveLength(2);
      expect(failures()[1]!.retryAt - Date.now()).toBe(2000);
      await vi.advanceTimersByTimeAsync(2000);
      expect(failures()[2]!.retryAt - Date.now()).toBe(4000);
      await vi.advanceTimersByTimeAsync(4000);
      expect(provider.started).toHaveLength(4);
      const pool = await fabric.getPool('p');
      expect(pool.currentAgents).toEqual([provider.started[3]!.agentId]);
      expect(provider.stopped).toEqual(
        provider.started.slice(0, 3).map((s) => [s.agentId, 'start-failed']),
      );
      for (const s of provider.started.slice(0, 3)) {
        expect((await fabric.getAgentInfo(s.agentId)).status).toBe(AgentStatus.TERMINATED);
      }
    });

    it('retries a failed start after its backoff even when the wall clock was set back a day', async () => {
      provider.failing = 1;
      await fabric.createPool({ poolId: 'p', model: 'm', minAgents: 1, provider: 'scripted' });
      await vi.advanceTimersByTimeAsync(0);
      expect(provider.started).toHaveLength(1);
      vi.setSystemTime(Date.now() - 86_400_000);
      await vi.advanceTimersByTimeAsync(1000);
      expect(provider.started).toHaveLength(2);
      expect((await fabric.getPool('p')).currentAgents).toEqual([provider.started[1]!.agentId]);
    });

    it('replaces an agent that fails its health check, stopping the old runtime', async () => {
      await fabric.createPool({ poolId: 'p', model: 'm', minAgents: 2, provider: 'scripted' });
      await vi.advanceTimersByTimeAsync(0);
      const [a, b] = (await fabric.getPool('p')).currentAgents;
      provider.alive.delete(a!); // its process died
      await vi.advanceTimersByTimeAsync(1000);
      const pool = await fabric.getPool('p');
      expect(pool.currentAgents).toHaveLength(2);
      expect(pool.currentAgents).toContain(b);
      expect(pool.currentAgents).not.toContain(a);
      expect(provider.stopped).toEqual([[a, 'health-check']]);
      expect((await fabric.getAgentInfo(a!)).status).toBe(AgentStatus.TERMINATED);
    });

    it('aborts a start that never finishes when its agent is terminated, and stops it once', async () => {
      provider.hang = true;
      await fabric.createPool({ poolId: 'p', model: 'm', minAgents: 1, provider: 'scripted' });
      await vi.advanceTimersByTimeAsync(0);
      const [first] = provider.started;
      await fabric.terminate(first!.agentId);
      await vi.advanceTimersByTimeAsync(0);
      expect(first!.signal.aborted).toBe(true);
      expect(provider.stopped).toEqual([[first!.agentId, 'terminated']]);
    });

    it('stops every runtime when the pool is deleted, and replaces none', async () => {
      await fabric.createPool({ poolId: 'p', model: 'm', minAgents: 3, provider: 'scripted' });
      await vi.advanceTimersByTimeAsync(0);
      const ids = (await fabric.getPool('p')).currentAgents;
      await fabric.deletePool('p', { drainTimeoutSeconds: 0 });
      await vi.advanceTimersByTimeAsync(5000);
      expect(provider.stopped.map(([id]) => id).sort()).toEqual([...ids].sort());
      expect(provider.started).toHaveLength(3);
    });
  });

  it('ends a pool’s drain at its timeout even when the wall clock was set back during it', async () => {
    fabric.registerInProcessHandler('hold', () => new Promise(() => undefined));
    await fabric.createPool({ poolId: 'p', model: 'm', minAgents: 1, executor: 'inprocess' });
    const task = await fabric.scheduleToPool('p', 'hold', {});
    await vi.advanceTimersByTimeAsync(0);
    expect((await fabric.getTask(task.id)).status).toBe('RUNNING');
    let deleted = false;
    const deleting = fabric.deletePool('p', { drainTimeoutSeconds: 10 }).then(() => {
      deleted = true;
    });
    await vi.advanceTimersByTimeAsync(5_000);
    vi.setSystemTime(Date.now() - 86_400_000);
    await vi.advanceTimersByTimeAsync(5_001);
    expect(deleted).toBe(true);
    await deleting;
    expect((await fabric.getTask(task.id)).status).not.toBe('RUNNING');
    expect(await fabric.listPools()).toEqual([]);
  });

  it('validates reconcile options, naming the field', () => {
    expect(() => new AgentFabric({}, { pools: { reconcileIntervalMs: 0 } })).toThrow(ConfigError);
    expect(
      () => new AgentFabric({}, { pools: { startBackoffMs: 10, maxStartBackoffMs: 5 } }),
    ).toThrow(/maxStartBackoffMs/);
  });
  it('keeps a joined agent that turns UNHEALTHY as a member: not terminated, not replaced', async () => {
    const seen = record(fabric);
    await fabric.createPool({ poolId: 'p', model: 'm', minAgents: 0, executor: 'remote' });
    // A remote agent nobody has connected yet (the default config's local-agent).
    const joined = await fabric.spawn({ name: 'j', model: 'm', executor: 'remote', poolId: 'p' });
    expect((await fabric.getPool('p')).currentAgents).toEqual([joined.id]);
    await vi.advanceTimersByTimeAsync(60_000);
    expect(fabric.lifecycle.agentInfo(joined.id).status).toBe(AgentStatus.UNHEALTHY);
    const pool = await fabric.getPool('p');
    expect(pool.currentAgents).toEqual([joined.id]);
    expect(pool.desiredAgents).toBe(1);
    expect(seen).toEqual([]);
    // A heartbeat puts it back; it stays the pool's one member.
    await fabric.heartbeat(joined.id);
    await vi.advanceTimersByTimeAsync(2_000);
    expect((await fabric.getPool('p')).currentAgents).toEqual([joined.id]);
    expect(fabric.lifecycle.listAgents()).toHaveLength(1);
  });

  it('a joining agent takes the place of one of a full pool’s own; a pool full of joined agents refuses one, with nothing spawned', async () => {
    await fabric.createPool({
      poolId: 'p',
      model: 'm',
      minAgents: 1,
      maxAgents: 2,
      executor: 'remote',
    });
    const [own] = (await fabric.getPool('p')).currentAgents;
    const j = await fabric.spawn({ name: 'j', model: 'm', executor: 'remote', poolId: 'p' });
    // Full (its own agent and j): k joins, and the pool's own agent gives way.
    const k = await fabric.spawn({ name: 'k', model: 'm', executor: 'remote', poolId: 'p' });
    await vi.advanceTimersByTimeAsync(0);
    expect([...(await fabric.getPool('p')).currentAgents].sort()).toEqual([j.id, k.id].sort());
    expect(fabric.lifecycle.agentInfo(own!).status).not.toBe(AgentStatus.HEALTHY);
    await vi.advanceTimersByTimeAsync(60_000);
    expect(fabric.lifecycle.agentInfo(own!).status).toBe(AgentStatus.TERMINATED);
    // Full of joined agents: none gives way, so one more is refused and nothing is spawned.
    const before = fabric.lifecycle.listAgents().length;
    await expect(
      fabric.spawn({ name: 'l', model: 'm', executor: 'remote', poolId: 'p' }),
    ).rejects.toMatchObject({ code: 'FABRIC_ERR_POOL_FULL' });
    expect(fabric.lifecycle.listAgents()).toHaveLength(before);
    expect((await fabric.getPool('p')).currentAgents).toHaveLength(2);
  });

  it('a held join into a full pool displaces no one until confirmed: reconciles while held trim nothing, a withdrawn one leaves the pool exact', async () => {
    await fabric.createPool({
      poolId: 'p',
      model: 'm',
      minAgents: 1,
      maxAgents: 1,
      executor: 'remote',
    });
    const [own] = (await fabric.getPool('p')).currentAgents;
    const joiner = (id: string): string =>
      fabric.lifecycle.spawnSync({ name: id, model: 'm', executor: 'remote', poolId: 'p' }).id;
    const a = joiner('a');
    fabric.pools.join('p', a, { held: true });
    fabric.pools.reconcile('p');
    await vi.advanceTimersByTimeAsync(2000); // the reconcile timer runs too
    expect((await fabric.getPool('p')).currentAgents).toEqual([own, a]);
    expect(fabric.lifecycle.agentInfo(own!).status).not.toBe(AgentStatus.TERMINATED);
    // Withdrawn: the pool is as it was, its own agent untouched.
    fabric.pools.withdraw('p', [a], 1);
    fabric.lifecycle.withdraw(a);
    await vi.advanceTimersByTimeAsync(2000);
    expect((await fabric.getPool('p')).currentAgents).toEqual([own]);
    expect((await fabric.getPool('p')).desiredAgents).toBe(1);
    expect(fabric.lifecycle.agentInfo(own!).status).not.toBe(AgentStatus.TERMINATED);
    // Confirmed: the pool's own agent gives way.
    const b = joiner('b');
    fabric.pools.join('p', b, { held: true });
    fabric.pools.confirmJoin('p', b);
    await vi.advanceTimersByTimeAsync(2000);
    expect((await fabric.getPool('p')).currentAgents).toEqual([b]);
    expect(fabric.lifecycle.agentInfo(own!).status).toBe(AgentStatus.TERMINATED);
  });
});

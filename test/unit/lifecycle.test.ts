import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { AgentStatus } from '../../src/agent.js';
import {
  LifecycleManager,
  hashCredential,
  type AgentRecord,
} from '../../src/lifecycle/lifecycle-manager.js';
import { MemoryCollection } from '../../src/store/memory-store.js';
import {
  AgentLimitError,
  AgentNotFoundError,
  AgentUnavailableError,
  InvalidArgumentError,
  UnauthenticatedError,
} from '../../src/errors.js';

describe('LifecycleManager', () => {
  let lifecycle: LifecycleManager;
  beforeEach(() => {
    vi.useFakeTimers();
    lifecycle = new LifecycleManager({ heartbeatIntervalSeconds: 10, maxConcurrentAgents: 2 });
  });
  afterEach(async () => {
    await lifecycle.close();
    vi.useRealTimers();
  });

  it('spawns, heartbeats, reports and terminates as in the Fabric Guide', async () => {
    const agent = await lifecycle.spawn({
      model: 'claude-3-opus',
      name: 'worker-1',
      capabilities: ['code', 'test', 'review'],
      executor: 'remote',
    });
    expect(agent.status).toBe(AgentStatus.STARTING);
    expect(agent.credential).toMatch(/^afk_/);
    await vi.advanceTimersByTimeAsync(1_000);
    await lifecycle.heartbeat(agent.id);
    const info = await lifecycle.getAgentInfo(agent.id);
    expect(info.lastHeartbeat).toBe(Date.now());
    expect(info.status).toBe(AgentStatus.HEALTHY);
    expect(info).toMatchObject({
      runningTasks: 0,
      queuedTasks: 0,
      capabilities: ['code', 'test', 'review'],
    });
    const gone = await lifecycle.terminate(agent.id);
    expect(gone.status).toBe(AgentStatus.TERMINATED);
    expect(lifecycle.activeAgents).toBe(0);
  });

  it('marks a silent agent DEGRADED after two intervals, UNHEALTHY after three, and a heartbeat heals it', async () => {
    const statuses: string[] = [];
    lifecycle.events.on('agent.status', (a) => statuses.push(a.status));
    const agent = await lifecycle.spawn({ model: 'm', name: 'r', executor: 'remote' });
    await lifecycle.heartbeat(agent.id);
    await vi.advanceTimersByTimeAsync(19_000);
    expect((await lifecycle.getAgentInfo(agent.id)).status).toBe(AgentStatus.HEALTHY);
    await vi.advanceTimersByTimeAsync(1_000);
    expect((await lifecycle.getAgentInfo(agent.id)).status).toBe(AgentStatus.DEGRADED);
    await vi.advanceTimersByTimeAsync(10_000);
    expect((await lifecycle.getAgentInfo(agent.id)).status).toBe(AgentStatus.UNHEALTHY);
    await lifecycle.heartbeat(agent.id);
    expect((await lifecycle.getAgentInfo(agent.id)).status).toBe(AgentStatus.HEALTHY);
    expect(statuses).toEqual(['HEALTHY', 'DEGRADED', 'UNHEALTHY', 'HEALTHY']);
  });

  it('heartbeats for auto agents until they are switched to manual', async () => {
    const agent = await lifecycle.spawn({ model: 'm', name: 'local' });
    expect(agent.status).toBe(AgentStatus.HEALTHY);
    await vi.advanceTimersByTimeAsync(60_000);
    expect((await lifecycle.getAgentInfo(agent.id)).status).toBe(AgentStatus.HEALTHY);
    lifecycle.setHeartbeatMode(agent.id, 'manual');
    await vi.advanceTimersByTimeAsync(30_000);
    expect((await lifecycle.getAgentInfo(agent.id)).status).toBe(AgentStatus.UNHEALTHY);
  });

  it('enforces maxConcurrentAgents, counting only live agents', async () => {
    const a = await lifecycle.spawn({ model: 'm', name: 'a' });
    await lifecycle.spawn({ model: 'm', name: 'b' });
    await expect(lifecycle.spawn({ model: 'm', name: 'c' })).rejects.toBeInstanceOf(
      AgentLimitError,
    );
    await lifecycle.terminate(a.id);
    await expect(lifecycle.spawn({ model: 'm', name: 'c' })).resolves.toBeDefined();
  });

  it('authenticates credentials and revokes them at termination', async () => {
    const a = await lifecycle.spawn({ model: 'm', name: 'a' });
    expect(lifecycle.authenticate(a.credential).id).toBe(a.id);
    expect(() => lifecycle.authenticate('afk_nope')).toThrow(UnauthenticatedError);
    expect(() => lifecycle.authenticate('')).toThrow(UnauthenticatedError);
    await lifecycle.terminate(a.id);
    expect(() => lifecycle.authenticate(a.credential)).toThrow(UnauthenticatedError);
    await expect(lifecycle.heartbeat(a.id)).rejects.toBeInstanceOf(AgentUnavailableError);
  });

  it('authenticates by a credential hash exactly as by the credential', async () => {
    const a = await lifecycle.spawn({ model: 'm', name: 'a' });
    expect(lifecycle.authenticateHash(hashCredential(a.credential)).id).toBe(a.id);
    // The credential itself is not its hash: a stolen hash (the state file) does not log in.
    expect(() => lifecycle.authenticate(hashCredential(a.credential))).toThrow(
      UnauthenticatedError,
    );
    expect(() => lifecycle.authenticateHash(hashCredential('afk_nope'))).toThrow(
      UnauthenticatedError,
    );
    await lifecycle.terminate(a.id);
    expect(() => lifecycle.authenticateHash(hashCredential(a.credential))).toThrow(
      UnauthenticatedError,
    );
  });

  it('keeps the sweep order by last heartbeat when agents join, leave and heartbeat again', async () => {
    // A heartbeat moves its agent to the end of the sweep order, unless it is known to be there
    // already; an agent joining in between must make the next heartbeat move it again, or the
    // sweep (which stops at the first recent agent) would never reach the silent one.
    const a = await lifecycle.spawn({ model: 'm', name: 'a', executor: 'remote' });
    lifecycle.heartbeatStatus(a.id); // a is last
    await vi.advanceTimersByTimeAsync(1_000);
    const b = await lifecycle.spawn({ model: 'm', name: 'b', executor: 'remote' }); // b is last
    lifecycle.heartbeatStatus(a.id); // a must move behind b
    await vi.advanceTimersByTimeAsync(5_000);
    lifecycle.heartbeatStatus(a.id);
    await vi.advanceTimersByTimeAsync(15_000); // b silent 20 s, a 15 s
    lifecycle.checkHealth();
    expect(lifecycle.agentInfo(b.id).status).toBe(AgentStatus.DEGRADED);
    expect(lifecycle.agentInfo(a.id).status).toBe(AgentStatus.HEALTHY);
    // Switched to auto and back to manual: out of the order and in again, at its end.
    lifecycle.heartbeatStatus(b.id);
    lifecycle.setHeartbeatMode(a.id, 'auto');
    lifecycle.setHeartbeatMode(a.id, 'manual'); // a is last (a fresh heartbeat)
    lifecycle.heartbeatStatus(b.id); // b must move behind a
    await vi.advanceTimersByTimeAsync(5_000);
    lifecycle.heartbeatStatus(b.id);
    await vi.advanceTimersByTimeAsync(15_000); // a silent 20 s, b 15 s
    lifecycle.checkHealth();
    expect(lifecycle.agentInfo(a.id).status).toBe(AgentStatus.DEGRADED);
    expect(lifecycle.agentInfo(b.id).status).toBe(AgentStatus.HEALTHY);
    // UNHEALTHY leaves the order; the heartbeat that heals b must put it back in.
    lifecycle.heartbeatStatus(b.id);
    await vi.advanceTimersByTimeAsync(30_000);
    lifecycle.checkHealth();
    expect(lifecycle.agentInfo(b.id).status).toBe(AgentStatus.UNHEALTHY);
    lifecycle.heartbeatStatus(b.id);
    await vi.advanceTimersByTimeAsync(20_000);
    lifecycle.checkHealth();
    expect(lifecycle.agentInfo(b.id).status).toBe(AgentStatus.DEGRADED);
  });

  it('judges silence by elapsed time, not by the wall clock: a clock step neither kills nor hides agents', async () => {
    const agents = new MemoryCollection<AgentRecord>();
    await lifecycle.close();
    lifecycle = new LifecycleManager({ heartbeatIntervalSeconds: 10, agents });
    const statuses: string[] = [];
    lifecycle.events.on('agent.status', (a) => statuses.push(`${a.name}:${a.status}`));
    const a = await lifecycle.spawn({ model: 'm', name: 'a', executor: 'remote' });
    lifecycle.heartbeatStatus(a.id);
    // NTP (or an operator) moves the wall clock a day ahead; no time passes.
    vi.setSystemTime(Date.now() + 86_400_000);
    lifecycle.checkHealth();
    expect(lifecycle.agentInfo(a.id).status).toBe(AgentStatus.HEALTHY);
    expect(agents.get(a.id)!.status).toBe(AgentStatus.HEALTHY);
    // Then two days back, and the agent dies: three intervals later it is UNHEALTHY all the same.
    lifecycle.heartbeatStatus(a.id);
    vi.setSystemTime(Date.now() - 2 * 86_400_000);
    await vi.advanceTimersByTimeAsync(30_000);
    lifecycle.checkHealth();
    expect(lifecycle.agentInfo(a.id).status).toBe(AgentStatus.UNHEALTHY);
    expect(agents.get(a.id)!.status).toBe(AgentStatus.UNHEALTHY);
    expect(statuses).toEqual(['a:HEALTHY', 'a:DEGRADED', 'a:UNHEALTHY']);
  });

  it('heartbeatStatus is a heartbeat without the snapshot', async () => {
    const a = await lifecycle.spawn({ model: 'm', name: 'a', executor: 'remote' });
    await vi.advanceTimersByTimeAsync(25_000);
    expect(lifecycle.agentInfo(a.id).status).not.toBe(AgentStatus.HEALTHY);
    expect(lifecycle.heartbeatStatus(a.id)).toBe(AgentStatus.HEALTHY);
    expect(lifecycle.agentInfo(a.id)).toMatchObject({
      status: AgentStatus.HEALTHY,
      lastHeartbeat: Date.now(),
    });
    await lifecycle.terminate(a.id);
    expect(() => lifecycle.heartbeatStatus(a.id)).toThrow(AgentUnavailableError);
  });

  it('lets a drainer hold termination in DRAINING and shares one termination between callers', async () => {
    let release!: () => void;
    lifecycle.setDrainer(() => new Promise<void>((r) => (release = r)));
    const a = await lifecycle.spawn({ model: 'm', name: 'a' });
    const t1 = lifecycle.terminate(a.id);
    const t2 = lifecycle.terminate(a.id);
    expect((await lifecycle.getAgentInfo(a.id)).status).toBe(AgentStatus.DRAINING);
    release();
    expect((await t1).status).toBe(AgentStatus.TERMINATED);
    expect((await t2).status).toBe(AgentStatus.TERMINATED);
  });

  it('rejects bad input with typed errors', async () => {
    await expect(lifecycle.spawn({ model: '', name: 'x' })).rejects.toThrow(/config.model/);
    await expect(
      lifecycle.spawn({ model: 'm', name: 'x', capabilities: [3] as never }),
    ).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(
      lifecycle.spawn({ model: 'm', name: 'x', heartbeat: 'sometimes' as never }),
    ).rejects.toThrow(/heartbeat/);
    await expect(lifecycle.getAgentInfo('ghost')).rejects.toBeInstanceOf(AgentNotFoundError);
    await expect(lifecycle.terminate('ghost')).rejects.toBeInstanceOf(AgentNotFoundError);
    expect(() => new LifecycleManager({ heartbeatIntervalSeconds: -1 })).toThrow(
      /heartbeatIntervalSeconds/,
    );
  });

  it('sweeps only agents silent long enough to change, never every agent', async () => {
    let scans = 0;
    class CountingCollection extends MemoryCollection<AgentRecord> {
      override values(): IterableIterator<AgentRecord> {
        scans++;
        return super.values();
      }
    }
    const lc = new LifecycleManager({
      heartbeatIntervalSeconds: 10,
      maxConcurrentAgents: 500,
      agents: new CountingCollection(),
    });
    const ids: string[] = [];
    for (let i = 0; i < 300; i++) {
      ids.push((await lc.spawn({ model: 'm', name: `a${i}`, executor: 'remote' })).id);
    }
    const auto = await lc.spawn({ model: 'm', name: 'auto', executor: 'local' });
    scans = 0;
    // Everyone but ids[0] keeps heartbeating; 30 s of sweeps (every 5 s).
    for (let t = 0; t < 6; t++) {
      await vi.advanceTimersByTimeAsync(5_000);
      for (const id of ids.slice(1)) lc.heartbeatSync(id);
    }
    expect(scans).toBe(0);
    expect(lc.agentInfo(ids[0]!).status).toBe(AgentStatus.UNHEALTHY);
    expect(ids.slice(1).every((id) => lc.agentInfo(id).status === AgentStatus.HEALTHY)).toBe(true);
    expect(lc.agentInfo(auto.id)).toMatchObject({
      status: AgentStatus.HEALTHY,
      lastHeartbeat: Date.now(),
    });
    // A heartbeat brings the silent one back, and silence degrades it again.
    lc.heartbeatSync(ids[0]!);
    expect(lc.agentInfo(ids[0]!).status).toBe(AgentStatus.HEALTHY);
    await vi.advanceTimersByTimeAsync(20_000);
    expect(lc.agentInfo(ids[0]!).status).toBe(AgentStatus.DEGRADED);
    await lc.close();
  });
});

import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { AgentStatus } from '../../src/agent.js';
import { LifecycleManager } from '../../src/lifecycle/lifecycle-manager.js';
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
});

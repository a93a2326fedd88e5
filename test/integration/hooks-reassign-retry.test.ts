import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { AgentStatus } from '../../src/agent.js';
import { HookRetryLimitError } from '../../src/errors.js';
import { AgentFabric } from '../../src/fabric.js';
import { HookManager } from '../../src/hooks/hook-manager.js';
import { HookStatus } from '../../src/hooks/hook-status.js';
import { git, tempDir, type TempDir } from '../fixtures/hooks/temp-store.js';

/**
 * Issue 16, bug 2: a hook abandoned while no agent of its pool was free waited forever. Remote
 * agents, real heartbeats through the fabric's API, a real git store with a real worktree; the
 * clock (`Date` only) is moved by hand so that "silent for three heartbeat intervals" needs no
 * sleeping, and the patrol is run directly, as its timer would.
 */
describe('abandoned hooks are reassigned once capacity appears (real git, remote agents)', () => {
  const HEARTBEAT_S = 10;
  let dir: TempDir;
  let fabric: AgentFabric | undefined;
  afterEach(async () => {
    await fabric?.close();
    fabric = undefined;
    vi.useRealTimers();
    await dir?.cleanup();
  });

  /** Moves the fabric's clock past three heartbeat intervals and runs a health sweep. */
  function silenceFor(intervals: number): void {
    // Health counts elapsed (monotonic) time: both clocks move, as when time really passes.
    vi.advanceTimersByTime(intervals * HEARTBEAT_S * 1000 + 1);
    fabric!.lifecycle.checkHealth();
  }

  async function setup(maxReassignments = 3, patrolIntervalSeconds?: number) {
    vi.useFakeTimers({ toFake: ['Date', 'performance'] });
    dir = await tempDir('fabric-hook-retry-');
    const storagePath = join(dir.path, 'hooks');
    fabric = new AgentFabric(
      { heartbeatIntervalSeconds: HEARTBEAT_S },
      {
        hooks: {
          storagePath,
          useGitWorktree: true,
          maxReassignments,
          ...(patrolIntervalSeconds === undefined ? {} : { patrolIntervalSeconds }),
        },
      },
    );
    const pool = await fabric.createPool({
      poolId: 'p',
      model: 'm',
      minAgents: 1,
      maxAgents: 4,
      executor: 'remote',
    });
    const [a1] = pool.currentAgents as [string];
    await fabric.heartbeat(a1);
    const hooks = fabric.hooks!;
    const created = await hooks.createHook({
      agentId: a1,
      workItem: { task: 'refactor', file: 'api.py' },
      branch: 'agent/refactor-16',
    });
    await fabric.activateHook(a1, created.hookId);
    const worktree = (await hooks.inspectWorktree(created.hookId)).path!;
    writeFileSync(join(worktree, 'api.py'), 'def handler():\n    return 16\n'); // uncommitted
    return { storagePath, a1, hookId: created.hookId, worktree };
  }

  /** The one agent `scalePool` adds, heartbeating. */
  async function grow(target: number, before: readonly string[]): Promise<string> {
    const change = await fabric!.scalePool('p', target);
    const added = change.pool.currentAgents.filter((id) => !before.includes(id));
    expect(added).toHaveLength(1);
    await fabric!.heartbeat(added[0]!);
    return added[0]!;
  }

  it('retries on the patrol: the issue’s scenario, checked in the store and on disk', async () => {
    const { storagePath, a1, hookId, worktree } = await setup();
    const hooks = fabric!.hooks!;

    silenceFor(3);
    expect((await fabric!.getAgentInfo(a1)).status).toBe(AgentStatus.UNHEALTHY);
    await fabric!.hookRecoveryIdle();
    // No agent was free: abandoned, not reassigned, and no reassignment spent.
    expect(await hooks.getHook(hookId)).toMatchObject({
      status: HookStatus.ABANDONED,
      agentId: a1,
      reassignments: 0,
    });
    // Patrols while there is still no capacity change nothing and spend nothing.
    for (let i = 0; i < 3; i++) await hooks.checkPendingHooks();
    expect(await hooks.getHook(hookId)).toMatchObject({
      status: HookStatus.ABANDONED,
      reassignments: 0,
    });

    const a2 = await grow(2, [a1]);
    // Seven patrol runs with the new agent heartbeating (the acceptance script).
    for (let i = 0; i < 7; i++) {
      await fabric!.heartbeat(a2);
      await hooks.checkPendingHooks();
    }
    await fabric!.hookRecoveryIdle();

    expect(await hooks.getHook(hookId)).toMatchObject({
      status: HookStatus.PENDING,
      agentId: a2,
      reassignments: 1,
      previousAgents: [a1],
    });
    expect((await fabric!.hookFor(a2))?.hookId).toBe(hookId);
    expect(await fabric!.hookFor(a1)).toBeUndefined();
    // The worktree, with its uncommitted work, went along.
    expect(readFileSync(join(worktree, 'api.py'), 'utf8')).toContain('return 16');
    await fabric!.activateHook(a2, hookId);
    await fabric!.completeHook(a2, hookId, { ok: true });

    // In the store: the audit trail has one reassignment, and a fresh manager reads it back.
    const trail = git(storagePath, 'log', '--format=%s', 'refs/fabric/hooks');
    expect(trail.split('\n').filter((s) => s.includes('ABANDONED -> PENDING'))).toHaveLength(1);
    await fabric!.close();
    fabric = undefined;
    const reread = await HookManager.open({ storagePath, useGitWorktree: true });
    try {
      expect(await reread.getHook(hookId)).toMatchObject({
        status: HookStatus.COMPLETED,
        agentId: a2,
        reassignments: 1,
        previousAgents: [a1],
      });
    } finally {
      await reread.close();
    }
    expect(existsSync(worktree)).toBe(true);
  });

  it('retries on the fabric’s own patrol timer, with nobody calling the patrol', async () => {
    const { a1, hookId } = await setup(3, 0.05);
    const hooks = fabric!.hooks!;
    silenceFor(3);
    await fabric!.hookRecoveryIdle();
    expect((await hooks.getHook(hookId)).status).toBe(HookStatus.ABANDONED);
    const moved = new Promise<string>((resolve) =>
      hooks.on('hook.reassigned', (e) => resolve(e.toAgentId)),
    );
    const a2 = await grow(2, [a1]);
    expect(await moved).toBe(a2);
    expect(await hooks.getHook(hookId)).toMatchObject({
      status: HookStatus.PENDING,
      agentId: a2,
      reassignments: 1,
    });
  });

  it('stays bounded by maxReassignments: the next agent after the last one gets nothing', async () => {
    const { a1, hookId } = await setup(1);
    const hooks = fabric!.hooks!;
    silenceFor(3);
    await fabric!.hookRecoveryIdle();
    const a2 = await grow(2, [a1]);
    await hooks.checkPendingHooks();
    expect(await hooks.getHook(hookId)).toMatchObject({ agentId: a2, reassignments: 1 });

    // a2 dies too, before any capacity is back: abandoned again, nothing spent.
    silenceFor(3);
    expect((await fabric!.getAgentInfo(a2)).status).toBe(AgentStatus.UNHEALTHY);
    await fabric!.hookRecoveryIdle();
    const a3 = await grow(3, [a1, a2]);
    await hooks.checkPendingHooks();
    await fabric!.hookRecoveryIdle();

    // Out of reassignments: FAILED with the retry-limit code, never handed to a3.
    expect(await hooks.getHook(hookId)).toMatchObject({
      status: HookStatus.FAILED,
      agentId: a2,
      reassignments: 1,
      error: { code: HookRetryLimitError.code },
    });
    expect(await fabric!.hookFor(a3)).toBeUndefined();
    // Further patrols leave a FAILED hook alone.
    await hooks.checkPendingHooks();
    expect((await hooks.getHook(hookId)).status).toBe(HookStatus.FAILED);
  });

  it('gives the hook back to its own agent when that agent returns first', async () => {
    const { a1, hookId, worktree } = await setup();
    const hooks = fabric!.hooks!;
    silenceFor(3);
    await fabric!.hookRecoveryIdle();
    expect((await hooks.getHook(hookId)).status).toBe(HookStatus.ABANDONED);

    // The agent heartbeats again (a network partition healed) before any other is free.
    await fabric!.heartbeat(a1);
    await hooks.checkPendingHooks();
    await fabric!.hookRecoveryIdle();
    expect(await hooks.getHook(hookId)).toMatchObject({
      status: HookStatus.PENDING,
      agentId: a1,
      reassignments: 1,
      previousAgents: [a1],
    });
    // It finds its work on its hook on reconnect, worktree and all, and may finish it.
    expect((await fabric!.hookFor(a1))?.hookId).toBe(hookId);
    expect(readFileSync(join(worktree, 'api.py'), 'utf8')).toContain('return 16');
    await fabric!.activateHook(a1, hookId);
    await fabric!.completeHook(a1, hookId);
    expect((await hooks.getHook(hookId)).status).toBe(HookStatus.COMPLETED);
  });
});

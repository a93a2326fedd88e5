/**
 * Hook reassignment on the patrol (issue 16, bug 2) against hostile agents: one that flaps
 * (silent, back, silent…) to make its hook bounce forever, one that comes back to take its hook
 * from the agent that now holds it, pools used to pull another pool's work, and concurrent
 * patrols over many abandoned hooks. Real AgentFabric with remote agents, a real git store with
 * worktrees; results are checked in the store (hook records, the audit trail), not only in the
 * answers. The clock (`Date` only) is moved by hand, so nothing sleeps.
 */
import { join } from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { AgentStatus } from '../../src/agent.js';
import { HookNotFoundError, HookRetryLimitError } from '../../src/errors.js';
import { AgentFabric } from '../../src/fabric.js';
import { HookManager } from '../../src/hooks/hook-manager.js';
import { HookStatus } from '../../src/hooks/hook-status.js';
import { git, tempDir, type TempDir } from '../fixtures/hooks/temp-store.js';

const HEARTBEAT_S = 10;

let dir: TempDir;
let fabric: AgentFabric | undefined;

afterEach(async () => {
  await fabric?.close();
  fabric = undefined;
  vi.useRealTimers();
  await dir?.cleanup();
});

async function start(maxReassignments: number, useGitWorktree = true): Promise<string> {
  vi.useFakeTimers({ toFake: ['Date', 'performance'] });
  dir = await tempDir('fabric-hook-sec-');
  const storagePath = join(dir.path, 'hooks');
  fabric = new AgentFabric(
    { heartbeatIntervalSeconds: HEARTBEAT_S },
    { hooks: { storagePath, useGitWorktree, maxReassignments } },
  );
  return storagePath;
}

/** Every agent but `alive` stays silent for three heartbeat intervals; then a health sweep. */
async function silenceAllBut(...alive: string[]): Promise<void> {
  // Health counts elapsed (monotonic) time: both clocks move, as when time really passes.
  vi.advanceTimersByTime(3 * HEARTBEAT_S * 1000 + 1);
  for (const id of alive) await fabric!.heartbeat(id);
  fabric!.lifecycle.checkHealth();
  await fabric!.hookRecoveryIdle();
}

async function remotePool(poolId: string, size: number): Promise<string[]> {
  const pool = await fabric!.createPool({
    poolId,
    model: 'm',
    minAgents: size,
    maxAgents: 8,
    executor: 'remote',
  });
  for (const id of pool.currentAgents) await fabric!.heartbeat(id);
  return [...pool.currentAgents];
}

function trail(storagePath: string, hookId: string): string[] {
  return git(storagePath, 'log', '--reverse', '--format=%s', 'refs/fabric/hooks')
    .split('\n')
    .filter((s) => s.startsWith(`hook ${hookId}:`));
}

describe('hook reassignment against hostile agents', () => {
  it('a flapping agent cannot make its hook bounce more than maxReassignments times', async () => {
    const storagePath = await start(2);
    const [flapper] = await remotePool('p', 1);
    const hooks = fabric!.hooks!;
    const h = await hooks.createHook({ agentId: flapper!, workItem: 'x', branch: 'agent/flap' });
    await fabric!.activateHook(flapper!, h.hookId);

    for (let round = 0; round < 8; round++) {
      await silenceAllBut(); // silent: abandoned
      expect((await fabric!.getAgentInfo(flapper!)).status).toBe(AgentStatus.UNHEALTHY);
      await fabric!.heartbeat(flapper!); // back
      await hooks.checkPendingHooks();
      await fabric!.hookRecoveryIdle();
    }

    const final = await hooks.getHook(h.hookId);
    expect(final).toMatchObject({
      status: HookStatus.FAILED,
      reassignments: 2,
      error: { code: HookRetryLimitError.code },
    });
    expect(await fabric!.hookFor(flapper!)).toBeUndefined();
    // The audit trail: exactly two hand-backs, then the give-up, then nothing more.
    const t = trail(storagePath, h.hookId);
    expect(t.filter((s) => s.endsWith('ABANDONED -> PENDING'))).toHaveLength(2);
    expect(t.at(-1)).toBe(`hook ${h.hookId}: ABANDONED -> FAILED`);
  });

  it('an agent back after its hook moved on cannot take it back or act on it', async () => {
    await start(3);
    const [old, next] = await remotePool('p', 2);
    const hooks = fabric!.hooks!;
    const h = await hooks.createHook({ agentId: old!, workItem: 'x', branch: 'agent/steal' });
    await fabric!.activateHook(old!, h.hookId);
    await silenceAllBut(next!);
    await hooks.checkPendingHooks();
    expect(await hooks.getHook(h.hookId)).toMatchObject({ agentId: next, reassignments: 1 });

    await fabric!.heartbeat(old!);
    for (let i = 0; i < 3; i++) await hooks.checkPendingHooks();
    await fabric!.hookRecoveryIdle();
    for (const attempt of [
      () => fabric!.activateHook(old!, h.hookId),
      () => fabric!.completeHook(old!, h.hookId, 'mine'),
      () => fabric!.recordHookProgress(old!, h.hookId, 'mine'),
      () => fabric!.failHook(old!, h.hookId, { message: 'mine' }),
    ]) {
      // Exactly what an unknown hook gets: an agent does not learn which hooks exist.
      await expect(attempt()).rejects.toBeInstanceOf(HookNotFoundError);
    }
    expect(await hooks.getHook(h.hookId)).toMatchObject({
      status: HookStatus.PENDING,
      agentId: next,
      reassignments: 1,
    });
    expect(await fabric!.hookFor(old!)).toBeUndefined();
  });

  it('never hands a pool’s hook to another pool’s agent, however idle', async () => {
    await start(3);
    const [a] = await remotePool('p', 1);
    const [b] = await remotePool('q', 1);
    const hooks = fabric!.hooks!;
    const h = await hooks.createHook({ agentId: a!, workItem: 'x', branch: 'agent/pool-p' });
    await silenceAllBut(b!);
    for (let i = 0; i < 5; i++) {
      await fabric!.heartbeat(b!);
      await hooks.checkPendingHooks();
    }
    expect(await hooks.getHook(h.hookId)).toMatchObject({
      status: HookStatus.ABANDONED,
      agentId: a,
      reassignments: 0,
    });
    const change = await fabric!.scalePool('p', 2);
    const a2 = change.pool.currentAgents.find((id) => id !== a)!;
    await fabric!.heartbeat(a2);
    await hooks.checkPendingHooks();
    expect(await hooks.getHook(h.hookId)).toMatchObject({ agentId: a2, reassignments: 1 });
  });

  it('moves each of many abandoned hooks exactly once under concurrent patrols', async () => {
    const storagePath = await start(3, false);
    const [dead] = await remotePool('p', 1);
    const hooks = fabric!.hooks!;
    const ids: string[] = [];
    for (let i = 0; i < 40; i++) {
      ids.push((await hooks.createHook({ agentId: dead!, workItem: { i } })).hookId);
    }
    await silenceAllBut();
    const change = await fabric!.scalePool('p', 3);
    const fresh = change.pool.currentAgents.filter((id) => id !== dead);
    for (const id of fresh) await fabric!.heartbeat(id);

    await Promise.all([
      hooks.checkPendingHooks(),
      hooks.checkPendingHooks(),
      hooks.checkPendingHooks(),
      fabric!.heartbeat(fresh[0]!),
      hooks.checkPendingHooks(),
    ]);
    await fabric!.hookRecoveryIdle();
    await fabric!.close();
    fabric = undefined;

    // Read back from the store by a fresh manager: every hook moved once, to a live agent.
    const reread = await HookManager.open({ storagePath, useGitWorktree: false });
    try {
      for (const id of ids) {
        const h = await reread.getHook(id);
        expect(h).toMatchObject({ status: HookStatus.PENDING, reassignments: 1 });
        expect(fresh).toContain(h.agentId);
        expect(
          trail(storagePath, id).filter((s) => s.endsWith('ABANDONED -> PENDING')),
        ).toHaveLength(1);
      }
    } finally {
      await reread.close();
    }
  });
});

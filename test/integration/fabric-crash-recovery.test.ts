import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { AgentFabric } from '../../src/fabric.js';
import { AgentStatus } from '../../src/agent.js';
import { HookStatus } from '../../src/hooks/hook-status.js';
import { tempDir, type TempDir } from '../fixtures/hooks/temp-store.js';

/**
 * The Fabric Guide's crash recovery, end to end: a local agent working on a hook stops
 * heartbeating, the fabric marks it UNHEALTHY, its hook is ABANDONED, and the hook moves to a
 * live agent of the pool with its worktree — uncommitted work included.
 */
describe('crash recovery with GUPP hooks (real git, real heartbeats)', () => {
  let dir: TempDir;
  let fabric: AgentFabric;
  afterEach(async () => {
    await fabric?.close();
    await dir?.cleanup();
  });

  async function setup(autoReassign: boolean) {
    dir = await tempDir('fabric-recovery-');
    fabric = new AgentFabric(
      { heartbeatIntervalSeconds: 0.05 },
      { hooks: { storagePath: join(dir.path, 'hooks'), useGitWorktree: true, autoReassign } },
    );
    const pool = await fabric.createPool({
      poolId: 'pool-backend',
      model: 'claude-3-opus',
      minAgents: 2,
    });
    const [crashing, survivor] = pool.currentAgents as [string, string];
    const hooks = fabric.hooks!;
    const hook = await hooks.createHook({
      agentId: crashing,
      workItem: { task: 'refactor', file: 'api.py' },
      branch: 'agent/refactor-123',
    });
    await hooks.activateHook(hook.hookId);
    const worktree = (await hooks.inspectWorktree(hook.hookId)).path!;
    writeFileSync(join(worktree, 'api.py'), 'def handler():\n    return 42\n'); // uncommitted work
    // The agent crashes: nobody heartbeats for it any more.
    fabric.lifecycle.setHeartbeatMode(crashing, 'manual');
    return { crashing, survivor, hook, worktree };
  }

  it('runs the guide’s recovery loop as written', async () => {
    const { crashing, survivor, hook, worktree } = await setup(false);
    const hooks = fabric.hooks!;
    await vi.waitFor(
      async () => expect((await fabric.getAgentInfo(crashing)).status).toBe(AgentStatus.UNHEALTHY),
      {
        timeout: 10_000,
      },
    );
    await fabric.hookRecoveryIdle();

    // Check for abandoned hooks (agent crashed)
    const pending = await hooks.checkPendingHooks();
    for (const h of pending) {
      if (h.status === HookStatus.ABANDONED) {
        // Reassign to new agent
        const newAgent = await fabric.getAvailableAgent();
        await hooks.reassignHook(h.hookId, newAgent.id);
      }
    }

    const moved = await hooks.getHook(hook.hookId);
    expect(moved).toMatchObject({ status: HookStatus.PENDING, agentId: survivor });
    expect((await fabric.hookFor(survivor))?.hookId).toBe(hook.hookId);
    expect(await fabric.hookFor(crashing)).toBeUndefined();
    expect(existsSync(join(worktree, 'api.py'))).toBe(true);
    expect(readFileSync(join(worktree, 'api.py'), 'utf8')).toContain('return 42');
    expect((await hooks.inspectWorktree(hook.hookId)).dirty).toBe(true);
  });

  it('reassigns automatically within the pool when autoReassign is on', async () => {
    const { crashing, survivor, hook } = await setup(true);
    const report = await new Promise<{
      agentId: string;
      abandoned: string[];
      reassigned: string[];
    }>((resolve) => fabric.events.on('hooks.recovered', resolve));
    expect(report).toEqual({
      agentId: crashing,
      abandoned: [hook.hookId],
      reassigned: [hook.hookId],
    });
    expect(await fabric.hooks!.getHook(hook.hookId)).toMatchObject({
      status: HookStatus.PENDING,
      agentId: survivor,
    });
    // The crashed agent comes back: its hook stays with the survivor.
    await fabric.heartbeat(crashing);
    expect(await fabric.hookFor(crashing)).toBeUndefined();
  });
});

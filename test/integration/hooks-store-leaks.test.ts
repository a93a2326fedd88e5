/**
 * What a real `agent-fabric serve` leaves of its hook store (a real git store in a temp dir):
 * - its lock `fabric-hooks.lock`, removed under the running sidecar, is made again for it, so a
 *   second `serve` on the same hook folder is refused (before, the second one opened the store
 *   beside the first: two writers of one state ref);
 * - the store's folder is 0700, the lock 0600 and the objects it writes 0400 (before: the
 *   umask's 0755/0644/0444, readable by every local user), and a folder left 0755 by an earlier
 *   version is tightened at open;
 * - a hook commit that fails because `.git` was removed leaves no `.git/objects` behind (before,
 *   the object writer's recursive mkdir made one);
 * - `/metrics` says whether the hook store works and counts its commits and failed commits.
 */
import { chmodSync, existsSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HOOK_LOCK_FILE, HookManager } from '../../src/hooks/index.js';
import { ADMIN_TOKEN, tempDir, until } from '../fixtures/gateway/harness.js';
import { hookObjectPath } from '../fixtures/hooks/temp-store.js';
import { cleanUp, serve, spawnServe, stop, type Running } from '../fixtures/state/serve.js';

/** Writes `<dir>/fabric.json`: memory state, the hook store at `storagePath`, one agent. */
function writeConfig(dir: string, storagePath: string): void {
  writeFileSync(
    join(dir, 'fabric.json'),
    JSON.stringify({
      http: { host: '127.0.0.1', port: 0 },
      adminToken: ADMIN_TOKEN,
      state: 'memory',
      hooks: { storagePath, useGitWorktree: false },
      agents: [{ name: 'worker' }],
    }),
  );
}

const mode = (path: string): number => statSync(path).mode & 0o777;

describe('the hook store of a running sidecar', () => {
  let dir: string;
  let storagePath: string;
  let lockPath: string;
  let r: Running;
  let agentId: string;

  const call = (method: string, body: unknown): Promise<Response> =>
    fetch(`${new URL(r.url).origin}/api/fabric.v1.${method}`, {
      method: 'POST',
      headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' },
      body: JSON.stringify(body),
    });
  const createHook = async (n: number): Promise<Response> =>
    call('FabricService/CreateHook', { agentId, workItem: { n } });
  const metric = async (name: string): Promise<number> => {
    const res = await fetch(`${new URL(r.url).origin}/metrics`, {
      headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
    });
    const m = new RegExp(`^${name} (\\S+)$`, 'm').exec(await res.text());
    return m === null ? NaN : Number(m[1]);
  };

  beforeAll(async () => {
    dir = tempDir('hooks-store-leaks');
    storagePath = join(dir, 'hooks');
    lockPath = join(storagePath, '.git', HOOK_LOCK_FILE);
    writeConfig(dir, storagePath);
    r = await serve(dir);
    const res = await call('FabricService/ListAgents', {});
    agentId = ((await res.json()) as { agents: { agentId: string }[] }).agents[0]!.agentId;
  }, 60_000);

  afterAll(async () => {
    await cleanUp();
    rmSync(dir, { recursive: true, force: true });
  });

  it('keeps its folder, lock and objects from other users (0700, 0600, 0400)', async () => {
    const res = await createHook(1);
    expect(res.status).toBe(200);
    const { hook } = (await res.json()) as { hook: { hookId: string } };
    expect(mode(storagePath)).toBe(0o700);
    expect(mode(lockPath)).toBe(0o600);
    // The hook's record, as the store wrote it into git's object store.
    expect(mode(hookObjectPath(storagePath, hook.hookId))).toBe(0o400);
  });

  it('counts its commits in /metrics and says it is up', async () => {
    expect(await metric('agent_fabric_hook_store_up')).toBe(1);
    expect(await metric('agent_fabric_hook_store_commits_total')).toBeGreaterThanOrEqual(1);
    expect(await metric('agent_fabric_hook_store_commit_failures_total')).toBe(0);
  });

  it('makes its lock again when it is removed, and a second serve is refused', async () => {
    rmSync(lockPath);
    await until(() => existsSync(lockPath), 15_000);
    const holder = JSON.parse(readFileSync(lockPath, 'utf8')) as { pid: number };
    expect(holder.pid).toBe(r.child.pid);
    expect(mode(lockPath)).toBe(0o600);
    await until(() => r.err().includes('was made again for this process'));

    const second = tempDir('hooks-store-leaks-second');
    try {
      writeConfig(second, storagePath);
      const b = spawnServe(second);
      await until(() => b.child.exitCode !== null || b.out().includes('"mcpServers"'), 30_000);
      expect(b.child.exitCode, b.err()).not.toBeNull();
      expect(b.child.exitCode).not.toBe(0);
      expect(b.err()).toContain('hook store is locked');
      // The first sidecar still holds the store.
      expect((JSON.parse(readFileSync(lockPath, 'utf8')) as { pid: number }).pid).toBe(r.child.pid);
      expect((await createHook(2)).status).toBe(200);
    } finally {
      rmSync(second, { recursive: true, force: true });
    }
  }, 60_000);

  it('leaves nothing half-made when a commit fails with .git removed, and counts it', async () => {
    // The sidecar's lock check (every second) can make its lock file again while the folder is
    // being emptied (rmdir then finds it not empty): removed again on a retry.
    rmSync(join(storagePath, '.git'), { recursive: true, force: true, maxRetries: 10 });
    const res = await createHook(3);
    expect(res.status).toBe(500);
    expect(await res.text()).toContain('FABRIC_ERR_HOOK_STORE');
    // Before, the object writer made `.git/objects/<xx>` (and the objects) again.
    expect(existsSync(join(storagePath, '.git'))).toBe(false);
    expect(await metric('agent_fabric_hook_store_up')).toBe(0);
    expect(await metric('agent_fabric_hook_store_commit_failures_total')).toBe(1);
    // Neither did the lock check make anything there; it reports the lock lost, once.
    await until(() => r.err().includes("is not this sidecar's"));
    expect(existsSync(join(storagePath, '.git'))).toBe(false);
    expect(await stop(r, 'SIGTERM')).toBe(0);
    expect(existsSync(join(storagePath, '.git'))).toBe(false);
  }, 60_000);
});

describe('a hook store left by an earlier version', () => {
  it('is made 0700 when it opens', async () => {
    const dir = tempDir('hooks-store-modes');
    try {
      const storagePath = join(dir, 'hooks');
      const first = await HookManager.open({ storagePath, useGitWorktree: false });
      const h = await first.createHook({ agentId: 'a', workItem: 1 });
      await first.close();
      chmodSync(storagePath, 0o755);
      const m = await HookManager.open({ storagePath, useGitWorktree: false });
      try {
        expect(mode(storagePath)).toBe(0o700);
        expect(mode(join(storagePath, '.git', HOOK_LOCK_FILE))).toBe(0o600);
        expect((await m.getHook(h.hookId)).workItem).toBe(1);
      } finally {
        await m.close();
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

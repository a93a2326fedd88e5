/**
 * GUPP across a crash of the real `agent-fabric serve` (`state` in SQLite, a git hook store): two
 * agents run the work on their hooks over MCP (get, activate, progress, complete) while the
 * sidecar is killed with SIGKILL in the middle; after the restart they pick up what is left.
 * Every hook ends COMPLETED exactly once — one `ACTIVE -> COMPLETED` commit on the state ref, the
 * result the completing agent sent — none is lost, and what was acknowledged before the crash is
 * what the store holds. An agent that never comes back after the crash loses its hook to the
 * first agent that heartbeats again, and the hook moves at most `maxReassignments` times.
 */
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import { afterAll, describe, expect, it } from 'vitest';
import { tempDir, text, until } from '../fixtures/gateway/harness.js';
import { git } from '../fixtures/hooks/temp-store.js';
import { adminApi, cleanUp, connect, serve, stop, type Running } from '../fixtures/state/serve.js';

afterAll(cleanUp);

const ADMIN = `fab_admin_${'K9hk'.repeat(8)}`;
const TOKENS = { a: randomBytes(32).toString('hex'), b: randomBytes(32).toString('hex') } as const;
const PER_AGENT = 15;

function api(r: Running, method: string, body: unknown): Promise<Record<string, unknown>> {
  return adminApi(r, ADMIN, method, body);
}

interface WireHook {
  hookId: string;
  agentId: string;
  status: string;
  result?: unknown;
}

async function tool(c: Client, name: string, args: Record<string, unknown> = {}): Promise<unknown> {
  const r = (await c.callTool({ name: `fabric__${name}`, arguments: args })) as CallToolResult;
  if (r.isError) throw new Error(text(r));
  return (r.structuredContent as { result: unknown }).result;
}

/**
 * The agent's loop: while there is work on its hook, run it. Records each completion the
 * sidecar acknowledged; stops at the first failed call (the sidecar died) or an empty hook.
 */
async function runHooks(c: Client, name: string, acked: Map<string, string>): Promise<void> {
  for (;;) {
    const hook = (await tool(c, 'get_hook')) as { hookId: string } | null;
    if (hook === null) return;
    await tool(c, 'activate_hook', { hookId: hook.hookId });
    await tool(c, 'hook_progress', { hookId: hook.hookId, note: `${name} working` });
    await tool(c, 'complete_hook', { hookId: hook.hookId, result: { by: name } });
    acked.set(hook.hookId, name);
  }
}

/**
 * Writes `<dir>/fabric.json` (state in `<dir>/state.db`, hooks in `<dir>/hooks`, agents `a` and
 * `b` with pinned credentials, `extra` on top, `hooks` merged) and starts `serve` on it.
 */
async function start(
  dir: string,
  hooks: Record<string, unknown>,
  extra: Record<string, unknown> = {},
): Promise<{ first: Running; storagePath: string; idOf: (name: string) => string }> {
  const storagePath = join(dir, 'hooks');
  writeFileSync(
    join(dir, 'fabric.json'),
    JSON.stringify({
      http: { host: '127.0.0.1', port: 0 },
      adminToken: ADMIN,
      state: { path: join(dir, 'state.db') },
      hooks: { storagePath, useGitWorktree: false, ...hooks },
      policies: [{ name: 'allow', rules: [{ tool: '*', action: 'allow' }] }],
      agents: [
        { name: 'a', credential: TOKENS.a },
        { name: 'b', credential: TOKENS.b },
      ],
      ...extra,
    }),
  );
  const first = await serve(dir);
  const { agents } = (await api(first, 'FabricService/ListAgents', {})) as {
    agents: { agentId: string; name: string }[];
  };
  return {
    first,
    storagePath,
    idOf: (name) => agents.find((x) => x.name === name)!.agentId,
  };
}

describe('kill -9 of serve in the middle of hook transitions', () => {
  it('ends every hook exactly once after the restart, none lost', async () => {
    const dir = tempDir('hooks-kill9');
    const { first, storagePath, idOf } = await start(dir, { autoReassign: false });
    const created: string[] = [];
    for (let i = 0; i < PER_AGENT; i++) {
      for (const name of ['a', 'b'] as const) {
        const { hook } = (await api(first, 'FabricService/CreateHook', {
          agentId: idOf(name),
          workItem: { n: i, for: name },
        })) as { hook: WireHook };
        created.push(hook.hookId);
      }
    }

    const acked = new Map<string, string>();
    const ca = await connect(first.url, TOKENS.a);
    const cb = await connect(first.url, TOKENS.b);
    const loops = [runHooks(ca, 'a', acked), runHooks(cb, 'b', acked)].map((p) =>
      p.catch(() => undefined),
    );
    // Killed with transitions in flight: a few hooks done, the rest pending or active.
    while (acked.size < 6) await new Promise((r) => setTimeout(r, 5));
    first.child.kill('SIGKILL');
    await Promise.all(loops);
    const ackedBefore = new Map(acked);
    expect(ackedBefore.size).toBeLessThan(created.length);

    const second = await serve(dir);
    const ra = await connect(second.url, TOKENS.a);
    const rb = await connect(second.url, TOKENS.b);
    await Promise.all([runHooks(ra, 'a', acked), runHooks(rb, 'b', acked)]);

    const { hooks } = (await api(second, 'FabricService/ListHooks', {})) as { hooks: WireHook[] };
    expect(hooks.map((h) => h.hookId).sort()).toEqual([...created].sort());
    for (const h of hooks) {
      expect(h.status, h.hookId).toBe('HOOK_STATUS_COMPLETED');
      const by = (h.result as { by: string }).by;
      expect(idOf(by)).toBe(h.agentId);
      if (ackedBefore.has(h.hookId)) expect(by).toBe(ackedBefore.get(h.hookId));
    }
    expect(await stop(second, 'SIGTERM')).toBe(0);

    git(storagePath, 'fsck', '--strict', '--no-dangling', '--no-progress');
    const subjects = git(storagePath, 'log', '--format=%s', 'refs/fabric/hooks')
      .split('\n')
      .filter((s) => s !== '');
    for (const id of created) {
      const mine = subjects.filter((s) => s.startsWith(`hook ${id}: `));
      expect(
        mine.filter((s) => s.endsWith('ACTIVE -> COMPLETED')),
        `${id}: ${mine.join(' | ')}`,
      ).toHaveLength(1);
      expect(mine.filter((s) => s.endsWith('created -> PENDING'))).toHaveLength(1);
      expect(mine.filter((s) => s.endsWith('PENDING -> ACTIVE'))).toHaveLength(1);
    }
  }, 180_000);
});

describe('a hook whose agent never comes back after kill -9', () => {
  it('moves to the first agent back, at most maxReassignments times, then FAILED', async () => {
    const dir = tempDir('hooks-kill9-lost');
    const { first, storagePath, idOf } = await start(
      dir,
      { patrolIntervalSeconds: 1, maxReassignments: 1 },
      { fabric: { heartbeatIntervalSeconds: 1 } },
    );
    const { hook } = (await api(first, 'FabricService/CreateHook', {
      agentId: idOf('a'),
      workItem: 'lost work',
    })) as { hook: WireHook };
    const ca = await connect(first.url, TOKENS.a);
    await tool(ca, 'activate_hook', { hookId: hook.hookId });
    first.child.kill('SIGKILL');

    // Nobody comes back at first: a's hook is abandoned, with no agent to take it.
    const second = await serve(dir);
    const now = async (): Promise<WireHook> =>
      ((await api(second, 'FabricService/GetHook', { hookId: hook.hookId })) as { hook: WireHook })
        .hook;
    await until(async () => (await now()).status === 'HOOK_STATUS_ABANDONED', 60_000);

    // b comes back and heartbeats: the patrol gives it a's hook; b runs nothing and goes silent.
    const cb = await connect(second.url, TOKENS.b);
    let beating = true;
    const beats = (async () => {
      while (beating) {
        await tool(cb, 'heartbeat');
        await new Promise((r) => setTimeout(r, 200));
      }
    })();
    await until(async () => (await now()).agentId === idOf('b'), 60_000);
    expect(await now()).toMatchObject({ status: 'HOOK_STATUS_PENDING', reassignments: 1 });
    expect(((await tool(cb, 'get_hook')) as { hookId: string }).hookId).toBe(hook.hookId);
    beating = false;
    await beats;

    // b is lost too: out of reassignments, the hook ends FAILED, once.
    await until(async () => (await now()).status === 'HOOK_STATUS_FAILED', 60_000);
    expect(await stop(second, 'SIGTERM')).toBe(0);
    const subjects = git(storagePath, 'log', '--reverse', '--format=%s', 'refs/fabric/hooks')
      .split('\n')
      .filter((x) => x.startsWith(`hook ${hook.hookId}: `))
      .map((x) => x.slice(`hook ${hook.hookId}: `.length));
    expect(subjects).toEqual([
      'created -> PENDING',
      'PENDING -> ACTIVE',
      'ACTIVE -> ABANDONED',
      'ABANDONED -> PENDING',
      'PENDING -> ABANDONED',
      'ABANDONED -> FAILED',
    ]);
  }, 240_000);
});

/**
 * `hooks.finishedRetention` on the real `agent-fabric serve` (state in SQLite, so the state ref
 * is signed; a git hook store): an agent runs the work on its hook over MCP; past the limit the
 * oldest finished hooks are gone from `ListHooks` and from the state ref's tree (`git ls-tree`),
 * while `git log` of the ref keeps their commits; a restart loads the trimmed set, verified
 * (nothing quarantined), and the open hook is still the agent's.
 */
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import { afterAll, describe, expect, it } from 'vitest';
import { QUARANTINE_REF_PREFIX } from '../../src/hooks/index.js';
import { tempDir, text } from '../fixtures/gateway/harness.js';
import { git } from '../fixtures/hooks/temp-store.js';
import { adminApi, cleanUp, connect, serve, stop, type Running } from '../fixtures/state/serve.js';

afterAll(cleanUp);

const ADMIN = `fab_admin_${'Rt3n'.repeat(8)}`;
const TOKEN = randomBytes(32).toString('hex');

function api(r: Running, method: string, body: unknown): Promise<Record<string, unknown>> {
  return adminApi(r, ADMIN, method, body);
}

async function tool(c: Client, name: string, args: Record<string, unknown> = {}): Promise<unknown> {
  const r = (await c.callTool({ name: `fabric__${name}`, arguments: args })) as CallToolResult;
  if (r.isError) throw new Error(text(r));
  return (r.structuredContent as { result: unknown }).result;
}

async function listed(r: Running): Promise<string[]> {
  const { hooks } = (await api(r, 'FabricService/ListHooks', {})) as {
    hooks?: { hookId: string }[];
  };
  return (hooks ?? []).map((h) => h.hookId).sort();
}

function treeHookIds(storagePath: string): string[] {
  return git(storagePath, 'ls-tree', '-r', '--name-only', 'refs/fabric/hooks')
    .split('\n')
    .filter((p) => p.startsWith('hooks/') && p.endsWith('.json')) // records, not index entries
    .map((p) => p.slice(p.lastIndexOf('/') + 1, -'.json'.length))
    .sort();
}

describe('serve with hooks.finishedRetention', () => {
  it('drops the oldest finished hooks from ListHooks and the tree; a restart loads the rest, verified', async () => {
    const dir = tempDir('hooks-retention');
    const storagePath = join(dir, 'hooks');
    writeFileSync(
      join(dir, 'fabric.json'),
      JSON.stringify({
        http: { host: '127.0.0.1', port: 0 },
        adminToken: ADMIN,
        state: { path: join(dir, 'state.db') },
        hooks: { storagePath, useGitWorktree: false, autoReassign: false, finishedRetention: 2 },
        policies: [{ name: 'allow', rules: [{ tool: '*', action: 'allow' }] }],
        agents: [{ name: 'a', credential: TOKEN }],
      }),
    );
    const first = await serve(dir);
    const { agents } = (await api(first, 'FabricService/ListAgents', {})) as {
      agents: { agentId: string }[];
    };
    const agentId = agents[0]!.agentId;
    const c = await connect(first.url, TOKEN);
    const finished: string[] = [];
    for (let i = 0; i < 5; i++) {
      await api(first, 'FabricService/CreateHook', { agentId, workItem: { n: i } });
      const hook = (await tool(c, 'get_hook')) as { hookId: string };
      await tool(c, 'activate_hook', { hookId: hook.hookId });
      await tool(c, 'complete_hook', { hookId: hook.hookId, result: { n: i } });
      finished.push(hook.hookId);
    }
    const { hook: open } = (await api(first, 'FabricService/CreateHook', {
      agentId,
      workItem: 'open',
    })) as { hook: { hookId: string } };
    const kept = [...finished.slice(-2), open.hookId].sort();
    expect(await listed(first)).toEqual(kept);
    expect(treeHookIds(storagePath)).toEqual(kept);
    for (const id of finished.slice(0, 3)) {
      const log = git(
        storagePath,
        'log',
        '--format=%s',
        `--grep=Hook-Id: ${id}`,
        'refs/fabric/hooks',
      );
      expect(log.split('\n')).toHaveLength(3);
      expect(log).toMatch(/ACTIVE -> COMPLETED/);
    }
    expect(await stop(first, 'SIGTERM')).toBe(0);

    const second = await serve(dir);
    expect(await listed(second)).toEqual(kept);
    // Signed (the trim commit too), and nothing quarantined at the restart.
    expect(git(storagePath, 'log', '-1', '--format=%B', 'refs/fabric/hooks')).toMatch(
      /Fabric-State-MAC: [0-9a-f]{64}/,
    );
    expect(
      git(storagePath, 'for-each-ref', '--format=%(refname)', dirname(QUARANTINE_REF_PREFIX)),
    ).toBe('');
    const c2 = await connect(second.url, TOKEN);
    expect(((await tool(c2, 'get_hook')) as { hookId: string }).hookId).toBe(open.hookId);
    expect(await stop(second, 'SIGTERM')).toBe(0);
  }, 180_000);
});

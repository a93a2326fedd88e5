import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AgentFabric } from '../../src/fabric.js';
import { HookStatus } from '../../src/hooks/hook-status.js';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  agentId,
  agentToken,
  closeSidecar,
  DEFAULT_ALLOW,
  httpClient,
  startTestSidecar,
  text,
} from '../fixtures/gateway/harness.js';

/**
 * GUPP over MCP: an agent connected only through the gateway finds the work on its hook, picks it
 * up, records progress and completes it — with a real git-backed HookManager behind the fabric.
 */
describe('hook tools over MCP (real fabric, real git)', () => {
  let dir: string;
  let sidecar: Sidecar;
  let fabric: AgentFabric;
  let worker: Client;
  let other: Client;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'fabric-hook-tools-'));
    sidecar = await startTestSidecar({
      policies: [DEFAULT_ALLOW],
      agents: [{ name: 'worker' }, { name: 'other-worker' }],
      hooks: { storagePath: join(dir, 'hooks'), useGitWorktree: false },
    });
    fabric = sidecar.fabric!;
    worker = await httpClient(sidecar.url!, agentToken(sidecar, 'worker'));
    other = await httpClient(sidecar.url!, agentToken(sidecar, 'other-worker'));
  });

  afterAll(async () => {
    await worker?.close();
    await other?.close();
    await closeSidecar(sidecar);
    await rm(dir, { recursive: true, force: true });
  });

  const call = async (client: Client, name: string, args: Record<string, unknown> = {}) =>
    (await client.callTool({ name: `fabric__${name}`, arguments: args })) as CallToolResult;
  const result = <T>(r: CallToolResult): T => {
    expect(r.isError, text(r)).toBeFalsy();
    return (r.structuredContent as { result: T }).result;
  };

  it('runs the work on its hook, and no other agent can touch it', async () => {
    expect(result(await call(worker, 'get_hook'))).toBeNull();
    const hook = await fabric.hooks!.createHook({
      agentId: agentId(sidecar, 'worker'),
      workItem: { task: 'refactor', file: 'api.py' },
    });
    const mine = result<{ hookId: string; status: string; workItem: unknown }>(
      await call(worker, 'get_hook'),
    );
    expect(mine).toMatchObject({
      hookId: hook.hookId,
      status: HookStatus.PENDING,
      workItem: { task: 'refactor' },
    });
    expect(result(await call(other, 'get_hook'))).toBeNull();

    const foreign = await call(other, 'activate_hook', { hookId: hook.hookId });
    expect(foreign.isError).toBe(true);
    expect(text(foreign)).toContain('FABRIC_ERR_HOOK_NOT_FOUND');

    expect(
      result<{ status: string }>(await call(worker, 'activate_hook', { hookId: hook.hookId }))
        .status,
    ).toBe(HookStatus.ACTIVE);
    result(await call(worker, 'hook_progress', { hookId: hook.hookId, note: 'half way' }));
    const done = result<{ status: string }>(
      await call(worker, 'complete_hook', {
        hookId: hook.hookId,
        result: { filesChanged: ['api.py'] },
      }),
    );
    expect(done.status).toBe(HookStatus.COMPLETED);
    expect(await fabric.hooks!.getHook(hook.hookId)).toMatchObject({
      status: HookStatus.COMPLETED,
      result: { filesChanged: ['api.py'] },
    });
    const again = await call(worker, 'complete_hook', { hookId: hook.hookId });
    expect(again.isError).toBe(true);
  });
});

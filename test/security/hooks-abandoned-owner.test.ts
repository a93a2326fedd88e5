/**
 * An agent whose hook was abandoned (it went silent, or was declared dead) no longer holds it:
 * the patrol gives ABANDONED hooks to another agent, within `maxReassignments`. Its old owner
 * could still FAIL it (ABANDONED → FAILED is legal, for recovery giving up), which took the hook
 * out of automatic reassignment. Every agent-facing transition, through both doors (the MCP
 * `fabric__` tools over the official SDK client, the gRPC agent protocol over grpc-js), on an
 * ABANDONED hook and on one reassigned away, must get a typed error and leave the git store as
 * it was; the operator may still fail it.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { create } from '@bufbuild/protobuf';
import { type Client as GrpcClient, type ServiceError, status } from '@grpc/grpc-js';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentFabric } from '../../src/fabric.js';
import {
  ActivateHookRequestSchema,
  CompleteHookRequestSchema,
  FailHookRequestSchema,
  RecordHookProgressRequestSchema,
} from '../../src/gen/fabric/v1/agent_pb.js';
import { HookStatus } from '../../src/hooks/hook-status.js';
import { AGENT_SERVICE_DEFINITION } from '../../src/rpc/agent-service.js';
import { startGrpcServer, type GrpcServer } from '../../src/rpc/grpc-server.js';
import type { Sidecar } from '../../src/server/sidecar.js';
import { grpcClient, unary } from '../fixtures/grpc-client.js';
import {
  agentId,
  agentToken,
  closeSidecar,
  DEFAULT_ALLOW,
  httpClient,
  startTestSidecar,
  text,
} from '../fixtures/gateway/harness.js';
import { committedHook, stateHead } from '../fixtures/hooks/temp-store.js';

describe('an agent and its ABANDONED hook, over MCP', () => {
  let dir: string;
  let storagePath: string;
  let sidecar: Sidecar;
  let fabric: AgentFabric;
  let agent: Client;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'hooks-abandoned-mcp-'));
    storagePath = join(dir, 'hooks');
    sidecar = await startTestSidecar({
      policies: [DEFAULT_ALLOW],
      agents: [{ name: 'old' }, { name: 'new' }],
      // Left ABANDONED (not handed back to its healthy agent at once), so each door meets it.
      hooks: { storagePath, useGitWorktree: false, autoReassign: false },
    });
    fabric = sidecar.fabric!;
    agent = await httpClient(sidecar.url!, agentToken(sidecar, 'old'));
  });

  afterAll(async () => {
    await agent?.close();
    await closeSidecar(sidecar);
    await rm(dir, { recursive: true, force: true });
  });

  const call = async (name: string, args: Record<string, unknown>) =>
    (await agent.callTool({ name: `fabric__${name}`, arguments: args })) as CallToolResult;

  /** An ACTIVE hook of `old`, then abandoned the way the patrol does it. */
  async function abandoned(): Promise<string> {
    const h = await fabric.hooks!.createHook({ agentId: agentId(sidecar, 'old'), workItem: 'w' });
    expect((await call('activate_hook', { hookId: h.hookId })).isError).toBeFalsy();
    await fabric.hooks!.abandonHook(h.hookId, 'agent old is UNHEALTHY');
    return h.hookId;
  }

  it('refuses fail, complete, progress and activate on it with FABRIC_ERR_HOOK_STATE; the store is unchanged', async () => {
    const hookId = await abandoned();
    const before = stateHead(storagePath);
    for (const [tool, args] of [
      ['fail_hook', { hookId, message: 'giving up' }],
      ['complete_hook', { hookId, result: 'stolen' }],
      ['hook_progress', { hookId, note: 'still here' }],
      ['activate_hook', { hookId }],
    ] as const) {
      const r = await call(tool, args);
      expect(r.isError, `${tool}: ${text(r)}`).toBe(true);
      expect(text(r), tool).toContain('FABRIC_ERR_HOOK_STATE');
    }
    expect(stateHead(storagePath)).toBe(before);
    expect(committedHook(storagePath, hookId)).toMatchObject({ status: 'ABANDONED', error: null });
    expect((await fabric.hooks!.getHook(hookId)).status).toBe(HookStatus.ABANDONED);
  });

  it('a hook reassigned away is not the old owner’s: it is answered like an unknown hook', async () => {
    const hookId = await abandoned();
    await fabric.reassignHook(hookId, agentId(sidecar, 'new'));
    const before = stateHead(storagePath);
    for (const [tool, args] of [
      ['fail_hook', { hookId, message: 'giving up' }],
      ['activate_hook', { hookId }],
    ] as const) {
      const r = await call(tool, args);
      expect(r.isError, tool).toBe(true);
      expect(text(r), tool).toContain('FABRIC_ERR_HOOK_NOT_FOUND');
    }
    expect(stateHead(storagePath)).toBe(before);
    expect(committedHook(storagePath, hookId)).toMatchObject({ status: 'PENDING', error: null });
  });

  it('the operator may still fail it', async () => {
    const hookId = await abandoned();
    const failed = await fabric.hooks!.failHook(hookId, 'operator gave up');
    expect(failed.status).toBe(HookStatus.FAILED);
    expect(committedHook(storagePath, hookId)).toMatchObject({
      status: 'FAILED',
      error: { message: 'operator gave up' },
    });
  });
});

describe('an agent and its ABANDONED hook, over gRPC', () => {
  let dir: string;
  let fabric: AgentFabric;
  let server: GrpcServer;
  let client: GrpcClient;
  let old: { id: string; credential: string };
  let storagePath: string;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'hooks-abandoned-grpc-'));
    storagePath = join(dir, 'hooks');
    fabric = new AgentFabric(
      {},
      { hooks: { storagePath, useGitWorktree: false, autoReassign: false } },
    );
    server = await startGrpcServer(fabric);
    old = await fabric.spawn({ model: 'm', name: 'old', executor: 'remote' });
    client = grpcClient(AGENT_SERVICE_DEFINITION, server.address);
  });

  afterAll(async () => {
    client?.close();
    await server?.close();
    await fabric?.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('refuses fail, complete, progress and activate on it with FABRIC_ERR_HOOK_STATE; the store is unchanged', async () => {
    const hooks = fabric.hooks!;
    const h = await hooks.createHook({ agentId: old.id, workItem: 'w' });
    await fabric.activateHook(old.id, h.hookId);
    await hooks.abandonHook(h.hookId, `agent ${old.id} is UNHEALTHY`);
    const before = stateHead(storagePath);
    const hookId = h.hookId;
    for (const [method, req] of [
      ['failHook', create(FailHookRequestSchema, { hookId, message: 'giving up' })],
      ['completeHook', create(CompleteHookRequestSchema, { hookId })],
      ['recordHookProgress', create(RecordHookProgressRequestSchema, { hookId, note: 'x' })],
      ['activateHook', create(ActivateHookRequestSchema, { hookId })],
    ] as const) {
      const err = await unary(client, method, req, old.credential).then(
        () => undefined,
        (e: ServiceError) => e,
      );
      expect(err, method).toMatchObject({ code: status.FAILED_PRECONDITION });
      expect(err!.metadata.get('fabric-error-code'), method).toEqual(['FABRIC_ERR_HOOK_STATE']);
    }
    expect(stateHead(storagePath)).toBe(before);
    expect(committedHook(storagePath, hookId)).toMatchObject({ status: 'ABANDONED', error: null });
  });
});

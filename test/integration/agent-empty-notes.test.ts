/**
 * An empty progress note, failure message or error code means the same through both doors of the
 * agent protocol — the MCP `fabric__` tools (official SDK client) and gRPC `AgentService`
 * (grpc-js) of one real sidecar: an empty note is no note (`null`), an empty failure message is
 * "failed", an empty code is none (a task's: FABRIC_ERR_TASK_EXECUTION). Before, MCP stored `""`
 * where gRPC stored `null`, and refused an empty failure message that gRPC recorded as "failed".
 * Hook records are read back from the git store; task errors from the fabric. The library's
 * `HookManager.recordProgress` and `failHook` take an empty note, message or code the same way
 * (they stored `""`).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { create } from '@bufbuild/protobuf';
import type { Client as GrpcClient } from '@grpc/grpc-js';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AgentFabric } from '../../src/fabric.js';
import {
  ActivateHookRequestSchema,
  ClaimTaskRequestSchema,
  FailHookRequestSchema,
  FailTaskRequestSchema,
  RecordHookProgressRequestSchema,
  type ClaimTaskResponse,
} from '../../src/gen/fabric/v1/agent_pb.js';
import { AGENT_SERVICE_DEFINITION } from '../../src/rpc/agent-service.js';
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
import { committedHook } from '../fixtures/hooks/temp-store.js';

let dir: string;
let storagePath: string;
let sidecar: Sidecar;
let fabric: AgentFabric;
let mcp: Client;
let grpc: GrpcClient;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'agent-empty-notes-'));
  storagePath = join(dir, 'hooks');
  sidecar = await startTestSidecar({
    policies: [DEFAULT_ALLOW],
    agents: [{ name: 'via-mcp' }, { name: 'via-grpc' }],
    hooks: { storagePath, useGitWorktree: false },
    grpc: { host: '127.0.0.1', port: 0 },
  });
  fabric = sidecar.fabric!;
  mcp = await httpClient(sidecar.url!, agentToken(sidecar, 'via-mcp'));
  grpc = grpcClient(AGENT_SERVICE_DEFINITION, sidecar.grpcAddress!);
});

afterAll(async () => {
  grpc?.close();
  await mcp?.close();
  await closeSidecar(sidecar);
  await rm(dir, { recursive: true, force: true });
});

async function tool(name: string, args: Record<string, unknown>): Promise<unknown> {
  const r = (await mcp.callTool({ name: `fabric__${name}`, arguments: args })) as CallToolResult;
  expect(r.isError, `${name}: ${text(r)}`).toBeFalsy();
  return (r.structuredContent as { result?: unknown } | undefined)?.result;
}

const rpc = (method: string, req: unknown) =>
  unary<unknown>(grpc, method, req, agentToken(sidecar, 'via-grpc'));

/** Runs a hook through one door: activate, progress with `note`, fail with `code`/`message`. */
const hookDoors = {
  mcp: async (hookId: string, note: string, failure: { code?: string; message?: string }) => {
    await tool('activate_hook', { hookId });
    await tool('hook_progress', { hookId, note });
    await tool('fail_hook', { hookId, ...failure });
  },
  grpc: async (hookId: string, note: string, failure: { code?: string; message?: string }) => {
    await rpc('activateHook', create(ActivateHookRequestSchema, { hookId }));
    await rpc('recordHookProgress', create(RecordHookProgressRequestSchema, { hookId, note }));
    await rpc('failHook', create(FailHookRequestSchema, { hookId, ...failure }));
  },
};

describe.each([
  ['mcp', 'via-mcp'],
  ['grpc', 'via-grpc'],
] as const)('empty notes and messages through %s', (door, agent) => {
  it('an empty progress note is no note; an empty failure message is "failed", an empty code none', async () => {
    const h = await fabric.hooks!.createHook({ agentId: agentId(sidecar, agent), workItem: 'w' });
    await hookDoors[door](h.hookId, '', { code: '', message: '' });
    const expected = {
      status: 'FAILED',
      progressNote: null,
      error: { message: 'failed', code: null, name: null },
    };
    expect(await fabric.hooks!.getHook(h.hookId)).toMatchObject(expected);
    expect(committedHook(storagePath, h.hookId)).toMatchObject(expected);
  });

  it('a failure without message or code is recorded the same way', async () => {
    const h = await fabric.hooks!.createHook({ agentId: agentId(sidecar, agent), workItem: 'w' });
    await hookDoors[door](h.hookId, 'half way', {});
    expect(committedHook(storagePath, h.hookId)).toMatchObject({
      status: 'FAILED',
      progressNote: 'half way',
      error: { message: 'failed', code: null },
    });
  });

  it('a task failed with an empty message and code is "failed", FABRIC_ERR_TASK_EXECUTION', async () => {
    const task = await fabric.schedule({ agentId: agentId(sidecar, agent), taskType: 't' });
    if (door === 'mcp') {
      const claimed = (await tool('claim_task', { waitSeconds: 5 })) as {
        taskId: string;
        attempt: number;
      };
      expect(claimed.taskId).toBe(task.id);
      await tool('fail_task', { taskId: task.id, attempt: claimed.attempt, code: '', message: '' });
    } else {
      const claimed = (await rpc(
        'claimTask',
        create(ClaimTaskRequestSchema, { waitSeconds: 5 }),
      )) as ClaimTaskResponse;
      expect(claimed.task?.taskId).toBe(task.id);
      await rpc(
        'failTask',
        create(FailTaskRequestSchema, {
          taskId: task.id,
          attempt: claimed.task!.attempt,
          code: '',
          message: '',
        }),
      );
    }
    const done = await fabric.waitForTask(task.id);
    expect(done.error).toMatchObject({ code: 'FABRIC_ERR_TASK_EXECUTION', message: 'failed' });
  });
});

describe('empty notes through the library (HookManager of the same sidecar)', () => {
  it('an empty or blank progress note is no note, as through the doors (was stored as "")', async () => {
    const hooks = fabric.hooks!;
    const owner = agentId(sidecar, 'via-grpc');
    const h = await hooks.createHook({ agentId: owner, workItem: 'w' });
    await hooks.activateHook(h.hookId, { agentId: owner });
    await hooks.recordProgress(h.hookId, 'half way', { agentId: owner });
    for (const note of ['', ' \n\t ']) {
      const after = await hooks.recordProgress(h.hookId, note, { agentId: owner });
      expect(after.progressNote, JSON.stringify(note)).toBeNull();
    }
    await hooks.completeHook(h.hookId, 'done', { agentId: owner });
    expect(committedHook(storagePath, h.hookId)).toMatchObject({
      status: 'COMPLETED',
      progressNote: null,
    });
  });

  it('an empty failure message is "failed" and an empty code none, as through the doors (were stored as "")', async () => {
    const hooks = fabric.hooks!;
    const owner = agentId(sidecar, 'via-grpc');
    for (const failure of ['', { message: ' ', code: '' }] as const) {
      const h = await hooks.createHook({ agentId: owner, workItem: 'w' });
      await hooks.activateHook(h.hookId, { agentId: owner });
      await hooks.failHook(h.hookId, failure, { agentId: owner });
      expect(committedHook(storagePath, h.hookId), JSON.stringify(failure)).toMatchObject({
        status: 'FAILED',
        error: { message: 'failed', code: null },
      });
    }
  });
});

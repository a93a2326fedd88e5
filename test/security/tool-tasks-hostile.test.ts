/**
 * MCP tasks against an agent that holds a token and means harm: the official SDK client and raw
 * Streamable HTTP (bodies the SDK client cannot serialize) against the real sidecar, a real
 * server-everything upstream and the real fabric's policy.
 *
 * - a task id that is not a string is not found — even an array holding the agent's own id, or
 *   one nested thousands of levels deep — and changes nothing;
 * - arguments past the input bounds never reach the state file: the task fails with the
 *   refusal, and its record is written (a restart would still find its result);
 * - a finished task's record keeps no arguments.
 */
import { join } from 'node:path';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { CallToolResultSchema, ErrorCode } from '@modelcontextprotocol/sdk/types.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isTerminalStatus } from '../../src/gateway/tool-tasks.js';
import type { GatewayLogEntry } from '../../src/gateway/index.js';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  agentToken,
  closeSidecar,
  DEFAULT_ALLOW,
  EVERYTHING_BIN,
  httpClient,
  INIT,
  startTestSidecar,
  tempDir,
  until,
} from '../fixtures/gateway/harness.js';
import { callAsTask } from '../fixtures/gateway/tasks.js';
import { toolTaskOnDisk as onDisk } from '../fixtures/state/tool-task-rows.js';

const PARK = {
  name: 'park',
  priority: 100,
  rules: [{ tool: 'ev__echo', action: 'require_approval', conditions: { message: 'park' } }],
};

interface RpcAnswer {
  id?: unknown;
  result?: Record<string, unknown>;
  error?: { code: number; message: string; data?: { code?: string } };
}

/** A raw Streamable HTTP session of `token`: posts one JSON-RPC body, resolves with its answer. */
async function rawSession(
  url: string,
  token: string,
): Promise<(body: string) => Promise<RpcAnswer>> {
  const headers = {
    authorization: `Bearer ${token}`,
    'content-type': 'application/json',
    accept: 'application/json, text/event-stream',
  };
  const init = await fetch(url, { method: 'POST', headers, body: JSON.stringify(INIT) });
  const session = { ...headers, 'mcp-session-id': init.headers.get('mcp-session-id')! };
  await init.text();
  const post = async (body: string): Promise<string> =>
    (await fetch(url, { method: 'POST', headers: session, body })).text();
  await post('{"jsonrpc":"2.0","method":"notifications/initialized"}');
  return async (body) => {
    const raw = await post(body);
    if (raw.startsWith('{')) return JSON.parse(raw) as RpcAnswer;
    const events = raw.split('\n').filter((l) => l.startsWith('data: '));
    return events.map((l) => JSON.parse(l.slice(6)) as RpcAnswer).find((m) => m.id !== undefined)!;
  };
}

/** `value` inside `depth` arrays, as JSON text. */
function nested(depth: number, value: string): string {
  return `${'['.repeat(depth)}${value}${']'.repeat(depth)}`;
}

describe('MCP tasks against a hostile agent', () => {
  let sidecar: Sidecar;
  let agent: Client;
  let raw: (body: string) => Promise<RpcAnswer>;
  let statePath: string;
  const logs: GatewayLogEntry[] = [];

  beforeAll(async () => {
    statePath = join(tempDir('tasks-hostile-'), 'state.db');
    sidecar = await startTestSidecar(
      {
        state: { path: statePath },
        upstreams: {
          ev: { command: process.execPath, args: [EVERYTHING_BIN, 'stdio'], stderr: 'ignore' },
        },
        policies: [PARK, DEFAULT_ALLOW],
        agents: [{ name: 'mallory' }],
        gateway: { tasks: { maxTtlSeconds: 120 }, shutdownGraceSeconds: 0 },
      },
      { logger: (entry) => logs.push(entry) },
    );
    agent = await httpClient(sidecar.url!, agentToken(sidecar, 'mallory'));
    raw = await rawSession(sidecar.url!, agentToken(sidecar, 'mallory'));
  });

  afterAll(async () => {
    await agent?.close();
    await closeSidecar(sidecar);
  });

  it('a task id that is not a string is not found, even wrapping the own id, and changes nothing', async () => {
    const { task } = await callAsTask(agent, 'ev__echo', { message: 'park' });
    const unknown = await raw(
      JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'tasks/get', params: { taskId: 'tt_nope' } }),
    );
    expect(unknown.error?.code).toBe(ErrorCode.InvalidParams);
    let n = 10;
    for (const taskId of [
      JSON.stringify([task.taskId]),
      JSON.stringify([[task.taskId]]),
      nested(5000, JSON.stringify(task.taskId)),
    ]) {
      for (const method of ['tasks/get', 'tasks/result', 'tasks/cancel']) {
        const answer = await raw(
          `{"jsonrpc":"2.0","id":${n++},"method":"${method}","params":{"taskId":${taskId}}}`,
        );
        expect(answer.result).toBeUndefined();
        expect(answer.error?.code).toBe(ErrorCode.InvalidParams);
        expect(answer.error?.data?.code).toBe('FABRIC_ERR_TASK_NOT_FOUND');
      }
    }
    // Untouched: still parked, not cancelled.
    expect((await agent.experimental.tasks.getTask(task.taskId)).status).toBe('input_required');
    await agent.experimental.tasks.cancelTask(task.taskId);
  });

  it('arguments past the input bounds are refused before they reach the state file', async () => {
    const created = await raw(
      `{"jsonrpc":"2.0","id":100,"method":"tools/call","params":{"name":"ev__echo","task":{},` +
        `"arguments":{"message":"deep","x":${nested(100_000, '1')}}}}`,
    );
    const taskId = (created.result?.task as { taskId: string }).taskId;
    const failed = await agent.experimental.tasks.getTask(taskId);
    expect(failed.status).toBe('failed');
    expect(failed.statusMessage).toContain('FABRIC_ERR_INVALID_ARGUMENT');
    // Its record is written (a restart still finds its answer), without what was refused.
    await until(() => onDisk(statePath, taskId)?.status === 'failed');
    expect(onDisk(statePath, taskId)?.arguments).toBeUndefined();
    expect(logs.filter((l) => l.level === 'error')).toEqual([]);
  });

  it("a finished task's record keeps no arguments", async () => {
    const secret = 's3cr3t-'.repeat(1000);
    const { task } = await callAsTask(agent, 'ev__echo', { message: secret });
    await agent.experimental.tasks.getTaskResult(task.taskId, CallToolResultSchema);
    const parked = await callAsTask(agent, 'ev__echo', { message: 'park' });
    await until(() => onDisk(statePath, parked.task.taskId)?.status === 'input_required');
    expect(onDisk(statePath, parked.task.taskId)?.arguments).toEqual({ message: 'park' });
    await agent.experimental.tasks.cancelTask(parked.task.taskId);
    for (const id of [task.taskId, parked.task.taskId]) {
      await until(() => isTerminalStatus(onDisk(statePath, id)?.status ?? 'working'));
      expect(onDisk(statePath, id)?.arguments).toBeUndefined();
    }
  });
});

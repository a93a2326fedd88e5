/**
 * Large numbers in records across a restart. The state store writes a record with
 * `JSON.stringify`, so an ordinary number such as 1e20 is stored as `100000000000000000000`; it
 * used to be read back as a `bigint` (the reader took every integer beyond 2^53 for one), which
 * `JSON.stringify` cannot write: after a restart one agent's tool arguments `{a: 1e20}` parked
 * on an approval made `ApprovalService/ListApprovals` fail for every approval, the same
 * arguments in a parked MCP task could not be forwarded once approved, and a finished MCP task
 * whose result held such a number could no longer be fetched. Real sidecar processes (SIGTERM
 * and SIGKILL), the real state file, real upstreams.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { CallToolResultSchema, CreateTaskResultSchema } from '@modelcontextprotocol/sdk/types.js';
import { afterAll, describe, expect, it } from 'vitest';
import { callApi } from '../fixtures/api.js';
import { EVERYTHING_BIN, tempDir, text, until } from '../fixtures/gateway/harness.js';
import { recordsIn } from '../fixtures/state/disk-full.js';
import { cleanUp, connect, freePort, serve, stop } from '../fixtures/state/serve.js';

const BIG_NUMBER_SERVER = new URL('../fixtures/gateway/big-number-server.mjs', import.meta.url)
  .pathname;

afterAll(cleanUp);

const ADMIN = `fab_admin_${'k3Q9'.repeat(8)}`;

/** A sidecar config in `dir` for the agent `worker`: these upstreams, policies and other fields. */
async function writeConfig(
  dir: string,
  upstreams: object,
  policies: object[],
  extra: object = {},
): Promise<void> {
  writeFileSync(
    join(dir, 'fabric.json'),
    JSON.stringify({
      http: { host: '127.0.0.1', port: await freePort() },
      adminToken: ADMIN,
      upstreams,
      policies,
      ...extra,
      agents: [{ name: 'worker' }],
    }),
  );
}

/** A sidecar config in `dir` whose `ev__get-sum` needs a human approval. */
async function writeApprovalConfig(dir: string): Promise<void> {
  await writeConfig(
    dir,
    { ev: { command: process.execPath, args: [EVERYTHING_BIN, 'stdio'], stderr: 'ignore' } },
    [
      {
        name: 'approvals',
        priority: 100,
        rules: [{ tool: 'ev__get-sum', action: 'require_approval', reason: 'a human adds' }],
      },
      { name: 'default-allow', rules: [{ tool: '*', action: 'allow' }] },
    ],
    { approvals: { timeoutSeconds: 3600 } },
  );
}

async function listApprovals(url: string): Promise<{ status: number; body: string }> {
  const res = await callApi(url, 'ApprovalService/ListApprovals', {}, ADMIN);
  return { status: res.status, body: await res.text() };
}

describe('a record holding 1e20 across a restart', () => {
  it('the approval it parked is still listed (and every other one)', async () => {
    const dir = tempDir('state-numbers-approval');
    await writeApprovalConfig(dir);
    const statePath = join(dir, '.fabric', 'state.db');
    const first = await serve(dir);
    const client = await connect(first.url, first.token);
    void client
      .callTool({ name: 'ev__get-sum', arguments: { a: 1e20, b: 1 } }, undefined, {
        timeout: 600_000,
      })
      .catch(() => undefined);
    await until(async () => (await listApprovals(first.url)).body.includes('ev__get-sum'), 30_000);
    expect(await stop(first, 'SIGTERM')).toBe(0);
    const [stored] = recordsIn(statePath, 'approval').values();
    expect(JSON.stringify(stored)).toContain('100000000000000000000');

    const second = await serve(dir);
    const after = await listApprovals(second.url);
    expect(after.status, after.body).toBe(200);
    expect(after.body).toContain('ev__get-sum');
    await stop(second, 'SIGTERM');
  }, 120_000);

  it('an MCP task parked on its approval runs with the arguments the agent sent', async () => {
    const dir = tempDir('state-numbers-tool-task');
    await writeApprovalConfig(dir);
    const statePath = join(dir, '.fabric', 'state.db');
    const first = await serve(dir);
    let client = await connect(first.url, first.token);
    const { task } = await client.request(
      {
        method: 'tools/call',
        params: { name: 'ev__get-sum', arguments: { a: 1e20, b: 0 }, task: {} },
      },
      CreateTaskResultSchema,
    );
    const parked = () => recordsIn(statePath, 'tool_task').get(task.taskId);
    await until(() => parked()?.status === 'input_required', 30_000);
    expect(parked()?.arguments).toEqual({ a: 1e20, b: 0 });
    const [approvalId] = recordsIn(statePath, 'approval').keys();
    await stop(first, 'SIGKILL');

    const second = await serve(dir);
    client = await connect(second.url, first.token);
    await callApi(second.url, 'ApprovalService/Approve', { id: approvalId }, ADMIN);
    const result = await client.experimental.tasks.getTaskResult(task.taskId, CallToolResultSchema);
    expect(result.isError, text(result)).toBeFalsy();
    expect(text(result)).toContain('100000000000000000000');
    await stop(second, 'SIGTERM');
  }, 120_000);

  it('a finished MCP task whose result holds a number beyond 2^53 is still fetched', async () => {
    const dir = tempDir('state-numbers-result');
    const statePath = join(dir, '.fabric', 'state.db');
    await writeConfig(
      dir,
      { big: { command: process.execPath, args: [BIG_NUMBER_SERVER], stderr: 'ignore' } },
      [{ name: 'default-allow', rules: [{ tool: '*', action: 'allow' }] }],
    );
    const first = await serve(dir);
    let client = await connect(first.url, first.token);
    const { task } = await client.request(
      { method: 'tools/call', params: { name: 'big__big', arguments: {}, task: {} } },
      CreateTaskResultSchema,
    );
    const live = await client.experimental.tasks.getTaskResult(task.taskId, CallToolResultSchema);
    expect(text(live)).toBe('9007199254740993');
    await until(
      () => recordsIn(statePath, 'tool_task').get(task.taskId)?.status === 'completed',
      30_000,
    );
    await stop(first, 'SIGKILL');

    const second = await serve(dir);
    client = await connect(second.url, first.token);
    const again = await client.experimental.tasks.getTaskResult(task.taskId, CallToolResultSchema, {
      timeout: 10_000,
    });
    expect(again).toEqual(live);
    await stop(second, 'SIGTERM');
  }, 120_000);
});

/**
 * A tool policy hides from an agent (`hideDeniedTools`: a deny rule without conditions) is
 * answered, on `tools/call`, exactly as a tool that does not exist: `Unknown tool: <name>`
 * (InvalidParams). Before, it answered an `isError` result `Tool call refused: …
 * (FABRIC_ERR_POLICY_DENIED)` naming the policy and rule, so an agent could probe which tools
 * exist and learn the policy names. A task-augmented call of a hidden tool is not started as a
 * task either. The audit line keeps the real decision: `deny`, the rule, the tool's name.
 * Real sidecar, real server-everything upstream, the official SDK client over Streamable HTTP,
 * the raw HTTP answers compared byte for byte (but for the tool's name and the request id).
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ErrorCode } from '@modelcontextprotocol/sdk/types.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import { agentId, closeSidecar, tempDir, until } from '../fixtures/gateway/harness.js';
import {
  grpcProbe,
  mcpProbe,
  startProbedSidecar,
  type GrpcProbe,
  type McpProbe,
} from '../fixtures/gateway/probe.js';
import { callAsTask, rpcError } from '../fixtures/gateway/tasks.js';

describe('a tool hidden by policy, called anyway', () => {
  const auditPath = join(tempDir('hidden-tool'), 'audit.log');
  let sidecar: Sidecar;
  let mcp: McpProbe;
  let client: McpProbe['client'];
  let grpc: GrpcProbe | undefined;

  beforeAll(async () => {
    sidecar = await startProbedSidecar(auditPath);
    mcp = await mcpProbe(sidecar, 'prober');
    client = mcp.client;
  });

  afterAll(async () => {
    grpc?.close();
    await client?.close();
    await closeSidecar(sidecar);
  });

  const rawAnswer = (name: string) => mcp.refused(name);

  it('answers as an unknown tool does, byte for byte; the audit keeps the deny and rule', async () => {
    const tools = (await client.listTools()).tools.map((t) => t.name);
    expect(tools).not.toContain('ev__get-sum');
    expect(tools).toContain('ev__echo');

    const hidden = await rawAnswer('ev__get-sum');
    const unknown = await rawAnswer('ev__get-sun');
    expect(hidden.raw).toBe(unknown.raw);
    expect(hidden.raw).toContain('Unknown tool: <tool>');
    expect(hidden.raw).not.toContain('secret-policy-name');
    expect(hidden.raw).not.toContain('POLICY_DENIED');
    expect((hidden.error as { code: number }).code).toBe(ErrorCode.InvalidParams);

    const id = agentId(sidecar, 'prober');
    const lines = (): Record<string, unknown>[] =>
      readFileSync(auditPath, 'utf8')
        .split('\n')
        .filter((l) => l !== '')
        .map((l) => JSON.parse(l) as Record<string, unknown>)
        .filter((l) => l.agent === id);
    await until(() => lines().length >= 2);
    const [hiddenLine, unknownLine] = lines();
    expect(hiddenLine).toMatchObject({
      tool: 'ev__get-sum',
      decision: 'deny',
      rule: 'secret-policy-name#0',
      outcome: 'denied',
      code: 'FABRIC_ERR_POLICY_DENIED',
    });
    expect(unknownLine).toMatchObject({ decision: 'none', code: 'FABRIC_ERR_TOOL_NOT_FOUND' });
  });

  it('does not start a task for a hidden tool: the task call is answered as an unknown tool', async () => {
    const hidden = await rpcError(callAsTask(client, 'ev__get-sum', { a: 1, b: 2 }));
    const unknown = await rpcError(callAsTask(client, 'ev__get-sun', { a: 1, b: 2 }));
    expect(hidden.code).toBe(unknown.code);
    expect(hidden.message.replace('ev__get-sum', '<tool>')).toBe(
      unknown.message.replace('ev__get-sun', '<tool>'),
    );
    expect((await client.experimental.tasks.listTasks()).tasks).toEqual([]);
  });

  it('answers over gRPC ToolService as an unknown tool does (NOT_FOUND), status and trailers', async () => {
    grpc = grpcProbe(sidecar, 'prober');
    const call = (name: string) => grpc!.call(name);
    const hidden = await call('ev__get-sum');
    expect(hidden).toBe(await call('ev__get-sun'));
    expect(hidden).toContain('FABRIC_ERR_TOOL_NOT_FOUND');
    expect(hidden).not.toContain('secret-policy-name');
  });
});

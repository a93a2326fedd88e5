/**
 * A tool the agent's rules hide (`hideDeniedTools`: a deny rule without conditions) while a
 * policy provider that outranks those rules cannot answer — a policy service that is down or
 * does not answer in time (plugins/policy-grpc: `FABRIC_ERR_POLICY_UNAVAILABLE`), or a policy
 * plugin whose `decide` throws. Fail closed: the call must not run. And the answer must not tell
 * the agent that the tool exists: it is answered exactly as a tool that does not exist, on every
 * door (MCP `tools/call`, a task-augmented call, gRPC `ToolService.CallTool`), and `tools/list`
 * keeps it out. Before, the hidden tool answered `FABRIC_ERR_POLICY_UNAVAILABLE` (or, for a
 * throwing plugin, `FABRIC_ERR_POLICY_DENIED` — and `tools/list` listed it). A tool the agent
 * is shown keeps its fail-closed refusal. Real sidecar, real server-everything upstream, the
 * real policy-grpc plugin, the official SDK client over Streamable HTTP, a real gRPC client.
 */
import { createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import { ErrorCode } from '@modelcontextprotocol/sdk/types.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import { auditLines, closeSidecar, tempDir, text, until } from '../fixtures/gateway/harness.js';
import {
  grpcProbe,
  mcpProbe,
  startProbedSidecar,
  type GrpcProbe,
  type McpProbe,
} from '../fixtures/gateway/probe.js';
import { callAsTask, rpcError } from '../fixtures/gateway/tasks.js';
import { freePort } from '../fixtures/state/serve.js';

const POLICY_GRPC = fileURLToPath(new URL('../../plugins/policy-grpc/index.js', import.meta.url));
const FAILING = fileURLToPath(new URL('../fixtures/plugins/failing-policy.mjs', import.meta.url));

/** A TCP server that takes connections and never says a word (a hung policy service). */
async function silentServer(): Promise<{ port: number; close(): Promise<void> }> {
  const sockets = new Set<Socket>();
  const server: Server = createServer((s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as { port: number }).port,
    close: () =>
      new Promise((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

interface Case {
  what: string;
  /** The plugin entry, given what the case started. */
  plugin(): Promise<{ module: string; options: Record<string, unknown> }>;
  /** What a call of a tool the agent is shown is refused with. */
  visibleCode: string;
}

let silent: Awaited<ReturnType<typeof silentServer>> | undefined;

const CASES: Case[] = [
  {
    what: 'a policy service that is down',
    plugin: async () => ({
      module: POLICY_GRPC,
      options: {
        name: 'policy-svc',
        priority: 500,
        target: `127.0.0.1:${await freePort()}`,
        insecure: true,
        deadlineMs: 2000,
      },
    }),
    visibleCode: 'FABRIC_ERR_POLICY_UNAVAILABLE',
  },
  {
    what: 'a policy service that does not answer in time',
    plugin: async () => {
      silent = await silentServer();
      return {
        module: POLICY_GRPC,
        options: {
          name: 'policy-svc',
          priority: 500,
          target: `127.0.0.1:${silent.port}`,
          insecure: true,
          deadlineMs: 200,
        },
      };
    },
    visibleCode: 'FABRIC_ERR_POLICY_UNAVAILABLE',
  },
  {
    what: 'a policy plugin whose decide throws',
    plugin: async () => ({ module: FAILING, options: { priority: 500 } }),
    // A provider failure like the others (it was FABRIC_ERR_POLICY_DENIED: whether a failure
    // said "denied" or "unavailable" hung on whether the provider was asynchronous).
    visibleCode: 'FABRIC_ERR_POLICY_UNAVAILABLE',
  },
];

describe.each(CASES)('a hidden tool while $what', ({ plugin, visibleCode }) => {
  const auditPath = join(tempDir('hidden-unavailable'), 'audit.log');
  let sidecar: Sidecar;
  let mcp: McpProbe;
  let grpc: GrpcProbe | undefined;

  beforeAll(async () => {
    sidecar = await startProbedSidecar(auditPath, { plugins: [await plugin()] });
    mcp = await mcpProbe(sidecar, 'prober');
    grpc = grpcProbe(sidecar, 'prober');
  });

  afterAll(async () => {
    grpc?.close();
    await mcp?.client.close();
    await closeSidecar(sidecar);
    await silent?.close();
    silent = undefined;
  });

  it('is not listed; a tool the agent is shown is listed', async () => {
    const tools = (await mcp.client.listTools()).tools.map((t) => t.name);
    expect(tools).not.toContain('ev__get-sum');
    expect(tools).toContain('ev__echo');
  });

  it('answers tools/call as an unknown tool does, byte for byte; the audit keeps what happened', async () => {
    const hidden = await mcp.refused('ev__get-sum');
    const unknown = await mcp.refused('ev__get-sun');
    expect(hidden.raw).toBe(unknown.raw);
    expect(hidden.raw).toContain('Unknown tool: <tool>');
    expect(hidden.raw).not.toMatch(/POLICY|policy/);
    expect(hidden.error.code).toBe(ErrorCode.InvalidParams);
    const lines = () => auditLines(sidecar, auditPath, 'prober', 'ev__get-sum');
    await until(() => lines().length >= 1);
    expect(lines()[0]).toMatchObject({
      decision: 'deny',
      outcome: 'denied',
      code: visibleCode,
    });
  });

  it('refuses a tool the agent is shown, fail-closed, with its own code', async () => {
    const res = (await mcp.client.callTool({
      name: 'ev__echo',
      arguments: { message: 'hi' },
    })) as CallToolResult;
    expect(res.isError).toBe(true);
    expect(text(res)).toContain(visibleCode);
    expect(text(res)).not.toContain('hi');
  });

  it('does not start a task for the hidden tool: answered as an unknown tool', async () => {
    const hidden = await rpcError(callAsTask(mcp.client, 'ev__get-sum', { a: 1, b: 2 }));
    const unknown = await rpcError(callAsTask(mcp.client, 'ev__get-sun', { a: 1, b: 2 }));
    expect(hidden.code).toBe(unknown.code);
    expect(hidden.message.replace('ev__get-sum', '<tool>')).toBe(
      unknown.message.replace('ev__get-sun', '<tool>'),
    );
    expect((await mcp.client.experimental.tasks.listTasks()).tasks).toEqual([]);
  });

  it('answers gRPC ToolService.CallTool as an unknown tool does (NOT_FOUND)', async () => {
    const hidden = await grpc!.call('ev__get-sum');
    expect(hidden).toBe(await grpc!.call('ev__get-sun'));
    expect(hidden).toContain('FABRIC_ERR_TOOL_NOT_FOUND');
    expect(await grpc!.call('ev__echo', { message: 'hi' })).toContain(visibleCode);
  });
});

/**
 * A tool the agent's rules hide (`hideDeniedTools`: a deny rule without conditions) while a
 * policy service (plugins/policy-grpc) outranks those rules: the call of the hidden tool waits
 * for the service's answer before it is refused as an unknown tool. An unknown tool was answered
 * at once, so a hostile agent could tell which of the names it tried exist by how long their
 * answers took (up to the service's deadline). Now an unknown tool waits for the same service:
 * both calls are still waiting while the service holds its answers, and both get the same answer
 * once it gives them. A service below the rule that hides the tool is asked about neither (a
 * hidden tool's refusal does not wait for it: an unknown tool's must not either). Ordering only
 * (no clock): a real grpc-js service that holds every request
 * until the test lets it answer, a real sidecar, the official SDK client, a real gRPC client.
 */
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import { auditLines, closeSidecar, tempDir, until } from '../fixtures/gateway/harness.js';
import {
  holdingService,
  policyService,
  watched,
  type HoldingService,
} from '../fixtures/gateway/policy-service.js';
import {
  grpcProbe,
  mcpProbe,
  startProbedSidecar,
  type GrpcProbe,
  type McpProbe,
} from '../fixtures/gateway/probe.js';

describe('a hidden tool and an unknown tool under a policy service that outranks the rules', () => {
  const auditPath = join(tempDir('hidden-wait'), 'audit.log');
  let service: HoldingService;
  let sidecar: Sidecar;
  let mcp: McpProbe;
  let grpc: GrpcProbe;

  beforeAll(async () => {
    service = await holdingService();
    sidecar = await startProbedSidecar(auditPath, {
      plugins: [policyService(service.target, 500)],
    });
    mcp = await mcpProbe(sidecar, 'prober');
    grpc = grpcProbe(sidecar, 'prober');
  });

  afterAll(async () => {
    service?.release();
    grpc?.close();
    await mcp?.client.close();
    await closeSidecar(sidecar);
    service?.close();
  });

  it('over MCP: both wait for the service, then get the same answer', async () => {
    const hidden = watched(mcp.refused('ev__get-sum'));
    const unknown = watched(mcp.refused('ev__get-sun'));
    // Before: the unknown tool was answered without the service being asked.
    await until(() => service.asked().length === 2);
    expect(service.asked()).toEqual(['ev__get-sum', 'ev__get-sun']);
    expect([hidden.settled(), unknown.settled()]).toEqual([false, false]);
    service.release();
    const [h, u] = await Promise.all([hidden.promise, unknown.promise]);
    expect(h.raw).toBe(u.raw);
    expect(h.raw).toContain('Unknown tool: <tool>');
    // The audit keeps what happened: the hidden tool denied by policy, the other unknown.
    const line = (tool: string) => auditLines(sidecar, auditPath, 'prober', tool);
    await until(() => line('ev__get-sum').length >= 1 && line('ev__get-sun').length >= 1);
    expect(line('ev__get-sum')[0]).toMatchObject({ decision: 'deny', outcome: 'denied' });
    expect(line('ev__get-sun')[0]).toMatchObject({
      decision: 'none',
      code: 'FABRIC_ERR_TOOL_NOT_FOUND',
    });
  });

  it('over gRPC ToolService.CallTool: both wait for the service, then get the same answer', async () => {
    const hidden = watched(grpc.call('ev__get-sum'));
    const unknown = watched(grpc.call('ev__get-sun'));
    await until(() => service.asked().length === 2);
    expect([hidden.settled(), unknown.settled()]).toEqual([false, false]);
    service.release();
    const [h, u] = await Promise.all([hidden.promise, unknown.promise]);
    expect(h).toBe(u);
    expect(h).toContain('FABRIC_ERR_TOOL_NOT_FOUND');
  });

  it('tools/list still hides the tool and lists the others', async () => {
    const listed = (await mcp.client.listTools()).tools.map((t) => t.name);
    expect(listed).toContain('ev__echo');
    expect(listed).not.toContain('ev__get-sum');
  });
});

describe('a hidden tool and an unknown tool under a policy service below the rule that hides', () => {
  let service: HoldingService;
  let sidecar: Sidecar;
  let mcp: McpProbe;

  beforeAll(async () => {
    service = await holdingService();
    // Hidden by a rule at priority 100; the service (50) decides what the default allow lets in.
    sidecar = await startProbedSidecar(join(tempDir('hidden-wait-below'), 'audit.log'), {
      plugins: [policyService(service.target, 50)],
    });
    mcp = await mcpProbe(sidecar, 'prober');
  });

  afterAll(async () => {
    service?.release();
    await mcp?.client.close();
    await closeSidecar(sidecar);
    service?.close();
  });

  it('answers both at once, the same way, without asking the service', async () => {
    const h = await mcp.refused('ev__get-sum');
    const u = await mcp.refused('ev__get-sun');
    expect(h.raw).toBe(u.raw);
    expect(service.asked()).toEqual([]);
    // A tool the agent is shown is decided by the service.
    const shown = watched(mcp.client.callTool({ name: 'ev__echo', arguments: { message: 'x' } }));
    await until(() => service.asked().length === 1);
    expect(service.asked()).toEqual(['ev__echo']);
    service.release();
    await shown.promise;
  });
});

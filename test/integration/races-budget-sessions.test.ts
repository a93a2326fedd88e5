/**
 * One agent's credential used by several MCP sessions at once for calls its cost budget limits
 * (a real sidecar over HTTP with a SQLite state file, a real server-everything upstream, the
 * official SDK client): concurrency does not overspend — exactly as many calls run as the
 * budget holds, the rest are refused with `FABRIC_ERR_BUDGET_EXCEEDED`, and the spend in the
 * fabric and in the state file is the limit, never more. Also when the calls race in through
 * every door at once: MCP sessions, MCP task-augmented calls and gRPC `ToolService` (grpc-js).
 */
import { join } from 'node:path';
import { create } from '@bufbuild/protobuf';
import {
  credentials,
  makeGenericClientConstructor,
  Metadata,
  type ServiceError,
} from '@grpc/grpc-js';
import { CallToolResultSchema } from '@modelcontextprotocol/sdk/types.js';
import { describe, expect, it } from 'vitest';
import { CallToolRequestSchema, type CallToolResponse } from '../../src/gen/fabric/v1/tool_pb.js';
import { TOOL_SERVICE_DEFINITION } from '../../src/rpc/tool-service.js';
import {
  DEFAULT_ALLOW,
  EVERYTHING_BIN,
  agentId,
  agentToken,
  httpClient,
  tempDir,
  text,
} from '../fixtures/gateway/harness.js';
import {
  closeRaceSidecar,
  closeRaceSidecarAfterEach,
  startRaceSidecar,
} from '../fixtures/races.js';
import { callAsTask } from '../fixtures/gateway/tasks.js';
import { costOnDisk } from '../fixtures/state/budget-rows.js';

const ToolClient = makeGenericClientConstructor(TOOL_SERVICE_DEFINITION, 'ToolService');

/** `ToolService/CallTool` of `ev__get-sum` over grpc-js: whether it ran, else its error code. */
function grpcSum(
  client: InstanceType<typeof ToolClient>,
  token: string,
  b: number,
): Promise<true | string> {
  const md = new Metadata();
  md.set('authorization', `Bearer ${token}`);
  const req = create(CallToolRequestSchema, {
    name: 'ev__get-sum',
    args: { case: 'arguments', value: { a: 1, b } },
  });
  const { callTool } = client as unknown as {
    callTool: (
      req: unknown,
      md: Metadata,
      cb: (err: ServiceError | null, res?: CallToolResponse) => void,
    ) => void;
  };
  return new Promise((resolve) => {
    callTool.call(client, req, md, (err, res) => {
      if (err !== null) resolve(String(err.metadata.get('fabric-error-code')[0] ?? err.message));
      else resolve(res!.isError ? 'isError' : true);
    });
  });
}

closeRaceSidecarAfterEach();

/** A sidecar over `statePath` whose agent `worker` may spend 5 a day on `ev__get-sum` at 1 a call. */
function startWorker(statePath: string, more: Record<string, unknown> = {}) {
  return startRaceSidecar({
    state: { path: statePath },
    upstreams: {
      ev: { command: process.execPath, args: [EVERYTHING_BIN, 'stdio'], stderr: 'ignore' },
    },
    policies: [DEFAULT_ALLOW],
    agents: [{ name: 'worker', budget: { maxCostPerDay: 5 } }],
    toolCosts: { 'ev__get-sum': 1 },
    gateway: { budgetWaitSeconds: 30 },
    ...more,
  });
}

describe('one agent, many sessions, one cost budget', () => {
  it('runs exactly what the budget holds, whatever the concurrency', async () => {
    const statePath = join(tempDir('races-budget-sessions'), 'state.db');
    const s = await startWorker(statePath);
    const id = agentId(s, 'worker');
    const token = agentToken(s, 'worker');
    const sessions = await Promise.all([1, 2, 3].map(() => httpClient(s.url!, token)));
    const results = await Promise.all(
      sessions.flatMap((c, i) =>
        Array.from({ length: 6 }, (_, j) =>
          c.callTool({ name: 'ev__get-sum', arguments: { a: i, b: j } }),
        ),
      ),
    );
    const ok = results.filter((r) => !r.isError);
    const refused = results.filter((r) => r.isError);
    expect(ok).toHaveLength(5);
    for (const r of refused) expect(text(r)).toContain('FABRIC_ERR_BUDGET_EXCEEDED');
    const status = s.fabric!.budgets.getStatus(id);
    expect(status.costUsed).toBe(5);
    expect(status.costReserved).toBe(0);
    for (const c of sessions) await c.close();
    await closeRaceSidecar();
    expect(costOnDisk(statePath, `agent:${id}`)).toBe(5);
  }, 60_000);
});

describe('one agent, every door at once, one cost budget', () => {
  it('MCP calls, MCP tasks and gRPC calls racing for the last units run exactly what it holds', async () => {
    const statePath = join(tempDir('races-budget-doors'), 'state.db');
    const s = await startWorker(statePath, { grpc: { port: 0 } });
    const id = agentId(s, 'worker');
    const token = agentToken(s, 'worker');
    const grpc = new ToolClient(s.grpcAddress!, credentials.createInsecure());
    const sessions = await Promise.all([1, 2].map(() => httpClient(s.url!, token)));
    const code = (r: Record<string, unknown>): true | string =>
      r.isError ? (/FABRIC_ERR_\w+/.exec(text(r))?.[0] ?? text(r)) : true;
    const outcomes = await Promise.all([
      ...sessions.flatMap((c, i) =>
        Array.from({ length: 5 }, (_, j) =>
          c.callTool({ name: 'ev__get-sum', arguments: { a: i, b: j } }).then(code),
        ),
      ),
      ...sessions.flatMap((c, i) =>
        Array.from({ length: 4 }, async (_, j) => {
          const { task } = await callAsTask(c, 'ev__get-sum', { a: 10 + i, b: j });
          return code(await c.experimental.tasks.getTaskResult(task.taskId, CallToolResultSchema));
        }),
      ),
      ...Array.from({ length: 10 }, (_, j) => grpcSum(grpc, token, j)),
    ]);
    const ran = outcomes.filter((o) => o === true);
    expect(ran).toHaveLength(5);
    expect(new Set(outcomes.filter((o) => o !== true))).toEqual(
      new Set(['FABRIC_ERR_BUDGET_EXCEEDED']),
    );
    const status = s.fabric!.budgets.getStatus(id);
    expect(status.costUsed).toBe(5);
    expect(status.costReserved).toBe(0);
    expect(s.fabric!.budgets.getFabricStatus().costUsed).toBe(5);
    grpc.close();
    for (const c of sessions) await c.close();
    await closeRaceSidecar();
    expect(costOnDisk(statePath, `agent:${id}`)).toBe(5);
    expect(costOnDisk(statePath, 'fabric')).toBe(5);
  }, 60_000);
});

import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { create, toBinary, type JsonObject, type MessageInitShape } from '@bufbuild/protobuf';
import {
  credentials,
  makeGenericClientConstructor,
  Metadata,
  status,
  type ServiceError,
} from '@grpc/grpc-js';
import type { Client as McpClient } from '@modelcontextprotocol/sdk/client/index.js';
import { ValueSchema } from '@bufbuild/protobuf/wkt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentFabric } from '../../src/fabric.js';
import {
  CallToolRequestSchema,
  ListToolsRequestSchema,
  ResultEncoding,
  ToolCallDecision,
  type CallToolResponse,
  type ListToolsResponse,
} from '../../src/gen/fabric/v1/tool_pb.js';
import { startGrpcServer } from '../../src/rpc/grpc-server.js';
import { TOOL_SERVICE_DEFINITION } from '../../src/rpc/tool-service.js';
import type { Sidecar } from '../../src/server/sidecar.js';
import { postJson } from '../fixtures/api.js';
import {
  ADMIN_TOKEN,
  agentId,
  agentToken,
  closeSidecar,
  DEFAULT_ALLOW,
  EVERYTHING_BIN,
  httpClient,
  startTestSidecar,
  tempDir,
  text,
  until,
} from '../fixtures/gateway/harness.js';

const BIG_NUMBER_SERVER = new URL('../fixtures/gateway/big-number-server.mjs', import.meta.url)
  .pathname;
const Client = makeGenericClientConstructor(TOOL_SERVICE_DEFINITION, 'ToolService');
type GrpcClient = InstanceType<typeof Client>;
type Unary = (
  req: unknown,
  md: Metadata,
  opts: { deadline?: number },
  cb: (err: ServiceError | null, res: unknown) => void,
) => { cancel(): void };

/** A real grpc-js call of `method` with `credential`; resolves with the error or the response. */
function rpc<T>(
  client: GrpcClient,
  method: 'listTools' | 'callTool',
  req: unknown,
  credential: string,
  opts: { deadline?: number; onCall?: (call: { cancel(): void }) => void } = {},
): Promise<{ err: ServiceError | null; res: T | undefined }> {
  const md = new Metadata();
  if (credential) md.set('authorization', `Bearer ${credential}`);
  const message =
    method === 'callTool'
      ? create(CallToolRequestSchema, req as MessageInitShape<typeof CallToolRequestSchema>)
      : create(ListToolsRequestSchema);
  return new Promise((resolve) => {
    const call = (client as unknown as Record<string, Unary>)[method]!.call(
      client,
      message,
      md,
      opts.deadline === undefined ? {} : { deadline: opts.deadline },
      (err, res) => resolve({ err, res: (res ?? undefined) as T | undefined }),
    );
    opts.onCall?.(call);
  });
}

/** The `fabric-error-details` trailer of a failed call, parsed. */
function details(err: ServiceError | null): Record<string, unknown> {
  const raw = err?.metadata.get('fabric-error-details')[0];
  expect(typeof raw).toBe('string');
  return JSON.parse(raw as string) as Record<string, unknown>;
}

function code(err: ServiceError | null): unknown {
  return err?.metadata.get('fabric-error-code')[0];
}

interface AuditLine {
  agent: string;
  tool: string;
  decision: string;
  rule?: string;
  outcome: string;
  code?: string;
  argsDigest: string | null;
  cost?: number;
}

const GUARD = {
  name: 'guard',
  priority: 100,
  rules: [
    {
      tool: 'ev__echo',
      action: 'require_approval',
      conditions: { message: 'needs approval' },
      reason: 'echoing this needs a human',
    },
    {
      tool: 'ev__echo',
      action: 'deny',
      conditions: { message: 'forbidden' },
      reason: 'agents may not say that',
    },
  ],
};

describe('ToolService over gRPC (real sidecar, real server-everything, real grpc-js client)', () => {
  const dir = tempDir('grpc-tools');
  const auditPath = join(dir, 'audit.log');
  let sidecar: Sidecar;
  let client: GrpcClient;
  let mcp: McpClient | undefined;
  const token = (name: string): string => agentToken(sidecar, name);
  const audit = (name: string): AuditLine[] =>
    readFileSync(auditPath, 'utf8')
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as AuditLine)
      .filter((l) => l.agent === agentId(sidecar, name));

  beforeAll(async () => {
    sidecar = await startTestSidecar({
      upstreams: {
        ev: { command: process.execPath, args: [EVERYTHING_BIN, 'stdio'], stderr: 'ignore' },
        big: { command: process.execPath, args: [BIG_NUMBER_SERVER], stderr: 'ignore' },
      },
      policies: [GUARD, DEFAULT_ALLOW],
      toolCosts: { 'ev__get-sum': 1 },
      agents: [
        { name: 'alice' },
        { name: 'bob' },
        { name: 'spender', budget: { maxCostPerDay: 2 } },
        { name: 'parker' },
        { name: 'twin' },
        { name: 'hostile' },
        { name: 'prober' },
      ],
      audit: { path: auditPath, flushIntervalMs: 0 },
      grpc: { port: 0 },
    });
    client = new Client(sidecar.grpcAddress!, credentials.createInsecure());
  });

  afterAll(async () => {
    client?.close();
    await mcp?.close();
    await closeSidecar(sidecar);
  });

  it('lists the tools the agent may see, exactly as MCP tools/list does', async () => {
    mcp = await httpClient(sidecar.url!, token('alice'));
    const overMcp = (await mcp.listTools()).tools.map((t) => t.name);
    const { err, res } = await rpc<ListToolsResponse>(client, 'listTools', {}, token('alice'));
    expect(err).toBeNull();
    expect(res!.tools.map((t) => t.name)).toEqual(overMcp);
    const echo = res!.tools.find((t) => t.name === 'ev__echo')!;
    expect(echo.inputSchema).toMatchObject({ type: 'object' });
    expect(JSON.parse(Buffer.from(echo.toolJson).toString())).toMatchObject({ name: 'ev__echo' });
  });

  it("an allowed call returns the upstream's result, with the deciding rule", async () => {
    const { err, res } = await rpc<CallToolResponse>(
      client,
      'callTool',
      { name: 'ev__echo', args: { case: 'arguments', value: { message: 'hi' } } },
      token('alice'),
    );
    expect(err).toBeNull();
    expect(text(res!.result)).toBe('Echo: hi');
    expect(res!.isError).toBe(false);
    expect(res!.decision).toBe(ToolCallDecision.ALLOW);
    expect(res!.rule).toBe('default-allow#0');
  });

  it('a denied call is PERMISSION_DENIED with the rule in fabric-error-details', async () => {
    const { err } = await rpc(
      client,
      'callTool',
      { name: 'ev__echo', args: { case: 'arguments', value: { message: 'forbidden' } } },
      token('alice'),
    );
    expect(err?.code).toBe(status.PERMISSION_DENIED);
    expect(code(err)).toBe('FABRIC_ERR_POLICY_DENIED');
    expect(details(err)).toEqual({ tool: 'ev__echo', policy: 'guard', rule: 1 });
  });

  it('a call over budget is RESOURCE_EXHAUSTED with retryAt in fabric-error-details', async () => {
    const sum = { name: 'ev__get-sum', args: { case: 'arguments', value: { a: 1, b: 2 } } };
    for (let i = 0; i < 2; i++) {
      const { err, res } = await rpc<CallToolResponse>(client, 'callTool', sum, token('spender'));
      expect(err).toBeNull();
      expect(text(res!.result)).toContain('3');
    }
    const before = Date.now();
    const { err } = await rpc(client, 'callTool', sum, token('spender'));
    expect(err?.code).toBe(status.RESOURCE_EXHAUSTED);
    expect(code(err)).toBe('FABRIC_ERR_BUDGET_EXCEEDED');
    const d = details(err);
    expect(d).toMatchObject({ limit: 'cost', used: 2, max: 2 });
    expect(typeof d.retryAt).toBe('number');
    expect(d.retryAt as number).toBeGreaterThan(before);
    const budget = sidecar.fabric!.budgets.getStatus(agentId(sidecar, 'spender'));
    expect(budget.costUsed).toBe(2);
    expect(budget.costReserved).toBe(0);
  });

  it('an approval-parked call waits and completes after a human approves it', async () => {
    const approvals = sidecar.fabric!.approvals;
    const parker = agentId(sidecar, 'parker');
    const call = rpc<CallToolResponse>(
      client,
      'callTool',
      { name: 'ev__echo', args: { case: 'arguments', value: { message: 'needs approval' } } },
      token('parker'),
      { deadline: Date.now() + 60_000 },
    );
    await until(() => approvals.listApprovals({ status: 'pending', agentId: parker }).length > 0);
    const [pending] = approvals.listApprovals({ status: 'pending', agentId: parker });
    expect(pending).toMatchObject({ tool: 'ev__echo', policy: 'guard', rule: 0 });
    approvals.approve(pending!.id, { approver: 'test' });
    const { err, res } = await call;
    expect(err).toBeNull();
    expect(text(res!.result)).toBe('Echo: needs approval');
    expect(res!.decision).toBe(ToolCallDecision.APPROVED);
    await until(() => audit('parker').some((l) => l.decision === 'approved'));
    expect(audit('parker').at(-1)).toMatchObject({ decision: 'approved', outcome: 'ok' });
  });

  it('a cancelled or timed-out parked call leaves no reservation and never runs', async () => {
    const approvals = sidecar.fabric!.approvals;
    const parker = agentId(sidecar, 'parker');
    const req = {
      name: 'ev__echo',
      args: { case: 'arguments', value: { message: 'needs approval' } },
    };
    let handle: { cancel(): void } | undefined;
    const cancelled = rpc(client, 'callTool', req, token('parker'), {
      onCall: (c) => (handle = c),
    });
    await until(() => approvals.listApprovals({ status: 'pending', agentId: parker }).length > 0);
    handle!.cancel();
    expect((await cancelled).err?.code).toBe(status.CANCELLED);
    const timedOut = await rpc(client, 'callTool', req, token('parker'), {
      deadline: Date.now() + 300,
    });
    expect(timedOut.err?.code).toBe(status.DEADLINE_EXCEEDED);
    // The server's side of both calls ended: two `cancelled` audit lines, nothing reserved.
    await until(() => audit('parker').filter((l) => l.outcome === 'cancelled').length === 2);
    const budget = sidecar.fabric!.budgets.getStatus(parker);
    expect(budget.tokensReserved).toBe(0);
    expect(budget.costReserved).toBe(0);
    // Approving the abandoned approvals afterwards runs nothing.
    const okBefore = audit('parker').filter((l) => l.outcome === 'ok').length;
    for (const a of approvals.listApprovals({ status: 'pending', agentId: parker })) {
      approvals.approve(a.id, { approver: 'late' });
    }
    // Not a timing assertion: a leaked wait would have run the call (and audited it) by now.
    await new Promise((r) => setTimeout(r, 200));
    expect(audit('parker').filter((l) => l.outcome === 'ok').length).toBe(okBefore);
    expect(sidecar.fabric!.budgets.getStatus(parker).tokensReserved).toBe(0);
  });

  it('the same calls over MCP and gRPC make identical decisions and audit lines', async () => {
    const twinMcp = await httpClient(sidecar.url!, token('twin'));
    try {
      const calls = [
        { name: 'ev__echo', arguments: { message: 'same' } },
        { name: 'ev__echo', arguments: { message: 'forbidden' } },
        { name: 'ev__get-sum', arguments: { a: 2, b: 3 } },
      ];
      for (const c of calls) await twinMcp.callTool(c);
      await until(() => audit('twin').length === calls.length);
      for (const c of calls) {
        await rpc(
          client,
          'callTool',
          { name: c.name, args: { case: 'arguments', value: c.arguments } },
          token('twin'),
        );
      }
      await until(() => audit('twin').length === 2 * calls.length);
      const strip = ({
        agent,
        tool,
        decision,
        rule,
        outcome,
        code,
        argsDigest,
        cost,
      }: AuditLine) => ({ agent, tool, decision, rule, outcome, code, argsDigest, cost });
      const lines = audit('twin').map(strip);
      expect(lines.slice(calls.length)).toEqual(lines.slice(0, calls.length));
      expect(lines.map((l) => l.outcome)).toEqual(['ok', 'denied', 'ok', 'ok', 'denied', 'ok']);
    } finally {
      await twinMcp.close();
    }
  });

  it('result_json carries an upstream result with 2^53+1 exactly; a Struct would not', async () => {
    const asJson = await rpc<CallToolResponse>(
      client,
      'callTool',
      { name: 'big__big', resultEncoding: ResultEncoding.JSON },
      token('alice'),
    );
    expect(asJson.err).toBeNull();
    const json = Buffer.from(asJson.res!.resultJson).toString();
    expect(json).toContain('"structuredContent":{"n":9007199254740993}');
    expect(asJson.res!.result).toBeUndefined();
    const asStruct = await rpc<CallToolResponse>(
      client,
      'callTool',
      { name: 'big__big' },
      token('alice'),
    );
    expect((asStruct.res!.result as { structuredContent: { n: number } }).structuredContent.n).toBe(
      2 ** 53,
    );
  });

  it('arguments_json: exact numbers pass, numbers JavaScript would change are refused', async () => {
    const ok = await rpc<CallToolResponse>(
      client,
      'callTool',
      {
        name: 'ev__get-sum',
        args: { case: 'argumentsJson', value: Buffer.from('{"a": 9007199254740991, "b": 0}') },
      },
      token('alice'),
    );
    expect(ok.err).toBeNull();
    expect(text(ok.res!.result)).toContain('9007199254740991');
    for (const bad of ['{"a": 9007199254740993, "b": 0}', '{"a": 1e400, "b": 0}']) {
      const { err } = await rpc(
        client,
        'callTool',
        { name: 'ev__get-sum', args: { case: 'argumentsJson', value: Buffer.from(bad) } },
        token('alice'),
      );
      expect(err?.code).toBe(status.INVALID_ARGUMENT);
      expect(details(err)).toEqual({ field: 'arguments_json' });
    }
  });

  describe('hostile callers', () => {
    it('malformed arguments_json is INVALID_ARGUMENT with one invalid audit line, never reaching policy', async () => {
      // Was "nothing reaches policy or audit": a refused call now leaves its line, as a
      // malformed MCP tools/call does (gateway-audit-malformed-call.test.ts).
      const before = audit('hostile').length;
      const bad = [
        Buffer.from('{"message": "forbidden"'),
        Buffer.from('[1, 2]'),
        Buffer.from('"just a string"'),
        Buffer.from([0x7b, 0xff, 0xfe, 0x7d]),
        // JSON of an object policy would deny (GUARD), refused for its number first.
        Buffer.from('{"message": "forbidden", "n": 9007199254740993}'),
      ];
      for (const value of bad) {
        const { err } = await rpc(
          client,
          'callTool',
          { name: 'ev__echo', args: { case: 'argumentsJson', value } },
          token('hostile'),
        );
        expect(err?.code).toBe(status.INVALID_ARGUMENT);
        expect(code(err)).toBe('FABRIC_ERR_INVALID_ARGUMENT');
      }
      // A made-up name is cut as an unknown tool's is.
      const { err } = await rpc(
        client,
        'callTool',
        { name: 'y'.repeat(10_000), args: { case: 'argumentsJson', value: Buffer.from('nope') } },
        token('hostile'),
      );
      expect(err?.code).toBe(status.INVALID_ARGUMENT);
      await until(() => audit('hostile').length === before + bad.length + 1);
      const lines = audit('hostile').slice(before);
      for (const line of lines) {
        expect(line).toMatchObject({
          agent: agentId(sidecar, 'hostile'),
          decision: 'invalid',
          outcome: 'error',
          code: 'FABRIC_ERR_INVALID_ARGUMENT',
        });
        expect(line.rule).toBeUndefined();
      }
      expect(lines.slice(0, bad.length).map((l) => l.tool)).toEqual(bad.map(() => 'ev__echo'));
      expect(lines.at(-1)!.tool).toBe(`${'y'.repeat(256)}…`);
      // The digest of what was sent: the JSON value when it is JSON (as MCP digests it), else
      // the text.
      expect(lines.map((l) => l.argsDigest)).toEqual([
        sidecar.gateway.auditDigest('{"message": "forbidden"'),
        sidecar.gateway.auditDigest([1, 2]),
        sidecar.gateway.auditDigest('just a string'),
        sidecar.gateway.auditDigest('{\ufffd\ufffd}'),
        sidecar.gateway.auditDigest(JSON.parse('{"message": "forbidden", "n": 9007199254740993}')),
        sidecar.gateway.auditDigest('nope'),
      ]);
      expect(
        sidecar.fabric!.approvals.listApprovals({ agentId: agentId(sidecar, 'hostile') }),
      ).toEqual([]);
    });

    it('the /api/ door audits malformed arguments and bodies the same way', async () => {
      const before = audit('prober').length;
      const bodies = [
        { name: 'ev__echo', argumentsJson: Buffer.from('{"message": ').toString('base64') },
        // Not a CallToolRequest in JSON (the decoder refuses it), as MCP's SDK refuses these.
        { name: 'ev__echo', arguments: 'not an object' },
        { name: 42, arguments: { message: 'hi' } },
      ];
      for (const body of bodies) {
        const res = await postJson(
          new URL('/api/fabric.v1.ToolService/CallTool', sidecar.url!),
          body,
          token('prober'),
        );
        expect(res.status).toBe(400);
        expect(((await res.json()) as { code: string }).code).toBe('FABRIC_ERR_INVALID_ARGUMENT');
      }
      await until(() => audit('prober').length === before + bodies.length);
      const lines = audit('prober').slice(before);
      for (const line of lines) {
        expect(line).toMatchObject({
          agent: agentId(sidecar, 'prober'),
          decision: 'invalid',
          outcome: 'error',
          code: 'FABRIC_ERR_INVALID_ARGUMENT',
        });
      }
      expect(lines.map((l) => [l.tool, l.argsDigest])).toEqual([
        ['ev__echo', sidecar.gateway.auditDigest('{"message": ')],
        ['ev__echo', sidecar.gateway.auditDigest('not an object')],
        ['(invalid)', sidecar.gateway.auditDigest({ message: 'hi' })],
      ]);
    });

    it('huge and deep arguments meet the same input bounds as over MCP', async () => {
      const before = audit('hostile').length;
      const huge = { items: Array.from({ length: 100_001 }, () => 0) };
      const deep = `${'{"a":'.repeat(70)}1${'}'.repeat(70)}`;
      const overGrpc = [
        await rpc(
          client,
          'callTool',
          {
            name: 'ev__echo',
            args: { case: 'argumentsJson', value: Buffer.from(JSON.stringify(huge)) },
          },
          token('hostile'),
        ),
        await rpc(
          client,
          'callTool',
          { name: 'ev__echo', args: { case: 'argumentsJson', value: Buffer.from(deep) } },
          token('hostile'),
        ),
      ];
      for (const { err } of overGrpc) {
        expect(err?.code).toBe(status.INVALID_ARGUMENT);
        expect(code(err)).toBe('FABRIC_ERR_INVALID_ARGUMENT');
        expect(details(err)).toEqual({ field: 'arguments' });
      }
      const hostileMcp = await httpClient(sidecar.url!, token('hostile'));
      try {
        for (const args of [huge, JSON.parse(deep) as Record<string, unknown>]) {
          const r = await hostileMcp.callTool({ name: 'ev__echo', arguments: args });
          expect(r.isError).toBe(true);
          expect(text(r)).toContain('FABRIC_ERR_INVALID_ARGUMENT');
        }
      } finally {
        await hostileMcp.close();
      }
      await until(() => audit('hostile').length === before + 4);
      const lines = audit('hostile')
        .slice(before)
        .map(({ decision, outcome, code, argsDigest }) => ({
          decision,
          outcome,
          code,
          argsDigest,
        }));
      expect(lines.slice(0, 2)).toEqual(lines.slice(2));
      expect(lines.every((l) => l.decision === 'invalid')).toBe(true);
    });

    it('a Struct nested past the decoder limit, or holding NaN, is INVALID_ARGUMENT', async () => {
      const before = audit('hostile').length;
      let value: JsonObject = { a: 1 };
      for (let i = 0; i < 80; i++) value = { a: value };
      const deep = toBinary(
        CallToolRequestSchema,
        create(CallToolRequestSchema, { name: 'ev__echo', args: { case: 'arguments', value } }),
      );
      // NaN has no JSON form: protobuf-es would not encode it as a Struct, so write it by hand.
      const nanValue = toBinary(
        ValueSchema,
        create(ValueSchema, { kind: { case: 'numberValue', value: Number.NaN } }),
      );
      const entry = Buffer.concat([
        Buffer.from([0x0a, 1]),
        Buffer.from('x'),
        Buffer.from([0x12, nanValue.length]),
        nanValue,
      ]);
      const struct = Buffer.concat([Buffer.from([0x0a, entry.length]), entry]);
      const name = Buffer.from('ev__echo');
      const nan = Buffer.concat([
        Buffer.from([0x0a, name.length]),
        name,
        Buffer.from([0x12, struct.length]),
        struct,
      ]);
      const md = new Metadata();
      md.set('authorization', `Bearer ${token('hostile')}`);
      const raw = new (makeGenericClientConstructor(
        {
          callTool: {
            ...TOOL_SERVICE_DEFINITION.callTool!,
            requestSerialize: (b: Buffer) => b,
          },
        },
        'RawToolService',
      ))(sidecar.grpcAddress!, credentials.createInsecure());
      try {
        for (const bytes of [deep, nan]) {
          const err = await new Promise<ServiceError | null>((resolve) =>
            (raw as unknown as Record<string, Unary>).callTool!.call(
              raw,
              Buffer.from(bytes),
              md,
              {},
              (e) => resolve(e),
            ),
          );
          expect(err?.code).toBe(status.INVALID_ARGUMENT);
          expect(code(err)).toBe('FABRIC_ERR_INVALID_ARGUMENT');
        }
        // Each has its invalid line: the NaN one digested as JSON writes NaN; the one the
        // decoder refused under the name read from its top level, its Struct unread (`{}`).
        await until(() => audit('hostile').length === before + 2);
        expect(audit('hostile').slice(before)).toEqual([
          expect.objectContaining({
            tool: 'ev__echo',
            decision: 'invalid',
            argsDigest: sidecar.gateway.auditDigest({}),
          }),
          expect.objectContaining({
            tool: 'ev__echo',
            decision: 'invalid',
            argsDigest: sidecar.gateway.auditDigest({ x: null }),
          }),
        ]);
      } finally {
        raw.close();
      }
    });

    it('no, a wrong, or the admin credential is UNAUTHENTICATED (no tool runs)', async () => {
      const req = { name: 'ev__echo', args: { case: 'arguments', value: { message: 'x' } } };
      for (const credential of ['', 'fab_not_a_credential', ADMIN_TOKEN]) {
        const call = await rpc(client, 'callTool', req, credential);
        expect(call.err?.code).toBe(status.UNAUTHENTICATED);
        const list = await rpc(client, 'listTools', {}, credential);
        expect(list.err?.code).toBe(status.UNAUTHENTICATED);
      }
    });

    it("agent A's credential acts as A only: B's budget and audit are untouched", async () => {
      const bob = agentId(sidecar, 'bob');
      const bobBefore = sidecar.fabric!.budgets.getStatus(bob);
      const bobLines = audit('bob').length;
      const alice = agentId(sidecar, 'alice');
      const aliceBefore = sidecar.fabric!.budgets.getStatus(alice).costUsed;
      // A field naming another agent does not exist; unknown fields are ignored.
      const { err } = await rpc(
        client,
        'callTool',
        { name: 'ev__get-sum', args: { case: 'arguments', value: { a: 1, b: 1, agentId: bob } } },
        token('alice'),
      );
      expect(err).toBeNull();
      await until(() => audit('alice').some((l) => l.tool === 'ev__get-sum'));
      expect(audit('bob').length).toBe(bobLines);
      expect(sidecar.fabric!.budgets.getStatus(bob).costUsed).toBe(bobBefore.costUsed);
      expect(sidecar.fabric!.budgets.getStatus(alice).costUsed).toBe(aliceBefore + 1);
    });

    it('an unknown tool is NOT_FOUND; a huge made-up name is cut in the details', async () => {
      const { err } = await rpc(
        client,
        'callTool',
        { name: 'x'.repeat(100_000) },
        token('hostile'),
      );
      expect(err?.code).toBe(status.NOT_FOUND);
      expect(code(err)).toBe('FABRIC_ERR_TOOL_NOT_FOUND');
      const d = details(err);
      expect((d.name as string).length).toBeLessThan(300);
    });
  });
});

describe('ToolService without a tool gateway', () => {
  it('is UNAVAILABLE with FABRIC_ERR_GATEWAY_UNAVAILABLE', async () => {
    const fabric = new AgentFabric();
    const agent = await fabric.spawn({ model: 'm', name: 'lonely', executor: 'remote' });
    const server = await startGrpcServer(fabric);
    const client = new Client(server.address, credentials.createInsecure());
    try {
      for (const method of ['listTools', 'callTool'] as const) {
        const { err } = await rpc(client, method, { name: 'ev__echo' }, agent.credential);
        expect(err?.code).toBe(status.UNAVAILABLE);
        expect(code(err)).toBe('FABRIC_ERR_GATEWAY_UNAVAILABLE');
        expect(details(err)).toEqual({ door: 'the gRPC ToolService' });
      }
    } finally {
      client.close();
      await server.close();
      await fabric.close();
    }
  });
});

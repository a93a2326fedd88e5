import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { McpError } from '@modelcontextprotocol/sdk/types.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Approval } from '../../src/policy/approval-manager.js';
import type { Sidecar } from '../../src/server/sidecar.js';
import { estimateTokens } from '../../src/gateway/tool-costs.js';
import {
  api,
  agentId,
  agentToken,
  closeSidecar,
  DEFAULT_ALLOW,
  EVERYTHING_BIN,
  httpClient,
  startTestSidecar,
  tempDir,
  until,
} from '../fixtures/gateway/harness.js';

const DOCS = 'demo://resource/static/document';

const READ_POLICY = {
  name: 'reads',
  priority: 100,
  rules: [
    {
      tool: 'resources/read',
      action: 'deny',
      conditions: { uri: `${DOCS}/instructions.md` },
      reason: 'internal notes',
    },
    {
      tool: 'resources/read',
      action: 'require_approval',
      conditions: { uri: 'demo://resource/dynamic/text/*' },
    },
    { tool: 'prompts/get', action: 'deny', conditions: { name: 'ev__resource-prompt' } },
    {
      tool: 'completion/complete',
      action: 'deny',
      conditions: { name: 'ev__completable-prompt', 'argument.name': 'name' },
      reason: 'team members are personal data',
    },
    {
      tool: 'resources/subscribe',
      action: 'deny',
      conditions: { uri: `${DOCS}/instructions.md` },
    },
  ],
};

/** The rejection of `promise`, which must be an McpError. */
async function refusal(promise: Promise<unknown>): Promise<McpError> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(McpError);
  return error as McpError;
}

describe('resource reads, prompt gets, completions and subscriptions pass policy (server-everything, real fabric)', () => {
  const auditPath = join(tempDir('guarded-reads'), 'audit.log');
  let sidecar: Sidecar;
  let client: Client;

  beforeAll(async () => {
    sidecar = await startTestSidecar({
      upstreams: {
        ev: { command: process.execPath, args: [EVERYTHING_BIN, 'stdio'], stderr: 'ignore' },
      },
      policies: [READ_POLICY, DEFAULT_ALLOW],
      agents: [{ name: 'reader' }, { name: 'metered', budget: { maxCostPerDay: 2 } }],
      toolCosts: { 'resources/read': 1 },
      audit: { path: auditPath, flushIntervalMs: 0 },
    });
    client = await httpClient(sidecar.url!, agentToken(sidecar, 'reader'));
  });

  afterAll(async () => {
    await client?.close();
    await closeSidecar(sidecar);
  });

  it('reads an allowed resource and refuses a denied one with a readable JSON-RPC error', async () => {
    const ok = await client.readResource({ uri: `${DOCS}/architecture.md` });
    expect(ok.contents.length).toBeGreaterThan(0);

    const e = await refusal(client.readResource({ uri: `${DOCS}/instructions.md` }));
    // The client adds the `MCP error <code>: ` prefix once; the gateway must not add its own.
    expect(e.message).toMatch(/^MCP error -32600: Request refused: /);
    expect(e.message).toContain('FABRIC_ERR_POLICY_DENIED');
    expect(e.message).toContain('internal notes');
    expect(e.data).toMatchObject({ code: 'FABRIC_ERR_POLICY_DENIED' });
  });

  it('gets an allowed prompt and refuses a denied one', async () => {
    const ok = await client.getPrompt({ name: 'ev__simple-prompt' });
    expect(ok.messages.length).toBeGreaterThan(0);
    const e = await refusal(
      client.getPrompt({
        name: 'ev__resource-prompt',
        arguments: { resourceType: 'Text', resourceId: '1' },
      }),
    );
    expect(e.data).toMatchObject({ code: 'FABRIC_ERR_POLICY_DENIED' });
  });

  it('completes allowed prompt arguments and refuses a denied one', async () => {
    const ok = await client.complete({
      ref: { type: 'ref/prompt', name: 'ev__completable-prompt' },
      argument: { name: 'department', value: 'E' },
    });
    expect(ok.completion.values).toEqual(['Engineering']);
    const e = await refusal(
      client.complete({
        ref: { type: 'ref/prompt', name: 'ev__completable-prompt' },
        argument: { name: 'name', value: 'A' },
        context: { arguments: { department: 'Engineering' } },
      }),
    );
    expect(e.data).toMatchObject({ code: 'FABRIC_ERR_POLICY_DENIED' });
    expect(e.message).toContain('personal data');
  });

  it('subscribes to an allowed resource and refuses a denied one, unsubscribing freely', async () => {
    await client.subscribeResource({ uri: `${DOCS}/architecture.md` });
    await client.unsubscribeResource({ uri: `${DOCS}/architecture.md` });
    const e = await refusal(client.subscribeResource({ uri: `${DOCS}/instructions.md` }));
    expect(e.data).toMatchObject({ code: 'FABRIC_ERR_POLICY_DENIED' });
    // A refused subscription leaves nothing behind: unsubscribing it is a no-op, not an error.
    await client.unsubscribeResource({ uri: `${DOCS}/instructions.md` });
  });

  it('parks a read that needs approval until an admin approves it', async () => {
    const read = client.readResource({ uri: 'demo://resource/dynamic/text/7' });
    let pending: Approval[] = [];
    await until(async () => {
      const res = await api(sidecar, 'ApprovalService/ListApprovals', {
        status: 'APPROVAL_STATUS_PENDING',
      });
      pending = ((await res.json()) as { approvals?: Approval[] }).approvals ?? [];
      return pending.length === 1;
    });
    expect(pending[0]).toMatchObject({
      tool: 'resources/read',
      params: { uri: 'demo://resource/dynamic/text/7' },
    });
    const res = await api(sidecar, 'ApprovalService/Approve', { id: pending[0]!.id });
    expect(res.status).toBe(200);
    expect((await read).contents.length).toBeGreaterThan(0);
  });

  it('counts what was read against the budget and refuses reads once it is spent', async () => {
    const metered = await httpClient(sidecar.url!, agentToken(sidecar, 'metered'));
    try {
      const id = agentId(sidecar, 'metered');
      const before = sidecar.fabric!.budgets.getStatus(id);
      const read = await metered.readResource({ uri: `${DOCS}/architecture.md` });
      const after = sidecar.fabric!.budgets.getStatus(id);
      expect(after.tokensUsed - before.tokensUsed).toBe(estimateTokens(read));
      expect(after.tokensUsed - before.tokensUsed).toBeGreaterThan(10);
      expect(after.costUsed - before.costUsed).toBe(1);
      expect(after.tokensReserved).toBe(0);

      await metered.readResource({ uri: `${DOCS}/architecture.md` }); // spends the last unit
      const e = await refusal(metered.readResource({ uri: `${DOCS}/architecture.md` }));
      expect(e.data).toMatchObject({ code: 'FABRIC_ERR_BUDGET_EXCEEDED' });
      expect(sidecar.fabric!.budgets.getStatus(id).costUsed).toBe(2);
    } finally {
      await metered.close();
    }
  });

  it('writes one audit line per read, naming the decision', async () => {
    // Records are written at the end of an event-loop turn (`flushIntervalMs: 0`), which can come
    // after the agent in this process has read its answer: wait for the last ones expected.
    await until(() => {
      const text = readFileSync(auditPath, 'utf8');
      return text.includes('"approved"') && text.includes('"FABRIC_ERR_BUDGET_EXCEEDED"');
    });
    const lines = readFileSync(auditPath, 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    const reader = agentId(sidecar, 'reader');
    const reads = lines.filter((l) => l.tool === 'resources/read' && l.agent === reader);
    expect(reads.map((l) => [l.decision, l.outcome])).toEqual([
      ['allow', 'ok'],
      ['deny', 'denied'],
      ['approved', 'ok'],
    ]);
    expect(reads[0]).toMatchObject({ cost: 1, tokens: expect.any(Number) as number });
    expect(reads[0]!.tokens).toBeGreaterThan(10);
    const metered = lines.filter(
      (l) => l.tool === 'resources/read' && l.agent === agentId(sidecar, 'metered'),
    );
    expect(metered.map((l) => [l.outcome, l.code])).toEqual([
      ['ok', undefined],
      ['ok', undefined],
      ['denied', 'FABRIC_ERR_BUDGET_EXCEEDED'],
    ]);
    expect(
      lines.filter((l) => l.tool === 'completion/complete').map((l) => [l.outcome, l.rule]),
    ).toEqual([
      ['ok', 'default-allow#0'],
      ['denied', 'reads#3'],
    ]);
    expect(lines.filter((l) => l.tool === 'resources/subscribe').map((l) => l.outcome)).toEqual([
      'ok',
      'denied',
    ]);
    expect(lines.filter((l) => l.tool === 'prompts/get').map((l) => l.outcome)).toEqual([
      'ok',
      'denied',
    ]);
  });
});

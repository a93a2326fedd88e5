import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import {
  CreateMessageRequestSchema,
  ElicitRequestSchema,
  LoggingMessageNotificationSchema,
  ResourceUpdatedNotificationSchema,
  ToolListChangedNotificationSchema,
  type LoggingMessageNotification,
  type Progress,
} from '@modelcontextprotocol/sdk/types.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Approval } from '../../src/policy/approval-manager.js';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  api,
  agentId,
  agentToken,
  alive,
  closeSidecar,
  DEFAULT_ALLOW,
  EVERYTHING_BIN,
  httpClient,
  startTestSidecar,
  text,
  until,
} from '../fixtures/gateway/harness.js';

const APPROVAL_POLICY = {
  name: 'approvals',
  priority: 100,
  rules: [
    {
      tool: 'ev__echo',
      action: 'require_approval',
      conditions: { message: 'needs approval' },
      reason: 'echoing this needs a human',
    },
  ],
};

async function pendingApprovals(sidecar: Sidecar): Promise<Approval[]> {
  const res = await api(sidecar, 'ApprovalService/ListApprovals', {
    status: 'APPROVAL_STATUS_PENDING',
  });
  expect(res.status).toBe(200);
  return ((await res.json()) as { approvals?: Approval[] }).approvals ?? [];
}

describe('gateway with server-everything over Streamable HTTP (real fabric)', () => {
  let sidecar: Sidecar;
  let client: Client;
  const logs: LoggingMessageNotification['params'][] = [];
  let toolListChanged = 0;

  beforeAll(async () => {
    sidecar = await startTestSidecar({
      upstreams: {
        ev: {
          command: process.execPath,
          args: [EVERYTHING_BIN, 'stdio'],
          stderr: 'ignore',
          forwardRoots: true,
          restart: { initialDelayMs: 50 },
        },
      },
      policies: [APPROVAL_POLICY, DEFAULT_ALLOW],
      toolCosts: { 'ev__get-sum': 1 },
      agents: [
        { name: 'everything-agent' },
        { name: 'budget-seq', budget: { maxCostPerDay: 3 } },
        { name: 'budget-burst', budget: { maxCostPerDay: 10 } },
      ],
    });
    client = await httpClient(sidecar.url!, agentToken(sidecar, 'everything-agent'), {
      sampling: {},
      elicitation: { form: {} },
    });
    client.setRequestHandler(CreateMessageRequestSchema, async (req) => ({
      role: 'assistant',
      model: 'test-model',
      content: {
        type: 'text',
        text: `sampled: ${JSON.stringify(req.params.messages[0]?.content)}`,
      },
    }));
    client.setRequestHandler(ElicitRequestSchema, async () => ({
      action: 'accept',
      content: { name: 'Ada Lovelace' },
    }));
    client.setNotificationHandler(LoggingMessageNotificationSchema, (n) => {
      logs.push(n.params);
    });
    client.setNotificationHandler(ToolListChangedNotificationSchema, () => {
      toolListChanged++;
    });
  });

  afterAll(async () => {
    await client?.close();
    await closeSidecar(sidecar);
  });

  it('advertises the union of upstream capabilities', () => {
    const caps = client.getServerCapabilities();
    expect(caps?.tools).toBeDefined();
    expect(caps?.prompts).toBeDefined();
    expect(caps?.resources?.subscribe).toBe(true);
    expect(caps?.logging).toBeDefined();
  });

  it('forwards a call and its result', async () => {
    const r = await client.callTool({ name: 'ev__echo', arguments: { message: 'hi' } });
    expect(text(r)).toBe('Echo: hi');
  });

  it('forwards progress notifications under the client progress token', async () => {
    const seen: Progress[] = [];
    const r = await client.callTool(
      { name: 'ev__trigger-long-running-operation', arguments: { duration: 0.2, steps: 2 } },
      undefined,
      { onprogress: (p) => seen.push(p) },
    );
    expect(text(r)).toContain('Long running operation completed');
    // Every step, the last one too (written right before the result: see
    // gateway-progress-burst.test.ts), before the result.
    expect(seen).toEqual([
      { progress: 1, total: 2 },
      { progress: 2, total: 2 },
    ]);
  });

  it('round-trips sampling through the gateway to the agent client', async () => {
    const r = await client.callTool({
      name: 'ev__trigger-sampling-request',
      arguments: { prompt: 'what is 2+2', maxTokens: 5 },
    });
    expect(text(r)).toContain('sampled:');
    expect(text(r)).toContain('what is 2+2');
  });

  it('round-trips elicitation through the gateway to the agent client', async () => {
    const r = await client.callTool({ name: 'ev__trigger-elicitation-request', arguments: {} });
    expect(text(r)).toContain('Ada Lovelace');
  });

  it('forwards upstream log messages', async () => {
    await client.setLoggingLevel('debug');
    await client.callTool({ name: 'ev__toggle-simulated-logging', arguments: {} });
    await until(() => logs.length > 0);
    expect(logs[0]?.logger ?? '').toMatch(/^ev/);
    await client.callTool({ name: 'ev__toggle-simulated-logging', arguments: {} });
  });

  it('lists and reads resources and templates, lists and gets prompts', async () => {
    const { resources } = await client.listResources();
    expect(resources.length).toBeGreaterThan(0);
    const read = await client.readResource({ uri: resources[0]!.uri });
    expect(read.contents.length).toBeGreaterThan(0);
    const { resourceTemplates } = await client.listResourceTemplates();
    expect(resourceTemplates.length).toBeGreaterThan(0);
    const { prompts } = await client.listPrompts();
    expect(prompts.map((p) => p.name)).toContain('ev__simple-prompt');
    const prompt = await client.getPrompt({ name: 'ev__simple-prompt' });
    expect(prompt.messages.length).toBeGreaterThan(0);
  });

  it('subscribes to a resource and receives its updates through the gateway', async () => {
    const { resources } = await client.listResources();
    const uri = resources[0]!.uri;
    const updates: string[] = [];
    client.setNotificationHandler(ResourceUpdatedNotificationSchema, (n) => {
      updates.push(n.params.uri);
    });
    await client.subscribeResource({ uri });
    await client.callTool({ name: 'ev__toggle-subscriber-updates', arguments: {} });
    try {
      await until(() => updates.includes(uri), 15_000);
    } finally {
      await client.callTool({ name: 'ev__toggle-subscriber-updates', arguments: {} });
      await client.unsubscribeResource({ uri });
    }
  });

  it('parks a call for approval with progress naming the approval, then completes it once approved over the admin API', async () => {
    const progress: Progress[] = [];
    const call = client.callTool(
      { name: 'ev__echo', arguments: { message: 'needs approval' } },
      undefined,
      { onprogress: (p) => progress.push(p) },
    );
    await until(() => progress.length > 0);
    const [approval, ...others] = await pendingApprovals(sidecar);
    expect(others).toEqual([]);
    expect(approval).toMatchObject({
      tool: 'ev__echo',
      agentId: agentId(sidecar, 'everything-agent'),
      params: { message: 'needs approval' },
      reason: 'echoing this needs a human',
    });
    expect(progress[0]?.message).toContain(approval!.id);
    const res = await api(sidecar, 'ApprovalService/Approve', { id: approval!.id });
    expect(res.status).toBe(200);
    expect(((await res.json()) as { approval: Approval }).approval).toMatchObject({
      status: 'APPROVAL_STATUS_APPROVED',
      approver: 'admin',
    });
    const r = await call;
    expect(r.isError).toBeFalsy();
    expect(text(r)).toBe('Echo: needs approval');
    // A decision is final.
    const again = await api(sidecar, 'ApprovalService/Deny', { id: approval!.id });
    expect(again.status).toBe(409);
  });

  it('returns a readable refusal when the approval is denied', async () => {
    const call = client.callTool({ name: 'ev__echo', arguments: { message: 'needs approval' } });
    let pending: Approval[] = [];
    await until(async () => (pending = await pendingApprovals(sidecar)).length > 0);
    const res = await api(sidecar, 'ApprovalService/Deny', {
      id: pending[0]!.id,
      reason: 'not today',
    });
    expect(res.status).toBe(200);
    const r = await call;
    expect(r.isError).toBe(true);
    expect(text(r)).toContain('FABRIC_ERR_APPROVAL_DENIED');
    expect(text(r)).toContain('not today');
  });

  it('lets calls through until the cost budget is spent, then refuses with the reset time', async () => {
    const budgetClient = await httpClient(sidecar.url!, agentToken(sidecar, 'budget-seq'));
    try {
      for (let i = 0; i < 3; i++) {
        const r = await budgetClient.callTool({ name: 'ev__get-sum', arguments: { a: i, b: 1 } });
        expect(r.isError).toBeFalsy();
        expect(text(r)).toContain(String(i + 1));
      }
      const refused = await budgetClient.callTool({
        name: 'ev__get-sum',
        arguments: { a: 1, b: 1 },
      });
      expect(refused.isError).toBe(true);
      expect(text(refused)).toContain('FABRIC_ERR_BUDGET_EXCEEDED');
      const status = sidecar.fabric!.budgets.getStatus(agentId(sidecar, 'budget-seq'));
      expect(status).toMatchObject({ costUsed: 3, costLimit: 3, exhausted: true });
      // The cost window is a day: the limit resets when the first call leaves it.
      const resetsAt = Date.parse(/The limit resets at (\S+) /.exec(text(refused))?.[1] ?? '');
      const day = 24 * 3600 * 1000;
      expect(resetsAt).toBeGreaterThan(Date.now() + day - 3600 * 1000);
      expect(resetsAt).toBeLessThan(Date.now() + day + 3600 * 1000);
      expect(refused._meta?.['agent-fabric/error']).toMatchObject({
        code: 'FABRIC_ERR_BUDGET_EXCEEDED',
        retryAt: new Date(resetsAt).toISOString(),
      });
      // An exhausted scope refuses every call until usage leaves the window, free ones too.
      const free = await budgetClient.callTool({ name: 'ev__echo', arguments: { message: 'x' } });
      expect(free.isError).toBe(true);
      expect(text(free)).toContain('FABRIC_ERR_BUDGET_EXCEEDED');
    } finally {
      await budgetClient.close();
    }
  });

  it('never overspends under 50 concurrent calls near the limit', async () => {
    const burstClient = await httpClient(sidecar.url!, agentToken(sidecar, 'budget-burst'));
    try {
      const results = await Promise.all(
        Array.from({ length: 50 }, (_, i) =>
          burstClient.callTool({ name: 'ev__get-sum', arguments: { a: i, b: 1 } }),
        ),
      );
      const ok = results.filter((r) => !r.isError);
      const refused = results.filter((r) => r.isError);
      expect(ok).toHaveLength(10);
      expect(refused).toHaveLength(40);
      for (const r of refused) expect(text(r)).toContain('FABRIC_ERR_BUDGET_EXCEEDED');
      const status = sidecar.fabric!.budgets.getStatus(agentId(sidecar, 'budget-burst'));
      expect(status.costUsed).toBe(10);
      expect(status.costReserved).toBe(0);
      expect(text(refused[0])).toMatch(/The limit resets at \d{4}-\d\d-\d\dT[\d:.]+Z/);
    } finally {
      await burstClient.close();
    }
  });

  it('fails a call fast when the upstream dies mid-call, restarts it, and works again', async () => {
    const upstream = sidecar.gateway.upstreams.get('ev')!;
    const oldPid = upstream.pid!;
    const before = toolListChanged;
    const progress: Progress[] = [];
    const call = client.callTool(
      { name: 'ev__trigger-long-running-operation', arguments: { duration: 30, steps: 300 } },
      undefined,
      { onprogress: (p) => progress.push(p) },
    );
    await until(() => progress.length > 0);
    upstream.killProcess('SIGKILL');
    const r = await call;
    expect(r.isError).toBe(true);
    expect(text(r)).toContain('FABRIC_ERR_UPSTREAM_UNAVAILABLE');
    await until(() => upstream.state === 'ready' && upstream.connectCount === 2);
    expect(alive(oldPid)).toBe(false);
    await until(() => toolListChanged > before);
    const again = await client.callTool({ name: 'ev__echo', arguments: { message: 'back' } });
    expect(text(again)).toBe('Echo: back');
  });
});

describe('approval expiry (real fabric, short approval TTL from the sidecar config)', () => {
  let sidecar: Sidecar;
  let client: Client;

  beforeAll(async () => {
    sidecar = await startTestSidecar({
      policies: [
        {
          name: 'heartbeats-need-a-human',
          priority: 10,
          rules: [{ tool: 'fabric__heartbeat', action: 'require_approval' }],
        },
        DEFAULT_ALLOW,
      ],
      agents: [{ name: 'impatient' }],
      approvals: { timeoutSeconds: 0.3 },
    });
    client = await httpClient(sidecar.url!, agentToken(sidecar, 'impatient'));
  });

  afterAll(async () => {
    await client?.close();
    await closeSidecar(sidecar);
  });

  it('refuses the call as expired when nobody decides in time, and the approval can no longer be approved', async () => {
    const r = await client.callTool({ name: 'fabric__heartbeat', arguments: {} });
    expect(r.isError).toBe(true);
    expect(text(r)).toContain('FABRIC_ERR_APPROVAL_EXPIRED');
    const res = await api(sidecar, 'ApprovalService/ListApprovals', {
      status: 'APPROVAL_STATUS_EXPIRED',
    });
    const { approvals } = (await res.json()) as { approvals: Approval[] };
    expect(approvals).toHaveLength(1);
    expect(approvals[0]).toMatchObject({
      tool: 'fabric__heartbeat',
      status: 'APPROVAL_STATUS_EXPIRED',
    });
    const late = await api(sidecar, 'ApprovalService/Approve', { id: approvals[0]!.id });
    expect(late.status).toBe(409);
    expect(await pendingApprovals(sidecar)).toEqual([]);
  });
});

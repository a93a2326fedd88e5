import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import {
  CreateMessageRequestSchema,
  ElicitRequestSchema,
  LoggingMessageNotificationSchema,
  ToolListChangedNotificationSchema,
  type CallToolResult,
  type LoggingMessageNotification,
  type Progress,
} from '@modelcontextprotocol/sdk/types.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseSidecarConfig } from '../../src/server/config-file.js';
import { Sidecar } from '../../src/server/sidecar.js';
import { ADMIN_TOKEN, FakeBackend } from '../fixtures/gateway/fake-backend.js';
import { alive, EVERYTHING_BIN, httpClient, until } from '../fixtures/gateway/harness.js';

const text = (r: unknown): string =>
  ((r as CallToolResult).content as { text?: string }[]).map((c) => c.text ?? '').join('\n');

describe('gateway with server-everything over Streamable HTTP', () => {
  const backend = new FakeBackend();
  let sidecar: Sidecar;
  let client: Client;
  const logs: LoggingMessageNotification['params'][] = [];
  let toolListChanged = 0;

  beforeAll(async () => {
    const config = parseSidecarConfig(
      JSON.stringify({
        http: { port: 0 },
        upstreams: {
          ev: {
            command: process.execPath,
            args: [EVERYTHING_BIN, 'stdio'],
            stderr: 'ignore',
            forwardRoots: true,
            restart: { initialDelayMs: 50 },
          },
        },
        toolCosts: { 'ev__get-sum': 1 },
      }),
      'test.json',
    );
    backend.engine.addPolicy({
      name: 'approvals',
      rules: [
        { tool: 'ev__echo', action: 'require_approval', conditions: { message: 'needs approval' } },
      ],
    });
    sidecar = await Sidecar.start({ config, backend });
    const agent = await backend.spawn({ name: 'everything-agent' });
    client = await httpClient(sidecar.url!, agent.credential, {
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
    await sidecar?.close();
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
    // The first step always arrives before the result. The SDK client dispatches notifications
    // on a microtask and responses synchronously, so the last step may race the result.
    expect(seen[0]).toMatchObject({ progress: 1, total: 2 });
    expect(seen.every((p, i) => i === 0 || p.progress > seen[i - 1]!.progress)).toBe(true);
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

  it('subscribes to a resource through the gateway', async () => {
    const { resources } = await client.listResources();
    await client.subscribeResource({ uri: resources[0]!.uri });
    await client.unsubscribeResource({ uri: resources[0]!.uri });
  });

  async function admin(path: string, body?: unknown): Promise<Response> {
    return fetch(new URL(path, sidecar.url), {
      method: body === undefined ? 'GET' : 'POST',
      headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    });
  }

  it('parks a call for approval with progress, then completes it once approved over the admin API', async () => {
    const progress: Progress[] = [];
    const pending = backend.nextApproval();
    const call = client.callTool(
      { name: 'ev__echo', arguments: { message: 'needs approval' } },
      undefined,
      { onprogress: (p) => progress.push(p) },
    );
    const approval = await pending;
    const listed = (await (await admin('/admin/approvals?status=pending')).json()) as {
      approvals: { id: string }[];
    };
    expect(listed.approvals.map((a) => a.id)).toContain(approval.id);
    await until(() => progress.length > 0);
    expect(progress[0]?.message).toContain(approval.id);
    const res = await admin(`/admin/approvals/${approval.id}/approve`, { approver: 'alice' });
    expect(res.status).toBe(200);
    expect(text(await call)).toBe('Echo: needs approval');
  });

  it('returns a readable refusal when the approval is denied', async () => {
    const pending = backend.nextApproval();
    const call = client.callTool({ name: 'ev__echo', arguments: { message: 'needs approval' } });
    const approval = await pending;
    await admin(`/admin/approvals/${approval.id}/deny`, { reason: 'no' });
    const r = await call;
    expect(r.isError).toBe(true);
    expect(text(r)).toContain('FABRIC_ERR_APPROVAL_DENIED');
  });

  it('returns a readable refusal when the approval expires', async () => {
    backend.approvalTimeoutSeconds = 0.1;
    try {
      const r = await client.callTool({
        name: 'ev__echo',
        arguments: { message: 'needs approval' },
      });
      expect(r.isError).toBe(true);
      expect(text(r)).toContain('FABRIC_ERR_APPROVAL_EXPIRED');
    } finally {
      backend.approvalTimeoutSeconds = undefined;
    }
  });

  it('enforces the budget under 50 concurrent calls and reports when it resets', async () => {
    backend.costLimit = backend.costUsed + 10;
    const results = await Promise.all(
      Array.from({ length: 50 }, (_, i) =>
        client.callTool({ name: 'ev__get-sum', arguments: { a: i, b: 1 } }),
      ),
    );
    const ok = results.filter((r) => !r.isError);
    const refused = results.filter((r) => r.isError);
    expect(ok).toHaveLength(10);
    expect(refused).toHaveLength(40);
    expect(backend.costUsed).toBeLessThanOrEqual(backend.costLimit);
    expect(text(refused[0])).toContain('FABRIC_ERR_BUDGET_EXCEEDED');
    expect(text(refused[0])).toContain(new Date(backend.resetAt).toISOString());
    backend.costLimit = Infinity;
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

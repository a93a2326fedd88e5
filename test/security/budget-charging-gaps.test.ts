/**
 * Found in review: what reaches an agent through the gateway besides a tool's result was not
 * charged to its token budget. An upstream's JSON-RPC error is relayed whole — message and
 * `data`, which a server may fill with a document (a stack, the input it choked on) — and was
 * charged nothing: an agent got any number of such bodies through the gateway uncharged. A `sampling/createMessage` the upstream sends the agent's client (its model
 * reads the request and writes the answer) was not charged either. Both are now charged as a
 * result is: the error's `{ code, message, data }` (withheld when it does not fit, as a result
 * is), the sampling request and answer recorded on the agent once the answer came (never refused:
 * the model ran), so the next call is refused with FABRIC_ERR_BUDGET_EXCEEDED. A tool result with
 * `isError` was charged already (checked here too). What README (Usage) says is not charged is
 * checked as well: progress and log notifications (the call costs its result's tokens alone), and
 * a task's result fetched again (charged once).
 *
 * Real parts: a sidecar with @modelcontextprotocol/server-everything over stdio (and, for errors
 * with large `data`, which server-everything never sends, the SDK-built transparency fixture
 * answering `FAIL_WITH`), the official SDK
 * client over Streamable HTTP, the budget's stored usage read through the operator API, and the
 * audit file on disk.
 */
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import {
  CallToolResultSchema,
  CreateMessageRequestSchema,
  LoggingMessageNotificationSchema,
  McpError,
  type Progress,
} from '@modelcontextprotocol/sdk/types.js';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  agentId,
  agentToken,
  api,
  auditLines,
  closeSidecar,
  DEFAULT_ALLOW,
  EVERYTHING_BIN,
  httpClient,
  startTestSidecar,
  tempDir,
  text,
  until,
} from '../fixtures/gateway/harness.js';
import { callAsTask } from '../fixtures/gateway/tasks.js';

const TRANSPARENCY_SERVER = fileURLToPath(
  new URL('../fixtures/gateway/transparency-server.mjs', import.meta.url),
);

/** The tokens counted in `agent`'s budget (the operator API's view of the stored usage). */
async function tokensUsed(sidecar: Sidecar, agent: string): Promise<number> {
  const res = await api(sidecar, 'BudgetService/GetBudgetStatus', {
    scope: { agentId: agentId(sidecar, agent) },
  });
  expect(res.status).toBe(200);
  const body = (await res.json()) as { status: { tokens?: { used?: number } } };
  return Number(body.status.tokens?.used ?? 0);
}

/** What the SDK client's `callTool` gave: its result, or the JSON-RPC error it threw. */
async function attempt(
  client: Client,
  name: string,
  args: Record<string, unknown>,
): Promise<{ result?: Record<string, unknown>; error?: McpError }> {
  try {
    return {
      result: (await client.callTool({ name, arguments: args })) as Record<string, unknown>,
    };
  } catch (error) {
    if (!(error instanceof McpError)) throw error;
    return { error };
  }
}

const errorCode = (result: Record<string, unknown> | undefined): unknown =>
  (result?._meta as Record<string, { code?: unknown }> | undefined)?.['agent-fabric/error']?.code;

/** `n` characters of the data the failing upstreams put in their errors. */
const BLOB = (n: number): string => 'd'.repeat(n);

/** An upstream (real SDK server) whose `fail` tool answers a JSON-RPC error of `n` characters of data. */
const failing = (n: number) => ({
  command: process.execPath,
  args: [TRANSPARENCY_SERVER],
  env: {
    FAIL_WITH: JSON.stringify({ code: -32010, message: 'failed', data: { blob: BLOB(n) } }),
  },
  stderr: 'ignore' as const,
});

/** A sampling answer of this many characters of text. */
const ANSWER_CHARS = 8000;

describe('budget: upstream JSON-RPC errors and sampling are charged (server-everything)', () => {
  const auditPath = join(tempDir('budget-gaps'), 'audit.jsonl');
  let sidecar: Sidecar;
  const clients: Client[] = [];

  const connect = async (agent: string): Promise<Client> => {
    const client = await httpClient(sidecar.url!, agentToken(sidecar, agent), {
      sampling: {},
      elicitation: { form: {}, url: {} },
    });
    client.setRequestHandler(CreateMessageRequestSchema, async () => ({
      role: 'assistant',
      model: 'test-model',
      content: { type: 'text', text: 'a'.repeat(ANSWER_CHARS) },
    }));
    clients.push(client);
    return client;
  };

  beforeAll(async () => {
    sidecar = await startTestSidecar({
      upstreams: {
        ev: { command: process.execPath, args: [EVERYTHING_BIN, 'stdio'], stderr: 'ignore' },
        big: failing(20_000),
        mid: failing(4000),
        mid2: failing(8000),
      },
      policies: [DEFAULT_ALLOW],
      agents: [
        { name: 'errors', budget: { maxTokensPerHour: 100_000 } },
        { name: 'errors-small', budget: { maxTokensPerHour: 1500 } },
        { name: 'errors-withheld', budget: { maxTokensPerHour: 1500 } },
        { name: 'sampler', budget: { maxTokensPerHour: 100_000 } },
        { name: 'sampler-small', budget: { maxTokensPerHour: 3000 } },
        { name: 'quiet', budget: { maxTokensPerHour: 100_000 } },
      ],
      audit: { path: auditPath, flushIntervalMs: 0 },
    });
    // Every upstream up (its tools listed) before the first call.
    const probe = await connect('errors');
    await until(async () => {
      const names = (await probe.listTools()).tools.map((t) => t.name);
      return ['ev__echo', 'big__fail', 'big__log', 'mid__fail', 'mid2__fail'].every((n) =>
        names.includes(n),
      );
    }, 30_000);
  }, 60_000);

  afterAll(async () => {
    for (const c of clients) await c.close().catch(() => undefined);
    await closeSidecar(sidecar);
  });

  it('a tool result with isError is charged its tokens', async () => {
    const client = await connect('errors');
    const before = await tokensUsed(sidecar, 'errors');
    // Arguments the tool's schema refuses: server-everything answers a tool error result.
    const { result } = await attempt(client, 'ev__echo', { message: 12345 });
    expect(result?.isError).toBe(true);
    const charged = (await tokensUsed(sidecar, 'errors')) - before;
    expect(charged).toBeGreaterThanOrEqual(Math.floor(JSON.stringify(result).length / 4));
  });

  it('an upstream JSON-RPC error is charged its code, message and data', async () => {
    const client = await connect('errors');
    const before = await tokensUsed(sidecar, 'errors');
    const { error } = await attempt(client, 'big__fail', {});
    expect(error?.code).toBe(-32010);
    expect(JSON.stringify(error?.data)).toContain(BLOB(20_000)); // the agent got it all
    // At least the 20,000 characters of the data (5000 tokens).
    expect((await tokensUsed(sidecar, 'errors')) - before).toBeGreaterThanOrEqual(5000);
    await until(() => auditLines(sidecar, auditPath, 'errors', 'big__fail').length === 1);
    const [line] = auditLines(sidecar, auditPath, 'errors', 'big__fail');
    expect(line).toMatchObject({ outcome: 'error' });
    expect(line!.tokens).toBeGreaterThanOrEqual(5000);
  });

  it('an error that fits is delivered and charged; the next call is refused with the typed error', async () => {
    const client = await connect('errors-small');
    // 4000 characters of data: ~1000 tokens of the 1500, delivered and charged.
    const first = await attempt(client, 'mid__fail', {});
    expect(first.error?.code).toBe(-32010);
    const used = await tokensUsed(sidecar, 'errors-small');
    expect(used).toBeGreaterThanOrEqual(1000);
    expect(used).toBeLessThanOrEqual(1500);
    // The next call of the tool is refused before it runs: its learned estimate does not fit.
    const second = await attempt(client, 'mid__fail', {});
    expect(second.error).toBeUndefined();
    expect(second.result?.isError).toBe(true);
    expect(errorCode(second.result)).toBe('FABRIC_ERR_BUDGET_EXCEEDED');
    expect(await tokensUsed(sidecar, 'errors-small')).toBe(used);
  });

  it("an error that does not fit is withheld: the agent gets the budget's refusal, not the data", async () => {
    const client = await connect('errors-withheld');
    // The first call reserves the prior clamped to the 1500; the error is ~2000 tokens.
    const { result, error } = await attempt(client, 'mid2__fail', {});
    expect(error).toBeUndefined();
    expect(result?.isError).toBe(true);
    expect(errorCode(result)).toBe('FABRIC_ERR_BUDGET_EXCEEDED');
    expect(JSON.stringify(result)).toContain('"withheld":true');
    expect(JSON.stringify(result)).not.toContain(BLOB(100));
    expect(await tokensUsed(sidecar, 'errors-withheld')).toBe(0);
    await until(() => auditLines(sidecar, auditPath, 'errors-withheld', 'mid2__fail').length === 1);
    expect(auditLines(sidecar, auditPath, 'errors-withheld', 'mid2__fail')[0]).toMatchObject({
      outcome: 'withheld',
      code: 'FABRIC_ERR_BUDGET_EXCEEDED',
    });
  });

  it('a sampling request and its answer are charged to the agent whose call caused them', async () => {
    const client = await connect('sampler');
    const before = await tokensUsed(sidecar, 'sampler');
    const { result } = await attempt(client, 'ev__trigger-sampling-request', { prompt: 'hello' });
    expect(text(result)).toContain('aaaa');
    const charged = (await tokensUsed(sidecar, 'sampler')) - before;
    // The answer twice (sent back upstream as the client's answer, and quoted by the tool's
    // result), each ANSWER_CHARS / 4 tokens at least.
    expect(charged).toBeGreaterThanOrEqual((2 * ANSWER_CHARS) / 4);
  });

  it('sampling that exhausts the budget makes the next call be refused with the typed error', async () => {
    const client = await connect('sampler-small');
    // The sampling answer (2000 tokens) is recorded on the 3000; the tool's result, which quotes
    // it, then does not fit what is left: withheld.
    const { result } = await attempt(client, 'ev__trigger-sampling-request', { prompt: 'hello' });
    expect(result?.isError).toBe(true);
    expect(errorCode(result)).toBe('FABRIC_ERR_BUDGET_EXCEEDED');
    expect(JSON.stringify(result)).not.toContain('aaaa');
    const used = await tokensUsed(sidecar, 'sampler-small');
    expect(used).toBeGreaterThanOrEqual(ANSWER_CHARS / 4);
    // Another tool's first call reserves its prior, clamped to the 3000: it does not fit.
    const next = await attempt(client, 'ev__echo', { message: 'hi' });
    expect(next.result?.isError).toBe(true);
    expect(errorCode(next.result)).toBe('FABRIC_ERR_BUDGET_EXCEEDED');
  });

  /** The tokens of `agent`'s last audit line for `tool` (the result's, as charged). */
  const lastTokens = async (agent: string, tool: string, count: number): Promise<number> => {
    await until(() => auditLines(sidecar, auditPath, agent, tool).length === count);
    return Number(auditLines(sidecar, auditPath, agent, tool).at(-1)!.tokens);
  };

  it('progress and log notifications are not charged: the call costs its result alone', async () => {
    const client = await connect('quiet');
    const seen: Progress[] = [];
    let before = await tokensUsed(sidecar, 'quiet');
    const r = await client.callTool(
      { name: 'ev__trigger-long-running-operation', arguments: { duration: 0.2, steps: 4 } },
      undefined,
      { onprogress: (p) => seen.push(p) },
    );
    expect(text(r)).toContain('Long running operation completed');
    expect(seen.length).toBeGreaterThan(0);
    const progressTokens = await lastTokens('quiet', 'ev__trigger-long-running-operation', 1);
    expect((await tokensUsed(sidecar, 'quiet')) - before).toBe(progressTokens);

    const logs: unknown[] = [];
    client.setNotificationHandler(LoggingMessageNotificationSchema, (n) => void logs.push(n));
    before = await tokensUsed(sidecar, 'quiet');
    expect(text(await client.callTool({ name: 'big__log', arguments: {} }))).toBe('logged');
    await until(() => logs.length > 0);
    const logTokens = await lastTokens('quiet', 'big__log', 1);
    expect((await tokensUsed(sidecar, 'quiet')) - before).toBe(logTokens);
  });

  it("an MCP task's result is charged once, however many times tasks/result fetches it", async () => {
    const client = await connect('quiet');
    const before = await tokensUsed(sidecar, 'quiet');
    const { task } = await callAsTask(client, 'ev__echo', { message: 'e'.repeat(4000) }, 60_000);
    const first = await client.experimental.tasks.getTaskResult(task.taskId, CallToolResultSchema);
    expect(text(first)).toContain('eeee');
    const charged = (await tokensUsed(sidecar, 'quiet')) - before;
    expect(charged).toBeGreaterThanOrEqual(1000);
    for (let i = 0; i < 3; i++) {
      const again = await client.experimental.tasks.getTaskResult(
        task.taskId,
        CallToolResultSchema,
      );
      expect(text(again)).toBe(text(first));
    }
    expect((await tokensUsed(sidecar, 'quiet')) - before).toBe(charged);
  });
});

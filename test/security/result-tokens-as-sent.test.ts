/**
 * A result is charged the tokens of the JSON the agent is sent, not of the upstream's text. A
 * plain call's response is the upstream's line with the agent's id (the result is not written
 * again), so its size is what the agent gets; an MCP task's result is kept and written anew as
 * JSON by `tasks/result`, and a resource read's — or a call's the SDK answers (one sent with
 * `_meta`, which the fast path leaves to it) — by the SDK — and a number an upstream wrote
 * short, `1e20` as a Rust or Python server writes it, comes out as `100000000000000000000`.
 * Measured on the upstream's text, results five times the size of what was charged were
 * delivered past the token limit. Real sidecar, a raw-line stdio upstream, the official SDK
 * client.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CallToolResultSchema } from '@modelcontextprotocol/sdk/types.js';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  agentId,
  agentToken,
  closeSidecar,
  DEFAULT_ALLOW,
  httpClient,
  startTestSidecar,
  text,
} from '../fixtures/gateway/harness.js';
import { callAsTask } from '../fixtures/gateway/tasks.js';

const EXPONENT_SERVER = new URL('../fixtures/gateway/exponent-server.mjs', import.meta.url)
  .pathname;
/** The upstream's text of the `exponents` result (1000 numbers of four characters each). */
const RAW = `{"content":[{"type":"text","text":"v"}],"structuredContent":{"v":[${new Array(1000).fill('1e20').join(',')}]}}`;
/** Tokens of the upstream's text: what fits the limit below. */
const RAW_TOKENS = Math.ceil(RAW.length / 4);
/** The same result as JSON writes it again: what does not. */
const SERIALIZED_TOKENS = Math.ceil(JSON.stringify(JSON.parse(RAW)).length / 4);
const LIMIT = 3000;

describe('a result is charged as the agent is sent it', () => {
  let sidecar: Sidecar;
  beforeAll(async () => {
    sidecar = await startTestSidecar({
      upstreams: { n: { command: process.execPath, args: [EXPONENT_SERVER], stderr: 'ignore' } },
      policies: [DEFAULT_ALLOW],
      tokenEstimates: { n__exponents: 10 },
      agents: [
        { name: 'plain', budget: { maxTokensPerHour: LIMIT } },
        { name: 'tasker', budget: { maxTokensPerHour: LIMIT } },
        { name: 'rich', budget: { maxTokensPerHour: 100_000 } },
        { name: 'reader', budget: { maxTokensPerHour: LIMIT } },
        { name: 'meta', budget: { maxTokensPerHour: LIMIT } },
        { name: 'rich-reader', budget: { maxTokensPerHour: 100_000 } },
      ],
    });
  });
  afterAll(() => closeSidecar(sidecar));

  const used = (name: string): number =>
    sidecar.fabric!.budgets.getStatus(agentId(sidecar, name)).tokensUsed;

  /** The result `tasks/result` gives agent `name` for its task-augmented call of `exponents`. */
  async function taskResult(name: string) {
    const c = await httpClient(sidecar.url!, agentToken(sidecar, name));
    const { task } = await callAsTask(c, 'n__exponents', {});
    const r = await c.experimental.tasks.getTaskResult(task.taskId, CallToolResultSchema);
    await c.close();
    return r;
  }

  it('a plain call is charged the upstream text it is sent as', async () => {
    expect(RAW_TOKENS).toBeLessThan(LIMIT);
    expect(SERIALIZED_TOKENS).toBeGreaterThan(LIMIT);
    const c = await httpClient(sidecar.url!, agentToken(sidecar, 'plain'));
    const r = await c.callTool({ name: 'n__exponents', arguments: {} });
    expect(r.isError).toBeFalsy();
    expect(used('plain')).toBe(RAW_TOKENS);
    await c.close();
  });

  it('a plain call with _meta, which the SDK answers, is withheld when only the upstream text fits', async () => {
    const c = await httpClient(sidecar.url!, agentToken(sidecar, 'meta'));
    const r = await c.request(
      {
        method: 'tools/call',
        params: { name: 'n__exponents', arguments: {}, _meta: { note: 'any' } },
      },
      CallToolResultSchema,
    );
    expect(r.isError).toBe(true);
    expect(text(r)).toContain('FABRIC_ERR_BUDGET_EXCEEDED');
    expect(used('meta')).toBe(0);
    await c.close();
  });

  it('a task result that fits only as the upstream wrote it is withheld, nothing charged', async () => {
    const r = await taskResult('tasker');
    expect(r.isError).toBe(true);
    expect(text(r)).toContain('FABRIC_ERR_BUDGET_EXCEEDED');
    expect(JSON.stringify(r)).not.toContain('100000000000000000000');
    expect(used('tasker')).toBe(0);
  });

  it('a task result that fits is charged the tokens of the JSON it is sent as', async () => {
    const r = await taskResult('rich');
    expect(r.isError).toBeFalsy();
    const { _meta: _related, ...result } = r;
    expect(Math.ceil(Buffer.byteLength(JSON.stringify(result)) / 4)).toBe(SERIALIZED_TOKENS);
    expect(used('rich')).toBe(SERIALIZED_TOKENS);
  });

  it('a resource read is charged as the SDK sends it: withheld when only the upstream text fits', async () => {
    const raw = `{"contents":[{"uri":"exp://v","text":"v","_meta":{"v":[${new Array(1000).fill('1e20').join(',')}]}}]}`;
    const serialized = Math.ceil(JSON.stringify(JSON.parse(raw)).length / 4);
    expect(Math.ceil(raw.length / 4)).toBeLessThan(LIMIT);
    expect(serialized).toBeGreaterThan(LIMIT);
    const c = await httpClient(sidecar.url!, agentToken(sidecar, 'reader'));
    const refused = await c.readResource({ uri: 'exp://v' }).then(
      () => 'delivered',
      (e: unknown) => String(e),
    );
    expect(refused).toContain('FABRIC_ERR_BUDGET_EXCEEDED');
    expect(used('reader')).toBe(0);
    await c.close();
    const rich = await httpClient(sidecar.url!, agentToken(sidecar, 'rich-reader'));
    const read = await rich.readResource({ uri: 'exp://v' });
    expect(Math.ceil(Buffer.byteLength(JSON.stringify(read)) / 4)).toBe(serialized);
    expect(used('rich-reader')).toBe(serialized);
    await rich.close();
  });
});

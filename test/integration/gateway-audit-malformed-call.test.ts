/**
 * A `tools/call` whose params do not fit MCP's schema (a number `name`, string `arguments`) is
 * refused by the SDK's Server before the gateway sees it; it used to leave no audit line, so an
 * agent probing the gateway with malformed calls left no trace. Now each gets one line
 * (`decision: "invalid"`, `FABRIC_ERR_INVALID_ARGUMENT`), attributed to the authenticated agent.
 * Real sidecar, raw Streamable HTTP (the SDK client would not send such a call).
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  agentId,
  closeSidecar,
  DEFAULT_ALLOW,
  EVERYTHING_UPSTREAM,
  openRawSession,
  startTestSidecar,
  tempDir,
  until,
} from '../fixtures/gateway/harness.js';

describe('audit line of a malformed tools/call (real fabric, raw HTTP)', () => {
  const path = join(tempDir('audit-malformed'), 'audit.log');
  let sidecar: Sidecar;
  let headers: Record<string, string>;

  beforeAll(async () => {
    sidecar = await startTestSidecar({
      upstreams: { ev: EVERYTHING_UPSTREAM },
      policies: [DEFAULT_ALLOW],
      agents: [{ name: 'prober' }],
      audit: { path, flushIntervalMs: 0 },
    });
    headers = await openRawSession(sidecar, 'prober');
  });

  afterAll(async () => {
    await closeSidecar(sidecar);
  });

  async function post(body: unknown): Promise<string> {
    const res = await fetch(sidecar.url!, { method: 'POST', headers, body: JSON.stringify(body) });
    return res.text();
  }

  const lines = (): Record<string, unknown>[] =>
    readFileSync(path, 'utf8')
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as Record<string, unknown>);

  it('writes one line per malformed call, as the authenticated agent', async () => {
    const calls = [
      { name: 'fabric__record_usage', arguments: 'not an object' },
      { name: 42, arguments: { agent: 'someone-else' } },
      { arguments: {} },
    ];
    for (const [i, params] of calls.entries()) {
      const answer = await post({ jsonrpc: '2.0', id: 10 + i, method: 'tools/call', params });
      expect(answer).toContain('-32602'); // InvalidParams, as before
    }
    await until(() => {
      try {
        return lines().length >= calls.length;
      } catch {
        return false;
      }
    });
    // Anything more would be written at the end of the same turn.
    await new Promise((resolve) => setTimeout(resolve, 50));
    const written = lines();
    expect(written).toHaveLength(calls.length);
    const agent = agentId(sidecar, 'prober');
    for (const line of written) {
      expect(line).toMatchObject({
        agent,
        decision: 'invalid',
        outcome: 'error',
        code: 'FABRIC_ERR_INVALID_ARGUMENT',
      });
    }
    expect(written.map((l) => l.tool)).toEqual(['fabric__record_usage', '(invalid)', '(invalid)']);
    expect(written[0]!.argsDigest).toBe(sidecar.gateway.auditDigest('not an object'));
    expect(written[1]!.argsDigest).toBe(sidecar.gateway.auditDigest({ agent: 'someone-else' }));
  });

  it('writes an unknown name with lone surrogates so that strict JSON parsers read the line', async () => {
    const before = lines().length;
    // A lone surrogate sent as such, and one made by the cut at 256 characters (inside 😀).
    const names = ['evil\ud800name', `${'x'.repeat(255)}😀tail`];
    for (const [i, name] of names.entries()) {
      const answer = await post({
        jsonrpc: '2.0',
        id: 20 + i,
        method: 'tools/call',
        params: { name, arguments: {} },
      });
      expect(answer).toContain('Unknown tool');
    }
    await until(() => lines().length >= before + names.length);
    const raw = readFileSync(path, 'utf8').split('\n').filter(Boolean).slice(before);
    expect(raw).toHaveLength(names.length);
    for (const line of raw) {
      // serde_json (Vector …) refuses a line escaping a surrogate that has no pair.
      expect(line).not.toMatch(/\\ud[89ab][0-9a-f]{2}(?!\\ud[c-f])/i);
      expect(line).not.toMatch(/(?<!\\ud[89ab][0-9a-f]{2})\\ud[c-f][0-9a-f]{2}/i);
      expect((JSON.parse(line) as { code: string }).code).toBe('FABRIC_ERR_TOOL_NOT_FOUND');
    }
    const tools = raw.map((l) => (JSON.parse(l) as { tool: string }).tool);
    expect(tools[0]).toBe('evil\ufffdname');
    expect(tools[1]).toBe(`${'x'.repeat(255)}…`);
  });

  it('writes one line per malformed resources/read, prompts/get and completion/complete', async () => {
    // These pass policy as pseudo-tools and are audited; malformed, they never reach policy or
    // the upstream, but leave their line (as one past the input limits does).
    const before = lines().length;
    const requests = [
      { method: 'resources/read', params: { uri: 42 } },
      { method: 'prompts/get', params: { name: 'ev__simple-prompt', arguments: 'not a record' } },
      {
        method: 'completion/complete',
        params: { ref: { type: 'ref/prompt', name: 'ev__completable-prompt' }, argument: 'x' },
      },
      { method: 'resources/read', params: {} },
    ];
    for (const [i, r] of requests.entries()) {
      const answer = await post({ jsonrpc: '2.0', id: 30 + i, ...r });
      expect(answer).toContain('-32602');
      expect(answer).toContain('FABRIC_ERR_INVALID_ARGUMENT');
    }
    await until(() => lines().length >= before + requests.length);
    await new Promise((resolve) => setTimeout(resolve, 50));
    const written = lines().slice(before);
    expect(written).toEqual(
      requests.map((r) =>
        expect.objectContaining({
          agent: agentId(sidecar, 'prober'),
          tool: r.method,
          decision: 'invalid',
          outcome: 'error',
          code: 'FABRIC_ERR_INVALID_ARGUMENT',
          argsDigest: sidecar.gateway.auditDigest(r.params),
        }),
      ),
    );
  });
});

/**
 * Seeded hostile input on the MCP endpoint of a real sidecar (server-everything behind it, the
 * fabric tools on, durable state and the audit log): plausible requests with one field wrong,
 * junk params, wrong ids, notifications with ids, answers nobody asked for, cut-off bodies,
 * batches on a 2025-03-26 session, some sent concurrently. What must hold for every one: no
 * 5xx, no InternalError from the gateway itself, and each request that is one (a string or
 * integer id, a method) answered once under its own id; after all of it, the sidecar serves a
 * well-formed client as before.
 *
 * Written as a standing check after the hardening rounds; it found nothing on the code it was
 * written against (`FUZZ_SEED`, `FUZZ_SCALE` explore further).
 */
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import { Fuzz, fuzzCount, fuzzSeed, type Uncaught, watchUncaught } from '../fixtures/fuzz.js';
import {
  checkReplies,
  type JsonSchema,
  MCP_LEARNED,
  mcpMessage,
  messagesOf,
  requestIds,
} from '../fixtures/fuzz-mcp.js';
import {
  agentToken,
  closeSidecar,
  DEFAULT_ALLOW,
  EVERYTHING_BIN,
  httpClient,
  INIT,
  INIT_BATCHING,
  startTestSidecar,
  tempDir,
  text,
} from '../fixtures/gateway/harness.js';
import { rawRequest } from '../fixtures/raw-http.js';

describe('seeded hostile input on /mcp (server-everything behind a real sidecar)', () => {
  let sidecar: Sidecar;
  let uncaught: Uncaught;

  beforeAll(async () => {
    uncaught = watchUncaught();
    const dir = tempDir('mcp-fuzz');
    sidecar = await startTestSidecar({
      upstreams: {
        ev: { command: process.execPath, args: [EVERYTHING_BIN, 'stdio'], stderr: 'ignore' },
      },
      policies: [DEFAULT_ALLOW],
      agents: [{ name: 'a' }],
      gateway: { poolScheduling: true },
      state: { path: join(dir, 'state.db') },
      audit: { path: join(dir, 'audit.log') },
    });
  });

  afterAll(async () => {
    await closeSidecar(sidecar);
    uncaught.stop();
  });

  it('answers every request once, never with a server fault, and goes on serving', async () => {
    const fuzz = new Fuzz(fuzzSeed(20261205));
    const url = new URL(sidecar.url!);
    const token = agentToken(sidecar, 'a');
    const faults: string[] = [];
    let answered = 0;

    for (let s = fuzzCount(12); s > 0; s--) {
      const batching = fuzz.chance(0.3);
      const base = {
        authorization: `Bearer ${token}`,
        'content-type': 'application/json',
        accept: 'application/json, text/event-stream',
      };
      const init = await rawRequest(
        url,
        'POST',
        '/mcp',
        base,
        JSON.stringify(batching ? INIT_BATCHING : INIT),
      );
      const session = init.headers['mcp-session-id'];
      expect(typeof session, init.body).toBe('string');
      const headers = {
        ...base,
        'mcp-session-id': session as string,
        'mcp-protocol-version': batching ? '2025-03-26' : '2025-06-18',
      };
      const post = (body: string) => rawRequest(url, 'POST', '/mcp', headers, body);
      await post(JSON.stringify({ jsonrpc: '2.0', method: 'notifications/initialized' }));
      const listed = messagesOf(
        (await post('{"jsonrpc":"2.0","id":0,"method":"tools/list"}')).body,
      );
      const tools = new Map(
        (
          listed[0] as { result: { tools: { name: string; inputSchema: JsonSchema }[] } }
        ).result.tools.map((t) => [t.name, t.inputSchema]),
      );

      const inFlight: Promise<void>[] = [];
      for (let i = 0; i < 60; i++) {
        const sent: unknown =
          batching && fuzz.chance(0.3)
            ? [mcpMessage(fuzz, tools), mcpMessage(fuzz, tools), mcpMessage(fuzz, tools)]
            : mcpMessage(fuzz, tools);
        let raw = JSON.stringify(sent);
        const cut = fuzz.chance(0.03);
        if (cut) raw = raw.slice(0, Math.floor(fuzz.next() * raw.length));
        // Each request id once per POST, so that "answered under its id" is unambiguous.
        const requests = requestIds(sent);
        if (requests === undefined) continue;
        const ids = cut ? [] : requests;
        const done = post(raw).then((answer) => {
          fuzz.learn(answer.body, MCP_LEARNED);
          const what = `${raw.slice(0, 300)} → ${answer.status} ${answer.body.slice(0, 300)}`;
          if (answer.status >= 500) faults.push(`server fault: ${what}`);
          if (answer.status === 200) {
            answered += checkReplies(ids, messagesOf(answer.body), what, faults);
          }
        });
        if (fuzz.chance(0.5)) await done;
        else inFlight.push(done);
      }
      await Promise.all(inFlight);
      await rawRequest(url, 'DELETE', '/mcp', headers);
    }

    expect(faults).toEqual([]);
    expect(uncaught.errors).toEqual([]);
    // Most requests were answered under their id: the run reached the code behind the checks.
    expect(answered).toBeGreaterThan(100);
    const client = await httpClient(sidecar.url!, agentToken(sidecar, 'a'));
    const result = await client.callTool({ name: 'ev__echo', arguments: { message: 'after' } });
    expect(text(result)).toContain('after');
    await client.close();
  }, 300_000);
});

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

const METHODS = [
  'initialize',
  'ping',
  'tools/list',
  'tools/call',
  'tools/call',
  'tools/call',
  'resources/list',
  'resources/read',
  'resources/templates/list',
  'resources/subscribe',
  'resources/unsubscribe',
  'prompts/list',
  'prompts/get',
  'completion/complete',
  'logging/setLevel',
  'tasks/get',
  'tasks/list',
  'tasks/result',
  'tasks/cancel',
  'notifications/cancelled',
  'notifications/initialized',
  'notifications/roots/list_changed',
  'notifications/progress',
  'sampling/createMessage',
  'x/unknown',
  '',
  '__proto__',
];

const URIS = [
  'test://static/resource/1',
  'demo://resource/static/document/architecture.md',
  'file:///etc/passwd',
  'FILE:///etc/../etc/passwd',
  'x',
  '',
];

/** What answers carry that later requests may name. */
const LEARNED = ['taskId', 'name', 'uri', 'id'];

/** Upstream (server-everything) error messages that are its own answer, relayed as they are. */
const UPSTREAM_OWN = ['Invalid URL'];

interface JsonSchema {
  type?: string | string[];
  properties?: Record<string, JsonSchema>;
  enum?: unknown[];
}

/** Arguments shaped by a tool's input schema, a field gone wrong now and then. */
function argumentsFor(fuzz: Fuzz, schema: JsonSchema | undefined, depth = 0): unknown {
  if (!schema || depth > 3 || fuzz.chance(0.1)) return fuzz.junk();
  if (schema.enum && fuzz.chance(0.8)) return fuzz.pick(schema.enum);
  switch (Array.isArray(schema.type) ? fuzz.pick(schema.type) : schema.type) {
    case 'string':
      return fuzz.string();
    case 'number':
    case 'integer':
      return fuzz.pick([0, 1, 2, 5, 100, 1e9, -1, 0.5, 3600]);
    case 'boolean':
      return fuzz.chance(0.5);
    case 'array':
      return [argumentsFor(fuzz, undefined, depth + 1)];
    case 'object': {
      const o: Record<string, unknown> = {};
      for (const [k, v] of Object.entries(schema.properties ?? {})) {
        if (fuzz.chance(0.8)) o[k] = argumentsFor(fuzz, v, depth + 1);
      }
      return o;
    }
    default:
      return fuzz.junk();
  }
}

/** One JSON-RPC message, mostly plausible. */
function message(fuzz: Fuzz, tools: Map<string, JsonSchema>): Record<string, unknown> {
  const method = fuzz.pick(METHODS);
  const m: Record<string, unknown> = { jsonrpc: fuzz.chance(0.97) ? '2.0' : fuzz.junk() };
  if (fuzz.chance(0.8)) {
    m.id = fuzz.chance(0.8) ? Math.floor(fuzz.next() * 1e6) : fuzz.junk();
  }
  if (fuzz.chance(0.97)) m.method = method;
  let params: Record<string, unknown> = {};
  if (method === 'tools/call') {
    const name = fuzz.pick([...tools.keys()]);
    params = { name, arguments: argumentsFor(fuzz, tools.get(name) ?? { type: 'object' }) };
    if (fuzz.chance(0.2)) params.task = fuzz.chance(0.7) ? { ttl: fuzz.junk() } : fuzz.junk();
    if (fuzz.chance(0.2)) params._meta = { progressToken: fuzz.junk() };
  } else if (method.startsWith('resources/')) {
    params = { uri: fuzz.pick(URIS) };
  } else if (method.startsWith('tasks/')) {
    params = { taskId: fuzz.string() };
  } else if (method === 'prompts/get') {
    params = { name: fuzz.pick(['simple-prompt', 'args-prompt', 'x']), arguments: fuzz.junk() };
  }
  if (fuzz.chance(0.2)) params[fuzz.pick(['name', 'uri', 'cursor', '_meta', 'task'])] = fuzz.junk();
  if (fuzz.chance(0.9)) m.params = fuzz.chance(0.05) ? fuzz.junk() : params;
  if (fuzz.chance(0.04)) {
    delete m.method;
    m[fuzz.pick(['result', 'error'])] = fuzz.junk();
  }
  return m;
}

/** A request the gateway must answer under its id: a method and a string or integer id. */
function isRequest(m: unknown): m is { id: string | number; method: string } {
  if (typeof m !== 'object' || m === null || Array.isArray(m)) return false;
  const { id, method, jsonrpc } = m as Record<string, unknown>;
  return (
    jsonrpc === '2.0' &&
    typeof method === 'string' &&
    !method.startsWith('notifications/') &&
    (typeof id === 'string' || Number.isSafeInteger(id))
  );
}

/** The JSON-RPC messages of an answer body, JSON or SSE. */
function messagesOf(body: string): unknown[] {
  const texts =
    body.trimStart().startsWith('{') || body.trimStart().startsWith('[')
      ? [body]
      : body
          .split('\n')
          .filter((l) => l.startsWith('data:'))
          .map((l) => l.slice(5));
  return texts.flatMap((t) => {
    const v = JSON.parse(t) as unknown;
    return Array.isArray(v) ? v : [v];
  });
}

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
            ? [message(fuzz, tools), message(fuzz, tools), message(fuzz, tools)]
            : message(fuzz, tools);
        let raw = JSON.stringify(sent);
        const cut = fuzz.chance(0.03);
        if (cut) raw = raw.slice(0, Math.floor(fuzz.next() * raw.length));
        // Each request id once per POST, so that "answered under its id" is unambiguous.
        const messages = (Array.isArray(sent) ? sent : [sent]) as Record<string, unknown>[];
        const allIds = messages.filter((m) => 'id' in m).map((m) => JSON.stringify(m.id));
        if (new Set(allIds).size !== allIds.length) continue;
        const ids = cut ? [] : messages.filter(isRequest).map((r) => JSON.stringify(r.id));
        const done = post(raw).then((answer) => {
          fuzz.learn(answer.body, LEARNED);
          const what = `${raw.slice(0, 300)} → ${answer.status} ${answer.body.slice(0, 300)}`;
          if (answer.status >= 500) faults.push(`server fault: ${what}`);
          if (answer.status !== 200) return;
          const replies = messagesOf(answer.body).filter(
            (m) => (m as { id?: unknown }).id !== undefined && 'method' in (m as object) === false,
          ) as { id: unknown; error?: { code: number; message: string } }[];
          for (const r of replies) {
            const own = UPSTREAM_OWN.some((t) => r.error?.message.includes(t));
            if (r.error?.code === -32603 && !own) faults.push(`InternalError: ${what}`);
          }
          for (const id of ids) {
            const n = replies.filter((r) => JSON.stringify(r.id) === id).length;
            if (n !== 1) faults.push(`request ${id} answered ${n} times: ${what}`);
            else answered++;
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

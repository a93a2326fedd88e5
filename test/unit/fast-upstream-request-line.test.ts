import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import type { Transport } from '@modelcontextprotocol/sdk/shared/transport.js';
import type { JSONRPCMessage, Request } from '@modelcontextprotocol/sdk/types.js';
import { createHmac } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { argumentsJson } from '../../src/gateway/args-json.js';
import { digestArgs } from '../../src/gateway/audit-log.js';
import { FastUpstreamCalls } from '../../src/gateway/fast-path.js';

/** A transport that records both kinds of send; answers nothing. */
function lineTransport(): Transport & {
  sent: JSONRPCMessage[];
  lines: string[];
  sendLine(json: string): Promise<void>;
} {
  const sent: JSONRPCMessage[] = [];
  const lines: string[] = [];
  return {
    sent,
    lines,
    start: async () => undefined,
    close: async () => undefined,
    send: async (m: JSONRPCMessage) => {
      sent.push(m);
    },
    sendLine: async (json: string) => {
      lines.push(json);
    },
    onmessage: () => undefined,
  };
}

function install(t: Transport): FastUpstreamCalls {
  const client = { _requestMessageId: 7 } as unknown as Client;
  const fast = FastUpstreamCalls.install(client, t, z.object({}).passthrough());
  if (!fast) throw new Error('not installed');
  return fast;
}

const KEY = 'test-digest-key-0123456789abcdef';
/** The audit digest as `createHmac` makes it: what `ArgsDigester` must match. */
const hmac = (text: string): string => createHmac('sha256', KEY).update(text).digest('hex');

/** What the generic path would have written for this request under `id`. */
const generic = (id: number, request: Request): string =>
  JSON.stringify({ jsonrpc: '2.0', id, method: request.method, params: request.params });

describe('FastUpstreamCalls request lines', () => {
  it('writes a tools/call as one line, the same text the generic serialization makes', () => {
    const t = lineTransport();
    const fast = install(t);
    const args = JSON.parse('{"path":"/tmp/a \\"q\\" ü","n":[1,2.5,{"x":null}]}') as object;
    const request = { method: 'tools/call', params: { name: 'read_file', arguments: args } };
    void fast.request(request, undefined, 60_000).catch(() => undefined);
    void fast
      .request({ method: 'tools/call', params: { name: 'ping' } }, undefined, 60_000)
      .catch(() => undefined);
    expect(t.sent).toEqual([]);
    expect(t.lines).toEqual([
      generic(7, request),
      generic(8, { method: 'tools/call', params: { name: 'ping' } }),
    ]);
  });

  it('sends exactly what policy parsed from a hostile agent line, and digests that text', () => {
    // Duplicate keys (JSON.parse keeps the last), an own `__proto__`, escapes, a lone surrogate:
    // the upstream must read the arguments policy decided on, not the agent's bytes.
    const raw =
      '{"message":"forbidden!","message":"ok","__proto__":{"message":"forbidden!"},' +
      '"esc":"\\u0066orbidden\\ud800","nested":{"a":1,"a":2}}';
    const args = JSON.parse(raw) as Record<string, unknown>;
    const t = lineTransport();
    const fast = install(t);
    const request = { method: 'tools/call', params: { name: 'echo', arguments: args } };
    void fast.request(request, undefined, 60_000).catch(() => undefined);
    const line = t.lines[0]!;
    expect(line).toBe(generic(7, request));
    expect(line).not.toContain('forbidden!","message"'); // one `message`, the parsed one
    const upstreamArgs = (JSON.parse(line) as { params: { arguments: unknown } }).params.arguments;
    expect(upstreamArgs).toEqual(JSON.parse(JSON.stringify(args)));
    expect(Object.keys(upstreamArgs as object)).toEqual(Object.keys(args));
    expect(Object.getOwnPropertyDescriptor(upstreamArgs, '__proto__')?.value).toEqual({
      message: 'forbidden!',
    });
    expect((upstreamArgs as { message: unknown }).message).toBe('ok');
    // The audit digest is the HMAC-SHA256 of JSON.stringify(args), as documented.
    expect(digestArgs(args, KEY)).toBe(hmac(JSON.stringify(args)));
  });

  it('leaves other shapes to the generic path', () => {
    const t = lineTransport();
    const fast = install(t);
    const shapes: Request[] = [
      { method: 'tools/call', params: { name: 'a', arguments: {}, _meta: { traceparent: 'x' } } },
      { method: 'tools/call', params: { arguments: {}, name: 'a' } },
      { method: 'tools/call', params: { name: 'a', arguments: [1] as unknown as object } },
      { method: 'tools/call', params: { name: 'a', arguments: { toJSON: () => ({ b: 1 }) } } },
      { method: 'resources/read', params: { uri: 'file:///a' } },
    ];
    for (const r of shapes) void fast.request(r, undefined, 60_000).catch(() => undefined);
    expect(t.lines).toEqual([]);
    expect(t.sent).toHaveLength(shapes.length);
  });

  it('rejects arguments JSON cannot serialize as the generic path does', async () => {
    const t = { ...lineTransport(), send: async () => Promise.reject(new TypeError('BigInt')) };
    const fast = install(t);
    const request = { method: 'tools/call', params: { name: 'a', arguments: { n: 1n } } };
    await expect(fast.request(request, undefined, 60_000)).rejects.toThrow('BigInt');
    expect(t.lines).toEqual([]);
  });
});

describe('argumentsJson', () => {
  it('is JSON.stringify, remembered per object and not by copies of it', () => {
    const args: Record<string, unknown> = { a: 1 };
    expect(argumentsJson(args)).toBe('{"a":1}');
    expect(JSON.stringify(args)).toBe('{"a":1}'); // the memo is invisible to JSON
    expect(Object.keys(args)).toEqual(['a']);
    const copy = { ...args, b: 2 }; // carries the memo's key, but it is not the copy's text
    expect(argumentsJson(copy)).toBe('{"a":1,"b":2}');
    expect(digestArgs(copy, KEY)).toBe(hmac('{"a":1,"b":2}'));
    const frozen = Object.freeze({ c: 3 });
    expect(argumentsJson(frozen)).toBe('{"c":3}');
  });
});

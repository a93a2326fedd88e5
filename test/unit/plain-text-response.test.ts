import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import type { Transport } from '@modelcontextprotocol/sdk/shared/transport.js';
import type { JSONRPCMessage } from '@modelcontextprotocol/sdk/types.js';
import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { FastUpstreamCalls } from '../../src/gateway/fast-path.js';
import {
  PLAIN_TEXT_MAX_LINE,
  plainTextResponse,
  rawResponseLine,
  rawResultBytes,
} from '../../src/gateway/raw-results.js';
import { mutateLine, seededRandom } from '../fixtures/line-mutations.js';

/** What JSON.parse makes of a line, when it has the one-text-block layout; else undefined. */
function reference(line: string): { id: number; result: unknown } | undefined {
  let m: unknown;
  try {
    m = JSON.parse(line);
  } catch {
    return undefined;
  }
  return m as { id: number; result: unknown };
}

/** Deep-equal and with the same keys in the same order (JSON.stringify compares both). */
function expectSameAsParse(line: string): void {
  const fast = plainTextResponse(line);
  const parsed = reference(line)!;
  expect(fast).toBeDefined();
  expect(fast!.id).toBe(parsed.id);
  const want = parsed.result as NonNullable<typeof fast>['result'];
  expect(Object.keys(fast!.result)).toEqual(Object.keys(want));
  expect(fast!.result.content).toEqual(want.content);
  expect(fast!.result.isError).toBe(want.isError);
  expect(JSON.stringify(fast!.result)).toBe(JSON.stringify(parsed.result));
  // The line is noted on the result: forwarded under another id as the upstream wrote it.
  const out = rawResponseLine(fast!.result, 'agent-1');
  expect(out).toBe(`${line.slice(0, line.lastIndexOf(':') + 1)}"agent-1"}`);
  expect(JSON.parse(out!)).toEqual({ ...(JSON.parse(line) as object), id: 'agent-1' });
}

const TEXTS = [
  '',
  'Echo: m1',
  'quote " backslash \\ slash / }]},"jsonrpc":"2.0","id":9}',
  'controls \b\f\n\r\t \u0000 \u001f \u007f',
  'naïve “quotes” 🚀 \u2028\u2029',
  'lone \ud800 and \udfff surrogates',
  '{"result":{"content":[]}}',
  '\\"}]',
];

describe('plainTextResponse (an upstream line read without JSON.parse)', () => {
  it('gives exactly what JSON.parse gives for the SDK layout of one text block', () => {
    for (const text of TEXTS) {
      for (const isError of [undefined, true, false]) {
        for (const id of [0, 7, 123456, Number.MAX_SAFE_INTEGER]) {
          const result =
            isError === undefined
              ? { content: [{ type: 'text', text }] }
              : { content: [{ type: 'text', text }], isError };
          expectSameAsParse(JSON.stringify({ result, jsonrpc: '2.0', id }));
        }
      }
    }
    // Escapes JSON.stringify does not write but JSON allows (the upstream is not always Node).
    const escaped =
      '{"result":{"content":[{"type":"text","text":"\\u0041\\/\\u00e9\\uD83D\\uDE80"}]},"jsonrpc":"2.0","id":3}';
    expectSameAsParse(escaped);
    expect(plainTextResponse(escaped)!.result.content[0]!.text).toBe('A/é🚀');
  });

  it('leaves every other line to the parser', () => {
    const ok = (text: string, tail = ',"jsonrpc":"2.0","id":5}'): string =>
      `{"result":{"content":[{"type":"text","text":${text}}]}${tail}`;
    expect(plainTextResponse(ok('"a"'))).toBeDefined();
    const others = [
      ok('"a"', ',"jsonrpc":"2.0","id":05}'), // a leading zero is not JSON
      ok('"a"', ',"jsonrpc":"2.0","id":"5"}'), // a string id
      ok('"a"', ',"jsonrpc":"2.0","id":9007199254740993}'), // past the safe integers
      ok('"a"', ',"jsonrpc":"2.0","id":-5}'),
      ok('"a"', ',"jsonrpc":"2.0","id":5.0}'),
      ok('"a"', ',"jsonrpc":"1.0","id":5}'),
      ok('"a"', ',"jsonrpc":"2.0","id":5} '),
      ok('"a"', ',"jsonrpc":"2.0","id":5,"id":6}'), // a duplicate id: the parser keeps the last
      ok('"a"', ',"jsonrpc":"2.0","id":5,"extra":1}'),
      ok('"a"', ',"jsonrpc":"2.0","id":5}\n'),
      ok('"a\u0001"'), // a raw control character is not JSON
      ok('"a\\x41"'), // not a JSON escape
      ok('"a\\u12"'),
      ok('"a\\"'),
      ok('"a"b"'),
      ok('"a"},{"type":"text","text":"b"'), // two blocks
      ok('"a","annotations":{}'),
      ok('"a","_meta":{}'),
      ok('"a"', ',"jsonrpc":"2.0","id":5,"result":{"content":[]}}'), // a second result
      '{"result":{"content":[{"text":"a","type":"text"}]},"jsonrpc":"2.0","id":5}',
      '{"result":{"content":[{"type":"image","text":"a"}]},"jsonrpc":"2.0","id":5}',
      '{"result":{"content":[{"type":"text","text":"a"}],"_meta":{}},"jsonrpc":"2.0","id":5}',
      '{"result":{"content":[{"type":"text","text":"a"}],"isError":1},"jsonrpc":"2.0","id":5}',
      '{"result":{"content":[{"type":"text","text":"a"}],"structuredContent":{}},"jsonrpc":"2.0","id":5}',
      '{"result":{"content":[]},"jsonrpc":"2.0","id":5}',
      '{"jsonrpc":"2.0","id":5,"result":{"content":[{"type":"text","text":"a"}]}}',
      '{"result": {"content":[{"type":"text","text":"a"}]},"jsonrpc":"2.0","id":5}',
      '{"error":{"code":1,"message":"a"},"jsonrpc":"2.0","id":5}',
      ok(JSON.stringify('x'.repeat(PLAIN_TEXT_MAX_LINE))), // long lines: JSON.parse is faster
    ];
    for (const line of others) expect([line, plainTextResponse(line)]).toEqual([line, undefined]);
  });

  it('never reads a line differently from JSON.parse (random mutations of valid lines)', () => {
    const random = seededRandom(11);
    const alphabet = ['"', '\\', '{', '}', '[', ']', ',', ':', 'u', '0', 'a', '\u0001', ' ', 'é'];
    let read = 0;
    for (let i = 0; i < 20_000; i++) {
      const text = TEXTS[random(TEXTS.length)]!;
      let line = JSON.stringify({
        result: { content: [{ type: 'text', text }] },
        jsonrpc: '2.0',
        id: i,
      });
      line = mutateLine(line, random, alphabet);
      const fast = plainTextResponse(line);
      if (fast === undefined) continue;
      read++;
      const parsed = reference(line);
      if (parsed === undefined) expect.fail(`read a line JSON.parse rejects: ${line}`);
      expect(Object.keys(parsed as object)).toEqual(['result', 'jsonrpc', 'id']);
      if (JSON.stringify(fast.result) !== JSON.stringify(parsed.result) || fast.id !== parsed.id) {
        expect([line, fast]).toEqual([line, parsed]);
      }
    }
    expect(read).toBeGreaterThan(1000); // the mutations left many lines valid
  });
});

/** A transport that offers lines before parsing them, as ProcessStdioTransport does. */
function rawLineTransport(): Transport & {
  onrawline: ((line: string) => boolean) | undefined;
  delivered: JSONRPCMessage[];
  sendLine(json: string): Promise<void>;
  /** Offers `line` as the stdio transport does: parsed and delivered when not taken. */
  receive(line: string): boolean;
} {
  const delivered: JSONRPCMessage[] = [];
  const t = {
    delivered,
    onrawline: undefined as ((line: string) => boolean) | undefined,
    start: async () => undefined,
    close: async () => undefined,
    send: async () => undefined,
    sendLine: async () => undefined,
    onmessage: (m: JSONRPCMessage) => void delivered.push(m),
    receive(line: string): boolean {
      if (t.onrawline?.(line) === true) return true;
      t.onmessage?.(JSON.parse(line) as JSONRPCMessage);
      return false;
    },
  };
  return t as typeof t & Transport;
}

describe('FastUpstreamCalls reading plain responses from their lines', () => {
  function setUp(): {
    t: ReturnType<typeof rawLineTransport>;
    fast: FastUpstreamCalls;
  } {
    const t = rawLineTransport();
    const client = { _requestMessageId: 7 } as unknown as Client;
    const fast = FastUpstreamCalls.install(client, t, z.object({}).passthrough())!;
    return { t, fast };
  }
  const call = { method: 'tools/call', params: { name: 'echo', arguments: { message: 'm' } } };
  const line = (id: number, text: string, isError?: boolean): string =>
    JSON.stringify({
      result:
        isError === undefined
          ? { content: [{ type: 'text', text }] }
          : { content: [{ type: 'text', text }], isError },
      jsonrpc: '2.0',
      id,
    });

  it('settles the request from the line unparsed, and forwards the line itself', async () => {
    const { t, fast } = setUp();
    const answer = fast.request(call, undefined, 60_000);
    const text = 'Echo: "m" \\ 🚀';
    expect(t.receive(line(7, text, true))).toBe(true);
    expect(t.delivered).toEqual([]); // neither parsed nor handed to Protocol
    const result = await answer;
    // (toEqual would also compare the symbol-keyed note of the line the result came from)
    expect(JSON.stringify(result)).toBe(
      JSON.stringify({ content: [{ type: 'text', text }], isError: true }),
    );
    expect(rawResponseLine(result, 'agent-1')).toBe(
      JSON.stringify({ result, jsonrpc: '2.0', id: 'agent-1' }),
    );
    expect(rawResultBytes(result)).toBe(Buffer.byteLength(JSON.stringify(result)));
    expect(fast.size).toBe(0);
  });

  it('leaves other lines, unknown ids and other layouts, to the parse and Protocol', async () => {
    const { t, fast } = setUp();
    const answer = fast.request(call, undefined, 60_000);
    expect(t.receive(line(99, 'not ours'))).toBe(false); // no such request: Protocol's
    const two =
      '{"result":{"content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]},"jsonrpc":"2.0","id":7}';
    expect(t.receive(two)).toBe(false); // parsed, then settled by the generic response path
    expect(await answer).toEqual(JSON.parse(two).result);
    expect(t.delivered).toEqual([JSON.parse(line(99, 'not ours'))]);
  });

  it('drops the answer of a request cancelled before it came', async () => {
    const { t, fast } = setUp();
    const controller = new AbortController();
    const answer = fast.request(call, controller.signal, 60_000);
    controller.abort('stop');
    await expect(answer).rejects.toThrow();
    expect(t.receive(line(7, 'late'))).toBe(false); // no longer pending: Protocol reports it
    expect(fast.size).toBe(0);
  });

  it('takes nothing while no request is pending', () => {
    const { t } = setUp();
    expect(t.receive(line(7, 'x'))).toBe(false);
    expect((t.delivered[0] as { id?: unknown }).id).toBe(7);
  });
});

import type { JSONRPCMessage, Request } from '@modelcontextprotocol/sdk/types.js';
import { PassThrough } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { StdioSessionTransport } from '../../src/gateway/downstream-stdio-transport.js';
import {
  FastToolCalls,
  PLAIN_CALL_MAX_LINE,
  plainToolCallRequest,
} from '../../src/gateway/fast-path.js';
import { mutateLine, seededRandom } from '../fixtures/line-mutations.js';

/** The request line in the raw-client order and in the SDK's order. */
function layouts(id: string, name: string, args: string): [string, string] {
  return [
    `{"jsonrpc":"2.0","id":${id},"method":"tools/call","params":{"name":${name},"arguments":${args}}}`,
    `{"method":"tools/call","params":{"name":${name},"arguments":${args}},"jsonrpc":"2.0","id":${id}}`,
  ];
}

/** Read exactly as JSON.parse reads it: same values, same keys in the same order. */
function expectSameAsParse(line: string): void {
  const fast = plainToolCallRequest(line);
  expect(fast, line).toBeDefined();
  const parsed = JSON.parse(line) as Request & { id: unknown };
  expect(fast).toEqual(parsed);
  expect(fast!.id).toBe(parsed.id);
  // Key order of the envelope aside (ours is fixed), the params and arguments are the same text.
  expect(JSON.stringify(fast!.params)).toBe(JSON.stringify(parsed.params));
  expect(Object.keys(fast!.params!.arguments as object)).toEqual(
    Object.keys(parsed.params!.arguments as object),
  );
}

const IDS = ['0', '7', '-7', '9007199254740991', '"req-1"', '"q\\"\\\\ \\u00e9"', '""'];
const NAMES = ['"ev__echo"', '"tab\\there \\u2028 \\"q\\""', '"naïve 🚀"'];
const ARGS = [
  '{}',
  '{"message":"m1"}',
  '{"path":"/tmp/a \\"q\\" ü","n":[1,2.5,{"x":null}],"deep":{"a":{"b":[true,false]}}}',
  // Hostile: duplicate keys (the last wins), an own __proto__, escapes, a lone surrogate, and
  // text that looks like the end of the envelope.
  '{"message":"forbidden!","message":"ok","__proto__":{"message":"forbidden!"},"esc":"\\u0066orbidden\\ud800"}',
  '{"a":"}}","b":"\\"}},\\"jsonrpc\\":\\"2.0\\",\\"id\\":1}","nested":{"a":1,"a":2}}',
  '{"n":1e3,"m":-0,"f":0.1}',
];

describe('plainToolCallRequest (an agent line read with a parse of its arguments alone)', () => {
  it('reads a plain tools/call exactly as JSON.parse does, in both member orders', () => {
    for (const id of IDS) {
      for (const name of NAMES) {
        for (const args of ARGS)
          for (const line of layouts(id, name, args)) expectSameAsParse(line);
      }
    }
    const hostile = plainToolCallRequest(layouts('1', '"x"', ARGS[3]!)[0])!;
    const args = hostile.params!.arguments as Record<string, unknown>;
    expect(args.message).toBe('ok');
    expect(Object.prototype.hasOwnProperty.call(args, '__proto__')).toBe(true);
    expect(Object.getPrototypeOf(args)).toBe(Object.prototype);
  });

  it('leaves every other line to the whole-line parse', () => {
    const others = [
      ...layouts('-0', '"x"', '{}'), // JSON.stringify never writes -0; the parser decides
      ...layouts('1.0', '"x"', '{}'),
      ...layouts('1e3', '"x"', '{}'),
      ...layouts('05', '"x"', '{}'),
      ...layouts('9007199254740993', '"x"', '{}'),
      ...layouts('null', '"x"', '{}'),
      ...layouts('1', '5', '{}'),
      ...layouts('1', '"x"', '[1]'), // arguments that are not an object
      ...layouts('1', '"x"', '"s"'),
      ...layouts('1', '"x"', 'null'),
      ...layouts('1', '"x"', '{} '), // JSON.parse would take it; the rest of the layout would too,
      ...layouts('1', '"x"', '{"a":1}},"params":{"name":"evil","arguments":{}'), // a second params
      ...layouts('1', '"x"', '{"a":1},"name":"evil"'), // a second name
      ...layouts('1', '"x"', '{"a":1},"arguments":{"b":2}'), // a second arguments
      ...layouts('1', '"x"', '{"a":1},"_meta":{"progressToken":1}'),
      ...layouts('1', '"x"', '{"a":1},"task":{}'),
      ...layouts('1', '"x"', '{"a":'), // not JSON
      ...layouts('1', '"x\u0001"', '{}'), // a raw control character in the name
      ...layouts('1', '"x"', `{"m":"${'y'.repeat(PLAIN_CALL_MAX_LINE)}"}`),
      '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x"}}', // no arguments
      '{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"name":"x","arguments":{}}}',
      '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"arguments":{},"name":"x"}}',
      '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{}},"id":2}',
      '{"jsonrpc":"2.0","method":"tools/call","params":{"name":"x","arguments":{}}}',
      '{"jsonrpc":"2.0", "id":1,"method":"tools/call","params":{"name":"x","arguments":{}}}',
      '{"jsonrpc":"1.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{}}}',
      '{"method":"tools/call","params":{"name":"x","arguments":{}},"jsonrpc":"2.0","id":1,"x":1}',
    ];
    for (const line of others) {
      if (line.includes('"arguments":{} ') && plainToolCallRequest(line) !== undefined) {
        expectSameAsParse(line); // whitespace JSON.parse skips: still the same reading
        continue;
      }
      expect([line.slice(0, 200), plainToolCallRequest(line)]).toEqual([
        line.slice(0, 200),
        undefined,
      ]);
    }
  });

  it('never reads a line differently from JSON.parse (random mutations of valid lines)', () => {
    const random = seededRandom(5);
    const alphabet = ['"', '\\', '{', '}', '[', ']', ',', ':', 'u', '0', '-', 'a', '\u0001', ' '];
    let read = 0;
    for (let i = 0; i < 20_000; i++) {
      let line = layouts(
        IDS[random(IDS.length)]!,
        NAMES[random(NAMES.length)]!,
        ARGS[random(ARGS.length)]!,
      )[random(2)]!;
      line = mutateLine(line, random, alphabet);
      const fast = plainToolCallRequest(line);
      if (fast === undefined) continue;
      read++;
      let parsed: unknown;
      try {
        parsed = JSON.parse(line);
      } catch {
        expect.fail(`read a line JSON.parse rejects: ${line}`);
      }
      if (JSON.stringify(fast) !== JSON.stringify(parsed)) {
        // Same members, maybe another order: compare the values.
        expect([line, fast]).toEqual([line, parsed]);
      }
    }
    expect(read).toBeGreaterThan(1000);
  });
});

describe('the stdio session transport offering lines to the fast path', () => {
  it('serves a plain tools/call unparsed, and leaves everything else to the SDK', async () => {
    const stdin = new PassThrough();
    const stdout = new PassThrough();
    const transport = new StdioSessionTransport(stdin, stdout);
    const sdk: JSONRPCMessage[] = [];
    transport.onmessage = (m) => void sdk.push(m);
    const served: Request[] = [];
    new FastToolCalls(
      transport,
      async (request) => {
        served.push(request);
        return { content: [{ type: 'text', text: 'ok' }] };
      },
      () => undefined,
    );
    await transport.start();
    const out: string[] = [];
    stdout.setEncoding('utf8');
    stdout.on('data', (d: string) => out.push(...d.split('\n').filter(Boolean)));
    const plain = layouts('"a"', '"ev__echo"', ARGS[3]!)[1];
    const withMeta =
      '{"jsonrpc":"2.0","id":"b","method":"tools/call","params":{"name":"ev__echo","arguments":{},"_meta":{"progressToken":1}}}';
    stdin.write(`${plain}\n${withMeta}\n`);
    await new Promise((r) => setTimeout(r, 20));
    expect(served).toEqual([JSON.parse(plain)]);
    expect((served[0]!.params!.arguments as { message: string }).message).toBe('ok');
    expect(sdk).toEqual([JSON.parse(withMeta)]); // _meta: the SDK's own handling
    expect(out.map((l) => JSON.parse(l) as unknown)).toEqual([
      { result: { content: [{ type: 'text', text: 'ok' }] }, jsonrpc: '2.0', id: 'a' },
    ]);
    await transport.close();
  });
});

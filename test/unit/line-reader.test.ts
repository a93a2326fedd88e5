import { PassThrough } from 'node:stream';
import type { JSONRPCMessage } from '@modelcontextprotocol/sdk/types.js';
import { describe, expect, it } from 'vitest';
import { StdioSessionTransport } from '../../src/gateway/downstream-stdio-transport.js';
import { LineReader } from '../../src/gateway/line-reader.js';

function reader(max?: number): { r: LineReader; lines: string[]; overflows: number[] } {
  const lines: string[] = [];
  const overflows: number[] = [];
  const r = new LineReader(
    (l) => lines.push(l),
    max,
    () => overflows.push(lines.length),
  );
  return { r, lines, overflows };
}

describe('LineReader', () => {
  it('delivers lines whole across any chunking, without their \\n or \\r\\n', () => {
    const text = 'first\r\nsecond line\n\nthird {"a":"b"}\nlast';
    for (let size = 1; size <= text.length; size++) {
      const { r, lines } = reader();
      for (let i = 0; i < text.length; i += size) r.push(text.slice(i, i + size));
      expect(lines, `chunks of ${size}`).toEqual(['first', 'second line', '', 'third {"a":"b"}']);
      r.push('\n');
      expect(lines.at(-1)).toBe('last');
    }
  });

  it('joins a long line from many chunks once', () => {
    const { r, lines } = reader();
    const big = 'x'.repeat(64 * 1024);
    for (let i = 0; i < 20; i++) r.push(big);
    r.push('y\nnext\n');
    expect(lines.map((l) => l.length)).toEqual([20 * big.length + 1, 4]);
  });

  it('drops a line over the limit whole, reports it once, and reads on', () => {
    const { r, lines, overflows } = reader(10);
    r.push('short\n0123456789');
    r.push('abc'); // now too long
    r.push('def\nok\n');
    r.push('01234567890123\nfine\n'); // too long within one chunk
    expect(lines).toEqual(['short', 'ok', 'fine']);
    expect(overflows).toEqual([1, 2]);
  });

  it('hands the start of a dropped line to onoverflow', () => {
    const heads: string[] = [];
    const r = new LineReader(
      () => undefined,
      10,
      (head) => heads.push(head),
    );
    r.push('{"id":1,');
    r.push('"result":1234'); // too long here: the line's first piece
    r.push('5}\n0123456789abc\n'); // too long within a chunk: the whole line
    expect(heads).toEqual(['{"id":1,', '0123456789abc']);
  });
});

describe('StdioSessionTransport input', () => {
  it('keeps a UTF-8 character split between two chunks whole', async () => {
    const stdin = new PassThrough();
    const t = new StdioSessionTransport(stdin, new PassThrough());
    const got: JSONRPCMessage[] = [];
    t.onmessage = (m) => got.push(m);
    await t.start();
    const bytes = Buffer.from(
      JSON.stringify({ jsonrpc: '2.0', method: 'notifications/x', params: { s: 'naïve 🚀' } }) +
        '\n',
    );
    const cut = bytes.indexOf(Buffer.from('🚀')) + 2; // inside the emoji
    stdin.write(bytes.subarray(0, cut));
    stdin.write(bytes.subarray(cut));
    await new Promise((r) => setImmediate(r));
    expect(got).toEqual([{ jsonrpc: '2.0', method: 'notifications/x', params: { s: 'naïve 🚀' } }]);
    await t.close();
  });
});

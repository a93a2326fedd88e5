import { PassThrough } from 'node:stream';
import type { JSONRPCMessage } from '@modelcontextprotocol/sdk/types.js';
import { describe, expect, it } from 'vitest';
import { StdioSessionTransport } from '../../src/gateway/downstream-stdio-transport.js';
import { LineReader } from '../../src/gateway/line-reader.js';
import { droppedMessage, trailingId } from '../../src/gateway/dropped-message.js';

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

describe('LineReader: the end of a dropped line', () => {
  function tails(max: number) {
    const got: string[] = [];
    const heads: string[] = [];
    const lines: string[] = [];
    const r = new LineReader(
      (l) => lines.push(l),
      max,
      (h) => heads.push(h),
      { tailLength: 4, headLength: 6, onend: (t) => got.push(t) },
    );
    return { r, got, heads, lines };
  }

  it('hands at least headLength characters of its start to onoverflow, in any chunking', () => {
    // Found in the second review: only the line's first piece was handed over, so a line whose
    // first few characters ended a chunk could not be told (its id and `result` not among them).
    const line = '0123456789abcdefghij';
    for (let size = 1; size <= line.length; size++) {
      const { r, heads } = tails(10);
      for (let i = 0; i < line.length; i += size) r.push(line.slice(i, i + size));
      r.push('\n');
      expect(heads, `chunks of ${size}`).toHaveLength(1);
      expect(heads[0]!.startsWith('012345'), `chunks of ${size}: ${heads[0]}`).toBe(true);
      expect(line.startsWith(heads[0]!), `chunks of ${size}: ${heads[0]}`).toBe(true);
    }
  });

  it('hands the last characters of a dropped line to onend once its newline arrives, in any chunking', () => {
    const text = '0123456789abcdefghij\nok\n';
    for (let size = 1; size <= text.length; size++) {
      const { r, got, heads, lines } = tails(10);
      for (let i = 0; i < text.length; i += size) r.push(text.slice(i, i + size));
      expect(got, `chunks of ${size}`).toEqual(['ghij']);
      expect(heads).toHaveLength(1);
      expect(lines).toEqual(['ok']);
    }
  });

  it('follows a dropped line of any length to its newline: onend once, with its last characters', () => {
    // Found after the first fix: a line past 16 × the bound was given up on, and the upstream
    // reset under every other agent's call — an agent reading a file of 16 × maxMessageBytes
    // through a shared server-filesystem could do that at will.
    const { r, got, lines } = tails(10);
    const chunk = 'x'.repeat(64 * 1024);
    for (let i = 0; i < 64; i++) r.push(chunk); // 4 MiB: 400 000 × the bound
    r.push('"id":7}');
    expect(got).toEqual([]);
    r.push('\nnext\n');
    expect(got).toEqual(['":7}']);
    expect(lines).toEqual(['next']);
    // within one chunk, newline included
    r.push(`${'w'.repeat(40)}end\n`);
    expect(got).toEqual(['":7}', 'wend']);
  });

  it('keeps no more than tailLength characters however the line arrives', () => {
    const { r, got } = tails(10);
    for (let i = 0; i < 500; i++) r.push(String(i % 10));
    r.push('\r\n');
    expect(got).toEqual(['789\r']);
  });
});

describe('trailingId', () => {
  it('reads the id a JSON-RPC message ends with, as the TypeScript SDK writes it', () => {
    expect(trailingId('"}]},"jsonrpc":"2.0","id":42}')).toEqual({ id: 42, idText: '42' });
    expect(trailingId('}, "id" : "a\\"b" } \r')).toEqual({ id: 'a"b', idText: '"a\\"b"' });
  });

  it('reads nothing that is not the last member named id with a scalar', () => {
    for (const tail of [
      '"text":"x\\",\\"id\\":5}"}]}}', // inside a string: the quotes are escaped
      '"id":5}', // no member before it in the tail: could be nested
      ',"id":5}x',
      ',"id":05}',
      ',"id":null}',
      ',"id":{"a":1}}',
      ',"xid":5}',
      ',"id":5]',
    ]) {
      expect(trailingId(tail), tail).toBeUndefined();
    }
  });
});

describe('droppedMessage', () => {
  it('tells an answer, a request and a notification by their first or last members', () => {
    const big = '"x","y":[1,2,3]';
    expect(droppedMessage('{"jsonrpc":"2.0","id":7,"result":{"a":', '')).toEqual({
      kind: 'answer',
      id: 7,
      idText: '7',
    });
    expect(droppedMessage('{"result":{"content":[', `${big}]},"jsonrpc":"2.0","id":8}`)).toEqual({
      kind: 'answer',
      id: 8,
      idText: '8',
    });
    expect(droppedMessage('{"method":"sampling/createMessage","params":{', ',"id":"u-1"}')).toEqual(
      { kind: 'request', method: 'sampling/createMessage', id: 'u-1', idText: '"u-1"' },
    );
    expect(
      droppedMessage('{"method":"notifications/message","params":{', '"jsonrpc":"2.0"}'),
    ).toEqual({ kind: 'notification', method: 'notifications/message' });
  });

  it("leaves unknown what names no call: guessing could fail another agent's call", () => {
    for (const [head, tail] of [
      ['plain text', ',"id":1}'], // not JSON at its start
      ['{"params":{', ',"id":1}'], // neither result, error nor method first
      ['{"jsonrpc":"2.0","result":"' + 'y'.repeat(300), 'yyy"}'], // no id at either end
      ['{"result":{', '"id":1}}'], // an id that is not the top-level member
    ]) {
      expect(droppedMessage(head!, tail!), head).toEqual({ kind: 'unknown' });
    }
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

import { describe, expect, it } from 'vitest';
import {
  rawResponseLine,
  rawResultBytes,
  rememberRawResult,
} from '../../src/gateway/raw-results.js';

/** Parses an upstream line the way the transport does and remembers its text. */
function received(line: string): { result: object; id: number } {
  const m = JSON.parse(line) as { result: object; id: number };
  rememberRawResult(m.result, line, m.id);
  return m;
}

describe('forwarding a result as the upstream wrote it', () => {
  const result = { content: [{ type: 'text', text: 'héllo "q" \\ 🚀\u2028' }], isError: false };

  it('re-addresses the SDK layout to the agent id without serializing the result again', () => {
    const line = JSON.stringify({ result, jsonrpc: '2.0', id: 12 });
    const m = received(line);
    for (const id of ['req-7', 3, 0, -5, Number.MAX_SAFE_INTEGER, 'q"\\\u2028', '7']) {
      const out = rawResponseLine(m.result, id)!;
      expect(JSON.parse(out)).toEqual({ result, jsonrpc: '2.0', id });
      expect(out).toBe(JSON.stringify({ result, jsonrpc: '2.0', id }));
    }
    expect(rawResultBytes(m.result)).toBe(Buffer.byteLength(JSON.stringify(result)));
  });

  it('remembers nothing for other layouts, so they are serialized as usual', () => {
    for (const line of [
      JSON.stringify({ jsonrpc: '2.0', id: 12, result }),
      JSON.stringify({ result, jsonrpc: '2.0', id: 12 }, null, 1).replace(/\n/g, ''),
      JSON.stringify({ result, jsonrpc: '2.0', id: 12 }) + '\r',
    ]) {
      const m = JSON.parse(line) as { result: object };
      rememberRawResult(m.result, line, 12);
      expect(rawResponseLine(m.result, 1)).toBeUndefined();
      expect(rawResultBytes(m.result)).toBeUndefined();
    }
    // The id in the text must be the one the response was matched by.
    const line = JSON.stringify({ result, jsonrpc: '2.0', id: 12 });
    const other = JSON.parse(line) as { result: object };
    rememberRawResult(other.result, line, 13);
    expect(rawResponseLine(other.result, 1)).toBeUndefined();
  });

  it('stays invisible to JSON and keys, and does not follow a modified copy', () => {
    const line = JSON.stringify({ result, jsonrpc: '2.0', id: 12 });
    const m = received(line);
    expect(JSON.stringify(m.result)).toBe(JSON.stringify(result));
    expect(Object.keys(m.result)).toEqual(Object.keys(result));
    const changed = { ...m.result, isError: true };
    expect(rawResponseLine(changed, 1)).toBeUndefined();
    expect(rawResultBytes(changed)).toBeUndefined();
    const frozen = Object.freeze((JSON.parse(line) as { result: object }).result);
    expect(() => rememberRawResult(frozen, line, 12)).not.toThrow();
    expect(rawResponseLine(frozen, 1)).toBeUndefined();
  });

  it('keeps JSON meaning exact when the upstream repeats keys', () => {
    // Last member wins in JSON.parse; only that member's value is replaced.
    const line = '{"result":{"content":[]},"id":99,"jsonrpc":"2.0","id":12}';
    const m = received(line);
    const out = rawResponseLine(m.result, 'mine')!;
    expect(JSON.parse(out)).toEqual({ ...JSON.parse(line), id: 'mine' });
  });

  it('re-addresses exactly the lines whose text ends with the matched id (hostile ids)', () => {
    /** The definition: the line ends with `,"jsonrpc":"2.0","id":` + String(id) + `}`. */
    const expected = (line: string, id: number): string | undefined => {
      const tail = ',"jsonrpc":"2.0","id":' + String(id) + '}';
      return line.startsWith('{"result":') && line.endsWith(tail)
        ? line.slice(0, line.length - tail.length) + ',"jsonrpc":"2.0","id":"agent-1"}'
        : undefined;
    };
    const results = [
      '{}',
      '{"id":7}',
      '{"content":[{"type":"text","text":"\\",\\"jsonrpc\\":\\"2.0\\",\\"id\\":7}"}]}',
      '{"content":[],"x":{"jsonrpc":"2.0","id":7}}',
    ];
    const idTexts = [
      '7',
      '0',
      '70',
      '07',
      '-7',
      '-0',
      '7.0',
      '7e0',
      '0.7',
      '1e3',
      '1000',
      '"7"',
      '"\\u0037"',
      ' 7',
      '7 ',
      '17',
      '9007199254740991',
      '9007199254740993',
      '12345678901234567890',
    ];
    const layouts = [
      (r: string, id: string) => `{"result":${r},"jsonrpc":"2.0","id":${id}}`,
      (r: string, id: string) => `{"result":${r}, "jsonrpc":"2.0","id":${id}}`,
      (r: string, id: string) => `{"result":${r},"jsonrpc":"2.0", "id":${id}}`,
      (r: string, id: string) => `{"result":${r},"jsonrpc":"2.0","id":${id} }`,
      (r: string, id: string) => `{"result":${r},"id":${id},"jsonrpc":"2.0"}`,
      (r: string, id: string) => `{"jsonrpc":"2.0","result":${r},"id":${id}}`,
      (r: string, id: string) => `{"result":${r},"jsonrpc":"2.0","id":${id}}\r`,
    ];
    const matchedIds = [7, 0, 70, 17, 1000, 9007199254740991, -7, -0, 0.7, 2 ** 53 + 2];
    let remembered = 0;
    for (const layout of layouts) {
      for (const r of results) {
        for (const idText of idTexts) {
          const line = layout(r, idText);
          for (const id of matchedIds) {
            let parsed: { result?: object };
            try {
              parsed = JSON.parse(line) as { result?: object };
            } catch {
              parsed = { result: {} }; // the function is given text the transport parsed; be strict anyway
            }
            const result = parsed.result ?? {};
            rememberRawResult(result, line, id);
            const want = expected(line, id);
            expect([line, id, rawResponseLine(result, 'agent-1')]).toEqual([line, id, want]);
            if (want !== undefined) remembered++;
          }
        }
      }
    }
    expect(remembered).toBeGreaterThan(20);
  });
});

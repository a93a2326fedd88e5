import { describe, expect, it } from 'vitest';
import { boundedEventStream } from '../../src/gateway/bounded-body.js';

/**
 * Streams `text` in chunks of `size` bytes through the bound; the text that came out. With
 * `reports`, the stream carried no request (follow mode) and the reports land there.
 */
async function through(
  text: string,
  size: number,
  max: number,
  reports?: string[],
  ended?: { overflow: number },
  follow?: { ms: number; open: boolean },
): Promise<string> {
  const bytes = new TextEncoder().encode(text);
  const source = new ReadableStream<Uint8Array>({
    start(c) {
      for (let i = 0; i < bytes.length; i += size) c.enqueue(bytes.slice(i, i + size));
      // An upstream that stalls in the middle of an event leaves its stream open.
      if (follow?.open !== true) c.close();
    },
  });
  const out = boundedEventStream(
    source,
    max,
    () => (reports ? [] : [7]),
    () => undefined,
    () => void (ended && ended.overflow++),
    reports && ((r) => void reports.push(r)),
    follow?.ms,
  );
  return new Response(out).text();
}

describe('boundedEventStream', () => {
  it('counts bytes per event: blank lines of LF, CR or CRLF end one, split anywhere', async () => {
    for (const end of ['\n', '\r', '\r\n']) {
      const event = `data: ${'a'.repeat(20)}${end}${end}`; // 28–30 bytes, under 32
      const text = event.repeat(10);
      for (let size = 1; size <= 8; size++) {
        expect(await through(text, size, 32), `${JSON.stringify(end)} / ${size}`).toBe(text);
      }
    }
  });

  it('past the bound drops the event, answers the request with an error and ends', async () => {
    const ok = 'data: 1\r\n\r\n';
    // Many lines, each short: one event all the same.
    const out = await through(ok + 'data: 22222\r\n'.repeat(10), 4, 64);
    expect(out.startsWith(ok)).toBe(true);
    expect(out).toContain('event: fabric-dropped\n\n');
    expect(out).toContain('"id":7,"error":{"code":-32603');
    expect(out).toContain('longer than 64 bytes (maxMessageBytes)');
    expect(out.length).toBeLessThan(ok.length + 64 + 300);
  });

  describe('on a stream that carried no request (the legacy SSE stream of every answer)', () => {
    const event = (data: string, end = '\n'): string =>
      `event: message${end}data: ${data}${end}${end}`;
    const before = event('{"jsonrpc":"2.0","id":1,"result":{}}');
    const after = event('{"jsonrpc":"2.0","id":3,"result":{}}', '\r\n');
    const answerOf = (id: string): string =>
      `{"jsonrpc":"2.0","id":${id},"error":{"code":-32603,"message":"the upstream's answer was longer than 256 bytes (maxMessageBytes) and was dropped"}}`;

    it('an answer of any length is followed to its end: far past the bound it still fails its call alone', async () => {
      // Found after the first fix: an event past 16 × the bound ended the stream, and with it
      // every call waiting on it — an agent could size its own answer to get there.
      const data = `{"result":{"text":"${'y'.repeat(200_000)}"},"jsonrpc":"2.0","id":2}`;
      const reports: string[] = [];
      const ended = { overflow: 0 };
      const out = await through(before + event(data) + after, 4096, 256, reports, ended);
      expect(out).toContain(`event: message\ndata: ${answerOf('2')}\n\n`);
      expect(out.endsWith(after)).toBe(true);
      expect(ended.overflow).toBe(0);
      expect(reports).toEqual([
        'upstream sent an event longer than 256 bytes (maxMessageBytes); it was dropped: the call it answered (id 2) failed',
      ]);
    });

    it('an answer too long fails its call alone, named by its end or its start; the stream goes on', async () => {
      const big = `{"content":[{"type":"text","text":"${'y'.repeat(2000)}"}]}`;
      for (const [data, id] of [
        [`{"result":${big},"jsonrpc":"2.0","id":2}`, '2'],
        [`{"jsonrpc":"2.0","id":"s-2","result":${big}}`, '"s-2"'],
      ] as const) {
        for (const size of [1, 7, 64, 300]) {
          const reports: string[] = [];
          const out = await through(before + event(data, '\r\n') + after, size, 256, reports);
          const label = `${id} / ${size}`;
          expect(out.startsWith(before), label).toBe(true);
          expect(out, label).toContain('event: fabric-dropped\n\n');
          expect(out, label).toContain(`event: message\ndata: ${answerOf(id)}\n\n`);
          expect(out.endsWith(after), label).toBe(true);
          expect(out, label).not.toContain('y'.repeat(300));
          expect(reports, label).toEqual([
            `upstream sent an event longer than 256 bytes (maxMessageBytes); it was dropped: the call it answered (id ${id}) failed`,
          ]);
        }
      }
    });

    it('a notification too long is dropped and reported; an unnamed event or a flood ends the stream', async () => {
      const note = `{"method":"notifications/message","params":{"data":"${'z'.repeat(2000)}"},"jsonrpc":"2.0"}`;
      const reports: string[] = [];
      const out = await through(before + event(note) + after, 50, 256, reports);
      expect(out.endsWith(after)).toBe(true);
      expect(reports[0]).toContain('(a notifications/message message)');

      for (const [text, report, follow] of [
        [
          before + event(`"${'x'.repeat(2000)}"`) + after,
          'cannot be told, the stream is closed',
          undefined,
        ],
        [
          before + `data: ${'x'.repeat(5000)}`,
          'and it did not end within 50 ms (callTimeoutSeconds); the stream is closed',
          { ms: 50, open: true },
        ],
      ] as const) {
        const seen: string[] = [];
        const ended = { overflow: 0 };
        const out = await through(text, 100, 256, seen, ended, follow);
        expect(out.startsWith(before)).toBe(true);
        expect(out).not.toContain('"id":3');
        expect(seen).toHaveLength(1);
        expect(seen[0]).toContain(report);
        expect(ended.overflow).toBe(1);
      }
    });
  });
});

import { describe, expect, it } from 'vitest';
import { boundedEventStream } from '../../src/gateway/bounded-body.js';

/** Streams `text` in chunks of `size` bytes through the bound; the text that came out. */
async function through(text: string, size: number, max: number): Promise<string> {
  const bytes = new TextEncoder().encode(text);
  const source = new ReadableStream<Uint8Array>({
    start(c) {
      for (let i = 0; i < bytes.length; i += size) c.enqueue(bytes.slice(i, i + size));
      c.close();
    },
  });
  const out = boundedEventStream(
    source,
    max,
    () => [7],
    () => undefined,
    () => undefined,
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
});

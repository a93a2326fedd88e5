/**
 * HttpSessionTransport alone, over a fake response: when a POST's requests stop counting as in
 * flight, what a stream whose client does not read may hold, and that every response of an SSE
 * batch is written before the stream ends; and that a response handed over as text (the fast
 * path's upstream line) is written as it is.
 */
import { EventEmitter } from 'node:events';
import type { ServerResponse } from 'node:http';
import type { JSONRPCMessage } from '@modelcontextprotocol/sdk/types.js';
import { describe, expect, it } from 'vitest';
import {
  HttpSessionTransport,
  nestsFewerThan,
} from '../../src/gateway/downstream-http-transport.js';
import type { MessageKind } from '../../src/gateway/jsonrpc-message.js';

/** A response whose socket takes nothing while `stuck` (the client does not read). */
class FakeResponse extends EventEmitter {
  status = 0;
  chunks: string[] = [];
  headersSent = false;
  writableEnded = false;
  /** Bytes "written" that the socket did not take. */
  writableLength = 0;
  stuck = false;

  writeHead(status: number): this {
    this.status = status;
    this.headersSent = true;
    return this;
  }
  flushHeaders(): void {}
  write(chunk: string): boolean {
    this.chunks.push(chunk);
    if (this.stuck) this.writableLength += Buffer.byteLength(chunk);
    return !this.stuck;
  }
  end(chunk?: string): this {
    if (chunk !== undefined) this.write(chunk);
    this.writableEnded = true;
    return this;
  }
  /** The answer left the process (or the connection closed): Node emits `close`. */
  flushed(): void {
    this.writableLength = 0;
    this.emit('close');
  }
  /** The JSON-RPC messages written as SSE events. */
  events(): { id?: unknown; method?: string }[] {
    return this.chunks
      .filter((c) => c.startsWith('event: message'))
      .map((c) => JSON.parse(/^data: (.*)$/m.exec(c)![1]!) as { id?: unknown; method?: string });
  }
}

const request = (id: number): JSONRPCMessage => ({
  jsonrpc: '2.0',
  id,
  method: 'tools/call',
  params: { name: 't' },
});
const response = (id: number): JSONRPCMessage => ({ jsonrpc: '2.0', id, result: {} });
const progress = (n: number): JSONRPCMessage => ({
  jsonrpc: '2.0',
  method: 'notifications/progress',
  params: { progressToken: 'p', progress: n },
});
const turn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

function setup(options: { maxStreamBacklogBytes?: number } = {}) {
  let done = 0;
  let dropped = 0;
  const transport = new HttpSessionTransport('sid', {
    ...options,
    onRequestsDone: (n) => (done += n),
    onNotificationDropped: () => dropped++,
  });
  const post = (ids: number[]): FakeResponse => {
    const res = new FakeResponse();
    const kinds: MessageKind[] = ids.map(() => 'request');
    transport.handlePost(
      res as unknown as ServerResponse,
      ids.map(request),
      kinds,
      ids.length > 1,
      {},
    );
    return res;
  };
  return { transport, post, done: () => done, dropped: () => dropped };
}

describe('HttpSessionTransport', () => {
  it('counts an answered request in flight until its response has left the process', async () => {
    const t = setup();
    const res = t.post([1]);
    await t.transport.send(response(1));
    expect(res.writableEnded).toBe(true);
    expect(t.done()).toBe(0);
    res.flushed();
    expect(t.done()).toBe(1);
  });

  it('releases a response that comes after its connection closed at once', async () => {
    const t = setup();
    const res = t.post([1, 2]);
    res.flushed(); // the client went away with both requests pending
    await t.transport.send(response(1));
    await t.transport.send(response(2));
    expect(t.done()).toBe(2);
  });

  it('writes every response of an SSE batch that arrive in one turn, then ends the stream', async () => {
    const t = setup();
    const res = t.post([1, 2, 3]);
    await t.transport.send(progress(0), { relatedRequestId: 1 }); // switches to SSE
    await t.transport.send(response(1));
    await t.transport.send(response(2));
    await t.transport.send(response(3));
    await turn();
    await turn();
    expect(res.events().map((m) => m.id ?? m.method)).toEqual(['notifications/progress', 1, 2, 3]);
    expect(res.writableEnded).toBe(true);
  });

  it('does not end an SSE stream on a cancellation while a response waits for its turn', async () => {
    const t = setup();
    const res = t.post([1, 2]);
    await t.transport.send(progress(0), { relatedRequestId: 1 });
    await t.transport.send(response(1));
    t.transport.handlePost(
      new FakeResponse() as unknown as ServerResponse,
      [{ jsonrpc: '2.0', method: 'notifications/cancelled', params: { requestId: 2 } }],
      ['notification'],
      false,
      {},
    );
    await turn();
    expect(res.events().map((m) => m.id ?? m.method)).toEqual(['notifications/progress', 1]);
    expect(res.writableEnded).toBe(true);
  });

  it('answers the requests still pending on an SSE stream when the session closes, then ends it', async () => {
    // Before, the stream just ended: its client waited for those answers forever (the stdio
    // bridge's client, and an SDK client until its own timeout).
    const t = setup();
    const res = t.post([1, 2, 3]);
    await t.transport.send(progress(0), { relatedRequestId: 1 }); // switches to SSE
    await t.transport.send(response(1)); // waits for its turn
    await t.transport.close();
    await turn();
    const events = res.events() as { id?: unknown; method?: string; error?: { code: number } }[];
    expect(events.map((m) => m.id ?? m.method)).toEqual(['notifications/progress', 2, 3, 1]);
    expect(events.slice(1, 3).map((m) => m.error?.code)).toEqual([-32000, -32000]);
    expect(res.writableEnded).toBe(true);
    res.flushed();
    expect(t.done()).toBe(3);
  });

  it('drops notifications to a stream past its backlog, never responses', async () => {
    const t = setup({ maxStreamBacklogBytes: 1024 });
    const res = t.post([1]);
    res.stuck = true;
    for (let i = 0; i < 100; i++) await t.transport.send(progress(i), { relatedRequestId: 1 });
    expect(t.dropped()).toBeGreaterThan(80);
    expect(res.writableLength).toBeLessThan(1024 + 200);
    expect(t.transport.unsentBytes).toBe(res.writableLength);
    await t.transport.send(response(1));
    await turn();
    expect(res.events().at(-1)?.id).toBe(1);
    expect(res.writableEnded).toBe(true);
    expect(t.done()).toBe(0); // still unread
    res.flushed();
    expect(t.done()).toBe(1);
    expect(t.transport.unsentBytes).toBe(0);
  });

  it('drops notifications to the standalone stream past its backlog', async () => {
    const t = setup({ maxStreamBacklogBytes: 1024 });
    const res = new FakeResponse();
    t.transport.handleGet(res as unknown as ServerResponse);
    res.stuck = true;
    for (let i = 0; i < 100; i++) await t.transport.send(progress(i));
    expect(t.dropped()).toBeGreaterThan(80);
    expect(t.transport.unsentBytes).toBeLessThan(1024 + 200);
    await t.transport.close();
  });

  describe('sendLine: a response already serialized', () => {
    // What the fast path hands over: the upstream's line with the agent's id, numbers as written.
    const line = (id: number, result = '{"n":1.50,"big":12345678901234567890}'): string =>
      `{"result":${result},"jsonrpc":"2.0","id":${id}}`;

    it('writes the text as it is in a JSON answer (not serialized again)', async () => {
      const t = setup();
      const res = t.post([1]);
      await t.transport.sendLine(line(1), 1);
      expect(res.status).toBe(200);
      expect(res.chunks).toEqual([line(1)]);
      res.flushed();
      expect(t.done()).toBe(1);
    });

    it('writes it as one SSE data line, its line breaks (whitespace) as spaces', async () => {
      const t = setup();
      const res = t.post([1]);
      await t.transport.send(progress(0), { relatedRequestId: 1 });
      await t.transport.sendLine(line(1, '{\r\n"n":1.50,\r"s":"a\\nb"\n}'), 1);
      await turn();
      const data = res.chunks.filter((c) => c.startsWith('event: message')).at(-1)!;
      expect(data).toBe(`event: message\ndata: ${line(1, '{  "n":1.50, "s":"a\\nb" }')}\n\n`);
      expect(res.events().map((m) => m.id ?? m.method)).toEqual(['notifications/progress', 1]);
    });

    it('answers a result nested too deep for JSON.stringify as send does: an InternalError', async () => {
      const t = setup();
      const res = t.post([7]);
      const deep = `${'{"a":'.repeat(10_000)}1${'}'.repeat(10_000)}`;
      await t.transport.sendLine(line(7, deep), 7);
      const answer = JSON.parse(res.chunks[0]!) as { id: number; error: { code: number } };
      expect(answer).toMatchObject({ id: 7, error: { code: -32603 } });
    });

    it('drops the text of a request no longer pending (cancelled, or answered)', async () => {
      const t = setup();
      const res = t.post([1]);
      await t.transport.sendLine(line(1), 1);
      await t.transport.sendLine(line(1, '{"again":true}'), 1);
      await t.transport.sendLine(line(2), 2);
      expect(res.chunks).toEqual([line(1)]);
    });
  });

  describe('nestsFewerThan', () => {
    it('bounds the depth by the count of openings, and walks only texts with many', () => {
      expect(nestsFewerThan('{"a":[1,{"b":[]}]}', 5)).toBe(true);
      expect(nestsFewerThan('{"a":[1,{"b":[]}]}', 4)).toBe(false);
      // Many openings, little depth.
      expect(nestsFewerThan(`[${'[],'.repeat(50)}[]]`, 3)).toBe(true);
      expect(nestsFewerThan(`[${'{},'.repeat(50)}[[]]]`, 3)).toBe(false);
    });

    it('skips strings, escaped quotes and backslashes included', () => {
      const braces = JSON.stringify('{[{[ "\\" \\"[[[[ ' + '{'.repeat(20));
      expect(nestsFewerThan(`{"t":${braces}}`, 2)).toBe(true);
      expect(nestsFewerThan(`{"t":${braces},"u":[[]]}`, 3)).toBe(false);
      expect(nestsFewerThan(`{"t":"\\\\","u":{}}`, 2)).toBe(false);
      expect(nestsFewerThan(`{"t":"\\\\","u":1}`, 2)).toBe(true);
    });

    it('calls a text with an unterminated string too deep (serialization decides)', () => {
      expect(nestsFewerThan(`["${'['.repeat(10)}`, 5)).toBe(false);
    });
  });
});

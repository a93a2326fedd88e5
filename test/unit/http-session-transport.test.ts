/**
 * HttpSessionTransport alone, over a fake response: when a POST's requests stop counting as in
 * flight, what a stream whose client does not read may hold, and that every response of an SSE
 * batch is written before the stream ends.
 */
import { EventEmitter } from 'node:events';
import type { ServerResponse } from 'node:http';
import type { JSONRPCMessage } from '@modelcontextprotocol/sdk/types.js';
import { describe, expect, it } from 'vitest';
import { HttpSessionTransport } from '../../src/gateway/downstream-http-transport.js';
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
});

/**
 * HttpSessionTransport alone, over a fake response: every response of an SSE batch is written
 * before the stream ends.
 */
import { EventEmitter } from 'node:events';
import type { ServerResponse } from 'node:http';
import type { JSONRPCMessage } from '@modelcontextprotocol/sdk/types.js';
import { describe, expect, it } from 'vitest';
import { HttpSessionTransport } from '../../src/gateway/downstream-http-transport.js';
import type { MessageKind } from '../../src/gateway/jsonrpc-message.js';

/** A response that records what is written to it. */
class FakeResponse extends EventEmitter {
  status = 0;
  chunks: string[] = [];
  headersSent = false;
  writableEnded = false;

  writeHead(status: number): this {
    this.status = status;
    this.headersSent = true;
    return this;
  }
  flushHeaders(): void {}
  write(chunk: string): boolean {
    this.chunks.push(chunk);
    return true;
  }
  end(chunk?: string): this {
    if (chunk !== undefined) this.write(chunk);
    this.writableEnded = true;
    return this;
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

function setup() {
  const transport = new HttpSessionTransport('sid');
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
  return { transport, post };
}

describe('HttpSessionTransport', () => {
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
});

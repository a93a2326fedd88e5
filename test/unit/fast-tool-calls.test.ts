import type { Transport } from '@modelcontextprotocol/sdk/shared/transport.js';
import type { JSONRPCMessage } from '@modelcontextprotocol/sdk/types.js';
import { PassThrough } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { StdioSessionTransport } from '../../src/gateway/downstream-stdio-transport.js';
import { FastToolCalls, type FastCallExtra } from '../../src/gateway/fast-path.js';

/** A transport that records what is sent; the test drives `onmessage` / `onclose`. */
function fakeTransport(): Transport & { sent: JSONRPCMessage[] } {
  const sent: JSONRPCMessage[] = [];
  return {
    sent,
    start: async () => undefined,
    close: async () => undefined,
    send: async (m: JSONRPCMessage) => {
      sent.push(m);
    },
    onmessage: () => undefined,
  };
}

const call = (id: number): JSONRPCMessage => ({
  jsonrpc: '2.0',
  id,
  method: 'tools/call',
  params: { name: 'echo', arguments: {} },
});

describe('FastToolCalls cancellation', () => {
  it('creates no AbortSignal unless asked, and a signal asked for after cancel is aborted', async () => {
    const t = fakeTransport();
    let extra: FastCallExtra | undefined;
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    new FastToolCalls(
      t,
      async (_request, e) => {
        extra = e;
        await gate;
        return { content: [] };
      },
      () => undefined,
    );
    t.onmessage!(call(1));
    expect(extra).toBeDefined();
    const heard: unknown[] = [];
    extra!.cancel.onCancel((reason) => heard.push(reason));
    t.onmessage!({
      jsonrpc: '2.0',
      method: 'notifications/cancelled',
      params: { requestId: 1, reason: 'user stop' },
    });
    expect(extra!.cancel.aborted).toBe(true);
    expect(heard).toEqual(['user stop']);
    const signal = extra!.signal; // created now, already aborted with the same reason
    expect(signal.aborted).toBe(true);
    expect(signal.reason).toBe('user stop');
    release();
    await new Promise((r) => setImmediate(r));
    expect(t.sent).toEqual([]); // a cancelled call gets no response
  });

  it('aborts a signal created before the cancel, and every call when the transport closes', async () => {
    const t = fakeTransport();
    const extras: FastCallExtra[] = [];
    new FastToolCalls(
      t,
      (_request, e) => {
        extras.push(e);
        return new Promise(() => undefined);
      },
      () => undefined,
    );
    t.onmessage!(call(1));
    t.onmessage!(call(2));
    const early = extras[0]!.signal;
    t.onclose!();
    expect(early.aborted).toBe(true);
    expect((early.reason as Error).name).toBe('AbortError');
    expect(extras[1]!.cancel.aborted).toBe(true);
  });

  it('answers a finished call and forgets it (a late cancel changes nothing)', async () => {
    const t = fakeTransport();
    let extra: FastCallExtra | undefined;
    new FastToolCalls(
      t,
      async (_request, e) => {
        extra = e;
        return { content: [{ type: 'text', text: 'ok' }] };
      },
      () => undefined,
    );
    t.onmessage!(call(7));
    await new Promise((r) => setImmediate(r));
    const byId = (m: JSONRPCMessage): number => (m as { id: number }).id;
    expect([...t.sent].sort((a, b) => byId(a) - byId(b))).toEqual([
      { jsonrpc: '2.0', id: 7, result: { content: [{ type: 'text', text: 'ok' }] } },
    ]);
    t.onmessage!({
      jsonrpc: '2.0',
      method: 'notifications/cancelled',
      params: { requestId: 7 },
    });
    expect(extra!.cancel.aborted).toBe(false);
  });

  it('runs deferred work only after the response reached the stream', async () => {
    const stdin = new PassThrough();
    const stdout = new PassThrough();
    let written = '';
    stdout.on('data', (d: Buffer) => (written += d.toString()));
    const t = new StdioSessionTransport(stdin, stdout);
    new FastToolCalls(
      t,
      async (_request, e) => {
        e.defer(() => seen.push(written));
        return { content: [{ type: 'text', text: 'done' }] };
      },
      () => undefined,
    );
    const seen: string[] = [];
    await t.start();
    stdin.write(JSON.stringify(call(3)) + '\n');
    await new Promise((r) => setTimeout(r, 20));
    expect(seen).toHaveLength(1);
    expect(JSON.parse(seen[0]!)).toMatchObject({ id: 3, result: { content: [{ text: 'done' }] } });
    await t.close();
  });

  it('answers a failed handler, a failed answer and a sync throw with error responses; reports a failed send', async () => {
    const t = fakeTransport();
    const errors: string[] = [];
    const boom = Object.assign(new Error('upstream said no'), { code: -32042, data: { why: 1 } });
    new FastToolCalls(
      t,
      (request) => {
        const name = (request.params as { name: string }).name;
        if (name === 'sync') throw new Error('thrown at once');
        if (name === 'reject') return Promise.reject(boom);
        return Promise.resolve(name);
      },
      (error) => errors.push(error.message),
      (value) => {
        if (value === 'bad-answer')
          throw Object.assign(new Error('no such tool'), { code: -32602 });
        return { content: [{ type: 'text', text: String(value) }] };
      },
    );
    const named = (id: number, name: string): JSONRPCMessage => ({
      jsonrpc: '2.0',
      id,
      method: 'tools/call',
      params: { name, arguments: {} },
    });
    t.onmessage!(named(1, 'reject'));
    t.onmessage!(named(2, 'sync'));
    t.onmessage!(named(3, 'bad-answer'));
    t.onmessage!(named(4, 'fine'));
    await new Promise((r) => setImmediate(r));
    const byId = (m: JSONRPCMessage): number => (m as { id: number }).id;
    expect([...t.sent].sort((a, b) => byId(a) - byId(b))).toEqual([
      {
        jsonrpc: '2.0',
        id: 1,
        error: { code: -32042, message: 'upstream said no', data: { why: 1 } },
      },
      { jsonrpc: '2.0', id: 2, error: { code: -32603, message: 'thrown at once' } },
      { jsonrpc: '2.0', id: 3, error: { code: -32602, message: 'no such tool' } },
      { jsonrpc: '2.0', id: 4, result: { content: [{ type: 'text', text: 'fine' }] } },
    ]);
    expect(errors).toEqual([]);
    t.send = () => Promise.reject(new Error('pipe closed'));
    t.onmessage!(named(5, 'fine'));
    await new Promise((r) => setImmediate(r));
    expect(errors).toEqual(['Failed to send response: Error: pipe closed']);
  });
});

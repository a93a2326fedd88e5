import type { Transport } from '@modelcontextprotocol/sdk/shared/transport.js';
import type { JSONRPCMessage } from '@modelcontextprotocol/sdk/types.js';
import { describe, expect, it } from 'vitest';
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
    expect(t.sent).toEqual([
      { jsonrpc: '2.0', id: 7, result: { content: [{ type: 'text', text: 'ok' }] } },
    ]);
    t.onmessage!({
      jsonrpc: '2.0',
      method: 'notifications/cancelled',
      params: { requestId: 7 },
    });
    expect(extra!.cancel.aborted).toBe(false);
  });
});

/**
 * HttpSessionTransport alone, over a fake response: when a POST's requests stop counting as in
 * flight, what a stream whose client does not read may hold, and that every response of an SSE
 * batch is written before the stream ends; and that a response handed over as text (the fast
 * path's upstream line) is written as it is.
 */
import { EventEmitter } from 'node:events';
import type { ServerResponse } from 'node:http';
import type { JSONRPCMessage } from '@modelcontextprotocol/sdk/types.js';
import { afterEach, describe, expect, it, vi } from 'vitest';
import {
  HttpSessionTransport,
  MAX_ENDED_LOG_BYTES,
  RESUME_WINDOW_MS,
  nestsFewerThan,
  type UndeliveredMessage,
} from '../../src/gateway/downstream-http-transport.js';
import type { MessageKind } from '../../src/gateway/jsonrpc-message.js';

/** A response whose socket takes nothing while `stuck` (the client does not read). */
class FakeResponse extends EventEmitter {
  status = 0;
  chunks: string[] = [];
  headersSent = false;
  writableEnded = false;
  /** The connection closed under it (the client went away). */
  destroyed = false;
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
  /** The client's connection broke: nothing more reaches it. */
  cut(): void {
    this.destroyed = true;
    this.emit('close');
  }
  /** The `id:` of each SSE event written. */
  ids(): string[] {
    return this.chunks.flatMap((c) => [...c.matchAll(/^id: (.*)$/gm)].map((m) => m[1]!));
  }
  /** The JSON-RPC messages written as SSE events. */
  events(): { id?: unknown; method?: string }[] {
    return this.chunks
      .flatMap((c) => [...c.matchAll(/^data: (.*)$/gm)].map((m) => m[1]!))
      .map((d) => JSON.parse(d) as { id?: unknown; method?: string });
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

function setup(options: { maxStreamBacklogBytes?: number; keepAliveMs?: number } = {}) {
  let done = 0;
  let dropped = 0;
  const undelivered: UndeliveredMessage[] = [];
  const transport = new HttpSessionTransport('sid', {
    ...options,
    onRequestsDone: (n) => (done += n),
    onNotificationDropped: () => dropped++,
    onMessageUndelivered: (m) => undelivered.push(m),
  });
  const post = (ids: number[], version?: string): FakeResponse => {
    const res = new FakeResponse();
    const kinds: MessageKind[] = ids.map(() => 'request');
    transport.handlePost(
      res as unknown as ServerResponse,
      ids.map(request),
      kinds,
      ids.length > 1,
      version === undefined ? {} : { 'mcp-protocol-version': version },
    );
    return res;
  };
  /** A GET of the session, resuming after `lastEventId` when given. */
  const get = (lastEventId?: string): FakeResponse => {
    const res = new FakeResponse();
    transport.handleGet(res as unknown as ServerResponse, lastEventId);
    return res;
  };
  return { transport, post, get, done: () => done, dropped: () => dropped, undelivered };
}

const bigResponse = (id: number, chars: number): JSONRPCMessage => ({
  jsonrpc: '2.0',
  id,
  result: { text: 'x'.repeat(chars) },
});

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

  it('keeps no answer of a JSON batch whose connection closed (nobody can have it)', async () => {
    // Before, the answers of a batch whose client went away were kept until its last request
    // was answered, though done (not counted in flight): batches of quick calls with one slow
    // one, each cut, made the sidecar hold any number of answers.
    const t = setup();
    const res = t.post([1, 2]);
    res.cut();
    await t.transport.send(bigResponse(1, 10_000));
    expect(t.done()).toBe(1);
    await t.transport.send(response(2));
    expect(t.done()).toBe(2);
    // The big answer's text was never held for (nor written to) the dead connection.
    expect(res.chunks.join('')).not.toContain('x'.repeat(10_000));
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

  it('tells of a message with no stream to carry it, and fails a request so dropped', async () => {
    const t = setup();
    const elicit: JSONRPCMessage = {
      jsonrpc: '2.0',
      id: 7,
      method: 'elicitation/create',
      params: { message: 'secret-ish text', requestedSchema: { type: 'object' } },
    };
    // No GET stream was ever opened: a notification is dropped, told; a request rejects.
    await t.transport.send(progress(1));
    await expect(t.transport.send(elicit)).rejects.toThrow(
      /no standalone SSE stream \(GET\) open to carry this elicitation\/create/,
    );
    // Related to a call whose POST was answered as JSON and whose connection closed.
    const res = t.post([1]);
    res.cut();
    await t.transport.send(progress(2), { relatedRequestId: 1 });
    await expect(t.transport.send(elicit, { relatedRequestId: 1 })).rejects.toThrow(
      /answered as JSON and its connection has closed/,
    );
    expect(t.undelivered).toEqual([
      { reason: 'no-stream', kind: 'notification', method: 'notifications/progress' },
      { reason: 'no-stream', kind: 'request', method: 'elicitation/create' },
      { reason: 'request-gone', kind: 'notification', method: 'notifications/progress' },
      { reason: 'request-gone', kind: 'request', method: 'elicitation/create' },
    ]);
    // A standalone stream that closed is kept for the client to resume: nothing dropped.
    const get = t.get();
    get.cut();
    await t.transport.send(progress(3));
    expect(t.undelivered).toHaveLength(4);
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
      expect(data).toBe(
        `event: message\nid: 1.2\ndata: ${line(1, '{  "n":1.50, "s":"a\\nb" }')}\n\n`,
      );
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

  describe('resuming an SSE stream (Last-Event-ID)', () => {
    afterEach(() => vi.restoreAllMocks());

    /** A POST of request `id` switched to SSE by one progress event, then cut by its client. */
    async function cutStream(t: ReturnType<typeof setup>, id: number): Promise<FakeResponse> {
      const res = t.post([id]);
      await t.transport.send(progress(1), { relatedRequestId: id });
      res.cut();
      return res;
    }

    it('gives a resumed stream what came while it was away; the answer ends it', async () => {
      const t = setup();
      const res = await cutStream(t, 1);
      const [first] = res.ids();
      expect(first).toBe('1.1');
      await t.transport.send(progress(2), { relatedRequestId: 1 });
      const back = t.get(first);
      expect(back.status).toBe(200);
      await t.transport.send(progress(3), { relatedRequestId: 1 });
      await t.transport.send(response(1));
      await turn();
      expect(back.ids()).toEqual(['1.2', '1.3', '1.4']);
      expect(back.events().map((m) => m.id ?? m.method)).toEqual([
        'notifications/progress',
        'notifications/progress',
        1,
      ]);
      expect(back.writableEnded).toBe(true);
      expect(res.chunks.join('')).not.toContain('"progress":2'); // nothing went to the cut one
      expect(t.done()).toBe(0); // its answer went to the resuming connection: out once that is
      back.flushed();
      expect(t.done()).toBe(1);
    });

    it('keeps a response that came while nobody was connected, and writes it after the notifications a turn later', async () => {
      const t = setup();
      await cutStream(t, 1);
      await t.transport.send(progress(2), { relatedRequestId: 1 });
      await t.transport.send(response(1));
      await turn();
      const back = t.get('1.1');
      expect(back.ids()).toEqual(['1.2']); // the notification at once
      await turn();
      expect(back.ids()).toEqual(['1.2', '1.3']); // the response in the next write
      expect(back.writableEnded).toBe(true);
      back.flushed();
      // The client had everything: nothing to stream.
      const done = t.get('1.3');
      expect(done.status).toBe(204);
      expect(done.writableEnded).toBe(true);
    });

    it('forgets the oldest notifications past the backlog bound, never a response', async () => {
      const t = setup({ maxStreamBacklogBytes: 400 });
      await cutStream(t, 1);
      for (let n = 2; n <= 40; n++) await t.transport.send(progress(n), { relatedRequestId: 1 });
      await t.transport.send(response(1));
      await turn();
      const back = t.get('1.1');
      await turn();
      const got = back.events();
      expect(got.at(-1)!.id).toBe(1);
      const kept = got.length - 1;
      expect(kept).toBeGreaterThan(0);
      expect(kept).toBeLessThan(10); // ~100 characters each: at most 400 of them kept
      expect(back.ids().at(-2)).toBe('1.40'); // the newest ones
    });

    it('refuses a stream still open on its connection (409) and ids it never sent (400)', async () => {
      const t = setup();
      const res = t.post([1]);
      await t.transport.send(progress(1), { relatedRequestId: 1 });
      expect(t.get('1.1').status).toBe(409);
      for (const bad of ['x', '2.1', '1.9', '1', '1.1.1', ' 1.1', '01.1e3']) {
        expect(t.get(bad).status, bad).toBe(400);
      }
      expect(res.writableEnded).toBe(false); // the live stream is untouched
    });

    it('forgets an ended stream after its window (410), the oldest first past the size bound', async () => {
      let now = 1_000;
      vi.spyOn(performance, 'now').mockImplementation(() => now);
      const t = setup();
      // Three cut streams answered with ~0.4 MiB each: over the bound, the oldest goes.
      for (const id of [1, 2, 3]) {
        await cutStream(t, id);
        await t.transport.send(bigResponse(id, MAX_ENDED_LOG_BYTES * 0.4));
      }
      await turn();
      expect(t.get('1.1').status).toBe(410);
      expect(t.get('2.1').status).toBe(200);
      expect(t.get('3.1').status).toBe(200);
      // Past its window an ended stream is gone.
      now += RESUME_WINDOW_MS + 1;
      const gone = t.get('3.1');
      expect(gone.status).toBe(410);
      expect(gone.chunks.join('')).toContain('no longer kept');
      // One alone over the bound is not kept once it ended; one pending is kept whatever it holds.
      await cutStream(t, 4);
      await t.transport.send(bigResponse(4, MAX_ENDED_LOG_BYTES * 2));
      await turn();
      expect(t.get('4.1').status).toBe(410);
      const res = t.post([5]);
      await t.transport.send(progress(1), { relatedRequestId: 5 });
      res.cut();
      const back = t.get('5.1');
      await t.transport.send(bigResponse(5, MAX_ENDED_LOG_BYTES * 2));
      await turn();
      expect(back.events().map((m) => m.id)).toEqual([5]);
    });

    it('replays the standalone stream from the event given, also what came while none was open', async () => {
      const t = setup();
      const listChanged: JSONRPCMessage = {
        jsonrpc: '2.0',
        method: 'notifications/tools/list_changed',
      };
      const first = t.get();
      await t.transport.send(listChanged);
      expect(first.ids()).toEqual(['0.1']);
      first.cut();
      await t.transport.send(listChanged);
      await t.transport.send(listChanged);
      const back = t.get('0.1');
      expect(back.status).toBe(200);
      expect(back.ids()).toEqual(['0.2', '0.3']);
      // A plain GET starts with what comes next.
      back.cut();
      const fresh = t.get();
      expect(fresh.ids()).toEqual([]);
    });

    it('sends no id and keeps nothing for a POST answered as JSON', async () => {
      const t = setup();
      const res = t.post([1]);
      res.cut();
      await t.transport.send(progress(1), { relatedRequestId: 1 }); // nobody can resume it
      await t.transport.send(response(1));
      expect(res.chunks.some((c) => c.startsWith('event:'))).toBe(false); // never switched to SSE
      expect(t.get('1.1').status).toBe(400); // no stream 1 was ever numbered
      expect(t.done()).toBe(1);
    });

    it('keeps nothing once the session is closed', async () => {
      const t = setup();
      await cutStream(t, 1);
      await t.transport.close();
      expect(t.get('1.1').status).toBe(404);
    });

    it('counts an answer written to a resumed stream in flight until it has left the process', async () => {
      // Before, a request of a stream whose POST connection broke was done the moment it was
      // answered, also when a resuming GET took the answer and its client did not read it: an
      // agent could make the sidecar buffer answers without bound by maxInflightPerAgent.
      const t = setup();
      await cutStream(t, 1);
      const back = t.get('1.1');
      back.stuck = true; // the resuming client does not read
      await t.transport.send(response(1));
      await turn();
      expect(back.events().map((m) => m.id)).toEqual([1]);
      expect(t.done()).toBe(0);
      back.flushed();
      expect(t.done()).toBe(1);
    });

    it('counts the answers a cut stream keeps for resuming in flight until the stream ended', async () => {
      // Before, an answer that came after its stream's connection broke was done at once though
      // the stream's log kept it while another request of the batch ran: an agent could make the
      // sidecar hold any number of answers (batches of quick calls with one slow one, each cut),
      // past maxInflightPerAgent.
      const t = setup();
      const res = t.post([1, 2]);
      await t.transport.send(progress(1), { relatedRequestId: 1 });
      res.cut();
      await t.transport.send(bigResponse(2, 10_000));
      await turn();
      expect(t.done()).toBe(0); // kept for a client resuming the stream
      await t.transport.send(response(1));
      await turn();
      expect(t.done()).toBe(2); // the stream ended
      // And when the session closes with a cut stream still running.
      const other = t.post([3, 4]);
      await t.transport.send(progress(1), { relatedRequestId: 3 });
      other.cut();
      await t.transport.send(response(4));
      await turn();
      expect(t.done()).toBe(2);
      await t.transport.close();
      expect(t.done()).toBe(4);
    });

    it('releases the requests of a resumed stream whose resuming connection broke too', async () => {
      const t = setup();
      await cutStream(t, 1);
      const back = t.get('1.1');
      back.cut();
      await t.transport.send(response(1));
      await turn();
      expect(t.done()).toBe(1); // the stream ended with nobody connected: done
      const again = t.get('1.1');
      await turn();
      expect(again.events().map((m) => m.id)).toEqual([1]);
    });

    it('replays an ended stream to one connection at a time', async () => {
      // Before, any number of GETs could resume the same ended stream at once, each holding a
      // copy of it (up to 1 MiB) that its client need not read, none counted anywhere.
      const t = setup();
      await cutStream(t, 1);
      await t.transport.send(bigResponse(1, 10_000));
      await turn();
      const first = t.get('1.1');
      first.stuck = true;
      await turn();
      expect(first.events().map((m) => m.id)).toEqual([1]);
      const second = t.get('1.1');
      expect(second.status).toBe(409);
      expect(second.chunks.join('')).toContain('is being resumed on another connection');
      first.flushed(); // the replay left the process
      const third = t.get('1.1');
      await turn();
      expect(third.status).toBe(200);
      expect(third.events().map((m) => m.id)).toEqual([1]);
    });

    it('answers and ends a stream being resumed when the session closes during the replay', async () => {
      const t = setup();
      const res = t.post([1, 2]);
      await t.transport.send(progress(1), { relatedRequestId: 1 });
      await t.transport.send(response(2));
      await turn();
      res.cut();
      const back = t.get('1.1'); // the answer 1.2 goes out a turn later
      await t.transport.close();
      await turn();
      await turn(); // the error answer came after the replay's, a turn after it
      expect(back.events().map((m) => m.id)).toEqual([2, 1]);
      expect(JSON.stringify(back.events()[1])).toContain('the session was closed');
      expect(back.writableEnded).toBe(true);
      back.flushed();
      expect(t.done()).toBe(2);
    });

    it('writes a resumed stream in the order of its ids, also what comes while the replay waits for its turn', async () => {
      const t = setup();
      const res = t.post([1, 2]);
      await t.transport.send(progress(1), { relatedRequestId: 1 }); // 1.1: switched to SSE
      await t.transport.send(response(2));
      await turn(); // 1.2: request 2's answer
      res.cut();
      const back = t.get('1.1'); // the answer 1.2 goes out a turn later
      expect(t.get('1.1').status).toBe(409); // the stream is being resumed
      await t.transport.send(progress(2), { relatedRequestId: 1 }); // 1.3, in that turn
      await turn();
      await t.transport.send(response(1));
      await turn();
      expect(back.ids()).toEqual(['1.2', '1.3', '1.4']);
      expect(back.events().map((m) => m.id ?? m.method)).toEqual([2, 'notifications/progress', 1]);
      expect(back.writableEnded).toBe(true);
    });
  });

  describe('a POST slow to answer', () => {
    afterEach(() => vi.useRealTimers());

    it('is switched to SSE at the second look of the watch, with a priming id for 2025-11-25 clients', async () => {
      vi.useFakeTimers();
      const t = setup({ keepAliveMs: 1_001 }); // its own watch
      const fresh = t.post([1], '2025-11-25');
      const old = t.post([2], '2025-06-18');
      const quick = t.post([3], '2025-11-25');
      await t.transport.send(response(3));
      vi.advanceTimersByTime(1_001); // first look: seen waiting
      expect(fresh.status).toBe(0);
      vi.advanceTimersByTime(1_001); // second look: switched
      expect(fresh.status).toBe(200);
      expect(fresh.chunks).toEqual(['id: 1.1\ndata: \n\n']);
      expect(old.status).toBe(200);
      expect(old.chunks).toEqual([': keep-alive\n\n']);
      expect(quick.chunks).toEqual([JSON.stringify(response(3))]); // answered as JSON, untouched
      // The priming id is the client's cursor: a cut, then the answer, then a resume from it.
      fresh.cut();
      await t.transport.send(response(1));
      vi.advanceTimersByTime(0);
      const back = t.get('1.1');
      vi.advanceTimersByTime(0);
      expect(back.events().map((m) => m.id)).toEqual([1]);
      await t.transport.send(response(2));
      vi.advanceTimersByTime(0);
      expect(old.events().map((m) => m.id)).toEqual([2]);
      expect(old.writableEnded).toBe(true);
    });

    it("looks at a batch's POST once per look, not once per request it waits for", () => {
      vi.useFakeTimers();
      const t = setup({ keepAliveMs: 1_003 });
      const batch = t.post([1, 2, 3], '2025-03-26');
      vi.advanceTimersByTime(1_003); // first look: seen waiting, not switched
      expect(batch.status).toBe(0);
      vi.advanceTimersByTime(1_003);
      expect(batch.status).toBe(200);
      expect(batch.chunks).toEqual([': keep-alive\n\n']);
    });

    it('stops watching a session with nothing waiting, and a closed one', async () => {
      vi.useFakeTimers();
      const t = setup({ keepAliveMs: 1_002 });
      const res = t.post([1]);
      await t.transport.send(response(1));
      vi.advanceTimersByTime(1_002 * 3);
      expect(vi.getTimerCount()).toBe(0); // the watch's timer is gone
      t.post([2]);
      expect(vi.getTimerCount()).toBe(1);
      await t.transport.close();
      vi.advanceTimersByTime(1_002);
      expect(vi.getTimerCount()).toBe(0);
      expect(res.status).toBe(200);
    });

    it('lets go of a closed session at once, not at the next look of the watch', async () => {
      // Before, a session closed while a POST waited stayed in the watch (and so in memory, with
      // everything its transport reaches) until the next look: up to http.keepAliveSeconds.
      vi.useFakeTimers();
      const t = setup({ keepAliveMs: 1_003 });
      t.post([1]);
      const other = setup({ keepAliveMs: 1_003 });
      other.post([1]);
      expect(vi.getTimerCount()).toBe(1); // one watch for both
      await t.transport.close();
      expect(vi.getTimerCount()).toBe(1); // the other still waits
      await other.transport.close();
      expect(vi.getTimerCount()).toBe(0); // no look needed to stop it
    });
  });
});

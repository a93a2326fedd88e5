import { createServer } from 'node:http';
import { connect } from 'node:net';
import type { JSONRPCMessage } from '@modelcontextprotocol/sdk/types.js';
import { describe, expect, it } from 'vitest';
import { LineWriter, type LineFlush, type LineSink } from '../../src/gateway/line-writer.js';

/** A sink that records each write(2) it would make. */
function recordingSink(): LineSink & { writes: string[] } {
  const writes: string[] = [];
  return {
    writes,
    write(chunk: string) {
      writes.push(chunk);
      return true;
    },
    once: () => undefined,
  };
}

const ping = (id: number): JSONRPCMessage => ({ jsonrpc: '2.0', id, method: 'ping' });

/**
 * Two HTTP requests that reach a server in one poll phase, each sending a message from its own
 * request callback, as the gateway forwards the calls of concurrent HTTP requests upstream.
 */
async function twoRequestsInOnePhase(flush: LineFlush): Promise<string[]> {
  const sink = recordingSink();
  const writer = new LineWriter(() => sink, flush);
  let arrived = 0;
  let accepted = 0;
  let bothAccepted: () => void = () => undefined;
  const connected = new Promise<void>((r) => (bothAccepted = r));
  const server = createServer((_req, res) => {
    void writer.send(ping(++arrived));
    res.end();
  });
  server.on('connection', () => {
    if (++accepted === 2) bothAccepted();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const { port } = server.address() as { port: number };
  const sockets = [connect(port, '127.0.0.1'), connect(port, '127.0.0.1')];
  await Promise.all(sockets.map((s) => new Promise((r) => s.once('connect', r))));
  await connected;
  const answered = sockets.map(
    (s) =>
      new Promise<void>((resolve) => {
        s.setEncoding('utf8');
        s.on('data', (d: string) => {
          if (d.includes('HTTP/1.1 200')) resolve();
        });
      }),
  );
  // Both requests are in the server's socket buffers before its loop polls again.
  for (const s of sockets) s.write('GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
  await Promise.all(answered);
  await new Promise((r) => setImmediate(r));
  for (const s of sockets) s.destroy();
  await new Promise<void>((r) => server.close(() => r()));
  return sink.writes;
}

describe('LineWriter', () => {
  it('joins the messages of one synchronous run into one write', async () => {
    const sink = recordingSink();
    const writer = new LineWriter(() => sink);
    await Promise.all([writer.send(ping(1)), writer.send(ping(2))]);
    await new Promise((r) => process.nextTick(r));
    expect(sink.writes).toEqual([
      '{"jsonrpc":"2.0","id":1,"method":"ping"}\n{"jsonrpc":"2.0","id":2,"method":"ping"}\n',
    ]);
  });

  it("'poll': the messages of separate I/O callbacks of one poll phase go out in one write", async () => {
    const writes = await twoRequestsInOnePhase('poll');
    expect(writes).toEqual([
      '{"jsonrpc":"2.0","id":1,"method":"ping"}\n{"jsonrpc":"2.0","id":2,"method":"ping"}\n',
    ]);
  });

  it("'ticks' (the default) writes after each callback's ticks", async () => {
    const writes = await twoRequestsInOnePhase('ticks');
    expect(writes).toEqual([
      '{"jsonrpc":"2.0","id":1,"method":"ping"}\n',
      '{"jsonrpc":"2.0","id":2,"method":"ping"}\n',
    ]);
  });

  it('flush() writes at once what was queued, and the scheduled flush then writes nothing', async () => {
    const sink = recordingSink();
    const writer = new LineWriter(() => sink, 'poll');
    void writer.send(ping(1));
    writer.flush();
    expect(sink.writes).toHaveLength(1);
    await new Promise((r) => setImmediate(r));
    expect(sink.writes).toHaveLength(1);
  });
});

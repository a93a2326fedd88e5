import { createServer, request, type IncomingMessage, type Server } from 'node:http';
import { connect } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { readBody } from '../../src/gateway/http-body.js';

let server: Server | undefined;

afterEach(async () => {
  await new Promise<void>((r) => (server ? server.close(() => r()) : r()));
  server = undefined;
});

/** A server handing each request to `onRequest`; resolves with its port. */
async function serve(onRequest: (req: IncomingMessage) => Promise<string>): Promise<number> {
  server = createServer((req, res) => {
    onRequest(req).then(
      (text) => res.end(text),
      (error: unknown) => res.end(`error: ${(error as Error).message}`),
    );
  });
  await new Promise<void>((r) => server!.listen(0, '127.0.0.1', () => r()));
  return (server.address() as { port: number }).port;
}

describe('readBody', () => {
  it('makes no error object for a body it read whole (the request still closes after)', async () => {
    // `close` follows every request; an error made for it each time (with its stack trace) was
    // a measurable part of an HTTP call. Errors the module makes are counted here.
    const made: number[] = [];
    const RealError = globalThis.Error;
    const port = await serve(async (req) => {
      let count = 0;
      globalThis.Error = new Proxy(RealError, {
        construct(target, args, newTarget) {
          count++;
          return Reflect.construct(target, args, newTarget) as object;
        },
      });
      try {
        const text = await readBody(req, { limit: 1024 });
        if (!req.destroyed) await new Promise((r) => req.once('close', r));
        await new Promise((r) => setImmediate(r));
        return text;
      } finally {
        globalThis.Error = RealError;
        made.push(count);
      }
    });
    const answer = await new Promise<string>((resolve, reject) => {
      const req = request({ port, host: '127.0.0.1', method: 'POST' }, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (body += c));
        res.on('end', () => resolve(body));
      });
      req.on('error', reject);
      req.end('{"hello":"world"}');
    });
    expect(answer).toBe('{"hello":"world"}');
    expect(made).toEqual([0]);
  });

  it('takes a body that has already arrived whole at once, without listeners, and bounds it', async () => {
    const seen: { complete: boolean; dataListeners: number }[] = [];
    const port = await serve(async (req) => {
      // One turn later the parser has delivered a body sent with its headers.
      await new Promise((r) => setImmediate(r));
      const limit = Number(req.headers['x-limit']);
      const reading = readBody(req, { limit });
      seen.push({ complete: req.complete, dataListeners: req.listenerCount('data') });
      return reading.catch((error: Error) => `${error.constructor.name}`);
    });
    const send = (body: string, limit: number): Promise<string> =>
      new Promise<string>((resolve, reject) => {
        const req = request(
          { port, host: '127.0.0.1', method: 'POST', headers: { 'x-limit': String(limit) } },
          (res) => {
            let text = '';
            res.setEncoding('utf8');
            res.on('data', (c: string) => (text += c));
            res.on('end', () => resolve(text));
          },
        );
        req.on('error', reject);
        req.end(body);
      });
    expect(await send('{"naïve":"🚀"}', 1024)).toBe('{"naïve":"🚀"}');
    expect(await send('', 1024)).toBe('');
    // Over the limit: the listening reader answers it (413), as for a body still arriving.
    expect(await send('x'.repeat(100), 10)).toBe('PayloadTooLargeError');
    expect(seen).toEqual([
      { complete: true, dataListeners: 0 },
      { complete: true, dataListeners: 0 },
      { complete: true, dataListeners: 1 },
    ]);
  });

  it('still ends with an error when the client goes away mid-body', async () => {
    let outcome: Promise<string> | undefined;
    const arrived = new Promise<void>((resolve) => {
      void serve(async (req) => {
        outcome = readBody(req, { limit: 1024, timeoutMs: 0 });
        resolve();
        return outcome;
      }).then((port) => {
        const socket = connect(port, '127.0.0.1', () => {
          socket.write(
            'POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{"only":"part',
            () => setTimeout(() => socket.destroy(), 50),
          );
        });
        socket.on('error', () => undefined);
      });
    });
    await arrived;
    // Node reports the abort (`aborted`) or the close comes first: either way the read ends.
    await expect(outcome).rejects.toThrow(/aborted|the client closed the connection mid-body/);
  });
});

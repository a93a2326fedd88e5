/**
 * `agent-fabric mcp` when the sidecar (or what stands between) answers a call's POST or the
 * resumption of its stream with something final: a real sidecar with a slow stdio upstream, a
 * TCP proxy that cuts the call's stream and answers its resumptions, the official SDK client as
 * the agent on the bridge's stdio (or its raw stdio transport, to count the answers per id).
 */
import { readFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import { connect, createServer as createNetServer, type Socket } from 'node:net';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import {
  getDefaultEnvironment,
  StdioClientTransport,
} from '@modelcontextprotocol/sdk/client/stdio.js';
import { LATEST_PROTOCOL_VERSION, type JSONRPCMessage } from '@modelcontextprotocol/sdk/types.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { reconnectionFor, StreamWatch } from '../../src/cli/bridge-streams.js';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  bound,
  bridgeViaProxy,
  cuttingProxy,
  slowCall,
  slowCallOnStream,
} from '../fixtures/gateway/cutting-proxy.js';
import {
  agentToken,
  CLI_MAIN,
  closeSidecar,
  INIT,
  startSlowSidecar,
  text,
  TSX,
  until,
} from '../fixtures/gateway/harness.js';

/** The proxy's port as a URL of the sidecar's MCP endpoint. */
function via(sidecar: Sidecar, proxy: { address(): unknown }): URL {
  const url = new URL(sidecar.url!);
  url.port = String((proxy.address() as { port: number }).port);
  return url;
}

describe('agent-fabric mcp: a resumption answered with a final status (real sidecar, TCP proxy)', () => {
  let sidecar: Sidecar;
  let ran: string;

  beforeAll(async () => {
    ({ sidecar, ran } = await startSlowSidecar('bridge-refused'));
  });
  afterAll(() => closeSidecar(sidecar));

  for (const [status, says] of [
    [410, "the sidecar refused to resume the request's stream (HTTP 410)"],
    [400, "the sidecar refused to resume the request's stream (HTTP 400)"],
    [404, 'the sidecar no longer knows the session'],
    [307, "the sidecar refused to resume the request's stream (HTTP 307, a redirect"],
  ] as const) {
    it(`answers the call with an error at the first HTTP ${status}, not after --resume-seconds`, async () => {
      // The bridge would resume for 10 minutes; the agent waits 30 s. Before, every answer but
      // 405 counted as one failed attempt, and the call waited for the whole resume time.
      const { client, requests, proxy } = await bridgeViaProxy(
        sidecar,
        { status, location: 'http://127.0.0.1:9/elsewhere' },
        ['mcp', '--resume-seconds', '600'],
      );
      try {
        const { outcome } = await slowCallOnStream(client, ran, 30_000);
        const error = await outcome;
        expect(error).toContain(says);
        expect(error).toContain('its answer is lost');
        // One resumption was asked for, and none after it; the bridge goes on.
        expect(requests.filter((r) => /\r\nlast-event-id:/i.test(r))).toHaveLength(1);
        const next = await client.callTool(
          { name: 's__slow', arguments: { label: `after-${status}`, ms: 10 } },
          undefined,
          { timeout: 20_000 },
        );
        expect(text(next)).toBe(`slept after-${status}`);
        expect(requests.filter((r) => /\r\nlast-event-id:/i.test(r))).toHaveLength(1);
      } finally {
        await client.close();
        await new Promise((resolve) => proxy.close(resolve));
      }
    }, 60_000);
  }

  it('answers the call with an error when a resumption is answered 200 with no stream (a JSON or HTML page)', async () => {
    // A proxy's (or a captive portal's) own page in place of the stream. Before, the SDK
    // transport read it as an SSE stream with no events that ended, and resumed it again at once,
    // each time counted as a resumption the sidecar sent on: the agent's call was never answered.
    const { client, requests, proxy } = await bridgeViaProxy(
      sidecar,
      { status: 200, contentType: 'text/html', body: '<html><body>Sign in</body></html>' },
      ['mcp', '--resume-seconds', '600'],
    );
    try {
      const { outcome } = await slowCallOnStream(client, ran, 20_000);
      const error = await outcome;
      expect(error).toContain(
        "the sidecar answered the resumption of the request's stream with no stream (HTTP 200, text/html)",
      );
      expect(error).toContain('its answer is lost');
      expect(requests.filter((r) => /\r\nlast-event-id:/i.test(r))).toHaveLength(1);
    } finally {
      await client.close();
      await new Promise((resolve) => proxy.close(resolve));
    }
  }, 60_000);

  it('keeps nothing of a stream it gave up (the SDK transport tries it no more)', async () => {
    // The bridge's fetch under the official SDK transport, on a session of the latest version
    // (priming event ids), through a proxy that cuts every resumption.
    const requests: string[] = [];
    const proxy = await cuttingProxy(Number(new URL(sidecar.url!).port), requests, 'cut-all');
    const givenUp: string[] = [];
    const watch = new StreamWatch({
      resumeMs: 2_000,
      reconnection: reconnectionFor(2_000),
      onLost: () => undefined,
      onGiveUp: (stream) => givenUp.push(stream),
    });
    const transport = new StreamableHTTPClientTransport(via(sidecar, proxy), {
      requestInit: { headers: { authorization: `Bearer ${agentToken(sidecar, 'a')}` } },
      reconnectionOptions: reconnectionFor(2_000),
      fetch: watch.fetch,
    });
    const answers: JSONRPCMessage[] = [];
    transport.onmessage = (m) => answers.push(m);
    try {
      await transport.start();
      await transport.send({
        ...INIT,
        params: { ...INIT.params, protocolVersion: LATEST_PROTOCOL_VERSION },
      } as JSONRPCMessage);
      transport.setProtocolVersion(LATEST_PROTOCOL_VERSION);
      await transport.send({ jsonrpc: '2.0', method: 'notifications/initialized' });
      await transport.send(slowCall(2, 'kept', 4_000));
      await until(() => givenUp.length > 0, 30_000);
      // Before, the given-up stream stayed in the watch for the session's life (one entry per
      // such stream), its later attempts answered from there.
      expect(watch.streams).toBe(0);
      const resumes = requests.filter((r) => /\r\nlast-event-id:/i.test(r)).length;
      await until(() => readFileSync(ran, 'utf8').includes('end kept'), 30_000);
      expect(requests.filter((r) => /\r\nlast-event-id:/i.test(r))).toHaveLength(resumes);
      expect(givenUp).toHaveLength(1);
      expect(answers.some((m) => 'id' in m && m.id === 2)).toBe(false);
    } finally {
      await transport.close();
      await new Promise((resolve) => proxy.close(resolve));
    }
  }, 60_000);
});

/**
 * The bridge's stdio under the official SDK's raw transport (so every answer is seen, also a
 * second one for an id) for `url` with `token`; `answers` collects the answers per id.
 */
async function rawBridge(
  url: URL,
  token: string,
): Promise<{ transport: StdioClientTransport; answers: Map<unknown, JSONRPCMessage[]> }> {
  const transport = new StdioClientTransport({
    command: process.execPath,
    args: ['--import', TSX, CLI_MAIN, 'mcp'],
    stderr: 'pipe',
    env: { ...getDefaultEnvironment(), FABRIC_AGENT_TOKEN: token, FABRIC_URL: url.toString() },
  });
  const answers = new Map<unknown, JSONRPCMessage[]>();
  transport.onmessage = (m) => {
    if ('id' in m && !('method' in m)) answers.set(m.id, [...(answers.get(m.id) ?? []), m]);
  };
  await transport.start();
  return { transport, answers };
}

/**
 * Waits for the answer to the call 2 sent on `transport`, an error saying `says`; then the call 3
 * (`next`) is answered: the bridge goes on. One answer per request (1, 2, 3).
 */
async function failedThenNext(
  transport: StdioClientTransport,
  answers: Map<unknown, JSONRPCMessage[]>,
  says: string,
): Promise<void> {
  await until(() => answers.has(2), 20_000);
  const error = (answers.get(2)![0] as { error?: { message?: string } }).error?.message;
  expect(error).toContain(says);
  await transport.send(slowCall(3, 'next', 10));
  await until(() => answers.has(3), 20_000);
  expect(JSON.stringify(answers.get(3))).toContain('slept next');
  for (const id of [1, 2, 3]) expect(answers.get(id)).toHaveLength(1);
}

describe('agent-fabric mcp: a call whose POST is answered with no body (real sidecar, TCP proxy)', () => {
  let sidecar: Sidecar;

  beforeAll(async () => {
    ({ sidecar } = await startSlowSidecar('bridge-no-body'));
  });
  afterAll(() => closeSidecar(sidecar));

  for (const status of [202, 204]) {
    it(`answers the call with an error once at HTTP ${status}, and goes on`, async () => {
      const requests: string[] = [];
      const proxy = await cuttingProxy(
        Number(new URL(sidecar.url!).port),
        requests,
        'none',
        status,
      );
      const { transport, answers } = await rawBridge(via(sidecar, proxy), agentToken(sidecar, 'a'));
      try {
        await transport.send(INIT as JSONRPCMessage);
        await until(() => answers.has(1));
        await transport.send({ jsonrpc: '2.0', method: 'notifications/initialized' });
        await transport.send(slowCall(2, 'void', 10));
        // Before: HTTP 202 left the call waiting for good (the SDK transport takes it for "no
        // answer due"); 204 was answered "Unexpected content type: null".
        await failedThenNext(
          transport,
          answers,
          `the sidecar answered the request's POST with HTTP ${status} and no answer`,
        );
      } finally {
        await transport.close();
        await new Promise((resolve) => proxy.close(resolve));
      }
    }, 60_000);
  }

  it("fails the agent's request at once when a renewal's initialize is answered 202, not after the bridge's 30 s wait, and renews with the next", async () => {
    const requests: string[] = [];
    // The bridge's own initialize (a renewal's: its id is the bridge's), answered 202 once.
    const proxy = await cuttingProxy(Number(new URL(sidecar.url!).port), requests, 'none', {
      status: 202,
      request: /"id":"agent-fabric-mcp\/[^"]+","method":"initialize"/,
    });
    const { transport, answers } = await rawBridge(via(sidecar, proxy), agentToken(sidecar, 'a'));
    try {
      await transport.send(INIT as JSONRPCMessage);
      await until(() => answers.has(1));
      await transport.send({ jsonrpc: '2.0', method: 'notifications/initialized' });
      // Taken (202): the standalone stream follows it.
      await until(() => requests.some((r) => /^GET [\s\S]*\r\nmcp-session-id:/i.test(r)));
      // The sidecar forgets the session: the next call's POST gets 404 and opens a new one.
      for (const session of sidecar.gateway.sessions) await session.close();
      await transport.send(slowCall(2, 'renewed', 10));
      // Before: the renewal waited 30 s for an answer that could not come, and so did the call
      // (then answered "did not answer initialize within 30000 ms"). The next message tries
      // again, and the sidecar's new session answers it.
      await failedThenNext(
        transport,
        answers,
        "could not forward the request: initialize: the sidecar answered the request's POST with HTTP 202 and no answer",
      );
    } finally {
      await transport.close();
      await new Promise((resolve) => proxy.close(resolve));
    }
  }, 60_000);
});

describe('agent-fabric mcp: a JSON-RPC batch, a cancelled request (real sidecar)', () => {
  let sidecar: Sidecar;
  let ran: string;

  beforeAll(async () => {
    ({ sidecar, ran } = await startSlowSidecar('bridge-batch'));
  });
  afterAll(() => closeSidecar(sidecar));

  it('answers every request of it once (refused: one message a line), and sends none of it on', async () => {
    const requests: string[] = [];
    const proxy = await cuttingProxy(Number(new URL(sidecar.url!).port), requests);
    const { transport, answers } = await rawBridge(via(sidecar, proxy), agentToken(sidecar, 'a'));
    try {
      await transport.send(INIT as JSONRPCMessage);
      await until(() => answers.has(1));
      await transport.send({ jsonrpc: '2.0', method: 'notifications/initialized' });
      const posts = (): number => requests.filter((r) => r.startsWith('POST ')).length;
      await until(() => posts() === 2); // initialize, initialized
      await transport.send([
        slowCall(2, 'b2', 10),
        slowCall(3, 'b3', 10),
      ] as unknown as JSONRPCMessage);
      await until(() => answers.has(2) && answers.has(3), 20_000);
      for (const id of [2, 3]) {
        expect(answers.get(id)).toHaveLength(1);
        expect(JSON.stringify(answers.get(id))).toContain('batches are not supported over stdio');
      }
      // The bridge sends one message a POST: no batch reached the sidecar (so none is unwatched).
      expect(posts()).toBe(2);
      await transport.send(slowCall(4, 'single', 10));
      await until(() => answers.has(4), 20_000);
      expect(JSON.stringify(answers.get(4))).toContain('slept single');
    } finally {
      await transport.close();
      await new Promise((resolve) => proxy.close(resolve));
    }
  }, 60_000);

  it('does not send again a request the agent cancelled while its POST was out, when that POST finds the session gone', async () => {
    // A proxy that holds the first POST of the call labelled `held` and, once told, answers it
    // 404 (the session gone, as after a sidecar restart); everything else goes through.
    const port = Number(new URL(sidecar.url!).port);
    const posts: string[] = [];
    let release: (() => void) | undefined;
    const proxy = createNetServer((agentSide: Socket) => {
      const sidecarSide = connect(port, '127.0.0.1');
      let holding = false;
      agentSide.on('data', (chunk: Buffer) => {
        const s = chunk.toString('latin1');
        if (/^POST /.test(s)) posts.push(s);
        if (holding) return;
        if (release === undefined && /^POST [\s\S]*"label":"held"/.test(s)) {
          holding = true;
          release = () =>
            agentSide.end(
              'HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n',
            );
          return;
        }
        sidecarSide.write(chunk);
      });
      sidecarSide.on('data', (chunk: Buffer) => agentSide.write(chunk));
      bound(agentSide, sidecarSide);
    });
    await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', resolve));
    const { transport, answers } = await rawBridge(via(sidecar, proxy), agentToken(sidecar, 'a'));
    try {
      await transport.send(INIT as JSONRPCMessage);
      await until(() => answers.has(1));
      await transport.send({ jsonrpc: '2.0', method: 'notifications/initialized' });
      await transport.send(slowCall(2, 'held', 10));
      await until(() => release !== undefined);
      await transport.send({
        jsonrpc: '2.0',
        method: 'notifications/cancelled',
        params: { requestId: 2, reason: 'not needed' },
      });
      await until(() => posts.some((p) => p.includes('notifications/cancelled')));
      release!();
      // A later call, on the session the bridge has then (renewed or not), is answered.
      await transport.send(slowCall(3, 'later', 300));
      await until(() => answers.has(3), 20_000);
      expect(JSON.stringify(answers.get(3))).toContain('slept later');
      // Before, the 404 renewed the session and the cancelled call was sent again, and ran.
      expect(readFileSync(ran, 'utf8')).not.toContain('start held');
      expect(answers.has(2)).toBe(false);
    } finally {
      await transport.close();
      await new Promise((resolve) => proxy.close(resolve));
    }
  }, 60_000);

  it('gives no answer to a request the agent cancelled, also when its stream then ends', async () => {
    const { transport, answers } = await rawBridge(new URL(sidecar.url!), agentToken(sidecar, 'a'));
    try {
      await transport.send(INIT as JSONRPCMessage); // MCP 2025-06-18: no event ids
      await until(() => answers.has(1));
      await transport.send({ jsonrpc: '2.0', method: 'notifications/initialized' });
      await transport.send(slowCall(2, 'dropped', 2_000));
      await until(() => readFileSync(ran, 'utf8').includes('start dropped'));
      await new Promise((resolve) => setTimeout(resolve, 600)); // on an SSE stream by now
      await transport.send({
        jsonrpc: '2.0',
        method: 'notifications/cancelled',
        params: { requestId: 2, reason: 'not needed' },
      });
      // The sidecar ends the call's stream at once, with no answer; the upstream runs on.
      await until(() => readFileSync(ran, 'utf8').includes('end dropped'), 20_000);
      await transport.send({ jsonrpc: '2.0', id: 3, method: 'ping' });
      await until(() => answers.has(3), 20_000);
      // Before, the stream's end was taken for a cut: the cancelled request was answered with
      // an error saying the connection broke.
      expect(answers.has(2)).toBe(false);
    } finally {
      await transport.close();
    }
  }, 60_000);
});

/** A plain HTTP server recording each request (method, path, whether it had `authorization`). */
async function recorder(
  answer: (req: IncomingMessage) => { status: number; location?: string },
): Promise<{ server: Server; seen: { method: string; path: string; auth: boolean }[] }> {
  const seen: { method: string; path: string; auth: boolean }[] = [];
  const server = createServer((req, res) => {
    seen.push({
      method: req.method!,
      path: req.url!,
      auth: req.headers.authorization !== undefined,
    });
    req.resume();
    const { status, location } = answer(req);
    res.writeHead(status, location === undefined ? {} : { location }).end();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { server, seen };
}

describe('agent-fabric mcp: what answers at --url redirects (real HTTP servers)', () => {
  it('answers a request redirected to another port, or another path, with an error, and sends nothing there', async () => {
    const elsewhere = await recorder(() => ({ status: 405 }));
    const port = (elsewhere.server.address() as { port: number }).port;
    for (const target of ['/moved', `http://127.0.0.1:${port}/mcp`]) {
      // The probe's GET (not the bridge's) is answered 405: the bridge starts.
      const redirecting = await recorder((req) =>
        req.method === 'GET' || req.url === '/moved'
          ? { status: 405 }
          : { status: 307, location: target },
      );
      const url = new URL(
        `http://127.0.0.1:${(redirecting.server.address() as { port: number }).port}/mcp`,
      );
      const { transport, answers } = await rawBridge(url, 'fab_agent_token_for_redirects');
      try {
        await transport.send(INIT as JSONRPCMessage);
        await until(() => answers.has(1), 20_000);
        const error = (answers.get(1)![0] as { error?: { message?: string } }).error?.message;
        expect(error).toContain('HTTP 307, a redirect');
        expect(answers.get(1)).toHaveLength(1);
        // Before, a redirect within the origin was followed with the agent's token.
        expect(redirecting.seen.filter((r) => r.path === '/moved')).toEqual([]);
      } finally {
        await transport.close();
        await new Promise((resolve) => redirecting.server.close(resolve));
      }
    }
    // Nothing of the bridge's, and never the agent's token, reached the other port.
    expect(elsewhere.seen.filter((r) => r.auth)).toEqual([]);
    expect(elsewhere.seen.filter((r) => r.method !== 'GET')).toEqual([]);
    await new Promise((resolve) => elsewhere.server.close(resolve));
  }, 60_000);
});

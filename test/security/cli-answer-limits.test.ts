/**
 * Found in review: what the operator commands did with a server at --url that misbehaves (a
 * wrong --url, a hung or hostile sidecar).
 * - Answers were read whole, without a bound: an answer that never ends (or a stream line that
 *   never ends, or an error body) was buffered until memory ran out. Now an answer (and each
 *   line of a stream) larger than --max-answer-mib (default 64) ends the command with exit 1,
 *   naming the limit, and the CLI stops reading.
 * - Nothing bounded the wait: a server that accepted the connection and never answered, or
 *   stalled in the middle of its answer, left the CLI waiting for Node's default (300 s) or
 *   forever. Now --request-timeout (env FABRIC_REQUEST_TIMEOUT, default 30 s) bounds the wait
 *   for the answer's headers and each wait for more of its body (a stream's keep-alive lines
 *   count): exit 3, naming the limit. A wrong value is a usage error (exit 2).
 * - A body cut in the middle was `TypeError: terminated` (exit 1), an answer of the wrong shape
 *   a bare decoding error, and an error message of any length was repeated whole. Now: the
 *   connection lost (exit 3), the message it is not (exit 1), the error message cut at 4096.
 * - A --url that is not a URL was repeated whole in the error line (it may be a token pasted in
 *   the wrong place), and the message refusing a URL with a password repeated its query. Now
 *   neither is repeated; `mcp`'s messages name its URL without the query either.
 * Real CLI processes against real HTTP servers on free ports.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, describe, expect, it } from 'vitest';
import { runCli } from '../fixtures/cli-process.js';
import { ADMIN_TOKEN } from '../fixtures/gateway/harness.js';

const servers: Server[] = [];
const sockets = new Set<Socket>();
afterEach(async () => {
  for (const s of sockets) s.destroy();
  sockets.clear();
  for (const s of servers.splice(0)) await new Promise((resolve) => s.close(resolve));
});

/** A server on a free port whose every request `handle` answers (or not). */
async function server(
  handle: (req: IncomingMessage, res: ServerResponse) => void,
): Promise<string> {
  const s = createServer(handle);
  s.on('connection', (socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
  });
  servers.push(s);
  await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve));
  return `http://127.0.0.1:${(s.address() as AddressInfo).port}`;
}

const MiB = 1024 * 1024;
const ENV = { FABRIC_ADMIN_TOKEN: ADMIN_TOKEN };

/**
 * Writes `total` bytes of JSON white space to `res` (as fast as it is read), then `tail`; `sent`
 * counts what the socket took. Stops when the client goes away.
 */
function pad(res: ServerResponse, total: number, tail: string, sent: { bytes: number }): void {
  const chunk = Buffer.alloc(256 * 1024, 0x20);
  const more = (): void => {
    while (sent.bytes < total) {
      if (res.destroyed) return;
      sent.bytes += chunk.length;
      if (!res.write(chunk)) {
        res.once('drain', more);
        return;
      }
    }
    res.end(tail);
  };
  res.on('close', () => res.removeAllListeners('drain'));
  more();
}

describe('agent-fabric: the size of an answer is bounded', () => {
  it('an answer over the default 64 MiB: exit 1 naming the limit, and the CLI stops reading', async () => {
    const sent = { bytes: 0 };
    // Valid JSON (white space, then the answer): read whole, it would have been taken.
    const url = await server((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      pad(res, 80 * MiB, '{"pools":[]}', sent);
    });
    const run = await runCli(['pools', '--url', url], ENV);
    expect(run.code, run.err).toBe(1);
    expect(run.err.trim()).toBe(
      'agent-fabric: POST /api/fabric.v1.FabricService/ListPools: the answer is larger than 64 MiB (--max-answer-mib): not read further',
    );
    expect(sent.bytes).toBeLessThan(80 * MiB);
  }, 120_000);

  it('--max-answer-mib and FABRIC_MAX_ANSWER_MIB set the bound; a Content-Length over it is refused unread', async () => {
    const url = await server((req, res) => {
      if (req.url === '/metrics') {
        res.writeHead(200, { 'content-type': 'text/plain', 'content-length': String(5 * MiB) });
        res.end(' '.repeat(5 * MiB));
        return;
      }
      res.writeHead(200, { 'content-type': 'application/json' });
      pad(res, 3 * MiB, '{}', { bytes: 0 });
    });
    const flag = await runCli(['pools', '--url', url, '--max-answer-mib', '2'], ENV);
    expect(flag.code, flag.err).toBe(1);
    expect(flag.err).toContain('the answer is larger than 2 MiB (--max-answer-mib)');
    const env = await runCli(['pools', '--url', url], { ...ENV, FABRIC_MAX_ANSWER_MIB: '2' });
    expect(env.code, env.err).toBe(1);
    expect(env.err).toContain('the answer is larger than 2 MiB (FABRIC_MAX_ANSWER_MIB)');
    // Under the bound the same answer is taken.
    const taken = await runCli(['pools', '--url', url, '--max-answer-mib', '4'], ENV);
    expect(taken.code, taken.err).toBe(0);
    expect(taken.out.trim()).toBe('(none)');
    // status reads GET /metrics last: refused on its Content-Length.
    const status = await runCli(['status', '--url', url, '--max-answer-mib', '4'], ENV);
    expect(status.code).toBe(1);
    expect(status.err.trim()).toBe(
      'agent-fabric: GET /metrics: the answer is larger than 4 MiB (--max-answer-mib): not read',
    );
  }, 120_000);

  it('an error answer that never ends and a stream line that never ends: exit 1, bounded', async () => {
    const sent = { bytes: 0 };
    const url = await server((req, res) => {
      if (req.url?.endsWith('/Watch')) {
        res.writeHead(200, { 'content-type': 'application/x-ndjson' });
        res.write('\n');
        pad(res, Number.MAX_SAFE_INTEGER, '', sent);
        return;
      }
      res.writeHead(500, { 'content-type': 'application/json' });
      pad(res, Number.MAX_SAFE_INTEGER, '', sent);
    });
    const refused = await runCli(['pools', '--url', url, '--max-answer-mib', '1'], ENV);
    expect(refused.code, refused.err).toBe(1);
    expect(refused.err).toContain('the answer is larger than 1 MiB (--max-answer-mib)');
    const watch = await runCli(['approvals', 'watch', '--url', url, '--max-answer-mib', '1'], ENV);
    expect(watch.code, watch.err).toBe(1);
    expect(watch.err).toContain(
      'POST /api/fabric.v1.ApprovalService/Watch: a line of the stream is larger than 1 MiB (--max-answer-mib): not read further',
    );
  }, 120_000);
});

describe('agent-fabric: an answer that is not one', () => {
  it('a wrong shape is exit 1 naming the message; an error message is cut; an answer cut in the middle is exit 3', async () => {
    const url = await server((req, res) => {
      if (req.url?.endsWith('/ListAgents')) {
        // An error message of a MiB: one line of 4096 characters at most on the terminal.
        res.writeHead(400, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ code: 'FABRIC_ERR_X', message: 'y'.repeat(MiB) }));
        return;
      }
      res.writeHead(200, { 'content-type': 'application/json' });
      if (req.url?.endsWith('/ListPools')) {
        res.end('{"pools":7}');
        return;
      }
      res.write('{"approvals":[');
      setImmediate(() => res.socket?.destroy());
    });
    const shape = await runCli(['pools', '--url', url], ENV);
    expect(shape.code, shape.err).toBe(1);
    expect(shape.err).toContain(
      'POST /api/fabric.v1.FabricService/ListPools: the sidecar sent an answer that is not a fabric.v1.ListPoolsResponse',
    );
    const long = await runCli(['agents', '--url', url], ENV);
    expect(long.code).toBe(1);
    expect(long.err.trim()).toBe(
      `agent-fabric: POST /api/fabric.v1.FabricService/ListAgents: FABRIC_ERR_X: ${'y'.repeat(4095)}…`,
    );
    const cut = await runCli(['approvals', 'list', '--url', url], ENV);
    expect(cut.code, cut.err).toBe(3);
    expect(cut.err).toContain(
      'POST /api/fabric.v1.ApprovalService/ListApprovals: the connection to the sidecar was lost',
    );
  }, 120_000);
});

describe('agent-fabric: the wait for an answer is bounded', () => {
  it('a server that never answers: exit 3 after --request-timeout (or FABRIC_REQUEST_TIMEOUT)', async () => {
    const seen: string[] = [];
    const url = await server((req) => void seen.push(`${req.method} ${req.url}`));
    const flag = await runCli(['pools', '--url', url, '--request-timeout', '1'], ENV);
    expect(flag.code, flag.err).toBe(3);
    expect(flag.err.trim()).toBe(
      'agent-fabric: POST /api/fabric.v1.FabricService/ListPools: no answer from the sidecar within 1 s (--request-timeout)',
    );
    const env = await runCli(['approvals', 'approve', 'ap-1', '--url', url], {
      ...ENV,
      FABRIC_REQUEST_TIMEOUT: '0.5',
    });
    expect(env.code, env.err).toBe(3);
    expect(env.err).toContain('no answer from the sidecar within 0.5 s (FABRIC_REQUEST_TIMEOUT)');
    const watch = await runCli(['approvals', 'watch', '--url', url, '--request-timeout', '1'], ENV);
    expect(watch.code, watch.err).toBe(3);
    expect(watch.err).toContain('ApprovalService/Watch: no answer from the sidecar within 1 s');
    expect(seen).toEqual([
      'POST /api/fabric.v1.FabricService/ListPools',
      'POST /api/fabric.v1.ApprovalService/Approve',
      'POST /api/fabric.v1.ApprovalService/Watch',
    ]);
  }, 120_000);

  it('a server that stalls in the middle of its answer or of a stream: exit 3', async () => {
    const url = await server((req, res) => {
      if (req.url?.endsWith('/Watch')) {
        res.writeHead(200, { 'content-type': 'application/x-ndjson' });
        res.write('\n'); // open, then silent: not even keep-alives
        return;
      }
      res.writeHead(200, { 'content-type': 'application/json' });
      res.write('{"pools":['); // and nothing more
    });
    const unary = await runCli(['pools', '--url', url, '--request-timeout', '1'], ENV);
    expect(unary.code, unary.err).toBe(3);
    expect(unary.err.trim()).toBe(
      'agent-fabric: POST /api/fabric.v1.FabricService/ListPools: the sidecar stopped sending its answer: nothing for 1 s (--request-timeout)',
    );
    const watch = await runCli(['approvals', 'watch', '--url', url, '--request-timeout', '1'], ENV);
    expect(watch.code, watch.err).toBe(3);
    expect(watch.err).toContain(
      'ApprovalService/Watch: the sidecar stopped sending its answer: nothing for 1 s (--request-timeout)',
    );
  }, 120_000);

  it('a stream kept alive longer than --request-timeout goes on: the bound is between lines', async () => {
    const url = await server((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/x-ndjson' });
      const alive = setInterval(() => res.write('\n'), 100);
      void sleep(4000).then(() => {
        clearInterval(alive);
        res.end('{"end":{}}\n');
      });
    });
    const watch = await runCli(['approvals', 'watch', '--url', url, '--request-timeout', '2'], ENV);
    expect(watch.code, watch.err).toBe(0);
    expect(watch.out.split('\n')[0]).toMatch(/^EVENT\s+ID\s+STATUS/);
  }, 120_000);

  it('a drain whose sidecar stops answering while it waits: its next look times out, exit 3', async () => {
    const seen: string[] = [];
    let looks = 0;
    const url = await server((req, res) => {
      seen.push(req.url ?? '');
      // The first look is answered; then nothing is (the drain's request included).
      if (req.url?.endsWith('/GetAgent') && looks++ === 0) {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end('{"agent":{"agentId":"a1","status":"AGENT_STATUS_HEALTHY"}}');
      }
    });
    const run = await runCli(
      ['agents', 'drain', 'a1', '--url', url, '--request-timeout', '2'],
      ENV,
    );
    expect(run.code, run.err).toBe(3);
    expect(run.out.trim()).toBe('agent a1: HEALTHY, 0 tasks running, 0 queued');
    expect(run.err.trim()).toBe(
      'agent-fabric: POST /api/fabric.v1.FabricService/GetAgent: no answer from the sidecar within 2 s (--request-timeout)',
    );
    expect(seen.slice(0, 3)).toEqual([
      '/api/fabric.v1.FabricService/GetAgent',
      '/api/fabric.v1.FabricService/TerminateAgent',
      '/api/fabric.v1.FabricService/GetAgent',
    ]);
  }, 120_000);

  it('a wrong --request-timeout or --max-answer-mib is a usage error (exit 2), nothing sent', async () => {
    const seen: string[] = [];
    const url = await server((req, res) => {
      seen.push(req.url ?? '');
      res.end('{}');
    });
    const cases: [string[], NodeJS.ProcessEnv, string][] = [
      [['--request-timeout', '0'], {}, '--request-timeout: must be a number of seconds'],
      [['--request-timeout=-1'], {}, '--request-timeout: must be a number of seconds'],
      [['--request-timeout', 'soon'], {}, 'not soon'],
      [['--request-timeout', '1e3'], {}, '--request-timeout: must be a number of seconds'],
      [['--request-timeout', '86401'], {}, 'at most 86400'],
      [
        [],
        { FABRIC_REQUEST_TIMEOUT: 'ten' },
        'FABRIC_REQUEST_TIMEOUT: must be a number of seconds',
      ],
      [['--max-answer-mib', '0'], {}, '--max-answer-mib: must be a whole number of MiB'],
      [['--max-answer-mib', '1.5'], {}, '--max-answer-mib: must be a whole number of MiB'],
      [['--max-answer-mib', '501'], {}, 'at most 500'],
      [[], { FABRIC_MAX_ANSWER_MIB: 'lots' }, 'FABRIC_MAX_ANSWER_MIB: must be a whole number'],
    ];
    for (const [args, env, message] of cases) {
      const run = await runCli(['pools', '--url', url, ...args], { ...ENV, ...env });
      expect(run.code, `${args.join(' ')} ${JSON.stringify(env)}: ${run.err}`).toBe(2);
      expect(run.err).toContain(message);
      expect(run.err).toContain('(see agent-fabric pools --help)');
    }
    expect(seen).toEqual([]);
    const help = await runCli(['pools', '--help']);
    expect(help.out).toContain('--request-timeout <seconds>');
    expect(help.out).toContain('--max-answer-mib <n>');
  }, 120_000);
});

describe('agent-fabric: a --url is not repeated where it may hold a secret', () => {
  it('a --url (or FABRIC_URL) that is not a URL: exit 2, the value not repeated', async () => {
    for (const [args, env, source] of [
      [['--url', 'fab_admin_pasted-secret'], {}, '--url'],
      [['--url', '127.0.0.1:8765/?t=pasted-secret'], {}, '--url'],
      [[], { FABRIC_URL: 'http//pasted-secret@host' }, 'FABRIC_URL'],
    ] as const) {
      const run = await runCli(['pools', ...args], { ...ENV, ...env });
      expect(run.code, run.err).toBe(2);
      expect(run.err).toContain(`${source}: not a URL`);
      expect(run.err).toContain('http://');
      expect(run.err).not.toContain('pasted-secret');
    }
    const mcp = await runCli(['mcp', '--url', 'pasted-secret'], { FABRIC_AGENT_TOKEN: 'x' });
    expect(mcp.code, mcp.err).toBe(2);
    expect(mcp.err).toContain('--url: not a URL');
    expect(mcp.err).not.toContain('pasted-secret');
  }, 120_000);

  it('a URL with a password and a query: refused naming only its origin; mcp unreachable without the query', async () => {
    const refused = await runCli(
      ['pools', '--url', 'http://admin:pw-secret@127.0.0.1:9/?token=query-secret'],
      ENV,
    );
    expect(refused.code).toBe(2);
    expect(refused.err).toContain('(http://127.0.0.1:9)');
    expect(refused.err).not.toMatch(/pw-secret|query-secret/);
    // A port nothing listens on (a server started and closed).
    const s = createServer();
    await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve));
    const port = (s.address() as AddressInfo).port;
    await new Promise((resolve) => s.close(resolve));
    const mcp = await runCli(['mcp', '--url', `http://127.0.0.1:${port}/mcp?token=query-secret`], {
      FABRIC_AGENT_TOKEN: 'x',
    });
    expect(mcp.code).toBe(3);
    expect(mcp.err).toContain(`cannot reach the sidecar at http://127.0.0.1:${port}/mcp`);
    expect(mcp.err).not.toContain('query-secret');
  }, 120_000);
});

/**
 * `agent-fabric mcp` resuming a call's stream cut between the bridge and the sidecar: a real
 * sidecar with a slow stdio upstream, a TCP proxy that breaks the connection of the call's
 * stream once its first event or comment went through, the official SDK client as the agent on
 * the bridge's stdio.
 *
 * Before, the bridge never sent `MCP-Protocol-Version` (a client must, on every request after
 * initialize): the sidecar took it for a client too old for a priming event, switched the slow
 * call to SSE with a keep-alive only, and a cut left the agent's request unanswered for good —
 * the bridge had nothing to resume from and no error to give.
 */
import { spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { createServer, connect, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import {
  getDefaultEnvironment,
  StdioClientTransport,
} from '@modelcontextprotocol/sdk/client/stdio.js';
import type { JSONRPCMessage } from '@modelcontextprotocol/sdk/types.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  agentToken,
  CLI_MAIN,
  cliStdioClient,
  closeSidecar,
  DEFAULT_ALLOW,
  INIT,
  slowUpstream,
  startSlowSidecar,
  tempDir,
  text,
  TSX,
  until,
} from '../fixtures/gateway/harness.js';
import {
  bound,
  bridgeViaProxy,
  cuttingProxy,
  slowCall,
  slowCallOnStream,
} from '../fixtures/gateway/cutting-proxy.js';
import { cleanUp, freePort, serve, stop } from '../fixtures/state/serve.js';

/**
 * A temp folder with `fabric.json` for `agent-fabric serve`: the slow upstream `s` (writing to
 * `ran`), one agent, keep-alives (and so the slow-call watch) every 0.2 s.
 */
async function slowServeConfig(tag: string): Promise<{ dir: string; port: number; ran: string }> {
  const dir = tempDir(tag);
  const port = await freePort();
  const ran = join(dir, 'ran.log');
  writeFileSync(
    join(dir, 'fabric.json'),
    JSON.stringify({
      http: { host: '127.0.0.1', port, keepAliveSeconds: 0.2 },
      adminToken: `fab_admin_${'Rb5K'.repeat(8)}`,
      upstreams: { s: slowUpstream(ran) },
      policies: [DEFAULT_ALLOW],
      agents: [{ name: 'worker' }],
    }),
  );
  return { dir, port, ran };
}

describe('agent-fabric mcp: a slow call whose stream is cut (real sidecar, TCP proxy)', () => {
  let sidecar: Sidecar;
  let ran: string;

  beforeAll(async () => {
    ({ sidecar, ran } = await startSlowSidecar('bridge-resume'));
  });
  afterAll(() => closeSidecar(sidecar));

  it('sends MCP-Protocol-Version, gets a priming event id, and resumes the cut stream: the agent gets the answer; it ran once', async () => {
    const { client, requests, proxy } = await bridgeViaProxy(sidecar, 'none', ['mcp']);
    try {
      const result = await client.callTool(
        { name: 's__slow', arguments: { label: 'bridged', ms: 1_500 } },
        undefined,
        { timeout: 10_000 },
      );
      expect(text(result)).toBe('slept bridged');
    } finally {
      await client.close();
      await new Promise((resolve) => proxy.close(resolve));
    }
    // Every request after initialize named the version the session speaks.
    const after = requests.filter((r) => r.startsWith('POST ')).slice(1); // the first: initialize
    expect(after.length).toBeGreaterThan(0);
    for (const r of after) expect(r.toLowerCase()).toMatch(/\r\nmcp-protocol-version: \d{4}-/);
    // The stream was resumed with the priming event's id, and the upstream ran the call once.
    expect(requests.some((r) => /^GET [\s\S]*\r\nlast-event-id: [1-9]\d*\.1/i.test(r))).toBe(true);
    expect(readFileSync(ran, 'utf8')).toBe('start bridged\nend bridged\n');
  });

  it('resumes again from the same event id: the agent gets the answer; it ran once', async () => {
    const { client, requests, proxy } = await bridgeViaProxy(sidecar, 'cut', ['mcp']);
    try {
      // Before, the SDK transport reconnected the second time without `Last-Event-ID` (a plain
      // GET, refused: the standalone stream is open), gave up, and the agent waited until its
      // own timeout.
      const result = await client.callTool(
        { name: 's__slow', arguments: { label: 'twice', ms: 2_000 } },
        undefined,
        { timeout: 20_000 },
      );
      expect(text(result)).toBe('slept twice');
    } finally {
      await client.close();
      await new Promise((resolve) => proxy.close(resolve));
    }
    const resumes = requests.filter((r) =>
      /^GET [\s\S]*\r\nlast-event-id: [1-9]\d*\.1\r?$/im.test(r),
    );
    expect(resumes.length).toBeGreaterThanOrEqual(2);
    expect(readFileSync(ran, 'utf8')).toContain('start twice\nend twice\n');
    expect(readFileSync(ran, 'utf8').match(/start twice/g)).toHaveLength(1);
  }, 60_000);

  it('answers the call with an error at once, where the agent waited for good', async () => {
    const { client, requests, proxy } = await bridgeViaProxy(sidecar, { status: 405 }, ['mcp']);
    try {
      // Before: the SDK transport takes a 405 for "no SSE stream here" and tries no more; the
      // bridge counted one failed attempt of 12 and waited for the rest, for good.
      const { outcome } = await slowCallOnStream(client, ran, 30_000);
      expect(await outcome).toContain(
        "the sidecar refused to resume the request's stream (HTTP 405); its answer is lost",
      );
      // One resumption was asked for, and the call reached the upstream once.
      expect(requests.filter((r) => /\r\nlast-event-id:/i.test(r))).toHaveLength(1);
      expect(readFileSync(ran, 'utf8').match(/start lost/g)).toHaveLength(1);
    } finally {
      await client.close();
      await new Promise((resolve) => proxy.close(resolve));
    }
  }, 60_000);

  it('answers the call with an error after --resume-seconds, where it resumed for good', async () => {
    const { client, requests, proxy } = await bridgeViaProxy(sidecar, 'cut-all', [
      'mcp',
      '--resume-seconds',
      '3',
    ]);
    try {
      // Each resumption answered 200 began a new count, so the bridge never gave up (and,
      // before the resumed stream was primed, went on with no Last-Event-ID at all): the agent
      // waited until its own timeout.
      const { outcome } = await slowCallOnStream(client, ran, 30_000);
      expect(await outcome).toContain(
        "could not be reached to resume the request's stream for 3 s; its answer is lost",
      );
      // Every resumption named the priming event's id; none is sent after the error.
      const resumes = requests.filter((r) => /\r\nlast-event-id:/i.test(r));
      expect(resumes.length).toBeGreaterThan(1);
      for (const r of resumes) expect(r).toMatch(/\r\nlast-event-id: [1-9]\d*\.1(\r|$)/im);
      const count = resumes.length;
      await new Promise((resolve) => setTimeout(resolve, 2_000));
      expect(requests.filter((r) => /\r\nlast-event-id:/i.test(r))).toHaveLength(count);
    } finally {
      await client.close();
      await new Promise((resolve) => proxy.close(resolve));
    }
  }, 60_000);
});

describe('agent-fabric mcp: the sidecar is killed and restarted while a slow call runs (agent-fabric serve, SIGKILL)', () => {
  afterAll(cleanUp);

  it("answers the agent's call with an error once the restarted sidecar says the session is gone, then works on a new session", async () => {
    const { dir, ran } = await slowServeConfig('bridge-restart');
    const first = await serve(dir);
    const { client } = await cliStdioClient(['mcp'], {
      env: { FABRIC_AGENT_TOKEN: first.token, FABRIC_URL: first.url },
    });
    try {
      const { outcome: call } = await slowCallOnStream(client, ran, 60_000);
      await stop(first, 'SIGKILL');
      const second = await serve(dir);
      try {
        // Before, the agent waited for the answer until its own timeout (here 60 s).
        expect(await call).toContain('no longer knows the session');
        // The next call opens a new session and is answered.
        const again = await client.callTool(
          { name: 's__slow', arguments: { label: 'again', ms: 10 } },
          undefined,
          { timeout: 20_000 },
        );
        expect(text(again)).toBe('slept again');
      } finally {
        await stop(second, 'SIGTERM');
      }
    } finally {
      await client.close();
    }
  });
});

/**
 * A proxy to `port` that never forwards a session's `GET` (the standalone stream, a resume): the bridge's
 * reconnections wait for good, and learn nothing of the session.
 */
async function getSwallowingProxy(port: number): Promise<Server> {
  const server = createServer((client: Socket) => {
    const upstream = connect(port, '127.0.0.1');
    let swallowing = false;
    client.on('data', (chunk: Buffer) => {
      const s = chunk.toString('latin1');
      // A session's GETs (its standalone stream, resumptions), not the bridge's start-up check.
      if (/^GET /.test(s)) swallowing = /\r\nmcp-session-id:/i.test(s);
      else if (/^(POST|DELETE) /.test(s)) swallowing = false;
      if (!swallowing) upstream.write(chunk);
    });
    upstream.on('data', (chunk: Buffer) => client.write(chunk));
    bound(client, upstream);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return server;
}

describe('agent-fabric mcp: the sidecar restarted, and the next request finds the session gone first', () => {
  afterAll(cleanUp);

  it("answers the call whose stream broke with an error when a later request's 404 renews the session", async () => {
    const { dir, port, ran } = await slowServeConfig('bridge-renew-lost');
    const first = await serve(dir);
    const proxy = await getSwallowingProxy(port);
    const url = new URL(first.url);
    url.port = String((proxy.address() as { port: number }).port);
    const { client } = await cliStdioClient(['mcp'], {
      env: { FABRIC_AGENT_TOKEN: first.token, FABRIC_URL: url.toString() },
    });
    try {
      const { outcome: call } = await slowCallOnStream(client, ran, 25_000);
      await stop(first, 'SIGKILL');
      const second = await serve(dir);
      try {
        // This call's POST gets the 404 and opens a new session; it is answered there.
        const again = await client.callTool(
          { name: 's__slow', arguments: { label: 'again', ms: 10 } },
          undefined,
          { timeout: 20_000 },
        );
        expect(text(again)).toBe('slept again');
        // Before, the first call waited until the agent's own timeout.
        expect(await call).toContain('no longer knows the session');
      } finally {
        await stop(second, 'SIGTERM');
      }
    } finally {
      await client.close();
      await new Promise((resolve) => proxy.close(resolve));
    }
  }, 60_000);
});

describe('agent-fabric mcp: the sidecar is killed and stays down while a slow call runs (--resume-seconds)', () => {
  afterAll(cleanUp);

  it("answers the agent's call with an error once the stream could not be resumed for --resume-seconds", async () => {
    const { dir, ran } = await slowServeConfig('bridge-down');
    const first = await serve(dir);
    const { client } = await cliStdioClient(['mcp', '--resume-seconds', '3'], {
      env: { FABRIC_AGENT_TOKEN: first.token, FABRIC_URL: first.url },
    });
    try {
      const { outcome: call } = await slowCallOnStream(client, ran, 60_000);
      await stop(first, 'SIGKILL');
      // Before, the bridge gave up resuming after ~40 s and said nothing: the agent waited until
      // its own timeout (here 60 s).
      expect(await call).toContain(
        "could not be reached to resume the request's stream for 3 s; its answer is lost",
      );
    } finally {
      await client.close();
    }
  });

  it('refuses a --resume-seconds that is not a positive integer up to a day, or with --in-process (exit 2)', async () => {
    for (const [args, says] of [
      [['--resume-seconds', '0'], 'must be a positive integer'],
      [['--resume-seconds', '1.5'], 'must be a positive integer'],
      [['--resume-seconds', '86401'], 'at most 86400'],
      [['--in-process', '--resume-seconds', '5'], 'not --in-process'],
    ] as const) {
      const ran = spawnSync(process.execPath, ['--import', TSX, CLI_MAIN, 'mcp', ...args], {
        env: { ...process.env, FABRIC_AGENT_TOKEN: 'fab_x', FABRIC_STATE: 'memory' },
        encoding: 'utf8',
        input: '',
        timeout: 60_000,
      });
      expect(ran.status).toBe(2);
      expect(ran.stderr).toContain(says);
    }
  });
});

describe('agent-fabric mcp: a slow call of an MCP 2025-06-18 session whose stream is cut (no event id to resume from)', () => {
  let sidecar: Sidecar;
  let ran: string;

  beforeAll(async () => {
    ({ sidecar, ran } = await startSlowSidecar('bridge-old-version'));
  });
  afterAll(() => closeSidecar(sidecar));

  it('answers the call with an error when its stream breaks, where the agent waited for good', async () => {
    const requests: string[] = [];
    const proxy = await cuttingProxy(Number(new URL(sidecar.url!).port), requests);
    const url = new URL(sidecar.url!);
    url.port = String((proxy.address() as { port: number }).port);
    // The official SDK's transport, speaking an older version than its Client would.
    const transport = new StdioClientTransport({
      command: process.execPath,
      args: ['--import', TSX, CLI_MAIN, 'mcp'],
      stderr: 'pipe',
      env: {
        ...getDefaultEnvironment(),
        FABRIC_AGENT_TOKEN: agentToken(sidecar, 'a'),
        FABRIC_URL: url.toString(),
      },
    });
    const answers = new Map<unknown, JSONRPCMessage>();
    transport.onmessage = (m) => {
      if ('id' in m) answers.set(m.id, m);
    };
    await transport.start();
    try {
      await transport.send(INIT as JSONRPCMessage); // MCP 2025-06-18
      await until(() => answers.has(1));
      expect(JSON.stringify(answers.get(1))).toContain('"protocolVersion":"2025-06-18"');
      await transport.send({ jsonrpc: '2.0', method: 'notifications/initialized' });
      await transport.send(slowCall(2, 'old', 3_000));
      // Before: no answer at all (the SDK transport drops a stream it cannot resume).
      await until(() => answers.has(2), 20_000);
      const answer = answers.get(2) as { error?: { message?: string } };
      expect(answer.error?.message).toContain(
        'its stream had no event id to resume it from; its answer is lost',
      );
      // The call did reach the upstream (hence "may have run"); its stream was cut, and nothing
      // resumed it.
      expect(readFileSync(ran, 'utf8')).toContain('start old\n');
      expect(requests.some((r) => /\r\nlast-event-id:/i.test(r))).toBe(false);
      // The bridge goes on: the next call is answered.
      await transport.send(slowCall(3, 'next', 10));
      await until(() => answers.has(3), 20_000);
      expect(JSON.stringify(answers.get(3))).toContain('slept next');
    } finally {
      await transport.close();
      await new Promise((resolve) => proxy.close(resolve));
    }
  });
});

describe('agent-fabric mcp: a slow call whose stream is cut, on a sidecar whose keep-alives are further apart than a resumption may wait', () => {
  let sidecar: Sidecar;

  beforeAll(async () => {
    ({ sidecar } = await startSlowSidecar('bridge-resume-quiet', 4));
  });
  afterAll(() => closeSidecar(sidecar));

  it('resumes it: the sidecar sends the resumed stream’s head at once, the agent gets the answer', async () => {
    const { client, requests, proxy } = await bridgeViaProxy(sidecar, 'none', [
      'mcp',
      '--resume-seconds',
      '3',
    ]);
    try {
      // Before, the sidecar held the resumed stream's head until its first keep-alive (4 s
      // here, 15 s by default): the bridge's attempt ran out first (after 3 s here, 10 s by
      // default), again and again, and the call was answered with an error.
      const result = await client.callTool(
        { name: 's__slow', arguments: { label: 'quiet', ms: 12_000 } },
        undefined,
        { timeout: 40_000 },
      );
      expect(text(result)).toBe('slept quiet');
    } finally {
      await client.close();
      await new Promise((resolve) => proxy.close(resolve));
    }
    expect(requests.some((r) => /^GET [\s\S]*\r\nlast-event-id: [1-9]\d*\.1/i.test(r))).toBe(true);
  }, 60_000);
});

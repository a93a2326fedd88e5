import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import type { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
import {
  ErrorCode,
  ToolListChangedNotificationSchema,
  type CallToolResult,
  type McpError,
} from '@modelcontextprotocol/sdk/types.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadSidecarConfig } from '../../src/server/config-file.js';
import { Sidecar } from '../../src/server/sidecar.js';
import { cleanUp, freePort, serve, stop } from '../fixtures/state/serve.js';
import {
  alive,
  CLI_MAIN,
  cliStdioClient,
  closeSidecar,
  descendants,
  httpClient,
  INIT,
  tempDir,
  TSX,
  until,
} from '../fixtures/gateway/harness.js';

/** This process's environment without the agent token and sidecar URL a CLI would take from it. */
function inheritedEnv(): NodeJS.ProcessEnv {
  const { FABRIC_AGENT_TOKEN: _t, FABRIC_URL: _u, ...inherited } = process.env;
  return inherited;
}

/** Runs `agent-fabric <args>` to completion; resolves its exit code and stderr. */
function runCli(
  args: readonly string[],
  env: Record<string, string> = {},
): Promise<{ code: number | null; stderr: string }> {
  const child = spawn(process.execPath, ['--import', TSX, CLI_MAIN, ...args], {
    env: { ...inheritedEnv(), ...env },
    stdio: ['pipe', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
  return new Promise((resolve) => child.once('close', (code) => resolve({ code, stderr })));
}

/**
 * `agent-fabric mcp` to `sidecar` as the agent `token` (both from the environment) as a raw child
 * process: write JSON-RPC lines to its stdin; `lines()` splits what it wrote to stdout so far.
 */
function rawBridge(sidecar: Sidecar, token: string) {
  const child = spawn(process.execPath, ['--import', TSX, CLI_MAIN, 'mcp'], {
    env: { ...inheritedEnv(), FABRIC_AGENT_TOKEN: token, FABRIC_URL: sidecar.url! },
    stdio: ['pipe', 'pipe', 'ignore'],
  });
  let out = '';
  child.stdout.on('data', (c: Buffer) => (out += c.toString()));
  return { child, lines: () => out.split('\n') };
}

/** Closes `child`'s stdin and waits until it has exited. */
async function endChild(child: ChildProcess): Promise<void> {
  child.stdin!.end();
  await new Promise((resolve) => child.once('close', resolve));
}

/** The stdio bridge (`agent-fabric mcp`) to `sidecar` as the agent `token`, both from its env. */
function bridgeClient(sidecar: Sidecar, token: string) {
  return cliStdioClient(['mcp'], { env: { FABRIC_AGENT_TOKEN: token, FABRIC_URL: sidecar.url! } });
}

/** Writes `yaml` to `configFile` and starts a sidecar on it (state in memory), with its token. */
async function startFromFile(
  configFile: string,
  yaml: string,
): Promise<{ sidecar: Sidecar; token: string }> {
  writeFileSync(configFile, yaml);
  const sidecar = await Sidecar.start({
    config: loadSidecarConfig(configFile, { env: { FABRIC_STATE: 'memory' } }),
  });
  return { sidecar, token: sidecar.agents[0]!.credential };
}

/** A port nobody listens on (bound, then released). */
async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** What a policy decided about a call, as the model sees it. */
function outcome(r: unknown): { isError: boolean; code: string | undefined; text: string } {
  const result = r as CallToolResult;
  const meta = result._meta?.['agent-fabric/error'] as { code?: string } | undefined;
  const text = (result.content as { text?: string }[]).map((c) => c.text ?? '').join('\n');
  return {
    isError: result.isError === true,
    code: meta?.code,
    // Refusals are compared whole; successful results only by kind (paths differ per door).
    text: result.isError ? text : 'ok',
  };
}

describe('agent-fabric mcp (stdio bridge and in-process stdio)', () => {
  const dir = tempDir('cli-mcp');
  const sandbox = join(dir, 'sandbox');
  const configFile = join(dir, 'fabric.yaml');
  let sidecar: Sidecar;
  let token: string;

  beforeAll(async () => {
    mkdirSync(join(sandbox, 'protected'), { recursive: true });
    writeFileSync(join(sandbox, 'protected', 'secret.txt'), 'keep me');
    ({ sidecar, token } = await startFromFile(
      configFile,
      `http: { host: 127.0.0.1, port: 0 }
adminToken: admin-token-for-cli-tests-0123456789
upstreams:
  fs:
    command: '\${NODE}'
    args: ['\${FILESYSTEM_SERVER_BIN}', '${sandbox}']
    stderr: ignore
policies:
  - name: protected-files
    priority: 100
    rules:
      - tool: fs__write_file
        action: deny
        conditions: { path: '${sandbox}/protected/**' }
        reason: files under protected/ are read-only for agents
      - tool: fs__create_directory
        action: deny
        reason: no new folders
  - name: default-allow
    rules:
      - { tool: '*', action: allow }
agents:
  - name: stdio-agent
`,
    ));
  });

  afterAll(() => closeSidecar(sidecar));

  // Exit codes as README's table has them for every command (4: no token or refused; 3: not
  // reachable). Found in review: mcp exited 1 for all three.
  it('refuses to start without an agent token, saying how to give one', async () => {
    const { code, stderr } = await runCli(['mcp', '--url', sidecar.url!]);
    expect(code).toBe(4);
    expect(stderr).toContain(
      'an agent token is required: --agent-token <token> or FABRIC_AGENT_TOKEN',
    );
  });

  it('refuses to start with an unknown agent token', async () => {
    const { code, stderr } = await runCli([
      'mcp',
      '--agent-token',
      'not-a-token',
      '--url',
      sidecar.url!,
    ]);
    expect(code).toBe(4);
    expect(stderr).toContain(`the sidecar at ${sidecar.url} refused the agent token (HTTP 401)`);
  });

  it('refuses to start with the admin token', async () => {
    const { code, stderr } = await runCli([
      'mcp',
      '--agent-token',
      'admin-token-for-cli-tests-0123456789',
      '--url',
      sidecar.url!,
    ]);
    expect(code).toBe(4);
    expect(stderr).toContain('refused the agent token (HTTP 403)');
  });

  it('refuses to start when the sidecar cannot be reached', async () => {
    const url = `http://127.0.0.1:${await closedPort()}/mcp`;
    const { code, stderr } = await runCli(['mcp', '--url', url], { FABRIC_AGENT_TOKEN: token });
    expect(code).toBe(3);
    expect(stderr).toContain(`cannot reach the sidecar at ${url}`);
  });

  it('bridges an MCP client on stdio to the sidecar (token and URL from the environment)', async () => {
    const sessions = sidecar.gateway.sessions.size;
    const { client, transport } = await bridgeClient(sidecar, token);
    const pid = transport.pid!;
    try {
      const names = (await client.listTools()).tools.map((t) => t.name);
      expect(names).toContain('fs__read_text_file');
      expect(names).toContain('fabric__heartbeat');
      const r = await client.callTool({
        name: 'fs__read_text_file',
        arguments: { path: join(sandbox, 'protected', 'secret.txt') },
      });
      expect(outcome(r)).toMatchObject({ isError: false });
      expect(sidecar.gateway.sessions.size).toBe(sessions + 1);
    } finally {
      await client.close();
    }
    await until(() => !alive(pid));
    // The bridge ends its sidecar session when its client goes away.
    await until(() => sidecar.gateway.sessions.size === sessions);
  });

  it('ends the session of an initialize whose client went away before the answer', async () => {
    // The client sends initialize and closes stdin at once: the bridge exited while the POST was
    // on its way, and the session the sidecar opened for it stayed open (until it idled out, 30
    // minutes, holding one of the agent's maxSessionsPerAgent slots).
    const sessions = sidecar.gateway.sessions.size;
    for (let i = 0; i < 3; i++) {
      const { FABRIC_AGENT_TOKEN: _t, FABRIC_URL: _u, ...inherited } = process.env;
      const child = spawn(process.execPath, ['--import', TSX, CLI_MAIN, 'mcp'], {
        env: { ...inherited, FABRIC_AGENT_TOKEN: token, FABRIC_URL: sidecar.url! },
        stdio: ['pipe', 'ignore', 'ignore'],
      });
      child.stdin.end(`${JSON.stringify(INIT)}\n`);
      expect(await new Promise((resolve) => child.once('close', resolve))).toBe(0);
    }
    await until(() => sidecar.gateway.sessions.size === sessions);
  });

  for (const signal of ['SIGTERM', 'SIGHUP', 'SIGINT'] as const) {
    it(`ends its session when it gets ${signal}`, async () => {
      // Before, the bridge had no handler: the signal ended it at once, session left open.
      const sessions = sidecar.gateway.sessions.size;
      const { FABRIC_AGENT_TOKEN: _t, FABRIC_URL: _u, ...inherited } = process.env;
      const child = spawn(process.execPath, ['--import', TSX, CLI_MAIN, 'mcp'], {
        env: { ...inherited, FABRIC_AGENT_TOKEN: token, FABRIC_URL: sidecar.url! },
        stdio: ['pipe', 'pipe', 'ignore'],
      });
      let out = '';
      child.stdout.on('data', (c: Buffer) => (out += c.toString()));
      child.stdin.write(`${JSON.stringify(INIT)}\n`);
      await until(() => out.includes('\n'));
      expect(sidecar.gateway.sessions.size).toBe(sessions + 1);
      const exited = new Promise((resolve) => child.once('exit', (code) => resolve(code)));
      child.kill(signal);
      expect(await exited).toBe(0);
      await until(() => sidecar.gateway.sessions.size === sessions);
    });
  }

  it('answers a ping sent before initialize (the spec allows it; the sidecar has no session yet)', async () => {
    const { child, lines } = rawBridge(sidecar, token);
    try {
      child.stdin.write('{"jsonrpc":"2.0","id":"early","method":"ping"}\n');
      await until(() => lines().length > 1);
      expect(JSON.parse(lines()[0]!)).toEqual({ jsonrpc: '2.0', id: 'early', result: {} });
    } finally {
      await endChild(child);
    }
  });

  it("answers an agent's request whose id looks like one of the bridge's own", async () => {
    // The bridge tells its own requests' answers apart by an id prefix; an agent's answer with
    // such an id (any string id is the agent's to choose) was taken for one and dropped.
    const { child, lines } = rawBridge(sidecar, token);
    try {
      const answer = async (id: string): Promise<unknown> => {
        await until(() => lines().some((l) => l.includes(`"id":"${id}"`)));
        return JSON.parse(lines().find((l) => l.includes(`"id":"${id}"`))!);
      };
      child.stdin.write(
        `${JSON.stringify({
          jsonrpc: '2.0',
          id: 'init',
          method: 'initialize',
          params: {
            protocolVersion: '2025-06-18',
            capabilities: {},
            clientInfo: { name: 'raw', version: '1' },
          },
        })}\n`,
      );
      await answer('init');
      child.stdin.write('{"jsonrpc":"2.0","method":"notifications/initialized"}\n');
      child.stdin.write('{"jsonrpc":"2.0","id":"agent-fabric-mcp/1","method":"ping"}\n');
      expect(await answer('agent-fabric-mcp/1')).toEqual({
        jsonrpc: '2.0',
        id: 'agent-fabric-mcp/1',
        result: {},
      });
    } finally {
      await endChild(child);
    }
  });

  it('opens a new session when the sidecar lost the bridged one (404), with what the agent had set', async () => {
    // MCP 2025-06-18, Session Management: a client answered 404 for its session MUST initialize
    // a new one. Before, every later request was answered "could not forward the request".
    const before = new Set(sidecar.gateway.sessions);
    const { client } = await bridgeClient(sidecar, token);
    let listChanged = 0;
    client.setNotificationHandler(ToolListChangedNotificationSchema, () => {
      listChanged++;
    });
    const ours = () => [...sidecar.gateway.sessions].filter((s) => !before.has(s));
    try {
      await client.setLoggingLevel('error');
      expect((await client.listTools()).tools.length).toBeGreaterThan(0);
      const [lost] = ours();
      expect(lost?.logLevel).toBe('error');
      // The sidecar forgets the session (as after a restart): its id is answered 404 from now.
      await lost!.close();
      const r = await client.callTool({
        name: 'fs__read_text_file',
        arguments: { path: join(sandbox, 'protected', 'secret.txt') },
      });
      expect(outcome(r)).toMatchObject({ isError: false });
      const [renewed, ...more] = ours();
      expect(more).toEqual([]);
      expect(renewed).not.toBe(lost);
      expect(renewed!.logLevel).toBe('error');
      // Its lists came from the old session: the agent is told to list again.
      await until(() => listChanged > 0);
    } finally {
      await client.close();
    }
    await until(() => ours().length === 0);
  });

  it('takes the base URL the operator commands use (FABRIC_URL without a path) and adds /mcp', async () => {
    // README: the operator commands read FABRIC_URL as the sidecar's base URL
    // (http://127.0.0.1:8765); the same variable must not send the bridge to `POST /`.
    const base = new URL(sidecar.url!).origin;
    for (const env of [
      { FABRIC_AGENT_TOKEN: token, FABRIC_URL: base },
      { FABRIC_AGENT_TOKEN: token, FABRIC_URL: `${base}/` },
    ]) {
      const { client } = await cliStdioClient(['mcp'], { env });
      try {
        const names = (await client.listTools()).tools.map((t) => t.name);
        expect(names).toContain('fs__read_text_file');
      } finally {
        await client.close();
      }
    }
  });

  it('names the missing endpoint when --url has a path the sidecar does not serve', async () => {
    const url = `${new URL(sidecar.url!).origin}/not-mcp`;
    const { code, stderr } = await runCli(['mcp', '--url', url], { FABRIC_AGENT_TOKEN: token });
    expect(code).toBe(1);
    expect(stderr).toContain(`no MCP endpoint at ${url} (HTTP 404)`);
  });

  it('gives the same policy decisions through HTTP, the stdio bridge and in-process stdio', async () => {
    const calls: { name: string; arguments: Record<string, unknown> }[] = [
      { name: 'fs__read_text_file', arguments: { path: `${sandbox}/protected/secret.txt` } },
      { name: 'fs__write_file', arguments: { path: `${sandbox}/notes.txt`, content: 'hi' } },
      { name: 'fs__write_file', arguments: { path: `${sandbox}/protected/x.txt`, content: 'no' } },
      {
        name: 'fs__write_file',
        arguments: { path: `${sandbox}/protected/../protected/x.txt`, content: 'no' },
      },
      {
        name: 'fs__write_file',
        arguments: { path: `/${sandbox}//protected//x.txt`, content: 'no' },
      },
      { name: 'fs__create_directory', arguments: { path: `${sandbox}/d` } },
    ];
    const http = await httpClient(sidecar.url!, token);
    const bridge = await cliStdioClient(['mcp', '--agent-token', token, '--url', sidecar.url!]);
    const inProcess = await cliStdioClient(['mcp', '--in-process', '--config', configFile]);
    const inProcessTree = [inProcess.transport.pid!, ...descendants(inProcess.transport.pid!)];
    expect(inProcessTree.length).toBeGreaterThan(1); // its own filesystem upstream
    const doors: [string, Client, StdioClientTransport | undefined][] = [
      ['http', http, undefined],
      ['stdio bridge', bridge.client, bridge.transport],
      ['in-process stdio', inProcess.client, inProcess.transport],
    ];
    try {
      const decisions: Record<string, unknown> = {};
      for (const [door, client] of doors) {
        const tools = (await client.listTools()).tools.map((t) => t.name);
        decisions[door] = {
          hidden: ['fs__create_directory', 'fs__write_file'].filter((t) => !tools.includes(t)),
          // A tool policy hides is answered as an unknown tool (a JSON-RPC error), not refused.
          calls: await Promise.all(
            calls.map((c) =>
              client.callTool(c).then(outcome, (e: McpError) => ({ rpcError: e.code })),
            ),
          ),
        };
      }
      expect(decisions['http']).toMatchObject({
        hidden: ['fs__create_directory'],
        calls: [
          { isError: false },
          { isError: false },
          { isError: true, code: 'FABRIC_ERR_POLICY_DENIED' },
          { isError: true, code: 'FABRIC_ERR_POLICY_DENIED' },
          { isError: true, code: 'FABRIC_ERR_POLICY_DENIED' },
          { rpcError: ErrorCode.InvalidParams },
        ],
      });
      expect(decisions['stdio bridge']).toEqual(decisions['http']);
      expect(decisions['in-process stdio']).toEqual(decisions['http']);
      expect(() => readFileSync(join(sandbox, 'protected', 'x.txt'))).toThrow();
    } finally {
      for (const [, client] of doors) await client.close();
    }
    // Closing stdin ends the in-process gateway and its upstream's process tree.
    await until(() => inProcessTree.every((pid) => !alive(pid)));
  });

  it('forwards a large non-ASCII result over in-process stdio byte for byte', async () => {
    // Forwarded results reuse the upstream's JSON text (raw-results.ts): prove it is exact.
    const line = 'naïve “quotes” \\ back\\slash \t tab, emoji 🚀, "json" {}[],\n';
    const content = line.repeat(4000); // ~250 KB
    writeFileSync(join(sandbox, 'big.txt'), content);
    const inProcess = await cliStdioClient(['mcp', '--in-process', '--config', configFile]);
    try {
      const calls = Array.from({ length: 3 }, () =>
        inProcess.client.callTool({
          name: 'fs__read_text_file',
          arguments: { path: `${sandbox}/big.txt` },
        }),
      );
      for (const r of await Promise.all(calls)) {
        expect(r.isError).toBeFalsy();
        expect((r.content as { text: string }[])[0]!.text).toBe(content);
      }
    } finally {
      await inProcess.client.close();
    }
  });
});

describe('agent-fabric mcp: a session renewal the sidecar refused', () => {
  const dir = tempDir('cli-mcp-renewal');
  let sidecar: Sidecar;
  let token: string;

  beforeAll(async () => {
    const configFile = join(dir, 'fabric.yaml');
    ({ sidecar, token } = await startFromFile(
      configFile,
      `http: { host: 127.0.0.1, port: 0, maxSessionsPerAgent: 1 }
policies:
  - name: default-allow
    rules:
      - { tool: '*', action: allow }
agents:
  - name: renewing-agent
`,
    ));
  });

  afterAll(() => closeSidecar(sidecar));

  it('tries again with the next request once the sidecar takes a new session', async () => {
    const { client } = await bridgeClient(sidecar, token);
    try {
      expect((await client.listTools()).tools.length).toBeGreaterThan(0);
      const [lost] = sidecar.gateway.sessions;
      await lost!.close();
      // The agent's only session slot is taken meanwhile: the renewal's initialize gets 429.
      const other = await httpClient(sidecar.url!, token);
      await expect(client.listTools()).rejects.toThrow(/could not forward the request/);
      const [taken] = sidecar.gateway.sessions;
      await taken!.close();
      await other.close();
      // The slot is free again: the bridge must not stay without a session for good (before,
      // every later request was sent without one and refused with 400 "send initialize first").
      expect((await client.listTools()).tools.length).toBeGreaterThan(0);
      expect(sidecar.gateway.sessions.size).toBe(1);
    } finally {
      await client.close();
    }
  });
});

describe('agent-fabric mcp: subscriptions set again on a new session', () => {
  const dir = tempDir('cli-mcp-resubscribe');
  const server = new URL('../fixtures/gateway/catalog-server.mjs', import.meta.url).pathname;
  let sidecar: Sidecar;
  let token: string;

  beforeAll(async () => {
    const configFile = join(dir, 'fabric.yaml');
    const resources = [
      { uri: 'pl://r/secret', name: 's' },
      { uri: 'pl://r/later', name: 'l' },
    ];
    ({ sidecar, token } = await startFromFile(
      configFile,
      `http: { host: 127.0.0.1, port: 0 }
upstreams:
  r:
    command: '\${NODE}'
    args: ['${server}']
    env: { CATALOG_NAME: r, CATALOG_RESOURCES: '${JSON.stringify(resources)}' }
policies:
  - name: ask
    priority: 100
    rules:
      - { tool: resources/subscribe, action: require_approval, conditions: { uri: 'pl://r/*' } }
  - name: default-allow
    rules:
      - { tool: '*', action: allow }
agents:
  - name: subscriber
`,
    ));
  });

  afterAll(() => closeSidecar(sidecar));

  it('does not ask again for a subscription a human denied', async () => {
    const approvals = sidecar.fabric!.approvals;
    const asked = (uri: string) => approvals.listApprovals().filter((a) => a.params['uri'] === uri);
    const { client } = await bridgeClient(sidecar, token);
    try {
      const denied = client.subscribeResource({ uri: 'pl://r/secret' });
      denied.catch(() => undefined);
      await until(() => asked('pl://r/secret').length === 1);
      approvals.deny(asked('pl://r/secret')[0]!.id, { approver: 'human' });
      await expect(denied).rejects.toThrow();
      // The sidecar loses the session: the next request opens a new one.
      const [lost] = sidecar.gateway.sessions;
      await lost!.close();
      expect((await client.listTools()).tools.length).toBeGreaterThan(0);
      // A later request of the agent's own is asked for; the denied one was not again (before,
      // the renewal subscribed to it once more: a new approval no one had asked for).
      const later = client.subscribeResource({ uri: 'pl://r/later' });
      later.catch(() => undefined);
      await until(() => asked('pl://r/later').length === 1);
      expect(asked('pl://r/secret')).toHaveLength(1);
      approvals.deny(asked('pl://r/later')[0]!.id, { approver: 'human' });
      await expect(later).rejects.toThrow();
    } finally {
      await client.close();
    }
  });
});

describe('agent-fabric mcp: a sidecar that stopped answering', () => {
  afterAll(cleanUp);

  it('exits when its client goes away even though the sidecar never answers the DELETE', async () => {
    // The sidecar is stopped (SIGSTOP: as a hung or overloaded host): before, the bridge waited
    // for the DELETE of its session with no bound (fetch's own: 5 minutes), so its client's
    // `close` never saw it exit.
    const dir = tempDir('cli-mcp-stopped');
    writeFileSync(
      join(dir, 'fabric.json'),
      JSON.stringify({
        http: { host: '127.0.0.1', port: await freePort() },
        upstreams: {},
        agents: [{ name: 'worker' }],
      }),
    );
    const r = await serve(dir);
    const { FABRIC_AGENT_TOKEN: _t, FABRIC_URL: _u, ...inherited } = process.env;
    const child = spawn(process.execPath, ['--import', TSX, CLI_MAIN, 'mcp'], {
      env: { ...inherited, FABRIC_AGENT_TOKEN: r.token, FABRIC_URL: r.url },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    child.stdout.on('data', (c: Buffer) => (out += c.toString()));
    child.stderr.on('data', (c: Buffer) => (err += c.toString()));
    try {
      child.stdin.write(`${JSON.stringify(INIT)}\n`);
      await until(() => out.includes('\n'), 30_000);
      r.child.kill('SIGSTOP');
      const exited = new Promise((resolve) => child.once('exit', (code) => resolve(code)));
      child.stdin.end();
      expect(await exited).toBe(0);
      expect(err).toContain('agent-fabric mcp:'); // the DELETE that got no answer, reported
    } finally {
      if (child.exitCode === null) child.kill('SIGKILL');
      r.child.kill('SIGCONT');
      await stop(r, 'SIGTERM');
    }
  }, 60_000);
});

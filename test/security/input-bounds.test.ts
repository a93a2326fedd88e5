/**
 * A hostile agent against the real sidecar: arguments nested 10 000 levels deep (a ~60 KB body
 * once killed the process from the audit log's flush timer), and arrays and objects with a
 * million values within the 4 MiB body cap — on a known, an unknown and a denied tool, over
 * Streamable HTTP, the stdio bridge and in-process stdio; and a hostile upstream answering with
 * JSON nested deeper than `JSON.stringify` can handle. After each, the process is alive, the
 * next ordinary call works, nothing reached the filesystem, and the audit log on disk has the
 * refusal.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  ADMIN_TOKEN,
  agentToken,
  alive,
  CLI_MAIN,
  closeSidecar,
  DEFAULT_ALLOW,
  EVERYTHING_BIN,
  FILESYSTEM_BIN,
  httpClient,
  INIT,
  startTestSidecar,
  tempDir,
  text,
  TSX,
  until,
} from '../fixtures/gateway/harness.js';

const DEEP_SERVER = fileURLToPath(
  new URL('../fixtures/gateway/deep-result-server.mjs', import.meta.url),
);
const SECRET_GUARD = fileURLToPath(new URL('../../plugins/secret-guard/index.js', import.meta.url));

/** JSON text nesting `levels` objects (`{"a":{"a":…}}`): 6 bytes a level. */
const deepObject = (levels: number): string => `${'{"a":'.repeat(levels)}1${'}'.repeat(levels)}`;
/** JSON text nesting `levels` arrays: 2 bytes a level. */
const deepArray = (levels: number): string => `${'['.repeat(levels)}${']'.repeat(levels)}`;

/** Argument shapes past the default bounds (depth 64, 100 000 values), all under 4 MiB. */
const SHAPES: Record<string, { json: string; limit: RegExp }> = {
  // ~60 KB: the request that used to end the process.
  deep10k: { json: deepObject(10_000), limit: /nest deeper than 64 levels/ },
  deepArrays: { json: deepArray(100_000), limit: /nest deeper than 64 levels/ },
  // Just past the bound and still serializable: without the bound it would reach the upstream.
  deep65: { json: deepObject(65), limit: /nest deeper than 64 levels/ },
  wideArray: { json: `[${'0,'.repeat(1_500_000)}0]`, limit: /hold more than 100000 values/ },
  wideObject: {
    json: `{${Array.from({ length: 150_000 }, (_, i) => `"k${i}":0`).join(',')}}`,
    limit: /hold more than 100000 values/,
  },
};

/** The tools of each kind the attacker tries: allowed and known, denied by policy, unknown. */
const TOOLS = {
  known: 'fs__write_file',
  denied: 'fs__create_directory',
  unknown: 'nope__no_such_tool',
} as const;

/** `tools/call` arguments: a real target path plus the hostile value. */
function callBody(id: number, tool: string, path: string, hostile: string): string {
  const args = `{"path":${JSON.stringify(path)},"content":"x","extra":${hostile}}`;
  return `{"jsonrpc":"2.0","id":${id},"method":"tools/call","params":{"name":"${tool}","arguments":${args}}}`;
}

interface RpcResponse {
  id?: unknown;
  result?: { isError?: boolean; content?: { text?: string }[]; _meta?: Record<string, unknown> };
  error?: { code: number; message: string; data?: { code?: string } };
}

/** The fabric error code of a tool result. */
function errorCode(r: RpcResponse): string | undefined {
  return (r.result?._meta?.['agent-fabric/error'] as { code?: string } | undefined)?.code;
}

/** Audit lines on disk. */
function auditLines(path: string): Record<string, unknown>[] {
  if (!existsSync(path)) return [];
  return readFileSync(path, 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

/** A raw Streamable HTTP session: bodies the SDK client could not even serialize. */
/** The response to one POST (its text kept, as `text`, beside the parsed message). */
type RawAnswer = RpcResponse & { readonly text: string };

async function rawHttpSession(
  url: string,
  token: string,
): Promise<(body: string) => Promise<RawAnswer>> {
  const headers = {
    authorization: `Bearer ${token}`,
    'content-type': 'application/json',
    accept: 'application/json, text/event-stream',
  };
  const init = await fetch(url, { method: 'POST', headers, body: JSON.stringify(INIT) });
  const sessionId = init.headers.get('mcp-session-id')!;
  await init.text();
  const withSession = { ...headers, 'mcp-session-id': sessionId };
  const initialized = await fetch(url, {
    method: 'POST',
    headers: withSession,
    body: '{"jsonrpc":"2.0","method":"notifications/initialized"}',
  });
  await initialized.text();
  return async (body) => {
    const res = await fetch(url, { method: 'POST', headers: withSession, body });
    const raw = await res.text();
    if (!(res.headers.get('content-type') ?? '').includes('text/event-stream')) {
      return { ...(JSON.parse(raw) as RpcResponse), text: raw };
    }
    // SSE: the response is the event with an id.
    const messages = raw
      .split('\n')
      .filter((l) => l.startsWith('data: '))
      .map((l) => ({ ...(JSON.parse(l.slice(6)) as RpcResponse), text: l.slice(6) }));
    return messages.find((m) => m.id !== undefined)!;
  };
}

describe('input bounds over Streamable HTTP (real sidecar, real filesystem server)', () => {
  const dir = tempDir('sec-bounds');
  const sandbox = join(dir, 'sandbox');
  const auditPath = join(dir, 'audit', 'audit.log');
  let sidecar: Sidecar;
  let agent: Client;
  let raw: (body: string) => Promise<RawAnswer>;
  let nextId = 100;

  beforeAll(async () => {
    const { mkdirSync } = await import('node:fs');
    mkdirSync(sandbox, { recursive: true });
    sidecar = await startTestSidecar({
      upstreams: {
        fs: { command: process.execPath, args: [FILESYSTEM_BIN, sandbox], stderr: 'ignore' },
        ev: { command: process.execPath, args: [EVERYTHING_BIN, 'stdio'], stderr: 'ignore' },
        deep: { command: process.execPath, args: [DEEP_SERVER], stderr: 'ignore' },
      },
      policies: [
        {
          name: 'no-dirs',
          priority: 100,
          rules: [{ tool: 'fs__create_directory', action: 'deny' }],
        },
        DEFAULT_ALLOW,
      ],
      plugins: [{ module: SECRET_GUARD }],
      audit: { path: auditPath, flushIntervalMs: 0 },
      agents: [{ name: 'attacker' }],
    });
    const token = agentToken(sidecar, 'attacker');
    agent = await httpClient(sidecar.url!, token);
    raw = await rawHttpSession(sidecar.url!, token);
  });

  afterAll(async () => {
    await agent?.close();
    await closeSidecar(sidecar);
  });

  /** An ordinary call still works and lands on disk. */
  async function ordinaryCallWorks(name: string): Promise<void> {
    const path = join(sandbox, `${name}.txt`);
    const r = await agent.callTool({ name: 'fs__write_file', arguments: { path, content: 'ok' } });
    expect(r.isError, text(r)).toBeFalsy();
    expect(readFileSync(path, 'utf8')).toBe('ok');
  }

  for (const [kind, tool] of Object.entries(TOOLS)) {
    for (const [shape, { json, limit }] of Object.entries(SHAPES)) {
      it(`refuses ${shape} arguments on the ${kind} tool with FABRIC_ERR_INVALID_ARGUMENT`, async () => {
        const target = join(sandbox, `${kind}-${shape}`);
        const r = await raw(callBody(nextId++, tool, target, json));
        expect(r.result?.isError).toBe(true);
        expect(errorCode(r)).toBe('FABRIC_ERR_INVALID_ARGUMENT');
        expect(r.result?.content?.[0]?.text).toMatch(limit);
        // Never reached the upstream: nothing on disk.
        expect(existsSync(target)).toBe(false);
        await ordinaryCallWorks(`after-${kind}-${shape}`);
        // The refusal is in the audit log on disk (unknown names under their own name).
        await until(() =>
          auditLines(auditPath).some(
            (l) =>
              l.tool === tool &&
              l.decision === 'invalid' &&
              l.outcome === 'error' &&
              l.code === 'FABRIC_ERR_INVALID_ARGUMENT' &&
              l.durationMs !== undefined &&
              (shape === 'deep10k' || shape === 'deepArrays'
                ? l.argsDigest === null && typeof l.argsError === 'string'
                : typeof l.argsDigest === 'string'),
          ),
        );
      });
    }
  }

  it('counts the refusals in the metrics (unknown names folded into one label)', async () => {
    const res = await fetch(new URL('/metrics', sidecar.url), {
      headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
    });
    const body = await res.text();
    const count = (tool: string): number =>
      Number(
        new RegExp(
          `agent_fabric_requests_total\\{tool="${tool.replace(/[()]/g, '\\$&')}",decision="invalid",outcome="error"\\} (\\d+)`,
        ).exec(body)?.[1] ?? 0,
      );
    const shapes = Object.keys(SHAPES).length;
    expect(count('fs__write_file')).toBeGreaterThanOrEqual(shapes);
    expect(count('fs__create_directory')).toBeGreaterThanOrEqual(shapes);
    expect(count('(unknown)')).toBeGreaterThanOrEqual(shapes);
  });

  it('cuts a megabyte-long unknown tool name in the audit log (agents cannot flood it)', async () => {
    const name = `x${'y'.repeat(1 << 20)}`;
    const r = await raw(
      `{"jsonrpc":"2.0","id":${nextId++},"method":"tools/call","params":{"name":"${name}","arguments":{}}}`,
    );
    expect(r.error?.message).toMatch(/Unknown tool/);
    await until(() =>
      auditLines(auditPath).some(
        (l) => typeof l.tool === 'string' && l.tool.startsWith('xyyy') && l.tool.length === 257,
      ),
    );
  });

  it('refuses over-bound params of resources/read, prompts/get and completion/complete as InvalidParams', async () => {
    const prompt = (await agent.listPrompts()).prompts[0]!.name;
    // The SDK drops unknown keys of these params, but `_meta` is open and is forwarded as sent.
    const bodies = {
      'resources/read': `{"uri":"deep://doc","_meta":{"x":${deepObject(10_000)}}}`,
      'prompts/get': `{"name":"${prompt}","_meta":{"x":${deepArray(10_000)}}}`,
      'completion/complete': `{"ref":{"type":"ref/prompt","name":"${prompt}"},"argument":{"name":"a","value":"b"},"_meta":{"x":${SHAPES.wideArray!.json}}}`,
    };
    for (const [method, params] of Object.entries(bodies)) {
      const r = await raw(
        `{"jsonrpc":"2.0","id":${nextId++},"method":"${method}","params":${params}}`,
      );
      expect(r.error, method).toMatchObject({
        code: -32602,
        data: { code: 'FABRIC_ERR_INVALID_ARGUMENT' },
      });
      expect(r.error!.message).toMatch(
        /params (nest deeper than 64 levels|hold more than 100000 values)/,
      );
      await until(() =>
        auditLines(auditPath).some(
          (l) =>
            l.tool === method &&
            l.decision === 'invalid' &&
            l.code === 'FABRIC_ERR_INVALID_ARGUMENT',
        ),
      );
    }
    await ordinaryCallWorks('after-guarded');
  });

  it('lets arguments within the bounds through (64 levels, 100 000 values)', async () => {
    const path = join(sandbox, 'within.txt');
    // 1 + 4 members + 63 nested objects' members + 99 900 elements = 99 968 values, 64 levels.
    const inside = `{"path":${JSON.stringify(path)},"content":"fine","extra":${deepObject(63)},"list":[${'0,'.repeat(99_899)}0]}`;
    const r = await raw(
      `{"jsonrpc":"2.0","id":${nextId++},"method":"tools/call","params":{"name":"fs__write_file","arguments":${inside}}}`,
    );
    expect(r.result?.isError, JSON.stringify(r).slice(0, 300)).toBeFalsy();
    expect(readFileSync(path, 'utf8')).toBe('fine');
  });

  it('sends a 100 such requests at once, and stays up', async () => {
    const results = await Promise.all(
      Array.from({ length: 100 }, (_, i) =>
        raw(
          callBody(
            nextId++,
            i % 2 ? TOOLS.unknown : TOOLS.known,
            join(sandbox, `burst-${i}`),
            deepObject(10_000),
          ),
        ),
      ),
    );
    expect(results.every((r) => errorCode(r) === 'FABRIC_ERR_INVALID_ARGUMENT')).toBe(true);
    await ordinaryCallWorks('after-burst');
  });

  describe('a hostile upstream answering with JSON nested 10 000 levels deep', () => {
    it('answers the agent with an error instead of hanging (plain JSON response)', async () => {
      const r = await raw(
        `{"jsonrpc":"2.0","id":${nextId++},"method":"tools/call","params":{"name":"deep__deep","arguments":{}}}`,
      );
      expect(r.error).toMatchObject({ code: -32603, data: { code: 'FABRIC_ERR_INTERNAL' } });
      expect(r.error!.message).toMatch(/could not be serialized/);
      await ordinaryCallWorks('after-deep-result');
    });

    it('passes a shallow result on as the upstream wrote it, however many braces its strings hold', async () => {
      // The fast path's answer is the upstream's text, not serialized again (numbers as written).
      const id = nextId++;
      const r = await raw(
        `{"jsonrpc":"2.0","id":${id},"method":"tools/call","params":{"name":"deep__exact","arguments":{}}}`,
      );
      expect(r.text).toBe(
        `{"result":{"content":[{"type":"text","text":"${'{['.repeat(600)}"}],"structuredContent":{"n":1.50,\r"big":12345678901234567890}},"jsonrpc":"2.0","id":${id}}`,
      );
    });

    it('answers on the SSE stream too (a progress notification came first)', async () => {
      const r = await raw(
        `{"jsonrpc":"2.0","id":${nextId++},"method":"tools/call","params":{"name":"deep__deep","arguments":{},"_meta":{"progressToken":"p1"}}}`,
      );
      expect(r.error).toMatchObject({ code: -32603 });
      await ordinaryCallWorks('after-deep-sse');
    });

    it('settles and audits the call (the token estimate does not throw), on the SDK path too', async () => {
      const r = await raw(
        `{"jsonrpc":"2.0","id":${nextId++},"method":"tools/call","params":{"name":"deep__deep_meta","arguments":{}}}`,
      );
      expect(r.error).toMatchObject({ code: -32603 });
      await until(() =>
        auditLines(auditPath).some(
          (l) =>
            l.tool === 'deep__deep_meta' && l.outcome === 'ok' && (l.tokens as number) > 10_000,
        ),
      );
      const read = await raw(
        `{"jsonrpc":"2.0","id":${nextId++},"method":"resources/read","params":{"uri":"deep://doc"}}`,
      );
      expect(read.error).toMatchObject({ code: -32603 });
      await until(() =>
        auditLines(auditPath).some(
          (l) => l.tool === 'resources/read' && l.outcome === 'ok' && (l.tokens as number) > 10_000,
        ),
      );
      await ordinaryCallWorks('after-deep-meta');
    });
  });
});

/** A raw JSON-RPC client on a child's stdin/stdout. */
class RawStdio {
  readonly child: ChildProcessWithoutNullStreams;
  readonly #waiting = new Map<unknown, (m: RpcResponse) => void>();

  constructor(args: readonly string[]) {
    const { FABRIC_AGENT_TOKEN: _t, FABRIC_URL: _u, ...env } = process.env;
    this.child = spawn(process.execPath, ['--import', TSX, CLI_MAIN, ...args], {
      env: { ...env, FABRIC_STATE: 'memory' },
    });
    this.child.stderr.resume();
    createInterface({ input: this.child.stdout }).on('line', (line) => {
      let m: RpcResponse;
      try {
        m = JSON.parse(line) as RpcResponse;
      } catch {
        return;
      }
      this.#waiting.get(m.id)?.(m);
    });
  }

  request(id: number, line: string): Promise<RpcResponse> {
    const answer = new Promise<RpcResponse>((resolve) => this.#waiting.set(id, resolve));
    this.child.stdin.write(`${line}\n`);
    return answer;
  }

  async initialize(): Promise<void> {
    await this.request(1, JSON.stringify(INIT));
    this.child.stdin.write('{"jsonrpc":"2.0","method":"notifications/initialized"}\n');
  }

  /** Stops the child as a supervisor would (SIGTERM) and waits for it to exit. */
  async close(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    const exited = new Promise((resolve) => this.child.once('exit', resolve));
    this.child.kill('SIGTERM');
    await exited;
  }
}

describe('input bounds over stdio (in-process gateway, and the stdio bridge)', () => {
  const dir = tempDir('sec-bounds-stdio');
  const sandbox = join(dir, 'sandbox');
  const auditPath = join(dir, 'audit.log');
  const configFile = join(dir, 'fabric.yaml');
  let sidecar: Sidecar;

  beforeAll(async () => {
    const { mkdirSync } = await import('node:fs');
    mkdirSync(sandbox, { recursive: true });
    writeFileSync(
      configFile,
      `adminToken: admin-token-for-bounds-tests-0123456789
upstreams:
  fs:
    command: '\${NODE}'
    args: ['\${FILESYSTEM_SERVER_BIN}', '${sandbox}']
    stderr: ignore
  deep:
    command: '\${NODE}'
    args: ['${DEEP_SERVER}']
    stderr: ignore
audit: { path: '${auditPath}', flushIntervalMs: 0 }
policies:
  - name: no-dirs
    priority: 100
    rules:
      - { tool: fs__create_directory, action: deny }
  - name: default-allow
    rules:
      - { tool: '*', action: allow }
agents:
  - name: stdio-attacker
`,
    );
    sidecar = await startTestSidecar({
      upstreams: {
        fs: { command: process.execPath, args: [FILESYSTEM_BIN, sandbox], stderr: 'ignore' },
      },
      policies: [DEFAULT_ALLOW],
      agents: [{ name: 'bridged' }],
    });
  });

  afterAll(() => closeSidecar(sidecar));

  it('in-process stdio: refuses every hostile shape, stays alive, and audits on disk', async () => {
    const stdio = new RawStdio(['mcp', '--in-process', '--config', configFile]);
    try {
      await stdio.initialize();
      let id = 10;
      for (const [kind, tool] of Object.entries(TOOLS)) {
        for (const [shape, { json, limit }] of Object.entries(SHAPES)) {
          const target = join(sandbox, `${kind}-${shape}`);
          const r = await stdio.request(id, callBody(id++, tool, target, json));
          expect(errorCode(r), `${kind} ${shape}`).toBe('FABRIC_ERR_INVALID_ARGUMENT');
          expect(r.result?.content?.[0]?.text).toMatch(limit);
          expect(existsSync(target)).toBe(false);
        }
      }
      // The upstream's deep answer passes through stdio as the upstream wrote it (no
      // re-serialization), and the process survives its token estimate and audit.
      const deep = await stdio.request(
        id,
        `{"jsonrpc":"2.0","id":${id++},"method":"tools/call","params":{"name":"deep__deep","arguments":{}}}`,
      );
      expect(deep.result?.content?.[0]?.text).toBe('deep');
      const path = join(sandbox, 'after.txt');
      const ok = await stdio.request(
        id,
        `{"jsonrpc":"2.0","id":${id++},"method":"tools/call","params":{"name":"fs__write_file","arguments":{"path":${JSON.stringify(path)},"content":"ok"}}}`,
      );
      expect(ok.result?.isError).toBeFalsy();
      expect(readFileSync(path, 'utf8')).toBe('ok');
      expect(alive(stdio.child.pid!)).toBe(true);
      await until(() => {
        const refused = auditLines(auditPath).filter(
          (l) => l.decision === 'invalid' && l.code === 'FABRIC_ERR_INVALID_ARGUMENT',
        );
        return refused.length === Object.keys(TOOLS).length * Object.keys(SHAPES).length;
      });
      await until(() =>
        auditLines(auditPath).some((l) => l.tool === 'deep__deep' && l.outcome === 'ok'),
      );
    } finally {
      await stdio.close();
    }
  });

  it('stdio bridge: a request it cannot forward is answered, not left waiting', async () => {
    const token = agentToken(sidecar, 'bridged');
    const bridge = new RawStdio(['mcp', '--agent-token', token, '--url', sidecar.url!]);
    try {
      await bridge.initialize();
      const r = await bridge.request(
        7,
        callBody(7, TOOLS.known, join(sandbox, 'bridged'), deepObject(10_000)),
      );
      expect(r.error?.message).toMatch(/could not forward/);
      // Within what JSON.stringify can do, the sidecar's own bound answers.
      const r2 = await bridge.request(
        8,
        callBody(8, TOOLS.known, join(sandbox, 'bridged'), deepObject(100)),
      );
      expect(errorCode(r2)).toBe('FABRIC_ERR_INVALID_ARGUMENT');
      expect(existsSync(join(sandbox, 'bridged'))).toBe(false);
      const path = join(sandbox, 'bridged-ok.txt');
      const ok = await bridge.request(
        9,
        `{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"fs__write_file","arguments":{"path":${JSON.stringify(path)},"content":"ok"}}}`,
      );
      expect(ok.result?.isError).toBeFalsy();
      expect(readFileSync(path, 'utf8')).toBe('ok');
    } finally {
      await bridge.close();
    }
  });
});

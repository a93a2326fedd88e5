/**
 * What the gateway suite and `tools/callgrind-stdio.ts` share: the sidecar config of the gateway
 * cases, and a raw-line MCP client driving a child process over stdio.
 */
import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ROOT } from './lib.js';

/** A child driven by {@link rawMcpPeer}. */
export interface RawMcpPeer {
  pid: number;
  run(n: number, concurrency: number): Promise<void>;
  /** Ends the child (SIGTERM). */
  close(): void;
  /** Resolves once the child exited. */
  exited: Promise<void>;
}

/**
 * The sidecar config of every gateway case: policy deny-by-default with a conditional deny that
 * must be evaluated on each echo call, a budget (reserve + settle per call), tool costs, audit.
 */
export function writeConfig(
  dir: string,
  name = 'fabric.yaml',
  upstream: { command: string; args: string[] } = {
    command: '${NODE}',
    args: ['${EVERYTHING_SERVER_BIN}', 'stdio'],
  },
): string {
  const file = join(dir, name);
  const config = {
    http: { host: '127.0.0.1', port: 0 },
    upstreams: { ev: { ...upstream, stderr: 'ignore' } },
    policies: [
      {
        name: 'guard',
        priority: 100,
        rules: [
          { tool: 'ev__echo', action: 'deny', conditions: { message: 'forbidden*' } },
          { tool: 'ev__write_*', action: 'deny' },
        ],
      },
      { name: 'allow-ev', rules: [{ tool: 'ev__*', action: 'allow' }] },
    ],
    budget: { maxTokensPerHour: 1e12, maxCostPerDay: 1e9 },
    toolCosts: { 'ev__*': 0.001 },
    agents: [{ name: 'bench-agent' }],
    audit: { path: join(dir, `${name}.audit.log`) },
    // Durable, as `serve` is by default, but never the repository's own .fabric/state.db.
    state: { path: join(dir, `${name}.state.db`) },
  };
  writeFileSync(file, JSON.stringify(config, null, 2));
  return file;
}

/**
 * A JSON-RPC client speaking raw lines to a child over stdio: no SDK, no validation, so the
 * client costs little next to the process under test. After the MCP handshake, `run` makes
 * `n` calls of `tool` at `concurrency` in flight. `command` runs `args` (node by default).
 */
export async function rawMcpPeer(
  args: string[],
  tool: string,
  command = process.execPath,
): Promise<RawMcpPeer> {
  const child = spawn(command, args, { cwd: ROOT, stdio: ['pipe', 'pipe', 'ignore'] });
  const waiting = new Map<string | number, (line: string) => void>();
  let pending = '';
  child.stdout.setEncoding('utf8');
  child.stdout.on('data', (chunk: string) => {
    pending += chunk;
    let start = 0;
    for (let nl = pending.indexOf('\n'); nl >= 0; nl = pending.indexOf('\n', start)) {
      const line = pending.slice(start, nl);
      start = nl + 1;
      const id = (JSON.parse(line) as { id?: string | number }).id;
      const resolve = id === undefined ? undefined : waiting.get(id);
      if (resolve) {
        waiting.delete(id!);
        resolve(line);
      }
    }
    pending = pending.slice(start);
  });
  const exited = new Promise<never>((_, reject) =>
    child.once('exit', (code) => reject(new Error(`${args.join(' ')} exited (${code})`))),
  );
  exited.catch(() => undefined);
  const rpc = (id: string | number, method: string, params?: object): Promise<string> =>
    Promise.race([
      exited,
      new Promise<string>((resolve) => {
        waiting.set(id, resolve);
        child.stdin.write(JSON.stringify({ jsonrpc: '2.0', id, method, params }) + '\n');
      }),
    ]);
  await rpc('init', 'initialize', {
    protocolVersion: '2025-06-18',
    capabilities: {},
    clientInfo: { name: 'bench-agent', version: '1.0.0' },
  });
  child.stdin.write(JSON.stringify({ jsonrpc: '2.0', method: 'notifications/initialized' }) + '\n');
  const tools = await rpc('list', 'tools/list');
  if (!tools.includes(`"${tool}"`)) throw new Error(`no tool ${tool}: ${tools}`);
  let next = 0;
  return {
    pid: child.pid!,
    async run(n, concurrency) {
      let left = n;
      await Promise.all(
        Array.from({ length: concurrency }, async () => {
          while (left-- > 0) {
            const id = next++;
            const line = await rpc(id, 'tools/call', {
              name: tool,
              arguments: { message: `m${id}` },
            });
            if (line.includes('"isError":true') || line.includes('"error"')) {
              throw new Error(`${tool} failed: ${line}`);
            }
          }
        }),
      );
    },
    close: () => child.kill('SIGTERM'),
    exited: exited.catch(() => undefined),
  };
}

/**
 * Instructions per forwarded stdio call, under callgrind (not part of `npm run bench`; needs
 * `valgrind`, run with
 * `npx tsx bench/tools/callgrind-stdio.ts [gateway|relay] [warm-up] [calls] [in-flight]` after
 * `npm run build`):
 *
 * the gateway as `stdio-cpu-per-call` runs it (`mcp --in-process` with the bench's echo config:
 * policy with a conditional rule, budget reserve + settle, tool costs, audit, SQLite state), or
 * the minimal JSON-RPC relay of that case, in front of the echo server, driven by a raw-line
 * client with `in-flight` calls in flight (default 1). Instrumentation is switched on (`callgrind_control -i on`)
 * only after the warm-up, so the count covers `calls` calls of steady state; it includes what
 * V8's collector and compiler did in that window, which moves from run to run by a few thousand
 * instructions per call (compare several runs of each side).
 *
 * With one call in flight the count hardly depends on the machine's load, so two builds can be
 * compared on a busy machine where CPU time cannot. With more in flight it does: how many
 * lines each read of a pipe brings (and so what is shared between calls) follows how the
 * kernel schedules the three processes — 32 in flight, as the bench runs, read 59–65k for one
 * build on a quiet machine and 80k under load. Counts do not follow CPU time closely either
 * (the gateway retires fewer instructions per cycle than the relay: see bench/RESULTS.md).
 */
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { shebangNodeOptions } from '../lib.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const ECHO = join(ROOT, 'bench/fixtures/echo-mcp-server.mjs');
const RELAY = join(ROOT, 'bench/fixtures/json-relay.mjs');

const kind = process.argv[2] ?? 'gateway';
const warm = Number(process.argv[3] ?? 20_000);
const calls = Number(process.argv[4] ?? 10_000);
const inFlight = Number(process.argv[5] ?? 1);
if (
  (kind !== 'gateway' && kind !== 'relay') ||
  ![warm, calls, inFlight].every((n) => Number.isInteger(n) && n > 0)
) {
  console.error(
    'usage: npx tsx bench/tools/callgrind-stdio.ts [gateway|relay] [warm-up] [calls] [in-flight] (positive integers)',
  );
  process.exit(2);
}

const dir = mkdtempSync(join(tmpdir(), 'callgrind-stdio-'));
const config = join(dir, 'echo.json');
writeFileSync(
  config,
  JSON.stringify({
    http: { host: '127.0.0.1', port: 0 },
    upstreams: { ev: { command: process.execPath, args: [ECHO], stderr: 'ignore' } },
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
    audit: { path: join(dir, 'audit.log') },
    state: { path: join(dir, 'state.db') },
  }),
);
const out = join(dir, 'callgrind.out');
const nodeArgs =
  kind === 'gateway'
    ? [
        ...shebangNodeOptions(),
        join(ROOT, 'dist/cli/main.js'),
        'mcp',
        '--in-process',
        '--config',
        config,
      ]
    : [RELAY, process.execPath, ECHO];
const tool = kind === 'gateway' ? 'ev__echo' : 'echo';
const child = spawn(
  'valgrind',
  [
    '--tool=callgrind',
    '--instr-atstart=no',
    '--smc-check=all-non-file', // V8 writes the code it runs
    `--callgrind-out-file=${out}`,
    process.execPath,
    ...nodeArgs,
  ],
  { cwd: ROOT, stdio: ['pipe', 'pipe', 'ignore'] },
);
const exited = new Promise<never>((_, reject) =>
  child.once('exit', (code) => reject(new Error(`${kind} exited (${code})`))),
);
exited.catch(() => undefined);

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
    if (resolve !== undefined) {
      waiting.delete(id!);
      resolve(line);
    }
  }
  pending = pending.slice(start);
});
const rpc = (id: string | number, method: string, params?: object): Promise<string> =>
  Promise.race([
    exited,
    new Promise<string>((resolve) => {
      waiting.set(id, resolve);
      child.stdin.write(JSON.stringify({ jsonrpc: '2.0', id, method, params }) + '\n');
    }),
  ]);

let next = 0;
async function run(n: number): Promise<void> {
  let left = n;
  await Promise.all(
    Array.from({ length: inFlight }, async () => {
      while (left-- > 0) {
        const id = next++;
        const line = await rpc(id, 'tools/call', { name: tool, arguments: { message: `m${id}` } });
        if (line.includes('"isError":true') || line.includes('"error"')) throw new Error(line);
      }
    }),
  );
}

try {
  await rpc('init', 'initialize', {
    protocolVersion: '2025-06-18',
    capabilities: {},
    clientInfo: { name: 'bench-agent', version: '1.0.0' },
  });
  child.stdin.write(JSON.stringify({ jsonrpc: '2.0', method: 'notifications/initialized' }) + '\n');
  await rpc('list', 'tools/list');
  await run(warm);
  // valgrind runs node in its own process: the pid is the one callgrind_control names.
  execFileSync('callgrind_control', ['-i', 'on', String(child.pid)], { stdio: 'ignore' });
  await run(calls);
  execFileSync('callgrind_control', ['-i', 'off', String(child.pid)], { stdio: 'ignore' });
} finally {
  child.kill('SIGTERM');
  await exited.catch(() => undefined);
}
let total = 0;
for (const f of readdirSync(dir).filter((name) => name.startsWith('callgrind.out'))) {
  const m = /^totals: (\d+)/m.exec(readFileSync(join(dir, f), 'utf8'));
  if (m) total += Number(m[1]);
}
rmSync(dir, { recursive: true, force: true });
console.log(
  `${kind}: ${(total / calls / 1000).toFixed(1)}k instructions per call (${calls} calls after ${warm} of warm-up, ${inFlight} in flight)`,
);

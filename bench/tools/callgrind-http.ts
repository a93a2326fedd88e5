/**
 * Instructions per Streamable HTTP `tools/call` on `agent-fabric serve`'s main thread, under
 * callgrind (not part of `npm run bench`; needs `valgrind`, run with
 * `npx tsx bench/tools/callgrind-http.ts [warm-up] [calls] [in-flight]` after `npm run build`):
 *
 * `serve` with the config of `http-cpu-per-call` (bearer auth, a policy with a conditional rule,
 * budget reserve + settle, tool costs, audit, SQLite state) in front of the bench's echo server,
 * driven by the official SDK client with `in-flight` calls in flight (default 1).
 * Instrumentation is switched on (`callgrind_control -i on`) only after the warm-up, and each
 * thread is counted apart (`--separate-threads`): the figure is the main thread's, which is where
 * the sidecar's own work runs; V8's background threads are printed beside it.
 *
 * With one call in flight the count hardly depends on the machine's load, except what runs on
 * timers (the audit log's flush interval, the budget clock, the state's checks): those fire per
 * unit of time, and a call under callgrind takes milliseconds, so they weigh far more per call
 * than at full speed and move with the load. Compare builds on the count without them
 * (`callgrind_annotate --inclusive=yes`: subtract `uv__run_timers` and `Heap::CollectGarbage`),
 * as bench/RESULTS.md does.
 */
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { callgrindArgs, callgrindPerCall } from '../fixtures/callgrind-totals.js';
import { writeConfig } from '../fixtures/gateway-peers.js';
import { linkedSignalFetch } from '../../src/gateway/upstream.js';
import { cliArgs, ROOT } from '../lib.js';

const warm = Number(process.argv[2] ?? 12_000);
const calls = Number(process.argv[3] ?? 3_000);
const concurrency = Number(process.argv[4] ?? 1);
if (![warm, calls, concurrency].every((n) => Number.isInteger(n) && n > 0)) {
  console.error('usage: npx tsx bench/tools/callgrind-http.ts [warm-up] [calls] [in-flight]');
  process.exit(2);
}
const dir = mkdtempSync(join(tmpdir(), 'callgrind-http-'));
const echoServer = join(ROOT, 'bench/fixtures/echo-mcp-server.mjs');
const config = writeConfig(dir, 'echo.json', { command: process.execPath, args: [echoServer] });
const out = join(dir, 'callgrind.out');
const child = spawn(
  'valgrind',
  [...callgrindArgs(out), ...cliArgs(['serve', '--config', config])],
  { cwd: ROOT, stdio: ['ignore', 'pipe', 'ignore'] },
);
const { url, token } = await new Promise<{ url: string; token: string }>((resolve, reject) => {
  let text = '';
  child.once('exit', (code) => reject(new Error(`serve exited (${code}): ${text}`)));
  child.stdout!.setEncoding('utf8');
  child.stdout!.on('data', (chunk: string) => {
    text += chunk;
    const u = /MCP URL:\s+(\S+)/.exec(text)?.[1];
    const t = /agent token:\s+(\S+)/.exec(text)?.[1];
    if (u && t) resolve({ url: u, token: t });
  });
});
const client = new Client({ name: 'bench-agent', version: '1.0.0' });
await client.connect(
  new StreamableHTTPClientTransport(new URL(url), {
    requestInit: { headers: { authorization: `Bearer ${token}` } },
    fetch: linkedSignalFetch(fetch),
  }),
);
let next = 0;
const run = async (n: number): Promise<void> => {
  let left = n;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (left-- > 0) {
        const i = next++;
        const r = await client.callTool({ name: 'ev__echo', arguments: { message: `m${i}` } });
        if (r.isError) throw new Error(`echo failed: ${JSON.stringify(r.content)}`);
      }
    }),
  );
};
try {
  await run(warm);
  execFileSync('callgrind_control', ['-i', 'on', String(child.pid)], { stdio: 'ignore' });
  await run(calls);
  execFileSync('callgrind_control', ['-i', 'off', String(child.pid)], { stdio: 'ignore' });
} finally {
  await client.close().catch(() => undefined);
  const exited = new Promise((r) => child.once('exit', r));
  child.kill('SIGTERM');
  await exited;
}
const { summary } = callgrindPerCall(dir, calls);
if (process.env.KEEP_CALLGRIND) console.log(`kept ${dir}`);
else rmSync(dir, { recursive: true, force: true });
console.log(`${summary} (${calls} calls after ${warm} of warm-up, ${concurrency} in flight)`);

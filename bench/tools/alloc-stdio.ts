/**
 * Bytes allocated per forwarded stdio call (not part of `npm run bench`; needs `stdbuf`, run with
 * `npx tsx bench/tools/alloc-stdio.ts [gateway|relay] [warm-up] [calls] [in-flight]` after
 * `npm run build`):
 *
 * the gateway as `stdio-cpu-per-call` runs it (`mcp --in-process` with the bench's echo config),
 * or the minimal JSON relay of that case, in front of the echo server, driven by a raw-line client
 * with `in-flight` calls in flight (default 32, as the bench). The child runs with
 * `--trace-gc-nvp`, which prints a line per collection on stdout (line-buffered by `stdbuf`, so
 * never inside an MCP line) whose `allocated` is what was allocated since the previous one; their
 * sum over the `calls` after the warm-up, divided by `calls`, is the figure. It hardly depends on
 * the machine's load, unlike CPU time, so two builds can be compared on a busy machine (runs of
 * one build spread ±100 B over 60,000 calls: a collection is ~6 MB).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { rawMcpPeer, writeConfig } from '../fixtures/gateway-peers.js';
import { CLI, ROOT, shebangNodeOptions } from '../lib.js';

const ECHO = join(ROOT, 'bench/fixtures/echo-mcp-server.mjs');
const RELAY = join(ROOT, 'bench/fixtures/json-relay.mjs');

const kind = process.argv[2] ?? 'gateway';
const warm = Number(process.argv[3] ?? 30_000);
const calls = Number(process.argv[4] ?? 60_000);
const inFlight = Number(process.argv[5] ?? 32);
if (
  (kind !== 'gateway' && kind !== 'relay') ||
  ![warm, calls, inFlight].every((n) => Number.isInteger(n) && n > 0)
) {
  console.error(
    'usage: npx tsx bench/tools/alloc-stdio.ts [gateway|relay] [warm-up] [calls] [in-flight] (positive integers)',
  );
  process.exit(2);
}

const dir = mkdtempSync(join(tmpdir(), 'alloc-stdio-'));
// The config of `stdio-cpu-per-call`.
const config = writeConfig(dir, 'echo.json', { command: process.execPath, args: [ECHO] });
const nodeArgs =
  kind === 'gateway'
    ? [...shebangNodeOptions(), '--trace-gc-nvp', CLI, 'mcp', '--in-process', '--config', config]
    : ['--trace-gc-nvp', RELAY, process.execPath, ECHO];
let allocated = 0;
let collections = 0;
const peer = await rawMcpPeer(
  ['-oL', process.execPath, ...nodeArgs],
  kind === 'gateway' ? 'ev__echo' : 'echo',
  'stdbuf',
  (line) => {
    const m = /\ballocated=(\d+)/.exec(line);
    if (m) {
      allocated += Number(m[1]);
      collections++;
    }
  },
);
const settle = (): Promise<void> => new Promise((resolve) => setTimeout(resolve, 200));
let perCall: number;
let counted: number;
try {
  await peer.run(warm, inFlight);
  await settle(); // the warm-up's last collection lines
  const [a0, c0] = [allocated, collections];
  await peer.run(calls, inFlight);
  await settle();
  perCall = (allocated - a0) / calls;
  counted = collections - c0;
} finally {
  peer.close();
  await peer.exited;
  rmSync(dir, { recursive: true, force: true });
}
console.log(
  `${kind}: ${perCall.toFixed(0)} B allocated per call (${counted} collections over ${calls} calls after ${warm} of warm-up, ${inFlight} in flight)`,
);

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
import { rmSync } from 'node:fs';
import { rawMcpPeer, stdioToolRun } from '../fixtures/gateway-peers.js';

const { kind, warm, calls, inFlight, dir, nodeArgs, tool } = stdioToolRun(
  'alloc-stdio',
  { warm: 30_000, calls: 60_000, inFlight: 32 },
  ['--trace-gc-nvp'],
);
let allocated = 0;
let collections = 0;
const peer = await rawMcpPeer(['-oL', process.execPath, ...nodeArgs], tool, 'stdbuf', (line) => {
  const m = /\ballocated=(\d+)/.exec(line);
  if (m) {
    allocated += Number(m[1]);
    collections++;
  }
});
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

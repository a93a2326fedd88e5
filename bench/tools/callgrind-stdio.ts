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
 * only after the warm-up, so the count covers `calls` calls of steady state, and each thread is
 * counted apart (`--separate-threads`): the figure is the main thread's, where the gateway's own
 * JavaScript runs, V8's background threads printed beside it (as `callgrind-http.ts` does;
 * `CALLGRIND_NODE_ARGS=--perf-basic-prof` names the JIT code, `KEEP_CALLGRIND=1` keeps the
 * files). It includes what V8's collector and compiler did on that thread in that window, which
 * moves from run to run by a few thousand instructions per call (compare several runs of each
 * side, or subtract `Heap::CollectGarbage` and the compiler's functions in
 * `callgrind_annotate --inclusive=yes`).
 *
 * With one call in flight the count hardly depends on the machine's load, so two builds can be
 * compared on a busy machine where CPU time cannot. With more in flight it does: how many
 * lines each read of a pipe brings (and so what is shared between calls) follows how the
 * kernel schedules the three processes — 32 in flight, as the bench runs, read 59–65k for one
 * build on a quiet machine and 80k under load. Counts do not follow CPU time closely either
 * (the gateway retires fewer instructions per cycle than the relay: see bench/RESULTS.md).
 */
import { execFileSync } from 'node:child_process';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { callgrindArgs, callgrindPerCall } from '../fixtures/callgrind-totals.js';
import { rawMcpPeer, stdioToolRun } from '../fixtures/gateway-peers.js';

const { kind, warm, calls, inFlight, dir, nodeArgs, tool } = stdioToolRun('callgrind-stdio', {
  warm: 20_000,
  calls: 10_000,
  inFlight: 1,
});
const out = join(dir, 'callgrind.out');
const peer = await rawMcpPeer([...callgrindArgs(out), ...nodeArgs], tool, 'valgrind');
try {
  await peer.run(warm, inFlight);
  // valgrind runs node in its own process: the pid is the one callgrind_control names.
  execFileSync('callgrind_control', ['-i', 'on', String(peer.pid)], { stdio: 'ignore' });
  await peer.run(calls, inFlight);
  execFileSync('callgrind_control', ['-i', 'off', String(peer.pid)], { stdio: 'ignore' });
} finally {
  peer.close();
  await peer.exited;
}
const { summary } = callgrindPerCall(dir, calls);
if (process.env.KEEP_CALLGRIND) console.log(`kept ${dir}`);
else rmSync(dir, { recursive: true, force: true });
console.log(`${kind}: ${summary} (${calls} calls after ${warm} of warm-up, ${inFlight} in flight)`);

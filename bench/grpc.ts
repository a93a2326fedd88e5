/**
 * The gRPC agent protocol against the in-process API and against MCP, in the same run over real
 * grpc-js clients (protobuf binary over HTTP/2 on loopback).
 *
 * - schedule-unary: `FabricService.ScheduleTaskToPool` with the admin token, 32 calls in flight,
 *   against a `startGrpcServer` over an in-memory fabric in its own process
 *   (fixtures/grpc-schedule-server.ts, forked), vs `fabric.scheduleToPool` run in that server
 *   process at the same concurrency (the call the RPC makes). The pool has one remote agent
 *   that nobody drains: the tasks stay queued, so both sides measure scheduling alone. Rounds
 *   alternate; tasks/s from the median round, p50/p99 of each RPC over all rounds (the
 *   baseline's from its median round). Client and server have their own event loops but share
 *   the machine's 2 cores. `BENCH_GRPC_CPU_PROF=<dir>` writes the server process's CPU profile
 *   there (`--cpu-prof`), and calltool-grpc's sidecar's.
 * - schedule-unary-vs-health (diagnostic): the same ScheduleTaskToPool rounds against the
 *   standard `grpc.health.v1.Health/Check` on the same server and client setup (no auth, no
 *   fabric work), interleaved: how much of the RPC cost is grpc-js itself, which bounds
 *   schedule-unary's ratio whatever the fabric does.
 * - grpc-unary-floor (diagnostic): a bare grpc-js unary echo (fixtures/grpc-echo.ts: bytes in,
 *   same bytes out; no protobuf, no auth, no fabric) served from the same server process, same
 *   client, same concurrency, interleaved with the rounds above, against the same in-process
 *   baseline: its ratio is the ceiling of schedule-unary's on this machine — what the ratio
 *   would be if the fabric's service cost nothing. schedule-unary's goal column shows it.
 * - claim-complete: one remote worker's loop, one task at a time — claim (no wait: the tasks are
 *   queued for it beforehand) then complete — over `AgentService.ClaimTask` + `CompleteTask`
 *   with the agent's credential, vs the same loop over the MCP fabric tools
 *   (`fabric__claim_task` + `fabric__complete_task`) with the official SDK client over Streamable
 *   HTTP. Both go to one sidecar (`state: memory`) serving MCP and gRPC; each side has its own
 *   start-up agent and the same number of tasks per round. Tasks/s and p50/p99 per task
 *   (claim + complete).
 * - calltool-grpc (diagnostic): `ToolService.CallTool` of an echo tool with an agent credential,
 *   32 in flight, through `agent-fabric serve` (a child process started as the bin link starts
 *   it; gateway, policy with a conditional rule, budget reserve + settle, tool costs, audit and
 *   durable state on, as in bench/gateway) to a stdio upstream (fixtures/echo-mcp-server.mjs),
 *   vs the same tool called on that upstream directly over stdio (SDK client, a second process
 *   of the same fixture), 32 in flight: what the gRPC door and the gateway cost on top of the
 *   tool. Arguments and result go as JSON (`arguments_json`, `RESULT_ENCODING_JSON`). Calls/s
 *   from the median round, p50/p99 of every call.
 * - calltool-grpc-vs-http (diagnostic): the same CallTool rounds against `tools/call` of the same
 *   tool over Streamable HTTP (SDK client) on the same sidecar, interleaved: the gRPC door
 *   against the MCP door of one gateway.
 * - calltool-grpc-cpu-per-call (diagnostic): the sidecar process's CPU time per CallTool against
 *   per Streamable HTTP `tools/call`, over the same interleaved rounds (after a warm-up of both).
 *   Linux only (/proc/<pid>/stat, 10 ms ticks).
 *
 * BENCH_GRPC_CASES=<case,…> runs only those groups: `schedule-unary` (with its two diagnostics),
 * `claim-complete`, `calltool-grpc` (with its two).
 */
import { fork } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import {
  create,
  type DescMessage,
  type DescService,
  type MessageInitShape,
} from '@bufbuild/protobuf';
import {
  credentials,
  makeGenericClientConstructor,
  Metadata,
  status,
  type Client as GrpcClient,
  type ServiceError,
} from '@grpc/grpc-js';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js';
// The built package, as users run it (`npm run bench` builds first; see tsconfig.bench.json).
import type { AgentFabric } from 'agent-fabric';
import {
  AGENT_SERVICE_DEFINITION,
  fabricServices,
  grpcDefinition,
  parseSidecarConfig,
  Sidecar,
  TOOL_SERVICE_DEFINITION,
} from 'agent-fabric';
import { linkedSignalFetch } from '../src/gateway/upstream.js';
// Service descriptors (generated code the package does not export).
import { Health } from '../src/gen/grpc/health/v1/health_pb.js';
import { FabricService } from '../src/gen/fabric/v1/fabric_pb.js';
import { ResultEncoding, ToolService } from '../src/gen/fabric/v1/tool_pb.js';
import { ECHO_DEFINITION } from './fixtures/grpc-echo.js';
import {
  inFlight,
  Latency,
  median,
  cpuMeter,
  startServe,
  stopChild,
  type BenchContext,
  type BenchSuite,
} from './lib.js';

const ADMIN = 'bench-admin-token-0123456789abcdef';
const IN_FLIGHT = 32;
const ECHO_SERVER = fileURLToPath(new URL('./fixtures/echo-mcp-server.mjs', import.meta.url));

/** Case groups to run: all, or those named in BENCH_GRPC_CASES (comma-separated). */
function wanted(name: string): boolean {
  const only = process.env['BENCH_GRPC_CASES'];
  return !only || only.split(',').includes(name);
}

type Unary = (
  req: unknown,
  md: Metadata,
  cb: (err: ServiceError | null, res: unknown) => void,
) => void;

/** A unary call of `method` on a grpc-js client with a bearer credential. */
function unary<T>(client: GrpcClient, method: string, md: Metadata, req: unknown): Promise<T> {
  return new Promise((resolve, reject) =>
    (client as unknown as Record<string, Unary>)[method]!.call(client, req, md, (err, res) =>
      err ? reject(err) : resolve(res as T),
    ),
  );
}

function bearer(credential: string): Metadata {
  const md = new Metadata();
  md.set('authorization', `Bearer ${credential}`);
  return md;
}

/** The service descriptor `typeName` among the fabric's gRPC services. */
function service(fabric: AgentFabric, typeName: string): DescService {
  const found = fabricServices(fabric).find((s) => s.service.typeName === typeName);
  if (!found) throw new Error(`no gRPC service ${typeName}`);
  return found.service;
}

/** The request message of `method` of `svc`, built from `init`. */
function request(svc: DescService, method: string, init: Record<string, unknown>): unknown {
  const input = svc.methods.find((m) => m.localName === method)!.input;
  return create(input, init as MessageInitShape<DescMessage>);
}

/** The schedule-unary server process (bench/fixtures/grpc-schedule-server.ts). */
interface ServerProcess {
  readonly address: string;
  /** The bare grpc-js echo server beside it (fixtures/grpc-echo.ts). */
  readonly echoAddress: string;
  /** Runs `n` in-process scheduleToPool calls there, IN_FLIGHT at a time. */
  baseline(n: number): Promise<{ rate: number; p50Us: number; p99Us: number }>;
  stop(): Promise<void>;
}

/**
 * Forks the schedule-unary server. With `BENCH_GRPC_CPU_PROF=<dir>` it runs with
 * `--cpu-prof --cpu-prof-dir=<dir>` (the profile is written when it stops).
 */
async function forkServer(): Promise<ServerProcess> {
  const prof = process.env['BENCH_GRPC_CPU_PROF'];
  const child = fork(new URL('./fixtures/grpc-schedule-server.ts', import.meta.url), {
    execArgv: [...process.execArgv, ...(prof ? ['--cpu-prof', `--cpu-prof-dir=${prof}`] : [])],
    env: { ...process.env, BENCH_ADMIN_TOKEN: ADMIN },
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  const next = <T>(): Promise<T> =>
    new Promise((resolve, reject) => {
      const onExit = (code: number | null): void =>
        reject(new Error(`the bench gRPC server exited (${String(code)})`));
      child.once('exit', onExit);
      child.once('message', (m) => {
        child.off('exit', onExit);
        resolve(m as T);
      });
    });
  const { address, echoAddress } = await next<{ address: string; echoAddress: string }>();
  return {
    address,
    echoAddress,
    baseline: (n) => {
      const answer = next<{ rate: number; p50Us: number; p99Us: number }>();
      child.send({ baseline: n, concurrency: IN_FLIGHT });
      return answer;
    },
    stop: async () => {
      const exited = new Promise((r) => child.once('exit', r));
      child.send({ stop: true });
      await exited;
    },
  };
}

async function scheduleUnary(ctx: BenchContext): Promise<void> {
  // The fabric and its gRPC server run in their own process: this one is only the client, so
  // the RPC rate is what the server sustains, not client and server sharing one event loop.
  const server = await forkServer();
  const svc = FabricService;
  const Ctor = makeGenericClientConstructor(grpcDefinition(svc), 'FabricService');
  const client = new Ctor(server.address, credentials.createInsecure());
  const HealthCtor = makeGenericClientConstructor(grpcDefinition(Health), 'Health');
  const health = new HealthCtor(server.address, credentials.createInsecure());
  const EchoCtor = makeGenericClientConstructor(ECHO_DEFINITION, 'Echo');
  const echo = new EchoCtor(server.echoAddress, credentials.createInsecure());
  try {
    const md = bearer(ADMIN);
    const viaGrpc = (i: number): Promise<unknown> =>
      unary(
        client,
        'scheduleTaskToPool',
        md,
        request(svc, 'scheduleTaskToPool', {
          poolId: 'sink',
          taskType: 'noop',
          payloadJson: Buffer.from(String(i)),
        }),
      );
    // The least a unary RPC costs on this server: the standard health check (no auth, no
    // fabric work), the ceiling any FabricService call can reach here.
    const healthReq = create(Health.methods.find((m) => m.localName === 'check')!.input, {});
    const healthCheck = (): Promise<unknown> => unary(health, 'check', new Metadata(), healthReq);
    // Less still: a bare grpc-js unary echo (no protobuf, no auth, no fabric) in the same
    // server process — the floor of grpc-js's per-call cost, the ceiling of any unary RPC here.
    const echoBytes = Buffer.from('0123456789');
    const echoCall = (): Promise<unknown> => unary(echo, 'echo', new Metadata(), echoBytes);
    const n = ctx.quick ? 1_000 : 2_000;
    const rounds = ctx.quick ? 3 : 5;
    const warm = ctx.quick ? 300 : 1_000;
    await inFlight(warm, IN_FLIGHT, viaGrpc, undefined);
    await server.baseline(warm);
    await inFlight(warm, IN_FLIGHT, healthCheck, undefined);
    await inFlight(warm, IN_FLIGHT, echoCall, undefined);
    const latGrpc = new Latency();
    const latHealth = new Latency();
    const latEcho = new Latency();
    const echoes: number[] = [];
    const ours: number[] = [];
    const base: { rate: number; p50Us: number; p99Us: number }[] = [];
    const floor: number[] = [];
    for (let r = 0; r < rounds; r++) {
      base.push(await server.baseline(n));
      ours.push(await inFlight(n, IN_FLIGHT, viaGrpc, latGrpc));
      floor.push(await inFlight(n, IN_FLIGHT, healthCheck, latHealth));
      echoes.push(await inFlight(n, IN_FLIGHT, echoCall, latEcho));
    }
    const baseMedian = median(base.map((b) => b.rate));
    const baseRound = base.find((b) => b.rate === baseMedian) ?? base[0]!;
    // The highest ratio schedule-unary could reach here if the fabric cost nothing.
    const ceiling = Number((median(echoes) / baseMedian).toPrecision(2));
    ctx.report({
      suite: 'grpc',
      case: 'schedule-unary',
      unit: 'RPCs/s',
      value: median(ours),
      baseline: 'fabric.scheduleToPool in the server process, 32 in flight',
      baselineValue: baseMedian,
      // Two significant digits: far below 0.01 here, which the default rounding shows as 0.
      ratio: Number((median(ours) / baseMedian).toPrecision(2)),
      higherIsBetter: true,
      p50Us: latGrpc.percentileUs(50),
      p99Us: latGrpc.percentileUs(99),
      // The median round's (the server process keeps no histogram across rounds).
      baselineP50Us: baseRound.p50Us,
      baselineP99Us: baseRound.p99Us,
      goal: `ratio ≥ 0.3 (ceiling here: ${ceiling}, see grpc-unary-floor)`,
    });
    ctx.report({
      suite: 'grpc',
      case: 'schedule-unary-vs-health',
      unit: 'RPCs/s',
      value: median(ours),
      baseline: 'grpc.health.v1 Health/Check on the same server, 32 in flight',
      baselineValue: median(floor),
      higherIsBetter: true,
      p50Us: latGrpc.percentileUs(50),
      p99Us: latGrpc.percentileUs(99),
      baselineP50Us: latHealth.percentileUs(50),
      baselineP99Us: latHealth.percentileUs(99),
      goal: 'diagnostic: the unary RPC floor of grpc-js here (expected below 1)',
    });
    ctx.report({
      suite: 'grpc',
      case: 'grpc-unary-floor',
      unit: 'RPCs/s',
      value: median(echoes),
      baseline: 'fabric.scheduleToPool in the server process, 32 in flight',
      baselineValue: baseMedian,
      ratio: ceiling,
      higherIsBetter: true,
      p50Us: latEcho.percentileUs(50),
      p99Us: latEcho.percentileUs(99),
      baselineP50Us: baseRound.p50Us,
      baselineP99Us: baseRound.p99Us,
      goal: 'ceiling of schedule-unary: a bare grpc-js unary echo, same client and machine',
    });
  } finally {
    client.close();
    health.close();
    echo.close();
    await server.stop();
  }
}

interface Assignment {
  taskId: string;
  attempt: number;
}

/** The `result` of a fabric tool call; throws on a tool error. */
function toolResult<T>(r: unknown): T {
  const call = r as CallToolResult;
  if (call.isError) throw new Error(`fabric tool failed: ${JSON.stringify(call.content)}`);
  return (call.structuredContent as { result: T }).result;
}

async function claimComplete(ctx: BenchContext): Promise<void> {
  const config = parseSidecarConfig(
    JSON.stringify({
      adminToken: ADMIN,
      state: 'memory',
      http: { host: '127.0.0.1', port: 0 },
      grpc: { host: '127.0.0.1', port: 0 },
      policies: [{ name: 'allow-fabric', rules: [{ tool: 'fabric__*', action: 'allow' }] }],
      agents: [{ name: 'grpc-worker' }, { name: 'mcp-worker' }],
      fabric: { maxQueueDepth: 1_000_000 },
    }),
    'bench-grpc.json',
    { env: {} },
  );
  const sidecar = await Sidecar.start({ config });
  const fabric = sidecar.fabric!;
  const agent = (name: string) => sidecar.agents.find((a) => a.name === name)!;
  const grpcWorker = agent('grpc-worker');
  const mcpWorker = agent('mcp-worker');
  const svc = service(fabric, 'fabric.v1.AgentService');
  const Ctor = makeGenericClientConstructor(AGENT_SERVICE_DEFINITION, 'AgentService');
  const client = new Ctor(sidecar.grpcAddress!, credentials.createInsecure());
  const mcp = new Client({ name: 'bench-worker', version: '1.0.0' });
  try {
    await mcp.connect(
      new StreamableHTTPClientTransport(new URL(sidecar.url!), {
        requestInit: { headers: { authorization: `Bearer ${mcpWorker.credential}` } },
        fetch: linkedSignalFetch(fetch),
      }),
    );
    const md = bearer(grpcWorker.credential);
    const grpcTask = async (): Promise<void> => {
      const { task } = await unary<{ task?: Assignment }>(
        client,
        'claimTask',
        md,
        request(svc, 'claimTask', { waitSeconds: 0 }),
      );
      if (!task) throw new Error('ClaimTask returned no task though one was queued');
      await unary(
        client,
        'completeTask',
        md,
        request(svc, 'completeTask', { taskId: task.taskId, attempt: task.attempt }),
      );
    };
    const mcpTask = async (): Promise<void> => {
      const task = toolResult<Assignment | null>(
        await mcp.callTool({ name: 'fabric__claim_task', arguments: { waitSeconds: 0 } }),
      );
      if (!task) throw new Error('fabric__claim_task returned no task though one was queued');
      toolResult(
        await mcp.callTool({
          name: 'fabric__complete_task',
          arguments: { taskId: task.taskId, attempt: task.attempt, result: null },
        }),
      );
    };
    /** Queues `n` tasks for `agentId`, then runs the worker loop over them; tasks/s. */
    const loop = async (
      agentId: string,
      n: number,
      once: () => Promise<void>,
      lat: Latency | undefined,
    ): Promise<number> => {
      const ids: string[] = [];
      for (let i = 0; i < n; i++) {
        ids.push((await fabric.schedule({ agentId, taskType: 'work', payload: i })).id);
      }
      const start = performance.now();
      for (let i = 0; i < n; i++) {
        const t0 = performance.now();
        await once();
        lat?.recordMs(performance.now() - t0);
      }
      const rate = n / ((performance.now() - start) / 1000);
      // Every task the loop claimed is finished: a lost completion would fail the case.
      for (const id of ids) {
        const t = await fabric.getTask(id);
        if (t.status !== 'COMPLETED') throw new Error(`task ${id} is ${t.status}, not COMPLETED`);
      }
      return rate;
    };
    const n = ctx.quick ? 150 : 400;
    const rounds = ctx.quick ? 3 : 5;
    await loop(grpcWorker.id, ctx.quick ? 50 : 150, grpcTask, undefined);
    await loop(mcpWorker.id, ctx.quick ? 50 : 150, mcpTask, undefined);
    const latGrpc = new Latency();
    const latMcp = new Latency();
    const ours: number[] = [];
    const base: number[] = [];
    for (let r = 0; r < rounds; r++) {
      base.push(await loop(mcpWorker.id, n, mcpTask, latMcp));
      ours.push(await loop(grpcWorker.id, n, grpcTask, latGrpc));
    }
    ctx.report({
      suite: 'grpc',
      case: 'claim-complete',
      unit: 'tasks/s',
      value: median(ours),
      baseline: 'the same loop over MCP fabric tools (Streamable HTTP, SDK client)',
      baselineValue: median(base),
      higherIsBetter: true,
      p50Us: latGrpc.percentileUs(50),
      p99Us: latGrpc.percentileUs(99),
      baselineP50Us: latMcp.percentileUs(50),
      baselineP99Us: latMcp.percentileUs(99),
      goal: 'diagnostic: gRPC vs MCP for a remote worker, one task at a time',
    });
  } finally {
    client.close();
    await mcp.close();
    await sidecar.close();
  }
}

async function callToolGrpc(ctx: BenchContext): Promise<void> {
  const q = ctx.quick;
  const dir = mkdtempSync(join(tmpdir(), 'fabric-bench-grpc-'));
  const closers: (() => Promise<unknown>)[] = [];
  try {
    // bench/gateway's pipeline: a conditional deny evaluated on every echo call, a budget
    // reserved and settled per call, tool costs, the audit log, durable state.
    const config = join(dir, 'fabric.json');
    writeFileSync(
      config,
      JSON.stringify({
        http: { host: '127.0.0.1', port: 0 },
        grpc: { host: '127.0.0.1', port: 0 },
        upstreams: { ev: { command: process.execPath, args: [ECHO_SERVER], stderr: 'ignore' } },
        policies: [
          {
            name: 'guard',
            priority: 100,
            rules: [{ tool: 'ev__echo', action: 'deny', conditions: { message: 'forbidden*' } }],
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
    const serve = await startServe(
      config,
      ['grpc', 'url', 'token'],
      process.env['BENCH_GRPC_CPU_PROF'],
    );
    closers.push(() => stopChild(serve.child));
    const Ctor = makeGenericClientConstructor(TOOL_SERVICE_DEFINITION, 'ToolService');
    const client = new Ctor(serve.grpc, credentials.createInsecure());
    closers.push(async () => client.close());
    const md = bearer(serve.token);
    const callReq = (message: string): unknown =>
      request(ToolService, 'callTool', {
        name: 'ev__echo',
        args: { case: 'argumentsJson', value: Buffer.from(JSON.stringify({ message })) },
        resultEncoding: ResultEncoding.JSON,
      });
    const viaGrpc = async (i: number): Promise<void> => {
      const res = await unary<{ isError: boolean }>(client, 'callTool', md, callReq(`m${i}`));
      if (res.isError) throw new Error('CallTool answered isError');
    };
    // A denied call proves policy is on.
    const denied = await unary(client, 'callTool', md, callReq('forbidden!')).then(
      () => undefined,
      (err: ServiceError) => err,
    );
    if (denied?.code !== status.PERMISSION_DENIED) {
      throw new Error(`policy is not enforced over gRPC: ${String(denied?.code)}`);
    }

    const http = new Client({ name: 'bench-agent', version: '1.0.0' });
    await http.connect(
      new StreamableHTTPClientTransport(new URL(serve.url), {
        requestInit: { headers: { authorization: `Bearer ${serve.token}` } },
        fetch: linkedSignalFetch(fetch),
      }),
    );
    closers.push(() => http.close());
    const direct = new Client({ name: 'bench-agent', version: '1.0.0' });
    await direct.connect(
      new StdioClientTransport({
        command: process.execPath,
        args: [ECHO_SERVER],
        stderr: 'ignore',
      }),
    );
    closers.push(() => direct.close());
    const mcpEcho =
      (c: Client, tool: string) =>
      async (i: number): Promise<void> => {
        const r = await c.callTool({ name: tool, arguments: { message: `m${i}` } });
        if (r.isError) throw new Error(`${tool} failed: ${JSON.stringify(r.content)}`);
      };
    const viaHttp = mcpEcho(http, 'ev__echo');
    const viaDirect = mcpEcho(direct, 'echo');

    // The sidecar's CPU per call falls severalfold over the first thousands of calls (JIT).
    const warm = q ? 500 : 1_500;
    await inFlight(warm, IN_FLIGHT, viaDirect, undefined);
    await inFlight(warm, IN_FLIGHT, viaGrpc, undefined);
    await inFlight(warm, IN_FLIGHT, viaHttp, undefined);
    const n = q ? 500 : 1_000;
    const rounds = q ? 3 : 5;
    const meter = existsSync(`/proc/${serve.child.pid!}/stat`)
      ? cpuMeter(serve.child.pid!)
      : undefined;
    const cpuOf = (): number => (meter ? meter() : 0);
    const latGrpc = new Latency();
    const latHttp = new Latency();
    const latDirect = new Latency();
    const grpcRates: number[] = [];
    const httpRates: number[] = [];
    const directRates: number[] = [];
    const used = { grpc: 0, http: 0 };
    for (let r = 0; r < rounds; r++) {
      directRates.push(await inFlight(n, IN_FLIGHT, viaDirect, latDirect));
      let before = cpuOf();
      grpcRates.push(await inFlight(n, IN_FLIGHT, viaGrpc, latGrpc));
      used.grpc += cpuOf() - before;
      before = cpuOf();
      httpRates.push(await inFlight(n, IN_FLIGHT, viaHttp, latHttp));
      used.http += cpuOf() - before;
    }
    ctx.report({
      suite: 'grpc',
      case: 'calltool-grpc',
      unit: 'calls/s',
      value: median(grpcRates),
      baseline: 'agent → the echo upstream directly over stdio (SDK client), 32 in flight',
      baselineValue: median(directRates),
      higherIsBetter: true,
      p50Us: latGrpc.percentileUs(50),
      p99Us: latGrpc.percentileUs(99),
      baselineP50Us: latDirect.percentileUs(50),
      baselineP99Us: latDirect.percentileUs(99),
      goal: 'diagnostic: the gRPC door + gateway pipeline on top of the tool',
    });
    ctx.report({
      suite: 'grpc',
      case: 'calltool-grpc-vs-http',
      unit: 'calls/s',
      value: median(grpcRates),
      baseline: 'tools/call over Streamable HTTP on the same sidecar (SDK client), 32 in flight',
      baselineValue: median(httpRates),
      higherIsBetter: true,
      p50Us: latGrpc.percentileUs(50),
      p99Us: latGrpc.percentileUs(99),
      baselineP50Us: latHttp.percentileUs(50),
      baselineP99Us: latHttp.percentileUs(99),
      goal: 'diagnostic: the gRPC door against the MCP door of one gateway',
    });
    if (meter) {
      const grpcUs = used.grpc / (rounds * n);
      const httpUs = used.http / (rounds * n);
      ctx.report({
        suite: 'grpc',
        case: 'calltool-grpc-cpu-per-call',
        unit: 'µs CPU/call',
        value: grpcUs,
        baseline: "the sidecar's CPU per tools/call over Streamable HTTP, same rounds",
        baselineValue: httpUs,
        higherIsBetter: false,
        goal: `diagnostic: sidecar CPU per CallTool (after ${warm} warm-up calls per door)`,
      });
    }
  } finally {
    for (const close of closers.reverse()) await close().catch(() => undefined);
    rmSync(dir, { recursive: true, force: true });
  }
}

const suite: BenchSuite = {
  name: 'grpc',
  async run(ctx) {
    if (wanted('schedule-unary')) await scheduleUnary(ctx);
    if (wanted('claim-complete')) await claimComplete(ctx);
    if (wanted('calltool-grpc')) await callToolGrpc(ctx);
  },
};
export default suite;

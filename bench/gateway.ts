/**
 * Gateway overhead: the same server-everything `echo` tool, the same SDK client, in the same
 * run — straight to the upstream vs through the gateway with policy and budget on.
 *
 * - stdio-latency: agent → gateway (in-process, in-memory link) → stdio upstream, vs agent →
 *   stdio upstream. Sequential calls; p50/p99 of both.
 * - stdio-throughput: the same paths, 32 calls in flight.
 * - http-throughput: agent → gateway over Streamable HTTP (gateway → upstream over stdio), vs
 *   agent → the upstream's own Streamable HTTP endpoint; 32 in flight.
 */
import { createServer } from 'node:net';
import { createRequire } from 'node:module';
import { spawn } from 'node:child_process';
import { performance } from 'node:perf_hooks';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { InMemoryTransport } from '@modelcontextprotocol/sdk/inMemory.js';
import type {
  GatewayBackend,
  GatewayIdentity,
  ToolCallAllowed,
  ToolCallAuthorization,
  ToolCallContext,
  ToolUsage,
} from '../src/gateway/backend.js';
import { McpHttpEndpoint } from '../src/gateway/downstream-http.js';
import { ToolGateway } from '../src/gateway/gateway.js';
import { PolicyEngine } from '../src/policy/policy-engine.js';
import { startHttpServer } from '../src/server/http-server.js';
import type { TaskAssignment } from '../src/task.js';
import { Latency, median, type BenchSuite } from './lib.js';

const require = createRequire(import.meta.url);
const EVERYTHING = require.resolve('@modelcontextprotocol/server-everything/dist/index.js');
const TOKEN = 'bench-agent-token';
const IDENTITY = { kind: 'agent', agentId: 'bench-agent', labels: {} } as const;

/** Policy via the real PolicyEngine (compiled rules) and a reserve/settle cost budget. */
class BenchBackend implements GatewayBackend {
  readonly engine = new PolicyEngine({ defaultAction: 'deny' });
  #reserved = 0;
  #used = 0;
  constructor() {
    this.engine.addPolicy({
      name: 'bench',
      rules: [
        { tool: 'ev__write_*', action: 'deny' },
        { tool: 'ev__*', action: 'allow' },
      ],
    });
  }
  authenticate(credential: string): GatewayIdentity {
    if (credential !== TOKEN) throw new Error('unknown');
    return IDENTITY;
  }
  async authorizeToolCall(ctx: ToolCallContext): Promise<ToolCallAuthorization> {
    const decision = this.engine.evaluateSync({
      agentId: ctx.agentId,
      tool: ctx.tool,
      params: ctx.params,
    });
    if (!decision.allowed)
      return { allowed: false, code: 'DENIED', reason: decision.reason, decision };
    const cost = ctx.estimate?.cost ?? 0;
    if (this.#used + this.#reserved + cost > 1e12)
      return { allowed: false, code: 'BUDGET', reason: 'budget' };
    this.#reserved += cost;
    return { allowed: true, decision, reservation: cost };
  }
  settleToolCall(auth: ToolCallAllowed, usage: ToolUsage): void {
    this.#reserved -= auth.reservation as number;
    this.#used += usage.cost;
  }
  heartbeat(): unknown {
    return undefined;
  }
  async claimTask(): Promise<TaskAssignment | undefined> {
    return undefined;
  }
  completeTask(): unknown {
    return undefined;
  }
  failTask(): unknown {
    return undefined;
  }
  reportProgress(): unknown {
    return undefined;
  }
  recordUsage(): unknown {
    return undefined;
  }
}

function newClient(): Client {
  return new Client({ name: 'bench-agent', version: '1.0.0' });
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

type Call = (i: number) => Promise<unknown>;

function echo(client: Client, tool: string): Call {
  return (i) => client.callTool({ name: tool, arguments: { message: `m${i}` } });
}

async function sequential(call: Call, n: number, lat: Latency): Promise<void> {
  for (let i = 0; i < n; i++) {
    const t = performance.now();
    await call(i);
    lat.recordMs(performance.now() - t);
  }
}

async function inFlight(call: Call, total: number, concurrency: number): Promise<number> {
  let next = 0;
  const start = performance.now();
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < total) await call(next++);
    }),
  );
  return total / ((performance.now() - start) / 1000);
}

const suite: BenchSuite = {
  name: 'gateway',
  async run(ctx) {
    const q = ctx.quick;
    // Direct stdio baseline.
    const direct = newClient();
    await direct.connect(
      new StdioClientTransport({
        command: process.execPath,
        args: [EVERYTHING, 'stdio'],
        stderr: 'ignore',
      }),
    );
    // Through the gateway (its own upstream process, same server).
    const gateway = new ToolGateway({
      backend: new BenchBackend(),
      upstreams: {
        ev: { command: process.execPath, args: [EVERYTHING, 'stdio'], stderr: 'ignore' },
      },
      toolCosts: { 'ev__*': 0.001 },
      hideDeniedTools: true,
    });
    await gateway.start();
    const session = gateway.createSession(IDENTITY);
    const [ct, st] = InMemoryTransport.createLinkedPair();
    await session.connect(st);
    const viaGateway = newClient();
    await viaGateway.connect(ct);
    const callDirect = echo(direct, 'echo');
    const callGateway = echo(viaGateway, 'ev__echo');

    // Warm-up (JIT, zod caches) on both paths.
    for (let i = 0; i < (q ? 300 : 1000); i++) {
      await callDirect(i);
      await callGateway(i);
    }

    // stdio-latency: interleaved blocks.
    const latD = new Latency();
    const latG = new Latency();
    const rounds = q ? 6 : 20;
    const block = q ? 100 : 200;
    for (let r = 0; r < rounds; r++) {
      await sequential(callDirect, block, latD);
      await sequential(callGateway, block, latG);
    }
    const p50 = latG.percentileUs(50);
    const p99 = latG.percentileUs(99);
    const bp50 = latD.percentileUs(50);
    const bp99 = latD.percentileUs(99);
    ctx.report({
      suite: 'gateway',
      case: 'stdio-latency',
      unit: 'µs p50',
      value: p50,
      baseline: 'agent → upstream over stdio',
      baselineValue: bp50,
      higherIsBetter: false,
      p50Us: p50,
      p99Us: p99,
      baselineP50Us: bp50,
      baselineP99Us: bp99,
      goal: `added p50 ≤ 150 µs (got ${(p50 - bp50).toFixed(1)}), added p99 ≤ 1000 µs (got ${(p99 - bp99).toFixed(1)})`,
    });

    // stdio-throughput: 32 in flight, alternating repetitions, median of ratios.
    const total = q ? 3000 : 20000;
    const ratesD: number[] = [];
    const ratesG: number[] = [];
    for (let r = 0; r < (q ? 2 : 3); r++) {
      ratesD.push(await inFlight(callDirect, total, 32));
      ratesG.push(await inFlight(callGateway, total, 32));
    }
    ctx.report({
      suite: 'gateway',
      case: 'stdio-throughput',
      unit: 'calls/s',
      value: median(ratesG),
      baseline: 'agent → upstream over stdio, 32 in flight',
      baselineValue: median(ratesD),
      higherIsBetter: true,
      goal: 'ratio ≥ 0.7',
    });
    await viaGateway.close();
    await direct.close();

    // http-throughput: gateway over Streamable HTTP vs the upstream's own Streamable HTTP.
    const mcp = new McpHttpEndpoint({
      gateway,
      authenticate: (c) => new BenchBackend().authenticate(c),
    });
    const http = await startHttpServer({
      host: '127.0.0.1',
      port: 0,
      mcpPath: '/mcp',
      mcp,
      admin: undefined as never,
    });
    const port = await freePort();
    const child = spawn(process.execPath, [EVERYTHING, 'streamableHttp'], {
      env: { ...process.env, PORT: String(port) },
      stdio: 'ignore',
      detached: true,
    });
    try {
      const upstreamHttp = newClient();
      for (let attempt = 0; ; attempt++) {
        try {
          await upstreamHttp.connect(
            new StreamableHTTPClientTransport(new URL(`http://127.0.0.1:${port}/mcp`)),
          );
          break;
        } catch (error) {
          if (attempt > 100) throw error;
          await new Promise((r) => setTimeout(r, 100));
        }
      }
      const gatewayHttp = newClient();
      await gatewayHttp.connect(
        new StreamableHTTPClientTransport(new URL(http.url), {
          requestInit: { headers: { authorization: `Bearer ${TOKEN}` } },
        }),
      );
      const callUp = echo(upstreamHttp, 'echo');
      const callGw = echo(gatewayHttp, 'ev__echo');
      for (let i = 0; i < (q ? 200 : 500); i++) {
        await callUp(i);
        await callGw(i);
      }
      const httpTotal = q ? 1500 : 6000;
      const up: number[] = [];
      const gw: number[] = [];
      for (let r = 0; r < (q ? 2 : 3); r++) {
        up.push(await inFlight(callUp, httpTotal, 32));
        gw.push(await inFlight(callGw, httpTotal, 32));
      }
      ctx.report({
        suite: 'gateway',
        case: 'http-throughput',
        unit: 'calls/s',
        value: median(gw),
        baseline: "agent → upstream's own Streamable HTTP, 32 in flight",
        baselineValue: median(up),
        higherIsBetter: true,
        goal: 'ratio ≥ 1.0',
      });
      await gatewayHttp.close();
      await upstreamHttp.close();
    } finally {
      try {
        process.kill(-child.pid!, 'SIGKILL');
      } catch {
        // gone
      }
      await mcp.close();
      await http.close();
      await gateway.close();
    }
  },
};

export default suite;

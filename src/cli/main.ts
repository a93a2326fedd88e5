#!/usr/bin/env node
/**
 * `agent-fabric` command line.
 *
 * - `agent-fabric serve [--config fabric.yaml]` — run the sidecar (embedded defaults without a
 *   config: `examples/fabric.yaml`).
 * - `agent-fabric mcp --agent-token <token> [--url <mcp url>]` — speak MCP on stdin/stdout for a
 *   client that launches servers as commands, bridged to a running sidecar. The token may come
 *   from `FABRIC_AGENT_TOKEN`, the URL from `FABRIC_URL`.
 * - `agent-fabric mcp --in-process [--config fabric.yaml]` — run the whole gateway inside this
 *   process, bound to the config's first agent (the launching process is the trust boundary).
 *
 * @module
 */
import { StdioSessionTransport } from '../gateway/downstream-stdio-transport.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { ErrorCode } from '@modelcontextprotocol/sdk/types.js';
import { parseArgs } from 'node:util';
import { FabricError, StartupError } from '../errors.js';
import type { GatewayLogEntry } from '../gateway/gateway.js';
import { messageOf } from '../gateway/map-error.js';
import { defaultConfigPath, loadSidecarConfig } from '../server/config-file.js';
import { Sidecar } from '../server/sidecar.js';

const USAGE = `usage:
  agent-fabric serve [--config fabric.yaml]
  agent-fabric mcp --agent-token <token> [--url http://127.0.0.1:8765/mcp]
  agent-fabric mcp --in-process [--config fabric.yaml]`;

function logTo(stream: NodeJS.WriteStream, quiet: boolean): (e: GatewayLogEntry) => void {
  return (e) => {
    if (quiet && e.level === 'debug') return;
    stream.write(`[agent-fabric] ${e.level}: ${e.msg}${extra(e)}\n`);
  };
}

function extra(e: GatewayLogEntry): string {
  const { level: _l, msg: _m, ...rest } = e;
  return Object.keys(rest).length > 0 ? ` ${JSON.stringify(rest)}` : '';
}

/**
 * Where the command is: a supervisor must never see exit 0 unless the command finished or was
 * asked to stop.
 */
let phase: 'starting' | 'running' | 'stopping' = 'starting';

/** Prints one line — the error's code and message, newlines folded — and exits 1. */
function fail(error: unknown): never {
  const message = error instanceof FabricError ? `${error.code}: ${error.message}` : String(error);
  console.error(`agent-fabric: ${message.replace(/\s*[\r\n]+\s*/g, ' ')}`);
  process.exit(1);
}

/**
 * Closes on SIGINT/SIGTERM, and exits 0 once closed. Installed before start-up, so a signal
 * during start-up waits for it to settle and then closes what it started (upstream process
 * groups included) instead of leaving them behind.
 */
function onSignals(): { closeWith(close: () => Promise<void>): void } {
  let close: (() => Promise<void>) | undefined;
  let received: string | undefined;
  const stop = (): void => {
    if (close === undefined || received === undefined) return;
    phase = 'stopping';
    console.error(`agent-fabric: ${received} received, shutting down`);
    close().then(
      () => process.exit(0),
      (error: unknown) => {
        console.error(`agent-fabric: shutdown failed: ${String(error)}`);
        process.exit(1);
      },
    );
  };
  const on = (sig: string): void => {
    if (received !== undefined) return;
    received = sig;
    stop();
  };
  process.once('SIGINT', () => on('SIGINT'));
  process.once('SIGTERM', () => on('SIGTERM'));
  return {
    closeWith(c) {
      close = c;
      stop();
    },
  };
}

// The event loop ran dry while the command had not finished starting (a start-up step whose
// promise can never settle), or while `serve` was serving without being asked to stop: Node
// would exit 0 and a supervisor would take it for success.
process.on('beforeExit', () => {
  if (phase === 'starting') {
    fail(new StartupError('start-up', 'the process ran out of work before start-up finished'));
  }
  if (phase === 'running') {
    fail(new StartupError('serve', 'the sidecar stopped serving without being asked to stop'));
  }
});

/** Shown instead of a credential pinned in the config. */
const PINNED = '(pinned in the config; not shown)';

async function serve(argv: string[]): Promise<void> {
  const { values } = parseArgs({ args: argv, options: { config: { type: 'string', short: 'c' } } });
  const file = values.config ?? defaultConfigPath();
  const signals = onSignals();
  const config = loadSidecarConfig(file);
  const sidecar = await Sidecar.start({ config, logger: logTo(process.stderr, true) });
  phase = 'running';
  signals.closeWith(() => sidecar.close());
  const url = sidecar.url ?? '';
  const first = sidecar.agents[0];
  const out: string[] = [];
  out.push(`agent-fabric sidecar listening`);
  out.push(`  config:      ${file}${values.config ? '' : ' (embedded defaults)'}`);
  out.push(`  MCP URL:     ${url}`);
  if (sidecar.grpcAddress)
    out.push(
      `  gRPC:        ${sidecar.grpcAddress} (fabric.v1: AgentService; with the admin token ` +
        'PolicyService, ApprovalService, BudgetService, EventService)',
    );
  for (const a of sidecar.agents) {
    // A pinned token is the deployment's secret: it is never printed, not even once.
    out.push(`  agent token: ${a.pinned ? PINNED : a.credential}   (${a.name}, ${a.id})`);
  }
  if (sidecar.anonymous)
    out.push(`  anonymous:   requests without a token act as ${sidecar.anonymous.agentId}`);
  out.push(
    `  admin token: ${
      process.env.FABRIC_ADMIN_TOKEN || config.adminToken
        ? '(from config/env)'
        : (sidecar.adminToken ??
          `(generated at an earlier start and shown then; still valid, kept only as a hash in ${sidecar.statePath ?? 'the state file'} — set FABRIC_ADMIN_TOKEN to choose one)`)
    }`,
  );
  out.push(
    `  state:       ${sidecar.statePath ?? 'memory (nothing survives a restart)'}${sidecar.statePath ? ' (agents, credentials, pools, tasks, budget usage, approvals)' : ''}`,
  );
  if (first) {
    const bearer = first.pinned ? `<the token pinned for ${first.name}>` : first.credential;
    out.push('');
    out.push('Add it to Claude Code:');
    out.push(
      `  claude mcp add --transport http agent-fabric ${url} --header "Authorization: Bearer ${bearer}"`,
    );
    out.push('');
    out.push('Or to any MCP client config:');
    out.push(
      JSON.stringify(
        {
          mcpServers: {
            'agent-fabric': {
              type: 'http',
              url,
              headers: { Authorization: `Bearer ${bearer}` },
            },
          },
        },
        null,
        2,
      ),
    );
  }
  console.log(out.join('\n'));
}

async function mcp(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      'agent-token': { type: 'string' },
      url: { type: 'string' },
      config: { type: 'string', short: 'c' },
      'in-process': { type: 'boolean' },
    },
  });
  if (values['in-process']) {
    const signals = onSignals();
    const config = loadSidecarConfig(values.config ?? defaultConfigPath());
    const sidecar = await Sidecar.start({
      config,
      http: false,
      logger: logTo(process.stderr, true),
    });
    const agent = sidecar.agents[0];
    const identity = agent
      ? await sidecar.backend.authenticate(agent.credential)
      : sidecar.anonymous;
    if (!identity || identity.kind !== 'agent') {
      await sidecar.close();
      throw new Error(
        '--in-process needs an agent in the config (agents:) or allowAnonymous: true',
      );
    }
    const session = sidecar.gateway.createSession(identity);
    const transport = new StdioSessionTransport();
    transport.onclose = () => {
      phase = 'stopping';
      void sidecar.close().then(() => process.exit(0));
    };
    signals.closeWith(() => sidecar.close());
    await session.connect(transport);
    phase = 'stopping'; // ends when stdin does
    return;
  }
  const token = values['agent-token'] ?? process.env.FABRIC_AGENT_TOKEN;
  if (!token)
    throw new Error('an agent token is required: --agent-token <token> or FABRIC_AGENT_TOKEN');
  const url = new URL(values.url ?? process.env.FABRIC_URL ?? 'http://127.0.0.1:8765/mcp');
  const headers = { authorization: `Bearer ${token}` };
  // Refuse to start on an unknown token: the endpoint authenticates before anything else.
  const probe = await fetch(url, { method: 'GET', headers }).catch((error: unknown) => {
    throw new Error(`cannot reach the sidecar at ${url.href}: ${String(error)}`);
  });
  await probe.body?.cancel();
  if (probe.status === 401 || probe.status === 403) {
    throw new Error(`the sidecar at ${url.href} refused the agent token (HTTP ${probe.status})`);
  }
  const upstream = new StreamableHTTPClientTransport(url, { requestInit: { headers } });
  const downstream = new StdioSessionTransport();
  downstream.onmessage = (m) =>
    void upstream.send(m).catch((e: unknown) => {
      console.error(String(e));
      // A request that could not be forwarded (too deep to serialize, refused by the sidecar's
      // HTTP layer) is answered here: the agent must not wait for it forever.
      const { id, method } = m as { id?: unknown; method?: unknown };
      if (typeof method !== 'string' || (typeof id !== 'string' && typeof id !== 'number')) return;
      void downstream.send({
        jsonrpc: '2.0',
        id,
        error: {
          code: ErrorCode.InternalError,
          message: `agent-fabric mcp could not forward the request: ${messageOf(e)}`,
        },
      });
    });
  upstream.onmessage = (m) => void downstream.send(m);
  upstream.onerror = (e) => console.error(`agent-fabric mcp: ${e.message}`);
  const shutdown = async (): Promise<void> => {
    await upstream.terminateSession().catch(() => undefined);
    await upstream.close();
    process.exit(0);
  };
  downstream.onclose = () => void shutdown();
  process.stdin.once('end', () => void shutdown());
  await upstream.start();
  await downstream.start();
  phase = 'stopping'; // ends when stdin does
}

async function main(): Promise<void> {
  const [command, ...rest] = process.argv.slice(2);
  switch (command) {
    case 'serve':
      return serve(rest);
    case 'mcp':
      return mcp(rest);
    case undefined:
    case '-h':
    case '--help':
      phase = 'stopping';
      console.log(USAGE);
      return;
    default:
      console.error(`unknown command ${command}\n${USAGE}`);
      process.exit(2);
  }
}

main().catch(fail);

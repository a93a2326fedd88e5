#!/usr/bin/env -S node --max-semi-space-size=8
/**
 * `agent-fabric` command line: `agent-fabric --help` lists the commands, `<command> --help`
 * tells one; exit codes are in exit-codes.ts.
 *
 * The first line gives node `--max-semi-space-size=8` (8 MB semi-spaces, the young generation
 * V8 collects by scavenges) whenever the file runs as a program: the bin link, `npx`, npm's
 * Windows shims (npm's cmd-shim reads `env -S`). With V8's default (up to 16 MB on 64-bit) a
 * gateway with many calls in flight promoted more per call to the old generation and spent more
 * CPU per forwarded call (README, "Node options"). `node [options] dist/cli/main.js` ignores
 * the line: there the options given are the ones used.
 *
 * - `agent-fabric serve [--config fabric.yaml] [--port n] [--host h]` — run the sidecar
 *   (embedded defaults without a config: `examples/fabric.yaml`).
 * - `agent-fabric mcp --agent-token <token> [--url <mcp url>]` — speak MCP on stdin/stdout for a
 *   client that launches servers as commands, bridged to a running sidecar. The token may come
 *   from `FABRIC_AGENT_TOKEN`, the URL from `FABRIC_URL` (a URL without a path means its `/mcp`,
 *   so the operator commands' base URL works here too).
 * - `agent-fabric mcp --in-process [--config fabric.yaml]` — run the whole gateway inside this
 *   process, bound to the config's first agent (the launching process is the trust boundary).
 * - the operator commands (`status`, `agents`, `approvals …`; operator-commands.ts) against a
 *   running sidecar's `/api/` door with the admin token, and the offline ones (`policy test`,
 *   `config check`; offline-commands.ts).
 *
 * @module
 */
import { createRequire } from 'node:module';
import { ConfigFileError, FabricError, StartupError } from '../errors.js';
import type { StdioBacklogEvent } from '../gateway/downstream-stdio-transport.js';
import type { SidecarConfig } from '../server/config-file.js';
import type { SidecarLog } from '../server/logger.js';
import type { Sidecar } from '../server/sidecar.js';
import { setLongTimeout } from '../scheduler/task-waiters.js';
import {
  CliError,
  DEFAULT_MAX_ANSWER_MIB,
  DEFAULT_REQUEST_TIMEOUT_SECONDS,
  headerToken,
  sidecarUrl,
  urlForMessages,
} from './api-client.js';
import {
  intOption,
  runCommand,
  usageError,
  type Command,
  type CommandContext,
  type OptionSpec,
} from './command.js';
import { EXIT, EXIT_CODES_HELP } from './exit-codes.js';
import { printable } from './format.js';
import { offlineCommands } from './offline-commands.js';
import { operatorCommands } from './operator-commands.js';
import { scaleCommands } from './scale-commands.js';

/** The log of a sidecar run by `serve` or `mcp --in-process`, with the config's secrets. */
async function sidecarLog(
  values: CommandContext['values'],
  config: SidecarConfig,
): Promise<SidecarLog> {
  const { createSidecarLog } = await import('../server/logger.js');
  const { isSecretName } = await import('../server/log-redaction.js');
  let log: SidecarLog;
  try {
    log = createSidecarLog({
      level: (values['log-level'] as string | undefined) ?? process.env.FABRIC_LOG_LEVEL,
      format: (values['log-format'] as string | undefined) ?? process.env.FABRIC_LOG_FORMAT,
    });
  } catch (error) {
    throw new CliError((error as Error).message, EXIT.usage);
  }
  log.redactor.add(config.adminToken, process.env.FABRIC_ADMIN_TOKEN);
  for (const a of config.agents) log.redactor.add(a.credential);
  log.redactor.add(config.nats?.token, config.nats?.password, config.nats?.sidecarKey);
  if (config.audit) log.redactor.add(config.audit.digestKey);
  for (const u of Object.values(config.upstreams)) {
    const named = u.transport === 'stdio' ? u.env : u.headers;
    for (const [k, v] of Object.entries(named)) if (isSecretName(k)) log.redactor.add(v);
    if (u.transport === 'stdio') log.redactor.addArguments(u.args);
  }
  // Plugins' options (pool-process env, policy-grpc authToken and metadata …) and the
  // collector's headers: whatever stands under a secret-like name.
  for (const p of config.plugins) {
    log.redactor.addNamed(p.options);
    const args = (p.options as { args?: unknown } | undefined)?.args;
    if (Array.isArray(args)) log.redactor.addArguments(args.filter((a) => typeof a === 'string'));
  }
  log.redactor.addNamed(config.telemetry.otlp?.headers);
  return log;
}

/** Teaches the log the credentials the sidecar made at start (they are printed, not logged). */
function learnSecrets(log: SidecarLog, sidecar: Sidecar): void {
  log.redactor.add(sidecar.adminToken, ...sidecar.agents.map((a) => a.credential));
}

/**
 * Where the command is: a supervisor must never see exit 0 unless the command finished or was
 * asked to stop.
 */
let phase: 'starting' | 'running' | 'stopping' = 'starting';

/**
 * Prints the error and exits with its code: a {@link CliError}'s own, else 1. The last line is
 * always `agent-fabric: <code>: <message>` (supervisors and tests read it); a config error with
 * several problems lists them on the lines before it and repeats the first one there.
 */
function fail(error: unknown): never {
  // Error messages quote what the sidecar answered and what config files hold: every line is
  // printable (no escape sequence reaches the terminal, no line break forges a line).
  const say = (line: string): void => console.error(printable(line));
  if (error instanceof CliError) {
    say(`agent-fabric: ${error.message}`);
    process.exit(error.exitCode);
  }
  const fold = (text: string): string => text.replace(/\s*[\r\n]+\s*/g, ' ');
  if (error instanceof FabricError) {
    const [first, ...problems] = error.message.split('\n');
    if (error instanceof ConfigFileError && problems.length > 0) {
      // All of them, then the first again on the coded last line (with its line number).
      for (const p of problems) say(p);
      const head = /^.*: (\d+) problems$/.exec(first ?? '')?.[1] ?? String(problems.length);
      say(`agent-fabric: ${error.code}: ${problems[0]!.trim()} (1 of ${head} problems, all above)`);
    } else {
      say(`agent-fabric: ${error.code}: ${fold(error.message)}`);
    }
  } else {
    say(`agent-fabric: ${fold(String(error))}`);
  }
  process.exit(EXIT.failure);
}

/** Where {@link onSignals} says what happens. */
type SignalNote = (msg: string, level?: 'info' | 'error') => void;

/** The signals that ask the sidecar to stop (SIGHUP: its terminal or session went away). */
const STOP_SIGNALS = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;

/**
 * Closes on SIGINT/SIGTERM/SIGHUP, and exits 0 once closed. Installed before start-up, so a
 * signal during start-up waits for it to settle and then closes what it started (upstream
 * process groups included) instead of leaving them behind. A second signal (an impatient Ctrl-C)
 * exits at once with 1, saying so: the process's exit still kills the upstream and pool process
 * groups (their exit hooks), where the signal's default action would have left them orphaned.
 * SIGHUP is a stop like the others: there is no config reload, and its default action (end the
 * process at once) orphaned the upstream process groups the same way.
 *
 * The whole shutdown, start-up still running included, is bounded (`shutdownTimeoutSeconds`,
 * counted from the signal): a part that never ends (a git command of the hook store that hangs,
 * a start-up waiting for an upstream with a long `startTimeoutSeconds`) is logged by name, and
 * the process exits 1 — its exit hooks still kill the upstream and pool process groups. The
 * timer keeps the process alive: a close whose promise never settles with nothing else to do
 * would otherwise have let Node exit 0.
 */
function onSignals(
  note: SignalNote = (msg) => console.error(`agent-fabric: ${msg}`),
  timeoutMs = DEFAULT_SHUTDOWN_TIMEOUT_MS,
): {
  /** The close a signal runs, and what a close that overruns its bound still waits for. */
  closeWith(close: () => Promise<void>, pending: () => readonly string[]): void;
  /** What a signal during start-up waits for (the step in progress). */
  starting(step: string): void;
  /** The bound of the shutdown, once the config is known. */
  bound(ms: number): void;
  /**
   * Shuts down as a first signal does, bounded the same way, for `why` (e.g. `stdin ended`); a
   * no-op once a shutdown began (it does not count as a second signal).
   */
  stopFor(why: string): void;
} {
  let close: (() => Promise<void>) | undefined;
  let pending: () => readonly string[] = () => [`start-up (step ${startStep})`];
  let startStep = 'config';
  let received: string | undefined;
  const stop = (): void => {
    if (close === undefined || received === undefined) return;
    phase = 'stopping';
    note(`${received}, shutting down`);
    close().then(
      () => process.exit(0),
      (error: unknown) => {
        note(`shutdown failed: ${String(error)}`, 'error');
        process.exit(1);
      },
    );
  };
  const watchdog = (): void => {
    const limit = timeoutMs;
    setLongTimeout(() => {
      const left = pending();
      note(
        `the shutdown did not finish within ${limit / 1000} s (shutdownTimeoutSeconds); still waiting for: ${left.length > 0 ? left.join('; ') : 'nothing named (a close that never settled)'}; exiting now (upstream and pool processes are killed; calls still in flight get no answer)`,
        'error',
      );
      process.exit(EXIT.failure);
    }, limit);
  };
  const begin = (why: string): void => {
    received = why;
    watchdog();
    if (close === undefined) {
      note(`${why} during start-up (step ${startStep}): shutting down once it has ended`);
    }
    stop();
  };
  const on = (sig: string): void => {
    if (received !== undefined) {
      note(
        `${sig} received again: exiting now without finishing the shutdown (upstream and pool processes are killed; calls still in flight get no answer)`,
      );
      process.exit(EXIT.failure);
    }
    begin(`${sig} received`);
  };
  for (const sig of STOP_SIGNALS) process.on(sig, () => on(sig));
  return {
    closeWith(c, p) {
      close = c;
      pending = p;
      stop();
    },
    starting(step) {
      startStep = step;
    },
    bound(ms) {
      timeoutMs = ms;
    },
    stopFor(why) {
      if (received === undefined) begin(why);
    },
  };
}

/**
 * The shutdown's bound before a config says otherwise (a signal while `mcp --in-process` loads
 * its config): the default of `shutdownTimeoutSeconds` with the default grace.
 */
const DEFAULT_SHUTDOWN_TIMEOUT_MS = 35_000;

/** What `mcp --in-process` reads of stdin during its start-up, at most (see `mcp`). */
const EARLY_STDIN_BYTES = 1024 * 1024;

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

// The sidecar, the MCP SDK and zod load only for the commands that use them: an operator
// command starts in a fraction of the time.

async function serve(values: CommandContext['values']): Promise<'running'> {
  const { defaultConfigPath, loadSidecarConfig, shutdownTimeoutMs } =
    await import('../server/config-file.js');
  const { Sidecar } = await import('../server/sidecar.js');
  const file = (values.config as string | undefined) ?? defaultConfigPath();
  const flags: Record<string, string> = {};
  if (typeof values.port === 'string') flags.port = values.port;
  if (typeof values.host === 'string') flags.host = values.host;
  // Nothing is started before the signal handlers are installed: a signal before them ends
  // the process the default way, with nothing to close.
  const config = loadSidecarConfig(file, { flags });
  const log = await sidecarLog(values, config);
  const signals = onSignals(
    (msg, level = 'info') => log.write({ level, msg }),
    shutdownTimeoutMs(config),
  );
  const sidecar = await Sidecar.start({
    config,
    logger: log.write,
    onStep: (step) => signals.starting(step),
  });
  learnSecrets(log, sidecar);
  phase = 'running';
  signals.closeWith(
    () => sidecar.close(),
    () => sidecar.shutdownPending,
  );
  const url = sidecar.url ?? '';
  const first = sidecar.agents[0];
  const out: string[] = [];
  out.push(`agent-fabric sidecar listening`);
  out.push(`  config:      ${file}${values.config ? '' : ' (embedded defaults)'}`);
  out.push(`  MCP URL:     ${url}`);
  if (sidecar.dashboardUrl)
    out.push(`  dashboard:   ${sidecar.dashboardUrl} (log in with the admin token)`);
  if (sidecar.grpcAddress)
    out.push(
      // The services of rpc/services.ts by the credential they take (cli-serve.test.ts checks).
      `  gRPC:        ${sidecar.grpcAddress} (fabric.v1: AgentService, ToolService; with the ` +
        'admin token FabricService, PolicyService, ApprovalService, BudgetService, EventService)',
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
  return 'running';
}

async function mcp(values: CommandContext['values']): Promise<'running'> {
  const { defaultConfigPath, loadSidecarConfig, shutdownTimeoutMs } =
    await import('../server/config-file.js');
  const { StdioSessionTransport } = await import('../gateway/downstream-stdio-transport.js');
  // How long a call's broken stream is resumed (the bridge's; an in-process gateway has none).
  const resumeSeconds =
    values['resume-seconds'] === undefined
      ? undefined
      : intOption(mcpCommand, values, 'resume-seconds', 0);
  if (resumeSeconds !== undefined && values['in-process'] === true) {
    throw usageError(mcpCommand, '--resume-seconds is for the bridge, not --in-process');
  }
  if (resumeSeconds !== undefined && resumeSeconds > 86_400) {
    throw usageError(mcpCommand, `--resume-seconds: at most 86400, not ${resumeSeconds}`);
  }
  if (values['in-process'] === true) {
    const signals = onSignals();
    // The client closing stdin ends the gateway as a signal does, under the same bound — also
    // during start-up, before the session reads stdin: what the client writes meanwhile is read
    // (to see the end) and put back for the session (up to EARLY_STDIN_BYTES; past it stdin is
    // not read until the session is, and its end is not seen before).
    const early: Buffer[] = [];
    let earlyBytes = 0;
    const collect = (chunk: Buffer): void => {
      early.push(chunk);
      earlyBytes += chunk.length;
      if (earlyBytes >= EARLY_STDIN_BYTES) process.stdin.pause();
    };
    process.stdin.on('data', collect);
    process.stdin.once('end', () => signals.stopFor('stdin ended'));
    const config = loadSidecarConfig((values.config as string | undefined) ?? defaultConfigPath());
    signals.bound(shutdownTimeoutMs(config));
    const log = await sidecarLog(values, config);
    const { Sidecar } = await import('../server/sidecar.js');
    const sidecar = await Sidecar.start({
      config,
      http: false,
      logger: log.write,
      onStep: (step) => signals.starting(step),
    });
    learnSecrets(log, sidecar);
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
    // The session reads stdin itself from here (its own backpressure): what came during
    // start-up goes back to the front of stdin's buffer first.
    process.stdin.off('data', collect);
    process.stdin.pause();
    if (early.length > 0 && !process.stdin.readableEnded)
      process.stdin.unshift(Buffer.concat(early));
    const transport = new StdioSessionTransport(process.stdin, process.stdout, {
      maxBacklogBytes: config.http.maxStreamBacklogBytes,
    });
    transport.onbacklog = (event) => log.write({ level: 'warn', msg: backlogMessage(event) });
    transport.onclose = () => signals.stopFor('stdin ended');
    signals.closeWith(
      () => sidecar.close(),
      () => sidecar.shutdownPending,
    );
    await session.connect(transport);
    // Paused above (explicitly: a 'data' listener alone does not resume it then).
    process.stdin.resume();
    phase = 'stopping'; // ends when stdin does
    return 'running';
  }
  const flagToken = values['agent-token'] as string | undefined;
  // The command line is readable by every local user (`ps`, /proc/<pid>/cmdline) for as long as
  // the bridge runs, its client's whole session: a new process title overwrites it (Linux), so
  // the token shows only while node loads the CLI. FABRIC_AGENT_TOKEN never shows.
  if (flagToken !== undefined) process.title = 'agent-fabric mcp';
  const given = flagToken ?? process.env.FABRIC_AGENT_TOKEN;
  // Exit codes as for every command (exit-codes.ts): 4 without a token or when it is refused,
  // 3 when the sidecar cannot be reached.
  if (!given) {
    throw new CliError(
      'an agent token is required: --agent-token <token> or FABRIC_AGENT_TOKEN',
      EXIT.auth,
    );
  }
  const token = headerToken(
    given,
    flagToken === undefined ? 'FABRIC_AGENT_TOKEN' : '--agent-token',
  );
  const url = sidecarUrl(
    (values.url as string | undefined) ?? process.env.FABRIC_URL ?? 'http://127.0.0.1:8765/mcp',
    values.url === undefined ? 'FABRIC_URL' : '--url',
  );
  // FABRIC_URL is the sidecar's base URL for the operator commands (http://127.0.0.1:8765); the
  // same value here means the MCP endpoint at its default path, not `POST /`.
  if (url.pathname === '/') url.pathname = '/mcp';
  const headers = { authorization: `Bearer ${token}` };
  // The URL as messages name it: its query may hold a secret.
  const named = urlForMessages(url);
  // Refuse to start on an unknown token: the endpoint authenticates before anything else. Not
  // redirected (the token would go along), and bounded as each resume attempt of the bridge is.
  const probe = await fetch(url, {
    method: 'GET',
    headers,
    redirect: 'manual',
    signal: AbortSignal.timeout(PROBE_TIMEOUT_MS),
  }).catch((error: unknown) => {
    const why =
      error instanceof DOMException && error.name === 'TimeoutError'
        ? `no answer within ${PROBE_TIMEOUT_MS / 1000} s`
        : String(error);
    throw new CliError(`cannot reach the sidecar at ${named}: ${why}`, EXIT.unreachable);
  });
  await probe.body?.cancel().catch(() => undefined);
  if (probe.status >= 300 && probe.status < 400) {
    throw new CliError(
      `the sidecar at ${named} answered with a redirect (HTTP ${probe.status}), which is not followed: give the sidecar's own MCP URL`,
      EXIT.unreachable,
    );
  }
  if (probe.status === 401 || probe.status === 403) {
    throw new CliError(
      `the sidecar at ${named} refused the agent token (HTTP ${probe.status})`,
      EXIT.auth,
    );
  }
  if (probe.status === 404) {
    throw new Error(`no MCP endpoint at ${named} (HTTP 404): give the sidecar's MCP URL`);
  }
  const { McpBridge } = await import('./mcp-bridge.js');
  const downstream = new StdioSessionTransport();
  downstream.onbacklog = (event) => console.error(`agent-fabric mcp: ${backlogMessage(event)}`);
  const bridge = new McpBridge({
    url,
    headers,
    downstream,
    log: (message) => console.error(message),
    ...(resumeSeconds === undefined ? {} : { resumeSeconds }),
  });
  const shutdown = async (): Promise<void> => {
    await bridge.close();
    process.exit(0);
  };
  downstream.onclose = () => void shutdown();
  process.stdin.once('end', () => void shutdown());
  // A signal ends the sidecar session too (DELETE), where its default action left it open until
  // it idled out; a second one exits at once.
  let signalled = false;
  for (const sig of STOP_SIGNALS) {
    process.on(sig, () => {
      if (signalled) process.exit(EXIT.failure);
      signalled = true;
      void shutdown();
    });
  }
  await bridge.start();
  await downstream.start();
  phase = 'stopping'; // ends when stdin does
  return 'running';
}

/** What `agent-fabric mcp` logs when its client stops reading stdout, and when it caught up. */
function backlogMessage(event: StdioBacklogEvent): string {
  return event.state === 'dropping'
    ? `the MCP client is not reading stdout (${event.unsentBytes} bytes wait): notifications to it are dropped, and its requests not read, until it reads`
    : `the MCP client read what waited on stdout; ${event.dropped} notifications to it were dropped meanwhile`;
}

/** The package's version (package.json, two folders up from src/cli and dist/cli). */
function version(): string {
  const pkg = createRequire(import.meta.url)('../../package.json') as { version: string };
  return pkg.version;
}

const LOG_OPTIONS: Readonly<Record<string, OptionSpec>> = {
  'log-level': {
    type: 'string',
    value: 'level',
    description: 'debug, info (default), warn, error or silent (env FABRIC_LOG_LEVEL)',
  },
  'log-format': {
    type: 'string',
    value: 'format',
    description:
      'json, pretty, or auto (default): pretty on a terminal, JSON lines otherwise (env FABRIC_LOG_FORMAT)',
  },
};

const serveCommand: Command = {
  name: 'serve',
  summary: 'Runs the sidecar: the MCP gateway, the operator API and (when configured) gRPC.',
  description: `Without --config the embedded defaults (examples/fabric.yaml) are used. --port and --host
override http.port and http.host of the config and the FABRIC_HTTP_PORT/FABRIC_HTTP_HOST
environment. The log goes to stderr: JSON lines (pino) when stderr is not a terminal, readable
lines when it is; each upstream's stderr is logged with its name; credentials are redacted.
Stops on SIGINT/SIGTERM/SIGHUP (exit 0 once closed; a second signal exits 1 at once, and so
does a shutdown still unfinished after shutdownTimeoutSeconds, naming what it waited for).`,
  options: {
    config: {
      type: 'string',
      short: 'c',
      value: 'file',
      description: 'the config file (YAML or JSON)',
    },
    port: {
      type: 'string',
      short: 'p',
      value: 'n',
      description: 'HTTP port (0 for any free port)',
    },
    host: { type: 'string', value: 'address', description: 'HTTP bind address' },
    ...LOG_OPTIONS,
  },
  run: (ctx) => serve(ctx.values),
};

/** How long `agent-fabric mcp` waits for the sidecar's answer to its start-up check. */
const PROBE_TIMEOUT_MS = 10_000;

const mcpCommand: Command = {
  name: 'mcp',
  summary: 'Speaks MCP on stdin/stdout, bridged to a running sidecar (or an in-process gateway).',
  description: `For MCP clients that launch servers as commands. The agent token may come from FABRIC_AGENT_TOKEN (preferred: a command line is visible to every local user), the URL from FABRIC_URL.
--in-process runs the whole gateway here, bound to the config's first agent.`,
  options: {
    'agent-token': { type: 'string', value: 'token', description: 'the agent credential' },
    url: {
      type: 'string',
      value: 'url',
      description:
        "the sidecar's MCP URL (default http://127.0.0.1:8765/mcp); a URL without a path gets /mcp",
    },
    'resume-seconds': {
      type: 'string',
      value: 's',
      description:
        "how long a call's broken stream is resumed before the call is answered with an error (default 40); the stream of notifications is tried again while the session lives",
    },
    config: { type: 'string', short: 'c', value: 'file', description: 'config of --in-process' },
    'in-process': { type: 'boolean', description: 'run the gateway in this process' },
    ...LOG_OPTIONS,
  },
  run: (ctx) => mcp(ctx.values),
};

const versionCommand: Command = {
  name: 'version',
  summary: 'Prints the version of agent-fabric.',
  run: async (ctx) => {
    ctx.print(version());
    return EXIT.ok;
  },
};

const COMMANDS: readonly Command[] = [
  serveCommand,
  mcpCommand,
  ...operatorCommands,
  ...scaleCommands,
  ...offlineCommands,
  versionCommand,
];

/** `agent-fabric --help`. */
function mainHelp(): string {
  const width = Math.max(...COMMANDS.map((c) => c.name.length));
  return [
    `agent-fabric ${version()} — MCP gateway sidecar for fleets of AI agents`,
    '',
    'usage: agent-fabric <command> [options]   (agent-fabric <command> --help for one)',
    '',
    'commands:',
    ...COMMANDS.map(
      (c) => `  ${c.name.padEnd(width)}  ${c.summary.split('. ')[0]!.replace(/\.$/, '')}`,
    ),
    '',
    'operator commands reach the sidecar at --url (or FABRIC_URL; default http://127.0.0.1:8765)',
    `with the admin token from FABRIC_ADMIN_TOKEN or --token-file; --request-timeout (default ${DEFAULT_REQUEST_TIMEOUT_SECONDS} s)`,
    `bounds each wait for the sidecar, --max-answer-mib (default ${DEFAULT_MAX_ANSWER_MIB}) the size of an answer.`,
    '',
    EXIT_CODES_HELP,
  ].join('\n');
}

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  const [first, second] = argv;
  if (first === undefined || first === '-h' || first === '--help' || first === 'help') {
    phase = 'stopping';
    console.log(mainHelp());
    return;
  }
  if (first === '--version' || first === '-v') {
    phase = 'stopping';
    console.log(version());
    return;
  }
  const command =
    COMMANDS.find((c) => second !== undefined && c.name === `${first} ${second}`) ??
    COMMANDS.find((c) => c.name === first);
  if (command === undefined) {
    const group = COMMANDS.filter((c) => c.name.startsWith(`${first} `));
    if (group.length > 0) {
      const width = Math.max(...group.map((c) => c.name.length));
      const list = group.map(
        (c) => `  agent-fabric ${c.name.padEnd(width)}  ${c.summary.split('. ')[0]}`,
      );
      if (second === undefined || second === '--help' || second === '-h') {
        phase = 'stopping';
        console.log(`usage:\n${list.join('\n')}`);
        if (second === undefined) process.exit(EXIT.usage);
        return;
      }
      throw usageError(undefined, `unknown command ${first} ${second}`);
    }
    throw usageError(undefined, `unknown command ${first}`);
  }
  const rest = argv.slice(command.name.split(' ').length);
  const result = await runCommand(command, rest, process.env);
  if (result === 'running') return; // serve and mcp set the phase themselves
  phase = 'stopping';
  await stdoutWritten();
  process.exit(result);
}

/**
 * Resolves once what the command wrote to stdout has left the process (or can no longer: the
 * reader closed the pipe). Writes to a pipe are asynchronous: `process.exit` right after
 * printing dropped what the pipe had not taken yet, so an answer over 64 KiB piped to a slower
 * reader (`approvals show <id> --json | jq`) came out cut, with exit 0.
 */
function stdoutWritten(): Promise<void> {
  const out = process.stdout;
  if (out.writableLength === 0) return Promise.resolve();
  return new Promise((resolve) => {
    // EPIPE (`| head`): nothing more can be written; the command's own exit code stands.
    out.once('error', () => resolve());
    out.write('', () => resolve());
  });
}

main().catch(fail);

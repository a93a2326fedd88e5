/**
 * Subcommands of `agent-fabric`: each declares its options and positional arguments once, and
 * both its `--help` text and its parsing (node:util `parseArgs`, strict) come from that. A
 * wrong command line is a {@link CliError} with exit code 2 that names the fault and points at
 * the command's `--help`.
 *
 * @module
 */
import { parseArgs } from 'node:util';
import {
  ApiClient,
  adminToken,
  CliError,
  DEFAULT_MAX_ANSWER_MIB,
  DEFAULT_REQUEST_TIMEOUT_SECONDS,
  DEFAULT_SIDECAR_URL,
  type ApiClientOptions,
} from './api-client.js';
import { EXIT } from './exit-codes.js';
import { terminalSafe } from './format.js';

/** One option of a command. */
export interface OptionSpec {
  type: 'string' | 'boolean';
  short?: string;
  /** May be given more than once (the value is then an array). */
  multiple?: boolean;
  /** Shown in `--help`: `--name <value>` for strings. */
  value?: string;
  description: string;
}

/** What a command's `run` gets. */
export interface CommandContext {
  values: Readonly<Record<string, string | boolean | (string | boolean)[] | undefined>>;
  positionals: readonly string[];
  env: NodeJS.ProcessEnv;
  /**
   * Writes one line to stdout (several for a table or indented JSON), its control characters
   * but the line feeds escaped (`terminalSafe`).
   */
  print(line: string): void;
  /** The sidecar client (commands marked `online` only; built from --url and the token). */
  api(): ApiClient;
  /** True when `--json` was given. */
  json: boolean;
}

/** A subcommand. */
export interface Command {
  /** `approvals approve`, `status`, … */
  name: string;
  /** Positional arguments in the usage line, e.g. `<id>`. */
  args?: string;
  /** How many positionals it takes: [min, max]. @default [0, 0] */
  positionals?: readonly [number, number];
  summary: string;
  /** Paragraphs shown after the summary in `--help`. */
  description?: string;
  options?: Readonly<Record<string, OptionSpec>>;
  /**
   * Talks to a running sidecar: adds `--url`, `--token-file`, `--request-timeout` and
   * `--max-answer-mib`.
   */
  online?: boolean;
  /** Has a `--json` form. */
  json?: boolean;
  /**
   * Runs the command: resolves with the exit code, or with `'running'` for a command that keeps
   * the process alive (serve, mcp) and ends it itself.
   */
  run(ctx: CommandContext): Promise<number | 'running'>;
}

/** Largest `--request-timeout`: a day. */
const MAX_REQUEST_TIMEOUT_SECONDS = 86_400;
/** Largest `--max-answer-mib`: what one string can hold in V8 (2^29 - 24 UTF-16 units). */
const MAX_ANSWER_MIB = 500;

const COMMON_ONLINE: Readonly<Record<string, OptionSpec>> = {
  url: {
    type: 'string',
    value: 'url',
    description: `the sidecar's base URL (env FABRIC_URL; default ${DEFAULT_SIDECAR_URL}); its path is ignored`,
  },
  'token-file': {
    type: 'string',
    value: 'file',
    description:
      'file holding the admin token (mode 600); without it FABRIC_ADMIN_TOKEN is used. There is no --token: arguments are visible to every local user',
  },
  'request-timeout': {
    type: 'string',
    value: 'seconds',
    description: `how long the sidecar may take to answer, and to send each next part of its answer or stream (env FABRIC_REQUEST_TIMEOUT; default ${DEFAULT_REQUEST_TIMEOUT_SECONDS}, at most ${MAX_REQUEST_TIMEOUT_SECONDS}); exit 3 past it`,
  },
  'max-answer-mib': {
    type: 'string',
    value: 'n',
    description: `the largest answer (and stream line) read, in MiB (env FABRIC_MAX_ANSWER_MIB; default ${DEFAULT_MAX_ANSWER_MIB}, at most ${MAX_ANSWER_MIB}); exit 1 past it`,
  },
};

/**
 * The limits of the sidecar client from `--request-timeout` and `--max-answer-mib` or, without
 * them, FABRIC_REQUEST_TIMEOUT and FABRIC_MAX_ANSWER_MIB.
 * @throws CliError (exit code 2) naming the flag or variable and what it must be.
 */
function clientLimits(
  command: Command,
  values: CommandContext['values'],
  env: NodeJS.ProcessEnv,
): Pick<ApiClientOptions, 'timeoutMs' | 'maxAnswerBytes' | 'sources'> {
  const given = (flag: string, variable: string): { raw?: string; source: string } => {
    const raw = values[flag];
    if (typeof raw === 'string') return { raw, source: `--${flag}` };
    const fromEnv = env[variable];
    return fromEnv === undefined || fromEnv === ''
      ? { source: `--${flag}` }
      : { raw: fromEnv, source: variable };
  };
  const timeout = given('request-timeout', 'FABRIC_REQUEST_TIMEOUT');
  let timeoutMs: number | undefined;
  if (timeout.raw !== undefined) {
    const n = Number(timeout.raw);
    if (!/^\d+(\.\d+)?$/.test(timeout.raw) || !(n > 0) || n > MAX_REQUEST_TIMEOUT_SECONDS) {
      throw usageError(
        command,
        `${timeout.source}: must be a number of seconds above 0 and at most ${MAX_REQUEST_TIMEOUT_SECONDS}, not ${timeout.raw}`,
      );
    }
    timeoutMs = Math.max(1, Math.round(n * 1000));
  }
  const max = given('max-answer-mib', 'FABRIC_MAX_ANSWER_MIB');
  let maxAnswerBytes: number | undefined;
  if (max.raw !== undefined) {
    const n = Number(max.raw);
    if (!/^\d+$/.test(max.raw) || n < 1 || n > MAX_ANSWER_MIB) {
      throw usageError(
        command,
        `${max.source}: must be a whole number of MiB from 1 to at most ${MAX_ANSWER_MIB}, not ${max.raw}`,
      );
    }
    maxAnswerBytes = n * 1024 * 1024;
  }
  return {
    ...(timeoutMs === undefined ? {} : { timeoutMs }),
    ...(maxAnswerBytes === undefined ? {} : { maxAnswerBytes }),
    sources: { timeout: timeout.source, maxAnswer: max.source },
  };
}

const JSON_OPTION: OptionSpec = {
  type: 'boolean',
  description: "print the sidecar's answer as JSON (protobuf JSON mapping) instead of a table",
};

/** `--json` of a command that asks no sidecar (`config check`, `policy test`). */
const OFFLINE_JSON_OPTION: OptionSpec = {
  type: 'boolean',
  description: 'print the result as JSON instead of text',
};

const HELP_OPTION: OptionSpec = { type: 'boolean', short: 'h', description: 'show this help' };

/** Every option of `command`, the common ones included, in help order. */
function optionsOf(command: Command): [string, OptionSpec][] {
  return [
    ...Object.entries(command.options ?? {}),
    ...(command.json
      ? [['json', command.online ? JSON_OPTION : OFFLINE_JSON_OPTION] as [string, OptionSpec]]
      : []),
    ...(command.online ? Object.entries(COMMON_ONLINE) : []),
    ['help', HELP_OPTION],
  ];
}

/** The `--help` text of `command`. */
export function commandHelp(command: Command): string {
  const lines = [
    `usage: agent-fabric ${command.name}${command.args ? ` ${command.args}` : ''} [options]`,
    '',
    command.summary,
  ];
  if (command.description) lines.push('', command.description);
  lines.push('', 'options:');
  const rows = optionsOf(command).map(([name, spec]) => {
    const flag = `${spec.short ? `-${spec.short}, ` : ''}--${name}${spec.type === 'string' ? ` <${spec.value ?? 'value'}>` : ''}`;
    return [flag, spec.description] as const;
  });
  const width = Math.max(...rows.map(([f]) => f.length));
  for (const [flag, text] of rows) lines.push(`  ${flag.padEnd(width)}  ${text}`);
  return lines.join('\n');
}

/**
 * Parses `argv` (what follows the command's name) for `command` and runs it.
 * @throws CliError (exit code 2) for a wrong command line.
 */
export async function runCommand(
  command: Command,
  argv: string[],
  env: NodeJS.ProcessEnv,
): Promise<number | 'running'> {
  const options = Object.fromEntries(
    optionsOf(command).map(([name, spec]) => [
      name,
      {
        type: spec.type,
        ...(spec.short ? { short: spec.short } : {}),
        ...(spec.multiple ? { multiple: true } : {}),
      },
    ]),
  );
  let parsed: ReturnType<typeof parseArgs>;
  try {
    parsed = parseArgs({ args: argv, options, strict: true, allowPositionals: true });
  } catch (error) {
    throw usageError(command, (error as Error).message);
  }
  const { values, positionals } = parsed;
  if (values.help === true) {
    process.stdout.write(`${commandHelp(command)}\n`);
    return EXIT.ok;
  }
  const [min, max] = command.positionals ?? [0, 0];
  if (positionals.length < min) {
    throw usageError(command, `missing argument: ${command.args ?? ''}`.trim());
  }
  if (positionals.length > max) {
    throw usageError(command, `unexpected argument: ${positionals[max]}`);
  }
  // Checked before the command runs: a wrong limit sends nothing.
  const limits = command.online ? clientLimits(command, values, env) : {};
  let client: ApiClient | undefined;
  return command.run({
    values,
    positionals,
    env,
    json: values.json === true,
    print: (line) => void process.stdout.write(`${terminalSafe(line)}\n`),
    api: () =>
      (client ??= new ApiClient({
        url: (values.url as string | undefined) ?? env.FABRIC_URL ?? DEFAULT_SIDECAR_URL,
        urlSource:
          values.url === undefined && env.FABRIC_URL !== undefined ? 'FABRIC_URL' : '--url',
        token: adminToken(values['token-file'] as string | undefined, env),
        ...limits,
      })),
  });
}

/** A command-line mistake in `command`: exit code 2 and a pointer to its help. */
export function usageError(command: Command | undefined, message: string): CliError {
  const help = command ? `agent-fabric ${command.name} --help` : 'agent-fabric --help';
  return new CliError(`${message} (see ${help})`, EXIT.usage);
}

/** A string option that must be a positive integer. */
export function intOption(
  command: Command,
  values: CommandContext['values'],
  name: string,
  fallback: number,
): number {
  const raw = values[name];
  if (raw === undefined) return fallback;
  const n = Number(raw);
  if (typeof raw !== 'string' || !/^\d+$/.test(raw) || !Number.isSafeInteger(n) || n < 1) {
    throw usageError(command, `--${name}: must be a positive integer, not ${String(raw)}`);
  }
  return n;
}

/**
 * The sidecar's log: pino, on stderr. JSON lines (`{"level":30,"time":…,"msg":…}`) when stderr
 * is not a terminal — what journald, Docker and log shippers read — and one readable line per
 * entry when it is. Every entry passes the {@link LogRedactor} first.
 *
 * The readable form goes to a terminal, and its text is not all the sidecar's own: an upstream's
 * stderr lines are logged as messages, and upstreams echo what agents asked for. So control
 * characters (C0 — line breaks and ESC included —, DEL, C1) and the bidirectional controls are
 * written as `\xNN`/`\u{NNNN}` escapes: an entry is one line that cannot move the cursor, retitle
 * the terminal or forge another entry. (The JSON form escapes C0 controls already, and U+2028
 * and U+2029 are escaped in it too, see json-lines.ts: each entry is one line in any language.)
 *
 * The readable form is written here rather than with `pino-pretty` (a transport in a worker
 * thread, with its own dependencies) because it is a dozen lines.
 *
 * @module
 */
import pino, { type DestinationStream, type Level, type Logger } from 'pino';
import { ConfigError } from '../errors.js';
import type { GatewayLogEntry } from '../gateway/gateway.js';
import { lineSafeJson } from '../json-lines.js';
import { printable } from '../unprintable.js';
import { LogRedactor } from './log-redaction.js';

/** Levels an operator may choose (`silent` logs nothing). */
export const LOG_LEVELS = ['debug', 'info', 'warn', 'error', 'silent'] as const;
/** A level an operator may choose. */
export type LogLevel = (typeof LOG_LEVELS)[number];
/** `json`, `pretty`, or `auto` (pretty on a terminal, else JSON). */
export type LogFormat = 'json' | 'pretty' | 'auto';
/** Default level. */
export const DEFAULT_LOG_LEVEL: LogLevel = 'info';

/** Options of {@link createSidecarLog}. */
export interface SidecarLogOptions {
  /** @default 'info' */
  level?: string | undefined;
  /** @default 'auto' */
  format?: string | undefined;
  /** Where lines go. @default process.stderr */
  stream?: NodeJS.WritableStream & { isTTY?: boolean };
}

/** A sidecar log: the pino logger, the sink the gateway writes to, and its redactor. */
export interface SidecarLog {
  readonly logger: Logger;
  /** Writes one gateway entry (level, msg and fields). */
  readonly write: (entry: GatewayLogEntry) => void;
  /** Learns secrets to keep out of the log. */
  readonly redactor: LogRedactor;
}

/**
 * Parses the level and format and creates the log.
 * @throws ConfigError naming `--log-level`/`--log-format` for an unknown value.
 */
export function createSidecarLog(options: SidecarLogOptions = {}): SidecarLog {
  const level = options.level ?? DEFAULT_LOG_LEVEL;
  if (!(LOG_LEVELS as readonly string[]).includes(level)) {
    throw new ConfigError('log level', `must be one of ${LOG_LEVELS.join(', ')}, not ${level}`);
  }
  const format = options.format ?? 'auto';
  if (!['json', 'pretty', 'auto'].includes(format)) {
    throw new ConfigError('log format', `must be json, pretty or auto, not ${format}`);
  }
  const stream = options.stream ?? process.stderr;
  const pretty = format === 'pretty' || (format === 'auto' && stream.isTTY === true);
  const destination: DestinationStream = pretty
    ? { write: (line: string) => void stream.write(readable(line)) }
    : { write: (line: string) => void stream.write(lineSafeJson(line)) };
  const logger = pino({ level, base: undefined }, destination);
  const redactor = new LogRedactor();
  const write = (entry: GatewayLogEntry): void => {
    const { level: entryLevel, msg, ...fields } = entry;
    const lv: Level = entryLevel;
    if (!logger.isLevelEnabled(lv)) return;
    logger[lv](redactor.value(fields) as object, redactor.text(msg));
  };
  return { logger, write, redactor };
}

const LEVEL_NAMES: Readonly<Record<number, string>> = {
  10: 'TRACE',
  20: 'DEBUG',
  30: 'INFO',
  40: 'WARN',
  50: 'ERROR',
  60: 'FATAL',
};

/**
 * One pino JSON line as `HH:MM:SS.mmm LEVEL [upstream] msg key=value …`, {@link printable}: one
 * line whatever the entry holds.
 */
function readable(line: string): string {
  let entry: Record<string, unknown>;
  try {
    entry = JSON.parse(line) as Record<string, unknown>;
  } catch {
    return `${printable(line.replace(/\n$/, ''))}\n`;
  }
  const { level, time, msg, upstream, ...rest } = entry;
  const at = typeof time === 'number' ? new Date(time).toISOString().slice(11, 23) : '';
  const name = (LEVEL_NAMES[level as number] ?? String(level)).padEnd(5);
  const from = typeof upstream === 'string' ? `[${upstream}] ` : '';
  const fields = Object.entries(rest)
    .map(([k, v]) => `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`)
    .join(' ');
  return `${printable(`${at} ${name} ${from}${String(msg ?? '')}${fields ? `  ${fields}` : ''}`)}\n`;
}

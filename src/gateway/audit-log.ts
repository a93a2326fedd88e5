/**
 * The audit log: one JSON line per tool call, append-only, rotated by size.
 *
 * Records never hold raw arguments or results — only a SHA-256 digest of the arguments — so
 * secrets passed to tools do not land on disk. Lines are buffered and written in one batch per
 * event-loop turn; rotation renames `audit.log` → `audit.log.1` → … and keeps `maxFiles`.
 *
 * @module
 */
import { createHash } from 'node:crypto';
import { closeSync, mkdirSync, openSync, renameSync, rmSync, statSync, writeSync } from 'node:fs';
import { dirname } from 'node:path';

/** Default of {@link AuditLogOptions.maxBytes}: 10 MiB. */
export const DEFAULT_AUDIT_MAX_BYTES = 10 * 1024 * 1024;
/** Default of {@link AuditLogOptions.maxFiles}. */
export const DEFAULT_AUDIT_MAX_FILES = 5;

/** One audit record. */
export interface AuditRecord {
  /** ISO-8601 time the call arrived. */
  time: string;
  agent: string;
  tool: string;
  /** `allow`, `deny`, `approved`, `budget`, … — what the pipeline decided. */
  decision: string;
  /** Name of the policy rule that decided, when known. */
  rule?: string | undefined;
  durationMs: number;
  /** `ok`, `tool_error`, `denied`, `error`, `cancelled`. */
  outcome: string;
  /** SHA-256 hex of the JSON arguments. */
  argsDigest: string;
  /** Error code when the outcome is not `ok`. */
  code?: string | undefined;
  tokens?: number | undefined;
  cost?: number | undefined;
}

/** Options of an {@link AuditLog}. */
export interface AuditLogOptions {
  /** File path of the current log. */
  path: string;
  /** Size at which the file is rotated. @default 10485760 */
  maxBytes?: number;
  /** Rotated files kept (`.1` … `.N`). @default 5 */
  maxFiles?: number;
}

/** SHA-256 hex digest of a value's JSON form. */
export function digestArgs(args: unknown): string {
  return createHash('sha256')
    .update(JSON.stringify(args ?? {}))
    .digest('hex');
}

/** The outcome fields of a call's record (see {@link AuditLog.writeCall}). */
export type AuditOutcome = Pick<AuditRecord, 'decision' | 'outcome'> &
  Partial<Pick<AuditRecord, 'rule' | 'code' | 'tokens' | 'cost'>>;

/** A record queued by {@link AuditLog.writeCall}, completed when it is flushed. */
interface QueuedCall {
  agent: string;
  tool: string;
  args: unknown;
  startedAt: number;
  durationMs: number;
  fields: AuditOutcome;
}

/** Append-only JSON-lines audit log with size rotation. */
export class AuditLog {
  readonly path: string;
  readonly #maxBytes: number;
  readonly #maxFiles: number;
  #fd: number | undefined;
  #size = 0;
  #pending: (string | QueuedCall)[] = [];
  #scheduled = false;
  readonly #flush = (): void => this.flush();

  constructor(options: AuditLogOptions) {
    this.path = options.path;
    this.#maxBytes = options.maxBytes ?? DEFAULT_AUDIT_MAX_BYTES;
    this.#maxFiles = options.maxFiles ?? DEFAULT_AUDIT_MAX_FILES;
    mkdirSync(dirname(this.path), { recursive: true });
    this.#open();
  }

  #open(): void {
    this.#fd = openSync(this.path, 'a', 0o600);
    try {
      this.#size = statSync(this.path).size;
    } catch {
      this.#size = 0;
    }
  }

  /** Queues one record; it reaches the file at the end of this event-loop turn. */
  write(record: AuditRecord): void {
    if (this.#fd === undefined) return;
    this.#pending.push(JSON.stringify(record) + '\n');
    this.#schedule();
  }

  /**
   * Queues the record of one tool call, like {@link write}; the arguments' digest, the time
   * and the JSON line are computed when the line is flushed (at the end of this event-loop
   * turn), after the call's response went out. `args` must not change until then.
   *
   * @param startedAt Epoch ms the call arrived.
   */
  writeCall(
    agent: string,
    tool: string,
    args: unknown,
    startedAt: number,
    durationMs: number,
    fields: AuditOutcome,
  ): void {
    if (this.#fd === undefined) return;
    this.#pending.push({ agent, tool, args, startedAt, durationMs, fields });
    this.#schedule();
  }

  #schedule(): void {
    if (!this.#scheduled) {
      this.#scheduled = true;
      setImmediate(this.#flush);
    }
  }

  /** Writes every queued record now. */
  flush(): void {
    this.#scheduled = false;
    if (this.#fd === undefined || this.#pending.length === 0) return;
    const lines = this.#pending;
    this.#pending = [];
    let chunk = '';
    let chunkBytes = 0;
    for (const queued of lines) {
      const line = typeof queued === 'string' ? queued : formatCall(queued);
      if (this.#size > 0 && this.#size + chunkBytes + line.length > this.#maxBytes) {
        this.#writeChunk(chunk);
        chunk = '';
        chunkBytes = 0;
        this.#rotate();
      }
      chunk += line;
      chunkBytes += Buffer.byteLength(line);
    }
    this.#writeChunk(chunk);
  }

  #writeChunk(chunk: string): void {
    if (chunk === '' || this.#fd === undefined) return;
    const buf = Buffer.from(chunk);
    writeSync(this.#fd, buf);
    this.#size += buf.length;
  }

  #rotate(): void {
    if (this.#fd !== undefined) closeSync(this.#fd);
    rmSync(`${this.path}.${this.#maxFiles}`, { force: true });
    for (let i = this.#maxFiles - 1; i >= 1; i--) {
      try {
        renameSync(`${this.path}.${i}`, `${this.path}.${i + 1}`);
      } catch {
        // that generation does not exist yet
      }
    }
    if (this.#maxFiles >= 1) renameSync(this.path, `${this.path}.1`);
    else rmSync(this.path, { force: true });
    this.#open();
  }

  /** Flushes and closes the file. */
  close(): void {
    this.flush();
    if (this.#fd !== undefined) closeSync(this.#fd);
    this.#fd = undefined;
  }
}

function formatCall(c: QueuedCall): string {
  const record: AuditRecord = {
    time: new Date(c.startedAt).toISOString(),
    agent: c.agent,
    tool: c.tool,
    rule: undefined,
    argsDigest: digestArgs(c.args),
    durationMs: c.durationMs,
    ...c.fields,
  };
  return JSON.stringify(record) + '\n';
}

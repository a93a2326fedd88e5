/**
 * The audit log: one JSON line per tool call, append-only, rotated by size.
 *
 * Records never hold raw arguments or results — only a SHA-256 digest of the arguments — so
 * secrets passed to tools do not land on disk. Records are buffered and written in one batch
 * every `flushIntervalMs` (as Envoy's access log does with its file flush interval): a call then
 * costs a queue push, not a formatted line and a write(2) of its own. A full buffer, `flush()`
 * and `close()` write at once; a crash (not a graceful stop) can lose the last interval.
 * Rotation renames `audit.log` → `audit.log.1` → … and keeps `maxFiles`.
 *
 * A flush never throws out of its timer (that would end the process): a record whose arguments
 * cannot be serialized (nested past what `JSON.stringify` can do, a cycle, a BigInt) is written
 * with `argsDigest: null` and an `argsError` marker, and the rest of its batch is written as
 * usual; a failed write is reported to `onError` (its batch is lost). A short write (the disk
 * filling up) is followed by the rest; when that fails, the file ends inside a line and the
 * next batch starts on a new one.
 *
 * The path is what is audited, not the file first opened there: each flush checks (one stat)
 * that the path still names the open file, and when it was renamed away (logrotate without
 * `copytruncate`) or removed, with its folder or not, the log opens the path again (making the
 * folder) and tells `onReopen`. A rotation that fails part way leaves no descriptor open on the
 * side: the next flush opens the path again. The same stat gives the file's size, so a file
 * truncated under the log (logrotate's `copytruncate`) is not rotated early. Nothing is ever written through a descriptor this
 * log already closed (the process may have given its number to another file or a socket).
 *
 * @module
 */
import { hash, randomBytes } from 'node:crypto';
import {
  closeSync,
  fstatSync,
  mkdirSync,
  openSync,
  renameSync,
  rmSync,
  statSync,
  writeSync,
} from 'node:fs';
import { dirname } from 'node:path';
import { ConfigError } from '../errors.js';
import { lineSafeJson } from '../json-lines.js';
import { argumentsJson } from './args-json.js';

const NEWLINE = Buffer.from('\n');

/** Default of {@link AuditLogOptions.maxBytes}: 10 MiB. */
export const DEFAULT_AUDIT_MAX_BYTES = 10 * 1024 * 1024;
/** Default of {@link AuditLogOptions.maxFiles}. */
export const DEFAULT_AUDIT_MAX_FILES = 5;
/** Default of {@link AuditLogOptions.flushIntervalMs}. */
export const DEFAULT_AUDIT_FLUSH_INTERVAL_MS = 100;
/**
 * Records buffered before a flush is due regardless of the interval: under load the queue is
 * written every few milliseconds, before GC would copy its records (and the calls' arguments
 * they hold) out of the young generation. In bench runs this was as fast as a 1024-record
 * queue or slightly faster, and it holds less memory.
 */
export const AUDIT_MAX_BUFFERED_RECORDS = 64;

/** One audit record. */
export interface AuditRecord {
  /** ISO-8601 time the call arrived. */
  time: string;
  agent: string;
  /** The tool, pseudo-tool (`resources/read` …) or, for a refused callback answer, its method. */
  tool: string;
  /**
   * The upstream of a refused answer to its callback (`sampling/createMessage` …); tool calls'
   * records have none (the tool's name says it).
   */
  upstream?: string | undefined;
  /** `allow`, `deny`, `approved`, `budget`, … — what the pipeline decided. */
  decision: string;
  /** Name of the policy rule that decided, when known. */
  rule?: string | undefined;
  durationMs: number;
  /** `ok`, `tool_error`, `denied`, `error`, `cancelled`. */
  outcome: string;
  /**
   * SHA-256 hex of the JSON arguments; `null` when they could not be serialized (then
   * `argsError` says why).
   */
  argsDigest: string | null;
  /** Why the arguments could not be digested (only with `argsDigest: null`). */
  argsError?: string | undefined;
  /** Error code when the outcome is not `ok`. */
  code?: string | undefined;
  tokens?: number | undefined;
  cost?: number | undefined;
  /**
   * The approval a human decided the call on (`apr_…`), on the lines of calls that waited for
   * one: approved (and ran, or were refused after), denied, expired, or ended while parked.
   */
  approval?: string | undefined;
  /**
   * Who decided that approval (the admin credential's name), when known: the line of a call a
   * human approved or denied says who, also once the approval record itself is forgotten.
   */
  approver?: string | undefined;
  /**
   * On a summary line (`tool: "(reused request ids)"`, `"(unknown tools)"` …: the kind): how
   * many refusals of that kind of the agent's session (or, without one, the agent's) were not
   * written one a line (past the bound, see `gateway/line-budget.ts`).
   */
  suppressed?: number | undefined;
}

/** Options of an {@link AuditLog}. */
export interface AuditLogOptions {
  /** File path of the current log. */
  path: string;
  /** Size at which the file is rotated. @default 10485760 */
  maxBytes?: number;
  /** Rotated files kept (`.1` … `.N`). @default 5 */
  maxFiles?: number;
  /**
   * Longest time a record waits in memory before it is written; `0` writes at the end of every
   * event-loop turn that produced records. @default 100
   */
  flushIntervalMs?: number;
  /**
   * Told of a write that failed in a timed flush (disk full, file removed …); those lines are
   * lost (`lost` records, see {@link AuditWriteError}). Explicit `flush()` and `close()` throw
   * instead. @default ignore
   */
  onError?: (error: unknown) => void;
  /**
   * Told when the path no longer named the open file (renamed away, removed) and the log opened
   * it again; `reason` says which. @default ignore
   */
  onReopen?: (reason: string) => void;
  /**
   * The key of the `argsDigest` HMAC (16–64 printable ASCII characters): lines digested under
   * the same key correlate. The sidecar keeps one in its state file. @default random, per log
   */
  digestKey?: string;
}

/**
 * A flush that failed: `lost` of its records are not in the file; `cause` is why, and `code`
 * its system error code (`ENOSPC`, `EFBIG`, `EACCES` …) when it has one.
 */
export class AuditWriteError extends Error {
  readonly lost: number;
  readonly code: string | undefined;

  constructor(path: string, lost: number, cause: unknown) {
    super(`audit log ${path}: ${cause instanceof Error ? cause.message : String(cause)}`, {
      cause,
    });
    this.name = 'AuditWriteError';
    this.lost = lost;
    const code = (cause as { code?: unknown } | null)?.code;
    this.code = typeof code === 'string' ? code : undefined;
  }
}

/** What an {@link AuditLog} could not do, for the metrics. */
export interface AuditLogStats {
  /** Flushes (and closes) that failed. */
  writeFailures: number;
  /** Records of those flushes not written. */
  recordsLost: number;
  /** Times the path was opened again after it was renamed away or removed. */
  reopens: number;
}

/** A digest key: 16 to 64 printable ASCII characters (the state's secrets are 64 hex digits). */
const DIGEST_KEY = /^[\x20-\x7e]{16,64}$/;

/**
 * HMAC-SHA256 (hex) of arguments' JSON form under one key: the audit log's `argsDigest`. The
 * same arguments give the same digest under the same key — lines of one deployment correlate —
 * while a reader of the log who lacks the key cannot confirm a guess of them (an unsalted
 * SHA-256 let anyone hash a guessed short secret and look for it).
 *
 * Computed as HMAC is defined, H((K⊕opad) ‖ H((K⊕ipad) ‖ m)), with the two padded keys made
 * once: an ASCII key (at most one 64-byte block, zero-padded) XORed with 0x36 or 0x5c stays
 * ASCII, so the inner hash is one `hash()` of a string (the padded key's text + the JSON, UTF-8
 * as `createHmac` would hash it), its 32 bytes are copied behind the outer padded key, and the
 * outer hash is one `hash()` of that 96-byte buffer, kept for it —
 * no Hmac object per call (`createHmac` per call cost several times more here).
 */
export class ArgsDigester {
  readonly #innerPad: string;
  /** The outer padded key, then room for the inner digest (written per call: one thread). */
  readonly #outer = Buffer.alloc(96);

  /** @throws ConfigError unless `key` is 16–64 printable ASCII characters. */
  constructor(key: string) {
    if (!DIGEST_KEY.test(key)) {
      throw new ConfigError('audit.digestKey', 'must be 16 to 64 printable ASCII characters');
    }
    const block = Buffer.alloc(64);
    block.write(key, 'latin1');
    this.#innerPad = Buffer.from(block.map((b) => b ^ 0x36)).toString('latin1');
    Buffer.from(block.map((b) => b ^ 0x5c)).copy(this.#outer);
  }

  /**
   * The digest of `JSON.stringify(args ?? {})`. For an object, the text its forwarded request
   * line already carried is reused (args-json.ts): the same text.
   * @throws whatever `JSON.stringify` throws, or a TypeError for a value it cannot write.
   */
  digest(args: unknown): string {
    const value = args ?? {};
    const json =
      typeof value === 'object' && value !== null ? argumentsJson(value) : JSON.stringify(value);
    if (typeof json !== 'string') throw new TypeError(`${typeof value} is not JSON`);
    // The inner digest as a latin1 string (`'binary'`: one character per byte) copied into place: a
    // `'buffer'` result (a new Buffer per call) cost about three times as much, and a hex string
    // with its decode ~8 % more than this (`bench/RESULTS.md`, Gateway over stdio).
    this.#outer.write(hash('sha256', this.#innerPad + json, 'binary'), 64, 'binary');
    return hash('sha256', this.#outer, 'hex');
  }
}

/** A random digest key (64 hex digits), for a log given none. */
export function randomDigestKey(): string {
  return randomBytes(32).toString('hex');
}

/**
 * The audit digest of `args` under `key` (see {@link ArgsDigester}): what an audit log with
 * `digestKey: key` writes as `argsDigest`.
 */
export function digestArgs(args: unknown, key: string): string {
  return new ArgsDigester(key).digest(args);
}

/** The outcome fields of a call's record (see {@link AuditLog.writeCall}). */
export type AuditOutcome = Pick<AuditRecord, 'decision' | 'outcome'> &
  Partial<
    Pick<AuditRecord, 'rule' | 'code' | 'tokens' | 'cost' | 'approval' | 'approver' | 'suppressed'>
  >;

/** A record queued by {@link AuditLog.writeCall}, completed when it is flushed. */
export interface QueuedCall {
  agent: string;
  tool: string;
  args: unknown;
  startedAt: number;
  durationMs: number;
  fields: AuditOutcome;
}

/**
 * The timed flushes of the logs open in this process, run when it exits without having closed
 * them; one `exit` listener for all (one per log warned MaxListenersExceededWarning past ten
 * open at once, as a library user with many gateways has).
 */
const flushAtExit = new Set<() => void>();
let exitHookInstalled = false;

function flushOnExit(flush: () => void): void {
  flushAtExit.add(flush);
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const f of flushAtExit) f();
  });
}

/** Append-only JSON-lines audit log with size rotation. */
export class AuditLog {
  readonly path: string;
  readonly #maxBytes: number;
  readonly #maxFiles: number;
  readonly #flushIntervalMs: number;
  /** The open file; `undefined` while it is not open (a failed reopen or rotation) or closed. */
  #fd: number | undefined;
  /** Device and inode of the open file: the path is checked against them on each flush. */
  #dev = 0;
  #ino = 0;
  #closed = false;
  #size = 0;
  /** Records of the batch being flushed that are in the file. */
  #batchWritten = 0;
  readonly #stats: AuditLogStats = { writeFailures: 0, recordsLost: 0, reopens: 0 };
  /**
   * A write failed after part of a text was in the file (disk full, file size limit): the file
   * ends inside a line, so the next write starts a new one.
   */
  #torn = false;
  #pending: (string | QueuedCall)[] = [];
  #timer: NodeJS.Timeout | undefined;
  #immediate: NodeJS.Immediate | undefined;
  readonly #onError: (error: unknown) => void;
  readonly #onReopen: (reason: string) => void;
  readonly #digester: ArgsDigester;
  /** Timed flushes (and the one at exit) must not throw: an exception in a timer ends the process. */
  readonly #flush = (): void => {
    try {
      this.flush();
    } catch (error) {
      this.#onError(error);
    }
  };

  constructor(options: AuditLogOptions) {
    this.path = options.path;
    this.#maxBytes = options.maxBytes ?? DEFAULT_AUDIT_MAX_BYTES;
    this.#maxFiles = options.maxFiles ?? DEFAULT_AUDIT_MAX_FILES;
    this.#flushIntervalMs = options.flushIntervalMs ?? DEFAULT_AUDIT_FLUSH_INTERVAL_MS;
    this.#onError = options.onError ?? (() => undefined);
    this.#onReopen = options.onReopen ?? (() => undefined);
    this.#digester = new ArgsDigester(options.digestKey ?? randomDigestKey());
    if (!Number.isInteger(this.#flushIntervalMs) || this.#flushIntervalMs < 0) {
      throw new ConfigError('audit.flushIntervalMs', 'must be an integer ≥ 0 (milliseconds)');
    }
    mkdirSync(dirname(this.path), { recursive: true });
    this.#open();
    // A process that exits without closing the log (a second signal cutting the shutdown
    // short, a fatal error) still writes what is queued: the writes are synchronous.
    flushOnExit(this.#flush);
  }

  /** The `argsDigest` this log writes for `args` (see {@link ArgsDigester}). */
  digest(args: unknown): string {
    return this.#digester.digest(args);
  }

  #open(): void {
    const fd = openSync(this.path, 'a', 0o600);
    try {
      const st = fstatSync(fd);
      this.#dev = st.dev;
      this.#ino = st.ino;
      this.#size = st.size;
    } catch (error) {
      closeSync(fd);
      throw error;
    }
    this.#fd = fd;
    this.#torn = false;
  }

  /** Closes the open file, if any; from here on it is not written. */
  #drop(): void {
    const fd = this.#fd;
    this.#fd = undefined;
    if (fd !== undefined) closeSync(fd);
  }

  /**
   * Makes sure the open file is the one the path names: after a rename away (logrotate) or a
   * removal, or a rotation or reopen that failed, the path is opened again (its folder made).
   */
  #ensureOpen(): void {
    let reason: string | undefined;
    if (this.#fd === undefined) reason = 'the file was not open (an earlier failure)';
    else {
      const st = statSync(this.path, { throwIfNoEntry: false });
      if (st === undefined) reason = 'the file was removed or renamed';
      else if (st.ino !== this.#ino || st.dev !== this.#dev) {
        reason = 'the path names another file (renamed or replaced)';
      } else {
        // The same file, as it is now: truncated by logrotate's `copytruncate`, or appended to
        // by another writer. Its size decides when it is rotated.
        this.#size = st.size;
        return;
      }
      try {
        this.#drop();
      } catch {
        // the descriptor is gone either way
      }
    }
    mkdirSync(dirname(this.path), { recursive: true });
    this.#open();
    this.#stats.reopens++;
    this.#onReopen(reason);
  }

  /** What failed so far (for the metrics). */
  get stats(): Readonly<AuditLogStats> {
    return this.#stats;
  }

  /** Queues one record; it reaches the file within `flushIntervalMs`. */
  write(record: AuditRecord): void {
    if (this.#closed) return;
    let line: string;
    try {
      line = lineSafeJson(JSON.stringify(record)) + '\n';
    } catch (error) {
      // A field of the wrong type (a BigInt, a cycle): keep who, what and the outcome.
      const r = record as unknown as Record<string, unknown>;
      line =
        `{"time":${jsonString(String(r.time))},"agent":${jsonString(String(r.agent))}` +
        `,"tool":${jsonString(String(r.tool))},"decision":${jsonString(String(r.decision))}` +
        `,"outcome":${jsonString(String(r.outcome))}` +
        `,"recordError":${jsonString(`record could not be serialized: ${errorText(error)}`)}}\n`;
    }
    this.#pending.push(line);
    this.#schedule();
  }

  /**
   * Queues the record of one tool call, like {@link write}; the arguments' digest, the time
   * and the JSON line are computed when the line is flushed, after the call's response went
   * out. `args` must not change until then.
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
    if (this.#closed) return;
    this.#pending.push({ agent, tool, args, startedAt, durationMs, fields });
    this.#schedule();
  }

  #schedule(): void {
    if (this.#immediate !== undefined) return;
    if (this.#flushIntervalMs === 0 || this.#pending.length >= AUDIT_MAX_BUFFERED_RECORDS) {
      this.#immediate = setImmediate(this.#flush);
    } else {
      this.#timer ??= setTimeout(this.#flush, this.#flushIntervalMs);
    }
  }

  /**
   * Writes every queued record now.
   * @throws AuditWriteError when they could not all be written (those are lost).
   */
  flush(): void {
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    if (this.#immediate !== undefined) clearImmediate(this.#immediate);
    this.#timer = undefined;
    this.#immediate = undefined;
    if (this.#closed || this.#pending.length === 0) return;
    const queued = this.#pending;
    this.#pending = [];
    this.#batchWritten = 0;
    try {
      this.#ensureOpen();
      this.#flushBatch(queued);
    } catch (error) {
      const lost = queued.length - this.#batchWritten;
      this.#stats.writeFailures++;
      this.#stats.recordsLost += lost;
      throw new AuditWriteError(this.path, lost, error);
    }
  }

  #flushBatch(queued: (string | QueuedCall)[]): void {
    if (this.#torn) this.#writeRest(NEWLINE, 0);
    const lines = new Array<string>(queued.length);
    let batch = '';
    for (let i = 0; i < queued.length; i++) {
      const q = queued[i]!;
      const line = typeof q === 'string' ? q : safeFormatCall(q, this.#digester);
      lines[i] = line;
      batch += line;
    }
    // The whole batch in one write(2) when it fits the current file (nearly always); measuring
    // each line's bytes is only needed where a rotation falls inside it. Far from the limit
    // (UTF-8 takes at most 3 bytes per UTF-16 unit) the string is written as it is — no byte
    // count beforehand, no Buffer — and the bytes written are what it took.
    if (this.#size + batch.length * 3 <= this.#maxBytes) {
      const written = writeSync(this.#fd!, batch);
      this.#size += written;
      // A short write (the disk filled up, a file size limit): the rest goes out as bytes, or
      // the write that fails throws (and the batch is reported lost), never a silent cut.
      if (written < batch.length || written !== Buffer.byteLength(batch)) {
        this.#writeRest(Buffer.from(batch), written);
      } else {
        this.#torn = false;
      }
      this.#batchWritten = queued.length;
      return;
    }
    const buf = Buffer.from(batch);
    if (this.#size + buf.length <= this.#maxBytes) {
      this.#writeBytes(buf);
      this.#batchWritten = queued.length;
      return;
    }
    let chunk = '';
    let chunkBytes = 0;
    let chunkLines = 0;
    for (const line of lines) {
      const lineBytes = Buffer.byteLength(line);
      // Rotate before a line that would overflow a non-empty file (a lone oversized line
      // still gets a file of its own).
      const used = this.#size + chunkBytes;
      if (used > 0 && used + lineBytes > this.#maxBytes) {
        this.#writeChunk(chunk);
        this.#batchWritten += chunkLines;
        chunk = '';
        chunkBytes = 0;
        chunkLines = 0;
        this.#rotate();
      }
      chunk += line;
      chunkBytes += lineBytes;
      chunkLines++;
    }
    this.#writeChunk(chunk);
    this.#batchWritten += chunkLines;
  }

  #writeChunk(chunk: string): void {
    if (chunk !== '') this.#writeBytes(Buffer.from(chunk));
  }

  #writeBytes(buf: Buffer): void {
    if (buf.length === 0) return;
    this.#writeRest(buf, 0);
  }

  /** Writes `buf` from byte `from` on (what came before is in the file), short writes included. */
  #writeRest(buf: Buffer, from: number): void {
    const fd = this.#fd;
    if (fd === undefined) throw new Error(`audit log ${this.path}: the file is not open`);
    for (let at = from; at < buf.length;) {
      if (at > 0) this.#torn = true; // until the rest is in
      const n = writeSync(fd, buf, at);
      if (n <= 0) throw new Error(`audit log ${this.path}: a write made no progress`);
      at += n;
      this.#size += n;
    }
    this.#torn = false;
  }

  /**
   * Renames the generations and opens a new file. The old descriptor is forgotten before
   * anything can fail: a rotation that throws leaves the log closed, and the next flush opens
   * the path again — never a write through a closed descriptor (its number may be reused).
   */
  #rotate(): void {
    this.#drop();
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

  /**
   * Flushes and closes the file (closed even when the flush fails).
   * @throws AuditWriteError when the last records could not be written.
   */
  close(): void {
    if (this.#closed) return;
    flushAtExit.delete(this.#flush);
    try {
      this.flush();
    } finally {
      this.#closed = true;
      this.#pending = [];
      this.#drop();
    }
  }
}

/**
 * The JSON line of a queued call: the same text `JSON.stringify` makes of its {@link AuditRecord}
 * (but for U+2028 and U+2029, escaped: see json-lines.ts)
 * (keys `time, agent, tool, rule, argsDigest, durationMs, decision, outcome, code, tokens, cost`,
 * undefined ones left out; `argsDigest: null, argsError` when the arguments cannot be
 * serialized), built directly — the object spread and generic stringify were a
 * third of a record's cost, and records are made for every call.
 *
 * The parts that repeat from call to call are kept as whole fragments, each with what it was
 * made of: who called what (agent, tool, rule) and what became of it (decision, outcome,
 * code). Consecutive records mostly share them; comparing three values is cheaper than
 * looking each up and joining ~25 pieces, and a line of fewer, longer pieces is cheaper to
 * flatten when its batch is written.
 */
export function formatCall(c: QueuedCall, digester: ArgsDigester): string {
  const f = c.fields;
  const { agent, tool } = c;
  const rule = f.rule;
  if (agent !== whoAgent || tool !== whoTool || rule !== whoRule || whoText === undefined) {
    whoText =
      `,"agent":${jsonString(agent)},"tool":${jsonString(tool)}` +
      (rule === undefined ? '' : `,"rule":${jsonString(rule)}`) +
      ',"argsDigest":';
    whoAgent = agent;
    whoTool = tool;
    whoRule = rule;
  }
  const { decision, outcome, code } = f;
  if (
    decision !== endDecision ||
    outcome !== endOutcome ||
    code !== endCode ||
    endText === undefined
  ) {
    endText =
      (decision === undefined ? '' : `,"decision":${jsonString(decision)}`) +
      (outcome === undefined ? '' : `,"outcome":${jsonString(outcome)}`) +
      (code === undefined ? '' : `,"code":${jsonString(code)}`);
    endDecision = decision;
    endOutcome = outcome;
    endCode = code;
  }
  let digest: string;
  try {
    digest = `"${digester.digest(c.args)}","durationMs":`;
  } catch (error) {
    // Arguments JSON.stringify cannot serialize: the record is still written, marked.
    digest = `null,"argsError":${jsonString(`arguments could not be serialized: ${errorText(error)}`)},"durationMs":`;
  }
  let line = isoTimeMember(c.startedAt) + whoText + digest + jsonMs(c.durationMs) + endText;
  if (f.tokens !== undefined) line += `,"tokens":${jsonNumber(f.tokens)}`;
  if (f.cost !== undefined) line += `,"cost":${jsonCost(f.cost)}`;
  if (f.approval !== undefined) line += `,"approval":${jsonString(f.approval)}`;
  if (f.approver !== undefined) line += `,"approver":${jsonString(f.approver)}`;
  if (f.suppressed !== undefined) line += `,"suppressed":${jsonNumber(f.suppressed)}`;
  return line + '}\n';
}

/** What the last record's who-called-what fragment was made of, and the fragment. */
let whoAgent: string | undefined;
let whoTool: string | undefined;
let whoRule: string | undefined;
let whoText: string | undefined;
/** What the last record's what-became-of-it fragment was made of, and the fragment. */
let endDecision: string | undefined;
let endOutcome: string | undefined;
let endCode: string | undefined;
let endText: string | undefined;

/**
 * {@link formatCall} that cannot throw: a record with a field of the wrong type (a library
 * caller's BigInt agent id) is written as a marker line instead of losing its batch.
 */
function safeFormatCall(c: QueuedCall, digester: ArgsDigester): string {
  try {
    return formatCall(c, digester);
  } catch (error) {
    const text = (v: unknown): string => jsonString(typeof v === 'string' ? v : typeof v);
    return (
      `{"time":${Math.abs(c.startedAt) <= 8.64e15 ? text(new Date(c.startedAt).toISOString()) : 'null'}` +
      `,"agent":${text(c.agent)},"tool":${text(c.tool)},"decision":${text(c.fields?.decision)}` +
      `,"outcome":${text(c.fields?.outcome)}` +
      `,"recordError":${jsonString(`record could not be serialized: ${errorText(error)}`)}}\n`
    );
  }
}

/** The message of a thrown value, for a marker. */
function errorText(error: unknown): string {
  return error instanceof Error ? `${error.name}: ${error.message}` : String(error);
}

/**
 * `JSON.stringify` of a string, remembered: agents, tools, rules and outcomes repeat from a
 * small set, and escaping each afresh was a visible part of a record. U+2028 and U+2029 are
 * escaped too (see json-lines.ts): a made-up tool name holding one split its line.
 */
const jsonStrings = new Map<string, string>();
const JSON_STRINGS_MAX = 4096;

function jsonString(s: string): string {
  let json = jsonStrings.get(s);
  if (json === undefined) {
    json = lineSafeJson(JSON.stringify(s));
    if (jsonStrings.size >= JSON_STRINGS_MAX) jsonStrings.clear();
    if (s.length <= 256) jsonStrings.set(s, json);
  }
  return json;
}

/** `JSON.stringify` of a number (non-finite → `null`). */
function jsonNumber(n: number): string {
  return Number.isFinite(n) ? String(n) : 'null';
}

/**
 * The decimals of n/1000 for n 0–999 as the shortest round-trip text writes them: `''`, `.5`,
 * `.05`, `.005`, `.123` (trailing zeros dropped).
 */
const MS_FRACTIONS: readonly string[] = Array.from({ length: 1000 }, (_, frac) =>
  frac === 0 ? '' : `.${String(frac).padStart(3, '0').replace(/0+$/, '')}`,
);

/**
 * {@link jsonNumber} of a duration in ms. One that is a whole number of µs (the gateway rounds
 * them so) and under 10⁹ ms is written from integers: `String` of a fraction runs V8's
 * shortest-round-trip conversion, a visible part of a record. Both give the same text: such a
 * double is the one nearest to n/1000, doubles below 10⁹ are far closer together than 0.001,
 * so the shortest decimal that reads back as it is n/1000 itself, trailing zeros dropped.
 */
export function jsonMs(ms: number): string {
  if (ms > 0 && ms < 1e9) {
    const us = Math.round(ms * 1000);
    if (us / 1000 === ms) {
      const whole = Math.floor(us / 1000);
      return `${whole}${MS_FRACTIONS[us - whole * 1000]!}`;
    }
  }
  return jsonNumber(ms);
}

let lastCost = 0;
let lastCostText = '0';

/** {@link jsonNumber} of a cost, remembering the last one: a tool's calls repeat its cost. */
function jsonCost(cost: number): string {
  if (cost !== lastCost) {
    lastCostText = jsonNumber(cost);
    lastCost = cost;
  }
  return lastCostText;
}

const YEAR_10000_MS = 253402300800000;
let isoSecond = Number.NaN;
let isoPrefix = '';

/** `${ms}Z"` for ms 0–999, zero-padded to three digits: a record's time after its second. */
const ISO_MILLIS: readonly string[] = Array.from(
  { length: 1000 },
  (_, ms) => `${String(ms).padStart(3, '0')}Z"`,
);

/**
 * `{"time":` and the JSON of `new Date(ms).toISOString()`, with the text up to the second kept
 * from the last call: a batch of records mostly shares it, and building it is most of the cost.
 */
function isoTimeMember(ms: number): string {
  const t = Math.floor(ms);
  // Outside years 1970–9999 the text varies in width: no shortcut.
  if (!(t >= 0 && t < YEAR_10000_MS)) return `{"time":"${new Date(t).toISOString()}"`;
  const second = Math.floor(t / 1000);
  if (second !== isoSecond) {
    isoSecond = second;
    isoPrefix = `{"time":"${new Date(t).toISOString().slice(0, 20)}`; // …2026-11-26T10:05:12.
  }
  return isoPrefix + ISO_MILLIS[t - second * 1000]!;
}

/**
 * A stdio client transport that owns its child's whole process tree.
 *
 * The SDK's `StdioClientTransport` kills only the direct child, so a server launched through a
 * wrapper (`npx`, a shell script) leaves grandchildren behind. This transport spawns the child
 * detached, in its own process group, and signals the group (`kill(-pgid)`) on close: SIGTERM,
 * then SIGKILL after a grace period. It also parses lines with a cheap envelope check instead
 * of a full schema parse — the protocol layer validates what it needs; a line the fast path
 * takes through `onrawline` (a plain text result) is not parsed at all — and writes through a
 * {@link LineWriter}: the messages of one poll phase of the event loop in one write (one
 * syscall and one wake-up of the child for a whole burst of concurrent calls, also when they
 * came in separate HTTP requests). A group still running when the sidecar's process exits
 * (`process.exit`, a second signal, an uncaught error) is killed with it: detached, it would
 * not get the terminal's signal and would live on, orphaned. A SIGKILL of the sidecar runs no
 * exit hook: a watchdog (`sh`, see {@link WATCHDOG_SCRIPT}) kills the groups then.
 *
 * @module
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import type { Writable } from 'node:stream';
import type { Transport } from '@modelcontextprotocol/sdk/shared/transport.js';
import { ErrorCode, type JSONRPCMessage } from '@modelcontextprotocol/sdk/types.js';
import {
  DROPPED_HEAD_LENGTH,
  DROPPED_TAIL_LENGTH,
  droppedAnswer,
  droppedMessage,
} from './dropped-message.js';
import { MAX_TIMER_MS } from '../scheduler/task-waiters.js';
import { LineReader } from './line-reader.js';
import { LineWriter } from './line-writer.js';
import { DEFAULT_CALL_TIMEOUT_SECONDS, DEFAULT_MAX_MESSAGE_BYTES } from './upstream-config.js';

/** Environment variables inherited by default (as the SDK's stdio transport does). */
/** Longest stderr line passed to `onStderrLine`; a longer one is replaced by a marker line. */
export const MAX_STDERR_LINE = 16 * 1024;

/**
 * Process groups of the children started and not yet reaped. They are SIGKILLed when the
 * process exits without having closed them: detached, they would outlive it.
 */
const liveGroups = new Set<number>();
let exitHookInstalled = false;

/**
 * Kills the process groups it was told of (`+<pgid>` lines; `-<pgid>` forgets one) once its
 * stdin ends: when the sidecar's process is gone, however it ended — a SIGKILL included, which
 * runs no exit hook. The kernel closes the pipe's write end with the process; the children do
 * not hold it (Node's pipes are close-on-exec).
 */
const WATCHDOG_SCRIPT = `groups=' '
while read -r line; do
  case "$line" in
    +*) groups="$groups\${line#+} " ;;
    -*) id=\${line#-}; case "$groups" in *" $id "*) groups="\${groups%% $id *} \${groups#* $id }" ;; esac ;;
  esac
done
for g in $groups; do kill -s KILL -- "-$g" 2>/dev/null; done`;

/** The watchdog's stdin, once started; null when it could not be started (no `/bin/sh`). */
let watchdog: Writable | null | undefined;

/**
 * Tells the watchdog a group's news (`+pgid` / `-pgid`), starting it first: one `sh` per
 * process, in its own session (a terminal's signals do not end it before the sidecar), that
 * waits in `read` and does not keep the sidecar alive.
 */
function tellWatchdog(line: string): void {
  if (process.platform === 'win32') return;
  if (watchdog === undefined) {
    watchdog = null;
    if (!existsSync('/bin/sh')) return;
    try {
      const dog = spawn('/bin/sh', ['-c', WATCHDOG_SCRIPT], {
        detached: true,
        stdio: ['pipe', 'ignore', 'ignore'],
        env: {},
      });
      dog.once('error', () => (watchdog = null));
      dog.unref();
      const input = dog.stdin!;
      input.on('error', () => (watchdog = null));
      (input as Writable & { unref?: () => void }).unref?.();
      watchdog = input;
    } catch {
      return;
    }
  }
  watchdog?.write(`${line}\n`);
}

/** Remembers `pid`'s group as live; the first one installs the process's exit hook. */
function trackGroup(pid: number): void {
  liveGroups.add(pid);
  tellWatchdog(`+${pid}`);
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const group of liveGroups) {
      try {
        process.kill(process.platform === 'win32' ? group : -group, 'SIGKILL');
      } catch {
        // the group is already gone
      }
    }
    liveGroups.clear();
  });
}

/** Forgets `pid`'s group: it was reaped, and its id may be given to another process. */
function untrackGroup(pid: number): void {
  if (liveGroups.delete(pid)) tellWatchdog(`-${pid}`);
}

const INHERITED_ENV = ['HOME', 'LOGNAME', 'PATH', 'SHELL', 'TERM', 'USER', 'TMPDIR', 'LANG'];

/** Options of a {@link ProcessStdioTransport}. */
export interface ProcessStdioTransportOptions {
  command: string;
  args?: readonly string[];
  /** Merged over the inherited minimal environment. */
  env?: Readonly<Record<string, string>>;
  cwd?: string | undefined;
  /** @default 'inherit' */
  stderr?: 'log' | 'inherit' | 'ignore' | 'pipe';
  /**
   * With `stderr: 'log'`: called with each non-blank line the child writes to stderr (a line
   * longer than {@link MAX_STDERR_LINE} is replaced by a line that says it was dropped).
   */
  onStderrLine?: (line: string) => void;
  /**
   * How long to wait after SIGTERM before SIGKILL of the process group.
   * @default 2000
   */
  killGraceMs?: number;
  /**
   * Longest stdout line (one JSON-RPC message) read, in UTF-16 units (at most its bytes); a
   * longer one is dropped as it arrives (see {@link ProcessStdioTransport}).
   * @default DEFAULT_MAX_MESSAGE_BYTES (64 MiB)
   */
  maxLineLength?: number;
  /**
   * How long a dropped (too long) stdout line may take to end. It is followed to its newline
   * however long it runs (only its first and last characters are kept), and no other message
   * can arrive before that newline; one still running after this long is given up on: the
   * connection is reset (see {@link ProcessStdioTransport}). The upstream's `callTimeoutSeconds`.
   * @default 60 000
   */
  droppedLineTimeoutMs?: number;
  /**
   * Most that may wait for the child to read its stdin (UTF-16 units, at most their bytes):
   * a message sent while more waits is refused with {@link InputBacklogError} instead of being
   * held. A child that stops reading (its event loop blocked by a call) would otherwise make
   * this process hold every request every agent sends it, each call timing out and the next
   * one queued behind it. @default maxLineLength
   */
  maxInputBacklog?: number;
}

/** The `data` of the error answers made for requests whose write failed unsent. */
const unsentAnswers = new WeakSet<object>();

/**
 * True when `data`, an error answer's data, is that of an answer made by a
 * {@link ProcessStdioTransport} for a request of which nothing was written to its child (the
 * write failed: EPIPE). Told by identity: no answer read from the child can be one.
 */
export function isUnsentAnswer(data: unknown): data is { reason: string } {
  return typeof data === 'object' && data !== null && unsentAnswers.has(data);
}

/** A system error's code (`EPIPE` …), else its message. */
function errorCode(error: Error): string {
  const code = (error as NodeJS.ErrnoException).code;
  return typeof code === 'string' ? code : error.message;
}

/** A message not sent to a child that has not read what already waits for it. */
export class InputBacklogError extends Error {
  constructor(
    /** What waits for the child (UTF-16 units). */
    readonly waiting: number,
    /** The bound ({@link ProcessStdioTransportOptions.maxInputBacklog}). */
    readonly max: number,
  ) {
    super(
      `the server is not reading its input: ${waiting} characters wait for it (at most ${max})`,
    );
    this.name = 'InputBacklogError';
  }
}

/**
 * A message not sent because the connection is closed or closing: nothing of it was written.
 * A connection being reset (see {@link ProcessStdioTransport.close}) refuses messages from the
 * start, while its child may take until the kill grace period to exit and the connection to
 * report that it closed.
 */
export class NotConnectedError extends Error {
  constructor() {
    super('Not connected');
    this.name = 'NotConnectedError';
  }
}

/** Builds the child environment: a minimal safe inherited set plus `extra`. */
export function childEnvironment(
  extra: Readonly<Record<string, string>> = {},
): Record<string, string> {
  const env: Record<string, string> = {};
  for (const key of INHERITED_ENV) {
    const value = process.env[key];
    if (value !== undefined && !value.startsWith('()')) env[key] = value;
  }
  return { ...env, ...extra };
}

/** How a child process ended: its exit code, or the signal that ended it. */
export interface ChildExitStatus {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
}

/**
 * The child could not be started at all (the command does not exist or is not executable, or
 * the working directory does not exist). The message names the command, never its arguments
 * or environment (they may hold credentials).
 */
export class SpawnError extends Error {
  /** The system error code (`ENOENT`, `EACCES` …). */
  readonly code: string | undefined;

  constructor(command: string, cwd: string | undefined, cause: Error) {
    const code = (cause as NodeJS.ErrnoException).code;
    super(spawnFailure(command, cwd, code), { cause });
    this.name = 'SpawnError';
    this.code = code;
  }
}

/** Why `command` could not be started, in words (Node says ENOENT for a missing cwd too). */
function spawnFailure(command: string, cwd: string | undefined, code: string | undefined): string {
  const quoted = JSON.stringify(command);
  if (code === 'ENOENT' && cwd !== undefined && !existsSync(cwd)) {
    return `cannot run command ${quoted}: its working directory ${JSON.stringify(cwd)} does not exist`;
  }
  if (code === 'ENOENT') return `cannot run command ${quoted}: not found (ENOENT)`;
  if (code === 'EACCES') return `cannot run command ${quoted}: permission denied (EACCES)`;
  return `cannot run command ${quoted}: ${code ?? 'spawn failed'}`;
}

/** A JSON-RPC response (an id, no method). */
function isResponse(message: JSONRPCMessage): boolean {
  const m = message as { id?: unknown; method?: unknown };
  return m.id !== undefined && m.method === undefined;
}

/** MCP client transport over a child process's stdio, terminating its process group on close. */
export class ProcessStdioTransport implements Transport {
  onclose?: () => void;
  onerror?: (error: Error) => void;
  onmessage?: (message: JSONRPCMessage) => void;
  /**
   * Offered each non-blank line before it is parsed; returning true takes it (it is neither
   * parsed nor delivered to `onmessage`). The fast path reads the responses it can from their
   * text (see `plainTextResponse`). Must not throw.
   */
  onrawline: ((line: string) => boolean) | undefined = undefined;

  readonly #options: ProcessStdioTransportOptions;
  #child: ChildProcess | undefined;
  #pid: number | undefined;
  readonly #reader: LineReader;
  #line: string | undefined;
  /**
   * A notification was delivered since the current chunk (or release of held messages) began:
   * a response read after it is held (see {@link #online}).
   */
  #notified = false;
  /** Messages held for a microtask, in the order read (see {@link #online}). */
  #held: Array<readonly [JSONRPCMessage, string]> | undefined;
  /** The start of the line being dropped (too long), read once its end is known. */
  #dropped: string | undefined;
  /** Gives up on the line being dropped if it has not ended by then. */
  #droppedTimer: NodeJS.Timeout | undefined;
  readonly #writer = new LineWriter(
    () => this.#child?.stdin ?? undefined,
    'poll',
    (lines, error) => this.#unsent(lines, error),
  );
  #closed = false;
  #exited: Promise<void> | undefined;
  #exitStatus: ChildExitStatus | undefined;

  constructor(options: ProcessStdioTransportOptions) {
    this.#options = options;
    const max = options.maxLineLength ?? DEFAULT_MAX_MESSAGE_BYTES;
    this.#reader = new LineReader(
      (line) => this.#online(line),
      max,
      (head) => this.#ondropping(head, max),
      {
        tailLength: DROPPED_TAIL_LENGTH,
        headLength: DROPPED_HEAD_LENGTH,
        onend: (tail) => this.#ondropped(tail, max),
      },
    );
  }

  /** Pid of the child (and id of its process group), once started. */
  get pid(): number | undefined {
    return this.#child?.pid;
  }

  /** The child's stderr when `stderr: 'pipe'`. */
  get stderr(): NodeJS.ReadableStream | null {
    return this.#child?.stderr ?? null;
  }

  start(): Promise<void> {
    if (this.#child) throw new Error('ProcessStdioTransport already started');
    return new Promise((resolve, reject) => {
      const { command, cwd } = this.#options;
      const stderr = this.#options.stderr ?? 'inherit';
      const child = spawn(command, [...(this.#options.args ?? [])], {
        env: childEnvironment(this.#options.env),
        cwd,
        stdio: ['pipe', 'pipe', stderr === 'log' ? 'pipe' : stderr],
        detached: process.platform !== 'win32',
        windowsHide: true,
      });
      this.#child = child;
      this.#pid = child.pid;
      if (child.pid !== undefined) trackGroup(child.pid);
      let spawned = false;
      // A child that never ran (ENOENT, EACCES, a missing cwd) emits 'error' and 'close' but
      // never 'exit': waiting for 'exit' alone would hang close() — and with nothing else
      // scheduled, the whole process would run out of work and exit 0 during start-up.
      this.#exited = new Promise((done) => {
        child.once('exit', () => done());
        child.once('close', () => done());
      });
      child.once('error', (error) => {
        if (!spawned) {
          // start() reports it; onerror too would log the same failure twice.
          reject(new SpawnError(command, cwd, error));
          return;
        }
        this.onerror?.(error);
      });
      child.once('spawn', () => {
        spawned = true;
        resolve();
      });
      child.once('exit', (code, signal) => {
        this.#exitStatus = { code, signal };
      });
      child.once('close', () => {
        this.#child = undefined;
        if (!this.#closed) {
          // Died on its own: take down whatever it left in its group, then report.
          this.#signal('SIGKILL');
          if (this.#pid !== undefined) untrackGroup(this.#pid);
          this.#closed = true;
          this.onclose?.();
        }
      });
      child.stdin?.on('error', (error) => this.#inputFailed(error));
      child.stdout?.setEncoding('utf8');
      child.stdout?.on('data', (chunk: string) => this.#read(chunk));
      child.stdout?.on('error', (error) => this.#report(error));
      if (stderr === 'log') {
        // Always read, even without a listener: a child blocks once its stderr pipe is full.
        const online = this.#options.onStderrLine;
        const lines = new LineReader(
          (line) => {
            if (line.trim() !== '') online?.(line);
          },
          MAX_STDERR_LINE,
          () => online?.(`[a stderr line longer than ${MAX_STDERR_LINE} characters was dropped]`),
        );
        child.stderr?.setEncoding('utf8');
        child.stderr?.on('data', (chunk: string) => lines.push(chunk));
      }
    });
  }

  /** How the child ended, once it has (undefined while it runs or when it never started). */
  get exitStatus(): ChildExitStatus | undefined {
    return this.#exitStatus;
  }

  /**
   * One chunk of the child's stdout. Runs in the stream's 'data' handler, where a throw would
   * be an uncaught exception (the sidecar's end): nothing may escape.
   */
  #read(chunk: string): void {
    this.#notified = false;
    try {
      this.#reader.push(chunk);
    } catch (error) {
      // Not expected (each line is handled in its own try): start afresh at the next line.
      this.#reader.reset();
      this.#report(asError(error));
    }
  }

  /** Delivers the held messages (see {@link #online}), holding again after a notification. */
  #release(): void {
    const held = this.#held!;
    this.#held = undefined;
    this.#notified = false;
    for (let i = 0; i < held.length; i++) {
      const [message, line] = held[i]!;
      if (this.#notified && isResponse(message)) {
        this.#held = held.slice(i);
        queueMicrotask(() => this.#release());
        return;
      }
      this.#deliver(message, line);
    }
  }

  #deliver(message: JSONRPCMessage, line: string): void {
    this.#line = line;
    try {
      this.onmessage?.(message);
    } catch (error) {
      this.#report(asError(error));
    } finally {
      this.#line = undefined;
    }
    if ((message as { id?: unknown }).id === undefined) this.#notified = true;
  }

  /**
   * The child's stdin failed (EPIPE: the child closed it, or is exiting): nothing can be sent
   * to it any more, while it may live on. The connection is reset like a child that died (it
   * is stopped, calls in flight fail as disconnected, the upstream restarts with its backoff);
   * until then every message is refused unsent ({@link NotConnectedError}).
   */
  #inputFailed(error: Error): void {
    this.#report(error);
    if (this.#closed) return;
    this.#report(
      new Error(
        `cannot write to the upstream's stdin (${errorCode(error)}); the connection is reset`,
      ),
    );
    void this.close().catch(() => undefined);
  }

  /**
   * A write to the child failed with nothing of it written (see {@link LineWriter}): each
   * request in it fails at once with an error answer made here, marked (see
   * {@link isUnsentAnswer}) so that its call is told it was never sent, instead of waiting for
   * an answer that cannot come.
   */
  #unsent(lines: string, error: Error): void {
    for (const line of lines.split('\n')) {
      let m: { id?: unknown; method?: unknown };
      try {
        m = JSON.parse(line) as typeof m;
      } catch {
        continue;
      }
      if (typeof m?.method !== 'string' || (typeof m.id !== 'number' && typeof m.id !== 'string'))
        continue;
      const data = { reason: errorCode(error) };
      unsentAnswers.add(data);
      this.#deliver(
        {
          jsonrpc: '2.0',
          id: m.id,
          error: { code: ErrorCode.ConnectionClosed, message: `not sent: ${error.message}`, data },
        },
        '',
      );
    }
  }

  /** `onerror`, which must not throw either. */
  #report(error: Error): void {
    try {
      this.onerror?.(error);
    } catch {
      // a broken error handler: nothing left to tell
    }
  }

  #online(line: string): void {
    // A line that starts with `{` is not blank: no trim (a copy) for the usual message.
    if (line.charCodeAt(0) !== 0x7b && line.trim() === '') return;
    let message: unknown;
    try {
      if (this.onrawline?.(line) === true) return;
      message = JSON.parse(line);
    } catch (error) {
      this.#report(
        new Error(`upstream wrote a non-JSON line: ${line.slice(0, 200)}`, { cause: error }),
      );
      return;
    }
    if (
      message === null ||
      typeof message !== 'object' ||
      (message as { jsonrpc?: unknown }).jsonrpc !== '2.0'
    ) {
      this.#report(new Error(`upstream wrote a non-JSON-RPC message: ${line.slice(0, 200)}`));
      return;
    }
    // The SDK's `Protocol` handles a notification on a microtask and a response at once: a
    // response read in the same chunk after a progress notification would end its call's
    // progress handler before the notification reached it, and the notification was lost
    // (server-everything writes its last step right before its result). A response after a
    // notification is held for a microtask, then handed over; what is read after it waits with
    // it, in order.
    const m = message as JSONRPCMessage;
    if (this.#held !== undefined) {
      this.#held.push([m, line]);
    } else if (this.#notified && isResponse(m)) {
      this.#held = [[m, line]];
      queueMicrotask(() => this.#release());
    } else {
      this.#deliver(m, line);
    }
  }

  /**
   * A stdout line longer than `max` is being dropped: its start is kept until its end arrives.
   * However long it runs, nothing else can come from the upstream before its newline; one that
   * has not ended within `droppedLineTimeoutMs` (an upstream writing without end, or stalled
   * mid-line) is given up on, and the connection is reset.
   */
  #ondropping(head: string, max: number): void {
    this.#dropped = head.slice(0, DROPPED_HEAD_LENGTH);
    const ms = Math.min(
      this.#options.droppedLineTimeoutMs ?? DEFAULT_CALL_TIMEOUT_SECONDS * 1000,
      MAX_TIMER_MS,
    );
    clearTimeout(this.#droppedTimer);
    this.#droppedTimer = setTimeout(() => {
      this.#droppedTimer = undefined;
      this.#dropped = undefined;
      if (this.#closed) return;
      this.#report(
        new Error(
          `upstream wrote a message longer than ${max} characters (maxMessageBytes); it was dropped, and it did not end within ${ms} ms (callTimeoutSeconds); the connection is reset`,
        ),
      );
      void this.close().catch(() => undefined);
    }, ms);
    this.#droppedTimer.unref();
  }

  /**
   * A stdout line longer than `max` was dropped (the reader keeps none of it and skips the rest
   * up to its newline, however long), and has ended; `tail` is its last characters. What waits
   * for it must not wait until its timeout, and one agent's oversized answer must not fail the
   * others' calls. The message is named by its start (`{"jsonrpc":"2.0","id":7,"result":…`, as
   * the Python SDK writes it) or by its end (`…},"jsonrpc":"2.0","id":7}`: the TypeScript SDK
   * writes `id` last): an answer fails its call alone, with an error answer made here, and the
   * connection lives on; a request of the upstream's (led by `method`, with an id) is answered
   * with an error, so the upstream does not wait for it; a notification is only reported.
   * Anything else — a line that is not a JSON-RPC message — cannot be tied to a call without
   * reading what was refused, and guessing could fail another agent's call: the connection is
   * reset like a child that died (it is stopped, every call in flight fails at once as
   * disconnected, and the upstream restarts with its backoff). An upstream that names the
   * wrong id gains nothing: it could answer any call of its own with an error anyway.
   * The report names the bound and at most the message's method name or id, never its content.
   */
  #ondropped(tail: string, max: number): void {
    clearTimeout(this.#droppedTimer);
    this.#droppedTimer = undefined;
    const head = this.#dropped ?? '';
    this.#dropped = undefined;
    // Given up on already (the connection is being reset), or closed meanwhile.
    if (this.#closed) return;
    const what = `upstream wrote a message longer than ${max} characters (maxMessageBytes); it was dropped`;
    const message = droppedMessage(head, tail);
    if (message.kind === 'notification') {
      this.#report(new Error(`${what} (a ${message.method} message)`));
    } else if (message.kind === 'request') {
      this.#report(
        new Error(
          `${what} (a ${message.method} request, id ${message.idText}): answered with an error`,
        ),
      );
      const answer = {
        jsonrpc: '2.0' as const,
        id: message.id,
        error: {
          code: -32600,
          message: `the request was longer than ${max} characters (the gateway's maxMessageBytes) and was dropped`,
        },
      };
      if (!this.#closed) void this.#writer.sendLine(JSON.stringify(answer)).catch(() => undefined);
    } else if (message.kind === 'answer') {
      this.#report(new Error(`${what}: the call it answered (id ${message.idText}) failed`));
      this.#online(JSON.stringify(droppedAnswer(message.id, `${max} characters`)));
    } else {
      this.#report(
        new Error(`${what}; the answer it held cannot be told, the connection is reset`),
      );
      void this.close().catch(() => undefined);
    }
  }

  /** The line the message being delivered to `onmessage` was parsed from (during the call). */
  get currentLine(): string | undefined {
    return this.#line;
  }

  send(message: JSONRPCMessage): Promise<void> {
    if (!this.#child?.stdin || this.#closed) return Promise.reject(new NotConnectedError());
    const refused = this.#backlogged(this.#child.stdin);
    if (refused) return Promise.reject(refused);
    return this.#writer.send(message);
  }

  /** {@link send} for a message already serialized as one line of JSON (no newline). */
  sendLine(json: string): Promise<void> {
    if (!this.#child?.stdin || this.#closed) return Promise.reject(new NotConnectedError());
    const refused = this.#backlogged(this.#child.stdin);
    if (refused) return Promise.reject(refused);
    return this.#writer.sendLine(json);
  }

  /** What waits for the child to read its stdin (UTF-16 units). */
  get unsentInput(): number {
    return this.#writer.pending + (this.#child?.stdin?.writableLength ?? 0);
  }

  /** The error to refuse a message with when more than the bound waits for the child. */
  #backlogged(stdin: NodeJS.WritableStream & { writableLength: number }): Error | undefined {
    if (stdin.writableLength === 0) return undefined; // the common case: the child keeps up
    const waiting = this.#writer.pending + stdin.writableLength;
    const max =
      this.#options.maxInputBacklog ?? this.#options.maxLineLength ?? DEFAULT_MAX_MESSAGE_BYTES;
    return waiting > max ? new InputBacklogError(waiting, max) : undefined;
  }

  /** Signals the whole process group (falls back to the child alone). */
  #signal(sig: NodeJS.Signals): void {
    const pid = this.#pid;
    if (pid === undefined) return;
    try {
      process.kill(process.platform === 'win32' ? pid : -pid, sig);
    } catch {
      // the group is already gone
    }
  }

  /** Ends stdin, then SIGTERM to the group, then SIGKILL after the grace period. */
  async close(): Promise<void> {
    const child = this.#child;
    const exited = this.#exited;
    this.#closed = true;
    clearTimeout(this.#droppedTimer);
    if (!child || !exited) {
      return;
    }
    const grace = this.#options.killGraceMs ?? 2000;
    try {
      this.#writer.flush();
      child.stdin?.end();
    } catch {
      // ignore
    }
    this.#signal('SIGTERM');
    const timer = setTimeout(() => this.#signal('SIGKILL'), grace);
    timer.unref();
    await exited;
    // The direct child is gone; make sure nothing it left in the group survives it.
    this.#signal('SIGKILL');
    if (this.#pid !== undefined) untrackGroup(this.#pid);
    clearTimeout(timer);
    this.onclose?.();
  }

  /** Kills the process group at once (crash simulation, last-resort shutdown). */
  kill(sig: NodeJS.Signals = 'SIGKILL'): void {
    this.#signal(sig);
  }
}

function asError(error: unknown): Error {
  return error instanceof Error ? error : new Error(String(error));
}

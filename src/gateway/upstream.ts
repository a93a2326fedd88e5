/**
 * One upstream MCP server: its connection (stdio, Streamable HTTP or legacy SSE), its catalog
 * (tools, prompts, resources, templates), and its restart loop.
 *
 * @module
 */
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { SSEClientTransport } from '@modelcontextprotocol/sdk/client/sse.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import type { RequestOptions } from '@modelcontextprotocol/sdk/shared/protocol.js';
import type { Transport } from '@modelcontextprotocol/sdk/shared/transport.js';
import {
  ErrorCode,
  McpError,
  type Notification,
  type Prompt,
  type Request,
  type Resource,
  type ResourceTemplate,
  type Result,
  type ServerCapabilities,
  type Tool,
} from '@modelcontextprotocol/sdk/types.js';
import { setMaxListeners } from 'node:events';
import { performance } from 'node:perf_hooks';
import { z } from 'zod';
import {
  FabricError,
  PayloadTooLargeError,
  UpstreamTimeoutError,
  UpstreamUnavailableError,
} from '../errors.js';
import { FastUpstreamCalls, type CancelHook, type Cancellation } from './fast-path.js';
import { RelayedMcpError, relayedMcpError } from './map-error.js';
import { CATALOG_ITEM_BOUNDS, catalogItemProblem } from './catalog.js';
import { exceededBound } from './input-bounds.js';
import { requestIdsOf } from './jsonrpc-message.js';
import { combineHints, NO_HINTS, pageHints, type ListHints, type ListKey } from './list-hints.js';
import { PathLock } from './path-lock.js';
import { PathResolver, pathResolutionOf } from './path-resolver.js';
import {
  InputBacklogError,
  isUnsentAnswer,
  NotConnectedError,
  ProcessStdioTransport,
  SpawnError,
} from './process-stdio-transport.js';
import { boundedBody, boundedEventStream, UpstreamMessageTooLargeError } from './bounded-body.js';
import type { UpstreamSpec } from './upstream-config.js';
import { withOwnCancelReasons } from './upstream-cancel-reason.js';
import { traceparentFetch, withTraceparentMeta } from '../telemetry/trace-context.js';

/**
 * Failures of requests nothing of which was handed to their upstream although it was ready (a
 * stdio upstream not reading its input: the request was refused before it was written; a
 * connection closing while the upstream still counted as ready; a request whose write to a
 * stdio child failed unwritten, its stdin closed; a request cancelled before it was sent).
 */
const neverSent = new WeakSet<object>();

/**
 * True when `error`, a failure of {@link Upstream.request}, refused the request before any of
 * it was handed to the upstream although the upstream was ready: the upstream cannot have done
 * its work, so the call is not charged as having reached it.
 */
export function wasNeverSent(error: unknown): boolean {
  return typeof error === 'object' && error !== null && neverSent.has(error);
}

/** Any JSON object: results are forwarded as they are, not re-validated field by field. */
export const LOOSE_RESULT = z.looseObject({});

/** Life of an upstream connection. */
export type UpstreamState = 'idle' | 'connecting' | 'ready' | 'restarting' | 'closed';

/** Callbacks through which an upstream reports to the gateway. */
export interface UpstreamHooks {
  /**
   * The upstream's catalog is fresh: `connected` when a connection was just established (the
   * start or a restart; said once per connection), false after a reload it asked for with a
   * `list_changed` notification.
   */
  onCatalog?(upstream: Upstream, connected: boolean): void;
  /** A notification the protocol layer did not consume (logging, resources/updated …). */
  onNotification?(upstream: Upstream, notification: Notification): void;
  /** A server→client request (sampling, elicitation, roots/list). */
  onRequest?(upstream: Upstream, request: Request, extra: { signal: AbortSignal }): Promise<Result>;
  /** The connection dropped unexpectedly (a restart is scheduled). */
  onDisconnect?(upstream: Upstream, error: Error | undefined): void;
  /** Non-fatal errors (unparseable lines, failed restarts). */
  onError?(upstream: Upstream, error: Error): void;
  /** A line the stdio child wrote to its stderr (`stderr: 'log'`). */
  onStderr?(upstream: Upstream, line: string): void;
}

/** Per-call options of {@link Upstream.request}. */
export interface UpstreamCallOptions {
  signal?: AbortSignal | undefined;
  /** Cancellation without an AbortSignal (the downstream fast path); wins over `signal`. */
  cancel?: CancelHook | undefined;
  onprogress?: RequestOptions['onprogress'];
  /** Overrides the upstream's `callTimeoutSeconds`. */
  timeoutMs?: number | undefined;
}

/** Client identity the gateway presents upstream. */
const CLIENT_INFO = { name: 'agent-fabric-gateway', version: '0.1.0' };

/**
 * A managed connection to one upstream server. Every capability the gateway can forward is
 * declared upstream (sampling, elicitation, roots); whether a given agent's client supports
 * them is checked when a request is forwarded.
 */
export class Upstream {
  readonly name: string;
  readonly spec: UpstreamSpec;
  /** Resolves this upstream's path parameters for the policy (from `spec.paths`). */
  readonly paths: PathResolver;
  /** Held by this upstream's calls that carry paths, from their check to the answer. */
  readonly pathLock = new PathLock();
  /** Tools whose calls share {@link pathLock} (`paths.keepNames`); `true`: every tool. */
  readonly #keepNames: ReadonlySet<string> | true;

  #hooks: UpstreamHooks;
  #client: Client | undefined;
  #transport: Transport | undefined;
  /** Requests without progress bypass the client's Protocol (see fast-path.ts). */
  #fast: FastUpstreamCalls | undefined;
  #state: UpstreamState = 'idle';
  /** Who waits for the current connection to close ({@link whenDisconnected}). */
  #disconnectWaiters = new Set<() => void>();
  #restartAttempt = 0;
  #restartTimer: NodeJS.Timeout | undefined;
  #nextRestartAt = 0;
  #lastError: Error | undefined;
  #connectCount = 0;
  /**
   * With `forwardRoots`: the connection that was given an agent's roots, and that agent's id
   * (see {@link holdRootsOf}).
   */
  #rootsHolder: { readonly client: Client; readonly agentId: string } | undefined;
  /** The list reload running per connection, and whether another was asked for meanwhile. */
  readonly #reloads = new WeakMap<Client, { again: boolean }>();
  /** What this upstream was given that its failed answers must not carry to an agent. */
  readonly #answerSecrets: readonly string[];

  tools: readonly Tool[] = [];
  prompts: readonly Prompt[] = [];
  resources: readonly Resource[] = [];
  resourceTemplates: readonly ResourceTemplate[] = [];
  /** The list-level hints (`ttlMs`, `cacheScope`, `_meta` …) of each list, as last loaded. */
  listHints: Readonly<Record<ListKey, ListHints>> = EMPTY_LIST_HINTS;
  capabilities: ServerCapabilities = {};
  instructions: string | undefined;

  constructor(name: string, spec: UpstreamSpec, hooks: UpstreamHooks = {}) {
    this.name = name;
    this.spec = spec;
    this.paths = new PathResolver(pathResolutionOf(spec));
    const keep = spec.paths?.keepNames ?? [];
    this.#keepNames = keep.includes('*') ? true : new Set(keep);
    this.#hooks = hooks;
    this.#answerSecrets = specSecrets(spec, false);
  }

  /**
   * Whether calls of `tool` (its upstream name, or a pseudo-tool such as `resources/read`) share
   * the {@link pathLock}: `paths.keepNames` declares that it never renames, moves, links or
   * removes a name. Otherwise a call of it that carries paths takes the lock alone.
   */
  keepsNames(tool: string): boolean {
    return this.#keepNames === true || this.#keepNames.has(tool);
  }

  get state(): UpstreamState {
    return this.#state;
  }

  /** How many times a connection was established (1 after start, +1 per restart). */
  get connectCount(): number {
    return this.#connectCount;
  }

  /**
   * The agent whose roots the current connection was given (`forwardRoots`), which it alone
   * may use until the connection ends; undefined while no agent's roots were given.
   */
  get rootsHolder(): string | undefined {
    const holder = this.#rootsHolder;
    return holder !== undefined && holder.client === this.#client ? holder.agentId : undefined;
  }

  /**
   * Whether the roots of agent `agentId` may be given to the current connection: true when it
   * holds no agent's roots yet — it is that agent's from now on ({@link rootsHolder}) — or
   * holds that agent's; false when it holds another's, or is not ready (a connection starting
   * has no call of any agent in flight to ask for).
   */
  holdRootsOf(agentId: string): boolean {
    const client = this.#client;
    if (client === undefined || this.#state !== 'ready') return false;
    const held = this.rootsHolder;
    if (held === undefined) this.#rootsHolder = { client, agentId };
    return held === undefined || held === agentId;
  }

  /**
   * Frees the current connection from agent `agentId`'s hold ({@link holdRootsOf}) when the
   * roots it gave left nothing there to keep: none, or a refused `roots/list`.
   */
  releaseRootsOf(agentId: string): void {
    const held = this.#rootsHolder;
    if (held !== undefined && held.client === this.#client && held.agentId === agentId) {
      this.#rootsHolder = undefined;
    }
  }

  /**
   * The refusal of a request of an agent other than {@link rootsHolder}: the connection keeps
   * the roots it was given, and what they let the upstream touch or show is that agent's.
   * Nothing was sent ({@link wasNeverSent}).
   */
  heldByAnother(): UpstreamUnavailableError {
    const error = new UpstreamUnavailableError(
      this.name,
      'holds the roots of another agent (forwardRoots) and serves only that agent until it restarts; give each agent its own upstream entry',
      { state: this.#state, reason: 'roots_held' },
    );
    neverSent.add(error);
    return error;
  }

  /** Pid of the stdio child (its process group id), when connected over stdio. */
  get pid(): number | undefined {
    return this.#transport instanceof ProcessStdioTransport ? this.#transport.pid : undefined;
  }

  /** The connected SDK client, for callers that need raw access (benchmarks, tests). */
  /** What waits for a stdio upstream to read its stdin (UTF-16 units; 0 for the others). */
  get unsentInput(): number {
    return this.#transport instanceof ProcessStdioTransport ? this.#transport.unsentInput : 0;
  }

  get client(): Client | undefined {
    return this.#client;
  }

  /**
   * Connects and loads the catalog.
   * @throws UpstreamUnavailableError when the server cannot be started or initialised.
   */
  async start(): Promise<void> {
    if (this.#state === 'closed') throw new UpstreamUnavailableError(this.name, 'is closed');
    await this.#connect();
  }

  #createTransport(): Transport {
    const spec = this.spec;
    if (spec.transport === 'stdio') {
      return new ProcessStdioTransport({
        command: spec.command,
        args: spec.args,
        env: spec.env,
        cwd: spec.cwd,
        stderr: spec.stderr,
        onStderrLine: (line) => this.#hooks.onStderr?.(this, line),
        maxLineLength: spec.maxMessageBytes,
        droppedLineTimeoutMs: spec.callTimeoutSeconds * 1000,
      });
    }
    const url = new URL(spec.url);
    const requestInit = { headers: spec.headers };
    const report = (error: Error): void => this.#hooks.onError?.(this, error);
    return spec.transport === 'sse'
      ? new SSEClientTransport(url, {
          requestInit,
          // The POSTs too: the SDK reads a refused POST's body whole (`response.text()`).
          fetch: tooLargePostFetch(linkedSignalFetch(fetch, spec.maxMessageBytes)),
          eventSourceInit: {
            fetch: linkedSignalFetch(
              withHeaders(spec.headers),
              spec.maxMessageBytes,
              report,
              spec.callTimeoutSeconds * 1000,
            ),
          },
        })
      : new StreamableHTTPClientTransport(url, {
          requestInit,
          fetch: linkedSignalFetch(
            traceparentFetch(fetch),
            spec.maxMessageBytes,
            report,
            spec.callTimeoutSeconds * 1000,
          ),
        });
  }

  async #connect(): Promise<void> {
    this.#state = 'connecting';
    const client = new Client(CLIENT_INFO, {
      capabilities: {
        sampling: {},
        elicitation: { form: {}, url: {} },
        ...(this.spec.forwardRoots ? { roots: { listChanged: true } } : {}),
      },
    });
    client.fallbackNotificationHandler = async (n) => this.#onNotification(client, n);
    client.fallbackRequestHandler = async (request, extra) => {
      const handler = this.#hooks.onRequest;
      if (!handler)
        throw new McpError(ErrorCode.MethodNotFound, `${request.method} is not supported`);
      return handler(
        this,
        { method: request.method, params: request.params },
        { signal: extra.signal },
      );
    };
    client.onerror = (error) => {
      // An HTTP transport reports a failed request here and by rejecting it: while connecting,
      // the rejected start says it once. (A stdio child's stray output is still worth a line.)
      if (this.#state === 'connecting' && this.spec.transport !== 'stdio') return;
      this.#hooks.onError?.(this, redactError(this.spec, error));
    };
    // A cancellation is sent with the gateway's reason, never the agent's (see the file).
    const transport = withOwnCancelReasons(this.#createTransport());
    // One bound for the whole start: handshake and first catalog load.
    const timeoutMs = this.spec.startTimeoutSeconds * 1000;
    const deadline = performance.now() + timeoutMs;
    let phase: StartPhase = 'initialize';
    try {
      await client.connect(transport, { timeout: timeoutMs });
      // The server has read its roots by the time it answers initialize: read them alike.
      await this.paths.readRoots();
      this.#fast = FastUpstreamCalls.install(client, transport, LOOSE_RESULT);
      this.capabilities = client.getServerCapabilities() ?? {};
      this.instructions = client.getInstructions();
      phase = 'catalog';
      await this.#loadCatalog(client, Math.max(1, Math.ceil(deadline - performance.now())));
    } catch (error) {
      await client.close().catch(() => undefined);
      // Closed meanwhile: stays closed (a restart scheduled now would spawn a child after close).
      if ((this.#state as UpstreamState) !== 'closed') this.#state = 'restarting';
      const failure = describeStartFailure(this.spec, transport, phase, error, timeoutMs);
      this.#lastError = new Error(failure.message, { cause: error });
      throw new UpstreamUnavailableError(
        this.name,
        `failed to start: ${failure.message}`,
        failure.details,
        { cause: error },
      );
    }
    if ((this.#state as UpstreamState) === 'closed') {
      await client.close().catch(() => undefined);
      return;
    }
    this.#client = client;
    this.#transport = transport;
    this.#state = 'ready';
    this.#restartAttempt = 0;
    this.#connectCount++;
    client.onclose = () => this.#ondisconnect(client);
    try {
      this.#hooks.onCatalog?.(this, true);
    } catch (error) {
      // The connection is up and kept: a failing hook must not fail the connect, which would
      // start another child while this one's client stays open.
      this.#hooks.onError?.(this, asError(error));
    }
  }

  async #loadCatalog(client: Client, timeout: number): Promise<void> {
    const caps = this.capabilities;
    const [tools, prompts, resources, templates] = await Promise.all([
      caps.tools ? collect(client, 'tools/list', 'tools', timeout) : NOTHING,
      caps.prompts ? collect(client, 'prompts/list', 'prompts', timeout) : NOTHING,
      caps.resources ? collect(client, 'resources/list', 'resources', timeout) : NOTHING,
      caps.resources
        ? collect(client, 'resources/templates/list', 'resourceTemplates', timeout)
        : NOTHING,
    ]);
    for (const list of [tools, prompts, resources, templates]) {
      if (list.dropped !== undefined) this.#hooks.onError?.(this, new Error(list.dropped));
    }
    this.tools = tools.items as Tool[];
    this.prompts = prompts.items as Prompt[];
    this.resources = resources.items as Resource[];
    this.resourceTemplates = templates.items as ResourceTemplate[];
    this.listHints = {
      tools: tools.hints,
      prompts: prompts.hints,
      resources: resources.hints,
      resourceTemplates: templates.hints,
    };
  }

  async #onNotification(client: Client, n: Notification): Promise<void> {
    switch (n.method) {
      case 'notifications/tools/list_changed':
      case 'notifications/prompts/list_changed':
      case 'notifications/resources/list_changed':
        await this.#listChanged(client);
        return;
      default:
        this.#hooks.onNotification?.(this, n);
    }
  }

  /**
   * Reloads the lists after a `list_changed`. A reload per notification would let an upstream
   * make the gateway ask for every list as often as it likes (a burst of 200 was 200 reloads):
   * per connection at most one reload runs, and notifications during it fold into one more
   * after it.
   */
  async #listChanged(client: Client): Promise<void> {
    const running = this.#reloads.get(client);
    if (running) {
      running.again = true;
      return;
    }
    const reload = { again: false };
    this.#reloads.set(client, reload);
    try {
      do {
        reload.again = false;
        try {
          await this.#loadCatalog(client, this.spec.callTimeoutSeconds * 1000);
          if (this.#client === client) this.#hooks.onCatalog?.(this, false);
        } catch (error) {
          this.#hooks.onError?.(this, asError(error));
        }
      } while (reload.again && this.#state !== 'closed');
    } finally {
      this.#reloads.delete(client);
    }
  }

  #ondisconnect(client: Client): void {
    if (this.#client !== client) return;
    this.#client = undefined;
    this.#transport = undefined;
    this.#disconnected();
    if (this.#state === 'closed') return;
    this.#state = 'restarting';
    this.#lastError = new Error('connection closed');
    this.#hooks.onDisconnect?.(this, this.#lastError);
    this.#scheduleRestart();
  }

  #scheduleRestart(): void {
    if (this.#state === 'closed' || this.#restartTimer) return;
    const { initialDelayMs, maxDelayMs } = this.spec.restart;
    const delay = Math.min(maxDelayMs, initialDelayMs * 2 ** this.#restartAttempt);
    this.#restartAttempt++;
    this.#nextRestartAt = Date.now() + delay;
    this.#restartTimer = setTimeout(() => {
      this.#restartTimer = undefined;
      if (this.#state === 'closed') return;
      this.#connect().catch((error: unknown) => {
        this.#hooks.onError?.(this, asError(error));
        this.#scheduleRestart();
      });
    }, delay);
    this.#restartTimer.unref();
  }

  /** Starts the restart loop after a failed {@link start} (for optional upstreams). */
  retryInBackground(): void {
    if (this.#state !== 'ready' && this.#state !== 'closed') {
      this.#state = 'restarting';
      this.#scheduleRestart();
    }
  }

  #unavailable(): UpstreamUnavailableError {
    if (this.#state === 'restarting') {
      const inMs = Math.max(0, this.#nextRestartAt - Date.now());
      return new UpstreamUnavailableError(
        this.name,
        `is restarting after a disconnect (attempt ${this.#restartAttempt}, next try in ${inMs} ms)`,
        { state: this.#state, retryInMs: inMs, lastError: this.#lastError?.message },
      );
    }
    return new UpstreamUnavailableError(this.name, `is ${this.#state}`, { state: this.#state });
  }

  /**
   * Sends one request upstream and returns the raw result. Never throws: every failure is a
   * rejection, with the errors below.
   * @throws UpstreamUnavailableError when not connected or the connection drops mid-call.
   * @throws UpstreamTimeoutError when the call runs past its timeout.
   * @throws McpError for protocol errors the upstream itself returned.
   */
  request(request: Request, options: UpstreamCallOptions = {}): Promise<Result> {
    const client = this.#client;
    if (!client || this.#state !== 'ready') return Promise.reject(this.#unavailable());
    const timeout = options.timeoutMs ?? this.spec.callTimeoutSeconds * 1000;
    const cancel = options.cancel ?? options.signal;
    try {
      // The upstream-call span's context: a header to HTTP upstreams, `_meta` to the others.
      if (this.spec.transport !== 'http') request = withTraceparentMeta(request);
    } catch (error) {
      return Promise.reject(error as Error);
    }
    const method = request.method;
    // Every failure, the fast path's included, is mapped (and redacted) here.
    const fail = (error: unknown): unknown =>
      redactAnswerError(
        this.#answerSecrets,
        this.#requestError(error, client, method, timeout, cancel),
      );
    if (cancel?.aborted) {
      // Cancelled before anything was sent: nothing runs upstream.
      const refused = fail(cancel.reason);
      if (typeof refused === 'object' && refused !== null) neverSent.add(refused);
      return Promise.reject(refused as Error);
    }
    const fast = this.#fast;
    if (fast?.client === client && options.onprogress === undefined) {
      // Its own promise, failures already mapped: no await of ours between the response and
      // the caller.
      return fast.request(request, cancel, timeout, fail);
    }
    let sent: Promise<Result>;
    try {
      sent = client.request(request, LOOSE_RESULT, {
        signal: options.cancel?.signal ?? options.signal,
        onprogress: options.onprogress,
        timeout,
      });
    } catch (error) {
      return Promise.reject(fail(error) as Error);
    }
    return sent.catch((error: unknown) => {
      throw fail(error);
    });
  }

  /**
   * Calls `done` once this upstream is done with the request that failed with `error`, a
   * failure of {@link request} that gave it up (cancelled or timed out) after it was sent: when
   * its late answer arrives (and is dropped) or the connection closes. False when that cannot
   * be told (a request with progress, which the SDK's client sends; a request already
   * answered): `done` is then never called. Nor is it when the request is forgotten (over 1024
   * stopped after it on the connection) before its late answer: {@link whenDisconnected} tells
   * when the connection closes in every case.
   */
  whenAnswered(error: unknown, done: () => void): boolean {
    return this.#fast?.whenAnswered(error, done) ?? false;
  }

  /**
   * Calls `done` once the current connection closes (at once when there is none): nothing sent
   * on it runs upstream past that, a request {@link whenAnswered} cannot follow included.
   * Returns the function that stops the wait (call it when `done` is no longer wanted).
   */
  whenDisconnected(done: () => void): () => void {
    if (this.#client === undefined) {
      done();
      return () => undefined;
    }
    const once = (): void => done();
    this.#disconnectWaiters.add(once);
    return () => void this.#disconnectWaiters.delete(once);
  }

  /** What a failed request rejects with: a timeout, a lost connection, the upstream's answer. */
  #requestError(
    error: unknown,
    client: Client,
    method: string,
    timeout: number,
    cancel: Cancellation | undefined,
  ): unknown {
    if (error instanceof McpError) {
      if (isUnsentAnswer(error.data)) {
        // Its write to a stdio child failed with nothing of it written (the child closed its
        // stdin): the upstream cannot have run it.
        const refused = new UpstreamUnavailableError(
          this.name,
          `cannot be written to (its input is closed: ${error.data.reason}); ${method} was not sent, the connection is reset`,
          { state: this.#state },
          { cause: error },
        );
        neverSent.add(refused);
        return refused;
      }
      if (error.code === ErrorCode.RequestTimeout && !cancel?.aborted) {
        return new UpstreamTimeoutError(this.name, method, timeout, { cause: error });
      }
      if (error.code === ErrorCode.ConnectionClosed) {
        return new UpstreamUnavailableError(
          this.name,
          // Closed by the gateway (its shutdown, once the grace for calls in flight ran out): it
          // is not restarted, and an agent told it is would wait for it to come back.
          this.#state === 'closed'
            ? `was closed during ${method}: the gateway is shutting down`
            : `disconnected during ${method}; it is being restarted`,
          { state: this.#state },
          { cause: error },
        );
      }
      // Any other protocol error is the upstream's answer, relayed as it sent it.
      return relayedMcpError(error);
    } else if (error instanceof InputBacklogError) {
      const refused = new UpstreamUnavailableError(
        this.name,
        `is not reading its input (${error.waiting} characters wait for it, at most ${error.max}); ${method} was not sent`,
        { state: this.#state, waiting: error.waiting, max: error.max },
        { cause: error },
      );
      neverSent.add(refused);
      return refused;
    } else if (error instanceof NotConnectedError) {
      // The connection closes (a stdio child being stopped after a reset) while this upstream
      // still counts as ready: nothing of the request was written.
      const refused = new UpstreamUnavailableError(
        this.name,
        `is closing its connection; ${method} was not sent`,
        { state: this.#state },
        { cause: error },
      );
      neverSent.add(refused);
      return refused;
    } else if (error instanceof PostTooLargeError) {
      // The legacy SSE transport's POST of the message was refused (413): the upstream's server
      // (or a proxy before it) did not take it, so nothing of the call ran.
      const refused = new PayloadTooLargeError(
        undefined,
        `upstream ${this.name} refused ${method} as too large (HTTP 413); it was not sent`,
        { upstream: this.name, status: 413 },
      );
      neverSent.add(refused);
      return refused;
    } else if (isConnectionFailure(error)) {
      // An HTTP/SSE upstream that went away: no process exit tells us, so the failed request
      // does. Treat it like a dead stdio child: drop the connection and restart with backoff.
      this.#ondisconnect(client);
      void client.close().catch(() => undefined);
      return new UpstreamUnavailableError(
        this.name,
        `unreachable during ${method} (${asError(error).message}); it is being restarted`,
        { state: this.#state },
        { cause: error },
      );
    }
    return error;
  }

  /** Sends a notification upstream (best effort). */
  async notify(notification: Notification): Promise<void> {
    const client = this.#client;
    if (client && this.#state === 'ready') await client.notification(notification);
  }

  /** Kills the upstream process group (tests and crash drills). */
  killProcess(sig: NodeJS.Signals = 'SIGKILL'): void {
    if (this.#transport instanceof ProcessStdioTransport) this.#transport.kill(sig);
  }

  /** Closes the connection for good, terminating a stdio child's process tree. */
  async close(): Promise<void> {
    this.#state = 'closed';
    if (this.#restartTimer) clearTimeout(this.#restartTimer);
    this.#restartTimer = undefined;
    const client = this.#client;
    this.#client = undefined;
    this.#transport = undefined;
    this.#disconnected();
    await client?.close().catch(() => undefined);
  }

  /** Tells who waits that the connection closed ({@link whenDisconnected}). */
  #disconnected(): void {
    const waiters = [...this.#disconnectWaiters];
    this.#disconnectWaiters.clear();
    for (const done of waiters) done();
  }
}

const CONNECTION_ERROR_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'EPIPE',
  'ENOTFOUND',
  'EHOSTUNREACH',
  'ETIMEDOUT',
  'UND_ERR_SOCKET',
  'UND_ERR_CONNECT_TIMEOUT',
  'UND_ERR_CLOSED',
]);

/** A legacy SSE upstream's answer 413 to the POST of a message (see {@link tooLargePostFetch}). */
class PostTooLargeError extends Error {
  constructor() {
    super('Error POSTing to endpoint (HTTP 413)');
    this.name = 'PostTooLargeError';
  }
}

/**
 * The legacy SSE transport's `fetch` for the POSTs of its messages: a 413 (the message is more
 * than the upstream's server, or a proxy before it, takes) rejects with {@link PostTooLargeError}
 * (its body unread), which {@link Upstream} tells the caller as a call never sent. The SDK made
 * it an untyped `Error POSTing to endpoint (HTTP 413): <body>`, taken for a call that had
 * reached its upstream. One `.then` per POST of a legacy SSE upstream.
 */
function tooLargePostFetch(base: typeof fetch): typeof fetch {
  return (input, init) =>
    base(input, init).then((response) => {
      if (response.status !== 413 || init?.method !== 'POST') return response;
      void response.body?.cancel().catch(() => undefined);
      throw new PostTooLargeError();
    });
}

/** True for a network failure of an HTTP upstream (fetch rejects with a TypeError and a coded cause). */
function isConnectionFailure(error: unknown): boolean {
  if (!(error instanceof Error)) return false;
  for (let e: unknown = error, depth = 0; e instanceof Error && depth < 4; e = e.cause, depth++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === 'string' && CONNECTION_ERROR_CODES.has(code)) return true;
  }
  return error instanceof TypeError && /fetch failed/i.test(error.message);
}

/** Where a start (or restart) of an upstream failed: its `initialize` handshake or its lists. */
type StartPhase = 'initialize' | 'catalog';

/**
 * Why an upstream failed to start, in one line that names what was run — the stdio command or
 * the URL — and never its arguments, environment, headers, URL credentials or query (any of
 * which may hold a secret).
 */
function describeStartFailure(
  spec: UpstreamSpec,
  transport: Transport,
  phase: StartPhase,
  error: unknown,
  timeoutMs: number,
): { message: string; details: Record<string, unknown> } {
  const target =
    spec.transport === 'stdio'
      ? { what: `command ${JSON.stringify(spec.command)}`, details: { command: spec.command } }
      : { what: `url ${JSON.stringify(safeUrl(spec.url))}`, details: { url: safeUrl(spec.url) } };
  const details: Record<string, unknown> = { ...target.details, phase };
  if (error instanceof SpawnError) {
    return { message: error.message, details: { ...details, errno: error.code } };
  }
  const step =
    phase === 'initialize'
      ? 'before it answered initialize'
      : 'while its tools, prompts and resources were listed';
  // Checked before the exit status: the gateway itself stops a child that timed out.
  if (error instanceof McpError && error.code === ErrorCode.RequestTimeout) {
    const what = phase === 'initialize' ? 'initialize' : 'its tools, prompts and resources lists';
    return {
      message: `${target.what} did not answer ${what} within ${timeoutMs} ms (startTimeoutSeconds)`,
      details: { ...details, timeoutMs },
    };
  }
  const exit = transport instanceof ProcessStdioTransport ? transport.exitStatus : undefined;
  if (exit !== undefined) {
    const how =
      exit.signal === null ? `exited with code ${exit.code}` : `was killed by ${exit.signal}`;
    return {
      message: `${target.what} ${how} ${step}`,
      details: { ...details, exitCode: exit.code, signal: exit.signal },
    };
  }
  if (error instanceof McpError && error.code === ErrorCode.ConnectionClosed) {
    return { message: `${target.what} closed the connection ${step}`, details };
  }
  return {
    message: `${target.what} failed ${step}: ${redact(spec, causeChain(error))}`,
    details,
  };
}

/**
 * `text` without the values of `spec` that may be secret: the full URL (only its origin and
 * path are kept), its credentials and query values, header values, environment values and
 * arguments. Library messages quote some of them (fetch quotes a URL with credentials whole).
 */
function redact(spec: UpstreamSpec, text: string): string {
  if (spec.transport !== 'stdio') text = text.split(spec.url).join(safeUrl(spec.url));
  return redactValues(specSecrets(spec, true), text);
}

/**
 * The values of `spec` that may be secret, longest first (a value containing another is removed
 * whole): environment values (and, with `args`, arguments) of a stdio upstream; header values,
 * the URL's credentials and query values of a remote one. Short values (flags like `-y`) would
 * redact ordinary words and carry no secret.
 */
function specSecrets(spec: UpstreamSpec, args: boolean): readonly string[] {
  const secrets: string[] = [];
  if (spec.transport === 'stdio') {
    secrets.push(...Object.values(spec.env), ...(args ? spec.args : []));
  } else {
    secrets.push(...Object.values(spec.headers));
    try {
      const u = new URL(spec.url);
      secrets.push(u.username, u.password, u.search.slice(1), ...u.searchParams.values());
      secrets.push(decodeURIComponent(u.username), decodeURIComponent(u.password));
    } catch {
      // an invalid URL never got as far as a request
    }
  }
  return [...new Set(secrets)]
    .filter((secret) => secret.length >= 6)
    .sort((a, b) => b.length - a.length);
}

/** `text` with each of `secrets` replaced by `[redacted]`. */
function redactValues(secrets: readonly string[], text: string): string {
  for (const secret of secrets) {
    if (text.includes(secret)) text = text.split(secret).join('[redacted]');
  }
  return text;
}

/**
 * `error` as an agent may see it: an upstream's failed answer (its JSON-RPC error, or an HTTP
 * error whose body the SDK quotes) without the values the sidecar gave the upstream — a careless
 * service echoes the request's `Authorization` header or URL, or an `invalid key sk-…` from its
 * environment, and the agent must not get the operator's credential for that service. The
 * upstream's arguments are kept (a path the upstream serves is not a secret and explains its
 * errors). Same class; a changed error carries no cause (the cause would quote it).
 */
function redactAnswerError(secrets: readonly string[], error: unknown): unknown {
  if (secrets.length === 0 || !(error instanceof Error)) return error;
  if (error instanceof RelayedMcpError) {
    const message = redactValues(secrets, error.message);
    const data = redactData(secrets, error.data, 0);
    return message === error.message && data === error.data
      ? error
      : new RelayedMcpError(error.code, message, data);
  }
  if (error instanceof FabricError || error instanceof McpError) return error;
  const message = redactValues(secrets, error.message);
  if (message === error.message) return error;
  const redacted = new Error(message);
  redacted.name = error.name;
  return redacted;
}

/** `data` with the strings in it redacted (the same value when none changed; 32 levels). */
function redactData(secrets: readonly string[], data: unknown, depth: number): unknown {
  if (typeof data === 'string') return redactValues(secrets, data);
  if (data === null || typeof data !== 'object') return data;
  if (depth >= 32) return '[too deep]';
  let changed = false;
  const walk = (v: unknown): unknown => {
    const r = redactData(secrets, v, depth + 1);
    if (r !== v) changed = true;
    return r;
  };
  const out = Array.isArray(data)
    ? data.map(walk)
    : Object.fromEntries(Object.entries(data).map(([k, v]) => [k, walk(v)]));
  return changed ? out : data;
}

/** {@link redact} of an error reported while the upstream runs (same class, redacted message). */
function redactError(spec: UpstreamSpec, error: Error): Error {
  const message = redact(spec, error.message);
  return message === error.message ? error : new Error(message, { cause: error });
}

/** A URL without credentials, query or fragment: safe to print. */
function safeUrl(url: string): string {
  try {
    const u = new URL(url);
    return `${u.origin}${u.pathname}`;
  } catch {
    return '(invalid url)';
  }
}

/** An error's message with its causes' codes and messages (fetch hides the reason in `cause`). */
function causeChain(error: unknown): string {
  const parts: string[] = [];
  for (let e: unknown = error, depth = 0; e !== undefined && depth < 4; depth++) {
    if (!(e instanceof Error)) {
      parts.push(String(e));
      break;
    }
    const code = (e as { code?: unknown }).code;
    parts.push(typeof code === 'string' ? `${e.message} (${code})` : e.message);
    e = e.cause;
  }
  return parts.join(': ');
}

function asError(error: unknown): Error {
  return error instanceof Error ? error : new Error(String(error));
}

const EMPTY_LIST_HINTS: Readonly<Record<ListKey, ListHints>> = Object.freeze({
  tools: NO_HINTS,
  prompts: NO_HINTS,
  resources: NO_HINTS,
  resourceTemplates: NO_HINTS,
});

/** One list of an upstream: its items, and its list-level hints (all pages combined). */
interface Collected {
  items: readonly unknown[];
  hints: ListHints;
  /** What was left out and why (positions and reasons, never content), when anything was. */
  dropped?: string | undefined;
}

const NOTHING: Collected = { items: [], hints: NO_HINTS };

/** Reasons named in one report of dropped items (the count covers the rest). */
const DROPPED_SHOWN = 3;

/**
 * Follows a paginated list to the end (each page bounded by `timeout` ms). Items the catalog
 * cannot hold ({@link catalogItemProblem}: not an object with a string name / uri /
 * uriTemplate, or past {@link CATALOG_ITEM_BOUNDS}) are dropped, and so are a page's
 * list-level hints past those bounds: one item must not break every agent's list.
 */
async function collect(
  client: Client,
  method: string,
  key: ListKey,
  timeout: number,
): Promise<Collected> {
  const items: unknown[] = [];
  const hints: ListHints[] = [];
  const reasons: string[] = [];
  let dropped = 0;
  let index = 0;
  let cursor: string | undefined;
  for (let page = 0; page < 1000; page++) {
    const result = await client.request(
      { method, params: cursor === undefined ? {} : { cursor } },
      LOOSE_RESULT,
      { timeout },
    );
    const list = result[key];
    if (Array.isArray(list)) {
      for (const item of list as unknown[]) {
        const problem = catalogItemProblem(item, key);
        if (problem === undefined) items.push(item);
        else if (++dropped <= DROPPED_SHOWN) reasons.push(`item ${index} ${problem}`);
        index++;
      }
    }
    const found = pageHints(result, key);
    if (exceededBound(found, CATALOG_ITEM_BOUNDS) === undefined) hints.push(found);
    else if (++dropped <= DROPPED_SHOWN) reasons.push(`the list-level fields of page ${page + 1}`);
    cursor = typeof result.nextCursor === 'string' ? result.nextCursor : undefined;
    if (cursor === undefined) break;
  }
  return {
    items,
    hints: combineHints(hints, true),
    dropped:
      dropped === 0
        ? undefined
        : `${method}: dropped ${dropped} ${dropped === 1 ? 'entry' : 'entries'} the catalog cannot hold (${reasons.join('; ')}${dropped > reasons.length ? '; …' : ''})`,
  };
}

/** Requests in flight on one HTTP upstream before Node warns about abort listeners. */
const MAX_LINKED_REQUESTS = 10_000;

/**
 * A `fetch` for the SDK's Streamable HTTP client transport that gives every request its own
 * AbortSignal, linked to the one the transport passes (its lifetime signal, shared by all
 * requests) and unlinked when the exchange is over: when the response arrives, or for an SSE
 * response when its stream ends. Without it every request leaves an abort listener on the
 * shared signal until the request is garbage-collected, and a busy upstream trips
 * `MaxListenersExceededWarning` (1501 abort listeners) and keeps those requests alive.
 *
 * With `maxMessageBytes` it also bounds what comes back (see bounded-body.ts): the SDK's
 * event-stream parser and `response.json()` buffer without limit. A JSON body past the bound
 * makes the request fail with {@link UpstreamMessageTooLargeError}; an SSE event past it is
 * dropped: on a POST's stream the request(s) of this POST are answered with that error and the
 * stream is closed; on a stream that carried no request (a GET: the legacy SSE transport's
 * stream of every answer) the answer it was fails its call alone and the stream goes on, when
 * its start or end names it (reported to `onreport`); such an event is followed to its end,
 * however long, for at most `followMs` (the upstream's `callTimeoutSeconds`).
 */
export function linkedSignalFetch(
  base: typeof fetch,
  maxMessageBytes?: number,
  onreport?: (error: Error) => void,
  followMs?: number,
): typeof fetch {
  const raised = new WeakSet<AbortSignal>();
  return async (input, init) => {
    const shared = init?.signal;
    if (shared?.aborted || (!shared && maxMessageBytes === undefined)) return base(input, init);
    const own = new AbortController();
    let unlink = (): void => undefined;
    if (shared) {
      if (!raised.has(shared)) {
        // One listener per request in flight (unlinked when done): concurrency, not a leak.
        setMaxListeners(MAX_LINKED_REQUESTS, shared);
        raised.add(shared);
      }
      const relay = (): void => own.abort(shared.reason);
      shared.addEventListener('abort', relay, { once: true });
      unlink = (): void => shared.removeEventListener('abort', relay);
    }
    let response: Response;
    try {
      response = await base(input, { ...init, signal: own.signal });
    } catch (error) {
      unlink();
      throw error;
    }
    const sse = response.headers.get('content-type')?.includes('text/event-stream');
    if (!sse || !response.body) {
      unlink();
      if (maxMessageBytes === undefined) return response;
      const bounded = boundedBody(response, maxMessageBytes);
      if (bounded === undefined) return response;
      if (bounded instanceof Error) {
        own.abort(bounded);
        throw bounded;
      }
      return new Response(bounded, response);
    }
    // Keep the link while the stream is read, so closing the transport still ends it.
    const body =
      maxMessageBytes === undefined
        ? response.body.pipeThrough(new TransformStream<Uint8Array, Uint8Array>({ flush: unlink }))
        : boundedEventStream(
            response.body,
            maxMessageBytes,
            () => requestIdsOf(init?.body),
            unlink,
            () => own.abort(new UpstreamMessageTooLargeError(maxMessageBytes, 'event')),
            init?.body === undefined || init.body === null
              ? (report) => onreport?.(new Error(report))
              : undefined,
            followMs,
          );
    return new Response(body, response);
  };
}

function withHeaders(headers: Readonly<Record<string, string>>): typeof fetch {
  return (url, init) =>
    fetch(url, {
      ...init,
      headers: { ...Object.fromEntries(new Headers(init?.headers)), ...headers },
    });
}

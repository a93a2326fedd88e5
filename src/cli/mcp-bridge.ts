/**
 * `agent-fabric mcp`: an MCP client on stdin/stdout bridged to the sidecar's Streamable HTTP
 * endpoint, message for message.
 *
 * The bridge is the HTTP client of the session, so what the Streamable HTTP transport asks of a
 * client is its to do: when the sidecar answers `404` for the session (it restarted, or closed
 * the session), the client "MUST start a new session by sending a new InitializeRequest without
 * a session ID attached" (MCP 2025-06-18, Session Management). Before, the SDK's client transport
 * kept sending the dead session id, and every request of the agent was answered with an error
 * until its MCP client restarted the bridge. Now the bridge opens a new session with the
 * agent's own `initialize`, replays what the agent had set on the old one (`initialized`, its
 * `logging/setLevel`, its resource subscriptions), sends the request again, and tells the agent
 * that the lists may have changed (the sidecar's catalogue may differ after a restart). When
 * it is the session's stream of notifications that finds the session gone, the bridge does so
 * at once, on its own (bounded: see `#renewIdle`), so that an idle agent's notifications go on. A
 * `ping` before `initialize`, which the MCP lifecycle allows, is answered by the bridge itself:
 * the sidecar refuses every request without a session. Every request after `initialize` names
 * the version it agreed on (`MCP-Protocol-Version`), so that the sidecar sends a priming event
 * id on a slow call's stream and the SDK transport can resume it after a cut. A request whose
 * stream broke is answered with an error when its session the sidecar then no longer knows,
 * when the stream could not be resumed for the resume time, or when it had no event id to
 * resume from (see `bridge-streams.ts`): its answer is lost, and the agent must not wait for
 * it forever.
 *
 * @module
 */
import { randomBytes } from 'node:crypto';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { ErrorCode, type JSONRPCMessage, type RequestId } from '@modelcontextprotocol/sdk/types.js';
import type { StdioSessionTransport } from '../gateway/downstream-stdio-transport.js';
import { messageOf } from '../gateway/map-error.js';
import { sessionGone } from '../worker/mcp-worker-transport.js';
import {
  reconnectionFor,
  type Reconnection,
  STANDALONE_STREAM,
  StreamWatch,
  streamOf,
} from './bridge-streams.js';

/**
 * Prefix of the ids of the bridge's own requests (their answers are never forwarded to the
 * agent); random per process, so no id the agent chooses is taken for one of them.
 */
const OWN_ID = `agent-fabric-mcp/${randomBytes(8).toString('hex')}/`;

/**
 * How long the bridge tries to resume a call's stream that broke (`Last-Event-ID`) before it
 * answers the call with an error, by default: long enough for a sidecar restarting meanwhile to
 * listen again and say whether it still knows the session (the SDK's default gave up after 2.5 s,
 * before a restarted sidecar listened, and then left the call unanswered).
 */
export const DEFAULT_RESUME_SECONDS = 40;

/** How long the bridge waits for the answer to a request of its own (a renewal's). */
const OWN_TIMEOUT_MS = 30_000;

/**
 * How long a session given up (the bridge closing, a renewal replacing it) waits for an
 * `initialize` still on its way before it is ended: the answer names the session to `DELETE`.
 * Ended at once, the POST was cut and the session the sidecar opened for it stayed open until
 * it idled out, holding one of the agent's `maxSessionsPerAgent` slots.
 */
const INITIALIZE_WAIT_MS = 5_000;

/**
 * How long ending a session waits for the sidecar to answer its `DELETE`: a sidecar that stopped
 * answering kept the bridge from exiting when its client went away (fetch's own bound: 5 min).
 */
const DELETE_WAIT_MS = 5_000;

/**
 * How many sessions in a row the bridge opens on its own (see `McpBridge#renewIdle`) while none
 * gets its stream of notifications open: behind a proxy that answers every `GET` with 404 it
 * would otherwise open a session and end it again, for good.
 */
export const IDLE_RENEWALS = 5;

/**
 * The wait before a session the bridge opens on its own after `failed` in a row did not get their
 * stream of notifications: 0, 1 s, 2 s, 4 s, 8 s (about 15 s for all {@link IDLE_RENEWALS}).
 */
function idleRenewalDelay(failed: number): number {
  return failed === 0 ? 0 : 1_000 * 2 ** (failed - 1);
}

type Envelope = { id?: unknown; method?: unknown; params?: unknown; result?: unknown };

/**
 * A request of the agent not answered yet: the transport it went out on, whether its POST was
 * taken (its answer comes on a stream, which may break), and the stream it is on once an event
 * of it carried an id (the stream can then be resumed).
 */
interface Pending {
  transport: StreamableHTTPClientTransport;
  taken: boolean;
  stream?: string;
}

/** Options of a {@link McpBridge}. */
export interface McpBridgeOptions {
  /** The sidecar's MCP endpoint. */
  url: URL;
  /** Headers of every request (the agent's bearer token). */
  headers: Record<string, string>;
  /** The agent's side (stdin/stdout). */
  downstream: StdioSessionTransport;
  /** Where problems are reported (stderr). */
  log: (message: string) => void;
  /**
   * How long a broken stream is resumed before its calls are answered with an error (default
   * {@link DEFAULT_RESUME_SECONDS}).
   */
  resumeSeconds?: number;
}

/** Bridges one stdio MCP client to one Streamable HTTP session (renewed when the sidecar lost it). */
export class McpBridge {
  readonly #options: McpBridgeOptions;
  #upstream: StreamableHTTPClientTransport;
  /** The agent's `initialize` request, as it sent it. */
  #initialize: JSONRPCMessage | undefined;
  #initialized = false;
  /** The params of the agent's last `logging/setLevel`. */
  #logLevel: unknown;
  /** URIs the agent subscribed to, the sidecar agreeing (and did not unsubscribe from). */
  readonly #subscriptions = new Set<string>();
  /**
   * The agent's `resources/subscribe` requests not answered yet, by id: a URI is kept once the
   * sidecar took it. Kept at once, a subscription policy refused (or a human denied) was asked
   * for again at each renewal, with no request of the agent.
   */
  readonly #subscribing = new Map<RequestId, string>();
  /**
   * Requests of the bridge's own waiting for their answer, by id: `answered` with it, or `failed`
   * when none can come (see {@link #unanswered}).
   */
  readonly #own = new Map<
    string,
    { answered: (message: Envelope) => void; failed: (error: Error) => void }
  >();
  #ownIds = 0;
  /**
   * The agent's requests not answered yet, by id: the transport they went out on, and whether
   * their POST was taken (its answer comes on a stream, which may break). Those taken on a
   * session the sidecar no longer knows are answered with an error (see {@link #lost}).
   */
  readonly #pending = new Map<RequestId, Pending>();
  readonly #resumeMs: number;
  readonly #reconnection: Reconnection;
  /** Messages wait for this before they are sent (a new session being opened). */
  #ready: Promise<void> = Promise.resolve();
  /** The last renewal (see {@link #renew}); `#ready` is it with its failure caught. */
  #renewal: Promise<void> = Promise.resolve();
  /**
   * The upstream of a renewal that opened no session (refused, timed out, the sidecar away):
   * the next message of the agent tries again, else every later request would go without a
   * session id and be refused (400), with no 404 to start a renewal ever again.
   */
  #sessionless: StreamableHTTPClientTransport | undefined;
  /**
   * The `initialize` requests on their way, by the transport they went out on (a session is
   * opened by their answer); and the agent's ones not yet handed to a transport.
   */
  readonly #initializing = new Map<StreamableHTTPClientTransport, Promise<unknown>>();
  readonly #queuedInitializes = new Set<Promise<unknown>>();
  /** Sessions given up and being ended. */
  readonly #retiring = new Set<Promise<void>>();
  #closing: Promise<void> | undefined;
  /**
   * The sessions the bridge opened on its own (see {@link #renewIdle}) since a stream of
   * notifications last opened, and the one it waits to open.
   */
  #idleRenewals = 0;
  #idleTimer: NodeJS.Timeout | undefined;
  /** The transport whose session {@link #idleTimer} is to replace. */
  #idleFor: StreamableHTTPClientTransport | undefined;

  constructor(options: McpBridgeOptions) {
    this.#options = options;
    this.#resumeMs = (options.resumeSeconds ?? DEFAULT_RESUME_SECONDS) * 1000;
    this.#reconnection = reconnectionFor(this.#resumeMs);
    this.#upstream = this.#connect();
    options.downstream.onmessage = (m) => this.#fromAgent(m);
  }

  /** Starts the HTTP side (the stdio side is started by its owner). */
  async start(): Promise<void> {
    await this.#upstream.start();
  }

  /**
   * Ends the session (`DELETE`) and closes the HTTP side; an `initialize` still on its way is
   * waited for (at most {@link INITIALIZE_WAIT_MS}) so that the session it opens is ended too,
   * and so are sessions a renewal gave up. Idempotent; messages of the agent after it are dropped.
   */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      clearTimeout(this.#idleTimer);
      await bounded(Promise.allSettled([...this.#queuedInitializes]), INITIALIZE_WAIT_MS);
      this.#retire(this.#upstream);
      while (this.#retiring.size > 0) await Promise.allSettled([...this.#retiring]);
    })();
    return this.#closing;
  }

  /**
   * Ends `transport`'s session, if it has or is about to have one (its `initialize` on its way),
   * and closes it. A session the sidecar already forgot answers the `DELETE` with 404: harmless.
   */
  #retire(transport: StreamableHTTPClientTransport): void {
    const ending = (async () => {
      const initializing = this.#initializing.get(transport);
      if (initializing !== undefined) await bounded(initializing, INITIALIZE_WAIT_MS);
      this.#initializing.delete(transport);
      if (transport.sessionId !== undefined) {
        // Past the bound, closing the transport aborts the DELETE (its failure is logged).
        await bounded(transport.terminateSession(), DELETE_WAIT_MS);
      }
      await transport.close().catch(() => undefined);
    })();
    this.#retiring.add(ending);
    void ending.finally(() => this.#retiring.delete(ending));
  }

  /**
   * Sends `m` on `transport`, noting an `initialize` until it is answered (see `#retire`), and
   * the stream of the agent's request `pending` once it has an event id.
   */
  #send(
    transport: StreamableHTTPClientTransport,
    m: JSONRPCMessage,
    pending?: Pending,
  ): Promise<void> {
    const sent =
      pending === undefined
        ? transport.send(m)
        : transport.send(m, {
            onresumptiontoken: (token) => {
              pending.stream = streamOf(token);
            },
          });
    if ((m as Envelope).method === 'initialize') {
      const before = this.#initializing.get(transport);
      const settled = sent.catch(() => undefined);
      this.#initializing.set(
        transport,
        before === undefined ? settled : Promise.allSettled([before, settled]),
      );
    }
    return sent;
  }

  #connect(): StreamableHTTPClientTransport {
    const watch = new StreamWatch({
      resumeMs: this.#resumeMs,
      reconnection: this.#reconnection,
      log: this.#options.log,
      onLost: (id, why) => this.#unanswered(transport, id, why),
      onGiveUp: (stream, why, sessionGone) => {
        this.#options.log(`agent-fabric mcp: gave up stream ${stream}: ${why}`);
        if (!sessionGone) this.#givenUp(transport, stream, why);
        else {
          this.#lost(transport);
          if (stream === STANDALONE_STREAM) this.#renewIdle(transport, why);
        }
      },
      onStandalone: () => {
        if (transport === this.#upstream) this.#idleRenewals = 0;
      },
    });
    const transport = new StreamableHTTPClientTransport(this.#options.url, {
      requestInit: { headers: this.#options.headers },
      reconnectionOptions: this.#reconnection,
      fetch: watch.fetch,
    });
    transport.onmessage = (m) => {
      const { id } = m as Envelope;
      if ((typeof id === 'string' || typeof id === 'number') && !('method' in m)) {
        const uri = this.#subscribing.get(id);
        if (uri !== undefined) {
          this.#subscribing.delete(id);
          if ('result' in m) this.#subscriptions.add(uri);
        }
      }
      const init = this.#initialize as Envelope | undefined;
      if (init !== undefined && id === init.id && !('method' in m)) {
        this.#speak(transport, (m as Envelope).result);
      }
      // Only an answer the bridge waits for: an agent may choose any id, also one like these.
      const waiter = typeof id === 'string' && !('method' in m) ? this.#own.get(id) : undefined;
      if (waiter !== undefined) {
        this.#own.delete(id as string);
        waiter.answered(m as Envelope);
        return;
      }
      if ((typeof id === 'string' || typeof id === 'number') && !('method' in m)) {
        // One answer per request of the agent: none for a request already answered here (with
        // an error saying its answer is lost), cancelled by the agent, or of the bridge's own
        // it gave up on.
        if (this.#pending.get(id)?.transport !== transport) return;
        this.#pending.delete(id);
      }
      void this.#options.downstream.send(m);
    };
    transport.onerror = (e) => {
      this.#options.log(`agent-fabric mcp: ${e.message}`);
      // A stream's reconnection was told the session is gone (the sidecar restarted, or closed
      // it): no answer will come for what went out on it.
      if (sessionGone(e)) this.#lost(transport);
    };
    return transport;
  }

  /**
   * `transport`'s session is gone: the agent's requests whose POST it had taken, whose answers
   * were to come on a stream that broke, are answered with an error here (before, the agent
   * waited for them forever). A call may have run: it is not sent again. The agent's next
   * message opens a new session (see {@link #forward}).
   */
  #lost(transport: StreamableHTTPClientTransport): void {
    this.#answerLost(
      (p) => p.transport === transport && p.taken,
      'the sidecar no longer knows the session (it restarted, or closed it) while the request was running',
    );
  }

  /**
   * `transport`'s stream of notifications found its session gone (`why`: the sidecar restarted,
   * or ended the session): a new session is opened at once, without waiting for a message of the
   * agent, so that its notifications (list changes, its tasks' progress, resource updates) go on.
   * Before, the bridge waited for the agent's next message to open one, and an idle agent heard
   * nothing meanwhile, for as long as it stayed idle. Bounded: a session that opens but whose
   * stream of notifications is refused again (a proxy that answers every `GET` with 404), or a
   * renewal that fails, counts as one of {@link IDLE_RENEWALS} in a row, with backoff between
   * them (see {@link idleRenewalDelay}); each is said on stderr, and so is the end of trying. The
   * count starts again once a stream of notifications opens. Not for an agent that has not sent
   * `initialized` (no stream of notifications is opened for it), nor once the bridge closes.
   */
  #renewIdle(transport: StreamableHTTPClientTransport, why: string): void {
    if (this.#closing !== undefined || !this.#initialized || this.#initialize === undefined) return;
    if (transport !== this.#upstream) return;
    if (this.#idleTimer !== undefined) {
      if (this.#idleFor === transport) return;
      // Waiting to replace a session the agent's message replaced meanwhile (that wait would end
      // doing nothing): this one, lost too, is renewed instead. Before, its loss was dropped and
      // the bridge went quiet, neither renewing nor saying it stopped.
      clearTimeout(this.#idleTimer);
    }
    const failed = this.#idleRenewals;
    if (failed > IDLE_RENEWALS) return; // the end of trying was said
    this.#idleRenewals += 1;
    if (failed === IDLE_RENEWALS) {
      this.#options.log(
        `agent-fabric mcp: stopped opening new sessions on its own: ${IDLE_RENEWALS} in a row got no stream of notifications (last: ${why}); the agent hears no notification until one opens (its next message opens a new session if the sidecar lost this one)`,
      );
      return;
    }
    const delay = idleRenewalDelay(failed);
    if (failed > 0) {
      this.#options.log(
        `agent-fabric mcp: still no session with a stream of notifications (${why}); opening a new one on its own in ${delay / 1000} s (attempt ${failed + 1} of ${IDLE_RENEWALS})`,
      );
    }
    this.#idleFor = transport;
    this.#idleTimer = setTimeout(() => {
      this.#idleTimer = undefined;
      this.#idleFor = undefined;
      // The agent's message renewed it meanwhile (or the bridge is closing): nothing to do.
      if (this.#closing !== undefined || transport !== this.#upstream) return;
      this.#renew(transport).catch((error: unknown) => {
        // After #ready's own handler, which makes the failed renewal's transport sessionless,
        // and after the agent's messages that waited for it: one of them may have opened a
        // session of its own meanwhile (see #forward). Then that one is left alone: renewed
        // again, a session that works was ended, and the agent's calls running on it with it.
        void this.#ready.then(() => {
          if (this.#upstream === this.#sessionless) {
            this.#renewIdle(this.#upstream, messageOf(error));
          }
        });
      });
    }, delay);
  }

  /**
   * No answer can come for the agent's request `id` on `transport` (`why`): its stream ended
   * before its answer without an event id to resume it from (a session of an MCP version before
   * 2025-11-25 gets none), or its POST was answered 202/204, with no body. The request is
   * answered with an error (before, the agent waited until its own timeout). A request whose
   * stream has an event id is left to its resuming. A request of the bridge's own fails at once
   * (before, it waited {@link OWN_TIMEOUT_MS}, and so did the agent's messages behind a renewal):
   * an answer to a request never comes on the standalone stream (MCP Streamable HTTP: a server
   * sends a response there only when resuming the stream of that request).
   */
  #unanswered(transport: StreamableHTTPClientTransport, id: string | number, why: string): void {
    const own = typeof id === 'string' ? this.#own.get(id) : undefined;
    if (own !== undefined) {
      own.failed(new Error(why));
      return;
    }
    const p = this.#pending.get(id);
    if (p === undefined || p.transport !== transport || p.stream !== undefined) return;
    this.#answerLost((q) => q === p, why);
  }

  /**
   * The stream `stream` of `transport` cannot be resumed (`why`: not for the resume time, or the
   * sidecar refused or has nothing more of it): its requests are answered with an error.
   */
  #givenUp(transport: StreamableHTTPClientTransport, stream: string, why: string): void {
    this.#answerLost((p) => p.transport === transport && p.stream === stream, why);
  }

  /** Answers the agent's pending requests `which` picks with an error saying why their answer is lost. */
  #answerLost(which: (p: Pending) => boolean, why: string): void {
    if (this.#closing !== undefined) return; // the bridge is ending: nobody reads the answer
    for (const [id, p] of this.#pending) {
      if (!which(p)) continue;
      this.#pending.delete(id);
      void this.#options.downstream.send({
        jsonrpc: '2.0',
        id,
        error: {
          code: ErrorCode.InternalError,
          message: `agent-fabric mcp: ${why}; its answer is lost (the call may have run)`,
        },
      });
    }
  }

  #fromAgent(m: JSONRPCMessage): void {
    if (this.#closing !== undefined) return; // the bridge is ending: nobody reads the answer
    this.#note(m);
    // In order, after a session being opened.
    const forwarded = this.#ready.then(() => {
      const { id, method } = m as Envelope;
      if (method === 'ping' && id !== undefined && this.#upstream.sessionId === undefined) {
        // A ping may come before initialize (MCP lifecycle); the sidecar refuses any request
        // without a session, so the bridge, alive, answers it.
        void this.#options.downstream.send({ jsonrpc: '2.0', id: id as RequestId, result: {} });
        return;
      }
      return this.#forward(m, true);
    });
    if ((m as Envelope).method === 'initialize') {
      // Until it is on a transport (#send notes it there): a close meanwhile waits for it.
      this.#queuedInitializes.add(forwarded);
      void forwarded.finally(() => this.#queuedInitializes.delete(forwarded));
    }
  }

  /** Keeps what the agent set on its session, to set it again on a new one. */
  #note(m: JSONRPCMessage): void {
    const { id, method, params } = m as Envelope;
    if (method === 'initialize' && id !== undefined) this.#initialize = m;
    else if (method === 'notifications/initialized') this.#initialized = true;
    else if (method === 'logging/setLevel' && id !== undefined) this.#logLevel = params;
    else if (method === 'resources/subscribe' || method === 'resources/unsubscribe') {
      const uri = (params as { uri?: unknown } | undefined)?.uri;
      if (typeof uri !== 'string') return;
      if (method === 'resources/unsubscribe') this.#subscriptions.delete(uri);
      else if (typeof id === 'string' || typeof id === 'number') this.#subscribing.set(id, uri);
    }
  }

  async #forward(m: JSONRPCMessage, renewable: boolean): Promise<void> {
    const upstream = this.#upstream;
    const { id, method } = m as Envelope;
    const request =
      typeof method === 'string' && (typeof id === 'string' || typeof id === 'number');
    const pending: Pending = { transport: upstream, taken: false };
    if (request) this.#pending.set(id, pending);
    else if (method === 'notifications/cancelled') {
      // Not answered any more (MCP cancellation): a late answer is not forwarded, and no error
      // is given when its stream breaks. Here, in order: its request is pending by now.
      const cancelled = ((m as Envelope).params as { requestId?: unknown } | undefined)?.requestId;
      if (typeof cancelled === 'string' || typeof cancelled === 'number') {
        this.#pending.delete(cancelled);
      }
    }
    try {
      if (upstream === this.#sessionless) throw new Error('no session: the last renewal failed');
      await this.#send(upstream, m, request ? pending : undefined);
      pending.taken = true;
    } catch (error) {
      if (request) {
        // Cancelled by the agent (or already answered) meanwhile: neither sent again on a
        // renewed session, where it would run after all, nor answered.
        if (this.#pending.get(id) !== pending) return;
        this.#pending.delete(id);
      }
      if (
        renewable &&
        (sessionGone(error) || upstream === this.#sessionless) &&
        this.#initialize !== undefined &&
        (m as Envelope).method !== 'initialize'
      ) {
        try {
          await this.#renew(upstream);
        } catch (renewError) {
          this.#refuse(m, renewError);
          return;
        }
        await this.#forward(m, false);
        return;
      }
      this.#refuse(m, error);
    }
  }

  /**
   * Opens a new session for the agent after the sidecar lost `lost`'s: its `initialize` again,
   * then `initialized`, its log level and its subscriptions; then the agent is told the lists
   * may have changed. Messages from the agent wait meanwhile. Several requests failing on the
   * same lost session open one new session.
   */
  #renew(lost: StreamableHTTPClientTransport): Promise<void> {
    // Already renewed (or being renewed): a request that waited for a renewal that failed fails
    // with its reason (before, with "no session: the last renewal failed").
    if (this.#upstream !== lost) return this.#renewal;
    const fresh = this.#connect();
    this.#upstream = fresh;
    const renewal = this.#open(fresh);
    this.#renewal = renewal;
    // Messages of the agent wait for the new session; a failed renewal lets them fail alone.
    this.#ready = renewal.catch(() => {
      if (fresh.sessionId === undefined) this.#sessionless = fresh;
    });
    // Ended, not only closed: it may hold a session after all (a renewal's initialize answered
    // after the bridge gave up on it), which would stay open until it idled out.
    this.#retire(lost);
    return renewal;
  }

  async #open(fresh: StreamableHTTPClientTransport): Promise<void> {
    this.#options.log(
      'agent-fabric mcp: the sidecar no longer knows the session; opening a new one',
    );
    await fresh.start();
    const init = this.#initialize as Envelope;
    const answer = await this.#ask(fresh, 'initialize', init.params);
    const result = answer.result as
      { capabilities?: Record<string, { listChanged?: boolean } | undefined> } | undefined;
    if (result === undefined) {
      throw new Error(`the sidecar refused to initialize a new session: ${JSON.stringify(answer)}`);
    }
    this.#speak(fresh, result);
    if (this.#initialized) {
      await fresh.send({ jsonrpc: '2.0', method: 'notifications/initialized' });
    }
    if (this.#logLevel !== undefined) await this.#ask(fresh, 'logging/setLevel', this.#logLevel);
    // Not awaited: a subscription may wait for an approval, and the agent's requests must not.
    for (const uri of this.#subscriptions) {
      this.#ask(fresh, 'resources/subscribe', { uri }).then(
        (answer) => {
          if (answer.result !== undefined) return;
          // Refused now (a policy changed): not asked for again at the next renewal.
          this.#subscriptions.delete(uri);
          this.#options.log(
            `agent-fabric mcp: could not subscribe again: ${JSON.stringify(answer)}`,
          );
        },
        (error: unknown) =>
          this.#options.log(`agent-fabric mcp: could not subscribe again: ${messageOf(error)}`),
      );
    }
    // What the agent listed came from the old session: the lists may differ now.
    const caps = result.capabilities ?? {};
    for (const list of ['tools', 'prompts', 'resources'] as const) {
      if (caps[list]?.listChanged === true) {
        void this.#options.downstream.send({
          jsonrpc: '2.0',
          method: `notifications/${list}/list_changed`,
        });
      }
    }
  }

  /**
   * Sends the MCP version an `initialize` answer (`result`) agreed on with every later request
   * of `transport`, as a client must (`MCP-Protocol-Version`; the SDK's `Client` does this, the
   * bridge uses its transport alone). Without it the sidecar took the bridge for a client too
   * old for a priming event: a slow call switched to SSE carried no event id, and a cut of its
   * connection left the agent's request unanswered for good instead of being resumed.
   */
  #speak(transport: StreamableHTTPClientTransport, result: unknown): void {
    const version = (result as { protocolVersion?: unknown } | undefined)?.protocolVersion;
    if (typeof version === 'string') transport.setProtocolVersion(version);
  }

  /**
   * Sends a request of the bridge's own on `transport` and resolves with its answer; rejects
   * when none came within {@link OWN_TIMEOUT_MS} (the agent's messages wait for a renewal), or
   * at once when none can come (its POST answered with no body, its stream broken with no event
   * id to resume it from).
   */
  #ask(
    transport: StreamableHTTPClientTransport,
    method: string,
    params: unknown,
  ): Promise<Envelope> {
    const id = `${OWN_ID}${++this.#ownIds}`;
    return new Promise<Envelope>((resolve, reject) => {
      const fail = (error: Error): void => {
        clearTimeout(timer);
        this.#own.delete(id);
        reject(error);
      };
      const timer = setTimeout(
        () => fail(new Error(`the sidecar did not answer ${method} within ${OWN_TIMEOUT_MS} ms`)),
        OWN_TIMEOUT_MS,
      );
      timer.unref();
      this.#own.set(id, {
        answered: (answer) => {
          clearTimeout(timer);
          resolve(answer);
        },
        failed: (error) => fail(new Error(`${method}: ${error.message}`)),
      });
      const request = { jsonrpc: '2.0', id, method, params } as JSONRPCMessage;
      this.#send(transport, request).catch((error: unknown) => fail(error as Error));
    });
  }

  /**
   * A request that could not be forwarded (too deep to serialize, refused by the sidecar's HTTP
   * layer, no session to be had) is answered here: the agent must not wait for it forever.
   */
  #refuse(m: JSONRPCMessage, error: unknown): void {
    this.#options.log(String(error));
    const { id, method } = m as Envelope;
    if (typeof method !== 'string' || (typeof id !== 'string' && typeof id !== 'number')) return;
    void this.#options.downstream.send({
      jsonrpc: '2.0',
      id,
      error: {
        code: ErrorCode.InternalError,
        message: `agent-fabric mcp could not forward the request: ${messageOf(error)}`,
      },
    });
  }
}

/** Waits for `promise`, at most `ms` (however it settles). */
async function bounded(promise: Promise<unknown>, ms: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([
    promise.catch(() => undefined),
    new Promise<void>((resolve) => {
      timer = setTimeout(resolve, ms);
    }),
  ]);
  clearTimeout(timer);
}

/**
 * The requests in flight on each upstream, and the routing that needs them. Upstream
 * connections are shared by every agent session, and server→client requests from an upstream
 * (sampling, elicitation, roots/list) and its log messages carry no reference to the call that
 * caused them over stdio. So a request goes to the one session with calls in flight on that
 * upstream — refused with a routing error when several have (ambiguous), none has, or the one
 * call in flight came through a door that cannot answer (gRPC) — and a log message goes to the
 * one session with calls in flight there, to everyone when no call is in flight (the upstream's
 * own news), and to no agent when the calls in flight are of several sessions, or of a door
 * without one (gRPC, a task): a message logged while one agent's call runs may hold that call's
 * data, and sending it to every agent with a call there leaked it to the others. A call the
 * gateway gave up on (cancelled, timed out) may still run upstream, and log or ask after it
 * left: it counts as its session's until the upstream is done with it (its late answer, its
 * connection closed) or `callTimeoutSeconds` pass. Meanwhile a log message reaches no agent when
 * no call is in flight, and neither a log message nor a request goes to the one session with
 * calls in flight when such a call of another session (or of a door without one) may still run:
 * it could be that call's, and its data that session's to see.
 *
 * A task's call has no session to answer such a request (the agent may be gone while it runs),
 * like a gRPC call. An upstream task's work goes on after its `tools/call` was answered, while
 * the gateway waits for its `tasks/result`, and its requests name the task in
 * `_meta["io.modelcontextprotocol/related-task"]`: such a request is refused whatever else is in
 * flight — by the one-session rule it would reach whichever other agent has a call there then.
 *
 * With `forwardRoots`, a `roots/list` routed to a session pins the connection to its agent
 * (`Upstream.holdRootsOf`): the upstream may keep those roots, so the gateway sends that
 * connection no other agent's request until it ends.
 *
 * A request reaches the agent, and its answer goes back, through the gateway's
 * {@link AnswerRelay} (the budget's admission of sampling, the policy check of callbacks'
 * answers: callback-answers.ts), which may send the upstream a refusal instead.
 *
 * @module
 */
import {
  ErrorCode,
  McpError,
  type LoggingMessageNotification,
  type Request,
  type RequestId,
  type Result,
} from '@modelcontextprotocol/sdk/types.js';
import { RoutingError } from '../errors.js';
import { RELATED_TASK_META_KEY } from './tool-tasks.js';
import type { Slotted } from './churn-collections.js';
import { SlotSet } from './churn-collections.js';
import { toMcpError } from './map-error.js';
import type { GatewaySession } from './session.js';
import type { GatewayLogEntry } from './tool-call-pipeline.js';
import { wasNeverSent, type Upstream } from './upstream.js';

/** A request in flight on an upstream: whose (no session: a gRPC call, a task's) and which. */
export interface InFlight extends Slotted {
  readonly session: GatewaySession | undefined;
  readonly requestId: RequestId;
}

/**
 * Sends `request` of `upstream` to an agent session (`send`, at most once; with a signal of
 * its own, which should end when `signal` does, in place of `signal`) and returns (or throws)
 * what the upstream gets: the session's answer, or a refusal sent instead — of the answer, or of
 * the request without asking the session at all.
 */
export type AnswerRelay = (
  upstream: Upstream,
  session: GatewaySession,
  request: Request,
  signal: AbortSignal,
  send: (signal?: AbortSignal) => Promise<Result>,
) => Promise<Result>;

/** The requests in flight per upstream. */
export class InflightRoutes {
  readonly #inflight = new Map<Upstream, SlotSet<InFlight>>();
  /**
   * Per upstream: the requests the gateway gave up on that may still run there, until
   * {@link settle} (see {@link leave}).
   */
  readonly #givenUp = new Map<Upstream, SlotSet<InFlight>>();
  readonly #log: (entry: GatewayLogEntry) => void;
  readonly #relay: AnswerRelay | undefined;

  /**
   * @param relay what a routed request passes before it reaches the agent's session, and its
   *   answer before it goes upstream (the budget's admission of sampling, the policy check of
   *   callbacks' answers, callback-answers.ts); absent: sent and relayed as they are.
   */
  constructor(log: (entry: GatewayLogEntry) => void, relay?: AnswerRelay) {
    this.#log = log;
    this.#relay = relay;
  }

  /** Tracks a request of `session` (none: a gRPC call, a task's) on `upstream` until {@link leave}. */
  enter(upstream: Upstream, session: GatewaySession | undefined, requestId: RequestId): InFlight {
    const entry: InFlight = { session, requestId, slot: -1 };
    let set = this.#inflight.get(upstream);
    if (!set) this.#inflight.set(upstream, (set = new SlotSet()));
    set.add(entry);
    return entry;
  }

  /**
   * Ends what {@link enter} tracked. With `error`, the request failed: unless the upstream
   * answered it (an error answer, or its connection closed), the gateway gave up on it
   * (cancelled, timed out) and its work may go on upstream, logging and asking as it goes. True
   * then: the entry stays its session's for routing until the caller {@link settle}s it — once
   * the upstream is done with the request, or `callTimeoutSeconds` after this.
   */
  leave(upstream: Upstream, entry: InFlight, error?: unknown): boolean {
    this.#inflight.get(upstream)?.delete(entry);
    if (error === undefined || !givenUp(error) || wasNeverSent(error)) return false;
    let set = this.#givenUp.get(upstream);
    if (!set) this.#givenUp.set(upstream, (set = new SlotSet()));
    set.add(entry);
    return true;
  }

  /** Forgets a request {@link leave} kept as given up on: the upstream is done with it. */
  settle(upstream: Upstream, entry: InFlight): void {
    const set = this.#givenUp.get(upstream);
    if (set?.delete(entry) && set.size === 0) this.#givenUp.delete(upstream);
  }

  /**
   * Whether a request given up on that may still run on `upstream` is not of `session` (any,
   * without one): what it logs or asks could then be taken for `session`'s.
   */
  #othersGivenUp(upstream: Upstream, session: GatewaySession | undefined): boolean {
    const set = this.#givenUp.get(upstream);
    if (set === undefined) return false;
    for (const e of set) if (session === undefined || e.session !== session) return true;
    return false;
  }

  /**
   * Delivers an upstream's log message: to the one session with calls in flight there, on the
   * stream of one of its calls; to `everyone` when no call is in flight; else (calls of several
   * sessions, or of none: gRPC, tasks) to no agent — the sidecar's log says so, without the
   * message's data (see the module).
   */
  log(
    upstream: Upstream,
    params: LoggingMessageNotification['params'],
    everyone: Iterable<GatewaySession>,
  ): void {
    const entries = this.#inflight.get(upstream);
    if (entries === undefined || entries.size === 0) {
      if (!this.#othersGivenUp(upstream, undefined)) {
        for (const s of everyone) s.log(params);
        return;
      }
      this.#log({
        level: 'debug',
        msg: 'upstream log message delivered to no agent: a call the gateway gave up on (cancelled, timed out) may still run on the upstream',
        upstream: upstream.name,
        logLevel: params.level,
      });
      return;
    }
    let only: InFlight | undefined;
    for (const e of entries) {
      if (only === undefined) only = e;
      else if (e.session !== only.session) {
        only = undefined;
        break;
      }
    }
    if (only?.session !== undefined && !this.#othersGivenUp(upstream, only.session)) {
      only.session.log(params, only.requestId);
      return;
    }
    this.#log({
      level: 'debug',
      msg:
        only?.session !== undefined
          ? 'upstream log message delivered to no agent: a call of another agent session the gateway gave up on (cancelled, timed out) may still run on the upstream'
          : 'upstream log message delivered to no agent: the calls in flight on the upstream are not of one agent session',
      upstream: upstream.name,
      logLevel: params.level,
    });
  }

  /**
   * Routes a server→client request of `upstream` to the session of the calls in flight there.
   * @throws McpError of a RoutingError when that session is not exactly one (see the module).
   */
  async request(upstream: Upstream, request: Request, signal: AbortSignal): Promise<Result> {
    const entries = [...(this.#inflight.get(upstream) ?? [])];
    const sessions = new Set(entries.map((e) => e.session));
    const only = sessions.size === 1 ? entries[0] : undefined;
    const task = relatedTask(request);
    const othersGivenUp =
      only?.session !== undefined && this.#othersGivenUp(upstream, only.session);
    // An agent's roots stay with the connection they were given to (server-filesystem makes
    // them its allowed folders): it serves that agent alone from then on (Upstream.rootsHolder).
    const routable = task === undefined && only?.session !== undefined && !othersGivenUp;
    const isRoots = request.method === 'roots/list';
    const wasFree = upstream.rootsHolder === undefined;
    const rootsHeld = routable && isRoots && !upstream.holdRootsOf(only.session!.identity.agentId);
    if (routable && !rootsHeld) {
      const session = only!.session!;
      const send = (ends = signal): Promise<Result> =>
        session.request(request, ends, only!.requestId);
      const relayed =
        this.#relay === undefined ? send() : this.#relay(upstream, session, request, signal, send);
      if (!isRoots) return relayed;
      // The pin stays only while the upstream may keep some of the agent's roots: not after an
      // answer with none (a client without roots, an empty list), nor after a refusal of the
      // request that pinned it (the upstream then has nothing of the agent's).
      const agentId = session.identity.agentId;
      return relayed.then(
        (result) => {
          const roots = (result as { roots?: unknown }).roots;
          if (!Array.isArray(roots) || roots.length === 0) upstream.releaseRootsOf(agentId);
          return result;
        },
        (error: unknown) => {
          if (wasFree) upstream.releaseRootsOf(agentId);
          throw error;
        },
      );
    }
    if (task === undefined && request.method === 'roots/list' && sessions.size === 0) {
      return { roots: [] };
    }
    const why =
      task !== undefined
        ? 'it belongs to an upstream task, and a task has no agent session to answer it'
        : sessions.size === 0
          ? 'no agent session has a call in flight on this upstream'
          : rootsHeld
            ? 'the connection holds the roots of another agent, or is not ready'
            : othersGivenUp
              ? 'a call of another agent session that the gateway gave up on (cancelled, timed out) may still run on this upstream, so the originating one is ambiguous'
              : only !== undefined
                ? 'the call in flight on this upstream came through gRPC or runs as a task, which cannot answer it'
                : `${sessions.size} agent sessions have calls in flight on this upstream, so the originating one is ambiguous`;
    const error = new RoutingError(upstream.name, request.method, why);
    this.#log({ level: 'warn', msg: error.message });
    throw toMcpError(error);
  }
}

/**
 * Whether a request failed without its upstream having finished it: any failure but an error
 * answer of the upstream's or a closed connection (a timeout or a cancel is an McpError
 * RequestTimeout, or the cancel's own reason).
 */
function givenUp(error: unknown): boolean {
  return !(error instanceof McpError) || error.code === ErrorCode.RequestTimeout;
}

/** The related-task `_meta` of a request (an upstream task's), if it has one. */
function relatedTask(request: Request): unknown {
  const meta: unknown = request.params?._meta;
  return meta !== null && typeof meta === 'object'
    ? (meta as Record<string, unknown>)[RELATED_TASK_META_KEY]
    : undefined;
}

/**
 * Consumes agents' heartbeats from core NATS (`fabric.<ns>.hb.<agentId>`) for the lifecycle.
 *
 * Every sidecar of a namespace receives every heartbeat; it acts on those of agents it knows
 * (their credential hash is in its store) and drops the rest unanswered, so the agent's own
 * sidecar is the one that answers. Work per heartbeat is one map lookup, one HMAC and one
 * timestamp comparison: the cost follows the heartbeats received, not the number of agents.
 *
 * @module
 */
import type { Msg, NatsConnection, Subscription } from '@nats-io/transport-node';
import { AgentStatus } from '../../agent.js';
import { AgentUnavailableError, UnauthenticatedError, isFabricError } from '../../errors.js';
import type { LifecycleManager } from '../../lifecycle/lifecycle-manager.js';
import type { NatsNames } from './subjects.js';
import { answerable, idFromToken } from './subjects.js';
import type { Answer, Heartbeat } from './wire.js';
import {
  decodeJson,
  encodeJson,
  heartbeatAnswerMac,
  heartbeatProof,
  heartbeatSchema,
  sameProof,
  withMac,
} from './wire.js';

/**
 * A heartbeat further than this ahead of the sidecar's clock (or of the agent's last accepted one
 * plus the time elapsed since) is refused (clock skew bound).
 */
export const MAX_HEARTBEAT_SKEW_MS = 60_000;

/** A refusal answer, made once (an error object per heartbeat would cost more than its check). */
function refusal(message: string): Answer {
  const e = new UnauthenticatedError(message);
  return Object.freeze({ ok: false, code: e.code, message: e.message });
}
const NO_PROOF = refusal('heartbeat without a valid proof of the agent credential');
const REPLAYED = refusal('heartbeat timestamp replayed or out of range');

/** Counts of what the listener did, for tests and benchmarks. */
export interface HeartbeatStats {
  accepted: number;
  rejected: number;
  ignored: number;
}

/** Subscribes the heartbeats of one namespace and feeds them to a lifecycle manager. */
export class HeartbeatListener {
  readonly stats: HeartbeatStats = { accepted: 0, rejected: 0, ignored: 0 };
  readonly #lifecycle: LifecycleManager;
  readonly #names: NatsNames;
  /**
   * Last accepted timestamp per agent (a heartbeat must be newer: no replays), and when it was
   * accepted on the monotonic clock.
   */
  readonly #last = new Map<string, { ts: number; at: number }>();
  /**
   * What an agent's first heartbeat here must be newer than: this listener's start less the skew
   * bound. The last timestamps are not stored, so without it every heartbeat an agent restored
   * from the store ever sent would be taken once more after a restart, in order (a recording of
   * a dead agent's heartbeats would keep it HEALTHY). An agent's credential is older than its
   * heartbeats, so an agent spawned later loses nothing by it. The start is placed on the wall
   * clock as it reads now (its start time moved by any step of the clock since): a host that
   * started with its clock ahead and was set right (NTP at boot) would otherwise refuse every
   * agent's heartbeats, timed right, for as long as the clock had been ahead. Held as this
   * listener's start on the monotonic clock (`performance.now()`); see {@link #since}.
   */
  readonly #startedMono = performance.now();
  #sub: Subscription | undefined;

  /** What a first heartbeat here must be newer than (see {@link #startedMono}). */
  #since(): number {
    return Date.now() - (performance.now() - this.#startedMono) - MAX_HEARTBEAT_SKEW_MS;
  }

  constructor(lifecycle: LifecycleManager, names: NatsNames) {
    this.#lifecycle = lifecycle;
    this.#names = names;
    lifecycle.events.on('agent.forgotten', (id) => this.#last.delete(id));
  }

  /** Starts listening on `nc`. */
  start(nc: NatsConnection): void {
    const prefixLength = this.#names.heartbeats.length - 1;
    this.#sub = nc.subscribe(this.#names.heartbeats, {
      // Nothing may throw out of a subscription callback: nats.js would stop reading the
      // connection. A heartbeat that cannot be read or answered (a malformed subject token, the
      // connection draining) is dropped; its sender's next one is.
      callback: (err, msg) => {
        try {
          if (err === null) this.#onMessage(msg, idFromToken(msg.subject.slice(prefixLength)));
        } catch {
          this.stats.ignored++;
        }
      },
    });
  }

  #onMessage(msg: Msg, agentId: string): void {
    const rec = this.#lifecycle.peek(agentId);
    if (rec === undefined) {
      this.stats.ignored++;
      return; // another sidecar's agent (or nobody's): that sidecar answers
    }
    const hb = heartbeatSchema.safeParse(decodeJson(msg.data));
    const ts = hb.success ? hb.data.ts : undefined;
    const answer = hb.success
      ? this.#accept(hb.data, agentId, rec.credentialHash, rec.poolId)
      : NO_PROOF;
    if (answer.ok) this.stats.accepted++;
    else this.stats.rejected++;
    if (!answerable(msg.reply)) return; // none, or not an inbox: see `answerable`
    // Under the agent's credential hash, over its timestamp: a worker acts on no answer without
    // it (anyone may publish on its reply subject). Not a heartbeat: nothing to bind, no MAC.
    const mac =
      ts === undefined ? undefined : heartbeatAnswerMac(rec.credentialHash, agentId, ts, answer);
    msg.respond(encodeJson(mac === undefined ? answer : withMac(answer, mac)));
  }

  #accept(
    hb: Heartbeat,
    agentId: string,
    credentialHash: string,
    poolId: string | undefined,
  ): Answer {
    const { ts, proof } = hb;
    if (!sameProof(proof, heartbeatProof(credentialHash, agentId, ts))) return NO_PROOF;
    const last = this.#last.get(agentId);
    if (ts <= (last?.ts ?? this.#since())) return REPLAYED;
    // At most the skew ahead of this clock — or of the last accepted heartbeat plus the time
    // elapsed since: a wall clock set back (NTP, an operator) leaves the agent's timestamps,
    // which keep growing from the last one, ahead of it, and they must still be taken.
    const now = performance.now();
    const reference =
      last === undefined ? Date.now() : Math.max(Date.now(), last.ts + (now - last.at));
    if (ts > reference + MAX_HEARTBEAT_SKEW_MS) return REPLAYED;
    if (last === undefined) this.#last.set(agentId, { ts, at: now });
    else {
      last.ts = ts;
      last.at = now;
    }
    try {
      // With the agent's pool: a worker told to serve a pool checks it is one of its agents.
      return { ok: true, status: this.#lifecycle.heartbeatStatus(agentId), poolId: poolId ?? null };
    } catch (err) {
      const e = isFabricError(err)
        ? err
        : new AgentUnavailableError(agentId, AgentStatus.TERMINATED);
      // The agent's status as a field of its own (under the answer's MAC): a worker acts on it
      // (TERMINATED stops its handlers), and must not have to read it out of the message.
      const status = e.code === AgentUnavailableError.code ? e.details.status : undefined;
      return typeof status === 'string'
        ? { ok: false, code: e.code, message: e.message, status }
        : { ok: false, code: e.code, message: e.message };
    }
  }

  /** Stops listening. */
  async close(): Promise<void> {
    this.#sub?.unsubscribe();
    this.#sub = undefined;
  }
}

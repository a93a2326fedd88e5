/**
 * An agent's signed link to the fabric over NATS: heartbeats and task reports with the proofs
 * of `wire.ts`. Shared by {@link NatsWorker} (its own run loop) and {@link NatsWorkerTransport}
 * (the `FabricWorker` seam), so both speak the protocol the same way.
 *
 * @module
 */
import type { JsMsg } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/transport-node';
import { NoRespondersError, RequestError } from '@nats-io/transport-node';
import { hashCredential } from '../../lifecycle/lifecycle-manager.js';
import type { NatsNames } from './subjects.js';
import type { Answer, Report, ReportKind, TaskMessage } from './wire.js';
import { decodeJson, encodeJson, heartbeatProof, reportProof, taskMessageSchema } from './wire.js';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/**
 * Terminates a message: the work queue drops it, it is never delivered again. Sent without a
 * reason text: nats-server before 2.10 does not recognise `+TERM <reason>` and would redeliver
 * the message after AckWait, again and again.
 */
export function terminate(m: JsMsg): void {
  m.term();
}

/** A signed link of one agent; see the module comment. */
export class NatsAgentLink {
  readonly #key: string;
  /** When reports on a task taken up by {@link begin} stop waiting for a sidecar that is gone. */
  readonly #giveUpAt = new WeakMap<TaskMessage, number>();
  #lastTs = 0;
  #closed = false;

  constructor(
    readonly nc: NatsConnection,
    readonly names: NatsNames,
    readonly agentId: string,
    credential: string,
    readonly reportTimeoutMs: number,
  ) {
    this.#key = hashCredential(credential);
  }

  get closed(): boolean {
    return this.#closed || this.nc.isClosed();
  }

  /** A signed heartbeat body; timestamps strictly increase (the sidecar refuses replays). */
  heartbeatBody(): Uint8Array {
    const ts = Math.max(Date.now(), this.#lastTs + 1);
    this.#lastTs = ts;
    return encodeJson({ ts, proof: heartbeatProof(this.#key, this.agentId, ts) });
  }

  /** Publishes a heartbeat without waiting for an answer. */
  publishHeartbeat(): void {
    if (!this.closed) this.nc.publish(this.names.heartbeat(this.agentId), this.heartbeatBody());
  }

  /** Sends a heartbeat and returns the agent's sidecar's answer. */
  async heartbeat(): Promise<Answer> {
    const m = await this.nc.request(this.names.heartbeat(this.agentId), this.heartbeatBody(), {
      timeout: this.reportTimeoutMs,
    });
    return decodeJson(m.data) as Answer;
  }

  /**
   * Sends a report until the scheduling sidecar answers. While nobody listens on the task's
   * `replyTo` (that sidecar is down — it may be restarting on its durable store, which keeps
   * its name and lease key) it keeps trying until the task's timeout has passed since the
   * message was taken up; then, or when the link is closed, `undefined`.
   */
  async report(
    task: TaskMessage,
    kind: ReportKind,
    extra: Omit<Partial<Report>, 'kind'> = {},
  ): Promise<Answer | undefined> {
    const report: Report = {
      kind,
      taskId: task.taskId,
      attempt: task.attempt,
      lease: task.lease,
      agentId: this.agentId,
      proof: reportProof(this.#key, this.agentId, kind, task.taskId, task.attempt),
      ...extra,
    };
    const body = encodeJson(report);
    const giveUpAt = this.#giveUpAt.get(task) ?? Date.now() + 2_000;
    for (let tries = 0; !this.closed; tries++) {
      try {
        const m = await this.nc.request(task.replyTo, body, { timeout: this.reportTimeoutMs });
        return decodeJson(m.data) as Answer;
      } catch (err) {
        const gone =
          err instanceof NoRespondersError || (err instanceof RequestError && err.isNoResponders());
        if (gone && Date.now() >= giveUpAt) return undefined;
        await sleep(Math.min(1000, 50 * 2 ** Math.min(tries, 5)));
      }
    }
    return undefined;
  }

  /**
   * Takes a pulled message up: checks it and reports `start` with the message's delivery count
   * (the sidecar counts a redelivered, already started attempt as lost and answers it stale).
   * Returns the task to run, or `undefined` when the message was terminated instead (not a task,
   * start refused — the attempt ended or was lost — or its sidecar gone). The caller keeps the
   * message alive with in-progress acks meanwhile.
   */
  async begin(m: JsMsg): Promise<TaskMessage | undefined> {
    const parsed = taskMessageSchema.safeParse(decodeJson(m.data));
    if (!parsed.success) {
      terminate(m); // not a fabric task message
      return undefined;
    }
    const task = parsed.data;
    this.#giveUpAt.set(task, Date.now() + task.timeoutSeconds * 1000);
    const start = await this.report(task, 'start', { delivery: m.info.deliveryCount });
    if (start === undefined || !start.ok) {
      terminate(m); // the attempt is over, or its sidecar is gone
      return undefined;
    }
    return task;
  }

  /** Stops reporting; closes the connection when `owns`. */
  async close(owns: boolean): Promise<void> {
    this.#closed = true;
    if (owns) await this.nc.close();
  }
}

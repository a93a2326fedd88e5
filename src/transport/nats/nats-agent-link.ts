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

/** A signed link of one agent; see the module comment. */
export class NatsAgentLink {
  readonly #key: string;
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
   * Sends a report until the scheduling sidecar answers. `undefined` when nobody listens on the
   * task's `replyTo` (that sidecar is gone) or the link is closed.
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
    for (let tries = 0; !this.closed; tries++) {
      try {
        const m = await this.nc.request(task.replyTo, body, { timeout: this.reportTimeoutMs });
        return decodeJson(m.data) as Answer;
      } catch (err) {
        const gone =
          err instanceof NoRespondersError || (err instanceof RequestError && err.isNoResponders());
        if (gone && tries >= 3) return undefined;
        await sleep(Math.min(1000, 50 * 2 ** Math.min(tries, 5)));
      }
    }
    return undefined;
  }

  /**
   * Takes a pulled message up: checks it, refuses one delivered more often than its
   * `maxAttempts` (reported `fail`), reports `start`. Returns the task to run, or `undefined`
   * when the message was terminated instead (not a task, delivered too often, start refused —
   * the attempt ended — or its sidecar gone).
   */
  async begin(m: JsMsg): Promise<TaskMessage | undefined> {
    const parsed = taskMessageSchema.safeParse(decodeJson(m.data));
    if (!parsed.success) {
      m.term('not a fabric task message');
      return undefined;
    }
    const task = parsed.data;
    if (m.info.deliveryCount > task.maxAttempts) {
      await this.report(task, 'fail', {
        error: {
          code: 'FABRIC_ERR_TASK_EXECUTION',
          message: `delivered ${m.info.deliveryCount} times (maxAttempts ${task.maxAttempts})`,
        },
      });
      m.term('delivered too often');
      return undefined;
    }
    const start = await this.report(task, 'start');
    if (start === undefined || !start.ok) {
      m.term(start === undefined ? 'owning sidecar gone' : start.code);
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

/**
 * An agent's signed link to the fabric over NATS: heartbeats and task reports with the proofs
 * of `wire.ts`. Shared by {@link NatsWorker} (its own run loop) and {@link NatsWorkerTransport}
 * (the `FabricWorker` seam), so both speak the protocol the same way.
 *
 * @module
 */
import { randomBytes } from 'node:crypto';
import type { JsMsg } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/transport-node';
import { InvalidArgumentError, NatsUnavailableError, PermissionDeniedError } from '../../errors.js';
import { hashCredential } from '../../lifecycle/lifecycle-manager.js';
import { ReplyInbox, type NoAnswer } from './reply-inbox.js';
import type { NatsNames } from './subjects.js';
import type { Answer, Report, ReportKind, TaskMessage } from './wire.js';
import {
  asAnswer,
  asTaskMessage,
  decodeJson,
  encodeJson,
  genuineReportAnswer,
  heartbeatAnswerMac,
  MAX_ERROR_CODE_LENGTH,
  MAX_ERROR_MESSAGE_LENGTH,
  heartbeatProof,
  reportProof,
  sameProof,
  STALE_DELIVERY_CODE,
} from './wire.js';

/** Most reports in one batch request, and most bytes (NATS' default max_payload is 1 MiB). */
const MAX_BATCH = 256;
const MAX_BATCH_BYTES = 512 * 1024;
const encoder = new TextEncoder();

/**
 * How long a report other than `start` (and an ack) may wait for the next `start` flush to
 * travel with, in ms: nothing waits on them for a task to begin, and each socket write of its
 * own costs this process and the server far more than the wait (see bench/RESULTS.md, "NATS
 * transport").
 */
export const LAZY_FLUSH_MS = 1;

/** A report waiting for its batch. */
interface Queued {
  /** What its answer's MAC binds. */
  readonly report: Report;
  readonly json: string;
  readonly giveUpAt: number;
  readonly resolve: (answer: Answer | undefined) => void;
  /** Called once the report's first request is handed to the connection. */
  readonly sent: (() => void) | undefined;
}

/** A `start` report in flight: see {@link NatsAgentLink.start}. */
export interface Starting {
  /** The sidecar's answer (undefined: none until the task's timeout, or the link closed). */
  readonly answer: Promise<Answer | undefined>;
  /** Resolves once the report is handed to the connection (written out on this turn). */
  readonly sent: Promise<void>;
}

/**
 * Why a heartbeat got no answer its worker can check: {@link NoAnswer}, or `unverified` — within
 * the time, no genuine answer came but a refusal did whose MAC this link cannot check (a sidecar
 * that knows the agent answers under the hash of the agent's real credential: this one is wrong).
 */
export type HeartbeatNoAnswer = NoAnswer | 'unverified';

/** Why no sidecar answered a heartbeat, by the error it was rejected with. */
const unanswered = new WeakMap<Error, HeartbeatNoAnswer>();

/**
 * Why no sidecar answered the heartbeat `err` (from {@link NatsAgentLink.heartbeat}) is about:
 * nobody subscribes the subject (`no-responders`), no answer at all in time (`timeout`), only a
 * refusal whose MAC does not verify (`unverified`), the link closed (`closed`); undefined for any
 * other error.
 */
export function noAnswerOf(err: unknown): HeartbeatNoAnswer | undefined {
  return err instanceof Error ? unanswered.get(err) : undefined;
}

/**
 * JetStream's delivery count of a pulled message, or undefined when its reply subject does not
 * say (nats.js parses it once per message, and the worker reads it already).
 */
function deliveryCount(m: JsMsg): number | undefined {
  try {
    const n = m.info.deliveryCount;
    return Number.isSafeInteger(n) && n > 0 ? n : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Terminates a message: the work queue drops it, it is never delivered again. Sent without a
 * reason text: nats-server before 2.10 does not recognise `+TERM <reason>` and would redeliver
 * the message after AckWait, again and again.
 */
export function terminate(m: JsMsg): void {
  m.term();
}

/**
 * Runs a send (a publish, an ack) that may throw — the connection closed or draining — where an
 * exception must not escape: a timer (it would end the process) or a subscription callback
 * (nats.js would stop reading the connection). What is lost is sent again or redelivered.
 */
export function quietly(send: () => void): void {
  try {
    send();
  } catch {
    // the connection is closed or draining
  }
}

/**
 * True for the refusal of a report on a genuine message from an agent that may not report on it
 * (`FABRIC_ERR_PERMISSION_DENIED`: terminated, of another pool, not proven). The message is
 * given back (NAK) for the task's own workers, not terminated, and the worker should stop: its
 * agent is not one the fabric takes reports from.
 */
export function notAllowed(answer: Answer | undefined): boolean {
  return answer !== undefined && !answer.ok && answer.code === 'FABRIC_ERR_PERMISSION_DENIED';
}

/**
 * True when the fabric refused a start as a stale copy of a running attempt's message (see
 * `Report.delivery`): the copy is dropped unsettled — an ack or a term would settle the message
 * that another worker runs, a nak would have it delivered again at once.
 */
export function staleCopy(answer: Answer | undefined): boolean {
  return answer !== undefined && !answer.ok && answer.code === STALE_DELIVERY_CODE;
}

/**
 * The answers to `batch` in `data` (one answer, or `{ answers }` for several reports) when each
 * is genuine (see {@link genuineReportAnswer}), else undefined.
 */
function genuineAnswers(data: unknown, batch: readonly Queued[]): Answer[] | undefined {
  if (batch.length === 1) {
    const a = genuineReportAnswer(data, batch[0]!.report);
    return a === undefined ? undefined : [a];
  }
  const list = (data as { answers?: unknown } | null | undefined)?.answers;
  if (!Array.isArray(list) || list.length !== batch.length) return undefined;
  const out: Answer[] = [];
  for (let i = 0; i < batch.length; i++) {
    const a = genuineReportAnswer(list[i], batch[i]!.report);
    if (a === undefined) return undefined;
    out.push(a);
  }
  return out;
}

/**
 * `error` within what a report's error may carry (see `reportSchema`): a longer message cut, a
 * code empty or too long replaced. A sidecar cannot read a report beyond those bounds: it would
 * refuse the outcome, and the task would end at its timeout with the handler's reason lost.
 */
function reportableError(error: ReportError): ReportError {
  const { code, message } = error;
  const codeOk = code.length >= 1 && code.length <= MAX_ERROR_CODE_LENGTH;
  if (codeOk && message.length <= MAX_ERROR_MESSAGE_LENGTH) return error;
  return {
    ...error,
    code: codeOk ? code : code.slice(0, MAX_ERROR_CODE_LENGTH) || 'FABRIC_ERR_TASK_EXECUTION',
    message: message.slice(0, MAX_ERROR_MESSAGE_LENGTH),
  };
}

/**
 * `r` with its content as the sidecar will read it: what JSON makes of the members the proof's
 * content digest covers (a `Date` as its string, an `undefined` member left out, …), so the
 * proof is over what arrives. Only reports with such members pay for the round trip.
 */
function wireContent(r: Report): Report {
  const { progress, result, error, retry } = r;
  if (
    progress === undefined &&
    result === undefined &&
    error === undefined &&
    retry === undefined
  ) {
    return r;
  }
  const content = JSON.parse(JSON.stringify({ progress, result, error, retry })) as Partial<Report>;
  return {
    ...r,
    progress: undefined,
    result: undefined,
    error: undefined,
    retry: undefined,
    ...content,
  };
}

/** The error of a `fail` report. */
type ReportError = NonNullable<Report['error']>;

/** A signed link of one agent; see the module comment. */
export class NatsAgentLink {
  readonly #key: string;
  /** When reports on a task taken up by {@link begin} stop waiting for a sidecar that is gone. */
  readonly #giveUpAt = new WeakMap<TaskMessage, number>();
  /**
   * The take-up of a parsed message: its stream sequence, from {@link start} on the take-up
   * id, which the task's later reports carry (the sidecar takes only the starting take-up's),
   * and the number of reports made on it (each report's `counter`: 1 for the start).
   */
  readonly #upOf = new WeakMap<
    TaskMessage,
    {
      readonly seq: number | undefined;
      readonly delivery: number | undefined;
      take?: string;
      reports: number;
    }
  >();
  /** Reports not sent yet, by the subject they go to (sent together on the next flush). */
  readonly #outbox = new Map<string, Queued[]>();
  /** Messages to ack on the next flush, in the same socket write as its reports. */
  #acks: JsMsg[] = [];
  /** A flush at the end of this turn is queued (a `start` is waiting). */
  #flushQueued = false;
  /** A flush within {@link LAZY_FLUSH_MS} is queued (only reports that can wait are). */
  #lazyTimer: NodeJS.Timeout | undefined;
  /** Makes take-up ids and report nonces unique across workers (random) and within this one (counters). */
  readonly #nonce = randomBytes(9).toString('base64url');
  #takes = 0;
  #reports = 0;
  #lastTs = 0;
  #closed = false;
  #answered = false;
  /** Where the sidecars' answers to reports come back. */
  readonly #inbox: ReplyInbox;
  /** Retries waiting for their backoff, each with its send (run at once by {@link close}). */
  readonly #retries = new Map<NodeJS.Timeout, () => void>();

  constructor(
    readonly nc: NatsConnection,
    readonly names: NatsNames,
    readonly agentId: string,
    credential: string,
    readonly reportTimeoutMs: number,
  ) {
    this.#key = hashCredential(credential);
    this.#inbox = new ReplyInbox(nc);
  }

  /**
   * True once a sidecar answered one of this link's heartbeats under its credential: the agent
   * and credential are known good, so a heartbeat no one answers later means its sidecar (or
   * NATS) is away, not that they are wrong.
   */
  get answered(): boolean {
    return this.#answered;
  }

  get closed(): boolean {
    return this.#closed || this.nc.isClosed();
  }

  /** A signed heartbeat; timestamps strictly increase (the sidecar refuses replays). */
  #heartbeatBody(): { ts: number; body: Uint8Array } {
    const ts = Math.max(Date.now(), this.#lastTs + 1);
    this.#lastTs = ts;
    return { ts, body: encodeJson({ ts, proof: heartbeatProof(this.#key, this.agentId, ts) }) };
  }

  /** Publishes a heartbeat without waiting for an answer. */
  publishHeartbeat(): void {
    if (this.closed) return;
    quietly(() => this.nc.publish(this.names.heartbeat(this.agentId), this.#heartbeatBody().body));
  }

  /**
   * Sends a heartbeat and returns the agent's sidecar's answer: the first one whose MAC under the
   * credential's hash covers this heartbeat (anything else on the reply subject is ignored).
   * @throws NatsUnavailableError when no such answer comes within the report timeout
   */
  heartbeat(): Promise<Answer> {
    const { ts, body } = this.#heartbeatBody();
    // A refusal came whose MAC this credential cannot check (see `HeartbeatNoAnswer`).
    let unverified = false;
    return new Promise((resolve, reject) => {
      this.#inbox.request(
        this.names.heartbeat(this.agentId),
        body,
        this.reportTimeoutMs,
        (m, noAnswer) => {
          if (m === undefined) {
            const why =
              noAnswer === 'timeout' && unverified ? 'unverified' : (noAnswer ?? 'timeout');
            const err = new NatsUnavailableError(
              this.nc.getServer(),
              why === 'unverified'
                ? `the heartbeat of agent ${this.agentId} was refused under a MAC its ` +
                    `credential does not verify: a wrong credential (or a forged refusal)`
                : `no sidecar answered the heartbeat of agent ${this.agentId} with a valid MAC ` +
                    `(${why}): its sidecar down, an unknown agent or another namespace`,
            );
            unanswered.set(err, why);
            reject(err);
            return true;
          }
          const a = asAnswer(decodeJson(m.data));
          if (a === undefined || !this.#genuineHeartbeatAnswer(a, ts)) {
            if (a !== undefined && !a.ok && typeof a.mac === 'string') unverified = true;
            return false;
          }
          this.#answered = true;
          const { mac: _mac, ...answer } = a;
          resolve(answer as Answer);
          return true;
        },
      );
    });
  }

  /** True when `a` is the agent's sidecar's answer to the heartbeat of `ts` (its MAC). */
  #genuineHeartbeatAnswer(a: Answer, ts: number): boolean {
    if (typeof a.mac !== 'string') return false;
    // The MAC's text does not tell a string from a number: only the types a sidecar sends.
    if (a.status !== undefined && typeof a.status !== 'string') return false;
    if (a.ok) {
      const { poolId } = a;
      if (poolId !== undefined && poolId !== null && typeof poolId !== 'string') return false;
    }
    return sameProof(a.mac, heartbeatAnswerMac(this.#key, this.agentId, ts, a));
  }

  /**
   * Before a worker pulls `poolId`'s tasks: asks the agent's sidecar (a heartbeat) which pool the
   * agent is in, and throws when it is another one — the sidecar would refuse every start the
   * worker made from that pool's consumer, and the worker would terminate messages other workers
   * are waiting for. No answer (no sidecar knows the agent yet) or a refused heartbeat leaves it
   * to the reports, as before.
   * @throws InvalidArgumentError for `options.poolId`
   */
  async checkPool(poolId: string): Promise<void> {
    let answer: Answer;
    try {
      answer = await this.heartbeat();
    } catch {
      return;
    }
    if (!answer?.ok || answer.poolId === undefined || answer.poolId === poolId) return;
    throw new InvalidArgumentError(
      'options.poolId',
      `agent ${this.agentId} is not in pool ${JSON.stringify(poolId)} (` +
        (answer.poolId === null
          ? 'it is in no pool'
          : `its pool: ${JSON.stringify(answer.poolId)}`) +
        ')',
    );
  }

  /**
   * Sends a report until the scheduling sidecar answers. While nobody listens on the task's
   * `replyTo` (that sidecar is down — it may be restarting on its durable store, which keeps
   * its name and lease key) it keeps trying until the task's timeout has passed since the
   * message was taken up; then, or when the link is closed, `undefined`.
   *
   * Reports sent together to the same sidecar travel as one batch request (`{ v: 1, reports:
   * [...] }`, answered `{ answers: [...] }` in the same order), so a worker holding many tasks
   * pays one round trip per batch, not per report. A `start` leaves at the end of the turn it
   * was made in; the other kinds wait up to {@link LAZY_FLUSH_MS} for the next `start` flush.
   */
  report(
    task: TaskMessage,
    kind: ReportKind,
    extra: Omit<Partial<Report>, 'kind'> = {},
    sent?: () => void,
  ): Promise<Answer | undefined> {
    if (this.closed) {
      sent?.();
      return Promise.resolve(undefined);
    }
    // The take-up the report comes from: a start names its own in `extra`, and the take-up's
    // later reports carry it (a task not parsed here gets its take-up record now).
    let up = this.#upOf.get(task);
    if (up === undefined)
      this.#upOf.set(task, (up = { seq: undefined, delivery: undefined, reports: 0 }));
    if (kind === 'start' && extra.take !== undefined) up.take = extra.take;
    const report: Report = {
      kind,
      taskId: task.taskId,
      attempt: task.attempt,
      lease: task.lease,
      agentId: this.agentId,
      proof: '',
      // Empty only for a report before its take-up's start: the sidecar refuses it unread.
      take: up.take ?? '',
      ...extra,
      // This report's own: its answer's MAC covers it, so no answer to another report of the
      // same take-up (a `progress` before it) verifies as its answer. Re-sends repeat it.
      nonce: `${this.#nonce}-${++this.#reports}`,
      // Its number within the take-up, under its proof: the sidecar ignores an earlier one
      // replayed after it (a `progress` that would set the attempt's progress back).
      counter: ++up.reports,
    };
    if (report.error !== undefined) report.error = reportableError(report.error);
    const giveUpAt = this.#giveUpAt.get(task) ?? performance.now() + 2_000;
    return new Promise((resolve) => {
      // Here, as JSON.stringify below: content JSON cannot write rejects the promise.
      report.proof = reportProof(this.#key, wireContent(report));
      let queue = this.#outbox.get(task.replyTo);
      if (queue === undefined) {
        queue = [];
        this.#outbox.set(task.replyTo, queue);
      }
      queue.push({ report, json: JSON.stringify(report), giveUpAt, resolve, sent });
      this.#queueFlush(kind !== 'start');
    });
  }

  /** Acks `m` with the next flush (see {@link #queueFlush}), in the same socket write. */
  ack(m: JsMsg): void {
    this.#acks.push(m);
    this.#queueFlush(true);
  }

  /**
   * A `start` leaves at the end of this turn (its handler waits for it to be written); the other
   * reports and the acks travel with the next such flush, or after {@link LAZY_FLUSH_MS}.
   */
  #queueFlush(lazy: boolean): void {
    if (this.#flushQueued) return;
    if (!lazy) {
      this.#flushQueued = true;
      setImmediate(this.#flush);
    } else if (this.#lazyTimer === undefined) {
      this.#lazyTimer = setTimeout(this.#flush, LAZY_FLUSH_MS);
    }
  }

  /** Sends the acks waiting for the flush (nats.js writes them out on a microtask). */
  #sendAcks(): void {
    const acks = this.#acks;
    if (acks.length === 0) return;
    this.#acks = [];
    for (const m of acks) quietly(() => m.ack()); // in a timer: must not throw
  }

  readonly #flush = (): void => {
    this.#flushQueued = false;
    if (this.#lazyTimer !== undefined) {
      clearTimeout(this.#lazyTimer);
      this.#lazyTimer = undefined;
    }
    this.#sendAcks();
    for (const [replyTo, queue] of this.#outbox) {
      let batch: Queued[] = [];
      let bytes = 0;
      for (const q of queue) {
        if (
          batch.length > 0 &&
          (batch.length >= MAX_BATCH || bytes + q.json.length > MAX_BATCH_BYTES)
        ) {
          this.#send(replyTo, batch);
          batch = [];
          bytes = 0;
        }
        batch.push(q);
        bytes += q.json.length + 1;
      }
      this.#send(replyTo, batch);
    }
    this.#outbox.clear();
  };

  #send(replyTo: string, batch: Queued[]): void {
    const single = batch.length === 1;
    const body = encoder.encode(
      single ? batch[0]!.json : `{"v":1,"reports":[${batch.map((q) => q.json).join(',')}]}`,
    );
    let giveUpAt = 0;
    for (const q of batch) giveUpAt = Math.max(giveUpAt, q.giveUpAt);
    const send = (tries: number): void => {
      if (this.closed) {
        for (const q of batch) q.resolve(undefined);
        return;
      }
      this.#inbox.request(replyTo, body, this.reportTimeoutMs, (m, noAnswer) => {
        if (m !== undefined) {
          // Anyone may publish on the reply subject: only an answer whose every report's MAC
          // is right (under that report's lease) is the sidecar's; on anything else the
          // request waits on for it, and is sent again at its timeout.
          const answers = genuineAnswers(decodeJson(m.data), batch);
          if (answers === undefined) return false;
          for (let i = 0; i < batch.length; i++) batch[i]!.resolve(answers[i]);
          return true;
        }
        // Nobody listens there (its sidecar is gone) for longer than the tasks' timeouts.
        if (
          noAnswer === 'closed' ||
          (noAnswer === 'no-responders' && performance.now() >= giveUpAt)
        ) {
          for (const q of batch) q.resolve(undefined);
          return true;
        }
        const retry = (): void => {
          this.#retries.delete(timer);
          send(tries + 1);
        };
        const timer = setTimeout(retry, Math.min(1000, 50 * 2 ** Math.min(tries, 5)));
        this.#retries.set(timer, retry);
        return true;
      });
    };
    send(0);
    // The publish is in the connection's buffer, which it writes out on a microtask queued
    // before anything these callbacks go on to queue.
    for (const q of batch) q.sent?.();
  }

  /**
   * The task of a pulled message, or `undefined` when it is not a fabric task message (then
   * terminated: it is never delivered again).
   */
  parse(m: JsMsg): TaskMessage | undefined {
    const task = asTaskMessage(decodeJson(m.data));
    if (task === undefined) {
      terminate(m); // not a fabric task message
      return undefined;
    }
    // Elapsed time (`performance.now()`): a wall-clock step neither drops reports at once nor
    // retries them for as long as the clock went back.
    this.#giveUpAt.set(task, performance.now() + task.timeoutSeconds * 1000);
    this.#upOf.set(task, { seq: m.seq, delivery: deliveryCount(m), reports: 0 });
    return task;
  }

  /**
   * Reports `start` for a parsed message, with an id of this take-up (the sidecar counts an
   * already started attempt taken up again as lost and answers it stale) and the message's
   * stream sequence (the sidecar refuses a copy of the attempt's message other than the one it
   * was stored as, without ending the attempt) and delivery count (the sidecar refuses an
   * earlier delivery than the one running the attempt: {@link staleCopy}).
   */
  start(task: TaskMessage): Starting {
    let sent!: () => void;
    const written = new Promise<void>((resolve) => (sent = resolve));
    const take = `${this.#nonce}.${++this.#takes}`;
    const up = this.#upOf.get(task);
    if (up !== undefined) up.take = take;
    const answer = this.report(task, 'start', { take, seq: up?.seq, delivery: up?.delivery }, sent);
    return { answer, sent: written };
  }

  /**
   * Takes a pulled message up: parses it and waits for the sidecar's answer to its `start`.
   * Returns the task to run, or `undefined` when the message was terminated instead (not a task,
   * start refused — the attempt ended or was lost — or its sidecar gone), or dropped unsettled
   * (a stale copy: {@link staleCopy}). The caller keeps the
   * message alive with in-progress acks meanwhile.
   * @throws PermissionDeniedError when this agent may not report on it ({@link notAllowed}):
   *   the message is neither terminated nor acked; the caller gives it back.
   */
  async begin(m: JsMsg): Promise<TaskMessage | undefined> {
    const task = this.parse(m);
    if (task === undefined) return undefined;
    const start = await this.start(task).answer;
    if (notAllowed(start)) {
      // A genuine message, for the task's own workers: the caller gives it back (NAK) once it
      // has closed its pulls, so that it is not delivered to them again.
      throw new PermissionDeniedError((start as { message: string }).message);
    }
    if (staleCopy(start)) return undefined; // another worker runs a later delivery: dropped
    if (start === undefined || !start.ok) {
      terminate(m); // the attempt is over, or its sidecar is gone
      return undefined;
    }
    return task;
  }

  /** Stops reporting; closes the connection when `owns`. */
  async close(owns: boolean): Promise<void> {
    this.#closed = true;
    // Acks already due go out before the connection closes (else redelivered after AckWait).
    const acking = this.#acks.length > 0 && !this.nc.isClosed();
    if (acking) this.#sendAcks();
    if (this.#lazyTimer !== undefined) this.#flush(); // its reports resolve with no answer
    // Reports waiting to be sent again, or for an answer, resolve with none.
    for (const [timer, retry] of [...this.#retries]) {
      clearTimeout(timer);
      retry();
    }
    this.#inbox.close();
    if (!owns) return;
    // nats.js' close() drops what is not written yet (its write waits for a microtask).
    // Bounded: a connection that is reconnecting would hold flush() until it is back.
    if (acking) {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([
        this.nc.flush().catch(() => undefined),
        new Promise((r) => (timer = setTimeout(r, this.reportTimeoutMs))),
      ]);
      clearTimeout(timer);
    }
    await this.nc.close();
  }
}

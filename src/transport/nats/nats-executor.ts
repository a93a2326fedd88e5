/**
 * The `nats` executor: dispatch through a JetStream work-queue stream to workers anywhere.
 *
 * The scheduler keeps what it keeps for every executor (the task record, queues, timers, the
 * attempt as fencing token); this executor only carries attempts to workers and reports back:
 *
 * - **Dispatch.** Each assignment is published to the stream `FABRIC_<ns>_TASKS` with
 *   `Nats-Msg-Id: <taskId>:<attempt>`, so a publish repeated after a lost PubAck is stored once.
 *   A task addressed to an agent goes to `task.agent.<agentId>` (that agent's durable consumer);
 *   a task queued to a pool goes to `task.pool.<poolId>`, whose durable consumer every worker
 *   of the pool pulls from — on any sidecar of the namespace. Published after the store's
 *   commit of the attempt, with the others of its microtask run (`TurnFlush`). A publish that
 *   fails (server restarting) is retried while the attempt is still the task's current one.
 *   Should a second copy of an attempt's message be stored all the same, its `start` (which
 *   names the copy's stream sequence) is refused without ending the attempt; once the attempt
 *   started from its own copy, reports from another take-up are stale.
 * - **Consumers.** Durable pull consumers with explicit ack, `AckWait` = the smaller of
 *   `ackWaitSeconds` and the fabric's default task timeout (workers holding a task longer send
 *   in-progress acks), no `MaxDeliver`: attempts are counted here, per task — a `start` of an
 *   already started attempt under another take-up (its message came back after AckWait) ends
 *   that attempt as lost and retries the task as a new attempt, or FAILS it after its
 *   `maxAttempts` (after a restart, the first start heard of a started attempt is taken as its
 *   own take-up, unless a progress of it was applied: its take-up is kept with the task). The
 *   sidecar creates the consumers of an agent (and of its pool) when the agent is attached here.
 * - **Reports.** Workers send `start`, `progress`, `complete` and `fail` as requests on the
 *   scheduling sidecar's `res.<sidecarId>`, alone or batched. A report must carry the attempt's
 *   lease (see `wire.ts`) and the reporting agent's credential proof, checked here for agents
 *   of this sidecar and by the agent's own sidecar (`vouch`, which answers with the agent's
 *   pool, MACed under the sidecars' shared `nats.sidecarKey`; without that key nobody is asked
 *   and such reports are refused) for others; a task pinned to an agent can only be reported
 *   on by that agent, a pool's task only by an agent of that pool. A report on an attempt
 *   that is no longer current is answered `FABRIC_ERR_TASK_STATE` and changes nothing; one
 *   whose take-up `counter` is below the last accepted (overtaken: a replayed earlier report,
 *   or the worker's late re-send) changes nothing and is answered ok.
 *   Answers go out after the store's commit of what the report changed. JetStream's publish
 *   acknowledgements and the report answers come back on one reply subscription each
 *   (`ReplyInbox`), not through nats.js' per-request machinery.
 * - **Restarts.** With a durable store the lease key and sidecar id are kept in it, so the
 *   executor is `resumable`: attempts out in JetStream, and their workers' reports, outlive a
 *   restart of this sidecar — started ones and those not started yet alike (a worker may have
 *   begun one before its start was answered). An attempt not started yet is published again
 *   after the restart, the same `Nats-Msg-Id`, while the stream's duplicate window still covers
 *   its first publish (in case the old process died before it left); later it is not.
 * - **Abort.** When the scheduler ends an attempt (cancel, timeout, agent lost) the executor
 *   publishes `ended.<taskId>`; the worker running it aborts the handler's signal.
 *
 * @module
 */
import { randomBytes } from 'node:crypto';
import type { JetStreamManager, StreamInfo } from '@nats-io/jetstream';
import { AckPolicy, RetentionPolicy, StorageType, jetstreamManager } from '@nats-io/jetstream';
import type { Msg, NatsConnection, Subscription } from '@nats-io/transport-node';
import { createInbox, headers, nanos } from '@nats-io/transport-node';
import {
  InvalidArgumentError,
  PermissionDeniedError,
  TaskStateError,
  UnauthenticatedError,
} from '../../errors.js';
import type { ExecutorSink, TaskExecutor } from '../../scheduler/executor.js';
import type { TaskAssignment, TaskError } from '../../task.js';
import type { NatsOptions } from './nats-options.js';
import { LAZY_FLUSH_MS } from './nats-agent-link.js';
import { ReplyInbox } from './reply-inbox.js';
import { TurnFlush } from './turn-flush.js';
import type { NatsNames } from './subjects.js';
import { answerable, natsNames } from './subjects.js';
import type { Answer, EndedNotice, Report, TaskMessage, Vouch } from './wire.js';
import {
  asReport,
  attemptLease,
  endedMac,
  batchReports,
  decodeJson,
  encodeJson,
  legacyReportProof,
  missingReportFields,
  proofOver,
  reportBinding,
  vouchQuestion,
  reportProof,
  sameProof,
  signedReportAnswer,
  STALE_DELIVERY_CODE,
  vouchMac,
  vouchSchema,
} from './wire.js';

const denied = new UnauthenticatedError('report without a valid lease or agent proof');
/** The answer to a report that is not authentic (made once: it is the same every time). */
const DENY: Answer = Object.freeze({ ok: false, code: denied.code, message: denied.message });
const OK: Answer = Object.freeze({ ok: true });

/**
 * The refusal of a report on a genuine message (its lease is right) from an agent that may not
 * report on it: not proven, terminated, of another pool, or not the task's agent. Workers give
 * such a message back (NAK) for the task's own workers instead of terminating it.
 */
function notAllowed(r: Report): Answer {
  const e = new PermissionDeniedError(
    `agent ${r.agentId} may not report on task ${r.taskId}: not proven, not current, or not ` +
      `an agent the task was queued for`,
  );
  return { ok: false, code: e.code, message: e.message };
}

/**
 * The refusal of a report signed as workers signed before the proof covered the take-up, nonce
 * and content: never accepted (a reader of other workers' reports could replay its proof with
 * another take-up or content), and said so, so the worker's operator knows to upgrade it.
 */
function legacyProof(r: Report): Answer {
  const e = new PermissionDeniedError(
    `agent ${r.agentId} may not report on task ${r.taskId}: its proof is in the old format ` +
      `(kind, agent, task and attempt only), which is no longer accepted; the worker must sign ` +
      `the take-up, nonce and content too (see the README's NATS wire protocol)`,
  );
  return { ok: false, code: e.code, message: e.message };
}

/**
 * The refusal of a body that would be a report but lacks `take` or `counter` (see
 * `missingReportFields`): a worker written before they were required, whose `progress` reports
 * a reader of `res.>` could replay unnoticed. Said so, naming the fields, so that its operator
 * knows to upgrade it.
 */
function missingFields(fields: readonly string[]): Answer {
  const e = new InvalidArgumentError(
    fields.map((f) => `report.${f}`).join(' and '),
    `is required: every report names its take-up (take) and its number within it (counter), ` +
      `which its proof covers, so that a replay is told from a later report (see the README's ` +
      `NATS wire protocol)`,
  );
  return { ok: false, code: e.code, message: e.message };
}

/**
 * The refusal of a pool task's report from an agent this sidecar does not know when no
 * `nats.sidecarKey` is configured: nobody can vouch for it (see `NatsExecutor.#askVouch`).
 */
function noSidecarKey(r: Report): Answer {
  const e = new PermissionDeniedError(
    `agent ${r.agentId} may not report on task ${r.taskId}: it is not an agent of this sidecar, ` +
      `and cross-sidecar pool reports need nats.sidecarKey (the same on every sidecar of the ` +
      `namespace)`,
  );
  return { ok: false, code: e.code, message: e.message };
}

/**
 * What the executor keeps with a task with each progress it applies (`TaskRecord.reportMark`):
 * `<attempt>:<counter>:<take>` of the report, the take-up last (it may hold a `:`).
 */
function reportMark(r: Report): string {
  return `${r.attempt}:${r.counter}:${r.take}`;
}

/** A {@link reportMark} read back; undefined for none or one not of that form. */
function parseReportMark(
  mark: string | undefined,
): { attempt: number; counter: number; take: string } | undefined {
  const m = mark === undefined ? null : /^(\d+):(\d+):(.+)$/s.exec(mark);
  if (m === null) return undefined;
  const attempt = Number(m[1]);
  const counter = Number(m[2]);
  if (!Number.isSafeInteger(attempt) || !Number.isSafeInteger(counter)) return undefined;
  return { attempt, counter, take: m[3]! };
}

/** The take-up whose start was accepted, of a running attempt (see `NatsExecutor.#takes`). */
interface TakeUp {
  attempt: number;
  take: string;
  lease: string;
  seq: number | undefined;
  /** JetStream's delivery count of the copy it took up, when its start named one. */
  delivery?: number | undefined;
  /** The highest `Report.counter` of the take-up accepted so far. */
  counter: number;
}

/** A checked report, or the answer that refuses it. */
type Checked = Report | Answer;

function isReport(c: Checked): c is Report {
  return 'kind' in c;
}

/** True for a batch of reports (`{ v: 1, reports: [...] }`) rather than one report. */
function isBatch(data: unknown): boolean {
  return typeof data === 'object' && data !== null && 'reports' in data;
}

/** How long a sidecar waits for another to vouch for its agent's proof. */
const VOUCH_TIMEOUT_MS = 2_000;

/** How long a publish waits for JetStream's acknowledgement before it is sent again. */
const PUBLISH_TIMEOUT_MS = 5_000;
/** How often a retry held back while the connection is down checks whether it is back, in ms. */
const RECONNECT_POLL_MS = 250;

/** Executor name of {@link NatsExecutor}. */
export const NATS_EXECUTOR = 'nats';

/** How long JetStream remembers a `Nats-Msg-Id` (the stream's duplicate window, when made here). */
export const DUPLICATE_WINDOW_MS = 120_000;

/** What the executor needs to know about tasks and agents (the fabric supplies it). */
export interface NatsExecutorHost {
  /** The task's routing and current attempt; undefined when unknown. */
  task(taskId: string):
    | {
        attempt: number;
        /** The current attempt is held by an agent (SCHEDULED or RUNNING). */
        dispatched: boolean;
        /** The current attempt's start was reported (RUNNING). */
        started: boolean;
        /** How the current attempt ended, when it ended by a report (COMPLETED, FAILED). */
        ended?: 'complete' | 'fail' | undefined;
        /** When the current attempt was handed to an agent (ms since the epoch). */
        dispatchedAt: number | undefined;
        agentId: string | undefined;
        poolId: string | undefined;
        maxAttempts: number;
        /**
         * What {@link NatsExecutor} gave `ExecutorSink.progress` with the last progress it
         * applied (kept with the task by a durable store): see {@link reportMark}.
         */
        reportMark?: string | undefined;
      }
    | undefined;
  /** SHA-256 (hex) of a known, not terminated agent's credential. */
  credentialHash(agentId: string): string | undefined;
  /** The pool of a known agent. */
  agentPool(agentId: string): string | undefined;
  /**
   * Whether the task's current record is on disk: false only while the store's commits fail
   * and its latest change (the end a report made) waits in memory. Omitted: always on disk.
   */
  onDisk?(taskId: string): boolean;
}

/** Options of a {@link NatsExecutor}. */
export interface NatsExecutorOptions {
  /** Consumers' `AckWait` in ms. */
  ackWaitMs: number;
  /**
   * The lease key and, unless `nats.sidecarId` is set, the sidecar id, kept by a durable store
   * (see `FabricStore.secret`): attempts then outlive this process (`resumable`). Without it
   * both are random per process.
   */
  durable?: { leaseKey: string; sidecarId: string };
}

/** Counts of what the executor did, for tests and benchmarks. */
export interface NatsExecutorStats {
  published: number;
  publishRetries: number;
  /**
   * Attempts not published again because JetStream's duplicate window may have passed since a
   * copy that may be stored (a try that got no answer in time, or the old process's publish of
   * an attempt restored after a restart); each ends at its timeout.
   */
  publishesGivenUp: number;
  /**
   * Starts refused because they took up a second stored copy of an attempt's message (see
   * `Report.seq`); the attempt went on with its own copy.
   */
  duplicatesRefused: number;
  /**
   * Starts refused from a stale copy of a running attempt's message (an earlier delivery than
   * the running take-up's, held by a busy worker past AckWait: `Report.delivery`); the attempt
   * went on.
   */
  staleDeliveriesRefused: number;
  /**
   * Reports ignored (answered ok, nothing changed) because their take-up's counter was below the
   * last one accepted (see `Report.counter`): a replay of an earlier report by a reader of
   * `res.>`, or the worker's own re-send of a report whose answer was lost, overtaken.
   */
  reportsOutOfOrder: number;
  reportsAccepted: number;
  reportsRejected: number;
  /**
   * Report answers and `ended` notices that could not be sent (the connection closing, an
   * answer over the server's `max_payload`), and answers not sent because the request's reply
   * subject is no inbox (see `answerable`); a worker whose report goes unanswered sends it again.
   */
  sendsFailed: number;
  /**
   * Answers to `complete`/`fail` reports held back because the end they made was not on disk
   * (the store's commit failed): the worker sends the report again, and is answered once a
   * commit succeeds.
   */
  answersWithheld: number;
}

/** A moment on both clocks: epoch ms and `performance.now()`. */
interface Instant {
  readonly wall: number;
  readonly mono: number;
}

/** Dispatches tasks through JetStream; see the module comment. */
export class NatsExecutor implements TaskExecutor {
  readonly name = NATS_EXECUTOR;
  readonly acknowledges = true;
  readonly autoHeartbeat = false;
  readonly names: NatsNames;
  /** This sidecar's id on the bus. */
  readonly sidecarId: string;
  readonly stats: NatsExecutorStats = {
    published: 0,
    publishRetries: 0,
    publishesGivenUp: 0,
    duplicatesRefused: 0,
    staleDeliveriesRefused: 0,
    reportsOutOfOrder: 0,
    reportsAccepted: 0,
    reportsRejected: 0,
    sendsFailed: 0,
    answersWithheld: 0,
  };
  /** True with a durable lease key: see `TaskExecutor.resumable`. */
  readonly resumable: boolean;
  readonly #secret: string;
  /** The key the sidecars of the namespace share (`nats.sidecarKey`): vouch answers' MAC key. */
  readonly #sidecarKey: string | undefined;
  readonly #options: NatsExecutorOptions;
  /**
   * The take-up whose start was accepted, per running attempt (see `Report.take`), with the
   * attempt's lease that start proved (its later reports are checked against it, no HMAC) and
   * the stream sequence of the message it took up, when its start named one.
   */
  readonly #takes = new Map<string, TakeUp>();
  /**
   * Each attempt's message while its task is out: its lease (a start is checked against it, no
   * HMAC) and, from the publish's acknowledgement on, its stream sequence — when the scheduler
   * ends the attempt first (cancel, timeout) the message is deleted, so a worker that did not
   * hear the `ended` notice does not begin it.
   */
  readonly #out = new Map<string, { attempt: number; lease: string; seq: number | undefined }>();
  readonly #replyTo: string;
  #host: NatsExecutorHost | undefined;
  #sink: ExecutorSink | undefined;
  #nc: NatsConnection | undefined;
  /**
   * The connection is up, as its status events last said. While it is down the client buffers
   * what is published and sends it all once it is back; a retry is not made then (see
   * {@link #publish}).
   */
  #connected = false;
  #jsm: JetStreamManager | undefined;
  /** Where JetStream's publish acknowledgements come back. */
  #inbox: ReplyInbox | undefined;
  #sub: Subscription | undefined;
  #vouchSub: Subscription | undefined;
  /** Assignments dispatched and not published yet (see {@link dispatch}). */
  #unpublished: TaskAssignment[] = [];
  readonly #publishFlush = new TurnFlush(() => this.#publishDispatched());
  /** Report answers not sent yet: they travel with the next publishes (see {@link #answer}). */
  #answers: [Msg, Uint8Array][] = [];
  #answerTimer: NodeJS.Timeout | undefined;
  /** Assignments dispatched before {@link start}. */
  #waiting: TaskAssignment[] = [];
  /** Agents attached before {@link start}. */
  readonly #attached = new Set<string>();
  readonly #consumers = new Map<string, Promise<void>>();
  readonly #timers = new Set<NodeJS.Timeout>();
  /**
   * An attempt handed out longer ago than this is not published (again): half the stream's
   * duplicate window (see {@link #publish}).
   */
  #republishWithinMs = DUPLICATE_WINDOW_MS / 2;
  /** When this executor was made: attempts dispatched before are restored ones. */
  readonly #bornAt = Date.now();
  /** `performance.now()` at {@link #bornAt}: the window is counted in elapsed time from here on. */
  readonly #bornMono = performance.now();
  #closed = false;

  constructor(nats: NatsOptions, options: NatsExecutorOptions) {
    this.names = natsNames(nats.namespace);
    this.sidecarId =
      nats.sidecarId ??
      options.durable?.sidecarId ??
      randomBytes(9)
        .toString('base64url')
        .replace(/[^A-Za-z0-9]/g, 'x');
    this.#secret = options.durable?.leaseKey ?? randomBytes(32).toString('base64url');
    this.resumable = options.durable !== undefined;
    this.#sidecarKey = nats.sidecarKey;
    this.#replyTo = this.names.results(this.sidecarId);
    this.#options = options;
  }

  /** Gives the executor its view of tasks and agents. */
  setHost(host: NatsExecutorHost): void {
    this.#host = host;
  }

  bind(sink: ExecutorSink): void {
    this.#sink = sink;
  }

  /**
   * Makes the stream, subscribes the reports and sends what was dispatched before.
   * @throws whatever JetStream answers when the stream cannot be made (JetStream disabled, …).
   */
  async start(nc: NatsConnection): Promise<void> {
    this.#nc = nc;
    this.#connected = true;
    void (async () => {
      for await (const s of nc.status()) {
        if (s.type === 'disconnect') this.#connected = false;
        else if (s.type === 'reconnect') this.#connected = true;
      }
    })().catch(() => undefined);
    this.#jsm = await jetstreamManager(nc);
    await this.#ensureStream(this.#jsm);
    this.#inbox = new ReplyInbox(nc);
    // Nothing may throw out of a subscription callback: nats.js would stop reading the
    // connection (see `#respond`).
    this.#sub = nc.subscribe(this.#replyTo, {
      callback: (err, msg) => {
        try {
          if (err === null) this.#onReport(msg);
        } catch {
          this.stats.reportsRejected++;
        }
      },
    });
    this.#vouchSub = nc.subscribe(this.names.vouch, {
      callback: (err, msg) => {
        try {
          if (err === null) this.#vouchFor(msg);
        } catch {
          this.stats.sendsFailed++;
        }
      },
    });
    for (const id of this.#attached) this.#ensureConsumers(id);
    const waiting = this.#waiting;
    this.#waiting = [];
    this.dispatch(waiting);
  }

  async #ensureStream(jsm: JetStreamManager): Promise<void> {
    const config = {
      name: this.names.stream,
      subjects: [`fabric.${this.names.namespace}.task.>`],
      retention: RetentionPolicy.Workqueue,
      storage: StorageType.File,
      duplicate_window: nanos(DUPLICATE_WINDOW_MS),
    };
    let info: StreamInfo;
    try {
      info = await jsm.streams.add(config);
    } catch (err) {
      // Made by another sidecar (maybe with other limits an operator set): use it as it is.
      info = await jsm.streams.info(this.names.stream).catch(() => {
        throw err;
      });
    }
    this.#republishWithinMs = Number(info.config.duplicate_window ?? 0) / 1e6 / 2;
  }

  capacity(): number {
    return Number.POSITIVE_INFINITY;
  }

  dispatch(batch: readonly TaskAssignment[]): void {
    if (this.#inbox === undefined) {
      if (!this.#closed) for (const a of batch) this.#waiting.push(a);
      return;
    }
    // Published with the next {@link TurnFlush}: everything dispatched while one microtask queue
    // runs leaves together in one socket write (each publish flushed on its own microtask was a
    // write — and a read for the server — per task at a paced rate). It runs after the store's
    // commit of these starts (a microtask queued when the scheduler saved them), so an
    // assignment leaves only once its attempt is on disk.
    for (const a of batch) this.#unpublished.push(a);
    this.#publishFlush.queue();
  }

  /** Publishes the assignments dispatched since the last flush (see {@link dispatch}). */
  #publishDispatched(): void {
    const batch = this.#unpublished;
    this.#unpublished = [];
    for (const a of batch) this.#publish(a, 0);
    this.#sendAnswers();
  }

  /**
   * Queues a report's answer — called once the store has committed what the report changed —
   * to leave with the next publishes (in the same socket write), or within
   * {@link LAZY_FLUSH_MS} when none come: a worker waits on them only to ack its message, or
   * for a redelivery's start.
   */
  #answer(msg: Msg, body: Uint8Array): void {
    this.#answers.push([msg, body]);
    if (this.#publishFlush.queued || this.#answerTimer !== undefined) return;
    this.#answerTimer = setTimeout(this.#sendAnswers, LAZY_FLUSH_MS);
  }

  readonly #sendAnswers = (): void => {
    if (this.#answerTimer !== undefined) {
      clearTimeout(this.#answerTimer);
      this.#answerTimer = undefined;
    }
    const answers = this.#answers;
    if (answers.length === 0) return;
    this.#answers = [];
    // Once the connection is closed the workers' reports are answered by nobody; they retry.
    if (this.#nc === undefined || this.#nc.isClosed()) return;
    for (const [msg, body] of answers) this.#respond(msg, body);
  };

  /**
   * Answers a request, never throwing: it runs in timers and subscription callbacks, where an
   * exception would kill the process (or stop nats.js reading the connection). A send that fails
   * — the connection closing, an answer over the server's `max_payload` (a batch of many refused
   * reports) — is counted in `stats.sendsFailed`; the worker gets no answer and tries again. So is
   * an answer not sent because the reply subject is no inbox (the JetStream API, a task subject:
   * see `answerable`).
   */
  #respond(msg: Msg, body: Uint8Array): void {
    if (!answerable(msg.reply)) {
      this.stats.sendsFailed++; // not an inbox: see `answerable`
      return;
    }
    try {
      msg.respond(body);
    } catch {
      this.stats.sendsFailed++;
    }
  }

  /**
   * Publishes attempt `a` (try number `tries`). `maybeStoredSince`: when the first earlier try
   * that got no answer was sent — it may have been stored, its answer lost.
   */
  #publish(a: TaskAssignment, tries: number, maybeStoredSince?: Instant): void {
    const t = this.#host?.task(a.taskId);
    if (this.#closed || t === undefined || !t.dispatched || t.attempt !== a.attempt) return;
    // A publish that may already be stored is sent again only while JetStream still
    // deduplicates its `Nats-Msg-Id`, so it is stored once at most; later a second copy could
    // run beside the first, so it is not sent, and an attempt that never left ends at its
    // timeout (then the task's next attempt, if any, is a new message). It may be stored when:
    // - an earlier try got no answer in time (`maybeStoredSince`). A try answered "not stored"
    //   (no stream listening, a JetStream error) does not count: one that never left is
    //   retried for as long as its attempt is current;
    // - it was dispatched before this process started, i.e. dispatched again after a restart
    //   (restored SCHEDULED: see `resumable`). It may be out already — in the stream, or begun
    //   by a worker whose start was lost with the old process — or not, when that process died
    //   between the commit and the publish.
    // The window has passed when either clock says so: the monotonic one (a wall clock set back
    // must not stretch it past JetStream's, or a copy sent then is stored twice) or the wall
    // clock (the monotonic one stands still while the machine is suspended; JetStream's window
    // does not). Across a restart only the wall clock spans the gap (`dispatchedAt` is stored
    // epoch ms); from the process's start the monotonic one counts too.
    const dispatchedAt = t.dispatchedAt ?? 0;
    const since: Instant | undefined =
      dispatchedAt < this.#bornAt
        ? { wall: dispatchedAt, mono: this.#bornMono - (this.#bornAt - dispatchedAt) }
        : maybeStoredSince;
    const within = this.#republishWithinMs;
    if (
      since !== undefined &&
      (performance.now() - since.mono >= within || Date.now() - since.wall >= within)
    ) {
      this.stats.publishesGivenUp++;
      return;
    }
    // While the connection is down the client holds what is published and sends it all when it
    // is back: a retry made now would leave then, however late — after the window of a try that
    // was stored before the connection dropped. So none is made until it is back (the window
    // still runs).
    if (tries > 0 && !this.#connected) {
      this.#retryLater(a, tries, maybeStoredSince, RECONNECT_POLL_MS);
      return;
    }
    const pool = t.agentId === undefined ? t.poolId : undefined;
    const subject =
      pool === undefined ? this.names.agentTasks(a.agentId) : this.names.poolTasks(pool);
    let out = this.#out.get(a.taskId);
    if (out === undefined || out.attempt !== a.attempt) {
      out = {
        attempt: a.attempt,
        lease: attemptLease(this.#secret, a.taskId, a.attempt),
        seq: undefined,
      };
      this.#out.set(a.taskId, out);
    }
    const msg: TaskMessage = {
      v: 1,
      taskId: a.taskId,
      attempt: a.attempt,
      taskType: a.taskType,
      payload: a.payload === undefined ? null : a.payload,
      deadline: a.deadline ?? null,
      timeoutSeconds: a.timeoutSeconds,
      maxAttempts: t.maxAttempts,
      agentId: pool === undefined ? a.agentId : null,
      poolId: pool ?? null,
      replyTo: this.#replyTo,
      lease: out.lease,
    };
    // A JetStream publish is a core publish with a reply subject: the stream's acknowledgement
    // (`{ stream, seq }`, or `{ error }`) comes back there.
    const h = headers();
    h.set('Nats-Msg-Id', `${a.taskId}:${a.attempt}`);
    const sentAt: Instant = { wall: Date.now(), mono: performance.now() };
    this.#inbox!.request(
      subject,
      encodeJson(msg),
      PUBLISH_TIMEOUT_MS,
      (reply, noAnswer) => {
        if (this.#closed) return;
        const ack = reply === undefined ? undefined : (decodeJson(reply.data) as { seq?: unknown });
        if (typeof ack?.seq === 'number') {
          this.stats.published++;
          // Not when the attempt ended (or was reported done) while the publish was out.
          const now = this.#out.get(a.taskId);
          if (now !== undefined && now.attempt === a.attempt) now.seq = ack.seq;
          return;
        }
        // Not stored (no stream, server restarting, no quorum), or no answer in time (stored or
        // not): try again while the attempt is current (and see the window above).
        this.stats.publishRetries++;
        const since = noAnswer === 'timeout' ? (maybeStoredSince ?? sentAt) : maybeStoredSince;
        this.#retryLater(a, tries + 1, since, Math.min(2000, 50 * 2 ** Math.min(tries, 6)));
      },
      h,
    );
  }

  #retryLater(a: TaskAssignment, tries: number, maybeStoredSince: Instant | undefined, ms: number) {
    const timer = setTimeout(() => {
      this.#timers.delete(timer);
      this.#publish(a, tries, maybeStoredSince);
    }, ms);
    this.#timers.add(timer);
  }

  abort(taskId: string, attempt: number, reason: TaskError): void {
    this.#takes.delete(taskId);
    const out = this.#out.get(taskId);
    if (out !== undefined && out.attempt === attempt) {
      this.#out.delete(taskId);
      // Best effort: the message may be taken up already (its start is then refused).
      if (out.seq !== undefined) {
        this.#jsm?.streams.deleteMessage(this.names.stream, out.seq, false).catch(() => undefined);
      }
    }
    if (this.#nc === undefined || this.#nc.isClosed()) return;
    const mac = endedMac(attemptLease(this.#secret, taskId, attempt), taskId, attempt);
    const notice: EndedNotice = {
      taskId,
      attempt,
      code: reason.code,
      message: reason.message,
      mac,
    };
    try {
      this.#nc.publish(this.names.ended(taskId), encodeJson(notice));
    } catch {
      this.stats.sendsFailed++; // best effort (the connection draining, …): see `abort`
    }
  }

  attachAgent(agentId: string): void {
    this.#attached.add(agentId);
    if (this.#jsm !== undefined) this.#ensureConsumers(agentId);
  }

  /**
   * The agent was terminated: its own durable consumer is deleted (else it stays on the server
   * for good, a directory of its file store each), after the messages left on its subject — of
   * attempts that have ended with the agent. Not its pool's consumer, which the pool's other
   * workers, on any sidecar, pull from.
   */
  detachAgent(agentId: string): void {
    this.#attached.delete(agentId);
    const name = this.names.agentConsumer(agentId);
    const made = this.#consumers.get(name);
    const jsm = this.#jsm;
    if (made === undefined || jsm === undefined) return;
    this.#consumers.delete(name);
    const stream = this.names.stream;
    const subject = this.names.agentTasks(agentId);
    void made
      .then(async () => {
        await jsm.streams.purge(stream, { filter: subject }).catch(() => undefined);
        await jsm.consumers.delete(stream, name);
      })
      .catch(() => undefined); // best effort: the server away, or the consumer gone already
  }

  /** Resolves when the consumers of every attached agent exist (for tests and start-up). */
  async consumersReady(): Promise<void> {
    await Promise.all(this.#consumers.values());
  }

  #ensureConsumers(agentId: string): void {
    this.#ensureConsumer(this.names.agentConsumer(agentId), this.names.agentTasks(agentId));
    const pool = this.#host?.agentPool(agentId);
    if (pool !== undefined) {
      this.#ensureConsumer(this.names.poolConsumer(pool), this.names.poolTasks(pool));
    }
  }

  #ensureConsumer(name: string, filter: string): void {
    if (this.#consumers.has(name)) return;
    const jsm = this.#jsm!;
    const p = jsm.consumers
      .add(this.names.stream, {
        durable_name: name,
        ack_policy: AckPolicy.Explicit,
        ack_wait: nanos(this.#options.ackWaitMs),
        // No MaxDeliver: the fabric counts attempts itself (see #accept), per task.
        filter_subject: filter,
      })
      .then(
        () => undefined,
        async (err: unknown) => {
          // Another sidecar made it (a pool's consumer is shared): fine when it exists.
          await jsm.consumers.info(this.names.stream, name).catch(() => {
            this.#consumers.delete(name);
            throw err;
          });
        },
      );
    p.catch(() => undefined);
    this.#consumers.set(name, p);
  }

  #onReport(msg: Msg): void {
    const data = decodeJson(msg.data);
    let reports: unknown[];
    if (isBatch(data)) {
      const batch = batchReports(data as Record<string, unknown>);
      if (batch === undefined) {
        this.stats.reportsRejected++;
        if (msg.reply) this.#respond(msg, encodeJson(DENY));
        return;
      }
      reports = batch;
    } else reports = [data];
    const parsed = reports.map(asReport);
    const checked = parsed.map((r, i) => this.#check(r, reports[i]));
    const answer = (list: Checked[]): void => {
      let ends: string[] | undefined;
      const answers = list.map((c, i) => {
        const a = isReport(c) ? this.#apply(c) : c;
        if (a.ok) this.stats.reportsAccepted++;
        else this.stats.reportsRejected++;
        if (a.ok && isReport(c) && (c.kind === 'complete' || c.kind === 'fail')) {
          (ends ??= []).push(c.taskId);
        }
        // Under the lease the report carried, which only the worker holding the attempt's
        // message shares: a worker acts on no answer without it (anyone may publish on its
        // reply subject). A body that is no report is refused under the lease it carries, when
        // it has one and the ids the MAC binds (its worker must not wait on: see `reportBinding`).
        const r = parsed[i] ?? reportBinding(reports[i]);
        return r === undefined ? a : signedReportAnswer(r, a);
      });
      // Queued on a microtask queued after the store's commit of what the reports changed (the
      // change queued it): a worker acks its message only once the outcome is on disk. When
      // that commit failed (the disk full) an outcome's answer is held back, the whole batch's
      // with it: the worker keeps its message and sends the report again (answered — as a
      // repeat, which changes nothing — once a commit succeeds), so a sidecar that stops before
      // then loses no outcome a worker still holds.
      const body = isBatch(data) ? { answers } : answers[0]!;
      if (!msg.reply) return;
      queueMicrotask(() => {
        const host = this.#host;
        if (ends !== undefined && ends.some((id) => host?.onDisk?.(id) === false)) {
          this.stats.answersWithheld++;
          return;
        }
        this.#answer(msg, encodeJson(body));
      });
    };
    if (checked.some((c) => c instanceof Promise)) {
      // A rejection here would end the process (unhandled): refused, counted, and unanswered
      // (the worker sends the report again).
      Promise.all(checked)
        .then(answer)
        .catch(() => {
          this.stats.reportsRejected++;
        });
    } else answer(checked as Checked[]);
  }

  /**
   * The report when it is authentic — schema, the attempt's lease, the agent's proof — else the
   * refusal: {@link missingFields} for a body that is a report but for its `take` or `counter`
   * (`body`, as it came), {@link DENY} when the message itself is not genuine (no report, a
   * wrong lease, a task forgotten), {@link notAllowed} when it is but this agent may not report on it. The
   * proof of an agent this sidecar does not know (a pool member attached through another
   * sidecar, or one terminated since) is checked by that agent's own sidecar
   * ({@link #vouchFor}), so a promise.
   */
  #check(r: Report | undefined, body: unknown): Checked | Promise<Checked> {
    if (r === undefined) {
      const missing = missingReportFields(body);
      return missing === undefined ? DENY : missingFields(missing);
    }
    // The lease its start proved, or the one this process put in the message; after a restart
    // (or for an attempt no longer out) made again.
    const known = this.#takes.get(r.taskId) ?? this.#out.get(r.taskId);
    const lease =
      known !== undefined && known.attempt === r.attempt
        ? known.lease
        : attemptLease(this.#secret, r.taskId, r.attempt);
    if (!sameProof(r.lease, lease)) return DENY;
    const t = this.#host?.task(r.taskId);
    if (t === undefined) return DENY; // a valid lease of a task forgotten since
    const hash = this.#host!.credentialHash(r.agentId);
    if (hash === undefined) {
      // An agent of another sidecar (or terminated): only a pool's tasks are shared across
      // sidecars.
      if (t.agentId !== undefined) return notAllowed(r);
      if (this.#sidecarKey === undefined) {
        // Nobody to ask: one of this sidecar's, terminated, or another sidecar's.
        return this.#host!.agentPool(r.agentId) !== undefined ? notAllowed(r) : noSidecarKey(r);
      }
      const pool = t.poolId;
      return this.#askVouch(r).then((vouched) =>
        vouched !== undefined && vouched === pool ? r : notAllowed(r),
      );
    }
    if (!sameProof(r.proof, reportProof(hash, r))) {
      return sameProof(r.proof, legacyReportProof(hash, r)) ? legacyProof(r) : notAllowed(r);
    }
    // A pinned task: only its agent. A pool's task: only an agent of that pool — whoever can
    // pull the pool's consumer holds the lease, and an agent of another pool, with its own
    // valid proof, is not one of the workers the task was queued for.
    if (t.agentId !== undefined) return t.agentId === r.agentId ? r : notAllowed(r);
    const member = t.poolId !== undefined && this.#host!.agentPool(r.agentId) === t.poolId;
    return member ? r : notAllowed(r);
  }

  /**
   * Asks the sidecars of the namespace whether the report's proof is its agent's: the agent's
   * pool when its own sidecar says so, else undefined (not proven, or no pool). Only an answer
   * whose MAC under the sidecar key covers this request's fresh nonce counts; anything else on
   * the reply subject (a client without the key answering first, a made-up "no responders") is
   * ignored while the wait lasts. Its own reply subscription, not nats.js' request machinery,
   * which would end the wait at the first answer or status.
   */
  async #askVouch(r: Report): Promise<string | undefined> {
    const nc = this.#nc;
    const key = this.#sidecarKey;
    if (nc === undefined || nc.isClosed() || key === undefined) return undefined;
    // Everything the proof covers, the content as its digest: the agent's sidecar checks the
    // proof of this very report (its take-up, nonce and content), not of its ids alone.
    const v: Vouch = vouchQuestion(r, randomBytes(18).toString('base64url'));
    const ns = this.names.namespace;
    // The connection's inbox prefix, so a server that permits only its inboxes still answers.
    const inbox = createInbox((nc as { options?: { inboxPrefix?: string } }).options?.inboxPrefix);
    return new Promise((resolve) => {
      let sub: Subscription | undefined;
      let open = true;
      const timer = setTimeout(() => finish(), VOUCH_TIMEOUT_MS);
      const finish = (poolId?: string): void => {
        if (!open) return;
        open = false;
        clearTimeout(timer);
        try {
          if (!nc.isClosed()) sub?.unsubscribe();
        } catch {
          // closed meanwhile: nothing to unsubscribe
        }
        resolve(poolId); // undefined: nobody vouched in time, or the agent's sidecar said no
      };
      try {
        sub = nc.subscribe(inbox, {
          callback: (err, m) => {
            if (err !== null) return finish();
            const a = decodeJson(m.data) as { ok?: unknown; poolId?: unknown; mac?: unknown };
            if (typeof a?.mac !== 'string' || typeof a.ok !== 'boolean') return;
            const poolId = typeof a.poolId === 'string' ? a.poolId : null;
            if (!sameProof(a.mac, vouchMac(key, ns, v, a.ok, poolId))) return; // not a sidecar's
            finish(a.ok ? (poolId ?? undefined) : undefined);
          },
        });
        nc.publish(this.names.vouch, encodeJson(v), { reply: inbox });
      } catch {
        finish(); // closed (or draining) meanwhile
      }
    });
  }

  /**
   * Answers a vouch request for an agent this sidecar knows, with the answer's MAC under the
   * sidecar key; stays silent otherwise, and always without a sidecar key.
   */
  #vouchFor(msg: Msg): void {
    const key = this.#sidecarKey;
    if (key === undefined) return;
    const v = vouchSchema.safeParse(decodeJson(msg.data));
    if (!v.success || !answerable(msg.reply)) return;
    const { agentId, kind, taskId, attempt, take, seq, delivery, reportNonce, counter } = v.data;
    const { content, proof } = v.data;
    const hash = this.#host?.credentialHash(agentId);
    if (hash === undefined) return; // another sidecar's agent (or nobody's)
    const proven = {
      kind,
      agentId,
      taskId,
      attempt,
      take,
      seq,
      nonce: reportNonce,
      counter,
      delivery,
    };
    const ok = sameProof(proof, proofOver(hash, proven, content));
    // With the agent's pool: the asking sidecar takes the report only for a task of that pool.
    const poolId = ok ? (this.#host!.agentPool(agentId) ?? null) : null;
    const mac = vouchMac(key, this.names.namespace, v.data, ok, poolId);
    msg.respond(encodeJson(ok ? { ok, poolId, mac } : { ok, mac }));
  }

  /** The stream sequence attempt `r.attempt`'s message was stored as, once its publish was acked. */
  #outSeq(r: Report): number | undefined {
    const out = this.#out.get(r.taskId);
    return out !== undefined && out.attempt === r.attempt ? out.seq : undefined;
  }

  /**
   * After a restart on a durable store (no take-up of the task in memory), the take-up of its
   * started attempt and the counter of its last progress accepted before the restart, as kept
   * with the task ({@link reportMark}); remembered as the attempt's take-up, so that a replayed
   * earlier report heard first after the restart is told from a later one. Undefined when the
   * store holds none for this attempt (no progress accepted yet, or a file written before marks).
   */
  #takeOnDisk(
    r: Report,
    t: { attempt: number; started: boolean; reportMark?: string | undefined },
  ): TakeUp | undefined {
    const mark = t.started ? parseReportMark(t.reportMark) : undefined;
    if (mark === undefined || mark.attempt !== t.attempt || mark.attempt !== r.attempt) return;
    const take = {
      attempt: mark.attempt,
      take: mark.take,
      lease: attemptLease(this.#secret, r.taskId, mark.attempt),
      seq: this.#outSeq(r),
      counter: mark.counter,
    };
    this.#takes.set(r.taskId, take);
    return take;
  }

  /** Applies an authentic report to the task's current attempt. */
  #apply(r: Report): Answer {
    const deny = DENY;
    const t = this.#host?.task(r.taskId);
    if (t === undefined) return deny;
    const stale = (): Answer => {
      const e = new TaskStateError(r.taskId, `attempt ${r.attempt} is no longer current`);
      return { ok: false, code: e.code, message: e.message };
    };
    // The same outcome of the same attempt again: applied already, its answer lost (the sidecar
    // that committed it was killed before answering, and the worker retried here). Answered ok,
    // so the worker acks its message instead of counting a refusal; nothing changes.
    if (!t.dispatched && t.attempt === r.attempt && t.ended !== undefined && t.ended === r.kind) {
      return OK;
    }
    // Not held by an agent (queued again for a retry, or finished): no attempt is current.
    if (!t.dispatched || t.attempt !== r.attempt) return stale();
    const sink = this.#sink!;
    const known = this.#takes.get(r.taskId) ?? this.#takeOnDisk(r, t);
    if (r.kind !== 'start' && known !== undefined) {
      // From a take-up other than the one that started the attempt (a copy of its message taken
      // up beside it, refused or not answered yet): not this attempt's report.
      if (known.attempt === r.attempt && known.take !== r.take) return stale();
    }
    if (r.kind !== 'start' && known !== undefined && known.attempt === r.attempt) {
      // The take-up's reports are numbered, under their proofs. The last one accepted, sent
      // again (its answer lost): ok, and nothing changes. An earlier one changes nothing either
      // — a reader of `res.>` replaying an old `progress` would set the attempt's progress back —
      // but is answered ok too: the worker's own re-send of a `progress` whose answer was lost
      // can arrive after its next one was accepted, and a refusal would fail a handler that
      // reports progress without awaiting it, for a report already overtaken. (Not a `start`:
      // its take-up's only one, answered by the start's own rules, and re-sent after a later
      // report was accepted when its first answer was lost.)
      if (r.counter === known.counter) return OK;
      if (r.counter < known.counter) {
        this.stats.reportsOutOfOrder++;
        return OK;
      }
      known.counter = r.counter;
    } else if (r.kind === 'progress' && known === undefined && t.started) {
      // Started before this process restarted on its store, which kept no take-up of it (no
      // progress applied yet, see #takeOnDisk): as for the first start heard of such an
      // attempt, the first take-up heard reporting on it is taken as its own, so its later
      // reports are numbered from here (else an earlier progress replayed after a later one set
      // the progress back for the rest of the attempt).
      this.#takes.set(r.taskId, {
        attempt: r.attempt,
        take: r.take,
        lease: r.lease,
        seq: r.seq ?? this.#outSeq(r),
        delivery: r.delivery,
        counter: r.counter,
      });
    }
    switch (r.kind) {
      case 'start': {
        // A copy of the attempt's message other than the one the attempt was stored as (or was
        // started from): a publish stored twice — a retry that went out after the stream's
        // duplicate window of a try that was stored, its answer lost. Refused (the worker
        // terminates it); the attempt goes on with its own copy, not counted lost.
        const seq =
          known !== undefined && known.attempt === r.attempt ? known.seq : this.#outSeq(r);
        if (r.seq !== undefined && seq !== undefined && r.seq !== seq) {
          this.stats.duplicatesRefused++;
          const e = new TaskStateError(
            r.taskId,
            `stream sequence ${r.seq} is a second copy of attempt ${r.attempt}'s message ` +
              `(sequence ${seq})`,
          );
          return { ok: false, code: e.code, message: e.message };
        }
        if (t.started && known === undefined) {
          // Started before this process restarted on its store, which kept no take-up of it (a
          // take-up is kept with a progress only, see #takeOnDisk): the first start it hears
          // of is taken as the attempt's own — most likely the start of the worker running it,
          // sent again because the answer was lost with the old process (a take-up after
          // AckWait needs that worker to have stopped acknowledging the message). Counting it
          // as lost instead would run the task again beside that worker. At worst, the attempt
          // of a worker that died while this sidecar was down goes uncounted.
          this.#takes.set(r.taskId, {
            attempt: r.attempt,
            take: r.take,
            lease: r.lease,
            seq: r.seq,
            delivery: r.delivery,
            counter: r.counter,
          });
          break;
        }
        if (
          t.started &&
          known!.attempt === r.attempt &&
          known!.take !== r.take &&
          r.delivery !== undefined &&
          known!.delivery !== undefined &&
          r.delivery < known!.delivery
        ) {
          // An earlier delivery of the message than the one the attempt runs from: a copy a busy
          // worker held in its pull past AckWait, while JetStream delivered it again to the
          // worker now running it — which still acknowledges it. Refused, the attempt going on;
          // the worker drops its copy without settling the message (see `Report.delivery`).
          this.stats.staleDeliveriesRefused++;
          const e = new TaskStateError(
            r.taskId,
            `delivery ${r.delivery} of attempt ${r.attempt}'s message is older than the one ` +
              `running it (delivery ${known!.delivery})`,
          );
          return { ok: false, code: STALE_DELIVERY_CODE, message: e.message };
        }
        if (t.started && (known!.attempt !== r.attempt || known!.take !== r.take)) {
          // Another take-up of a started attempt: its message went out again after AckWait, so
          // the worker that started it stopped acknowledging it (died, hung, cut off). That
          // attempt is over and counts; the task is retried as a new attempt (a new message)
          // while it has attempts left, else FAILED.
          const error = {
            code: 'FABRIC_ERR_AGENT_UNAVAILABLE',
            message: `attempt ${r.attempt} was taken up again: its worker stopped acknowledging it`,
          };
          this.abort(r.taskId, r.attempt, error);
          sink.fail(r.taskId, r.attempt, error, { retry: true });
          return stale();
        }
        if (!t.started) {
          this.#takes.set(r.taskId, {
            attempt: r.attempt,
            take: r.take,
            lease: r.lease,
            seq: r.seq ?? seq,
            delivery: r.delivery,
            counter: r.counter,
          });
          sink.started(r.taskId, r.attempt);
        }
        break;
      }
      case 'progress':
        sink.progress(r.taskId, r.attempt, r.progress, reportMark(r));
        break;
      case 'complete': {
        this.#takes.delete(r.taskId);
        this.#out.delete(r.taskId);
        const failed = sink.complete(r.taskId, r.attempt, r.result === undefined ? null : r.result);
        // The result could not be kept and the task failed instead: the worker is told so.
        if (failed) {
          return {
            ok: false,
            code: String(failed.code),
            message: `${failed.message}; the task failed instead`,
          };
        }
        break;
      }
      case 'fail':
        this.#takes.delete(r.taskId);
        this.#out.delete(r.taskId);
        sink.fail(
          r.taskId,
          r.attempt,
          r.error ?? { code: 'FABRIC_ERR_TASK_EXECUTION', message: 'failed' },
          { retry: r.retry === true },
        );
        break;
    }
    return OK;
  }

  async close(): Promise<void> {
    this.#sendAnswers(); // the outcomes are committed: answered, the workers can ack
    this.#closed = true;
    this.#waiting = [];
    for (const t of this.#timers) clearTimeout(t);
    this.#timers.clear();
    this.#sub?.unsubscribe();
    this.#sub = undefined;
    this.#vouchSub?.unsubscribe();
    this.#vouchSub = undefined;
    this.#inbox?.close();
  }
}

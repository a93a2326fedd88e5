/**
 * The worker side of the NATS transport: a remote agent that heartbeats on core NATS and pulls
 * its tasks from the JetStream work queue — its own durable consumer and, when it is in a pool,
 * the pool's (shared with every worker of the pool, on any sidecar). Nothing here talks to a
 * sidecar directly: only a NATS connection, the agent's id and its credential are needed, which
 * is also all a worker in another language needs (see the README, "NATS wire protocol").
 *
 * Per task: send in-progress acks from the pull on, report `start`, run the handler with a
 * signal of its own (aborted by the sidecar's `ended` notice, by a refused start, or by
 * {@link NatsWorker.stop}), report `complete` or `fail`, then ack. A first delivery of a message
 * runs as soon as its `start` is written out, without waiting for the answer (the round trip
 * was about half of the enqueue-to-start latency); a refusal — the attempt ended, or the
 * message is not authentic — then aborts the handler, its result is not reported, and the
 * message is terminated. A redelivery, or an attempt this worker heard had ended, runs only once
 * its start is accepted, else is terminated unrun (see `#firstDelivery`). Reports are retried until the
 * owning sidecar answers; while its sidecar is gone (no responders) a message is kept until the
 * task's timeout has passed — a sidecar restarted on its durable store accepts the reports —
 * then terminated.
 *
 * @example
 * const worker = await NatsWorker.connect({ nats: { url }, agentId, credential, poolId });
 * const stop = new AbortController();
 * await worker.run({ echo: (payload) => payload }, { signal: stop.signal });
 * await worker.close();
 *
 * @module
 */
import type { Consumer, ConsumerMessages, JsMsg } from '@nats-io/jetstream';
import { jetstream } from '@nats-io/jetstream';
import type { NatsConnection, Subscription } from '@nats-io/transport-node';
import { InvalidArgumentError, PermissionDeniedError } from '../../errors.js';
import type { TaskHandlerContext } from '../../scheduler/executor.js';
import { toTaskError } from '../../scheduler/executor.js';
import { checkNumber, checkString } from '../../validate.js';
import { connectNats } from './nats-connection.js';
import type { NatsOptions, NatsOptionsInput } from './nats-options.js';
import { DEFAULT_REPORT_TIMEOUT_MS, parseNatsOptions } from './nats-options.js';
import type { NatsNames } from './subjects.js';
import { natsNames } from './subjects.js';
import type { Answer, Report, ReportKind } from './wire.js';
import { asEndedNotice, decodeJson, endedNoticeGenuine } from './wire.js';
import { NatsAgentLink, notAllowed, quietly, staleCopy, terminate } from './nats-agent-link.js';

/** Options of {@link NatsWorker.connect}. */
export interface NatsWorkerOptions {
  /** The NATS server and namespace (the same as the sidecar's `nats:`). */
  nats: NatsOptionsInput;
  /** This agent's id (from `spawn`). */
  agentId: string;
  /** This agent's credential; it never leaves the process (only HMAC proofs do). */
  credential: string;
  /** The agent's pool: its worker also pulls the pool's tasks. */
  poolId?: string;
  /**
   * Handlers run at once. A slot is free again once its handler returns: reporting the outcome
   * and acking the message do not hold it (but a worker holds at most twice as many tasks taken
   * up, running or waiting for their outcome's answer). @default 4
   */
  concurrency?: number;
  /** Heartbeat period. @default 10 */
  heartbeatSeconds?: number;
  /** How long one report waits for the sidecar's answer before it is sent again. @default 5000 */
  reportTimeoutMs?: number;
  /**
   * Begin a surely-first delivery once its `start` is written, without waiting for the answer
   * (saves a round trip per task). Until the answer comes, the worker cannot tell a forged task
   * message from a real one: set `false` where clients other than sidecars can publish on the
   * namespace's task subjects, and every task then runs only after its start is accepted.
   * @default true
   */
  startBeforeAnswer?: boolean;
}

/** Context of a {@link NatsTaskHandler}: the task's own signal, and progress reports. */
export interface NatsTaskContext extends TaskHandlerContext {
  /** Reports progress of this attempt to the sidecar that scheduled it. */
  progress(progress: unknown): Promise<void>;
}

/** A handler of one task type: receives the payload, returns the result (or throws). */
export type NatsTaskHandler = (payload: unknown, context: NatsTaskContext) => unknown;

/** Options of {@link NatsWorker.run}. */
export interface NatsRunOptions {
  /** Stops the worker: no new tasks; running ones finish (their signal is not aborted). */
  signal?: AbortSignal;
}

/** Counts of what the worker did. */
export interface NatsWorkerStats {
  started: number;
  completed: number;
  failed: number;
  refused: number;
}

/**
 * A running attempt's abort: the `AbortController` is made only when the handler reads its
 * signal (most never do), already aborted when the attempt ended before that.
 */
class Running {
  aborted = false;
  /** The lease of the attempt's message: an ended notice must carry a MAC under it. */
  readonly lease: string;
  #reason: unknown;
  #controller: AbortController | undefined;

  constructor(lease: string) {
    this.lease = lease;
  }

  get signal(): AbortSignal {
    if (this.#controller === undefined) {
      this.#controller = new AbortController();
      if (this.aborted) this.#controller.abort(this.#reason);
    }
    return this.#controller.signal;
  }

  abort(reason: unknown): void {
    if (this.aborted) return;
    this.aborted = true;
    this.#reason = reason;
    this.#controller?.abort(reason);
  }
}

/** How many ended attempts a worker remembers (see `NatsWorker.#ended`). */
const ENDED_MEMORY = 4096;

/** Why a start was refused, for the aborted handler's signal. */
function refusedReason(a: Answer | undefined): string {
  if (a === undefined)
    return 'FABRIC_ERR_NATS_UNAVAILABLE: the sidecar that scheduled the task does not answer';
  return a.ok ? 'accepted' : `${a.code}: ${a.message}`;
}

/** A connected NATS worker. */
export class NatsWorker {
  readonly agentId: string;
  readonly stats: NatsWorkerStats = { started: 0, completed: 0, failed: 0, refused: 0 };
  readonly #nc: NatsConnection;
  readonly #ownsConnection: boolean;
  readonly #names: NatsNames;
  readonly #link: NatsAgentLink;
  readonly #poolId: string | undefined;
  readonly #concurrency: number;
  readonly #heartbeatMs: number;
  readonly #reportTimeoutMs: number;
  readonly #startBeforeAnswer: boolean;
  /** Attempts (`taskId:attempt`) held here from their start on → their aborts. */
  readonly #running = new Map<string, Set<Running>>();
  /**
   * Attempts (`taskId:attempt`) the sidecars said they ended that were not running here, the
   * last {@link ENDED_MEMORY}: such an attempt's message, pulled later (a task cancelled while
   * queued), waits for its start's answer — a refusal — instead of running at once.
   */
  readonly #ended = new Set<string>();
  /**
   * Messages held from their take-up to their end, by stream sequence: kept alive by one timer
   * ({@link run}).
   */
  readonly #held = new Map<number, JsMsg>();
  #closed = false;
  /**
   * Set when the fabric refused a start because this agent may not report on the task
   * (terminated, of another pool): {@link run} stops pulling and rejects with it.
   */
  #denied: PermissionDeniedError | undefined;
  /** Stops the running {@link run}'s pulls; resolves once they are closed (set while it runs). */
  #halt: (() => Promise<unknown>) | undefined;

  private constructor(
    nc: NatsConnection,
    owns: boolean,
    nats: NatsOptions,
    options: NatsWorkerOptions,
  ) {
    this.#nc = nc;
    this.#ownsConnection = owns;
    this.#names = natsNames(nats.namespace);
    this.agentId = checkString('options.agentId', options.agentId);
    this.#poolId =
      options.poolId === undefined ? undefined : checkString('options.poolId', options.poolId);
    this.#concurrency = checkNumber('options.concurrency', options.concurrency ?? 4, 'positiveInt');
    this.#heartbeatMs =
      checkNumber('options.heartbeatSeconds', options.heartbeatSeconds ?? 10, 'positiveNumber') *
      1000;
    this.#reportTimeoutMs = checkNumber(
      'options.reportTimeoutMs',
      options.reportTimeoutMs ?? DEFAULT_REPORT_TIMEOUT_MS,
      'positiveInt',
    );
    if (options.startBeforeAnswer !== undefined && typeof options.startBeforeAnswer !== 'boolean') {
      throw new InvalidArgumentError('options.startBeforeAnswer', 'must be a boolean');
    }
    this.#startBeforeAnswer = options.startBeforeAnswer ?? true;
    this.#link = new NatsAgentLink(
      nc,
      this.#names,
      this.agentId,
      checkString('options.credential', options.credential, 4096),
      this.#reportTimeoutMs,
    );
  }

  /**
   * Connects to NATS (or uses `connection`, which the worker then does not close).
   * @throws NatsUnavailableError naming the URL; ConfigError / InvalidArgumentError for options.
   */
  static async connect(
    options: NatsWorkerOptions,
    connection?: NatsConnection,
  ): Promise<NatsWorker> {
    if (options === null || typeof options !== 'object') {
      throw new InvalidArgumentError('options', 'must be an object');
    }
    const nats = parseNatsOptions(options.nats, 'options.nats');
    const nc = connection ?? (await connectNats(nats, `agent-fabric worker ${options.agentId}`));
    try {
      return new NatsWorker(nc, connection === undefined, nats, options);
    } catch (err) {
      if (connection === undefined) await nc.close();
      throw err;
    }
  }

  /**
   * Sends one heartbeat and returns the sidecar's answer (`{ ok, status, poolId }` or an error
   * code): the first whose MAC is right, whatever else arrives on the reply subject.
   * @throws NatsUnavailableError when none comes within `reportTimeoutMs` (no sidecar knows the
   *   agent, or its credential is wrong: the refusal's MAC cannot be checked with it)
   */
  heartbeat(): Promise<Answer> {
    return this.#link.heartbeat();
  }

  /**
   * Heartbeats and runs tasks with `handlers` (by task type) until `options.signal` aborts;
   * then stops pulling, lets running tasks finish, and resolves.
   * @throws InvalidArgumentError (before pulling) when the agent's sidecar says the agent is not
   *   in `options.poolId`.
   */
  async run(
    handlers: Readonly<Record<string, NatsTaskHandler>>,
    options: NatsRunOptions = {},
  ): Promise<void> {
    const stop = options.signal;
    if (stop?.aborted) return;
    if (this.#poolId !== undefined) await this.#link.checkPool(this.#poolId);
    const js = jetstream(this.#nc);
    const consumers: Consumer[] = [
      await js.consumers.get(this.#names.stream, this.#names.agentConsumer(this.agentId)),
    ];
    if (this.#poolId !== undefined) {
      consumers.push(
        await js.consumers.get(this.#names.stream, this.#names.poolConsumer(this.#poolId)),
      );
    }
    const ackWaitMs = Math.max(
      100,
      Number((await consumers[0]!.info(true)).config.ack_wait ?? 30e9) / 1e6,
    );
    // Anyone who may publish on `ended.*` can send anything there, and an exception thrown out
    // of a subscription callback would stop nats.js reading the connection: this one checks the
    // notice (and that it came on its own task's subject) and throws nothing.
    const ended: Subscription = this.#nc.subscribe(this.#names.allEnded, {
      callback: (err, msg) => {
        try {
          if (err !== null) return;
          const n = asEndedNotice(decodeJson(msg.data));
          if (n === undefined || msg.subject !== this.#names.ended(n.taskId)) return;
          const key = `${n.taskId}:${n.attempt}`;
          const runs = this.#running.get(key);
          // A running attempt stops only on a notice under its lease; one not running here
          // cannot be checked and only makes its message wait for the start's answer.
          if (runs === undefined) this.#noteEnded(key);
          else {
            for (const c of runs) {
              if (endedNoticeGenuine(n, c.lease)) c.abort(new Error(`${n.code}: ${n.message}`));
            }
          }
        } catch {
          // not a notice: ignored
        }
      },
    });
    this.#link.publishHeartbeat();
    const hb = setInterval(() => this.#link.publishHeartbeat(), this.#heartbeatMs);
    // In-progress acks for every held message, every third of AckWait (one timer for all).
    const working = setInterval(
      () => {
        for (const m of this.#held.values()) quietly(() => m.working());
      },
      Math.max(50, ackWaitMs / 3),
    );
    // A slot is taken at a message's take-up and given back once its handler has returned: the
    // outcome's report, its answer and the ack do not hold it (they waited on the report timers
    // of both sides, ~2 ms or more, while the next task sat pulled and unstarted). Taken-up tasks
    // are bounded apart, running or past their handler (`finishing`): at most twice
    // `concurrency`, so a sidecar that answers slowly holds back new take-ups instead of letting
    // held messages pile up.
    let free = this.#concurrency;
    let finishing = 0;
    /** Tasks taken up and not settled: running, or past their handler (`finishing`). */
    const held = (): number => this.#concurrency - free + finishing;
    let wake: (() => void) | undefined;
    const wakeUp = (): void => {
      const w = wake;
      wake = undefined;
      w?.();
    };
    const inFlight = new Set<Promise<void>>();
    const iterators: ConsumerMessages[] = [];
    let halted = false;
    const stopped = (): boolean => halted || stop?.aborted === true;
    const onStop = (): void => {
      for (const it of iterators) void it.close();
      wake?.();
    };
    // Halted (the fabric refused this agent): pulled messages go back only once the pulls are
    // closed, so that none is delivered to them again.
    let closing: Promise<unknown> | undefined;
    const giveBackLater: JsMsg[] = [];
    this.#denied = undefined;
    this.#halt = () => {
      halted = true;
      wake?.();
      return (closing ??= Promise.all(iterators.map((it) => it.close().catch(() => undefined))));
    };
    stop?.addEventListener('abort', onStop, { once: true });
    try {
      await Promise.all(
        consumers.map(async (c) => {
          const messages = await c.consume({ max_messages: this.#concurrency });
          iterators.push(messages);
          if (stopped()) void messages.close();
          for await (const m of messages) {
            // A message this worker holds, delivered again: it waited here (pulled, its slot
            // not free yet) past AckWait, so JetStream sent it out again, to this worker's next
            // pull, which it reaches only once the first delivery is taken up. One take-up runs
            // it: acks and in-progress acks go by stream sequence, so the held delivery's cover
            // this one. (Taken up twice, the sidecar would count the attempt lost and the task
            // would run again.)
            if (this.#held.has(m.seq)) continue;
            while ((free === 0 || held() >= 2 * this.#concurrency) && !stopped()) {
              await new Promise<void>((r) => (wake = r));
            }
            if (stopped()) {
              // Pulled but not started: back to the queue at once, for another worker.
              if (halted) giveBackLater.push(m);
              else m.nak();
              continue;
            }
            free--;
            let slot = true;
            const handlerDone = (): void => {
              if (!slot) return;
              slot = false;
              free++;
              finishing++;
              wakeUp();
            };
            const p = this.#runOne(m, handlers, ackWaitMs, handlerDone).finally(() => {
              if (slot) {
                slot = false;
                free++;
              } else finishing--;
              inFlight.delete(p);
              wakeUp();
            });
            inFlight.add(p);
          }
        }),
      );
      await Promise.all(inFlight);
      if (closing !== undefined) {
        await closing;
        for (const m of giveBackLater) m.nak();
      }
    } finally {
      this.#halt = undefined;
      stop?.removeEventListener('abort', onStop);
      clearInterval(hb);
      clearInterval(working);
      ended.unsubscribe();
    }
    if (this.#denied !== undefined) throw this.#denied;
  }

  /**
   * The fabric refused a start of this agent on a genuine message (`notAllowed`): the message
   * is given back for the task's own workers, and the worker stops pulling.
   */
  async #giveBack(m: JsMsg, answer: Answer | undefined): Promise<void> {
    this.#denied ??= new PermissionDeniedError(
      `the fabric takes no reports from agent ${this.agentId} on its tasks ` +
        `(terminated, or not in the pool): ${(answer as { message?: string }).message ?? ''}`,
    );
    await this.#halt?.();
    m.nak();
  }

  #noteEnded(key: string): void {
    this.#ended.add(key);
    if (this.#ended.size > ENDED_MEMORY) {
      this.#ended.delete(this.#ended.values().next().value!);
    }
  }

  /**
   * True when `m` is surely the first delivery of its message: JetStream says so and it was
   * stored less than half an AckWait ago. A message redelivered after AckWait (its first worker
   * presumably dead) was stored at least an AckWait ago; the delivery count alone is not trusted
   * (nats-server 2.9 can deliver a message again with a count of 1: nats-server#5305). The age is read
   * on this machine's clock against the server's: a clock behind the server's by more than half
   * an AckWait could take a redelivery for a first one (then the handler runs until the
   * sidecar's refusal of its start aborts it, and its result is refused as stale).
   */
  #firstDelivery(m: JsMsg, ackWaitMs: number): boolean {
    const info = m.info;
    if (info.deliveryCount !== 1) return false;
    const age = Date.now() - Number(info.timestampNanos) / 1e6;
    return age < ackWaitMs / 2;
  }

  /**
   * Takes up, runs and reports one pulled message; `handlerDone` is called once its handler has
   * returned (or thrown), before the outcome is reported (its slot is then free: see {@link run}).
   */
  async #runOne(
    m: JsMsg,
    handlers: Readonly<Record<string, NatsTaskHandler>>,
    ackWaitMs: number,
    handlerDone: () => void,
  ): Promise<void> {
    this.#held.set(m.seq, m);
    const task = this.#link.parse(m);
    if (task === undefined) {
      this.#held.delete(m.seq);
      this.stats.refused++;
      return;
    }
    const running = new Running(task.lease);
    const key = `${task.taskId}:${task.attempt}`;
    // Running as far as ended notices go from before its start: a genuine notice that comes
    // while the start's answer is awaited (the sidecar ended the attempt before its answer left)
    // stops it too, where it was only noted and the handler ran to its end.
    // A set: two copies of one message (see `NatsExecutor`) may be held here at once.
    const runs = this.#running.get(key) ?? new Set<Running>();
    this.#running.set(key, runs.add(running));
    const forget = (): void => {
      runs.delete(running);
      if (runs.size === 0 && this.#running.get(key) === runs) this.#running.delete(key);
    };
    const starting = this.#link.start(task);
    let accepted: Promise<boolean>;
    /** The refusal of the start when this agent may not report on the task (first delivery). */
    let denial: Answer | undefined;
    /** The start was refused as a stale copy ({@link staleCopy}): dropped, never settled. */
    let stale = false;
    if (
      this.#startBeforeAnswer &&
      !this.#ended.has(`${task.taskId}:${task.attempt}`) &&
      this.#firstDelivery(m, ackWaitMs)
    ) {
      // A first delivery runs once its start is written out, without waiting for the answer:
      // a refusal (the attempt ended while the message was queued) aborts the handler's signal
      // and the result is not reported. The start is out before the handler runs, so a worker
      // the handler kills has started the attempt as far as the sidecar knows — the message's
      // next take-up then counts it as lost (see `NatsExecutor`).
      await starting.sent;
      if (this.#closed) {
        this.#held.delete(m.seq); // not run; redelivered after AckWait
        forget();
        return;
      }
      accepted = starting.answer.then((a) => {
        if (notAllowed(a)) denial = a;
        stale = staleCopy(a);
        if (a === undefined || !a.ok) running.abort(new Error(refusedReason(a)));
        return a !== undefined && a.ok;
      });
    } else {
      // A redelivery (or one that may be): its attempt may have been started by a worker now
      // gone, which only the sidecar knows — run it only once the start is accepted.
      const a = await starting.answer;
      if (a === undefined || !a.ok) {
        if (notAllowed(a)) await this.#giveBack(m, a);
        // A stale copy: another worker runs a later delivery of the message (an ack or a term
        // of this one would settle it, a nak have it delivered again), so it is dropped.
        else if (!staleCopy(a)) terminate(m); // the attempt is over, or its sidecar is gone
        this.#held.delete(m.seq);
        forget();
        this.stats.refused++;
        return;
      }
      accepted = Promise.resolve(true);
    }
    this.stats.started++;
    try {
      const handler = handlers[task.taskType];
      let outcome: Omit<Partial<Report>, 'kind'>;
      try {
        if (handler === undefined) {
          throw Object.assign(new Error(`no handler for task type ${task.taskType}`), {
            code: 'FABRIC_ERR_HANDLER_NOT_FOUND',
          });
        }
        running.signal.throwIfAborted(); // ended before it began: not run
        const result: unknown = await handler(task.payload, {
          taskId: task.taskId,
          attempt: task.attempt,
          agentId: this.agentId,
          taskType: task.taskType,
          get signal() {
            return running.signal;
          },
          progress: async (progress) => {
            await this.#link.report(task, 'progress', { progress });
          },
        });
        outcome = { result: result === undefined ? null : result };
      } catch (err) {
        outcome = { error: toTaskError(err) };
      }
      handlerDone();
      // Closed: the worker is gone as far as anyone knows; the message is redelivered.
      if (this.#closed) return;
      if (running.aborted) {
        if (!(await accepted)) this.stats.refused++;
        if (denial !== undefined) await this.#giveBack(m, denial);
        else if (!stale) terminate(m); // the fabric ended the attempt
        return;
      }
      // Sent after the start (same subject, in order), so the sidecar applies the start first;
      // a refused start makes this report stale.
      const kind: ReportKind = outcome.error === undefined ? 'complete' : 'fail';
      const answer = await this.#link.report(task, kind, outcome);
      if (this.#closed) return; // redelivered after AckWait
      // An outcome the sidecar accepted makes the attempt this worker's whatever its start's
      // answer says: while the sidecar was away (restarting) the start and this report were
      // retried each on its own timer, so the start may have arrived after the outcome was
      // applied and been answered stale. Otherwise a refused start (or one never answered)
      // means the attempt was not this worker's.
      if (answer?.ok !== true && !(await accepted)) {
        this.stats.refused++;
        if (denial !== undefined) await this.#giveBack(m, denial);
        else if (!stale) terminate(m);
        return;
      }
      if (answer === undefined) {
        terminate(m); // its sidecar is gone for longer than the task's timeout
        return;
      }
      if (!answer.ok) {
        // The outcome was refused though the start was accepted (`FABRIC_ERR_TASK_STATE`: the
        // attempt ended meanwhile — cancelled, timed out, taken over): it counts for nothing.
        this.stats.refused++;
        this.#link.ack(m);
        return;
      }
      if (kind === 'complete') this.stats.completed++;
      else this.stats.failed++;
      this.#link.ack(m); // with the link's next flush of reports, in one write
    } finally {
      this.#held.delete(m.seq);
      forget();
    }
  }

  /** Closes the connection (when the worker opened it). */
  async close(): Promise<void> {
    this.#closed = true;
    for (const runs of this.#running.values()) {
      for (const c of runs) c.abort(new Error('worker closed'));
    }
    await this.#link.close(this.#ownsConnection);
  }
}

/**
 * `FabricWorker` over NATS: a {@link WorkerTransport} whose claims pull from the agent's (and
 * its pool's) JetStream consumers and whose reports are the signed requests of `wire.ts`, so
 * `FabricWorker.withTransport(await NatsWorkerTransport.connect(…))` runs with the same API and
 * run loop (per-task signals, stop hand-back) as over MCP.
 *
 * What NATS does not carry: hooks (`hookFor` finds none; the hook calls and `recordUsage` are
 * refused with `FABRIC_ERR_INVALID_ARGUMENT`) and tool calls (no `callTool`). Ended-task notices
 * (`fabric.<ns>.ended.<taskId>`) arrive by push and are handed out with the next heartbeat or
 * progress answer, as the transport contract says.
 *
 * @module
 */
import type { Consumer, ConsumerMessages, JsMsg } from '@nats-io/jetstream';
import { jetstream } from '@nats-io/jetstream';
import type { NatsConnection, Subscription } from '@nats-io/transport-node';
import {
  AgentUnavailableError,
  InvalidArgumentError,
  PermissionDeniedError,
  TaskNotFoundError,
} from '../../errors.js';
import type { TaskAssignment } from '../../task.js';
import { checkString } from '../../validate.js';
import type {
  HeldTask,
  WorkerEndedTask,
  WorkerFailure,
  WorkerHook,
  WorkerReportAnswer,
  WorkerTransport,
} from '../../worker/worker-transport.js';
import { RemoteFabricError } from '../../worker/worker-transport.js';
import { NatsAgentLink, noAnswerOf, quietly, terminate } from './nats-agent-link.js';
import { connectNats } from './nats-connection.js';
import type { NatsOptionsInput } from './nats-options.js';
import { DEFAULT_REPORT_TIMEOUT_MS, parseNatsOptions } from './nats-options.js';
import { natsNames } from './subjects.js';
import type { Answer, TaskMessage } from './wire.js';
import { asEndedNotice, asTaskMessage, decodeJson, endedNoticeGenuine } from './wire.js';

/** Options of {@link NatsWorkerTransport.connect}. */
export interface NatsWorkerTransportOptions {
  nats: NatsOptionsInput;
  agentId: string;
  credential: string;
  /** The agent's pool: claims also pull the pool's tasks. */
  poolId?: string;
  /** @default 5000 */
  reportTimeoutMs?: number;
}

interface Held {
  readonly m: JsMsg;
  readonly task: TaskMessage;
  readonly working: NodeJS.Timeout;
}

function refused(answer: Answer | undefined, agentId?: string): RemoteFabricError {
  if (answer === undefined) {
    return new RemoteFabricError(
      'FABRIC_ERR_NATS_UNAVAILABLE',
      'unavailable',
      'the sidecar that scheduled the task does not answer',
    );
  }
  if (answer.ok) throw new Error('not a refusal');
  const kind =
    answer.code === 'FABRIC_ERR_UNAUTHENTICATED'
      ? 'unauthenticated'
      : answer.code === 'FABRIC_ERR_PERMISSION_DENIED'
        ? 'permission_denied'
        : 'failed_precondition';
  const details = agentId === undefined ? undefined : unavailableDetails(answer, agentId);
  return new RemoteFabricError(answer.code, kind, answer.message, details);
}

/**
 * The details of the sidecar's `FABRIC_ERR_AGENT_UNAVAILABLE` refusal of a heartbeat: the agent
 * and its status, as the error has them over MCP — the status from the answer's `status` field,
 * which its MAC covers (not from the message's words). A worker acts on them: `TERMINATED`
 * aborts its running handlers (their attempts were ended, and the ended notices it was pushed
 * reach it with no heartbeat now), `DRAINING` does not.
 */
function unavailableDetails(
  answer: Answer & { ok: false },
  agentId: string,
): Record<string, unknown> | undefined {
  if (answer.code !== AgentUnavailableError.code || answer.status === undefined) return undefined;
  return { agentId, status: answer.status };
}

function notOverNats(what: string): RemoteFabricError {
  const e = new InvalidArgumentError(what, 'is not carried over NATS (use the MCP transport)');
  return new RemoteFabricError(e.code, e.kind, e.message);
}

/** {@link WorkerTransport} over NATS; see the module comment. */
export class NatsWorkerTransport implements WorkerTransport {
  readonly #link: NatsAgentLink;
  readonly #owns: boolean;
  readonly #consumers: Consumer[];
  readonly #ackWaitMs: number;
  readonly #iterators: ConsumerMessages[] = [];
  /** Pulled, not yet claimed (each keeps its AckWait alive with in-progress acks). */
  readonly #buffer: { m: JsMsg; working: NodeJS.Timeout }[] = [];
  #wake: (() => void) | undefined;
  readonly #held = new Map<string, Held>();
  /**
   * The attempts (`taskId:attempt`) whose start's answer is awaited, with their lease: a genuine
   * notice that comes meanwhile (the sidecar ended the attempt before its answer left) marks it
   * ended, and it is not run.
   */
  readonly #starting = new Map<string, { lease: string; ended: boolean }>();
  #ended: WorkerEndedTask[] = [];
  readonly #endedSub: Subscription;
  #consuming = false;
  /** The fabric takes no reports from this agent (terminated, another pool): claims fail. */
  #denied: RemoteFabricError | undefined;
  /** Errors of reports no sidecar answered (see {@link unreachable}). */
  readonly #unanswered = new WeakSet<RemoteFabricError>();

  private constructor(
    link: NatsAgentLink,
    owns: boolean,
    consumers: Consumer[],
    ackWaitMs: number,
  ) {
    this.#link = link;
    this.#owns = owns;
    this.#consumers = consumers;
    this.#ackWaitMs = ackWaitMs;
    // Anyone who may publish on `ended.*` can send anything there, and an exception thrown out
    // of a subscription callback would stop nats.js reading the connection: this one checks the
    // notice (and that it came on its own task's subject) and throws nothing.
    this.#endedSub = link.nc.subscribe(link.names.allEnded, {
      callback: (err, msg) => {
        try {
          if (err !== null) return;
          const n = asEndedNotice(decodeJson(msg.data));
          if (n === undefined || msg.subject !== link.names.ended(n.taskId)) return;
          const key = `${n.taskId}:${n.attempt}`;
          const h = this.#held.get(key);
          if (h === undefined) {
            const s = this.#starting.get(key);
            if (s !== undefined && endedNoticeGenuine(n, s.lease)) s.ended = true;
            return;
          }
          if (!endedNoticeGenuine(n, h.task.lease)) return;
          this.#ended.push({
            taskId: n.taskId,
            attempt: n.attempt,
            code: n.code,
            message: n.message,
          });
        } catch {
          // not a notice: ignored
        }
      },
    });
  }

  /**
   * Connects (or uses `connection`, left open by {@link close}) and binds the consumers.
   * @throws NatsUnavailableError; the JetStream error when the agent's consumer does not exist
   *   (the agent is not a `nats` agent of a sidecar of this namespace); InvalidArgumentError when
   *   its sidecar says the agent is not in `poolId`.
   */
  static async connect(
    options: NatsWorkerTransportOptions,
    connection?: NatsConnection,
  ): Promise<NatsWorkerTransport> {
    if (options === null || typeof options !== 'object') {
      throw new InvalidArgumentError('options', 'must be an object');
    }
    const nats = parseNatsOptions(options.nats, 'options.nats');
    const agentId = checkString('options.agentId', options.agentId);
    const credential = checkString('options.credential', options.credential, 4096);
    const nc = connection ?? (await connectNats(nats, `agent-fabric worker ${agentId}`));
    let link: NatsAgentLink | undefined;
    try {
      const names = natsNames(nats.namespace);
      link = new NatsAgentLink(
        nc,
        names,
        agentId,
        credential,
        options.reportTimeoutMs ?? DEFAULT_REPORT_TIMEOUT_MS,
      );
      const js = jetstream(nc);
      const consumers = [await js.consumers.get(names.stream, names.agentConsumer(agentId))];
      if (options.poolId !== undefined) {
        const pool = checkString('options.poolId', options.poolId);
        await link.checkPool(pool);
        consumers.push(await js.consumers.get(names.stream, names.poolConsumer(pool)));
      }
      const info = await consumers[0]!.info(true);
      const ackWaitMs = Math.max(100, Number(info.config.ack_wait ?? 30e9) / 1e6);
      return new NatsWorkerTransport(link, connection === undefined, consumers, ackWaitMs);
    } catch (err) {
      // Its reply subscription off a connection the caller keeps; an owned one is closed.
      if (link !== undefined) await link.close(connection === undefined);
      else if (connection === undefined) await nc.close();
      throw err;
    }
  }

  /**
   * True when `err` (from one of its calls) says no sidecar answered, which `FabricWorker.run`
   * waits out: a heartbeat nobody listens for (`no responders`: no sidecar of the namespace is
   * up), or one nothing came back to in time (other sidecars of the namespace listen, but the
   * agent's own is away — {@link connect} found the agent's consumer, so the agent is one of the
   * namespace's); a task's report no sidecar answered before the task's timeout passed (the
   * attempt is over and the message dropped: the report is not sent again). Not a heartbeat
   * refused under a MAC this credential cannot check before any of its heartbeats was answered
   * (`unverified`: a sidecar knows the agent under another credential — a wrong one — which
   * ends `run()`); once one was answered the credential is known good, and such a refusal is a
   * forgery, waited out as silence. Not a closed transport, nor any answer.
   */
  unreachable(err: unknown): boolean {
    if (this.#link.closed) return false;
    if (err instanceof RemoteFabricError) return this.#unanswered.has(err);
    const why = noAnswerOf(err);
    return (
      why === 'no-responders' || why === 'timeout' || (why === 'unverified' && this.#link.answered)
    );
  }

  async heartbeat(): Promise<WorkerReportAnswer> {
    const answer = await this.#link.heartbeat();
    if (!answer.ok) throw refused(answer, this.#link.agentId);
    return { ...answer, endedTasks: this.#takeEnded() };
  }

  /** {@link refused} for a report no sidecar answered (see {@link unreachable}). */
  #notAnswered(): RemoteFabricError {
    const err = refused(undefined);
    if (!this.#link.closed) this.#unanswered.add(err);
    return err;
  }

  #takeEnded(): WorkerEndedTask[] {
    const out = this.#ended;
    this.#ended = [];
    return out;
  }

  #startConsuming(): void {
    if (this.#consuming) return;
    this.#consuming = true;
    for (const c of this.#consumers) {
      void (async () => {
        const messages = await c.consume({ max_messages: 1 });
        this.#iterators.push(messages);
        for await (const m of messages) {
          if (this.#denied !== undefined) {
            m.nak(); // pulled as the pull was closing: back for the task's own workers
            continue;
          }
          const working = setInterval(
            () => quietly(() => m.working()),
            Math.max(50, this.#ackWaitMs / 3),
          );
          this.#buffer.push({ m, working });
          const w = this.#wake;
          this.#wake = undefined;
          w?.();
        }
      })().catch(() => undefined);
    }
  }

  async claim(waitSeconds: number): Promise<TaskAssignment | null> {
    if (this.#denied !== undefined) throw this.#denied;
    this.#startConsuming();
    // Elapsed time: a wall clock set back must not make the wait as long as the step.
    const deadline = performance.now() + waitSeconds * 1000;
    for (;;) {
      const next = this.#buffer.shift();
      if (next !== undefined) {
        const a = await this.#take(next.m, next.working);
        if (a !== undefined) return a;
        continue;
      }
      const left = deadline - performance.now();
      if (left <= 0 || this.#link.closed) return null;
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.#wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
  }

  /** Reports `start` for a pulled message; the assignment, or undefined when it is not to run. */
  async #take(m: JsMsg, working: NodeJS.Timeout): Promise<TaskAssignment | undefined> {
    let task: TaskMessage | undefined;
    // Read here too (once more by the link): its lease checks the notices that come meanwhile.
    const message = asTaskMessage(decodeJson(m.data));
    const key = message === undefined ? '' : `${message.taskId}:${message.attempt}`;
    const starting = { lease: message?.lease ?? '', ended: false };
    if (key !== '') this.#starting.set(key, starting);
    try {
      task = await this.#link.begin(m);
    } catch (err) {
      if (this.#starting.get(key) === starting) this.#starting.delete(key);
      clearInterval(working);
      if (!(err instanceof PermissionDeniedError)) throw err;
      // This agent may not report on it (terminated, another pool): the message went back.
      // So does every other it pulled, and it pulls no more; this claim and every later one
      // fail, and with them the worker's run().
      this.#denied = new RemoteFabricError(err.code, 'permission_denied', err.message);
      // Pulls closed first: a message given back while one is open could be delivered to it.
      await Promise.all(this.#iterators.map((it) => it.close().catch(() => undefined)));
      m.nak();
      for (const b of this.#buffer.splice(0)) {
        clearInterval(b.working);
        b.m.nak();
      }
      throw this.#denied;
    }
    if (this.#starting.get(key) === starting) this.#starting.delete(key);
    if (task === undefined) {
      clearInterval(working);
      return undefined;
    }
    if (starting.ended) {
      // The sidecar ended the attempt before its start's answer left: not run.
      clearInterval(working);
      terminate(m);
      return undefined;
    }
    this.#held.set(`${task.taskId}:${task.attempt}`, { m, task, working });
    return {
      taskId: task.taskId,
      attempt: task.attempt,
      agentId: this.#link.agentId,
      taskType: task.taskType,
      payload: task.payload,
      deadline: task.deadline ?? undefined,
      timeoutSeconds: task.timeoutSeconds,
    };
  }

  #heldTask(task: HeldTask): Held {
    const h = this.#held.get(`${task.taskId}:${task.attempt}`);
    if (h === undefined) {
      const e = new TaskNotFoundError(task.taskId);
      throw new RemoteFabricError(e.code, e.kind, e.message);
    }
    return h;
  }

  async #finish(task: HeldTask, kind: 'complete' | 'fail', extra: object): Promise<unknown> {
    const h = this.#heldTask(task);
    const answer = await this.#link.report(h.task, kind, extra);
    clearInterval(h.working);
    this.#held.delete(`${task.taskId}:${task.attempt}`);
    if (answer === undefined) {
      if (!this.#link.closed) terminate(h.m); // its sidecar is gone
      throw this.#notAnswered();
    }
    h.m.ack();
    if (!answer.ok) throw refused(answer);
    return answer;
  }

  complete(task: HeldTask, result: unknown): Promise<unknown> {
    return this.#finish(task, 'complete', { result: result === undefined ? null : result });
  }

  fail(task: HeldTask, error: WorkerFailure): Promise<unknown> {
    return this.#finish(task, 'fail', {
      error: { code: error.code ?? 'FABRIC_ERR_TASK_EXECUTION', message: error.message },
    });
  }

  /** Gives the message back to the stream at once (redelivered, same attempt). */
  async release(task: HeldTask): Promise<boolean> {
    const h = this.#held.get(`${task.taskId}:${task.attempt}`);
    if (h === undefined) return false;
    clearInterval(h.working);
    this.#held.delete(`${task.taskId}:${task.attempt}`);
    h.m.nak();
    return true;
  }

  async reportProgress(task: HeldTask, progress: unknown): Promise<WorkerReportAnswer> {
    const h = this.#heldTask(task);
    const answer = await this.#link.report(h.task, 'progress', { progress });
    if (answer === undefined) throw this.#notAnswered();
    if (!answer.ok) throw refused(answer);
    return { endedTasks: this.#takeEnded() };
  }

  recordUsage(): Promise<unknown> {
    return Promise.reject(notOverNats('recordUsage'));
  }

  async hookFor(): Promise<WorkerHook | null> {
    return null;
  }

  activateHook(): Promise<unknown> {
    return Promise.reject(notOverNats('activateHook'));
  }

  hookProgress(): Promise<unknown> {
    return Promise.reject(notOverNats('hookProgress'));
  }

  completeHook(): Promise<unknown> {
    return Promise.reject(notOverNats('completeHook'));
  }

  failHook(): Promise<unknown> {
    return Promise.reject(notOverNats('failHook'));
  }

  /** Stops pulling; pulled-but-unclaimed and held messages go back to the stream. */
  async close(): Promise<void> {
    this.#endedSub.unsubscribe();
    for (const it of this.#iterators) await it.close().catch(() => undefined);
    for (const b of this.#buffer.splice(0)) {
      clearInterval(b.working);
      if (!this.#link.closed) b.m.nak();
    }
    for (const h of this.#held.values()) clearInterval(h.working);
    this.#held.clear();
    this.#wake?.();
    await this.#link.close(this.#owns);
  }
}

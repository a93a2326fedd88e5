/**
 * The JSON messages of the NATS transport and the proofs they carry. The README's "NATS wire
 * protocol" section documents the same shapes for workers written in other languages.
 *
 * **Proof of an agent credential.** A sidecar keeps only the SHA-256 (hex) of an agent's
 * credential, and the credential itself must not travel on a bus every sidecar and worker
 * reads. So a worker signs what it sends with HMAC-SHA256 keyed by that hash: the key is the
 * 64-character lowercase hex string `sha256(credential)` (its UTF-8 bytes), and the signed text
 * names the agent, the act and the task or time — for a report also its take-up, nonce, a
 * digest of its content and its counter within the take-up ({@link reportProof}) — so a proof
 * is good for one message only, and a replayed earlier report is told from a later one.
 * A heartbeat carries a millisecond timestamp that must grow from one heartbeat to the next,
 * which makes a replayed heartbeat worthless.
 *
 * **Lease of a dispatched attempt.** Each task message carries `lease` =
 * HMAC-SHA256(sidecar secret, `taskId:attempt`), which only the scheduling sidecar can make and
 * check without storing anything: a report must carry the lease of the attempt it is about. The
 * message is readable by whoever may pull its consumer, core-subscribe to `task.>` or read the
 * stream through the JetStream API (`$JS.API.STREAM.MSG.GET.<stream>`), so the lease keeps out
 * only clients that NATS permissions keep from reading it; the agent's proof is what ties a
 * report to an agent that may report on the task.
 *
 * **Answers to workers.** Whatever a sidecar answers a worker's request with (a report, a batch of
 * them, a heartbeat) carries `mac`, an HMAC over the request's kind and identifiers (a report's
 * own `nonce` among them: no answer to one report is good for another) and the answer's content
 * ({@link answerMac}): keyed by the report's `lease` for reports — so whoever holds the lease can
 * forge them, and only NATS permissions (who may publish on a worker's inbox) keep such a client
 * out — by the agent credential's hash for heartbeats. Any client may publish on a worker's `_INBOX.*` reply
 * subjects, and a worker acts on the answers (acks or terminates its message, stops a handler,
 * gives up its pool); it ignores one without a right MAC and waits on for the sidecar's.
 *
 * **Vouch answers.** A sidecar asked (`vouch`) about an agent of its own answers with
 * {@link vouchMac}, an HMAC under the key the sidecars of the namespace share
 * (`nats.sidecarKey`) over the asker's fresh nonce, the question and the answer: a client
 * without the key cannot answer for a sidecar, nor replay an answer to another question.
 *
 * @module
 */
import { hash } from 'node:crypto';
import { z } from 'zod';
import { MAX_ID_LENGTH } from '../../validate.js';
import { hmacSha256 } from './hmac.js';

/** A task as it sits in the JetStream work queue. */
export const taskMessageSchema = z
  .object({
    v: z.literal(1),
    taskId: z.string().min(1),
    attempt: z.number().int().positive(),
    taskType: z.string().min(1),
    payload: z.unknown(),
    /** Epoch ms by which it had to start, or null. */
    deadline: z.number().nullable(),
    timeoutSeconds: z.number().positive(),
    maxAttempts: z.number().int().positive(),
    /** The agent the task is pinned to (subject `task.agent.<id>`), or null for a pool task. */
    agentId: z.string().nullable(),
    /** The pool of a pool task, or null. */
    poolId: z.string().nullable(),
    /** Subject the reports go to (the scheduling sidecar's `res.<sidecarId>`). */
    replyTo: z.string().min(1),
    lease: z.string().min(1),
  })
  .strict();
/** A task as it sits in the JetStream work queue. */
export type TaskMessage = z.infer<typeof taskMessageSchema>;

/** Longest `code` of a report's error. */
export const MAX_ERROR_CODE_LENGTH = 200;
/** Longest `message` of a report's error. */
export const MAX_ERROR_MESSAGE_LENGTH = 10_000;

const taskErrorSchema = z
  .object({
    code: z.string().min(1).max(MAX_ERROR_CODE_LENGTH),
    message: z.string().max(MAX_ERROR_MESSAGE_LENGTH),
    details: z.record(z.string(), z.unknown()).optional(),
  })
  .strict();

/** What a report is about. */
export type ReportKind = 'start' | 'progress' | 'complete' | 'fail';

/**
 * Longest `proof` of a report and of the vouch question that carries it, and longest `content`
 * digest of that question (both are 43 characters: base64url of 32 bytes). A report whose proof
 * is longer is not one — refused at once, never asked about — so every report a sidecar reads
 * makes a vouch question the agent's own sidecar reads too.
 */
export const MAX_PROOF_LENGTH = 100;

/**
 * The code of the refusal of a `start` from a stale copy of a running attempt's message (see
 * `Report.delivery`): the worker drops that copy without settling it.
 */
export const STALE_DELIVERY_CODE = 'FABRIC_ERR_STALE_DELIVERY';

/** A worker's report on a task (request on the task's `replyTo`). */
export const reportSchema = z
  .object({
    kind: z.enum(['start', 'progress', 'complete', 'fail']),
    /** At most {@link MAX_ID_LENGTH} characters, as `agentId`. */
    taskId: z.string().min(1).max(MAX_ID_LENGTH),
    attempt: z.number().int().positive(),
    lease: z.string().min(1),
    /** The agent whose worker ran the task. */
    agentId: z.string().min(1).max(MAX_ID_LENGTH),
    /**
     * HMAC proof of the agent's credential over the report (see {@link reportProof}): at most
     * {@link MAX_PROOF_LENGTH} characters, as the vouch question that carries it.
     */
    proof: z.string().min(1).max(MAX_PROOF_LENGTH),
    result: z.unknown().optional(),
    progress: z.unknown().optional(),
    error: taskErrorSchema.optional(),
    /** With `fail`: an infrastructure fault, retried while attempts remain. */
    retry: z.boolean().optional(),
    /**
     * Required: an id the worker makes for each take-up of a message (unique per delivery it
     * received; a re-sent report repeats it), which every report of the take-up carries. A start
     * of an attempt already started under another take-up means the message came back after
     * AckWait — its first worker is lost — and the fabric ends that attempt and retries as a new
     * one; once the attempt started, a report from another take-up is stale. Its `counter`
     * numbers the reports of the take-up.
     */
    take: z.string().min(1).max(64),
    /**
     * With `start` (optional): the stream sequence of the message taken up. A start of another
     * copy of the attempt's message than the one it was stored as (a copy stored again after
     * the duplicate window) is refused, and the attempt goes on.
     */
    seq: z.number().int().positive().optional(),
    /**
     * With `start` (optional): JetStream's delivery count of the copy taken up (1 for the first
     * delivery; its proof covers it). A worker may hold a pulled copy past AckWait while busy,
     * and JetStream delivers the message again to another worker meanwhile: the start of a take-up
     * whose delivery is not later than the running take-up's (which named its own) is that
     * stale copy — refused with {@link STALE_DELIVERY_CODE}, the running attempt going on — and
     * the worker drops it without ack, nak or term (an ack or a term of any delivery settles the
     * message, the one the other worker runs). Without it (a worker that does not send it) a start
     * of another take-up of a started attempt ends that attempt as lost.
     */
    delivery: z.number().int().positive().optional(),
    /**
     * Optional: an id the worker makes for this report (unique among its reports; a re-sent
     * report repeats it), which the answer's MAC covers ({@link reportAnswerMac}). Without it the
     * answer to one `progress` report of a take-up verifies as the answer to every other.
     */
    nonce: z.string().min(1).max(64).optional(),
    /**
     * Required: the report's number within its take-up — 1 for the `start`, one more for each
     * later report of the take-up (a re-sent report repeats it) — which its proof covers
     * ({@link reportProof}). Once a take-up's report is accepted, one of the same take-up with a
     * lower counter (overtaken: a replay, or a late re-send) or the same counter (the same
     * report, re-sent) is answered ok and changes nothing: a reader of `res.>` replaying an
     * earlier `progress` cannot set the attempt's progress back. A report without it (or without
     * its `take`) is refused ({@link missingReportFields}): its replays could not be told apart.
     */
    counter: z.number().int().positive(),
  })
  .strict();
/** A worker's report on a task. */
export type Report = z.infer<typeof reportSchema>;

/** Most reports one batch may carry. */
export const MAX_REPORT_BATCH = 1024;

/**
 * Several reports in one request (each checked on its own), answered
 * `{ answers: Answer[] }` in the same order.
 */
export const reportBatchSchema = z
  .object({ v: z.literal(1), reports: z.array(z.unknown()).min(1).max(MAX_REPORT_BATCH) })
  .strict();

/** A request to the agent's own sidecar to check a report's proof (core subject `vouch`). */
export const vouchSchema = z
  .object({
    /** The report's ids, within the same bound as a report's ({@link MAX_ID_LENGTH}). */
    agentId: z.string().min(1).max(MAX_ID_LENGTH),
    kind: z.enum(['start', 'progress', 'complete', 'fail']),
    taskId: z.string().min(1).max(MAX_ID_LENGTH),
    attempt: z.number().int().positive(),
    /**
     * The report's take-up and counter (which every report has) and its stream sequence and
     * nonce when it has them (its proof covers them all).
     */
    take: z.string().min(1).max(64),
    seq: z.number().int().positive().optional(),
    delivery: z.number().int().positive().optional(),
    reportNonce: z.string().min(1).max(64).optional(),
    counter: z.number().int().positive(),
    /** The report's {@link reportContentDigest}, computed by the asking sidecar. */
    content: z.string().min(1).max(MAX_PROOF_LENGTH),
    proof: z.string().min(1).max(MAX_PROOF_LENGTH),
    /** Fresh per request: the answer's MAC covers it (see {@link vouchMac}). */
    nonce: z.string().min(16).max(64),
  })
  .strict();
/** A vouch request. */
export type Vouch = z.infer<typeof vouchSchema>;

/** A heartbeat (core subject `hb.<agentId>`). */
export const heartbeatSchema = z
  .object({ ts: z.number().int().positive(), proof: z.string().min(1) })
  .strict();
/** A heartbeat. */
export type Heartbeat = z.infer<typeof heartbeatSchema>;

/**
 * The answer to a report or a heartbeat request. A heartbeat's names the agent's status and its
 * pool (`null`: none); its refusal `FABRIC_ERR_AGENT_UNAVAILABLE` names the agent's status
 * (`TERMINATED`, `DRAINING`) in `status`, which its MAC covers, so a worker reads the status
 * from a field, not from the message's words.
 */
export type Answer =
  | { ok: true; status?: string; poolId?: string | null; mac?: string }
  | { ok: false; code: string; message: string; status?: string; mac?: string };

/**
 * A sidecar's notice that it ended an attempt (core subject `ended.<taskId>`), with the MAC
 * ({@link endedMac}) that the worker holding the attempt's message checks against its lease.
 */
export interface EndedNotice {
  taskId: string;
  attempt: number;
  code: string;
  message: string;
  mac: string;
}

/*
 * Hand-written checks of the two messages on the per-task path (a task message pulled by a
 * worker, a report arriving at a sidecar): the same rules as {@link taskMessageSchema} and
 * {@link reportSchema} — every key known, required keys present, the same types and bounds —
 * without zod's per-parse allocations. `test/unit/nats-wire.test.ts` holds them to the schemas.
 */

type Json = Record<string, unknown>;

function isObject(v: unknown): v is Json {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function nonEmpty(v: unknown, max = Number.POSITIVE_INFINITY): boolean {
  return typeof v === 'string' && v.length >= 1 && v.length <= max;
}

function isNumber(v: unknown): v is number {
  return typeof v === 'number' && Number.isFinite(v);
}

function positiveInt(v: unknown): boolean {
  return Number.isSafeInteger(v) && (v as number) > 0;
}

/** True when every own key of `o` is one of `keys`. */
function onlyKeys(o: Json, keys: ReadonlySet<string>): boolean {
  for (const k of Object.keys(o)) if (!keys.has(k)) return false;
  return true;
}

const TASK_KEYS: ReadonlySet<string> = new Set(Object.keys(taskMessageSchema.shape));
const REPORT_KEYS: ReadonlySet<string> = new Set(Object.keys(reportSchema.shape));
const ERROR_KEYS: ReadonlySet<string> = new Set(['code', 'message', 'details']);
const BATCH_KEYS: ReadonlySet<string> = new Set(['v', 'reports']);
const KINDS: ReadonlySet<unknown> = new Set(['start', 'progress', 'complete', 'fail']);

/** `data` as a task message when it is one (see {@link taskMessageSchema}), else undefined. */
export function asTaskMessage(data: unknown): TaskMessage | undefined {
  if (!isObject(data) || !onlyKeys(data, TASK_KEYS)) return undefined;
  const ok =
    data.v === 1 &&
    nonEmpty(data.taskId) &&
    positiveInt(data.attempt) &&
    nonEmpty(data.taskType) &&
    'payload' in data &&
    (data.deadline === null || isNumber(data.deadline)) &&
    isNumber(data.timeoutSeconds) &&
    data.timeoutSeconds > 0 &&
    positiveInt(data.maxAttempts) &&
    (data.agentId === null || typeof data.agentId === 'string') &&
    (data.poolId === null || typeof data.poolId === 'string') &&
    nonEmpty(data.replyTo) &&
    nonEmpty(data.lease);
  return ok ? (data as TaskMessage) : undefined;
}

function isTaskError(v: unknown): boolean {
  return (
    isObject(v) &&
    onlyKeys(v, ERROR_KEYS) &&
    nonEmpty(v.code, MAX_ERROR_CODE_LENGTH) &&
    typeof v.message === 'string' &&
    v.message.length <= MAX_ERROR_MESSAGE_LENGTH &&
    (v.details === undefined || isObject(v.details))
  );
}

/** The reports of `data` when it is a valid batch (see {@link reportBatchSchema}), else undefined. */
export function batchReports(data: Json): unknown[] | undefined {
  const reports = data.reports;
  const ok =
    data.v === 1 &&
    onlyKeys(data, BATCH_KEYS) &&
    Array.isArray(reports) &&
    reports.length >= 1 &&
    reports.length <= MAX_REPORT_BATCH;
  return ok ? reports : undefined;
}

/** `data` as a report when it is one (see {@link reportSchema}), else undefined. */
export function asReport(data: unknown): Report | undefined {
  if (!isObject(data) || !onlyKeys(data, REPORT_KEYS)) return undefined;
  const ok =
    KINDS.has(data.kind) &&
    nonEmpty(data.taskId, MAX_ID_LENGTH) &&
    positiveInt(data.attempt) &&
    nonEmpty(data.lease) &&
    nonEmpty(data.agentId, MAX_ID_LENGTH) &&
    nonEmpty(data.proof, MAX_PROOF_LENGTH) &&
    (data.error === undefined || isTaskError(data.error)) &&
    (data.retry === undefined || typeof data.retry === 'boolean') &&
    nonEmpty(data.take, 64) &&
    (data.seq === undefined || positiveInt(data.seq)) &&
    (data.delivery === undefined || positiveInt(data.delivery)) &&
    (data.nonce === undefined || nonEmpty(data.nonce, 64)) &&
    positiveInt(data.counter);
  return ok ? (data as Report) : undefined;
}

/**
 * The required fields `data` lacks (`take`, `counter`) when it would be a report with them, else
 * undefined — a worker written before they were required, whose reports (their `progress`
 * above all) a reader of `res.>` could replay unnoticed: it is refused with a message naming
 * them, so its operator knows to upgrade it. Only on the path of a body {@link asReport} refused.
 */
export function missingReportFields(data: unknown): ('take' | 'counter')[] | undefined {
  if (!isObject(data)) return undefined;
  const missing = (['take', 'counter'] as const).filter((k) => data[k] === undefined);
  if (missing.length === 0) return undefined;
  return asReport({ take: 'x', counter: 1, ...data }) === undefined ? undefined : missing;
}

/**
 * What an answer's MAC binds of `data` when it is not a report (a field out of bounds, an
 * unknown key) but carries a lease and, each of its type, the ids a report's answer binds, else
 * undefined. The sidecar signs its refusal of such a body: the worker that sent it, which
 * acts on no answer without a right MAC, would otherwise send it again at every timeout for as
 * long as it runs, and with it every report of the same batch. No oracle: the MAC is keyed by
 * the lease the body carries, which its sender knows.
 */
export function reportBinding(data: unknown): AnsweredReport | undefined {
  if (!isObject(data)) return undefined;
  const { kind, agentId, taskId, attempt, lease, take, nonce } = data;
  const ok =
    KINDS.has(kind) &&
    typeof agentId === 'string' &&
    typeof taskId === 'string' &&
    typeof attempt === 'number' &&
    nonEmpty(lease) &&
    (take === undefined || typeof take === 'string') &&
    (nonce === undefined || typeof nonce === 'string');
  return ok
    ? ({ kind, agentId, taskId, attempt, lease, take, nonce } as AnsweredReport)
    : undefined;
}

/**
 * `data` as an ended notice when it is one (a task id of at most {@link MAX_ID_LENGTH}
 * characters, a positive attempt, string code and message), else undefined. Whoever can publish
 * on `ended.*` can send anything there: a worker acts only on what this returns, and only when
 * the notice came on its own task's subject (`NatsNames.ended`).
 */
export function asEndedNotice(data: unknown): EndedNotice | undefined {
  const ok =
    isObject(data) &&
    nonEmpty(data.taskId, MAX_ID_LENGTH) &&
    positiveInt(data.attempt) &&
    typeof data.code === 'string' &&
    typeof data.message === 'string' &&
    nonEmpty(data.mac, 100);
  return ok ? (data as unknown as EndedNotice) : undefined;
}

/**
 * MAC of an ended notice: HMAC-SHA256 keyed by the attempt's lease (the UTF-8 bytes of the
 * `lease` string of its task message) over `ended:<taskId>:<attempt>`, base64url without
 * padding. Only the scheduling sidecar and those who hold the attempt's message know the lease,
 * so a client that may publish on `ended.*` but not read the task cannot stop the attempt. The
 * code and message are not covered: a replayed notice of the same attempt can only reword why.
 */
export function endedMac(lease: string, taskId: string, attempt: number): string {
  return hmac(lease, `ended:${taskId}:${attempt}`);
}

/** True when `n` is the notice of the attempt whose message carried `lease` (see {@link endedMac}). */
export function endedNoticeGenuine(n: EndedNotice, lease: string): boolean {
  return sameProof(n.mac, endedMac(lease, n.taskId, n.attempt));
}

/**
 * `data` as the answer to a report or a heartbeat when it is one (`ok: true`, or `ok: false`
 * with a string code and message), else undefined.
 */
export function asAnswer(data: unknown): Answer | undefined {
  if (!isObject(data)) return undefined;
  if (data.ok === true) return data as Answer;
  const ok = data.ok === false && typeof data.code === 'string' && typeof data.message === 'string';
  return ok ? (data as unknown as Answer) : undefined;
}

function hmac(key: string, text: string): string {
  return hmacSha256(key, text, 'base64url');
}

/**
 * Comparison of two proofs in time that depends only on their length (every character is
 * looked at, whatever differs), without the two buffers `timingSafeEqual` would need per check.
 */
export function sameProof(a: string, b: string): boolean {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a.charCodeAt(i) ^ b.charCodeAt(i);
  return diff === 0;
}

/** Proof of a heartbeat; `credentialHash` is the hex SHA-256 of the agent's credential. */
export function heartbeatProof(credentialHash: string, agentId: string, ts: number): string {
  return hmac(credentialHash, `hb:${agentId}:${ts}`);
}

/** What of a report its proof covers (everything the sidecar acts on; see {@link reportProof}). */
export type ProvenReport = Pick<Report, 'kind' | 'agentId' | 'taskId' | 'attempt'> &
  Partial<
    Pick<
      Report,
      'take' | 'seq' | 'delivery' | 'nonce' | 'counter' | 'result' | 'progress' | 'error' | 'retry'
    >
  >;

/**
 * Proof of a report: HMAC-SHA256 under the credential's hash over
 * `report:<kind>:<agentId>:<taskId>:<attempt>:<take>:<seq>:<nonce>:<content>`, followed by
 * `:<counter>` when the report has a counter, then `:d<delivery>` when it has a `delivery` — the fields written as an answer MAC's
 * ({@link answerMac}: `%`, `:` and `~` escaped, an absent field empty) and `<content>` the
 * report's {@link reportContentDigest}. (Without a counter the text is the one workers made
 * before it; such a report is refused before its proof is looked at, see
 * {@link missingReportFields}.) It covers everything the
 * sidecar acts on: the take-up (a start of another take-up counts a started attempt lost), the
 * copy taken up, the report's nonce and what it reports (progress, result, error, retry), so a
 * client that reads another worker's reports can neither re-send one as another take-up's nor
 * put other content under its proof.
 */
export function reportProof(credentialHash: string, r: ProvenReport): string {
  return proofOver(credentialHash, r, reportContentDigest(r));
}

/** {@link reportProof} with the content digest given (the vouch question carries it). */
export function proofOver(
  credentialHash: string,
  r: Pick<
    ProvenReport,
    'kind' | 'agentId' | 'taskId' | 'attempt' | 'take' | 'seq' | 'nonce' | 'counter' | 'delivery'
  >,
  content: string,
): string {
  const fields: MacField[] = [
    r.kind,
    r.agentId,
    r.taskId,
    r.attempt,
    r.take,
    r.seq,
    r.nonce,
    content,
  ];
  if (r.counter !== undefined) fields.push(r.counter);
  // Last, only when the report has one: a report without it is proven by the same text as before.
  if (r.delivery !== undefined) fields.push(`d${r.delivery}`);
  return hmac(credentialHash, macText('report', fields));
}

/**
 * The proof of a report as workers made it before the proof covered the take-up, nonce and
 * content (`<kind>:<agentId>:<taskId>:<attempt>`). Never accepted: only recognised, so that such
 * a worker is refused with a message that says why.
 */
export function legacyReportProof(credentialHash: string, r: ProvenReport): string {
  return hmac(credentialHash, `${r.kind}:${r.agentId}:${r.taskId}:${r.attempt}`);
}

/** SHA-256 (base64url) of the canonical JSON of `{}`: the content of a report without any. */
const NO_CONTENT = hash('sha256', '{}', 'base64url');

/**
 * Digest of what a report carries besides its ids: base64url (no padding) of the SHA-256 of the
 * UTF-8 bytes of {@link canonicalJson} of the object made of the report's members `error`,
 * `progress`, `result` and `retry` that it has (each as it arrives in the JSON: a member that is
 * absent is left out; `{}` when it has none, as a `start`).
 */
export function reportContentDigest(r: Partial<Pick<Report, ContentKey>>): string {
  let content: Partial<Pick<Report, ContentKey>> | undefined;
  for (const k of CONTENT_KEYS) {
    if (r[k] !== undefined) (content ??= {})[k] = r[k] as never;
  }
  return content === undefined ? NO_CONTENT : hash('sha256', canonicalJson(content), 'base64url');
}

type ContentKey = 'error' | 'progress' | 'result' | 'retry';
const CONTENT_KEYS: readonly ContentKey[] = ['error', 'progress', 'result', 'retry'];

/** Closes an array or an object, or separates, in {@link canonicalJson}'s work stack. */
class Literal {
  constructor(readonly text: string) {}
}
const CLOSE_ARRAY = new Literal(']');
const CLOSE_OBJECT = new Literal('}');
const COMMA = new Literal(',');

/**
 * The canonical JSON of a value read from JSON (RFC 8785, JCS): no whitespace, object members
 * sorted by their names' UTF-16 code units, strings and numbers written as ECMAScript's
 * `JSON.stringify` writes them (so `1e21`, `1e-7`, `0.1`, `"\u001f"`, `"é"` unescaped). Iterative: a
 * value nested as deep as `JSON.parse` reads (far deeper than the call stack) is written too.
 */
export function canonicalJson(value: unknown): string {
  let out = '';
  const stack: unknown[] = [value];
  while (stack.length > 0) {
    const v = stack.pop();
    if (v instanceof Literal) {
      out += v.text;
    } else if (v === null || typeof v !== 'object') {
      out += JSON.stringify(v) ?? 'null';
    } else if (Array.isArray(v)) {
      out += '[';
      stack.push(CLOSE_ARRAY);
      for (let i = v.length - 1; i >= 0; i--) {
        stack.push(v[i]);
        if (i > 0) stack.push(COMMA);
      }
    } else {
      out += '{';
      stack.push(CLOSE_OBJECT);
      const keys = Object.keys(v).sort();
      for (let i = keys.length - 1; i >= 0; i--) {
        stack.push((v as Json)[keys[i]!]);
        stack.push(new Literal(`${i > 0 ? ',' : ''}${JSON.stringify(keys[i])}:`));
      }
    }
  }
  return out;
}

/**
 * The question a sidecar asks the namespace (`vouch`) about report `r` of an agent it does not
 * know: everything its proof covers, the content as its digest, with the fresh `nonce`. Its ids
 * are within a report's bounds, which {@link vouchSchema} shares: every readable report makes a
 * question the agent's sidecar reads.
 */
export function vouchQuestion(r: Report, nonce: string): Vouch {
  const v: Vouch = {
    agentId: r.agentId,
    kind: r.kind,
    taskId: r.taskId,
    attempt: r.attempt,
    take: r.take,
    seq: r.seq,
    delivery: r.delivery,
    reportNonce: r.nonce,
    counter: r.counter,
    content: reportContentDigest(r),
    proof: r.proof,
    nonce,
  };
  return v;
}

/**
 * MAC of a vouch answer: HMAC-SHA256 under the sidecars' shared key over the namespace, the
 * request (its nonce, agent, report kind, task, attempt, the report's take-up, stream sequence,
 * nonce and content digest, and its proof) and the answer (`ok` and, when
 * ok, the agent's pool or `null`), then the report's counter (the same text as when the
 * counter was optional and the question carried one) and, when the question has one, its
 * `delivery`. The fields are JSON-encoded as a list, so no id can shift another field's boundary.
 */
export function vouchMac(
  sidecarKey: string,
  namespace: string,
  v: Vouch,
  ok: boolean,
  poolId: string | null,
): string {
  const fields: unknown[] = [
    'vouch',
    namespace,
    v.nonce,
    v.agentId,
    v.kind,
    v.taskId,
    v.attempt,
    v.take,
    v.seq ?? null,
    v.reportNonce ?? null,
    v.content,
    v.proof,
    ok,
    ok ? poolId : null,
    v.counter,
  ];
  // Last, only when the report has one: without it the text is the one before it existed.
  if (v.delivery !== undefined) fields.push(v.delivery);
  return hmac(sidecarKey, JSON.stringify(fields));
}

/** One field of the text an answer's MAC covers (see {@link answerMac}). */
export type MacField = string | number | boolean | null | undefined;

/**
 * MAC of a sidecar's answer to a worker: HMAC-SHA256 under `key`, base64url without padding,
 * over `answer` followed by each field after a `:` — a string with `%` written `%25`, `:`
 * written `%3a` (so no field can shift another's boundary) and `~` written `%7e` (so no string
 * reads as null: a heartbeat answer's pool `"~"` is not its "no pool"), a number in decimal,
 * `true`/`false`, `~` for null and nothing for a field that is absent. The first field names the kind of request
 * answered, so an answer to one kind, task, attempt or take-up is worthless for another. One
 * scheme for every answer a worker acts on; the README's wire table spells it out for workers in
 * other languages. (Strings are escaped only when they hold one of those characters, a native search:
 * escaping every id as a subject token cost about as much again as the HMAC.)
 */
export function answerMac(key: string, fields: readonly MacField[]): string {
  return hmac(key, macText('answer', fields));
}

/** `head` followed by each field after a `:`, written as {@link answerMac} says. */
function macText(head: string, fields: readonly MacField[]): string {
  let text = head;
  for (const f of fields) {
    text += ':';
    if (typeof f === 'string') text += macString(f);
    else if (f === null) text += '~';
    else if (f !== undefined) text += String(f);
  }
  return text;
}

function macString(s: string): string {
  if (!s.includes(':') && !s.includes('%') && !s.includes('~')) return s;
  return s.replaceAll('%', '%25').replaceAll(':', '%3a').replaceAll('~', '%7e');
}

/** What of a report its answer's MAC binds (and the lease that keys it). */
export type AnsweredReport = Pick<
  Report,
  'kind' | 'agentId' | 'taskId' | 'attempt' | 'lease' | 'nonce'
> &
  Partial<Pick<Report, 'take'>>;

/**
 * MAC of the answer to a report: keyed by the report's `lease` (which only the scheduling sidecar
 * and the holders of the attempt's message know) over the report's kind, agent, task, attempt
 * and take-up, the answer's `ok`, `code` and `message` and, last, the report's `nonce` when it
 * has one. The nonce tells apart the reports of one take-up that share everything else (its
 * `progress` reports): an answer to one replayed to another does not verify. Without a nonce
 * the text is the one workers written before it computed (no field is added, not even empty).
 */
export function reportAnswerMac(r: AnsweredReport, a: Answer): string {
  const refusal = a.ok ? undefined : a;
  const fields: MacField[] = [
    r.kind,
    r.agentId,
    r.taskId,
    r.attempt,
    r.take,
    a.ok,
    refusal?.code,
    refusal?.message,
  ];
  if (r.nonce !== undefined) fields.push(r.nonce);
  return answerMac(r.lease, fields);
}

/**
 * MAC of the answer to a heartbeat: keyed by the agent credential's hash (the heartbeat proof's
 * key) over the agent, the heartbeat's timestamp (which grows: an old answer is worthless) and
 * the answer's `ok`, `code`, `message`, `status` and `poolId` (a refusal's `status` when it has
 * one: the agent's, with `FABRIC_ERR_AGENT_UNAVAILABLE`).
 */
export function heartbeatAnswerMac(
  credentialHash: string,
  agentId: string,
  ts: number,
  a: Answer,
): string {
  return answerMac(
    credentialHash,
    a.ok
      ? ['hb', agentId, ts, true, undefined, undefined, a.status, a.poolId]
      : ['hb', agentId, ts, false, a.code, a.message, a.status, undefined],
  );
}

/** `answer` with its MAC (a new object: the shared answers are frozen). */
export function withMac(answer: Answer, mac: string): Answer {
  return { ...answer, mac };
}

/** The answer `a` to report `r` as a sidecar sends it: with its MAC ({@link reportAnswerMac}). */
export function signedReportAnswer(r: AnsweredReport, a: Answer): Answer {
  return withMac(a, reportAnswerMac(r, a));
}

const OK: Answer = Object.freeze({ ok: true });

/**
 * `data` as the answer to report `r` when it is one and its MAC is right (without the MAC: what
 * it proved is the worker's business no more), else undefined (a forgery, or not an answer: the
 * worker waits on for the sidecar's).
 */
export function genuineReportAnswer(data: unknown, r: AnsweredReport): Answer | undefined {
  const a = asAnswer(data);
  if (a === undefined || typeof a.mac !== 'string' || !sameProof(a.mac, reportAnswerMac(r, a))) {
    return undefined;
  }
  return a.ok ? OK : { ok: false, code: a.code, message: a.message };
}

/** The lease of an attempt, keyed by the scheduling sidecar's secret. */
export function attemptLease(secret: string, taskId: string, attempt: number): string {
  return hmac(secret, `${taskId}:${attempt}`);
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** JSON to bytes. */
export function encodeJson(value: unknown): Uint8Array {
  return encoder.encode(JSON.stringify(value));
}

/** Bytes to JSON; `undefined` when the bytes are not JSON. */
export function decodeJson(data: Uint8Array): unknown {
  try {
    return JSON.parse(decoder.decode(data)) as unknown;
  } catch {
    return undefined;
  }
}

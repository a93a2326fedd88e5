/**
 * The worker transport over MCP: each operation is a call of the sidecar's `fabric__*` tool of
 * the same name, made with the agent's credential as bearer token, so it passes the sidecar's
 * policy pipeline like any tool call. Refusals come back as tool errors carrying the catalog
 * code in `_meta` and are thrown as {@link RemoteFabricError}. So is the sidecar's HTTP 413 (a
 * request body over its body limit, 4 MiB by default), which the SDK client raises as a
 * `StreamableHTTPError` with `code` 413: as `FABRIC_ERR_PAYLOAD_TOO_LARGE`, a refusal of what the
 * call carries like any other, so a worker fails the task instead of giving up; and its 401 (the
 * credential unknown or revoked: the agent was terminated) as `FABRIC_ERR_UNAUTHENTICATED`.
 *
 * A call the sidecar answers with 404 — it does not know the session: it restarted, or it closed
 * the session — opens a new session with the same credential and is sent again there, as the
 * MCP Streamable HTTP transport asks of a client ("MUST start a new session by sending a new
 * InitializeRequest", MCP 2025-06-18, Session Management; the stdio bridge `agent-fabric mcp`
 * does the same). The refused call never ran, so it runs once. Several calls that find the same
 * session gone open one new session; a call refused with 404 on the new one too fails with it.
 *
 * @module
 */
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import {
  StreamableHTTPClientTransport,
  StreamableHTTPError,
} from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import {
  FabricError,
  PayloadTooLargeError,
  UnauthenticatedError,
  type ErrorKind,
} from '../errors.js';
import { ERROR_META_KEY } from '../gateway/map-error.js';
import type { TaskAssignment } from '../task.js';
import {
  RemoteFabricError,
  type HeldTask,
  type WorkerEndedTask,
  type WorkerFailure,
  type WorkerHook,
  type WorkerReportAnswer,
  type WorkerTransport,
} from './worker-transport.js';

/** {@link WorkerTransport} over a sidecar's MCP endpoint. */
export class McpWorkerTransport implements WorkerTransport {
  readonly #url: URL;
  readonly #credential: string;
  /** The client of the session calls go to. */
  #client: Client;
  /** The new session being opened after the sidecar lost `#client`'s (see {@link #renew}). */
  #opening: Promise<Client> | undefined;
  #closed = false;
  /** `fabric__claim_task` takes `ackSeconds`: an answer can be lost on a dropped connection. */
  readonly leasesClaims = true;

  private constructor(url: URL, credential: string, client: Client) {
    this.#url = url;
    this.#credential = credential;
    this.#client = client;
  }

  /** Connects to `url` with `credential` as bearer token. @throws the sidecar's 401 as an error */
  static async connect(url: URL, credential: string): Promise<McpWorkerTransport> {
    return new McpWorkerTransport(url, credential, await openSession(url, credential));
  }

  /** An answer of the sidecar (a FabricError) never is; see {@link sidecarUnreachable}. */
  unreachable(err: unknown): boolean {
    return !(err instanceof FabricError) && sidecarUnreachable(err);
  }

  async heartbeat(): Promise<WorkerReportAnswer> {
    return reportAnswer(await this.#call('heartbeat', {}));
  }

  async claim(waitSeconds: number, ackSeconds = 0): Promise<TaskAssignment | null> {
    const args = ackSeconds > 0 ? { waitSeconds, ackSeconds } : { waitSeconds };
    return (await this.#call('claim_task', args)) as TaskAssignment | null;
  }

  complete(task: HeldTask, result: unknown): Promise<unknown> {
    return this.#call('complete_task', {
      taskId: task.taskId,
      attempt: task.attempt,
      result: result ?? null,
    });
  }

  fail(task: HeldTask, error: WorkerFailure): Promise<unknown> {
    return this.#call('fail_task', { taskId: task.taskId, attempt: task.attempt, ...error });
  }

  async release(task: HeldTask): Promise<boolean> {
    const answer = (await this.#call('release_task', {
      taskId: task.taskId,
      attempt: task.attempt,
    })) as { released?: unknown } | null;
    return answer?.released === true;
  }

  async reportProgress(task: HeldTask, progress: unknown): Promise<WorkerReportAnswer> {
    return reportAnswer(
      await this.#call('report_progress', { taskId: task.taskId, attempt: task.attempt, progress }),
    );
  }

  recordUsage(usage: { tokens: number; cost: number }): Promise<unknown> {
    return this.#call('record_usage', usage);
  }

  async hookFor(): Promise<WorkerHook | null> {
    return (await this.#call('get_hook', {})) as WorkerHook | null;
  }

  activateHook(hookId: string): Promise<unknown> {
    return this.#call('activate_hook', { hookId });
  }

  hookProgress(hookId: string, note?: string): Promise<unknown> {
    return this.#call('hook_progress', note === undefined ? { hookId } : { hookId, note });
  }

  completeHook(hookId: string, result: unknown): Promise<unknown> {
    return this.#call('complete_hook', { hookId, result: result ?? null });
  }

  failHook(hookId: string, error: WorkerFailure): Promise<unknown> {
    return this.#call('fail_hook', { hookId, ...error });
  }

  callTool(name: string, args: Record<string, unknown>): Promise<CallToolResult> {
    return this.#request(
      (client) => client.callTool({ name, arguments: args }) as Promise<CallToolResult>,
    );
  }

  async close(): Promise<void> {
    this.#closed = true;
    const opening = this.#opening;
    await this.#client.close();
    // A session being opened is closed once it is open.
    await opening?.then((c) => c.close()).catch(() => undefined);
  }

  /**
   * Sends one request with `send` on the current session; when the sidecar no longer knows the
   * session (404), on a new one (see the module's comment).
   */
  async #request<T>(send: (client: Client) => Promise<T>): Promise<T> {
    const client = await (this.#opening ?? this.#client);
    try {
      return await send(client);
    } catch (err) {
      if (this.#closed || !sessionGone(err)) throw err;
      return send(await this.#renew(client));
    }
  }

  /**
   * The client of a new session with the same credential, once the sidecar lost `lost`'s; one
   * for all the calls that found it gone. A failed opening is tried again by the next call.
   */
  #renew(lost: Client): Promise<Client> {
    if (this.#client !== lost) return Promise.resolve(this.#client);
    this.#opening ??= openSession(this.#url, this.#credential).then(
      (fresh) => {
        this.#opening = undefined;
        this.#client = fresh;
        // Nothing to end on the sidecar: it does not know that session.
        void lost.close().catch(() => undefined);
        return fresh;
      },
      (err: unknown) => {
        this.#opening = undefined;
        throw err;
      },
    );
    return this.#opening;
  }

  async #call(tool: string, args: Record<string, unknown>): Promise<unknown> {
    let res: CallToolResult;
    try {
      res = await this.#request(
        (client) =>
          client.callTool({ name: `fabric__${tool}`, arguments: args }) as Promise<CallToolResult>,
      );
    } catch (err) {
      throw httpRefusal(tool, err) ?? err;
    }
    if (res.isError === true) {
      const meta = (res._meta?.[ERROR_META_KEY] ?? {}) as {
        code?: string;
        kind?: ErrorKind;
        message?: string;
        details?: Record<string, unknown>;
      };
      const text = res.content?.find((c) => c.type === 'text');
      throw new RemoteFabricError(
        meta.code ?? 'FABRIC_ERR_INTERNAL',
        meta.kind ?? 'internal',
        meta.message ?? (text?.type === 'text' ? text.text : `fabric__${tool} failed`),
        meta.details ?? {},
      );
    }
    return (res.structuredContent as { result?: unknown } | undefined)?.result ?? null;
  }
}

/** A client of a new MCP session at `url` with `credential` as bearer token. */
async function openSession(url: URL, credential: string): Promise<Client> {
  const transport = new StreamableHTTPClientTransport(url, {
    requestInit: { headers: { Authorization: `Bearer ${credential}` } },
  });
  const client = new Client({ name: 'agent-fabric-worker', version: '0.1.0' });
  await client.connect(transport);
  return client;
}

/** Codes of the socket errors of a sidecar that is not there (undici's and Node's). */
const UNREACHABLE_CODES: ReadonlySet<string> = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'EPIPE',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'EAI_AGAIN',
  'UND_ERR_SOCKET',
  'UND_ERR_CLOSED',
  'UND_ERR_CONNECT_TIMEOUT',
  'UND_ERR_HEADERS_TIMEOUT',
  'UND_ERR_BODY_TIMEOUT',
]);

/**
 * True when a call failed because the sidecar could not be reached: fetch failed to connect or
 * the connection broke (a socket error code anywhere in the `cause` chain; undici's `fetch
 * failed` and `terminated`), or a proxy in front of it answered 502, 503 or 504. An answer of the
 * sidecar (a refusal, a 401, a 413) is not.
 */
export function sidecarUnreachable(err: unknown): boolean {
  if (err instanceof StreamableHTTPError)
    return err.code === 502 || err.code === 503 || err.code === 504;
  for (let e: unknown = err, depth = 0; e instanceof Error && depth < 8; depth++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === 'string' && UNREACHABLE_CODES.has(code)) return true;
    if (e instanceof TypeError && (e.message === 'fetch failed' || e.message === 'terminated'))
      return true;
    e = e.cause;
  }
  return false;
}

/** True when `err` says the sidecar does not know the session (HTTP 404). */
export function sessionGone(err: unknown): boolean {
  return err instanceof StreamableHTTPError && err.code === 404;
}

/**
 * The sidecar's HTTP refusals that are the fabric's refusals of the call, by status: a request
 * body over its limit (413, before any tool ran) — a refusal of what the call carried —, and a
 * credential it does not know (401: unknown, or revoked when the agent was terminated).
 */
const HTTP_REFUSALS: ReadonlyMap<number, { code: string; kind: ErrorKind; says: string }> = new Map(
  [
    [
      413,
      {
        code: PayloadTooLargeError.code,
        kind: 'resource_exhausted',
        says: "the request body is over the sidecar's body limit (HTTP 413); send less",
      },
    ],
    [
      401,
      {
        code: UnauthenticatedError.code,
        kind: 'unauthenticated',
        says: "the sidecar refused this worker's credential (HTTP 401: unknown, or revoked when its agent was terminated)",
      },
    ],
  ],
);

/**
 * One of {@link HTTP_REFUSALS} as a {@link RemoteFabricError}; `undefined` for any other error.
 * Told by the status the SDK client keeps in `StreamableHTTPError.code`, not by its message.
 */
function httpRefusal(tool: string, err: unknown): RemoteFabricError | undefined {
  if (!(err instanceof StreamableHTTPError) || err.code === undefined) return;
  const refusal = HTTP_REFUSALS.get(err.code);
  if (refusal === undefined) return;
  return new RemoteFabricError(refusal.code, refusal.kind, `fabric__${tool}: ${refusal.says}`, {
    tool,
    status: err.code,
  });
}

/** The answer of `heartbeat`/`report_progress`; a sidecar without notices gives none. */
function reportAnswer(answer: unknown): WorkerReportAnswer {
  const a = (answer !== null && typeof answer === 'object' ? answer : {}) as {
    endedTasks?: unknown;
  };
  const ended = Array.isArray(a.endedTasks) ? a.endedTasks.filter(isEndedTask) : [];
  return { ...a, endedTasks: ended };
}

function isEndedTask(n: unknown): n is WorkerEndedTask {
  const e = n as Partial<WorkerEndedTask> | null;
  return (
    e !== null &&
    typeof e === 'object' &&
    typeof e.taskId === 'string' &&
    typeof e.attempt === 'number' &&
    typeof e.code === 'string' &&
    typeof e.message === 'string'
  );
}

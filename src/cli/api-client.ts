/**
 * The CLI's client of a running sidecar: the operator API through the HTTP door
 * (`POST /api/<package.Service>/<Method>`, protobuf JSON mapping; src/rpc/http-door.ts) with the
 * admin token as bearer. Requests are built and answers read with the generated schemas, so a
 * field renamed in proto/ breaks the build here rather than an operator's script. Server streams
 * are read as the door sends them: NDJSON, `{"message": …}` lines, then one `{"end": {}}` or
 * `{"end": {"error": …}}` line, with empty keep-alive lines between.
 *
 * The admin token never comes from the command line (`ps` shows arguments to every local user):
 * it comes from `FABRIC_ADMIN_TOKEN` or from the file named by `--token-file`.
 *
 * @module
 */
import { readFileSync, statSync } from 'node:fs';
import {
  create,
  fromJson,
  toJson,
  type DescMessage,
  type DescMethodServerStreaming,
  type DescMethodUnary,
  type JsonValue,
  type MessageInitShape,
  type MessageShape,
} from '@bufbuild/protobuf';
import { EXIT } from './exit-codes.js';
import { clip } from './format.js';

/** A reader of an answer's body, and what one read gives. */
type Reader = ReadableStreamDefaultReader<Uint8Array>;
type Chunk = Awaited<ReturnType<Reader['read']>>;

/** Bytes in a MiB. */
const MIB = 1024 * 1024;

/** Default base URL of the sidecar (the default `http.host` and `http.port`). */
export const DEFAULT_SIDECAR_URL = 'http://127.0.0.1:8765';

/**
 * Default of `--request-timeout` (seconds): how long the answer's headers, and each wait for more
 * of its body, may take. Above the sidecar's default keep-alive interval of a stream (15 s).
 */
export const DEFAULT_REQUEST_TIMEOUT_SECONDS = 30;

/**
 * Default of `--max-answer-mib`: the largest answer (and stream line) read. The largest usual
 * answers of a sidecar are pages of lists — 1000 agents, or 1000 tasks as the tables ask for
 * them (`summary`: a few hundred bytes a task, errors cut to 1,024 characters) — of a few MiB at
 * most; `--json` lists carry every task's payload and result (up to `maxTaskResultBytes` each),
 * where a smaller `--limit` asks for smaller pages.
 */
export const DEFAULT_MAX_ANSWER_MIB = 64;

/** A failure of a CLI command, with the exit code it ends the process with. */
export class CliError extends Error {
  constructor(
    message: string,
    readonly exitCode: number,
    options?: ErrorOptions,
    /** The sidecar's error code (`FABRIC_ERR_…`) when the failure is its refusal with one. */
    readonly fabricCode?: string,
  ) {
    super(message, options);
    this.name = 'CliError';
  }
}

/** Where the sidecar is and how to authenticate as admin. */
export interface ApiClientOptions {
  /** Base URL of the sidecar; its path is ignored (the API is at `/api/`). */
  url: string;
  /** Where `url` came from, for the message refusing it. @default '--url' */
  urlSource?: string;
  /** The admin bearer token. */
  token: string;
  /**
   * How long the answer's headers may take, and each wait for more of its body (a stream's
   * keep-alive lines count), in milliseconds. @default DEFAULT_REQUEST_TIMEOUT_SECONDS × 1000
   */
  timeoutMs?: number;
  /** The largest answer, and stream line, read (bytes). @default DEFAULT_MAX_ANSWER_MIB MiB */
  maxAnswerBytes?: number;
  /**
   * How the limits were given, for the messages that name them (`--request-timeout`,
   * `FABRIC_REQUEST_TIMEOUT` …). @default the flags
   */
  sources?: { timeout?: string; maxAnswer?: string };
}

/** Options of one unary call. */
export interface CallOptions {
  /**
   * The answer's headers may take as long as the sidecar works on the request (a drain that
   * answers once the drained tasks finished): the caller watches the sidecar otherwise. The
   * body is still bounded by the timeout.
   */
  unboundedWait?: boolean;
}

/** An answer: the typed message and the JSON the sidecar sent (printed by `--json`). */
export interface ApiAnswer<O extends DescMessage> {
  message: MessageShape<O>;
  json: JsonValue;
}

/** Calls unary and server-streaming methods of the operator API with the admin token. */
export class ApiClient {
  readonly base: URL;
  readonly #token: string;
  readonly #timeoutMs: number;
  readonly #maxAnswerBytes: number;
  /** `… within 30 s (--request-timeout)`. */
  readonly #timeoutText: string;
  /** `… larger than 64 MiB (--max-answer-mib)`. */
  readonly #maxAnswerText: string;

  constructor(options: ApiClientOptions) {
    this.base = new URL('/', sidecarUrl(options.url, options.urlSource));
    this.#token = options.token;
    this.#timeoutMs = options.timeoutMs ?? DEFAULT_REQUEST_TIMEOUT_SECONDS * 1000;
    this.#maxAnswerBytes = options.maxAnswerBytes ?? DEFAULT_MAX_ANSWER_MIB * MIB;
    this.#timeoutText = `${this.#timeoutMs / 1000} s (${options.sources?.timeout ?? '--request-timeout'})`;
    this.#maxAnswerText = `${this.#maxAnswerBytes / MIB} MiB (${options.sources?.maxAnswer ?? '--max-answer-mib'})`;
  }

  /** Calls `method` with `request`; throws a {@link CliError} with the matching exit code. */
  async call<I extends DescMessage, O extends DescMessage>(
    method: DescMethodUnary<I, O>,
    request: MessageInitShape<I>,
    options: CallOptions = {},
  ): Promise<ApiAnswer<O>> {
    const body = toJson(method.input, create(method.input, request));
    const json = await this.#post(
      `api/${method.parent.typeName}/${method.name}`,
      body,
      options.unboundedWait === true,
    );
    try {
      return { message: fromJson(method.output, json, { ignoreUnknownFields: true }), json };
    } catch (error) {
      throw new CliError(
        `POST /api/${method.parent.typeName}/${method.name}: the sidecar sent an answer that is not a ${method.output.typeName}: ${(error as Error).message}`,
        EXIT.failure,
        { cause: error },
      );
    }
  }

  /**
   * Opens the server stream `method` with `request` and yields its messages until the stream's
   * `end` line. Throws a {@link CliError}: refused before the stream started — the matching exit
   * code; the `end` line's error (overflow, deadline, the sidecar stopping) — `EXIT.failure`;
   * the connection lost, or the stream stopped without its `end` line — `EXIT.unreachable`.
   * When `options.signal` aborts, the stream is closed and the iteration ends without an error;
   * `options.onOpen` is called once the sidecar answered 200 (the door sends its headers with
   * the first line: a message or a keep-alive).
   */
  async *stream<I extends DescMessage, O extends DescMessage>(
    method: DescMethodServerStreaming<I, O>,
    request: MessageInitShape<I>,
    options: { signal?: AbortSignal; onOpen?: () => void } = {},
  ): AsyncGenerator<ApiAnswer<O>, void> {
    const { signal } = options;
    const path = `api/${method.parent.typeName}/${method.name}`;
    const what = `POST /${path}`;
    let res: Response;
    try {
      res = await this.#fetch(path, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify(toJson(method.input, create(method.input, request))),
        ...(signal === undefined ? {} : { signal }),
      });
    } catch (error) {
      if (signal?.aborted) return;
      throw error;
    }
    if (!res.ok) throw refused(res.status, what, await this.#text(res, what));
    options.onOpen?.();
    const reader = res.body?.getReader();
    if (reader === undefined) throw streamCut(what);
    const decoder = new TextDecoder();
    let buffered = '';
    try {
      for (;;) {
        let chunk: Chunk;
        try {
          chunk = await this.#next(reader, what);
        } catch (error) {
          if (signal?.aborted) return;
          throw error;
        }
        if (chunk.done) break;
        buffered += decoder.decode(chunk.value, { stream: true });
        for (let nl = buffered.indexOf('\n'); nl >= 0; nl = buffered.indexOf('\n')) {
          const line = buffered.slice(0, nl).trim();
          buffered = buffered.slice(nl + 1);
          if (line === '') continue; // keep-alive
          const item = streamLine(line, what);
          if (item.end !== undefined) {
            if (item.end.error === undefined) return;
            const detail = errorDetail(item.end.error);
            throw new CliError(
              `${what}: the sidecar ended the stream: ${detail === undefined ? 'an error without a code' : `${detail.code}: ${detail.message}`}`,
              EXIT.failure,
              undefined,
              detail?.code,
            );
          }
          let message: MessageShape<O>;
          try {
            message = fromJson(method.output, item.message, { ignoreUnknownFields: true });
          } catch (error) {
            throw new CliError(
              `${what}: the sidecar sent a message that is not a ${method.output.typeName}: ${(error as Error).message}`,
              EXIT.failure,
              { cause: error },
            );
          }
          yield { message, json: item.message };
        }
        // What is left is the start of a line: as long as a whole answer at most (counted in
        // UTF-16 units, which a byte makes at most one of).
        if (buffered.length > this.#maxAnswerBytes) {
          throw new CliError(
            `${what}: a line of the stream is larger than ${this.#maxAnswerText}: not read further`,
            EXIT.failure,
          );
        }
      }
    } finally {
      await reader.cancel().catch(() => undefined);
    }
    if (signal?.aborted) return;
    throw streamCut(what);
  }

  /** `GET /metrics` (Prometheus text; the admin token is required there too). */
  async metrics(): Promise<string> {
    const res = await this.#fetch('metrics', { method: 'GET' });
    const text = await this.#text(res, 'GET /metrics');
    if (!res.ok) throw refused(res.status, 'GET /metrics', text);
    return text;
  }

  async #post(path: string, body: JsonValue, unboundedWait: boolean): Promise<JsonValue> {
    const what = `POST /${path}`;
    const res = await this.#fetch(
      path,
      {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify(body),
      },
      unboundedWait,
    );
    const text = await this.#text(res, what);
    if (!res.ok) throw refused(res.status, what, text);
    try {
      return JSON.parse(text) as JsonValue;
    } catch {
      throw new CliError(`the sidecar answered ${what} with non-JSON`, EXIT.failure);
    }
  }

  /**
   * A request to the sidecar with the admin token, resolved once the answer's headers came —
   * within the timeout unless `unboundedWait`. Redirects are not followed: the sidecar never
   * sends one, and following it would send the request (an approval's decision and reason …)
   * where the redirect points — the token dropped on the way when that is another origin, so the
   * operator would be told the token was refused.
   */
  async #fetch(path: string, init: RequestInit, unboundedWait = false): Promise<Response> {
    const url = new URL(path, this.base);
    const what = `${init.method ?? 'GET'} /${path}`;
    const late = new AbortController();
    const timer = unboundedWait ? undefined : setTimeout(() => late.abort(), this.#timeoutMs);
    const signal = init.signal ? AbortSignal.any([init.signal, late.signal]) : late.signal;
    let res: Response;
    try {
      res = await fetch(url, {
        ...init,
        signal,
        redirect: 'manual',
        headers: { ...init.headers, authorization: `Bearer ${this.#token}` },
      });
    } catch (error) {
      if (late.signal.aborted) {
        throw new CliError(
          `${what}: no answer from the sidecar within ${this.#timeoutText}`,
          EXIT.unreachable,
        );
      }
      throw new CliError(
        `cannot reach the sidecar at ${this.base.href}: ${whyFailed(error)}`,
        EXIT.unreachable,
        { cause: error },
      );
    } finally {
      clearTimeout(timer);
    }
    if (res.status >= 300 && res.status < 400) {
      await res.body?.cancel().catch(() => undefined);
      const location = res.headers.get('location');
      throw new CliError(
        `${what}: answered with a redirect (HTTP ${res.status}${location === null ? '' : ` to ${location}`}), which the sidecar never sends: not followed; give the sidecar's own address in --url`,
        EXIT.unreachable,
      );
    }
    return res;
  }

  /**
   * The whole body of `res` as text: at most the answer limit (a larger `content-length` is
   * refused unread), each wait for more of it within the timeout.
   * @throws CliError — too large: `EXIT.failure`; stalled or the connection lost: `EXIT.unreachable`.
   */
  async #text(res: Response, what: string): Promise<string> {
    const tooLarge = (read: string): CliError =>
      new CliError(
        `${what}: the answer is larger than ${this.#maxAnswerText}: not read${read}`,
        EXIT.failure,
      );
    if (Number(res.headers.get('content-length') ?? 0) > this.#maxAnswerBytes) {
      await res.body?.cancel().catch(() => undefined);
      throw tooLarge('');
    }
    const reader = res.body?.getReader();
    if (reader === undefined) return '';
    const chunks: Uint8Array[] = [];
    let size = 0;
    try {
      for (;;) {
        const chunk = await this.#next(reader, what);
        if (chunk.done) break;
        size += chunk.value.byteLength;
        if (size > this.#maxAnswerBytes) throw tooLarge(' further');
        chunks.push(chunk.value);
      }
    } finally {
      await reader.cancel().catch(() => undefined);
    }
    return Buffer.concat(chunks).toString('utf8');
  }

  /**
   * The next chunk of a body, within the timeout.
   * @throws CliError (`EXIT.unreachable`): nothing came in time, or the connection was lost.
   */
  async #next(reader: Reader, what: string): Promise<Chunk> {
    let timer: NodeJS.Timeout | undefined;
    const stalled = new Promise<never>((_resolve, reject) => {
      timer = setTimeout(
        () =>
          reject(
            new CliError(
              `${what}: the sidecar stopped sending its answer: nothing for ${this.#timeoutText}`,
              EXIT.unreachable,
            ),
          ),
        this.#timeoutMs,
      );
    });
    try {
      return await Promise.race([reader.read(), stalled]);
    } catch (error) {
      if (error instanceof CliError) throw error;
      throw new CliError(
        `${what}: the connection to the sidecar was lost: ${whyFailed(error)}`,
        EXIT.unreachable,
        { cause: error },
      );
    } finally {
      clearTimeout(timer);
    }
  }
}

/**
 * The sidecar's URL given in `option` (`--url`, or FABRIC_URL in its place): http or https,
 * without a user name or password — the CLI authenticates with a token, and a URL's credentials
 * would be echoed by every message that names the URL.
 * @throws CliError (`EXIT.usage`) naming what is wrong, never the value given beyond its scheme
 * and origin: it may be a token pasted in the wrong place, or hold one in its password or query.
 */
export function sidecarUrl(raw: string, option = '--url'): URL {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new CliError(
      `${option}: not a URL${/^[a-z][a-z0-9+.-]*:\/\//i.test(raw) ? '' : ' (it does not start with http:// or https://)'}: give the sidecar's address, such as ${DEFAULT_SIDECAR_URL} (the value is not repeated: it may hold a secret)`,
      EXIT.usage,
    );
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new CliError(`${option}: must be http:// or https://, not ${url.protocol}`, EXIT.usage);
  }
  if (url.username !== '' || url.password !== '') {
    throw new CliError(
      `${option}: must not hold a user name or password (${url.origin}): the sidecar takes a bearer token`,
      EXIT.usage,
    );
  }
  return url;
}

/** `url` as error messages name it: without its user name, password, query and fragment. */
export function urlForMessages(url: URL): string {
  return `${url.origin}${url.pathname}`;
}

/** Why fetch failed: its cause's code (`ECONNREFUSED` …) or message, else the error itself. */
function whyFailed(error: unknown): string {
  const cause = (error as { cause?: { code?: string; message?: string } }).cause;
  return cause?.code ?? cause?.message ?? String(error);
}

/** One line of an NDJSON stream: a message or the end (with its error when it failed). */
interface StreamLine {
  message: JsonValue;
  end?: { error?: unknown };
}

/** Parses a non-empty line of a stream; a line that is neither shape fails (`EXIT.failure`). */
function streamLine(line: string, what: string): StreamLine {
  let item: unknown;
  try {
    item = JSON.parse(line);
  } catch {
    item = undefined;
  }
  if (typeof item === 'object' && item !== null) {
    const { message, end } = item as { message?: JsonValue; end?: unknown };
    if (typeof end === 'object' && end !== null) return { message: null, end };
    if (message !== undefined) return { message };
  }
  throw new CliError(
    `${what}: the sidecar sent a stream line that is neither a message nor the end`,
    EXIT.failure,
  );
}

/** The error a stream that stopped without its `end` line ends with. */
function streamCut(what: string): CliError {
  return new CliError(
    `${what}: the stream was cut: the connection to the sidecar closed before the stream's end`,
    EXIT.unreachable,
  );
}

/** `code` and `message` of an error body `{ code, message, … }`, or `undefined` when it is not one. */
function errorDetail(err: unknown): { code: string; message: string } | undefined {
  const { code, message } = (typeof err === 'object' && err !== null ? err : {}) as {
    code?: unknown;
    message?: unknown;
  };
  return typeof code === 'string' && typeof message === 'string'
    ? { code: clip(code, 200, '…'), message: clip(message, MAX_ERROR_MESSAGE, '…') }
    : undefined;
}

/**
 * Longest error message of the sidecar the CLI repeats (characters): its own are far shorter,
 * and one of up to --max-answer-mib would fill the operator's terminal with one line.
 */
const MAX_ERROR_MESSAGE = 4096;

/** The error a refused request ends with: the sidecar's `code: message` when it sent one. */
function refused(status: number, what: string, text: string): CliError {
  let detail: { code: string; message: string } | undefined;
  try {
    const body = JSON.parse(text) as { code?: unknown; message?: unknown; error?: unknown };
    const err = typeof body.error === 'object' && body.error !== null ? body.error : body;
    detail = errorDetail(err);
  } catch {
    // not JSON: the status says enough
  }
  const code = status === 401 || status === 403 ? EXIT.auth : EXIT.failure;
  // A 404 with the sidecar's own error code is its answer (an unknown pool, say); one without
  // is a route this sidecar does not have.
  const hint =
    status === 401 || status === 403
      ? ' (give the admin token in FABRIC_ADMIN_TOKEN or --token-file)'
      : status === 404 && what.includes('/api/') && detail === undefined
        ? ' (is this sidecar older than the CLI?)'
        : '';
  const said = detail === undefined ? `HTTP ${status}` : `${detail.code}: ${detail.message}`;
  return new CliError(`${what}: ${said}${hint}`, code, undefined, detail?.code);
}

/**
 * The admin token: the first line of `tokenFile` when given, else `FABRIC_ADMIN_TOKEN`. A token
 * file that other users can read is refused: the token is the sidecar's master key.
 */
export function adminToken(tokenFile: string | undefined, env: NodeJS.ProcessEnv): string {
  if (tokenFile !== undefined) {
    let text: string;
    try {
      const mode = statSync(tokenFile).mode;
      if (process.platform !== 'win32' && (mode & 0o077) !== 0) {
        throw new CliError(
          `--token-file ${tokenFile}: readable by other users (mode ${(mode & 0o777).toString(8)}); chmod 600 it`,
          EXIT.auth,
        );
      }
      text = readFileSync(tokenFile, 'utf8');
    } catch (error) {
      if (error instanceof CliError) throw error;
      throw new CliError(
        `--token-file ${tokenFile}: cannot be read: ${(error as Error).message}`,
        EXIT.auth,
      );
    }
    const token = text.split(/\r?\n/)[0]?.trim() ?? '';
    if (token === '') throw new CliError(`--token-file ${tokenFile}: is empty`, EXIT.auth);
    return headerToken(token, `--token-file ${tokenFile}`);
  }
  const token = env.FABRIC_ADMIN_TOKEN?.trim();
  if (!token) {
    throw new CliError(
      'no admin token: set FABRIC_ADMIN_TOKEN or pass --token-file <file> (the sidecar printed it at its first start, or it is adminToken in its config)',
      EXIT.auth,
    );
  }
  return headerToken(token, 'FABRIC_ADMIN_TOKEN');
}

/**
 * `token` when an `Authorization` header can carry it. A control character but the tab (an
 * escape or a line break pasted with it) or one above U+00FF made fetch fail before sending, and the CLI said
 * the sidecar could not be reached (exit 3).
 * @throws CliError (`EXIT.auth`) naming `source` and the character's position, never the token.
 */
export function headerToken(token: string, source: string): string {
  // eslint-disable-next-line no-control-regex
  const bad = /[\u0000-\u0008\u000a-\u001f\u007f]|[^\u0000-\u00ff]/.exec(token);
  if (bad !== null) {
    const code = bad[0].codePointAt(0)!.toString(16).toUpperCase().padStart(4, '0');
    throw new CliError(
      `${source}: the token holds a character an HTTP header cannot carry (U+${code} at index ${bad.index})`,
      EXIT.auth,
    );
  }
  return token;
}

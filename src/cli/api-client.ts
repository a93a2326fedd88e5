/**
 * The CLI's client of a running sidecar: the operator API through the HTTP door
 * (`POST /api/<package.Service>/<Method>`, protobuf JSON mapping; src/rpc/http-door.ts) with the
 * admin token as bearer. Requests are built and answers read with the generated schemas, so a
 * field renamed in proto/ breaks the build here rather than an operator's script.
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
  type DescMethodUnary,
  type JsonValue,
  type MessageInitShape,
  type MessageShape,
} from '@bufbuild/protobuf';
import { EXIT } from './exit-codes.js';

/** Default base URL of the sidecar (the default `http.host` and `http.port`). */
export const DEFAULT_SIDECAR_URL = 'http://127.0.0.1:8765';

/** A failure of a CLI command, with the exit code it ends the process with. */
export class CliError extends Error {
  constructor(
    message: string,
    readonly exitCode: number,
    options?: ErrorOptions,
  ) {
    super(message, options);
    this.name = 'CliError';
  }
}

/** Where the sidecar is and how to authenticate as admin. */
export interface ApiClientOptions {
  /** Base URL of the sidecar; its path is ignored (the API is at `/api/`). */
  url: string;
  /** The admin bearer token. */
  token: string;
}

/** An answer: the typed message and the JSON the sidecar sent (printed by `--json`). */
export interface ApiAnswer<O extends DescMessage> {
  message: MessageShape<O>;
  json: JsonValue;
}

/** Calls unary methods of the operator API with the admin token. */
export class ApiClient {
  readonly base: URL;
  readonly #token: string;

  constructor(options: ApiClientOptions) {
    let url: URL;
    try {
      url = new URL(options.url);
    } catch {
      throw new CliError(`--url: not a URL: ${options.url}`, EXIT.usage);
    }
    if (url.protocol !== 'http:' && url.protocol !== 'https:') {
      throw new CliError(`--url: must be http:// or https://, not ${url.protocol}`, EXIT.usage);
    }
    this.base = new URL('/', url);
    this.#token = options.token;
  }

  /** Calls `method` with `request`; throws a {@link CliError} with the matching exit code. */
  async call<I extends DescMessage, O extends DescMessage>(
    method: DescMethodUnary<I, O>,
    request: MessageInitShape<I>,
  ): Promise<ApiAnswer<O>> {
    const body = toJson(method.input, create(method.input, request));
    const json = await this.#post(`api/${method.parent.typeName}/${method.name}`, body);
    return { message: fromJson(method.output, json, { ignoreUnknownFields: true }), json };
  }

  /** `GET /metrics` (Prometheus text; the admin token is required there too). */
  async metrics(): Promise<string> {
    const res = await this.#fetch('metrics', { method: 'GET' });
    const text = await res.text();
    if (!res.ok) throw refused(res.status, 'GET /metrics', text);
    return text;
  }

  async #post(path: string, body: JsonValue): Promise<JsonValue> {
    const res = await this.#fetch(path, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(body),
    });
    const text = await res.text();
    if (!res.ok) throw refused(res.status, `POST /${path}`, text);
    try {
      return JSON.parse(text) as JsonValue;
    } catch {
      throw new CliError(`the sidecar answered POST /${path} with non-JSON`, EXIT.failure);
    }
  }

  async #fetch(path: string, init: RequestInit): Promise<Response> {
    const url = new URL(path, this.base);
    try {
      return await fetch(url, {
        ...init,
        headers: { ...init.headers, authorization: `Bearer ${this.#token}` },
      });
    } catch (error) {
      const cause = (error as { cause?: { code?: string; message?: string } }).cause;
      throw new CliError(
        `cannot reach the sidecar at ${this.base.href}: ${cause?.code ?? cause?.message ?? String(error)}`,
        EXIT.unreachable,
        { cause: error },
      );
    }
  }
}

/** The error a refused request ends with: the sidecar's `code: message` when it sent one. */
function refused(status: number, what: string, text: string): CliError {
  let detail = `HTTP ${status}`;
  try {
    const body = JSON.parse(text) as { code?: unknown; message?: unknown; error?: unknown };
    const err = (typeof body.error === 'object' && body.error !== null ? body.error : body) as {
      code?: unknown;
      message?: unknown;
    };
    if (typeof err.code === 'string' && typeof err.message === 'string') {
      detail = `${err.code}: ${err.message}`;
    }
  } catch {
    // not JSON: the status says enough
  }
  const code = status === 401 || status === 403 ? EXIT.auth : EXIT.failure;
  const hint =
    status === 401 || status === 403
      ? ' (give the admin token in FABRIC_ADMIN_TOKEN or --token-file)'
      : status === 404 && what.includes('/api/')
        ? ' (is this sidecar older than the CLI?)'
        : '';
  return new CliError(`${what}: ${detail}${hint}`, code);
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
    return token;
  }
  const token = env.FABRIC_ADMIN_TOKEN?.trim();
  if (!token) {
    throw new CliError(
      'no admin token: set FABRIC_ADMIN_TOKEN or pass --token-file <file> (the sidecar printed it at its first start, or it is adminToken in its config)',
      EXIT.auth,
    );
  }
  return token;
}
